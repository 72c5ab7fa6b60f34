//! A project's own environment (`requirements.txt`, `aic run --requirements F`) on the
//! embedded pool: prepared before the program, cached on the machine's miners by what it
//! holds, shared by jobs that ask for the same, read-only to them; a requirement that cannot
//! be installed fails the job before its program starts. The package the miners lack is a
//! wheel the test makes and ships in the project (`--no-index --find-links wheels`): real pip,
//! nothing fetched from outside.

use std::time::{Duration, Instant};

use crate::common::*;

/// Writes a pure-Python wheel `<name>-<version>-py3-none-any.whl` into `dir` whose package's
/// `__init__.py` is `body` (the example's own script).
fn wheel(dir: &std::path::Path, name: &str, version: &str, body: &str) {
    let made = std::process::Command::new("python3")
        .arg(repo().join("examples/own-env/make_wheel.py"))
        .args([dir.to_str().unwrap(), name, version, body])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
}

/// A project whose program imports `aicdemo` (which no miner has), reports where it came
/// from, and tries to change it.
fn project(h: &Home, name: &str) -> std::path::PathBuf {
    let dir = h.path().join(name);
    wheel(&dir.join("wheels"), "aicdemo", "1.0", "VALUE = 42\n");
    std::fs::write(dir.join("requirements.txt"), "--no-index\n--find-links wheels\naicdemo==1.0\n").unwrap();
    std::fs::write(
        dir.join("train.py"),
        "import os, aicdemo\n\
         print('aicdemo says', aicdemo.VALUE, flush=True)\n\
         try:\n    open(aicdemo.__file__, 'a').write('import os; os.system(\"evil\")\\n')\n    print('the environment is writable')\n\
         except OSError as e:\n    print('the environment is read-only:', type(e).__name__, flush=True)\n\
         import time\n\
         while os.environ.get('WAIT_FOR') and not os.path.exists(os.environ['WAIT_FOR']):\n    time.sleep(0.1)\n",
    )
    .unwrap();
    dir
}

fn sandboxed() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Run once, the environment is installed (a phase of its own in the log, before the
/// program); run again, it is taken from the cache: nothing installed, the same package
/// imported, and the first job's attempt to change it failed (where jobs run under uids of
/// their own).
#[test]
fn a_training_projects_requirements_are_installed_once_and_cached() {
    let h = Home::new();
    let proj = project(&h, "proj");
    let run = || {
        let out = h.aic(&["run", proj.to_str().unwrap(), "--entrypoint", "train.py"]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stdout
    };
    let first = run();
    assert!(first.contains("preparing environment: installing 1 package: aicdemo==1.0"), "{first}");
    assert!(first.contains("installed 1 package ("), "{first}");
    let (prepared, program) = (first.find("environment ready").unwrap(), first.find("aicdemo says 42").unwrap());
    assert!(prepared < program, "the program started before its environment was ready: {first}");
    if sandboxed() {
        assert!(first.contains("the environment is read-only: PermissionError"), "{first}");
    }
    let second = run();
    assert!(second.contains("1 package, cached on this miner"), "{second}");
    assert!(!second.contains("installing"), "the second run installed again: {second}");
    assert!(second.contains("aicdemo says 42"), "{second}");
}

/// Two jobs asking for the same environment at once: one installs it, the other waits for it
/// and takes it from the cache; both then run at once, using it side by side (neither waits
/// for the other to end).
#[test]
fn two_jobs_with_the_same_requirements_at_once_install_once() {
    let h = Home::new();
    let _pool = DevUp::start(&h);
    let flag = h.shared().join("both-ran");
    let jobs: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| {
            let proj = project(&h, n);
            let wait = format!("WAIT_FOR={}", flag.display());
            let out = h.aic(&["run", "--detach", proj.to_str().unwrap(), "--entrypoint", "train.py", "--env", &wait]);
            assert!(out.status.success(), "{}", text(&out).1);
            text(&out).0.trim().to_string()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for job in &jobs {
        while !text(&h.aic(&["logs", job])).0.contains("aicdemo says 42") {
            assert!(Instant::now() < deadline, "job {job} never ran its program: {:?}", h.history(job));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    std::fs::write(&flag, "").unwrap();
    let logs: Vec<String> = jobs
        .iter()
        .map(|job| {
            while h.state(job) != "succeeded" {
                assert!(!["failed", "cancelled"].contains(&h.state(job).as_str()), "{job}: {:?}", h.history(job));
                assert!(Instant::now() < deadline, "job {job} did not finish");
                std::thread::sleep(Duration::from_millis(200));
            }
            text(&h.aic(&["logs", job])).0
        })
        .collect();
    let installed = logs.iter().filter(|l| l.contains("installed 1 package (")).count();
    let cached = logs.iter().filter(|l| l.contains("1 package, cached on this miner")).count();
    assert_eq!((installed, cached), (1, 1), "{logs:#?}");
}

/// A requirement nobody can install fails the job before its program starts, with pip's
/// reason in the job's status.
#[test]
fn a_requirement_that_cannot_be_installed_fails_the_job_before_its_program() {
    let h = Home::new();
    let script = h.write("prog/train.py", "print('the program started')\n");
    let reqs = h.write("needs.txt", "--no-index\nnosuchpkg==1.0\n");
    let out = h.aic(&["run", script.to_str().unwrap(), "--requirements", reqs.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stdout.contains("the program started"), "{stdout}");
    let last = h.history(&h.last_job()).pop().unwrap();
    assert_eq!(last["state"], "failed");
    let reason = last["reason"].as_str().unwrap();
    assert!(reason.contains("requirements.txt cannot be installed"), "{reason}");
    assert!(reason.contains("No matching distribution found for nosuchpkg==1.0"), "{reason}");
}

/// `--requirements F` next to a folder with a different requirements.txt of its own is
/// refused before anything is paid.
#[test]
fn two_requirements_for_one_project_are_refused_before_paying() {
    let h = Home::new();
    h.write("p/train.py", "print(1)\n");
    h.write("p/requirements.txt", "numpy\n");
    let other = h.write("other.txt", "scipy\n");
    let out = h.aic(&["run", h.path().join("p").to_str().unwrap(), "--requirements", other.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("has a requirements.txt of its own that differs from --requirements"), "{stderr}");
    assert!(stderr.contains("nothing was paid"), "{stderr}");
}
