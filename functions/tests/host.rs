//! The functions host over real HTTP: MinIO webhook bodies and SNS deliveries drive the
//! same handlers; SNS signatures are checked (a real RSA key and certificate made by
//! openssl, served over HTTP); an SNS subscription is confirmed; bad bodies are refused.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use aic_functions::host::{Host, MinioPosts};
use aic_functions::sns::SnsVerifier;

use aic_core::status;
use aic_schemas::JobState;
use aic_schemas::event::S3Event;

mod common;

use common::*;

const TOPIC: &str = "arn:aws:sns:us-east-1:000000000000:aic-events";

/// A signing key and its self-signed certificate, the certificate served over HTTP.
struct Signer {
    _dir: tempfile::TempDir,
    key: std::path::PathBuf,
    cert_url: String,
}

async fn signer() -> Signer {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=sns-test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let pem = std::fs::read(&cert).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", pem.len());
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&pem).await;
        }
    });
    Signer { _dir: dir, key, cert_url: format!("http://{addr}/SimpleNotificationService-test.pem") }
}

/// Signs an SNS envelope as SNS does (SignatureVersion 1: SHA1withRSA over the canonical string).
fn sign(s: &Signer, mut env: serde_json::Value) -> serde_json::Value {
    env["SignatureVersion"] = "1".into();
    env["SigningCertURL"] = s.cert_url.clone().into();
    let parsed: aic_functions::webhook::SnsEnvelope = serde_json::from_value(env.clone()).unwrap();
    let text = aic_functions::sns::canonical(&parsed).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("msg");
    std::fs::write(&msg, text).unwrap();
    let out = Command::new("openssl").args(["dgst", "-sha1", "-sign"]).arg(&s.key).arg(&msg).output().unwrap();
    assert!(out.status.success());
    use base64::Engine;
    env["Signature"] = base64::engine::general_purpose::STANDARD.encode(out.stdout).into();
    env
}

async fn start_host(p: &Pool, cert_origin: Option<&str>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sns = cert_origin.map(|o| Arc::new(SnsVerifier::new(vec![TOPIC.into()], vec![o.to_string()])));
    tokio::spawn(aic_functions::host::serve(
        Host { ctx: p.ctx.clone(), sns, gateway: None, minio: MinioPosts::Open, proxy: None },
        listener,
    ));
    format!("http://{addr}")
}

fn origin(s: &Signer) -> String {
    let u = url::Url::parse(&s.cert_url).unwrap();
    format!("http://{}:{}/", u.host_str().unwrap(), u.port().unwrap())
}

fn minio_body(p: &Pool, key: &str) -> String {
    let ev = S3Event { records: vec![event(&p.store, key)] };
    let mut v = serde_json::to_value(ev).unwrap();
    // MinIO adds these beside the records.
    v["EventName"] = serde_json::json!("s3:ObjectCreated:Put");
    v["Key"] = serde_json::json!(format!("{}/{key}", p.store.bucket()));
    v.to_string()
}

fn sns_body(p: &Pool, s: &Signer, key: &str) -> String {
    let message = serde_json::to_string(&S3Event { records: vec![event(&p.store, key)] }).unwrap();
    sign(
        s,
        serde_json::json!({
            "Type": "Notification", "MessageId": "m-1", "TopicArn": TOPIC,
            "Message": message, "Timestamp": "2026-11-25T12:00:00.000Z",
        }),
    )
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minio_and_sns_deliveries_run_the_functions() {
    let p = pool(2, "exit 0");
    let s = signer().await;
    let url = start_host(&p, Some(&origin(&s))).await;
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
        .body(sns_body(&p, &s, &job.manifest()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let st = status::current(&p.store, &job).await.unwrap().unwrap().state;
    assert!(matches!(st, JobState::Scheduled | JobState::Running), "{st}");
    // The same delivery again changes nothing.
    let r = http.post(format!("{url}/events")).body(sns_body(&p, &s, &job.manifest())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read_to_string(&p.starts).unwrap().lines().count(), 1, "one allocation, not two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sns_subscription_is_confirmed_and_bad_bodies_refused() {
    let p = pool(1, "exit 0");
    let s = signer().await;
    let url = start_host(&p, Some(&origin(&s))).await;
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
    let body = sign(
        &s,
        serde_json::json!({
            "Type": "SubscriptionConfirmation", "TopicArn": TOPIC, "MessageId": "c-1", "Timestamp": "2026-11-25T12:00:00.000Z",
            "Message": "You have chosen to subscribe", "Token": "tok",
            "SubscribeURL": format!("http://{sns_addr}/?Action=ConfirmSubscription&Token=tok")
        }),
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_and_foreign_sns_deliveries_are_refused() {
    let p = pool(1, "exit 0");
    let s = signer().await;
    let url = start_host(&p, Some(&origin(&s))).await;
    let http = reqwest::Client::new();
    let job = put_request(&p.store, &request(1).await).await;
    let post = |body: String| {
        http.post(format!("{url}/events")).header("x-amz-sns-message-type", "Notification").body(body).send()
    };

    // Tampered: signed for manifest.json, Message changed to request.json.
    let mut env: serde_json::Value = serde_json::from_str(&sns_body(&p, &s, &job.manifest())).unwrap();
    env["Message"] = serde_json::to_string(&S3Event { records: vec![event(&p.store, &job.request())] }).unwrap().into();
    let r = post(env.to_string()).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("does not verify"));

    // Signed by someone else's key (a second certificate on an allowed origin is not enough
    // when the URL names ours: here the URL is ours, the key theirs).
    let other = signer().await;
    let mut forged: serde_json::Value = serde_json::from_str(&sns_body(&p, &other, &job.request())).unwrap();
    forged["SigningCertURL"] = s.cert_url.clone().into();
    assert_eq!(post(forged.to_string()).await.unwrap().status(), 403);

    // A certificate from an origin that is not allowed.
    let r = post(sns_body(&p, &other, &job.request())).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("not an allowed certificate origin"));

    // Another topic, however well signed.
    let mut foreign: serde_json::Value = serde_json::from_str(&sns_body(&p, &s, &job.request())).unwrap();
    foreign["TopicArn"] = "arn:aws:sns:us-east-1:999999999999:theirs".into();
    let foreign = sign(&s, foreign);
    let r = post(foreign.to_string()).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("not one this host serves"));

    // None of it ran validate.
    assert!(aic_core::status::current(&p.store, &job).await.unwrap().is_none());
    // The genuine delivery does.
    assert_eq!(post(sns_body(&p, &s, &job.request())).await.unwrap().status(), 200);
    assert_eq!(aic_core::status::current(&p.store, &job).await.unwrap().unwrap().state, JobState::Paid);

    // A host with no SNS topics configured refuses SNS outright, saying what to set.
    let bare = start_host(&p, None).await;
    let r = http.post(format!("{bare}/events")).body(sns_body(&p, &s, &job.request())).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("AIC_SNS_TOPICS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_webhook_token_minio_bodies_must_carry_it() {
    let p = pool(1, "exit 0");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let host =
        Host { ctx: p.ctx.clone(), sns: None, gateway: None, minio: MinioPosts::Token("s3cret".into()), proxy: None };
    tokio::spawn(aic_functions::host::serve(host, listener));
    let job = put_request(&p.store, &request(1).await).await;
    let http = reqwest::Client::new();
    let r = http.post(format!("{url}/events")).body(minio_body(&p, &job.request())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(aic_core::status::current(&p.store, &job).await.unwrap().is_none());
    let r = http
        .post(format!("{url}/events"))
        .bearer_auth("s3cret")
        .body(minio_body(&p, &job.request()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(aic_core::status::current(&p.store, &job).await.unwrap().unwrap().state, JobState::Paid);
}

/// A one-answer HTTP server: every request gets `body`.
async fn answering(body: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let reply =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}

async fn register(p: &Pool, deployment: &aic_schemas::JobId, port: u16) {
    let now = chrono::Utc::now();
    let r = aic_schemas::ServingRegistration {
        deployment: deployment.to_string(),
        job_id: deployment.clone(),
        alloc: 0,
        host: "127.0.0.1".into(),
        port,
        healthy: true,
        started_at: now,
        heartbeat_at: now,
        ttl_seconds: 60,
    };
    p.store.put_json(&aic_core::layout::serving_registration(deployment.as_str(), "0"), &r).await.unwrap();
}

#[tokio::test]
async fn a_named_route_reaches_the_newest_live_deployment_of_that_owner_only() {
    let p = pool(1, "exit 0");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let proxy = Some(Arc::new(aic_functions::proxy::Proxy::new(p.store.clone())));
    tokio::spawn(aic_functions::host::serve(
        Host { ctx: p.ctx.clone(), sns: None, gateway: None, minio: MinioPosts::Open, proxy },
        listener,
    ));
    let owner: aic_schemas::Address = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap();
    let old = aic_schemas::JobId::generate();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new = aic_schemas::JobId::generate();
    for d in [&old, &new] {
        let key = aic_core::layout::serving_name(&owner, "digits", d);
        p.store.put_json(&key, &serde_json::json!({ "deployment": d, "name": "digits" })).await.unwrap();
    }
    register(&p, &old, answering("old").await).await;
    let get = |path: String| {
        let url = url.clone();
        async move {
            let r = reqwest::get(format!("{url}{path}")).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let route = format!("/n/{owner}/digits/predict");
    // The newer deployment has no live replica yet: the older one answers.
    assert_eq!(get(route.clone()).await, (200, "old".to_string()));
    register(&p, &new, answering("new").await).await;
    tokio::time::sleep(aic_functions::proxy::REFRESH + Duration::from_millis(100)).await;
    assert_eq!(get(route.clone()).await, (200, "new".to_string()));
    assert_eq!(get(format!("/d/{old}/x")).await, (200, "old".to_string()), "each version keeps its own route");
    // Another owner's route with the same name reaches nothing of this owner's.
    let (code, body) = get("/n/0x70997970c51812dc3a010c7d01b50e0d17dc79c8/digits/predict".into()).await;
    assert_eq!(code, 404);
    assert!(body.contains("has no deployment named digits"), "{body}");
    let (code, body) = get("/n/nobody/digits/".into()).await;
    assert_eq!(code, 404);
    assert!(body.contains("is not a wallet address"), "{body}");
    let (code, body) = get(format!("/n/{owner}/Bad_Name/")).await;
    assert_eq!(code, 404);
    assert!(body.contains("is not a deployment name"), "{body}");
}

/// A registration is only a claim (a job's own code can write one): the serving gateway
/// forwards only to where the scheduler placed the deployment's replicas, so a deployment
/// cannot point the gateway at another service on the pool's network.
#[tokio::test]
async fn the_serving_gateway_forwards_only_to_where_the_scheduler_placed_replicas() {
    let p = pool(1, "exit 0");
    let deployment = aic_schemas::JobId::generate();
    // "Another service": something listening that no replica of the deployment is.
    register(&p, &deployment, answering("internal service").await).await;
    let serve = |proxy: aic_functions::proxy::Proxy| async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let host = Host {
            ctx: p.ctx.clone(),
            sns: None,
            gateway: None,
            minio: MinioPosts::Open,
            proxy: Some(Arc::new(proxy)),
        };
        tokio::spawn(aic_functions::host::serve(host, listener));
        let r = reqwest::get(format!("{url}/d/{deployment}/")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    // Without the scheduler's word, the claim is taken (what the check is for).
    assert_eq!(serve(aic_functions::proxy::Proxy::new(p.store.clone())).await, (200, "internal service".into()));
    // With it: the scheduler placed no replica there, so nothing is forwarded.
    let checked = aic_functions::proxy::Proxy::new(p.store.clone()).with_scheduler(p.ctx.scheduler.clone());
    let (code, body) = serve(checked).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("has no live replica"), "{body}");
}

/// A MinIO-format body of one record per key, as one delivery (records in the short form
/// S3 and MinIO send).
fn minio_batch(p: &Pool, keys: &[String]) -> String {
    let records: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| {
            serde_json::json!({"eventVersion": "2.0", "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
                "s3": {"bucket": {"name": p.store.bucket()}, "object": {"key": aic_schemas::event::encode_key(k), "size": 100}}})
        })
        .collect();
    serde_json::json!({ "Records": records }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_requests_that_are_not_there_write_nothing_and_keep_the_id_free() {
    let p = pool(1, "exit 0");
    let url = start_host(&p, None).await;
    let http = reqwest::Client::new();
    // 50 forged records naming requests that were never uploaded.
    let ghosts: Vec<_> = (0..50).map(|_| unsigned(1)).collect();
    let keys: Vec<String> = ghosts.iter().map(|r| aic_core::JobKey::new(r.owner, r.job_id.clone()).request()).collect();
    let r = http.post(format!("{url}/events")).body(minio_batch(&p, &keys)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let owner: aic_schemas::Address = OWNER.parse().unwrap();
    let written = p.store.list(&aic_core::layout::user_prefix(&owner)).await.unwrap();
    assert!(
        written.is_empty(),
        "forged events wrote {:?}",
        written.iter().map(|m| m.location.to_string()).collect::<Vec<_>>()
    );

    // The real request for one of those ids, arriving later, is taken as any other.
    let real = signed(ghosts[0].clone()).await;
    let job = put_request(&p.store, &real).await;
    let r = http.post(format!("{url}/events")).body(minio_body(&p, &job.request())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(status::current(&p.store, &job).await.unwrap().unwrap().state, JobState::Paid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_or_an_explicit_allowance_minio_posts_are_refused() {
    let p = pool(1, "exit 0");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let host = Host { ctx: p.ctx.clone(), sns: None, gateway: None, minio: MinioPosts::Refused, proxy: None };
    tokio::spawn(aic_functions::host::serve(host, listener));
    let job = put_request(&p.store, &request(1).await).await;
    let r =
        reqwest::Client::new().post(format!("{url}/events")).body(minio_body(&p, &job.request())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let why = r.text().await.unwrap();
    assert!(why.contains("AIC_WEBHOOK_TOKEN") && why.contains("AIC_WEBHOOK_UNAUTHENTICATED"), "{why}");
    assert!(status::current(&p.store, &job).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_handles_each_object_once() {
    let p = pool(2, "exit 0");
    let url = start_host(&p, None).await;
    let mut jobs = Vec::new();
    for _ in 0..20 {
        jobs.push(put_request(&p.store, &request(1).await).await);
    }
    // 4,000 records: 200 deliveries of each of the 20 requests, interleaved.
    let keys: Vec<String> = (0..4000).map(|i| jobs[i % jobs.len()].request()).collect();
    let body = minio_batch(&p, &keys);
    assert!(body.len() < aic_functions::webhook::MAX_BODY);
    let r = reqwest::Client::new().post(format!("{url}/events")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!((v["handled"].as_u64(), v["distinct"].as_u64()), (Some(4000), Some(20)));
    for job in &jobs {
        let states: Vec<_> = status::history(&p.store, job).await.unwrap().into_iter().map(|r| r.state).collect();
        assert_eq!(states, [JobState::Submitted, JobState::Paid]);
    }
}
