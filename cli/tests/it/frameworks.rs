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
    converged(&stdout, 2);
}

/// `ranks` ranks printed the same parameters (`… params DIGEST`) and the final test accuracy
/// (`final test accuracy A;`) is at least 0.9.
fn converged(stdout: &str, ranks: usize) {
    let digests: Vec<&str> = stdout.lines().filter_map(|l| l.split(" params ").nth(1)).collect();
    assert_eq!(digests.len(), ranks, "{stdout}");
    assert!(digests.iter().all(|d| *d == digests[0]), "{stdout}");
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

/// The original tutorial, end to end (`examples/keras-horovod`, README "The original
/// tutorial"): Horovod's Keras MNIST on 2 miners × 2 GPUs in an environment of the project's
/// own (TensorFlow from its wheel, Horovod built from source against it, both in the job's
/// log as the environment's phase), rank 0's checkpoint back, the tutorial's Flask app
/// deployed with it, a PNG of a digit POSTed to it. Opt-in, heavy (TensorFlow's ~200 MB
/// wheel from PyPI, Horovod's build: ~10 min on 2 cores): `AIC_TEST_KERAS` names the `bin/`
/// of the Python the miners run (a plain venv; `python3 -m venv ~/.cache/aic-tools/keras`),
/// which has neither:
///
/// ```text
/// AIC_TEST_KERAS=~/.cache/aic-tools/keras/bin cargo test -p aic-cli --test it \
///   frameworks::the_keras_horovod_tutorial -- --nocapture
/// ```
#[test]
fn the_keras_horovod_tutorial_trains_on_two_miners_and_serves_its_checkpoint() {
    let Some(base) = std::env::var_os("AIC_TEST_KERAS").map(PathBuf::from) else {
        eprintln!("keras tutorial: AIC_TEST_KERAS is not set (see this test's comment); nothing run");
        return;
    };
    assert!(base.join("python3").exists(), "{} has no python3", base.display());
    let home = Home::new();
    let path = format!("{}:{}", base.display(), std::env::var("PATH").unwrap_or_default());
    // The pool (`aic dev up`, as the walk-through has it): 2 miners of 2 GPU slots whose
    // Python is `AIC_TEST_KERAS`'s; it keeps the deployment up after `aic deploy` returns.
    let _pool = DevUp::start_with(&home, &[("PATH", &path), ("AIC_POOL_GPUS", "2"), ("AIC_ENV_TIMEOUT", "3600")]);
    let run = |args: &[&str]| shown(args, home.cmd(args));
    let example = repo().join("examples/keras-horovod");
    let data = home.path().join("mnist");
    let made = Command::new("python3").arg(example.join("make_data.py")).arg(&data).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert!(run(&["data", "put", data.to_str().unwrap(), "mnist"]).status.success());
    let out = run(&[
        "run",
        example.to_str().unwrap(),
        "--entrypoint",
        "train.py",
        "--launcher",
        "horovod",
        "--miners",
        "2",
        "--gpus",
        "2",
        "--hours",
        "2",
        "--data",
        "mnist",
        "--env",
        "HOROVOD_WITH_TENSORFLOW=1",
        "--env",
        "HOROVOD_WITHOUT_PYTORCH=1",
        "--",
        "--epochs",
        "3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("building from source: horovod==0.28.1"), "{stdout}");
    // Four ranks (2 miners × 2 GPUs), the same parameters on each at the end.
    converged(&stdout, 4);
    assert!(stdout.contains("of 4 params"), "{stdout}");
    let said = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let job = said
        .lines()
        .find_map(|l| l.strip_prefix("job ").and_then(|r| r.split_once(" submitted")).map(|(id, _)| id.to_string()))
        .expect("the job's id");
    let output = home.path().join("out");
    assert!(run(&["results", "get", &job, output.to_str().unwrap()]).status.success());
    for f in ["model.h5", "checkpoint-3.h5"] {
        assert!(output.join(f).is_file(), "rank 0 wrote {f}");
    }

    // The tutorial's Flask app with the checkpoint.
    let api_dir = home.path().join("mnist-api");
    std::fs::create_dir_all(&api_dir).unwrap();
    for f in ["app.py", "requirements.txt"] {
        std::fs::copy(example.join("serve").join(f), api_dir.join(f)).unwrap();
    }
    std::fs::copy(output.join("model.h5"), api_dir.join("model.h5")).unwrap();
    let out = run(&["deploy", api_dir.to_str().unwrap(), "--name", "mnist", "--replicas", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let api = stdout.lines().find_map(|l| l.strip_prefix("API address : ")).expect("the API address").to_string();
    let png = home.path().join("seven.png");
    let made =
        Command::new("python3").arg(example.join("make_data.py")).args(["--png", "7"]).arg(&png).output().unwrap();
    assert!(made.status.success());
    let answer = Command::new("curl")
        .args(["-s", "--max-time", "60", "-F"])
        .arg(format!("image=@{}", png.display()))
        .arg(format!("{api}predict"))
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&answer.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&answer.stdout)));
    assert_eq!(body["digit"], 7, "{body}");
}
