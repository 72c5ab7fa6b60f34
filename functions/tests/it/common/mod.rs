//! Helpers shared by the functions' integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use aic_core::layout::JobKey;
use aic_core::pricing::Pricing;
use aic_core::scheduler::local::{LocalConfig, LocalScheduler};
use aic_core::{Store, StoreConfig};
use aic_functions::{Ctx, FreePool};
use aic_schemas::event::S3EventRecord;
use aic_schemas::{JobId, JobRequest};
use chrono::Utc;

/// Anvil's dev account 1, whose key signs the requests here.
pub const OWNER: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
pub const CHAIN: u64 = 31337;

pub struct Pool {
    pub _dir: tempfile::TempDir,
    pub store: Store,
    pub sched: LocalScheduler,
    pub ctx: Ctx,
    pub starts: PathBuf,
}

/// A pool of `miners` × 1 GPU whose worker runs `worker_body` (sh) after recording its start.
pub fn pool(miners: u32, worker_body: &str) -> Pool {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Local { root: dir.path().join("store") }.open().unwrap();
    pool_on(dir, store, miners, worker_body)
}

/// The same on a given store (e.g. a LocalStack bucket).
pub fn pool_on(dir: tempfile::TempDir, store: Store, miners: u32, worker_body: &str) -> Pool {
    let starts = dir.path().join("starts.txt");
    let worker = dir.path().join("fake-worker.sh");
    std::fs::write(
        &worker,
        format!("#!/bin/sh\necho \"$AIC_JOB_ID $AIC_ALLOC_INDEX $AIC_MINER\" >> \"$STARTS\"\n{worker_body}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sched = LocalScheduler::new(
        LocalConfig {
            miners,
            gpus_per_miner: 1,
            gateway: "local".into(),
            worker_bin: worker,
            work_root: dir.path().join("work"),
            worker_env: vec![("STARTS".into(), starts.to_string_lossy().into_owned())],
            time_limit_grace: aic_core::scheduler::local::TIME_LIMIT_GRACE,
            // Its workers are scripts that write into the test's folder: not sandboxed.
            sandbox: false,
            gpu_types: Vec::new(),
        },
        store.clone(),
    );
    let ctx = Ctx {
        store: store.clone(),
        scheduler: Arc::new(sched.clone()),
        auth: Arc::new(aic_chain::Eip712Auth { chain_id: CHAIN }),
        payments: Arc::new(FreePool),
        pricing: Pricing::free(),
        settler: None,
    };
    Pool { _dir: dir, store, sched, ctx, starts }
}

/// A local scheduler of `miners` × 1 GPU whose workers do nothing (`/bin/true`): for tests
/// of the functions alone.
pub fn idle_scheduler(work: PathBuf, store: &Store, miners: u32) -> LocalScheduler {
    LocalScheduler::new(
        LocalConfig {
            miners,
            gpus_per_miner: 1,
            gateway: "local".into(),
            worker_bin: "/bin/true".into(),
            work_root: work,
            worker_env: vec![],
            time_limit_grace: aic_core::scheduler::local::TIME_LIMIT_GRACE,
            // Its workers are scripts that write into the test's folder: not sandboxed.
            sandbox: false,
            gpu_types: Vec::new(),
        },
        store.clone(),
    )
}

pub fn unsigned(miners: u32) -> JobRequest {
    unsigned_by(OWNER.parse().unwrap(), miners)
}

/// A request of `owner` for `miners` × 1 GPU × 1 hour, valid for an hour, neither paid nor
/// signed.
pub fn unsigned_by(owner: aic_schemas::Address, miners: u32) -> JobRequest {
    let now = Utc::now();
    serde_json::from_value(serde_json::json!({
        "version": 1, "kind": "train", "owner": owner, "job_id": JobId::generate(), "entrypoint": "train.py",
        "miners": miners, "gpus_per_miner": 1, "max_hours": 1.0,
        "created_at": now, "expires_at": now + chrono::Duration::hours(1),
    }))
    .unwrap()
}

/// A request signed by its owner.
pub async fn signed(mut req: JobRequest) -> JobRequest {
    aic_chain::request::sign(&aic_chain::devchain::dev_key(1), &mut req, CHAIN).await.unwrap();
    req
}

pub async fn request(miners: u32) -> JobRequest {
    signed(unsigned(miners)).await
}

pub async fn put_request(store: &Store, req: &JobRequest) -> JobKey {
    let job = JobKey::new(req.owner, req.job_id.clone());
    store.create_json(&job.request(), req).await.unwrap();
    job
}

/// A worker token of `job` (one allocation, an hour), minted with the gateway's `secret`.
pub fn worker_token(secret: &[u8], job: &JobKey) -> String {
    let grant = aic_core::grant::WorkerGrant {
        owner: job.owner,
        job: job.job.clone(),
        data: None,
        allocs: 1,
        exp: (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp(),
    };
    aic_core::grant::mint(secret, &grant)
}

pub fn event(store: &Store, key: &str) -> S3EventRecord {
    S3EventRecord::object_created(store.bucket(), key, 100)
}

/// LocalStack's endpoint (the suite runs under `cargo xtask test`, which starts it).
pub fn localstack() -> String {
    std::env::var("AIC_TEST_S3_ENDPOINT")
        .expect("AIC_TEST_S3_ENDPOINT is not set: run the suite with `cargo xtask test`, which starts LocalStack")
}

/// The LocalStack venv's python (boto3), for the wiring script.
pub fn localstack_python() -> String {
    std::env::var("AIC_LOCALSTACK_PYTHON").unwrap_or_else(|_| {
        format!("{}/.cache/aic-tools/localstack-venv/bin/python", std::env::var("HOME").unwrap_or_default())
    })
}

/// A fresh bucket on LocalStack, and a store on it.
pub fn fresh_bucket(tag: &str) -> (String, Store) {
    let endpoint = localstack();
    let bucket = format!("aic-{tag}-{}", ulid::Ulid::new().to_string().to_lowercase());
    let ok = std::process::Command::new(localstack_python())
        .args(["-c", &format!(
            "import boto3; boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{bucket}')"
        )])
        .status()
        .unwrap();
    assert!(ok.success(), "creating bucket {bucket}");
    (bucket.clone(), s3_store(&bucket))
}

pub fn s3_store(bucket: &str) -> Store {
    StoreConfig::S3 {
        bucket: bucket.into(),
        endpoint: Some(localstack()),
        region: "us-east-1".into(),
        access_key: Some("test".into()),
        secret_key: Some("test".into()),
        session_token: None,
    }
    .open()
    .unwrap()
}

/// Waits until `f` holds, up to `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "timed out after {secs} s waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
