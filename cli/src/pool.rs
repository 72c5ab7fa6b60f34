//! The embedded pool: the functions and the local scheduler, hosted in an `aic` process.
//!
//! `aic dev up` hosts it until stopped. `aic run`, `submit` and `demo` host it themselves
//! while they watch a job if no other process does (`pool.lock` tells), so a single
//! command works on a fresh machine. Events come from the spool that every write through
//! the CLI's store fills, exactly as MinIO's notifications reach the functions on the pool.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aic_chain::devchain::{self, DevChain};
use aic_chain::{ChainConfig, ChainPayments, Eip712Auth};

use aic_core::scheduler::local::{LocalConfig, LocalScheduler};
use aic_core::scheduler::worker_env_from_env;
use aic_functions::{Ctx, HandlerError, Outcome};
use anyhow::{Context, anyhow};

use crate::env::Env;

/// How often a hosting process looks at the spool when nothing tells it of a change (the
/// spool is watched with inotify: this is for deferred events coming due, and for file
/// systems without inotify).
pub const POLL: Duration = Duration::from_secs(1);

/// How long a deferred event (a payment awaiting confirmations) waits before it is tried
/// again, and a failed one (an outage).
const DEFER: Duration = Duration::from_millis(500);
const RETRY: Duration = Duration::from_secs(2);

pub struct Hosted {
    ctx: Ctx,
    pub scheduler: LocalScheduler,
    spool: aic_core::events::Spool,
    /// Wakes the host when an event lands in the spool.
    spool_watch: Option<aic_core::events::SpoolWatch>,
    /// The host's `/v1` API: it relays live logs, and is told of status moves here.
    gateway: Arc<aic_functions::gateway::Gateway>,
    /// The dev chain, when this process started it (it stops with the process).
    _chain: Option<DevChain>,
    pub chain: ChainConfig,
    not_before: Mutex<HashMap<PathBuf, Instant>>,
    home: PathBuf,
    published: Mutex<Vec<u8>>,
    /// Where the serving gateway of this pool listens (`/d/<deployment>/…`).
    pub serve_addr: String,
    proxy_task: tokio::task::JoinHandle<()>,
    _lock: File,
}

impl Drop for Hosted {
    fn drop(&mut self) {
        self.proxy_task.abort();
        self.scheduler.release();
        let _ = std::fs::remove_file(self.home.join("serve.addr"));
        let _ = std::fs::remove_file(self.home.join("exec.secret"));
        let _ = std::fs::remove_file(self.home.join("host.addr"));
    }
}

/// Default price on the dev chain: 1 AIC per GPU-hour.
pub const DEV_PRICE: u128 = 10u128.pow(18);

/// The chain the pool takes payments on: `AIC_RPC_URL` & co. for a real chain, else the
/// dev chain recorded in `chain.json`, started here if it is not running.
async fn chain(env: &Env) -> anyhow::Result<(ChainConfig, Option<DevChain>)> {
    let path = env.home.join("chain.json");
    if std::env::var("AIC_RPC_URL").is_ok_and(|v| !v.is_empty()) {
        let cfg = ChainConfig::load(&path)?
            .ok_or_else(|| anyhow!("AIC_RPC_URL is set: set AIC_TOKEN and AIC_TREASURY too"))?;
        return Ok((cfg, None));
    }
    if let Some(cfg) = ChainConfig::load(&path)?
        && devchain::is_up(&cfg.rpc_url).await
    {
        return Ok((cfg, None));
    }
    let price = match std::env::var("AIC_PRICE") {
        Ok(p) if !p.is_empty() => aic_chain::config::parse_aic(&p).map_err(|e| anyhow!("AIC_PRICE={p:?}: {e}"))?,
        _ => DEV_PRICE,
    };
    let confirmations = match std::env::var("AIC_CONFIRMATIONS") {
        Ok(c) if !c.is_empty() => c.parse().map_err(|_| anyhow!("AIC_CONFIRMATIONS={c:?} is not a whole number"))?,
        _ => 1,
    };
    let dev = devchain::start(&env.home.join("anvil-state.json"), &path, price, confirmations).await?;
    Ok((dev.config.clone(), Some(dev)))
}

/// Size of the simulated pool: `AIC_POOL_MINERS` × `AIC_POOL_GPUS` (default 2 × 1).
pub fn pool_size() -> anyhow::Result<(u32, u32)> {
    let get = |k: &str, d: u32| -> anyhow::Result<u32> {
        match std::env::var(k) {
            Ok(v) if !v.is_empty() => v.parse().map_err(|_| anyhow!("{k}={v:?} is not a whole number")),
            _ => Ok(d),
        }
    };
    Ok((get("AIC_POOL_MINERS", 2)?, get("AIC_POOL_GPUS", 1)?))
}

fn worker_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AIC_WORKER_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(me) = std::env::current_exe() {
        let sibling = me.with_file_name("aic-worker");
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from("aic-worker")
}

impl Hosted {
    /// Hosts the pool unless another process already does (`Ok(None)`).
    pub async fn try_host(env: &Env, miners: u32, gpus: u32) -> anyhow::Result<Option<Hosted>> {
        let farm = aic_core::scheduler::gpus::from_env().map_err(|e| anyhow!("AIC_POOL_GPU_TYPES: {e}"))?;
        Self::try_host_farm(env, miners, gpus, farm).await
    }

    /// Hosts the pool with miners of the GPUs `farm` names (one entry per miner; empty:
    /// `miners` alike).
    pub async fn try_host_farm(
        env: &Env,
        miners: u32,
        gpus: u32,
        farm: Vec<aic_core::scheduler::gpus::GpuType>,
    ) -> anyhow::Result<Option<Hosted>> {
        if env.gateway.is_some() {
            // Pool mode: the pool runs behind the gateway.
            return Ok(None);
        }
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(env.home.join("pool.lock"))
            .context("opening pool.lock")?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e).context("locking pool.lock"),
        }
        let cfg = LocalConfig {
            miners,
            gpus_per_miner: gpus,
            gateway: "local".into(),
            worker_bin: worker_bin(),
            work_root: env.home.join("work"),
            worker_env: [env.store_config.env(), worker_env_from_env().map_err(anyhow::Error::msg)?].concat(),
            time_limit_grace: aic_core::scheduler::local::TIME_LIMIT_GRACE,
            sandbox: LocalConfig::sandboxed(),
            gpu_types: farm,
        };
        let scheduler = LocalScheduler::new(cfg, env.store.clone());
        let (chain, dev) = chain(env).await?;
        let mut ctx = Ctx {
            store: env.store.clone(),
            scheduler: Arc::new(scheduler.clone()),
            auth: Arc::new(Eip712Auth { chain_id: chain.chain_id }),
            payments: Arc::new(ChainPayments::new(chain.clone(), env.store.clone())?),
            pricing: chain.pricing(),
            settler: None,
        };
        // Deposits are settled with the settler's key: AIC_SETTLER_KEY, or on the dev chain
        // its dev account.
        if chain.escrow.is_some() {
            let key = match std::env::var("AIC_SETTLER_KEY") {
                Ok(k) if !k.is_empty() => Some(
                    k.trim_start_matches("0x")
                        .parse::<aic_chain::PrivateKeySigner>()
                        .map_err(|e| anyhow!("AIC_SETTLER_KEY is not a private key: {e}"))?,
                ),
                _ if std::env::var("AIC_RPC_URL").is_ok_and(|v| !v.is_empty()) => None,
                _ => Some(devchain::dev_key(devchain::SETTLER)),
            };
            if let Some(key) = key {
                ctx = ctx.with_settler(&chain, key)?;
            }
        }
        // The serving gateway for deployments: AIC_SERVE_ADDR, else the address of a host of
        // this pool that died (`host.addr`: the workers it left reach the store and their
        // commands there, and carry on once it answers again), else 127.0.0.1:8800, else any.
        let want = std::env::var("AIC_SERVE_ADDR").ok().filter(|a| !a.is_empty());
        let left = std::fs::read_to_string(env.home.join("host.addr")).ok().filter(|a| !a.trim().is_empty());
        let listener = match &want {
            Some(a) => tokio::net::TcpListener::bind(a).await.with_context(|| format!("AIC_SERVE_ADDR={a}"))?,
            None => {
                let mut found = None;
                for a in left.iter().map(|a| a.trim().to_string()).chain(["127.0.0.1:8800".to_string()]) {
                    if let Ok(l) = tokio::net::TcpListener::bind(&a).await {
                        found = Some(l);
                        break;
                    }
                }
                match found {
                    Some(l) => l,
                    None => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
                }
            }
        };
        std::fs::write(env.home.join("host.addr"), listener.local_addr()?.to_string())?;
        let serve_addr = format!("http://{}", listener.local_addr()?);
        // Whole or not at all: a reader never sees it empty.
        let tmp = env.home.join(".serve.addr.tmp");
        std::fs::write(&tmp, &serve_addr)?;
        std::fs::rename(&tmp, env.home.join("serve.addr"))?;
        // Deployments answer at origins of their own (`http://<id>.localhost:<port>/`), never
        // the web app's.
        let origins = aic_functions::config::serving_origins(listener.local_addr()?.port())?;
        let proxy = Some(Arc::new(
            aic_functions::proxy::Proxy::new(env.store.clone())
                .with_scheduler(Arc::new(scheduler.clone()))
                .at(origins.clone()),
        ));
        // `aic exec`/`aic shell` here: the host relays them (its gateway routes, under a secret
        // of this pool's own in `$AIC_HOME/exec.secret`, readable by its user only), and the
        // workers keep their store access and take their job's commands from it.
        // A secret left by a host that died (a clean stop removes it) is kept: the workers it
        // started, adopted below, hold tokens made with it.
        let secret = pool_secret(&env.home)?;
        // The same `/v1` API as a pool's gateway, for the web app and for `aic` with
        // AIC_GATEWAY set to this address: users sign in to this address (the SIWE domain a
        // wallet compares with the page's origin), and transfers go through this host, since a
        // local folder cannot presign URLs.
        let authority = serve_addr.trim_start_matches("http://").to_string();
        let mut gw_cfg = aic_functions::gateway::GatewayConfig::new(secret.clone(), &authority, chain.chain_id);
        gw_cfg.public_url = Some(serve_addr.clone());
        gw_cfg.serving = Some(origins.to_string());
        gw_cfg.storage_quota = aic_functions::config::storage_quota(None)?;
        gw_cfg.secrets_key = Some(secrets_key(&env.home)?);
        gw_cfg.chain_info = serde_json::to_value(&chain)?;
        // On the dev chain anyone knows the dev accounts' keys (anvil's): whoever reaches this
        // host from elsewhere (AIC_SERVE_ADDR=0.0.0.0:…) must not sign in as the developer.
        if std::env::var("AIC_RPC_URL").is_ok_and(|v| !v.is_empty()) {
            // A real chain: keys are the users' own.
        } else {
            gw_cfg.local_signers = (0..aic_chain::devchain::DEV_KEYS.len() as u32)
                .map(|i| aic_chain::from_alloy(aic_chain::devchain::dev_key(i).address()))
                .collect();
        }
        let gateway = Arc::new(aic_functions::gateway::Gateway::new(gw_cfg, ctx.clone(), None));
        // Sandboxed jobs (as root) see nothing of the pool's folder, its store included: their
        // workers reach the store through this host with their job's token, as on a pool.
        let g = aic_core::grant::WorkerGateway { url: serve_addr.clone(), secret };
        if scheduler.is_sandboxed() {
            scheduler.use_worker_gateway(g)
        } else {
            scheduler.use_exec_gateway(g)
        }
        let host = aic_functions::host::Host {
            ctx: ctx.clone(),
            sns: None,
            gateway: Some(gateway.clone()),
            minio: aic_functions::host::MinioPosts::Refused,
            proxy,
            // Its own address only (and `localhost` at its port): no page of another origin,
            // nor a name rebound to loopback, reaches the developer's pool.
            own_addresses: own_addresses(&authority),
            // `/metrics` for a Prometheus of the developer's, with this token.
            metrics_token: std::env::var("AIC_METRICS_TOKEN").ok().filter(|t| !t.is_empty()),
        };
        let proxy_task = tokio::spawn(aic_functions::host::serve(host, listener));
        // A job whose workers have all ended is settled: an event for its status snapshot goes
        // into the spool (the workers' own writes send none).
        let (spool, bucket) = (env.spool.clone(), env.store.bucket().to_string());
        aic_core::scheduler::Scheduler::on_job_end(
            &scheduler,
            Arc::new(move |job: &aic_core::JobKey| {
                let record = aic_schemas::event::S3EventRecord::object_created(&bucket, &job.status_snapshot(), 0);
                if let Err(e) = spool.emit(&record) {
                    tracing::warn!(job = %job.job, error = %e, "cannot queue the job's settlement");
                }
            }),
        );
        // What a worker killed outright printed since its last stored chunk is stored from
        // what this host holds of it.
        let g = gateway.clone();
        aic_core::scheduler::Scheduler::on_worker_lost(
            &scheduler,
            Arc::new(move |job: &aic_core::JobKey, alloc: u32| {
                let (g, job) = (g.clone(), job.clone());
                tokio::spawn(async move { g.keep_lost_log(&job, alloc).await });
            }),
        );
        // Workers and waiting jobs an earlier host left (killed outright): taken over before
        // any event is handled.
        scheduler.adopt().await;
        let spool_watch = match env.spool.watch() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the event spool; reading it every second");
                None
            }
        };
        Ok(Some(Hosted {
            ctx,
            scheduler,
            spool: env.spool.clone(),
            spool_watch,
            gateway,
            _chain: dev,
            chain,
            not_before: Mutex::new(HashMap::new()),
            home: env.home.clone(),
            published: Mutex::new(Vec::new()),
            serve_addr,
            proxy_task,
            _lock: lock,
        }))
    }

    /// Handles every pending event once; returns how many were handled. An event whose
    /// handler fails stays in the spool and is tried again on the next step.
    pub async fn step(&self) -> anyhow::Result<usize> {
        let mut done = 0;
        // Events the handlers cause (a manifest after validate) are taken in the same step,
        // not a poll period later.
        for _ in 0..4 {
            let n = self.step_once().await?;
            done += n;
            if n == 0 {
                break;
            }
        }
        self.publish().await;
        Ok(done)
    }

    /// Keeps `$AIC_HOME/pool.json` (what `aic pool` shows) current.
    async fn publish(&self) {
        if let Ok(gws) = aic_core::scheduler::Scheduler::pool(&self.scheduler).await {
            let body = serde_json::to_vec_pretty(&gws).unwrap_or_default();
            let mut last = self.published.lock().unwrap();
            if *last != body {
                let path = self.home.join("pool.json");
                let tmp = self.home.join(".pool.json.tmp");
                if std::fs::write(&tmp, &body).and_then(|_| std::fs::rename(&tmp, &path)).is_ok() {
                    *last = body;
                }
            }
        }
    }

    async fn step_once(&self) -> anyhow::Result<usize> {
        let mut done = 0;
        let now = Instant::now();
        for p in self.spool.pending()? {
            if self.not_before.lock().unwrap().get(&p.path).is_some_and(|t| *t > now) {
                continue;
            }
            self.gateway.status_event(&p.record.key());
            match aic_functions::handle_record(&self.ctx, &p.record).await {
                Ok(outcome) => {
                    if outcome != Outcome::Ignored {
                        tracing::debug!(?outcome, "event handled");
                    }
                    self.spool.ack(&p);
                    self.not_before.lock().unwrap().remove(&p.path);
                    done += 1;
                }
                Err(e) => {
                    let wait = if matches!(e, HandlerError::Deferred(_)) { DEFER } else { RETRY };
                    tracing::info!(key = %p.record.key(), error = %e, "event not done; will retry");
                    self.not_before.lock().unwrap().insert(p.path.clone(), Instant::now() + wait);
                }
            }
        }
        Ok(done)
    }

    /// Serves until Ctrl-C (or SIGTERM), then stops every allocation.
    pub async fn serve(&self) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        // Streams made once: a signal that arrives while an event is handled is kept.
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        loop {
            self.step().await?;
            tokio::select! {
                _ = self.changed() => {}
                _ = int.recv() => break,
                _ = term.recv() => break,
            }
        }
        eprintln!("stopping the embedded pool; running allocations are stopped");
        self.scheduler.shutdown().await;
        Ok(())
    }

    /// After the watched job ended: keep serving until no allocation runs and no event
    /// waits, so that other jobs' work is not stranded.
    pub async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let handled = self.step().await.unwrap_or(0);
            if handled == 0 && self.scheduler.is_idle() && self.spool.pending().map(|p| p.is_empty()).unwrap_or(true) {
                return;
            }
            tokio::select! {
                _ = self.scheduler.changed() => {}
                _ = self.changed() => {}
            }
        }
    }

    /// Returns when there may be work: an event landed in the spool, a deferred one came
    /// due, or [`POLL`] passed.
    pub async fn changed(&self) {
        let now = Instant::now();
        let due = self.not_before.lock().unwrap().values().min().map(|t| t.saturating_duration_since(now));
        let wait = due.map_or(POLL, |d| d.min(POLL));
        match &self.spool_watch {
            Some(w) => {
                tokio::select! {
                    _ = w.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// The `host:port`s the embedded pool at `authority` answers as: that, and `localhost` (and
/// `127.0.0.1`) at its port when it listens on loopback.
fn own_addresses(authority: &str) -> Vec<String> {
    let mut own = vec![authority.to_string()];
    if let Some((host, port)) = authority.rsplit_once(':')
        && (host == "127.0.0.1" || host == "localhost")
    {
        for h in ["127.0.0.1", "localhost"] {
            let a = format!("{h}:{port}");
            if !own.contains(&a) {
                own.push(a);
            }
        }
    }
    own
}

/// The embedded pool's own secret (`$AIC_HOME/exec.secret`, its user's alone): what its gateway
/// signs sessions and workers' tokens with. Kept when a host that died left it (the workers it
/// started, adopted by the next, hold tokens made with it); a clean stop removes it; a damaged
/// one is made anew.
pub fn pool_secret(home: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    match own_key(home, "exec.secret")? {
        Some(k) => Ok(k),
        None => {
            let _ = std::fs::remove_file(home.join("exec.secret"));
            Ok(own_key(home, "exec.secret")?.expect("made"))
        }
    }
}

/// The key users' secrets are sealed under on the embedded pool (`$AIC_HOME/secrets.key`, its
/// user's alone; `aic_core::vault`), kept for good: secrets set stay readable across hosts. A
/// damaged one is an error, never replaced (that would lose every secret sealed under it).
pub fn secrets_key(home: &std::path::Path) -> anyhow::Result<String> {
    let k = own_key(home, "secrets.key")?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} is damaged (not 64 hex digits): restore it, or remove it and set your secrets again",
            home.join("secrets.key").display()
        )
    })?;
    Ok(hex::encode(k))
}

/// 32 random bytes kept in `home/<file>` (hex, mode 0600), made when there is no such file;
/// `None` when the file holds something else.
fn own_key(home: &std::path::Path, file: &str) -> anyhow::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = home.join(file);
    match std::fs::read_to_string(&path) {
        Ok(s) => return Ok(hex::decode(s.trim()).ok().filter(|k| k.len() == 32)),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        Err(_) => {}
    }
    let mut b = [0u8; 32];
    std::io::Read::read_exact(&mut File::open("/dev/urandom")?, &mut b)?;
    std::fs::create_dir_all(home)?;
    let tmp = home.join(format!(".{file}.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    std::io::Write::write_all(&mut f, hex::encode(b).as_bytes())?;
    f.sync_all()?;
    // Whoever made it first wins: a second host or command reads the first one's.
    match std::fs::hard_link(&tmp, &path) {
        Ok(()) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(Some(b.to_vec()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&tmp);
            own_key(home, file)
        }
        Err(e) => Err(e.into()),
    }
}
