//! Reads: listings of what the caller may reach, the caller's jobs, a job's status, logs
//! and serving registrations, and cancel.

use super::*;
use aic_schemas::gateway::{ListedObject, Listing};

impl Gateway {
    pub(super) async fn objects(&self, who: &Caller, q: &HashMap<String, String>) -> Reply {
        let reachable = match who {
            Caller::User(a) => vec![aic_core::layout::user_prefix(a)],
            Caller::Worker(g) => worker_prefixes(g),
        };
        let prefix = q.get("prefix").cloned().unwrap_or_else(|| reachable[0].clone());
        if !reachable.iter().any(|r| prefix.starts_with(r.as_str()) || format!("{prefix}/") == *r)
            || prefix.split('/').any(|s| s == "." || s == "..")
        {
            return Err(err(StatusCode::FORBIDDEN, format!("{prefix}: not under {}", reachable.join(" or "))));
        }
        if let Some(max) = q.get("max") {
            // A page of the names right under the folder `prefix` ends in (`max` of them,
            // after `offset`): one request to the store where it pages listings.
            let max =
                max.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| bad("max: 1 to 1000"))?;
            let (dir, start) = prefix.split_at(prefix.rfind('/').map_or(0, |i| i + 1));
            let after = match q.get("offset") {
                Some(o) => Some(o.strip_prefix(dir).ok_or_else(|| bad(format!("offset={o:?} is not under {dir}")))?),
                None => None,
            };
            let page = self.ctx.store.list_names(dir, start, after, max).await.map_err(store_err)?;
            let prefixes = page.names.iter().map(|n| format!("{dir}{n}")).collect();
            return Ok(json!(Listing { objects: vec![], prefixes, more: page.more }));
        }
        let prefix = prefix.trim_end_matches('/');
        let meta = |m: &object_store::ObjectMeta| ListedObject {
            key: m.location.to_string(),
            size: m.size,
            last_modified: m.last_modified,
            e_tag: m.e_tag.clone(),
        };
        let os = self.ctx.store.object_store();
        let key_path = |k: &str| prefix_path(k).map_err(|e| bad(format!("{k}: not a valid object key ({e})")));
        if q.get("delimiter").is_some_and(|d| d == "true" || d == "1") {
            let r = os.list_with_delimiter(Some(&key_path(prefix)?)).await.map_err(store_err)?;
            let prefixes: Vec<String> = r.common_prefixes.iter().map(|p| p.to_string()).collect();
            return Ok(json!(Listing { objects: r.objects.iter().map(meta).collect(), prefixes, more: false }));
        }
        let list: Vec<object_store::ObjectMeta> = match q.get("offset") {
            Some(o) => os.list_with_offset(Some(&key_path(prefix)?), &key_path(o)?).try_collect().await,
            None => os.list(Some(&key_path(prefix)?)).try_collect().await,
        }
        .map_err(store_err)?;
        Ok(json!(Listing { objects: list.iter().map(meta).collect(), prefixes: vec![], more: false }))
    }

    pub(super) fn job_key(&self, who: &Address, id: &str) -> Result<JobKey, ApiError> {
        let id: JobId = id.parse().map_err(|_| bad(format!("{id:?} is not a job id")))?;
        Ok(JobKey::new(*who, id))
    }

    /// The caller's newest jobs (`limit`, 50 by default, at most 1000; `since`, RFC 3339;
    /// `before`, a job id: the next page), newest first: each one's status snapshot and what it asked for (`status::recent`).
    pub(super) async fn jobs(&self, who: &Address, q: &HashMap<String, String>) -> Reply {
        let limit = match q.get("limit") {
            Some(l) => {
                l.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| bad("limit: 1 to 1000"))?
            }
            None => 50,
        };
        let since = match q.get("since") {
            Some(s) => Some(
                DateTime::parse_from_rfc3339(s)
                    .map_err(|_| bad(format!("since={s:?}: a time like 2026-12-01T00:00:00Z")))?
                    .with_timezone(&Utc),
            ),
            None => None,
        };
        let before = match q.get("before") {
            Some(b) => Some(b.parse::<JobId>().map_err(|_| bad(format!("before={b:?} is not a job id")))?),
            None => None,
        };
        // One more than asked: whether there are more.
        let w = status::Window { limit: Some(limit + 1), since, before };
        let mut jobs = status::recent(&self.ctx.store, who, &w).await.map_err(store_err)?;
        let more = jobs.len() > limit;
        jobs.truncate(limit);
        Ok(json!({ "jobs": jobs, "more": more }))
    }

    pub(super) async fn job(&self, who: &Address, id: &str) -> Reply {
        let job = self.job_key(who, id)?;
        let history = status::history(&self.ctx.store, &job).await.map_err(store_err)?;
        if history.is_empty() && self.ctx.store.head(&job.request()).await.map_err(store_err)?.is_none() {
            return Err(err(StatusCode::NOT_FOUND, format!("no job {id} of yours")));
        }
        // How its paid runs were settled: the pool's records, which the owner reads here.
        let settlements = aic_core::usage::settlements(&self.ctx.store, &job).await.map_err(store_err)?;
        Ok(json!({"job_id": id, "status": history.last(), "history": history, "settlements": settlements}))
    }

    pub(super) async fn logs(
        &self,
        who: &Address,
        id: &str,
        after: Option<&str>,
        stream: super::live::Stream,
    ) -> Reply {
        let job = self.job_key(who, id)?;
        let prefix = match stream {
            super::live::Stream::Logs => job.logs_prefix(),
            super::live::Stream::Metrics => job.metrics_prefix(),
        };
        let list = match after {
            Some(a) if a.starts_with(&prefix) => self.ctx.store.list_after(&prefix, a).await,
            Some(a) => return Err(bad(format!("after={a:?} is not one of this job's log keys"))),
            None => self.ctx.store.list(&prefix).await,
        }
        .map_err(store_err)?;
        let mut chunks = Vec::new();
        let mut total = 0usize;
        for m in list {
            if total >= MAX_LOG_BYTES {
                break;
            }
            let key = m.location.to_string();
            let Some(b) = self.ctx.store.get_limited(&key, MAX_LOG_BYTES as u64).await.map_err(store_err)? else {
                continue;
            };
            total += b.len();
            chunks.push(json!({"key": key, "text": String::from_utf8_lossy(&b)}));
        }
        // Nothing yet, or no such job of the caller's: the latter is told apart (as `job` does).
        if chunks.is_empty()
            && after.is_none()
            && self.ctx.store.head(&job.request()).await.map_err(store_err)?.is_none()
        {
            return Err(err(StatusCode::NOT_FOUND, format!("no job {id} of yours")));
        }
        Ok(json!({ "chunks": chunks }))
    }

    /// A deployment's serving registrations (only the caller's own jobs: validated, so the
    /// id's registrations are theirs — a request of one's own under another's id is not).
    pub(super) async fn replicas(&self, who: &Address, id: &str) -> Reply {
        let job = self.job_key(who, id)?;
        if !crate::validate::owns_its_id(&self.ctx, &job).await.map_err(store_err)? {
            // Submitted, not validated yet: nothing of the id's is the caller's yet.
            if self.ctx.store.head(&job.request()).await.map_err(store_err)?.is_some() {
                return Ok(json!({ "replicas": [] }));
            }
            return Err(err(StatusCode::NOT_FOUND, format!("no job {id} of yours")));
        }
        let regs = aic_core::serving::registrations(&self.ctx.store, job.job.as_str()).await.map_err(store_err)?;
        let regs: Vec<_> = regs.into_iter().map(|(_, r)| r).collect();
        Ok(json!({ "replicas": regs }))
    }

    /// `GET /v1/jobs/<id>/stats?minutes=N`: a deployment's request figures of its last N
    /// minutes (60 unless said; at most 48 hours), minute by minute and summed up.
    pub(super) async fn serving_stats(&self, who: &Address, id: &str, q: &HashMap<String, String>) -> Reply {
        let job = self.job_key(who, id)?;
        if !crate::validate::owns_its_id(&self.ctx, &job).await.map_err(store_err)? {
            return Err(err(StatusCode::NOT_FOUND, format!("no deployment {id} of yours")));
        }
        let minutes: i64 = match q.get("minutes") {
            None => 60,
            Some(m) => m
                .parse()
                .ok()
                .filter(|m| (1..=aic_core::servingstats::MAX_HOURS * 60).contains(m))
                .ok_or_else(|| bad(format!("minutes must be 1 to {}", aic_core::servingstats::MAX_HOURS * 60)))?,
        };
        let now = chrono::Utc::now();
        let since = now - chrono::Duration::minutes(minutes);
        let m = aic_core::servingstats::read(&self.ctx.store, job.job.as_str(), since, now).await.map_err(store_err)?;
        Ok(json!({ "summary": aic_core::servingstats::summary(&m), "minutes": m }))
    }

    pub(super) async fn cancel(&self, who: &Address, id: &str) -> Reply {
        let job = self.job_key(who, id)?;
        match status::cancel(&self.ctx.store, &job, "gateway").await.map_err(store_err)? {
            status::Cancel::Cancelled(rec) => {
                // The status record's own event cancels too where the bucket sends status
                // records' events; this is quicker, idempotent, and kept for later when the
                // scheduler does not answer.
                crate::cancel::now_or_later(&self.ctx, &job, rec.seq).await.map_err(store_err)?;
                Ok(json!({"state": rec.state, "already": false}))
            }
            status::Cancel::Already(rec) => Ok(json!({"state": rec.state, "already": true})),
            other => Err(err(StatusCode::CONFLICT, other.refusal(&job.job).unwrap_or_default())),
        }
    }
}
