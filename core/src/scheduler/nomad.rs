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
//! | `AIC_NOMAD_DRIVER` | task driver for aic-worker; default `exec` |
//! | `AIC_NOMAD_WORKER` | the aic-worker command on the miners; default `aic-worker` |
//! | `AIC_NOMAD_CPU`, `AIC_NOMAD_MEMORY_MB` | per-allocation CPU (MHz) and memory |
//! | `AIC_NOMAD_SECRETS_VAR` | Nomad Variable with the workers' store credentials (`s3_access_key`, `s3_secret_key`); default `nomad/jobs/aic-worker` |

use std::time::Duration;

use aic_schemas::{JobKind, JobManifest};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{GatewayInfo, MinerInfo, ScheduleError, Scheduler, Submitted, recovery};
use crate::Store;
use crate::layout::JobKey;
use crate::status;

/// Whole-job restarts after lost allocations, as on the embedded pool.
pub use super::recovery::MAX_RETRIES;

/// Nanoseconds, as Nomad's JSON API counts durations.
fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

pub const GPU_DEVICE: &str = "nvidia/gpu";
/// How long a cancelled task gets between SIGTERM and SIGKILL (the worker ships its last
/// logs and checkpoint in that time).
pub const KILL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct NomadConfig {
    pub addr: String,
    pub token: Option<String>,
    pub region: Option<String>,
    pub namespace: Option<String>,
    pub datacenter: String,
    pub driver: String,
    pub worker: String,
    pub cpu_mhz: u32,
    pub memory_mb: u32,
    /// Environment every worker gets (the store's location).
    pub worker_env: Vec<(String, String)>,
    /// The Nomad Variable the workers' store credentials come from (a `template` block), so
    /// that they are never in the job specification; without one, `worker_env`'s are.
    pub secrets_var: Option<String>,
    /// When set, workers reach the bucket through the gateway with their job's token (in the
    /// job's env) and get no store credentials at all.
    pub worker_gateway: Option<crate::grant::WorkerGateway>,
}

impl NomadConfig {
    /// From the environment; `None` when `NOMAD_ADDR` is not set.
    pub fn from_env(worker_env: Vec<(String, String)>) -> Result<Option<Self>, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(addr) = var("NOMAD_ADDR") else { return Ok(None) };
        let num = |k: &str, d: u32| -> Result<u32, String> {
            var(k).map(|v| v.parse().map_err(|_| format!("{k}={v:?} is not a whole number"))).unwrap_or(Ok(d))
        };
        Ok(Some(NomadConfig {
            addr: addr.trim_end_matches('/').to_string(),
            token: var("NOMAD_TOKEN"),
            region: var("NOMAD_REGION"),
            namespace: var("NOMAD_NAMESPACE"),
            datacenter: var("AIC_NOMAD_DATACENTER").unwrap_or_else(|| "dc1".into()),
            driver: var("AIC_NOMAD_DRIVER").unwrap_or_else(|| "exec".into()),
            worker: var("AIC_NOMAD_WORKER").unwrap_or_else(|| "aic-worker".into()),
            cpu_mhz: num("AIC_NOMAD_CPU", 2000)?,
            memory_mb: num("AIC_NOMAD_MEMORY_MB", 8192)?,
            secrets_var: Some(var("AIC_NOMAD_SECRETS_VAR").unwrap_or_else(|| "nomad/jobs/aic-worker".into())),
            worker_env,
            worker_gateway: None,
        }))
    }
}

/// The Nomad job id of an aic job.
pub fn nomad_id(job: &JobKey) -> String {
    format!("aic-{}", job.job)
}

fn gateway(cfg: &NomadConfig, m: &JobManifest) -> String {
    m.placement.gateway.clone().unwrap_or_else(|| cfg.datacenter.clone())
}

/// The job's Nomad specification (the `Job` of `POST /v1/jobs`), for `attempt`.
pub fn job_spec(cfg: &NomadConfig, job: &JobKey, m: &JobManifest, attempt: u32) -> Value {
    let r = &m.request;
    let id = nomad_id(job);
    let serve = r.kind == JobKind::Serve;
    let mut env = serde_json::Map::new();
    let secret = |k: &str| k == "AWS_ACCESS_KEY_ID" || k == "AWS_SECRET_ACCESS_KEY";
    let worker_gw = cfg.worker_gateway.as_ref();
    for (k, v) in &cfg.worker_env {
        let withheld = match worker_gw {
            Some(_) => crate::grant::is_store_variable(k),
            None => cfg.secrets_var.is_some() && secret(k),
        };
        if !withheld {
            env.insert(k.clone(), json!(v));
        }
    }
    if let Some(g) = worker_gw {
        for (k, v) in g.env(job, m, chrono::Utc::now()) {
            env.insert(k, json!(v));
        }
    }
    let templates: Vec<Value> = cfg
        .secrets_var
        .iter()
        .filter(|_| worker_gw.is_none())
        .map(|var| {
            json!({
                "DestPath": "${NOMAD_SECRETS_DIR}/store.env",
                "Envvars": true,
                "ChangeMode": "restart",
                "EmbeddedTmpl": format!(
                    "{{{{ with nomadVar \"{var}\" }}}}\nAWS_ACCESS_KEY_ID={{{{ .s3_access_key }}}}\nAWS_SECRET_ACCESS_KEY={{{{ .s3_secret_key }}}}\n{{{{ end }}}}\n"
                ),
            })
        })
        .collect();
    for (k, v) in [
        ("AIC_JOB_OWNER", job.owner.to_string()),
        ("AIC_JOB_ID", job.job.to_string()),
        ("AIC_ALLOC_INDEX", "${NOMAD_ALLOC_INDEX}".into()),
        ("AIC_ALLOC_COUNT", r.miners.to_string()),
        ("AIC_ATTEMPT", "${NOMAD_META_aic_attempt}".into()),
        ("AIC_MINER", "${node.unique.name}".into()),
        ("AIC_HOST", "${NOMAD_IP_rdzv}".into()),
        ("AIC_PORT", "${NOMAD_PORT_rdzv}".into()),
        ("AIC_WORK_DIR", "${NOMAD_TASK_DIR}".into()),
    ] {
        env.insert(k.into(), json!(v));
    }
    let mut ports = vec![json!({"Label": "rdzv"})];
    let mut services = vec![];
    if serve {
        env.insert("AIC_SERVE_PORT".into(), json!("${NOMAD_PORT_http}"));
        ports.push(json!({"Label": "http"}));
        services.push(json!({
            "Name": format!("aic-serve-{}", job.job),
            "PortLabel": "http",
            "Provider": "nomad",
            "Tags": ["aic", format!("owner-{}", job.owner), format!("job-{}", job.job)],
            // The user's app need not have any particular path: Nomad checks that uWSGI
            // listens, and the worker's own check (GET / below 500) governs its registration.
            "Checks": [{
                "Name": "listening", "Type": "tcp",
                "Interval": ns(Duration::from_secs(10)), "Timeout": ns(Duration::from_secs(2)),
            }],
        }));
    }
    let meta = json!({
        "aic_job": job.job.to_string(),
        "aic_owner": job.owner.to_string(),
        "aic_attempt": attempt.to_string(),
        "aic_kind": if serve { "serve" } else { "train" },
    });
    let devices =
        if r.gpus_per_miner > 0 { vec![json!({"Name": GPU_DEVICE, "Count": r.gpus_per_miner})] } else { vec![] };
    let mut spec = json!({
        "ID": id,
        "Name": id,
        "Type": if serve { "service" } else { "batch" },
        "Datacenters": [gateway(cfg, m)],
        "Priority": 50,
        "Meta": meta,
        "TaskGroups": [{
            "Name": if serve { "serve" } else { "train" },
            "Count": r.miners,
            // One allocation per miner: the request is N miners × G GPUs.
            "Constraints": [{"Operand": "distinct_hosts", "RTarget": "true"}],
            "Spreads": [{"Attribute": "${node.unique.id}", "Weight": 100}],
            // aic restarts the job as a whole (see the module docs), Nomad does not.
            "RestartPolicy": {"Attempts": 0, "Mode": "fail", "Interval": ns(Duration::from_secs(60)), "Delay": ns(Duration::from_secs(5))},
            "ReschedulePolicy": {"Attempts": 0, "Unlimited": false, "Interval": ns(Duration::from_secs(60)), "Delay": ns(Duration::from_secs(5)), "DelayFunction": "constant"},
            "EphemeralDisk": {"SizeMB": 10240, "Migrate": false, "Sticky": false},
            "Networks": [{"Mode": "host", "DynamicPorts": ports}],
            "Services": services,
            "Tasks": [{
                "Name": "worker",
                "Driver": cfg.driver,
                "Config": {"command": cfg.worker},
                "Env": env,
                "Templates": templates,
                "Resources": {"CPU": cfg.cpu_mhz, "MemoryMB": cfg.memory_mb, "Devices": devices},
                "KillSignal": "SIGTERM",
                "KillTimeout": ns(KILL_TIMEOUT),
                "Meta": {"aic_job": job.job.to_string()},
            }],
        }],
    });
    if let Some(ns_) = &cfg.namespace {
        spec["Namespace"] = json!(ns_);
    }
    if let Some(region) = &cfg.region {
        spec["Region"] = json!(region);
    }
    if serve {
        // A service runs until removed; the update stanza keeps replicas up while rolling.
        spec["TaskGroups"][0]["RestartPolicy"] = json!({"Attempts": 3, "Mode": "delay", "Interval": ns(Duration::from_secs(300)), "Delay": ns(Duration::from_secs(10))});
        spec["TaskGroups"][0]["ReschedulePolicy"] = json!({"Unlimited": true, "Delay": ns(Duration::from_secs(10)), "DelayFunction": "exponential", "MaxDelay": ns(Duration::from_secs(300))});
        spec["TaskGroups"][0]["Constraints"] = json!([]);
    }
    spec
}

/// A person's reading of an evaluation's `FailedTGAllocs` (the metrics Nomad gives for a
/// task group it could not place).
pub fn placement_reason(failed: &Value, gpus: u32, gateway: &str) -> String {
    let Some((_, m)) = failed.as_object().and_then(|o| o.iter().next()) else {
        return format!("waiting for {gpus} free {GPU_DEVICE} in gateway {gateway}");
    };
    let n = |k: &str| m[k].as_u64().unwrap_or(0);
    let mut why = vec![];
    if let Some(d) = m["DimensionExhausted"].as_object() {
        for (k, v) in d {
            why.push(format!("{v} out of {k}"));
        }
    }
    if let Some(c) = m["ConstraintFiltered"].as_object() {
        for (k, v) in c {
            why.push(format!("{v} filtered by {k}"));
        }
    }
    let mut s = format!("no node with {gpus} free {GPU_DEVICE} in gateway {gateway}");
    if n("NodesEvaluated") > 0 || !why.is_empty() {
        s.push_str(&format!(
            " ({} node{} evaluated",
            n("NodesEvaluated"),
            if n("NodesEvaluated") == 1 { "" } else { "s" }
        ));
        if !why.is_empty() {
            s.push_str(&format!(": {}", why.join(", ")));
        }
        s.push(')');
    }
    if n("CoalescedFailures") > 0 {
        s.push_str(&format!(
            "; {} more allocation{} waiting",
            n("CoalescedFailures"),
            if n("CoalescedFailures") == 1 { "" } else { "s" }
        ));
    }
    s
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterResponse {
    #[serde(rename = "EvalID", default)]
    eval_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Evaluation {
    #[serde(default)]
    status: String,
    #[serde(rename = "FailedTGAllocs", default)]
    failed_tg_allocs: Option<Value>,
    #[serde(default)]
    blocked_eval: String,
    #[serde(default)]
    status_description: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AllocStub {
    #[serde(default)]
    node_name: String,
    #[serde(default)]
    client_status: String,
    #[serde(default)]
    desired_status: String,
}

/// The Nomad backend.
#[derive(Clone)]
pub struct NomadScheduler {
    cfg: NomadConfig,
    http: reqwest::Client,
}

impl NomadScheduler {
    pub fn new(cfg: NomadConfig) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(70)).build().expect("an HTTP client builds");
        NomadScheduler { cfg, http }
    }

    pub fn config(&self) -> &NomadConfig {
        &self.cfg
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> String {
        let mut q: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        if let Some(ns_) = &self.cfg.namespace {
            q.push(("namespace".into(), ns_.clone()));
        }
        if let Some(r) = &self.cfg.region {
            q.push(("region".into(), r.clone()));
        }
        let mut u = format!("{}/v1/{path}", self.cfg.addr);
        if !q.is_empty() {
            u.push('?');
            u.push_str(&url::form_urlencoded::Serializer::new(String::new()).extend_pairs(q).finish());
        }
        u
    }

    /// One API call; `Ok(None)` for 404.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Option<Value>, NomadError> {
        let mut rb = self.http.request(method, self.url(path, query));
        if let Some(t) = &self.cfg.token {
            rb = rb.header("X-Nomad-Token", t);
        }
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b.to_string());
        }
        let resp = rb.send().await.map_err(|e| NomadError::Unreachable(format!("{}: {e}", self.cfg.addr)))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| NomadError::Unreachable(e.to_string()))?;
        match status.as_u16() {
            200..=299 => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| NomadError::Api(status.as_u16(), format!("bad JSON: {e}"))),
            404 => Ok(None),
            403 => Err(NomadError::Forbidden(text.trim().to_string())),
            code => Err(NomadError::Api(code, text.trim().to_string())),
        }
    }

    /// Nodes ready for work, with their GPUs: (datacenter, name, total, healthy ids).
    async fn gpu_nodes(&self) -> Result<Vec<(String, String, u32, String)>, NomadError> {
        let nodes =
            self.call(reqwest::Method::GET, "nodes", &[("resources", "true".into())], None).await?.unwrap_or(json!([]));
        let mut out = vec![];
        for n in nodes.as_array().into_iter().flatten() {
            if n["Status"] != "ready" || n["SchedulingEligibility"] == "ineligible" {
                continue;
            }
            let gpus: u32 = n["NodeResources"]["Devices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["Vendor"] == "nvidia" && d["Type"] == "gpu")
                .map(|d| {
                    d["Instances"].as_array().map(|i| i.iter().filter(|x| x["Healthy"] != false).count()).unwrap_or(0)
                        as u32
                })
                .sum();
            out.push((
                n["Datacenter"].as_str().unwrap_or("").to_string(),
                n["Name"].as_str().unwrap_or("").to_string(),
                gpus,
                n["ID"].as_str().unwrap_or("").to_string(),
            ));
        }
        Ok(out)
    }

    async fn allocations(&self, id: &str) -> Result<Vec<AllocStub>, NomadError> {
        let v =
            self.call(reqwest::Method::GET, &format!("job/{id}/allocations"), &[], None).await?.unwrap_or(json!([]));
        serde_json::from_value(v).map_err(|e| NomadError::Api(200, format!("allocations: {e}")))
    }

    /// Waits (blocking query) for the evaluation to be processed.
    async fn evaluation(&self, eval_id: &str) -> Result<Option<Evaluation>, NomadError> {
        let mut index = 0u64;
        for _ in 0..6 {
            let q = [("index", index.to_string()), ("wait", "10s".to_string())];
            let Some(v) = self.call(reqwest::Method::GET, &format!("evaluation/{eval_id}"), &q, None).await? else {
                return Ok(None);
            };
            index = v["ModifyIndex"].as_u64().unwrap_or(index);
            let e: Evaluation =
                serde_json::from_value(v).map_err(|e| NomadError::Api(200, format!("evaluation: {e}")))?;
            if e.status != "pending" {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

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
        let nodes = self.gpu_nodes().await?;
        let fitting = nodes.iter().filter(|(dc, _, g, _)| *dc == gw && *g >= r.gpus_per_miner).count() as u32;
        let in_gw = nodes.iter().filter(|(dc, ..)| *dc == gw).count();
        if fitting < r.miners && r.kind == JobKind::Train {
            return Err(ScheduleError::Unplaceable(format!(
                "needs {} miner{} with {} {GPU_DEVICE} each; gateway {gw} has {in_gw} ready node{}, {fitting} with that many GPUs",
                r.miners,
                if r.miners == 1 { "" } else { "s" },
                r.gpus_per_miner,
                if in_gw == 1 { "" } else { "s" },
            )));
        }
        let body = json!({
            "Job": job_spec(&self.cfg, job, m, attempt),
            "EnforceIndex": only_if_new,
            "JobModifyIndex": 0,
        });
        let id = nomad_id(job);
        let resp = match self.call(reqwest::Method::POST, "jobs", &[], Some(&body)).await {
            Ok(Some(v)) => serde_json::from_value::<RegisterResponse>(v)
                .map_err(|e| ScheduleError::Backend(format!("register answer: {e}")))?,
            Ok(None) => return Err(ScheduleError::Backend("Nomad answered 404 to registering a job".into())),
            Err(NomadError::Api(_, text)) if only_if_new && text.contains("job already exists") => {
                // Registered before (a duplicate event): read back where it is.
                return self.placement(&id, &gw, r.gpus_per_miner).await;
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(e) = self.evaluation(&resp.eval_id).await?
            && let Some(f) = e.failed_tg_allocs.filter(|f| f.as_object().is_some_and(|o| !o.is_empty()))
        {
            let _ = (&e.blocked_eval, &e.status_description);
            return Ok(Submitted::Queued(placement_reason(&f, r.gpus_per_miner, &gw)));
        }
        self.placement(&id, &gw, r.gpus_per_miner).await
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

/// What the watcher did about one allocation update.
#[derive(Debug, Clone, PartialEq)]
pub enum AllocAction {
    Nothing,
    /// The job was registered again with this attempt.
    Restarted(u32),
    /// Retries were used up; the job failed with this reason.
    Failed(String),
    /// The program failed (the worker said so): the other allocations were stopped.
    Stopped,
}

impl NomadScheduler {
    /// Follows Nomad's event stream (allocation updates in the namespace) and acts on aic
    /// jobs' lost or failed allocations; reconnects from the last index after a drop. No
    /// polling: the stream is a long-lived response.
    pub async fn watch(&self, store: Store, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut index = 0u64;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                r = self.follow(&store, &mut index) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "Nomad event stream dropped; reconnecting");
                    }
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
        }
    }

    /// [`Self::watch`] on an owned scheduler, for `tokio::spawn`.
    pub async fn watch_owned(self, store: Store, stop: impl std::future::Future<Output = ()>) {
        self.watch(store, stop).await
    }

    async fn follow(&self, store: &Store, index: &mut u64) -> Result<(), NomadError> {
        let url = self.url("event/stream", &[("topic", "Allocation:*".into()), ("index", index.to_string())]);
        let mut rb = reqwest::Client::new().get(url);
        if let Some(t) = &self.cfg.token {
            rb = rb.header("X-Nomad-Token", t);
        }
        let mut resp = rb.send().await.map_err(|e| NomadError::Unreachable(format!("{}: {e}", self.cfg.addr)))?;
        if !resp.status().is_success() {
            let code = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            return Err(if code == 403 { NomadError::Forbidden(text) } else { NomadError::Api(code, text) });
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| NomadError::Unreachable(e.to_string()))? {
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(v) = serde_json::from_slice::<Value>(&line) else { continue };
                for ev in v["Events"].as_array().into_iter().flatten() {
                    if let Some(a) = ev.get("Payload").and_then(|p| p.get("Allocation")) {
                        match self.on_alloc(store, a).await {
                            Ok(AllocAction::Nothing) => {}
                            Ok(act) => tracing::info!(job = ?a["JobID"], ?act, "acted on an allocation update"),
                            Err(e) => tracing::warn!(job = ?a["JobID"], error = %e, "allocation update not handled"),
                        }
                    }
                }
                if let Some(i) = v["Index"].as_u64() {
                    *index = (*index).max(i);
                }
            }
        }
        Ok(())
    }

    /// One allocation update. A lost allocation (its node gone) or one that failed while the
    /// job is still going restarts the whole job from its last checkpoint with the next
    /// attempt (at most [`MAX_RETRIES`] times, then the job fails with the reason); a failure
    /// the worker recorded stops the other allocations. Updates of an older version of the
    /// job (the allocations a restart replaced) change nothing.
    pub async fn on_alloc(&self, store: &Store, a: &Value) -> Result<AllocAction, ScheduleError> {
        let Some(id) = a["JobID"].as_str().filter(|id| id.starts_with("aic-")) else { return Ok(AllocAction::Nothing) };
        let client = a["ClientStatus"].as_str().unwrap_or("");
        if !matches!(client, "lost" | "failed") {
            return Ok(AllocAction::Nothing);
        }
        let Some(job) = self.call(reqwest::Method::GET, &format!("job/{id}"), &[], None).await? else {
            return Ok(AllocAction::Nothing); // deregistered (cancelled)
        };
        if job["Stop"] == true || a["JobVersion"].as_u64() < job["Version"].as_u64() {
            return Ok(AllocAction::Nothing);
        }
        let meta = &job["Meta"];
        let (Some(owner), Some(jid)) = (meta["aic_owner"].as_str(), meta["aic_job"].as_str()) else {
            return Ok(AllocAction::Nothing);
        };
        let key = JobKey::new(
            owner.parse().map_err(|e| ScheduleError::Backend(format!("{id}: aic_owner: {e}")))?,
            jid.parse().map_err(|e: String| ScheduleError::Backend(format!("{id}: aic_job: {e}")))?,
        );
        let attempt: u32 = meta["aic_attempt"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
        let backend = |e: crate::StoreError| ScheduleError::Backend(e.to_string());
        let current = status::current(store, &key).await.map_err(backend)?;
        if current.as_ref().is_some_and(|c| c.state.is_terminal()) {
            // The worker recorded how the program ended: nothing of the job should run on.
            self.cancel(&key).await?;
            return Ok(AllocAction::Stopped);
        }
        if meta["aic_kind"] == "serve" {
            // Replicas do not depend on each other: Nomad reschedules the lost one alone
            // (the service's ReschedulePolicy) while the others serve.
            return Ok(AllocAction::Nothing);
        }
        let node = a["NodeName"].as_str().unwrap_or("?");
        let why = recovery::lost(
            "allocation",
            a["Name"].as_str().and_then(|n| n.rsplit('[').next()).map(|n| n.trim_end_matches(']')).unwrap_or("?"),
            node,
            &format!(
                "{client}{}",
                a["ClientDescription"]
                    .as_str()
                    .filter(|d| !d.is_empty())
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        );
        let attempt = match recovery::after_lost_allocation(store, &key, &why, attempt).await.map_err(backend)? {
            recovery::AfterLoss::Retry { attempt } => attempt,
            recovery::AfterLoss::Failed(reason) => {
                self.cancel(&key).await?;
                return Ok(AllocAction::Failed(reason));
            }
            recovery::AfterLoss::Ended => return Ok(AllocAction::Nothing),
        };
        let manifest: JobManifest = store
            .get_json(&key.manifest(), aic_schemas::validate::MAX_DOC_BYTES)
            .await
            .map_err(backend)?
            .ok_or_else(|| ScheduleError::Backend(format!("{id}: the job has no manifest")))?;
        self.register(&key, &manifest, attempt, false).await?;
        Ok(AllocAction::Restarted(attempt))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NomadError {
    #[error("cannot reach Nomad at {0}")]
    Unreachable(String),
    #[error("Nomad refused the token (403: {0}); check NOMAD_TOKEN's ACL policy (submit-job, read-job, node:read)")]
    Forbidden(String),
    #[error("Nomad answered {0}: {1}")]
    Api(u16, String),
}

impl From<NomadError> for ScheduleError {
    fn from(e: NomadError) -> Self {
        ScheduleError::Backend(e.to_string())
    }
}

#[async_trait]
impl Scheduler for NomadScheduler {
    async fn submit(&self, job: &JobKey, m: &JobManifest) -> Result<Submitted, ScheduleError> {
        self.register(job, m, 0, true).await
    }

    async fn cancel(&self, job: &JobKey) -> Result<(), ScheduleError> {
        // Deregistering stops every allocation (KillSignal, then KillTimeout); unknown is fine.
        self.call(reqwest::Method::DELETE, &format!("job/{}", nomad_id(job)), &[], None).await?;
        Ok(())
    }

    /// The addresses of the deployment's Nomad service (`aic-serve-<job>`): what Nomad
    /// placed, not what a registration in the bucket claims.
    async fn endpoints(&self, deployment: &str) -> Result<Option<Vec<(String, u16)>>, ScheduleError> {
        if deployment.parse::<aic_schemas::JobId>().is_err() {
            return Ok(Some(Vec::new()));
        }
        let regs = self
            .call(reqwest::Method::GET, &format!("service/aic-serve-{deployment}"), &[], None)
            .await?
            .unwrap_or(json!([]));
        let out = regs
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| {
                        Some((r["Address"].as_str()?.to_string(), u16::try_from(r["Port"].as_u64()?).ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(out))
    }

    async fn pool(&self) -> Result<Vec<GatewayInfo>, ScheduleError> {
        let nodes = self.gpu_nodes().await?;
        // GPUs in use: the devices of allocations that hold them now.
        let allocs = self
            .call(reqwest::Method::GET, "allocations", &[("resources", "true".into())], None)
            .await?
            .unwrap_or(json!([]));
        let mut used: std::collections::HashMap<String, u32> = Default::default();
        for a in allocs.as_array().into_iter().flatten() {
            if !matches!(a["ClientStatus"].as_str(), Some("pending" | "running")) {
                continue;
            }
            let node = a["NodeID"].as_str().unwrap_or("").to_string();
            let n: u32 = a["AllocatedResources"]["Tasks"]
                .as_object()
                .into_iter()
                .flat_map(|t| t.values())
                .flat_map(|t| t["Devices"].as_array().cloned().unwrap_or_default())
                .filter(|d| d["Vendor"] == "nvidia" && d["Type"] == "gpu")
                .map(|d| d["DeviceIDs"].as_array().map(|i| i.len()).unwrap_or(0) as u32)
                .sum();
            *used.entry(node).or_default() += n;
        }
        let mut gws: std::collections::BTreeMap<String, Vec<MinerInfo>> = Default::default();
        for (dc, name, gpus, id) in nodes {
            let busy = used.get(&id).copied().unwrap_or(0);
            gws.entry(dc).or_default().push(MinerInfo { name, gpus, free_gpus: gpus.saturating_sub(busy) });
        }
        Ok(gws.into_iter().map(|(name, miners)| GatewayInfo { name, miners }).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aic_schemas::{JobId, JobRequest};

    pub fn cfg() -> NomadConfig {
        NomadConfig {
            addr: "http://nomad:4646".into(),
            token: Some("secret".into()),
            region: None,
            namespace: Some("aic".into()),
            datacenter: "test_gateway".into(),
            driver: "exec".into(),
            worker: "/usr/local/bin/aic-worker".into(),
            cpu_mhz: 2000,
            memory_mb: 8192,
            worker_env: vec![
                ("AIC_STORE".into(), "s3://pool".into()),
                ("AWS_ACCESS_KEY_ID".into(), "AKIA".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "shh".into()),
            ],
            secrets_var: Some("nomad/jobs/aic-worker".into()),
            worker_gateway: None,
        }
    }

    fn manifest(kind: &str, miners: u32, gpus: u32) -> (JobKey, JobManifest) {
        let now = chrono::Utc::now();
        let req: JobRequest = serde_json::from_value(json!({
            "version": 1, "kind": kind, "owner": "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
            "job_id": JobId::generate(), "entrypoint": "train.py", "miners": miners, "gpus_per_miner": gpus,
            "max_hours": 1.0, "created_at": now, "expires_at": now + chrono::Duration::hours(1),
        }))
        .unwrap();
        let job = JobKey::new(req.owner, req.job_id.clone());
        let m: JobManifest = serde_json::from_value(json!({
            "version": 1, "request": req, "quote": {"gpu_hours": 1.0, "price_per_gpu_hour": "0", "total": "0"},
            "validated_at": now,
        }))
        .unwrap();
        (job, m)
    }

    #[test]
    fn with_a_worker_gateway_workers_get_their_jobs_token_and_no_store_credentials() {
        let (job, m) = manifest("train", 2, 1);
        let mut c = cfg();
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        c.worker_gateway =
            Some(crate::grant::WorkerGateway { url: "https://functions.pool:8080".into(), secret: secret.clone() });
        let j = job_spec(&c, &job, &m, 0);
        let task = &j["TaskGroups"][0]["Tasks"][0];
        let env = task["Env"].as_object().unwrap();
        assert_eq!(env["AIC_WORKER_GATEWAY"], "https://functions.pool:8080");
        let grant =
            crate::grant::verify(&secret, env["AIC_WORKER_TOKEN"].as_str().unwrap(), chrono::Utc::now()).unwrap();
        assert_eq!(grant.job_key(), job);
        for k in ["AIC_STORE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            assert!(!env.contains_key(k), "{k} must not reach the workers");
        }
        assert!(task["Templates"].as_array().is_none_or(|t| t.is_empty()), "no credentials template: {task}");
    }

    /// Field by field against the Nomad HTTP API's job specification (`POST /v1/jobs`).
    #[test]
    fn a_train_job_is_a_batch_job_of_one_allocation_per_miner_with_its_gpus() {
        let (job, m) = manifest("train", 2, 3);
        let j = job_spec(&cfg(), &job, &m, 0);
        assert_eq!(j["ID"], format!("aic-{}", job.job));
        assert_eq!(j["Name"], j["ID"]);
        assert_eq!(j["Type"], "batch");
        assert_eq!(j["Datacenters"], json!(["test_gateway"]));
        assert_eq!(j["Namespace"], "aic");
        assert_eq!(j["Meta"]["aic_owner"], job.owner.to_string());
        assert_eq!(j["Meta"]["aic_attempt"], "0");
        let tg = &j["TaskGroups"][0];
        assert_eq!(tg["Count"], 2);
        assert_eq!(tg["Constraints"][0], json!({"Operand": "distinct_hosts", "RTarget": "true"}));
        assert_eq!(tg["Spreads"][0]["Attribute"], "${node.unique.id}");
        assert_eq!(tg["RestartPolicy"]["Attempts"], 0);
        assert_eq!(tg["RestartPolicy"]["Mode"], "fail");
        assert_eq!(tg["ReschedulePolicy"]["Attempts"], 0);
        assert_eq!(tg["ReschedulePolicy"]["Unlimited"], false);
        assert_eq!(tg["Networks"][0]["Mode"], "host");
        assert_eq!(tg["Networks"][0]["DynamicPorts"], json!([{"Label": "rdzv"}]));
        let t = &tg["Tasks"][0];
        assert_eq!(t["Driver"], "exec");
        assert_eq!(t["Config"]["command"], "/usr/local/bin/aic-worker");
        assert_eq!(t["Resources"]["Devices"], json!([{"Name": "nvidia/gpu", "Count": 3}]));
        assert_eq!(t["Resources"]["CPU"], 2000);
        assert_eq!(t["Resources"]["MemoryMB"], 8192);
        assert_eq!(t["KillSignal"], "SIGTERM");
        assert_eq!(t["KillTimeout"], 30_000_000_000u64, "durations are nanoseconds");
        let env = &t["Env"];
        assert_eq!(env["AIC_STORE"], "s3://pool");
        // Credentials come from a Nomad Variable through a template, not the job spec.
        assert!(env.get("AWS_SECRET_ACCESS_KEY").is_none() && !j.to_string().contains("shh"));
        let tmpl = &t["Templates"][0];
        assert_eq!(tmpl["Envvars"], true);
        assert_eq!(tmpl["DestPath"], "${NOMAD_SECRETS_DIR}/store.env");
        assert!(tmpl["EmbeddedTmpl"].as_str().unwrap().starts_with("{{ with nomadVar \"nomad/jobs/aic-worker\" }}"));
        assert_eq!(env["AIC_JOB_ID"], job.job.to_string());
        assert_eq!(env["AIC_ALLOC_INDEX"], "${NOMAD_ALLOC_INDEX}");
        assert_eq!(env["AIC_ALLOC_COUNT"], "2");
        assert_eq!(env["AIC_ATTEMPT"], "${NOMAD_META_aic_attempt}");
        assert_eq!(env["AIC_HOST"], "${NOMAD_IP_rdzv}");
        assert_eq!(env["AIC_PORT"], "${NOMAD_PORT_rdzv}");
        assert_eq!(env["AIC_WORK_DIR"], "${NOMAD_TASK_DIR}");
        // A restart is a new version with the next attempt.
        assert_eq!(job_spec(&cfg(), &job, &m, 2)["Meta"]["aic_attempt"], "2");
    }

    #[test]
    fn a_serve_job_is_a_service_with_a_nomad_native_health_checked_service() {
        let (job, m) = manifest("serve", 3, 1);
        let j = job_spec(&cfg(), &job, &m, 0);
        assert_eq!(j["Type"], "service");
        let tg = &j["TaskGroups"][0];
        assert_eq!(tg["Count"], 3);
        let svc = &tg["Services"][0];
        assert_eq!(svc["Provider"], "nomad");
        assert_eq!(svc["PortLabel"], "http");
        assert_eq!(svc["Checks"][0]["Type"], "tcp", "an app need not answer any particular path");
        assert!(svc["Checks"][0].get("Path").is_none());
        assert!(tg["Networks"][0]["DynamicPorts"].as_array().unwrap().contains(&json!({"Label": "http"})));
        assert_eq!(tg["Tasks"][0]["Env"]["AIC_SERVE_PORT"], "${NOMAD_PORT_http}");
        assert_eq!(tg["ReschedulePolicy"]["Unlimited"], true);
    }

    #[test]
    fn placement_failures_read_as_sentences() {
        let f = json!({"train": {"NodesEvaluated": 3, "NodesFiltered": 0, "NodesExhausted": 3,
            "DimensionExhausted": {"devices: nvidia/gpu": 3}, "CoalescedFailures": 1}});
        assert_eq!(
            placement_reason(&f, 2, "test_gateway"),
            "no node with 2 free nvidia/gpu in gateway test_gateway (3 nodes evaluated: 3 out of devices: nvidia/gpu); 1 more allocation waiting"
        );
        assert_eq!(placement_reason(&json!({}), 1, "g"), "waiting for 1 free nvidia/gpu in gateway g");
    }
}
