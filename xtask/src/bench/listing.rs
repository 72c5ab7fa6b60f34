//! `aic jobs` with many jobs in the bucket: the newest 50 (what it shows by default) beside
//! every job (`--all`: what each listing read before it showed only the newest), on the local
//! store and through a pool's gateway (`aic-functions` on a LocalStack bucket). The newest 50:
//! best of 3; every job: once.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::bail;

use super::gateway::tempfile_dir;
use crate::localstack::LocalStack;
use crate::root;
use crate::tools::{run, tools};

/// Anvil's dev account 5: the owner of the jobs.
const OWNER: &str = "0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc";
const KEY: &str = "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba";

/// A ULID (lower case) for time `ms` and sequence `n`.
fn ulid(ms: u64, n: u64) -> String {
    const A: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut s = String::new();
    for i in (0..10).rev() {
        s.push(A[((ms >> (5 * i)) & 31) as usize] as char);
    }
    let r = n as u128;
    for i in (0..16).rev() {
        s.push(A[((r >> (5 * i)) & 31) as usize] as char);
    }
    s
}

/// Writes `n` finished jobs of `OWNER` under `store` (a local store's folder).
fn seed(store: &Path, n: u64) -> anyhow::Result<()> {
    let start = 1_780_000_000_000u64;
    for i in 0..n {
        let id = ulid(start + i * 1000, i);
        let dir = store.join(format!("users/{OWNER}/jobs/{id}"));
        std::fs::create_dir_all(&dir)?;
        let at = "2026-06-01T00:00:00Z";
        let req = serde_json::json!({
            "version": 1, "kind": "train", "owner": OWNER, "job_id": id, "entrypoint": format!("train{i}.py"),
            "miners": 1, "gpus_per_miner": 1, "max_hours": 0.5, "launcher": "command", "args": [], "env": {},
            "created_at": at, "expires_at": "2026-06-01T01:00:00Z",
        });
        std::fs::write(dir.join("request.json"), req.to_string())?;
        std::fs::write(
            dir.join("status.json"),
            serde_json::json!({"seq": 3, "state": "succeeded", "at": at, "by": "worker"}).to_string(),
        )?;
    }
    Ok(())
}

/// Best of `runs` wall times of `aic jobs ARGS` (seconds), and how many jobs it listed.
fn time_jobs(aic: &Path, env: &[(&str, String)], args: &[&str], runs: usize) -> anyhow::Result<(f64, usize)> {
    let mut best = f64::MAX;
    let mut count = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let out =
            Command::new(aic).args(["jobs", "--json"]).args(args).envs(env.iter().map(|(k, v)| (k, v))).output()?;
        best = best.min(t.elapsed().as_secs_f64());
        if !out.status.success() {
            bail!("aic jobs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        count = serde_json::from_slice::<serde_json::Value>(&out.stdout)?.as_array().map_or(0, Vec::len);
    }
    Ok((best, count))
}

pub(crate) fn bench_listing() -> anyhow::Result<()> {
    let n: u64 = std::env::var("AIC_BENCH_LISTED").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let profile = "release";
    let aic = super::bin("aic");
    let dir = tempfile_dir("aic-bench-jobs")?;
    let _ = std::fs::remove_dir_all(&dir);
    let local = dir.join("local");
    seed(&local.join("store"), n)?;
    let base = |home: &Path| -> Vec<(&str, String)> {
        vec![("AIC_HOME", home.display().to_string()), ("AIC_PRIVATE_KEY", KEY.to_string())]
    };
    let mut env = base(&local);
    run(Command::new(&aic)
        .args(["login", "--env-key"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("AIC_GATEWAY"))?;
    env.push(("AIC_STORE", String::new()));
    let (newest, shown) = time_jobs(&aic, &env, &[], 3)?;
    let (all, every) = time_jobs(&aic, &env, &["--all"], 1)?;
    println!(
        "aic jobs, {n} jobs, local store ({profile}):        newest {shown}: {:>6.2} s   every job ({every}): {:>6.2} s",
        newest, all
    );

    // The same jobs in a LocalStack bucket, listed through a pool's gateway.
    run(Command::new("bash").arg(root().join("localstack/install.sh")).env("AIC_TOOLS", tools()))?;
    let ls = LocalStack::start()?;
    let bucket = "aic-bench-jobs";
    ls.create_bucket(bucket)?;
    let python = tools().join("localstack-venv/bin/python");
    let upload = format!(
        "import boto3, os, concurrent.futures as f\n\
         s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n\
         root = '{}'\n\
         files = [os.path.join(d, x) for d, _, xs in os.walk(root) for x in xs]\n\
         def put(p): s3.upload_file(p, '{bucket}', os.path.relpath(p, root))\n\
         with f.ThreadPoolExecutor(32) as ex: list(ex.map(put, files))\n",
        ls.endpoint,
        local.join("store").display()
    );
    run(Command::new(&python).args(["-c", &upload]))?;
    let (mut host, url) = super::gateway_host(&ls.endpoint, bucket, &dir.join("work"))?;
    let result = (|| -> anyhow::Result<()> {
        let remote = dir.join("remote");
        let mut env = base(&remote);
        env.push(("AIC_GATEWAY", url));
        run(Command::new(&aic).args(["login", "--env-key"]).envs(env.iter().map(|(k, v)| (k, v))))?;
        let (newest, shown) = time_jobs(&aic, &env, &[], 3)?;
        let (all, every) = time_jobs(&aic, &env, &["--all"], 1)?;
        println!(
            "aic jobs, {n} jobs, gateway on LocalStack ({profile}): newest {shown}: {:>6.2} s   every job ({every}): {:>6.2} s",
            newest, all
        );
        Ok(())
    })();
    let _ = host.kill();
    let _ = host.wait();
    drop(ls);
    result
}
