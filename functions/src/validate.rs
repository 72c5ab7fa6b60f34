//! validate: `users/<addr>/jobs/<job>/request.json` created.
//!
//! 1. The job's log must be empty or at `submitted` (anything later: a duplicate event).
//! 2. The request is read with a size limit, parsed, and checked: its owner and job id must
//!    be the ones in its key; every field within limits; not expired; signed by its owner.
//! 3. The quote is computed and the payment verified and claimed (one payment, one job).
//!    A payment still awaiting confirmations defers the event: nothing is written.
//! 4. `manifest.json` is written create-only, then the job moves to `paid`.
//!
//! A refused request moves the job to `rejected` with the reason. Each step is safe to
//! repeat, so a crash anywhere is mended by the event's redelivery.

use aic_core::layout::JobKey;
use aic_core::status::{self, Advanced, Transition};
use aic_schemas::manifest::Placement;
use aic_schemas::validate::MAX_REQUEST_BYTES;
use aic_schemas::{JobManifest, JobRequest, JobState};
use chrono::Utc;

use crate::{Ctx, HandlerError, Outcome};
use aic_core::payment::PaymentVerdict;
use aic_core::pricing::format_aic;

const BY: &str = "validate";

pub async fn handle(ctx: &Ctx, job: &JobKey, size_hint: Option<u64>) -> Result<Outcome, HandlerError> {
    let store = &ctx.store;
    match status::current(store, job).await? {
        None => {
            status::advance(store, job, Transition::new(JobState::Submitted, BY)).await?;
        }
        Some(c) if c.state == JobState::Submitted => {}
        Some(_) => return Ok(Outcome::AlreadyDone(job.clone())),
    }

    let req = match read_request(ctx, job, size_hint).await? {
        Ok(r) => r,
        Err(reason) => return reject(ctx, job, reason).await,
    };
    if let Err(why) = ctx.auth.authenticate(&req) {
        return reject(ctx, job, why).await;
    }
    let quote = ctx.pricing.quote(&req);
    let payment = match ctx.payments.verify(job, &req, &quote).await {
        Ok(p) => p,
        Err(PaymentVerdict::Rejected(r)) => return reject(ctx, job, r.0).await,
        Err(PaymentVerdict::Pending(why)) => return Err(HandlerError::Deferred(why)),
        Err(PaymentVerdict::Unavailable(why)) => return Err(HandlerError::Unavailable(why)),
    };
    let manifest = JobManifest {
        version: 1,
        request: req,
        quote,
        payment,
        placement: Placement::default(),
        validated_at: Utc::now(),
    };
    // A manifest already there was written by an earlier delivery of this event.
    store.create_json(&job.manifest(), &manifest).await?;
    let paid = match &manifest.payment {
        Some(p) => format!("paid {} in {}", format_aic(p.paid.parse().unwrap_or(0)), p.tx),
        None => "free of charge".to_string(),
    };
    match status::advance(store, job, Transition::new(JobState::Paid, BY).reason(paid)).await? {
        Advanced::Applied(_) => Ok(Outcome::Validated(job.clone())),
        _ => Ok(Outcome::AlreadyDone(job.clone())),
    }
}

/// Reads and checks the request. The outer `Result` is for store failures (retry); the
/// inner one carries the reason a request is refused.
async fn read_request(
    ctx: &Ctx,
    job: &JobKey,
    size_hint: Option<u64>,
) -> Result<Result<JobRequest, String>, HandlerError> {
    if let Some(size) = size_hint.filter(|s| *s > MAX_REQUEST_BYTES) {
        return Ok(Err(too_large(size)));
    }
    let bytes = match ctx.store.get_limited(&job.request(), MAX_REQUEST_BYTES).await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Err("request.json is gone; submit the job again".into())),
        Err(aic_core::StoreError::TooLarge { size, .. }) => return Ok(Err(too_large(size))),
        Err(e) => return Err(e.into()),
    };
    let req: JobRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("request.json is not a job request: {e}"))),
    };
    if req.owner != job.owner {
        return Ok(Err(format!("request names owner {} but was uploaded under {}", req.owner, job.owner)));
    }
    if req.job_id != job.job {
        return Ok(Err(format!("request names job {} but was uploaded as job {}", req.job_id, job.job)));
    }
    if let Err(errs) = req.validate(Some(Utc::now())) {
        return Ok(Err(format!("invalid request: {errs}")));
    }
    Ok(Ok(req))
}

fn too_large(size: u64) -> String {
    format!("request.json is {size} bytes; the limit is {} KiB", MAX_REQUEST_BYTES / 1024)
}

async fn reject(ctx: &Ctx, job: &JobKey, reason: String) -> Result<Outcome, HandlerError> {
    tracing::info!(job = %job.job, %reason, "rejected");
    let t = Transition::new(JobState::Rejected, BY).reason(reason.clone());
    match status::advance(&ctx.store, job, t).await? {
        Advanced::Applied(_) | Advanced::Already(_) => Ok(Outcome::Rejected(job.clone(), reason)),
        Advanced::Refused(_) => Ok(Outcome::AlreadyDone(job.clone())),
    }
}
