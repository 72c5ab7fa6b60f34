//! Training wall time under aic-worker against the bare launcher.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::root;
use crate::tools::{anvil, path_with, run};

/// Training wall time as an aic job (the job's recorded execution time: the launcher's run
/// under the worker, with log shipping and checkpoint sync going on) against the bare launcher on the same script. The bare MPI run is the same topology as the job's:
/// two "hosts", the second reached over SSH (its own sshd on 127.0.1.2), with the transport
/// and settings the simulated miners use; a single-host mpirun is shown for reference.
pub(crate) fn bench_worker_overhead(py: &Path) -> anyhow::Result<()> {
    super::build_release()?;
    let dir = std::env::temp_dir().join(format!("aic-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let path = path_with(py);
    let examples = root().join("examples/digits");
    run(Command::new("python3").arg(examples.join("make_dataset.py")).arg(dir.join("data")).env("PATH", &path))?;
    let aic = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(super::bin("aic"))
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
    // What the local scheduler gives each simulated miner (see core's scheduler/local/spawn.rs).
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
pub(crate) fn bench_sshd(dir: &Path, path: &str) -> anyhow::Result<(Guard, PathBuf)> {
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
pub(crate) struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
