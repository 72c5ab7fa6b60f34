//! Watching a job: status transitions, the live log, the progress bar, the end.

use std::time::Duration;

use aic_core::JobKey;
use aic_schemas::validate::MAX_DOC_BYTES;
use aic_schemas::{JobState, StatusRecord};

use crate::env::Env;
pub use crate::logs::LogCursor;
use crate::logs::{Feed, STATUS_EVERY};
use crate::pool::{self, Hosted};

/// How often the bucket is read when no live feed is there (a gateway without one).
const TICK: Duration = Duration::from_millis(200);

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
    follow(env, job, LogCursor::default()).await
}

/// What `cursor` reads (the log, or the GPU samples: `aic top`), until the job ends.
pub async fn follow(env: &Env, job: &JobKey, mut cursor: LogCursor) -> anyhow::Result<i32> {
    // Taken before anything is printed: a Ctrl-C from then on is this loop's to answer.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
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
