//! The Nomad job specification (`POST /v1/jobs`) of an aic job, and Nomad's placement
//! failures read as sentences.

use std::time::Duration;

use aic_schemas::{JobKind, JobManifest};
use serde_json::{Value, json};

use super::NomadConfig;
use crate::layout::JobKey;
use crate::scheduler::gpus;
use crate::scheduler::launch::{self, Launch, StoreAccess};

/// Nanoseconds, as Nomad's JSON API counts durations.
fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

pub const GPU_DEVICE: &str = "nvidia/gpu";
/// How long a cancelled task gets between SIGTERM and SIGKILL (the worker ships its last
/// logs and checkpoint in that time).
pub const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// The Nomad job id of an aic job.
pub fn nomad_id(job: &JobKey) -> String {
    format!("aic-{}", job.job)
}

pub(super) fn gateway(cfg: &NomadConfig, m: &JobManifest) -> String {
    m.placement.gateway.clone().unwrap_or_else(|| cfg.datacenter.clone())
}

/// What one allocation of `r` asks of its node: GPUs, memory (MiB; scaled with its GPUs) and
/// disk (MiB, the group's ephemeral disk).
pub fn rank_ask(cfg: &NomadConfig, r: &aic_schemas::JobRequest) -> (u32, u64, u64) {
    (r.gpus_per_miner, u64::from(cfg.memory_mb) * u64::from(r.gpus_per_miner.max(1)), EPHEMERAL_DISK_MB)
}

/// Where a user's image finds the pool's worker (`NomadConfig::worker_mount`, bound read-only).
pub const WORKER_AT: &str = "/opt/aic";

/// Where a task finds the clients' environment cache (`NomadConfig::env_cache_volume`).
pub const ENV_CACHE_AT: &str = "/var/lib/aic/env-cache";

/// The ephemeral disk of an allocation (its work folder, the project, pip's installs).
pub const EPHEMERAL_DISK_MB: u64 = 10240;

/// The worker task's driver configuration.
///
/// - `docker` (the default): the worker image (`infra/nomad/worker.Dockerfile`). With a GPU
///   reserved, Nomad's docker driver runs the container with the NVIDIA runtime
///   (`nvidia_runtime`) and the plugin's `NVIDIA_VISIBLE_DEVICES`, so the ranks see exactly
///   the GPUs Nomad gave the allocation. Host networking: MPI, Gloo and NCCL open ports
///   beyond the rendezvous one between miners. `/dev/shm` of half the allocation's memory
///   (at most 8 GiB): NCCL and PyTorch's data loaders pass tensors through it, and Docker's
///   64 MiB default breaks them; what is written there counts against the task's memory
///   limit, so it stays below it. `image_pull_timeout` 30 minutes: the worker image is ~10 GB,
///   and the driver's 5-minute default would spend a fresh miner's first job on the pull.
/// - `exec`: isolation by chroot and cgroups, but its `/dev` holds no `/dev/nvidia*`
///   (drivers/shared/executor), so only for pools without GPUs.
/// - `raw_exec`: GPUs visible, but the user's program runs as the Nomad client's user on the
///   miner, with no isolation at all: only for a pool whose users are all trusted.
pub fn task_config(cfg: &NomadConfig, memory_mb: u64) -> Value {
    match cfg.driver.as_str() {
        "docker" => json!({
            "image": cfg.image,
            "command": cfg.worker,
            "network_mode": "host",
            "shm_size": ((memory_mb << 20) / 2).min(8u64 << 30),
            "image_pull_timeout": "30m",
        }),
        _ => json!({"command": cfg.worker}),
    }
}

/// The Nomad Variable holding a job's worker token (a path its tasks' workload identity
/// reads without any policy: `nomad/jobs/<job id>`).
pub fn token_var(nomad_id: &str) -> String {
    format!("nomad/jobs/{nomad_id}")
}

/// The job's Nomad specification (the `Job` of `POST /v1/jobs`), for `attempt`, its programs
/// running as `uid` (handed out by the pool: `uids`; not used with `raw_exec`).
pub fn job_spec(cfg: &NomadConfig, job: &JobKey, m: &JobManifest, attempt: u32, uid: u32) -> Value {
    let r = &m.request;
    // A rank per GPU: the allocation's memory scales with its GPUs (`NomadConfig::memory_mb`).
    let (_, memory_mb, disk_mb) = rank_ask(cfg, r);
    let id = nomad_id(job);
    let serve = r.kind == JobKind::Serve;
    let mut env = serde_json::Map::new();
    let worker_gw = cfg.worker_gateway.as_ref();
    let access = match (worker_gw, &cfg.secrets_var) {
        (Some(_), _) => StoreAccess::Gateway,
        (None, Some(_)) => StoreAccess::Apart,
        (None, None) => StoreAccess::Environment,
    };
    for (k, v) in launch::passed_on(&cfg.worker_env, access) {
        env.insert(k.clone(), json!(v));
    }
    if let Some(g) = worker_gw {
        env.insert("AIC_WORKER_GATEWAY".into(), json!(g.url));
    }
    // The uid the worker drops to before anything of the job runs (the task starts as the
    // container's root). Not with raw_exec: its task is the client's own user on the miner,
    // whose `/etc/passwd` is the machine's.
    if cfg.driver != "raw_exec" {
        env.insert(crate::scheduler::job_user::JOB_UID.into(), json!(uid.to_string()));
    }
    let mut templates: Vec<Value> = cfg
        .secrets_var
        .iter()
        .filter(|_| worker_gw.is_none())
        .map(|var| {
            json!({
                "DestPath": "${NOMAD_SECRETS_DIR}/store.env",
                "Envvars": true,
                // Root's alone (the task starts as root; the job's uid cannot read it when
                // Nomad renders it again: a client restart, a changed variable).
                "Perms": "0600",
                "ChangeMode": "restart",
                "EmbeddedTmpl": format!(
                    "{{{{ with nomadVar \"{var}\" }}}}\nAWS_ACCESS_KEY_ID={{{{ .s3_access_key }}}}\nAWS_SECRET_ACCESS_KEY={{{{ .s3_secret_key }}}}\n{{{{ end }}}}\n"
                ),
            })
        })
        .collect();
    if worker_gw.is_some() {
        // The job's token, from the job's own Nomad Variable (written by `register`, which a
        // task's workload identity may read: `nomad/jobs/<job id>`), never in the job's `Env`,
        // which anyone with `read-job` reads. The worker deletes the file once read.
        templates.push(json!({
            "DestPath": "${NOMAD_SECRETS_DIR}/worker.env",
            "Envvars": true,
            "Perms": "0600",
            "ChangeMode": "noop",
            "EmbeddedTmpl": format!(
                "{{{{ with nomadVar \"{}\" }}}}\nAIC_WORKER_TOKEN={{{{ .worker_token }}}}\n{{{{ end }}}}\n",
                token_var(&id)
            ),
        }));
    }
    // Nomad fills each allocation's own values in as it starts the task.
    let runtime = |k: &'static str| {
        match k {
            launch::ALLOC_INDEX => "${NOMAD_ALLOC_INDEX}",
            launch::ATTEMPT => "${NOMAD_META_aic_attempt}",
            launch::MINER => "${node.unique.name}",
            launch::HOST => "${NOMAD_IP_rdzv}",
            launch::PORT => "${NOMAD_PORT_rdzv}",
            launch::WORK_DIR => "${NOMAD_TASK_DIR}",
            launch::SERVE_PORT => "${NOMAD_PORT_http}",
            launch::SERVE_UNTIL => "${NOMAD_META_aic_serve_until}",
            _ => unreachable!("{k} is not filled in by the runtime"),
        }
        .to_string()
    };
    for (k, v) in Launch::template(&job.owner, &job.job, r.miners, serve, runtime) {
        env.insert(k.into(), json!(v));
    }
    let mut ports = vec![json!({"Label": "rdzv"})];
    let mut services = vec![];
    if serve {
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
    let mut meta = meta;
    if cfg.driver != "raw_exec" {
        meta["aic_uid"] = json!(uid.to_string());
    }
    let devices = if r.gpus_per_miner > 0 { vec![device_ask(r)] } else { vec![] };
    let mut spec = json!({
        "ID": id,
        "Name": id,
        "Type": if serve { "service" } else { "batch" },
        "Datacenters": [gateway(cfg, m)],
        "Priority": 50,
        "Meta": meta,
        "TaskGroups": [{
            "Name": if serve { "serve" } else { "train" },
            // An autoscaled deployment starts with its fewest replicas (at least one).
            "Count": super::super::replicas_at_start(r),
            // One allocation per miner: the request is N miners × G GPUs.
            "Constraints": [{"Operand": "distinct_hosts", "RTarget": "true"}],
            "Spreads": [{"Attribute": "${node.unique.id}", "Weight": 100}],
            // aic restarts the job as a whole (see the module docs), Nomad does not.
            "RestartPolicy": {"Attempts": 0, "Mode": "fail", "Interval": ns(Duration::from_secs(60)), "Delay": ns(Duration::from_secs(5))},
            "ReschedulePolicy": {"Attempts": 0, "Unlimited": false, "Interval": ns(Duration::from_secs(60)), "Delay": ns(Duration::from_secs(5)), "DelayFunction": "constant"},
            // A rank on a node that stops answering is not replaced by Nomad (its reconciler
            // replaces lost allocations whatever the reschedule policy, scheduler/reconcile.go):
            // it stays `unknown` and aic restarts the whole job with the next attempt, so no
            // lone replacement starts beside the restart with the same index and attempt.
            // Nomad 1.8+ (the `disconnect` block).
            "Disconnect": {"Replace": false, "Reconcile": "keep_original"},
            "EphemeralDisk": {"SizeMB": disk_mb, "Migrate": false, "Sticky": false},
            "Networks": [{"Mode": "host", "DynamicPorts": ports}],
            "Services": services,
            "Tasks": [{
                "Name": "worker",
                "Driver": cfg.driver,
                "Config": task_config(cfg, memory_mb),
                "Env": env,
                "Templates": templates,
                "Resources": {"CPU": cfg.cpu_mhz, "MemoryMB": memory_mb, "Devices": devices},
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
        // A lost replica is replaced at once (the others keep serving).
        spec["TaskGroups"][0]["Disconnect"] = json!({"Replace": true, "Reconcile": "best_score"});
        // Autoscaled: the bounds Nomad itself holds every scaling to (api/tasks.go
        // `ScalingPolicy`; nomad/job_endpoint.go `Scale` refuses a count outside them).
        if super::super::autoscaled(r) {
            let least = r.serving.as_ref().and_then(|s| s.min_replicas).unwrap_or(1);
            spec["TaskGroups"][0]["Scaling"] = json!({"Enabled": true, "Min": least, "Max": r.miners, "Policy": {}});
        }
    }
    // The pool's nodes aic counts as room (`NomadConfig::node_pool`), when one is set.
    if let Some(pool) = &cfg.node_pool {
        spec["NodePool"] = json!(pool);
    }
    // The user's own image (allowed by validate against `NomadConfig::images`): the pool's
    // worker is not in it but bound in from the client, read-only (the docker driver's
    // `mount` block, which needs the plugin's `volumes { enabled = true }`), and is what runs.
    if let (Some(image), Some(host_dir)) = (&r.image, &cfg.worker_mount) {
        let task = &mut spec["TaskGroups"][0]["Tasks"][0];
        task["Config"]["image"] = json!(image);
        task["Config"]["command"] = json!(format!("{WORKER_AT}/aic-worker"));
        task["Config"]["mount"] = json!([{"type": "bind", "source": host_dir, "target": WORKER_AT, "readonly": true}]);
        task["Env"]["AIC_IMAGE"] = json!(image);
    }
    // The clients' environment cache: a host volume (the group's `volume`, the task's
    // `volume_mount`; `VolumeRequest` and `VolumeMount` in Nomad's api/tasks.go), writable
    // (the worker's keeper, root, writes it; the job's uid reads).
    if let Some(volume) = &cfg.env_cache_volume {
        spec["TaskGroups"][0]["Volumes"] =
            json!({"aic-env-cache": {"Name": "aic-env-cache", "Type": "host", "Source": volume, "ReadOnly": false}});
        let task = &mut spec["TaskGroups"][0]["Tasks"][0];
        task["VolumeMounts"] = json!([{"Volume": "aic-env-cache", "Destination": ENV_CACHE_AT, "ReadOnly": false}]);
        task["Env"][launch::ENV_CACHE] = json!(ENV_CACHE_AT);
    }
    spec
}

/// The task's device request: `nvidia/gpu` × the GPUs per miner, of the models and memory
/// the request asks. Nomad resolves a device constraint's `${device.model}` to the device
/// group's name and `${device.attr.memory}` to its `memory` attribute, and compares a literal
/// like `22855 MiB` by value and unit (`scheduler/feasible.go` `nodeDeviceMatches`,
/// `resolveDeviceTarget`, `checkAttributeConstraint`; the job specification's `device`
/// block). The models, in order of preference, are a `regexp` constraint (any of them) and
/// affinities weighted down the list (the first preferred), so Nomad places on the model the
/// user prefers where one is free.
fn device_ask(r: &aic_schemas::JobRequest) -> Value {
    let mut device = json!({"Name": GPU_DEVICE, "Count": r.gpus_per_miner});
    let mut constraints = vec![];
    if !r.gpu_types.is_empty() {
        constraints.push(
            json!({"LTarget": "${device.model}", "RTarget": gpus::models_regex(&r.gpu_types), "Operand": "regexp"}),
        );
    }
    if let Some(gb) = r.min_gpu_memory_gb {
        let mib = gpus::min_memory_mb(gb);
        constraints.push(json!({"LTarget": "${device.attr.memory}", "RTarget": format!("{mib} MiB"), "Operand": ">="}));
    }
    if !constraints.is_empty() {
        device["Constraints"] = json!(constraints);
    }
    if r.gpu_types.len() > 1 {
        let n = r.gpu_types.len() as i64;
        let affinities: Vec<Value> = r
            .gpu_types
            .iter()
            .enumerate()
            .map(|(i, m)| {
                json!({"LTarget": "${device.model}", "RTarget": gpus::models_regex(std::slice::from_ref(m)),
                    "Operand": "regexp", "Weight": 100 - (i as i64 * 100 / n)})
            })
            .collect();
        device["Affinities"] = json!(affinities);
    }
    device
}

/// A person's reading of an evaluation's `FailedTGAllocs` (the metrics Nomad gives for a
/// task group it could not place).
pub fn placement_reason(failed: &Value, gpus: u32, gateway: &str) -> String {
    let Some((_, m)) = failed.as_object().and_then(|o| o.iter().next()) else {
        return format!("waiting for {gpus} free {GPU_DEVICE} in gateway {gateway}");
    };
    let n = |k: &str| m[k].as_u64().unwrap_or(0);
    let mut why = vec![];
    // Nomad's own keys (scheduler/rank.go, feasible.go): a device ask no free device group
    // could meet is `devices: no devices match request` (or `… available`); a node short of
    // healthy devices is filtered as `missing devices`.
    if let Some(d) = m["DimensionExhausted"].as_object() {
        for (k, v) in d {
            why.push(match k.as_str() {
                "devices: no devices match request" | "devices: no devices available" => {
                    format!("{v} without {gpus} free {GPU_DEVICE}")
                }
                other => format!("{v} out of {other}"),
            });
        }
    }
    if let Some(c) = m["ConstraintFiltered"].as_object() {
        for (k, v) in c {
            why.push(match k.as_str() {
                "missing devices" => format!("{v} without {gpus} healthy {GPU_DEVICE}"),
                other => format!("{v} filtered by {other}"),
            });
        }
    }
    let mut s = format!("no node with {gpus} free {GPU_DEVICE} in gateway {gateway}");
    if n("NodesEvaluated") > 0 || !why.is_empty() {
        s.push_str(&format!(" ({} evaluated", crate::plural(n("NodesEvaluated"), "node")));
        if !why.is_empty() {
            s.push_str(&format!(": {}", why.join(", ")));
        }
        s.push(')');
    }
    if n("CoalescedFailures") > 0 {
        s.push_str(&format!("; {} waiting", crate::plural(n("CoalescedFailures"), "more allocation")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use aic_schemas::{JobId, JobRequest};

    pub fn cfg() -> NomadConfig {
        let mut c = NomadConfig::new("http://nomad:4646");
        c.token = Some("secret".into());
        c.namespace = Some("aic".into());
        c.datacenter = "test_gateway".into();
        c.image = "registry.pool/aic-worker:0.1.0".into();
        c.worker_env = vec![
            ("AIC_STORE".into(), "s3://pool".into()),
            ("AWS_ACCESS_KEY_ID".into(), "AKIA".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "shh".into()),
        ];
        c.secrets_var = Some("nomad/jobs".into());
        c
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
        let j = job_spec(&c, &job, &m, 0, 3_000_123);
        let task = &j["TaskGroups"][0]["Tasks"][0];
        let env = task["Env"].as_object().unwrap();
        assert_eq!(env["AIC_WORKER_GATEWAY"], "https://functions.pool:8080");
        // The token is not in the job's Env (anyone with `read-job` reads that): the task's
        // template reads it from the job's own Variable, which `register` writes.
        for k in ["AIC_WORKER_TOKEN", "AIC_STORE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            assert!(!env.contains_key(k), "{k} must not be in the job's Env");
        }
        let templates = task["Templates"].as_array().unwrap();
        assert_eq!(templates.len(), 1, "only the token's template, no credentials: {task}");
        assert_eq!(templates[0]["DestPath"], "${NOMAD_SECRETS_DIR}/worker.env");
        assert_eq!(templates[0]["Envvars"], true);
        assert_eq!(templates[0]["Perms"], "0600", "the job's uid cannot read what Nomad renders again");
        let tmpl = templates[0]["EmbeddedTmpl"].as_str().unwrap();
        assert!(tmpl.contains(&format!("nomadVar \"nomad/jobs/aic-{}\"", job.job)), "{tmpl}");
        assert!(tmpl.contains("AIC_WORKER_TOKEN={{ .worker_token }}"), "{tmpl}");
        let _ = secret;
    }

    /// Field by field against the Nomad HTTP API's job specification (`POST /v1/jobs`).
    #[test]
    fn a_train_job_is_a_batch_job_of_one_allocation_per_miner_with_its_gpus() {
        let (job, m) = manifest("train", 2, 3);
        let j = job_spec(&cfg(), &job, &m, 0, 3_000_123);
        assert_eq!(j["ID"], format!("aic-{}", job.job));
        assert_eq!(j["Name"], j["ID"]);
        assert_eq!(j["Type"], "batch");
        assert_eq!(j["Datacenters"], json!(["test_gateway"]));
        assert!(j.get("NodePool").is_none(), "none named unless configured");
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
        assert_eq!(tg["Disconnect"]["Replace"], false, "a lost rank is aic's to restart, never replaced alone");
        assert_eq!(tg["Networks"][0]["Mode"], "host");
        assert_eq!(tg["Networks"][0]["DynamicPorts"], json!([{"Label": "rdzv"}]));
        let t = &tg["Tasks"][0];
        assert_eq!(t["Driver"], "docker");
        assert_eq!(t["Config"]["image"], "registry.pool/aic-worker:0.1.0");
        assert_eq!(t["Config"]["command"], "/usr/local/bin/aic-worker");
        assert_eq!(t["Config"]["network_mode"], "host", "ranks reach each other on more ports than rdzv");
        // 3 GPUs: 3 × 8 GiB of memory, /dev/shm half of it at most 8 GiB, below the limit.
        assert_eq!(t["Config"]["shm_size"], 8u64 << 30);
        assert_eq!(t["Config"]["image_pull_timeout"], "30m", "a ~10 GB image outlasts the 5-minute default");
        let mut exec = cfg();
        exec.driver = "exec".into();
        assert_eq!(
            job_spec(&exec, &job, &m, 0, 3_000_123)["TaskGroups"][0]["Tasks"][0]["Config"],
            json!({"command": "/usr/local/bin/aic-worker"})
        );
        assert_eq!(t["Resources"]["Devices"], json!([{"Name": "nvidia/gpu", "Count": 3}]));
        assert_eq!(t["Resources"]["CPU"], 2000);
        assert_eq!(t["Resources"]["MemoryMB"], 3 * 8192, "memory scales with the allocation's GPUs");
        let (_, mut one) = (job.clone(), m.clone());
        one.request.gpus_per_miner = 1;
        let t1 = &job_spec(&cfg(), &job, &one, 0, 3_000_123)["TaskGroups"][0]["Tasks"][0];
        assert_eq!(t1["Resources"]["MemoryMB"], 8192);
        assert!(t1["Config"]["shm_size"].as_u64().unwrap() < 8192u64 << 20, "/dev/shm below the memory limit: {t1}");
        assert_eq!(t["KillSignal"], "SIGTERM");
        assert_eq!(t["KillTimeout"], 30_000_000_000u64, "durations are nanoseconds");
        let env = &t["Env"];
        assert_eq!(env["AIC_STORE"], "s3://pool");
        // Credentials come from a Nomad Variable through a template, not the job spec.
        assert!(env.get("AWS_SECRET_ACCESS_KEY").is_none() && !j.to_string().contains("shh"));
        let tmpl = &t["Templates"][0];
        assert_eq!(tmpl["Envvars"], true);
        assert_eq!(tmpl["Perms"], "0600", "the job's uid cannot read what Nomad renders again");
        assert_eq!(tmpl["DestPath"], "${NOMAD_SECRETS_DIR}/store.env");
        assert!(tmpl["EmbeddedTmpl"].as_str().unwrap().starts_with("{{ with nomadVar \"nomad/jobs\" }}"));
        assert_eq!(env["AIC_JOB_ID"], job.job.to_string());
        assert_eq!(env["AIC_ALLOC_INDEX"], "${NOMAD_ALLOC_INDEX}");
        assert_eq!(env["AIC_ALLOC_COUNT"], "2");
        assert_eq!(env["AIC_ATTEMPT"], "${NOMAD_META_aic_attempt}");
        assert_eq!(env["AIC_HOST"], "${NOMAD_IP_rdzv}");
        assert_eq!(env["AIC_PORT"], "${NOMAD_PORT_rdzv}");
        assert_eq!(env["AIC_WORK_DIR"], "${NOMAD_TASK_DIR}");
        // The worker drops to the job's own uid (what the clients' egress rules name); not
        // with raw_exec, whose task is the client's own user on the machine.
        // The uid the pool handed out (`uids`), in the environment and the job's meta.
        assert_eq!(env["AIC_JOB_UID"], "3000123");
        assert_eq!(j["Meta"]["aic_uid"], "3000123");
        let raw = NomadConfig { driver: "raw_exec".into(), ..cfg() };
        assert!(
            job_spec(&raw, &job, &m, 0, 3_000_123)["TaskGroups"][0]["Tasks"][0]["Env"].get("AIC_JOB_UID").is_none()
        );
        // A restart is a new version with the next attempt.
        assert_eq!(job_spec(&cfg(), &job, &m, 2, 3_000_123)["Meta"]["aic_attempt"], "2");
    }

    #[test]
    fn a_serve_job_is_a_service_with_a_nomad_native_health_checked_service() {
        let (job, m) = manifest("serve", 3, 1);
        let j = job_spec(&cfg(), &job, &m, 0, 3_000_123);
        assert_eq!(j["Type"], "service");
        let tg = &j["TaskGroups"][0];
        assert_eq!(tg["Count"], 3);
        assert!(tg.get("Scaling").is_none(), "a fixed deployment has no scaling bounds");
        // Autoscaled: its fewest replicas first (at least one), Nomad holding the bounds.
        let mut auto = m.clone();
        auto.request.serving = Some(aic_schemas::ServeOptions {
            min_replicas: Some(0),
            target_concurrency: Some(2),
            ..Default::default()
        });
        let a = job_spec(&cfg(), &job, &auto, 0, 3_000_123);
        assert_eq!(a["TaskGroups"][0]["Count"], 1);
        assert_eq!(a["TaskGroups"][0]["Scaling"], json!({"Enabled": true, "Min": 0, "Max": 3, "Policy": {}}));
        let svc = &tg["Services"][0];
        assert_eq!(svc["Provider"], "nomad");
        assert_eq!(svc["PortLabel"], "http");
        assert_eq!(svc["Checks"][0]["Type"], "tcp", "an app need not answer any particular path");
        assert!(svc["Checks"][0].get("Path").is_none());
        assert!(tg["Networks"][0]["DynamicPorts"].as_array().unwrap().contains(&json!({"Label": "http"})));
        assert_eq!(tg["Tasks"][0]["Env"]["AIC_SERVE_PORT"], "${NOMAD_PORT_http}");
        assert_eq!(tg["ReschedulePolicy"]["Unlimited"], true);
    }

    /// With the clients' cache volume named, every task mounts it where the worker is told it
    /// is; without, nothing is mounted and nothing cached.
    #[test]
    fn the_environment_cache_is_a_host_volume_mounted_into_every_task() {
        let (job, m) = manifest("train", 2, 1);
        let none = job_spec(&cfg(), &job, &m, 0, 3_000_123);
        assert!(none["TaskGroups"][0].get("Volumes").is_none());
        assert!(none["TaskGroups"][0]["Tasks"][0]["Env"].get("AIC_ENV_CACHE").is_none());
        let c = NomadConfig { env_cache_volume: Some("aic-envs".into()), ..cfg() };
        let j = job_spec(&c, &job, &m, 0, 3_000_123);
        let tg = &j["TaskGroups"][0];
        assert_eq!(
            tg["Volumes"]["aic-env-cache"],
            json!({"Name": "aic-env-cache", "Type": "host", "Source": "aic-envs", "ReadOnly": false})
        );
        let t = &tg["Tasks"][0];
        assert_eq!(
            t["VolumeMounts"],
            json!([{"Volume": "aic-env-cache", "Destination": ENV_CACHE_AT, "ReadOnly": false}])
        );
        assert_eq!(t["Env"]["AIC_ENV_CACHE"], ENV_CACHE_AT);
    }

    /// A user's image runs the pool's worker bound in read-only from the client; the job's
    /// other settings stay; without the image, the pool's own.
    #[test]
    fn a_users_image_runs_the_pools_worker_bound_in_read_only() {
        let (job, mut m) = manifest("train", 2, 1);
        m.request.image = Some("ghcr.io/me/train:1.0".into());
        let c =
            NomadConfig { worker_mount: Some("/opt/aic-worker".into()), images: vec!["ghcr.io/me/*".into()], ..cfg() };
        let j = job_spec(&c, &job, &m, 0, 3_000_123);
        let t = &j["TaskGroups"][0]["Tasks"][0];
        assert_eq!(t["Driver"], "docker");
        assert_eq!(t["Config"]["image"], "ghcr.io/me/train:1.0");
        assert_eq!(t["Config"]["command"], "/opt/aic/aic-worker");
        assert_eq!(
            t["Config"]["mount"],
            json!([{"type": "bind", "source": "/opt/aic-worker", "target": "/opt/aic", "readonly": true}])
        );
        assert_eq!(t["Env"]["AIC_IMAGE"], "ghcr.io/me/train:1.0");
        assert_eq!(t["Config"]["network_mode"], "host");
        m.request.image = None;
        let own = job_spec(&c, &job, &m, 0, 3_000_123);
        assert_eq!(own["TaskGroups"][0]["Tasks"][0]["Config"]["image"], c.image);
        assert!(own["TaskGroups"][0]["Tasks"][0]["Config"].get("mount").is_none());
    }

    #[test]
    fn placement_failures_read_as_sentences() {
        let f = json!({"train": {"NodesEvaluated": 3, "NodesFiltered": 0, "NodesExhausted": 3,
            "DimensionExhausted": {"devices: no devices match request": 3}, "CoalescedFailures": 1}});
        assert_eq!(
            placement_reason(&f, 2, "test_gateway"),
            "no node with 2 free nvidia/gpu in gateway test_gateway (3 nodes evaluated: 3 without 2 free nvidia/gpu); 1 more allocation waiting"
        );
        let f = json!({"train": {"NodesEvaluated": 2, "ConstraintFiltered": {"missing devices": 1},
            "DimensionExhausted": {"memory": 1}}});
        assert_eq!(
            placement_reason(&f, 4, "g"),
            "no node with 4 free nvidia/gpu in gateway g (2 nodes evaluated: 1 out of memory, 1 without 4 healthy nvidia/gpu)"
        );
        assert_eq!(placement_reason(&json!({}), 1, "g"), "waiting for 1 free nvidia/gpu in gateway g");
    }
}
