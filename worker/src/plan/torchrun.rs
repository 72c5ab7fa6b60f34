//! The `torchrun` launcher's plan: a `torchrun` in every allocation, meeting at the
//! leader's c10d store; the leader writes `succeeded` once every allocation reported.

use anyhow::anyhow;

use super::{Finish, Plan, wait_for_peer};
use crate::alloc::Alloc;
use crate::launcher::{self, Peer};

pub(super) async fn plan(a: &Alloc, ctx: &launcher::LaunchCtx<'_>, me: Peer) -> anyhow::Result<Plan> {
    let req = ctx.request;
    launcher::require("torchrun", &a.miner, "install PyTorch on the miners (pip install torch)")
        .map_err(|e| anyhow!(e))?;
    let leader = if a.index == 0 {
        let me = Peer { rdzv_id: Some(launcher::torchrun::rendezvous_secret()?), ..me };
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
