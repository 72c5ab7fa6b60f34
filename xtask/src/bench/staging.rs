//! Job start with a dataset: a 1 GiB dataset's first job (downloaded into the miner's cache)
//! beside its second (linked from the cache), on the embedded pool (`aic dev up`, release
//! builds). The figure is from `aic run -d` to the program's first line (the program prints
//! its clock; one machine, one clock), with the staging time the worker reports beside it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::bail;

use super::gateway::tempfile_dir;
use crate::tools::run;

const FILES: usize = 8;
const FILE_MIB: usize = 128;

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

pub(crate) fn bench_staging(py: &std::path::Path) -> anyhow::Result<()> {
    super::build_release()?;
    let aic = super::bin("aic");
    let dir = tempfile_dir("aic-bench-staging")?;
    let data = dir.join("big");
    std::fs::create_dir_all(&data)?;
    // Incompressible bytes, made fast (a xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for f in 0..FILES {
        let mut buf = vec![0u8; FILE_MIB << 20];
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(data.join(format!("part-{f}.bin")), buf)?;
    }
    let script = dir.join("start.py");
    std::fs::write(&script, "import time\nprint(f'T {time.time():.4f} started', flush=True)\n")?;
    let path = crate::tools::path_with(py);
    let home = dir.join("home");
    let env: Vec<(&str, String)> = vec![
        ("AIC_HOME", home.display().to_string()),
        ("PATH", path),
        ("AIC_ANVIL", crate::tools::anvil().display().to_string()),
    ];
    let aic_cmd = |args: &[&str]| {
        let mut c = Command::new(&aic);
        c.args(args).envs(env.iter().map(|(k, v)| (k, v))).env_remove("AIC_STORE").env_remove("AIC_GATEWAY");
        c
    };
    run(&mut aic_cmd(&["login", "--dev", "1"]))?;
    run(&mut aic_cmd(&["data", "put", &data.display().to_string(), "big"]))?;
    let up = super::dev_up(&aic, &home, &|c: &mut Command| {
        c.envs(env.iter().map(|(k, v)| (k, v))).env_remove("AIC_STORE").env_remove("AIC_GATEWAY");
    })?;
    let result = (|| -> anyhow::Result<Vec<(f64, String)>> {
        let mut rows = vec![];
        for _ in 0..2 {
            let t0 = now();
            let mut child = aic_cmd(&["run", &script.display().to_string(), "--data", "big"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let (mut started, mut staged) = (None, String::new());
            for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
                let line = line?;
                if let Some(t) = line.strip_prefix("T ").and_then(|r| r.split_whitespace().next()) {
                    started = t.parse::<f64>().ok();
                }
                if let Some(rest) = line.strip_prefix("[aic] dataset big") {
                    staged = rest.split_once(": ").map(|(_, how)| how.to_string()).unwrap_or_default();
                }
            }
            if !child.wait()?.success() {
                bail!("aic run failed");
            }
            let Some(started) = started else { bail!("the program printed no start") };
            rows.push((started - t0, staged));
        }
        Ok(rows)
    })();
    super::stop_dev_up(up);
    let rows = result?;
    println!(
        "\njob start with a {} MiB dataset ({FILES} files), `aic run` to the program's first line (release)",
        FILES * FILE_MIB
    );
    for (which, (secs, how)) in ["first job (downloads it)", "second job (the miner's cache)"].iter().zip(rows) {
        println!("  {which:<32} {secs:>7.2} s   the worker: {how}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
