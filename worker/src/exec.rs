//! `aic exec` on the worker's side: while the program runs, one long-poll at the gateway for
//! the commands its job's owner asked this allocation to run (the gateway never dials a
//! miner); each runs beside the program — its folders, its environment, its GPUs — and its
//! output goes back in frames, then its exit code (see `aic_functions::gateway::exec`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use aic_core::remote::Gateway;
use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// How often output is posted while a command runs, and the most posted at once.
const EVERY: Duration = Duration::from_millis(100);
const CHUNK: usize = 64 * 1024;

/// Serves the allocation's exec sessions until dropped (aborted when the program ends).
pub(crate) async fn serve(gateway: (String, String), alloc: u32, cwd: PathBuf, env: BTreeMap<String, String>) {
    let gw = Arc::new(Gateway::new(&gateway.0, Some(gateway.1)));
    loop {
        let v = match gw.call(reqwest::Method::GET, &format!("worker/exec?alloc={alloc}"), None).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "exec long-poll failed; again shortly");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let Some(session) = v["session"].as_str().map(String::from) else { continue };
        let argv: Vec<String> = serde_json::from_value(v["argv"].clone()).unwrap_or_default();
        let stdin =
            base64::engine::general_purpose::STANDARD.decode(v["stdin"].as_str().unwrap_or("")).unwrap_or_default();
        tracing::info!(%session, ?argv, "running an exec command");
        tokio::spawn(run_one(gw.clone(), session, argv, stdin, cwd.clone(), env.clone()));
    }
}

async fn post(gw: &Gateway, session: &str, frames: &[Value], exit: Option<i32>) {
    let body = json!({ "frames": frames, "exit": exit });
    for _ in 0..5 {
        match gw.call(reqwest::Method::POST, &format!("worker/exec/{session}"), Some(body.clone())).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(%session, error = %e, "could not post exec output; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

fn frame(stream: &str, bytes: &[u8]) -> Value {
    json!({ "s": stream, "d": base64::engine::general_purpose::STANDARD.encode(bytes) })
}

async fn run_one(
    gw: Arc<Gateway>,
    session: String,
    argv: Vec<String>,
    stdin: Vec<u8>,
    cwd: PathBuf,
    env: BTreeMap<String, String>,
) {
    let Some((cmd, args)) = argv.split_first() else { return };
    let mut child = match tokio::process::Command::new(cmd)
        .args(args)
        .current_dir(&cwd)
        .envs(&env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let why = format!("aic exec: cannot run {cmd} in the allocation: {e}\n");
            post(&gw, &session, &[frame("e", why.as_bytes())], Some(127)).await;
            return;
        }
    };
    if let Some(mut i) = child.stdin.take() {
        tokio::spawn(async move {
            let _ = i.write_all(&stdin).await;
        });
    }
    let (tx, mut rx) = mpsc::channel::<(&'static str, Vec<u8>)>(64);
    for (name, src) in [
        ("o", child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
        ("e", child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Some(mut src) = src else { return };
            let mut buf = vec![0u8; CHUNK];
            while let Ok(n) = src.read(&mut buf).await {
                if n == 0 || tx.send((name, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut pending: Vec<Value> = Vec::new();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some((s, bytes)) => pending.push(frame(s, &bytes)),
                None => break,
            },
            _ = tick.tick() => {
                if !pending.is_empty() {
                    post(&gw, &session, &std::mem::take(&mut pending), None).await;
                }
            }
        }
    }
    let code = match child.wait().await {
        Ok(st) => st.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)),
        Err(_) => 1,
    };
    post(&gw, &session, &pending, Some(code)).await;
}
