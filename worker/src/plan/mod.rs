//! How this allocation takes part in the job, by launcher: run the program (and who writes
//! `succeeded`), or only host ranks the leader starts over SSH. Each launcher's plan is a
//! file here (`torchrun`, `ssh` for mpi and horovod; `command` is one line below).

mod ssh;
mod torchrun;

use std::time::{Duration, Instant};

use aic_schemas::validate::MAX_DOC_BYTES;
use aic_schemas::{AllocResult, Launcher};
use anyhow::anyhow;

use crate::alloc::Alloc;
use crate::launcher::{self, Peer};
use crate::report::job_ended;
use crate::{PEERS_UP, STATUS_EVERY};

/// How this allocation takes part in the job.
pub(crate) enum Plan {
    /// Run a program (the user's, or a launcher that starts every rank).
    Program(Box<tokio::process::Command>, Finish),
    /// Only host ranks started from the leader (mpi, horovod), until the job ends.
    Serve(launcher::ssh::Sshd),
}

/// Who writes `succeeded`.
pub(crate) enum Finish {
    /// The leader, once every allocation's program has reported.
    WaitForPeers,
    /// The leader, from its launcher's exit alone; it also stops its sshd.
    Leader(Box<launcher::ssh::Sshd>),
}

pub(crate) async fn plan(a: &Alloc, ctx: &launcher::LaunchCtx<'_>) -> anyhow::Result<Plan> {
    let req = ctx.request;
    let me = Peer {
        alloc: a.index,
        miner: a.miner.clone(),
        host: a.host.clone(),
        port: a.port,
        slots: req.gpus_per_miner,
        pubkey: None,
        hostkey: None,
        rdzv_id: None,
    };
    match req.launcher {
        Launcher::Command => {
            Ok(Plan::Program(Box::new(launcher::command::build(ctx).map_err(|e| anyhow!(e))?), Finish::WaitForPeers))
        }
        Launcher::Torchrun => torchrun::plan(a, ctx, me).await,
        Launcher::Mpi | Launcher::Horovod => ssh::plan(a, ctx, me).await,
    }
}

/// Waits for allocation `i`'s rendezvous record.
pub(crate) async fn wait_for_peer(a: &Alloc, i: u32) -> anyhow::Result<Peer> {
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
pub(crate) async fn serve_peer(a: &Alloc, sshd: launcher::ssh::Sshd, gpus: u32) -> anyhow::Result<i32> {
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
