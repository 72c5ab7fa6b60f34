//! Log shipping: the program's output, stored in chunks (`logs/<alloc>/<n>.log`) and posted
//! live to the pool's host as it comes (`live.rs`).
//!
//! A chunk is stored when [`FLUSH_EVERY`] has passed since its first line or when it reaches
//! [`CHUNK_BYTES`], and when the program ends: a 64-miner job logging all day writes about
//! 550,000 objects rather than one a second each, and watchers get the lines from the host's
//! memory within a round trip (`aic_functions::gateway::live`), reading the bucket only for
//! chunks already stored. Each chunk is create-only: a restarted shipper never overwrites an
//! earlier chunk.

use std::collections::VecDeque;
use std::time::Duration;

use aic_core::{Created, JobKey, Store};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::live::LiveLog;

pub const CHUNK_BYTES: usize = 1024 * 1024;
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);
/// Lines kept for a failed status's log tail.
pub const TAIL_LINES: usize = 20;
/// For output tagged by rank (`[rank N] …`): lines kept per rank, and ranks shown.
pub const RANK_TAIL_LINES: usize = 16;
pub const TAIL_RANKS: usize = 4;

/// The last lines of a program's output, for a failed status. Output tagged by rank keeps
/// each rank's own last lines, so the rank that failed is not crowded out by the others'
/// reactions to it (an MPI rank's connection errors once its peer is gone).
#[derive(Default)]
pub struct Tail {
    all: VecDeque<String>,
    ranks: std::collections::BTreeMap<u32, VecDeque<String>>,
    plain: VecDeque<String>,
}

fn keep(q: &mut VecDeque<String>, line: &str, n: usize) {
    if q.len() == n {
        q.pop_front();
    }
    q.push_back(line.to_string());
}

impl Tail {
    pub fn push(&mut self, line: &str) {
        keep(&mut self.all, line, TAIL_LINES);
        let rank = line.strip_prefix("[rank ").and_then(|r| r.split_once(']')).and_then(|(n, _)| n.parse().ok());
        match rank {
            Some(r) => keep(self.ranks.entry(r).or_default(), line, RANK_TAIL_LINES),
            None => keep(&mut self.plain, line, TAIL_LINES / 2),
        }
    }

    /// Untagged output: its last lines. Tagged: the last lines of the ranks the launcher
    /// blamed (`process rank N`), then of the others in order (at most [`TAIL_RANKS`]),
    /// then the launcher's own last lines.
    pub fn lines(self) -> Vec<String> {
        if self.ranks.is_empty() {
            return self.all.into_iter().collect();
        }
        let mut order: Vec<u32> = Vec::new();
        for l in &self.plain {
            let mut rest = l.as_str();
            while let Some(i) = rest.find("process rank ") {
                rest = &rest[i + "process rank ".len()..];
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if let Ok(r) = digits.parse::<u32>()
                    && self.ranks.contains_key(&r)
                    && !order.contains(&r)
                {
                    order.push(r);
                }
            }
        }
        for r in self.ranks.keys() {
            if !order.contains(r) {
                order.push(*r);
            }
        }
        let mut ranks = self.ranks;
        let mut out: Vec<String> =
            order.iter().take(TAIL_RANKS).flat_map(|r| ranks.remove(r).unwrap_or_default()).collect();
        out.extend(self.plain);
        out
    }
}

/// A line of the worker's own in the job's log (`[aic] …`): its phases, as the user sees them.
pub async fn say(log: &mpsc::Sender<String>, line: String) {
    let _ = log.send(format!("[aic] {line}")).await;
}

/// What a [`Shipper`] ships: the program's output, or its allocation's GPU samples
/// (`gpuuse.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Logs,
    Metrics,
}

impl Stream {
    fn chunk(self, job: &JobKey, alloc: u32, n: u64) -> String {
        match self {
            Stream::Logs => job.log_chunk(alloc, n),
            Stream::Metrics => job.metrics_chunk(alloc, n),
        }
    }

    fn prefix(self, job: &JobKey, alloc: u32) -> String {
        match self {
            Stream::Logs => format!("{}{alloc}/", job.logs_prefix()),
            Stream::Metrics => format!("{}{alloc}/", job.metrics_prefix()),
        }
    }

    /// How long a chunk is filled before it is stored: samples come every few seconds and
    /// watchers take them live, so their chunks are coarser.
    fn every(self) -> Duration {
        let (var, default) = match self {
            Stream::Logs => ("AIC_LOG_CHUNK_SECONDS", FLUSH_EVERY),
            Stream::Metrics => ("AIC_METRICS_CHUNK_SECONDS", METRICS_FLUSH_EVERY),
        };
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map_or(default, Duration::from_secs_f64)
    }
}

/// How often a chunk of GPU samples is stored.
pub const METRICS_FLUSH_EVERY: Duration = Duration::from_secs(60);

pub struct Shipper {
    stream: Stream,
    store: Store,
    job: JobKey,
    alloc: u32,
    next: u64,
    buf: String,
    tail: Tail,
    live: Option<LiveLog>,
    /// What never leaves in the log: the job's secrets' values (longest first).
    masked: Vec<String>,
}

/// What a masked value shows as.
pub const MASK: &str = "***";

impl Shipper {
    pub fn new(store: Store, job: JobKey, alloc: u32, live: Option<LiveLog>) -> Self {
        Shipper {
            stream: Stream::Logs,
            store,
            job,
            alloc,
            next: 0,
            buf: String::new(),
            tail: Tail::default(),
            live,
            masked: vec![],
        }
    }

    /// Ships `stream` rather than the log.
    pub fn stream(mut self, stream: Stream) -> Self {
        self.stream = stream;
        self
    }

    /// Every line shipped shows `values` (the job's secrets), and each line of a value that
    /// spans several, as [`MASK`]. Values under 4 bytes are left (masking every `a` would hide
    /// the log, not the secret).
    pub fn masking(mut self, values: impl IntoIterator<Item = String>) -> Self {
        use base64::Engine;
        for v in values {
            self.masked.extend(v.lines().map(str::to_string).filter(|l| l.len() >= 4));
            if v.len() >= 4 {
                // As printed through JSON (escaped) and as base64 (a Basic auth header), too.
                let json = serde_json::to_string(&v).unwrap_or_default();
                self.masked.push(json.trim_matches('"').to_string());
                self.masked.push(base64::engine::general_purpose::STANDARD.encode(&v));
                self.masked.push(v);
            }
        }
        self.masked.sort_by_key(|v| std::cmp::Reverse(v.len()));
        self.masked.dedup();
        self
    }

    fn mask(&self, line: String) -> String {
        self.masked.iter().fold(line, |l, v| if l.contains(v.as_str()) { l.replace(v.as_str(), MASK) } else { l })
    }

    /// Ships lines from `rx` until it closes; returns the last lines for the log tail.
    pub async fn run(mut self, mut rx: mpsc::Receiver<String>) -> Vec<String> {
        // A restarted allocation continues after the chunks its earlier run wrote.
        let prefix = self.stream.prefix(&self.job, self.alloc);
        if let Ok(existing) = self.store.list(&prefix).await
            && let Some(last) = existing.last()
        {
            let name = last.location.filename().unwrap_or_default();
            let n = name.split('.').next().unwrap_or_default();
            self.next = n.parse::<u64>().map(|n| n + 1).unwrap_or(0);
        }
        let every = self.stream.every();
        // When the chunk being filled is due to be stored.
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(l) => {
                        due.get_or_insert_with(|| tokio::time::Instant::now() + every);
                        self.push(l);
                        if self.buf.len() >= CHUNK_BYTES {
                            self.flush().await;
                            due = None;
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    self.flush().await;
                    due = None;
                }
            }
        }
        self.flush().await;
        self.tail.lines()
    }

    fn push(&mut self, line: String) {
        let line = self.mask(line);
        let offset = self.buf.len() as u64;
        self.buf.push_str(&line);
        self.buf.push('\n');
        self.tail.push(&line);
        if let Some(live) = &self.live {
            live.text(self.next, offset, self.buf[offset as usize..].to_string());
        }
    }

    async fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let body = Bytes::from(std::mem::take(&mut self.buf));
        // Keep trying: losing a user's log is worse than a late one.
        let mut failures = 0;
        while failures < 5 {
            match self.store.create_bytes(&self.stream.chunk(&self.job, self.alloc, self.next), body.clone()).await {
                Ok(Created::Created) => {
                    self.next += 1;
                    return;
                }
                // A chunk with this number exists (written by an earlier run): take the next.
                Ok(Created::AlreadyExists) => self.next += 1,
                Err(e) => {
                    tracing::warn!(error = %e, failures, "log chunk upload failed");
                    tokio::time::sleep(Duration::from_millis(200 << failures)).await;
                    failures += 1;
                }
            }
        }
        tracing::error!(bytes = body.len(), "a log chunk could not be stored and is lost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_ranks_lines_survive_the_others_noise() {
        let mut t = Tail::default();
        t.push("[rank 1] rank 1 up");
        t.push("[rank 1] rank 1 gives up: out of memory");
        for i in 0..30 {
            t.push(&format!("[rank 0] Open MPI failed to TCP connect to a peer ({i})"));
        }
        t.push("prterun has exited due to process rank 1 with PID 5555 on node vm calling");
        let lines = t.lines();
        assert_eq!(lines[..2], ["[rank 1] rank 1 up", "[rank 1] rank 1 gives up: out of memory"], "{lines:?}");
        assert_eq!(lines.iter().filter(|l| l.starts_with("[rank 0]")).count(), RANK_TAIL_LINES);
        assert!(lines.last().unwrap().starts_with("prterun has exited"));
    }

    #[test]
    fn a_secret_is_masked_as_it_is_and_as_json_and_base64_print_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Shipper {
            stream: Stream::Logs,
            store: aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap(),
            job: aic_core::JobKey::new(
                "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap(),
                "01jb0000000000000000000000".parse().unwrap(),
            ),
            alloc: 0,
            next: 0,
            buf: String::new(),
            tail: Tail::default(),
            live: None,
            masked: vec![],
        }
        .masking(["tok\"en-1234".to_string(), "line one\nline two".to_string(), "ab".to_string()]);
        assert_eq!(s.mask("got tok\"en-1234!".into()), "got ***!");
        assert_eq!(s.mask(r#"{"t": "tok\"en-1234"}"#.into()), r#"{"t": "***"}"#);
        assert_eq!(s.mask("Basic dG9rImVuLTEyMzQ=".into()), "Basic ***");
        assert_eq!(s.mask("> line two".into()), "> ***");
        assert_eq!(s.mask("ab stays".into()), "ab stays", "too short to mask");
    }

    #[test]
    fn untagged_output_keeps_its_last_lines() {
        let mut t = Tail::default();
        for i in 0..50 {
            t.push(&format!("line {i}"));
        }
        let lines = t.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines.last().unwrap(), "line 49");
    }
}
