//! `cargo xtask fuzz [TARGET] [--seconds N]`: coverage-guided fuzzing of every parser of
//! outside bytes (`functions/fuzz`), with cargo fuzz (libFuzzer, nightly Rust), N seconds a
//! target (60 by default). Installs cargo-fuzz when missing. What libFuzzer finds goes to a
//! working corpus under `target/fuzz/corpus/` (the committed seeds are read, never written),
//! crashes to `target/fuzz/artifacts/<target>/`: copy one into
//! `functions/fuzz/corpus/<target>/` once fixed, and the tests replay it from then on.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::root;

/// The targets, as `functions/fuzz/harness/Cargo.toml` names its binaries.
fn targets() -> anyhow::Result<Vec<String>> {
    let manifest = std::fs::read_to_string(root().join("functions/fuzz/harness/Cargo.toml"))?;
    Ok(manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"').map(str::to_string))
        .filter(|n| n != "aic-fuzz-harness")
        .collect())
}

fn ensure_tools() -> anyhow::Result<()> {
    let has = |args: &[&str]| {
        Command::new("cargo").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    if !has(&["+nightly", "--version"]) {
        crate::tools::run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
            .context("cargo fuzz needs nightly Rust")?;
    }
    if !has(&["fuzz", "--version"]) {
        crate::tools::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

pub(crate) fn fuzz(args: &[String]) -> anyhow::Result<()> {
    let mut seconds = 60u64;
    let mut only = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it.next().and_then(|s| s.parse().ok()).context("--seconds takes a whole number")?;
            }
            t if !t.starts_with('-') && only.is_none() => only = Some(t.to_string()),
            other => bail!("usage: cargo xtask fuzz [TARGET] [--seconds N] (not {other:?})"),
        }
    }
    let all = targets()?;
    let run: Vec<String> = match only {
        Some(t) if all.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}; the targets: {}", all.join(", ")),
        None => all,
    };
    ensure_tools()?;
    let harness = root().join("functions/fuzz/harness");
    let work = root().join("target/fuzz");
    let mut found = Vec::new();
    for t in &run {
        let corpus = work.join("corpus").join(t);
        let artifacts = work.join("artifacts").join(t);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let seeds = root().join("functions/fuzz/corpus").join(t);
        let out = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
            .arg(&harness)
            .args(["--target-dir"])
            .arg(work.join("build"))
            .arg(t)
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .current_dir(root())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .output()?;
        let log = String::from_utf8_lossy(&out.stderr);
        let stat = |name: &str| -> String {
            log.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| "?".into())
        };
        let crashes: Vec<String> = std::fs::read_dir(&artifacts)?
            .flatten()
            .map(|e| e.path().display().to_string())
            .filter(|p| !Path::new(p).is_dir())
            .collect();
        println!(
            "fuzz {t:<15} {seconds} s: {} executions ({} a second), corpus {} inputs, crashes {}",
            stat("number_of_executed_units"),
            stat("average_exec_per_sec"),
            std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0),
            crashes.len()
        );
        if !out.status.success() {
            eprintln!(
                "{}",
                log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            found.push(format!("{t}: {}", crashes.join(", ")));
        }
    }
    if !found.is_empty() {
        bail!("crashes found (fix, then copy each input into functions/fuzz/corpus/<target>/):\n{}", found.join("\n"));
    }
    Ok(())
}
