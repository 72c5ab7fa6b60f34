//! Everything a functions process needs, from its environment: the store, the chain, the
//! scheduler, the gateway's key, the SNS topics.
//!
//! | variable | meaning |
//! |---|---|
//! | `AIC_STORE`, `AIC_S3_ENDPOINT`, `AWS_*` | the bucket (`s3://NAME`) |
//! | `AIC_RPC_URL`, `AIC_TOKEN`, `AIC_TREASURY`, `AIC_CHAIN_ID`, `AIC_PRICE`, `AIC_CONFIRMATIONS` | the chain payments are checked on |
//! | `AIC_ESCROW`, `AIC_ACCEPT_TRANSFERS` | jobs are paid by deposit into this escrow and refunded what they do not use; `0`: deposits only |
//! | `AIC_SETTLER_KEY` | the escrow settler's private key (hex): the functions that settle need it; never passed to a worker |
//! | `AIC_FREE_POOL` (`1`) | charge nothing, check no payment (a private pool) |
//! | `AIC_SCHEDULER` | `local` (simulated miners on this machine; the default) or `nomad` |
//! | `NOMAD_ADDR`, `NOMAD_TOKEN`, `NOMAD_REGION`, `NOMAD_NAMESPACE` | the Nomad cluster (`aic_core::scheduler::nomad`) |
//! | `NOMAD_CACERT`, `NOMAD_CLIENT_CERT`, `NOMAD_CLIENT_KEY`, `NOMAD_TLS_SERVER_NAME` | TLS to the cluster, as Nomad's CLI reads them (the API and the exec WebSocket) |
//! | `AIC_NOMAD_DATACENTER`, `AIC_NOMAD_NODE_POOL`, `AIC_NOMAD_DRIVER`, `AIC_NOMAD_IMAGE`, `AIC_NOMAD_WORKER`, `AIC_NOMAD_CPU`, `AIC_NOMAD_MEMORY_MB` | how Nomad runs aic-worker (`AIC_NOMAD_NODE_POOL`: the node pool the jobs name and the only one counted as room; unset, they name none and `default`'s nodes count) |
//! | `AIC_NOMAD_EVAL_WAIT` | seconds registering waits for Nomad's evaluation before answering with what it knows (60; 15 in AWS Lambda) |
//! | `AIC_POOL_MINERS`, `AIC_POOL_GPUS`, `AIC_WORKER_BIN`, `AIC_WORK_DIR` | the local scheduler |
//! | `AIC_WORKER_GATEWAY` | the gateway's URL as workers reach it: with `AIC_GATEWAY_SECRET`, workers get a token for their job's objects instead of store credentials (the local scheduler uses this host's address by default) |
//! | `AIC_WORKER_ENV` | extra `KEY=VALUE` pairs (whitespace-separated) for every worker, e.g. Open MPI or NCCL settings |
//! | `AIC_GATEWAY_SECRET` | hex key for session tokens (same on every replica); no gateway without it |
//! | `AIC_GATEWAY_DOMAIN` | the SIWE domain users sign in to (default `aic-pool`); for the web app, the host and port users open it at (wallets compare it with the page's origin) |
//! | `AIC_SERVING_ORIGIN` | the origins deployments answer at, each its own: `https://*.apps.example.net` (wildcard DNS to the serving gateway); default `http://*.localhost:<port>` (this host's port; browsers and curl resolve every `*.localhost` name to loopback) |
//! | `AIC_STORAGE_QUOTA_MB` | most MiB one wallet keeps in datasets and in its unpaid jobs' code (102400 = 100 GiB; `0`: no quota; the embedded pool: none unless set) |
//! | `AIC_SECRETS_ID` | Secrets Manager secrets (comma-separated ids or ARNs, each a JSON object) the secrets below are read from at start instead of the environment: `AIC_SETTLER_KEY`, `AIC_GATEWAY_SECRET`, `AIC_WEBHOOK_TOKEN`, `NOMAD_TOKEN` (`crate::secrets`; `AIC_SECRETS_ENDPOINT` for another endpoint) |
//! | `AIC_SNS_TOPICS`, `AIC_SNS_CERT_ORIGINS` | the SNS topics taken, and extra certificate origins |
//! | `AIC_LOG` | log filter (`info`, `debug`, `aic_functions=debug`, …) |
//! | `AIC_WEBHOOK_TOKEN` | bearer token MinIO must send to `/events` (its `auth_token`); without it MinIO-format posts are refused |
//! | `AIC_WEBHOOK_UNAUTHENTICATED` (`1`) | take MinIO-format posts from anyone who reaches the host (a private network, by the operator's choice) |

use std::path::PathBuf;
use std::sync::Arc;

use aic_chain::{ChainConfig, ChainPayments, Eip712Auth};
use aic_core::StoreConfig;
use aic_core::pricing::Pricing;
use aic_core::scheduler::Scheduler;
use aic_core::scheduler::local::{LocalConfig, LocalScheduler};
use anyhow::{Context, anyhow, bail};

use crate::gateway::GatewayConfig;
use crate::{Ctx, FreePool};

/// A setting: from the secrets read at start (`crate::secrets`), else the environment.
fn var(k: &str) -> Option<String> {
    crate::secrets::get(k).or_else(|| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

fn num(k: &str, default: u32) -> anyhow::Result<u32> {
    match var(k) {
        Some(v) => v.parse().map_err(|_| anyhow!("{k}={v:?} is not a whole number")),
        None => Ok(default),
    }
}

/// Who may post MinIO-format bodies to `/events`: with a token only; from anyone only when
/// the operator says so; otherwise nobody (SNS deliveries are signed and checked apart).
pub fn minio_posts() -> anyhow::Result<crate::host::MinioPosts> {
    use crate::host::MinioPosts;
    let open = match var("AIC_WEBHOOK_UNAUTHENTICATED").as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(v) => bail!("AIC_WEBHOOK_UNAUTHENTICATED={v:?}: use 1 to take unsigned event posts from anyone, or 0"),
    };
    Ok(match (var("AIC_WEBHOOK_TOKEN"), open) {
        (Some(t), _) => MinioPosts::Token(t),
        (None, true) => {
            tracing::warn!(
                "AIC_WEBHOOK_UNAUTHENTICATED=1: /events takes MinIO-format posts from anyone who reaches it"
            );
            MinioPosts::Open
        }
        (None, false) => {
            tracing::info!(
                "/events refuses MinIO-format posts: set AIC_WEBHOOK_TOKEN (MinIO's auth_token) to take them; SNS deliveries are checked by signature"
            );
            MinioPosts::Refused
        }
    })
}

/// The pieces of a functions process.
pub struct Built {
    pub ctx: Ctx,
    pub store_config: StoreConfig,
    pub chain: Option<ChainConfig>,
    /// The chain id requests are signed for.
    pub chain_id: u64,
}

pub fn build() -> anyhow::Result<Built> {
    let url = var("AIC_STORE").ok_or_else(|| anyhow!("AIC_STORE is not set: name the bucket, e.g. s3://aic"))?;
    let store_config = StoreConfig::parse(&url)?;
    let store = store_config.open()?;
    let (chain, auth_chain_id, payments, pricing): (
        Option<ChainConfig>,
        u64,
        Arc<dyn crate::PaymentVerifier>,
        Pricing,
    ) = if var("AIC_FREE_POOL").is_some_and(|v| v == "1") {
        let id = match var("AIC_CHAIN_ID") {
            Some(v) => v.parse().map_err(|_| anyhow!("AIC_CHAIN_ID={v:?} is not a whole number"))?,
            None => 31337,
        };
        (None, id, Arc::new(FreePool), Pricing::free())
    } else {
        // No file named: the environment alone (the empty path names no file, whatever this
        // machine holds; a made-up path might exist).
        let path = var("AIC_CHAIN_FILE").map(PathBuf::from).unwrap_or_default();
        let c = ChainConfig::load(&path)?.ok_or_else(|| {
            anyhow!("no chain configured: set AIC_RPC_URL, AIC_TOKEN and AIC_TREASURY (or AIC_FREE_POOL=1)")
        })?;
        let payments = Arc::new(ChainPayments::new(c.clone(), store.clone())?);
        (Some(c.clone()), c.chain_id, payments, c.pricing())
    };
    let worker_env = aic_core::scheduler::worker_env_from_env().map_err(|e| anyhow!(e))?;
    let scheduler: Arc<dyn Scheduler> = match var("AIC_SCHEDULER").as_deref().unwrap_or("local") {
        "local" => {
            let home = var("AIC_WORK_DIR").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("aic-work"));
            let worker_bin = var("AIC_WORKER_BIN").map(PathBuf::from).unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .map(|me| me.with_file_name("aic-worker"))
                    .filter(|p| p.exists())
                    .unwrap_or_else(|| PathBuf::from("aic-worker"))
            });
            let cfg = LocalConfig {
                miners: num("AIC_POOL_MINERS", 2)?,
                gpus_per_miner: num("AIC_POOL_GPUS", 1)?,
                gateway: "local".into(),
                worker_bin,
                work_root: home,
                worker_env: [store_config.env(), worker_env.clone()].concat(),
                time_limit_grace: aic_core::scheduler::local::TIME_LIMIT_GRACE,
                sandbox: aic_core::scheduler::local::LocalConfig::sandboxed(),
                gpu_types: aic_core::scheduler::gpus::from_env().map_err(|e| anyhow!("AIC_POOL_GPU_TYPES: {e}"))?,
            };
            Arc::new(LocalScheduler::new(cfg, store.clone()))
        }
        "nomad" => {
            let mut cfg = aic_core::scheduler::nomad::NomadConfig::from_env([store_config.env(), worker_env].concat())
                .map_err(|e| anyhow!(e))?
                .ok_or_else(|| anyhow!("AIC_SCHEDULER=nomad needs NOMAD_ADDR (and NOMAD_TOKEN with ACLs on)"))?;
            if let Some(token) = crate::secrets::get("NOMAD_TOKEN") {
                cfg.token = Some(token);
            }
            match (var("AIC_WORKER_GATEWAY"), gateway_secret()?) {
                (Some(url), Some(secret)) => {
                    cfg.worker_gateway = Some(aic_core::grant::WorkerGateway { url, secret });
                }
                (Some(_), None) => bail!("AIC_WORKER_GATEWAY needs AIC_GATEWAY_SECRET (the tokens are signed with it)"),
                (None, _) => tracing::warn!(
                    "workers get the store's credentials: set AIC_WORKER_GATEWAY (this host's URL as the miners \
                         reach it) with AIC_GATEWAY_SECRET to give them only their job's objects"
                ),
            }
            Arc::new(aic_core::scheduler::nomad::NomadScheduler::new(cfg, store.clone()))
        }
        other => bail!("AIC_SCHEDULER={other:?} is not known: use local or nomad"),
    };
    let mut ctx = Ctx {
        store,
        scheduler,
        auth: Arc::new(Eip712Auth { chain_id: auth_chain_id }),
        payments,
        pricing,
        settler: None,
    };
    // The escrow's settler: a pool secret, here only (never passed to a worker).
    if let Some(c) = chain.as_ref().filter(|c| c.escrow.is_some()) {
        match var("AIC_SETTLER_KEY") {
            Some(k) => {
                let key: aic_chain::PrivateKeySigner = k
                    .trim_start_matches("0x")
                    .parse()
                    .map_err(|e| anyhow!("AIC_SETTLER_KEY is not a private key: {e}"))?;
                ctx = ctx.with_settler(c, key)?;
            }
            None => tracing::warn!(
                "the pool takes deposits into an escrow but AIC_SETTLER_KEY is not set: jobs are not settled here"
            ),
        }
    }
    Ok(Built { ctx, store_config, chain, chain_id: auth_chain_id })
}

/// `AIC_GATEWAY_SECRET`, decoded, or `None` when not set.
fn gateway_secret() -> anyhow::Result<Option<Vec<u8>>> {
    let Some(secret) = var("AIC_GATEWAY_SECRET") else { return Ok(None) };
    let secret = hex::decode(secret.trim_start_matches("0x")).context("AIC_GATEWAY_SECRET must be hex")?;
    if secret.len() < 16 {
        bail!("AIC_GATEWAY_SECRET must be at least 16 bytes (32 hex digits); make one with `openssl rand -hex 32`");
    }
    Ok(Some(secret))
}

/// The gateway's settings, or `None` when `AIC_GATEWAY_SECRET` is not set.
pub fn gateway(built: &Built) -> anyhow::Result<Option<GatewayConfig>> {
    let Some(secret) = gateway_secret()? else { return Ok(None) };
    let domain = var("AIC_GATEWAY_DOMAIN").unwrap_or_else(|| "aic-pool".into());
    let chain_id = built.chain_id;
    let mut cfg = GatewayConfig::new(secret, &domain, chain_id);
    if let Some(c) = &built.chain {
        cfg.chain_info = serde_json::to_value(c)?;
    }
    cfg.storage_quota = storage_quota(Some(102_400))?;
    Ok(Some(cfg))
}

/// The storage quota per wallet (`AIC_STORAGE_QUOTA_MB`, else `default_mb`; 0: none), in bytes.
pub fn storage_quota(default_mb: Option<u64>) -> anyhow::Result<Option<u64>> {
    let mb = match var("AIC_STORAGE_QUOTA_MB") {
        Some(v) => {
            Some(v.parse::<u64>().map_err(|_| anyhow!("AIC_STORAGE_QUOTA_MB={v:?} is not a whole number of MiB"))?)
        }
        None => default_mb,
    };
    Ok(mb.filter(|m| *m > 0).map(|m| m << 20))
}

/// Where deployments answer (`AIC_SERVING_ORIGIN`), else `http://*.localhost:<port>`: each on
/// an origin of its own, never the web app's ([`aic_schemas::origin`]).
pub fn serving_origins(port: u16) -> anyhow::Result<aic_schemas::origin::Origins> {
    match var("AIC_SERVING_ORIGIN") {
        Some(v) => v.parse().map_err(|e: String| anyhow!("AIC_SERVING_ORIGIN: {e}")),
        None => Ok(aic_schemas::origin::Origins::localhost(port)),
    }
}
