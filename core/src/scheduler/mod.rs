//! Where allocations run: the `Scheduler` trait and its backends.
//!
//! - [`local`]: the embedded default; simulated miners on this machine, each allocation an
//!   `aic-worker` process.
//! - [`nomad`]: the pool; Nomad jobs over its HTTP API.

pub mod local;
pub mod nomad;

use aic_schemas::JobManifest;
use async_trait::async_trait;

use crate::layout::JobKey;

/// The result of submitting a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Allocations were started on these miners.
    Placed(Vec<String>),
    /// The pool can run it, but not now; it starts when capacity frees up.
    Queued(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The pool can never run this job as asked; the reason is for the user.
    #[error("{0}")]
    Unplaceable(String),
    /// The scheduler could not be reached or failed; the event should be retried.
    #[error("scheduler error: {0}")]
    Backend(String),
}

/// One miner as the pool reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MinerInfo {
    pub name: String,
    pub gpus: u32,
    pub free_gpus: u32,
}

/// A gateway (Nomad datacenter / node pool) and its miners.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GatewayInfo {
    pub name: String,
    pub miners: Vec<MinerInfo>,
}

#[async_trait]
pub trait Scheduler: Send + Sync {
    /// Starts the job's allocations (one per miner, each with `gpus_per_miner` GPUs).
    ///
    /// Idempotent: submitting a job that is already placed or queued changes nothing and
    /// returns the same answer. A job that can never fit is `Unplaceable` with a reason.
    async fn submit(&self, job: &JobKey, manifest: &JobManifest) -> Result<Submitted, ScheduleError>;

    /// Stops every allocation of the job (or removes it from the queue). Stopping a job
    /// that is not running is not an error.
    async fn cancel(&self, job: &JobKey) -> Result<(), ScheduleError>;

    /// Gateways with their miners and free GPUs.
    async fn pool(&self) -> Result<Vec<GatewayInfo>, ScheduleError>;
}
