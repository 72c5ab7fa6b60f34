//! The serving gateway against direct uWSGI (wrk).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::root;
use crate::tools::{anvil, debian_packages, path_with, run};

/// The serving gateway against direct uWSGI: the digits app on one replica, POST /predict,
/// wrk with 2 threads × 16 connections for 10 s each, side by side.
pub(crate) fn bench_gateway(py: &Path) -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        debian_packages(&["wrk"])?;
    }
    super::build_release()?;
    let dir = tempfile_dir("aic-bench-gw")?;
    let home = dir.join("home");
    let data = dir.join("data");
    let proj = dir.join("proj");
    std::fs::create_dir_all(&proj)?;
    let python = py.join("python3");
    run(Command::new(&python).arg(root().join("examples/digits/make_dataset.py")).arg(&data))?;
    run(Command::new(&python)
        .arg(root().join("examples/digits/train.py"))
        .args(["--epochs", "10"])
        .env("AIC_DATA_DIR", &data)
        .env("AIC_OUTPUT_DIR", &proj))?;
    for f in ["app.py", "requirements.txt"] {
        std::fs::copy(root().join("examples/digits/serve").join(f), proj.join(f))?;
    }
    let aic = super::bin("aic");
    let env = |c: &mut Command| {
        c.env("AIC_HOME", &home)
            .env("PATH", path_with(py))
            .env("AIC_ANVIL", anvil())
            .env_remove("AIC_STORE")
            .env_remove("AIC_GATEWAY");
    };
    let up = super::dev_up(&aic, &home, &env)?;
    let result = (|| -> anyhow::Result<()> {
        let mut dep = Command::new(&aic);
        dep.args(["deploy"]).arg(&proj).args(["--replicas", "1", "--name", "bench"]);
        env(&mut dep);
        let out = dep.output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let api = stdout
            .lines()
            .find_map(|l| l.strip_prefix("API address : "))
            .ok_or_else(|| anyhow::anyhow!("deploy failed: {}", String::from_utf8_lossy(&out.stderr)))?
            .to_string();
        // `deployment  : <id> (this version alone: …)`: the API address is the name's.
        let job = stdout
            .lines()
            .find_map(|l| l.strip_prefix("deployment  : "))
            .and_then(|l| l.split_whitespace().next())
            .ok_or_else(|| anyhow::anyhow!("deploy printed no deployment id: {stdout}"))?
            .to_string();
        let reg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(home.join(format!("store/pool/serving/{job}/0.json")))?)?;
        let direct = format!("http://{}:{}/", reg["host"].as_str().unwrap_or(""), reg["port"]);
        let row: Vec<f64> = std::fs::read_to_string(data.join("digits.csv"))?
            .lines()
            .next()
            .unwrap_or_default()
            .split(',')
            .filter_map(|v| v.parse().ok())
            .collect();
        let body = serde_json::json!({ "pixels": &row[..64] }).to_string();
        let lua = dir.join("post.lua");
        std::fs::write(
            &lua,
            format!(
                "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = '{body}'\n"
            ),
        )?;
        eprintln!(
            "gateway vs direct uWSGI (1 replica: its HTTP router, 2 processes × 2 threads), POST /predict, wrk -t2 -c16 -d10s, \
             {ROUNDS} rounds taking turns (medians):"
        );
        // (req/s, p99 ms, gateway CPU µs per request, errors) of each run, by target.
        let targets = [("direct uWSGI", direct), ("through the gateway", api)];
        let mut runs: Vec<Vec<(f64, f64, f64, String)>> = vec![Vec::new(); targets.len()];
        for _ in 0..ROUNDS {
            for (i, (_, url)) in targets.iter().enumerate() {
                // CPU the gateway's process (`aic dev up`, which hosts it) spends meanwhile.
                let cpu0 = cpu_seconds(up.id())?;
                let out = Command::new("wrk")
                    .args(["-t2", "-c16", "-d10s", "--latency", "-s"])
                    .arg(&lua)
                    .arg(format!("{url}predict"))
                    .output()?;
                let cpu = cpu_seconds(up.id())? - cpu0;
                runs[i].push(wrk_figures(&String::from_utf8_lossy(&out.stdout), cpu));
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut rps = Vec::new();
        for ((name, _), r) in targets.iter().zip(&runs) {
            let (req, p99, cpu) = (
                median(r.iter().map(|x| x.0).collect()),
                median(r.iter().map(|x| x.1).collect()),
                median(r.iter().map(|x| x.2).collect()),
            );
            let each: Vec<String> = r.iter().map(|x| format!("{:.0}", x.0)).collect();
            let errors: Vec<&str> = r.iter().map(|x| x.3.as_str()).filter(|e| !e.is_empty()).collect();
            println!(
                "{name:<22} {req:>7.0} req/s (runs: {})  p99 {p99:.2} ms  gateway CPU per request {cpu:.1} µs  {}",
                each.join(", "),
                errors.join("; ")
            );
            rps.push((req, p99));
        }
        println!("gateway / direct: {:.2}× the throughput, p99 {:+.2} ms", rps[1].0 / rps[0].0, rps[1].1 - rps[0].1);
        Ok(())
    })();
    super::stop_dev_up(up);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Rounds of the gateway benchmark (each: direct, then through the gateway).
const ROUNDS: usize = 3;

/// From wrk's report: requests per second, p99 latency (ms), the gateway's CPU per request
/// (µs, from `cpu` seconds over the run), and any errors it counted.
fn wrk_figures(text: &str, cpu: f64) -> (f64, f64, f64, String) {
    let field = |prefix: &str| {
        text.lines().find_map(|l| l.trim_start().strip_prefix(prefix).map(|r| r.trim().to_string())).unwrap_or_default()
    };
    let rps: f64 = field("Requests/sec:").parse().unwrap_or(0.0);
    let p99 = field("99%");
    let p99_ms = match (p99.strip_suffix("ms"), p99.strip_suffix("us"), p99.strip_suffix('s')) {
        (Some(ms), _, _) => ms.parse().unwrap_or(f64::NAN),
        (_, Some(us), _) => us.parse::<f64>().map_or(f64::NAN, |u| u / 1000.0),
        (_, _, Some(s)) => s.parse::<f64>().map_or(f64::NAN, |s| s * 1000.0),
        _ => f64::NAN,
    };
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let cpu_us = if requests > 0.0 { cpu / requests * 1e6 } else { f64::NAN };
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    (rps, p99_ms, cpu_us, errors)
}

/// User + system CPU seconds process `pid` has used (`/proc/<pid>/stat`, clock ticks of
/// 1/100 s, as on Linux everywhere).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime), counted from the state (field 3) here.
    Ok((ticks(11) + ticks(12)) / 100.0)
}

pub(crate) fn tempfile_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
