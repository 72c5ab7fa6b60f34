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
        },
        store.clone(),
    );
    let ctx = Ctx {
        store: store.clone(),
        scheduler: Arc::new(sched.clone()),
        auth: Arc::new(aic_chain::Eip712Auth { chain_id: CHAIN }),
        payments: Arc::new(FreePool),
        pricing: Pricing::free(),
    };
    Pool { _dir: dir, store, sched, ctx, starts }
}

pub fn unsigned(miners: u32) -> JobRequest {
    let now = Utc::now();
    serde_json::from_value(serde_json::json!({
        "version": 1, "kind": "train", "owner": OWNER, "job_id": JobId::generate(), "entrypoint": "train.py",
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

pub fn event(store: &Store, key: &str) -> S3EventRecord {
    S3EventRecord::object_created(store.bucket(), key, 100)
}
