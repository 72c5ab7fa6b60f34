//! Who you are: the wallet `aic` signs with, and the Sign-In with Ethereum session.
//!
//! `aic login` signs a SIWE message with the chosen key and keeps the session in
//! `$AIC_HOME/session.json` (never the key itself: a key file or keystore is read again
//! when a signature is needed). Without a session, `AIC_PRIVATE_KEY` is used if set, else
//! the embedded pool's dev account (anvil's first), which holds dev AIC.

use std::path::Path;

use aic_chain::siwe::SiweMessage;
use aic_chain::wallet::KeySource;
use aic_schemas::Address;
use alloy::signers::Signer as _;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The SIWE domain and URI of a key's sign-in to the embedded pool (the gateway's own in
/// pool mode; the wallet page's own address for a browser wallet, which checks it).
pub const SIWE_DOMAIN: &str = "localhost";
pub const SIWE_URI: &str = "http://localhost/";
const SESSION_DAYS: i64 = 7;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "via", rename_all = "kebab-case")]
pub enum Source {
    Key {
        key: KeySource,
    },
    /// Anvil's dev account `index` (dev chains only).
    Dev {
        index: u32,
    },
    /// A browser wallet (Metamask): signatures are asked for in a local page.
    Browser,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub address: Address,
    pub source: Source,
    pub siwe_message: String,
    pub siwe_signature: String,
    pub expires: DateTime<Utc>,
}

fn path(home: &Path) -> std::path::PathBuf {
    home.join("session.json")
}

pub fn load_session(home: &Path) -> anyhow::Result<Option<Session>> {
    match std::fs::read(path(home)) {
        Ok(b) => {
            let s: Session = serde_json::from_slice(&b).context("session.json is damaged; run `aic login` again")?;
            Ok((s.expires > Utc::now()).then_some(s))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn save_session(home: &Path, s: &Session) -> anyhow::Result<()> {
    let p = path(home);
    std::fs::write(&p, serde_json::to_vec_pretty(s)?)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

pub fn logout(home: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path(home)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl Source {
    /// The key behind this source; `None` for a browser wallet.
    pub fn signer(&self) -> anyhow::Result<Option<PrivateKeySigner>> {
        match self {
            Source::Key { key } => key.load().map(Some),
            Source::Dev { index } => Ok(Some(aic_chain::devchain::dev_key(*index))),
            Source::Browser => Ok(None),
        }
    }
}

/// The identity to act as: the session's, else `AIC_PRIVATE_KEY`'s, else the dev account.
pub fn current(home: &Path) -> anyhow::Result<(Address, Source)> {
    if let Some(s) = load_session(home)? {
        return Ok((s.address, s.source));
    }
    let source = if std::env::var("AIC_PRIVATE_KEY").is_ok_and(|k| !k.is_empty()) {
        Source::Key { key: KeySource::Env }
    } else {
        Source::Dev { index: 0 }
    };
    let signer = source.signer()?.ok_or_else(|| anyhow!("no key"))?;
    Ok((aic_chain::from_alloy(signer.address()), source))
}

/// Signs in with a key: a SIWE message signed and checked, then kept as the session.
pub async fn login_with_key(home: &Path, source: Source, chain_id: u64) -> anyhow::Result<Session> {
    let signer = source.signer()?.ok_or_else(|| anyhow!("a browser wallet signs in the browser: use --browser"))?;
    let msg = SiweMessage::new(SIWE_DOMAIN, SIWE_URI, signer.address(), chain_id, chrono::Duration::days(SESSION_DAYS));
    let sig = signer.sign_message(msg.to_string().as_bytes()).await?;
    let sig = format!("0x{}", alloy::hex::encode(sig.as_bytes()));
    finish_login(home, source, &msg.to_string(), &sig, chain_id, SIWE_DOMAIN)
}

/// Checks a SIWE message signed for `domain` and keeps the session.
pub fn finish_login(
    home: &Path,
    source: Source,
    message: &str,
    signature: &str,
    chain_id: u64,
    domain: &str,
) -> anyhow::Result<Session> {
    let msg = SiweMessage::parse(message)?;
    msg.verify(signature, domain, chain_id, Utc::now())?;
    let s = Session {
        address: aic_chain::from_alloy(msg.address),
        source,
        siwe_message: message.into(),
        siwe_signature: signature.into(),
        expires: msg.expiration,
    };
    save_session(home, &s)?;
    Ok(s)
}
