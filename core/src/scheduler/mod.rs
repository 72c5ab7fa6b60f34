//! Where allocations run: the `Scheduler` trait and its backends.
//!
//! - [`local`]: the embedded default; simulated miners on this machine, each allocation an
//!   `aic-worker` process.
//! - [`nomad`]: the pool; Nomad jobs over its HTTP API.
//!
//! What every backend shares lives here: [`launch`] (what a worker is told, and what of the
//! operator's environment it may have) and [`recovery`] (what a lost allocation means).

pub mod gpus;
pub mod job_user;
pub mod launch;
pub mod local;
pub mod nomad;
pub mod recovery;

use aic_schemas::JobManifest;
use async_trait::async_trait;

use crate::grant::WorkerGateway;
use crate::layout::JobKey;
use crate::store::Store;

/// The result of submitting a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Allocations were started on these miners.
    Placed(Vec<String>),
    /// The pool can run it, but not now; it starts when capacity frees up.
    Queued(String),
}

/// A command to run in an allocation through the scheduler's own exec API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStart {
    /// The command; empty with a terminal: a login shell.
    pub argv: Vec<String>,
    /// On a terminal of this size (rows, cols).
    pub tty: Option<(u16, u16)>,
}

/// What goes to a running exec command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecInput {
    Stdin(Vec<u8>),
    /// Its stdin ends.
    Close,
    Resize {
        rows: u16,
        cols: u16,
    },
}

/// What comes back from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// It ended with this exit code.
    Exited(i32),
    /// The session broke off (the scheduler's reason); no exit code will come.
    Failed(String),
}

/// A running exec command: its input and its output, in order.
pub struct ExecIo {
    pub input: tokio::sync::mpsc::Sender<ExecInput>,
    pub output: tokio::sync::mpsc::Receiver<ExecOutput>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// A request the pool refuses as asked (no such allocation running); the reason is for
    /// the user.
    #[error("{0}")]
    Refused(String),
    /// The pool can never run this job as asked; the reason is for the user.
    #[error("{0}")]
    Unplaceable(String),
    /// The scheduler could not be reached or failed; the event should be retried.
    #[error("scheduler error: {0}")]
    Backend(String),
}

/// One miner as the pool reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MinerInfo {
    pub name: String,
    pub gpus: u32,
    pub free_gpus: u32,
    /// Why the miner is down (not heard from), when it is: it takes no allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    /// Its GPUs' model (`gpus`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// Each GPU's memory in MiB, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_mb: Option<u64>,
    /// What a GPU-hour here costs (smallest units), on a pool that charges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_gpu_hour: Option<String>,
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

    /// Runs `replicas` replicas of the autoscaled serve job `job` (at most its request's
    /// `miners`; 0: none, the job still going), starting replicas on free miners or stopping
    /// the newest; with `only_up`, never fewer than it runs now (a request woke it). Returns
    /// how many it runs or starts now (fewer than asked when the pool has no room). By default
    /// the backend cannot.
    async fn scale(&self, job: &JobKey, _replicas: u32, _only_up: bool) -> Result<u32, ScheduleError> {
        Err(ScheduleError::Refused(format!("this pool's scheduler does not scale deployments (job {})", job.job)))
    }

    /// Whether this host does the pool's housekeeping (one host of several leads): what the
    /// autoscaler runs on. By default, yes.
    fn leads(&self) -> bool {
        true
    }

    /// How many jobs it holds, by state (`running`, `queued`), for the operator's figures;
    /// empty where the backend does not keep them.
    async fn jobs_by_state(&self) -> Result<Vec<(String, u64)>, ScheduleError> {
        Ok(Vec::new())
    }

    /// Where the serve job `deployment`'s live allocations were placed to serve: (host,
    /// port) as the scheduler assigned them. The serving gateway forwards only to these, so
    /// a registration naming any other address (another service on the network) is
    /// ignored. `None`: this backend cannot tell.
    async fn endpoints(&self, _deployment: &str) -> Result<Option<Vec<(String, u16)>>, ScheduleError> {
        Ok(None)
    }

    /// Runs a command in allocation `alloc` of the job through the scheduler's own exec API
    /// (Nomad's `/v1/client/allocation/:id/exec`), in the program's environment and folder.
    /// `Ok(None)`: this backend has none, and the gateway relays the command to the
    /// allocation's worker instead (the default).
    async fn exec(&self, _job: &JobKey, _alloc: u32, _start: ExecStart) -> Result<Option<ExecIo>, ScheduleError> {
        Ok(None)
    }

    /// The container images this backend runs jobs in (`JobRequest::image`): the operator's
    /// patterns (`ghcr.io/myorg/*`); empty: it runs none (the default: the local scheduler has
    /// no container engine).
    fn images(&self) -> Vec<String> {
        vec![]
    }

    /// Whether none of the job's allocations runs any more (so that what they used is all
    /// recorded in `core::usage`): what settlement waits for. By default, yes.
    async fn finished(&self, _job: &JobKey) -> Result<bool, ScheduleError> {
        Ok(true)
    }

    // Lifecycle: what a host (the functions host, the embedded pool) does with any backend.

    /// Runs what the backend needs beside its host until `stop` resolves (Nomad follows its
    /// allocation event stream here). By default, nothing.
    async fn run(&self, _store: Store, stop: Stop) {
        stop.await
    }

    /// Takes over what an earlier host of this pool left running or waiting (the local
    /// scheduler: workers of a host that died); run once as the host starts, before it takes
    /// events. By default, nothing (Nomad keeps its allocations itself).
    async fn recover(&self) {}

    /// The host's gateway, for backends whose workers reach the bucket through the host that
    /// started them (the local scheduler): they then get their job's token instead of store
    /// credentials. By default ignored (Nomad is told its gateway in its configuration).
    fn use_worker_gateway(&self, _gateway: WorkerGateway) {}

    /// Stops what the backend started on this machine, as its host stops (the local
    /// scheduler's workers). By default, nothing.
    async fn shutdown(&self) {}

    /// Calls `hook` whenever every allocation of a job has ended (what settlement waits
    /// for): the host then settles the job's paid run, whatever its transport for events. By
    /// default never (a backend that cannot tell).
    fn on_job_end(&self, _hook: JobEnded) {}

    /// Calls `hook` with a job and an allocation index whenever that allocation's worker ended
    /// other than by exiting 0 (killed, crashed, lost): the host then stores what it holds of
    /// the allocation's log that the worker had not stored. By default never.
    fn on_worker_lost(&self, _hook: WorkerLost) {}
}

/// Whether the pool scales this deployment (`--min-replicas`, `--target-concurrency`).
pub fn autoscaled(r: &aic_schemas::JobRequest) -> bool {
    r.kind == aic_schemas::JobKind::Serve && r.serving.as_ref().is_some_and(|s| s.autoscaled())
}

/// How many allocations a job starts with: its miners, or an autoscaled deployment's fewest
/// replicas (at least one).
pub fn replicas_at_start(r: &aic_schemas::JobRequest) -> u32 {
    match (&r.serving, r.kind) {
        (Some(s), aic_schemas::JobKind::Serve) => s.initial_replicas(r.miners),
        _ => r.miners,
    }
}

/// What a host does when a worker ended abnormally: (job, allocation index).
pub type WorkerLost = std::sync::Arc<dyn Fn(&JobKey, u32) + Send + Sync>;

/// What a host does when a job's allocations have all ended.
pub type JobEnded = std::sync::Arc<dyn Fn(&JobKey) + Send + Sync>;

/// What ends [`Scheduler::run`].
pub type Stop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

use crate::plural;

/// Whether a job of `miners` × `gpus` GPUs (of a model and memory `wants` allows) could run on
/// one of `gateways` once their GPUs are free (busy GPUs only make it wait); `Err` says why
/// not, with the models and memory the pool has. Nothing known (no gateways) fits.
pub fn can_fit(gateways: &[GatewayInfo], miners: u32, gpus: u32, wants: &gpus::GpuWants) -> Result<(), String> {
    let fits = |m: &&MinerInfo| m.gpus >= gpus && wants.matches(m.gpu_model.as_deref(), m.gpu_memory_mb);
    if gateways.is_empty() || gateways.iter().any(|g| g.miners.iter().filter(fits).count() >= miners as usize) {
        return Ok(());
    }
    let have: Vec<String> = gateways
        .iter()
        .map(|g| {
            let most = g.miners.iter().map(|m| m.gpus).max().unwrap_or(0);
            let uniform = g.miners.iter().all(|m| m.gpus == most && m.gpu_model.is_none());
            if uniform && wants.any() {
                format!(
                    "pool {} has {} with {} each",
                    g.name,
                    plural(g.miners.len() as u32, "miner"),
                    plural(most, "GPU")
                )
            } else {
                let big = g.miners.iter().filter(fits).count() as u32;
                // Its miners' shapes: `2 × A10 24 GB`, or `2 GPUs` where the model is unknown.
                let shapes: std::collections::BTreeSet<String> = g
                    .miners
                    .iter()
                    .map(|m| match (&m.gpu_model, m.gpu_memory_mb) {
                        (Some(model), Some(mem)) => format!("{} × {model} {}", m.gpus, gpus::memory_text(mem)),
                        (Some(model), None) => format!("{} × {model}", m.gpus),
                        _ => plural(m.gpus, "GPU"),
                    })
                    .collect();
                let such =
                    if wants.any() { format!("with {} or more", plural(gpus, "GPU")) } else { "that could".into() };
                format!(
                    "pool {} has {} {such} (its miners: {})",
                    g.name,
                    plural(big, "miner"),
                    shapes.into_iter().collect::<Vec<_>>().join(", ")
                )
            }
        })
        .collect();
    let what = if wants.any() { String::new() } else { format!(" ({})", wants.describe()) };
    Err(format!("needs {} with {}{what}; {}", plural(miners, "miner"), plural(gpus, "free GPU"), have.join("; ")))
}

/// Extra environment for every worker, as the operator writes it in `AIC_WORKER_ENV`:
/// whitespace-separated `KEY=VALUE` pairs, e.g. `OMPI_MCA_btl=self,sm,tcp NCCL_SOCKET_IFNAME=eth0`.
/// The pool's own variables (`AIC_*`, the store's credentials) cannot be set this way.
pub fn parse_worker_env(spec: &str) -> Result<Vec<(String, String)>, String> {
    spec.split_whitespace()
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("AIC_WORKER_ENV: {pair:?} is not KEY=VALUE"))?;
            if k.is_empty()
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                || k.as_bytes()[0].is_ascii_digit()
            {
                return Err(format!("AIC_WORKER_ENV: {k:?} is not a variable name"));
            }
            if k.starts_with("AIC_") || k.starts_with("AWS_") || k == "CUDA_VISIBLE_DEVICES" {
                return Err(format!("AIC_WORKER_ENV: {k} is set by the pool; choose another variable"));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// `AIC_WORKER_ENV` from this process's environment, as the workers' environment: the pairs
/// themselves, and `AIC_WORKER_ENV` too, so that a worker hands the same pairs to the processes
/// it starts through sshd (which do not inherit its environment). Empty when unset.
pub fn worker_env_from_env() -> Result<Vec<(String, String)>, String> {
    let spec = std::env::var("AIC_WORKER_ENV").unwrap_or_default();
    let mut pairs = parse_worker_env(&spec)?;
    if !pairs.is_empty() {
        pairs.push(("AIC_WORKER_ENV".into(), spec));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(name: &str, gpus: &[u32]) -> GatewayInfo {
        GatewayInfo {
            name: name.into(),
            miners: gpus
                .iter()
                .enumerate()
                .map(|(i, g)| MinerInfo { name: format!("m{i}"), gpus: *g, ..Default::default() })
                .collect(),
        }
    }

    #[test]
    fn a_job_fits_when_one_gateway_has_enough_big_miners_busy_or_not() {
        let any = gpus::GpuWants::default();
        assert!(can_fit(&[], 9, 9, &any).is_ok());
        assert!(can_fit(&[gw("a", &[1, 1])], 2, 1, &any).is_ok());
        assert!(can_fit(&[gw("a", &[1, 4]), gw("b", &[4, 4, 8])], 3, 4, &any).is_ok());
        assert_eq!(
            can_fit(&[gw("local", &[1, 1])], 3, 1, &any).unwrap_err(),
            "needs 3 miners with 1 free GPU; pool local has 2 miners with 1 GPU each"
        );
        assert_eq!(
            can_fit(&[gw("a", &[1, 4]), gw("b", &[2])], 2, 2, &any).unwrap_err(),
            "needs 2 miners with 2 free GPUs; pool a has 1 miner with 2 GPUs or more (its miners: 1 GPU, 4 GPUs); pool b has 1 miner with 2 GPUs each"
        );
        // Where the pool knows its miners' models, it names them.
        let mut mixed = gw("farm", &[2, 4]);
        for (m, (model, mem)) in mixed.miners.iter_mut().zip([("A10", 24 * 1024), ("T4", 8 * 1024)]) {
            (m.gpu_model, m.gpu_memory_mb) = (Some(model.into()), Some(mem));
        }
        assert_eq!(
            can_fit(&[mixed.clone()], 1, 5, &any).unwrap_err(),
            "needs 1 miner with 5 free GPUs; pool farm has 0 miners with 5 GPUs or more (its miners: 2 × A10 24 GB, 4 × T4 8 GB)"
        );
        // A model or memory the pool lacks, and one it has.
        let wants = |models: &[&str], gb| gpus::GpuWants {
            models: models.iter().map(|m| m.to_string()).collect(),
            min_memory_gb: gb,
        };
        assert_eq!(
            can_fit(&[mixed.clone()], 1, 1, &wants(&["H100"], None)).unwrap_err(),
            "needs 1 miner with 1 free GPU (GPUs of model H100); pool farm has 0 miners that could (its miners: 2 × A10 24 GB, 4 × T4 8 GB)"
        );
        assert!(can_fit(&[mixed.clone()], 1, 2, &wants(&[], Some(20))).is_ok());
        assert!(can_fit(&[mixed.clone()], 1, 4, &wants(&[], Some(20))).is_err(), "the 24 GB miner has 2");
        assert!(can_fit(&[mixed.clone()], 1, 4, &wants(&["h100", "t4"], None)).is_ok());
        assert!(can_fit(&[mixed], 2, 1, &wants(&["A10"], None)).is_err(), "one A10 miner");
    }

    #[test]
    fn worker_env_pairs_are_read_and_pool_variables_refused() {
        assert_eq!(
            parse_worker_env("  OMPI_MCA_btl=self,sm,tcp\nNCCL_DEBUG=INFO ").unwrap(),
            [("OMPI_MCA_btl".to_string(), "self,sm,tcp".to_string()), ("NCCL_DEBUG".into(), "INFO".into())]
        );
        assert!(parse_worker_env("").unwrap().is_empty());
        assert!(parse_worker_env("NOEQUALS").unwrap_err().contains("is not KEY=VALUE"));
        assert!(parse_worker_env("1X=2").unwrap_err().contains("is not a variable name"));
        assert!(parse_worker_env("A-B=2").unwrap_err().contains("is not a variable name"));
        assert!(parse_worker_env("AIC_STORE=file:///x").unwrap_err().contains("set by the pool"));
        assert!(parse_worker_env("AWS_SECRET_ACCESS_KEY=x").unwrap_err().contains("set by the pool"));
    }
}
