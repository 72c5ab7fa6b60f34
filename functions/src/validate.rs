//! validate: `users/<addr>/jobs/<job>/request.json` created.
//!
//! 1. The job's log must be empty or at `submitted` (anything later: a duplicate event).
//!    An event is a hint, not a fact: when there is no request.json at the key (a forged or
//!    stale event), nothing is written and the job id stays free. Otherwise the job goes into
//!    its owner's index (`users/<addr>/index/`, what listings read the newest from) and its
//!    log starts at `submitted`.
//! 2. The request is read with a size limit (the object's, not the event's word), parsed, and checked: its owner and job id must
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

pub async fn handle(ctx: &Ctx, job: &JobKey) -> Result<Outcome, HandlerError> {
    let store = &ctx.store;
    let fresh = match status::current(store, job).await? {
        None => true,
        Some(c) if c.state == JobState::Submitted && c.run == 0 => false,
        Some(_) => return Ok(Outcome::AlreadyDone(job.clone())),
    };
    // An event is only a hint: a job is born of its request, so nothing is written for a
    // request that is not there (a forged or stale event), and its id stays free.
    let read = read_request(ctx, job).await?;
    if fresh {
        if matches!(read, Err(Refusal::Missing)) {
            tracing::info!(job = %job.job, "event for a request that is not there: ignored");
            return Ok(Outcome::Ignored);
        }
        // Into its owner's index (what listings read the newest jobs from), then its log.
        status::index(store, job).await?;
        status::advance(store, job, Transition::new(JobState::Submitted, BY).run(0)).await?;
    }
    let req = match read {
        Ok(r) => r,
        Err(refusal) => return reject(ctx, job, refusal.to_string()).await,
    };
    if let Err(why) = ctx.auth.authenticate(&req) {
        return reject(ctx, job, why).await;
    }
    if let Some(why) = claim_id(ctx, job).await? {
        return reject(ctx, job, why).await;
    }
    // An image of its own only where the pool runs images, and that one.
    if let Some(image) = &req.image {
        let allowed = ctx.scheduler.images();
        if allowed.is_empty() {
            return reject(ctx, job, format!("this pool runs no container images: submit it without --image {image}"))
                .await;
        }
        if !aic_schemas::validate::image_allowed(image, &allowed) {
            let why = format!("image {image} is not one this pool runs (it runs {})", allowed.join(", "));
            return reject(ctx, job, why).await;
        }
    }
    // The secrets it names are its owner's and set (their values reach its workers at start).
    if !req.secrets.is_empty() {
        let have = aic_core::vault::list(store, &req.owner).await?;
        if let Some(n) = req.secrets.iter().find(|n| !have.iter().any(|l| &l.name == *n)) {
            return reject(ctx, job, format!("secret {n} is not set: `aic secret set {n}`, then submit again")).await;
        }
    }
    let quote = ctx.pricing.quote(&req);
    let payment = match ctx.payments.verify(job, 0, &req, &quote).await {
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
        run: 0,
    };
    // A manifest already there was written by an earlier delivery of this event.
    store.create_json(&job.manifest(), &manifest).await?;
    // A payment the gateway kept for the owner's browser (`gateway::payment`) has done its part.
    let _ = store.delete(&aic_core::layout::pending_payment(&job.owner, &job.job)).await;
    // Its code is a paid job's now, no longer an upload waiting for one (`gateway::quota`).
    let _ = store.delete(&aic_core::layout::code_pending(&job.owner, &job.job)).await;
    let paid = paid_reason(&manifest);
    match status::advance(store, job, Transition::new(JobState::Paid, BY).reason(paid).run(0)).await? {
        Advanced::Applied(_) => Ok(Outcome::Validated(job.clone())),
        _ => Ok(Outcome::AlreadyDone(job.clone())),
    }
}

/// The owner a job id was claimed by, pool-wide (`pool/ids/<job>.json`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct IdClaim {
    pub owner: aic_schemas::Address,
    pub at: chrono::DateTime<Utc>,
}

/// Claims the job's id for its owner, create-only; the reason to refuse it when another
/// owner claimed it first. Job ids are unique per owner only, and names across the pool
/// (Nomad's job, the gang queue, serving routes, the local scheduler's folders) use the id
/// alone: a second owner's request under a taken id would otherwise reach the first's job
/// (cancel it, or deploy in its place).
async fn claim_id(ctx: &Ctx, job: &JobKey) -> Result<Option<String>, HandlerError> {
    let key = aic_core::layout::job_id_claim(&job.job);
    let claim = IdClaim { owner: job.owner, at: Utc::now() };
    if ctx.store.create_json(&key, &claim).await? == aic_core::Created::Created {
        return Ok(None);
    }
    match ctx.store.get_json::<IdClaim>(&key, aic_schemas::validate::MAX_DOC_BYTES).await? {
        Some(c) if c.owner == job.owner => Ok(None),
        Some(_) => Ok(Some(format!(
            "job id {} is another owner's on this pool; submit under a new id (aic makes one each time)",
            job.job
        ))),
        None => Err(HandlerError::Unavailable("the job id's claim vanished".into())),
    }
}

/// Whether the job is its owner's pool-wide: validated (a manifest is written only once its
/// id is claimed for its owner). Only such a job is stopped by name across the pool.
pub(crate) async fn owns_its_id(ctx: &Ctx, job: &JobKey) -> Result<bool, aic_core::StoreError> {
    Ok(ctx.store.head(&job.manifest()).await?.is_some())
}

/// Why a request is refused.
#[derive(Debug)]
enum Refusal {
    /// There is no request.json at the key.
    Missing,
    Invalid(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing => f.write_str("request.json is gone; submit the job again"),
            Refusal::Invalid(why) => f.write_str(why),
        }
    }
}

/// Reads and checks the request. The outer `Result` is for store failures (retry); the
/// inner one carries the reason a request is refused.
async fn read_request(ctx: &Ctx, job: &JobKey) -> Result<Result<JobRequest, Refusal>, HandlerError> {
    let bytes = match ctx.store.get_limited(&job.request(), MAX_REQUEST_BYTES).await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Err(Refusal::Missing)),
        Err(aic_core::StoreError::TooLarge { size, .. }) => return Ok(Err(Refusal::Invalid(too_large(size)))),
        Err(e) => return Err(e.into()),
    };
    Ok(check_request(job, &bytes))
}

/// Parses and checks a request's bytes against the key it was uploaded under.
fn check_request(job: &JobKey, bytes: &[u8]) -> Result<JobRequest, Refusal> {
    let bad = |why: String| Err(Refusal::Invalid(why));
    let req: JobRequest = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => return bad(format!("request.json is not a job request: {e}")),
    };
    if req.owner != job.owner {
        return bad(format!("request names owner {} but was uploaded under {}", req.owner, job.owner));
    }
    if req.job_id != job.job {
        return bad(format!("request names job {} but was uploaded as job {}", req.job_id, job.job));
    }
    if let Err(errs) = req.validate(Some(Utc::now())) {
        return bad(format!("invalid request: {errs}"));
    }
    Ok(req)
}

/// "paid 1.5 AIC in 0x…" or "free of charge", for the `paid` record.
pub(crate) fn paid_reason(m: &JobManifest) -> String {
    match &m.payment {
        Some(p) => format!("paid {} in {}", format_aic(p.paid.parse().unwrap_or(0)), p.tx),
        None => "free of charge".to_string(),
    }
}

pub(crate) fn too_large(size: u64) -> String {
    format!("request.json is {size} bytes; the limit is {} KiB", MAX_REQUEST_BYTES / 1024)
}

async fn reject(ctx: &Ctx, job: &JobKey, reason: String) -> Result<Outcome, HandlerError> {
    reject_run(ctx, job, 0, reason).await
}

/// Refuses paid run `run` of the job: `rejected` with the reason (any deposit made for it
/// is then refunded in full by settle).
pub(crate) async fn reject_run(ctx: &Ctx, job: &JobKey, run: u32, reason: String) -> Result<Outcome, HandlerError> {
    tracing::info!(job = %job.job, run, %reason, "rejected");
    let t = Transition::new(JobState::Rejected, BY).reason(reason.clone()).run(run);
    match status::advance(&ctx.store, job, t).await? {
        Advanced::Applied(_) | Advanced::Already(_) => Ok(Outcome::Rejected(job.clone(), reason)),
        Advanced::Refused(_) => Ok(Outcome::AlreadyDone(job.clone())),
    }
}
