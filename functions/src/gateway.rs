//! The gateway API: how users who hold no pool credentials reach the bucket.
//!
//! A user signs in with their wallet (SIWE, EIP-4361) and gets a short-lived session token.
//! With it they get presigned URLs for their own prefix only, list their objects, read their
//! jobs' status and logs, and cancel a job. Every answer is JSON; every refusal is
//! `{"error": "<what went wrong and what to do>"}` with a fitting status code.
//!
//! | route | does |
//! |---|---|
//! | `GET /v1/info` | bucket, SIWE domain, chain, limits |
//! | `GET /v1/nonce` | a nonce for the SIWE message (stateless: MAC'd expiry) |
//! | `POST /v1/session` `{message, signature}` | session token for the message's signer |
//! | `POST /v1/sign` `{items:[{method,key,size?}]}` | presigned URLs (+ headers to send) |
//! | `GET /v1/objects?prefix=&offset=&delimiter=` | the caller's objects |
//! | `POST /v1/multipart` `{action,key,upload_id?,part?,parts?}` | large uploads part by part |
//! | `GET /v1/jobs`, `GET /v1/jobs/<id>` | the caller's jobs and one job's status |
//! | `GET /v1/pool` | gateways, miners and free GPUs |
//! | `GET /v1/jobs/<id>/logs?after=` | log chunks after a key |
//! | `GET /v1/jobs/<id>/replicas` | a deployment's serving registrations |
//! | `POST /v1/jobs/<id>/cancel` | cancels the job |
//!
//! What a user may write: `data/…`, a job's `code/…` and its `request.json` (create-only: the
//! URL signs `If-None-Match: *`, so it cannot overwrite). A PUT URL is bound to the content's
//! SHA-256 (`x-amz-checksum-sha256`, checked by S3), and the declared size must be within the
//! limits. Manifests, status and outputs are written by the pool alone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aic_chain::siwe::SiweMessage;
use aic_core::grant::WorkerGrant;
use aic_core::layout::{JobKey, KeyKind, classify};
use aic_core::status::{self, Advanced, Transition};
use aic_core::store::{object_path, prefix_path};
use aic_schemas::validate::MAX_REQUEST_BYTES;
use aic_schemas::{Address, JobId, JobState};
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use object_store::multipart::{MultipartStore, PartId};
use object_store::signer::{SignedUrlOptions, Signer};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::Ctx;
use crate::poll::Inbox;

/// Largest request body the gateway reads.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest single PUT (S3's own limit); bigger files go part by part.
pub const MAX_PUT: u64 = 5 * 1024 * 1024 * 1024;
/// Most URLs signed in one call.
pub const MAX_ITEMS: usize = 256;
/// Most log bytes returned by one call.
const MAX_LOG_BYTES: usize = 1024 * 1024;

pub struct GatewayConfig {
    /// Key for session tokens and nonces (32 random bytes; the same on every gateway replica).
    pub secret: Vec<u8>,
    /// The SIWE domain users sign in to.
    pub domain: String,
    pub chain_id: u64,
    /// What clients need to pay: RPC URL, token, treasury, price (shown by `/v1/info`).
    pub chain_info: Value,
    pub session_ttl: Duration,
    pub url_ttl: Duration,
    /// Requests per second per caller, and the burst allowed above it.
    pub rate: f64,
    pub burst: f64,
}

impl GatewayConfig {
    pub fn new(secret: Vec<u8>, domain: &str, chain_id: u64) -> Self {
        GatewayConfig {
            secret,
            domain: domain.into(),
            chain_id,
            chain_info: Value::Null,
            session_ttl: Duration::from_secs(12 * 3600),
            url_ttl: Duration::from_secs(15 * 60),
            rate: 50.0,
            burst: 400.0,
        }
    }
}

pub struct Gateway {
    cfg: GatewayConfig,
    ctx: Ctx,
    inbox: Option<Inbox>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// A refusal: status and the one-line reason.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

type Reply = Result<Value, ApiError>;

fn err(code: StatusCode, why: impl Into<String>) -> ApiError {
    ApiError(code, why.into())
}

fn bad(why: impl Into<String>) -> ApiError {
    err(StatusCode::BAD_REQUEST, why)
}

fn store_err(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "gateway store call failed");
    err(StatusCode::SERVICE_UNAVAILABLE, "the pool's storage did not answer; try again in a moment")
}

#[derive(Deserialize)]
struct SessionBody {
    message: String,
    signature: String,
}

#[derive(Deserialize)]
struct SignBody {
    items: Vec<SignItem>,
}

#[derive(Deserialize)]
struct SignItem {
    method: String,
    key: String,
    #[serde(default)]
    size: Option<u64>,
    /// SHA-256 of the content, hex: PUT URLs are bound to it (S3 checks
    /// `x-amz-checksum-sha256`), so a URL writes that content and nothing else.
    #[serde(default)]
    sha256: Option<String>,
    /// Create-only: the URL carries a signed `If-None-Match: *`, so S3 refuses (412) to
    /// replace an existing object.
    #[serde(default)]
    create: bool,
}

/// Who calls: a signed-in user, or the workers of one job.
#[derive(Debug)]
pub enum Caller {
    User(Address),
    Worker(WorkerGrant),
}

impl Caller {
    /// The token bucket it draws from, and how many callers' worth of rate it gets: a job's
    /// allocations share one bucket sized for all of them.
    fn rate_key(&self) -> (String, f64) {
        match self {
            Caller::User(a) => (a.to_string(), 1.0),
            Caller::Worker(g) => (format!("job:{}", g.job), g.allocs.clamp(1, 1024) as f64),
        }
    }
}

#[derive(Deserialize)]
struct MultipartBody {
    action: String,
    key: String,
    #[serde(default)]
    upload_id: Option<String>,
    #[serde(default)]
    part: Option<usize>,
    #[serde(default)]
    parts: Vec<String>,
}

/// What a user may do with a key of their own.
#[derive(Debug, PartialEq)]
enum Access {
    Read,
    /// data/… and code/…: written freely, deleted (data) freely.
    Write {
        deletable: bool,
    },
    /// request.json: written once.
    CreateOnly,
    /// A job's status records, log chunks and allocation records (workers): each written once.
    Append,
}

impl Gateway {
    pub fn new(cfg: GatewayConfig, ctx: Ctx, inbox: Option<Inbox>) -> Self {
        Gateway { cfg, ctx, inbox, buckets: Mutex::new(HashMap::new()) }
    }

    fn mac(&self, what: &str) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.cfg.secret).expect("HMAC takes any key");
        m.update(what.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    /// `v1.<addr>.<expiry unix>.<mac>`.
    pub fn issue_token(&self, addr: &Address, expires: DateTime<Utc>) -> String {
        let body = format!("v1.{addr}.{}", expires.timestamp());
        format!("{body}.{}", self.mac(&format!("session|{body}")))
    }

    /// The caller of a bearer token, or why not.
    pub fn check_token(&self, token: &str, now: DateTime<Utc>) -> Result<Address, ApiError> {
        let unauth = |why: &str| err(StatusCode::UNAUTHORIZED, why);
        let (body, mac) = token.rsplit_once('.').ok_or_else(|| unauth("malformed session token; run `aic login`"))?;
        let want = self.mac(&format!("session|{body}"));
        if !constant_time_eq(want.as_bytes(), mac.as_bytes()) {
            return Err(unauth("session token is not valid; run `aic login`"));
        }
        let mut parts = body.split('.');
        let (Some("v1"), Some(addr), Some(exp), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(unauth("malformed session token; run `aic login`"));
        };
        let exp: i64 = exp.parse().map_err(|_| unauth("malformed session token; run `aic login`"))?;
        if exp <= now.timestamp() {
            return Err(unauth("session expired; run `aic login` again"));
        }
        addr.parse().map_err(|_| unauth("malformed session token; run `aic login`"))
    }

    fn nonce(&self, now: DateTime<Utc>) -> String {
        let exp = now.timestamp() + 600;
        let mac = self.mac(&format!("nonce|{exp}"));
        format!("{exp:x}n{}", &mac[..24])
    }

    fn check_nonce(&self, nonce: &str, now: DateTime<Utc>) -> Result<(), ApiError> {
        let stale =
            || err(StatusCode::UNAUTHORIZED, "the login's nonce is unknown or stale; get a new one from /v1/nonce");
        let (exp, mac) = nonce.split_once('n').ok_or_else(stale)?;
        let exp_n = i64::from_str_radix(exp, 16).map_err(|_| stale())?;
        let want = self.mac(&format!("nonce|{exp_n}"));
        if !constant_time_eq(&want.as_bytes()[..24], mac.as_bytes()) || exp_n < now.timestamp() {
            return Err(stale());
        }
        Ok(())
    }

    /// Token bucket per caller (`scale` callers' worth); `Err` carries the seconds to wait.
    fn admit(&self, who: &str, scale: f64) -> Result<(), ApiError> {
        take_token(&self.buckets, self.cfg.rate * scale, self.cfg.burst * scale, who, Instant::now())
    }

    /// Checks a request before its body is read: `Content-Length` over the limit is refused here.
    pub fn precheck(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let len = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if len.is_some_and(|l| l > MAX_BODY as u64) {
            return Err(err(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over the gateway's {MAX_BODY}-byte limit; upload files through presigned URLs"),
            ));
        }
        Ok(())
    }

    /// Answers one API call. `path` starts with `/v1/`.
    pub async fn call(
        &self,
        peer: IpAddr,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> (StatusCode, Value) {
        match self.route(peer, method, path, query, headers, body).await {
            Ok(v) => (StatusCode::OK, v),
            Err(ApiError(code, why)) => (code, json!({ "error": why })),
        }
    }

    async fn route(
        &self,
        peer: IpAddr,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Reply {
        let now = Utc::now();
        let q: HashMap<String, String> =
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect();
        // Unauthenticated routes are limited per address of the caller.
        match (method, path) {
            (&Method::GET, "/v1/info") => {
                self.admit(&peer.to_string(), 1.0)?;
                return Ok(json!({
                    "bucket": self.ctx.store.bucket(), "domain": self.cfg.domain, "chain_id": self.cfg.chain_id,
                    "chain": self.cfg.chain_info, "free": self.cfg.chain_info.is_null(),
                    "max_put": MAX_PUT, "max_body": MAX_BODY, "max_request": MAX_REQUEST_BYTES,
                    "session_seconds": self.cfg.session_ttl.as_secs(), "url_seconds": self.cfg.url_ttl.as_secs(),
                }));
            }
            (&Method::GET, "/v1/nonce") => {
                self.admit(&peer.to_string(), 1.0)?;
                return Ok(json!({"nonce": self.nonce(now), "domain": self.cfg.domain, "chain_id": self.cfg.chain_id}));
            }
            (&Method::POST, "/v1/session") => {
                self.admit(&peer.to_string(), 1.0)?;
                return self.session(&body, now);
            }
            _ => {}
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| err(StatusCode::UNAUTHORIZED, "no session token; run `aic login`"))?;
        let caller = if aic_core::grant::is_worker_token(token) {
            Caller::Worker(
                aic_core::grant::verify(&self.cfg.secret, token, now).map_err(|e| err(StatusCode::UNAUTHORIZED, e))?,
            )
        } else {
            Caller::User(self.check_token(token, now)?)
        };
        let (key, scale) = caller.rate_key();
        self.admit(&key, scale)?;
        let segs: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
        match (method, segs.as_slice()) {
            (&Method::POST, ["sign"]) => return self.sign(&caller, &body).await,
            (&Method::GET, ["objects"]) => return self.objects(&caller, &q).await,
            (&Method::POST, ["multipart"]) => return self.multipart(&caller, &body).await,
            _ => {}
        }
        let who = match &caller {
            Caller::User(who) => *who,
            Caller::Worker(g) => {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    format!(
                        "the workers of job {} reach only its objects (sign, objects, multipart), not {path}",
                        g.job
                    ),
                ));
            }
        };
        match (method, segs.as_slice()) {
            (&Method::GET, ["jobs"]) => self.jobs(&who).await,
            (&Method::GET, ["pool"]) => {
                let gws = self.ctx.scheduler.pool().await.map_err(store_err)?;
                Ok(json!({ "gateways": gws }))
            }
            (&Method::GET, ["jobs", id]) => self.job(&who, id).await,
            (&Method::GET, ["jobs", id, "replicas"]) => self.replicas(&who, id).await,
            (&Method::GET, ["jobs", id, "logs"]) => self.logs(&who, id, q.get("after").map(String::as_str)).await,
            (&Method::POST, ["jobs", id, "cancel"]) => self.cancel(&who, id).await,
            _ => Err(err(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {path}"))),
        }
    }

    fn session(&self, body: &[u8], now: DateTime<Utc>) -> Reply {
        let b: SessionBody =
            serde_json::from_slice(body).map_err(|e| bad(format!("body must be {{message, signature}}: {e}")))?;
        let msg = SiweMessage::parse(&b.message).map_err(|e| err(StatusCode::UNAUTHORIZED, e.to_string()))?;
        self.check_nonce(&msg.nonce, now)?;
        msg.verify(&b.signature, &self.cfg.domain, self.cfg.chain_id, now)
            .map_err(|e| err(StatusCode::UNAUTHORIZED, e.to_string()))?;
        let ttl = chrono::Duration::from_std(self.cfg.session_ttl).expect("ttl fits");
        let expires = (now + ttl).min(msg.expiration);
        let who = aic_chain::from_alloy(msg.address);
        Ok(json!({"token": self.issue_token(&who, expires), "address": who, "expires_at": expires}))
    }

    fn signer(&self) -> Result<&std::sync::Arc<object_store::aws::AmazonS3>, ApiError> {
        self.ctx.store.s3_client().ok_or_else(|| {
            err(
                StatusCode::NOT_IMPLEMENTED,
                "this pool's store cannot presign URLs (it is not S3); use the embedded pool",
            )
        })
    }

    async fn sign(&self, who: &Caller, body: &[u8]) -> Reply {
        let b: SignBody = serde_json::from_slice(body).map_err(|e| bad(format!("body must be {{items:[…]}}: {e}")))?;
        if b.items.len() > MAX_ITEMS {
            return Err(bad(format!("at most {MAX_ITEMS} URLs per call")));
        }
        let s3 = self.signer()?;
        let mut urls = Vec::with_capacity(b.items.len());
        for item in &b.items {
            let access = access(who, &item.key)?;
            let method: Method =
                item.method.to_uppercase().parse().map_err(|_| bad(format!("unknown method {:?}", item.method)))?;
            let mut opts = SignedUrlOptions::default();
            let mut send = serde_json::Map::new();
            match (&method, &access) {
                (&Method::GET | &Method::HEAD, _) => {}
                (&Method::PUT, Access::Read) => {
                    let who_writes = match who {
                        Caller::User(_) => "users write data/…, a job's code/… and request.json",
                        Caller::Worker(_) => "a job's workers write its logs, outputs, status and records",
                    };
                    return Err(err(StatusCode::FORBIDDEN, format!("{}: not writable by you; {who_writes}", item.key)));
                }
                (&Method::PUT, _) => {
                    let size = item.size.ok_or_else(|| bad(format!("{}: PUT needs the size in bytes", item.key)))?;
                    if size > MAX_PUT {
                        return Err(err(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                                "{}: {size} bytes is over the {MAX_PUT}-byte single-upload limit; use /v1/multipart",
                                item.key
                            ),
                        ));
                    }
                    // The limit validate reads a request with, so nothing is uploaded to be refused.
                    if matches!(access, Access::CreateOnly) && size > MAX_REQUEST_BYTES {
                        return Err(err(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                                "{}: {size} bytes; a request is at most {MAX_REQUEST_BYTES} bytes ({} KiB)",
                                item.key,
                                MAX_REQUEST_BYTES / 1024
                            ),
                        ));
                    }
                    let sum =
                        item.sha256.as_deref().and_then(|h| hex::decode(h).ok()).filter(|b| b.len() == 32).ok_or_else(
                            || bad(format!("{}: PUT needs the content's SHA-256 (64 hex digits)", item.key)),
                        )?;
                    let sum = base64::engine::general_purpose::STANDARD.encode(sum);
                    opts = opts.with_signed_header(
                        http::HeaderName::from_static("x-amz-checksum-sha256"),
                        HeaderValue::from_str(&sum).expect("base64 is a valid header"),
                    );
                    send.insert("x-amz-checksum-sha256".into(), json!(sum));
                    if matches!(access, Access::CreateOnly | Access::Append) || item.create {
                        opts = opts.with_signed_header(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
                        send.insert("if-none-match".into(), json!("*"));
                    }
                }
                (&Method::DELETE, Access::Write { deletable: true }) => {}
                _ => return Err(err(StatusCode::FORBIDDEN, format!("{method} is not allowed on {}", item.key))),
            }
            let path =
                object_path(&item.key).map_err(|e| bad(format!("{}: not a valid object key ({e})", item.key)))?;
            let url = s3.signed_url_opts(method.clone(), &path, self.cfg.url_ttl, &opts).await.map_err(store_err)?;
            if access == Access::CreateOnly
                && method == Method::PUT
                && let Some(inbox) = &self.inbox
            {
                inbox
                    .expect(&item.key, Utc::now() + chrono::Duration::from_std(self.cfg.url_ttl).unwrap())
                    .await
                    .map_err(store_err)?;
            }
            urls.push(json!({"url": url.to_string(), "method": method.as_str(), "headers": send}));
        }
        Ok(json!({ "urls": urls, "expires_in": self.cfg.url_ttl.as_secs() }))
    }

    async fn objects(&self, who: &Caller, q: &HashMap<String, String>) -> Reply {
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
        let prefix = prefix.trim_end_matches('/');
        let meta = |m: &object_store::ObjectMeta| json!({"key": m.location.to_string(), "size": m.size, "last_modified": m.last_modified, "e_tag": m.e_tag});
        let os = self.ctx.store.object_store();
        let key_path = |k: &str| prefix_path(k).map_err(|e| bad(format!("{k}: not a valid object key ({e})")));
        if q.get("delimiter").is_some_and(|d| d == "true" || d == "1") {
            let r = os.list_with_delimiter(Some(&key_path(prefix)?)).await.map_err(store_err)?;
            let prefixes: Vec<String> = r.common_prefixes.iter().map(|p| p.to_string()).collect();
            return Ok(json!({"objects": r.objects.iter().map(meta).collect::<Vec<_>>(), "prefixes": prefixes}));
        }
        let list: Vec<object_store::ObjectMeta> = match q.get("offset") {
            Some(o) => os.list_with_offset(Some(&key_path(prefix)?), &key_path(o)?).try_collect().await,
            None => os.list(Some(&key_path(prefix)?)).try_collect().await,
        }
        .map_err(store_err)?;
        Ok(json!({"objects": list.iter().map(meta).collect::<Vec<_>>(), "prefixes": []}))
    }

    async fn multipart(&self, who: &Caller, body: &[u8]) -> Reply {
        let b: MultipartBody =
            serde_json::from_slice(body).map_err(|e| bad(format!("body must be {{action, key, …}}: {e}")))?;
        match access(who, &b.key)? {
            Access::Write { .. } => {}
            _ => {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{}: multipart uploads are for keys you may write (data/…, code/…; outputs for workers)",
                        b.key
                    ),
                ));
            }
        }
        let s3 = self.signer()?;
        let path = object_path(&b.key).map_err(|e| bad(format!("{}: not a valid object key ({e})", b.key)))?;
        let upload_id = || b.upload_id.clone().ok_or_else(|| bad("upload_id is required"));
        match b.action.as_str() {
            "create" => {
                let id = s3.create_multipart(&path).await.map_err(store_err)?;
                Ok(json!({ "upload_id": id }))
            }
            "part" => {
                let part = b.part.ok_or_else(|| bad("part (0-based index) is required"))?;
                if part >= 10_000 {
                    return Err(bad("at most 10000 parts"));
                }
                let opts = SignedUrlOptions::default().with_query([
                    ("partNumber".to_string(), (part + 1).to_string()),
                    ("uploadId".to_string(), upload_id()?),
                ]);
                let url = s3.signed_url_opts(Method::PUT, &path, self.cfg.url_ttl, &opts).await.map_err(store_err)?;
                Ok(json!({ "url": url.to_string() }))
            }
            "complete" => {
                let parts = b.parts.into_iter().map(|e| PartId { content_id: e }).collect();
                let r = s3
                    .complete_multipart(&path, &upload_id()?, parts)
                    .await
                    .map_err(|e| bad(format!("completing the upload: {e}")))?;
                Ok(json!({ "e_tag": r.e_tag }))
            }
            "abort" => {
                s3.abort_multipart(&path, &upload_id()?).await.map_err(store_err)?;
                Ok(json!({}))
            }
            other => Err(bad(format!("unknown multipart action {other:?}: create, part, complete or abort"))),
        }
    }

    fn job_key(&self, who: &Address, id: &str) -> Result<JobKey, ApiError> {
        let id: JobId = id.parse().map_err(|_| bad(format!("{id:?} is not a job id")))?;
        Ok(JobKey::new(*who, id))
    }

    async fn jobs(&self, who: &Address) -> Reply {
        let prefix = aic_core::layout::jobs_prefix(who);
        let (dirs, _) = self.ctx.store.list_dir(&prefix).await.map_err(store_err)?;
        let mut out = Vec::with_capacity(dirs.len());
        for d in dirs {
            let Some(id) = d.trim_end_matches('/').rsplit('/').next() else { continue };
            let Ok(job) = self.job_key(who, id) else { continue };
            let snap = status::snapshot(&self.ctx.store, &job).await.map_err(store_err)?;
            out.push(json!({"job_id": id, "status": snap}));
        }
        Ok(json!({ "jobs": out }))
    }

    async fn job(&self, who: &Address, id: &str) -> Reply {
        let job = self.job_key(who, id)?;
        let history = status::history(&self.ctx.store, &job).await.map_err(store_err)?;
        if history.is_empty() && self.ctx.store.head(&job.request()).await.map_err(store_err)?.is_none() {
            return Err(err(StatusCode::NOT_FOUND, format!("no job {id} of yours")));
        }
        Ok(json!({"job_id": id, "status": history.last(), "history": history}))
    }

    async fn logs(&self, who: &Address, id: &str, after: Option<&str>) -> Reply {
        let job = self.job_key(who, id)?;
        let prefix = job.logs_prefix();
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
        Ok(json!({ "chunks": chunks }))
    }

    /// A deployment's serving registrations (only the caller's own jobs).
    async fn replicas(&self, who: &Address, id: &str) -> Reply {
        let job = self.job_key(who, id)?;
        if self.ctx.store.head(&job.request()).await.map_err(store_err)?.is_none() {
            return Err(err(StatusCode::NOT_FOUND, format!("no job {id} of yours")));
        }
        let prefix = aic_core::layout::serving_prefix(job.job.as_str());
        let mut regs = Vec::new();
        for m in self.ctx.store.list(&prefix).await.map_err(store_err)? {
            if let Some(r) =
                self.ctx.store.get_json::<Value>(m.location.as_ref(), 64 * 1024).await.map_err(store_err)?
            {
                regs.push(r);
            }
        }
        Ok(json!({ "replicas": regs }))
    }

    async fn cancel(&self, who: &Address, id: &str) -> Reply {
        let job = self.job_key(who, id)?;
        let t = Transition::new(JobState::Cancelled, "gateway").reason("cancelled by its owner");
        match status::advance(&self.ctx.store, &job, t).await.map_err(store_err)? {
            Advanced::Applied(rec) => {
                // The status record's own event cancels too; this is quicker, and idempotent.
                if let Err(e) = self.ctx.scheduler.cancel(&job).await {
                    tracing::warn!(job = %job.job, error = %e, "cancel: the scheduler did not answer; the event will retry");
                }
                Ok(json!({"state": rec.state, "already": false}))
            }
            Advanced::Already(rec) => Ok(json!({"state": rec.state, "already": true})),
            Advanced::Refused(Some(r)) => {
                Err(err(StatusCode::CONFLICT, format!("job {id} already {}; nothing to cancel", r.state)))
            }
            Advanced::Refused(None) => {
                Err(err(StatusCode::CONFLICT, format!("job {id} has not been picked up yet; try again in a moment")))
            }
        }
    }
}

/// Takes one token from `who`'s bucket (`rate` per second, at most `burst`); `Err` says how
/// long to wait.
fn take_token(
    buckets: &Mutex<HashMap<String, (f64, Instant)>>,
    rate: f64,
    burst: f64,
    who: &str,
    now: Instant,
) -> Result<(), ApiError> {
    let mut b = buckets.lock().unwrap();
    if b.len() > 100_000 {
        b.retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(60));
    }
    let (tokens, last) = b.entry(who.to_string()).or_insert((burst, now));
    *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(burst);
    *last = now;
    if *tokens < 1.0 {
        let wait = ((1.0 - *tokens) / rate).ceil().max(1.0);
        return Err(err(StatusCode::TOO_MANY_REQUESTS, format!("too many requests; retry in {wait} s")));
    }
    *tokens -= 1.0;
    Ok(())
}

/// What `who` may do with `key`.
fn access(who: &Caller, key: &str) -> Result<Access, ApiError> {
    match who {
        Caller::User(a) => user_access(a, key),
        Caller::Worker(g) => worker_access(g, key),
    }
}

/// Where a job's workers may list: the job, its dataset, its serving registrations.
fn worker_prefixes(g: &WorkerGrant) -> Vec<String> {
    let mut v = vec![g.job_key().prefix()];
    if let Some(d) = &g.data {
        v.push(format!("{}/", aic_core::layout::data_key(&g.owner, d).trim_end_matches('/')));
    }
    v.push(aic_core::layout::serving_prefix(g.job.as_str()));
    v
}

/// What a job's workers may do with `key`: read the job and its dataset; write its logs,
/// outputs, status, allocation records and rendezvous (not its request, manifest or code);
/// write and delete its serving registrations. Nothing else.
fn worker_access(g: &WorkerGrant, key: &str) -> Result<Access, ApiError> {
    if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(bad(format!("{key}: not a valid object key")));
    }
    let job = g.job_key().prefix();
    if let Some(rest) = key.strip_prefix(&job) {
        let first = rest.split('/').next().unwrap_or_default();
        let nested = rest.contains('/');
        return Ok(match first {
            "logs" | "allocs" | "status" if nested => Access::Append,
            "output" | "rendezvous" if nested => Access::Write { deletable: false },
            "status.json" => Access::Write { deletable: false },
            _ => Access::Read,
        });
    }
    let prefixes = worker_prefixes(g);
    if prefixes.len() == 3 && key.starts_with(&prefixes[1]) {
        return Ok(Access::Read);
    }
    if key.starts_with(prefixes.last().expect("serving prefix")) {
        return Ok(Access::Write { deletable: true });
    }
    Err(err(StatusCode::FORBIDDEN, format!("{key}: the workers of job {} may not reach it", g.job)))
}

/// What a user may do with `key`; refuses keys outside their prefix or of no known kind.
fn user_access(who: &Address, key: &str) -> Result<Access, ApiError> {
    let mine = aic_core::layout::user_prefix(who);
    let forbidden = |why: String| err(StatusCode::FORBIDDEN, why);
    let Some(rest) = key.strip_prefix(&mine) else {
        return Err(forbidden(format!("{key}: not under your prefix {mine}")));
    };
    if rest.is_empty() || rest.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(bad(format!("{key}: not a valid object key")));
    }
    if rest.starts_with("data/") {
        return Ok(Access::Write { deletable: true });
    }
    match classify(key) {
        KeyKind::Request(_) => Ok(Access::CreateOnly),
        _ => {
            let segs: Vec<&str> = rest.split('/').collect();
            if segs.len() >= 4 && segs[0] == "jobs" && segs[1].parse::<JobId>().is_ok() && segs[2] == "code" {
                Ok(Access::Write { deletable: false })
            } else {
                Ok(Access::Read)
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";

    #[test]
    fn users_write_data_code_and_requests_of_their_own_only() {
        let a = Caller::User(A.parse().unwrap());
        let job = JobId::generate();
        let mine = format!("users/{A}/");
        assert_eq!(access(&a, &format!("{mine}data/x/y.csv")).unwrap(), Access::Write { deletable: true });
        assert_eq!(access(&a, &format!("{mine}jobs/{job}/code/train.py")).unwrap(), Access::Write { deletable: false });
        assert_eq!(access(&a, &format!("{mine}jobs/{job}/request.json")).unwrap(), Access::CreateOnly);
        assert_eq!(access(&a, &format!("{mine}jobs/{job}/manifest.json")).unwrap(), Access::Read);
        assert_eq!(access(&a, &format!("{mine}jobs/{job}/status/00000001.json")).unwrap(), Access::Read);
        assert_eq!(access(&a, &format!("{mine}jobs/{job}/output/model.npz")).unwrap(), Access::Read);
        let other = "users/0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc/data/x";
        assert_eq!(access(&a, other).unwrap_err().0, StatusCode::FORBIDDEN);
        assert_eq!(access(&a, &format!("{mine}data/../../x")).unwrap_err().0, StatusCode::BAD_REQUEST);
        assert_eq!(access(&a, "pool/payments/1/0x.json").unwrap_err().0, StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_jobs_allocations_share_a_bucket_sized_for_all_of_them() {
        let buckets = Mutex::new(HashMap::new());
        let now = Instant::now();
        let job = WorkerGrant { owner: A.parse().unwrap(), job: JobId::generate(), data: None, allocs: 8, exp: 0 };
        let (key, scale) = Caller::Worker(job).rate_key();
        assert_eq!(scale, 8.0);
        // rate 1/s, burst 2 per caller: the job's 8 allocations get 16 at once, not 2.
        for i in 0..16 {
            assert!(take_token(&buckets, scale, 2.0 * scale, &key, now).is_ok(), "call {i}");
        }
        let e = take_token(&buckets, scale, 2.0 * scale, &key, now).unwrap_err();
        assert_eq!(e.0, StatusCode::TOO_MANY_REQUESTS);
        // A user is one caller.
        let (user, one) = Caller::User(A.parse().unwrap()).rate_key();
        assert!(
            take_token(&buckets, one, 2.0, &user, now).is_ok() && take_token(&buckets, one, 2.0, &user, now).is_ok()
        );
        assert!(take_token(&buckets, one, 2.0, &user, now).is_err());
        assert!(take_token(&buckets, one, 2.0, &user, now + Duration::from_secs(1)).is_ok(), "refilled after 1 s");
    }

    #[test]
    fn a_jobs_workers_reach_that_job_its_dataset_and_its_serving_records_only() {
        let job = JobId::generate();
        let g = WorkerGrant {
            owner: A.parse().unwrap(),
            job: job.clone(),
            data: Some("digits".into()),
            allocs: 1,
            exp: i64::MAX,
        };
        let w = Caller::Worker(g.clone());
        let j = format!("users/{A}/jobs/{job}/");
        let read = [
            format!("{j}manifest.json"),
            format!("{j}request.json"),
            format!("{j}code/train.py"),
            format!("users/{A}/data/digits/digits.csv"),
        ];
        for k in &read {
            assert_eq!(access(&w, k).unwrap(), Access::Read, "{k}");
        }
        for k in [format!("{j}status/00000003.json"), format!("{j}logs/0/00000001.log"), format!("{j}allocs/0/1.json")]
        {
            assert_eq!(access(&w, &k).unwrap(), Access::Append, "{k}");
        }
        for k in [format!("{j}status.json"), format!("{j}output/model.npz"), format!("{j}rendezvous/0/1.json")] {
            assert_eq!(access(&w, &k).unwrap(), Access::Write { deletable: false }, "{k}");
        }
        assert_eq!(access(&w, &format!("pool/serving/{job}/0.json")).unwrap(), Access::Write { deletable: true });
        let other_job = JobId::generate();
        for k in [
            format!("users/{A}/jobs/{other_job}/output/model.npz"),
            format!("users/{A}/data/other/x.csv"),
            format!("users/{A}/data/digits-2/x.csv"),
            "users/0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc/data/digits/x.csv".to_string(),
            format!("pool/serving/{other_job}/0.json"),
            "pool/payments/1/0x.json".to_string(),
            format!("pool/names/{A}/digits/{job}.json"),
        ] {
            assert_eq!(access(&w, &k).unwrap_err().0, StatusCode::FORBIDDEN, "{k}");
        }
        assert_eq!(access(&w, &format!("{j}output/../../{other_job}/x")).unwrap_err().0, StatusCode::BAD_REQUEST);
        assert_eq!(worker_prefixes(&g), [j, format!("users/{A}/data/digits/"), format!("pool/serving/{job}/")]);
    }
}
