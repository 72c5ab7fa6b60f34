//! What a lost allocation means, for every backend.
//!
//! - A **training** job's ranks depend on each other: when one allocation is lost while the
//!   job goes on, every allocation stops and the job starts again from its last synced
//!   checkpoint under the next attempt (status `retrying` with the reason), at most
//!   [`MAX_RETRIES`] times; then the job fails with the reason.
//! - A **serve** job's replicas do not: only the lost replica starts again, while the others
//!   serve; a deployment may replace [`MAX_RETRIES`] replicas per replica on average before it
//!   fails ([`replacements_allowed`]). (On Nomad the service's reschedule policy does this.)
//! - An allocation whose job already ended (the worker recorded the program's failure) only
//!   means the other allocations must stop.
//!
//! A backend finds out that an allocation was lost its own way (a worker process's exit, an
//! allocation event) and calls [`after_lost_allocation`] for a training job.

use aic_schemas::JobState;

use crate::layout::JobKey;
use crate::runs;
use crate::status::{self, Advanced, Transition};
use crate::store::{Store, StoreError};

/// How many times a job starts again after a lost allocation.
pub const MAX_RETRIES: u32 = 2;
const _: () = assert!(MAX_RETRIES < runs::ATTEMPTS_PER_RUN, "a run's retries fit in its attempts");

/// Who writes the recovery's status records.
pub const BY: &str = "scheduler";

/// What became of a training job that lost an allocation during `attempt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterLoss {
    /// Recorded as `retrying`: start it again as this attempt.
    Retry { attempt: u32 },
    /// Retries are used up: recorded as `failed` with this reason; stop what is left.
    Failed(String),
    /// The job had already ended: nothing to start.
    Ended,
}

/// Why an allocation is gone, as the status says it: "allocation 1 on miner-2 was lost
/// (signal 9)". `what` is "allocation" or "replica".
pub fn lost(what: &str, index: impl std::fmt::Display, miner: &str, how: &str) -> String {
    format!("{what} {index} on {miner} was {how}")
}

/// Records what a lost allocation means for training job `job` in `attempt`: `retrying`
/// (the caller starts the next attempt) or, with retries used up, `failed`.
pub async fn after_lost_allocation(
    store: &Store,
    job: &JobKey,
    why: &str,
    attempt: u32,
) -> Result<AfterLoss, StoreError> {
    // Retries count within the attempt's paid run (a resumed job's attempts number on).
    let (run, retry) = (runs::run_of(attempt), runs::retry_of(attempt));
    if retry >= MAX_RETRIES {
        let reason = format!("{why}; no retries left ({MAX_RETRIES} used)");
        status::advance(store, job, Transition::new(JobState::Failed, BY).reason(reason.clone()).run(run)).await?;
        return Ok(AfterLoss::Failed(reason));
    }
    let t = Transition::new(JobState::Retrying, BY)
        .reason(format!("{why}; starting again from the last checkpoint (retry {} of {MAX_RETRIES})", retry + 1))
        .run(run);
    if let Advanced::Refused(Some(r)) = status::advance(store, job, t).await?
        && (r.state.is_terminal() || r.run != run)
    {
        return Ok(AfterLoss::Ended);
    }
    Ok(AfterLoss::Retry { attempt: attempt + 1 })
}

/// What the scheduler records when it stops a job at its paid `hours` (run `run`): a
/// training job `timed_out` (its outputs kept), a deployment `succeeded` (it served its hours).
pub fn paid_time_over(serve: bool, hours: f64, run: u32) -> crate::status::Transition {
    use aic_schemas::JobState;
    let hours = crate::pricing::format_hours(hours);
    let t = if serve {
        crate::status::Transition::new(JobState::Succeeded, BY)
            .reason(format!("served for its paid {hours} h; stopped by the scheduler"))
    } else {
        crate::status::Transition::new(JobState::TimedOut, BY)
            .reason(format!("time limit: paid for {hours} h; stopped by the scheduler; outputs up to then are kept"))
    };
    t.run(run)
}

/// How many replica replacements a deployment of `replicas` may use before it fails.
pub fn replacements_allowed(replicas: usize) -> u32 {
    MAX_RETRIES * replicas as u32
}
