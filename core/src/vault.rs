//! Users' secrets (`aic secret set NAME`): kept by the pool, encrypted under a key only the
//! functions host holds, given to a job's program in its environment when the job names them
//! (`JobRequest::secrets`), never to anyone else.
//!
//! Each is `pool/secrets/<owner>/<NAME>.json` (`{nonce, sealed, updated_at}`): AES-256-GCM
//! (aws-lc-rs, already the TLS stack's) with a random nonce, the owner's address and the name
//! as associated data, so a sealed value copied under another owner or name does not open.
//! The key: the pool's `AIC_SECRETS_KEY` (64 hex digits; the embedded pool's in
//! `$AIC_HOME/secrets.key`), a key of its own; without one the pool keeps no secrets. The
//! host alone holds it; workers get values, never the key. Users reach only `pool/` through the gateway's own routes, which list names
//! and never return a value: the values go to workers, for their job's owner only.

use std::collections::BTreeMap;

use aic_schemas::Address;
use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::store::Store;

/// The largest value a secret may hold.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;

/// A secret as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sealed {
    /// The GCM nonce, hex.
    pub nonce: String,
    /// Ciphertext and tag, hex.
    pub sealed: String,
    pub updated_at: DateTime<Utc>,
}

/// A secret as listed: its name and when it was last set, never its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Listed {
    pub name: String,
    pub updated_at: DateTime<Utc>,
}

pub struct Vault {
    key: RandomizedNonceKey,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

fn aad(owner: &Address, name: &str) -> Vec<u8> {
    format!("aic secret v1\n{owner}\n{name}").into_bytes()
}

impl Vault {
    /// The pool's vault under `key` (64 hex digits: `AIC_SECRETS_KEY`, its own, never derived
    /// from another secret: rotating the gateway's must not lose the users' secrets).
    pub fn new(key: &str) -> anyhow::Result<Vault> {
        let key = hex::decode(key.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| anyhow::anyhow!("AIC_SECRETS_KEY is not 64 hex digits"))?;
        let key = RandomizedNonceKey::new(&AES_256_GCM, &key).map_err(|_| anyhow::anyhow!("not an AES-256 key"))?;
        Ok(Vault { key })
    }

    pub fn seal(&self, owner: &Address, name: &str, value: &[u8]) -> anyhow::Result<Sealed> {
        let mut in_out = value.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(aad(owner, name)), &mut in_out)
            .map_err(|_| anyhow::anyhow!("sealing the secret failed"))?;
        Ok(Sealed { nonce: hex::encode(nonce.as_ref()), sealed: hex::encode(in_out), updated_at: Utc::now() })
    }

    pub fn open(&self, owner: &Address, name: &str, s: &Sealed) -> anyhow::Result<String> {
        let bad = || anyhow::anyhow!("secret {name} does not open with this pool's key (set it again)");
        let nonce =
            hex::decode(&s.nonce).ok().and_then(|n| Nonce::try_assume_unique_for_key(&n).ok()).ok_or_else(bad)?;
        let mut in_out = hex::decode(&s.sealed).map_err(|_| bad())?;
        let plain = self.key.open_in_place(nonce, Aad::from(aad(owner, name)), &mut in_out).map_err(|_| bad())?;
        String::from_utf8(plain.to_vec()).map_err(|_| bad())
    }
}

/// Stores `value` as `owner`'s secret `name` (replacing it).
pub async fn put(store: &Store, vault: &Vault, owner: &Address, name: &str, value: &str) -> anyhow::Result<()> {
    aic_schemas::validate::secret_name(name).map_err(|e| anyhow::anyhow!(e))?;
    if value.len() > MAX_VALUE_BYTES {
        anyhow::bail!("a secret holds at most {} KiB (this one is {} bytes)", MAX_VALUE_BYTES / 1024, value.len());
    }
    if value.contains('\0') {
        anyhow::bail!("a secret cannot hold a NUL byte (it goes into the program's environment)");
    }
    let have = list(store, owner).await?;
    if have.len() >= aic_schemas::validate::MAX_SECRETS && !have.iter().any(|l| l.name == name) {
        anyhow::bail!("you keep {} secrets already, the most a wallet may: remove one (`aic secret rm`)", have.len());
    }
    store.put_json(&crate::layout::secret(owner, name), &vault.seal(owner, name, value.as_bytes())?).await?;
    Ok(())
}

/// `owner`'s secrets, by name.
pub async fn list(store: &Store, owner: &Address) -> Result<Vec<Listed>, StoreError> {
    let prefix = crate::layout::secrets_prefix(owner);
    let mut out = vec![];
    for m in store.list(&prefix).await? {
        let key = m.location.to_string();
        let Some(name) = key.strip_prefix(&prefix).and_then(|k| k.strip_suffix(".json")) else { continue };
        if let Some(s) = store.get_json::<Sealed>(&key, 64 * 1024).await? {
            out.push(Listed { name: name.to_string(), updated_at: s.updated_at });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes `owner`'s secret `name`; `false` when there was none.
pub async fn remove(store: &Store, owner: &Address, name: &str) -> Result<bool, StoreError> {
    let key = crate::layout::secret(owner, name);
    if store.get_json::<Sealed>(&key, 64 * 1024).await?.is_none() {
        return Ok(false);
    }
    store.delete(&key).await?;
    Ok(true)
}

/// The values of `owner`'s secrets `names`, for a job of theirs that names them. A name
/// without a secret is an error that says so.
pub async fn values(
    store: &Store,
    vault: &Vault,
    owner: &Address,
    names: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for name in names {
        aic_schemas::validate::secret_name(name).map_err(|e| anyhow::anyhow!(e))?;
        let sealed =
            store.get_json::<Sealed>(&crate::layout::secret(owner, name), 64 * 1024).await?.ok_or_else(|| {
                anyhow::anyhow!("secret {name} is not set: `aic secret set {name}`, then run the job again")
            })?;
        out.insert(name.clone(), vault.open(owner, name, &sealed)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(b: u8) -> Address {
        Address::from_bytes([b; 20])
    }

    #[test]
    fn a_sealed_secret_opens_for_its_owner_and_name_only() {
        let v = Vault::new(&"ab".repeat(32)).unwrap();
        let s = v.seal(&owner(1), "HF_TOKEN", b"hf_abc").unwrap();
        assert!(!s.sealed.contains(&hex::encode("hf_abc")), "stored in the clear");
        assert_eq!(v.open(&owner(1), "HF_TOKEN", &s).unwrap(), "hf_abc");
        assert!(v.open(&owner(2), "HF_TOKEN", &s).is_err(), "opened under another owner");
        assert!(v.open(&owner(1), "OTHER", &s).is_err(), "opened under another name");
        let other_pool = Vault::new(&"cd".repeat(32)).unwrap();
        assert!(other_pool.open(&owner(1), "HF_TOKEN", &s).is_err());
        assert!(Vault::new("abc").is_err());
        assert_ne!(s.nonce, v.seal(&owner(1), "HF_TOKEN", b"hf_abc").unwrap().nonce, "a nonce used twice");
    }
}
