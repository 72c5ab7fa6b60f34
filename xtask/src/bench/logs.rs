//! Log latency: how long after a job's program prints a line `aic run` prints it, per line,
//! on the embedded pool (`aic dev up`, `aic run` beside it) and in pool mode (`aic` with
//! `AIC_GATEWAY` at the same host: the gateway's live feed), beside what reading the bucket
//! alone gives (`AIC_LIVE=0`): with 1 s chunks (how logs were followed before the live feed)
//! and with the 10 s chunks stored now (a gateway without a live feed, such as a Lambda one).
//!
//! The program prints its clock with each line; `aic run`'s stdout is read as it comes and
//! each line's delay is the clock then less the clock printed (one machine, one clock).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::bail;

use super::gateway::tempfile_dir;
use crate::tools::run;

/// Lines printed, one every [`EVERY_MS`].
const LINES: usize = 120;
const EVERY_MS: u64 = 150;

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// Runs the ticking program with `aic run`; the delay of each of its lines, in ms.
fn delays(aic: &Path, env: &[(&str, String)], script: &Path) -> anyhow::Result<Vec<f64>> {
    let mut child = Command::new(aic)
        .args(["run", &script.display().to_string()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        let at = now();
        if let Some(t) =
            line.strip_prefix("T ").and_then(|r| r.split_whitespace().next()).and_then(|t| t.parse::<f64>().ok())
        {
            out.push((at - t) * 1000.0);
        }
    }
    if !child.wait()?.success() {
        bail!("aic run failed");
    }
    if out.len() != LINES {
        bail!("aic run printed {} of the program's {LINES} lines", out.len());
    }
    Ok(out)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn show(what: &str, mut d: Vec<f64>) {
    d.sort_by(f64::total_cmp);
    println!(
        "log latency, {what:<46} p50 {:>7.0} ms  p90 {:>7.0} ms  p99 {:>7.0} ms  max {:>7.0} ms",
        pct(&d, 0.5),
        pct(&d, 0.9),
        pct(&d, 0.99),
        d[d.len() - 1]
    );
}

pub(crate) fn bench_logs(py: &Path) -> anyhow::Result<()> {
    super::build_release()?;
    let aic = super::bin("aic");
    let dir = tempfile_dir("aic-bench-logs")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("tick.py");
    std::fs::write(
        &script,
        format!(
            "import time\nfor i in range({LINES}):\n    print(f'T {{time.time():.4f}} line {{i}}', flush=True)\n    time.sleep({})\n",
            EVERY_MS as f64 / 1000.0
        ),
    )?;
    let path = crate::tools::path_with(py);
    // One pool per chunk period: the period is the workers' (`AIC_LOG_CHUNK_SECONDS`).
    for (chunks, rows) in [("10", vec!["live", "pool", "bucket"]), ("1", vec!["bucket"])] {
        let home = dir.join(format!("home-{chunks}"));
        let env: Vec<(&str, String)> = vec![
            ("AIC_HOME", home.display().to_string()),
            ("PATH", path.clone()),
            ("AIC_ANVIL", crate::tools::anvil().display().to_string()),
        ];
        run(Command::new(&aic).args(["login", "--dev", "1"]).envs(env.iter().map(|(k, v)| (k, v))))?;
        let up = super::dev_up(&aic, &home, &|c: &mut Command| {
            c.envs(env.iter().map(|(k, v)| (k, v)))
                .env("AIC_LOG_CHUNK_SECONDS", chunks)
                .env_remove("AIC_STORE")
                .env_remove("AIC_GATEWAY");
        })?;
        let result = (|| -> anyhow::Result<()> {
            for row in rows {
                match row {
                    "live" => show("embedded pool, live feed (release):", delays(&aic, &env, &script)?),
                    "pool" => {
                        let addr = std::fs::read_to_string(home.join("serve.addr"))?;
                        let pool_home = dir.join("pool-mode");
                        let mut env = env.clone();
                        env[0].1 = pool_home.display().to_string();
                        env.push(("AIC_GATEWAY", addr.trim().to_string()));
                        run(Command::new(&aic).args(["login", "--dev", "1"]).envs(env.iter().map(|(k, v)| (k, v))))?;
                        show("pool mode, the gateway's live feed (release):", delays(&aic, &env, &script)?)
                    }
                    _ => {
                        let mut env = env.clone();
                        env.push(("AIC_LIVE", "0".into()));
                        show(&format!("the bucket only, {chunks} s chunks (release):"), delays(&aic, &env, &script)?)
                    }
                }
            }
            Ok(())
        })();
        super::stop_dev_up(up);
        result?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
