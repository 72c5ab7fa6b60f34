//! The serving gateway: a deployment's origin (`http://<deployment>.localhost:8800/<path>`,
//! `https://<deployment>.apps.example.net/<path>`: [`aic_schemas::origin`]) → a live replica
//! of the deployment. The web app's origin never serves a deployment's content: its old
//! paths (`/d/<deployment>/…`, `/n/<owner>/<name>/…`) answer with a redirect ([`Proxy::moved`]).
//!
//! Replicas register themselves in the bucket (`pool/serving/<deployment>/<alloc>.json`,
//! rewritten every few seconds with a TTL; see aic-worker's serve mode). The proxy reads a
//! deployment's registrations (cached for [`REFRESH`]), takes the live ones round robin, and
//! when a replica cannot be reached tries the next one — the request never reached the
//! failed replica, so this is safe for any method — and keeps away from it for [`BENCH`].
//! A request that may have reached a replica (it broke off, or gave no answer in time) goes
//! to another only when its method is idempotent and its body was held whole.
//! Registrations whose heartbeat is long past their TTL are deleted ("dead registrations").
//!
//! A named deployment's origin (`<name>--<owner>`) is its stable route: the newest of the owner's
//! deployments of that name (`pool/names/<owner>/<name>/`, written by dispatch) that has a
//! live replica. `aic deploy scale` starts a new deployment beside the old one, so the route
//! moves to the new one as soon as it answers and never points at nothing in between.
//!
//! Answers are passed on as they come (`relay`): a token stream, server-sent events or a
//! download of any size reach the visitor a chunk at a time, read from the replica only as
//! fast as the visitor takes them; the connection goes back to the idle ones when the answer
//! has been read to its end.
//!
//! Here: routing and forwarding; `replicas`: which replicas a deployment has and which the
//! scheduler placed; `wire`: the headers kept and dropped, and the connections to replicas;
//! `relay`: an answer's body on its way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aic_core::Store;
use aic_core::scheduler::Scheduler;
use aic_schemas::ServingRegistration;
use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use hyper::client::conn::http1::SendRequest;

mod autoscale;
mod private;
mod relay;
mod replicas;
pub mod stats;
mod upload;
mod wire;

pub use relay::Relay;
pub use upload::{MAX_BODY, Outgoing};

use wire::*;

/// How long a deployment's registrations are reused before the bucket is read again.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long a replica that could not be reached is skipped.
pub const BENCH: Duration = Duration::from_secs(5);
/// Idle connections kept per replica, and how long one is kept unused (a replica's uWSGI
/// router keeps them longer, so a reused one is not being closed under it).
const IDLE_PER_REPLICA: usize = 32;
const IDLE_FOR: Duration = Duration::from_secs(20);
/// Connecting to a replica, and the wait for its answer to begin (its body then takes as long
/// as it takes).
const CONNECT: Duration = Duration::from_secs(2);
const ANSWER: Duration = Duration::from_secs(60);
/// A replica whose miner is cut off never acknowledges a request sent on a connection kept
/// from before: the kernel gives up on it after this (`TCP_USER_TIMEOUT`) instead of the
/// answer's 60 s, and the request goes to another replica.
const UNACKED: Duration = Duration::from_secs(3);

pub use aic_schemas::origin::Site;

/// The header a private deployment's replica wants its guard in (`ServingRegistration::guard`).
const REPLICA_GUARD: &str = "x-aic-replica";

pub struct Proxy {
    store: Store,
    /// The origins deployments answer at (`None`: this host serves none).
    origins: Option<aic_schemas::origin::Origins>,
    cache: Mutex<HashMap<String, (Instant, Replicas)>>,
    names: Mutex<HashMap<String, (Instant, Vec<String>)>>,
    /// Where the scheduler placed each deployment's replicas (the last answer it gave).
    scheduler: Option<Arc<dyn Scheduler>>,
    placed: Mutex<HashMap<String, Vec<(String, u16)>>>,
    /// Each deployment's privacy, and each private one's keys' digests.
    guards: Mutex<HashMap<String, private::Kept>>,
    keys: Mutex<HashMap<String, private::KeysRead>>,
    /// Each replica's idle connections and when it last failed, by host then port.
    links: Links,
    next: AtomicUsize,
    /// Each deployment's request figures at this host.
    stats: Arc<stats::Stats>,
}

/// A deployment's live registrations, shared by the requests that read them.
type Replicas = Arc<[ServingRegistration]>;

/// Every replica's kept connections, by host then port; shared with the answers under way,
/// which give their connection back when read to the end.
type Links = Arc<Mutex<HashMap<String, HashMap<u16, Link>>>>;

/// Whether repeating a request of this method is harmless (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// One replica address's kept connections (newest last) and when it last failed.
#[derive(Default)]
struct Link {
    idle: Vec<(Instant, SendRequest<Outgoing>)>,
    failed: Option<Instant>,
}

/// What the proxy answers: status, content type, body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: AnswerBody,
}

/// The proxy's own answer, whole; or a replica's, as it comes.
pub enum AnswerBody {
    Full(Bytes),
    Relay(Relay),
}

fn error(status: StatusCode, why: String) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Answer { status, headers, body: AnswerBody::Full(Bytes::from(serde_json::json!({ "error": why }).to_string())) }
}

impl Proxy {
    pub fn new(store: Store) -> Self {
        Proxy {
            store,
            origins: None,
            cache: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            scheduler: None,
            placed: Mutex::new(HashMap::new()),
            guards: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            links: Links::default(),
            next: AtomicUsize::new(0),
            stats: Default::default(),
        }
    }

    /// Serves deployments at `origins` (each on its own: `<label>.<domain>`).
    pub fn at(mut self, origins: aic_schemas::origin::Origins) -> Self {
        self.origins = Some(origins);
        self
    }

    /// Each deployment's request figures at this host.
    pub fn stats(&self) -> &stats::Stats {
        &self.stats
    }

    pub fn origins(&self) -> Option<&aic_schemas::origin::Origins> {
        self.origins.as_ref()
    }

    /// What a request's `Host` is under the deployments' domain: `Some(Some(label))` for a
    /// deployment's origin (the whole request is then the deployment's), `Some(None)` for any
    /// other name under that domain (nothing answers there), `None` for a name outside it.
    pub fn label<'a>(&self, headers: &'a HeaderMap) -> Option<Option<&'a str>> {
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let origins = self.origins.as_ref()?;
        origins.within(host).then(|| origins.label(host))
    }

    /// The answer at the web app's origin to a deployment's old path (`/d/<deployment>/…`,
    /// `/n/<owner>/<name>/…`): a permanent redirect to the deployment's own origin (the
    /// method and body go along, 308), never its content; or why there is none.
    pub fn moved(&self, path: &str, query: Option<&str>) -> Answer {
        let Some(origins) = &self.origins else {
            return error(
                StatusCode::NOT_FOUND,
                "deployments answer at origins of their own, and this host serves none (set AIC_SERVING_ORIGIN)".into(),
            );
        };
        let (base, rest) = if let Some(rest) = path.strip_prefix("/d/") {
            let (id, rest) = rest.split_once('/').unwrap_or((rest, ""));
            match id.parse::<aic_schemas::JobId>() {
                Ok(id) => (origins.deployment(id.as_str()), rest),
                Err(_) => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("{id:?} is not a deployment id; see `aic deploy list`"),
                    );
                }
            }
        } else if let Some(rest) = path.strip_prefix("/n/") {
            let (owner, rest) = rest.split_once('/').unwrap_or((rest, ""));
            let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
            let Ok(owner) = owner.parse::<aic_schemas::Address>() else {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("{owner:?} is not a wallet address: use /n/<0x…>/<name>/"),
                );
            };
            if !aic_schemas::validate::is_name(name) {
                return error(StatusCode::NOT_FOUND, format!("{name:?} is not a deployment name"));
            }
            match origins.named(&owner, name) {
                Some(base) => (base, rest),
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!(
                            "a name over {} characters has no address of its own: reach the deployment at its id's (`aic deploy list`), or deploy it under a shorter --name",
                            aic_schemas::origin::MAX_NAMED
                        ),
                    );
                }
            }
        } else {
            return error(StatusCode::NOT_FOUND, "no such endpoint".into());
        };
        let mut to = base;
        to.push_str(rest);
        if let Some(q) = query {
            to.push('?');
            to.push_str(q);
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let body = AnswerBody::Full(Bytes::from(serde_json::json!({ "moved": to }).to_string()));
        if let Ok(v) = HeaderValue::try_from(to) {
            headers.insert(header::LOCATION, v);
        }
        Answer { status: StatusCode::PERMANENT_REDIRECT, headers, body }
    }

    /// Forwards only to addresses `scheduler` placed a deployment's replicas at: a
    /// registration naming anything else (which a job's own code could write) is ignored.
    pub fn with_scheduler(mut self, scheduler: Arc<dyn Scheduler>) -> Self {
        self.scheduler = Some(scheduler);
        self
    }

    /// Forwards one request to a live replica of `target`: a deployment, or the newest of the
    /// owner's deployments of a name that has a live replica (the next one when none of its
    /// replicas answers: it is being replaced). When none of the cached replicas answers, the
    /// registrations (and names) are read again once.
    pub async fn forward(
        &self,
        target: &Site,
        method: &Method,
        rest: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Outgoing,
    ) -> Answer {
        let mut last_err = None;
        let mut body = Some(body);
        let started = Instant::now();
        self.stats.start_flushing(&self.store);
        // The deployment the request was for, to count a gateway error against.
        let mut counted: Option<(Arc<stats::Dep>, usize)> = None;
        'tries: for fresh in [false, true] {
            let named = match target {
                Site::Deployment(_) => Vec::new(),
                Site::Named { owner, name } => match self.named(owner, name, fresh).await {
                    Ok(ids) => ids,
                    Err(a) => return a,
                },
            };
            let one = match target {
                Site::Deployment(d) => Some(d.as_str()),
                Site::Named { .. } => None,
            };
            for id in one.into_iter().chain(named.iter().map(String::as_str)) {
                let mut regs = self.replicas(id, fresh).await;
                if regs.is_empty() {
                    // An autoscaled deployment at zero replicas: one starts, the request waits.
                    match self.cold_start(id, headers).await {
                        Some(Ok(r)) => regs = r,
                        Some(Err(a)) => return a,
                        None => continue,
                    }
                }
                let dep = self.stats.of(id);
                if let Ok(Some(g)) = self.guard(id).await
                    && g.autoscale.is_some()
                {
                    dep.autoscaled();
                }
                // A private deployment's: refused here without its key; the key stays here.
                let private = match self.admit(id, headers).await {
                    Ok(p) => p,
                    Err(a) => {
                        let how = if a.status == StatusCode::UNAUTHORIZED {
                            stats::Outcome::Refused
                        } else {
                            stats::Outcome::GatewayError
                        };
                        dep.record(how, regs.len());
                        return a;
                    }
                };
                let flight = dep.enter();
                counted = Some((dep.clone(), regs.len()));
                let stripped;
                let headers = if private {
                    let mut h = headers.clone();
                    h.remove(header::AUTHORIZATION);
                    stripped = h;
                    &stripped
                } else {
                    headers
                };
                match self.attempt(id, &regs, method, rest, query, headers, &mut body).await {
                    Ok(mut a) => {
                        dep.record(stats::Outcome::Answered(a.status, started.elapsed()), regs.len());
                        if let AnswerBody::Relay(r) = &mut a.body {
                            r.hold(flight);
                        }
                        return a;
                    }
                    Err(e) => last_err = Some(e),
                }
                if body.is_none() {
                    break 'tries;
                }
            }
        }
        // A gateway error, counted against the deployment tried (or the one asked for).
        match (counted, target) {
            (Some((dep, n)), _) => dep.record(stats::Outcome::GatewayError, n),
            (None, Site::Deployment(d)) => self.stats.of(d.as_str()).record(stats::Outcome::GatewayError, 0),
            (None, Site::Named { .. }) => {}
        }
        let (label, logs) = match target {
            Site::Deployment(d) => (d.as_str(), "`aic deploy logs`".to_string()),
            Site::Named { name, .. } => (name.as_str(), format!("`aic deploy logs {name}`")),
        };
        match last_err {
            Some(e) => error(StatusCode::BAD_GATEWAY, format!("no replica of deployment {label} answered ({e})")),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("deployment {label} has no live replica; see `aic deploy list` and {logs}"),
            ),
        }
    }

    /// Tries `regs` round robin (replicas that failed lately last); `Err` when none answered.
    /// `body` is taken by the first replica that received any of it; it goes on to the next
    /// only when it is held whole or none of it left.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        deployment: &str,
        regs: &[ServingRegistration],
        method: &Method,
        rest: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &mut Option<Outgoing>,
    ) -> Result<Answer, String> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut order: Vec<&ServingRegistration> = (0..regs.len()).map(|i| &regs[(start + i) % regs.len()]).collect();
        // Failed replicas go last, not away: they may be all there is.
        if order.len() > 1 {
            let links = self.links.lock().unwrap();
            let failed = |r: &ServingRegistration| {
                links
                    .get(&r.host)
                    .and_then(|ports| ports.get(&r.port))
                    .and_then(|l| l.failed)
                    .is_some_and(|t| now.duration_since(t) < BENCH)
            };
            order.sort_by_key(|r| failed(r));
        }
        let mut uri = String::with_capacity(rest.len() + query.map_or(0, |q| q.len() + 2));
        uri.push('/');
        uri.push_str(rest.trim_start_matches('/'));
        if let Some(q) = query {
            uri.push('?');
            uri.push_str(q);
        }
        let mut last_err = String::new();
        for r in order {
            let Some(b) = body.take() else { break };
            // A request that may have reached the replica goes to another only when repeating
            // it is harmless (RFC 9110 §9.2.2); any other only if none of it left.
            let again = if idempotent(method) { b.again() } else { None };
            let mut b = b;
            let sent = b.end();
            let mut req = Request::new(b);
            *req.method_mut() = method.clone();
            *req.uri_mut() = match uri.parse() {
                Ok(u) => u,
                Err(_) => return Ok(error(StatusCode::BAD_REQUEST, "the request's path is not a valid URI".into())),
            };
            let h = req.headers_mut();
            h.reserve(headers.len() + 1);
            for (k, v) in headers {
                if !hop_by_hop(headers, k) {
                    h.append(k.clone(), v.clone());
                }
            }
            if let Ok(v) = HeaderValue::try_from(format!("{}:{}", r.host, r.port)) {
                h.insert(header::HOST, v);
            }
            // A private replica's guard (never one a visitor sent).
            h.remove(REPLICA_GUARD);
            if let Some(g) = r.guard.as_deref().and_then(|g| HeaderValue::from_str(g).ok()) {
                h.insert(REPLICA_GUARD, g);
            }
            // The wait for the answer starts once the body has gone (an upload takes as long as
            // it takes; the visitor's pace is `upload`'s to keep).
            let answer_due = async {
                if let Some(rx) = sent {
                    let _ = rx.await;
                }
                tokio::time::sleep(ANSWER).await;
            };
            let got = tokio::select! {
                r = self.exchange(&r.host, r.port, req) => Ok(r),
                () = answer_due => Err(()),
            };
            match got {
                Ok(Ok(a)) => return Ok(a),
                Ok(Err((e, back))) => {
                    last_err = format!("replica {}: {e}", r.alloc);
                    *body = back.map(|b| *b).or(again);
                }
                Err(_) => {
                    last_err = format!("replica {} gave no answer in {} s", r.alloc, ANSWER.as_secs());
                    *body = again;
                }
            }
            if body.is_none() {
                last_err.push_str("; the request may have reached it, so it is not sent again");
            }
            self.links.lock().unwrap().entry(r.host.clone()).or_default().entry(r.port).or_default().failed =
                Some(Instant::now());
            tracing::info!(deployment, %last_err, "trying another replica");
        }
        self.cache.lock().unwrap().remove(deployment);
        Err(last_err)
    }

    /// One request to the replica at `host:port` on a kept connection (one the replica closed
    /// meanwhile gives the request back unsent: the next is tried) or a new one; its answer
    /// passed on as it comes ([`Relay`]), the connection kept for the next request once the
    /// answer has been read to its end.
    /// `Err`: why, and the body when none of it left.
    async fn exchange(
        &self,
        host: &str,
        port: u16,
        mut req: Request<Outgoing>,
    ) -> Result<Answer, (String, Option<Box<Outgoing>>)> {
        loop {
            let (kept, mut sender) = match self.idle(host, port) {
                Some(c) => (true, c),
                None => match connect(host, port).await {
                    Ok(c) => (false, c),
                    Err(e) => return Err((e, Some(Box::new(req.into_body())))),
                },
            };
            let failed = async {
                if let Err(e) = sender.ready().await {
                    return Err(Failed::Unsent(Box::new(req), e.to_string()));
                }
                match sender.try_send_request(req).await {
                    Ok(r) => Ok(r),
                    Err(mut e) => Err(match e.take_message() {
                        Some(back) => Failed::Unsent(Box::new(back), e.into_error().to_string()),
                        None => Failed::Sent(format!("the exchange failed ({})", e.into_error())),
                    }),
                }
            }
            .await;
            match failed {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    let named: Vec<String> = connection_tokens(&parts.headers).map(str::to_ascii_lowercase).collect();
                    for h in HOP.iter().copied().chain(named.iter().map(String::as_str)) {
                        parts.headers.remove(h);
                    }
                    confine(&mut parts.headers);
                    let back = relay::GiveBack { links: self.links.clone(), host: host.to_string(), port, sender };
                    return Ok(Answer {
                        status: parts.status,
                        headers: parts.headers,
                        body: AnswerBody::Relay(Relay::new(body, back)),
                    });
                }
                // A kept connection the replica had closed: the request goes out on another.
                Err(Failed::Unsent(back, _)) if kept => req = *back,
                Err(Failed::Unsent(back, e)) => {
                    return Err((format!("the connection broke ({e})"), Some(Box::new(back.into_body()))));
                }
                Err(Failed::Sent(e)) => return Err((e, None)),
            }
        }
    }

    /// A kept connection to `host:port` used lately.
    fn idle(&self, host: &str, port: u16) -> Option<SendRequest<Outgoing>> {
        let mut links = self.links.lock().unwrap();
        let link = links.get_mut(host)?.get_mut(&port)?;
        while let Some((at, sender)) = link.idle.pop() {
            if at.elapsed() < IDLE_FOR && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }
}
