//! The polling event source, for stores that cannot push notifications.
//!
//! Listing the bucket to find new objects costs more with every object stored. Instead, the
//! gateway — the only way a user gets a URL to write a `request.json` — drops an inbox entry
//! `pool/inbox/<ulid>.json` (`{key, until}`) when it signs one. The poller lists the inbox
//! after its cursor (ULIDs sort by time, so only new entries come back), and for each entry it
//! waits on (at most one URL lifetime) it asks with one HEAD whether the request has arrived;
//! then it runs validate, then dispatch. A poll costs one LIST of new entries plus one HEAD per
//! submission in flight: it does not grow with the objects in the bucket.
//!
//! The cursor and the entries waited on live in the bucket (`pool/poller/state.json`), so a
//! restarted poller goes on where it stopped. Entries are read with a look-back of
//! [`SKEW`] behind the cursor (remembered ones are skipped), so a gateway whose clock is a
//! little behind loses nothing. Handlers are idempotent: a second poller, or a replay after a
//! crash, does no harm.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aic_core::Store;
use aic_core::layout::{KeyKind, classify};
use aic_schemas::event::S3EventRecord;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Ctx, HandlerError, Outcome, handle_record};

pub const INBOX: &str = aic_core::layout::POLLER_INBOX;
/// Requests one wallet may have signed upload URLs for that have not arrived (each waited on
/// for a URL's lifetime): more are refused until one arrives or expires.
pub const MAX_WAITING_PER_OWNER: usize = 16;
pub const STATE: &str = aic_core::layout::POLLER_STATE;
/// How far behind the cursor entries are read again.
pub const SKEW: Duration = Duration::from_secs(30);
/// Most new entries taken per poll.
const BATCH: usize = 1000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InboxEntry {
    /// The object expected to appear.
    pub key: String,
    /// After this, stop waiting (the URL that could write it has expired).
    pub until: DateTime<Utc>,
}

/// Where the gateway announces the requests it signed URLs for.
#[derive(Clone, Debug)]
pub struct Inbox {
    store: Store,
}

impl Inbox {
    pub fn new(store: Store) -> Self {
        Inbox { store }
    }

    /// Announces `key` (a request some wallet may now upload), or says why not: its owner
    /// has [`MAX_WAITING_PER_OWNER`] requests the poller still waits on (`Ok(Err(reason))`).
    pub async fn expect(&self, key: &str, until: DateTime<Utc>) -> Result<Result<(), String>, aic_core::StoreError> {
        if let Some((job, run)) = request_of(key) {
            let marker = aic_core::layout::inbox_marker(&job, run);
            let waiting = self.store.list(&aic_core::layout::inbox_markers(&job.owner)).await?;
            if waiting.len() >= MAX_WAITING_PER_OWNER && !waiting.iter().any(|m| m.location.as_ref() == marker) {
                return Ok(Err(format!(
                    "{} has {} job requests signed for upload and not uploaded: upload them, or wait for their URLs to expire ({} minutes at most)",
                    job.owner,
                    waiting.len(),
                    (until - Utc::now()).num_minutes().max(1)
                )));
            }
            self.store.put_bytes(&marker, bytes::Bytes::new()).await?;
        }
        let name = format!("{INBOX}{}.json", ulid::Ulid::new());
        self.store.create_json(&name, &InboxEntry { key: key.into(), until }).await.map(|_| Ok(()))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PollState {
    /// The newest inbox entry taken.
    pub after: String,
    /// Entries taken within the look-back window (so they are not taken twice).
    pub seen: BTreeSet<String>,
    /// Inbox entry name → what it waits for.
    pub waiting: BTreeMap<String, InboxEntry>,
}

/// What one poll did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PollReport {
    pub new_entries: usize,
    pub handled: usize,
    pub waiting: usize,
    pub expired: usize,
}

pub struct Poller {
    ctx: Ctx,
    state: PollState,
}

/// The job and run a request key is for.
fn request_of(key: &str) -> Option<(aic_core::layout::JobKey, u32)> {
    match classify(key) {
        KeyKind::Request(job) => Some((job, 0)),
        KeyKind::ResumeRequest(job, run) => Some((job, run)),
        _ => None,
    }
}

fn ulid_time(name: &str) -> Option<u64> {
    let id = name.strip_prefix(INBOX)?.strip_suffix(".json")?;
    id.parse::<ulid::Ulid>().ok().map(|u| u.timestamp_ms())
}

impl Poller {
    /// Loads the cursor from the bucket (a fresh one when there is none).
    pub async fn load(ctx: Ctx) -> Result<Self, aic_core::StoreError> {
        let state = ctx.store.get_json::<PollState>(STATE, 16 * 1024 * 1024).await?.unwrap_or_default();
        Ok(Poller { ctx, state })
    }

    pub fn state(&self) -> &PollState {
        &self.state
    }

    /// One poll: takes new inbox entries, handles the requests that arrived, saves the cursor.
    pub async fn poll(&mut self) -> Result<PollReport, aic_core::StoreError> {
        let store = self.ctx.store.clone();
        let mut report = PollReport::default();
        let mut changed = false;

        // New entries, from a little behind the cursor.
        let from = ulid_time(&self.state.after).map(|t| t.saturating_sub(SKEW.as_millis() as u64));
        let listed = match from {
            Some(t) => {
                let floor = ulid::Ulid::from_parts(t, 0);
                store.list_after(INBOX, &format!("{INBOX}{floor}")).await?
            }
            None => store.list(INBOX).await?,
        };
        for m in listed.into_iter().take(BATCH) {
            let name = m.location.to_string();
            if self.state.seen.contains(&name) || self.state.waiting.contains_key(&name) {
                continue;
            }
            if let Some(entry) = store.get_json::<InboxEntry>(&name, 64 * 1024).await? {
                self.state.waiting.insert(name.clone(), entry);
                report.new_entries += 1;
            }
            self.state.seen.insert(name.clone());
            if name > self.state.after {
                self.state.after = name;
            }
            changed = true;
        }
        // Forget what fell out of the look-back window.
        if let Some(t) = ulid_time(&self.state.after) {
            let floor = format!("{INBOX}{}", ulid::Ulid::from_parts(t.saturating_sub(SKEW.as_millis() as u64), 0));
            let before = self.state.seen.len();
            self.state.seen.retain(|n| *n >= floor);
            changed |= self.state.seen.len() != before;
        }

        // One HEAD per submission in flight.
        let now = Utc::now();
        let waiting: Vec<(String, InboxEntry)> =
            self.state.waiting.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (name, entry) in waiting {
            let done = match store.head(&entry.key).await? {
                Some(meta) => match self.handle(&entry.key, meta.size).await {
                    Ok(()) => {
                        report.handled += 1;
                        true
                    }
                    Err(e) => {
                        tracing::info!(key = %entry.key, error = %e, "polled event not done; will retry");
                        false
                    }
                },
                None if entry.until < now => {
                    report.expired += 1;
                    true
                }
                None => false,
            };
            if done {
                self.state.waiting.remove(&name);
                let _ = store.delete(&name).await;
                if let Some((job, run)) = request_of(&entry.key) {
                    let _ = store.delete(&aic_core::layout::inbox_marker(&job, run)).await;
                }
                changed = true;
            }
        }
        report.waiting = self.state.waiting.len();
        if changed {
            store.put_json(STATE, &self.state).await?;
        }
        Ok(report)
    }

    /// The request's (or a resume's) validate, then (once accepted) its dispatch, as the bucket's two
    /// notifications would have run them.
    async fn handle(&self, key: &str, size: u64) -> Result<(), HandlerError> {
        let bucket = self.ctx.store.bucket().to_string();
        let out = handle_record(&self.ctx, &S3EventRecord::object_created(&bucket, key, size)).await?;
        let manifest = match classify(key) {
            KeyKind::Request(job) => Some(job.manifest()),
            KeyKind::ResumeRequest(job, run) => Some(job.run_manifest(run)),
            _ => None,
        };
        if let (Some(manifest), Outcome::Validated(_) | Outcome::AlreadyDone(_)) = (manifest, &out) {
            handle_record(&self.ctx, &S3EventRecord::object_created(&bucket, &manifest, 0)).await?;
        }
        Ok(())
    }

    /// Polls every `every` until `stop` resolves.
    pub async fn run(mut self, every: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {
                    match self.poll().await {
                        Ok(r) if r.new_entries + r.handled + r.expired > 0 => tracing::debug!(?r, "polled"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "poll failed; will retry"),
                    }
                }
            }
        }
    }
}
