//! How busy a job's GPUs are, from the samples its workers ship (`metrics/<alloc>/<n>.jsonl`,
//! relayed live as the log is): `aic status` sums them up, `aic top` follows them, `aic logs
//! --metrics` prints them (as `gputable` writes them).

use std::io::IsTerminal;

use aic_schemas::GpuSample;

use crate::env::Env;
use crate::logs::{LogCursor, Show};

/// Every sample stored and held live so far.
pub async fn read(env: &Env, job: &aic_core::JobKey) -> anyhow::Result<Vec<GpuSample>> {
    let mut c = LogCursor::samples(Show::Nothing);
    c.print_new(env, job).await?;
    c.print_live(env, job).await?;
    Ok(c.taken().to_vec())
}

/// `aic logs --metrics [-f]`: a line per GPU per sample.
pub async fn print(env: &Env, s: &str, follow: bool) -> anyhow::Result<i32> {
    let job = env.resolve(s).await?;
    let mut c = LogCursor::samples(Show::Lines);
    if follow {
        return crate::watch::follow(env, &job, c).await;
    }
    if c.print_new(env, &job).await? + c.print_live(env, &job).await? == 0 {
        eprintln!("no GPU samples yet: a running job's workers take one every 5 s");
    }
    Ok(0)
}

/// `aic top JOB`: the table, redrawn as samples come, until the job ends (a line per sample
/// when the output is not a terminal).
pub async fn top(env: &Env, s: &str) -> anyhow::Result<i32> {
    let job = env.resolve(s).await?;
    let show = if std::io::stdout().is_terminal() { Show::Table } else { Show::Lines };
    crate::watch::follow(env, &job, LogCursor::samples(show)).await
}
