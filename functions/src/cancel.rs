//! cancel: a status record created. When it is `cancelled`, the job's allocations are
//! stopped; the scheduler's cancel is idempotent, so duplicates are harmless.

use aic_core::layout::JobKey;
use aic_schemas::validate::MAX_DOC_BYTES;
use aic_schemas::{JobState, StatusRecord};

use crate::{Ctx, HandlerError, Outcome};

pub async fn handle(ctx: &Ctx, job: &JobKey, seq: u64) -> Result<Outcome, HandlerError> {
    let rec = ctx.store.get_json::<StatusRecord>(&job.status_record(seq), MAX_DOC_BYTES).await?;
    match rec {
        Some(r) if r.state == JobState::Cancelled => {
            // A job that was never validated runs nothing, and its id may be another's.
            if !crate::validate::owns_its_id(ctx, job).await? {
                return Ok(Outcome::Ignored);
            }
            ctx.scheduler.cancel(job).await?;
            Ok(Outcome::Cancelled(job.clone()))
        }
        _ => Ok(Outcome::Ignored),
    }
}

/// Stops the job's allocations now, for the cancel its owner just recorded (status record
/// `seq`); when the scheduler does not answer, the cancel is kept and driven again
/// ([`crate::redrive`]): where the bucket sends no event for status records (AWS), nothing
/// else would ever retry it. `Err` only when even that could not be recorded.
pub async fn now_or_later(ctx: &Ctx, job: &JobKey, seq: u64) -> Result<(), aic_core::StoreError> {
    if !crate::validate::owns_its_id(ctx, job).await? {
        return Ok(());
    }
    if let Err(e) = ctx.scheduler.cancel(job).await {
        tracing::warn!(job = %job.job, error = %e, "cancel: the scheduler did not answer; tried again later");
        crate::redrive::defer(&ctx.store, &job.status_record(seq), &e.to_string()).await?;
    }
    Ok(())
}
