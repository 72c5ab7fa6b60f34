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
/// A command that has not ended after [`COMMAND_LIMIT`] is killed (with its process group:
/// what it started, such as a dev chain holding its output open) and the test fails with
/// what it had said, instead of the run waiting for CI's limit.
pub fn shown(args: &[&str], mut cmd: Command) -> Output {
    use std::os::unix::process::CommandExt;
    let child = cmd.process_group(0).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (ended, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let late = wait.recv_timeout(COMMAND_LIMIT) == Err(std::sync::mpsc::RecvTimeoutError::Timeout);
        if late {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        }
        late
    });
    let out = child.wait_with_output().unwrap();
    let _ = ended.send(());
    let late = watchdog.join().unwrap();
    let said = format!(
        "$ aic {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{said}");
    assert!(!late, "`aic {}` had not ended after {} s: killed\n{said}", args.join(" "), COMMAND_LIMIT.as_secs());
    out
}

/// How long one `aic` command of a test may take.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(600);

pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        // `AIC_TEST_KEEP=1` keeps each test's home (its `dev-up.log`) to look into a failure.
        let keep = std::env::var("AIC_TEST_KEEP").is_ok_and(|v| v == "1");
        let home = Home { dir: tempfile::Builder::new().disable_cleanup(keep).tempdir().unwrap() };
        std::fs::create_dir_all(home.shared()).unwrap();
        home
    }

    /// A folder every job of this home's pool sees, read-only (`AIC_JOB_SHARED`): where a test
    /// leaves the files its jobs wait for (a job sees nothing else of this machine's `/tmp`).
    pub fn shared(&self) -> PathBuf {
        self.path().join("shared")
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
            .env("AIC_JOB_SHARED", self.shared())
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

/// A dev chain the test's pool started outlives a host killed outright (on purpose, in the
/// recovery tests) and the host after it, which finds it running and uses it without owning
/// it: it goes with the home.
impl Drop for Home {
    fn drop(&mut self) {
        let state = self.path().join("aic/anvil-state.json");
        let state = state.to_string_lossy();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let mut args = cmd.split(|b| *b == 0).map(String::from_utf8_lossy);
            if args.next().is_some_and(|a| a.ends_with("anvil")) && args.any(|a| a == state) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// `aic dev up` in the background, stopped (Ctrl-C) when dropped.
pub struct DevUp(pub std::process::Child);

impl DevUp {
    pub fn start(h: &Home) -> DevUp {
        DevUp::start_with(h, &[])
    }

    /// With extra environment for the pool (and so its workers).
    pub fn start_with(h: &Home, env: &[(&str, &str)]) -> DevUp {
        DevUp::start_args(h, &[], env)
    }

    /// `aic dev up ARGS…` with extra environment.
    pub fn start_args(h: &Home, args: &[&str], env: &[(&str, &str)]) -> DevUp {
        let mut cmd = h.cmd(&[&["dev", "up"], args].concat());
        cmd.envs(env.iter().copied());
        // Its log is kept beside the home (`dev-up.log`) for a failing test to be read.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(h.path().join("dev-up.log")).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
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

/// File names a dataset or a project may hold: Korean, spaces, `%` (and a literal escape
/// sequence that must not be decoded), `+`, `#`, `?`, `&`, accents, emoji, a folder.
pub const ODD_NAMES: &[&str] = &[
    "학습데이터.csv",
    "rate 50%.txt",
    "a+b #1?.txt",
    "ünï.txt",
    "emoji 🚀.txt",
    "%ED%95%99 literal.txt",
    "sub dir/東京 & co.txt",
];

/// A folder of [`ODD_NAMES`], each holding its own name and index.
pub fn odd_names_folder(root: &Path) -> PathBuf {
    let dir = root.join("odd names");
    for (i, name) in ODD_NAMES.iter().enumerate() {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("{i}: {name}\n")).unwrap();
    }
    dir
}

/// A job's program: prints each file under `$AIC_DATA_DIR` as `FILE <json name> <json text>`.
pub const LIST_DATA_PY: &str = r#"import json, os
root = os.environ["AIC_DATA_DIR"]
for d, _, files in sorted(os.walk(root)):
    for f in sorted(files):
        p = os.path.join(d, f)
        rel = os.path.relpath(p, root)
        print("FILE", json.dumps(rel), json.dumps(open(p, encoding="utf-8").read()))
"#;

/// The story of a dataset with odd names, through `aic` as `aic` runs it (embedded or
/// through a gateway): it uploads, lists under its real names, downloads byte for byte,
/// and a job sees every file under its name; a project with such names runs too.
pub fn odd_names_story(aic: &dyn Fn(&[&str]) -> Output, root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    let dir = odd_names_folder(root);
    let out = aic(&["data", "put", dir.to_str().unwrap(), "kr"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).1.contains(&format!("uploaded {} files", ODD_NAMES.len())), "{}", text(&out).1);

    let ls: serde_json::Value = serde_json::from_slice(&aic(&["data", "ls", "kr", "--json"]).stdout).unwrap();
    let mut listed: Vec<&str> = ls.as_array().unwrap().iter().map(|r| r["path"].as_str().unwrap()).collect();
    listed.sort();
    let mut want: Vec<&str> = ODD_NAMES.to_vec();
    want.sort();
    assert_eq!(listed, want);

    let got = root.join("got");
    let out = aic(&["data", "get", "kr", got.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    for name in ODD_NAMES {
        assert_eq!(std::fs::read(got.join(name)).unwrap(), std::fs::read(dir.join(name)).unwrap(), "{name}");
    }
    assert_eq!(walk(&got).len(), ODD_NAMES.len(), "nothing else (no .aic-partial files): {:?}", walk(&got));

    // A job downloads the dataset and sees every file under its own name.
    let script = root.join("리스트 #1.py");
    std::fs::write(&script, LIST_DATA_PY).unwrap();
    let out = aic(&["run", script.to_str().unwrap(), "--data", "kr"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let mut seen: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| l.split_once("FILE ").map(|(_, rest)| rest.to_string()))
        .map(|rest| {
            let mut it = serde_json::Deserializer::from_str(&rest).into_iter::<String>();
            (it.next().unwrap().unwrap(), it.next().unwrap().unwrap())
        })
        .collect();
    seen.sort();
    let mut expected: Vec<(String, String)> =
        ODD_NAMES.iter().enumerate().map(|(i, n)| (n.to_string(), format!("{i}: {n}\n"))).collect();
    expected.sort();
    assert_eq!(seen, expected, "{stdout}");

    // A project whose files have such names: its entrypoint reads one beside it.
    let project = root.join("프로젝트 %1");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("데이터 #2?.txt"), "beside the entrypoint\n").unwrap();
    std::fs::write(project.join("main.py"), "print('READ', open('데이터 #2?.txt', encoding='utf-8').read().strip())\n")
        .unwrap();
    let out = aic(&["run", project.to_str().unwrap(), "--entrypoint", "main.py"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("READ beside the entrypoint"), "{stdout}");
}

/// The digits dataset made by `examples/digits/make_dataset.py` under `dir`: its CSV and the
/// first row (64 pixels, then the label).
#[allow(dead_code)]
pub fn digits_dataset(dir: &Path) -> (PathBuf, Vec<f64>) {
    let made = Command::new("python3").arg(repo().join("examples/digits/make_dataset.py")).arg(dir).output().unwrap();
    assert!(made.status.success(), "python3 with scikit-learn is needed: {}", String::from_utf8_lossy(&made.stderr));
    let csv = dir.join("digits.csv");
    let first =
        std::fs::read_to_string(&csv).unwrap().lines().next().unwrap().split(',').map(|v| v.parse().unwrap()).collect();
    (csv, first)
}

/// Runs the web app's browser story (`browser/webapp.cjs`) with `cfg`; what happened.
#[allow(dead_code)]
pub fn run_webapp(cfg: &serde_json::Value) -> serde_json::Value {
    run_browser("webapp.cjs", cfg)
}

/// Runs `cli/tests/browser/<script>` with `cfg`; what it printed last, as JSON.
pub fn run_browser(script: &str, cfg: &serde_json::Value) -> serde_json::Value {
    let node_path = format!(
        "{}:{}",
        repo().join("contracts/node_modules").display(),
        repo().join("functions/web/node_modules").display()
    );
    let run = Command::new("node")
        .arg(repo().join("cli/tests/browser").join(script))
        .arg(cfg.to_string())
        .env("NODE_PATH", node_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    serde_json::from_str(said.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
        panic!("the browser run gave no result ({e}): {said}{}", String::from_utf8_lossy(&run.stderr))
    })
}

/// Processes of a job (found through their environment), with their command names.
pub fn processes_of(job: &str) -> Vec<(i32, String)> {
    let want = format!("AIC_JOB_ID={job}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

/// SIGKILL to the process group `pid` is in: a worker's is its allocation's (the keeper that
/// started it, when jobs are sandboxed), a uWSGI's its own.
#[allow(dead_code)]
pub fn kill_group_of(pid: i32) {
    if let Ok(group) = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))) {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

/// The aic-worker processes of a job.
pub fn workers_of(job: &str) -> Vec<i32> {
    processes_of(job).into_iter().filter(|(_, c)| c == "aic-worker").map(|(p, _)| p).collect()
}

/// `aic run --detach` of the digits example's MPI training (`train_mpi.py`, the dataset
/// `digits` already put) on 2 miners, `epochs` epochs with `sleep` s between them: its id.
#[allow(dead_code)]
pub fn mpi_digits_detached(h: &Home, epochs: u32, sleep: &str) -> String {
    let code = repo().join("examples/digits");
    let epochs = epochs.to_string();
    let args = ["run", "--detach", code.to_str().unwrap(), "--entrypoint", "train_mpi.py", "--launcher", "mpi"];
    let rest = ["--miners", "2", "--data", "digits", "--", "--epochs", &epochs, "--sleep", sleep];
    let out = h.aic(&[&args[..], &rest[..]].concat());
    assert!(out.status.success(), "{:?}", text(&out));
    text(&out).0.trim().to_string()
}

/// A deployment's own origin on the embedded pool `h` hosts: `http://<id>.localhost:<port>/`
/// (curl and browsers take every `*.localhost` name for loopback).
pub fn deployment_origin(h: &Home, dep: &str) -> String {
    let addr = std::fs::read_to_string(h.path().join("aic/serve.addr")).unwrap();
    let port = addr.trim().rsplit(':').next().unwrap();
    format!("http://{dep}.localhost:{port}/")
}
