//! A project's Python environment: what its `requirements.txt` asks for and the miner's
//! Python lacks, prepared before the program starts (training jobs and deployments alike),
//! as a phase of its own in the job's log, within `AIC_ENV_TIMEOUT` seconds (1800).
//!
//! 1. **Resolve**: `pip install --dry-run --report` (wheels preferred) says what the
//!    requirements need, each with its URL and SHA-256; of that, what the miner's Python does
//!    not have at that version is what the environment holds. Nothing resolves: the job fails
//!    with pip's reason, its program never started.
//! 2. **Name**: the environment's digest covers the miner's Python (version, platform, its
//!    installed distributions) and the pinned list (name, version, SHA-256), so one digest is
//!    one set of bytes whoever asked for it. An environment with a package built from source
//!    is its owner's alone: its digest adds the owner and the job's variables the build saw
//!    (a build makes whatever its code chooses, so nobody else may import what it made).
//! 3. **Take or build** (`envcache`): cached on this miner → used as it is, nothing installed.
//!    Else built in a fresh folder of the allocation's own by `pip install --no-deps
//!    --require-hashes` from the pinned URLs (every archive checked against its SHA-256): the
//!    wheels first (no package's code runs while one is installed), then the source archives,
//!    built without isolation against the wheels beside them (Horovod against the TensorFlow
//!    the same requirements install), then sealed into the cache, read-only. Two allocations
//!    asking for the same digest at once: one builds, the other waits ([`BUILD_WAIT`] at
//!    most, then builds one of its own, uncached).
//!
//! Resolving may run the job's own code (an sdist's metadata, if the requirements ask for
//! sources): it runs as the job's uid, as the program would, and before anything is built
//! every process of that uid but the worker is killed (`stray`) and the build folder made
//! anew, so nothing it started or left has a hand in what is sealed (a stranger's build is
//! what another owner with the same pins imports). pip runs isolated (`python -I`,
//! `--isolated`: no user site-packages, no `PYTHON*` or `PIP_*` variables, no user
//! configuration), so nothing a job left in its folder (a `.pth` under `~/.local`, a
//! `pip.conf`) runs or steers it.
//!
//! The program gets the environment on `PYTHONPATH` (before the job's own) and its `bin/` first
//! on `PATH` (a `horovodrun` the requirements installed). Without a cache on
//! the miner the environment is built the same way into the allocation's folder, for it alone.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use sha2::Digest;
use tokio::sync::mpsc;

use crate::alloc::Alloc;
use crate::envcache::{self, BUILD_DIR};

/// The longest an environment may take to prepare (`AIC_ENV_TIMEOUT`, seconds).
fn time_limit() -> Duration {
    Duration::from_secs(std::env::var("AIC_ENV_TIMEOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(1800))
}

/// What the program gets: the environment's folder, for `PYTHONPATH`.
pub(crate) struct Prepared {
    pub(crate) dir: Option<PathBuf>,
}

/// One item of pip's installation report that the miner lacks.
#[derive(Debug, PartialEq)]
struct Pin {
    name: String,
    version: String,
    url: String,
    sha256: String,
    /// A wheel (installed as it is); else a source archive, built here.
    wheel: bool,
}

fn packages(n: usize) -> String {
    if n == 1 { "1 package".into() } else { format!("{n} packages") }
}

/// PEP 503's normal form of a distribution name.
fn normal(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The pins pip's `--report` asks for that `installed` (normal name → version) lacks.
fn missing(
    report: &serde_json::Value,
    installed: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<Vec<Pin>> {
    let mut pins = vec![];
    for item in report["install"].as_array().into_iter().flatten() {
        let name = item["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let version = item["metadata"]["version"].as_str().unwrap_or_default().to_string();
        if installed.get(&normal(&name)) == Some(&version) {
            continue;
        }
        let info = &item["download_info"];
        let url = info["url"].as_str().unwrap_or_default().to_string();
        let archive = &info["archive_info"];
        let sha256 = archive["hashes"]["sha256"]
            .as_str()
            .map(str::to_string)
            .or_else(|| archive["hash"].as_str().and_then(|h| h.strip_prefix("sha256=")).map(str::to_string))
            .unwrap_or_default();
        let word = |v: &str, extra: &str| {
            !v.is_empty() && v.len() <= 200 && v.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
        };
        if !word(&name, "._-") || !word(&version, ".+!_-") {
            return Err(anyhow!("pip's report names an odd package ({name:?} {version:?})"));
        }
        if url.len() > 4096 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(anyhow!("{name} {version} comes from an odd URL"));
        }
        // The file's name as pip reads it: the last segment of the URL's path, percent-decoded.
        let file = decoded(url.split(['?', '#']).next().unwrap_or_default().rsplit('/').next().unwrap_or_default());
        let wheel = is_wheel(&file, &name);
        let sha256 = sha256.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(anyhow!(
                "{name} {version} comes with no SHA-256 (aic installs archives checked by SHA-256 only)"
            ));
        }
        if !wheel && ![".tar.gz", ".zip"].iter().any(|e| file.ends_with(e)) {
            return Err(anyhow!("{name} {version} is neither a wheel nor a source archive ({file})"));
        }
        pins.push(Pin { name, version, url, sha256, wheel });
    }
    pins.sort_by_key(|p| normal(&p.name));
    Ok(pins)
}

/// `s` with its `%XX` escapes decoded (a URL's path segment); undecodable bytes kept as given.
fn decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `file` is a wheel of `name` by its file name (PEP 427:
/// `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`), as pip tells wheels from
/// source archives: a name merely ending in `.whl` is not one.
fn is_wheel(file: &str, name: &str) -> bool {
    let Some(stem) = file.strip_suffix(".whl") else { return false };
    let parts: Vec<&str> = stem.split('-').collect();
    matches!(parts.len(), 5 | 6) && parts.iter().all(|p| !p.is_empty()) && normal(parts[0]) == normal(name)
}

/// The environment's name: the miner's Python as `base` describes it, and the pins. One
/// with a package built from source is its owner's alone (`private`: the owner and the
/// variables the build saw): what a build makes is whatever its code chose to, so another
/// owner's pins naming the same archives never get it.
fn digest(base: &str, pins: &[Pin], private: Option<(&str, &std::collections::BTreeMap<String, String>)>) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"aic-env 1\n");
    h.update(base.as_bytes());
    for p in pins {
        let kind = if p.wheel { "wheel" } else { "source" };
        h.update(format!("\n{}=={} {} {kind}", normal(&p.name), p.version, p.sha256).as_bytes());
    }
    if let Some((owner, env)) = private {
        h.update(format!("\nbuilt for {owner}").as_bytes());
        for (k, v) in env {
            h.update(format!("\n{}={}", k.len(), k).as_bytes());
            h.update(format!("\n{}={}", v.len(), v).as_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// The miner's Python: one line of JSON (version, platform, installed distributions).
const BASE: &str = "import importlib.metadata as m, json, sys, sysconfig\n\
print(json.dumps({'python': sys.version, 'platform': sysconfig.get_platform(), 'tag': sys.implementation.cache_tag,\n\
 'dists': sorted({(d.metadata['Name'] or '') + '==' + d.version for d in m.distributions()})}))";

/// Runs `python -I` with `args` (pip isolated, in `cwd`), within `deadline`; its stderr's
/// last error line on failure.
async fn python(python: &str, args: &[&str], cwd: &Path, deadline: Instant) -> anyhow::Result<Vec<u8>> {
    python_with(python, args, cwd, deadline, &[]).await
}

/// [`python`] with `env` set (a source build's: `python -I` itself ignores `PYTHON*`
/// variables and `--isolated` pip's `PIP_*`, a build backend pip runs does not; the other
/// variables reach pip too, which runs as the job's uid for an environment that is the
/// owner's alone).
async fn python_with(
    python: &str,
    args: &[&str],
    cwd: &Path,
    deadline: Instant,
    env: &[(String, String)],
) -> anyhow::Result<Vec<u8>> {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg("-I").args(args).current_dir(cwd).kill_on_drop(true);
    cmd.env_remove("PYTHONPATH").envs(env.iter().map(|(k, v)| (k, v)));
    cmd.env("PIP_CONFIG_FILE", "/dev/null").env("PIP_NO_INPUT", "1");
    cmd.stdin(std::process::Stdio::null());
    let left = deadline.saturating_duration_since(Instant::now());
    let out = tokio::time::timeout(left, cmd.output())
        .await
        .map_err(|_| anyhow!("preparing the environment took over {} s (AIC_ENV_TIMEOUT)", time_limit().as_secs()))?
        .with_context(|| format!("running {python}"))?;
    if !out.status.success() {
        return Err(anyhow!("{}", pip_error(&String::from_utf8_lossy(&out.stderr))));
    }
    Ok(out.stdout)
}

/// Prepares `code`'s environment for allocation `a` (nothing without a `requirements.txt`),
/// telling the job's log through `log`.
pub(crate) async fn prepare(
    a: &Alloc,
    code: &Path,
    user_env: &std::collections::BTreeMap<String, String>,
    log: &mpsc::Sender<String>,
) -> anyhow::Result<Prepared> {
    let requirements = code.join("requirements.txt");
    if !requirements.is_file() {
        return Ok(Prepared { dir: None });
    }
    let started = Instant::now();
    let deadline = started + time_limit();
    let py = std::env::var("AIC_PYTHON").unwrap_or_else(|_| "python3".into());
    let say = |line: String| crate::logs::say(log, line);
    let build_root = a.work.join(BUILD_DIR);
    let _ = tokio::fs::remove_dir_all(&build_root).await;
    tokio::fs::create_dir_all(&build_root).await?;
    let report = build_root.join("report.json");
    say("preparing environment: resolving requirements.txt".into()).await;
    let mut args: Vec<&str> = PIP_INSTALL.to_vec();
    args.extend(["--dry-run", "--ignore-installed", "--prefer-binary", "--report"]);
    let (report_s, req_s) = (report.to_string_lossy().into_owned(), requirements.to_string_lossy().into_owned());
    args.extend([report_s.as_str(), "-r", req_s.as_str()]);
    python(&py, &args, code, deadline).await.map_err(|e| anyhow!("requirements.txt cannot be installed: {e}"))?;
    // Resolving may have run the job's own code (an sdist's metadata): nothing of it may run
    // on while the environment is built, nor has anything it left in the build folder a say.
    stray::kill_the_jobs_others()?;
    let report: serde_json::Value =
        serde_json::from_slice(&crate::alloc::read_jobs_file(&report, 64 << 20).context("reading pip's report")?)
            .context("pip's report")?;
    let base = String::from_utf8_lossy(&python(&py, &["-c", BASE], code, deadline).await?).trim().to_string();
    let dists: serde_json::Value = serde_json::from_str(&base).context("the miner's Python described itself oddly")?;
    let installed = dists["dists"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str()?.split_once("==").map(|(n, v)| (normal(n), v.to_string())))
        .collect();
    let pins = missing(&report, &installed).map_err(|e| anyhow!("requirements.txt cannot be installed: {e}"))?;
    if pins.is_empty() {
        say("environment ready: the miner's Python has everything requirements.txt asks for".into()).await;
        return Ok(Prepared { dir: None });
    }
    // What a source build sees of the job's own variables (`--env`: `HOROVOD_WITH_TENSORFLOW=1`
    // and the like steer builds); nothing of them reaches a wheels-only environment.
    let sources = pins.iter().any(|p| !p.wheel);
    let build_env: std::collections::BTreeMap<String, String> = if sources {
        user_env
            .iter()
            .filter(|(k, _)| !BUILD_ENV_KEPT.contains(&k.as_str()) && !k.starts_with("LD_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    } else {
        Default::default()
    };
    let owner = a.job.owner.to_string();
    let digest = digest(&base, &pins, sources.then_some((owner.as_str(), &build_env)));
    let short = &digest[..12];
    // A fresh, empty folder for the build (whatever was there went with its makers).
    std::fs::remove_dir_all(&build_root).context("emptying the build folder")?;
    std::fs::DirBuilder::new().mode(0o700).create(&build_root).context("the build folder")?;
    // Why this allocation builds one of its own (no cache; another allocation's build too long).
    let mut own = "no cache on this miner".to_string();
    if let Some(k) = envcache::keeper() {
        // No job waits on another's build for long: past that it builds one of its own.
        let wait = deadline.saturating_duration_since(Instant::now()).min(BUILD_WAIT);
        let d = digest.clone();
        let taken = tokio::task::spawn_blocking(move || envcache::keeper().expect("set").lock(&d, wait))
            .await
            .map_err(|e| anyhow!(e))?
            .context("the environment cache")?;
        match taken {
            envcache::Taken::Ready(dir) => {
                say(format!(
                    "environment ready in {:.1} s: {}, cached on this miner (environment {short})",
                    started.elapsed().as_secs_f64(),
                    packages(pins.len())
                ))
                .await;
                return Ok(Prepared { dir: Some(dir) });
            }
            envcache::Taken::Busy => {
                own = format!(
                    "another allocation has been building environment {short} for {} s: this one's own",
                    wait.as_secs()
                );
            }
            envcache::Taken::Build => {
                let built = build(&py, &build_root, &digest, &pins, &build_env, code, deadline, &say).await;
                let sealed = match built {
                    Ok(()) => {
                        let (d, work) = (digest.clone(), a.work.clone());
                        let seal =
                            tokio::task::spawn_blocking(move || envcache::keeper().expect("set").seal(&d, &work));
                        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), seal).await {
                            Ok(r) => r
                                .map_err(|e| anyhow!(e))
                                .and_then(|r| r.context("sealing the environment into the cache")),
                            Err(_) => Err(anyhow!("sealing the environment took past AIC_ENV_TIMEOUT")),
                        }
                    }
                    Err(e) => Err(e),
                };
                let dir = match sealed {
                    Ok(dir) => dir,
                    Err(e) => {
                        k.unlock(&digest);
                        return Err(anyhow!("requirements.txt cannot be installed: {e:#}"));
                    }
                };
                let _ = std::fs::remove_dir_all(build_root.join(&digest));
                say(format!(
                    "environment ready in {:.1} s: installed {} (environment {short}, kept in this miner's cache)",
                    started.elapsed().as_secs_f64(),
                    packages(pins.len())
                ))
                .await;
                return Ok(Prepared { dir: Some(dir) });
            }
        }
    }
    build(&py, &build_root, &digest, &pins, &build_env, code, deadline, &say)
        .await
        .map_err(|e| anyhow!("requirements.txt cannot be installed: {e:#}"))?;
    say(format!(
        "environment ready in {:.1} s: installed {} ({own})",
        started.elapsed().as_secs_f64(),
        packages(pins.len())
    ))
    .await;
    Ok(Prepared { dir: Some(build_root.join(&digest)) })
}

/// `pip install`, isolated: no user configuration, no `PIP_*` variables, nothing cached in the
/// job's folder.
const PIP_INSTALL: [&str; 8] =
    ["-m", "pip", "--isolated", "--disable-pip-version-check", "--no-input", "--no-cache-dir", "install", "--quiet"];

/// The longest an allocation waits for another building the same environment.
const BUILD_WAIT: Duration = Duration::from_secs(600);

/// Variables of the job a source build never takes from it (the build's own; nor any `LD_*`,
/// which would steer pip itself).
const BUILD_ENV_KEPT: [&str; 4] = ["PATH", "PYTHONPATH", "HOME", "TMPDIR"];

/// Installs `pins` into `<build_root>/<digest>`: by URL, each archive checked against its
/// SHA-256, no dependencies beyond the pins. The wheels first; then the source archives,
/// built without isolation against what the wheels installed (on `PYTHONPATH`, their
/// commands on `PATH`: a Horovod built against the TensorFlow beside it), with the job's own
/// variables (`env`).
#[allow(clippy::too_many_arguments)]
async fn build<F, Fut>(
    py: &str,
    build_root: &Path,
    digest: &str,
    pins: &[Pin],
    env: &std::collections::BTreeMap<String, String>,
    code: &Path,
    deadline: Instant,
    say: &F,
) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let names: Vec<String> = pins.iter().map(|p| format!("{}=={}", p.name, p.version)).collect();
    say(format!("preparing environment: installing {}: {}", packages(pins.len()), names.join(" "))).await;
    let target = build_root.join(digest);
    let target_s = target.to_string_lossy().into_owned();
    for wheels in [true, false] {
        let these: Vec<&Pin> = pins.iter().filter(|p| p.wheel == wheels).collect();
        if these.is_empty() {
            continue;
        }
        let pinned = build_root.join(if wheels { "wheels.txt" } else { "sources.txt" });
        let text: String =
            these.iter().map(|p| format!("{} @ {} --hash=sha256:{}\n", p.name, p.url, p.sha256)).collect();
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&pinned)?,
            text.as_bytes(),
        )?;
        let pinned_s = pinned.to_string_lossy().into_owned();
        // The built packages go to a folder of their own, then into the environment: pip's
        // `--target` leaves out whatever the folder already has at the top (its `bin/`, so a
        // built package's commands: `horovodrun`).
        let built = build_root.join("built");
        let into = if wheels { target_s.clone() } else { built.to_string_lossy().into_owned() };
        let mut args: Vec<&str> = PIP_INSTALL.to_vec();
        args.extend(["--no-deps", "--require-hashes", "--target", &into]);
        let mut extra: Vec<(String, String)> = vec![];
        if wheels {
            args.extend(["--only-binary", ":all:"]);
        } else {
            let names: Vec<String> = these.iter().map(|p| format!("{}=={}", p.name, p.version)).collect();
            say(format!(
                "preparing environment: building from source: {} (this environment is yours alone)",
                names.join(" ")
            ))
            .await;
            args.push("--no-build-isolation");
            extra.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
            extra.push(("PYTHONPATH".into(), target_s.clone()));
            let bin = target.join("bin");
            extra.push(("PATH".into(), format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())));
        }
        args.extend(["-r", &pinned_s]);
        python_with(py, &args, code, deadline, &extra).await?;
        if !wheels {
            // Whatever the build's code left running has no hand in what is merged and sealed.
            stray::kill_the_jobs_others()?;
            merge(&built, &target).context("putting the built packages into the environment")?;
        }
    }
    Ok(())
}

/// Moves everything under `from` into `to`, folder by folder (a file of `from` replaces one
/// of `to` with its name). Both are the build's own, on one file system.
fn merge(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() && dest.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            merge(&e.path(), &dest)?;
        } else {
            std::fs::rename(e.path(), &dest)?;
        }
    }
    Ok(())
}

/// pip's reason, in a line: its last `ERROR:` line; for a package whose build failed, pip's
/// word for the failure and the build's own last line (`metadata-generation-failed:
/// SyntaxError: …`).
fn pip_error(err: &str) -> String {
    if let Some(l) = err.lines().rev().find(|l| l.starts_with("ERROR")) {
        return l.trim().to_string();
    }
    let last = |s: &str| s.lines().rev().map(str::trim).find(|l| !l.is_empty()).map(str::to_string);
    let what = err.lines().find_map(|l| l.strip_prefix("error: ")).map(str::trim);
    match (what, err.rsplit_once("[end of output]").and_then(|(before, _)| last(before))) {
        (Some(what), Some(cause)) => format!("{what}: {cause}"),
        _ => last(err).unwrap_or_else(|| "pip failed".into()),
    }
}

/// Processes of the job's uid this worker did not start to stay.
mod stray {
    /// Where the worker runs as its job's own uid (the local scheduler's sandbox, a Nomad task:
    /// PID namespaces of the allocation's own): kills every other process of that uid, until
    /// none is left (`kill(-1)`: every process the uid may signal but this one; a fork during
    /// it is caught by the next pass), then makes sure. Elsewhere nothing: the uid is shared.
    pub(super) fn kill_the_jobs_others() -> anyhow::Result<()> {
        let Some(uid) = std::env::var(aic_core::scheduler::job_user::JOB_UID).ok().and_then(|v| v.parse::<u32>().ok())
        else {
            return Ok(());
        };
        if nix::unistd::getuid().as_raw() != uid {
            return Ok(());
        }
        let me = std::process::id() as i32;
        // Living processes of the uid but this one (a zombie's `/proc` stays until it is reaped;
        // its state says).
        let others = || {
            std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { return false };
                let Ok(m) = e.metadata() else { return false };
                let zombie = std::fs::read_to_string(e.path().join("stat"))
                    .ok()
                    .and_then(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()).map(|st| st == "Z"))
                    .unwrap_or(true);
                pid != me && std::os::unix::fs::MetadataExt::uid(&m) == uid && !zombie
            })
        };
        for _ in 0..200 {
            if !others() {
                return Ok(());
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(anyhow::anyhow!("processes the requirements started survive being killed; nothing was built"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(items: serde_json::Value) -> serde_json::Value {
        serde_json::json!({ "version": "1", "install": items })
    }

    #[test]
    fn what_the_miner_has_at_the_version_asked_is_not_installed_again() {
        let r = report(serde_json::json!([
            {"metadata": {"name": "Flask", "version": "3.0.0"}, "download_info": {"url": "https://f/flask-3.0.0-py3-none-any.whl", "archive_info": {"hashes": {"sha256": "a".repeat(64)}}}},
            {"metadata": {"name": "my_pkg", "version": "1.0"}, "download_info": {"url": "file:///w/code/wheels/my_pkg-1.0-py3-none-any.whl", "archive_info": {"hash": format!("sha256={}", "b".repeat(64))}}}
        ]));
        let installed = [("flask".to_string(), "3.0.0".to_string()), ("my-pkg".to_string(), "0.9".to_string())].into();
        let pins = missing(&r, &installed).unwrap();
        assert_eq!(pins.len(), 1, "{pins:?}");
        assert_eq!((pins[0].name.as_str(), pins[0].version.as_str()), ("my_pkg", "1.0"));
        assert_eq!(pins[0].sha256, "b".repeat(64));
    }

    #[test]
    fn a_source_archive_is_built_but_an_unhashed_or_odd_archive_is_refused() {
        let sdist = report(
            serde_json::json!([{"metadata": {"name": "x", "version": "1"}, "download_info": {"url": "https://f/x-1.tar.gz", "archive_info": {"hashes": {"sha256": "a".repeat(64)}}}}]),
        );
        let pins = missing(&sdist, &Default::default()).unwrap();
        assert!(!pins[0].wheel, "{pins:?}");
        // A name that merely ends in `.whl` is a source archive to pip, and to aic.
        for url in ["https://f/dist/.whl", "https://f/x-1.tar.gz%2F.whl", "https://f/other-1-py3-none-any.whl"] {
            let r = report(
                serde_json::json!([{"metadata": {"name": "x", "version": "1"}, "download_info": {"url": url, "archive_info": {"hashes": {"sha256": "a".repeat(64)}}}}]),
            );
            assert!(
                missing(&r, &Default::default()).is_err_and(|e| e.to_string().contains("neither a wheel")),
                "{url}"
            );
        }
        let local = report(
            serde_json::json!([{"metadata": {"name": "torch", "version": "2.1.0+cpu"}, "download_info": {"url": "https://f/torch-2.1.0%2Bcpu-cp311-cp311-linux_x86_64.whl", "archive_info": {"hashes": {"sha256": "a".repeat(64)}}}}]),
        );
        assert!(missing(&local, &Default::default()).unwrap()[0].wheel);
        let unhashed = report(
            serde_json::json!([{"metadata": {"name": "y", "version": "2"}, "download_info": {"url": "https://f/y-2-py3-none-any.whl"}}]),
        );
        let e = missing(&unhashed, &Default::default()).unwrap_err().to_string();
        assert!(e.contains("y 2 comes with no SHA-256"), "{e}");
        let odd = report(
            serde_json::json!([{"metadata": {"name": "z", "version": "3"}, "download_info": {"url": "https://f/z-3.exe", "archive_info": {"hashes": {"sha256": "a".repeat(64)}}}}]),
        );
        assert!(missing(&odd, &Default::default()).is_err());
    }

    #[test]
    fn built_packages_join_the_wheels_folder_by_folder() {
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("built"), d.path().join("env"));
        for (p, body) in [
            ("env/bin/cmake", "c"),
            ("env/tf/__init__.py", "tf"),
            ("built/bin/horovodrun", "h"),
            ("built/horovod/__init__.py", "hv"),
        ] {
            std::fs::create_dir_all(d.path().join(p).parent().unwrap()).unwrap();
            std::fs::write(d.path().join(p), body).unwrap();
        }
        merge(&from, &to).unwrap();
        for (p, body) in
            [("bin/cmake", "c"), ("bin/horovodrun", "h"), ("tf/__init__.py", "tf"), ("horovod/__init__.py", "hv")]
        {
            assert_eq!(std::fs::read_to_string(to.join(p)).unwrap(), body, "{p}");
        }
    }

    #[test]
    fn a_failed_builds_own_last_line_is_the_reason() {
        let err = "  × Preparing metadata (pyproject.toml) did not run successfully.\n  │ exit code: 1\n  ╰─> [3 lines of output]\n      File \"src_backend.py\", line 3\n      SyntaxError: cannot assign to literal here\n      [end of output]\n  \n  note: This error originates from a subprocess, and is likely not a problem with pip.\nerror: metadata-generation-failed\n\n× Encountered error while generating package metadata.\n╰─> See above for output.\n\nnote: This is an issue with the package mentioned above, not pip.\n";
        assert_eq!(pip_error(err), "metadata-generation-failed: SyntaxError: cannot assign to literal here");
        let err = "ERROR: Could not find a version that satisfies the requirement nosuchpkg==1.0 (from versions: none)\nERROR: No matching distribution found for nosuchpkg==1.0\n";
        assert_eq!(pip_error(err), "ERROR: No matching distribution found for nosuchpkg==1.0");
    }

    #[test]
    fn the_digest_names_the_bytes_and_the_miners_python() {
        let pin = |sha: char| Pin {
            name: "A_b".into(),
            version: "1".into(),
            url: "u".into(),
            sha256: sha.to_string().repeat(64),
            wheel: true,
        };
        let d = digest("py3.11", &[pin('a')], None);
        assert_eq!(d.len(), 64);
        assert_eq!(d, digest("py3.11", &[Pin { name: "a-b".into(), url: "elsewhere".into(), ..pin('a') }], None));
        assert_ne!(d, digest("py3.11", &[pin('c')], None), "other bytes under the same name");
        assert_ne!(d, digest("py3.12", &[pin('a')], None), "another Python");
        // Built from source: its owner's alone, and its build variables'.
        let env = std::collections::BTreeMap::from([("HOROVOD_WITH_TENSORFLOW".to_string(), "1".to_string())]);
        let mine = digest("py3.11", &[pin('a')], Some(("0xaa", &env)));
        assert_ne!(mine, d);
        assert_ne!(mine, digest("py3.11", &[pin('a')], Some(("0xbb", &env))), "another owner's");
        assert_ne!(mine, digest("py3.11", &[pin('a')], Some(("0xaa", &Default::default()))), "other variables");
        assert_eq!(mine, digest("py3.11", &[pin('a')], Some(("0xaa", &env))));
    }
}
