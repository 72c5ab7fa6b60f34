//! Live tests against a real Nomad cluster; they run when `NOMAD_ADDR` is set (with
//! `NOMAD_TOKEN` where ACLs are on) and otherwise print why they did nothing. For a pool
//! operator:
//!
//! ```text
//! NOMAD_ADDR=http://nomad.pool:4646 NOMAD_TOKEN=… AIC_NOMAD_DATACENTER=dc1 \
//!   cargo test -p aic-core --test nomad_live -- --nocapture
//! ```
//! They register a 1-miner × 1-GPU job whose task is `/bin/true` (`AIC_NOMAD_WORKER`
//! overrides), check its placement or queued reason, read the pool, and deregister it.

use aic_core::layout::JobKey;
use aic_core::scheduler::nomad::{NomadConfig, NomadScheduler};
use aic_core::scheduler::{ScheduleError, Scheduler, Submitted};
use aic_schemas::{JobId, JobManifest};

fn live() -> Option<NomadScheduler> {
    match NomadConfig::from_env(vec![]) {
        Ok(Some(mut cfg)) => {
            if std::env::var("AIC_NOMAD_WORKER").is_err() {
                cfg.worker = "/bin/true".into();
            }
            Some(NomadScheduler::new(cfg))
        }
        Ok(None) => {
            eprintln!("nomad_live: NOMAD_ADDR is not set; nothing to run against (see this file's header)");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn a_job_is_placed_or_queued_then_deregistered_on_a_real_cluster() {
    let Some(n) = live() else { return };
    let pool = n.pool().await.expect("reading the cluster's nodes");
    eprintln!("gateways: {pool:#?}");
    let now = chrono::Utc::now();
    let m: JobManifest = serde_json::from_value(serde_json::json!({
        "version": 1,
        "request": {"version": 1, "kind": "train", "owner": "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
            "job_id": JobId::generate(), "entrypoint": "train.py", "miners": 1, "gpus_per_miner": 1,
            "max_hours": 0.01, "created_at": now, "expires_at": now + chrono::Duration::hours(1)},
        "quote": {"gpu_hours": 0.01, "price_per_gpu_hour": "0", "total": "0"},
        "validated_at": now,
    }))
    .unwrap();
    let job = JobKey::new(m.request.owner, m.request.job_id.clone());
    match n.submit(&job, &m).await {
        Ok(Submitted::Placed(nodes)) => assert!(!nodes.is_empty()),
        Ok(Submitted::Queued(why)) => eprintln!("queued: {why}"),
        Err(ScheduleError::Unplaceable(why)) => {
            eprintln!("this cluster has no GPU node in {}: {why}", n.config().datacenter);
            return;
        }
        Err(e) => panic!("{e}"),
    }
    // Registering again is a no-op.
    assert!(n.submit(&job, &m).await.is_ok());
    n.cancel(&job).await.unwrap();
    n.cancel(&job).await.unwrap();
}
