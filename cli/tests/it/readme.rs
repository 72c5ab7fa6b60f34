//! The README's and `docs/`' console examples, run as written: each `$ …` line of their ```console blocks
//! goes to `sh` in a folder holding a copy of `examples/`, under `aic dev up`. What differs
//! from run to run (job ids, the serving address, the elided pixels of an image) is taken
//! from the run itself; what a command is shown to print is checked where it does not.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

/// Room for the deployments and the MPI job of the README and docs/commands.md side by side.
const MINERS: &str = "4";

/// One `$ command` of a console block and the lines the README shows it printing.
#[derive(Debug)]
struct Shown {
    command: String,
    output: Vec<String>,
}

/// The README and the pages of `docs/` whose console blocks run, in the order they run (a
/// page's blocks may use what an earlier page's made).
const PAGES: [&str; 7] = [
    "README.md",
    "docs/commands.md",
    "docs/pool.md",
    "docs/reliability.md",
    "docs/security.md",
    "docs/configuration.md",
    "docs/benchmarks.md",
];

/// The console blocks of the README and `docs/`, in order. Every page of `docs/` is one of
/// [`PAGES`], so none of its blocks goes unrun.
fn console_blocks() -> Vec<Vec<Shown>> {
    let mut pages: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    pages.sort();
    let mut listed: Vec<&str> = PAGES[1..].to_vec();
    listed.sort();
    assert_eq!(pages, listed, "a page of docs/ that the README test does not read (PAGES)");
    let text: String = PAGES.iter().map(|p| std::fs::read_to_string(repo().join(p)).unwrap() + "\n").collect();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<Shown>> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```console") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), l) => match l.strip_prefix("$ ") {
                Some(cmd) => {
                    // A trailing `# comment` is the README talking, not the shell.
                    let cmd = cmd.split("  #").next().unwrap().trim().to_string();
                    block.push(Shown { command: cmd, output: Vec::new() });
                }
                None => block.last_mut().expect("output before any command").output.push(l.to_string()),
            },
            _ => {}
        }
    }
    blocks
}

/// Runs `command` with `sh` in the home's folder, with the home's environment and `aic`
/// first on PATH.
fn sh(h: &Home, command: &str) -> Output {
    let bin = aic_bin();
    let path = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("sh");
    cmd.args(["-c", command]).current_dir(h.path());
    for (k, v) in h.cmd(&[]).get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("PATH", path).env("AIC_POOL_MINERS", MINERS).stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    eprintln!("$ {command}\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for f in walk(from) {
        let dest = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, dest).unwrap();
    }
}

/// ULIDs as aic prints job ids.
fn job_ids(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| {
            w.len() == 26 && w.starts_with("01") && w.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_console_examples_run_as_written() {
    let h = Home::new();
    copy_dir(&repo().join("examples"), &h.path().join("examples"));
    let _up = DevUp::start_with(&h, &[("AIC_POOL_MINERS", MINERS)]);
    let blocks = console_blocks();
    // Stand-ins for what the README cannot know in advance.
    let mut seen_ids: Vec<(String, String)> = Vec::new();
    // The serving gateway's base address as the README shows it, and as this pool has it.
    let mut base = (".localhost:8800".to_string(), String::new());
    let first_image: String = {
        let data = h.path().join("pixels");
        let made =
            Command::new("python3").arg(repo().join("examples/digits/make_dataset.py")).arg(&data).status().unwrap();
        assert!(made.success(), "python3 with scikit-learn is needed (cargo xtask test installs it)");
        let row = std::fs::read_to_string(data.join("digits.csv")).unwrap();
        let row: Vec<&str> = row.lines().next().unwrap().split(',').collect();
        row[..64].join(",")
    };
    let mut ran = 0;
    let mut not_run = Vec::new();
    for block in &blocks {
        // Pool mode needs a pool's gateway: `pool_mode.rs` runs the tutorial against one.
        if block.iter().any(|s| s.command.starts_with("export AIC_GATEWAY")) {
            not_run.extend(block.iter().map(|s| s.command.clone()));
            continue;
        }
        for shown in block {
            let mut command = shown.command.clone();
            // A browser wallet is the browser test's (`browser.rs`); here the same account signs
            // in with its key, so the addresses the README shows stay the same.
            if command.starts_with("aic login --browser") {
                command = "aic login --dev 2".into();
            }
            for (readme, real) in &seen_ids {
                command = command.replace(readme, real);
            }
            if command.starts_with("curl ") {
                command = command.replace("0,0,5,13,9,1,…", &first_image).replace(&base.0, &base.1);
            }
            if command == "aic deploy ./digits-api --replicas 2" {
                // The opening example's deployment holds both miners: make room, and the project.
                assert!(sh(&h, "aic deploy rm digits").status.success());
                copy_dir(&h.path().join("examples/digits/serve"), &h.path().join("digits-api"));
            }
            if command == "aic submit job.yaml" && shown.output.iter().any(|l| l.starts_with("error:")) {
                std::fs::write(h.path().join("job.yaml"), "code: examples/digits\nminers: 0\ngpus: 12\n").unwrap();
            }
            let out = sh(&h, &command);
            ran += 1;
            let (stdout, stderr) = text(&out);
            let all = format!("{stdout}{stderr}");
            // A README line that shows an error is an error here too, word for word.
            if shown.output.first().is_some_and(|l| l.starts_with("error:")) {
                assert!(!out.status.success(), "{command}: {all}");
                let want: Vec<&str> = shown.output.iter().map(|l| l.trim()).collect();
                let got: Vec<&str> = stderr.lines().map(str::trim).collect();
                assert_eq!(got, want, "{command}");
                continue;
            }
            // A job the page shows failing fails here too.
            let fails = shown.output.iter().any(|l| l.starts_with("● failed"));
            assert_eq!(out.status.success(), !fails, "{command}: {all}");
            // The README's ids stand for the ones this run printed.
            let (readme_ids, real_ids) = (job_ids(&shown.output.join("\n")), job_ids(&all));
            for (r, real) in readme_ids.iter().zip(real_ids) {
                seen_ids.push((r.clone(), real));
            }
            if let Some(a) = stdout.lines().find_map(|l| l.strip_prefix("API address : ")) {
                let readme = shown.output.iter().find_map(|l| l.strip_prefix("API address : ")).unwrap();
                // Same owner and name; the port is whatever this pool's gateway got.
                let (real_label, real_port) = a.split_once(".localhost:").unwrap();
                let (readme_label, readme_port) = readme.split_once(".localhost:").unwrap();
                assert_eq!(real_label, readme_label);
                base = (format!(".localhost:{readme_port}"), format!(".localhost:{real_port}"));
            }
            // Lines that are the same on every run are shown as they are.
            for line in &shown.output {
                let stable = line.starts_with("uploaded 1 file")
                    || line.starts_with("wrote 1797 images")
                    || line.starts_with("wrote examples/")
                    || line.starts_with("hello from ")
                    || line.starts_with("secret HF_TOKEN set")
                    || line.starts_with("HF_TOKEN is ")
                    || line.starts_with("it has 22 characters")
                    || line.starts_with("[aic] preparing environment")
                    || line.starts_with("quote: ")
                    || line.starts_with("signed in as ")
                    || line.starts_with("● succeeded");
                // Why a job failed, wherever it was placed.
                if let Some((_, why)) = line.strip_prefix("● failed").and_then(|l| l.split_once(": ")) {
                    assert!(all.contains(why), "{command}: the page shows {line:?}; it printed:\n{all}");
                }
                // How an environment came to be ready, without the time it took.
                if let Some(how) = line.strip_prefix("[aic] environment ready in ").and_then(|l| l.split_once(" s: ")) {
                    let how = how.1.split(" (").next().unwrap();
                    assert!(all.contains(how), "{command}: the page shows {line:?}; it printed:\n{all}");
                }
                if stable {
                    let head = line.split(" (").next().unwrap().split("  execution").next().unwrap();
                    assert!(all.contains(head), "{command}: the README shows {line:?}; it printed:\n{all}");
                }
            }
            if command.starts_with("curl ") {
                assert!(stdout.contains("\"digit\":0"), "{stdout}");
            }
        }
    }
    assert_eq!(
        not_run,
        [
            "export AIC_GATEWAY=https://gateway.pool.example",
            "aic login --keystore ~/.ethereum/keystore/me.json",
            "aic pool",
            "aic run train.py --data digits --miners 2 --gpus 3"
        ],
        "only the pool-mode block is left to pool_mode.rs"
    );
    assert!(ran >= 12, "ran {ran} commands");
}
