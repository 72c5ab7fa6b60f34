//! `aic jobs` with many jobs in the bucket: the newest 50 (what it shows by default) of an
//! owner with 10,000 jobs beside the newest 50 of an owner with 100 (the same time: it does
//! not grow with history) and beside every job (`--all`: what each listing read before it
//! showed only the newest), on the local store and through a pool's gateway (`aic-functions`
//! on a LocalStack bucket). The newest 50: best of 3; every job: once.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::bail;

use super::gateway::tempfile_dir;
use crate::localstack::LocalStack;
use crate::root;
use crate::tools::{run, tools};

/// Anvil's dev account 5: the owner of the many jobs.
const OWNER: &str = "0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc";
const KEY: &str = "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba";
/// Anvil's dev account 6: an owner of few (100).
const FEW_OWNER: &str = "0x976ea74026e726554db657fa54763abd0c3a0aa9";
const FEW_KEY: &str = "92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e";
const FEW: u64 = 100;

/// The digits of a (lower-case) ULID.
const A: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A ULID (lower case) for time `ms` and sequence `n`.
fn ulid(ms: u64, n: u64) -> String {
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

/// Writes `n` finished jobs of `owner` under `store` (a local store's folder), a second apart,
/// the newest a minute ago, or `AIC_BENCH_LISTED_AGE_DAYS` days before that, each with the
/// marker validate writes in its owner's index (`users/<addr>/index/<id, digits inverted>/job`).
fn seed(store: &Path, owner: &str, n: u64) -> anyhow::Result<()> {
    let age_days: u64 = std::env::var("AIC_BENCH_LISTED_AGE_DAYS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let start = now - age_days * 86_400_000 - 60_000 - n * 1000;
    for i in 0..n {
        let id = ulid(start + i * 1000, i);
        let dir = store.join(format!("users/{owner}/jobs/{id}"));
        std::fs::create_dir_all(&dir)?;
        let at = "2026-06-01T00:00:00Z";
        let req = serde_json::json!({
            "version": 1, "kind": "train", "owner": owner, "job_id": id, "entrypoint": format!("train{i}.py"),
            "miners": 1, "gpus_per_miner": 1, "max_hours": 0.5, "launcher": "command", "args": [], "env": {},
            "created_at": at, "expires_at": "2026-06-01T01:00:00Z",
        });
        std::fs::write(dir.join("request.json"), req.to_string())?;
        let inverted: String =
            id.bytes().map(|b| A[31 - A.iter().position(|&d| d == b).unwrap_or(0)] as char).collect();
        let marker = store.join(format!("users/{owner}/index/{inverted}"));
        std::fs::create_dir_all(&marker)?;
        std::fs::write(marker.join("job"), "")?;
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
    seed(&local.join("store"), OWNER, n)?;
    seed(&local.join("store"), FEW_OWNER, FEW)?;
    let base = |home: &Path, key: &str| -> Vec<(&str, String)> {
        vec![("AIC_HOME", home.display().to_string()), ("AIC_PRIVATE_KEY", key.to_string())]
    };
    let mut env = base(&local, KEY);
    let mut few_env = base(&dir.join("local-few"), FEW_KEY);
    std::fs::create_dir_all(dir.join("local-few"))?;
    std::os::unix::fs::symlink(local.join("store"), dir.join("local-few/store"))?;
    for env in [&env, &few_env] {
        run(Command::new(&aic)
            .args(["login", "--env-key"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("AIC_GATEWAY"))?;
    }
    env.push(("AIC_STORE", String::new()));
    few_env.push(("AIC_STORE", String::new()));
    let (few, few_shown) = time_jobs(&aic, &few_env, &[], 3)?;
    let (newest, shown) = time_jobs(&aic, &env, &[], 3)?;
    let (all, every) = time_jobs(&aic, &env, &["--all"], 1)?;
    println!(
        "aic jobs, local store ({profile}):          newest {shown} of {n}: {newest:>6.2} s   of {FEW}: {:>6.2} s ({few_shown})   every job ({every}): {all:>6.2} s",
        few
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
        let mut env = base(&dir.join("remote"), KEY);
        let mut few_env = base(&dir.join("remote-few"), FEW_KEY);
        env.push(("AIC_GATEWAY", url.clone()));
        few_env.push(("AIC_GATEWAY", url));
        for env in [&env, &few_env] {
            run(Command::new(&aic).args(["login", "--env-key"]).envs(env.iter().map(|(k, v)| (k, v))))?;
        }
        let (few, few_shown) = time_jobs(&aic, &few_env, &[], 3)?;
        let (newest, shown) = time_jobs(&aic, &env, &[], 3)?;
        let (all, every) = if std::env::var_os("AIC_BENCH_SKIP_ALL").is_some() {
            (f64::NAN, 0)
        } else {
            time_jobs(&aic, &env, &["--all"], 1)?
        };
        println!(
            "aic jobs, gateway on LocalStack ({profile}): newest {shown} of {n}: {newest:>6.2} s   of {FEW}: {:>6.2} s ({few_shown})   every job ({every}): {all:>6.2} s",
            few
        );
        Ok(())
    })();
    let _ = host.kill();
    let _ = host.wait();
    drop(ls);
    result
}
