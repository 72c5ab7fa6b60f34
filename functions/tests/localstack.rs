//! The functions on a real S3 server (LocalStack in host mode, signature checks on; `cargo
//! xtask test` starts it): bucket → SNS → webhook; the gateway's URLs and their limits; the
//! poller; an at-least-once storm of 200 paid jobs.

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

mod common;

use common::*;

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
    Host { ctx: p.ctx.clone(), sns: None, gateway: Some(Arc::new(gw)), minio: MinioPosts::Open, proxy: None }
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
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(http.get(format!("{tight}/v1/jobs")).bearer_auth(&t).send().await.unwrap().status().as_u16());
    }
    assert!(codes.contains(&429), "{codes:?}");
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
    use futures::StreamExt;
    let http = reqwest::Client::new();
    futures::stream::iter(keys)
        .for_each_concurrent(16, |key| {
            let http = http.clone();
            async move {
                let rec = aic_schemas::event::S3EventRecord::object_created(bucket, &key, 100);
                let body =
                    json!({"EventName": "s3:ObjectCreated:Put", "Key": format!("{bucket}/{key}"), "Records": [rec]});
                for _ in 0..100 {
                    let r = http.post(format!("{url}/events")).json(&body).send().await.unwrap();
                    if r.status() == 200 {
                        return;
                    }
                    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("{key}: never taken");
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_200_paid_jobs_each_event_three_times_shuffled() {
    storm("storm", None).await;
}

/// The same storm with a tenth of the pool's store calls failing (half of the failing writes
/// after they landed): every job still ends exactly once, with one manifest, one payment
/// claim, one start, what it used recorded and one settlement; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_200_paid_jobs_with_a_tenth_of_store_calls_failing() {
    let faults = aic_core::faults::Faults { share: 0.1, latency: Duration::ZERO, seed: 2026 };
    storm("faults", Some(faults)).await;
}

async fn storm(tag: &str, faults: Option<aic_core::faults::Faults>) {
    use aic_chain::devchain::{self, dev_key};
    use alloy::network::EthereumWallet;
    use alloy::primitives::U256;
    use alloy::providers::{Provider, ProviderBuilder};
    const JOBS: usize = 200;

    // `store` is the bucket as it is; the pool (functions, scheduler, payment claims) sees
    // `pool_store`, which fails as `faults` says.
    let (bucket, store) = fresh_bucket(tag);
    let (pool_store, failed) = match faults.clone() {
        Some(f) => {
            let (s, c) = store.clone().with_faults(f);
            (s, Some(c))
        }
        None => (store.clone(), None),
    };
    let dir = tempfile::tempdir().unwrap();
    let chain = devchain::start(&dir.path().join("state.json"), &dir.path().join("chain.json"), 10u128.pow(18), 1)
        .await
        .expect("anvil: run the suite with `cargo xtask test`, which installs it and sets AIC_ANVIL");
    let mut p = pool_on(dir, pool_store.clone(), 4, "exit 0");
    p.ctx.auth = Arc::new(aic_chain::Eip712Auth { chain_id: chain.config.chain_id });
    p.ctx.payments = Arc::new(aic_chain::ChainPayments::new(chain.config.clone(), pool_store.clone()).unwrap());
    p.ctx.pricing = chain.config.pricing();
    p.ctx = p.ctx.clone().with_settler(&chain.config, dev_key(devchain::SETTLER)).unwrap();
    let url = start(Host { ctx: p.ctx.clone(), sns: None, gateway: None, minio: MinioPosts::Open, proxy: None }).await;

    // 200 requests by dev account 1, each paid by its own deposit into the pool's escrow.
    let wallet = ProviderBuilder::new()
        .wallet(EthereumWallet::from(dev_key(1)))
        .connect_http(chain.anvil.endpoint_url())
        .erased();
    let (token, escrow, treasury) = (chain.config.token, chain.config.escrow.unwrap(), chain.config.treasury);
    let balance = |who| {
        let w = wallet.clone();
        async move { aic_chain::token::balance(&w, token, who).await.unwrap() }
    };
    let owner = dev_key(1).address();
    let (owner0, treasury0) = (balance(owner).await, balance(treasury).await);
    let mut jobs = Vec::with_capacity(JOBS);
    for _ in 0..JOBS {
        let mut req = unsigned(1);
        req.max_hours = 0.01;
        let run = aic_chain::escrow::run_id(req.job_id.as_str(), 0);
        let tx = aic_chain::escrow::deposit(&wallet, token, escrow, run, U256::from(10u128.pow(16)), 10).await.unwrap();
        req.payment = Some(aic_schemas::PaymentRef { chain_id: chain.config.chain_id, tx: format!("{tx:#x}") });
        jobs.push(put_request(&store, &signed(req).await).await);
    }

    // Every request event three times, shuffled, concurrently; then every manifest event so.
    let mut keys: Vec<String> = jobs.iter().flat_map(|j| std::iter::repeat_n(j.request(), 3)).collect();
    shuffle(&mut keys, 11);
    deliver(&url, &bucket, keys).await;
    drain_redrive(&p.ctx, &store).await;
    let mut keys: Vec<String> = jobs.iter().flat_map(|j| std::iter::repeat_n(j.manifest(), 3)).collect();
    shuffle(&mut keys, 13);
    deliver(&url, &bucket, keys).await;
    drain_redrive(&p.ctx, &store).await;

    // Exactly one manifest, one payment claim and one allocation per job; none lost.
    let manifests =
        store.list("users/").await.unwrap().iter().filter(|m| m.location.as_ref().ends_with("/manifest.json")).count();
    assert_eq!(manifests, JOBS);
    let claims = store.list(&format!("pool/payments/{}/", chain.config.chain_id)).await.unwrap().len();
    assert_eq!(claims, JOBS);
    eventually(60, "every job's allocation to start", || async { starts(&p) >= JOBS }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = std::fs::read_to_string(&p.starts).unwrap();
    let mut started: Vec<&str> = lines.lines().map(|l| l.split(' ').next().unwrap()).collect();
    started.sort();
    started.dedup();
    assert_eq!((started.len(), lines.lines().count()), (JOBS, JOBS), "one start per job");
    for j in &jobs {
        let st = status::current(&store, j).await.unwrap().unwrap().state;
        assert!(!matches!(st, JobState::Submitted | JobState::Rejected | JobState::Failed), "{}: {st}", j.job);
    }

    // Each job ends (as its worker would say) once its allocation has stopped; every status
    // snapshot event three times, shuffled: each run is settled exactly once.
    for j in &jobs {
        eventually(30, "the allocation to stop", || async { p.ctx.scheduler.finished(j).await.unwrap() }).await;
        for st in [JobState::Running, JobState::Succeeded] {
            status::advance(&store, j, status::Transition::new(st, "worker")).await.unwrap();
        }
    }
    let mut keys: Vec<String> = jobs.iter().flat_map(|j| std::iter::repeat_n(j.status_snapshot(), 3)).collect();
    shuffle(&mut keys, 17);
    deliver(&url, &bucket, keys).await;
    drain_redrive(&p.ctx, &store).await;
    let mut charged = 0u128;
    for j in &jobs {
        // What it used was recorded by the scheduler, once, whatever the store did.
        assert_eq!(aic_core::usage::of(&store, j).await.unwrap().len(), 1, "{}: its usage", j.job);
        let s = aic_core::usage::settlements(&store, j).await.unwrap();
        assert_eq!(s.len(), 1, "{}: {s:?}", j.job);
        let (c, r): (u128, u128) = (s[0].charged.parse().unwrap(), s[0].refunded.parse().unwrap());
        assert_eq!(c + r, 10u128.pow(16));
        charged += c;
    }
    assert!(charged > 0);
    assert_eq!(balance(escrow).await, U256::ZERO, "every deposit settled");
    assert_eq!(balance(treasury).await, treasury0 + U256::from(charged));
    assert_eq!(balance(owner).await, owner0 - U256::from(charged), "the rest of every deposit back");
    if let Some(c) = failed {
        use std::sync::atomic::Ordering::Relaxed;
        let (before, after, calls) = (c.before.load(Relaxed), c.after.load(Relaxed), c.calls.load(Relaxed));
        eprintln!("store faults: {before} before and {after} after the write, of {calls} calls");
        assert!(before > 100 && after > 20, "the faults happened: {before} before, {after} after");
    }
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
