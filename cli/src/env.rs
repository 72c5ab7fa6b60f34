//! Where this `aic` works: its home, the store, the event spool, and who the user is.
//!
//! `AIC_HOME` (default `~/.aic`) holds the embedded pool: `store/` (the bucket, unless
//! `AIC_STORE` names another), `events/` (bucket notifications), `work/` (the simulated
//! miners' folders) and `pool.lock`.

use std::path::PathBuf;
use std::sync::Arc;

use aic_core::events::Spool;
use aic_core::{Store, StoreConfig};
use aic_schemas::Address;

use crate::identity::Source;
use anyhow::{Context, anyhow};

pub struct Env {
    pub home: PathBuf,
    pub store_config: StoreConfig,
    pub store: Store,
    pub spool: Spool,
    /// Who acts: the logged-in wallet, `AIC_PRIVATE_KEY`'s, or the dev account.
    pub owner: Address,
    pub source: Source,
}

impl Env {
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
        let store = store_config.open()?.with_events(Arc::new(spool.clone()));
        let (owner, source) = crate::identity::current(&home)?;
        Ok(Env { home, store_config, store, spool, owner, source })
    }

    /// The pool's chain settings (written by the pool host, or from `AIC_RPC_URL` & co.).
    pub fn chain(&self) -> anyhow::Result<aic_chain::ChainConfig> {
        aic_chain::ChainConfig::load(&self.home.join("chain.json"))?
            .ok_or_else(|| anyhow!("the pool's chain is not known yet: start the pool with `aic dev up` (or set AIC_RPC_URL, AIC_TOKEN, AIC_TREASURY)"))
    }
}
