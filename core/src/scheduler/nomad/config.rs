//! The Nomad backend's settings, from the environment (the table is in the module's doc).

#[derive(Clone, Debug)]
pub struct NomadConfig {
    pub addr: String,
    pub token: Option<String>,
    pub region: Option<String>,
    pub namespace: Option<String>,
    pub datacenter: String,
    /// `docker` (the default), `exec` or `raw_exec`: see [`super::spec::task_config`].
    pub driver: String,
    /// The worker image, for the `docker` driver.
    pub image: String,
    pub worker: String,
    pub cpu_mhz: u32,
    /// Memory per GPU an allocation holds (`AIC_NOMAD_MEMORY_MB`): a rank per GPU, each with
    /// its own data loaders and copies of the model, so an allocation's limit is this times
    /// its GPUs (one GPU's worth at least).
    pub memory_mb: u32,
    /// Environment every worker gets (the store's location).
    pub worker_env: Vec<(String, String)>,
    /// The Nomad Variable the workers' store credentials come from (a `template` block), so
    /// that they are never in the job specification; without one, `worker_env`'s are.
    pub secrets_var: Option<String>,
    /// When set, workers reach the bucket through the gateway with their job's token (in the
    /// job's env) and get no store credentials at all.
    pub worker_gateway: Option<crate::grant::WorkerGateway>,
    /// How long the event stream may be silent before it is taken for dead and reopened:
    /// Nomad sends a `{}` heartbeat every 30 s (`nomad/event_endpoint.go`:
    /// `stream.NewNDJsonStream(ndJsonCh, 30*time.Second)`), so over two of them (it was 35 s:
    /// one late heartbeat reopened a healthy stream).
    pub stream_idle: std::time::Duration,
    /// How often waiting gang jobs are tried even when no allocation of aic's ended (GPUs
    /// that other namespaces free are not on aic's event stream).
    pub gang_retry: std::time::Duration,
    /// How long past a training job's paid time its workers get to stop the program and
    /// upload its outputs before the job is stopped.
    pub time_limit_grace: std::time::Duration,
    /// The lock (a Nomad Variable in the namespace) that makes one functions host of several
    /// the one that watches and keeps house, and how long it holds without renewing.
    pub leader_lock: String,
    pub leader_ttl: std::time::Duration,
    /// How long registering waits for Nomad's evaluation before answering with what it
    /// knows (`AIC_NOMAD_EVAL_WAIT`, seconds): 60 s, or 15 s in an AWS Lambda function, whose
    /// invocation would otherwise run out (30 s in `infra/aws/template.yaml`).
    pub eval_wait: std::time::Duration,
    /// The node pool aic's jobs run in (`AIC_NOMAD_NODE_POOL`): the jobs name it, and only
    /// its nodes count as room. Unset: the jobs name none (Nomad then places them in the
    /// namespace's default pool, else `default`) and `default`'s nodes count.
    pub node_pool: Option<String>,
    /// TLS to the API (`NOMAD_CACERT`, `NOMAD_CLIENT_CERT`, `NOMAD_CLIENT_KEY`,
    /// `NOMAD_TLS_SERVER_NAME`).
    pub tls: super::tls::NomadTls,
    /// The uids jobs' programs run as in their tasks (`AIC_JOB_UIDS`; the worker drops to its
    /// job's: `job_user`), which the clients' egress rules (`infra/nomad/egress.nft`) name.
    pub job_uids: (u32, u32),
    /// The clients' host volume that holds their cache of prepared Python environments
    /// (`AIC_NOMAD_ENV_CACHE_VOLUME`): mounted into every task at [`super::spec::ENV_CACHE_AT`]
    /// (`aic-worker`'s keeper writes it as root; jobs read it). Unset: nothing is cached.
    pub env_cache_volume: Option<String>,
    /// Users' own images (`--image`), with the docker driver: the patterns the operator allows
    /// (`AIC_NOMAD_IMAGES`, comma-separated globs: `ghcr.io/myorg/*,pytorch/pytorch:*`) and the
    /// clients' folder holding a statically linked `aic-worker` (`AIC_NOMAD_WORKER_MOUNT`),
    /// bound read-only into the user's image at [`super::spec::WORKER_AT`]. Either unset: no
    /// images.
    pub images: Vec<String>,
    pub worker_mount: Option<String>,
}

/// The worker image `infra/nomad/worker.Dockerfile` builds, as its head tags it; a pool
/// pushes it to its registry and sets `AIC_NOMAD_IMAGE` to that name.
pub const DEFAULT_IMAGE: &str = concat!("aic-worker:", env!("CARGO_PKG_VERSION"));

impl NomadConfig {
    /// The node pool whose nodes count as room.
    pub fn room_pool(&self) -> &str {
        self.node_pool.as_deref().unwrap_or("default")
    }

    /// The defaults for a cluster at `addr` (what [`NomadConfig::from_env`] starts from).
    pub fn new(addr: &str) -> Self {
        NomadConfig {
            addr: addr.trim_end_matches('/').to_string(),
            token: None,
            region: None,
            namespace: None,
            datacenter: "dc1".into(),
            driver: "docker".into(),
            image: DEFAULT_IMAGE.into(),
            worker: "/usr/local/bin/aic-worker".into(),
            cpu_mhz: 2000,
            memory_mb: 8192,
            secrets_var: Some("nomad/jobs".into()),
            worker_env: vec![],
            worker_gateway: None,
            stream_idle: std::time::Duration::from_secs(65),
            gang_retry: std::time::Duration::from_secs(30),
            time_limit_grace: std::time::Duration::from_secs(30),
            leader_lock: "aic/leader".into(),
            leader_ttl: std::time::Duration::from_secs(15),
            eval_wait: std::time::Duration::from_secs(60),
            node_pool: None,
            tls: Default::default(),
            job_uids: (3_000_000, 65_536),
            env_cache_volume: None,
            images: vec![],
            worker_mount: None,
        }
    }

    /// From the environment; `None` when `NOMAD_ADDR` is not set.
    pub fn from_env(worker_env: Vec<(String, String)>) -> Result<Option<Self>, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(addr) = var("NOMAD_ADDR") else { return Ok(None) };
        let num = |k: &str, d: u32| -> Result<u32, String> {
            var(k).map(|v| v.parse().map_err(|_| format!("{k}={v:?} is not a whole number"))).unwrap_or(Ok(d))
        };
        let d = NomadConfig::new(&addr);
        Ok(Some(NomadConfig {
            token: var("NOMAD_TOKEN"),
            region: var("NOMAD_REGION"),
            namespace: var("NOMAD_NAMESPACE"),
            datacenter: var("AIC_NOMAD_DATACENTER").unwrap_or(d.datacenter.clone()),
            driver: match var("AIC_NOMAD_DRIVER").as_deref() {
                None => d.driver.clone(),
                Some(v @ ("docker" | "exec" | "raw_exec")) => v.into(),
                Some(v) => {
                    return Err(format!(
                        "AIC_NOMAD_DRIVER={v:?} is not one aic can run workers with; use docker (the default), exec or raw_exec"
                    ));
                }
            },
            image: var("AIC_NOMAD_IMAGE").unwrap_or(d.image.clone()),
            worker: var("AIC_NOMAD_WORKER").unwrap_or(d.worker.clone()),
            cpu_mhz: num("AIC_NOMAD_CPU", d.cpu_mhz)?,
            memory_mb: num("AIC_NOMAD_MEMORY_MB", d.memory_mb)?,
            secrets_var: var("AIC_NOMAD_SECRETS_VAR").or(d.secrets_var.clone()),
            node_pool: var("AIC_NOMAD_NODE_POOL"),
            tls: super::tls::NomadTls::from_env()?,
            job_uids: crate::scheduler::job_user::uid_range(),
            env_cache_volume: var("AIC_NOMAD_ENV_CACHE_VOLUME"),
            images: var("AIC_NOMAD_IMAGES")
                .map(|v| v.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
                .unwrap_or_default(),
            worker_mount: var("AIC_NOMAD_WORKER_MOUNT"),
            eval_wait: std::time::Duration::from_secs(num(
                "AIC_NOMAD_EVAL_WAIT",
                if var("AWS_LAMBDA_FUNCTION_NAME").is_some() { 15 } else { d.eval_wait.as_secs() as u32 },
            )? as u64),
            worker_env,
            ..d
        }))
    }
}

#[cfg(test)]
mod tests {
    /// Nomad's event stream is silent for up to 30 s between heartbeats
    /// (`nomad/event_endpoint.go`): a healthy stream is never taken for dead.
    #[test]
    fn a_healthy_event_stream_is_never_taken_for_dead() {
        let heartbeat = std::time::Duration::from_secs(30);
        assert!(super::NomadConfig::new("http://nomad:4646").stream_idle >= 2 * heartbeat);
    }
}
