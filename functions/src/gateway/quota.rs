//! A storage quota per wallet (`GatewayConfig::storage_quota`, `AIC_STORAGE_QUOTA_MB`): what
//! a user keeps in their datasets (`users/<addr>/data/`), so that the pool's bucket is nobody's
//! free storage or CDN.
//!
//! An upload is refused before anything moves when it would take the wallet past its quota:
//! a single PUT by its declared size, which its URL then binds (S3 checks the signed
//! `Content-Length`; this host checks the body's length); a multipart upload is refused at
//! `create` once the quota is used up, and at `complete` when the finished object takes the
//! wallet past it (the object is then deleted: its parts' sizes are the client's to choose).
//! What is used is read from one listing of the wallet's datasets, reused for
//! [`USAGE_CACHE`], plus what was signed since on this host (so that parallel calls cannot
//! each fit alone).

use super::*;

/// How long one listing of a wallet's datasets stands for what it uses.
pub const USAGE_CACHE: Duration = Duration::from_secs(10);

/// What each wallet used at its last listing, when, and what was signed since.
#[derive(Default)]
pub(super) struct Usage {
    by: Mutex<HashMap<Address, (Instant, u64, u64)>>,
}

/// Whether `key` counts against its owner's quota: a dataset's file.
pub(super) fn counted(who: &Address, key: &str) -> bool {
    key.starts_with(&aic_core::layout::data_key(who, ""))
}

impl Gateway {
    /// What `who` keeps in datasets (`fresh`: listed now), with what was signed since.
    pub(super) async fn data_used(&self, who: &Address, fresh: bool) -> Result<u64, ApiError> {
        if !fresh
            && let Some((at, listed, signed)) = self.usage.by.lock().unwrap().get(who)
            && at.elapsed() < USAGE_CACHE
        {
            return Ok(listed + signed);
        }
        let prefix = aic_core::layout::data_key(who, "");
        let listed: u64 = self.ctx.store.list(&prefix).await.map_err(store_err)?.iter().map(|m| m.size).sum();
        let mut by = self.usage.by.lock().unwrap();
        if by.len() >= 100_000 {
            by.clear();
        }
        by.insert(*who, (Instant::now(), listed, 0));
        Ok(listed)
    }

    /// Takes `bytes` more for `who`'s datasets, or refuses them with what is used and what to do.
    pub(super) async fn take(&self, who: &Address, bytes: u64) -> Result<(), ApiError> {
        let Some(quota) = self.cfg.storage_quota else { return Ok(()) };
        let used = self.data_used(who, false).await?;
        if used.saturating_add(bytes) > quota {
            return Err(over_quota(used, bytes, quota));
        }
        if let Some(e) = self.usage.by.lock().unwrap().get_mut(who) {
            e.2 += bytes;
        }
        Ok(())
    }

    /// `GET /v1/usage`: what the caller keeps in datasets, and the pool's quota.
    pub(super) async fn usage(&self, who: &Address) -> Reply {
        let used = self.data_used(who, true).await?;
        Ok(json!({ "data_bytes": used, "quota_bytes": self.cfg.storage_quota }))
    }

    /// After a multipart upload of `key` completed: refused (and the object deleted) when it
    /// took its owner past the quota.
    pub(super) async fn check_completed(&self, who: &Caller, key: &str) -> Result<(), ApiError> {
        let (Caller::User(who), Some(quota)) = (who, self.cfg.storage_quota) else { return Ok(()) };
        if !counted(who, key) {
            return Ok(());
        }
        let used = self.data_used(who, true).await?;
        if used <= quota {
            return Ok(());
        }
        let size = self.ctx.store.head(key).await.map_err(store_err)?.map_or(0, |m| m.size);
        self.ctx.store.delete(key).await.map_err(store_err)?;
        self.usage.by.lock().unwrap().remove(who);
        Err(over_quota(used - size, size, quota))
    }
}

fn over_quota(used: u64, bytes: u64, quota: u64) -> ApiError {
    let size = |b: u64| aic_core::size(b);
    err(
        StatusCode::INSUFFICIENT_STORAGE,
        format!(
            "storage quota: your datasets take {} of this pool's {} per wallet, and this upload needs {} more; delete datasets you no longer need (`aic data rm NAME`) and upload again",
            size(used),
            size(quota),
            size(bytes)
        ),
    )
}
