//! The functions host: one hyper server for bucket notifications and the gateway API.
//!
//! - `POST /events`: a MinIO webhook body or an SNS delivery ([`crate::webhook`]); the records
//!   go to [`crate::handle_event`] (each distinct object once, several at a time). Answers 200 when every record was handled or
//!   kept to be tried again by this host ([`crate::redrive`]), 503 only when that could not be
//!   recorded (so MinIO and SNS retry), 400 for a body of no known shape, 403
//!   for an SNS delivery that is not from our topic or whose signature does not verify
//!   ([`crate::sns`]). An SNS `SubscriptionConfirmation` is verified, then confirmed by
//!   fetching its `SubscribeURL`.
//! - `/v1/…`: the gateway API ([`crate::gateway`]), when the host has one; `/v1/blob` carries
//!   transfers itself where the store cannot presign URLs (streamed both ways).
//! - `/`, `/jobs…`, `/new`, `/data`, `/deployments…`, `/pool` and the app's assets: the web
//!   app ([`crate::web`]), when the host has a gateway.
//! - `/d/<deployment>/…`: the serving gateway ([`crate::proxy`]), when the host has one.
//! - `GET /healthz`: 200.
//! - `GET /metrics`: the pool's figures for its operator ([`crate::metrics`]), with
//!   `Authorization: Bearer $AIC_METRICS_TOKEN`; absent when no token is set.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::gateway::Gateway;
use crate::sns::SnsVerifier;
use crate::webhook::{self, Delivery};
use crate::{Ctx, handle_event};

/// What one host serves.
#[derive(Clone)]
pub struct Host {
    pub ctx: Ctx,
    /// SNS deliveries are refused without one (there would be no way to trust them).
    pub sns: Option<Arc<SnsVerifier>>,
    pub gateway: Option<Arc<Gateway>>,
    /// Who may post MinIO-format bodies, which (unlike SNS deliveries) are not signed.
    pub minio: MinioPosts,
    /// The serving gateway (`/d/<deployment>/…`), when this host routes to deployments.
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
    /// The `host:port`s this host answers as (the embedded pool: its loopback address and
    /// `localhost` at its port). Empty: any (behind a pool's own front, which routes by name).
    /// A request naming another `Host`, or sent by a page of another `Origin`, is refused: a
    /// web page could otherwise reach a pool on the user's loopback by DNS rebinding, as its
    /// own origin, and read or drive it.
    pub own_addresses: Vec<String>,
    /// What a scrape of `/metrics` must bear (`AIC_METRICS_TOKEN`); none: no such endpoint.
    pub metrics_token: Option<String>,
}

/// Why a request is not for this host (`own`: its `host:port`s), if it is not: its `Host`
/// header names another, or its `Origin` (sent by browsers with every cross-origin and
/// non-GET request) is a page of another origin.
pub fn misdirected(own: &[String], headers: &http::HeaderMap) -> Option<String> {
    if own.is_empty() {
        return None;
    }
    let is_own = |authority: &str| own.iter().any(|o| o.eq_ignore_ascii_case(authority));
    let host = headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !is_own(host) {
        return Some(format!(
            "this is the pool at {}; a request for {host:?} is refused (open the pool at its own address)",
            own[0]
        ));
    }
    let origin = headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok());
    if let Some(origin) = origin
        && !origin.strip_prefix("http://").is_some_and(is_own)
    {
        return Some(format!(
            "requests from pages of {origin} are refused: only the pool's own pages ({}) may call it",
            own[0]
        ));
    }
    None
}

/// Who may post MinIO-format notification bodies to `/events`.
///
/// They carry no signature: an event is only a hint (handlers read the objects it names and
/// write nothing for one that is not there), but a host takes them only from MinIO itself
/// (its `auth_token`) or where the operator chose to take them from anyone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MinioPosts {
    /// With `Authorization: Bearer <token>` only (`AIC_WEBHOOK_TOKEN`, MinIO's `auth_token`).
    Token(String),
    /// From anyone who reaches the host (`AIC_WEBHOOK_UNAUTHENTICATED=1`).
    Open,
    /// From nobody: no token is configured and unauthenticated posts were not allowed.
    Refused,
}

impl MinioPosts {
    /// The answer to a MinIO-format post carrying `bearer`, `None` when it is taken.
    fn refusal(&self, bearer: Option<&str>) -> Option<&'static str> {
        match self {
            MinioPosts::Open => None,
            MinioPosts::Token(want) if bearer == Some(want.as_str()) => None,
            MinioPosts::Token(_) => {
                Some("webhook token missing or wrong (MinIO's auth_token must match AIC_WEBHOOK_TOKEN)")
            }
            MinioPosts::Refused => Some(
                "this host takes no unsigned event posts: set AIC_WEBHOOK_TOKEN (and MinIO's auth_token to it), \
                 or AIC_WEBHOOK_UNAUTHENTICATED=1 to take them from anyone",
            ),
        }
    }
}

/// What one host takes on at once, so that one client (or one wallet's many) cannot take it
/// down and settlement with it.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once (at most the process's open-file limit less a margin); the
    /// next is accepted when one closes (it waits in the listen queue).
    pub connections: usize,
    /// How long a client may take to send a request's head (a client that sends it a byte at
    /// a time holds nothing longer).
    pub head_within: std::time::Duration,
    /// How long a client may take to send a request's body.
    pub body_within: std::time::Duration,
    /// Bytes of `/v1/blob` bodies held in memory at once, every transfer together; a transfer
    /// waits for room at most `blob_wait`, then is asked to retry (503).
    pub blob_buffered: usize,
    pub blob_wait: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let files = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft as usize)
            .unwrap_or(1024);
        Limits {
            connections: files.saturating_sub(128).clamp(64, 16_384),
            head_within: std::time::Duration::from_secs(30),
            body_within: std::time::Duration::from_secs(120),
            blob_buffered: 8 * crate::gateway::blob::MAX_HOST_PUT,
            blob_wait: std::time::Duration::from_secs(30),
        }
    }
}

/// What the connections of one host share: its limits and what is taken of them.
struct Served {
    limits: Limits,
    /// Kibibytes of `/v1/blob` bodies that may still be taken in.
    blob_budget: tokio::sync::Semaphore,
}

/// Serves on `listener` until the task is dropped, within the default [`Limits`].
pub async fn serve(host: Host, listener: tokio::net::TcpListener) {
    serve_with(host, listener, Limits::default()).await
}

/// Serves on `listener` within `limits` until the task is dropped.
pub async fn serve_with(host: Host, listener: tokio::net::TcpListener, limits: Limits) {
    let host = Arc::new(host);
    // Autoscaled deployments are scaled by the host that serves them (the leading one).
    if let Some(p) = &host.proxy {
        p.start_autoscaler();
    }
    let open = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let served =
        Arc::new(Served { blob_budget: tokio::sync::Semaphore::new((limits.blob_buffered / 1024).max(1)), limits });
    loop {
        let Ok(permit) = open.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin on it.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Answers go out as soon as they are written (a kept-alive client's next request must
        // not wait on the previous answer's acknowledgement).
        let _ = stream.set_nodelay(true);
        let (host, served) = (host.clone(), served.clone());
        tokio::spawn(async move {
            let head_within = served.limits.head_within;
            let svc = hyper::service::service_fn(move |req| handle(host.clone(), served.clone(), peer, req));
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(head_within)
                .serve_connection(io, svc)
                .await;
            drop(permit);
        });
    }
}

/// A response body: whole, or streamed (a download through `/v1/blob`).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store");
    if let Some(secs) = crate::gateway::retry_after_of(&body) {
        r = r.header("retry-after", secs);
    }
    r.body(full(body.to_string())).expect("valid response")
}

fn answer(a: crate::proxy::Answer) -> Response<Body> {
    let body = match a.body {
        crate::proxy::AnswerBody::Full(b) => full(b),
        crate::proxy::AnswerBody::Relay(r) => r.boxed_unsync(),
    };
    let mut r = Response::new(body);
    *r.status_mut() = a.status;
    *r.headers_mut() = a.headers;
    r
}

fn blob_response(b: crate::gateway::blob::Blob) -> Response<Body> {
    let mut r = Response::builder().status(b.status);
    for (k, v) in &b.headers {
        r = r.header(k, v);
    }
    let body = match b.body {
        crate::gateway::blob::BlobBody::Bytes(b) => full(b),
        crate::gateway::blob::BlobBody::Stream(s) => StreamBody::new(s.map_ok(hyper::body::Frame::data)).boxed_unsync(),
    };
    r.body(body)
        .unwrap_or_else(|_| reply(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({"error": "bad answer"})))
}

/// A request body of at most `limit` bytes, sent within `within`, or the answer saying why not
/// (413 with `over`; 408).
async fn read_body(
    body: Incoming,
    limit: usize,
    over: String,
    within: std::time::Duration,
) -> Result<Bytes, Response<Body>> {
    match tokio::time::timeout(within, Limited::new(body, limit).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(_)) => Err(reply(StatusCode::PAYLOAD_TOO_LARGE, serde_json::json!({ "error": over }))),
        Err(_) => Err(reply(
            StatusCode::REQUEST_TIMEOUT,
            serde_json::json!({ "error": format!("the body was not sent within {} s", within.as_secs()) }),
        )),
    }
}

async fn handle(
    host: Arc<Host>,
    served: Arc<Served>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let within = served.limits.body_within;
    // A deployment's origin: the whole request is the deployment's (whatever its path, from
    // whatever page: what it accepts is the app's business), and nothing of the pool's
    // answers there.
    if let Some(proxy) = host.proxy.clone()
        && let Some(label) = proxy.label(req.headers())
    {
        let Some(site) = label.and_then(aic_schemas::origin::site) else {
            let at = req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let why = format!("no deployment answers at {at:?}: see `aic deploy list` for the addresses");
            return Ok(reply(StatusCode::NOT_FOUND, serde_json::json!({ "error": why })));
        };
        // On this machine (the embedded pool), a page of another site does not reach a
        // deployment on the user's loopback (a form posted to it, a script's request): its
        // requests carry that page's `Origin`. Links and the deployment's own pages work.
        if !host.own_addresses.is_empty()
            && let Some(origin) = req.headers().get(http::header::ORIGIN).and_then(|v| v.to_str().ok())
        {
            let at = req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
            if !origin.strip_prefix("http://").is_some_and(|o| o.eq_ignore_ascii_case(at)) {
                let why = format!(
                    "requests from pages of {origin} to a deployment on this machine are refused: open it at its own address"
                );
                return Ok(reply(StatusCode::FORBIDDEN, serde_json::json!({ "error": why })));
            }
        }
        let (parts, body) = req.into_parts();
        let body = match crate::proxy::Outgoing::of(body, within).await {
            Ok(b) => b,
            Err(a) => return Ok(answer(a)),
        };
        let path = parts.uri.path();
        let a = proxy.forward(&site, &parts.method, path, parts.uri.query(), &parts.headers, body).await;
        return Ok(answer(a));
    }
    if let Some(why) = misdirected(&host.own_addresses, req.headers()) {
        return Ok(reply(StatusCode::FORBIDDEN, serde_json::json!({ "error": why })));
    }
    let path = req.uri().path().to_string();
    // The web app's origin never serves a deployment: its old paths move to the deployment's.
    if path.starts_with("/d/") || path.starts_with("/n/") {
        return Ok(match &host.proxy {
            Some(proxy) => answer(proxy.moved(&path, req.uri().query())),
            None => reply(StatusCode::NOT_FOUND, serde_json::json!({"error": "this host serves no deployments"})),
        });
    }
    if path == "/v1/blob"
        && let Some(gw) = host.gateway.clone()
    {
        // The URL's grant first: a body is read only for a URL that allows this request.
        if let Some(refused) = gw.blob_refusal(req.method(), req.uri().query()) {
            return Ok(blob_response(refused));
        }
        let (parts, body) = req.into_parts();
        let over = format!(
            "a transfer here is at most {} bytes; send bigger files in parts (/v1/multipart)",
            crate::gateway::blob::MAX_HOST_PUT
        );
        // Room in memory for the body first (its announced length, else the most a transfer
        // may be): what every transfer holds at once is bounded, whoever sends them.
        let room = if parts.method == Method::PUT {
            let announced = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(crate::gateway::blob::MAX_HOST_PUT)
                .min(crate::gateway::blob::MAX_HOST_PUT);
            // (HTTP/1.1 framing holds a body to its announced length; a chunked one counts as
            // the most a transfer may be.)
            let kib = announced.div_ceil(1024).clamp(1, (served.limits.blob_buffered / 1024).max(1)) as u32;
            match tokio::time::timeout(served.limits.blob_wait, served.blob_budget.acquire_many(kib)).await {
                Ok(Ok(p)) => Some(p),
                _ => {
                    let why = "this host is taking in many transfers at once; send it again in a moment";
                    let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": why }));
                    r.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
                    return Ok(r);
                }
            }
        } else {
            None
        };
        let body = match read_body(body, crate::gateway::blob::MAX_HOST_PUT, over, within).await {
            Ok(b) => b,
            Err(r) => return Ok(r),
        };
        let answer = blob_response(gw.blob(&parts.method, parts.uri.query(), &parts.headers, body).await);
        drop(room);
        return Ok(answer);
    }
    if path.starts_with("/v1/") {
        let Some(gw) = host.gateway.clone() else {
            return Ok(reply(StatusCode::NOT_FOUND, serde_json::json!({"error": "this host serves no gateway API"})));
        };
        if let Err(e) = gw.precheck(req.headers()) {
            return Ok(reply(e.0, serde_json::json!({"error": e.1})));
        }
        let (parts, body) = req.into_parts();
        let over = format!("request body over the gateway's {}-byte limit", crate::gateway::MAX_BODY);
        let body = match read_body(body, crate::gateway::MAX_BODY, over, within).await {
            Ok(b) => b,
            Err(r) => return Ok(r),
        };
        let (code, v) = gw.call(peer.ip(), &parts.method, &path, parts.uri.query(), &parts.headers, body).await;
        return Ok(reply(code, v));
    }
    if let (Some(gw), true) = (&host.gateway, req.method() == Method::GET || req.method() == Method::HEAD)
        && let Some(page) = crate::web::page(&path)
    {
        return Ok(crate::web::response(page, gw.store_origin().await.as_deref()).map(full));
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => Ok(reply(StatusCode::OK, serde_json::json!({"ok": true}))),
        (&Method::GET, "/metrics") if host.metrics_token.is_some() => {
            let bearer = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let expected = host.metrics_token.as_deref().unwrap_or_default().as_bytes();
            let ok = bearer.is_some_and(|b| {
                use aws_lc_rs::constant_time::verify_slices_are_equal;
                verify_slices_are_equal(b.as_bytes(), expected).is_ok()
            });
            if !ok {
                return Ok(reply(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"error": "metrics need Authorization: Bearer <AIC_METRICS_TOKEN>"}),
                ));
            }
            let text = crate::metrics::render(&host.ctx, host.proxy.as_deref()).await;
            let mut r = Response::new(full(Bytes::from(text)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(r)
        }
        (&Method::POST, "/events") => {
            let sns_type = req.headers().get("x-amz-sns-message-type").and_then(|v| v.to_str().ok()).map(String::from);
            if sns_type.is_none() {
                let bearer = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if let Some(why) = host.minio.refusal(bearer) {
                    tracing::warn!(%peer, why, "refused an event post");
                    return Ok(reply(StatusCode::UNAUTHORIZED, serde_json::json!({ "error": why })));
                }
            }
            let body = match Limited::new(req.into_body(), webhook::MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return Ok(reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        serde_json::json!({"error": "notification too large"}),
                    ));
                }
            };
            Ok(deliver(&host, peer, &body, sns_type.as_deref()).await)
        }
        _ => Ok(reply(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such endpoint"}))),
    }
}

async fn deliver(host: &Host, peer: SocketAddr, body: &[u8], sns_type: Option<&str>) -> Response<Body> {
    let (delivery, envelope) = match webhook::parse_with_envelope(body, sns_type) {
        Err(why) => {
            tracing::warn!(%peer, %why, "refused a notification");
            return reply(StatusCode::BAD_REQUEST, serde_json::json!({"error": why}));
        }
        Ok(d) => d,
    };
    if let Some(env) = &envelope {
        let Some(sns) = &host.sns else {
            return reply(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": "SNS deliveries are not taken here: set AIC_SNS_TOPICS to the topic's ARN"}),
            );
        };
        if let Err(why) = sns.verify(env).await {
            tracing::warn!(%peer, %why, "refused an SNS delivery");
            return reply(StatusCode::FORBIDDEN, serde_json::json!({"error": why}));
        }
    }
    match delivery {
        Delivery::Ignore(why) => reply(StatusCode::OK, serde_json::json!({"ignored": why})),
        Delivery::ConfirmSubscription { topic, subscribe_url } => match confirm(&subscribe_url).await {
            Ok(()) => {
                tracing::info!(%topic, "confirmed the SNS subscription");
                reply(StatusCode::OK, serde_json::json!({"confirmed": topic}))
            }
            Err(why) => reply(StatusCode::BAD_GATEWAY, serde_json::json!({"error": why})),
        },
        Delivery::Records(ev) => {
            let results = handle_event(&host.ctx, &ev).await;
            if let Some(gw) = &host.gateway {
                for r in &ev.records {
                    gw.status_event(&r.key());
                }
            }
            // Work that cannot be done yet is kept and tried again by this host (`redrive`),
            // and the delivery is taken: a MinIO queue retries its head event until it gets a
            // 2xx, holding up every later one. Only when even that record cannot be written
            // is the sender asked to deliver again (handlers are idempotent).
            let mut deferred = vec![];
            let mut failed = vec![];
            for (key, r) in &results {
                if let Err(e) = r {
                    match crate::redrive::defer(&host.ctx.store, key, &e.to_string()).await {
                        Ok(()) => deferred.push(format!("{key}: {e}")),
                        Err(_) => failed.push(format!("{key}: {e}")),
                    }
                }
            }
            if failed.is_empty() {
                reply(
                    StatusCode::OK,
                    serde_json::json!({"handled": ev.records.len(), "distinct": results.len(), "deferred": deferred}),
                )
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"retry": failed}))
            }
        }
    }
}

async fn confirm(url: &str) -> Result<(), String> {
    let resp = reqwest::get(url).await.map_err(|e| format!("cannot reach SubscribeURL: {e}"))?;
    if resp.status().is_success() { Ok(()) } else { Err(format!("SubscribeURL answered {}", resp.status())) }
}
