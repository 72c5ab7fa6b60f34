//! Of several functions hosts one leads: a lock on a Nomad Variable (the Variables lock API:
//! `PUT /v1/var/:path?lock-acquire|lock-renew|lock-release`), renewed within its TTL.

use serde_json::json;

use super::{NomadError, NomadScheduler};

impl NomadScheduler {
    fn lock_body(&self, id: Option<&str>) -> serde_json::Value {
        let mut lock = json!({"TTL": format!("{}s", self.cfg.leader_ttl.as_secs().max(10)), "LockDelay": "5s"});
        if let Some(id) = id {
            lock["ID"] = json!(id);
        }
        json!({"Namespace": self.namespace(),
            "Path": self.cfg.leader_lock, "Items": {"holder": "aic-functions"}, "Lock": lock})
    }

    /// Waits until this host holds the leader lock; its lock ID.
    pub async fn lead(&self) -> String {
        loop {
            let path = format!("var/{}", self.cfg.leader_lock);
            match self
                .call(reqwest::Method::PUT, &path, &[("lock-acquire", String::new())], Some(&self.lock_body(None)))
                .await
            {
                Ok(Some(v)) if v["Lock"]["ID"].as_str().is_some() => {
                    return v["Lock"]["ID"].as_str().unwrap_or_default().into();
                }
                Ok(_) | Err(NomadError::Api(409, _)) => {}
                Err(e) => tracing::warn!(error = %e, "cannot ask for the lead"),
            }
            tokio::time::sleep(self.cfg.leader_ttl / 3).await;
        }
    }

    /// Renews the lock within its TTL; returns when it cannot (another host holds it now).
    pub async fn keep(&self, id: &str) {
        let path = format!("var/{}", self.cfg.leader_lock);
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            tokio::time::sleep(self.cfg.leader_ttl / 3).await;
            match self
                .call(reqwest::Method::PUT, &path, &[("lock-renew", String::new())], Some(&self.lock_body(Some(id))))
                .await
            {
                Ok(Some(_)) => failing_since = None,
                Ok(None) | Err(NomadError::Api(409 | 404, _)) => return,
                // Nomad unreachable: the lease may still hold; given up once its TTL passed.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the lead");
                    if failing_since.get_or_insert_with(std::time::Instant::now).elapsed() >= self.cfg.leader_ttl {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lead up (the host stops): another host takes over without waiting.
    pub async fn release(&self, id: &str) {
        let path = format!("var/{}", self.cfg.leader_lock);
        let _ = self
            .call(reqwest::Method::PUT, &path, &[("lock-release", String::new())], Some(&self.lock_body(Some(id))))
            .await;
    }
}
