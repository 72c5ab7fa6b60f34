//! The serving gateway: `/d/<deployment>/<path>` → a live replica of the deployment.
//!
//! Replicas register themselves in the bucket (`pool/serving/<deployment>/<alloc>.json`,
//! rewritten every few seconds with a TTL; see aic-worker's serve mode). The proxy reads a
//! deployment's registrations (cached for [`REFRESH`]), takes the live ones round robin, and
//! when a replica cannot be reached tries the next one — the request never reached the
//! failed replica, so this is safe for any method — and keeps away from it for [`BENCH`].
//! Registrations whose heartbeat is long past their TTL are deleted ("dead registrations").
//!
//! `/n/<owner>/<name>/<path>` is a named deployment's stable route: the newest of the owner's
//! deployments of that name (`pool/names/<owner>/<name>/`, written by dispatch) that has a
//! live replica. `aic deploy scale` starts a new deployment beside the old one, so the route
//! moves to the new one as soon as it answers and never points at nothing in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aic_core::Store;
use aic_core::scheduler::Scheduler;
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

/// What a request is for: `/d/<deployment>/…` or `/n/<owner>/<name>/…`.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Deployment(&'a str),
    Named { owner: &'a str, name: &'a str },
}

pub struct Proxy {
    store: Store,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, (Instant, Vec<ServingRegistration>)>>,
    names: Mutex<HashMap<String, (Instant, Vec<String>)>>,
    /// Where the scheduler placed each deployment's replicas (the last answer it gave).
    scheduler: Option<Arc<dyn Scheduler>>,
    placed: Mutex<HashMap<String, Vec<(String, u16)>>>,
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
                // At most 32 idle connections kept per replica, dropped after 20 s unused
                // (a replica's uWSGI router keeps them longer, so a reused one is not being
                // closed under it).
                .pool_max_idle_per_host(32)
                .pool_idle_timeout(Duration::from_secs(20))
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(2))
                // A replica whose miner is cut off never acknowledges a request sent on a
                // connection kept from before: the kernel gives up on it after 3 s instead
                // of the answer's 60 s, and the request goes to another replica.
                .tcp_user_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client builds"),
            cache: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            scheduler: None,
            placed: Mutex::new(HashMap::new()),
            benched: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// Forwards only to addresses `scheduler` placed a deployment's replicas at: a
    /// registration naming anything else (which a job's own code could write) is ignored.
    pub fn with_scheduler(mut self, scheduler: Arc<dyn Scheduler>) -> Self {
        self.scheduler = Some(scheduler);
        self
    }

    /// Where the scheduler placed `deployment`'s replicas; `None` when there is no
    /// scheduler or it cannot tell. On a failed call, the last answer (or nothing).
    async fn placed(&self, deployment: &str) -> Option<Vec<(String, u16)>> {
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
    pub async fn replicas(&self, deployment: &str, fresh: bool) -> Vec<ServingRegistration> {
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
        self.cache.lock().unwrap().insert(deployment.to_string(), (Instant::now(), live.clone()));
        live
    }

    /// The owner's deployments named `name`, newest first (cached for [`REFRESH`] unless
    /// `fresh`), or the answer to give instead.
    async fn named(&self, owner: &str, name: &str, fresh: bool) -> Result<Vec<String>, Answer> {
        let Ok(addr) = owner.parse::<aic_schemas::Address>() else {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!("{owner:?} is not a wallet address: use /n/<0x…>/<name>/"),
            ));
        };
        if !aic_schemas::validate::is_name(name) {
            return Err(error(StatusCode::NOT_FOUND, format!("{name:?} is not a deployment name")));
        }
        let prefix = aic_core::layout::serving_names_prefix(&addr, name);
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

    /// Forwards one request to a live replica of `target`: a deployment, or the newest of the
    /// owner's deployments of a name that has a live replica (the next one when none of its
    /// replicas answers: it is being replaced). When none of the cached replicas answers, the
    /// registrations (and names) are read again once.
    pub async fn forward(
        &self,
        target: Target<'_>,
        method: &Method,
        rest: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Answer {
        let (label, logs) = match target {
            Target::Deployment(d) => (d, "`aic deploy logs`".to_string()),
            Target::Named { name, .. } => (name, format!("`aic deploy logs {name}`")),
        };
        let mut last_err = None;
        for fresh in [false, true] {
            let ids = match target {
                Target::Deployment(d) => vec![d.to_string()],
                Target::Named { owner, name } => match self.named(owner, name, fresh).await {
                    Ok(ids) => ids,
                    Err(a) => return a,
                },
            };
            for id in &ids {
                let regs = self.replicas(id, fresh).await;
                if regs.is_empty() {
                    continue;
                }
                match self.attempt(id, &regs, method, rest, query, headers, &body).await {
                    Ok(a) => return a,
                    Err(e) => last_err = Some(e),
                }
            }
        }
        match last_err {
            Some(e) => error(StatusCode::BAD_GATEWAY, format!("no replica of deployment {label} answered ({e})")),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("deployment {label} has no live replica; see `aic deploy list` and {logs}"),
            ),
        }
    }

    /// Tries `regs` round robin (replicas that failed lately last); `Err` when none answered.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        deployment: &str,
        regs: &[ServingRegistration],
        method: &Method,
        rest: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Answer, String> {
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
                        Ok(b) => return Ok(Answer { status, headers: hdrs, body: b }),
                        Err(e) => last_err = format!("replica {} broke off its answer: {e}", r.alloc),
                    }
                }
                Err(e) if e.is_connect() || e.is_timeout() => {
                    self.benched.lock().unwrap().insert((r.host.clone(), r.port), Instant::now());
                    last_err = format!("replica {} at {}:{} did not answer", r.alloc, r.host, r.port);
                    tracing::info!(deployment, %last_err, "trying another replica");
                }
                Err(e) => {
                    self.benched.lock().unwrap().insert((r.host.clone(), r.port), Instant::now());
                    last_err = format!("replica {}: {e}", r.alloc);
                    tracing::info!(deployment, %last_err, "trying another replica");
                }
            }
        }
        self.cache.lock().unwrap().remove(deployment);
        Err(last_err)
    }
}
