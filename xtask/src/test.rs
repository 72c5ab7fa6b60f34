//! `cargo xtask test`: formatting, lints, the token artifact and the web app's bundle, then every test with
//! LocalStack up; `cargo xtask storm`: the event storms at full size.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use crate::localstack::LocalStack;
use crate::root;
use crate::tools::{anvil, path_with, run, setup, tools};

pub(crate) fn test(extra: &[String]) -> anyhow::Result<()> {
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
    run(Command::new("node").args(["functions/web/build.mjs", "--check"]).current_dir(&root))
        .context("the committed web app bundle is stale")?;
    // The CLI's tests start the workers: build every binary first.
    run(Command::new("cargo").args(["build", "--quiet", "--workspace", "--bins"]).current_dir(&root))?;
    cargo_test(&py, &[&["--workspace".to_string()], extra].concat())?;
    eprintln!("xtask: all tests passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `cargo test ARGS` with LocalStack up (a bucket `aic-test`) and the suite's environment.
pub(crate) fn cargo_test(py: &std::path::Path, args: &[String]) -> anyhow::Result<()> {
    let root = root();
    let ls = LocalStack::start()?;
    ls.create_bucket("aic-test")?;
    let result = run(Command::new("cargo")
        .arg("test")
        .args(args)
        .current_dir(&root)
        .env("PATH", path_with(py))
        .env("AIC_TEST_S3_ENDPOINT", &ls.endpoint)
        .env("AIC_TEST_S3_BUCKET", "aic-test")
        .env("AIC_LOCALSTACK_PYTHON", tools().join("localstack-venv/bin/python"))
        .env("AIC_ANVIL", anvil())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1"));
    drop(ls);
    result
}

/// `cargo xtask storm [JOBS]`: the event storms of `functions/tests/localstack.rs` (duplicated
/// and shuffled events; a tenth of the store calls failing; the functions host killed twice)
/// with JOBS paid jobs each (200 by default; the tests run 50).
pub(crate) fn storm(jobs: usize) -> anyhow::Result<()> {
    let py = setup(true)?;
    // SAFETY: set before any thread of this process starts; the tests inherit it.
    unsafe { std::env::set_var("AIC_STORM_JOBS", jobs.to_string()) };
    let args = ["-p", "aic-functions", "--test", "localstack", "storm_", "--", "--test-threads", "1", "--nocapture"];
    cargo_test(&py, &args.map(String::from))
}
