//! The owner's cancel of a job.

use super::*;

/// What asking to cancel a job came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    /// Recorded now: its allocations are to stop.
    Cancelled(StatusRecord),
    /// It was cancelled before.
    Already(StatusRecord),
    /// It ended another way first.
    Ended(JobState),
    /// Nothing picked it up yet (or there is no such job).
    NotStarted,
}

impl Cancel {
    /// The one line a refusal says, `None` when the job is (or was) cancelled.
    pub fn refusal(&self, job: &aic_schemas::JobId) -> Option<String> {
        match self {
            Cancel::Cancelled(_) | Cancel::Already(_) => None,
            Cancel::Ended(state) => Some(format!("job {job} already {state}; nothing to cancel")),
            Cancel::NotStarted => Some(format!("job {job} has not been picked up yet; try again in a moment")),
        }
    }
}

/// Cancels `job` on its owner's word (`by` says through what): the `cancelled` record, whose
/// creation stops the allocations.
pub async fn cancel(store: &Store, job: &JobKey, by: &'static str) -> Result<Cancel, StoreError> {
    let t = Transition::new(JobState::Cancelled, by).reason("cancelled by its owner");
    Ok(match advance(store, job, t).await? {
        Advanced::Applied(rec) => Cancel::Cancelled(rec),
        Advanced::Already(rec) => Cancel::Already(rec),
        Advanced::Refused(Some(r)) => Cancel::Ended(r.state),
        Advanced::Refused(None) => Cancel::NotStarted,
    })
}
