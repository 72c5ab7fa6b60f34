//! `cargo xtask test`: formatting, lints, the token artifact and the web app's bundle, then every test with
//! LocalStack up; `cargo xtask storm`: the event storms at full size.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use crate::localstack::LocalStack;
use crate::root;
use crate::tools::{anvil, path_with, run, setup, tools, torch_env};

pub(crate) fn test(extra: &[String]) -> anyhow::Result<()> {
    let mut phases = Phases::new();
    room_on_disk()?;
    if std::env::var_os("CI").is_some() {
        // CI builds once, from a clean clone: the incremental cache (22 GB after a few weeks
        // here) is only disk written and never read.
        // SAFETY: set before any thread of this process starts; cargo inherits it.
        unsafe { std::env::set_var("CARGO_INCREMENTAL", "0") };
    }
    let py = setup(true)?;
    phases.done("install: npm, Debian, Python venv, LocalStack");
    // The framework tests (torchrun, horovodrun across two miners) run every time.
    let torch = torch_env()?;
    // SAFETY: set before any thread of this process starts; the tests inherit them.
    unsafe {
        std::env::set_var("AIC_TEST_TORCH", &torch);
        std::env::set_var("AIC_TEST_HOROVOD", &torch);
    }
    phases.done("install: torch and Horovod");
    let root = root();
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]).current_dir(&root))
        .context("formatting: run `cargo fmt`")?;
    run(Command::new("node").args(["contracts/build.js", "--check"]).current_dir(&root))
        .context("the committed token artifact is stale")?;
    run(Command::new("node").args(["functions/web/build.mjs", "--check"]).current_dir(&root))
        .context("the committed web app bundle is stale")?;
    crate::circles::check(&root)?;
    phases.done("checks: fmt, token artifact, web bundle, import circles");
    // Clippy lints the workspace's crates as they are built for the tests (clippy-driver as
    // their compiler, as `cargo clippy` runs it, with `-D warnings`): the dependencies are
    // compiled once, not once more for a separate `cargo clippy` check. Every target `cargo
    // clippy --all-targets` checks is built: libraries and binaries here, the benchmarks
    // (in the test profile) next, the tests by `cargo test`.
    let lint = |cmd: &mut Command| -> anyhow::Result<()> {
        run(linted(cmd)?.current_dir(&root)).context("a build error or a clippy warning (see above)")
    };
    // The CLI's tests start the workers: build every binary first.
    lint(Command::new("cargo").args(["build", "--quiet", "--workspace", "--bins"]))?;
    phases.done("build: binaries");
    lint(Command::new("cargo").args(["test", "--quiet", "--workspace", "--benches", "--no-run"]))?;
    phases.done("build: benches");
    cargo_test(&py, &[&["--workspace".to_string()], extra].concat(), true)?;
    phases.done("cargo test (building the tests, then running them)");
    phases.print();
    eprintln!("xtask: all tests passed in {:.0} s", phases.started.elapsed().as_secs_f64());
    Ok(())
}

/// A clean build and a run of every test write about 6 GiB (the build 4.4 GiB, LocalStack's
/// objects, the logs): with less free than that, say so before an hour is spent finding out.
fn room_on_disk() -> anyhow::Result<()> {
    const NEEDED_GIB: u64 = 8;
    let st = nix::sys::statvfs::statvfs(&root()).context("statvfs of the project's folder")?;
    let free_gib = (st.blocks_available() as u64 * st.fragment_size() as u64) >> 30;
    eprintln!("xtask: {free_gib} GiB free on the project's disk");
    anyhow::ensure!(
        free_gib >= NEEDED_GIB,
        "only {free_gib} GiB free on the project's disk; the build and the tests need about {NEEDED_GIB}: free some (`cargo clean` drops old builds)"
    );
    Ok(())
}

/// How long each phase of `test` took, printed at the end (a figure for the note, never a
/// limit).
struct Phases {
    started: Instant,
    last: Instant,
    done: Vec<(&'static str, f64)>,
}

impl Phases {
    fn new() -> Self {
        let now = Instant::now();
        Phases { started: now, last: now, done: Vec::new() }
    }

    fn done(&mut self, what: &'static str) {
        self.done.push((what, self.last.elapsed().as_secs_f64()));
        self.last = Instant::now();
    }

    fn print(&self) {
        for (what, secs) in &self.done {
            eprintln!("xtask: {secs:>7.0} s  {what}");
        }
    }
}

/// `cmd` (a cargo build) with clippy as the compiler of the workspace's crates, warnings
/// denied: what `cargo clippy -- -D warnings` sets for its check.
fn linted(cmd: &mut Command) -> anyhow::Result<&mut Command> {
    Ok(cmd
        .env("RUSTC_WORKSPACE_WRAPPER", clippy_driver()?)
        .env("CLIPPY_ARGS", "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"))
}

/// The toolchain's `clippy-driver` (beside its `cargo`; through rustup when there is one).
fn clippy_driver() -> anyhow::Result<std::path::PathBuf> {
    if let Ok(out) = Command::new("rustup").args(["which", "clippy-driver"]).output()
        && out.status.success()
    {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().into());
    }
    let cargo = std::env::var_os("CARGO").map(std::path::PathBuf::from).context("CARGO is not set")?;
    let driver = cargo.with_file_name("clippy-driver");
    anyhow::ensure!(driver.exists(), "clippy-driver is not beside {}: `rustup component add clippy`", cargo.display());
    Ok(driver)
}

/// `cargo test ARGS` with LocalStack up (a bucket `aic-test`) and the suite's environment.
/// `lint`: with clippy as the workspace's compiler (as [`test`] builds).
pub(crate) fn cargo_test(py: &std::path::Path, args: &[String], lint: bool) -> anyhow::Result<()> {
    let root = root();
    let ls = LocalStack::start()?;
    ls.create_bucket("aic-test")?;
    let mut cmd = Command::new("cargo");
    if lint {
        linted(&mut cmd)?;
    }
    let result = run(cmd
        .arg("test")
        .args(args)
        .current_dir(&root)
        .env("PATH", path_with(py))
        .env("AIC_TEST_S3_ENDPOINT", &ls.endpoint)
        .env("AIC_TEST_S3_BUCKET", "aic-test")
        .env("AIC_LOCALSTACK_PYTHON", tools().join("localstack-venv/bin/python"))
        .env("AIC_ANVIL", anvil())
        // Prometheus' client library, whose parser reads the functions host's `/metrics`.
        .env("AIC_PROM_PYTHON", crate::tools::venv("prom", 1, &["prometheus_client"])?.join("python"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1"));
    drop(ls);
    result
}

/// `cargo xtask storm [JOBS]`: the event storms of `functions/tests/it/localstack.rs` (duplicated
/// and shuffled events; a tenth of the store calls failing; the functions host killed twice)
/// with JOBS paid jobs each (200 by default; the tests run 50).
pub(crate) fn storm(jobs: usize) -> anyhow::Result<()> {
    let py = setup(true)?;
    // SAFETY: set before any thread of this process starts; the tests inherit it.
    unsafe { std::env::set_var("AIC_STORM_JOBS", jobs.to_string()) };
    let args =
        ["-p", "aic-functions", "--test", "it", "localstack::storm_", "--", "--test-threads", "1", "--nocapture"];
    cargo_test(&py, &args.map(String::from), false)
}
