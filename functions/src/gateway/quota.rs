//! A storage quota per wallet (`GatewayConfig::storage_quota`, `AIC_STORAGE_QUOTA_MB`): what
//! a user keeps in their datasets (`users/<addr>/data/`) and in the code of jobs not paid yet,
//! so that the pool's bucket is nobody's free storage or CDN.
//!
//! A job's code is uploaded before its request, so until validate takes the job in (paid) its
//! code waits under a marker (`pool/code-pending/<owner>/<job>.json`) and counts against the
//! quota; at most [`MAX_PENDING_CODE`] jobs of a wallet wait so at once, one job's code is at
//! most `AIC_MAX_CODE_BYTES` (what a worker takes), a submitted job's code is fixed, and the
//! code of a job never paid is deleted [`PENDING_CODE_KEPT`] after its upload began (a
//! rejected request's too), when its owner next uploads.
//!
//! An upload is refused before anything moves when it would take the wallet past its quota:
//! a single PUT by its declared size, and a part of a multipart upload by its own, each of
//! which its URL then binds (S3 checks the signed `Content-Length`; this host checks the
//! body's length); a multipart upload is checked again once whole (and deleted when over).
//! What is used: one listing of the wallet's datasets (reused for [`USAGE_CACHE`]) plus what
//! was signed and has not arrived, each URL kept by its key until it expires (a listing that
//! shows the key has it; so does the end of its upload). One wallet's checks and reservations
//! go one at a time, so parallel calls cannot each fit alone. The count is this host's: with
//! several functions hosts a wallet can sign up to one quota more on each before its uploads
//! show in the listing.

use super::*;
use serde::Serialize;

/// Most jobs of one wallet with code uploaded and not paid at once.
pub const MAX_PENDING_CODE: usize = 16;
/// How long the code of a job that is never paid is kept.
pub const PENDING_CODE_KEPT: Duration = Duration::from_secs(24 * 3600);

/// How long one listing of a wallet's datasets stands for what it uses.
pub const USAGE_CACHE: Duration = Duration::from_secs(10);

/// Each wallet's usage, behind a lock of its own.
#[derive(Default)]
pub(super) struct Usage {
    by: Mutex<HashMap<Address, std::sync::Arc<tokio::sync::Mutex<Wallet>>>>,
}

/// What one wallet used at its last listing, and the uploads signed since.
#[derive(Default)]
struct Wallet {
    listed_at: Option<Instant>,
    listed: u64,
    /// Signed, not seen arrived: by key (a part's: `<key>#<upload>#<part>`), size and expiry.
    signed: HashMap<String, (u64, Instant)>,
}

impl Wallet {
    fn used(&self) -> u64 {
        let now = Instant::now();
        self.listed + self.signed.values().filter(|(_, until)| *until > now).map(|(n, _)| n).sum::<u64>()
    }
}

/// Whether `key` counts against its owner's quota: a dataset's file, or a job's code.
pub(super) fn counted(who: &Address, key: &str) -> bool {
    key.starts_with(&aic_core::layout::data_key(who, "")) || code_job(who, key).is_some()
}

/// The job `key` is the code of, when it is one of `who`'s jobs' code.
pub(super) fn code_job(who: &Address, key: &str) -> Option<JobId> {
    let rest = key.strip_prefix(&aic_core::layout::user_prefix(who))?.strip_prefix("jobs/")?;
    let (job, rest) = rest.split_once('/')?;
    rest.starts_with("code/").then(|| job.parse::<JobId>().ok().filter(|id| id.as_str() == job)).flatten()
}

/// When a job's code upload began (the marker's body).
#[derive(Serialize, Deserialize)]
struct Pending {
    since: DateTime<Utc>,
}

/// How long a part counts though its upload is never completed nor aborted: until the store
/// drops it (MinIO after 24 h, scanning every 6 h: `stale_uploads_expiry`; S3 by the bucket's
/// `AbortIncompleteMultipartUpload` rule of a day, applied once a day) and its URL's lifetime.
pub const PARTS_HELD: Duration = Duration::from_secs(2 * 24 * 3600);

/// A part's reservation key.
pub(super) fn part_key(key: &str, upload: &str, part: usize) -> String {
    format!("{key}#{upload}#{part}")
}

impl Gateway {
    /// `who`'s usage, locked, listed again when older than [`USAGE_CACHE`] (or `fresh`).
    async fn wallet(&self, who: &Address, fresh: bool) -> Result<tokio::sync::OwnedMutexGuard<Wallet>, ApiError> {
        let lock = {
            let mut by = self.usage.by.lock().unwrap();
            if by.len() >= 100_000 {
                // Forget the wallets nobody is checking right now.
                by.retain(|_, w| std::sync::Arc::strong_count(w) > 1);
            }
            by.entry(*who).or_default().clone()
        };
        let mut w = lock.lock_owned().await;
        if fresh || w.listed_at.is_none_or(|at| at.elapsed() >= USAGE_CACHE) {
            let prefix = aic_core::layout::data_key(who, "");
            let mut listing = self.ctx.store.list(&prefix).await.map_err(store_err)?;
            // And the code of the wallet's jobs not paid yet (at most MAX_PENDING_CODE).
            for job in self.pending_code(who).await? {
                let code = JobKey::new(*who, job).code_prefix();
                listing.extend(self.ctx.store.list(&code).await.map_err(store_err)?);
            }
            let now = Instant::now();
            let arrived: std::collections::HashSet<&str> = listing.iter().map(|m| m.location.as_ref()).collect();
            w.signed.retain(|k, (_, until)| *until > now && !arrived.contains(k.as_str()));
            w.listed = listing.iter().map(|m| m.size).sum();
            w.listed_at = Some(now);
        }
        Ok(w)
    }

    /// Takes `items` (key, bytes) for `who`'s datasets for `held` (or their URLs' lifetime),
    /// or refuses them all with what is used and what to do.
    pub(super) async fn take(
        &self,
        who: &Address,
        items: &[(String, u64)],
        held: Option<Duration>,
    ) -> Result<(), ApiError> {
        let Some(quota) = self.cfg.storage_quota else { return Ok(()) };
        let bytes = items.iter().fold(0u64, |n, (_, b)| n.saturating_add(*b));
        let mut w = self.wallet(who, false).await?;
        let used = w.used();
        if used.saturating_add(bytes) > quota {
            return Err(over_quota(used, bytes, quota));
        }
        let until = Instant::now() + held.unwrap_or(self.cfg.url_ttl);
        for (key, n) in items {
            w.signed.insert(key.clone(), (*n, until));
        }
        Ok(())
    }

    /// The wallet's jobs with code waiting for their payment; those waiting longer than
    /// [`PENDING_CODE_KEPT`] are let go: their code deleted unless the job was paid
    /// meanwhile.
    async fn pending_code(&self, who: &Address) -> Result<Vec<JobId>, ApiError> {
        let store = &self.ctx.store;
        let mut out = Vec::new();
        for m in store.list(&aic_core::layout::code_pending_prefix(who)).await.map_err(store_err)? {
            let Some(job) =
                m.location.filename().and_then(|f| f.strip_suffix(".json")).and_then(|j| j.parse::<JobId>().ok())
            else {
                continue;
            };
            let marker = aic_core::layout::code_pending(who, &job);
            let since = store.get_json::<Pending>(&marker, 4096).await.map_err(store_err)?.map(|p| p.since);
            let stale = since
                .is_none_or(|t| Utc::now() - t > chrono::Duration::from_std(PENDING_CODE_KEPT).unwrap_or_default());
            if !stale {
                out.push(job);
                continue;
            }
            let key = JobKey::new(*who, job.clone());
            if store.head(&key.manifest()).await.map_err(store_err)?.is_none() {
                // Submitted and still being validated (a payment awaiting confirmations, the
                // chain down): its code waits on, counted.
                let submitted = store.head(&key.request()).await.map_err(store_err)?.is_some();
                let rejected = aic_core::status::current(store, &key)
                    .await
                    .map_err(store_err)?
                    .is_some_and(|r| r.state == aic_schemas::JobState::Rejected);
                if submitted && !rejected {
                    out.push(job);
                    continue;
                }
                tracing::info!(job = %key.job, "deleting the code of a job never paid");
                store.delete_prefix(&key.code_prefix()).await.map_err(store_err)?;
            }
            store.delete(&marker).await.map_err(store_err)?;
        }
        Ok(out)
    }

    /// The code uploads of a sign call (`keys` with their sizes) for `who`'s job `job`: refused
    /// when the job was submitted (its code is fixed), when the wallet has
    /// [`MAX_PENDING_CODE`] other jobs' code waiting, or when the job's code would pass
    /// `AIC_MAX_CODE_BYTES`; otherwise the job's code waits under its marker.
    pub(super) async fn take_code(&self, who: &Address, job: &JobId, items: &[(String, u64)]) -> Result<(), ApiError> {
        let store = &self.ctx.store;
        // One wallet's code checks one at a time (its markers counted and made together).
        let _one_at_a_time = self.wallet(who, false).await?;
        let bytes = items.iter().fold(0u64, |n, (_, b)| n.saturating_add(*b));
        let key = JobKey::new(*who, job.clone());
        if store.head(&key.request()).await.map_err(store_err)?.is_some() {
            return Err(err(
                StatusCode::CONFLICT,
                format!("job {job} was submitted: its code is fixed (submit a new job to run other code)"),
            ));
        }
        let marker = aic_core::layout::code_pending(who, job);
        // (A marker past its day is collected here first: the code that follows gets a new one.)
        let waiting = self.pending_code(who).await?;
        if !waiting.contains(job) {
            if waiting.len() >= MAX_PENDING_CODE {
                return Err(err(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "{} jobs of yours have code uploaded and are not submitted: submit them, or wait a day for their code to go, before uploading another's",
                        waiting.len()
                    ),
                ));
            }
            store.put_json(&marker, &Pending { since: Utc::now() }).await.map_err(store_err)?;
        }
        // What the job's code holds already, but for the files signed again now (a retry).
        let again: std::collections::HashSet<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
        let held: u64 = store
            .list(&key.code_prefix())
            .await
            .map_err(store_err)?
            .iter()
            .filter(|m| !again.contains(m.location.as_ref()))
            .map(|m| m.size)
            .sum();
        if held.saturating_add(bytes) > self.cfg.max_code_bytes {
            return Err(err(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "job {job}'s code would be {} bytes, over the pool's {}-byte limit (AIC_MAX_CODE_BYTES): ship large files as a dataset",
                    held.saturating_add(bytes),
                    self.cfg.max_code_bytes
                ),
            ));
        }
        Ok(())
    }

    /// `GET /v1/usage`: what the caller keeps in datasets (and has signed to upload), and the
    /// pool's quota.
    pub(super) async fn usage(&self, who: &Address) -> Reply {
        let used = self.wallet(who, false).await?.used();
        Ok(json!({ "data_bytes": used, "quota_bytes": self.cfg.storage_quota }))
    }

    /// After a multipart upload of `key` completed: refused (and the object deleted) when it
    /// took its owner past the quota.
    pub(super) async fn check_completed(&self, who: &Caller, key: &str, upload: &str) -> Result<(), ApiError> {
        let (Caller::User(who), Some(quota)) = (who, self.cfg.storage_quota) else { return Ok(()) };
        if !counted(who, key) {
            return Ok(());
        }
        let mut w = self.wallet(who, true).await?;
        forget_upload(&mut w, key, upload);
        let used = w.used();
        if used <= quota {
            return Ok(());
        }
        let size = self.ctx.store.head(key).await.map_err(store_err)?.map_or(0, |m| m.size);
        self.ctx.store.delete(key).await.map_err(store_err)?;
        w.listed = w.listed.saturating_sub(size);
        Err(over_quota(used.saturating_sub(size), size, quota))
    }

    /// Files of `who`'s datasets are being deleted (their URLs signed): the next check lists
    /// again rather than count them.
    pub(super) async fn relist(&self, who: &Address) {
        let lock = self.usage.by.lock().unwrap().get(who).cloned();
        if let Some(lock) = lock {
            lock.lock().await.listed_at = None;
        }
    }

    /// An upload into `who`'s datasets was aborted: what its parts took is free again.
    pub(super) async fn release(&self, who: &Caller, key: &str, upload: &str) -> Result<(), ApiError> {
        let (Caller::User(who), Some(_)) = (who, self.cfg.storage_quota) else { return Ok(()) };
        if counted(who, key) {
            forget_upload(&mut *self.wallet(who, false).await?, key, upload);
        }
        Ok(())
    }
}

/// An upload's parts (and its start) no longer held apart: it ended.
fn forget_upload(w: &mut Wallet, key: &str, upload: &str) {
    let parts = format!("{key}#{upload}#");
    let started = format!("{key}#create");
    w.signed.retain(|k, _| !k.starts_with(&parts) && *k != started);
}

fn over_quota(used: u64, bytes: u64, quota: u64) -> ApiError {
    err(StatusCode::INSUFFICIENT_STORAGE, aic_core::over_storage_quota(used, bytes, quota))
}
