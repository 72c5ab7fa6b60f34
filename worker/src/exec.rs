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

/// Where a command run through the scheduler's exec API (`in-job`) finds the program's
/// environment and folder: written by the worker when the program starts.
const EXEC_ENV: &str = "exec-env.json";

/// Writes what `in-job` gives a command: the program's folder and environment (no store
/// access: the worker's own is never in it).
pub(crate) fn publish(work: &std::path::Path, cwd: &std::path::Path, env: &BTreeMap<String, String>) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let body = json!({ "cwd": cwd, "env": env });
    // The job's user's alone (its secrets are in it).
    let path = work.join(EXEC_ENV);
    let _ = std::fs::remove_file(&path);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(body.to_string().as_bytes()));
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot publish the program's environment for exec");
    }
}

/// `aic-worker in-job -- CMD…`: runs CMD (a login shell when none) as the job's program runs,
/// in its folder with its environment, without the worker's store access: what a command
/// started through the scheduler's exec API (Nomad's, in the worker's task) runs under.
pub(crate) fn in_job(args: &[String]) -> ! {
    use std::os::unix::process::CommandExt;
    let fail = |code: i32, why: String| -> ! {
        eprintln!("aic: {why}");
        std::process::exit(code)
    };
    let argv: Vec<String> = args.iter().skip_while(|a| *a != "--").skip(1).cloned().collect();
    let Some(work) = std::env::var_os(aic_core::scheduler::launch::WORK_DIR) else {
        fail(125, "AIC_WORK_DIR is not set: in-job runs inside an allocation's task".into())
    };
    // Nomad runs exec commands as the task's user (the container's root): as the program's,
    // before anything of the job's is read (its folder is the job's to change).
    if let Some(uid) = std::env::var(aic_core::scheduler::job_user::JOB_UID).ok().and_then(|v| v.parse::<u32>().ok())
        && let Err(e) = aic_core::scheduler::job_user::become_job_user(uid, None)
    {
        fail(125, format!("cannot become the job's user (uid {uid}): {e}"))
    }
    // A regular file of at most 1 MiB, never followed through a link.
    let spec: Value = match crate::alloc::read_jobs_file(&std::path::Path::new(&work).join(EXEC_ENV), 1 << 20) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => fail(125, "the job's program has not started in this allocation yet; try again in a moment".into()),
    };
    let argv = if argv.is_empty() {
        let shell = if std::path::Path::new("/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
        vec![shell.to_string(), "-i".to_string()]
    } else {
        argv
    };
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    for k in crate::confine::STORE_ACCESS {
        cmd.env_remove(k);
    }
    for (k, v) in spec["env"].as_object().into_iter().flatten() {
        cmd.env(k, v.as_str().unwrap_or_default());
    }
    if let Some(cwd) = spec["cwd"].as_str() {
        cmd.current_dir(cwd);
    }
    let e = cmd.exec();
    fail(127, format!("cannot run {}: {e}", argv[0]))
}

/// How often output is posted while a command runs, and the most read at once: a frame of
/// 24 KiB is 32 KiB in base64, well under the gateway's 64 KiB body limit.
const EVERY: Duration = Duration::from_millis(100);
const CHUNK: usize = 24 * 1024;
/// The most frame text (base64) one post carries: several posts when there is more.
const POST_BYTES: usize = 40 * 1024;

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
        tracing::info!(%session, ?argv, tty = !v["tty"].is_null(), "running an exec command");
        if v["tty"].is_null() {
            let stdin = if v["stream"] == true { Input::Stream } else { Input::Once(stdin) };
            tokio::spawn(run_one(gw.clone(), session, argv, stdin, cwd.clone(), env.clone()));
        } else {
            let size = (v["tty"]["rows"].as_u64().unwrap_or(24) as u16, v["tty"]["cols"].as_u64().unwrap_or(80) as u16);
            tokio::spawn(run_tty(gw.clone(), session, argv, size, cwd.clone(), env.clone()));
        }
    }
}

/// Posts a session's output, in as many posts as keep each under the gateway's body limit
/// (one frame over it was refused whole, and the output and exit code with it), the exit code
/// with the last. Each post is tried again while the gateway asks to wait (429: its owner has
/// not read the output yet) or does not answer, for as long as a session is kept (10 min).
async fn post(gw: &Gateway, session: &str, frames: &[Value], exit: Option<i32>) {
    let mut batches: Vec<Vec<Value>> = vec![vec![]];
    let mut size = 0;
    for f in frames {
        let n = f["d"].as_str().map_or(0, str::len);
        if size + n > POST_BYTES && !batches.last().is_some_and(Vec::is_empty) {
            batches.push(vec![]);
            size = 0;
        }
        size += n;
        batches.last_mut().expect("one batch at least").push(f.clone());
    }
    let last = batches.len() - 1;
    let until = tokio::time::Instant::now() + Duration::from_secs(600);
    for (i, batch) in batches.into_iter().enumerate() {
        let body = json!({ "frames": batch, "exit": if i == last { exit } else { None } });
        let mut wait = Duration::from_millis(100);
        loop {
            match gw.call(reqwest::Method::POST, &format!("worker/exec/{session}"), Some(body.clone())).await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() < until && !e.to_string().contains("no exec session") => {
                    tracing::debug!(%session, error = %e, "could not post exec output; again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::warn!(%session, error = %e, "exec output given up");
                    return;
                }
            }
        }
    }
}

fn frame(stream: &str, bytes: &[u8]) -> Value {
    json!({ "s": stream, "d": base64::engine::general_purpose::STANDARD.encode(bytes) })
}

/// What a command without a terminal reads: bytes sent with it, or a stream of input frames.
enum Input {
    Once(Vec<u8>),
    Stream,
}

/// The owner's next input frames for a session (long-polled); `None` once it has ended.
async fn next_input(gw: &Gateway, session: &str, next: &mut u64) -> Option<Vec<Value>> {
    loop {
        let path = format!("worker/exec/{session}/input?after={next}");
        match gw.call(reqwest::Method::GET, &path, None).await {
            Ok(v) => {
                let frames: Vec<Value> = v["frames"].as_array().cloned().unwrap_or_default();
                *next = v["next"].as_u64().unwrap_or(*next);
                if frames.is_empty() && v["ended"] == true {
                    return None;
                }
                return Some(frames);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Feeds a session's input frames to `to` until an `eof` frame or the session's end.
async fn pump_input(gw: Arc<Gateway>, session: String, mut to: impl tokio::io::AsyncWrite + Unpin) {
    let mut next = 0u64;
    while let Some(frames) = next_input(&gw, &session, &mut next).await {
        for f in frames {
            if f["eof"] == true {
                return;
            }
            if let Some(d) = f["d"].as_str()
                && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(d)
                && (to.write_all(&bytes).await.is_err() || to.flush().await.is_err())
            {
                return;
            }
        }
    }
}

async fn run_one(
    gw: Arc<Gateway>,
    session: String,
    argv: Vec<String>,
    stdin: Input,
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
    let input = child.stdin.take().map(|mut i| match stdin {
        Input::Once(bytes) => tokio::spawn(async move {
            let _ = i.write_all(&bytes).await;
        }),
        Input::Stream => tokio::spawn(pump_input(gw.clone(), session.clone(), i)),
    });
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
    if let Some(t) = input {
        t.abort();
    }
}

/// Sets the terminal size of the pty whose master is `fd`.
fn resize(fd: &std::os::fd::OwnedFd, rows: u16, cols: u16) {
    use std::os::fd::AsRawFd;
    let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives across the call.
    unsafe {
        nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws as *const nix::pty::Winsize);
    }
}

/// `aic shell` (and `aic exec` with a terminal): the command (a login shell when none is
/// named) on a pseudo-terminal of its own, so that it sees a terminal, its size follows the
/// owner's, and a Ctrl-C typed there reaches its foreground process, not `aic`.
async fn run_tty(
    gw: Arc<Gateway>,
    session: String,
    argv: Vec<String>,
    (rows, cols): (u16, u16),
    cwd: PathBuf,
    env: BTreeMap<String, String>,
) {
    use std::os::unix::process::CommandExt;
    let argv = if argv.is_empty() {
        let shell = if std::path::Path::new("/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
        vec![shell.to_string(), "-i".to_string()]
    } else {
        argv
    };
    let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = match nix::pty::openpty(&ws, None) {
        Ok(p) => p,
        Err(e) => {
            let why = format!("aic shell: no terminal for the command on this miner: {e}\n");
            post(&gw, &session, &[frame("e", why.as_bytes())], Some(126)).await;
            return;
        }
    };
    let slave = |p: &nix::pty::OpenptyResult| p.slave.try_clone().map(Stdio::from);
    let (Ok(i), Ok(o), Ok(e)) = (slave(&pty), slave(&pty), slave(&pty)) else { return };
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).current_dir(&cwd).envs(&env).env("TERM", "xterm-256color").stdin(i).stdout(o).stderr(e);
    // SAFETY: between fork and exec only async-signal-safe calls: a new session, whose
    // controlling terminal is the pty (its stdin).
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let why = format!("aic shell: cannot run {} in the allocation: {e}\n", argv[0]);
            post(&gw, &session, &[frame("e", why.as_bytes())], Some(127)).await;
            return;
        }
    };
    // No terminal end of the pty stays open here (the command holds its own): the master
    // then reads EOF when the command exits.
    drop(cmd);
    drop(pty.slave);
    let master = pty.master;
    // The terminal's output, read by a thread (the pty is a blocking descriptor).
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let mut reader = std::fs::File::from(match master.try_clone() {
        Ok(m) => m,
        Err(_) => return,
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
            if n == 0 || tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // The owner's keystrokes and resizes.
    let input = {
        let (gw, session) = (gw.clone(), session.clone());
        let mut writer = match master.try_clone() {
            Ok(m) => std::fs::File::from(m),
            Err(_) => return,
        };
        let master = master.try_clone().ok();
        tokio::spawn(async move {
            let mut next = 0u64;
            while let Some(frames) = next_input(&gw, &session, &mut next).await {
                for f in frames {
                    if let Some(d) = f["d"].as_str()
                        && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(d)
                    {
                        let _ = std::io::Write::write_all(&mut writer, &bytes);
                    } else if let (Some(r), Some(c), Some(m)) = (f["rows"].as_u64(), f["cols"].as_u64(), &master) {
                        resize(m, r as u16, c as u16);
                    }
                }
            }
        })
    };
    let waited = tokio::task::spawn_blocking(move || child.wait());
    let mut pending: Vec<Value> = Vec::new();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(bytes) => pending.push(frame("o", &bytes)),
                None => break,
            },
            _ = tick.tick() => {
                if !pending.is_empty() {
                    post(&gw, &session, &std::mem::take(&mut pending), None).await;
                }
            }
        }
    }
    let code = match waited.await {
        Ok(Ok(st)) => {
            st.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0))
        }
        _ => 1,
    };
    post(&gw, &session, &pending, Some(code)).await;
    input.abort();
}
