//! Signers: a private key (hex, from the environment or a file) or an encrypted keystore
//! (Web3 Secret Storage v3, as geth, Foundry's `cast wallet` and Metamask exports write).

use std::path::{Path, PathBuf};

use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, anyhow};

/// Where a signing key comes from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum KeySource {
    /// A hex private key in `AIC_PRIVATE_KEY`.
    Env,
    /// A file holding a hex private key.
    KeyFile { path: PathBuf },
    /// An encrypted keystore; the password comes from `AIC_KEYSTORE_PASSWORD`.
    Keystore { path: PathBuf },
}

pub fn from_hex(key: &str) -> anyhow::Result<PrivateKeySigner> {
    key.trim()
        .parse::<PrivateKeySigner>()
        .map_err(|_| anyhow!("not a private key (64 hex digits, optionally 0x-prefixed)"))
}

impl KeySource {
    pub fn load(&self) -> anyhow::Result<PrivateKeySigner> {
        match self {
            KeySource::Env => {
                let k = std::env::var("AIC_PRIVATE_KEY").map_err(|_| anyhow!("AIC_PRIVATE_KEY is not set"))?;
                from_hex(&k).context("AIC_PRIVATE_KEY")
            }
            KeySource::KeyFile { path } => {
                let k = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                from_hex(&k).with_context(|| path.display().to_string())
            }
            KeySource::Keystore { path } => {
                let password = std::env::var("AIC_KEYSTORE_PASSWORD")
                    .map_err(|_| anyhow!("set AIC_KEYSTORE_PASSWORD to unlock {}", path.display()))?;
                PrivateKeySigner::decrypt_keystore(path, password)
                    .map_err(|e| anyhow!("cannot unlock {} ({e}); is AIC_KEYSTORE_PASSWORD right?", path.display()))
            }
        }
    }
}

/// Writes `signer`'s key into a new keystore file in `dir` under `password`; returns its path.
pub fn save_keystore(dir: &Path, key: &PrivateKeySigner, password: &str, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut rng = rand_core_rng();
    PrivateKeySigner::encrypt_keystore(dir, &mut rng, key.to_bytes(), password, Some(name))
        .map_err(|e| anyhow!("cannot write the keystore: {e}"))?;
    Ok(dir.join(name))
}

fn rand_core_rng() -> impl alloy::signers::k256::elliptic_curve::rand_core::CryptoRngCore {
    alloy::signers::k256::elliptic_curve::rand_core::OsRng
}
