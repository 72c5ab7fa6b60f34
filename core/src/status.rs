//! A job's state: an append-only log of create-only records, plus a snapshot for readers.
//!
//! To move a job on, a writer reads the last record, checks the state machine, and claims
//! the next sequence number with a create-only write. Two writers racing for the same
//! number cannot both win; the loser re-reads and decides again (the new state may make its
//! change unnecessary or forbidden). Correctness never rests on compare-and-swap of a
//! mutable object, which local S3 servers do not make atomic.

use aic_schemas::validate::MAX_DOC_BYTES;
use aic_schemas::{JobState, StatusDetail, StatusRecord};
use chrono::Utc;

use crate::layout::JobKey;
use crate::store::{Created, Store, StoreError};

/// How many lost races `advance` tolerates before giving up (each loss means another
/// writer made progress).
const MAX_RACES: usize = 32;

/// What [`advance`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Advanced {
    /// The transition was recorded.
    Applied(StatusRecord),
    /// The job was already in that state; nothing written.
    Already(StatusRecord),
    /// The state machine forbids it from the current state (e.g. the job is terminal).
    Refused(Option<StatusRecord>),
}

impl Advanced {
    pub fn applied(&self) -> bool {
        matches!(self, Advanced::Applied(_))
    }
}

/// The full history, oldest first.
pub async fn history(store: &Store, job: &JobKey) -> Result<Vec<StatusRecord>, StoreError> {
    let mut out = Vec::new();
    for meta in store.list(&job.status_prefix()).await? {
        let key = meta.location.to_string();
        if let Some(rec) = store.get_json::<StatusRecord>(&key, MAX_DOC_BYTES).await? {
            out.push(rec);
        }
    }
    Ok(out)
}

/// The latest record, if any: one listing of the job's (short) log and one read.
pub async fn current(store: &Store, job: &JobKey) -> Result<Option<StatusRecord>, StoreError> {
    let metas = store.list(&job.status_prefix()).await?;
    for meta in metas.iter().rev() {
        if let Some(rec) = store.get_json::<StatusRecord>(meta.location.as_ref(), MAX_DOC_BYTES).await? {
            return Ok(Some(rec));
        }
    }
    Ok(None)
}

/// A transition to make.
#[derive(Debug, Clone)]
pub struct Transition {
    pub to: JobState,
    pub by: &'static str,
    pub reason: Option<String>,
    pub detail: StatusDetail,
    /// The paid run the writer acts for; `None`: whichever is current (the owner's cancel).
    /// A writer of another run than the current one is refused: a worker or scheduler of a
    /// run that ended never moves the job's next run.
    pub run: Option<u32>,
}

impl Transition {
    pub fn new(to: JobState, by: &'static str) -> Self {
        Transition { to, by, reason: None, detail: StatusDetail::default(), run: None }
    }
    /// Only within paid run `run`.
    pub fn run(mut self, run: u32) -> Self {
        self.run = Some(run);
        self
    }
    pub fn reason(mut self, r: impl Into<String>) -> Self {
        self.reason = Some(r.into());
        self
    }
    pub fn detail(mut self, d: StatusDetail) -> Self {
        self.detail = d;
        self
    }
}

/// Moves the job to `t.to` if the state machine allows it from the current state.
pub async fn advance(store: &Store, job: &JobKey, t: Transition) -> Result<Advanced, StoreError> {
    for _ in 0..MAX_RACES {
        let cur = current(store, job).await?;
        let run = cur.as_ref().map_or(0, |c| c.run);
        if t.run.is_some_and(|r| r != run) {
            return Ok(Advanced::Refused(cur));
        }
        if let Some(c) = &cur
            && c.state == t.to
        {
            // A writer that failed after its record landed may have left the snapshot behind
            // (a repeat of the same change finds it so): mend it.
            let snap = store.get_json::<StatusRecord>(&job.status_snapshot(), MAX_DOC_BYTES).await?;
            if snap.is_none_or(|s| s.seq < c.seq) {
                write_snapshot(store, job, c.clone()).await?;
            }
            return Ok(Advanced::Already(c.clone()));
        }
        if !JobState::allows(cur.as_ref().map(|c| c.state), t.to) {
            return Ok(Advanced::Refused(cur));
        }
        let rec = StatusRecord {
            seq: cur.as_ref().map_or(1, |c| c.seq + 1),
            state: t.to,
            at: Utc::now(),
            by: t.by.to_string(),
            reason: t.reason.clone(),
            detail: t.detail.clone(),
            run,
        };
        if claim(store, job, &rec).await? {
            return Ok(Advanced::Applied(rec));
        }
    }
    Err(too_many_writers(job))
}

/// Claims record `rec.seq` create-only, then writes the snapshot; false when another writer
/// took that number first (the caller re-reads and decides again).
async fn claim(store: &Store, job: &JobKey, rec: &StatusRecord) -> Result<bool, StoreError> {
    match store.create_json(&job.status_record(rec.seq), rec).await? {
        Created::Created => {
            write_snapshot(store, job, rec.clone()).await?;
            Ok(true)
        }
        Created::AlreadyExists => Ok(false),
    }
}

fn too_many_writers(job: &JobKey) -> StoreError {
    StoreError::Io {
        key: job.status_prefix(),
        source: std::io::Error::other("too many concurrent status writers; try again"),
    }
}

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
    format!("run {} {how}", crate::runs::shown(run))
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
                crate::runs::shown(run),
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

/// Writes `status.json`. A slower writer may overwrite a newer snapshot, so after writing
/// it checks for a newer record and writes that one instead, until none is newer.
async fn write_snapshot(store: &Store, job: &JobKey, mut rec: StatusRecord) -> Result<(), StoreError> {
    loop {
        store.put_json(&job.status_snapshot(), &rec).await?;
        match store.get_json::<StatusRecord>(&job.status_record(rec.seq + 1), MAX_DOC_BYTES).await? {
            Some(newer) => {
                // Skip to the newest one in the log.
                rec = current(store, job).await?.unwrap_or(newer);
            }
            None => return Ok(()),
        }
    }
}

/// The snapshot, falling back to the log when the snapshot is missing.
pub async fn snapshot(store: &Store, job: &JobKey) -> Result<Option<StatusRecord>, StoreError> {
    match store.get_json::<StatusRecord>(&job.status_snapshot(), MAX_DOC_BYTES).await? {
        Some(r) => Ok(Some(r)),
        None => current(store, job).await,
    }
}

/// The ids of `owner`'s jobs, oldest first (ids are ULIDs).
pub async fn job_ids(store: &Store, owner: &aic_schemas::Address) -> Result<Vec<aic_schemas::JobId>, StoreError> {
    let (dirs, _) = store.list_dir(&crate::layout::jobs_prefix(owner)).await?;
    let mut ids: Vec<aic_schemas::JobId> =
        dirs.iter().filter_map(|d| d.trim_end_matches('/').rsplit('/').next()?.parse().ok()).collect();
    ids.sort();
    Ok(ids)
}

/// One job as listings show it: its status snapshot and what it asked for.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    pub job_id: aic_schemas::JobId,
    pub status: Option<StatusRecord>,
    pub request: Option<aic_schemas::JobRequest>,
}

/// How many jobs a listing reads at once.
pub const LIST_READS_IN_FLIGHT: usize = 16;

/// Which of an owner's jobs a listing shows.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// At most this many (all with `None`).
    pub limit: Option<usize>,
    /// Created at or after.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Older than this job (the next page of a listing).
    pub before: Option<aic_schemas::JobId>,
}

/// `owner`'s newest jobs in `w`, newest first. Ids are ULIDs, so which jobs these are is
/// known from one listing of the ids; only those shown are read, [`LIST_READS_IN_FLIGHT`] at
/// a time.
pub async fn recent(store: &Store, owner: &aic_schemas::Address, w: &Window) -> Result<Vec<Listed>, StoreError> {
    let (limit, since) = (w.limit, w.since);
    let ids = job_ids(store, owner).await?;
    let newest = ids
        .into_iter()
        .rev()
        .skip_while(|id| w.before.as_ref().is_some_and(|b| id >= b))
        .take_while(|id| since.is_none_or(|s| id.created().is_none_or(|c| c >= s)))
        .take(limit.unwrap_or(usize::MAX));
    read_listed(store, owner, newest).await
}

/// `owner`'s jobs `ids` as listings show them, in that order, [`LIST_READS_IN_FLIGHT`] at a
/// time.
pub async fn read_listed(
    store: &Store,
    owner: &aic_schemas::Address,
    ids: impl IntoIterator<Item = aic_schemas::JobId>,
) -> Result<Vec<Listed>, StoreError> {
    use futures::StreamExt;
    futures::stream::iter(ids)
        .map(|id| async move {
            let job = JobKey::new(*owner, id.clone());
            let request_key = job.request();
            let (status, request) = futures::try_join!(
                snapshot(store, &job),
                store.get_json::<aic_schemas::JobRequest>(&request_key, MAX_DOC_BYTES),
            )?;
            Ok(Listed { job_id: id, status, request })
        })
        .buffered(LIST_READS_IN_FLIGHT)
        .collect::<Vec<Result<Listed, StoreError>>>()
        .await
        .into_iter()
        .collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_repeated_change_mends_a_snapshot_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
        let job =
            JobKey::new("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap(), aic_schemas::JobId::generate());
        advance(&store, &job, Transition::new(JobState::Submitted, "validate")).await.unwrap();
        // `paid` landed in the log, but its writer failed before the snapshot.
        let rec = StatusRecord {
            seq: 2,
            state: JobState::Paid,
            at: Utc::now(),
            by: "validate".into(),
            reason: None,
            detail: StatusDetail::default(),
            run: 0,
        };
        store.create_json(&job.status_record(2), &rec).await.unwrap();
        assert_eq!(snapshot(&store, &job).await.unwrap().unwrap().state, JobState::Submitted);
        let again = advance(&store, &job, Transition::new(JobState::Paid, "validate")).await.unwrap();
        assert!(matches!(again, Advanced::Already(_)));
        assert_eq!(snapshot(&store, &job).await.unwrap().unwrap().state, JobState::Paid);
    }
}
