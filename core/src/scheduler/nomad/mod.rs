//! The pool's scheduler: HashiCorp Nomad, over its HTTP API (typed JSON requests; see
//! `ARCHITECTURE.md` for why not a client crate).
//!
//! A train job becomes a Nomad **batch** job `aic-<job id>`: one task group, `Count` =
//! miners, each allocation on its own node (`distinct_hosts`, spread over nodes) with
//! `device "nvidia/gpu" { count = G }`, a dynamic port `rdzv` (the worker's rendezvous
//! address: its sshd for MPI and Horovod, the c10d store for torchrun), and the task `aic-worker` with the job's identity in its env
//! and meta. The gateway (`Placement.gateway`, else the configured default) is the
//! datacenter. Nomad does not restart or reschedule a failed allocation by itself: the
//! worker's resume (every allocation restarts together from the last checkpoint, a new
//! `AIC_ATTEMPT`) is driven by aic, which registers a new version of the job with the next
//! attempt in its meta.
//!
//! A serve job becomes a **service** job: `Count` = replicas, an `http` port, a
//! Nomad-native service (`provider = "nomad"`) with a TCP check (uWSGI listens; the worker
//! checks the app itself). A lost replica is Nomad's to reschedule (the service's policy),
//! alone: the others keep serving.
//!
//! Submission is idempotent: the Nomad job id derives from the aic job id and registration
//! uses `EnforceIndex` with `JobModifyIndex` 0 ("only if the job is new"); registering the
//! same job twice is a no-op that reads back the existing placement. Placement failures
//! (`FailedTGAllocs` of the evaluation) become a queued reason a person can read; a job no
//! node could ever hold is refused up front from the nodes' device inventory.
//!
//! | variable | meaning |
//! |---|---|
//! | `NOMAD_ADDR`, `NOMAD_TOKEN`, `NOMAD_REGION`, `NOMAD_NAMESPACE` | the cluster (`X-Nomad-Token`) |
//! | `AIC_NOMAD_DATACENTER` | the default gateway (datacenter); default `dc1` |
//! | `AIC_NOMAD_DRIVER` | task driver for aic-worker: `docker` (default), `exec`, `raw_exec` ([`task_config`] says what each means) |
//! | `AIC_NOMAD_IMAGE` | the worker image, for `docker`; default [`DEFAULT_IMAGE`] |
//! | `AIC_NOMAD_WORKER` | the aic-worker command (in the image, or on the miners); default `aic-worker` |
//! | `AIC_NOMAD_CPU`, `AIC_NOMAD_MEMORY_MB` | per-allocation CPU (MHz) and memory |
//! | `AIC_NOMAD_SECRETS_VAR` | Nomad Variable with the workers' store credentials (`s3_access_key`, `s3_secret_key`); default `nomad/jobs`, the one path every job of the namespace may read with its workload identity (`nomad/jobs/<job>` would be per job, and the jobs are named `aic-<id>`) |

//!
//! Files: `config` (from the environment), `spec` (the job specification and placement
//! reasons), `api` (the HTTP calls and Nomad's answers), `watch` (the allocation event
//! stream), `exec` (`aic exec` through Nomad's allocation exec API); this file is the
//! `Scheduler` implementation.

mod api;
mod config;
mod exec;
mod gang;
mod lead;
mod limits;
mod room;
mod spec;
mod tls;
pub mod uids;
mod watch;

use std::time::Duration;

use aic_schemas::{JobKind, JobManifest};
use async_trait::async_trait;
use serde_json::json;

use super::{GatewayInfo, MinerInfo, ScheduleError, Scheduler, Submitted};
use crate::layout::JobKey;

pub use api::NomadError;
pub use config::{DEFAULT_IMAGE, NomadConfig};
pub use gang::Waiting;
pub use spec::{GPU_DEVICE, KILL_TIMEOUT, job_spec, nomad_id, placement_reason, task_config, token_var};
pub use tls::NomadTls;
pub use watch::AllocAction;

use api::RegisterResponse;
use spec::gateway;

/// Whole-job restarts after lost allocations, as on the embedded pool.
pub use super::recovery::MAX_RETRIES;

/// The Nomad backend.
#[derive(Clone)]
pub struct NomadScheduler {
    cfg: NomadConfig,
    http: reqwest::Client,
    /// For the event stream (no timeout for the whole answer).
    stream_http: reqwest::Client,
    /// `NOMAD_ADDR` as API URLs name it (`tls::base`).
    base: String,
    /// The pool's bucket: job manifests and status for the watcher, and the gang queue.
    store: crate::Store,
    /// Woken when an allocation ends: room may have freed up for a waiting gang job.
    freed: std::sync::Arc<tokio::sync::Notify>,
    /// What the host does when every allocation of a job has ended.
    job_ended: std::sync::Arc<std::sync::Mutex<Option<super::JobEnded>>>,
    /// Ended allocations already handled (`watch::reconcile` skips them).
    reconciled: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Image pulls reported in jobs' logs: allocation id → (time of the newest driver event
    /// reported, the log chunk number to try next) (`watch::pull_progress`).
    pulls: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (i64, u64)>>>,
    /// This host holds the lead (`run`): the autoscaler acts here alone.
    leading: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NomadScheduler {
    pub fn new(cfg: NomadConfig, store: crate::Store) -> Self {
        let http = tls::client(&cfg, Some(Duration::from_secs(70)));
        let stream_http = tls::client(&cfg, None);
        let base = tls::base(&cfg);
        NomadScheduler {
            cfg,
            http,
            stream_http,
            base,
            store,
            freed: Default::default(),
            job_ended: Default::default(),
            reconciled: Default::default(),
            pulls: Default::default(),
            leading: Default::default(),
        }
    }

    pub fn config(&self) -> &NomadConfig {
        &self.cfg
    }

    /// The namespace aic's jobs and Variables are in (Nomad's `default` when none is set).
    pub(super) fn namespace(&self) -> String {
        self.cfg.namespace.clone().unwrap_or_else(|| "default".into())
    }
}

impl NomadScheduler {
    /// Registers (attempt 0) or re-registers with `attempt` (a whole-job restart).
    pub async fn register(
        &self,
        job: &JobKey,
        m: &JobManifest,
        attempt: u32,
        only_if_new: bool,
    ) -> Result<Submitted, ScheduleError> {
        let gw = gateway(&self.cfg, m);
        let r = &m.request;
        // A job no node could ever hold is refused now, with the inventory that says so.
        let nodes: Vec<_> = self
            .gpu_nodes()
            .await?
            .into_iter()
            .filter(|n| n.datacenter == gw && n.pool == self.cfg.room_pool())
            .collect();
        // Nodes that could hold a rank when empty: its GPUs, memory and disk.
        let (_, memory, disk) = spec::rank_ask(&self.cfg, r);
        let wants = crate::scheduler::gpus::GpuWants::of(r);
        let fitting = nodes
            .iter()
            .filter(|n| {
                n.could_give(r.gpus_per_miner, &wants, &Default::default())
                    && n.memory_mb.is_none_or(|m| m >= memory)
                    && n.disk_mb.is_none_or(|d| d >= disk)
            })
            .count() as u32;
        let in_gw = nodes.len();
        // A deployment's replicas are placed as they come, but one no node could ever give
        // the GPUs it asks for is refused too.
        if fitting < r.miners && (r.kind == JobKind::Train || (fitting == 0 && !wants.any())) {
            let what = if wants.any() { String::new() } else { format!(" ({})", wants.describe()) };
            // The models and memory the gateway's nodes have.
            let mut have: std::collections::BTreeSet<String> = Default::default();
            for n in &nodes {
                for g in &n.groups {
                    let mem = g.memory_mb.map(|m| format!(" {}", crate::scheduler::gpus::memory_text(m)));
                    have.insert(format!("{} × {}{}", g.healthy, g.model, mem.unwrap_or_default()));
                }
            }
            let have = if have.is_empty() || wants.any() {
                String::new()
            } else {
                format!(" (its GPUs: {})", have.into_iter().collect::<Vec<_>>().join(", "))
            };
            return Err(ScheduleError::Unplaceable(format!(
                "needs {} with {} {GPU_DEVICE}{what}, {memory} MiB of memory and {disk} MiB of disk each; gateway {gw} has {}, {fitting} that could hold one{have}",
                crate::plural(r.miners, "miner"),
                r.gpus_per_miner,
                crate::plural(in_gw as u64, "ready node"),
            )));
        }
        let id = nomad_id(job);
        let gang = gang::is_gang(m);
        // A job registered before: for this attempt or a later one (a duplicate event), read
        // back where it is; for an earlier run (a resumed job), registered over, but only if
        // nobody else did first (`EnforceIndex` with the index read here).
        let mut modify_index = 0;
        let registered = self.call(reqwest::Method::GET, &format!("job/{id}"), &[], None).await?;
        if only_if_new && let Some(j) = &registered {
            if anothers(j, job) {
                return Err(ScheduleError::Unplaceable(format!("job id {} is another owner's on this pool", job.job)));
            }
            let registered: u32 = j["Meta"]["aic_attempt"].as_str().and_then(|a| a.parse().ok()).unwrap_or(0);
            if registered >= attempt {
                return self.placement(&id, &gw, r.gpus_per_miner).await;
            }
            modify_index = j["JobModifyIndex"].as_u64().unwrap_or(0);
        }
        if gang {
            // Every rank or none: registered only when the gateway has room for all of them.
            let free = self.free_nodes(&gw, m).await?;
            if free < r.miners {
                let (_, memory, disk) = spec::rank_ask(&self.cfg, r);
                let why = format!(
                    "waiting for {} with {} free {GPU_DEVICE}, {memory} MiB of memory and {disk} MiB of disk each at once in gateway {gw} ({free} now)",
                    crate::plural(r.miners, "miner"),
                    r.gpus_per_miner
                );
                self.wait(job, attempt, &why).await?;
                return Ok(Submitted::Queued(why));
            }
        }
        // The uid its programs run as: handed out by the pool (`uids`), kept across restarts.
        let uid = if self.cfg.driver == "raw_exec" { 0 } else { self.job_uid(&id, registered.as_ref()).await? };
        let mut spec = job_spec(&self.cfg, job, m, attempt, uid);
        // The workers' token, where their template reads it (`spec::token_var`).
        if let Some(g) = &self.cfg.worker_gateway {
            let path = spec::token_var(&id);
            let body = json!({"Namespace": self.namespace(), "Path": path,
                "Items": {"worker_token": g.token(job, m, chrono::Utc::now())}});
            self.call(reqwest::Method::PUT, &format!("var/{path}"), &[], Some(&body)).await?;
        }
        // Paid time, enforced by the housekeeping (`limits`): training jobs and deployments
        // alike. A deployment's workers stop serving at `aic_serve_until` themselves; Nomad
        // restarting one (its app killed it) starts nothing anew.
        let deadline = self.deadline(job, m, attempt).await?;
        spec["Meta"]["aic_deadline"] = json!(deadline.to_string());
        if r.kind == JobKind::Serve {
            let until = deadline - self.cfg.time_limit_grace.as_secs() as i64;
            spec["Meta"]["aic_serve_until"] = json!(until.to_string());
        }
        let body = json!({
            "Job": spec,
            "EnforceIndex": only_if_new,
            "JobModifyIndex": modify_index,
        });
        let resp = match self.call(reqwest::Method::POST, "jobs", &[], Some(&body)).await {
            Ok(Some(v)) => serde_json::from_value::<RegisterResponse>(v)
                .map_err(|e| ScheduleError::Backend(format!("register answer: {e}")))?,
            Ok(None) => return Err(ScheduleError::Backend("Nomad answered 404 to registering a job".into())),
            Err(NomadError::Api(_, text))
                if only_if_new
                    && (text.contains("job already exists") || text.contains("conflicting job modify index")) =>
            {
                // Registered before (a duplicate event), or just now by another: read back where it is.
                return self.placement(&id, &gw, r.gpus_per_miner).await;
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(e) = self.evaluation(&resp.eval_id).await?
            && let Some(f) = e.failed_tg_allocs.filter(|f| f.as_object().is_some_and(|o| !o.is_empty()))
        {
            let _ = (&e.blocked_eval, &e.status_description);
            let why = placement_reason(&f, r.gpus_per_miner, &gw);
            if gang {
                // Placed in part: the placed ranks give their GPUs back now, and the job waits
                // for room for all of them.
                self.purge(&id).await?;
                self.wait(job, attempt, &why).await?;
            }
            return Ok(Submitted::Queued(why));
        }
        let placed = self.placement(&id, &gw, r.gpus_per_miner).await?;
        if gang && matches!(placed, Submitted::Placed(_)) {
            self.unwait(&job.job).await?;
        }
        Ok(placed)
    }
    async fn placement(&self, id: &str, gw: &str, gpus: u32) -> Result<Submitted, ScheduleError> {
        let allocs = self.allocations(id).await?;
        let mut nodes: Vec<String> = allocs
            .iter()
            .filter(|a| {
                a.desired_status == "run" && matches!(a.client_status.as_str(), "pending" | "running" | "complete")
            })
            .map(|a| a.node_name.clone())
            .collect();
        nodes.sort();
        nodes.dedup();
        if nodes.is_empty() {
            Ok(Submitted::Queued(format!("waiting for {gpus} free {GPU_DEVICE} in gateway {gw}")))
        } else {
            Ok(Submitted::Placed(nodes))
        }
    }
}

#[async_trait]
impl Scheduler for NomadScheduler {
    /// aic's jobs Nomad holds (`GET /v1/jobs?prefix=aic-`, job stubs: `Status` is `pending`
    /// until an allocation runs, then `running`, and `dead` once stopped or done), and the
    /// training jobs waiting to be placed whole (`pool/gang/`), as queued.
    async fn jobs_by_state(&self) -> Result<Vec<(String, u64)>, ScheduleError> {
        let q = [("prefix", "aic-".to_string())];
        let jobs = self.call(reqwest::Method::GET, "jobs", &q, None).await?.unwrap_or(serde_json::Value::Null);
        let (mut running, mut queued) = (0u64, self.waiting().await?.len() as u64);
        for j in jobs.as_array().into_iter().flatten().filter(|j| j["Stop"] != true) {
            match j["Status"].as_str() {
                Some("running") => running += 1,
                Some("pending") => queued += 1,
                _ => {}
            }
        }
        Ok(vec![("running".into(), running), ("queued".into(), queued)])
    }

    /// With the docker driver and the worker's folder to bind into them: the operator's patterns.
    fn images(&self) -> Vec<String> {
        if self.cfg.driver == "docker" && self.cfg.worker_mount.is_some() { self.cfg.images.clone() } else { vec![] }
    }

    /// Registers the job's run at its first attempt (a resumed job's run registers the same
    /// Nomad job again: a new version, whose allocations Nomad places anew).
    async fn submit(&self, job: &JobKey, m: &JobManifest) -> Result<Submitted, ScheduleError> {
        self.register(job, m, crate::runs::first_attempt(m.run), true).await
    }

    /// Follows Nomad's allocation events (`watch`: restarts, usage), places waiting gang
    /// jobs when room frees up (`gang`) and stops jobs past their paid time (`limits`),
    /// until the host stops.
    ///
    /// Of several functions hosts (`count = 2`), one leads: it holds a lock on a Nomad
    /// Variable (`leader_lock`, the Variables lock API: `PUT /v1/var/:path?lock-acquire`,
    /// renewed within its TTL) and alone watches and keeps house; the others wait to take
    /// over. Two watchers would each restart a lost job, and one purge what the other just
    /// registered.
    async fn run(&self, store: crate::Store, stop: super::Stop) {
        let stop = futures::future::FutureExt::shared(stop);
        loop {
            let lock = tokio::select! {
                _ = stop.clone() => return,
                l = self.lead() => l,
            };
            tracing::info!(lock = %self.cfg.leader_lock, "this host leads: it watches Nomad and keeps house");
            self.leading.store(true, std::sync::atomic::Ordering::Relaxed);
            let work = async {
                tokio::join!(self.watch(store.clone(), stop.clone()), self.housekeeping(stop.clone()));
            };
            tokio::select! {
                _ = work => {
                    self.release(&lock).await;
                    return;
                }
                _ = self.keep(&lock) => {
                    self.leading.store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(lock = %self.cfg.leader_lock, "this host lost the lead; another host watches now");
                }
            }
        }
    }

    fn leads(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `POST /v1/job/:id/scale` (nomad/job_endpoint.go `Scale`): the serve group's count,
    /// within the `Scaling` bounds its spec holds; Nomad places the new allocations or stops
    /// the newest. With `only_up`, the count is never lowered.
    async fn scale(&self, job: &JobKey, replicas: u32, only_up: bool) -> Result<u32, ScheduleError> {
        let id = nomad_id(job);
        let Some(j) = self.call(reqwest::Method::GET, &format!("job/{id}"), &[], None).await? else {
            return Err(ScheduleError::Refused(format!("deployment {} is not running on Nomad", job.job)));
        };
        if anothers(&j, job) || j["Stop"] == true {
            return Err(ScheduleError::Refused(format!("deployment {} is not running on Nomad", job.job)));
        }
        let group = &j["TaskGroups"][0];
        let Some(most) = group["Scaling"]["Max"].as_u64() else {
            return Err(ScheduleError::Refused(format!("deployment {} is not autoscaled", job.job)));
        };
        let now = group["Count"].as_u64().unwrap_or(0) as u32;
        let mut want = replicas.min(most as u32);
        if only_up {
            want = want.max(now);
        }
        if want != now {
            let body = serde_json::json!({
                "Count": want,
                "Target": {"Group": group["Name"]},
                "Message": format!("aic autoscaler: {now} → {want} replicas"),
            });
            self.call(reqwest::Method::POST, &format!("job/{id}/scale"), &[], Some(&body)).await?;
        }
        Ok(want)
    }

    async fn cancel(&self, job: &JobKey) -> Result<(), ScheduleError> {
        // Nomad's job is named by the id alone: never deregister another owner's.
        let id = nomad_id(job);
        if let Some(j) = self.call(reqwest::Method::GET, &format!("job/{id}"), &[], None).await?
            && anothers(&j, job)
        {
            tracing::warn!(job = %job.job, owner = %job.owner, "cancel of another owner's Nomad job refused");
            return Ok(());
        }
        // Deregistering stops every allocation (KillSignal, then KillTimeout); unknown is fine.
        self.call(reqwest::Method::DELETE, &format!("job/{id}"), &[], None).await?;
        // Its workers' token goes with it (a stopped task reads it no more).
        if self.cfg.worker_gateway.is_some() {
            self.call(reqwest::Method::DELETE, &format!("var/{}", spec::token_var(&id)), &[], None).await?;
        }
        // (Its uid goes back to the pool once its tasks have ended: `uids`.)
        self.unwait(&job.job).await
    }

    fn on_job_end(&self, hook: super::JobEnded) {
        *self.job_ended.lock().unwrap() = Some(hook);
    }

    /// Through Nomad's allocation exec API (`exec`).
    async fn exec(
        &self,
        job: &JobKey,
        alloc: u32,
        start: super::ExecStart,
    ) -> Result<Option<super::ExecIo>, ScheduleError> {
        self.exec_in(job, alloc, start).await.map(Some)
    }

    /// No allocation of the job is pending or running; what each used is recorded (again:
    /// records are create-only) from Nomad's own account, so settlement does not wait on the
    /// event stream.
    async fn finished(&self, job: &JobKey) -> Result<bool, ScheduleError> {
        let id = nomad_id(job);
        let allocs =
            self.call(reqwest::Method::GET, &format!("job/{id}/allocations"), &[], None).await?.unwrap_or(json!([]));
        let allocs = allocs.as_array().cloned().unwrap_or_default();
        if allocs.iter().any(|a| matches!(a["ClientStatus"].as_str(), Some("pending" | "running"))) {
            return Ok(false);
        }
        for a in &allocs {
            let aid = a["ID"].as_str().unwrap_or_default();
            if let Some(full) = self.call(reqwest::Method::GET, &format!("allocation/{aid}"), &[], None).await? {
                self.meter(&full).await?;
            }
        }
        Ok(true)
    }

    /// The addresses of the deployment's Nomad service (`aic-serve-<job>`) whose checks pass:
    /// what Nomad placed, not what a registration in the bucket claims, and only replicas
    /// Nomad finds healthy. Service registrations carry no check status (Nomad's servers do
    /// not keep it; hashicorp/nomad#23317): each allocation's checks are read from its client
    /// (`GET /v1/client/allocation/:id/checks`), and a replica with no result yet (starting)
    /// or a failing one is left out.
    async fn endpoints(&self, deployment: &str) -> Result<Option<Vec<(String, u16)>>, ScheduleError> {
        if deployment.parse::<aic_schemas::JobId>().is_err() {
            return Ok(Some(Vec::new()));
        }
        let name = format!("aic-serve-{deployment}");
        let regs = self.call(reqwest::Method::GET, &format!("service/{name}"), &[], None).await?.unwrap_or(json!([]));
        let regs: Vec<(String, u16, String)> = regs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some((
                    r["Address"].as_str()?.to_string(),
                    u16::try_from(r["Port"].as_u64()?).ok()?,
                    r["AllocID"].as_str()?.to_string(),
                ))
            })
            .collect();
        let paths: Vec<String> = regs.iter().map(|(_, _, alloc)| format!("client/allocation/{alloc}/checks")).collect();
        let checks =
            futures::future::join_all(paths.iter().map(|p| self.call(reqwest::Method::GET, p, &[], None))).await;
        let mut out = vec![];
        for ((host, port, alloc), c) in regs.into_iter().zip(checks) {
            let c = match c {
                Ok(c) => c.unwrap_or(json!({})),
                Err(e) => {
                    tracing::warn!(alloc, error = %e, "cannot read a replica's checks; left out");
                    continue;
                }
            };
            let results: Vec<&serde_json::Value> =
                c.as_object().into_iter().flat_map(|m| m.values()).filter(|r| r["Service"] == name.as_str()).collect();
            if !results.is_empty() && results.iter().all(|r| r["Status"] == "success") {
                out.push((host, port));
            }
        }
        Ok(Some(out))
    }

    async fn pool(&self) -> Result<Vec<GatewayInfo>, ScheduleError> {
        let mut gws: std::collections::BTreeMap<String, Vec<MinerInfo>> = Default::default();
        for r in self.room().await?.into_iter().filter(|r| r.node.pool == self.cfg.room_pool()) {
            let free_gpus = r.free_gpus();
            let n = r.node;
            gws.entry(n.datacenter).or_default().push(MinerInfo {
                name: n.name,
                gpus: n.gpus,
                free_gpus,
                gpu_model: n.gpu_model,
                gpu_memory_mb: n.gpu_memory_mb,
                ..Default::default()
            });
        }
        Ok(gws.into_iter().map(|(name, miners)| GatewayInfo { name, miners }).collect())
    }
}

/// Whether the Nomad job `j` (as `GET /v1/job/:id` answers) is another owner's than `job`'s
/// (its `aic_owner` meta): ids are unique per owner, Nomad's names are not.
fn anothers(j: &serde_json::Value, job: &JobKey) -> bool {
    j["Meta"]["aic_owner"].as_str().is_some_and(|o| !o.eq_ignore_ascii_case(&job.owner.to_string()))
}
