//! The functions on a real S3 server (LocalStack in host mode, signature checks on; `cargo
//! xtask test` starts it): bucket → SNS → webhook; the gateway's URLs and their limits; the
//! poller; at-least-once storms of paid jobs (50; `cargo xtask storm` runs 200).

use std::sync::Arc;
use std::time::Duration;

use aic_chain::siwe::SiweMessage;
use aic_core::layout::JobKey;
use aic_core::status;
use aic_functions::gateway::{Gateway, GatewayConfig};
use aic_functions::host::{Host, MinioPosts};
use aic_functions::poll::{Inbox, Poller};
use aic_functions::sns::SnsVerifier;
use aic_schemas::JobState;
use alloy::signers::Signer as _;
use serde_json::{Value, json};

use crate::common::*;

async fn start(host: Host) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(aic_functions::host::serve(host, listener));
    format!("http://{addr}")
}

fn starts(p: &Pool) -> usize {
    std::fs::read_to_string(&p.starts).map(|s| s.lines().count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_events_reach_the_functions_through_sns() {
    let (bucket, store) = fresh_bucket("sns");
    let p = pool_on(tempfile::tempdir().unwrap(), store, 1, "exit 0");
    let topic_name = format!("aic-{bucket}");
    let topic = format!("arn:aws:sns:us-east-1:000000000000:{topic_name}");
    let sns = SnsVerifier::new(vec![topic.clone()], vec![format!("{}/_aws/sns/", localstack())]);
    let url = start(Host {
        ctx: p.ctx.clone(),
        sns: Some(Arc::new(sns)),
        gateway: None,
        minio: MinioPosts::Open,
        proxy: None,
        own_addresses: vec![],
        metrics_token: None,
    })
    .await;
    // The wiring script users run: topic, subscription (the host confirms it), notification.
    let out = std::process::Command::new(localstack_python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../localstack/wire.py"))
        .args(["--endpoint", &localstack(), "--bucket", &bucket, "--topic", &topic_name, "--wait", "20"])
        .args(["--webhook", &format!("{url}/events")])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert!(out.status.success(), "wire.py: {}", String::from_utf8_lossy(&out.stderr));
    let wired: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(wired["topic_arn"], topic.as_str());

    // A request lands in the bucket: S3 → SNS → host → validate → manifest → S3 → SNS → dispatch.
    let job = put_request(&p.store, &request(1).await).await;
    eventually(30, "the worker to start", || async { starts(&p) >= 1 }).await;
    eventually(10, "dispatch to record the placement", || async {
        let st = status::current(&p.store, &job).await.unwrap().unwrap().state;
        matches!(st, JobState::Scheduled | JobState::Running | JobState::Succeeded)
    })
    .await;
    assert!(p.store.head(&job.manifest()).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(starts(&p), 1, "one allocation");
}

const GW_DOMAIN: &str = "aic-test-pool";

fn gateway_host(p: &Pool, inbox: Option<Inbox>, tweak: impl FnOnce(&mut GatewayConfig)) -> Host {
    let mut cfg = GatewayConfig::new(b"0123456789abcdef0123456789abcdef".to_vec(), GW_DOMAIN, CHAIN);
    tweak(&mut cfg);
    let gw = Gateway::new(cfg, p.ctx.clone(), inbox);
    Host {
        ctx: p.ctx.clone(),
        sns: None,
        gateway: Some(Arc::new(gw)),
        minio: MinioPosts::Open,
        proxy: None,
        own_addresses: vec![],
        metrics_token: None,
    }
}

/// Signs in as dev account `i`; returns (address, token).
async fn login(url: &str, i: u32) -> (String, String) {
    let http = reqwest::Client::new();
    let n: Value = http.get(format!("{url}/v1/nonce")).send().await.unwrap().json().await.unwrap();
    let key = aic_chain::devchain::dev_key(i);
    let mut msg = SiweMessage::new(GW_DOMAIN, "http://localhost/", key.address(), CHAIN, chrono::Duration::hours(1));
    msg.nonce = n["nonce"].as_str().unwrap().to_string();
    let sig = key.sign_message(msg.to_string().as_bytes()).await.unwrap();
    let r: Value = http
        .post(format!("{url}/v1/session"))
        .json(&json!({"message": msg.to_string(), "signature": format!("0x{}", alloy::hex::encode(sig.as_bytes()))}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (r["address"].as_str().unwrap().to_string(), r["token"].as_str().expect("a token").to_string())
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

async fn sign(url: &str, token: &str, items: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/sign"))
        .bearer_auth(token)
        .json(&json!({ "items": items }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Sends a presigned request with the headers the gateway said to send.
async fn use_url(u: &Value, body: Vec<u8>) -> reqwest::Response {
    let http = reqwest::Client::new();
    let mut rb = http.request(u["method"].as_str().unwrap().parse().unwrap(), u["url"].as_str().unwrap());
    for (k, v) in u["headers"].as_object().unwrap() {
        rb = rb.header(k, v.as_str().unwrap());
    }
    rb.body(body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_keeps_every_user_to_their_own_prefix() {
    let (_bucket, store) = fresh_bucket("iso");
    let p = pool_on(tempfile::tempdir().unwrap(), store, 1, "exit 0");
    let url = start(gateway_host(&p, None, |_| {})).await;
    let http = reqwest::Client::new();
    let (a, ta) = login(&url, 1).await;
    let (b, tb) = login(&url, 2).await;
    assert_ne!(a, b);

    // A writes its own data through a presigned URL; reads it back.
    let key_a = format!("users/{a}/data/set.csv");
    let (code, v) = sign(&url, &ta, json!([{"method": "PUT", "key": key_a, "size": 5, "sha256": sha(b"1,2,3")}])).await;
    assert_eq!(code, 200, "{v}");
    let put = &v["urls"][0];
    assert!(use_url(put, b"1,2,3".to_vec()).await.status().is_success());
    let (_, v) = sign(&url, &ta, json!([{"method": "GET", "key": key_a}])).await;
    assert_eq!(use_url(&v["urls"][0], vec![]).await.text().await.unwrap(), "1,2,3");

    // B cannot get a URL for A's prefix, for reading or writing, nor list it.
    for m in ["GET", "PUT", "DELETE"] {
        let (code, v) = sign(&url, &tb, json!([{"method": m, "key": key_a, "size": 1, "sha256": sha(b"x")}])).await;
        assert_eq!(code, 403, "{m}: {v}");
        assert!(v["error"].as_str().unwrap().contains("not under your prefix"), "{v}");
    }
    let r = http.get(format!("{url}/v1/objects?prefix=users/{a}/")).bearer_auth(&tb).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // Nor can B tamper with one of B's own URLs to reach A's key: the signature covers the path.
    let key_b = format!("users/{b}/data/set.csv");
    let (_, v) = sign(
        &url,
        &tb,
        json!([{"method": "GET", "key": key_b}, {"method": "PUT", "key": key_b, "size": 3, "sha256": sha(b"bad")}]),
    )
    .await;
    let mut get = v["urls"][0].clone();
    get["url"] = get["url"].as_str().unwrap().replace(&key_b, &key_a).into();
    assert_eq!(use_url(&get, vec![]).await.status(), 403, "tampered GET must fail the signature check");
    let mut put = v["urls"][1].clone();
    put["url"] = put["url"].as_str().unwrap().replace(&key_b, &key_a).into();
    assert_eq!(use_url(&put, b"bad".to_vec()).await.status(), 403, "tampered PUT must fail");
    // The content is bound to the URL: other bytes than the ones signed for are refused.
    assert!(!use_url(&v["urls"][1], b"much bigger".to_vec()).await.status().is_success());
    assert!(p.store.head(&key_b).await.unwrap().is_none());
    assert!(use_url(&v["urls"][1], b"bad".to_vec()).await.status().is_success());
    assert_eq!(p.store.get_limited(&key_a, 100).await.unwrap().unwrap().as_ref(), b"1,2,3");
    // So is the size (S3 checks the signed Content-Length): what a storage quota counted is
    // what arrives, not a smaller size declared for the same bytes.
    let key_len = format!("users/{a}/data/len.csv");
    let (_, v) = sign(&url, &ta, json!([{"method": "PUT", "key": key_len, "size": 2, "sha256": sha(b"1,2,3")}])).await;
    assert!(!use_url(&v["urls"][0], b"1,2,3".to_vec()).await.status().is_success(), "5 bytes on a URL for 2");
    assert!(p.store.head(&key_len).await.unwrap().is_none());

    // Users write data, code and requests only: not manifests, status or outputs.
    let job = aic_schemas::JobId::generate();
    for k in ["manifest.json", "status/00000001.json", "output/model.npz"] {
        let (code, _) = sign(
            &url,
            &ta,
            json!([{"method": "PUT", "key": format!("users/{a}/jobs/{job}/{k}"), "size": 2, "sha256": sha(b"{}")}]),
        )
        .await;
        assert_eq!(code, 403, "{k}");
    }
    // request.json is create-only: the URL signs If-None-Match, so a second PUT is refused.
    let req_key = format!("users/{a}/jobs/{job}/request.json");
    let (_, v) = sign(&url, &ta, json!([{"method": "PUT", "key": req_key, "size": 2, "sha256": sha(b"{}")}])).await;
    assert_eq!(v["urls"][0]["headers"]["if-none-match"], "*");
    assert!(use_url(&v["urls"][0], b"{}".to_vec()).await.status().is_success());
    assert_eq!(use_url(&v["urls"][0], b"{}".to_vec()).await.status(), 412);
    // …and a fresh URL for the same request is refused at the store too.
    let (_, v) = sign(&url, &ta, json!([{"method": "PUT", "key": req_key, "size": 2, "sha256": sha(b"[]")}])).await;
    assert_eq!(use_url(&v["urls"][0], b"[]".to_vec()).await.status(), 412);
    assert_eq!(p.store.get_limited(&req_key, 100).await.unwrap().unwrap().as_ref(), b"{}");
    // A request over the limit validate reads with gets no URL: it would be uploaded, then rejected.
    let big_key = format!("users/{a}/jobs/{}/request.json", aic_schemas::JobId::generate());
    let (code, v) =
        sign(&url, &ta, json!([{"method": "PUT", "key": big_key, "size": 70_000, "sha256": sha(b"")}])).await;
    assert_eq!(code, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("at most 65536 bytes (64 KiB)"), "{v}");

    // Tokens: forged, tampered, expired, missing → 401 with a reason.
    let forged = ta.replace(&a, &b);
    for (t, why) in [(forged.as_str(), "not valid"), ("v1.x.1.abc", "not valid"), ("nonsense", "malformed")] {
        let r = http.get(format!("{url}/v1/jobs")).bearer_auth(t).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.text().await.unwrap().contains(why));
    }
    let short = start(gateway_host(&p, None, |c| c.session_ttl = Duration::from_secs(1))).await;
    let (_, t) = login(&short, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = http.get(format!("{short}/v1/jobs")).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("expired"));
    let r = http.get(format!("{url}/v1/jobs")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // A SIWE message with a made-up nonce is refused.
    let key = aic_chain::devchain::dev_key(1);
    let msg = SiweMessage::new(GW_DOMAIN, "http://localhost/", key.address(), CHAIN, chrono::Duration::hours(1));
    let sig = key.sign_message(msg.to_string().as_bytes()).await.unwrap();
    let r = http
        .post(format!("{url}/v1/session"))
        .json(&json!({"message": msg.to_string(), "signature": format!("0x{}", alloy::hex::encode(sig.as_bytes()))}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // An oversized body is refused from its Content-Length, before it is read.
    let r = http
        .post(format!("{url}/v1/sign"))
        .bearer_auth(&ta)
        .header("content-length", "10000000")
        .body(vec![b' '; 10_000_000])
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"), // the server may close before all of it is sent
    }
    // A PUT bigger than one upload may be is refused with what to do.
    let (code, v) =
        sign(&url, &ta, json!([{"method": "PUT", "key": key_a, "size": 6u64 << 30, "sha256": sha(b"")}])).await;
    assert_eq!(code, 413);
    assert!(v["error"].as_str().unwrap().contains("multipart"));

    // Rate limit: a burst over the limit gets 429 with when to retry.
    let tight = start(gateway_host(&p, None, |c| {
        c.rate = 1.0;
        c.burst = 3.0;
    }))
    .await;
    let (_, t) = login(&tight, 1).await;
    // (A route that reads nothing: calls that wait on a busy bucket for over a second each
    // would refill the bucket of tokens as fast as they take them.)
    let mut codes = Vec::new();
    for _ in 0..6 {
        let r = http.get(format!("{tight}/v1/no-such-route")).bearer_auth(&t).send().await.unwrap();
        let wait = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        codes.push((r.status().as_u16(), wait, r.text().await.unwrap()));
    }
    // Each 429 says when in its `Retry-After` header (what clients wait by), not only in words.
    let refused: Vec<_> = codes.iter().filter(|(c, ..)| *c == 429).collect();
    assert!(!refused.is_empty(), "{codes:?}");
    assert!(
        refused.iter().all(|(_, w, _)| w.as_deref().and_then(|w| w.parse::<u64>().ok()).is_some_and(|w| w >= 1)),
        "{codes:?}"
    );
    // And `aic`'s client waits each out and gets through.
    let gw = aic_core::remote::Gateway::new(&tight, Some(t.clone()));
    for _ in 0..4 {
        gw.call(reqwest::Method::GET, "info", None).await.unwrap();
    }
}

/// A wallet's datasets stay within the pool's storage quota on S3: what one call signs past
/// it is refused, and so is a part of an upload that does not fit; every URL binds its size
/// (S3 checks it); another wallet is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallets_datasets_stay_within_its_storage_quota_on_s3() {
    let (_bucket, store) = fresh_bucket("quota");
    let p = pool_on(tempfile::tempdir().unwrap(), store, 1, "exit 0");
    let url = start(gateway_host(&p, None, |c| c.storage_quota = Some(10))).await;
    let (a, ta) = login(&url, 1).await;
    let (b, tb) = login(&url, 2).await;
    let put =
        |key: String, body: &[u8]| json!([{"method": "PUT", "key": key, "size": body.len(), "sha256": sha(body)}]);
    let (code, v) = sign(&url, &ta, put(format!("users/{a}/data/x/one"), b"12345678")).await;
    assert_eq!(code, 200, "{v}");
    assert!(use_url(&v["urls"][0], b"12345678".to_vec()).await.status().is_success());
    let (code, v) = sign(&url, &ta, put(format!("users/{a}/data/x/two"), b"abc")).await;
    assert_eq!(code, 507, "{v}");
    assert!(v["error"].as_str().unwrap().contains("storage quota: your datasets take 8 B"), "{v}");
    // A job's code not paid yet counts too; another wallet has its own quota.
    let job = aic_schemas::JobId::generate();
    assert_eq!(sign(&url, &ta, put(format!("users/{a}/jobs/{job}/code/t.py"), b"abc")).await.0, 507);
    assert_eq!(sign(&url, &tb, put(format!("users/{b}/data/y/one"), b"12345678")).await.0, 200);
    // In parts: started with room left (8 of 10 and the start's 1); a part that does not fit
    // is refused before it is sent; a part's URL needs its size and binds it; one that fits
    // is kept once whole.
    let http = reqwest::Client::new();
    let mp = |body: Value| http.post(format!("{url}/v1/multipart")).bearer_auth(&ta).json(&body).send();
    let key = format!("users/{a}/data/x/parts");
    let v: Value = mp(json!({"action": "create", "key": key})).await.unwrap().json().await.unwrap();
    let upload = v["upload_id"].as_str().unwrap_or_else(|| panic!("{v}")).to_string();
    let part = |size: Option<u64>| {
        let mut b = json!({"action": "part", "key": key, "upload_id": upload, "part": 0});
        if let Some(n) = size {
            b["size"] = n.into();
        }
        mp(b)
    };
    assert_eq!(part(None).await.unwrap().status(), 400, "a part without its size");
    let r = part(Some(5)).await.unwrap();
    assert_eq!(r.status(), 507);
    assert!(r.text().await.unwrap().contains("needs 5 B more"));
    let v: Value = part(Some(1)).await.unwrap().json().await.unwrap();
    let r = http.put(v["url"].as_str().unwrap_or_else(|| panic!("{v}"))).body(b"hi".to_vec()).send().await.unwrap();
    assert!(!r.status().is_success(), "2 bytes on a part URL for 1");
    let r = http.put(v["url"].as_str().unwrap()).body(b"h".to_vec()).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let r = mp(json!({"action": "complete", "key": key, "upload_id": upload, "parts": [etag]})).await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    assert_eq!(p.store.head(&key).await.unwrap().map(|m| m.size), Some(1));
    let usage: Value = http.get(format!("{url}/v1/usage")).bearer_auth(&ta).send().await.unwrap().json().await.unwrap();
    assert_eq!((usage["data_bytes"].as_u64(), usage["quota_bytes"].as_u64()), (Some(9), Some(10)), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_runs_requests_uploaded_through_gateway_urls() {
    let (_bucket, store) = fresh_bucket("poll");
    let p = pool_on(tempfile::tempdir().unwrap(), store.clone(), 1, "exit 0");
    let inbox = Inbox::new(store.clone());
    let url = start(gateway_host(&p, Some(inbox), |_| {})).await;
    let (a, t) = login(&url, 1).await;
    // Some unrelated objects: the poll must not grow with them.
    for i in 0..50 {
        store.put_bytes(&format!("users/{a}/data/noise/{i}"), "x".into()).await.unwrap();
    }
    let req = request(1).await;
    assert_eq!(req.owner.to_string(), a);
    let job = JobKey::new(req.owner, req.job_id.clone());
    let body = serde_json::to_vec(&req).unwrap();
    let (_, v) =
        sign(&url, &t, json!([{"method": "PUT", "key": job.request(), "size": body.len(), "sha256": sha(&body)}]))
            .await;

    let mut poller = Poller::load(p.ctx.clone()).await.unwrap();
    let r = poller.poll().await.unwrap();
    assert_eq!((r.new_entries, r.handled, r.waiting), (1, 0, 1), "the URL is out, the request not yet in");
    assert!(use_url(&v["urls"][0], body).await.status().is_success());
    let r = poller.poll().await.unwrap();
    assert_eq!((r.new_entries, r.handled, r.waiting), (0, 1, 0));
    eventually(20, "the worker to start", || async { starts(&p) >= 1 }).await;
    assert!(store.head(&job.manifest()).await.unwrap().is_some());

    // The cursor is in the bucket: a new poller goes on from it and finds nothing to redo.
    let mut again = Poller::load(p.ctx.clone()).await.unwrap();
    assert_eq!(again.state(), poller.state());
    let r = again.poll().await.unwrap();
    assert_eq!((r.new_entries, r.handled, r.waiting), (0, 0, 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(starts(&p), 1);
}

/// A deterministic shuffle (xorshift), so a failure can be replayed.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

/// Posts MinIO webhook bodies, 16 at a time, each until the host takes it (as MinIO retries).
async fn deliver(url: &str, bucket: &str, keys: Vec<String>) {
    deliver_to_a_host_that_may_be_down(url, bucket, keys).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_paid_jobs_each_event_three_times_shuffled() {
    storm("storm", None).await;
}

/// The same storm with a tenth of the pool's store calls failing (half of the failing writes
/// after they landed): every job still ends exactly once, with one manifest, one payment
/// claim, one start, what it used recorded and one settlement; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_paid_jobs_with_a_tenth_of_store_calls_failing() {
    let faults = aic_core::faults::Faults { share: 0.1, latency: Duration::ZERO, seed: 2026, ..Default::default() };
    storm("faults", Some(faults)).await;
}

/// How many jobs a storm sends: `AIC_STORM_JOBS`, 50 by default (the tests); `cargo xtask
/// storm` runs them with 200.
fn storm_jobs() -> usize {
    std::env::var("AIC_STORM_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(50)
}

/// Requests by dev account 1 on a fresh bucket, each paid by its own deposit (0.01 AIC) into
/// the pool's escrow on a fresh anvil.
struct Paid {
    bucket: String,
    /// The bucket as it is (whatever the pool's view of it does).
    store: aic_core::Store,
    dir: tempfile::TempDir,
    chain: aic_chain::devchain::DevChain,
    wallet: alloy::providers::DynProvider,
    jobs: Vec<JobKey>,
    owner0: alloy::primitives::U256,
    treasury0: alloy::primitives::U256,
}

const DEPOSIT: u128 = 10u128.pow(16);

async fn paid_jobs(tag: &str, n: usize) -> Paid {
    use aic_chain::devchain::{self, dev_key};
    use alloy::network::EthereumWallet;
    use alloy::primitives::U256;
    use alloy::providers::{Provider, ProviderBuilder};
    let (bucket, store) = fresh_bucket(tag);
    let dir = tempfile::tempdir().unwrap();
    let chain = devchain::start(&dir.path().join("state.json"), &dir.path().join("chain.json"), 10u128.pow(18), 1)
        .await
        .expect("anvil: run the suite with `cargo xtask test`, which installs it and sets AIC_ANVIL");
    let wallet = ProviderBuilder::new()
        .wallet(EthereumWallet::from(dev_key(1)))
        .connect_http(chain.anvil.endpoint_url())
        .erased();
    let (token, escrow) = (chain.config.token, chain.config.escrow.unwrap());
    let mut p = Paid {
        bucket,
        store,
        dir,
        chain,
        wallet,
        jobs: Vec::with_capacity(n),
        owner0: U256::ZERO,
        treasury0: U256::ZERO,
    };
    p.owner0 = p.balance(dev_key(1).address()).await;
    p.treasury0 = p.balance(p.chain.config.treasury).await;
    for _ in 0..n {
        let mut req = unsigned(1);
        req.max_hours = 0.01;
        let run = aic_chain::escrow::run_id(dev_key(1).address(), req.job_id.as_str(), 0);
        let tx = aic_chain::escrow::deposit(&p.wallet, token, escrow, run, U256::from(DEPOSIT), 10).await.unwrap();
        req.payment = Some(aic_schemas::PaymentRef { chain_id: p.chain.config.chain_id, tx: format!("{tx:#x}") });
        p.jobs.push(put_request(&p.store, &signed(req).await).await);
    }
    p
}

impl Paid {
    async fn balance(&self, who: alloy::primitives::Address) -> alloy::primitives::U256 {
        aic_chain::token::balance(&self.wallet, self.chain.config.token, who).await.unwrap()
    }

    /// Every job's paid run was settled exactly once: what it used charged, the rest of its
    /// deposit back, the escrow empty; the balances on anvil say so.
    async fn assert_settled_once(&self) {
        use alloy::primitives::U256;
        let mut charged = 0u128;
        for j in &self.jobs {
            assert!(!aic_core::usage::of(&self.store, j).await.unwrap().is_empty(), "{}: its usage", j.job);
            let s = aic_core::usage::settlements(&self.store, j).await.unwrap();
            assert_eq!(s.len(), 1, "{}: {s:?}", j.job);
            let (c, r): (u128, u128) = (s[0].charged.parse().unwrap(), s[0].refunded.parse().unwrap());
            assert_eq!(c + r, DEPOSIT);
            charged += c;
        }
        assert!(charged > 0);
        let cfg = &self.chain.config;
        let owner = aic_chain::devchain::dev_key(1).address();
        assert_eq!(self.balance(cfg.escrow.unwrap()).await, U256::ZERO, "every deposit settled");
        assert_eq!(self.balance(cfg.treasury).await, self.treasury0 + U256::from(charged));
        assert_eq!(self.balance(owner).await, self.owner0 - U256::from(charged), "the rest of every deposit back");
    }

    /// One manifest and one payment claim per job.
    async fn assert_one_manifest_and_claim_each(&self) {
        let manifests = self
            .store
            .list("users/")
            .await
            .unwrap()
            .iter()
            .filter(|m| m.location.as_ref().ends_with("/manifest.json"))
            .count();
        assert_eq!(manifests, self.jobs.len());
        let claims = self.store.list(&format!("pool/payments/{}/", self.chain.config.chain_id)).await.unwrap().len();
        assert_eq!(claims, self.jobs.len());
    }
}

async fn storm(tag: &str, faults: Option<aic_core::faults::Faults>) {
    use aic_chain::devchain::{self, dev_key};
    let jobs_n = storm_jobs();

    let paid = paid_jobs(tag, jobs_n).await;
    let (bucket, store, jobs) = (&paid.bucket, &paid.store, &paid.jobs);
    // The pool (functions, scheduler, payment claims) sees `pool_store`, which fails as
    // `faults` says.
    let (pool_store, failed) = match faults.clone() {
        Some(f) => {
            let (s, c) = store.clone().with_faults(f);
            (s, Some(c))
        }
        None => (store.clone(), None),
    };
    let chain = &paid.chain;
    let mut p = pool_on(tempfile::tempdir().unwrap(), pool_store.clone(), 4, "exit 0");
    p.ctx.auth = Arc::new(aic_chain::Eip712Auth { chain_id: chain.config.chain_id });
    p.ctx.payments = Arc::new(aic_chain::ChainPayments::new(chain.config.clone(), pool_store.clone()).unwrap());
    p.ctx.pricing = chain.config.pricing();
    p.ctx = p.ctx.clone().with_settler(&chain.config, dev_key(devchain::SETTLER)).unwrap();
    let url = start(Host {
        ctx: p.ctx.clone(),
        sns: None,
        gateway: None,
        minio: MinioPosts::Open,
        proxy: None,
        own_addresses: vec![],
        metrics_token: None,
    })
    .await;

    // Every request event three times, shuffled, concurrently; then every manifest event so.
    let mut keys: Vec<String> = jobs.iter().flat_map(|j| std::iter::repeat_n(j.request(), 3)).collect();
    shuffle(&mut keys, 11);
    deliver(&url, bucket, keys).await;
    drain_redrive(&p.ctx, store).await;
    let mut keys: Vec<String> = jobs.iter().flat_map(|j| std::iter::repeat_n(j.manifest(), 3)).collect();
    shuffle(&mut keys, 13);
    deliver(&url, bucket, keys).await;
    drain_redrive(&p.ctx, store).await;

    // Exactly one manifest, one payment claim and one allocation per job; none lost.
    paid.assert_one_manifest_and_claim_each().await;
    eventually(60, "every job's allocation to start", || async { starts(&p) >= jobs_n }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = std::fs::read_to_string(&p.starts).unwrap();
    let mut started: Vec<&str> = lines.lines().map(|l| l.split(' ').next().unwrap()).collect();
    started.sort();
    started.dedup();
    assert_eq!((started.len(), lines.lines().count()), (jobs_n, jobs_n), "one start per job");
    for j in jobs {
        let st = status::current(store, j).await.unwrap().unwrap().state;
        assert!(!matches!(st, JobState::Submitted | JobState::Rejected | JobState::Failed), "{}: {st}", j.job);
    }

    // Each job ends (as its worker would say) once its allocation has stopped; every status
    // snapshot event three times, shuffled: each run is settled exactly once.
    for j in jobs {
        eventually(30, "the allocation to stop", || async { p.ctx.scheduler.finished(j).await.unwrap() }).await;
        for st in [JobState::Running, JobState::Succeeded] {
            status::advance(store, j, status::Transition::new(st, "worker")).await.unwrap();
        }
    }
    let mut keys: Vec<String> = jobs.iter().flat_map(|j| std::iter::repeat_n(j.status_snapshot(), 3)).collect();
    shuffle(&mut keys, 17);
    deliver(&url, bucket, keys).await;
    drain_redrive(&p.ctx, store).await;
    for j in jobs {
        // What it used was recorded by the scheduler, once, whatever the store did.
        assert_eq!(aic_core::usage::of(store, j).await.unwrap().len(), 1, "{}: its usage", j.job);
    }
    paid.assert_settled_once().await;
    if let Some(c) = failed {
        use std::sync::atomic::Ordering::Relaxed;
        let (before, after, calls) = (c.before.load(Relaxed), c.after.load(Relaxed), c.calls.load(Relaxed));
        eprintln!("store faults: {before} before and {after} after the write, of {calls} calls");
        assert!(before > 100 && after > 20, "the faults happened: {before} before, {after} after");
    }
}

/// Posts MinIO webhook bodies, 16 at a time, each until a host takes it, through a host that
/// may be down for a while (as MinIO keeps undelivered events and retries).
async fn deliver_to_a_host_that_may_be_down(url: &str, bucket: &str, keys: Vec<String>) {
    use futures::StreamExt;
    let http = reqwest::Client::new();
    futures::stream::iter(keys)
        .for_each_concurrent(16, |key| {
            let http = http.clone();
            async move {
                let rec = aic_schemas::event::S3EventRecord::object_created(bucket, &key, 100);
                let body =
                    json!({"EventName": "s3:ObjectCreated:Put", "Key": format!("{bucket}/{key}"), "Records": [rec]});
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                loop {
                    if let Ok(r) = http.post(format!("{url}/events")).json(&body).send().await {
                        if r.status() == 200 {
                            return;
                        }
                        assert_eq!(r.status(), 503, "{}", r.text().await.unwrap_or_default());
                    }
                    assert!(std::time::Instant::now() < deadline, "{key}: never taken");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
        .await;
}

/// The `aic-functions` binary on the bucket and chain of `paid`, listening on `addr`, its
/// local scheduler's 4 miners running `worker`.
fn functions_host(paid: &Paid, addr: &str, worker: &std::path::Path, starts: &std::path::Path) -> std::process::Child {
    let dir = paid.dir.path();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("host.log")).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_aic-functions"))
        .args(["serve", "--listen", addr, "--redrive-ms", "200"])
        .env("AIC_STORE", format!("s3://{}", paid.bucket))
        .env("AIC_S3_ENDPOINT", localstack())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AIC_CHAIN_FILE", dir.join("chain.json"))
        .env("AIC_SETTLER_KEY", aic_chain::devchain::DEV_KEYS[aic_chain::devchain::SETTLER as usize])
        .env("AIC_WEBHOOK_UNAUTHENTICATED", "1")
        .env("AIC_SCHEDULER", "local")
        .env("AIC_POOL_MINERS", "4")
        .env("AIC_POOL_GPUS", "1")
        .env("AIC_WORKER_BIN", worker)
        // Its workers are a script that writes into the test's folder: not sandboxed.
        .env("AIC_JOB_SANDBOX", "0")
        .env("AIC_WORK_DIR", dir.join("work"))
        .env("STARTS", starts)
        .env_remove("AIC_GATEWAY_SECRET")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn count(store: &aic_core::Store, prefix: &str, suffix: &str) -> usize {
    store.list(prefix).await.map(|l| l.iter().filter(|m| m.location.as_ref().ends_with(suffix)).count()).unwrap_or(0)
}

/// The storm through the `aic-functions` binary (local scheduler, MinIO-format posts), killed
/// outright (SIGKILL) once while validating payments and once while starting workers, and
/// started again on the same address each time: every job still gets one manifest, one
/// payment claim and one start, and its paid run is settled exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_paid_jobs_through_a_functions_host_killed_twice() {
    let jobs_n = storm_jobs();
    let t = std::time::Instant::now();
    let paid = paid_jobs("killed", jobs_n).await;
    eprintln!("{:.1} s: paid", t.elapsed().as_secs_f64());
    let (bucket, store, jobs) = (&paid.bucket, &paid.store, &paid.jobs);
    let dir = paid.dir.path();
    let starts = dir.join("starts.txt");
    let worker = dir.join("fake-worker.sh");
    // As aic-worker does: waits for the scheduler's go on stdin (end of file: its host died
    // before recording it, and it runs nothing), records its start, and writes how it exited
    // where the scheduler asked.
    std::fs::write(
        &worker,
        "#!/bin/sh\nread go || exit 0\necho \"$AIC_JOB_ID $AIC_ALLOC_INDEX $AIC_MINER\" >> \"$STARTS\"\necho 0 > \"$AIC_EXIT_FILE\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let url = format!("http://{addr}");
    let up = || async {
        eventually(60, "the functions host to listen", || async { tokio::net::TcpStream::connect(&addr).await.is_ok() })
            .await
    };
    let mut host = functions_host(&paid, &addr, &worker, &starts);
    up().await;
    let started = || std::fs::read_to_string(&starts).map(|s| s.lines().count()).unwrap_or(0);
    let claims = format!("pool/payments/{}/", paid.chain.config.chain_id);

    // Each phase's events three times, shuffled, 16 at a time; the host is killed outright
    // once a third of the jobs are through it, then started again.
    for (phase, seed) in [("request", 11), ("manifest", 13)] {
        let mut keys: Vec<String> = jobs
            .iter()
            .flat_map(|j| std::iter::repeat_n(if phase == "request" { j.request() } else { j.manifest() }, 3))
            .collect();
        shuffle(&mut keys, seed);
        let delivery = tokio::spawn({
            let (url, bucket) = (url.clone(), bucket.clone());
            async move { deliver_to_a_host_that_may_be_down(&url, &bucket, keys).await }
        });
        eventually(120, "a third of the jobs through the host", || async {
            match phase {
                "request" => count(store, &claims, "").await >= jobs_n / 3,
                _ => started() >= jobs_n / 3,
            }
        })
        .await;
        host.kill().unwrap();
        host.wait().unwrap();
        eprintln!(
            "killed the host during the {phase} events ({} claims, {} starts)",
            count(store, &claims, "").await,
            started()
        );
        host = functions_host(&paid, &addr, &worker, &starts);
        up().await;
        delivery.await.unwrap();
        eprintln!("{:.1} s: {phase} events delivered", t.elapsed().as_secs_f64());
    }

    paid.assert_one_manifest_and_claim_each().await;
    eventually(120, "every job's allocation to start and end", || async {
        started() >= jobs_n && count(store, "pool/usage/", ".json").await >= jobs_n
    })
    .await;
    eprintln!("{:.1} s: every job started and ended", t.elapsed().as_secs_f64());
    let lines = std::fs::read_to_string(&starts).unwrap();
    let mut once: Vec<&str> = lines.lines().map(|l| l.split(' ').next().unwrap()).collect();
    once.sort();
    let twice: Vec<&str> = once.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    if let Some(j) = twice.first() {
        let job = jobs.iter().find(|k| k.job.as_str() == *j).unwrap();
        let hist = status::history(store, job).await.unwrap();
        let log = std::fs::read_to_string(dir.join("host.log")).unwrap_or_default();
        let about: Vec<&str> = log.lines().filter(|l| l.contains(j) || l.contains("took over")).collect();
        panic!("{} jobs started twice, e.g. {j}: {hist:?}\nthe host's log:\n{}", twice.len(), about.join("\n"));
    }
    once.dedup();
    assert_eq!((once.len(), lines.lines().count()), (jobs_n, jobs_n), "one start per job");

    // Each job ends (as its worker would say); every status snapshot event three times: each
    // run is settled exactly once, by the host (its re-driver and its scheduler's end hook).
    for j in jobs {
        let hist = status::history(store, j).await.unwrap();
        assert!(hist.iter().all(|r| r.state != JobState::Retrying), "{}: {hist:?}", j.job);
        for st in [JobState::Running, JobState::Succeeded] {
            status::advance(store, j, status::Transition::new(st, "worker")).await.unwrap();
        }
    }
    let mut keys: Vec<String> = jobs.iter().flat_map(|j| std::iter::repeat_n(j.status_snapshot(), 3)).collect();
    shuffle(&mut keys, 17);
    deliver_to_a_host_that_may_be_down(&url, bucket, keys).await;
    let t0 = std::time::Instant::now();
    loop {
        let (settled, waiting) =
            (count(store, "pool/settlements/", ".json").await, count(store, "pool/redrive/", "").await);
        if settled >= jobs_n {
            break;
        }
        if t0.elapsed() > Duration::from_secs(180) {
            let log = std::fs::read_to_string(dir.join("host.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!("{settled} of {jobs_n} settled, {waiting} deferred; the host's log ends:\n{}", tail.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{:.1} s: every job settled", t.elapsed().as_secs_f64());
    for j in jobs {
        assert_eq!(aic_core::usage::of(store, j).await.unwrap().len(), 1, "{}: its usage", j.job);
    }
    paid.assert_settled_once().await;
    host.kill().unwrap();
    host.wait().unwrap();
}

/// Runs the pool's re-driver until no deferred work is left (three minutes at most).
async fn drain_redrive(ctx: &aic_functions::Ctx, store: &aic_core::Store) {
    let r = aic_functions::redrive::Redriver::new(ctx.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let left = store.list(aic_core::layout::REDRIVE).await.unwrap();
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            let mut why = vec![];
            for m in left.iter().take(5) {
                why.push(store.get_json::<serde_json::Value>(m.location.as_ref(), 1 << 16).await.unwrap());
            }
            panic!("deferred work never done: {} left, e.g. {why:?}", left.len());
        }
        let _ = r.pass_at(chrono::Utc::now() + chrono::Duration::days(1)).await;
    }
}

/// The pool's secrets come from Secrets Manager, not the functions' environment
/// (`aic_functions::secrets`): what a secret holds is read with `GetSecretValue`; a secret
/// holding something aic does not take from one, and one that is not there, are refused with
/// the reason (LocalStack's Secrets Manager; the request's signature is checked against AWS's
/// own test suite in `gateway::sigv4`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_secrets_are_read_from_secrets_manager() {
    let endpoint = std::env::var("AIC_TEST_S3_ENDPOINT").expect("cargo xtask test starts LocalStack");
    let python = std::env::var("AIC_LOCALSTACK_PYTHON").expect("cargo xtask test sets the LocalStack venv's python");
    let name = format!("aic-{}", ulid::Ulid::new().to_string().to_lowercase());
    let put = |id: &str, value: &str| {
        let ok = std::process::Command::new(&python)
            .args(["-c", &format!(
                "import boto3; boto3.client('secretsmanager', endpoint_url='{endpoint}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_secret(Name='{id}', SecretString='{value}')"
            )])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    put(&format!("{name}-settler"), r#"{"AIC_SETTLER_KEY": "0xabc", "NOMAD_TOKEN": "nomad-secret"}"#);
    put(&format!("{name}-odd"), r#"{"AWS_SECRET_ACCESS_KEY": "x"}"#);
    let creds = aic_functions::secrets::Credentials { key_id: "test".into(), secret: "test".into(), token: None };
    let got = aic_functions::secrets::fetch(&endpoint, "us-east-1", &creds, &format!("{name}-settler")).await.unwrap();
    assert_eq!(got.get("AIC_SETTLER_KEY").map(String::as_str), Some("0xabc"));
    assert_eq!(got.get("NOMAD_TOKEN").map(String::as_str), Some("nomad-secret"));
    let e = aic_functions::secrets::fetch(&endpoint, "us-east-1", &creds, &format!("{name}-odd")).await.unwrap_err();
    assert!(e.to_string().contains("holds AWS_SECRET_ACCESS_KEY, which aic does not take from a secret"), "{e}");
    let e = aic_functions::secrets::fetch(&endpoint, "us-east-1", &creds, &format!("{name}-none")).await.unwrap_err();
    assert!(e.to_string().contains("ResourceNotFoundException"), "{e}");
    // A functions host whose gateway secret is in a secret, not its environment: its gateway
    // is on (it answers /v1/info; without the secret it has none).
    put(&format!("{name}-gateway"), r#"{"AIC_GATEWAY_SECRET": "00112233445566778899aabbccddeeff"}"#);
    let dir = tempfile::tempdir().unwrap();
    let host = |secrets: Option<String>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_aic-functions"));
        c.args(["serve", "--listen", "127.0.0.1:0"])
            .env("AIC_STORE", format!("file://{}", dir.path().display()))
            .env("AIC_FREE_POOL", "1")
            .env("AIC_JOB_SANDBOX", "0")
            .env("AIC_WORK_DIR", dir.path().join("work"))
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AIC_SECRETS_ENDPOINT", &endpoint)
            .env_remove("AIC_GATEWAY_SECRET")
            .env_remove("AIC_SECRETS_ID")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if let Some(id) = secrets {
            c.env("AIC_SECRETS_ID", id);
        }
        let mut child = c.spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        (child, line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string())
    };
    for (secrets, want) in [
        (Some(format!("{name}-none,{name}-gateway")), None),
        (Some(format!("{name}-gateway")), Some(200)),
        (None, Some(404)),
    ] {
        let (mut child, url) = match want {
            None => {
                // A secret that is not there: the host does not start.
                let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_aic-functions"));
                let out = c
                    .args(["serve", "--listen", "127.0.0.1:0"])
                    .env("AIC_STORE", format!("file://{}", dir.path().display()))
                    .env("AIC_FREE_POOL", "1")
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test")
                    .env("AWS_REGION", "us-east-1")
                    .env("AIC_SECRETS_ENDPOINT", &endpoint)
                    .env("AIC_SECRETS_ID", secrets.unwrap())
                    .output()
                    .unwrap();
                assert!(!out.status.success());
                assert!(String::from_utf8_lossy(&out.stderr).contains("ResourceNotFoundException"));
                continue;
            }
            Some(_) => host(secrets),
        };
        let r = reqwest::get(format!("{url}/v1/info")).await.unwrap();
        assert_eq!(Some(r.status().as_u16()), want);
        let _ = child.kill();
        let _ = child.wait();
    }
}
