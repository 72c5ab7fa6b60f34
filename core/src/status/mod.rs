//! A job's state: an append-only log of create-only records, plus a snapshot for readers.
//!
//! To move a job on, a writer reads the last record, checks the state machine, and claims
//! the next sequence number with a create-only write. Two writers racing for the same
//! number cannot both win; the loser re-reads and decides again (the new state may make its
//! change unnecessary or forbidden). Correctness never rests on compare-and-swap of a
//! mutable object, which local S3 servers do not make atomic.
//!
//! - `resume`: a paid run after the last one ended (`aic resume`);
//! - `listing`: an owner's jobs, newest first, through the time index and in windows;
//! - `cancel`: the owner's cancel.

use aic_schemas::validate::MAX_DOC_BYTES;
use aic_schemas::{JobState, StatusDetail, StatusRecord};
use chrono::Utc;

use crate::layout::JobKey;
use crate::store::{Created, Store, StoreError};

mod cancel;
mod listing;
mod resume;

pub use cancel::{Cancel, cancel};
pub use listing::{LIST_READS_IN_FLIGHT, Listed, Window, index, job_ids, newest_ids, read_listed, recent, scanned_ids};
pub use resume::{Resumed, resumable, resume};

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
