//! Helpers shared by the CLI's integration tests: a throwaway `AIC_HOME`, the real `aic`
//! binary, and `aic dev up` in the background.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn aic_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_aic"));
    assert!(
        bin.with_file_name("aic-worker").exists(),
        "aic-worker is not built next to aic: run `cargo build --workspace --bins` (cargo xtask test does)"
    );
    bin
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs an `aic` command made with `args`, printing it and what it said (shown on failure).
pub fn shown(args: &[&str], mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "$ aic {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(aic_bin());
        c.args(args)
            .current_dir(self.path())
            .env("AIC_HOME", self.path().join("aic"))
            .env_remove("AIC_STORE")
            .env_remove("AIC_ADDRESS")
            .env_remove("AIC_GATEWAY")
            .env("AIC_POOL_MINERS", "2")
            .env("AIC_POOL_GPUS", "1")
            .stdin(Stdio::null());
        c
    }

    pub fn aic(&self, args: &[&str]) -> Output {
        shown(args, self.cmd(args))
    }

    pub fn write(&self, rel: &str, body: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        p
    }

    /// The newest job's id.
    pub fn last_job(&self) -> String {
        let out = self.aic(&["jobs", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["job"].as_str().expect("a job").to_string()
    }

    pub fn history(&self, job: &str) -> Vec<serde_json::Value> {
        let out = self.aic(&["status", job, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["history"].as_array().unwrap().clone()
    }

    pub fn state(&self, job: &str) -> String {
        self.history(job).last().map(|r| r["state"].as_str().unwrap().to_string()).unwrap_or_default()
    }

    /// Every object key in the embedded store.
    pub fn store_keys(&self) -> Vec<String> {
        let root = self.path().join("aic/store");
        walk(&root).into_iter().map(|p| p.strip_prefix(&root).unwrap().to_string_lossy().into_owned()).collect()
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
    }
    out
}

pub fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// `aic dev up` in the background, stopped (Ctrl-C) when dropped.
pub struct DevUp(pub std::process::Child);

impl DevUp {
    pub fn start(h: &Home) -> DevUp {
        DevUp::start_with(h, &[])
    }

    /// With extra environment for the pool (and so its workers).
    pub fn start_with(h: &Home, env: &[(&str, &str)]) -> DevUp {
        let mut cmd = h.cmd(&["dev", "up"]);
        cmd.envs(env.iter().copied());
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        // The chain first, then the serving gateway: both written once it hosts the pool.
        while !h.path().join("aic/chain.json").exists() || !h.path().join("aic/serve.addr").exists() {
            assert!(Instant::now() < deadline, "dev up did not start its chain and gateway");
            std::thread::sleep(Duration::from_millis(100));
        }
        DevUp(child)
    }

    /// Ctrl-C; true if it stopped within 15 s.
    pub fn stop(mut self) -> bool {
        self.interrupt()
    }

    pub fn interrupt(&mut self) -> bool {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.0.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }
}

impl Drop for DevUp {
    fn drop(&mut self) {
        if !self.interrupt() {
            let _ = self.0.kill();
        }
    }
}
