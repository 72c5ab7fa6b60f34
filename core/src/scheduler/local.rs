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

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aic_schemas::{JobKind, JobManifest, JobState, StatusDetail};
use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::launch::{self, Launch, StoreAccess};
use super::{GatewayInfo, MinerInfo, ScheduleError, Scheduler, Submitted, recovery};
use crate::layout::JobKey;
use crate::status::{self, Transition};
use crate::store::Store;

/// How long cancelled workers get between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How many times a job whose allocation was lost is started again.
pub use super::recovery::MAX_RETRIES;

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
}

struct Miner {
    name: String,
    /// Its loopback address.
    host: std::net::Ipv4Addr,
    /// `true` where the GPU slot is free.
    free: Vec<bool>,
}

struct Alloc {
    miner: usize,
    slots: Vec<usize>,
    pid: i32,
    /// The port it was given on its miner's address (where a replica serves).
    port: u16,
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
}

struct State {
    miners: Vec<Miner>,
    /// Every job this scheduler accepted, with where it was placed (or that it waited):
    /// a duplicate submission after the job ended must not run it again.
    accepted: HashMap<JobKey, Submitted>,
    running: HashMap<JobKey, Running>,
    /// Jobs waiting for free slots: (job, manifest, attempt).
    queue: VecDeque<(JobKey, JobManifest, u32)>,
    /// The pool is shutting down: nothing new starts (a freed slot would start a queued job
    /// that nobody would then stop).
    stopping: bool,
}

struct Inner {
    cfg: LocalConfig,
    /// When set, workers reach the bucket through this gateway with their job's token and
    /// get no store credentials.
    worker_gateway: Mutex<Option<crate::grant::WorkerGateway>>,
    store: Store,
    state: Mutex<State>,
    idle: tokio::sync::Notify,
}

/// A simulated miner's share of this machine's cores (at least one).
fn cpus_per_miner(miners: usize) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / miners.max(1)).max(1)
}

/// Cheap to clone.
#[derive(Clone)]
pub struct LocalScheduler {
    inner: Arc<Inner>,
}

impl LocalScheduler {
    pub fn new(cfg: LocalConfig, store: Store) -> Self {
        let miners = (0..cfg.miners)
            .map(|i| Miner {
                name: format!("miner-{}", i + 1),
                host: std::net::Ipv4Addr::new(127, 0, 1, (i + 1).min(254) as u8),
                free: vec![true; cfg.gpus_per_miner as usize],
            })
            .collect();
        LocalScheduler {
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
            }),
        }
    }

    /// From now on, workers reach the bucket through `g` with their job's token instead of
    /// the store's credentials (which they no longer get).
    pub fn use_worker_gateway(&self, g: crate::grant::WorkerGateway) {
        *self.inner.worker_gateway.lock().unwrap() = Some(g);
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
    }

    fn describe_need(m: &JobManifest) -> String {
        let r = &m.request;
        format!("{} with {}", crate::plural(r.miners, "miner"), crate::plural(r.gpus_per_miner, "free GPU"))
    }

    /// Picks miners for the job: the ones with the most free slots first, so jobs spread.
    fn pick(st: &State, m: &JobManifest) -> Option<Vec<(usize, Vec<usize>)>> {
        let need = m.request.gpus_per_miner as usize;
        let mut candidates: Vec<(usize, usize)> = st
            .miners
            .iter()
            .enumerate()
            .map(|(i, mi)| (i, mi.free.iter().filter(|f| **f).count()))
            .filter(|(_, free)| *free >= need)
            .collect();
        if candidates.len() < m.request.miners as usize {
            return None;
        }
        candidates.sort_by_key(|(i, free)| (std::cmp::Reverse(*free), *i));
        Some(
            candidates
                .into_iter()
                .take(m.request.miners as usize)
                .map(|(i, _)| {
                    let slots =
                        st.miners[i].free.iter().enumerate().filter(|(_, f)| **f).map(|(s, _)| s).take(need).collect();
                    (i, slots)
                })
                .collect(),
        )
    }

    /// Starts the allocations of a job whose miners were picked. On a spawn failure the
    /// allocations already started are stopped and the slots freed.
    fn start(
        &self,
        st: &mut State,
        job: &JobKey,
        manifest: &JobManifest,
        attempt: u32,
        picks: Vec<(usize, Vec<usize>)>,
    ) -> Result<Vec<String>, ScheduleError> {
        let cfg = &self.inner.cfg;
        let count = picks.len();
        let mut allocs = Vec::new();
        let mut names = Vec::new();
        for (index, (miner, slots)) in picks.into_iter().enumerate() {
            let miner_name = st.miners[miner].name.clone();
            let spawned = self.spawn(st, job, manifest, index as u32, count, attempt, miner, &slots);
            match spawned {
                Ok((child, port)) => {
                    for s in &slots {
                        st.miners[miner].free[*s] = false;
                    }
                    let pid = child.id().unwrap_or_default() as i32;
                    allocs.push(Alloc { miner, slots, pid, port });
                    names.push(miner_name);
                    self.reap(job.clone(), index as u32, child);
                }
                Err(e) => {
                    for a in &allocs {
                        let _ = killpg(Pid::from_raw(a.pid), Signal::SIGKILL);
                    }
                    let m = manifest.clone();
                    st.running.insert(
                        job.clone(),
                        Running { allocs, cancelled: true, restarting: None, manifest: m, attempt, replaced: 0 },
                    );
                    return Err(ScheduleError::Backend(format!("cannot start {}: {e}", cfg.worker_bin.display())));
                }
            }
        }
        let m = manifest.clone();
        st.running.insert(
            job.clone(),
            Running { allocs, cancelled: false, restarting: None, manifest: m, attempt, replaced: 0 },
        );
        Ok(names)
    }

    /// Starts the worker of allocation `index` of `count` on `miner`, holding `slots`.
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &self,
        st: &State,
        job: &JobKey,
        manifest: &JobManifest,
        index: u32,
        count: usize,
        attempt: u32,
        miner: usize,
        slots: &[usize],
    ) -> std::io::Result<(tokio::process::Child, u16)> {
        let cfg = &self.inner.cfg;
        let miner_name = &st.miners[miner].name;
        let host = st.miners[miner].host;
        let work = cfg.work_root.join(miner_name).join(format!("{}-{index}", job.job));
        let port = free_port(host)?;
        std::fs::create_dir_all(&work)?;
        let log = std::fs::File::create(work.with_extension("worker.log"))?;
        let mut cmd = std::process::Command::new(&cfg.worker_bin);
        // The pool's secrets never reach a worker (nor so the user's program).
        for k in crate::grant::NEVER_INHERITED {
            cmd.env_remove(k);
        }
        let gateway = self.inner.worker_gateway.lock().unwrap().clone();
        if gateway.is_some() {
            for (k, _) in std::env::vars() {
                if crate::grant::is_store_variable(&k) {
                    cmd.env_remove(k);
                }
            }
        }
        let access = if gateway.is_some() { StoreAccess::Gateway } else { StoreAccess::Environment };
        let worker_env = launch::passed_on(&cfg.worker_env, access);
        // Defaults for the simulated miners first: the operator's worker_env may change
        // them; the allocation's own variables come last.
        cmd.env("OMPI_MCA_coll", "^han")
            .env("OMPI_MCA_mpi_yield_when_idle", "1")
            .env("OMPI_MCA_btl", "self,sm,tcp")
            .env("AIC_CPUS", cpus_per_miner(st.miners.len()).to_string())
            .envs(worker_env.map(|(k, v)| (k, v)));
        if let Some(g) = &gateway {
            cmd.envs(g.env(job, manifest, chrono::Utc::now()));
        }
        let launch = Launch {
            owner: job.owner,
            job: job.job.clone(),
            index,
            count: count as u32,
            attempt,
            miner: Some(miner_name.clone()),
            host: Some(host.to_string()),
            port: Some(port),
            work_dir: work.clone(),
            serve_port: None,
            gpus: Some(slots.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")),
        };
        cmd.envs(launch.to_env()).stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Ok((tokio::process::Command::from(cmd).kill_on_drop(false).spawn()?, port))
    }

    /// A serve job's replica whose worker was lost is started again on its own (the other
    /// replicas keep serving), on a miner with free slots — one without another replica of
    /// the deployment first. Each replica may be replaced [`MAX_RETRIES`] times on average;
    /// after that the deployment fails with the reason.
    async fn replace_replica(&self, job: &JobKey, index: u32, why: String) {
        let started = {
            let mut st = self.inner.state.lock().unwrap();
            let Some(r) = st.running.get(job) else { return };
            if r.cancelled || r.restarting.is_some() {
                return;
            }
            let (count, attempt, need) = (r.allocs.len(), r.attempt, r.manifest.request.gpus_per_miner as usize);
            let hosting: Vec<usize> = r.allocs.iter().filter(|a| !a.slots.is_empty()).map(|a| a.miner).collect();
            if r.replaced >= recovery::replacements_allowed(count) {
                Err(format!("{why}; no restarts left ({} used)", r.replaced))
            } else {
                let free = |m: &Miner| m.free.iter().filter(|f| **f).count();
                let pick = (0..st.miners.len())
                    .filter(|m| free(&st.miners[*m]) >= need)
                    .max_by_key(|m| (!hosting.contains(m), free(&st.miners[*m])));
                match pick {
                    None => Ok(None),
                    Some(miner) => {
                        let slots: Vec<usize> = st.miners[miner]
                            .free
                            .iter()
                            .enumerate()
                            .filter(|(_, f)| **f)
                            .map(|(s, _)| s)
                            .take(need)
                            .collect();
                        let m = r.manifest.clone();
                        match self.spawn(&st, job, &m, index, count, attempt, miner, &slots) {
                            Ok((child, port)) => {
                                for s in &slots {
                                    st.miners[miner].free[*s] = false;
                                }
                                let pid = child.id().unwrap_or_default() as i32;
                                let name = st.miners[miner].name.clone();
                                let r = st.running.get_mut(job).expect("still running");
                                r.allocs[index as usize] = Alloc { miner, slots, pid, port };
                                r.replaced += 1;
                                Ok(Some((child, name)))
                            }
                            Err(e) => Err(format!("{why}; cannot start it again: {e}")),
                        }
                    }
                }
            }
        };
        match started {
            Ok(Some((child, miner))) => {
                tracing::warn!(job = %job.job, %why, %miner, "replica started again");
                self.reap(job.clone(), index, child);
            }
            Ok(None) => tracing::warn!(job = %job.job, %why, "no free GPUs to start the replica again"),
            Err(reason) => {
                let t = Transition::new(JobState::Failed, "scheduler").reason(reason);
                let _ = status::advance(&self.inner.store, job, t).await;
                let _ = self.cancel(job).await;
            }
        }
    }

    /// Waits for a worker to exit and frees its slots. A worker that died while its job
    /// was still going (killed, crashed, its miner lost) makes a training job start again
    /// from its last checkpoint — every allocation, since ranks depend on each other — up to
    /// [`MAX_RETRIES`] times; after that the job fails with the reason. A serve job's lost
    /// replica is started again alone. Then queued jobs that now fit are started.
    fn reap(&self, job: JobKey, index: u32, mut child: tokio::process::Child) {
        let this = self.clone();
        tokio::spawn(async move {
            let exit = child.wait().await;
            let (miner_name, cancelled, restarting) = {
                let mut st = this.inner.state.lock().unwrap();
                let mut out = (String::new(), false, false);
                if let Some(r) = st.running.get_mut(&job) {
                    out.1 = r.cancelled;
                    out.2 = r.restarting.is_some();
                    // Allocations are stored in index order.
                    if let Some(a) = r.allocs.get_mut(index as usize) {
                        let (miner, slots) = (a.miner, std::mem::take(&mut a.slots));
                        for s in slots {
                            st.miners[miner].free[s] = true;
                        }
                        out.0 = st.miners[miner].name.clone();
                    }
                }
                out
            };
            let ok = matches!(&exit, Ok(s) if s.success());
            if !ok && !cancelled && !restarting {
                let how = match &exit {
                    Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(s)) {
                        (Some(c), _) => format!("exit code {c}"),
                        (None, Some(sig)) => format!("signal {sig}"),
                        _ => "unknown status".into(),
                    },
                    Err(e) => e.to_string(),
                };
                let ended =
                    matches!(status::current(&this.inner.store, &job).await, Ok(Some(r)) if r.state.is_terminal());
                let serve = this
                    .inner
                    .state
                    .lock()
                    .unwrap()
                    .running
                    .get(&job)
                    .is_some_and(|r| r.manifest.request.kind == JobKind::Serve);
                if ended {
                    // The worker recorded the program's failure: stop the other allocations.
                    let _ = this.cancel(&job).await;
                } else if serve {
                    // Replicas do not depend on each other: only the lost one starts again.
                    let why = recovery::lost("replica", index, &miner_name, &format!("lost ({how})"));
                    this.replace_replica(&job, index, why).await;
                } else {
                    // Lost: stop the others; the job starts again when they are gone.
                    let why = recovery::lost("allocation", index, &miner_name, &format!("lost ({how})"));
                    tracing::warn!(job = %job.job, %why, "restarting the job");
                    let others: Vec<i32> = {
                        let mut st = this.inner.state.lock().unwrap();
                        match st.running.get_mut(&job) {
                            Some(r) => {
                                r.restarting.get_or_insert(why);
                                r.allocs.iter().filter(|a| !a.slots.is_empty()).map(|a| a.pid).collect()
                            }
                            None => Vec::new(),
                        }
                    };
                    for pid in others {
                        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
                    }
                }
            }
            let gone = {
                let mut st = this.inner.state.lock().unwrap();
                let all_gone = st.running.get(&job).is_some_and(|r| r.allocs.iter().all(|a| a.slots.is_empty()));
                if all_gone { st.running.remove(&job) } else { None }
            };
            if let Some(r) = gone.filter(|r| !r.cancelled)
                && let Some(why) = r.restarting
            {
                this.restart(job, r.manifest, r.attempt, why).await;
            }
            this.start_queued().await;
            this.inner.idle.notify_waiters();
        });
    }

    /// Starts a job again after a lost allocation, or fails it when retries are used up.
    async fn restart(&self, job: JobKey, manifest: JobManifest, attempt: u32, why: String) {
        let next = match recovery::after_lost_allocation(&self.inner.store, &job, &why, attempt).await {
            Ok(recovery::AfterLoss::Retry { attempt }) => attempt,
            Ok(_) => return,
            // The store is out: start again all the same (the status catches up on the next change).
            Err(e) if attempt < MAX_RETRIES => {
                tracing::warn!(job = %job.job, error = %e, "could not record the retry");
                attempt + 1
            }
            Err(_) => return,
        };
        self.inner.state.lock().unwrap().queue.push_front((job, manifest, next));
    }

    /// Starts queued jobs, in order, while they fit.
    async fn start_queued(&self) {
        loop {
            let next = {
                let mut st = self.inner.state.lock().unwrap();
                if st.stopping {
                    return;
                }
                let Some((job, m, attempt)) = st.queue.front().cloned() else { return };
                let Some(picks) = Self::pick(&st, &m) else { return };
                st.queue.pop_front();
                let r = self.start(&mut st, &job, &m, attempt, picks);
                (job, r)
            };
            let (job, r) = next;
            let t = match r {
                Ok(names) => Transition::new(JobState::Running, "scheduler")
                    .reason("placed after waiting for free GPUs")
                    .detail(StatusDetail { placement: names, ..Default::default() }),
                Err(e) => Transition::new(JobState::Failed, "scheduler").reason(e.to_string()),
            };
            // The worker writes `running` itself; only a failure needs recording here.
            if t.to == JobState::Failed {
                let _ = status::advance(&self.inner.store, &job, t).await;
            }
        }
    }
}

/// A port nobody listens on at `host` (the kernel's choice; the worker binds it soon after).
fn free_port(host: std::net::Ipv4Addr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}

#[async_trait]
impl Scheduler for LocalScheduler {
    async fn submit(&self, job: &JobKey, m: &JobManifest) -> Result<Submitted, ScheduleError> {
        let cfg = &self.inner.cfg;
        let mut st = self.inner.state.lock().unwrap();
        if let Some(answer) = st.accepted.get(job) {
            return Ok(answer.clone());
        }
        let r = &m.request;
        if r.miners > cfg.miners || r.gpus_per_miner > cfg.gpus_per_miner {
            return Err(ScheduleError::Unplaceable(format!(
                "needs {}; pool {} has {} with {} each",
                Self::describe_need(m),
                cfg.gateway,
                crate::plural(cfg.miners, "miner"),
                crate::plural(cfg.gpus_per_miner, "GPU"),
            )));
        }
        // Keep queue order: a job does not overtake those already waiting.
        let answer = match Self::pick(&st, m).filter(|_| st.queue.is_empty()) {
            Some(picks) => Submitted::Placed(self.start(&mut st, job, m, 0, picks)?),
            None => {
                st.queue.push_back((job.clone(), m.clone(), 0));
                Submitted::Queued(format!("waiting for {}", Self::describe_need(m)))
            }
        };
        st.accepted.insert(job.clone(), answer.clone());
        Ok(answer)
    }

    async fn cancel(&self, job: &JobKey) -> Result<(), ScheduleError> {
        let pids: Vec<i32> = {
            let mut st = self.inner.state.lock().unwrap();
            st.queue.retain(|(k, _, _)| k != job);
            match st.running.get_mut(job) {
                Some(r) => {
                    r.cancelled = true;
                    r.allocs.iter().filter(|a| !a.slots.is_empty()).map(|a| a.pid).collect()
                }
                None => Vec::new(),
            }
        };
        for pid in &pids {
            let _ = killpg(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        if !pids.is_empty() {
            let this = self.clone();
            let job = job.clone();
            tokio::spawn(async move {
                tokio::time::sleep(KILL_GRACE).await;
                let still: Vec<i32> = {
                    let st = this.inner.state.lock().unwrap();
                    st.running
                        .get(&job)
                        .map(|r| r.allocs.iter().filter(|a| !a.slots.is_empty()).map(|a| a.pid).collect())
                        .unwrap_or_default()
                };
                for pid in still {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
            });
        }
        Ok(())
    }

    async fn endpoints(&self, deployment: &str) -> Result<Option<Vec<(String, u16)>>, ScheduleError> {
        let st = self.inner.state.lock().unwrap();
        let out = st
            .running
            .iter()
            .filter(|(job, r)| job.job.as_str() == deployment && !r.cancelled)
            .flat_map(|(_, r)| r.allocs.iter().filter(|a| !a.slots.is_empty()))
            .map(|a| (st.miners[a.miner].host.to_string(), a.port))
            .collect();
        Ok(Some(out))
    }

    fn use_worker_gateway(&self, gateway: crate::grant::WorkerGateway) {
        LocalScheduler::use_worker_gateway(self, gateway)
    }

    async fn shutdown(&self) {
        LocalScheduler::shutdown(self).await
    }

    async fn pool(&self) -> Result<Vec<GatewayInfo>, ScheduleError> {
        let st = self.inner.state.lock().unwrap();
        Ok(vec![GatewayInfo {
            name: self.inner.cfg.gateway.clone(),
            miners: st
                .miners
                .iter()
                .map(|m| MinerInfo {
                    name: m.name.clone(),
                    gpus: m.free.len() as u32,
                    free_gpus: m.free.iter().filter(|f| **f).count() as u32,
                })
                .collect(),
        }])
    }
}
