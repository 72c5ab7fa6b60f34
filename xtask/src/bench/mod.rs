//! `cargo xtask bench`: figures, not pass/fail, each beside its comparison in the same run,
//! from release builds.

mod data;
mod gateway;
mod listing;
mod logs;
mod staging;
mod worker;

use std::process::Command;

use crate::localstack::LocalStack;
use crate::root;
use crate::tools::{anvil, run, setup, tools};

/// The binaries the benchmarks run: release builds, as users get them.
pub(crate) fn build_release() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["build", "--quiet", "--release", "--workspace", "--bins"]).current_dir(root()))
}

/// A release binary of the workspace.
pub(crate) fn bin(name: &str) -> std::path::PathBuf {
    root().join("target/release").join(name)
}

/// `aic dev up` with the environment `env` gives it, once it serves (its `serve.addr` in
/// `home`); stopped by [`stop_dev_up`].
pub(crate) fn dev_up(
    aic: &std::path::Path,
    home: &std::path::Path,
    env: &dyn Fn(&mut Command),
) -> anyhow::Result<std::process::Child> {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut up = Command::new(aic);
    up.args(["dev", "up"]).stdout(Stdio::null()).stderr(Stdio::null());
    env(&mut up);
    let mut up = up.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !home.join("serve.addr").exists() {
        if Instant::now() > deadline {
            let _ = up.kill();
            anyhow::bail!("aic dev up did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(up)
}

/// A functions host with the gateway (a free pool) on a LocalStack bucket: the process and
/// its URL, for `aic` in pool mode.
pub(crate) fn gateway_host(
    endpoint: &str,
    bucket: &str,
    work: &std::path::Path,
) -> anyhow::Result<(std::process::Child, String)> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut host = Command::new(bin("aic-functions"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("AIC_STORE", format!("s3://{bucket}"))
        .env("AIC_S3_ENDPOINT", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AIC_FREE_POOL", "1")
        .env("AIC_CHAIN_ID", "31337")
        .env("AIC_WORK_DIR", work)
        .env("AIC_GATEWAY_SECRET", "00112233445566778899aabbccddeeff")
        .env("AIC_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(host.stdout.take().expect("piped")).read_line(&mut line)?;
    let url = line.trim().strip_prefix("listening on ").unwrap_or_default().to_string();
    if url.is_empty() {
        let _ = host.kill();
        anyhow::bail!("aic-functions did not start");
    }
    Ok((host, url))
}

/// Ctrl-C to `aic dev up` (it stops its allocations), then a kill after 30 s.
pub(crate) fn stop_dev_up(mut up: std::process::Child) {
    use std::time::{Duration, Instant};
    let _ = Command::new("kill").args(["-INT", &up.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while up.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = up.kill();
}

/// Benchmarks (figures, not pass/fail): validate throughput against anvil, settlement (gas,
/// rate, latency) against anvil, training under
/// aic-worker against the bare launcher, and event latency (request uploaded → worker
/// started) on the embedded pool and on LocalStack via SNS and via the poller, `aic jobs`
/// with 10,000 jobs (`jobs`), log latency (`logs`: a printed line to `aic run`'s terminal), and
/// the data plane against s5cmd and aws-cli (`data`), and a 1 GiB dataset's first and second
/// job start (`staging`: downloaded, then from the miner's cache).
pub(crate) fn bench(only: Option<&str>) -> anyhow::Result<()> {
    let py = setup(false)?;
    let want = |name: &str| only.is_none_or(|o| o == name);
    if want("validate") {
        run(Command::new("cargo")
            .args(["bench", "--quiet", "-p", "aic-functions", "--bench", "validate"])
            .current_dir(root())
            .env("AIC_ANVIL", anvil()))?;
    }
    if want("settle") {
        run(Command::new("cargo")
            .args(["bench", "--quiet", "-p", "aic-functions", "--bench", "settle"])
            .current_dir(root())
            .env("AIC_ANVIL", anvil()))?;
    }
    if want("worker") {
        worker::bench_worker_overhead(&py)?;
    }
    if want("gateway") {
        gateway::bench_gateway(&py)?;
    }
    if want("data") {
        data::bench_data()?;
    }
    if want("logs") {
        logs::bench_logs(&py)?;
    }
    if want("staging") {
        staging::bench_staging(&py)?;
    }
    if want("jobs") {
        build_release()?;
        listing::bench_listing()?;
    }
    if !want("latency") {
        return Ok(());
    }
    // Event latency needs LocalStack and the binaries.
    run(Command::new("bash").arg(root().join("localstack/install.sh")).env("AIC_TOOLS", tools()))?;
    build_release()?;
    let ls = LocalStack::start()?;
    let r = run(Command::new("cargo")
        .args(["bench", "--quiet", "-p", "aic-functions", "--bench", "latency"])
        .current_dir(root())
        .env("AIC_TEST_S3_ENDPOINT", &ls.endpoint)
        .env("AIC_LOCALSTACK_PYTHON", tools().join("localstack-venv/bin/python"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1"));
    drop(ls);
    r
}
