//! resume: `users/<addr>/jobs/<job>/runs/<run>/request.json` created. The owner asks that a
//! training job which failed, was cancelled or ran out of its paid time start again under
//! the same id, from its synced outputs (the checkpoint), as paid run `run`.
//!
//! 1. Run `run` began before (a duplicate event): done. The run before it still going:
//!    deferred, so the resume starts once that run ended (its paid hours bound the wait).
//! 2. The run before is settled first (its allocations all stopped, its money done): the new
//!    run's allocations and usage never mix with the old. Until then: deferred.
//! 3. The job gets run `run`'s `submitted` record (`status::resume`). A request that cannot
//!    resume it (not signed by its owner, expired, a serve job) then has the run `rejected`
//!    with the reason, and settle refunds its deposit whole. A job that cannot be resumed at
//!    all (it succeeded) gets no new run; a deposit made for one is refunded at once.
//! 4. The run is quoted from its hours, its payment verified and claimed for this run, its
//!    manifest written create-only (the job's own request with the run's hours and payment)
//!    and the job moves to `paid`: dispatch takes it from there.

use aic_core::layout::JobKey;
use aic_core::runs;
use aic_core::status::{self, Advanced, Resumed, Transition};
use aic_schemas::validate::MAX_REQUEST_BYTES;
use aic_schemas::{JobKind, JobManifest, JobState, ResumeRequest};
use chrono::Utc;

use crate::validate::{paid_reason, reject_run, too_large};
use crate::{Ctx, HandlerError, Outcome};
use aic_core::payment::PaymentVerdict;

const BY: &str = "validate";

pub async fn handle(ctx: &Ctx, job: &JobKey, run: u32) -> Result<Outcome, HandlerError> {
    let store = &ctx.store;
    let Some(cur) = status::current(store, job).await? else { return Ok(Outcome::Ignored) };
    if cur.run > run || (cur.run == run && cur.state != JobState::Submitted) {
        return Ok(Outcome::AlreadyDone(job.clone()));
    }
    let bytes = match store.get_limited(&job.run_request(run), MAX_REQUEST_BYTES).await {
        Ok(Some(b)) => Ok(b),
        Ok(None) => return Ok(Outcome::Ignored),
        Err(aic_core::StoreError::TooLarge { size, .. }) => Err(too_large(size)),
        Err(e) => return Err(e.into()),
    };
    let read = bytes.and_then(|b| check(job, run, &b));
    if cur.run + 1 == run {
        if !cur.state.is_terminal() {
            return Err(HandlerError::Deferred(format!(
                "job {} is still {} (run {}); run {} starts once it ended",
                job.job,
                cur.state,
                aic_schemas::shown_run(cur.run),
                aic_schemas::shown_run(run)
            )));
        }
        previous_run_done(ctx, job, cur.run).await?;
        match status::resume(store, job, run, BY).await? {
            Resumed::Started(_) | Resumed::Already(_) => {}
            Resumed::Running(r) => {
                return Err(HandlerError::Deferred(format!("job {} is still {}", job.job, r.state)));
            }
            Resumed::Refused(why) => return refund_unstarted(ctx, job, run, read.ok(), why).await,
        }
    } else if cur.run != run {
        tracing::info!(job = %job.job, run, at = cur.run, "a resume for a run that cannot be next; ignored");
        return Ok(Outcome::Ignored);
    }
    let req = match read {
        Ok(r) => r,
        Err(why) => return reject_run(ctx, job, run, why).await,
    };
    if let Err(why) = ctx.auth.authenticate_resume(&req) {
        return reject_run(ctx, job, run, why).await;
    }
    let Some(first) = runs::manifest(store, job, 0).await? else {
        return reject_run(ctx, job, run, format!("job {} never ran; submit it again", job.job)).await;
    };
    if first.request.kind != JobKind::Train {
        let why = "only a training job can be resumed; deploy the project again to serve it".to_string();
        return reject_run(ctx, job, run, why).await;
    }
    let mut request = first.request.clone();
    request.max_hours = req.max_hours;
    request.payment = req.payment.clone();
    let quote = ctx.pricing.quote(&request);
    let payment = match ctx.payments.verify(job, run, &request, &quote).await {
        Ok(p) => p,
        Err(PaymentVerdict::Rejected(r)) => return reject_run(ctx, job, run, r.0).await,
        Err(PaymentVerdict::Pending(why)) => return Err(HandlerError::Deferred(why)),
        Err(PaymentVerdict::Unavailable(why)) => return Err(HandlerError::Unavailable(why)),
    };
    let manifest = JobManifest {
        version: 1,
        request,
        quote,
        payment,
        placement: first.placement.clone(),
        validated_at: Utc::now(),
        run,
    };
    // One there already was written by an earlier delivery of this event.
    store.create_json(&job.run_manifest(run), &manifest).await?;
    let t = Transition::new(JobState::Paid, BY).reason(paid_reason(&manifest)).run(run);
    match status::advance(store, job, t).await? {
        Advanced::Applied(_) => Ok(Outcome::Validated(job.clone())),
        _ => Ok(Outcome::AlreadyDone(job.clone())),
    }
}

/// Parses and checks a resume request's bytes against the key it was uploaded under.
fn check(job: &JobKey, run: u32, bytes: &[u8]) -> Result<ResumeRequest, String> {
    let req: ResumeRequest =
        serde_json::from_slice(bytes).map_err(|e| format!("runs/{run}/request.json is not a resume request: {e}"))?;
    if req.owner != job.owner {
        return Err(format!("the resume names owner {} but was uploaded under {}", req.owner, job.owner));
    }
    if req.job_id != job.job {
        return Err(format!("the resume names job {} but was uploaded for job {}", req.job_id, job.job));
    }
    if req.run != run {
        return Err(format!("the resume names run {} but was uploaded as run {run}", req.run));
    }
    req.validate(Some(Utc::now())).map_err(|e| format!("invalid resume: {e}"))?;
    Ok(req)
}

/// Waits (defers) until run `prev` is done with: settled where it was paid for, else all its
/// allocations stopped.
async fn previous_run_done(ctx: &Ctx, job: &JobKey, prev: u32) -> Result<(), HandlerError> {
    let paid = runs::manifest(&ctx.store, job, prev).await?.is_some_and(|m| m.payment.is_some());
    let done = if paid {
        ctx.store.head(&aic_core::layout::settlement(job, prev)).await?.is_some()
    } else {
        ctx.scheduler.finished(job).await?
    };
    if done {
        Ok(())
    } else {
        Err(HandlerError::Deferred(format!(
            "job {}: run {} is still being stopped and settled",
            job.job,
            aic_schemas::shown_run(prev)
        )))
    }
}

/// A resume the job cannot take (it succeeded): no run begins; a deposit made for it goes
/// back whole now, recorded as that run's settlement.
async fn refund_unstarted(
    ctx: &Ctx,
    job: &JobKey,
    run: u32,
    req: Option<ResumeRequest>,
    why: String,
) -> Result<Outcome, HandlerError> {
    tracing::info!(job = %job.job, run, %why, "resume refused");
    if let Some(p) = req.and_then(|r| r.payment) {
        crate::settle::refund_run(ctx, job, run, &p).await?;
    }
    Ok(Outcome::Rejected(job.clone(), why))
}
