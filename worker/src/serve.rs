//! Serve mode: a deployed project (`app.py` exposing a WSGI `app`, e.g. Flask, or an ASGI
//! one, e.g. FastAPI: `asgi`; an optional `requirements.txt`; model files) runs under uWSGI
//! or uvicorn on the allocation's port until the job ends (cancelled, `aic deploy rm`) or its
//! hours are up. Below, uWSGI's path; uvicorn's is the same with its own command.
//!
//! 1. Requirements: prepared before (`pyenv`, as for a training job: cached on the miner,
//!    shared by the replicas and jobs that ask for the same), on uWSGI's `--pythonpath`.
//! 2. `uwsgi --http HOST:PORT --http-keepalive --socket <work>/uwsgi.sock --wsgi-file app.py
//!    --callable app --master …` (its HTTP router in front of `--workers` processes ×
//!    `--threads` threads, 2 × 2 unless the deployment says), its log
//!    shipped like a training job's (`aic deploy logs`).
//! 3. Health: an HTTP request to `/` answered below 500 (three misses in a row make a
//!    registered replica unhealthy, so one slow answer under load does not). Healthy → the registration
//!    `pool/serving/<deployment>/<alloc>.json` (host, port, heartbeat, TTL), rewritten every
//!    [`HEARTBEAT`]; the gateway routes to live registrations only.
//! 4. uWSGI dying is noticed at once: the registration goes, uWSGI starts again (at most
//!    [`RESTARTS`] times, then the job fails with the log tail). On stop the registration is
//!    deleted first, then uWSGI gets SIGTERM. A worker that dies however it dies takes uWSGI
//!    with it (a parent-death SIGKILL to the master; `--no-orphans` for its workers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aic_schemas::{AppServer, JobRequest, JobState, ServingRegistration, StatusDetail};
use anyhow::{Context, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::alloc::Alloc;
use crate::report::job_ended;
use crate::supervise::{pump, signal};

pub const HEARTBEAT: Duration = Duration::from_secs(5);
pub const TTL_SECONDS: u32 = 20;
pub const RESTARTS: u32 = 3;
/// How long a replica taken out of the gateway keeps answering before its app stops: twice
/// the gateway's cache of registrations (`aic_functions::proxy::REFRESH`, 1 s), within the
/// local scheduler's 5 s and Nomad's 30 s kill grace.
const DRAIN: Duration = Duration::from_secs(2);
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// The port the app listens on: `AIC_SERVE_PORT` (Nomad's `http` port, the one its service
/// advertises), else the allocation's port.
fn serve_port(a: &Alloc) -> u16 {
    std::env::var(aic_core::scheduler::launch::SERVE_PORT).ok().and_then(|p| p.parse().ok()).unwrap_or(a.port)
}

/// `GET /` on the app (with a private replica's guard); `true` when it answers below 500.
pub async fn healthy(host: &str, port: u16, guard: Option<&str>) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let guard = guard.map(|g| format!("X-Aic-Replica: {g}\r\n")).unwrap_or_default();
        s.write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: aic-worker\r\n{guard}\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let line = String::from_utf8_lossy(&buf[..n]).to_string();
        let code: u16 = line.split(' ').nth(1)?.parse().ok()?;
        Some(code < 500)
    };
    tokio::time::timeout(Duration::from_secs(3), probe).await.ok().flatten().unwrap_or(false)
}

/// Whether every socket listening on `port` (in this network namespace) is held by process
/// `pid` or one of its children (uWSGI's master binds the app's port; its HTTP router
/// inherits it). A probe answered on the port proves nothing when another process took it
/// first — another job's program on the same miner or node, which would then get the
/// deployment's traffic: such a replica is never registered.
pub fn listener_is_ours(pid: i32, port: u16) -> bool {
    let mut listening = vec![];
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // `local_address` is `<hex address>:<hex port>`; `st` 0A is LISTEN; then the inode.
            let local_port =
                cols.get(1).and_then(|l| l.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            if cols.len() > 9 && cols[3] == "0A" && local_port == Some(port) {
                listening.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if listening.is_empty() {
        return false;
    }
    let mut pids = vec![pid];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid =
            stat.rsplit(')').next().and_then(|s| s.split_whitespace().nth(1)).and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            pids.push(p);
        }
    }
    let held: std::collections::HashSet<String> = pids
        .iter()
        .flat_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).into_iter().flatten().flatten())
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    listening.iter().all(|s| held.contains(s))
}

/// Where the replica's uWSGI workers take requests from its router: a socket in the
/// allocation's folder or, where that path is too long for a socket's address (108 bytes),
/// in a folder of its own under the temporary directory that only this user may enter
/// (kept as long as the returned guard). Never the abstract namespace: that has no
/// permissions, so any program in the miner's network namespace (another user's job) could
/// speak uwsgi to the workers, and a uwsgi request naming `UWSGI_FILE` makes uWSGI load that
/// file as an app, inside this replica.
fn worker_socket(work: &Path) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    let path = work.join("uwsgi.sock");
    if path.as_os_str().len() < 100 {
        return Ok((path, None));
    }
    let dir = tempfile::Builder::new()
        .prefix("aic-uwsgi-")
        .tempdir()
        .context("cannot make a folder for the replica's uWSGI socket")?;
    // tempfile makes it 0700 on Unix; said here because the socket's safety rests on it.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    Ok((dir.path().join("uwsgi.sock"), Some(dir)))
}

fn uwsgi_cmd(
    a: &Alloc,
    socket: &Path,
    req: &JobRequest,
    code: &Path,
    pydeps: Option<&Path>,
    (workers, threads): (u32, u32),
    guard: Option<&Path>,
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("uwsgi");
    // uWSGI's HTTP router takes the clients' connections (evented: idle keep-alive clients
    // cost it a socket, not a worker) and hands each request to a free worker over a local
    // socket. With the workers speaking HTTP themselves (`--http11-socket`), each idle
    // keep-alive connection held one of the 4 workers until its 4 s timeout: 4 idle clients
    // stopped the replica.
    c.arg("--http")
        .arg(format!("{}:{}", a.host, serve_port(a)))
        .args(["--http-keepalive", "--http-auto-chunked", "--socket"])
        .arg(socket)
        .arg("--wsgi-file");
    // A private replica's guard in front of the app (`aic_guard.py`).
    match guard {
        Some(g) => c.arg(g).args(["--callable", "application"]),
        None => c.arg(code.join(&req.entrypoint)).args(["--callable", "app"]),
    };
    c.args(["--master", "--processes"])
        .arg(workers.to_string())
        .arg("--threads")
        .arg(threads.to_string())
        .args(["--need-app", "--die-on-term"])
        .args(["--lazy-apps", "--no-orphans", "--hook-master-start", "unix_signal:15 gracefully_kill_them_all"])
        .arg("--chdir")
        .arg(code);
    if let Some(d) = pydeps {
        c.arg("--pythonpath").arg(d);
    }
    c
}

/// The app server's command made a replica's: the app's environment, its output piped, its
/// own process group, killed with the worker.
fn supervised(mut c: tokio::process::Command, code: &Path, env: &BTreeMap<String, String>) -> tokio::process::Command {
    c.envs(env).current_dir(code).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    // Its own process group, so that stopping it reaches its workers; and SIGKILL to its
    // master when this worker dies, however it dies (its workers and router follow the
    // master): a worker killed outright (its group SIGKILLed by the scheduler when its miner
    // is lost) left uWSGI serving, orphaned, on its port. Not SIGTERM: uWSGI's graceful stop
    // then waited for ever on a worker spinning after its log pipe went with this worker.
    c.process_group(0);
    // SAFETY: one system call between fork and exec. (The death signal follows the forking
    // thread: this runtime's worker threads live as long as the process.)
    unsafe {
        c.pre_exec(|| nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from));
    }
    c
}

/// Runs the allocation as a replica of a deployment (its environment prepared, `pydeps`; its
/// log's sender and shipper started); returns the worker's exit code.
pub async fn run(
    a: &Alloc,
    req: &JobRequest,
    code: &Path,
    env: BTreeMap<String, String>,
    pydeps: Option<PathBuf>,
    tx: mpsc::Sender<String>,
    shipper: tokio::task::JoinHandle<Vec<String>>,
) -> anyhow::Result<i32> {
    let opts = req.serving.clone().unwrap_or_default();
    let chosen = async {
        if !code.join(&req.entrypoint).is_file() {
            return Err(anyhow!(
                "the project has no {}; a deployment needs an app.py exposing a WSGI or ASGI `app`",
                req.entrypoint
            ));
        }
        let server = crate::asgi::server(a, opts.server, code, &req.entrypoint, pydeps.as_deref(), &env).await?;
        match server {
            AppServer::Wsgi => {
                crate::launcher::require("uwsgi", &a.miner, "install uWSGI on the miners (pip install uwsgi)")
                    .map_err(|e| anyhow!(e))?
            }
            AppServer::Asgi => crate::asgi::require_uvicorn(&a.miner).await.map_err(|e| anyhow!(e))?,
        }
        Ok(server)
    };
    let server = match chosen.await {
        Ok(s) => s,
        Err(e) => {
            drop(tx);
            let _ = shipper.await;
            return Err(e);
        }
    };
    let workers = opts.workers.unwrap_or(aic_schemas::serving::DEFAULT_WORKERS);
    let threads = opts.threads.unwrap_or(aic_schemas::serving::DEFAULT_THREADS);
    let processes = format!("{workers} process{}", if workers == 1 { "" } else { "es" });
    let (name, what, shape) = match server {
        AppServer::Wsgi => ("uWSGI", "a WSGI app", format!("{processes} × {}", aic_core::plural(threads, "thread"))),
        AppServer::Asgi => ("uvicorn", "an ASGI app", processes),
    };
    let _ = tx.send(format!("[aic] {what} under {name}: {shape}")).await;
    // `aic exec` and `aic shell` reach the replica too, with the app's environment.
    let exec =
        a.gateway.clone().map(|gw| tokio::spawn(crate::exec::serve(gw, a.index, code.to_path_buf(), env.clone())));
    crate::exec::publish(&a.work, code, &env);
    let _stop_exec = StopOnDrop(exec);
    let deployment = a.job.job.to_string();
    let key = aic_core::layout::serving_registration(&deployment, &a.index.to_string());
    // The deployment's end: the scheduler's (from the run's first start) where it says, so a
    // worker restarted (its app killed it) does not start its hours anew; never later than
    // this worker's own start + the paid hours.
    let mut deadline = Instant::now() + Duration::from_secs_f64(req.max_hours * 3600.0);
    if let Some(until) = a.serve_until {
        let left = (until - chrono::Utc::now().timestamp()).max(0) as u64;
        deadline = deadline.min(Instant::now() + Duration::from_secs(left));
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut restarts = 0;
    let (socket, _socket_dir) = worker_socket(&a.work)?;
    // A private deployment's replica answers the gateway alone: a secret of this start's, in
    // its registration, checked by a guard in front of the app.
    let guard = match opts.private {
        true => Some(aic_core::deploykeys::random_hex(32)?),
        false => None,
    };
    let guard_file = a.work.join("aic_guard.py");
    let mut env = env;
    if let Some(g) = &guard {
        std::fs::write(&guard_file, include_str!("aic_guard.py"))?;
        let (dir, module) = crate::asgi::module_of(code, &req.entrypoint)?;
        env.insert("AIC_REPLICA_GUARD".into(), g.clone());
        env.insert("AIC_APP_SERVER".into(), server.to_string());
        env.insert("AIC_APP_FILE".into(), code.join(&req.entrypoint).to_string_lossy().into_owned());
        env.insert("AIC_APP_DIR".into(), dir.to_string_lossy().into_owned());
        env.insert("AIC_APP_MODULE".into(), module);
    }
    let guarded = guard.as_ref().map(|_| guard_file.as_path());
    let ended = 'replica: loop {
        let cmd = match server {
            AppServer::Wsgi => uwsgi_cmd(a, &socket, req, code, pydeps.as_deref(), (workers, threads), guarded),
            AppServer::Asgi => crate::asgi::uvicorn_cmd(
                &a.host,
                serve_port(a),
                workers,
                code,
                &req.entrypoint,
                pydeps.as_deref(),
                guarded,
            )?,
        };
        let mut child =
            supervised(cmd, code, &env).spawn().map_err(|e| anyhow!("cannot start {name} on {}: {e}", a.miner))?;
        let pid = child.id().unwrap_or_default() as i32;
        let pumps = [
            tokio::spawn(pump(
                child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
                tx.clone(),
                false,
            )),
            tokio::spawn(pump(
                child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
                tx.clone(),
                false,
            )),
        ];
        let started = chrono::Utc::now();
        let up_by = Instant::now() + HEALTHY_WITHIN;
        let mut registered = false;
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        let mut last_beat = Instant::now() - HEARTBEAT;
        // A replica busy with requests may miss one check: unhealthy after 3 misses in a row.
        let mut misses = 0u32;
        let stop_reason: Option<&str> = loop {
            tokio::select! {
                st = child.wait() => {
                    let st = st?;
                    if registered {
                        let _ = a.store.delete(&key).await;
                    }
                    for p in pumps { let _ = p.await; }
                    restarts += 1;
                    let _ = tx.send(format!("[aic] {name} exited ({st}) on {}", a.miner)).await;
                    if restarts > RESTARTS {
                        break 'replica Err(anyhow!("{name} kept exiting on {} ({st}); {RESTARTS} restarts used", a.miner));
                    }
                    continue 'replica;
                }
                _ = sigterm.recv() => {
                    if !crate::stop::by_scheduler() {
                        tracing::warn!(from = crate::stop::sender(), "a SIGTERM from inside the deployment ignored: only its scheduler stops the worker");
                        continue;
                    }
                    break Some("stop requested");
                }
                _ = beat.tick() => {
                    if Instant::now() >= deadline {
                        break Some("its hours are up");
                    }
                    if job_ended(a).await {
                        break Some("the deployment was removed");
                    }
                    let due = if registered { last_beat.elapsed() >= HEARTBEAT } else { true };
                    if due {
                        let answered = healthy(&a.host, serve_port(a), guard.as_deref()).await
                            && listener_is_ours(pid, serve_port(a));
                        misses = if answered { 0 } else { misses + 1 };
                        let ok = answered || (registered && misses < 3);
                        if ok || registered {
                            let now = chrono::Utc::now();
                            let reg = ServingRegistration {
                                deployment: deployment.clone(),
                                job_id: a.job.job.clone(),
                                alloc: a.index,
                                host: a.host.clone(),
                                port: serve_port(a),
                                healthy: ok,
                                started_at: started,
                                heartbeat_at: now,
                                ttl_seconds: TTL_SECONDS,
                                guard: guard.clone(),
                            };
                            if let Err(e) = a.store.put_json(&key, &reg).await {
                                tracing::warn!(error = %e, "could not write the registration; will retry");
                            } else {
                                if !registered {
                                    let _ = tx.send(format!("[aic] serving on http://{}:{} (replica {})", a.host, serve_port(a), a.index)).await;
                                }
                                registered = true;
                                last_beat = Instant::now();
                            }
                        } else if Instant::now() > up_by {
                            break 'replica Err(anyhow!("the app did not answer on {}:{} within {} s", a.host, serve_port(a), HEALTHY_WITHIN.as_secs()));
                        }
                    }
                }
            }
        };
        // Out of the gateway first, then stop the app: the gateway reads registrations (and a
        // name's deployments) again within a second, and meanwhile still sends requests here,
        // which must be answered (one that reached a replica is not sent to another unless
        // repeating it is harmless).
        let _ = a.store.delete(&key).await;
        if registered {
            tokio::time::sleep(DRAIN).await;
        }
        signal(pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait().await;
        }
        for p in pumps {
            let _ = p.await;
        }
        break Ok(stop_reason.unwrap_or("stopped"));
    };
    drop(tx);
    let tail = shipper.await.unwrap_or_default();
    match ended {
        Ok(why) => {
            // Any replica (an autoscaled deployment's first one may be long gone); the first
            // to say it wins, the others find it said.
            if why == "its hours are up" {
                let t = a
                    .transition(JobState::Succeeded)
                    .reason(format!("served for {} h", req.max_hours))
                    .detail(StatusDetail { exit_code: Some(0), ..Default::default() });
                a.advance(t).await?;
            }
            tracing::info!(why, "replica stopped");
            Ok(0)
        }
        Err(e) => {
            let t = a
                .transition(JobState::Failed)
                .reason(format!("replica {} on {}: {e:#}", a.index, a.miner))
                .detail(StatusDetail { alloc: Some(a.index), log_tail: Some(tail.join("\n")), ..Default::default() });
            a.advance(t).await?;
            Ok(1)
        }
    }
}

/// Stops a task when dropped (the replica's exec sessions with the replica).
struct StopOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    /// The app's port counts as the replica's only when the process that listens on it is
    /// the replica's own (another job's program that took the port answers probes just as
    /// well: it was registered, and got the deployment's traffic).
    #[test]
    fn a_port_another_process_listens_on_is_not_the_replicas() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(!listener_is_ours(std::process::id() as i32, port), "nobody listens yet");
        // A process that is not this one's child: `sh` runs it (and waits), as a worker runs
        // uWSGI whose router holds the socket.
        use std::os::unix::process::CommandExt;
        let mut app = std::process::Command::new("sh")
            .args(["-c", &format!("python3 -c \"import socket,time; s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen(); print('up',flush=True); time.sleep(60)\"; :")])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(app.stdout.as_mut().unwrap()), &mut line).unwrap();
        assert_eq!(line, "up\n");
        assert!(listener_is_ours(app.id() as i32, port), "the listening process (the shell's child) holds its socket");
        assert!(!listener_is_ours(std::process::id() as i32, port), "another process's listener was taken for ours");
        let _ =
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(app.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let _ = app.wait();
    }

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_workers_socket_is_never_abstract_and_only_its_user_may_reach_it() {
        let short = tempfile::tempdir().unwrap();
        let (path, guard) = worker_socket(short.path()).unwrap();
        assert_eq!((path, guard.is_none()), (short.path().join("uwsgi.sock"), true));

        let long = short.path().join("a".repeat(120));
        let (path, guard) = worker_socket(&long).unwrap();
        let s = path.to_str().unwrap();
        assert!(!s.starts_with('@') && s.len() < 100, "{s}");
        let dir = path.parent().unwrap();
        assert_eq!(std::fs::metadata(dir).unwrap().permissions().mode() & 0o777, 0o700);
        // uWSGI can bind there: a Unix socket's address takes the path.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(listener);
        drop(guard);
        assert!(!dir.exists(), "the folder goes with the replica");
    }
}
