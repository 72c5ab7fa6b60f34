//! Which server a deployment's app runs under, and the ASGI one's command.
//!
//! A WSGI `app` (Flask, Django) runs under uWSGI (`serve`); an ASGI `app` (FastAPI,
//! Starlette) under uvicorn: FastAPI's and Starlette's own recommendation, pure Python (it
//! installs with pip wherever uWSGI does, with no compiler), a process manager of its own
//! (`--workers`, which restarts a worker that dies), a graceful stop on SIGTERM, and
//! streaming answers and request bodies as they come. (Granian is faster per core but a
//! native build per platform, and its workers do not restart on their own.)
//!
//! Told by the deployment (`--server`), else from the app: its imports when they name a
//! framework, else by importing it and asking whether `app` is called as a coroutine (an
//! ASGI app's `__call__(scope, receive, send)` is `async`; a WSGI app's is not).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use aic_schemas::AppServer;
use anyhow::{Context, anyhow};

use crate::alloc::Alloc;

/// The Python the app and its requirements run on (the one `pyenv` prepared them for).
pub fn python() -> String {
    std::env::var("AIC_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Frameworks told from their import alone.
const ASGI: [&str; 6] = ["fastapi", "starlette", "quart", "litestar", "sanic", "django.core.asgi"];
const WSGI: [&str; 3] = ["flask", "bottle", "django.core.wsgi"];

/// What `source` (an app's Python file) imports: `asgi`, `wsgi`, or nothing said.
pub fn by_imports(source: &str) -> Option<AppServer> {
    let imported = |m: &str| {
        source.lines().map(str::trim_start).any(|l| {
            let rest = l.strip_prefix("from ").or_else(|| l.strip_prefix("import "));
            rest.is_some_and(|r| {
                let name = r.split([' ', ',', '.']).next().unwrap_or_default();
                let full = r.split([' ', ',']).next().unwrap_or_default();
                name == m || full == m
            })
        })
    };
    // An app may import both (Flask beside a Starlette helper): then it is asked.
    let asgi = ASGI.iter().any(|m| imported(m));
    let wsgi = WSGI.iter().any(|m| imported(m));
    match (asgi, wsgi) {
        (true, false) => Some(AppServer::Asgi),
        (false, true) => Some(AppServer::Wsgi),
        _ => None,
    }
}

/// Imports the app (`module` in `dir`, requirements on `pydeps`) and writes what its `app`
/// is to the file named third (whatever the app prints while imported goes elsewhere).
const ASK: &str = r#"
import importlib, inspect, sys
sys.path.insert(0, sys.argv[1])
app = getattr(importlib.import_module(sys.argv[2]), "app", None)
if app is None:
    kind = "none"
else:
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(type(app), "__call__", None)
    kind = "asgi" if inspect.iscoroutinefunction(call) else "wsgi"
with open(sys.argv[3], "w") as f:
    f.write(kind)
"#;

/// The most of the import's error output kept (its last line is the reason).
const ERR_KEPT: usize = 64 * 1024;

/// The server the deployment's app runs under.
pub async fn server(
    a: &Alloc,
    asked: Option<AppServer>,
    code: &Path,
    entrypoint: &str,
    pydeps: Option<&Path>,
    env: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<AppServer> {
    if let Some(s) = asked {
        return Ok(s);
    }
    let file = code.join(entrypoint);
    if let Some(s) = by_imports(&std::fs::read_to_string(&file).unwrap_or_default()) {
        return Ok(s);
    }
    let (dir, module) = module_of(code, entrypoint)?;
    let verdict = a.work.join(".aic-app-kind");
    let _ = std::fs::remove_file(&verdict);
    let mut c = tokio::process::Command::new(python());
    c.args(["-c", ASK]).arg(&dir).arg(&module).arg(&verdict).envs(env).current_dir(code);
    if let Some(d) = pydeps {
        c.env("PYTHONPATH", d);
    }
    // Its own process group, so that whatever the import starts goes with it.
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true).process_group(0);
    let mut child = c.spawn().with_context(|| format!("cannot run {} on {}", python(), a.miner))?;
    let pid = child.id().unwrap_or_default() as i32;
    let mut stderr = child.stderr.take();
    let mut err = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(300), async {
        if let Some(s) = stderr.as_mut() {
            // Its last lines are the reason: the rest is read and let go.
            let mut buf = [0u8; 8192];
            while let Ok(n) = tokio::io::AsyncReadExt::read(s, &mut buf).await {
                if n == 0 {
                    break;
                }
                err.extend_from_slice(&buf[..n]);
                if err.len() > 2 * ERR_KEPT {
                    err.drain(..err.len() - ERR_KEPT);
                }
            }
        }
        child.wait().await
    })
    .await;
    if pid > 0 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    if done.is_err() {
        return Err(anyhow!(
            "importing {entrypoint} to tell a WSGI app from an ASGI one took over 5 minutes; say which with --server"
        ));
    }
    let kind = std::fs::read_to_string(&verdict).unwrap_or_default();
    let _ = std::fs::remove_file(&verdict);
    match kind.trim() {
        "asgi" => Ok(AppServer::Asgi),
        "wsgi" => Ok(AppServer::Wsgi),
        "none" => Err(anyhow!("{entrypoint} defines no `app`: a deployment serves a WSGI or ASGI `app`")),
        _ => {
            let err = String::from_utf8_lossy(&err);
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
            Err(anyhow!("importing {entrypoint} failed: {last}"))
        }
    }
}

/// The folder and module name of the app's file (`src/api.py` → (`<code>/src`, `api`)).
pub fn module_of(code: &Path, entrypoint: &str) -> anyhow::Result<(std::path::PathBuf, String)> {
    let path = Path::new(entrypoint);
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let is_ident = !stem.is_empty()
        && !stem.starts_with(|c: char| c.is_ascii_digit())
        && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if path.extension().and_then(|e| e.to_str()) != Some("py") || !is_ident {
        return Err(anyhow!(
            "{entrypoint} is not a Python module's file (name.py, the name a Python identifier): an ASGI app is imported by its module"
        ));
    }
    Ok((code.join(path.parent().unwrap_or(Path::new(""))), stem.to_string()))
}

/// uvicorn on `host:port`, `workers` processes, the app's module imported from its folder.
pub fn uvicorn_cmd(
    host: &str,
    port: u16,
    workers: u32,
    code: &Path,
    entrypoint: &str,
    pydeps: Option<&Path>,
    guard: Option<&Path>,
) -> anyhow::Result<tokio::process::Command> {
    let (dir, module) = module_of(code, entrypoint)?;
    // A private replica's guard in front of the app: it imports the app itself.
    let (dir, target) = match guard {
        Some(g) => (g.parent().unwrap_or(Path::new("/")).to_path_buf(), "aic_guard:asgi_app".to_string()),
        None => (dir, format!("{module}:app")),
    };
    let mut c = tokio::process::Command::new(python());
    c.args(["-m", "uvicorn", "--host", host, "--port"])
        .arg(port.to_string())
        .arg("--workers")
        .arg(workers.to_string())
        .arg("--app-dir")
        .arg(dir)
        // Requests still in flight get 10 s once stopped (the worker waits 10 s, then kills).
        .args(["--timeout-graceful-shutdown", "8", "--no-server-header"])
        .arg(target);
    if let Some(d) = pydeps {
        c.env("PYTHONPATH", d);
    }
    Ok(c)
}

/// Whether uvicorn is there for the app's Python.
pub async fn require_uvicorn(miner: &str) -> Result<(), String> {
    let ok = tokio::process::Command::new(python())
        .args(["-c", "import uvicorn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if ok {
        return Ok(());
    }
    Err(format!(
        "uvicorn is not installed for {} on {miner}: install it on the miners (pip install uvicorn), or add uvicorn to the project's requirements.txt",
        python()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apps_framework_is_told_from_its_imports_and_an_unclear_one_is_asked() {
        assert_eq!(by_imports("from fastapi import FastAPI\napp = FastAPI()\n"), Some(AppServer::Asgi));
        assert_eq!(by_imports("import starlette.applications\n"), Some(AppServer::Asgi));
        assert_eq!(by_imports("from flask import Flask, Response\n"), Some(AppServer::Wsgi));
        assert_eq!(by_imports("from django.core.asgi import get_asgi_application\n"), Some(AppServer::Asgi));
        // A name that only starts like a framework's, a mention in a comment, both kinds, none.
        assert_eq!(by_imports("import flasky\n# from fastapi import FastAPI\n"), None);
        assert_eq!(by_imports("from flask import Flask\nfrom starlette.responses import Response\n"), None);
        assert_eq!(by_imports("async def app(scope, receive, send): ...\n"), None);
    }

    #[test]
    fn the_apps_module_is_its_file_and_an_unimportable_name_is_refused() {
        let code = Path::new("/w/code");
        assert_eq!(module_of(code, "app.py").unwrap(), (code.join(""), "app".to_string()));
        assert_eq!(module_of(code, "src/api.py").unwrap(), (code.join("src"), "api".to_string()));
        for bad in ["my-app.py", "1app.py", "app.txt", "app"] {
            assert!(module_of(code, bad).unwrap_err().to_string().contains("not a Python module's file"), "{bad}");
        }
    }
}
