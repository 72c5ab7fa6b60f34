//! Latency from "request.json uploaded" to "the worker process started", p50/p95, for:
//! - the embedded default: `aic dev up` (spool events, local store);
//! - the pool on S3: `aic-functions serve` on a LocalStack bucket, events bucket → SNS →
//!   webhook (needs LocalStack: `cargo xtask bench` starts it);
//! - the same with the poller (gateway inbox, 200 ms period).
//!
//! Real processes both ways; the "worker" is a script that records when it starts, so only
//! the event path, validate, dispatch and the process spawn are measured. Figures, not
//! pass/fail. `cargo bench -p aic-functions --bench latency` (set AIC_BENCH_JOBS to change
//! the 40 jobs per path).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aic_core::Store;
use aic_core::layout::JobKey;
use aic_schemas::{JobId, JobRequest};

const CHAIN: u64 = 31337;

/// The binary of this benchmark's own profile (release under `cargo bench`, which
/// `cargo xtask bench` builds first), else the other one.
fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/latency-… → target/<profile>/<name>
    let own = exe.ancestors().nth(2).unwrap().join(name);
    if own.exists() {
        return own;
    }
    let target = exe.ancestors().nth(3).unwrap();
    for profile in ["release", "debug"] {
        let p = target.join(profile).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not built: run `cargo build --release --workspace --bins`");
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn fake_worker(dir: &Path) -> (PathBuf, PathBuf) {
    let starts = dir.join("starts.txt");
    let w = dir.join("worker.sh");
    std::fs::write(&w, format!("#!/bin/sh\necho \"$AIC_JOB_ID $(date +%s.%N)\" >> {}\n", starts.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    (w, starts)
}

async fn request() -> JobRequest {
    let now = chrono::Utc::now();
    let mut req: JobRequest = serde_json::from_value(serde_json::json!({
        "version": 1, "kind": "train", "owner": "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
        "job_id": JobId::generate(), "entrypoint": "train.py", "miners": 1, "gpus_per_miner": 1, "max_hours": 0.01,
        "created_at": now, "expires_at": now + chrono::Duration::hours(1),
    }))
    .unwrap();
    aic_chain::request::sign(&aic_chain::devchain::dev_key(1), &mut req, CHAIN).await.unwrap();
    req
}

/// Submits `n` jobs one after another; each waits for its worker's start line.
async fn measure(store: &Store, starts: &Path, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let req = request().await;
        let job = JobKey::new(req.owner, req.job_id.clone());
        let body = serde_json::to_vec(&req).unwrap();
        store.create_bytes(&job.request(), body.into()).await.unwrap();
        let t0 = now();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(starts).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with(job.job.as_str())) {
                let t: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
                out.push(t - t0);
                break;
            }
            assert!(Instant::now() < deadline, "job {} never started", job.job);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    out
}

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize] * 1000.0;
    println!(
        "{name:<42} n={:<3} p50 {:>7.1} ms   p95 {:>7.1} ms   max {:>7.1} ms",
        v.len(),
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

async fn embedded(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (worker, starts) = fake_worker(dir.path());
    let home = dir.path().join("home");
    let up = Command::new(target_bin("aic"))
        .args(["dev", "up"])
        .env("AIC_HOME", &home)
        .env_remove("AIC_STORE")
        .env("AIC_WORKER_BIN", &worker)
        .env("AIC_PRICE", "0")
        .env("AIC_POOL_MINERS", "4")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = Kill(up);
    // Wait until it says it hosts the pool.
    let mut err = BufReader::new(up.0.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 && !line.contains("pool") {
        line.clear();
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let spool = aic_core::events::Spool::new(home.join("events")).unwrap();
    let store = aic_core::StoreConfig::Local { root: home.join("store") }.open().unwrap().with_events(Arc::new(spool));
    measure(&store, &starts, 3).await; // warm-up
    report("embedded default (spool, local store)", measure(&store, &starts, n).await);
}

fn python() -> String {
    std::env::var("AIC_LOCALSTACK_PYTHON").unwrap_or_else(|_| {
        format!("{}/.cache/aic-tools/localstack-venv/bin/python", std::env::var("HOME").unwrap_or_default())
    })
}

async fn on_s3(n: usize, poll: bool) {
    let Ok(endpoint) = std::env::var("AIC_TEST_S3_ENDPOINT") else {
        println!("(skipped the S3 paths: AIC_TEST_S3_ENDPOINT is not set; `cargo xtask bench` starts LocalStack)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (worker, starts) = fake_worker(dir.path());
    let bucket = format!("aic-bench-{}", ulid::Ulid::new().to_string().to_lowercase());
    let topic = format!("aic-{bucket}");
    let mut cmd = Command::new(target_bin("aic-functions"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("AIC_STORE", format!("s3://{bucket}"))
        .env("AIC_S3_ENDPOINT", &endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AIC_FREE_POOL", "1")
        .env("AIC_WORKER_BIN", &worker)
        .env("AIC_POOL_MINERS", "4")
        .env("AIC_WORK_DIR", dir.path().join("work"))
        .env("AIC_GATEWAY_SECRET", "00112233445566778899aabbccddeeff")
        .env("AIC_SNS_TOPICS", format!("arn:aws:sns:us-east-1:000000000000:{topic}"))
        .env("AIC_SNS_CERT_ORIGINS", format!("{endpoint}/_aws/sns/"))
        .env("AIC_LOG", "warn")
        .stdout(Stdio::piped());
    if poll {
        cmd.args(["--poll-ms", "200"]);
    }
    // The bucket first (wire.py creates it; the poller needs it at start).
    let ok = Command::new(python())
        .args(["-c", &format!("import boto3; boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{bucket}')")])
        .status()
        .unwrap();
    assert!(ok.success());
    let mut host = Kill(cmd.spawn().unwrap());
    let mut line = String::new();
    BufReader::new(host.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap().to_string();
    let store = aic_core::StoreConfig::S3 {
        bucket: bucket.clone(),
        endpoint: Some(endpoint.clone()),
        region: "us-east-1".into(),
        access_key: Some("test".into()),
        secret_key: Some("test".into()),
        session_token: None,
    }
    .open()
    .unwrap();
    if poll {
        // Requests reach a polling pool through gateway URLs, which announce them in the inbox.
        let inbox = aic_functions::poll::Inbox::new(store.clone());
        let mut v = Vec::new();
        for _ in 0..n + 3 {
            let req = request().await;
            let job = JobKey::new(req.owner, req.job_id.clone());
            inbox.expect(&job.request(), chrono::Utc::now() + chrono::Duration::minutes(5)).await.unwrap().unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await; // the URL is used a moment later
            store.create_json(&job.request(), &req).await.unwrap();
            let t0 = now();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let text = std::fs::read_to_string(&starts).unwrap_or_default();
                if let Some(l) = text.lines().find(|l| l.starts_with(job.job.as_str())) {
                    v.push(l.split(' ').nth(1).unwrap().parse::<f64>().unwrap() - t0);
                    break;
                }
                assert!(Instant::now() < deadline, "job {} never started", job.job);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        report("LocalStack S3 + poller (200 ms)", v.split_off(3));
    } else {
        let out = Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../localstack/wire.py"))
            .args(["--endpoint", &endpoint, "--bucket", &bucket, "--topic", &topic, "--wait", "20"])
            .args(["--webhook", &format!("{url}/events")])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        measure(&store, &starts, 3).await;
        report("LocalStack S3 → SNS → webhook", measure(&store, &starts, n).await);
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = std::env::var("AIC_BENCH_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    println!("request.json uploaded → worker process started ({n} jobs per path, one at a time)");
    embedded(n).await;
    on_s3(n, false).await;
    on_s3(n, true).await;
}
