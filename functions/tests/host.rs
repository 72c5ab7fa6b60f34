//! The functions host over real HTTP: MinIO webhook bodies and SNS deliveries drive the
//! same handlers; an SNS subscription is confirmed; bad bodies are refused.

use std::time::Duration;

use aic_core::status;
use aic_schemas::JobState;
use aic_schemas::event::S3Event;

mod common;

use common::*;

async fn start_host(p: &Pool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(aic_functions::host::serve(p.ctx.clone(), listener));
    format!("http://{addr}")
}

fn minio_body(p: &Pool, key: &str) -> String {
    let ev = S3Event { records: vec![event(&p.store, key)] };
    let mut v = serde_json::to_value(ev).unwrap();
    // MinIO adds these beside the records.
    v["EventName"] = serde_json::json!("s3:ObjectCreated:Put");
    v["Key"] = serde_json::json!(format!("{}/{key}", p.store.bucket()));
    v.to_string()
}

fn sns_body(p: &Pool, key: &str) -> String {
    let message = serde_json::to_string(&S3Event { records: vec![event(&p.store, key)] }).unwrap();
    serde_json::json!({
        "Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:aws:sns:us-east-1:000000000000:aic-events",
        "Message": message, "Timestamp": "2026-11-25T12:00:00.000Z", "SignatureVersion": "1",
        "Signature": "c2ln", "SigningCertURL": "http://localhost/cert.pem"
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minio_and_sns_deliveries_run_the_functions() {
    let p = pool(2, "exit 0");
    let url = start_host(&p).await;
    let http = reqwest::Client::new();
    let job = put_request(&p.store, &request(1).await).await;

    // MinIO webhook: request.json created → validate.
    let r = http.post(format!("{url}/events")).body(minio_body(&p, &job.request())).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(status::current(&p.store, &job).await.unwrap().unwrap().state, JobState::Paid);

    // SNS notification: manifest.json created → dispatch.
    let r = http
        .post(format!("{url}/events"))
        .header("x-amz-sns-message-type", "Notification")
        .body(sns_body(&p, &job.manifest()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let st = status::current(&p.store, &job).await.unwrap().unwrap().state;
    assert!(matches!(st, JobState::Scheduled | JobState::Running), "{st}");
    // The same delivery again changes nothing.
    let r = http.post(format!("{url}/events")).body(sns_body(&p, &job.manifest())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read_to_string(&p.starts).unwrap().lines().count(), 1, "one allocation, not two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sns_subscription_is_confirmed_and_bad_bodies_refused() {
    let p = pool(1, "exit 0");
    let url = start_host(&p).await;
    // A stand-in SNS endpoint that records the confirmation request.
    let sns = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sns_addr = sns.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = sns.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.unwrap();
        String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string()
    });
    let body = serde_json::json!({
        "Type": "SubscriptionConfirmation", "TopicArn": "arn:aws:sns:us-east-1:000000000000:aic-events",
        "Message": "You have chosen to subscribe", "Token": "tok",
        "SubscribeURL": format!("http://{sns_addr}/?Action=ConfirmSubscription&Token=tok")
    });
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{url}/events"))
        .header("x-amz-sns-message-type", "SubscriptionConfirmation")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(seen.await.unwrap(), "GET /?Action=ConfirmSubscription&Token=tok HTTP/1.1");

    let r = http.post(format!("{url}/events")).body("not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
