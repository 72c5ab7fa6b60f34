//! The embedded pool: the functions and the local scheduler, hosted in an `aic` process.
//!
//! `aic dev up` hosts it until stopped. `aic run`, `submit` and `demo` host it themselves
//! while they watch a job if no other process does (`pool.lock` tells), so a single
//! command works on a fresh machine. Events come from the spool that every write through
//! the CLI's store fills, exactly as MinIO's notifications reach the functions on the pool.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aic_core::pricing::Pricing;
use aic_core::scheduler::local::{LocalConfig, LocalScheduler};
use aic_functions::{Ctx, FreePool, Outcome};
use anyhow::{Context, anyhow};

use crate::env::Env;

/// How often a hosting process looks at the spool.
pub const POLL: Duration = Duration::from_millis(100);

pub struct Hosted {
    ctx: Ctx,
    pub scheduler: LocalScheduler,
    spool: aic_core::events::Spool,
    _lock: File,
}

/// Size of the simulated pool: `AIC_POOL_MINERS` × `AIC_POOL_GPUS` (default 2 × 1).
pub fn pool_size() -> anyhow::Result<(u32, u32)> {
    let get = |k: &str, d: u32| -> anyhow::Result<u32> {
        match std::env::var(k) {
            Ok(v) if !v.is_empty() => v.parse().map_err(|_| anyhow!("{k}={v:?} is not a whole number")),
            _ => Ok(d),
        }
    };
    Ok((get("AIC_POOL_MINERS", 2)?, get("AIC_POOL_GPUS", 1)?))
}

fn worker_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AIC_WORKER_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(me) = std::env::current_exe() {
        let sibling = me.with_file_name("aic-worker");
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from("aic-worker")
}

impl Hosted {
    /// Hosts the pool unless another process already does (`Ok(None)`).
    pub fn try_host(env: &Env, miners: u32, gpus: u32) -> anyhow::Result<Option<Hosted>> {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(env.home.join("pool.lock"))
            .context("opening pool.lock")?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e).context("locking pool.lock"),
        }
        let cfg = LocalConfig {
            miners,
            gpus_per_miner: gpus,
            gateway: "local".into(),
            worker_bin: worker_bin(),
            work_root: env.home.join("work"),
            worker_env: env.store_config.env(),
        };
        let scheduler = LocalScheduler::new(cfg, env.store.clone());
        let ctx = Ctx {
            store: env.store.clone(),
            scheduler: Arc::new(scheduler.clone()),
            payments: Arc::new(FreePool),
            pricing: Pricing::free(),
        };
        Ok(Some(Hosted { ctx, scheduler, spool: env.spool.clone(), _lock: lock }))
    }

    /// Handles every pending event once; returns how many were handled. An event whose
    /// handler fails stays in the spool and is tried again on the next step.
    pub async fn step(&self) -> anyhow::Result<usize> {
        let mut done = 0;
        for p in self.spool.pending()? {
            match aic_functions::handle_record(&self.ctx, &p.record).await {
                Ok(outcome) => {
                    if outcome != Outcome::Ignored {
                        tracing::debug!(?outcome, "event handled");
                    }
                    self.spool.ack(&p);
                    done += 1;
                }
                Err(e) => {
                    tracing::warn!(key = %p.record.key(), error = %e, "event failed; will retry");
                    break;
                }
            }
        }
        Ok(done)
    }

    /// Serves until Ctrl-C, then stops every allocation.
    pub async fn serve(&self) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                _ = tick.tick() => { self.step().await?; }
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        eprintln!("stopping the embedded pool; running allocations are stopped");
        self.scheduler.shutdown().await;
        Ok(())
    }

    /// After the watched job ended: keep serving until no allocation runs and no event
    /// waits, so that other jobs' work is not stranded.
    pub async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let handled = self.step().await.unwrap_or(0);
            if handled == 0 && self.scheduler.is_idle() && self.spool.pending().map(|p| p.is_empty()).unwrap_or(true) {
                return;
            }
            tokio::select! {
                _ = self.scheduler.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}
