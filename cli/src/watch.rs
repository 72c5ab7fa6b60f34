//! Watching a job: status transitions, the live log, the progress bar, the end.

use std::time::Duration;

use aic_core::JobKey;
use aic_schemas::validate::MAX_DOC_BYTES;
use aic_schemas::{JobState, Launcher, StatusRecord};
use indicatif::{ProgressBar, ProgressStyle};

use aic_functions::gateway::live::{Cursors, News, cursors_param};

use crate::env::Env;
use crate::pool::{self, Hosted};

/// How often the bucket is read when no live feed is there (a gateway without one).
const TICK: Duration = Duration::from_millis(200);
/// How often the status is read from the bucket while a live feed tells of its moves.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// Least time between two live calls (a chatty job's lines come together).
const LIVE_EVERY: Duration = Duration::from_millis(100);

/// Where a watcher is in every allocation's log: the stored chunks (`logs/<alloc>/<n>.log`)
/// and, past them, what the host relays live (`aic_functions::gateway::live`).
#[derive(Default)]
pub struct LogCursor {
    at: Cursors,
    progress: Option<ProgressBar>,
    /// Whether lines carry their allocation (`[1] ...`), decided once from the manifest: a job
    /// whose every allocation runs the program logs from each; an MPI or Horovod launch logs
    /// from the leader only, with rank tags.
    tag_allocs: Option<bool>,
    /// The live feed's status count last seen.
    status: u64,
}

impl LogCursor {
    /// Prints what is stored past the cursor, for every allocation; returns how many lines
    /// it printed.
    pub async fn print_new(&mut self, env: &Env, job: &JobKey) -> anyhow::Result<usize> {
        let (allocs, _) = env.store.list_dir(&job.logs_prefix()).await?;
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
        let path = format!("jobs/{}/live?from={}&status={}&wait=0", job.job, cursors_param(&self.at), self.status);
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
    async fn read_stored(&mut self, env: &Env, job: &JobKey, alloc: u32, upto: Option<u64>) -> anyhow::Result<usize> {
        let (chunk, offset) = self.at.get(&alloc).copied().unwrap_or((0, 0));
        let prefix = format!("{}{alloc}/", job.logs_prefix());
        let after = if chunk == 0 { prefix.clone() } else { job.log_chunk(alloc, chunk - 1) };
        let mut printed = 0;
        for meta in env.store.list_after(&prefix, &after).await? {
            let Some(n) =
                meta.location.filename().and_then(|f| f.strip_suffix(".log")).and_then(|n| n.parse::<u64>().ok())
            else {
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
    async fn apply(&mut self, env: &Env, job: &JobKey, news: &News) -> anyhow::Result<usize> {
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

    async fn print_text(&mut self, env: &Env, job: &JobKey, alloc: u32, text: &str) -> anyhow::Result<usize> {
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
    fn progress_line(&mut self, line: &str) -> bool {
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

    /// A cursor past every chunk stored so far: only output from now on is printed.
    pub async fn at_end(env: &Env, job: &JobKey) -> anyhow::Result<LogCursor> {
        let mut c = LogCursor::default();
        let (allocs, _) = env.store.list_dir(&job.logs_prefix()).await?;
        for prefix in allocs {
            let Ok(alloc) = prefix.trim_end_matches('/').rsplit('/').next().unwrap_or("").parse::<u32>() else {
                continue;
            };
            let last = env.store.list(&prefix).await?.last().and_then(|m| {
                m.location.filename().and_then(|f| f.strip_suffix(".log")).and_then(|n| n.parse::<u64>().ok())
            });
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

type LiveCall = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<News>> + Send>>;

/// The live feed of a job: long-polls at the host that relays what its workers print (the
/// embedded pool's, or the pool's gateway); `None` where there is none (a Lambda gateway, or
/// no pool hosted yet), and the bucket is read instead.
struct Feed {
    gw: Option<crate::remote::Gateway>,
    call: Option<LiveCall>,
    /// A gateway that answered 404: it relays no live logs.
    none: bool,
    last: tokio::time::Instant,
    /// Until when to read the bucket instead (the host did not answer).
    resting: Option<tokio::time::Instant>,
}

impl Feed {
    fn new() -> Feed {
        Feed { gw: None, call: None, none: false, last: tokio::time::Instant::now() - LIVE_EVERY, resting: None }
    }

    /// Whether lines come from the feed (else from the bucket).
    fn is_live(&self) -> bool {
        self.gw.is_some() && !self.none
    }

    /// Starts the next long-poll unless one is waiting.
    fn start(&mut self, env: &Env, job: &JobKey, cursor: &LogCursor) {
        if self.none || self.call.is_some() || self.resting.is_some_and(|t| t > tokio::time::Instant::now()) {
            return;
        }
        if self.gw.is_none() {
            self.gw = live_gateway(env);
        }
        let Some(gw) = self.gw.clone() else { return };
        let path =
            format!("jobs/{}/live?from={}&status={}&wait=20000", job.job, cursors_param(&cursor.at), cursor.status);
        let not_before = self.last + LIVE_EVERY;
        self.last = not_before.max(tokio::time::Instant::now());
        self.call = Some(Box::pin(async move {
            tokio::time::sleep_until(not_before).await;
            let v = gw.call(reqwest::Method::GET, &path, None).await?;
            Ok(serde_json::from_value::<News>(v)?)
        }));
    }

    /// The next live answer (never, without a call waiting).
    async fn next(&mut self) -> Option<News> {
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

/// Waits for work of a pool this process hosts (never, when it hosts none).
async fn host_changed(host: Option<&Hosted>) {
    match host {
        Some(h) => h.changed().await,
        None => std::future::pending().await,
    }
}

/// Status records after `seen`, oldest first.
async fn new_records(env: &Env, job: &JobKey, seen: u64) -> anyhow::Result<Vec<StatusRecord>> {
    let offset = if seen == 0 { job.status_prefix() } else { job.status_record(seen) };
    let mut out = Vec::new();
    for meta in env.store.list_after(&job.status_prefix(), &offset).await? {
        if let Some(r) = env.store.get_json::<StatusRecord>(meta.location.as_ref(), MAX_DOC_BYTES).await? {
            out.push(r);
        }
    }
    Ok(out)
}

/// Where to start watching a resumed job: after status record `seq` (the run before's end),
/// until run `run` ends; its log from what is written from now on.
#[derive(Clone, Copy, Debug)]
pub struct From {
    pub seq: u64,
    pub run: u32,
}

/// Watches a job to its end, hosting the embedded pool if nobody else does. Returns the
/// exit code: 0 when the job succeeded.
pub async fn watch(env: &Env, job: &JobKey, show_logs: bool, hosted: Option<Hosted>) -> anyhow::Result<i32> {
    watch_run(env, job, show_logs, hosted, None).await
}

/// [`watch`], from a point of the job's history (a resumed run) or its start.
pub async fn watch_run(
    env: &Env,
    job: &JobKey,
    show_logs: bool,
    hosted: Option<Hosted>,
    from: Option<From>,
) -> anyhow::Result<i32> {
    let code = watch_from(env, job, show_logs, hosted.as_ref(), from).await?;
    if let Some(h) = &hosted {
        h.drain(Duration::from_secs(30)).await;
    }
    Ok(code)
}

/// [`watch`] with a pool this process already hosts (or none), kept hosted afterwards.
pub async fn watch_keep(env: &Env, job: &JobKey, show_logs: bool, borrowed: Option<&Hosted>) -> anyhow::Result<i32> {
    watch_from(env, job, show_logs, borrowed, None).await
}

async fn watch_from(
    env: &Env,
    job: &JobKey,
    show_logs: bool,
    borrowed: Option<&Hosted>,
    from: Option<From>,
) -> anyhow::Result<i32> {
    let (miners, gpus) = pool::pool_size()?;
    let mut taken: Option<Hosted> = None;
    let mut seen = from.map_or(0, |f| f.seq);
    let run = from.map_or(0, |f| f.run);
    let mut cursor = match from {
        Some(_) => LogCursor::at_end(env, job).await?,
        None => LogCursor::default(),
    };
    let mut last: Option<StatusRecord> = None;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut feed = Feed::new();
    let long_ago = tokio::time::Instant::now() - STATUS_EVERY;
    let (mut host_checked, mut stored_read, mut status_read) = (long_ago, long_ago, long_ago);
    let mut status_moved = true;
    loop {
        let now = tokio::time::Instant::now();
        match borrowed.or(taken.as_ref()) {
            Some(h) => {
                h.step().await?;
            }
            // Another process hosts the pool; if it goes away, take over.
            None if now.duration_since(host_checked) >= STATUS_EVERY => {
                host_checked = now;
                taken = Hosted::try_host(env, miners, gpus).await?;
            }
            None => {}
        }
        feed.start(env, job, &cursor);
        // Output first: the final status is written after the last chunk. With a live feed,
        // stored chunks are read as its answers point to them.
        if show_logs && !feed.is_live() && now.duration_since(stored_read) >= TICK {
            stored_read = now;
            cursor.print_new(env, job).await?;
        }
        if status_moved || now.duration_since(status_read) >= if feed.is_live() { STATUS_EVERY } else { TICK } {
            (status_moved, status_read) = (false, now);
            for r in new_records(env, job, seen).await? {
                seen = r.seq;
                let line = format!("● {}", describe(&r));
                match &cursor.progress {
                    Some(pb) if !pb.is_hidden() => pb.suspend(|| eprintln!("{line}")),
                    _ => eprintln!("{line}"),
                }
                last = Some(r);
            }
        }
        if let Some(r) = &last
            && r.state.is_terminal()
            && r.run >= run
        {
            break;
        }
        let host = borrowed.or(taken.as_ref());
        let pause = if feed.is_live() { STATUS_EVERY } else { TICK };
        tokio::select! {
            news = feed.next() => if let Some(n) = news {
                status_moved = n.status != cursor.status;
                cursor.status = n.status;
                if show_logs {
                    cursor.apply(env, job, &n).await?;
                }
            },
            _ = host_changed(host) => {}
            _ = tokio::time::sleep(pause) => {}
            _ = interrupt.recv() => {
                cursor.finish();
                eprintln!("stopped watching; the job goes on: `aic logs -f {}`, `aic cancel {}`", job.job, job.job);
                return Ok(130);
            }
        }
    }
    if show_logs {
        cursor.print_new(env, job).await?;
    }
    cursor.finish();
    let r = last.expect("loop ends on a record");
    let code = match r.state {
        JobState::Succeeded => {
            let wall = r.detail.wall_seconds.unwrap_or_default();
            eprintln!("✔ job {} succeeded; execution time {wall:.2} s", job.job);
            eprintln!("  fetch its outputs with `aic results get {}`", job.job);
            0
        }
        JobState::TimedOut => {
            let wall = r.detail.wall_seconds.unwrap_or_default();
            eprintln!(
                "⏱ job {} stopped at its {}; execution time {wall:.2} s",
                job.job,
                r.reason.clone().unwrap_or_default()
            );
            eprintln!("  fetch its outputs with `aic results get {}`; pay for more hours next time (--hours)", job.job);
            1
        }
        state => {
            eprintln!("✘ job {} {state}: {}", job.job, r.reason.clone().unwrap_or_default());
            if !show_logs && let Some(tail) = &r.detail.log_tail {
                eprintln!("last lines of output:\n{tail}");
            }
            1
        }
    };
    if let Some(h) = &taken {
        h.drain(Duration::from_secs(30)).await;
    }
    settled(env, job, r.run, taken.as_ref().or(borrowed)).await;
    Ok(code)
}

/// Once paid run `run` of a job paid by deposit has ended, waits (30 s at most) for it to be
/// settled and says what it used and what came back.
async fn settled(env: &Env, job: &JobKey, run: u32, host: Option<&crate::pool::Hosted>) {
    let deposit = aic_core::runs::manifest(&env.store, job, run)
        .await
        .ok()
        .flatten()
        .and_then(|m| m.payment)
        .is_some_and(|p| p.escrow.is_some());
    if !deposit {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = env.settlements(job).await
            && let Some(s) = s.iter().find(|s| s.run == run)
        {
            eprintln!("  {}", aic_functions::settle::summary(s));
            return;
        }
        if tokio::time::Instant::now() > deadline {
            eprintln!("  its run is not settled yet; `aic status {}` shows it once it is", job.job);
            return;
        }
        if let Some(h) = host {
            let _ = h.step().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `aic logs -f`: the log until the job ends.
pub async fn follow_logs(env: &Env, job: &JobKey) -> anyhow::Result<i32> {
    // Taken before anything is printed: a Ctrl-C from then on is this loop's to answer.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut cursor = LogCursor::default();
    let mut feed = Feed::new();
    let long_ago = tokio::time::Instant::now() - STATUS_EVERY;
    let (mut stored_read, mut status_read) = (long_ago, long_ago);
    let mut status_moved = true;
    loop {
        let now = tokio::time::Instant::now();
        feed.start(env, job, &cursor);
        if !feed.is_live() && now.duration_since(stored_read) >= TICK {
            stored_read = now;
            cursor.print_new(env, job).await?;
        }
        if status_moved || now.duration_since(status_read) >= if feed.is_live() { STATUS_EVERY } else { TICK } {
            (status_moved, status_read) = (false, now);
            if let Some(r) = aic_core::status::current(&env.store, job).await?
                && r.state.is_terminal()
            {
                cursor.print_new(env, job).await?;
                cursor.finish();
                eprintln!("job {}: {}", job.job, describe(&r));
                return Ok(if r.state == JobState::Succeeded { 0 } else { 1 });
            }
        }
        let pause = if feed.is_live() { STATUS_EVERY } else { TICK };
        tokio::select! {
            news = feed.next() => if let Some(n) = news {
                status_moved = n.status != cursor.status;
                cursor.status = n.status;
                cursor.apply(env, job, &n).await?;
            },
            _ = tokio::time::sleep(pause) => {}
            _ = interrupt.recv() => {
                cursor.finish();
                // On a line of its own: the terminal's `^C` is all that is on the current one.
                eprintln!("\nstopped following; the job goes on: `aic status {}`", job.job);
                return Ok(130);
            }
        }
    }
}

/// One status record as a line: state, reason, exit code, execution time, GPU-seconds.
pub fn describe(rec: &StatusRecord) -> String {
    let mut s = format!("{:<9}", rec.state.as_str());
    if let Some(r) = &rec.reason {
        s.push_str(&format!("  {r}"));
    }
    let d = &rec.detail;
    if let Some(c) = d.exit_code
        && rec.state == JobState::Failed
    {
        s.push_str(&format!(" [exit code {c}]"));
    }
    if let Some(w) = d.wall_seconds {
        s.push_str(&format!("  execution time {w:.1} s"));
    }
    if let Some(g) = d.gpu_seconds {
        s.push_str(&format!(", {g:.1} GPU-seconds"));
    }
    s
}
