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
            ctx.scheduler.cancel(job).await?;
            Ok(Outcome::Cancelled(job.clone()))
        }
        _ => Ok(Outcome::Ignored),
    }
}
