//! Which replicas a deployment has (its live registrations, cached) and which of them the
//! scheduler placed; a named deployment's newest live one.

use super::*;

impl Proxy {
    /// Where the scheduler placed `deployment`'s replicas; `None` when there is no
    /// scheduler or it cannot tell. On a failed call, the last answer (or nothing).
    pub(super) async fn placed(&self, deployment: &str) -> Option<Vec<(String, u16)>> {
        let s = self.scheduler.as_ref()?;
        match s.endpoints(deployment).await {
            Ok(Some(eps)) => {
                self.placed.lock().unwrap().insert(deployment.to_string(), eps.clone());
                Some(eps)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(deployment, error = %e, "cannot ask the scheduler where replicas run; using its last answer");
                Some(self.placed.lock().unwrap().get(deployment).cloned().unwrap_or_default())
            }
        }
    }

    /// The deployment's live registrations (from the cache when fresh).
    pub async fn replicas(&self, deployment: &str, fresh: bool) -> Replicas {
        if !fresh
            && let Some((at, regs)) = self.cache.lock().unwrap().get(deployment)
            && at.elapsed() < REFRESH
        {
            return regs.clone();
        }
        let now = Utc::now();
        let mut live = Vec::new();
        for (key, r) in aic_core::serving::registrations(&self.store, deployment).await.unwrap_or_default() {
            if r.is_live(now) {
                live.push(r);
            } else if r.heartbeat_at + chrono::Duration::seconds(3 * r.ttl_seconds as i64) < now {
                // Its worker is gone without deregistering (killed, or its miner lost).
                let _ = self.store.delete(&key).await;
            }
        }
        if !live.is_empty()
            && let Some(placed) = self.placed(deployment).await
        {
            live.retain(|r| {
                let ok = placed.iter().any(|(h, p)| *h == r.host && *p == r.port);
                if !ok {
                    tracing::warn!(
                        deployment, replica = r.alloc, host = %r.host, port = r.port,
                        "a registration names an address the scheduler did not place this deployment at; ignored"
                    );
                }
                ok
            });
        }
        live.sort_by_key(|r| r.alloc);
        let live: Replicas = live.into();
        self.cache.lock().unwrap().insert(deployment.to_string(), (Instant::now(), live.clone()));
        live
    }

    /// The owner's deployments named `name`, newest first (cached for [`REFRESH`] unless
    /// `fresh`), or the answer to give instead.
    pub(super) async fn named(
        &self,
        owner: &aic_schemas::Address,
        name: &str,
        fresh: bool,
    ) -> Result<Vec<String>, Answer> {
        let prefix = aic_core::layout::serving_names_prefix(owner, name);
        if !fresh
            && let Some((at, ids)) = self.names.lock().unwrap().get(&prefix)
            && at.elapsed() < REFRESH
        {
            return Ok(ids.clone());
        }
        let mut ids: Vec<String> = match self.store.list(&prefix).await {
            Ok(metas) => {
                metas.iter().filter_map(|m| m.location.filename()?.strip_suffix(".json").map(str::to_string)).collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, %prefix, "cannot list a deployment name");
                return Err(error(StatusCode::SERVICE_UNAVAILABLE, "storage is unavailable; retry".into()));
            }
        };
        // Deployment ids are ULIDs: the newest sorts last.
        ids.sort_unstable_by(|a, b| b.cmp(a));
        self.names.lock().unwrap().insert(prefix, (Instant::now(), ids.clone()));
        if ids.is_empty() {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!("{owner} has no deployment named {name}; see `aic deploy list`"),
            ));
        }
        Ok(ids)
    }
}
