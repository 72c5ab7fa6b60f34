//! The PyTorch launchers for real on two simulated miners — torchrun (DDP, c10d rendezvous at
//! the leader) and horovodrun (Horovod 0.28.1 built against torch, Gloo controller, reaching
//! the second miner over SSH through the job's `ssh` wrapper). `cargo xtask test` installs
//! torch (~3 GB, once per machine) and builds Horovod (~6 min, once) into
//! `~/.cache/aic-tools/torch` and names its `bin/` in `AIC_TEST_TORCH` and `AIC_TEST_HOROVOD`,
//! so both run every time there, in CI too. Run alone (`cargo test` without xtask), a test
//! whose variable is unset says so and does nothing, except under `CI`, where it fails:
//!
//! ```text
//! AIC_TEST_TORCH=~/.cache/aic-tools/torch/bin AIC_TEST_HOROVOD=~/.cache/aic-tools/torch/bin \
//!   cargo test -p aic-cli --test it frameworks:: -- --nocapture
//! ```

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

/// Trains the digits model with `entrypoint` under `launcher` on two miners, with the
/// environment `var` names; checks both ranks end with the same parameters and it converged.
fn two_miners(var: &str, tool: &str, entrypoint: &str, launcher: &str) {
    let Some(torch_bin) = std::env::var_os(var).map(PathBuf::from) else {
        assert!(std::env::var_os("CI").is_none(), "{launcher} test: {var} is not set in CI (cargo xtask test sets it)");
        eprintln!("{launcher} test: {var} is not set (see this file's header); nothing run");
        return;
    };
    assert!(torch_bin.join(tool).exists(), "{} has no {tool}", torch_bin.display());
    let home = Home::new();
    let path = format!("{}:{}", torch_bin.display(), std::env::var("PATH").unwrap_or_default());
    let aic = |args: &[&str]| {
        let mut cmd = home.cmd(args);
        cmd.env("PATH", &path);
        shown(args, cmd)
    };
    let data = home.path().join("data");
    assert!(
        Command::new(torch_bin.join("python3"))
            .arg(repo().join("examples/digits/make_dataset.py"))
            .arg(&data)
            .status()
            .unwrap()
            .success()
    );
    assert!(aic(&["data", "put", data.to_str().unwrap(), "digits"]).status.success());
    let code = repo().join("examples/digits");
    let out = aic(&[
        "run",
        code.to_str().unwrap(),
        "--entrypoint",
        entrypoint,
        "--launcher",
        launcher,
        "--miners",
        "2",
        "--data",
        "digits",
        "--",
        "--epochs",
        "15",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // One rank per miner, the same parameters on both at the end.
    let digests: Vec<&str> = stdout.lines().filter_map(|l| l.split(" params ").nth(1)).collect();
    assert_eq!(digests.len(), 2, "{stdout}");
    assert_eq!(digests[0], digests[1], "{stdout}");
    let acc: f64 = stdout
        .lines()
        .find_map(|l| l.split("final test accuracy ").nth(1))
        .and_then(|r| r.split(';').next())
        .and_then(|a| a.parse().ok())
        .expect("a final accuracy");
    assert!(acc >= 0.9, "{acc}");
}

#[test]
fn ddp_across_two_miners_with_torchrun_converges_with_identical_parameters() {
    two_miners("AIC_TEST_TORCH", "torchrun", "train_ddp.py", "torchrun");
}

#[test]
fn horovodrun_across_two_miners_converges_with_identical_parameters() {
    two_miners("AIC_TEST_HOROVOD", "horovodrun", "train_horovod.py", "horovod");
}
