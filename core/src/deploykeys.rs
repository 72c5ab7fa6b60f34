//! Keys to a private deployment (`aic deploy --private`; `aic deploy key create|ls|revoke`).
//!
//! A key opens one deployment: by its name when it has one (so keys outlive `aic deploy scale`
//! and `extend`, which replace the deployment under the same name), else by its id. The pool
//! keeps its SHA-256 alone (`pool/deploy-keys/<owner>/<scope>/<id>.json`, written by the pool:
//! the gateway's routes, or the embedded pool's owner); the key is shown once. A key is 32
//! random bytes, so a fast hash is enough: nothing about it can be guessed from its digest.
//! Revoking deletes the record: the serving gateway reads the keys again within a second.

use aic_schemas::{Address, DeployKey, JobRequest};
use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::layout::{deploy_key, deploy_keys_prefix};
use crate::store::{Store, StoreError};

/// What every key starts with (so a leaked one is recognised by scanners and people).
pub const KEY_PREFIX: &str = "aicdk_";
/// Most keys one deployment has at a time.
pub const MAX_KEYS: usize = 50;
/// Longest label.
pub const MAX_LABEL: usize = 64;
/// Largest key record read.
const MAX_RECORD: u64 = 4096;

/// The scope a deployment's keys are under: its name, or its id when it has none.
pub fn scope_of(req: &JobRequest) -> String {
    req.name.clone().unwrap_or_else(|| req.job_id.to_string())
}

/// Whether `s` can be a scope (a deployment's name or id: lowercase letters, digits, `-`).
pub fn is_scope(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `n` random bytes, hex.
pub fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut raw = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(hex::encode(raw))
}

/// SHA-256 of a key, hex.
pub fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new key for `owner`'s deployment `scope`: its record, and the key (shown once).
pub async fn create(store: &Store, owner: &Address, scope: &str, label: &str) -> anyhow::Result<(DeployKey, String)> {
    anyhow::ensure!(is_scope(scope), "{scope:?} is not a deployment's name or id; see `aic deploy list`");
    anyhow::ensure!(
        label.len() <= MAX_LABEL && !label.chars().any(char::is_control),
        "the label must be at most {MAX_LABEL} characters, no control characters"
    );
    let had = store.list(&deploy_keys_prefix(owner, scope)).await?.len();
    anyhow::ensure!(
        had < MAX_KEYS,
        "deployment {scope} has {had} keys, the most it may have: revoke one (`aic deploy key ls {scope}`)"
    );
    let key = format!("{KEY_PREFIX}{}", random_hex(32)?);
    let id = ulid::Ulid::new().to_string().to_ascii_lowercase()[16..].to_string();
    let record = DeployKey {
        id: id.clone(),
        label: label.to_string(),
        scope: scope.to_string(),
        sha256: digest(&key),
        ends_with: key[key.len() - 4..].to_string(),
        created_at: Utc::now(),
    };
    store.put_json(&deploy_key(owner, scope, &id), &record).await?;
    Ok((record, key))
}

/// `owner`'s keys to `scope`, oldest first. A record that is not one is passed over.
pub async fn list(store: &Store, owner: &Address, scope: &str) -> Result<Vec<DeployKey>, StoreError> {
    let mut out = Vec::new();
    for m in store.list(&deploy_keys_prefix(owner, scope)).await? {
        match store.get_json::<DeployKey>(m.location.as_ref(), MAX_RECORD).await {
            Ok(Some(k)) => out.push(k),
            Ok(None) | Err(StoreError::Json { .. }) | Err(StoreError::TooLarge { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by_key(|k| k.created_at);
    Ok(out)
}

/// Revokes the key `which` (its id, or the key itself) of `scope`; `false` when there is none.
pub async fn revoke(store: &Store, owner: &Address, scope: &str, which: &str) -> Result<bool, StoreError> {
    let which = which.trim();
    let id = if which.starts_with(KEY_PREFIX) {
        let d = digest(which);
        match list(store, owner, scope).await?.into_iter().find(|k| k.sha256 == d) {
            Some(k) => k.id,
            None => return Ok(false),
        }
    } else {
        which.to_string()
    };
    if !is_scope(&id) {
        return Ok(false);
    }
    let key = deploy_key(owner, scope, &id);
    if store.head(&key).await?.is_none() {
        return Ok(false);
    }
    store.delete(&key).await?;
    Ok(true)
}

/// The key a request carries: `Authorization: Bearer <key>`.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let v = authorization?.trim();
    let (scheme, key) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim()).filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_key_is_read_from_its_header_alone() {
        assert_eq!(bearer(Some("Bearer aicdk_ab")), Some("aicdk_ab"));
        assert_eq!(bearer(Some("bearer   aicdk_ab ")), Some("aicdk_ab"));
        assert_eq!(bearer(Some("Basic dXNlcjpwYXNz")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn scopes_are_names_or_ids() {
        assert!(is_scope("digits-api") && is_scope("01m89k34jwwd6pedrf9ayk9csz"));
        assert!(!is_scope("") && !is_scope("../x") && !is_scope("A") && !is_scope(&"a".repeat(64)));
    }
}
