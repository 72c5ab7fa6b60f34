//! A job's log as a watcher reads it: the stored chunks of every allocation
//! (`logs/<alloc>/<n>.log`) from a cursor, and past them the live feed the host relays.

use std::time::Duration;

use aic_core::JobKey;
use aic_schemas::Launcher;
use indicatif::{ProgressBar, ProgressStyle};

use aic_functions::gateway::live::{Cursors, News, Stream, cursors_param};
use aic_schemas::GpuSample;

use crate::env::Env;

/// How often the status is read from the bucket while a live feed tells of its moves.
pub(crate) const STATUS_EVERY: Duration = Duration::from_secs(2);
/// Least time between two live calls (a chatty job's lines come together).
const LIVE_EVERY: Duration = Duration::from_millis(100);

/// Where a watcher is in every allocation's log: the stored chunks (`logs/<alloc>/<n>.log`)
/// and, past them, what the host relays live (`aic_functions::gateway::live`).
#[derive(Default)]
pub struct LogCursor {
    at: Cursors,
    pub(crate) progress: Option<ProgressBar>,
    /// Whether lines carry their allocation (`[1] ...`), decided once from the manifest: a job
    /// whose every allocation runs the program logs from each; an MPI or Horovod launch logs
    /// from the leader only, with rank tags.
    tag_allocs: Option<bool>,
    /// The live feed's status count last seen.
    pub(crate) status: u64,
    /// What it reads: the log, or the GPU samples (`metrics/`), and what it does with them.
    samples: Option<Samples>,
}

/// A cursor over the GPU samples keeps them (and prints each, or redraws a table, or
/// neither).
#[derive(Default)]
pub struct Samples {
    pub(crate) all: Vec<GpuSample>,
    pub(crate) show: Show,
    /// (alloc, time) of each sample taken: one stored twice (by a lost worker's host and by
    /// the worker) counts once.
    seen: std::collections::HashSet<(u32, chrono::DateTime<chrono::Utc>)>,
}

/// What a samples cursor shows as samples come.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Nothing (`aic status` reads them, then sums them up).
    #[default]
    Nothing,
    /// A line a sample (`aic logs --metrics`).
    Lines,
    /// A table per allocation and GPU, redrawn (`aic top` on a terminal).
    Table,
}

impl LogCursor {
    /// A cursor over the job's GPU samples rather than its log.
    pub fn samples(show: Show) -> LogCursor {
        LogCursor { samples: Some(Samples { show, ..Default::default() }), ..Default::default() }
    }

    /// The samples read so far (none for a log cursor).
    pub fn taken(&self) -> &[GpuSample] {
        self.samples.as_ref().map_or(&[], |s| &s.all)
    }

    fn stream(&self) -> Stream {
        if self.samples.is_some() { Stream::Metrics } else { Stream::Logs }
    }

    fn prefix(&self, job: &JobKey) -> String {
        match self.stream() {
            Stream::Logs => job.logs_prefix(),
            Stream::Metrics => job.metrics_prefix(),
        }
    }

    fn chunk_key(&self, job: &JobKey, alloc: u32, n: u64) -> String {
        match self.stream() {
            Stream::Logs => job.log_chunk(alloc, n),
            Stream::Metrics => job.metrics_chunk(alloc, n),
        }
    }

    /// Prints what is stored past the cursor, for every allocation; returns how many lines
    /// it printed.
    pub async fn print_new(&mut self, env: &Env, job: &JobKey) -> anyhow::Result<usize> {
        let (allocs, _) = env.store.list_dir(&self.prefix(job)).await?;
        let mut printed = 0;
        for alloc_prefix in allocs {
            let Ok(alloc) = alloc_prefix.trim_end_matches('/').rsplit('/').next().unwrap_or("").parse::<u32>() else {
                continue;
            };
            printed += self.read_stored(env, job, alloc, None).await?;
        }
        Ok(printed)
    }

    /// Prints what the host holds live past the cursor (not stored yet), without waiting.
    pub async fn print_live(&mut self, env: &Env, job: &JobKey) -> anyhow::Result<usize> {
        let Some(gw) = live_gateway(env) else { return Ok(0) };
        let path = format!("{}&wait=0", self.live_path(job));
        match gw.call(reqwest::Method::GET, &path, None).await {
            Ok(v) => {
                let news: News = serde_json::from_value(v)?;
                self.apply(env, job, &news).await
            }
            // No host relays live logs (none runs, or a Lambda gateway): what is stored is all.
            Err(_) => Ok(0),
        }
    }

    /// Prints allocation `alloc`'s stored chunks from the cursor on (before chunk `upto`).
    pub(crate) async fn read_stored(
        &mut self,
        env: &Env,
        job: &JobKey,
        alloc: u32,
        upto: Option<u64>,
    ) -> anyhow::Result<usize> {
        let (chunk, offset) = self.at.get(&alloc).copied().unwrap_or((0, 0));
        let prefix = format!("{}{alloc}/", self.prefix(job));
        let after = if chunk == 0 { prefix.clone() } else { self.chunk_key(job, alloc, chunk - 1) };
        let mut printed = 0;
        for meta in env.store.list_after(&prefix, &after).await? {
            let Some(n) = chunk_number(meta.location.filename()) else {
                continue;
            };
            if n < chunk {
                continue;
            }
            if upto.is_some_and(|u| n >= u) {
                break;
            }
            let Some(body) = env.store.get_limited(meta.location.as_ref(), 16 * 1024 * 1024).await? else { continue };
            let from = if n == chunk { (offset as usize).min(body.len()) } else { 0 };
            printed += self.print_text(env, job, alloc, &String::from_utf8_lossy(&body[from..])).await?;
            self.at.insert(alloc, (n + 1, 0));
        }
        Ok(printed)
    }

    /// Prints a live answer: for an allocation the host has at a later chunk than the
    /// cursor, the stored chunks between first.
    pub(crate) async fn apply(&mut self, env: &Env, job: &JobKey, news: &News) -> anyhow::Result<usize> {
        // A host that knows only the log answers a watcher of samples with the log: none of
        // the program's lines passes for a sample.
        if self.stream() == Stream::Metrics && news.stream != Some(Stream::Metrics) {
            return Ok(0);
        }
        let mut printed = 0;
        for p in &news.allocs {
            let (chunk, _) = self.at.get(&p.alloc).copied().unwrap_or((0, 0));
            if p.chunk < chunk {
                continue;
            }
            if p.chunk > chunk {
                printed += self.read_stored(env, job, p.alloc, Some(p.chunk)).await?;
                self.at.insert(p.alloc, (p.chunk, 0));
            }
            let (_, offset) = self.at.get(&p.alloc).copied().unwrap_or((0, 0));
            let end = p.offset + p.text.len() as u64;
            if end <= offset {
                continue;
            }
            // Past a gap (the host kept less than the watcher missed), from what it has.
            let from = offset.saturating_sub(p.offset) as usize;
            printed += self.print_text(env, job, p.alloc, p.text.get(from..).unwrap_or_default()).await?;
            self.at.insert(p.alloc, (p.chunk, end));
        }
        Ok(printed)
    }

    pub(crate) async fn print_text(
        &mut self,
        env: &Env,
        job: &JobKey,
        alloc: u32,
        text: &str,
    ) -> anyhow::Result<usize> {
        if let Some(s) = &mut self.samples {
            return Ok(s.take(text));
        }
        if self.tag_allocs.is_none() {
            self.tag_allocs = aic_core::runs::current_manifest(&env.store, job)
                .await?
                .map(|m| m.request.miners > 1 && !matches!(m.request.launcher, Launcher::Mpi | Launcher::Horovod));
        }
        let many = self.tag_allocs.unwrap_or(alloc > 0 || self.at.len() > 1);
        let mut printed = 0;
        for line in text.lines() {
            if self.progress_line(line) {
                continue;
            }
            let text = if many { format!("[{alloc}] {line}") } else { line.to_string() };
            match &self.progress {
                Some(pb) if !pb.is_hidden() => pb.suspend(|| println!("{text}")),
                _ => println!("{text}"),
            }
            printed += 1;
        }
        Ok(printed)
    }

    /// `AIC_PROGRESS done/total` lines drive a progress bar instead of being printed.
    pub(crate) fn progress_line(&mut self, line: &str) -> bool {
        let Some(rest) = line.strip_prefix("AIC_PROGRESS ") else { return false };
        let Some((done, total)) = rest.trim().split_once('/') else { return false };
        let (Ok(done), Ok(total)) = (done.parse::<u64>(), total.parse::<u64>()) else { return false };
        let pb = self.progress.get_or_insert_with(|| {
            let pb = ProgressBar::new(total);
            pb.set_style(
                ProgressStyle::with_template("progress {bar:30} {pos}/{len} {elapsed_precise}")
                    .expect("valid")
                    .progress_chars("=> "),
            );
            pb
        });
        pb.set_length(total);
        pb.set_position(done);
        true
    }

    /// The live feed's call for what comes after the cursor (`&wait=` to add).
    fn live_path(&self, job: &JobKey) -> String {
        let stream = if self.stream() == Stream::Metrics { "&stream=metrics" } else { "" };
        format!("jobs/{}/live?from={}&status={}{stream}", job.job, cursors_param(&self.at), self.status)
    }

    /// A cursor past every chunk stored so far: only output from now on is printed.
    pub async fn at_end(env: &Env, job: &JobKey) -> anyhow::Result<LogCursor> {
        let mut c = LogCursor::default();
        let (allocs, _) = env.store.list_dir(&job.logs_prefix()).await?;
        for prefix in allocs {
            let Ok(alloc) = prefix.trim_end_matches('/').rsplit('/').next().unwrap_or("").parse::<u32>() else {
                continue;
            };
            let last = env.store.list(&prefix).await?.last().and_then(|m| chunk_number(m.location.filename()));
            if let Some(n) = last {
                c.at.insert(alloc, (n + 1, 0));
            }
        }
        Ok(c)
    }

    pub fn finish(&mut self) {
        if let Some(pb) = self.progress.take() {
            pb.finish_and_clear();
        }
    }
}

/// A chunk's number from its name (`00000003.log`, `00000003.jsonl`).
fn chunk_number(name: Option<&str>) -> Option<u64> {
    name?.strip_suffix(".log").or_else(|| name?.strip_suffix(".jsonl"))?.parse().ok()
}

impl Samples {
    /// Takes the sample lines of `text` (a line that is not one is skipped); returns how many.
    fn take(&mut self, text: &str) -> usize {
        let mut n = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(s) = serde_json::from_str::<GpuSample>(line) else { continue };
            if !self.seen.insert((s.alloc, s.at)) {
                continue;
            }
            if self.show == Show::Lines {
                for g in &s.gpus {
                    println!("{}", crate::gputable::line(&s, g));
                }
            }
            self.all.push(s);
            n += 1;
        }
        if n > 0 && self.show == Show::Table {
            // Home, clear, the table.
            print!("\x1b[H\x1b[2J{}", crate::gputable::table(&self.all));
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        n
    }
}

type LiveCall = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<News>> + Send>>;

/// The live feed of a job: long-polls at the host that relays what its workers print (the
/// embedded pool's, or the pool's gateway); `None` where there is none (a Lambda gateway, or
/// no pool hosted yet), and the bucket is read instead.
pub(crate) struct Feed {
    gw: Option<crate::remote::Gateway>,
    call: Option<LiveCall>,
    /// A gateway that answered 404: it relays no live logs.
    none: bool,
    last: tokio::time::Instant,
    /// Until when to read the bucket instead (the host did not answer).
    resting: Option<tokio::time::Instant>,
}

impl Feed {
    pub(crate) fn new() -> Feed {
        Feed { gw: None, call: None, none: false, last: tokio::time::Instant::now() - LIVE_EVERY, resting: None }
    }

    /// Whether lines come from the feed (else from the bucket).
    pub(crate) fn is_live(&self) -> bool {
        self.gw.is_some() && !self.none
    }

    /// Starts the next long-poll unless one is waiting.
    pub(crate) fn start(&mut self, env: &Env, job: &JobKey, cursor: &LogCursor) {
        if self.none || self.call.is_some() || self.resting.is_some_and(|t| t > tokio::time::Instant::now()) {
            return;
        }
        if self.gw.is_none() {
            self.gw = live_gateway(env);
        }
        let Some(gw) = self.gw.clone() else { return };
        let path = format!("{}&wait=20000", cursor.live_path(job));
        let not_before = self.last + LIVE_EVERY;
        self.last = not_before.max(tokio::time::Instant::now());
        self.call = Some(Box::pin(async move {
            tokio::time::sleep_until(not_before).await;
            let v = gw.call(reqwest::Method::GET, &path, None).await?;
            Ok(serde_json::from_value::<News>(v)?)
        }));
    }

    /// The next live answer (never, without a call waiting).
    pub(crate) async fn next(&mut self) -> Option<News> {
        let Some(call) = self.call.as_mut() else { return std::future::pending().await };
        let r = call.await;
        self.call = None;
        match r {
            Ok(n) => Some(n),
            Err(e) => {
                if e.downcast_ref::<aic_core::remote::GatewayError>().is_some_and(|g| g.status == 404) {
                    self.none = true;
                } else {
                    tracing::debug!(error = %e, "the live feed did not answer; reading the bucket a while");
                    // The host may have changed (a new `dev up`): find it again.
                    self.gw = None;
                    self.resting = Some(tokio::time::Instant::now() + STATUS_EVERY);
                }
                None
            }
        }
    }
}

/// Where live logs come from: the pool's gateway, or the host of the embedded pool; none
/// when `AIC_LIVE=0` (the bucket only).
fn live_gateway(env: &Env) -> Option<crate::remote::Gateway> {
    if std::env::var("AIC_LIVE").is_ok_and(|v| v == "0") {
        return None;
    }
    env.gateway_client().or_else(|| env.embedded_gateway().ok())
}
