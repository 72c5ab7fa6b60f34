//! The event functions of aic, as plain async handlers over S3 event records.
//!
//! - [`validate`]: `request.json` created → check it and its owner's signature, price it,
//!   verify and claim the payment, write the
//!   manifest (create-only) and move the job to `paid`, or `rejected` with a reason.
//! - [`resume`]: `runs/<run>/request.json` created → the owner resumes a job that ended as
//!   a new paid run: checked, paid, its own manifest, the job `submitted` again.
//! - [`dispatch`]: `manifest.json` (or a run's) created → hand the job to the scheduler, move it to
//!   `scheduled` (or `failed` when it can never be placed).
//! - [`cancel`]: a `cancelled` status record created → stop the job's allocations.
//! - [`settle`]: a job's status snapshot written, the job ended and its allocations stopped →
//!   settle its paid run (what it used to the treasury, the rest back to its owner).
//!
//! Events arrive at least once, out of order, duplicated: every handler is idempotent, and
//! [`handle_record`] routes a record to the handler its key calls for. Transports (the
//! embedded pool's spool, the webhook [`host`], the [`poll`]er, Lambda) are thin loops around
//! it; [`webhook`] reads the bodies MinIO and SNS deliver over HTTP, [`sns`] checks SNS
//! signatures, and [`gateway`] is the API users without pool credentials reach the bucket by.
//!
//! No handler runs user code.

pub mod cancel;
pub mod config;
pub mod dispatch;
pub mod gateway;
pub mod host;
pub mod lambda;
pub mod metrics;
pub mod poll;
pub mod proxy;
pub mod redrive;
pub mod resume;
pub mod secrets;
pub mod settle;
pub mod sns;
pub mod validate;
pub mod web;
pub mod webhook;

use std::sync::Arc;

use aic_core::Store;
use aic_core::auth::Authenticator;
use aic_core::layout::{JobKey, KeyKind, classify};
use aic_core::pricing::Pricing;
use aic_core::scheduler::Scheduler;
use aic_schemas::event::{S3Event, S3EventRecord};

pub use aic_core::payment::{FreePool, PaymentVerifier, Settler};

/// What the handlers share: built once per process, cheap to clone.
#[derive(Clone)]
pub struct Ctx {
    pub store: Store,
    pub scheduler: Arc<dyn Scheduler>,
    pub auth: Arc<dyn Authenticator>,
    pub payments: Arc<dyn PaymentVerifier>,
    pub pricing: Pricing,
    /// Settles deposits in the pool's escrow (a pool with an escrow and its settler's key).
    pub settler: Option<Arc<dyn Settler>>,
}

impl Ctx {
    /// The handlers of a pool that takes payments on `chain`: requests signed for its chain
    /// id, payments checked on it (claims in `store`), priced at its rate.
    pub fn on_chain(
        store: Store,
        scheduler: Arc<dyn Scheduler>,
        chain: &aic_chain::ChainConfig,
    ) -> anyhow::Result<Ctx> {
        Ok(Ctx {
            payments: Arc::new(aic_chain::ChainPayments::new(chain.clone(), store.clone())?),
            auth: Arc::new(aic_chain::Eip712Auth { chain_id: chain.chain_id }),
            pricing: chain.pricing(),
            store,
            scheduler,
            settler: None,
        })
    }

    /// Settles the pool's escrow deposits with `key` (the settler the escrow names).
    pub fn with_settler(
        mut self,
        chain: &aic_chain::ChainConfig,
        key: aic_chain::PrivateKeySigner,
    ) -> anyhow::Result<Ctx> {
        self.settler = Some(Arc::new(aic_chain::settle::ChainSettler::new(chain.clone(), key)?));
        Ok(self)
    }
}

/// What handling one record did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not an event any function acts on.
    Ignored,
    /// The request was accepted and its manifest written.
    Validated(JobKey),
    /// The request was refused; the reason is in the job's status.
    Rejected(JobKey, String),
    /// The job was handed to the scheduler.
    Dispatched(JobKey),
    /// The job cannot run on this pool; the reason is in its status.
    Unplaceable(JobKey, String),
    /// The job's allocations were told to stop.
    Cancelled(JobKey),
    /// The job's paid run was settled: what it used and what went back.
    Settled(JobKey, String),
    /// A duplicate or late event: the work was already done.
    AlreadyDone(JobKey),
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Store(#[from] aic_core::StoreError),
    #[error(transparent)]
    Schedule(#[from] aic_core::scheduler::ScheduleError),
    /// Not yet (e.g. a payment awaiting confirmations): deliver the event again later.
    #[error("deferred: {0}")]
    Deferred(String),
    /// A dependency (the chain) could not be asked: deliver the event again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Routes one record by its key. An `Err` means "try this event again later" (a store or
/// scheduler outage); a refused request is an `Ok(Rejected)`.
pub async fn handle_record(ctx: &Ctx, record: &S3EventRecord) -> Result<Outcome, HandlerError> {
    if !record.is_object_created() {
        return Ok(Outcome::Ignored);
    }
    if record.s3.bucket.name != ctx.store.bucket() {
        tracing::debug!(bucket = %record.s3.bucket.name, "event for another bucket");
        return Ok(Outcome::Ignored);
    }
    let key = record.key();
    let (function, result) = match classify(&key) {
        KeyKind::Request(job) => ("validate", validate::handle(ctx, &job).await),
        KeyKind::ResumeRequest(job, run) => ("resume", resume::handle(ctx, &job, run).await),
        KeyKind::Manifest(job) => ("dispatch", dispatch::handle(ctx, &job).await),
        KeyKind::StatusRecord(job, seq) => ("cancel", cancel::handle(ctx, &job, seq).await),
        KeyKind::StatusSnapshot(job) => ("settle", settle::handle(ctx, &job).await),
        KeyKind::Other => return Ok(Outcome::Ignored),
    };
    metrics::handled(function, &result);
    result
}

/// Records of one delivery handled at once.
pub const EVENT_CONCURRENCY: usize = 16;

/// Handles the records of an event: each distinct object once (handlers read the object
/// itself, so a second record for the same key could only repeat the work), up to
/// [`EVENT_CONCURRENCY`] at a time. One result per distinct record, with its key, in the
/// order of their first appearance.
pub async fn handle_event(ctx: &Ctx, event: &S3Event) -> Vec<(String, Result<Outcome, HandlerError>)> {
    use futures::StreamExt;
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<&S3EventRecord> =
        event.records.iter().filter(|r| seen.insert((r.s3.bucket.name.clone(), r.key()))).collect();
    // By index: a closure over `&S3EventRecord` would make the future higher-ranked, which
    // the host's `Send` bound on spawned tasks cannot prove.
    futures::stream::iter(0..distinct.len())
        .map(|i| {
            let r = distinct[i];
            async move { (r.key(), handle_record(ctx, r).await) }
        })
        .buffered(EVENT_CONCURRENCY)
        .collect()
        .await
}
