//! An owner's jobs, newest first: the time index, windows of the listing, reading each.

use super::*;

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
