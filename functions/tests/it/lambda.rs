//! The Lambda binaries as real processes, against a Lambda Runtime API served here over
//! HTTP (the contract `lambda_runtime` speaks: `GET …/invocation/next`, `POST
//! …/invocation/<id>/response|error`). Lambda itself cannot run on this machine.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{Value, json};

use crate::common::*;

#[derive(Default)]
struct Api {
    events: Mutex<VecDeque<(String, Value)>>,
    /// (request id, "response" | "error", body)
    replies: Mutex<Vec<(String, String, Value)>>,
    wake: tokio::sync::Notify,
}

async fn serve(api: Arc<Api>, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path.ends_with("/runtime/invocation/next") {
        loop {
            let next = api.events.lock().unwrap().pop_front();
            if let Some((id, ev)) = next {
                let deadline = chrono::Utc::now().timestamp_millis() + 60_000;
                return Ok(Response::builder()
                    .header("lambda-runtime-aws-request-id", id)
                    .header("lambda-runtime-deadline-ms", deadline.to_string())
                    .header("lambda-runtime-invoked-function-arn", "arn:aws:lambda:us-east-1:000000000000:function:aic")
                    .header("lambda-runtime-trace-id", "Root=1-00000000-000000000000000000000000")
                    .body(Full::new(Bytes::from(ev.to_string())))
                    .unwrap());
            }
            api.wake.notified().await;
        }
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let parts: Vec<&str> = path.split('/').collect();
    // /2018-06-01/runtime/invocation/<id>/<kind>
    if parts.len() == 6 && parts[3] == "invocation" {
        api.replies.lock().unwrap().push((parts[4].to_string(), parts[5].to_string(), v));
    } else {
        api.replies.lock().unwrap().push(("init".into(), path.clone(), v));
    }
    Ok(Response::builder().status(202).body(Full::new(Bytes::from_static(b"{}"))).unwrap())
}

struct Runtime {
    api: Arc<Api>,
    addr: String,
}

async fn runtime() -> Runtime {
    let api = Arc::new(Api::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let a = api.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let a = a.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |r| serve(a.clone(), r));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Runtime { api, addr }
}

impl Runtime {
    fn push(&self, id: &str, ev: Value) {
        self.api.events.lock().unwrap().push_back((id.into(), ev));
        self.api.wake.notify_waiters();
    }

    async fn reply(&self, id: &str) -> (String, Value) {
        eventually(20, &format!("the function's reply to {id}"), || async {
            self.api.replies.lock().unwrap().iter().any(|r| r.0 == id || r.0 == "init")
        })
        .await;
        let r = self.api.replies.lock().unwrap().iter().find(|r| r.0 == id || r.0 == "init").cloned().unwrap();
        (r.1, r.2)
    }

    fn spawn(&self, bin: &str, env: &[(&str, String)]) -> Child {
        let mut c = Command::new(bin);
        c.env("AWS_LAMBDA_RUNTIME_API", &self.addr)
            .env("AWS_LAMBDA_FUNCTION_NAME", "aic")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "test")
            .env("AIC_FREE_POOL", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    }
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s3_event(bucket: &str, key: &str) -> Value {
    json!({"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 100}}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_and_dispatch_run_as_lambda_functions_on_s3_events() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = aic_core::StoreConfig::Local { root: root.clone() }.open().unwrap();
    let job = put_request(&store, &request(1).await).await;
    let env = [
        ("AIC_STORE", format!("file://{}", root.display())),
        ("AIC_WORKER_BIN", "/bin/true".to_string()),
        ("AIC_WORK_DIR", dir.path().join("work").display().to_string()),
    ];

    let rt = runtime().await;
    let _validate = Kill(rt.spawn(env!("CARGO_BIN_EXE_aic-lambda-validate"), &env));
    rt.push("v1", s3_event("local", &job.request()));
    let (kind, body) = rt.reply("v1").await;
    assert_eq!(kind, "response", "{body}");
    assert!(body["records"][0]["outcome"].as_str().unwrap().starts_with("Validated"), "{body}");
    assert!(store.head(&job.manifest()).await.unwrap().is_some());
    // Not this function's key: ignored. Not an S3 event: an error, so Lambda retries it.
    rt.push("v2", s3_event("local", &job.manifest()));
    assert_eq!(rt.reply("v2").await.1["records"][0]["outcome"], "ignored");
    rt.push("v3", json!({"hello": 1}));
    let (kind, body) = rt.reply("v3").await;
    assert_eq!(kind, "error");
    assert!(body.to_string().contains("not an S3 event"), "{body}");

    let rt = runtime().await;
    let _dispatch = Kill(rt.spawn(env!("CARGO_BIN_EXE_aic-lambda-dispatch"), &env));
    rt.push("d1", s3_event("local", &job.manifest()));
    let (kind, body) = rt.reply("d1").await;
    assert_eq!(kind, "response", "{body}");
    assert!(body["records"][0]["outcome"].as_str().unwrap().starts_with("Dispatched"), "{body}");
    // Delivered again: nothing more happens.
    rt.push("d2", s3_event("local", &job.manifest()));
    assert!(rt.reply("d2").await.1["records"][0]["outcome"].as_str().unwrap().starts_with("AlreadyDone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_as_a_lambda_function_url() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("AIC_STORE", format!("file://{}", dir.path().join("store").display())),
        ("AIC_GATEWAY_SECRET", "00112233445566778899aabbccddeeff".to_string()),
        ("AIC_GATEWAY_DOMAIN", "pool.example".to_string()),
    ];
    let rt = runtime().await;
    let _gw = Kill(rt.spawn(env!("CARGO_BIN_EXE_aic-lambda-gateway"), &env));
    let url_event = |method: &str, path: &str, body: &str| {
        json!({"version": "2.0", "rawPath": path, "rawQueryString": "", "headers": {"content-type": "application/json"},
            "requestContext": {"http": {"method": method, "path": path, "sourceIp": "203.0.113.9"}},
            "body": body, "isBase64Encoded": false})
    };
    rt.push("g1", url_event("GET", "/v1/nonce", ""));
    let (_, r) = rt.reply("g1").await;
    assert_eq!(r["statusCode"], 200, "{r}");
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["domain"], "pool.example");
    assert!(body["nonce"].as_str().unwrap().len() > 10);

    rt.push("g2", url_event("POST", "/v1/session", r#"{"message":"hello","signature":"0x00"}"#));
    let (_, r) = rt.reply("g2").await;
    assert_eq!(r["statusCode"], 401, "{r}");
    assert!(r["body"].as_str().unwrap().contains("Sign-In with Ethereum"), "{r}");

    rt.push("g3", url_event("GET", "/v1/jobs", ""));
    assert_eq!(rt.reply("g3").await.1["statusCode"], 401);
    rt.push("g4", url_event("POST", "/v1/sign", &" ".repeat(100_000)));
    assert_eq!(rt.reply("g4").await.1["statusCode"], 413);
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Temporary credentials from LocalStack's STS (`GetSessionToken`), as a Lambda role gets
/// them: (access key id, secret, session token).
fn temporary_credentials() -> (String, String, String) {
    let endpoint = localstack();
    let out = Command::new(localstack_python())
        .args([
            "-c",
            &format!(
                "import boto3; c = boto3.client('sts', endpoint_url='{endpoint}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1').get_session_token()['Credentials']; \
             print(c['AccessKeyId'], c['SecretAccessKey'], c['SessionToken'])"
            ),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "STS: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<&str> = text.split_whitespace().collect();
    (v[0].into(), v[1].into(), v[2].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_lambda_the_roles_temporary_credentials_sign_every_presigned_url() {
    // A Lambda function's role credentials are temporary: an access key, its secret and
    // AWS_SESSION_TOKEN. LocalStack checks a presigned URL's signature with the secret STS
    // issued for that access key (s3/presigned_url.py, `get_secret_access_key_from_access_key_id`).
    let (bucket, store) = fresh_bucket("sts");
    let (key_id, secret, token) = temporary_credentials();
    assert!(key_id.starts_with("ASIA") || key_id.starts_with("LSIA"), "{key_id}");
    let gateway_secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let env = [
        ("AIC_STORE", format!("s3://{bucket}")),
        ("AIC_S3_ENDPOINT", localstack()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_SESSION_TOKEN", token.clone()),
        ("AIC_GATEWAY_SECRET", gateway_secret.to_string()),
        ("AIC_GATEWAY_DOMAIN", "pool.example".to_string()),
    ];
    let rt = runtime().await;
    let _gw = Kill(rt.spawn(env!("CARGO_BIN_EXE_aic-lambda-gateway"), &env));
    // A job's workers ask for URLs with their job's token.
    let req = request(1).await;
    let job = aic_core::layout::JobKey::new(req.owner, req.job_id.clone());
    let worker_token = worker_token(&hex::decode(gateway_secret).unwrap(), &job);
    let body = b"checkpoint bytes".to_vec();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&body))
    };
    let key = format!("{}model.pt", job.output_prefix());
    let items = json!({"items": [{"method": "PUT", "key": key, "size": body.len(), "sha256": sha}, {"method": "GET", "key": key}]});
    rt.push(
        "s1",
        json!({"version": "2.0", "rawPath": "/v1/sign", "rawQueryString": "",
            "headers": {"content-type": "application/json", "authorization": format!("Bearer {worker_token}")},
            "requestContext": {"http": {"method": "POST", "path": "/v1/sign", "sourceIp": "203.0.113.9"}},
            "body": items.to_string(), "isBase64Encoded": false}),
    );
    let (_, r) = rt.reply("s1").await;
    assert_eq!(r["statusCode"], 200, "{r}");
    let urls: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    let (put, get) = (&urls["urls"][0], &urls["urls"][1]);
    for u in [put, get] {
        let url = url::Url::parse(u["url"].as_str().unwrap()).unwrap();
        let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q.get("X-Amz-Security-Token"), Some(&token), "the session token is signed into {url}");
        assert!(q["X-Amz-Credential"].starts_with(&key_id), "{url}");
    }
    let send = |u: &Value, url: String, body: Vec<u8>| {
        let http = reqwest::Client::new();
        let mut rb = http.request(u["method"].as_str().unwrap().parse().unwrap(), url);
        for (k, v) in u["headers"].as_object().unwrap() {
            rb = rb.header(k, v.as_str().unwrap());
        }
        rb.body(body).send()
    };
    // A URL whose signature is not the temporary secret's is refused: LocalStack checks.
    let forged = put["url"].as_str().unwrap().replace("X-Amz-Signature=", "X-Amz-Signature=0");
    let r = send(put, forged, body.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "{}", r.text().await.unwrap());
    // The gateway's URLs, signed with the temporary secret and token, work.
    let r = send(put, put["url"].as_str().unwrap().to_string(), body.clone()).await.unwrap();
    assert!(r.status().is_success(), "{} {}", r.status(), r.text().await.unwrap());
    let r = send(get, get["url"].as_str().unwrap().to_string(), vec![]).await.unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), body);
    assert_eq!(store.get_limited(&key, 1 << 20).await.unwrap().unwrap().to_vec(), body);
}
