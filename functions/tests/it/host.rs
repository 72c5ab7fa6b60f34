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

use crate::common::*;

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
        Host {
            ctx: p.ctx.clone(),
            sns,
            gateway: None,
            minio: MinioPosts::Open,
            proxy: None,
            own_addresses: vec![],
            metrics_token: None,
        },
        listener,
    ));
    format!("http://{addr}")
}

/// A host with no gateway, SNS or proxy: MinIO posts as `minio` says, `/metrics` with
/// `metrics_token`. Its URL.
async fn serve_plain(p: &Pool, minio: MinioPosts, metrics_token: Option<&str>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let metrics_token = metrics_token.map(String::from);
    let host =
        Host { ctx: p.ctx.clone(), sns: None, gateway: None, minio, proxy: None, own_addresses: vec![], metrics_token };
    tokio::spawn(aic_functions::host::serve(host, listener));
    url
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

/// The operator's figures at `/metrics`: refused without the token (or with another), and
/// with it, text that Prometheus' own client library parses (`prometheus_client.parser`, the
/// reference parser of the text format), counting the events this host handled and the
/// pool's GPUs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_figures_are_scraped_with_a_token_in_prometheus_text_format() {
    let p = pool(2, "exit 0");
    let url = serve_plain(&p, MinioPosts::Open, Some("scrape-me")).await;
    let http = reqwest::Client::new();
    let job = put_request(&p.store, &request(1).await).await;
    for key in [job.request(), job.manifest()] {
        let r = http.post(format!("{url}/events")).body(minio_body(&p, &key)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    for bearer in [None, Some("Bearer scrape-m"), Some("scrape-me")] {
        let mut r = http.get(format!("{url}/metrics"));
        if let Some(b) = bearer {
            r = r.header("authorization", b);
        }
        assert_eq!(r.send().await.unwrap().status(), 401, "{bearer:?}");
    }
    let r = http.get(format!("{url}/metrics")).header("authorization", "Bearer scrape-me").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    // Parsed by Prometheus' client library: each sample as `name{labels} value` in JSON.
    let python = std::env::var("AIC_PROM_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut parse = Command::new(&python)
        .args(["-c", "import sys, json\nfrom prometheus_client.parser import text_string_to_metric_families as f\nprint(json.dumps([[s.name, s.labels, s.value, m.type] for m in f(sys.stdin.read()) for s in m.samples]))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e} (cargo xtask test installs prometheus_client and sets AIC_PROM_PYTHON)"));
    use std::io::Write;
    parse.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = parse.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    let samples: Vec<(String, std::collections::BTreeMap<String, String>, f64, String)> =
        serde_json::from_slice(&out.stdout).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|(n, l, _, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v, t)| (*v, t.clone()))
    };
    let validated = value("aic_events_handled_total", &[("function", "validate"), ("outcome", "validated")]);
    assert!(validated.as_ref().is_some_and(|(v, t)| *v >= 1.0 && t == "counter"), "{text}");
    assert!(
        value("aic_events_handled_total", &[("function", "dispatch"), ("outcome", "dispatched")]).is_some(),
        "{text}"
    );
    assert_eq!(value("aic_gpus", &[("model", "unknown"), ("state", "total")]), Some((2.0, "gauge".into())), "{text}");
    assert_eq!(value("aic_miners", &[("state", "up")]).map(|v| v.0), Some(2.0), "{text}");
    assert!(value("aic_jobs", &[("state", "queued")]).is_some(), "{text}");
    assert_eq!(value("aic_settle_latency_seconds_bucket", &[("le", "+Inf")]).map(|v| v.1), Some("histogram".into()));
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
    let host = Host {
        ctx: p.ctx.clone(),
        sns: None,
        gateway: None,
        minio: MinioPosts::Token("s3cret".into()),
        proxy: None,
        own_addresses: vec![],
        metrics_token: None,
    };
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
        guard: None,
    };
    p.store.put_json(&aic_core::layout::serving_registration(deployment.as_str(), "0"), &r).await.unwrap();
}

/// A host serving deployments from `p`'s bucket, each at its own origin
/// (`http://<label>.localhost:<port>/`); its address.
async fn serving_host(p: &Pool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let origins = aic_schemas::origin::Origins::localhost(listener.local_addr().unwrap().port());
    let proxy = Some(Arc::new(aic_functions::proxy::Proxy::new(p.store.clone()).at(origins)));
    // As the embedded pool: it answers as itself only.
    let own_addresses = vec![url.trim_start_matches("http://").to_string()];
    tokio::spawn(aic_functions::host::serve(
        Host {
            ctx: p.ctx.clone(),
            sns: None,
            gateway: None,
            minio: MinioPosts::Open,
            proxy,
            own_addresses,
            metrics_token: None,
        },
        listener,
    ));
    url
}

/// The origin of `label` on the serving host at `url` (`http://127.0.0.1:P`), and a client
/// that reaches it (`*.localhost` is loopback, as browsers and curl take it).
fn origin_of(url: &str, label: &str) -> (String, reqwest::Client) {
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let host = format!("{label}.localhost");
    let client = reqwest::Client::builder()
        .resolve(&host, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    (format!("http://{host}:{port}"), client)
}

/// A deployed page answers at an origin of its own, never the pool's: at the pool's
/// address its old path is a redirect there, not its content; the page may keep cookies for
/// its own host but not set one for a wider domain (the pool's, or its siblings'), nor widen
/// a service worker's scope. What the browser then keeps apart (storage, service workers,
/// wallet permissions) is `cli/tests/it/webapp.rs`'s.
#[tokio::test]
async fn a_deployed_page_answers_at_its_own_origin_and_gets_no_cookie_or_service_worker_of_the_pools() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pool(1, "exit 0");
    let url = serving_host(&p).await;
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let page = "<script>localStorage.getItem('aic.session')</script>";
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nset-cookie: own=1; Path=/; HttpOnly\r\nset-cookie: aic=stolen; Path=/; Domain=localhost\r\nset-cookie: sib=1;domain=.localhost\r\nservice-worker-allowed: /\r\ncontent-security-policy: default-src 'self'\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    let deployment = aic_schemas::JobId::generate();
    register(&p, &deployment, port).await;
    let (origin, client) = origin_of(&url, deployment.as_str());
    let r = client.get(format!("{origin}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    let cookies: Vec<&str> = h.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(cookies, ["own=1; Path=/; HttpOnly"], "only the host-only cookie passes");
    assert!(h.get("service-worker-allowed").is_none(), "a service worker scope came through");
    let csp: Vec<&str> = h.get_all("content-security-policy").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(csp, ["default-src 'self'"], "the app's own policy, nothing added: it has an origin of its own");
    assert_eq!(r.text().await.unwrap(), "<script>localStorage.getItem('aic.session')</script>");
    // At the pool's own address: a redirect to the deployment's origin, never its content.
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = plain.post(format!("{url}/d/{deployment}/predict?x=1")).body("b").send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], format!("{origin}/predict?x=1").as_str());
    assert!(!r.text().await.unwrap().contains("script"), "no content at the pool's origin");
    let (code, body) = {
        let r = plain.get(format!("{url}/d/not-an-id/")).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(code, 404);
    assert!(body.contains("is not a deployment id"), "{body}");
    // A label that names nothing, and a name deeper under the deployments' domain (under a
    // deployment's own, even): nothing of the pool's answers there.
    for label in ["www".to_string(), format!("a.{deployment}")] {
        let (origin, client) = origin_of(&url, &label);
        let r = client.get(format!("{origin}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{label}");
        assert!(r.text().await.unwrap().contains("no deployment answers at"));
    }
    // On this machine, a page of another site reaches no deployment (its requests carry its
    // Origin); the deployment's own pages do, and so do links (no Origin).
    let (origin, client) = origin_of(&url, deployment.as_str());
    let from = |o: &str| client.post(format!("{origin}/x")).header("origin", o.to_string()).body("b").send();
    let r = from("http://evil.example").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("to a deployment on this machine are refused"));
    assert_eq!(from(&origin).await.unwrap().status(), 200);
    assert_eq!(client.post(format!("{origin}/x")).body("b").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_named_route_reaches_the_newest_live_deployment_of_that_owner_only() {
    let p = pool(1, "exit 0");
    let url = serving_host(&p).await;
    let owner: aic_schemas::Address = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap();
    let old = aic_schemas::JobId::generate();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new = aic_schemas::JobId::generate();
    for d in [&old, &new] {
        let key = aic_core::layout::serving_name(&owner, "digits", d);
        p.store.put_json(&key, &serde_json::json!({ "deployment": d, "name": "digits" })).await.unwrap();
    }
    register(&p, &old, answering("old").await).await;
    let get = |label: String, path: &'static str| {
        let (origin, client) = origin_of(&url, &label);
        async move {
            let r = client.get(format!("{origin}{path}")).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let named = aic_schemas::origin::named_label(&owner, "digits").unwrap();
    // The newer deployment has no live replica yet: the older one answers.
    assert_eq!(get(named.clone(), "/predict").await, (200, "old".to_string()));
    register(&p, &new, answering("new").await).await;
    tokio::time::sleep(aic_functions::proxy::REFRESH + Duration::from_millis(100)).await;
    assert_eq!(get(named.clone(), "/predict").await, (200, "new".to_string()));
    assert_eq!(get(old.to_string(), "/x").await, (200, "old".to_string()), "each version keeps its own origin");
    // Another owner's origin with the same name reaches nothing of this owner's.
    let other: aic_schemas::Address = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8".parse().unwrap();
    let (code, body) = get(aic_schemas::origin::named_label(&other, "digits").unwrap(), "/predict").await;
    assert_eq!(code, 404);
    assert!(body.contains("has no deployment named digits"), "{body}");
    // The old paths at the pool's address move to the origins, or say why they cannot.
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = plain.get(format!("{url}/n/{owner}/digits/predict")).send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], format!("{}/predict", origin_of(&url, &named).0).as_str());
    for (path, why) in [
        ("/n/nobody/digits/".to_string(), "is not a wallet address"),
        (format!("/n/{owner}/Bad_Name/"), "is not a deployment name"),
        (format!("/n/{owner}/{}/", "a".repeat(30)), "has no address of its own"),
    ] {
        let r = plain.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains(why), "{path}: {body}");
    }
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
        let origins = aic_schemas::origin::Origins::localhost(listener.local_addr().unwrap().port());
        let host = Host {
            ctx: p.ctx.clone(),
            sns: None,
            gateway: None,
            minio: MinioPosts::Open,
            proxy: Some(Arc::new(proxy.at(origins))),
            own_addresses: vec![],
            metrics_token: None,
        };
        tokio::spawn(aic_functions::host::serve(host, listener));
        let (origin, client) = origin_of(&url, deployment.as_str());
        let r = client.get(format!("{origin}/")).send().await.unwrap();
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
    let url = serve_plain(&p, MinioPosts::Refused, None).await;
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

/// A keep-alive replica: answers `<method> <path?query> <body> x-hop=<…>` with an
/// `x-replica` header, counts requests and connections; dropping it closes every connection
/// (a replica restarted, a miner's worker gone).
struct KeptReplica {
    requests: Arc<std::sync::atomic::AtomicUsize>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    tasks: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
}

impl KeptReplica {
    /// One registered as the only replica of a new deployment of `p`: the deployment, the
    /// replica's port, the replica.
    async fn registered(p: &Pool) -> (aic_schemas::JobId, u16, KeptReplica) {
        let deployment = aic_schemas::JobId::generate();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let replica = KeptReplica::start(listener).await;
        register(p, &deployment, port).await;
        (deployment, port, replica)
    }

    async fn start(listener: tokio::net::TcpListener) -> KeptReplica {
        use std::sync::atomic::Ordering::SeqCst;
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks = Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let (r, c, t) = (requests.clone(), connections.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, SeqCst);
                let r = r.clone();
                t.lock().unwrap().spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let r = r.clone();
                        async move {
                            use http_body_util::BodyExt;
                            r.fetch_add(1, SeqCst);
                            let head = format!(
                                "{} {} ",
                                req.method(),
                                req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
                            );
                            let hop = req.headers().get("x-hop").map(|v| v.to_str().unwrap().to_string());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let text = format!("{head}{} x-hop={hop:?}", String::from_utf8_lossy(&body));
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("x-replica", "kept")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(text)))
                                    .unwrap(),
                            )
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        KeptReplica { requests, connections, tasks }
    }
}

impl Drop for KeptReplica {
    fn drop(&mut self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

/// The gateway keeps its connections to a replica open and reuses them; when the replica
/// closes them (restarted on the same address), the next request goes out on a new one and
/// reaches the replica once; hop-by-hop headers stay behind, the rest pass both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_gateway_reuses_connections_and_survives_a_replica_that_closed_them() {
    use std::sync::atomic::Ordering::SeqCst;
    let p = pool(1, "exit 0");
    let (deployment, port, replica) = KeptReplica::registered(&p).await;
    let url = serving_host(&p).await;
    let (url, client) = origin_of(&url, deployment.as_str());
    let post = |n: usize| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client
                .post(format!("{url}/predict?n={n}"))
                .header("x-hop", "dropped")
                .header("connection", "keep-alive, x-hop")
                .body(format!("request {n}"))
                .send()
                .await
                .unwrap();
            let kept = r.headers().get("x-replica").map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), kept, r.text().await.unwrap())
        }
    };
    for n in 0..20 {
        let (code, kept, body) = post(n).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(kept.as_deref(), Some("kept"), "the replica's headers come back");
        // `x-hop` was named in `Connection`: a hop-by-hop header, not forwarded (RFC 9110 §7.6.1).
        assert_eq!(body, format!("POST /predict?n={n} request {n} x-hop=None"));
    }
    assert_eq!(replica.requests.load(SeqCst), 20);
    assert_eq!(replica.connections.load(SeqCst), 1, "one request after another: one connection, kept");
    // The replica restarts on the same address: its connections are closed under the gateway.
    drop(replica);
    // (The aborted listener closes when the runtime drops its task: poll, with a deadline.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break l,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("the replica's address stays taken: {e}"),
        }
    };
    let again = KeptReplica::start(listener).await;
    let (code, _, body) = post(20).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "POST /predict?n=20 request 20 x-hop=None");
    assert_eq!(again.requests.load(SeqCst), 1, "the request reached the new replica once");
}

/// The nginx task of `infra/nomad/serving-gateway.nomad.hcl`.
fn gateway_task() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/nomad/serving-gateway.nomad.hcl");
    let job: serde_json::Value = hcl::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let one = |v: &serde_json::Value| v.as_object().unwrap().values().next().unwrap().clone();
    one(&one(&one(&job["job"])["group"])["task"])
}

/// `infra/nomad/serving-gateway.nomad.hcl`'s nginx template, rendered as Nomad's template
/// runner would: `{{ env "NAME" }}` from `env`, the `range nomadService` block once per
/// `(address, port)` (its `else` part when there is none), `{{-` trimming the whitespace
/// before it. Anything else in `{{ }}` fails the test: this renderer knows only these.
fn render_gateway_template(env: &[(&str, String)], services: &[(String, u16)]) -> String {
    let task = gateway_task();
    let mut t = task["template"]["data"].as_str().unwrap().to_string();
    while let Some(i) = t.find("{{-") {
        let kept = t[..i].trim_end().len();
        t.replace_range(kept..i + 3, "{{");
    }
    let open = "{{ range nomadService \"aic-functions\" }}";
    let (before, rest) = t.split_once(open).expect("the template ranges over the functions hosts");
    let (body, rest) = rest.split_once("{{ else }}").expect("an else part");
    let (none, after) = rest.split_once("{{ end }}").expect("an end");
    let mut out = before.to_string();
    if services.is_empty() {
        out.push_str(none);
    }
    for (addr, port) in services {
        out.push_str(&body.replace("{{ .Address }}", addr).replace("{{ .Port }}", &port.to_string()));
    }
    out.push_str(after);
    for (name, value) in env {
        out = out.replace(&format!("{{{{ env \"{name}\" }}}}"), value);
    }
    assert!(!out.contains("{{"), "a template construct this renderer does not know: {out}");
    out
}

/// nginx, as the job runs it, inside a mount namespace without `/var` (Nomad's exec driver
/// builds the task's chroot from /bin, /etc, /lib, /lib32, /lib64, /run/resolvconf, /sbin
/// and /usr: `DefaultChrootEnv` in hashicorp/nomad's client/config), so whatever nginx
/// would write under /var (its error log, its temporary files) fails here as it would there.
fn nginx_as_the_job_runs_it(conf: &std::path::Path) -> Nginx {
    let task = gateway_task();
    let command = task["config"]["command"].as_str().unwrap().to_string();
    let task_dir = conf.parent().unwrap().to_str().unwrap().to_string();
    let args: Vec<String> = task["config"]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().replace("${NOMAD_TASK_DIR}", &task_dir))
        .collect();
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    Nginx(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("mount -t tmpfs -o ro tmpfs /var && exec {command} {}", quoted.join(" ")))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(conf.with_file_name("nginx.stderr")).unwrap())
            .spawn()
            .expect("unshare and nginx (root; `cargo xtask test` installs nginx)"),
    )
}

/// nginx's master process, stopped with SIGTERM when dropped (its workers with it: SIGKILL
/// would leave them behind).
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// The pool's nginx gateway for real: Debian's nginx with the job's template rendered for two
/// functions hosts, run as the job runs it. Deployments answer through it; 200 idle
/// keep-alive clients do not hold it up. A host taken away as Nomad does it (out of the
/// service, the template rendered again, nginx reloaded by its `change_signal`, then the
/// host stopped: the functions job's `shutdown_delay`) costs no request, POSTs included; one
/// that dies outright costs no idempotent request (nginx passes those to the other host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_nginx_gateway_routes_through_two_functions_hosts_and_outlives_one() {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pool(1, "exit 0");
    let (deployment, _, replica) = KeptReplica::registered(&p).await;
    // Functions hosts, each on a runtime of its own, so that one can be taken away whole (its
    // listener and every connection it holds).
    let host = |p: &Pool| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = ("127.0.0.1".to_string(), std_listener.local_addr().unwrap().port());
        // The serving domain the template is rendered with below: `localhost`.
        let origins = aic_schemas::origin::Origins::localhost(1);
        let proxy = Some(Arc::new(aic_functions::proxy::Proxy::new(p.store.clone()).at(origins)));
        let host = Host {
            ctx: p.ctx.clone(),
            sns: None,
            gateway: None,
            minio: MinioPosts::Open,
            proxy,
            own_addresses: vec![],
            metrics_token: None,
        };
        rt.spawn(async move {
            aic_functions::host::serve(host, tokio::net::TcpListener::from_std(std_listener).unwrap()).await
        });
        (addr, rt)
    };
    let (a, a_rt) = host(&p);
    let (b, b_rt) = host(&p);
    let GatewayJob { dir, port: gw_port, env, conf, mut nginx } = GatewayJob::start(&[a.clone(), b.clone()]);
    let stderr = || std::fs::read_to_string(dir.path().join("nginx.stderr")).unwrap_or_default();
    let base = format!("http://127.0.0.1:{gw_port}");
    // The deployment at its origin under the serving domain (`localhost` here).
    let site = format!("http://{deployment}.localhost:{gw_port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .resolve(&format!("{deployment}.localhost"), std::net::SocketAddr::from(([127, 0, 0, 1], gw_port)))
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !client.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
        if let Some(status) = nginx.0.try_wait().unwrap() {
            panic!("nginx exited ({status}): {}", stderr());
        }
        assert!(std::time::Instant::now() < deadline, "nginx does not answer: {}", stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = |method: reqwest::Method, n: usize| {
        let (client, url) = (client.clone(), format!("{site}/predict?n={n}"));
        async move {
            match client.request(method, url).body(format!("request {n}")).send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            }
        }
    };
    for n in 0..20 {
        let want = format!("POST /predict?n={n} request {n} x-hop=None");
        assert_eq!(call(reqwest::Method::POST, n).await, (200, want), "{}", stderr());
    }
    assert_eq!(replica.connections.load(SeqCst), 2, "both functions hosts forwarded (each on its kept connection)");
    // A body said to be over the gateway's limit (1 GiB, the functions' own) is refused by
    // nginx from its length alone; the functions host refuses it as well.
    let over = |to: u16| {
        let host = site.trim_start_matches("http://").to_string();
        async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", to)).await.unwrap();
            let head =
                format!("POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\nxx", (1u64 << 30) + 1);
            s.write_all(head.as_bytes()).await.unwrap();
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).await.unwrap();
            String::from_utf8_lossy(&buf).to_string()
        }
    };
    assert_eq!(over(gw_port).await, "HTTP/1.1 413", "{}", stderr());
    assert_eq!(over(a.1).await, "HTTP/1.1 413");
    // 200 idle keep-alive clients, each having had one answer, hold nothing up.
    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw_port)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", stderr());
        idle.push(s);
    }
    for n in 20..30 {
        assert_eq!(call(reqwest::Method::POST, n).await.0, 200, "with 200 idle clients: {}", stderr());
    }
    // Host a is taken away as Nomad does it: out of the template, nginx reloaded (SIGHUP, the
    // job's change_signal), its old workers gone, then the host stopped.
    let reload = |hosts: &[(String, u16)]| {
        std::fs::write(&conf, render_gateway_template(&env, hosts)).unwrap();
        let old = workers(nginx.0.id());
        assert!(!old.is_empty(), "nginx has workers");
        let master = nix::unistd::Pid::from_raw(nginx.0.id() as i32);
        nix::sys::signal::kill(master, nix::sys::signal::Signal::SIGHUP).unwrap();
        // An old worker may still be reading and dropping the rest of the refused 17 MiB body
        // (nginx's lingering close, up to `lingering_time`, 30 s by default) before it exits.
        let deadline = std::time::Instant::now() + Duration::from_secs(45);
        while old.iter().any(|w| std::path::Path::new(&format!("/proc/{w}")).exists()) {
            assert!(std::time::Instant::now() < deadline, "nginx's old workers stay: {}", stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    drop(idle);
    reload(std::slice::from_ref(&b));
    a_rt.shutdown_background();
    for n in 30..60 {
        let (code, body) = call(reqwest::Method::POST, n).await;
        assert_eq!(code, 200, "request {n} after a functions host was taken away: {body}\n{}", stderr());
    }
    // A third host joins; then it dies outright: idempotent requests still all answer.
    let (c, c_rt) = host(&p);
    reload(&[b.clone(), c]);
    for n in 60..70 {
        assert_eq!(call(reqwest::Method::GET, n).await.0, 200, "{}", stderr());
    }
    c_rt.shutdown_background();
    for n in 70..100 {
        let (code, body) = call(reqwest::Method::GET, n).await;
        assert_eq!(code, 200, "GET {n} after a functions host died: {body}\n{}", stderr());
    }
    assert_eq!(replica.requests.load(SeqCst), 100, "each request reached the replica once");
    drop(nginx);
    b_rt.shutdown_background();
}

/// A replica that streams: `GET /events` answers a server-sent event at once and the second
/// only when the test adds a permit to `go`; `GET /big` answers 100 MiB, counting what it has
/// written, and says when it has written it all.
struct Streaming {
    go: Arc<tokio::sync::Semaphore>,
    written: Arc<std::sync::atomic::AtomicU64>,
    all_written: Arc<tokio::sync::Notify>,
    /// An upload's bytes the replica has received.
    received: Arc<std::sync::atomic::AtomicU64>,
}

impl Streaming {
    async fn registered(p: &Pool) -> (aic_schemas::JobId, Streaming) {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let deployment = aic_schemas::JobId::generate();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        register(p, &deployment, listener.local_addr().unwrap().port()).await;
        let r = Streaming {
            go: Arc::new(tokio::sync::Semaphore::new(0)),
            written: Default::default(),
            all_written: Default::default(),
            received: Default::default(),
        };
        let (go, written, all_written, received) =
            (r.go.clone(), r.written.clone(), r.all_written.clone(), r.received.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (go, written, all_written, received) =
                    (go.clone(), written.clone(), all_written.clone(), received.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let chunk = |b: &[u8]| [format!("{:x}\r\n", b.len()).as_bytes(), b, b"\r\n"].concat();
                    if head.starts_with(b"POST /upload ") {
                        // Counts the body as it comes (sent with its length), then says how much came.
                        let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                        let len: u64 = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        let mut got = (head.len() - end) as u64;
                        received.store(got, SeqCst);
                        while got < len {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got += n as u64,
                            }
                            received.store(got, SeqCst);
                        }
                        let said = got.to_string();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{said}",
                            said.len()
                        );
                        let _ = s.write_all(answer.as_bytes()).await;
                    } else if head.starts_with(b"GET /events ") {
                        let start = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                        let _ = s.write_all(&[start.as_bytes(), &chunk(b"data: 1\n\n")].concat()).await;
                        let _ = go.acquire().await.map(|p| p.forget());
                        let _ = s.write_all(&[&chunk(b"data: 2\n\n")[..], b"0\r\n\r\n"].concat()).await;
                    } else {
                        let start =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", 100u64 << 20);
                        let _ = s.write_all(start.as_bytes()).await;
                        let block = vec![b'x'; 64 << 10];
                        for _ in 0..1600 {
                            if s.write_all(&block).await.is_err() {
                                return;
                            }
                            written.fetch_add(block.len() as u64, SeqCst);
                        }
                        all_written.notify_one();
                    }
                });
            }
        });
        (deployment, r)
    }

    /// Through `client` at `site`: the events come as the replica sends them, the download
    /// at the visitor's pace and whole.
    async fn streams_through(&self, client: &reqwest::Client, site: &str) {
        use std::sync::atomic::Ordering::SeqCst;
        let mut resp = client.get(format!("{site}/events")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        // The replica sends the second event only after this: had the gateway waited for the
        // whole answer, nothing would come.
        let first = tokio::time::timeout(Duration::from_secs(20), resp.chunk()).await;
        let first = first.expect("the first event never came while the replica held the second back").unwrap();
        assert_eq!(first.as_deref(), Some(&b"data: 1\n\n"[..]));
        self.go.add_permits(1);
        let mut rest = Vec::new();
        while let Some(c) = resp.chunk().await.unwrap() {
            rest.extend_from_slice(&c);
        }
        assert_eq!(String::from_utf8_lossy(&rest), "data: 2\n\n");

        let mut resp = client.get(format!("{site}/big")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut got = 0u64;
        while got < 1 << 20 {
            got += resp.chunk().await.unwrap().expect("more of the download").len() as u64;
        }
        // The visitor reads nothing more for a while: the replica cannot write the rest (on
        // loopback it writes 100 MiB well within this when nothing holds it back).
        let whole = tokio::time::timeout(Duration::from_secs(3), self.all_written.notified()).await;
        let held = self.written.load(SeqCst);
        assert!(whole.is_err() && held < 64 << 20, "the replica wrote {held} bytes while the visitor had read {got}");
        while let Some(c) = resp.chunk().await.unwrap() {
            got += c.len() as u64;
        }
        assert_eq!(got, 100 << 20, "the download arrived whole");

        // An upload: its first half reaches the replica before the visitor sends the second
        // (a gateway that read the body whole first would wait here for ever).
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        let half = 8u64 << 20;
        let send = client
            .post(format!("{site}/upload"))
            .header("content-length", (2 * half).to_string())
            .body(reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async {
                rx.recv().await.map(|x| (x, rx))
            })))
            .send();
        let send = tokio::spawn(send);
        for _ in 0..half / (64 << 10) {
            tx.send(Ok(vec![b'u'; 64 << 10])).await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.received.load(SeqCst) < half {
            let got = self.received.load(SeqCst);
            assert!(std::time::Instant::now() < deadline, "the replica had {got} bytes of the upload's first {half}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..half / (64 << 10) {
            tx.send(Ok(vec![b'u'; 64 << 10])).await.unwrap();
        }
        drop(tx);
        let resp = send.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), (2 * half).to_string(), "the upload arrived whole");
    }
}

/// A replica's answer passes through the serving gateway as the replica sends it (server-sent
/// events, a token stream) and at the visitor's pace (a 100 MiB download held in neither the
/// gateway's memory nor a limit of its), and a visitor's upload reaches the replica as the
/// visitor sends it, both at a functions host and through the pool's nginx gateway job in
/// front of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_streams_through_the_serving_gateway_as_the_replica_sends_it() {
    let p = pool(1, "exit 0");
    let (deployment, replica) = Streaming::registered(&p).await;
    let url = serving_host(&p).await;
    let (site, client) = origin_of(&url, deployment.as_str());
    replica.streams_through(&client, &site).await;

    // The nginx job in front of a functions host.
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let GatewayJob { dir, port: gw_port, nginx: _nginx, .. } = GatewayJob::start(&[("127.0.0.1".to_string(), port)]);
    // A replica of its own (its counts start afresh).
    let (deployment, replica) = Streaming::registered(&p).await;
    let (site, client) = origin_of(&format!("http://127.0.0.1:{gw_port}"), deployment.as_str());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !client.get(format!("http://127.0.0.1:{gw_port}/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
        let log = std::fs::read_to_string(dir.path().join("nginx.stderr")).unwrap_or_default();
        assert!(std::time::Instant::now() < deadline, "nginx does not answer: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replica.streams_through(&client, &site).await;
}

/// The pool's nginx job (`serving-gateway.nomad.hcl`) run as Nomad runs it in front of the
/// functions hosts `hosts`, deployments' origins at `<label>.localhost`: its task folder, its
/// port, the template's environment, its rendered configuration, nginx.
struct GatewayJob {
    dir: tempfile::TempDir,
    port: u16,
    env: [(&'static str, String); 3],
    conf: std::path::PathBuf,
    nginx: Nginx,
}

impl GatewayJob {
    fn start(hosts: &[(String, u16)]) -> GatewayJob {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let env = [
            ("NOMAD_TASK_DIR", dir.path().to_str().unwrap().to_string()),
            ("NOMAD_PORT_http", port.to_string()),
            ("AIC_SERVING_DOMAIN", "localhost".to_string()),
        ];
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, render_gateway_template(&env, hosts)).unwrap();
        let nginx = nginx_as_the_job_runs_it(&conf);
        GatewayJob { dir, port, env, conf, nginx }
    }
}

/// The worker processes of nginx's master `pid`.
fn workers(pid: u32) -> Vec<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children.split_whitespace().filter_map(|c| c.parse().ok()).collect()
}

/// A host holds no more than its limits, whoever sends (`host::Limits`): a client that sends
/// its request's head a byte at a time is cut off; the connections open at once are bounded
/// (the next is answered once one closes); what every `/v1/blob` transfer holds in memory at
/// once is bounded, a transfer that finds no room asked to retry (503, `Retry-After`) rather
/// than the host taking in all of them. (A host read every body whole, from every client at
/// once, and kept every connection that never finished its head.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_holds_no_more_than_its_limits_whoever_sends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pool(1, "exit 0");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let mut cfg = aic_functions::gateway::GatewayConfig::new(secret.clone(), "pool.test", 31337);
    cfg.public_url = Some(url.clone());
    let gw = Arc::new(aic_functions::gateway::Gateway::new(cfg, p.ctx.clone(), None));
    let host = Host {
        ctx: p.ctx.clone(),
        sns: None,
        gateway: Some(gw),
        minio: MinioPosts::Open,
        proxy: None,
        own_addresses: vec![],
        metrics_token: None,
    };
    let limits = aic_functions::host::Limits {
        connections: 4,
        head_within: Duration::from_secs(60),
        body_within: Duration::from_secs(20),
        blob_buffered: 1 << 20,
        blob_wait: Duration::from_millis(300),
    };
    // The same host with a head timeout of a second, for the slow client.
    let quick = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let quick_addr = quick.local_addr().unwrap();
    let short = aic_functions::host::Limits { head_within: Duration::from_secs(1), ..limits.clone() };
    tokio::spawn(aic_functions::host::serve_with(host.clone(), quick, short));
    tokio::spawn(aic_functions::host::serve_with(host, listener, limits));
    let healthz = || async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_millis(500), s.read_to_string(&mut out)).await.map(|_| out)
    };
    // A head sent slowly: the connection is closed once its second is up.
    let mut slow = tokio::net::TcpStream::connect(quick_addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a connection that never finished its head was kept");
    // Four connections held open (each sending a head slowly): the fifth waits for one.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /he").await.unwrap();
        held.push(s);
    }
    assert!(healthz().await.is_err(), "a fifth connection was served beside four held");
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(out) = healthz().await {
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no connection was taken after one closed");
    }
    drop(held);
    // Transfers: a body of 800 KiB under way holds 800 of the 1024 KiB; a second one finds no
    // room and is asked to retry; once the first is in, the second goes through.
    let token = aic_functions::gateway::session_token(
        &secret,
        &aic_schemas::Address::from_bytes([7; 20]),
        chrono::Utc::now() + chrono::Duration::hours(1),
    );
    let body = vec![b'b'; 800 << 10];
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&body))
    };
    let http = reqwest::Client::new();
    let owner = aic_schemas::Address::from_bytes([7; 20]);
    let sign = |name: &str| {
        let item = serde_json::json!({"method": "PUT", "key": format!("users/{owner}/data/t/{name}"), "size": body.len(), "sha256": sha});
        http.post(format!("{url}/v1/sign")).bearer_auth(&token).json(&serde_json::json!({"items": [item]})).send()
    };
    let first: serde_json::Value = sign("first").await.unwrap().json().await.unwrap();
    let second: serde_json::Value = sign("second").await.unwrap().json().await.unwrap();
    let (first, second) =
        (first["urls"][0]["url"].as_str().unwrap().to_string(), second["urls"][0]["url"].as_str().unwrap().to_string());
    let mut under_way = tokio::net::TcpStream::connect(addr).await.unwrap();
    let target = &first[url.len()..];
    under_way
        .write_all(
            format!("PUT {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
        )
        .await
        .unwrap();
    under_way.write_all(&body[..1000]).await.unwrap();
    // (The host takes the first body's room as soon as it has the head: poll until it has.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let r = http.put(&second).body(body.clone()).send().await.unwrap();
        if r.status() == 503 {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "the second transfer was never refused: {}", r.status());
        // It went through before the first took its room: remove it and try again.
        assert!(r.status().is_success(), "{}", r.status());
        p.store.delete(&format!("users/{owner}/data/t/second")).await.unwrap();
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(refused.text().await.unwrap().contains("send it again in a moment"));
    under_way.write_all(&body[1000..]).await.unwrap();
    let mut head = [0u8; 12];
    under_way.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let r = http.put(&second).body(body.clone()).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for name in ["first", "second"] {
        assert_eq!(
            p.store.get_limited(&format!("users/{owner}/data/t/{name}"), 1 << 20).await.unwrap().unwrap().len(),
            800 << 10
        );
    }
}
