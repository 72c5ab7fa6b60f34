//! Deferred work, driven again by the functions themselves.
//!
//! Some events cannot be handled yet: a payment still awaiting its confirmations (12 blocks
//! on mainnet, about 144 s), the chain's RPC or the scheduler down. The transports that
//! deliver events cannot be trusted to ask again long enough:
//!
//! - MinIO's webhook queue (`queue_dir`) delivers its stored events one at a time and retries
//!   the same one every few seconds until it gets a 2xx (`internal/store/store.go`), so one
//!   deferred event answered with 503 holds up every later notification of the bucket.
//! - AWS Lambda retries an asynchronous S3 invocation twice (1 and 2 minutes apart), then
//!   drops the event.
//! - A cancel the gateway could not pass to the scheduler has no event of its own on AWS.
//!
//! So a transport that meets deferred work records it here (`pool/redrive/<hash>.json`: the
//! object's key, why, how many tries) and answers "done"; only when that record cannot be
//! written does it ask its sender to deliver again. [`Redriver::run`] (on the functions host
//! beside the webhook; on AWS the `aic-lambda-redrive` function, every minute) tries each
//! entry when it is due, with a backoff from 10 s to 5 min, and removes it once handled. The
//! handlers are idempotent, so a try that races a late delivery does no harm. A listing costs
//! what is deferred now, not the bucket's history.

use std::time::Duration;

use aic_core::{Store, StoreError, layout};
use aic_schemas::event::S3EventRecord;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Ctx, Outcome, handle_record};

/// Deferred work on one object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deferred {
    /// The object whose creation is handled again.
    pub key: String,
    pub first: DateTime<Utc>,
    /// Tries so far (the transport's own counts as the first).
    pub tries: u32,
    pub next: DateTime<Utc>,
    pub why: String,
}

/// The wait after `tries` failed tries: 10 s, 20 s, 40 s … at most 5 min.
pub fn backoff(tries: u32) -> Duration {
    Duration::from_secs((10u64 << tries.saturating_sub(1).min(5)).min(300))
}

/// Records that handling `key` must be tried again (or, for a key already waiting, that one
/// more try failed).
pub async fn later(store: &Store, key: &str, why: &str) -> Result<(), StoreError> {
    let entry = layout::redrive_entry(key);
    let now = Utc::now();
    let d = match store.get_json::<Deferred>(&entry, 64 * 1024).await? {
        Some(mut d) => {
            d.tries += 1;
            d.why = why.to_string();
            d.next = now + backoff(d.tries);
            d
        }
        None => Deferred { key: key.to_string(), first: now, tries: 1, next: now + backoff(1), why: why.to_string() },
    };
    store.put_json(&entry, &d).await
}

/// Records that `key` should be handled at the next pass (a job whose allocations have all
/// ended, to be settled): no transport delivers an event for it.
pub async fn soon(store: &Store, key: &str, why: &str) -> Result<(), StoreError> {
    let entry = layout::redrive_entry(key);
    let now = Utc::now();
    let d = match store.get_json::<Deferred>(&entry, 64 * 1024).await? {
        Some(mut d) => {
            d.next = now;
            d
        }
        None => Deferred { key: key.to_string(), first: now, tries: 0, next: now, why: why.to_string() },
    };
    store.put_json(&entry, &d).await
}

/// The host's answer to a job whose allocations have all ended (`Scheduler::on_job_end`):
/// its settlement, at the next pass of the re-driver.
pub fn settle_when_ended(store: Store) -> aic_core::scheduler::JobEnded {
    std::sync::Arc::new(move |job: &aic_core::JobKey| {
        let (store, key) = (store.clone(), job.status_snapshot());
        tokio::spawn(async move {
            if let Err(e) = soon(&store, &key, "its allocations have ended").await {
                tracing::warn!(%key, error = %e, "cannot queue the job's settlement");
            }
        });
    })
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pass {
    /// Handled now, and out of the queue.
    pub done: Vec<(String, Outcome)>,
    /// Tried and deferred again.
    pub again: usize,
    /// Not due yet.
    pub waiting: usize,
    /// Could not be read, retried or removed now (the store failed): left for the next pass.
    pub failed: usize,
}

/// Tries deferred work when it is due.
#[derive(Clone)]
pub struct Redriver {
    ctx: Ctx,
}

impl Redriver {
    pub fn new(ctx: Ctx) -> Self {
        Redriver { ctx }
    }

    /// Every entry now: the ones due are handled again.
    pub async fn pass(&self) -> Result<Pass, StoreError> {
        self.pass_at(Utc::now()).await
    }

    /// Every entry, as if it were `now`: the ones due by then are handled again. A store
    /// failure on one entry leaves it for the next pass and goes on with the others.
    pub async fn pass_at(&self, now: DateTime<Utc>) -> Result<Pass, StoreError> {
        let mut pass = Pass::default();
        for meta in self.ctx.store.list(layout::REDRIVE).await? {
            let entry = meta.location.to_string();
            if let Err(e) = self.one(&entry, now, &mut pass).await {
                tracing::info!(%entry, error = %e, "deferred work not reached this pass");
                pass.failed += 1;
            }
        }
        Ok(pass)
    }

    async fn one(&self, entry: &str, now: DateTime<Utc>, pass: &mut Pass) -> Result<(), StoreError> {
        let store = &self.ctx.store;
        let Some(d) = store.get_json::<Deferred>(entry, 64 * 1024).await? else { return Ok(()) };
        if d.next > now {
            pass.waiting += 1;
            return Ok(());
        }
        let record = S3EventRecord::object_created(store.bucket(), &d.key, 0);
        match handle_record(&self.ctx, &record).await {
            Ok(out) => {
                store.delete(entry).await?;
                pass.done.push((d.key, out));
            }
            Err(e) => {
                tracing::info!(key = %d.key, tries = d.tries + 1, error = %e, "deferred again");
                later(store, &d.key, &e.to_string()).await?;
                pass.again += 1;
            }
        }
        Ok(())
    }

    /// A pass every `every` until `stop` resolves.
    pub async fn run(self, every: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            match self.pass().await {
                Ok(p) if !p.done.is_empty() => tracing::info!(done = p.done.len(), "deferred work handled"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the deferred work; trying again"),
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// For a transport that met an error handling `key`: records it for later. `Err` when even
/// that failed (the store is down): only then should the sender deliver again.
pub async fn defer(store: &Store, key: &str, why: &str) -> Result<(), StoreError> {
    later(store, key, why).await.inspect_err(|e| tracing::warn!(key, error = %e, "cannot record deferred work"))
}
