//! Where this `aic` works: its home, the store, the event spool, and who the user is.
//!
//! `AIC_HOME` (default `~/.aic`) holds the embedded pool: `store/` (the bucket, unless
//! `AIC_STORE` names another), `events/` (bucket notifications), `work/` (the simulated
//! miners' folders) and `pool.lock`.
//!
//! With `AIC_GATEWAY` set, `aic` works in pool mode: the store is the pool's bucket reached
//! through the gateway ([`crate::remote`]), with the session `aic login` made
//! (`gateway.json`); nothing is hosted here.

use std::path::PathBuf;
use std::sync::Arc;

use aic_core::events::Spool;
use aic_core::{Store, StoreConfig};
use aic_schemas::Address;

use crate::identity::Source;
use aic_core::JobKey;
use aic_schemas::JobId;
use anyhow::{Context, anyhow, bail};

pub struct Env {
    pub home: PathBuf,
    pub store_config: StoreConfig,
    pub store: Store,
    pub spool: Spool,
    /// Who acts: the logged-in wallet, `AIC_PRIVATE_KEY`'s, or the dev account.
    pub owner: Address,
    pub source: Source,
    /// Pool mode: the gateway's URL, and the session with it if signed in.
    pub gateway: Option<String>,
    pub gateway_session: Option<crate::remote::GatewaySession>,
}

impl Env {
    /// Accepts a full job id or a unique prefix of one.
    pub async fn resolve(&self, s: &str) -> anyhow::Result<JobKey> {
        let s = s.to_ascii_lowercase();
        if let Ok(id) = s.parse::<JobId>() {
            return Ok(JobKey::new(self.owner, id));
        }
        // Only the ids that start with it are listed (a prefix listing), not every job.
        let page = self.store.list_names(&aic_core::layout::jobs_prefix(&self.owner), &s, None, 1000).await?;
        let matches: Vec<JobId> = page.names.iter().filter_map(|n| n.parse().ok()).collect();
        match matches.len() {
            1 => Ok(JobKey::new(self.owner, matches[0].clone())),
            0 => bail!("no job {s}; see `aic jobs`"),
            n => bail!("{n}{} jobs start with {s}; give more of the id", if page.more { "+" } else { "" }),
        }
    }

    /// How the job's paid runs were settled: the pool's records (through the gateway on a pool).
    pub async fn settlements(&self, job: &aic_core::JobKey) -> anyhow::Result<Vec<aic_schemas::Settlement>> {
        if let Some(gw) = self.gateway_client() {
            let v = gw.call(reqwest::Method::GET, &format!("jobs/{}", job.job), None).await?;
            return Ok(serde_json::from_value(v["settlements"].clone()).unwrap_or_default());
        }
        Ok(aic_core::usage::settlements(&self.store, job).await?)
    }

    /// The embedded pool's host, which relays `aic exec` for the user of this `$AIC_HOME`.
    pub fn embedded_gateway(&self) -> anyhow::Result<crate::remote::Gateway> {
        let (Ok(addr), Ok(secret)) = (
            std::fs::read_to_string(self.home.join("serve.addr")),
            std::fs::read_to_string(self.home.join("exec.secret")),
        ) else {
            bail!("no pool is hosted here to reach the job: start `aic dev up` (or watch the job with `aic run`)");
        };
        let secret = hex::decode(secret.trim())
            .map_err(|_| anyhow!("{} is damaged", self.home.join("exec.secret").display()))?;
        let token = aic_functions::gateway::session_token(
            &secret,
            &self.owner,
            chrono::Utc::now() + chrono::Duration::hours(1),
        );
        Ok(crate::remote::Gateway::new(addr.trim(), Some(token)))
    }

    pub fn load() -> anyhow::Result<Env> {
        let home = match std::env::var_os("AIC_HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h),
            _ => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| anyhow!("neither AIC_HOME nor HOME is set"))?)
                .join(".aic"),
        };
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        let home = home.canonicalize()?;
        let store_config = match std::env::var("AIC_STORE") {
            Ok(url) if !url.is_empty() => StoreConfig::parse(&url)?,
            _ => StoreConfig::Local { root: home.join("store") },
        };
        let spool = Spool::new(home.join("events")).context("creating the event spool")?;
        let (mut owner, source) = crate::identity::current(&home)?;
        let gateway =
            std::env::var("AIC_GATEWAY").ok().filter(|g| !g.is_empty()).map(|g| g.trim_end_matches('/').to_string());
        let (store, gateway_session) = match &gateway {
            Some(url) => {
                let session = crate::remote::load_session(&home, url)?;
                let gw = crate::remote::Gateway::new(url, session.as_ref().map(|s| s.token.clone()));
                let bucket = session.as_ref().map(|s| s.bucket.clone()).unwrap_or_else(|| "gateway".into());
                if let Some(s) = &session {
                    owner = s.address;
                }
                (Store::paged(Arc::new(crate::remote::GatewayStore::new(gw)), &bucket), session)
            }
            None => (store_config.open()?.with_events(Arc::new(spool.clone())), None),
        };
        Ok(Env { home, store_config, store, spool, owner, source, gateway, gateway_session })
    }

    /// The gateway client (pool mode), signed in or not.
    pub fn gateway_client(&self) -> Option<crate::remote::Gateway> {
        self.gateway
            .as_ref()
            .map(|g| crate::remote::Gateway::new(g, self.gateway_session.as_ref().map(|s| s.token.clone())))
    }

    /// The pool's chain settings (written by the pool host, or from `AIC_RPC_URL` & co.).
    pub fn chain(&self) -> anyhow::Result<aic_chain::ChainConfig> {
        if let Some(g) = &self.gateway {
            return aic_chain::ChainConfig::load(&self.home.join("gateway-chain.json"))?.ok_or_else(|| {
                anyhow!("the pool at {g} has not told its chain yet: run `aic login` (or it charges nothing)")
            });
        }
        aic_chain::ChainConfig::load(&self.home.join("chain.json"))?
            .ok_or_else(|| anyhow!("the pool's chain is not known yet: start the pool with `aic dev up` (or set AIC_RPC_URL, AIC_TOKEN, AIC_TREASURY)"))
    }
}
