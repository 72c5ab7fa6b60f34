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
use anyhow::{Context, anyhow};

/// Anvil's first dev account: the identity of the embedded pool until you log in.
pub const DEV_ADDRESS: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";

pub struct Env {
    pub home: PathBuf,
    pub store_config: StoreConfig,
    pub store: Store,
    pub spool: Spool,
    pub owner: Address,
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
        let owner = match std::env::var("AIC_ADDRESS") {
            Ok(a) if !a.is_empty() => a.parse().map_err(|e| anyhow!("AIC_ADDRESS: {e}"))?,
            _ => DEV_ADDRESS.parse().expect("valid"),
        };
        Ok(Env { home, store_config, store, spool, owner })
    }
}
