//! Live logs: what a job's programs print, relayed from this host's memory to whoever watches.
//!
//! A worker keeps its allocation's output in a durable chunk (`logs/<alloc>/<n>.log`, written
//! every 10 s or 1 MiB) and, as lines come, posts them here (`POST /v1/worker/logs`
//! `{alloc, chunk, offset, text}`: the bytes of chunk `chunk` from `offset` on). The host
//! keeps, per allocation, the chunk not yet stored (at most [`MAX_PENDING`]); a watcher
//! (`aic run`, `aic logs -f`, the web app) long-polls `GET /v1/jobs/<id>/live?from=&status=`
//! with where it is in each allocation's log (`<alloc>.<chunk>.<offset>`, comma-separated)
//! and is answered as soon as there is more, or after the wait with nothing. When the host
//! is at a later chunk than the watcher, the chunks between are in the bucket: the watcher
//! reads them there, then takes the rest from here. So the bucket gets one object per
//! allocation per 10 s however many watch, and a watcher sees a line within a round trip of
//! its being printed.
//!
//! Status changes come the same way: a worker posts `{status: true}` after it moves the
//! job's status, and the host counts the status records its events show; a watcher that
//! sees the count move reads the new records from the bucket.
//!
//! Memory: a job's entry is dropped 10 minutes after its last post once nobody waits on it.
//! Like `aic exec` sessions, this lives in one host's memory: a pool with several functions
//! hosts routes a job's calls to one (by job id in the path); a gateway that has none of this
//! (Lambda) answers 404, and watchers then read the bucket only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aic_core::layout::JobKey;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Most of a chunk kept per allocation (a worker stores a chunk at 1 MiB).
pub const MAX_PENDING: usize = 2 * 1024 * 1024;
/// Longest a watcher's call waits for something new.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// How long an entry nobody posts to or waits on is kept.
const KEEP: Duration = Duration::from_secs(600);

/// One allocation's part of an answer: chunk `chunk`'s bytes from `offset` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub alloc: u32,
    pub chunk: u64,
    pub offset: u64,
    pub text: String,
}

/// Which of an allocation's streams a post or a watcher's call is about: the program's
/// output (`logs/`), or the worker's GPU samples (`metrics/`, a `GpuSample` a line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    #[default]
    Logs,
    Metrics,
}

impl Stream {
    /// `stream=` as a watcher sends it (none: the log).
    pub fn of(q: Option<&str>) -> Result<Stream, String> {
        match q {
            None | Some("logs") => Ok(Stream::Logs),
            Some("metrics") => Ok(Stream::Metrics),
            Some(o) => Err(format!("stream={o:?}: expected logs or metrics")),
        }
    }
}

/// What a worker posts: its allocation's output (or samples) from `offset` of chunk `chunk`,
/// and/or that it moved the job's status.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Post {
    pub alloc: u32,
    #[serde(default)]
    pub stream: Stream,
    #[serde(default)]
    pub chunk: u64,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub status: bool,
}

/// An answer: each allocation's news (or where it is), and the status count; of which stream
/// (a host that knew only the log said nothing, and the watcher of samples takes none of it).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct News {
    pub allocs: Vec<Piece>,
    pub status: u64,
    #[serde(default)]
    pub stream: Option<Stream>,
}

/// Where a watcher is in each allocation's log: chunk and offset.
pub type Cursors = BTreeMap<u32, (u64, u64)>;

struct Alloc {
    chunk: u64,
    /// Offset in the chunk of `text`'s first byte.
    base: u64,
    text: String,
}

struct Job {
    allocs: BTreeMap<u32, Alloc>,
    status: u64,
    touched: Instant,
    tx: watch::Sender<()>,
}

impl Job {
    fn new() -> Job {
        Job { allocs: BTreeMap::new(), status: 0, touched: Instant::now(), tx: watch::channel(()).0 }
    }

    /// What is new for a watcher at `at` (`None`: nothing).
    fn news(&self, at: &Cursors, status: u64) -> Option<News> {
        let mut fresh = self.status != status;
        let mut allocs = Vec::new();
        for (i, a) in &self.allocs {
            let (chunk, offset) = at.get(i).copied().unwrap_or((0, 0));
            let end = a.base + a.text.len() as u64;
            let piece = if a.chunk == chunk && offset >= a.base {
                let from = (offset - a.base) as usize;
                Piece { alloc: *i, chunk, offset, text: a.text.get(from..).unwrap_or_default().to_string() }
            } else {
                Piece { alloc: *i, chunk: a.chunk, offset: a.base, text: a.text.clone() }
            };
            fresh |= a.chunk > chunk || (a.chunk == chunk && end > offset);
            allocs.push(piece);
        }
        fresh.then_some(News { allocs, status: self.status, stream: None })
    }
}

/// The host's live logs.
#[derive(Default)]
pub struct Live {
    jobs: Mutex<HashMap<JobKey, Job>>,
    swept: Mutex<Option<Instant>>,
}

impl Live {
    /// What this host holds of an allocation's chunk not stored yet, when it holds the chunk
    /// from its start: (chunk, text).
    pub fn pending(&self, job: &JobKey, alloc: u32) -> Option<(u64, String)> {
        let jobs = self.jobs.lock().unwrap();
        let a = jobs.get(job)?.allocs.get(&alloc)?;
        (a.base == 0 && !a.text.is_empty()).then(|| (a.chunk, a.text.clone()))
    }

    /// Takes a worker's post. Repeats and overlaps are taken once; a post past a gap (this
    /// host restarted, or posts were lost) starts the kept text anew from its offset.
    pub fn post(&self, job: &JobKey, p: Post) {
        let mut jobs = self.jobs.lock().unwrap();
        let j = jobs.entry(job.clone()).or_insert_with(Job::new);
        j.touched = Instant::now();
        if !p.text.is_empty() {
            let a = j.allocs.entry(p.alloc).or_insert(Alloc { chunk: p.chunk, base: p.offset, text: String::new() });
            let end = a.base + a.text.len() as u64;
            if p.chunk > a.chunk || (p.chunk == a.chunk && p.offset > end) {
                *a = Alloc { chunk: p.chunk, base: p.offset, text: p.text };
            } else if p.chunk == a.chunk
                && p.offset + p.text.len() as u64 > end
                && let Some(rest) = p.text.get((end - p.offset) as usize..)
            {
                a.text.push_str(rest);
            }
            if a.text.len() > MAX_PENDING {
                // Keep the newest lines: the older ones are stored in the chunk anyway.
                // Never inside a character: the text is a program's, in any script (a cut
                // through one panicked with the lock held, and every live call after it).
                let mut cut = a.text.len() - MAX_PENDING;
                while !a.text.is_char_boundary(cut) {
                    cut += 1;
                }
                let cut = a.text[cut..].find('\n').map_or(a.text.len(), |n| cut + n + 1);
                a.text.drain(..cut);
                a.base += cut as u64;
            }
        }
        if p.status {
            j.status += 1;
        }
        j.tx.send_replace(());
        drop(jobs);
        self.sweep();
    }

    /// The job's status moved (a status record's event reached this host).
    pub fn status_moved(&self, job: &JobKey) {
        let mut jobs = self.jobs.lock().unwrap();
        // Only jobs someone follows: events of every job pass here.
        if let Some(j) = jobs.get_mut(job) {
            j.status += 1;
            j.tx.send_replace(());
        }
    }

    /// Waits (at most `wait`) until there is something new for a watcher at `at` who has
    /// seen status count `status`; answers what there is then.
    pub async fn next(&self, job: &JobKey, at: &Cursors, status: u64, wait: Duration) -> News {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let mut rx = {
                let mut jobs = self.jobs.lock().unwrap();
                let j = jobs.entry(job.clone()).or_insert_with(Job::new);
                j.touched = Instant::now();
                if let Some(n) = j.news(at, status) {
                    return n;
                }
                let mut rx = j.tx.subscribe();
                rx.borrow_and_update();
                rx
            };
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                let jobs = self.jobs.lock().unwrap();
                let status = jobs.get(job).map_or(status, |j| j.status);
                return News { allocs: vec![], status, stream: None };
            }
        }
    }

    /// Drops entries nobody posted to or waited on for [`KEEP`] (at most once a minute).
    fn sweep(&self) {
        {
            let mut last = self.swept.lock().unwrap();
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.jobs.lock().unwrap().retain(|_, j| j.touched.elapsed() < KEEP || j.tx.receiver_count() > 0);
    }

    /// How many jobs are kept (for tests).
    pub fn jobs(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }
}

impl super::Gateway {
    /// An object's event reached this host: a status record's (or snapshot's) tells the job's watchers.
    pub fn status_event(&self, key: &str) {
        use aic_core::layout::{KeyKind, classify};
        if let KeyKind::StatusRecord(job, _) | KeyKind::StatusSnapshot(job) = classify(key) {
            self.live.status_moved(&job);
        }
    }

    /// `POST /v1/worker/logs`: a worker's output as it comes, or its word that it moved the
    /// job's status; `POST /v1/worker/metrics` (`stream`): its GPU samples.
    pub(super) fn live_post(&self, g: &aic_core::grant::WorkerGrant, body: &[u8], stream: Stream) -> super::Reply {
        let mut p: Post = serde_json::from_slice(body).map_err(|e| super::bad(format!("not a log post: {e}")))?;
        p.stream = stream;
        if g.allocs > 0 && p.alloc >= g.allocs {
            return Err(super::bad(format!("job {} has no allocation {}", g.job, p.alloc)));
        }
        let job = JobKey::new(g.owner, g.job.clone());
        match p.stream {
            Stream::Logs => self.live.post(&job, p),
            // Samples move no status: that word is the log's.
            Stream::Metrics => self.live_metrics.post(&job, Post { status: false, ..p }),
        }
        Ok(serde_json::json!({}))
    }

    /// `GET /v1/jobs/<id>/live?from=&status=&wait=&stream=`: what the caller's job printed
    /// after `from` (with `stream=metrics`: its GPU samples), as soon as there is some (`wait`
    /// ms at most, 20 s by default).
    pub(super) async fn live_next(
        &self,
        who: &aic_schemas::Address,
        id: &str,
        q: &std::collections::HashMap<String, String>,
    ) -> super::Reply {
        let job = self.job_key(who, id)?;
        let at = parse_cursors(q.get("from").map(String::as_str).unwrap_or("")).map_err(super::bad)?;
        let num = |k: &str| -> Result<Option<u64>, super::ApiError> {
            q.get(k)
                .map(|v| v.parse::<u64>().map_err(|_| super::bad(format!("{k}={v:?} is not a whole number"))))
                .transpose()
        };
        let status = num("status")?.unwrap_or(0);
        let wait = num("wait")?.map_or(MAX_WAIT, Duration::from_millis);
        let stream = Stream::of(q.get("stream").map(String::as_str)).map_err(super::bad)?;
        let live = match stream {
            Stream::Logs => &self.live,
            Stream::Metrics => &self.live_metrics,
        };
        if !live.jobs.lock().unwrap().contains_key(&job)
            && self.ctx.store.head(&job.request()).await.map_err(super::store_err)?.is_none()
        {
            return Err(super::err(http::StatusCode::NOT_FOUND, format!("no job {id} of yours")));
        }
        let news = News { stream: Some(stream), ..live.next(&job, &at, status, wait).await };
        Ok(serde_json::to_value(news).unwrap_or_default())
    }
}

/// `from=<alloc>.<chunk>.<offset>,…` as the watcher sends it.
pub fn parse_cursors(s: &str) -> Result<Cursors, String> {
    let mut out = Cursors::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let mut it = part.split('.').map(str::parse::<u64>);
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(Ok(a)), Some(Ok(c)), Some(Ok(o)), None) if a <= u32::MAX as u64 => {
                out.insert(a as u32, (c, o));
            }
            _ => return Err(format!("from={s:?}: expected <alloc>.<chunk>.<offset>, comma-separated")),
        }
        if out.len() > 4096 {
            return Err("from= names more than 4096 allocations".into());
        }
    }
    Ok(out)
}

/// The cursors as `from=` takes them.
pub fn cursors_param(c: &Cursors) -> String {
    c.iter().map(|(a, (ch, o))| format!("{a}.{ch}.{o}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobKey {
        JobKey::new("0x00000000000000000000000000000000000000aa".parse().unwrap(), aic_schemas::JobId::generate())
    }

    fn post(alloc: u32, chunk: u64, offset: u64, text: &str) -> Post {
        Post { alloc, stream: Stream::Logs, chunk, offset, text: text.into(), status: false }
    }

    fn now(live: &Live, j: &JobKey, at: &Cursors) -> Option<News> {
        live.jobs.lock().unwrap().get(j).and_then(|x| x.news(at, 0))
    }

    #[test]
    fn posts_are_joined_once_and_a_watcher_gets_what_it_has_not_seen() {
        let (live, j) = (Live::default(), job());
        live.post(&j, post(0, 0, 0, "a\n"));
        live.post(&j, post(0, 0, 2, "b\n"));
        live.post(&j, post(0, 0, 0, "a\nb\n")); // a repeat
        live.post(&j, post(0, 0, 2, "b\nc\n")); // an overlap
        let n = now(&live, &j, &Cursors::new()).unwrap();
        assert_eq!(n.allocs, vec![Piece { alloc: 0, chunk: 0, offset: 0, text: "a\nb\nc\n".into() }]);
        let n = now(&live, &j, &[(0, (0, 4))].into()).unwrap();
        assert_eq!(n.allocs[0].text, "c\n");
        assert!(now(&live, &j, &[(0, (0, 6))].into()).is_none(), "nothing new");
    }

    #[test]
    fn a_later_chunk_or_a_gap_starts_anew_and_an_older_chunk_is_ignored() {
        let (live, j) = (Live::default(), job());
        live.post(&j, post(1, 3, 0, "x\n"));
        live.post(&j, post(1, 4, 0, "y\n"));
        live.post(&j, post(1, 3, 2, "late\n"));
        // A watcher still in chunk 3 is told where the host is: it reads chunk 3 from the bucket.
        let n = now(&live, &j, &[(1, (3, 2))].into()).unwrap();
        assert_eq!(n.allocs, vec![Piece { alloc: 1, chunk: 4, offset: 0, text: "y\n".into() }]);
        live.post(&j, post(1, 4, 10, "z\n"));
        let n = now(&live, &j, &[(1, (4, 2))].into()).unwrap();
        assert_eq!(n.allocs, vec![Piece { alloc: 1, chunk: 4, offset: 10, text: "z\n".into() }]);
    }

    /// A program printing in a script of several bytes a character (and no newline for a
    /// long while): the kept text is cut between characters, and the host goes on answering.
    #[test]
    fn a_long_line_of_wide_characters_is_cut_between_characters() {
        let (live, j) = (Live::default(), job());
        // One byte over the bound: the first cut falls inside the first character.
        let wide = "학".repeat(MAX_PENDING / 3 + 1);
        assert!(!wide.is_char_boundary(wide.len() - MAX_PENDING));
        live.post(&j, post(0, 0, 0, &wide));
        live.post(&j, post(0, 0, wide.len() as u64, "학학\n"));
        let n = now(&live, &j, &Cursors::new()).expect("the host still answers");
        assert!(n.allocs[0].text.len() <= MAX_PENDING, "{}", n.allocs[0].text.len());
    }

    #[test]
    fn a_chunk_kept_is_bounded_to_its_newest_lines() {
        let (live, j) = (Live::default(), job());
        let line = "x".repeat(1023) + "\n";
        for i in 0..3000u64 {
            live.post(&j, post(0, 0, i * 1024, &line));
        }
        let n = now(&live, &j, &Cursors::new()).unwrap();
        assert!(n.allocs[0].text.len() <= MAX_PENDING);
        assert_eq!(n.allocs[0].offset + n.allocs[0].text.len() as u64, 3000 * 1024);
        assert!(n.allocs[0].text.starts_with('x'));
    }

    #[tokio::test]
    async fn a_waiting_watcher_is_answered_by_a_post_and_by_a_status_move() {
        let (live, j) = (std::sync::Arc::new(Live::default()), job());
        let l2 = live.clone();
        let j2 = j.clone();
        let waiter = tokio::spawn(async move { l2.next(&j2, &Cursors::new(), 0, Duration::from_secs(10)).await });
        while live.jobs() == 0 {
            tokio::task::yield_now().await;
        }
        live.post(&j, post(0, 0, 0, "hello\n"));
        let n = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(n.allocs[0].text, "hello\n");
        let l2 = live.clone();
        let j2 = j.clone();
        let waiter = tokio::spawn(async move { l2.next(&j2, &[(0, (0, 6))].into(), 0, Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        live.status_moved(&j);
        let n = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(n.status, 1);
        // With nothing new, the wait ends empty.
        let n = live.next(&j, &[(0, (0, 6))].into(), 1, Duration::from_millis(50)).await;
        assert!(n.allocs.is_empty());
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c: Cursors = [(0, (2, 10)), (3, (0, 0))].into();
        assert_eq!(parse_cursors(&cursors_param(&c)).unwrap(), c);
        assert_eq!(parse_cursors("").unwrap(), Cursors::new());
        assert!(parse_cursors("0.1").is_err());
        assert!(parse_cursors("a.b.c").is_err());
    }
}
