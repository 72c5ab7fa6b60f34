//! A job's paid runs: its first, then one more each time its owner resumes it (`aic resume`).
//!
//! Runs share the job's id, code, outputs, logs and status log (each record names its run);
//! each has its own manifest (`manifest.json`, then `runs/<run>/manifest.json`), payment and
//! settlement. Attempts (a whole-job restart after a lost allocation) number on across runs:
//! run `r` owns attempts `r × ATTEMPTS_PER_RUN ..`, so every record keyed by attempt
//! (`allocs/`, `rendezvous/`, `pool/usage/`) belongs to one run, and a worker or scheduler
//! knows its run from its attempt alone.

use aic_schemas::JobManifest;
use aic_schemas::validate::MAX_DOC_BYTES;

use crate::layout::JobKey;
use crate::store::{Store, StoreError};

/// Attempts each run may use: its first and its retries. Fixed for good: changing it would
/// move old jobs' attempts into other runs.
pub const ATTEMPTS_PER_RUN: u32 = 3;

/// The run attempt `attempt` belongs to.
pub fn run_of(attempt: u32) -> u32 {
    attempt / ATTEMPTS_PER_RUN
}

/// The first attempt of run `run`.
pub fn first_attempt(run: u32) -> u32 {
    run.saturating_mul(ATTEMPTS_PER_RUN)
}

/// Which retry of its run `attempt` is (0: the run's first start).
pub fn retry_of(attempt: u32) -> u32 {
    attempt % ATTEMPTS_PER_RUN
}

/// Run `run`'s manifest, if validate wrote it.
pub async fn manifest(store: &Store, job: &JobKey, run: u32) -> Result<Option<JobManifest>, StoreError> {
    store.get_json(&job.run_manifest(run), MAX_DOC_BYTES).await
}

/// The manifest of the job's current run (the run of its latest status record), else of the
/// latest run that has one; `None` before validate accepted the job.
pub async fn current_manifest(store: &Store, job: &JobKey) -> Result<Option<JobManifest>, StoreError> {
    let run = crate::status::snapshot(store, job).await?.map_or(0, |r| r.run);
    for r in (0..=run).rev() {
        if let Some(m) = manifest(store, job, r).await? {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// The manifests of every run the job had, first run first.
pub async fn manifests(store: &Store, job: &JobKey) -> Result<Vec<JobManifest>, StoreError> {
    let run = crate::status::snapshot(store, job).await?.map_or(0, |r| r.run);
    let mut out = vec![];
    for r in 0..=run {
        out.extend(manifest(store, job, r).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::recovery::MAX_RETRIES;

    #[test]
    fn attempts_number_on_across_runs_and_each_belongs_to_one() {
        assert_eq!((run_of(0), run_of(2), run_of(3), run_of(7)), (0, 0, 1, 2));
        assert_eq!((first_attempt(0), first_attempt(1), first_attempt(2)), (0, 3, 6));
        assert_eq!((retry_of(3), retry_of(5)), (0, 2));
        for run in 0..5 {
            assert_eq!(run_of(first_attempt(run) + MAX_RETRIES), run, "a run's last retry is still its own");
        }
    }
}
