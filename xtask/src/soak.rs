//! `cargo xtask soak [JOBS]`: JOBS small jobs (1,000 by default) through the embedded pool,
//! 8 at a time, from release builds: every one must succeed; the hosting process's memory
//! (VmRSS) is noted after the first 8 and at the end, and the event spool must be empty once
//! the pool is idle. A figure-and-check run, not part of `cargo xtask test` (the CLI's
//! `embedded.rs` runs a short one on every test run).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::bench::{bin, build_release, dev_up, stop_dev_up};
use crate::tools::{anvil, path_with, setup};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn soak(jobs: usize) -> anyhow::Result<()> {
    let py = setup(false)?;
    build_release()?;
    let dir = std::env::temp_dir().join(format!("aic-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let home = dir.join("home");
    let script = dir.join("small.py");
    std::fs::write(
        &script,
        "import os, sys\nprint('soak job', os.environ.get('AIC_JOB_ID'))\n\
         open(os.path.join(os.environ['AIC_OUTPUT_DIR'], 'done.txt'), 'w').write('ok')\n",
    )?;
    let env = |c: &mut Command| {
        c.env("AIC_HOME", &home)
            .env("PATH", path_with(&py))
            .env("AIC_ANVIL", anvil())
            .env("AIC_PRICE", "0")
            .env("AIC_POOL_MINERS", "4")
            .env("AIC_POOL_GPUS", "2")
            .env_remove("AIC_STORE")
            .env_remove("AIC_GATEWAY")
            .stdin(Stdio::null());
    };
    let up = dev_up(&bin("aic"), &home, &env)?;
    let result = (|| -> anyhow::Result<()> {
        let next = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::<String>::new()));
        let warm = Arc::new(Mutex::new(None::<u64>));
        let started = Instant::now();
        let pid = up.id();
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (next, failed, warm) = (next.clone(), failed.clone(), warm.clone());
                let script = script.clone();
                s.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= jobs {
                            return;
                        }
                        if i == 8 {
                            *warm.lock().unwrap() = Some(rss_kib(pid));
                        }
                        let mut run = Command::new(bin("aic"));
                        run.arg("run").arg(&script).stdout(Stdio::null()).stderr(Stdio::piped());
                        env(&mut run);
                        match run.output() {
                            Ok(o) if o.status.success() => {}
                            Ok(o) => {
                                failed.lock().unwrap().push(format!("job {i}: {}", String::from_utf8_lossy(&o.stderr)))
                            }
                            Err(e) => failed.lock().unwrap().push(format!("job {i}: {e}")),
                        }
                    }
                });
            }
        });
        let took = started.elapsed().as_secs_f64();
        // The pool drains: no event left in the spool.
        let spool = home.join("events");
        let deadline = Instant::now() + Duration::from_secs(30);
        let pending = loop {
            let n = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
            if n == 0 || Instant::now() > deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let end = rss_kib(pid);
        let failed = failed.lock().unwrap();
        println!(
            "soak: {jobs} jobs, 8 at a time, {:.0} s ({:.1} jobs/s); failed {}; host RSS {} MiB after 8 jobs, {} MiB at the end; spool {}",
            took,
            jobs as f64 / took,
            failed.len(),
            warm.lock().unwrap().unwrap_or(0) / 1024,
            end / 1024,
            if pending == 0 { "empty".to_string() } else { format!("{pending} events left") }
        );
        if !failed.is_empty() || pending != 0 {
            bail!("the soak failed: {}", failed.iter().take(3).cloned().collect::<Vec<_>>().join("; "));
        }
        Ok(())
    })();
    stop_dev_up(up);
    result
}
