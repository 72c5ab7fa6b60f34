//! The Nomad backend's settings, from the environment (the table is in the module's doc).

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
    /// How long the event stream may be silent before it is taken for dead and reopened
    /// (Nomad sends a `{}` heartbeat every 10 s).
    pub stream_idle: std::time::Duration,
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
            secrets_var: Some(var("AIC_NOMAD_SECRETS_VAR").unwrap_or_else(|| "nomad/jobs".into())),
            worker_env,
            worker_gateway: None,
            stream_idle: std::time::Duration::from_secs(35),
        }))
    }
}
