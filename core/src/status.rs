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
    let dir = crate::layout::jobs_prefix(owner);
    let mut ids: Vec<aic_schemas::JobId> = Vec::new();
    let mut after: Option<String> = None;
    // A local folder is read whole at once; a bucket a page at a time.
    let max = if store.pages_listings() { LIST_PAGE } else { usize::MAX };
    loop {
        let page = store.list_names(&dir, "", after.as_deref(), max).await?;
        after = page.names.last().cloned();
        ids.extend(page.names.iter().filter_map(|n| n.parse().ok()));
        if !page.more || after.is_none() {
            break;
        }
    }
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

/// `owner`'s newest jobs in `w`, newest first: which they are from [`newest_ids`], then only
/// those are read, [`LIST_READS_IN_FLIGHT`] at a time.
pub async fn recent(store: &Store, owner: &aic_schemas::Address, w: &Window) -> Result<Vec<Listed>, StoreError> {
    let ids = newest_ids(store, owner, w).await?;
    read_listed(store, owner, ids).await
}

/// Names a listing page holds at most (S3's `max-keys` ceiling).
const LIST_PAGE: usize = 1000;
/// Where [`newest_ids`] looks in a span of time (fractions of it back from its end): close to
/// the end (where a busy owner's newest jobs are), then evenly (where an idle one's are).
const PROBES: [(u64, u64); 10] = [(1, 4096), (1, 64), (1, 8), (2, 8), (3, 8), (4, 8), (5, 8), (6, 8), (7, 8), (8, 8)];

/// The 10 characters a ULID made at `ms` starts with: lower than every id made then or
/// later, higher than every id made before.
fn time_prefix(ms: u64) -> String {
    let mut s = ulid::Ulid::from_parts(ms.min((1 << 48) - 1), 0).to_string().to_ascii_lowercase();
    s.truncate(10);
    s
}

fn ms_of(id: &aic_schemas::JobId) -> Option<u64> {
    id.created().map(|c| c.timestamp_millis().max(0) as u64)
}

/// Records `job` in its owner's index ([`crate::layout::job_index_prefix`]), once: what
/// listings read the newest jobs from. Written by validate before the job's first status.
pub async fn index(store: &Store, job: &JobKey) -> Result<(), StoreError> {
    store.create_bytes(&crate::layout::job_index_marker(job), bytes::Bytes::new()).await.map(|_| ())
}

/// The ids of `owner`'s newest jobs in `w`, newest first, in time that does not grow with
/// how many jobs the owner has. Where the store pages listings (S3, the gateway) they come
/// from the owner's index, newest first, a page per listing ([`indexed_ids`]); jobs taken
/// in before the index was (none, or the older part of a history) are found by
/// [`scanned_ids`]. Elsewhere (a local folder) the ids are read once. `limit: None` lists
/// them all.
pub async fn newest_ids(
    store: &Store,
    owner: &aic_schemas::Address,
    w: &Window,
) -> Result<Vec<aic_schemas::JobId>, StoreError> {
    let Some(limit) = w.limit.filter(|_| store.pages_listings()) else {
        return scanned_ids(store, owner, w).await;
    };
    match indexed_ids(store, owner, w, limit).await? {
        Indexed::Unusable => scanned_ids(store, owner, w).await,
        Indexed::Found { mut ids, older_than } => {
            if ids.len() < limit
                && let Some(before) = older_than
            {
                // The index was read to its end: older jobs are from before it (or none).
                let older = Window { limit: Some(limit - ids.len()), since: w.since, before: Some(before) };
                ids.extend(scanned_ids(store, owner, &older).await?);
            }
            Ok(ids)
        }
    }
}

/// What the owner's index gave.
enum Indexed {
    /// Nothing (none of the jobs wanted is indexed), or too many jobs not yet indexed: list
    /// without it.
    Unusable,
    /// The newest ids, newest first; `older_than`: the index was read to its end before
    /// enough were found, so older jobs (from before the index) are to be looked for below it.
    Found { ids: Vec<aic_schemas::JobId>, older_than: Option<aic_schemas::JobId> },
}

/// The newest (up to `limit`) of `owner`'s jobs in `w` from the owner's index, a page per
/// listing, with the ones newer than the newest indexed job (requests validate has not
/// taken in yet: one listing of the job folders after it).
async fn indexed_ids(
    store: &Store,
    owner: &aic_schemas::Address,
    w: &Window,
    limit: usize,
) -> Result<Indexed, StoreError> {
    let idx = crate::layout::job_index_prefix(owner);
    let too_old = |id: &aic_schemas::JobId| w.since.is_some_and(|s| id.created().is_some_and(|c| c < s));
    let mut ids: Vec<aic_schemas::JobId> = Vec::new();
    let mut after = w.before.as_ref().and_then(|b| crate::layout::invert_id(b.as_str()));
    let mut newest: Option<aic_schemas::JobId> = None;
    let (mut exhausted, mut reached_since) = (false, false);
    while ids.len() < limit {
        let page = store.list_names(&idx, "", after.as_deref(), (limit - ids.len()).clamp(1, LIST_PAGE)).await?;
        after = page.names.last().cloned();
        for id in page.names.iter().filter_map(|n| crate::layout::invert_id(n)?.parse::<aic_schemas::JobId>().ok()) {
            newest.get_or_insert_with(|| id.clone());
            if too_old(&id) {
                reached_since = true;
                break;
            }
            ids.push(id);
        }
        if reached_since || !page.more || after.is_none() {
            exhausted = !reached_since;
            break;
        }
    }
    let Some(newest) = newest else { return Ok(Indexed::Unusable) };
    let older_than = if exhausted { ids.last().cloned() } else { None };
    // Jobs newer than the newest indexed one: the job folders after it.
    let tail = store.list_names(&crate::layout::jobs_prefix(owner), "", Some(newest.as_str()), LIST_PAGE).await?;
    if tail.more {
        return Ok(Indexed::Unusable);
    }
    let wanted = |id: &aic_schemas::JobId| w.before.as_ref().is_none_or(|b| id < b) && !too_old(id);
    let mut out: Vec<aic_schemas::JobId> =
        tail.names.iter().rev().filter_map(|n| n.parse().ok()).filter(wanted).collect();
    out.extend(ids);
    out.truncate(limit);
    Ok(Indexed::Found { ids: out, older_than })
}

/// [`newest_ids`] without an index: ULIDs sort by the time they were made, and a store lists
/// in key order from a given key (S3 `start-after`), a page of 1,000 at most: so a span of time
/// known to hold the newest is narrowed, each round listing one page from each of [`PROBES`]
/// points in it at once, until the stretch from a point to the span's end holds as many as
/// are wanted within one page. Each round narrows the span at least 8× (at most 12 rounds for
/// 2 years; usually 1 or 2).
pub async fn scanned_ids(
    store: &Store,
    owner: &aic_schemas::Address,
    w: &Window,
) -> Result<Vec<aic_schemas::JobId>, StoreError> {
    let dir = crate::layout::jobs_prefix(owner);
    let in_window = |id: &aic_schemas::JobId| {
        w.before.as_ref().is_none_or(|b| id < b) && w.since.is_none_or(|s| id.created().is_none_or(|c| c >= s))
    };
    let Some(limit) = w.limit.filter(|_| store.pages_listings()) else {
        let ids = job_ids(store, owner).await?;
        return Ok(ids.into_iter().rev().filter(in_window).take(w.limit.unwrap_or(usize::MAX)).collect());
    };
    // The oldest job: where looking back ends (and none at all: nothing to look for).
    let Some(oldest) = store.list_names(&dir, "", None, 1).await?.names.into_iter().next() else {
        return Ok(vec![]);
    };
    let since_ms = w.since.map_or(0, |s| s.timestamp_millis().max(0) as u64);
    let floor = oldest.parse().ok().as_ref().and_then(ms_of).unwrap_or(0).max(since_ms);
    // What is left to look at: ids below `hi` (none: no bound, for clocks ahead), made
    // before `hi_ms` and at `floor` or later; `lo`: where more than a page of them starts.
    let (mut hi, mut hi_ms): (Option<String>, u64) = match &w.before {
        Some(b) => (Some(b.to_string()), ms_of(b).map_or(u64::MAX >> 16, |m| m + 1)),
        None => (None, chrono::Utc::now().timestamp_millis().max(0) as u64 + 1),
    };
    let mut lo = floor;
    let below_hi = |hi: &Option<String>, n: &String| hi.as_ref().is_none_or(|h| n < h);
    let mut out: Vec<aic_schemas::JobId> = Vec::new();
    let take = |names: &[String], out: &mut Vec<aic_schemas::JobId>| {
        out.extend(names.iter().rev().filter_map(|n| n.parse().ok()).filter(in_window));
    };
    let after = |ms: u64| (ms > 0).then(|| time_prefix(ms));
    while out.len() < limit && hi_ms > floor {
        let need = limit - out.len();
        // A page big enough to hold what is needed with room, so a stretch holding that many
        // is found in few rounds.
        let page_size = (4 * need).clamp(100, LIST_PAGE);
        let span = hi_ms - lo;
        if span <= 1 {
            // More than a page made in one millisecond: read it through.
            let mut names: Vec<String> = Vec::new();
            let mut from = after(lo);
            loop {
                let page = store.list_names(&dir, "", from.as_deref(), LIST_PAGE).await?;
                let done = !page.more || page.names.last().is_none_or(|l| !below_hi(&hi, l));
                names.extend(page.names.into_iter().filter(|n| below_hi(&hi, n)));
                if done {
                    break;
                }
                from = names.last().cloned();
            }
            take(&names, &mut out);
            (hi, hi_ms, lo) = (after(lo), lo, floor);
            continue;
        }
        let mut points: Vec<u64> =
            PROBES.iter().map(|&(a, b)| hi_ms - ((span as u128 * a as u128 / b as u128) as u64).max(1)).collect();
        points.dedup();
        // The stretches from each point to `hi`, shortest first, listed a few at once (the
        // ones nearest the end first): the first holding enough within a page answers; one
        // holding more than a page is where the rest is.
        let mut prev: Option<(u64, Vec<String>)> = None;
        let mut dense_from = None;
        let mut answered = false;
        'round: for wave in [0..3.min(points.len()), 3.min(points.len())..points.len()] {
            let pages = futures::future::try_join_all(points[wave.clone()].iter().map(|&p| {
                let (from, dir) = (after(p), &dir);
                async move { store.list_names(dir, "", from.as_deref(), page_size).await }
            }))
            .await?;
            for (&p, page) in points[wave].iter().zip(pages) {
                let complete = !page.more || page.names.last().is_some_and(|l| !below_hi(&hi, l));
                if !complete {
                    // The newest are at or above the last name listed from `p`.
                    let last = page.names.last().and_then(|n| n.parse().ok()).as_ref().and_then(ms_of).unwrap_or(p);
                    dense_from = Some(last.max(p));
                    break 'round;
                }
                let names: Vec<String> = page.names.into_iter().filter(|n| below_hi(&hi, n)).collect();
                if names.len() >= need || p <= lo {
                    take(&names, &mut out);
                    (hi, hi_ms) = (after(p), p);
                    answered = true;
                    break 'round;
                }
                prev = Some((p, names));
            }
        }
        if answered {
            // All there is from `lo` up: below it, from the floor (if more are wanted).
            lo = floor;
            continue;
        }
        // More than a page from `p` (up to its last name listed): what the shorter stretch
        // held is the newest; the rest is between `p` and that stretch's start.
        let p = dense_from.expect("the longest stretch starts at `lo`, which answers");
        if let Some((q, names)) = prev {
            take(&names, &mut out);
            (hi, hi_ms) = (after(q), q);
        }
        lo = p.min(hi_ms - 1);
    }
    out.truncate(limit);
    Ok(out)
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
