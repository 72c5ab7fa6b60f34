//! aic-worker: runs one allocation of a job on a miner.
//!
//! Started by the scheduler (the local one, or Nomad on the pool) with the launch contract
//! (`aic_core::scheduler::launch`) and the store: `AIC_STORE` (+ S3 settings), or a
//! gateway and its job's token.
//!
//! Files: `alloc` (this allocation, from its environment), `stage` (code, data, earlier
//! outputs), `plan` (what this allocation does, by launcher), `supervise` (the program's
//! output and signals), `report` (the job's status as this allocation sees it), `logs`,
//! `outputs`, `serve` (the serve kind), `exec` (`aic exec` commands beside the program),
//! `pyenv` (the project's `requirements.txt`, prepared before the program) and `envcache` (the
//! miner's cache of them, read-only to jobs),
//! `launcher/` (one file a launcher), `confine` (what the worker takes away before the job
//! runs: the bucket's variables, rendered secrets, root), `stop` (who may stop it); this file
//! runs them in order.
//!
//! 1. Reads the manifest; the leader (allocation 0) moves the job to `running`.
//! 2. Downloads the code and the dataset, and restores earlier outputs (a restarted
//!    allocation resumes from its last checkpoint); prepares the project's environment
//!    (`requirements.txt`), a phase of its own in the job's log.
//! 3. Starts the program through the request's launcher, with `AIC_JOB_ID`,
//!    `AIC_DATA_DIR`, `AIC_OUTPUT_DIR`, `AIC_ALLOC_INDEX`, `AIC_ALLOC_COUNT` set.
//! 4. While it runs: ships its output to `logs/`, syncs `AIC_OUTPUT_DIR` to `output/`, and
//!    stops it when the job ends elsewhere (cancelled, or another allocation failed).
//! 5. At exit: a last sync, `allocs/<index>.json`, and the job's final status: `failed`
//!    with the exit code and log tail as soon as any allocation fails; `succeeded` written by
//!    the leader once every allocation has succeeded.

mod alloc;
mod asgi;
mod confine;
mod envcache;
mod exec;
mod gpuuse;
mod launcher;
mod live;
mod logs;
mod outputs;
mod plan;
mod pyenv;
mod report;
mod serve;
mod stage;
mod stop;
mod supervise;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use aic_schemas::validate::MAX_DOC_BYTES;
use aic_schemas::{AllocResult, JobKind, JobManifest, JobState, Launcher, StatusDetail};
use alloc::{Alloc, path_str, setup};
use anyhow::{Context, anyhow};
use plan::{Finish, Plan, plan, serve_peer};
use report::{finish_as_leader, job_ended, mark_running};
use supervise::{pump, signal};
use tokio::sync::mpsc;

/// How often a running allocation looks at the job's status.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How often outputs are synced while the program runs (`AIC_SYNC_SECONDS` overrides).
const SYNC_EVERY: Duration = Duration::from_secs(5);
/// How long the program gets between SIGTERM and SIGKILL when the job is stopped.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the leader waits for the other allocations to report after it finished.
const PEERS_WAIT: Duration = Duration::from_secs(3600);
/// How long an allocation waits for another to come up (rendezvous).
const PEERS_UP: Duration = Duration::from_secs(300);

fn main() {
    // `aic-worker in-job -- CMD…`: a command the job's owner runs in the allocation through
    // the scheduler's exec API (Nomad's), not an allocation's worker.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("in-job") {
        exec::in_job(&args[2..]);
    }
    // `aic-worker env-keeper`: the root side of the miner's environment cache (`envcache`).
    if args.get(1).map(String::as_str) == Some("env-keeper") {
        envcache::keep();
    }
    // The job's program runs as this worker's user: it may not read the worker's memory or
    // its environment (`/proc/<worker>/environ` keeps the variables it was started with) nor
    // trace it. A non-dumpable process is open to that only with CAP_SYS_PTRACE, which
    // containers do not grant by default.
    EXIT_FILE.get_or_init(|| std::env::var_os(aic_core::scheduler::local::EXIT_FILE).map(Into::into));
    // The local scheduler holds its workers here until it has recorded them: a line on stdin
    // says go; end of file means its host died first, and nothing is run.
    if std::env::var_os(aic_core::scheduler::local::START_GATE).is_some_and(|v| v == "stdin") {
        let mut go = String::new();
        if !matches!(std::io::stdin().read_line(&mut go), Ok(n) if n > 0) {
            eprintln!("aic-worker: the host that started this worker is gone; nothing was run");
            std::process::exit(0);
        }
        // Nothing it starts reads the gate.
        if let Ok(null) = std::fs::File::open("/dev/null") {
            let _ = nix::unistd::dup2_stdin(null);
        }
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("aic-worker: cannot make itself non-dumpable: {e}");
        exit(2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AIC_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let alloc = match setup() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("aic-worker: {e:#}");
            exit(2);
        }
    };
    confine::before_the_job();
    if let Err(e) = stop::watch() {
        eprintln!("aic-worker: cannot watch for its scheduler's stop: {e}");
        exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let code = rt.block_on(run_allocation(alloc));
    exit(code);
}

/// Exits with `code`, written first where the local scheduler asked (`AIC_EXIT_FILE`): a
/// host that adopted this worker after its parent died learns how it ended.
fn exit(code: i32) -> ! {
    if let Some(f) = EXIT_FILE.get().and_then(|f| f.as_ref()) {
        let _ = std::fs::write(f, format!("{code}\n"));
    }
    std::process::exit(code)
}

static EXIT_FILE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

async fn run_allocation(alloc: Alloc) -> i32 {
    // How busy its GPUs are, from the start (staging shows as idle GPUs, which it is).
    let samples = logs::Shipper::new(alloc.store.clone(), alloc.job.clone(), alloc.index, alloc.live_metrics())
        .stream(logs::Stream::Metrics);
    let gpus = alloc::visible_gpus(|k| std::env::var(k).ok());
    *alloc.sampler.lock().await = Some(gpuuse::Sampler::start(samples, alloc.index, gpus));
    let code = run_and_report(&alloc).await;
    alloc.stop_sampling().await;
    // The last lines and the last status move reach the watchers before the worker exits.
    for live in [alloc.live.get(), alloc.live_metrics.get()].into_iter().flatten().flatten() {
        live.flush(std::time::Duration::from_secs(2)).await;
    }
    code
}

async fn run_and_report(alloc: &Alloc) -> i32 {
    match run(alloc).await {
        Ok(code) => code,
        Err(e) => {
            // Anything that stopped the worker before or around the program fails the job
            // with the reason, so the user never waits on a job nobody runs.
            let reason = format!("allocation {} on {}: {e:#}", alloc.index, alloc.miner);
            eprintln!("aic-worker: {reason}");
            let t = alloc
                .transition(JobState::Failed)
                .reason(reason)
                .detail(StatusDetail { alloc: Some(alloc.index), ..Default::default() });
            let _ = alloc.advance(t).await;
            1
        }
    }
}

/// Runs the allocation; returns the worker's exit code (0 when the program succeeded).
async fn run(a: &Alloc) -> anyhow::Result<i32> {
    let manifest: JobManifest = aic_core::runs::manifest(&a.store, &a.job, a.run())
        .await?
        .ok_or_else(|| anyhow!("run {} of the job has no manifest", aic_schemas::shown_run(a.run())))?;
    let req = &manifest.request;

    // Whichever allocation starts first moves the job to `running`: a rank's program may run
    // (and its owner `aic exec` into it) before the leader's is staged.
    if !mark_running(a).await? {
        tracing::info!("the job already ended; nothing to run");
        return Ok(0);
    }

    // The owner's secrets the job names, from the pool (never in its request): into the
    // program's environment, and masked in everything its log ships.
    let secrets = secrets(a, req).await?;
    // MPI and Horovod ranks get their environment through sshd's `SetEnv`, a line each.
    if matches!(req.launcher, Launcher::Mpi | Launcher::Horovod)
        && let Some(n) = secrets.iter().find(|(_, v)| v.chars().any(char::is_control)).map(|(n, _)| n)
    {
        return Err(anyhow!(
            "secret {n} spans lines: MPI and Horovod jobs hand secrets to their ranks one line each; store it base64-encoded"
        ));
    }
    // The job's log, from staging on.
    let (tx, rx) = mpsc::channel::<String>(1024);
    let shipper = tokio::spawn(
        logs::Shipper::new(a.store.clone(), a.job.clone(), a.index, a.live())
            .masking(secrets.values().cloned())
            .run(rx),
    );
    let staged = match stage::stage(a, req, &tx).await {
        Ok(s) => s,
        Err(e) => {
            drop(tx);
            let _ = shipper.await;
            return Err(e);
        }
    };
    let (code_dir, data_dir, out_dir, out_prefix) =
        (staged.code_dir, staged.data_dir, staged.out_dir, staged.out_prefix);

    let mut env = BTreeMap::new();
    env.insert("AIC_JOB_ID".into(), a.job.job.to_string());
    env.insert("AIC_DATA_DIR".into(), path_str(&data_dir));
    env.insert("AIC_OUTPUT_DIR".into(), path_str(&out_dir));
    env.insert("AIC_ALLOC_INDEX".into(), a.index.to_string());
    env.insert("AIC_ALLOC_COUNT".into(), a.count.to_string());
    if let Some(gpus) = alloc::visible_gpus(|k| std::env::var(k).ok()) {
        env.insert("CUDA_VISIBLE_DEVICES".into(), gpus);
    }
    env.insert("AIC_CODE_DIR".into(), path_str(&code_dir));
    env.extend(secrets);
    let prepared = match pyenv::prepare(a, &code_dir, &req.env, &tx).await {
        Ok(p) => p,
        Err(e) => {
            drop(tx);
            let _ = shipper.await;
            return Err(e);
        }
    };
    if let Some(dir) = &prepared.dir {
        let own = req.env.get("PYTHONPATH").filter(|p| !p.is_empty());
        env.insert("PYTHONPATH".into(), own.map_or_else(|| path_str(dir), |p| format!("{}:{p}", path_str(dir))));
        // Its commands (a launcher the requirements installed) before the miner's.
        launcher::use_env_bin(dir);
        if !req.env.contains_key("PATH") {
            env.insert("PATH".into(), launcher::path());
        }
    }
    if req.kind == JobKind::Serve {
        return serve::run(a, req, &code_dir, env, prepared.dir, tx, shipper).await;
    }
    // The operator's settings for every program (AIC_WORKER_ENV), here too so that ranks
    // started through sshd get them.
    let extra = aic_core::scheduler::parse_worker_env(&std::env::var("AIC_WORKER_ENV").unwrap_or_default())
        .map_err(|e| anyhow!(e))?;
    env.extend(extra.into_iter().filter(|(k, _)| !req.env.contains_key(k)));
    // Each process's thread pools get its share of the allocation's cores, unless the job or
    // the miner says otherwise.
    if !req.env.contains_key("OMP_NUM_THREADS") && std::env::var_os("OMP_NUM_THREADS").is_none() {
        let n = launcher::threads_per_process(launcher::cpus(), launcher::procs_per_alloc(req));
        env.insert("OMP_NUM_THREADS".into(), n.to_string());
    }
    // This allocation's own shared-memory folder (see `launcher::ShmDir`), kept until the
    // program and any sshd it serves have ended.
    let shm = launcher::ShmDir::create(&a.job.job.to_string(), a.attempt, a.index, &a.work)?;
    env.insert("AIC_SHM_DIR".into(), path_str(shm.path()));
    // The job's owner may run commands beside the program (`aic exec`), with its environment.
    let exec_env = env.clone();
    exec::publish(&a.work, &code_dir, &exec_env);
    // Every allocation takes its `aic exec` commands, the ones that only serve the leader's
    // launch (MPI, Horovod) too.
    let exec = a.gateway.clone().map(|gw| tokio::spawn(exec::serve(gw, a.index, code_dir.clone(), exec_env)));
    let ctx = launcher::LaunchCtx { request: req, code_dir: code_dir.clone(), env };
    let (mut cmd, finish) = match plan(a, &ctx).await {
        Ok(Plan::Program(cmd, finish)) => (*cmd, finish),
        Ok(Plan::Serve(sshd)) => {
            let served = serve_peer(a, sshd, req.gpus_per_miner).await;
            if let Some(t) = &exec {
                t.abort();
            }
            drop(tx);
            let _ = shipper.await;
            return served;
        }
        Err(e) => {
            if let Some(t) = &exec {
                t.abort();
            }
            drop(tx);
            let _ = shipper.await;
            return Err(e);
        }
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let tagged = matches!(req.launcher, Launcher::Mpi);

    // The hours paid for, less what earlier attempts of this allocation ran: the program is
    // stopped (TERM, grace, KILL) when they are used up. The scheduler enforces the same
    // limit from its own measurements, so a worker that dies does not extend it.
    let limit = time_left(a, req.max_hours).await;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut timed_out = false;
    let mut child = cmd
        .spawn()
        .map_err(|e| match crate::launcher::image() {
            Some(image) => anyhow!("cannot start the program ({e}): the image {image} lacks its interpreter (python3 for a .py, bash for a .sh)"),
            None => anyhow!("cannot start the program ({e}); is its interpreter installed on {}?", a.miner),
        })?;
    let pid = child.id().unwrap_or_default() as i32;

    let pumps = [
        tokio::spawn(pump(
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            tx.clone(),
            tagged,
        )),
        tokio::spawn(pump(
            child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            tx,
            tagged,
        )),
    ];

    let mut sync = outputs::OutputSync::default();
    let every = std::env::var("AIC_SYNC_SECONDS").ok().and_then(|v| v.parse().ok()).map(Duration::from_secs_f64);
    let mut sync_tick = tokio::time::interval(every.unwrap_or(SYNC_EVERY));
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stopping: Option<Instant> = None;
    let exit = loop {
        tokio::select! {
            st = child.wait() => break st?,
            _ = sync_tick.tick() => {
                if let Err(e) = sync.pass(&a.store, &out_dir, &out_prefix).await {
                    tracing::warn!(error = %e, "output sync failed; will retry");
                }
            }
            _ = status_tick.tick() => {
                if let Some(since) = stopping {
                    if since.elapsed() > STOP_GRACE {
                        signal(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                } else if job_ended(a).await {
                    tracing::info!("the job ended elsewhere; stopping the program");
                    signal(pid, nix::sys::signal::Signal::SIGTERM);
                    stopping = Some(Instant::now());
                }
            }
            _ = sigterm.recv() => {
                if !stop::by_scheduler() {
                    tracing::warn!(from = stop::sender(), "a SIGTERM from inside the job ignored: only its scheduler stops the worker");
                    continue;
                }
                tracing::info!("stop requested; stopping the program");
                signal(pid, nix::sys::signal::Signal::SIGTERM);
                stopping.get_or_insert_with(Instant::now);
            }
            _ = tokio::time::sleep_until(deadline), if !timed_out && stopping.is_none() => {
                tracing::info!(hours = req.max_hours, "the paid time is used up; stopping the program");
                timed_out = true;
                signal(pid, nix::sys::signal::Signal::SIGTERM);
                stopping = Some(Instant::now());
            }
        }
    };
    // A stop sent to the worker's process group reaches the program too: the program's end
    // may be seen before the worker's own SIGTERM. One that ended failing gets a moment for it.
    if stopping.is_none()
        && !exit.success()
        && tokio::time::timeout(Duration::from_millis(250), sigterm.recv()).await.is_ok()
        && stop::by_scheduler()
    {
        tracing::info!("stop requested as the program ended");
        stopping = Some(Instant::now());
    }
    let wall = started.elapsed().as_secs_f64();
    a.stop_sampling().await;
    if let Some(t) = exec {
        t.abort();
    }
    for p in pumps {
        let _ = p.await;
    }
    let tail = shipper.await.unwrap_or_default();
    sync.pass(&a.store, &out_dir, &out_prefix).await.context("uploading the outputs")?;

    let gpu_seconds = wall * manifest.request.gpus_per_miner as f64;
    let signal_no = std::os::unix::process::ExitStatusExt::signal(&exit);
    let result = AllocResult {
        alloc: a.index,
        miner: a.miner.clone(),
        exit_code: exit.code(),
        signal: signal_no,
        wall_seconds: wall,
        gpu_seconds,
        finished_at: chrono::Utc::now(),
    };
    a.store.create_json(&a.job.alloc_result(a.attempt, a.index), &result).await?;

    // What an ending the job did not succeed in says of this allocation.
    let ended = || StatusDetail {
        exit_code: exit.code(),
        wall_seconds: Some(wall),
        gpu_seconds: Some(gpu_seconds),
        alloc: Some(a.index),
        log_tail: Some(tail.join("\n")),
        ..Default::default()
    };
    // Stopped by its scheduler (SIGTERM: the job cancelled, its ranks restarted after a lost
    // one, its node drained or its allocation purged) or because the job ended elsewhere:
    // what the program did is recorded above, but how the job ended is not this
    // allocation's to say — its scheduler says it (cancelled, retrying, …). A `failed`
    // here ("killed by signal 15") ended a job its scheduler was starting again.
    if stopping.is_some() && !timed_out {
        tracing::info!(code = ?exit.code(), signal = ?signal_no, "the program stopped as asked");
        if let Finish::Leader(sshd) = finish {
            sshd.stop().await;
        }
        // Stopped with its ending recorded (cancelled, a restart under way, the run over):
        // 0. Stopped with nothing recorded (its container stopped by something else than
        // aic: a Docker restart, the node shutting down): 143, so that Nomad reports the
        // allocation failed and the scheduler acts on it.
        let recorded = matches!(aic_core::status::current(&a.store, &a.job).await,
            Ok(Some(r)) if r.state.is_terminal() || r.state == JobState::Retrying || r.run != a.run());
        return Ok(if recorded { 0 } else { 143 });
    }
    if timed_out {
        let t = a.transition(JobState::TimedOut).reason(time_limit_reason(req.max_hours)).detail(ended());
        a.advance(t).await?;
        if let Finish::Leader(sshd) = finish {
            sshd.stop().await;
        }
        return Ok(0);
    }
    if !exit.success() {
        let how = match (exit.code(), signal_no) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("was killed by signal {s}"),
            _ => "ended abnormally".into(),
        };
        let t = a
            .transition(JobState::Failed)
            .reason(format!("{} {how} on {} (allocation {})", req.entrypoint, a.miner, a.index))
            .detail(ended());
        a.advance(t).await?;
        return Ok(1);
    }
    match finish {
        Finish::WaitForPeers if a.index == 0 => finish_as_leader(a, wall).await?,
        Finish::WaitForPeers => {}
        Finish::Leader(sshd) => {
            // One launch ran every rank: its success is the job's.
            sshd.stop().await;
            let t = a.transition(JobState::Succeeded).detail(StatusDetail {
                exit_code: Some(0),
                wall_seconds: Some(wall),
                gpu_seconds: Some(wall * req.total_gpus() as f64),
                ..Default::default()
            });
            a.advance(t).await?;
        }
    }
    Ok(0)
}

/// The values of the secrets `req` names, from the gateway with the job's token (the pool
/// keeps them sealed; only a job's own workers get its owner's).
async fn secrets(a: &Alloc, req: &aic_schemas::JobRequest) -> anyhow::Result<BTreeMap<String, String>> {
    if req.secrets.is_empty() {
        return Ok(BTreeMap::new());
    }
    let Some((url, token)) = &a.gateway else {
        return Err(anyhow!("the job names secrets, and this pool's workers reach no gateway to get them from"));
    };
    let gw = aic_core::remote::Gateway::new(url, Some(token.clone()));
    let v = gw.call(reqwest::Method::GET, "worker/secrets", None).await.context("getting the job's secrets")?;
    let got: BTreeMap<String, String> = serde_json::from_value(v["secrets"].clone()).context("the job's secrets")?;
    if let Some(n) = req.secrets.iter().find(|n| !got.contains_key(*n)) {
        return Err(anyhow!("secret {n} did not come from the pool"));
    }
    Ok(got)
}

/// Why a job that ran out of its paid time stopped.
pub(crate) fn time_limit_reason(hours: f64) -> String {
    format!("time limit: paid for {} h; outputs up to then are kept", aic_core::pricing::format_hours(hours))
}

/// The paid time this allocation has left: `max_hours` (its run's) less the wall time of
/// this allocation's earlier attempts in the run (as they reported it).
async fn time_left(a: &Alloc, max_hours: f64) -> Duration {
    let mut used = 0.0;
    for attempt in aic_core::runs::first_attempt(a.run())..a.attempt {
        if let Ok(Some(r)) = a.store.get_json::<AllocResult>(&a.job.alloc_result(attempt, a.index), MAX_DOC_BYTES).await
        {
            used += r.wall_seconds;
        }
    }
    Duration::from_secs_f64((aic_core::pricing::paid_hours(max_hours) * 3600.0 - used).max(0.0))
}
