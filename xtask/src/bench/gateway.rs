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
            // An autoscaled deployment stops 3 s after its last request (not 5 minutes).
            .env("AIC_SCALE_IDLE_SECONDS", "3")
            .env("AIC_SCALE_DOWN_SECONDS", "1")
            .env_remove("AIC_STORE")
            .env_remove("AIC_GATEWAY");
    };
    let up = super::dev_up(&aic, &home, &env)?;
    // Deploys `proj` as `name` with one replica: its address through the gateway (`Host`
    // header apart, for clients that do not resolve `*.localhost`), and its replica's own.
    let deploy = |proj: &Path, name: &str, how: &[&str]| -> anyhow::Result<(String, Option<String>, String, String)> {
        let mut dep = Command::new(&aic);
        dep.args(["deploy"]).arg(proj).args(["--name", name]).args(how);
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
        // The API's origin is `<label>.localhost:<port>`, which wrk's resolver does not take
        // for loopback as browsers and curl do: wrk goes to 127.0.0.1 and names the origin.
        let (api, origin) = match api.split_once("://").and_then(|(_, r)| r.split_once(".localhost:")) {
            Some((label, rest)) => {
                let port = rest.trim_end_matches('/');
                (format!("http://127.0.0.1:{port}/"), Some(format!("Host: {label}.localhost:{port}")))
            }
            None => (api, None),
        };
        Ok((api, origin, direct, job))
    };
    let result = (|| -> anyhow::Result<()> {
        let (api, origin, direct, _) = deploy(&proj, "bench", &["--replicas", "1"])?;
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
        let targets = [("direct uWSGI", direct, None), ("through the gateway", api, origin)];
        // `ROUNDS` rounds of wrk with `load` on each target in turn: each run's figures, by target.
        let rounds = |load: [&str; 3]| -> anyhow::Result<Vec<Vec<Figures>>> {
            let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
            for _ in 0..ROUNDS {
                for (i, (_, url, host)) in targets.iter().enumerate() {
                    // CPU the gateway's process (`aic dev up`, which hosts it) spends meanwhile,
                    // and the whole machine's (wrk, uWSGI, the gateway, the kernel's networking).
                    let (cpu0, busy0) = (cpu_seconds(up.id())?, machine_busy_seconds()?);
                    let out = Command::new("wrk")
                        .args(load)
                        .args(host.iter().flat_map(|h| ["-H", h.as_str()]))
                        .args(["--latency", "-s"])
                        .arg(&lua)
                        .arg(format!("{url}predict"))
                        .output()?;
                    let (cpu, busy) = (cpu_seconds(up.id())? - cpu0, machine_busy_seconds()? - busy0);
                    runs[i].push(wrk_figures(&String::from_utf8_lossy(&out.stdout), cpu, busy));
                }
            }
            Ok(runs)
        };
        let runs = rounds(["-t2", "-c16", "-d10s"])?;
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut seen = Vec::new();
        for ((name, _, _), r) in targets.iter().zip(&runs) {
            let of = |f: fn(&Figures) -> f64| median(r.iter().map(f).collect());
            let (req, p99, cpu, machine) =
                (of(|x| x.rps), of(|x| x.p99_ms), of(|x| x.gateway_us), of(|x| x.machine_us));
            let each: Vec<String> = r.iter().map(|x| format!("{:.0}", x.rps)).collect();
            let errors: Vec<&str> = r.iter().map(|x| x.errors.as_str()).filter(|e| !e.is_empty()).collect();
            println!(
                "{name:<22} {req:>7.0} req/s (runs: {})  p99 {p99:.2} ms  gateway CPU per request {cpu:.1} µs  \
                 machine CPU per request {machine:.0} µs ({:.0}% of {} cores busy)  {}",
                each.join(", "),
                of(|x| x.busy_share) * 100.0,
                cores(),
                errors.join("; ")
            );
            seen.push((req, p99, machine));
        }
        let (direct, gateway) = (seen[0], seen[1]);
        println!(
            "gateway / direct: {:.2}× the throughput, p99 {:+.2} ms; with every core busy the throughput cannot pass \
             the ratio of the machine's CPU per request: {:.2}×",
            gateway.0 / direct.0,
            gateway.1 - direct.1,
            direct.2 / gateway.2
        );
        // One request at a time: what the gateway adds to each request's latency when the
        // machine is not saturated (under load, p99 is mostly the queue for the cores).
        let alone = rounds(["-t1", "-c1", "-d5s"])?;
        let lat: Vec<(f64, f64)> = alone
            .iter()
            .map(|r| (median(r.iter().map(|x| x.p50_ms).collect()), median(r.iter().map(|x| x.p99_ms).collect())))
            .collect();
        println!(
            "one request at a time (wrk -t1 -c1 -d5s, medians of {ROUNDS}): direct p50 {:.2} ms p99 {:.2} ms; \
             through the gateway p50 {:.2} ms p99 {:.2} ms: the gateway adds {:+.2} ms at p50, {:+.2} ms at p99",
            lat[0].0,
            lat[0].1,
            lat[1].0,
            lat[1].1,
            lat[1].0 - lat[0].0,
            lat[1].1 - lat[0].1
        );

        // A token stream: 11 server-sent events 1 s apart, 10 s in all (examples/stream), read
        // with curl.
        let stream = dir.join("stream");
        std::fs::create_dir_all(&stream)?;
        for f in ["app.py", "requirements.txt"] {
            std::fs::copy(root().join("examples/stream").join(f), stream.join(f))?;
        }
        let (api, origin, direct, _) = deploy(&stream, "bench-stream", &["--replicas", "1"])?;
        let targets = [("direct uWSGI", direct, None), ("through the gateway", api, origin)];
        let mut seen: Vec<Vec<(f64, f64)>> = vec![Vec::new(); targets.len()];
        for _ in 0..ROUNDS {
            for (i, (_, url, host)) in targets.iter().enumerate() {
                let out = Command::new("curl")
                    .args(["-sSfN", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_total}"])
                    .args(host.iter().flat_map(|h| ["-H", h.as_str()]))
                    .arg(format!("{url}tokens?n=11&every=1"))
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout);
                let mut t = text.split_whitespace().map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
                let (first, total) = (t.next().unwrap_or(f64::NAN), t.next().unwrap_or(f64::NAN));
                anyhow::ensure!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
                seen[i].push((first * 1000.0, total));
            }
        }
        let med: Vec<(f64, f64)> = seen
            .iter()
            .map(|r| (median(r.iter().map(|x| x.0).collect()), median(r.iter().map(|x| x.1).collect())))
            .collect();
        println!(
            "a 10 s token stream (GET /tokens, 11 events 1 s apart; curl -N, medians of {ROUNDS}): direct first byte \
             after {:.1} ms, whole in {:.2} s; through the gateway first byte after {:.1} ms ({:+.1} ms), whole in {:.2} s",
            med[0].0,
            med[0].1,
            med[1].0,
            med[1].0 - med[0].0,
            med[1].1
        );

        // A cold start: the same app autoscaled to zero; a request wakes it and waits for a
        // replica (its requirements already on the miner), against a request to it warm.
        // The pool's two miners hold the deployments above: the stream's makes room.
        let mut rm = Command::new(&aic);
        rm.args(["deploy", "rm", "bench-stream"]);
        env(&mut rm);
        anyhow::ensure!(rm.status()?.success(), "aic deploy rm bench-stream failed");
        let (api, origin, _, job) =
            deploy(&stream, "bench-cold", &["--min-replicas", "0", "--max-replicas", "1", "--workers", "1"])?;
        let regs = home.join(format!("store/pool/serving/{job}"));
        let time = |url: &str| -> anyhow::Result<f64> {
            let out = Command::new("curl")
                .args(["-sSf", "-o", "/dev/null", "--max-time", "180", "-w", "%{time_total}"])
                .args(origin.iter().flat_map(|h| ["-H", h.as_str()]))
                .arg(url)
                .output()?;
            anyhow::ensure!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
            Ok(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().unwrap_or(f64::NAN))
        };
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while std::fs::read_dir(&regs).map(|d| d.count()).unwrap_or(0) > 0 {
                anyhow::ensure!(std::time::Instant::now() < deadline, "the autoscaled deployment never stopped");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            cold.push(time(&api)?);
            warm.push(time(&api)? * 1000.0);
        }
        let each: Vec<String> = cold.iter().map(|c| format!("{c:.2}")).collect();
        println!(
            "a cold start (examples/stream autoscaled to zero, Flask under uWSGI, 1 process; medians of {ROUNDS}): \
             the request that woke it answered in {:.2} s (runs: {} s); the next, warm, in {:.1} ms",
            median(cold.clone()),
            each.join(", "),
            median(warm)
        );
        Ok(())
    })();
    super::stop_dev_up(up);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Rounds of the gateway benchmark (each: direct, then through the gateway).
const ROUNDS: usize = 3;

/// One wrk run's figures.
#[derive(Clone)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The gateway's process's CPU per request (µs).
    gateway_us: f64,
    /// The whole machine's busy CPU per request (µs).
    machine_us: f64,
    /// The share of the machine's cores busy over the run.
    busy_share: f64,
    /// What wrk counted as errors, if anything.
    errors: String,
}

/// From wrk's report: requests per second, p99 latency, the gateway's CPU per request (from
/// `cpu` seconds over the run), the machine's (from `busy` seconds), and any errors it
/// counted.
fn wrk_figures(text: &str, cpu: f64, busy: f64) -> Figures {
    let field = |prefix: &str| {
        text.lines().find_map(|l| l.trim_start().strip_prefix(prefix).map(|r| r.trim().to_string())).unwrap_or_default()
    };
    let rps: f64 = field("Requests/sec:").parse().unwrap_or(0.0);
    let ms = |v: String| match (v.strip_suffix("ms"), v.strip_suffix("us"), v.strip_suffix('s')) {
        (Some(ms), _, _) => ms.parse().unwrap_or(f64::NAN),
        (_, Some(us), _) => us.parse::<f64>().map_or(f64::NAN, |u| u / 1000.0),
        (_, _, Some(s)) => s.parse::<f64>().map_or(f64::NAN, |s| s * 1000.0),
        _ => f64::NAN,
    };
    let (p50_ms, p99_ms) = (ms(field("50%")), ms(field("99%")));
    // "N requests in 10.01s, …"
    let (requests, secs) = text
        .lines()
        .find(|l| l.contains("requests in"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let n = w.first().and_then(|n| n.parse().ok()).unwrap_or(0.0);
            let t =
                w.get(3).and_then(|t| t.trim_end_matches(',').trim_end_matches('s').parse().ok()).unwrap_or(f64::NAN);
            (n, t)
        })
        .unwrap_or((0.0, f64::NAN));
    let per = |seconds: f64| if requests > 0.0 { seconds / requests * 1e6 } else { f64::NAN };
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    Figures {
        rps,
        p50_ms,
        p99_ms,
        gateway_us: per(cpu),
        machine_us: per(busy),
        busy_share: busy / (secs * cores() as f64),
        errors,
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Seconds the machine's CPUs have been busy (`/proc/stat`: user, nice, system, irq and
/// softirq, in clock ticks of 1/100 s; not idle, iowait or the hypervisor's steal).
fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().unwrap_or_default();
    let t: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq (guest time is inside user already).
    let busy: f64 = t.iter().take(7).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    Ok(busy / 100.0)
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
