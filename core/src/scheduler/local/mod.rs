//! The local scheduler: N simulated miners × G GPU slots on this machine.
//!
//! Each allocation is an `aic-worker` process in its own process group, with
//! `CUDA_VISIBLE_DEVICES` naming the slots it holds on its miner and a work folder of its
//! own. Miner `i` has its own loopback address, `127.0.1.i` (all of 127/8 reaches this
//! machine), and each allocation a free port on it (`AIC_HOST`, `AIC_PORT`), so the
//! allocations of one job reach each other over the network as on real miners. The miners
//! share one kernel and hostname, which Open MPI's hierarchical collectives (`han`) take for
//! one node: workers get `OMPI_MCA_coll=^han`. They have no HPC fabric, so Open MPI uses shared
//! memory within a miner and TCP between miners (`OMPI_MCA_btl=self,sm,tcp`; its libfabric
//! transport would otherwise probe for about a second at every start). They also share the
//! machine's cores, so MPI ranks yield instead of spinning while they wait
//! (`OMPI_MCA_mpi_yield_when_idle=1`; 4× faster on two cores), and each miner's allocations
//! get its share of the cores (`AIC_CPUS`, which sizes the ranks' thread pools). Jobs that fit the pool but not its free slots wait in a queue, in order; jobs
//! that can never fit are refused with a reason. When a worker dies without writing a final
//! status, the scheduler writes one.
//!
//! Files: `place` (which miners and slots, the queue), `spawn` (a worker process and what it
//! is told), `reap` (a worker's end, and what `recovery` says it means); this file holds
//! the state and the `Scheduler` implementation.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aic_schemas::{JobKind, JobManifest, JobState, StatusDetail};
use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

mod heartbeat;
mod ledger;
mod names;
mod net;
mod place;
mod reap;
mod sandbox;
mod scale;
mod spawn;

use super::gpus::GpuWants;
use super::launch::{self, Launch, StoreAccess};
use super::{GatewayInfo, MinerInfo, ScheduleError, Scheduler, Submitted, recovery};
use super::{autoscaled, replicas_at_start};
use crate::layout::JobKey;
use crate::status::{self, Transition};
use crate::store::Store;

/// How long cancelled workers get between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long past a training job's paid time its workers get to stop the program and upload
/// its outputs before the scheduler kills them itself.
pub const TIME_LIMIT_GRACE: Duration = Duration::from_secs(30);
/// How many times a job whose allocation was lost is started again.
pub use super::recovery::MAX_RETRIES;
pub use spawn::{EXIT_FILE, START_GATE};

#[derive(Clone, Debug)]
pub struct LocalConfig {
    pub miners: u32,
    pub gpus_per_miner: u32,
    /// The gateway name the miners are shown under.
    pub gateway: String,
    /// The `aic-worker` binary.
    pub worker_bin: PathBuf,
    /// Work folders go under here: `<root>/<miner>/<job>-<alloc>/`.
    pub work_root: PathBuf,
    /// Environment every worker gets (the store's location and credentials).
    pub worker_env: Vec<(String, String)>,
    /// How long past a training job's paid time its workers are killed if still running
    /// ([`TIME_LIMIT_GRACE`]).
    pub time_limit_grace: Duration,
    /// Whether each job runs under a uid, namespaces and cgroup of its own (`sandbox`; as
    /// root). [`LocalConfig::sandboxed`] says what the host's settings ask for.
    pub sandbox: bool,
    /// Each miner's GPUs, when the farm is mixed (`AIC_POOL_GPU_TYPES`, `aic dev up
    /// --gpu-type`): as many miners as entries, each with its count (else `gpus_per_miner`).
    /// Empty: `miners` alike, of the model `nvidia-smi` reports, if any.
    pub gpu_types: Vec<super::gpus::GpuType>,
}

impl LocalConfig {
    /// Whether jobs are sandboxed here: yes unless `AIC_JOB_SANDBOX=0` (where the host is
    /// not root it says why it cannot, and runs them as its own user).
    pub fn sandboxed() -> bool {
        std::env::var("AIC_JOB_SANDBOX").map_or(true, |v| v != "0")
    }
}

pub use sandbox::USER as JOB_USER;

/// Miner `i`'s name (its host name where it has a UTS namespace).
fn miner_name(i: u32) -> String {
    format!("miner-{}", i + 1)
}

struct Miner {
    name: String,
    /// Its GPUs' model and memory each (MiB), when known.
    gpu_model: Option<String>,
    gpu_memory_mb: Option<u64>,
    /// Its loopback address.
    host: std::net::Ipv4Addr,
    /// `true` where the GPU slot is free.
    free: Vec<bool>,
    /// Why it is down (not heard from: `heartbeat`): nothing is placed on it.
    down: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Alloc {
    miner: usize,
    slots: Vec<usize>,
    pid: i32,
    /// Its worker's start in clock ticks since boot: with `pid`, which process it is.
    ticks: u64,
    /// The port it was given on its miner's address (where a replica serves).
    port: u16,
    /// When its worker was started (the start of what it is charged for).
    started: chrono::DateTime<chrono::Utc>,
    /// Why it was given up on (its miner lost) before its worker ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lost: Option<String>,
    /// The uid its job runs under (`sandbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    /// The slot of its job's network on its miner (`net::jobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    net_slot: Option<u8>,
    /// Stopped by the autoscaler: its end is not a loss.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    parked: bool,
}

struct Running {
    allocs: Vec<Alloc>,
    cancelled: bool,
    /// Set when an allocation was lost: the others are being stopped, and the job starts
    /// again (from its last checkpoint) once they are gone. Holds the reason.
    restarting: Option<String>,
    manifest: JobManifest,
    attempt: u32,
    /// Serve jobs: replicas started again after their worker was lost.
    replaced: u32,
    /// When this attempt's workers were first started: a deployment serves until then + its
    /// paid hours, whichever replica and however often restarted.
    since: chrono::DateTime<chrono::Utc>,
    /// An autoscaled deployment's replicas as last scaled (it stays here at 0).
    wanted: Option<u32>,
}

struct State {
    miners: Vec<Miner>,
    /// Every paid run of a job this scheduler accepted, with where it was placed (or that it
    /// waited): a duplicate submission after the run ended must not run it again.
    accepted: HashMap<(JobKey, u32), Submitted>,
    running: HashMap<JobKey, Running>,
    /// Jobs waiting for free slots, in order.
    queue: VecDeque<Queued>,
    /// The pool is shutting down: nothing new starts (a freed slot would start a queued job
    /// that nobody would then stop).
    stopping: bool,
}

#[derive(Clone)]
struct Queued {
    job: JobKey,
    manifest: JobManifest,
    attempt: u32,
    /// Its place, kept on disk ([`ledger`]): smaller first.
    order: i64,
}

impl Queued {
    /// At the end of the queue (`front`: at its head).
    fn new(job: JobKey, manifest: JobManifest, attempt: u32, front: bool) -> Self {
        let now = chrono::Utc::now().timestamp_micros();
        Queued { job, manifest, attempt, order: if front { -now } else { now } }
    }
}

/// How a worker's end was learnt.
enum Exit {
    /// Its parent (this host) waited for it.
    Waited(std::io::Result<std::process::ExitStatus>),
    /// It was adopted from an earlier host, or found dead by it: its exit status is not known.
    Unwatched,
}

struct Inner {
    cfg: LocalConfig,
    /// When set, workers reach the bucket through this gateway with their job's token and
    /// get no store credentials.
    worker_gateway: Mutex<Option<crate::grant::WorkerGateway>>,
    store: Store,
    state: Mutex<State>,
    idle: tokio::sync::Notify,
    job_ended: Mutex<Option<super::JobEnded>>,
    worker_lost: Mutex<Option<super::WorkerLost>>,
    /// Where workers that keep their store access reach `aic exec` (the embedded pool's host).
    exec_gateway: Mutex<Option<crate::grant::WorkerGateway>>,
    /// The miners' network namespaces, when they have them (`net`).
    net: Option<net::Net>,
    /// Why the miners have no namespaces although this host could make them (root): jobs
    /// would share this machine's network, so none is started (`spawn`).
    net_refused: Option<String>,
    /// How jobs are confined (as root).
    sandbox: Option<sandbox::Sandbox>,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct LocalScheduler {
    inner: Arc<Inner>,
}

impl LocalScheduler {
    /// Where allocation `a` is reached: its job's address on its miner (`net::jobs`), else
    /// its miner's.
    fn address_of(&self, st: &State, a: &Alloc) -> std::net::Ipv4Addr {
        match (&self.inner.net, a.net_slot) {
            (Some(n), Some(slot)) => n.job_address(a.miner as u32, slot),
            _ => st.miners[a.miner].host,
        }
    }

    pub fn new(mut cfg: LocalConfig, store: Store) -> Self {
        // A mixed farm: a miner per entry, with its own GPUs.
        let farm: Vec<Option<super::gpus::GpuType>> = if cfg.gpu_types.is_empty() {
            // This machine's model for every simulated miner; their counts stay the pool's.
            let here = super::gpus::from_nvidia_smi().map(|t| super::gpus::GpuType { count: None, ..t });
            (0..cfg.miners).map(|_| here.clone()).collect()
        } else {
            cfg.miners = cfg.gpu_types.len() as u32;
            cfg.gpus_per_miner =
                cfg.gpu_types.iter().map(|t| t.count.unwrap_or(cfg.gpus_per_miner)).max().unwrap_or(cfg.gpus_per_miner);
            cfg.gpu_types.iter().cloned().map(Some).collect()
        };
        let mut net_refused = None;
        let net = match net::Net::wanted() {
            false => None,
            true => match net::Net::setup(&cfg.work_root, cfg.miners, miner_name) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(error = %e, "the simulated miners cannot have network namespaces here; they share this host's loopback");
                    // As root, jobs would then share this machine's network (each other's
                    // ports, its loopback services): refused, unless the operator said so.
                    if nix::unistd::geteuid().is_root() {
                        net_refused = Some(format!(
                            "this pool cannot give jobs networks of their own ({e}): install iproute2 and nftables, or set AIC_POOL_NETNS=0 to run jobs in this machine's network"
                        ));
                    }
                    None
                }
            },
        };
        let sandbox = if cfg.sandbox { sandbox::Sandbox::setup(&cfg.work_root, store.local_root()) } else { None };
        let miners = (0..cfg.miners)
            .map(|i| Miner {
                name: miner_name(i),
                gpu_model: farm[i as usize].as_ref().map(|t| t.model.clone()),
                gpu_memory_mb: farm[i as usize].as_ref().map(|t| t.memory_mb),
                host: match &net {
                    Some(n) => n.address(i),
                    None => std::net::Ipv4Addr::new(127, 0, 1, (i + 1).min(254) as u8),
                },
                free: vec![
                    true;
                    farm[i as usize].as_ref().and_then(|t| t.count).unwrap_or(cfg.gpus_per_miner) as usize
                ],
                down: None,
            })
            .collect();
        let this = LocalScheduler {
            inner: Arc::new(Inner {
                cfg,
                store,
                state: Mutex::new(State {
                    miners,
                    accepted: HashMap::new(),
                    running: HashMap::new(),
                    queue: VecDeque::new(),
                    stopping: false,
                }),
                idle: tokio::sync::Notify::new(),
                worker_gateway: Mutex::new(None),
                job_ended: Mutex::new(None),
                worker_lost: Mutex::new(None),
                exec_gateway: Mutex::new(None),
                net,
                net_refused,
                sandbox,
            }),
        };
        this.watch_miners();
        this
    }

    /// From now on, workers reach the bucket through `g` with their job's token instead of
    /// the store's credentials (which they no longer get).
    pub fn use_worker_gateway(&self, g: crate::grant::WorkerGateway) {
        *self.inner.worker_gateway.lock().unwrap() = Some(g);
    }

    /// Workers keep their store access, and take their job's `aic exec` commands from
    /// `g` (`AIC_EXEC_GATEWAY` and their job's token): the embedded pool.
    pub fn use_exec_gateway(&self, g: crate::grant::WorkerGateway) {
        *self.inner.exec_gateway.lock().unwrap() = Some(g);
    }

    /// Whether jobs run sandboxed here (`sandbox`): then they must reach the store through
    /// a worker gateway, since the pool's folder is not theirs to see.
    pub fn is_sandboxed(&self) -> bool {
        self.inner.sandbox.is_some()
    }

    /// True when no allocation runs and nothing waits.
    pub fn is_idle(&self) -> bool {
        let st = self.inner.state.lock().unwrap();
        st.running.is_empty() && st.queue.is_empty()
    }

    /// Waits until the scheduler may have become idle (an allocation ended).
    pub async fn changed(&self) {
        self.inner.idle.notified().await
    }

    /// The host stops: the miners' namespaces go, unless a worker still runs in them or a
    /// job waits (a later host adopts them there).
    pub fn release(&self) {
        if let Some(n) = &self.inner.net
            && self.is_idle()
        {
            n.teardown();
        }
    }

    /// Stops the workers `pids` of `job`: SIGTERM to each one's process group, SIGKILL to
    /// those still running [`KILL_GRACE`] later (a program hung on a lost peer ignores the
    /// first).
    fn stop_workers(&self, job: &JobKey, pids: Vec<i32>) {
        for pid in &pids {
            let _ = killpg(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        if pids.is_empty() {
            return;
        }
        let this = self.clone();
        let job = job.clone();
        tokio::spawn(async move {
            tokio::time::sleep(KILL_GRACE).await;
            // Only the workers told to stop: a resumed run's new workers may hold the job now.
            let still: Vec<i32> = {
                let st = this.inner.state.lock().unwrap();
                st.running
                    .get(&job)
                    .map(|r| r.allocs.iter().filter(|a| !a.slots.is_empty()).map(|a| a.pid).collect())
                    .unwrap_or_default()
            };
            for pid in still.into_iter().filter(|p| pids.contains(p)) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        });
    }

    /// Stops every allocation (the pool is shutting down) and waits for them to end.
    pub async fn shutdown(&self) {
        let jobs: Vec<JobKey> = {
            let mut st = self.inner.state.lock().unwrap();
            st.stopping = true;
            st.running.keys().cloned().collect()
        };
        for j in jobs {
            let _ = self.cancel(&j).await;
        }
        let deadline = Instant::now() + KILL_GRACE + Duration::from_secs(2);
        while !self.inner.state.lock().unwrap().running.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.release();
    }
}

#[async_trait]
impl Scheduler for LocalScheduler {
    async fn submit(&self, job: &JobKey, m: &JobManifest) -> Result<Submitted, ScheduleError> {
        let cfg = &self.inner.cfg;
        let known = self.inner.state.lock().unwrap().accepted.contains_key(&(job.clone(), m.run));
        // Not known here: a host before this one may have run it and died before the job's
        // status said so. What its workers used is recorded before they leave the records a
        // host after it adopts (`ledger`): if the run used anything, it ran.
        let ran = match known {
            true => Vec::new(),
            false => crate::usage::of_run(&self.inner.store, job, m.run)
                .await
                .map_err(|e| ScheduleError::Backend(format!("reading what job {} used: {e}", job.job)))?,
        };
        let mut st = self.inner.state.lock().unwrap();
        if !ran.is_empty() {
            let mut miners: Vec<String> = ran.into_iter().map(|u| u.miner).collect();
            miners.sort();
            miners.dedup();
            st.accepted.entry((job.clone(), m.run)).or_insert(Submitted::Placed(miners));
        }
        if let Some(answer) = st.accepted.get(&(job.clone(), m.run)) {
            return Ok(answer.clone());
        }
        // Work folders, serving routes and endpoints here are named by the id alone: a job of
        // another owner under an id that runs or waits (one validated before ids were claimed
        // pool-wide) would share them.
        let anothers = |k: &JobKey| k.job == job.job && k.owner != job.owner;
        if st.running.keys().any(anothers) || st.queue.iter().any(|q| anothers(&q.job)) {
            return Err(ScheduleError::Unplaceable(format!("job id {} is another owner's on this pool", job.job)));
        }
        if st.running.contains_key(job) {
            // An earlier run's workers are still stopping (validate waits for them; this is a
            // belt to those braces): the event comes again.
            return Err(ScheduleError::Backend(format!("job {}: an earlier run is still stopping", job.job)));
        }
        // A resumed job's run starts at its own first attempt.
        let first = crate::runs::first_attempt(m.run);
        let r = &m.request;
        let wants = GpuWants::of(r);
        let big_enough = st
            .miners
            .iter()
            .filter(|mi| {
                mi.free.len() as u32 >= r.gpus_per_miner && wants.matches(mi.gpu_model.as_deref(), mi.gpu_memory_mb)
            })
            .count() as u32;
        if r.miners > big_enough && !wants.any() {
            // Which models and memory the pool has, in `can_fit`'s words.
            let why = super::can_fit(&[self.gateway_info(&st)], r.miners, r.gpus_per_miner, &wants)
                .err()
                .unwrap_or_else(|| format!("needs {}", Self::describe_need(m)));
            return Err(ScheduleError::Unplaceable(why));
        }
        if r.miners > big_enough {
            let sizes: std::collections::BTreeSet<usize> = st.miners.iter().map(|mi| mi.free.len()).collect();
            let each = match sizes.iter().collect::<Vec<_>>().as_slice() {
                [one] => crate::plural(**one as u64, "GPU"),
                many => format!("{} GPUs", many.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(" or ")),
            };
            return Err(ScheduleError::Unplaceable(format!(
                "needs {}; pool {} has {} with {each} each",
                Self::describe_need(m),
                cfg.gateway,
                crate::plural(cfg.miners, "miner"),
            )));
        }
        // Keep queue order: a job does not overtake those already waiting.
        let answer = match Self::pick(&st, m).filter(|_| st.queue.is_empty()) {
            Some(picks) => Submitted::Placed(self.start(&mut st, job, m, first, picks)?),
            None => {
                st.queue.push_back(Queued::new(job.clone(), m.clone(), first, false));
                Submitted::Queued(format!("waiting for {}", Self::describe_need(m)))
            }
        };
        st.accepted.insert((job.clone(), m.run), answer.clone());
        self.persist(&st, job);
        Ok(answer)
    }

    async fn cancel(&self, job: &JobKey) -> Result<(), ScheduleError> {
        let pids: Vec<i32> = {
            let mut st = self.inner.state.lock().unwrap();
            st.queue.retain(|q| &q.job != job);
            let pids = match st.running.get_mut(job) {
                Some(r) => {
                    r.cancelled = true;
                    r.allocs.iter().filter(|a| !a.slots.is_empty()).map(|a| a.pid).collect()
                }
                None => Vec::new(),
            };
            self.persist(&st, job);
            pids
        };
        let none = pids.is_empty();
        self.stop_workers(job, pids);
        if none {
            // An autoscaled deployment at zero replicas: nothing will end to take it away.
            self.after_a_worker(job.clone()).await;
        }
        Ok(())
    }

    async fn scale(&self, job: &JobKey, replicas: u32, only_up: bool) -> Result<u32, ScheduleError> {
        self.scale_to(job, replicas, only_up).await
    }

    fn on_job_end(&self, hook: super::JobEnded) {
        *self.inner.job_ended.lock().unwrap() = Some(hook);
    }

    fn on_worker_lost(&self, hook: super::WorkerLost) {
        *self.inner.worker_lost.lock().unwrap() = Some(hook);
    }

    /// None of the job's workers is alive (each recorded what it used when it was reaped).
    async fn finished(&self, job: &JobKey) -> Result<bool, ScheduleError> {
        Ok(!self.inner.state.lock().unwrap().running.contains_key(job))
    }

    async fn endpoints(&self, deployment: &str) -> Result<Option<Vec<(String, u16)>>, ScheduleError> {
        let st = self.inner.state.lock().unwrap();
        let out = st
            .running
            .iter()
            .filter(|(job, r)| job.job.as_str() == deployment && !r.cancelled)
            .flat_map(|(_, r)| r.allocs.iter().filter(|a| !a.slots.is_empty() && a.lost.is_none()))
            .map(|a| (self.address_of(&st, a).to_string(), a.port))
            .collect();
        Ok(Some(out))
    }

    fn use_worker_gateway(&self, gateway: crate::grant::WorkerGateway) {
        LocalScheduler::use_worker_gateway(self, gateway)
    }

    async fn shutdown(&self) {
        LocalScheduler::shutdown(self).await
    }

    async fn recover(&self) {
        self.adopt().await;
    }

    async fn pool(&self) -> Result<Vec<GatewayInfo>, ScheduleError> {
        let st = self.inner.state.lock().unwrap();
        Ok(vec![self.gateway_info(&st)])
    }

    async fn jobs_by_state(&self) -> Result<Vec<(String, u64)>, ScheduleError> {
        let st = self.inner.state.lock().unwrap();
        let running = st.running.values().filter(|r| !r.cancelled).count() as u64;
        Ok(vec![("running".into(), running), ("queued".into(), st.queue.len() as u64)])
    }
}

impl LocalScheduler {
    /// The pool as `pool` reports it: its miners, their GPUs and which are free.
    fn gateway_info(&self, st: &State) -> GatewayInfo {
        GatewayInfo {
            name: self.inner.cfg.gateway.clone(),
            miners: st
                .miners
                .iter()
                .map(|m| MinerInfo {
                    name: m.name.clone(),
                    gpus: m.free.len() as u32,
                    free_gpus: if m.down.is_some() { 0 } else { m.free.iter().filter(|f| **f).count() as u32 },
                    down: m.down.clone(),
                    gpu_model: m.gpu_model.clone(),
                    gpu_memory_mb: m.gpu_memory_mb,
                    ..Default::default()
                })
                .collect(),
        }
    }
}
