//! Developer chores, in Rust: `cargo xtask demo`, `cargo xtask test`.
//!
//! Both install what they need first, idempotently, under `$AIC_TOOLS` (default
//! `~/.cache/aic-tools`): a Python venv with numpy and scikit-learn for the training
//! examples, and (for `test`) LocalStack in host mode.
//!
//! One module a chore: `tools` (what both commands install), `localstack` (LocalStack for
//! the tests), `test` (and `storm`), `bench` (one file a benchmark), `soak` and `fuzz`.

mod bench;
mod circles;
mod fuzz;
mod localstack;
mod soak;
mod test;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;

use tools::{anvil, path_with, run, setup};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test::test(&args[1..]),
        Some("setup") => setup(true).map(|_| ()),
        Some("bench") => bench::bench(args.get(1).map(String::as_str)),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("storm") => match args.get(1).map(|n| n.parse::<usize>()) {
            None => test::storm(200),
            Some(Ok(n)) => test::storm(n),
            Some(Err(_)) => Err(anyhow::anyhow!("usage: cargo xtask storm [JOBS]")),
        },
        Some("soak") => match args.get(1).map(|n| n.parse::<usize>()) {
            None => soak::soak(1000),
            Some(Ok(n)) => soak::soak(n),
            Some(Err(_)) => Err(anyhow::anyhow!("usage: cargo xtask soak [JOBS]")),
        },
        _ => {
            eprintln!(
                "usage: cargo xtask demo | test [CARGO TEST ARGS] | setup | bench [validate|settle|worker|gateway|jobs|logs|data|staging|latency] | soak [JOBS] | storm [JOBS] | fuzz [TARGET] [--seconds N]"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn demo() -> anyhow::Result<()> {
    let py = setup(false)?;
    run(Command::new("cargo").args(["build", "--quiet", "--workspace", "--bins"]).current_dir(root()))?;
    run(Command::new(root().join("target/debug/aic")).arg("demo").env("PATH", path_with(&py)).env("AIC_ANVIL", anvil()))
}
