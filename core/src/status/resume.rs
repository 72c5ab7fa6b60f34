//! A paid run after the last one ended (`aic resume`).

use super::*;

/// What asking for paid run `run` of a job came to ([`resume`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Resumed {
    /// Run `run` begins now: its `submitted` record.
    Started(StatusRecord),
    /// Run `run` (or a later one) began before: a repeated request.
    Already(StatusRecord),
    /// The job's current run is still going; it may be resumed once it ended.
    Running(StatusRecord),
    /// The job cannot be resumed as asked; the reason, for its owner.
    Refused(String),
}

/// Whether a job that ended in `state` may be resumed (`rejected` only when a resume was
/// refused: the job ran before).
pub fn resumable(state: JobState, run: u32) -> bool {
    matches!(state, JobState::Failed | JobState::Cancelled | JobState::TimedOut)
        || (state == JobState::Rejected && run > 0)
}

/// How run `run` ended, for the next run's first record: "run 1 was cancelled".
fn ended(state: JobState, run: u32) -> String {
    let how = match state {
        JobState::Failed => "failed",
        JobState::TimedOut => "ran out of its paid time",
        JobState::Cancelled => "was cancelled",
        JobState::Rejected => "was refused",
        other => other.as_str(),
    };
    format!("run {} {how}", aic_schemas::shown_run(run))
}

/// Starts paid run `run` of a job whose run `run - 1` ended failed, cancelled or timed out:
/// the run's `submitted` record, claimed create-only like every transition. The terminal
/// record before it stays: the history shows each run.
pub async fn resume(store: &Store, job: &JobKey, run: u32, by: &'static str) -> Result<Resumed, StoreError> {
    for _ in 0..MAX_RACES {
        let Some(cur) = current(store, job).await? else {
            return Ok(Resumed::Refused(format!("job {} has no history; nothing to resume", job.job)));
        };
        if cur.run >= run {
            return Ok(Resumed::Already(cur));
        }
        if cur.run + 1 != run {
            return Ok(Resumed::Refused(format!(
                "job {} is at run {}; the next resume is run {}, not {run}",
                job.job,
                cur.run,
                cur.run + 1
            )));
        }
        if !cur.state.is_terminal() {
            return Ok(Resumed::Running(cur));
        }
        if !resumable(cur.state, cur.run) {
            return Ok(Resumed::Refused(format!(
                "job {} {}; only a failed, cancelled or timed-out job can be resumed",
                job.job, cur.state
            )));
        }
        let rec = StatusRecord {
            seq: cur.seq + 1,
            state: JobState::Submitted,
            at: Utc::now(),
            by: by.to_string(),
            reason: Some(format!(
                "resumed by its owner: run {}, after {}",
                aic_schemas::shown_run(run),
                ended(cur.state, cur.run)
            )),
            detail: StatusDetail::default(),
            run,
        };
        if claim(store, job, &rec).await? {
            return Ok(Resumed::Started(rec));
        }
    }
    Err(too_many_writers(job))
}
