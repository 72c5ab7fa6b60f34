//! Gang placement: a training job's ranks start together or not at all.
//!
//! Nomad places what it can of a task group and blocks the rest until room frees up, so a
//! job of 4 miners on a pool with 3 free would hold 3 miners' GPUs while its ranks wait for
//! the fourth (and may never get it). Nomad has no gang scheduling, so aic does it:
//!
//! - A training job of several miners is registered only when the gateway has enough free
//!   nodes for every rank (the pool view, across namespaces).
//! - If Nomad still places it only in part (another scheduler took a node between the look
//!   and the registration), the job is purged at once: its placed ranks give their GPUs
//!   back before they have started the program.
//! - Either way the job waits in the bucket (`pool/gang/<job>.json`, with its attempt), and
//!   the watcher tries the waiting jobs again, oldest first, whenever an allocation ends and
//!   every [`NomadConfig::gang_retry`](super::NomadConfig) (GPUs other namespaces free up
//!   are not on aic's event stream). A job that ended (cancelled) meanwhile leaves the queue.
//!
//! A single-miner job and a deployment's replicas need no gang: Nomad's own blocked
//! evaluation is their queue.

use aic_schemas::{Address, JobId, JobKind, JobManifest};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::NomadScheduler;
use crate::layout::{self, JobKey};
use crate::scheduler::{ScheduleError, Submitted};
use crate::status;

/// A training job waiting for room for all of its ranks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Waiting {
    pub owner: Address,
    pub job: JobId,
    /// The attempt to register (a restart after a lost rank waits like a new job).
    pub attempt: u32,
    pub since: DateTime<Utc>,
    pub reason: String,
}

/// Whether the job's ranks must start together.
pub(super) fn is_gang(m: &JobManifest) -> bool {
    m.request.kind == JobKind::Train && m.request.miners > 1
}

fn backend(e: crate::StoreError) -> ScheduleError {
    ScheduleError::Backend(e.to_string())
}

impl NomadScheduler {
    /// How many nodes of gateway `gw`, in aic's node pool, have room now for one rank of
    /// `m`: its GPUs, memory and disk (as Nomad's scheduler counts them: a node with free GPUs
    /// but its memory taken would get no rank, and the job be placed in part and purged).
    pub(super) async fn free_nodes(&self, gw: &str, m: &JobManifest) -> Result<u32, ScheduleError> {
        let (gpus, memory, disk) = super::spec::rank_ask(&self.cfg, &m.request);
        let wants = crate::scheduler::gpus::GpuWants::of(&m.request);
        let room = self.room().await?;
        Ok(room
            .iter()
            .filter(|r| {
                r.node.datacenter == gw && r.node.pool == self.cfg.room_pool() && r.fits(gpus, &wants, memory, disk)
            })
            .count() as u32)
    }

    /// Puts the job in the gang queue (again), with why it waits.
    pub(super) async fn wait(&self, job: &JobKey, attempt: u32, reason: &str) -> Result<(), ScheduleError> {
        let key = layout::gang_waiting(&job.job);
        let since = match self.store.get_json::<Waiting>(&key, 64 * 1024).await.map_err(backend)? {
            Some(w) => w.since,
            None => Utc::now(),
        };
        let w = Waiting { owner: job.owner, job: job.job.clone(), attempt, since, reason: reason.to_string() };
        self.store.put_json(&key, &w).await.map_err(backend)
    }

    /// Takes the job out of the gang queue (it was placed, or it ended).
    pub(super) async fn unwait(&self, job: &JobId) -> Result<(), ScheduleError> {
        self.store.delete(&layout::gang_waiting(job)).await.map_err(backend)
    }

    /// Removes the job and its allocations from Nomad at once (`purge`: no blocked
    /// evaluation is left to place the rest later). Its uid goes back to the pool when its
    /// stopped tasks have ended (`uids`).
    pub(super) async fn purge(&self, id: &str) -> Result<(), ScheduleError> {
        self.call(reqwest::Method::DELETE, &format!("job/{id}"), &[("purge", "true".into())], None).await?;
        Ok(())
    }

    /// The waiting jobs, oldest first.
    pub async fn waiting(&self) -> Result<Vec<Waiting>, ScheduleError> {
        let mut metas = self.store.list(layout::GANG_WAITING).await.map_err(backend)?;
        metas.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        let mut out = vec![];
        for m in metas {
            if let Some(w) = self.store.get_json::<Waiting>(m.location.as_ref(), 64 * 1024).await.map_err(backend)? {
                out.push(w);
            }
        }
        Ok(out)
    }

    /// Tries every waiting job, oldest first; returns the ones placed. A job too big for
    /// the room now does not hold back a smaller one behind it.
    pub async fn place_waiting(&self) -> Result<Vec<JobKey>, ScheduleError> {
        let mut placed = vec![];
        for w in self.waiting().await? {
            let key = JobKey::new(w.owner, w.job.clone());
            let current = status::current(&self.store, &key).await.map_err(backend)?;
            let run = crate::runs::run_of(w.attempt);
            if current.as_ref().is_none_or(|c| c.state.is_terminal() || c.run != run) {
                self.unwait(&w.job).await?;
                continue;
            }
            let Some(m) = crate::runs::manifest(&self.store, &key, run).await.map_err(backend)? else {
                self.unwait(&w.job).await?;
                continue;
            };
            // Waited until its deposit may be taken back before it could end: not started
            // (failed; settle refunds the deposit whole).
            if let Some(why) = crate::payment::too_late_to_start(&m, chrono::Utc::now()) {
                self.unwait(&w.job).await?;
                let t = status::Transition::new(aic_schemas::JobState::Failed, "scheduler").reason(why).run(run);
                status::advance(&self.store, &key, t).await.map_err(backend)?;
                continue;
            }
            match self.register(&key, &m, w.attempt, true).await {
                Ok(Submitted::Placed(_)) => placed.push(key),
                Ok(Submitted::Queued(_)) => {}
                Err(ScheduleError::Unplaceable(why)) => {
                    // The pool shrank below what the job needs: it can never start.
                    self.unwait(&w.job).await?;
                    let t = status::Transition::new(aic_schemas::JobState::Failed, "scheduler")
                        .reason(format!("cannot be placed: {why}"))
                        .run(run);
                    status::advance(&self.store, &key, t).await.map_err(backend)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(placed)
    }
}

impl NomadScheduler {
    /// Places waiting gang jobs and stops jobs past their paid time ([`Self::stop_overdue`])
    /// whenever an allocation ends (the watcher says so) and every `gang_retry`, until `stop`
    /// resolves.
    pub async fn housekeeping(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            match self.place_waiting().await {
                Ok(placed) if !placed.is_empty() => tracing::info!(?placed, "waiting jobs placed whole"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "placing waiting jobs"),
            }
            match self.stop_overdue().await {
                Ok(stopped) if !stopped.is_empty() => tracing::info!(?stopped, "jobs past their paid time stopped"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "stopping jobs past their paid time"),
            }
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "cannot reconcile Nomad's allocations");
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = self.freed.notified() => {}
                _ = tokio::time::sleep(self.cfg.gang_retry) => {}
            }
        }
    }
}
