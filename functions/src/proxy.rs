//! The serving gateway: `/d/<deployment>/<path>` → a live replica of the deployment.
//!
//! Replicas register themselves in the bucket (`pool/serving/<deployment>/<alloc>.json`,
//! rewritten every few seconds with a TTL; see aic-worker's serve mode). The proxy reads a
//! deployment's registrations (cached for [`REFRESH`]), takes the live ones round robin, and
//! when a replica cannot be reached tries the next one — the request never reached the
//! failed replica, so this is safe for any method — and keeps away from it for [`BENCH`].
//! Registrations whose heartbeat is long past their TTL are deleted ("dead registrations").

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aic_core::Store;
use aic_schemas::ServingRegistration;
use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, Method, StatusCode};

/// How long a deployment's registrations are reused before the bucket is read again.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long a replica that could not be reached is skipped.
pub const BENCH: Duration = Duration::from_secs(5);
/// Largest request body forwarded.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

pub struct Proxy {
    store: Store,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, (Instant, Vec<ServingRegistration>)>>,
    benched: Mutex<HashMap<(String, u16), Instant>>,
    next: AtomicUsize,
}

/// What the proxy answers: status, content type, body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

fn error(status: StatusCode, why: String) -> Answer {
    Answer {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(serde_json::json!({ "error": why }).to_string()),
    }
}

const HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer", "host"];

impl Proxy {
    pub fn new(store: Store) -> Self {
        Proxy {
            store,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client builds"),
            cache: Mutex::new(HashMap::new()),
            benched: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// The deployment's live registrations (from the cache when fresh).
    pub async fn replicas(&self, deployment: &str, fresh: bool) -> Vec<ServingRegistration> {
        if !fresh
            && let Some((at, regs)) = self.cache.lock().unwrap().get(deployment)
            && at.elapsed() < REFRESH
        {
            return regs.clone();
        }
        let prefix = format!("pool/serving/{deployment}/");
        let now = Utc::now();
        let mut live = Vec::new();
        for m in self.store.list(&prefix).await.unwrap_or_default() {
            let key = m.location.to_string();
            let Ok(Some(r)) = self.store.get_json::<ServingRegistration>(&key, 64 * 1024).await else { continue };
            if r.is_live(now) {
                live.push(r);
            } else if r.heartbeat_at + chrono::Duration::seconds(3 * r.ttl_seconds as i64) < now {
                // Its worker is gone without deregistering (killed, or its miner lost).
                let _ = self.store.delete(&key).await;
            }
        }
        live.sort_by_key(|r| r.alloc);
        self.cache.lock().unwrap().insert(deployment.to_string(), (Instant::now(), live.clone()));
        live
    }

    /// Forwards one request to a live replica.
    pub async fn forward(
        &self,
        deployment: &str,
        method: &Method,
        rest: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Answer {
        let mut regs = self.replicas(deployment, false).await;
        if regs.is_empty() {
            regs = self.replicas(deployment, true).await;
        }
        if regs.is_empty() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("deployment {deployment} has no live replica; see `aic deploy list` and `aic deploy logs`"),
            );
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut order: Vec<&ServingRegistration> = (0..regs.len()).map(|i| &regs[(start + i) % regs.len()]).collect();
        // Benched replicas go last, not away: they may be all there is.
        order.sort_by_key(|r| {
            self.benched.lock().unwrap().get(&(r.host.clone(), r.port)).is_some_and(|t| now.duration_since(*t) < BENCH)
        });
        let mut last_err = String::new();
        for r in order {
            let mut url = format!("http://{}:{}/{}", r.host, r.port, rest.trim_start_matches('/'));
            if let Some(q) = query {
                url.push('?');
                url.push_str(q);
            }
            let mut rb = self.http.request(method.clone(), &url);
            for (k, v) in headers {
                if !HOP.contains(&k.as_str()) {
                    rb = rb.header(k, v);
                }
            }
            match rb.body(body.clone()).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let hdrs: Vec<(String, String)> = resp
                        .headers()
                        .iter()
                        .filter(|(k, _)| !HOP.contains(&k.as_str()) && k.as_str() != "content-length")
                        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
                        .collect();
                    match resp.bytes().await {
                        Ok(b) => return Answer { status, headers: hdrs, body: b },
                        Err(e) => last_err = format!("replica {} broke off its answer: {e}", r.alloc),
                    }
                }
                Err(e) if e.is_connect() || e.is_timeout() => {
                    self.benched.lock().unwrap().insert((r.host.clone(), r.port), Instant::now());
                    last_err = format!("replica {} at {}:{} did not answer", r.alloc, r.host, r.port);
                    tracing::info!(deployment, %last_err, "trying another replica");
                }
                Err(e) => last_err = format!("replica {}: {e}", r.alloc),
            }
        }
        self.cache.lock().unwrap().remove(deployment);
        error(StatusCode::BAD_GATEWAY, format!("no replica of deployment {deployment} answered ({last_err})"))
    }
}
