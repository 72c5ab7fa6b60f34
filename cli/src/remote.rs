//! Pool mode: `aic` against a pool's gateway (`AIC_GATEWAY=https://…`), holding no pool
//! credentials. The store is [`GatewayStore`] (in `aic_core::remote`), so every command
//! (`data put`, `run`, `status`, `logs -f`, `results get`) works unchanged on top of it.
//!
//! The session (`$AIC_HOME/gateway.json`) holds the gateway's token, made by `aic login`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use aic_core::remote::{Gateway, GatewayStore};

/// What `aic login` keeps for a gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GatewaySession {
    pub gateway: String,
    pub address: aic_schemas::Address,
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub bucket: String,
    /// The pool's chain, as the gateway describes it (`null` for a free pool).
    #[serde(default)]
    pub chain: Value,
}

pub fn session_path(home: &std::path::Path) -> std::path::PathBuf {
    home.join("gateway.json")
}

pub fn load_session(home: &std::path::Path, gateway: &str) -> anyhow::Result<Option<GatewaySession>> {
    match std::fs::read(session_path(home)) {
        Ok(b) => {
            let s: GatewaySession = serde_json::from_slice(&b)?;
            Ok((s.gateway == gateway && s.expires_at > Utc::now()).then_some(s))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn save_session(home: &std::path::Path, s: &GatewaySession) -> anyhow::Result<()> {
    let p = session_path(home);
    std::fs::write(&p, serde_json::to_vec_pretty(s)?)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
