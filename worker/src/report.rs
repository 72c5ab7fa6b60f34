//! The job's status as this allocation sees and reports it: `running` (the first allocation to start), whether
//! the job ended elsewhere, and `succeeded` once every allocation reported.

use std::time::{Duration, Instant};

use aic_core::status::{self, Advanced};
use aic_schemas::validate::MAX_DOC_BYTES;
use aic_schemas::{AllocResult, JobState, StatusDetail};

use anyhow::anyhow;

use crate::PEERS_WAIT;
use crate::alloc::Alloc;

/// Moves the job to `running` (through `scheduled` if the worker overtook dispatch).
/// Returns false when the job already ended.
pub(crate) async fn mark_running(a: &Alloc) -> anyhow::Result<bool> {
    loop {
        let cur = status::current(&a.store, &a.job).await?;
        if cur.as_ref().is_some_and(|c| c.run != a.run()) {
            return Ok(false); // another run of the job: this one ended
        }
        let next = match cur.map(|c| c.state) {
            Some(JobState::Paid) => JobState::Scheduled,
            Some(JobState::Scheduled) | Some(JobState::Retrying) => JobState::Running,
            Some(JobState::Running) => return Ok(true),
            Some(s) if s.is_terminal() => return Ok(false),
            other => return Err(anyhow!("the job is {other:?}, not ready to run")),
        };
        let reason = format!("on {}", a.miner);
        let t = a.transition(next).reason(reason).detail(StatusDetail { alloc: Some(a.index), ..Default::default() });
        if let Advanced::Refused(Some(r)) = a.advance(t).await?
            && r.state.is_terminal()
        {
            return Ok(false);
        }
    }
}

/// The leader succeeded: wait for every other allocation's result, then record success
/// with the usage of all of them.
pub(crate) async fn finish_as_leader(a: &Alloc, wall: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + PEERS_WAIT;
    let results: Vec<AllocResult> = loop {
        let mut results = Vec::new();
        for i in 0..a.count {
            if let Some(r) = a.store.get_json::<AllocResult>(&a.job.alloc_result(a.attempt, i), MAX_DOC_BYTES).await? {
                results.push(r);
            }
        }
        if results.len() == a.count as usize {
            break results;
        }
        if job_ended(a).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!("{} of {} allocations never reported", a.count as usize - results.len(), a.count));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let t = a.transition(JobState::Succeeded).detail(StatusDetail {
        exit_code: Some(0),
        wall_seconds: Some(wall),
        gpu_seconds: Some(results.iter().map(|r| r.gpu_seconds).sum()),
        ..Default::default()
    });
    a.advance(t).await?;
    Ok(())
}

/// Whether this allocation's run of the job ended (the job is terminal, or the owner
/// already resumed it as a later run).
pub(crate) async fn job_ended(a: &Alloc) -> bool {
    matches!(status::current(&a.store, &a.job).await, Ok(Some(r)) if r.state.is_terminal() || r.run != a.run())
}
