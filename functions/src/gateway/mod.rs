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
//! | `POST /v1/logout` | signs the caller out: every session of theirs issued until now is refused |
//! | `POST /v1/sign` `{items:[{method,key,size?}]}` | presigned URLs (+ headers to send) |
//! | `GET /v1/objects?prefix=&offset=&delimiter=` | the caller's objects |
//! | `POST /v1/multipart` `{action,key,upload_id?,part?,parts?}` | large uploads part by part |
//! | `GET /v1/jobs?limit=&since=&before=`, `GET /v1/jobs/<id>` | the caller's newest jobs (snapshot and request each), one job's status |
//! | `GET /v1/deployments` | the caller's deployments, newest first (from the names dispatch records) |
//! | `GET`, `POST /v1/deployments/<name or id>/keys` `{label?}`, `DELETE …/keys/<id>` | keys to the caller's private deployment: listed (digests, never keys), made (the key in that answer alone), revoked (`keys`) |
//! | `POST /v1/draft` (a request) | its quote, the wallet calls that pay it, its EIP-712 typed data |
//! | `GET /v1/payments/<job>`, `POST /v1/payments/<job>` `{to, data}`, `POST /v1/payments/<job>/tx` `{tx}` | a payment the browser's wallet is sending, kept and followed by the pool (`payment`) |
//! | `GET /v1/secrets`, `PUT /v1/secrets/<NAME>` `{value}`, `DELETE /v1/secrets/<NAME>` | the caller's secrets: names only out, values only in (`vault`) |
//! | `GET /v1/usage` | what the caller keeps in datasets, and the pool's storage quota per wallet (`quota`) |
//! | `GET /v1/deposits` | the caller's deposits in the escrow, their state, and the wallet call that reclaims one due back |
//! | `/v1/blob?…` | transfers through this host, where the store cannot presign (`blob`) |
//! | `GET /v1/pool` | gateways, miners and free GPUs |
//! | `GET /v1/jobs/<id>/logs?after=&stream=` | log chunks after a key (`stream=metrics`: GPU sample chunks) |
//! | `GET /v1/jobs/<id>/live?from=&status=&wait=&stream=` | what the job printed (or sampled) since, from memory, as soon as there is more (`live`) |
//! | `GET /v1/jobs/<id>/replicas` | a deployment's serving registrations |
//! | `GET /v1/jobs/<id>/stats?minutes=` | a deployment's request figures, minute by minute (every functions host's added up) and summed up |
//! | `POST /v1/jobs/<id>/cancel` | cancels the job |
//! | `POST /v1/jobs/<id>/exec` `{alloc, argv, stdin}` | runs a command in a running allocation (`exec`) |
//! | `GET /v1/exec/<session>?after=N` | the command's output frames after N, and its exit code |
//! | `POST /v1/exec/<session>/input` `{frames}` | keystrokes and resizes for a terminal session (`aic shell`) |
//! | `GET /v1/worker/exec?alloc=I`, `POST /v1/worker/exec/<session>` | (workers) the commands for their allocation, their output |
//! | `POST /v1/worker/logs` `{alloc, chunk, offset, text, status}` | (workers) what their program printed, as it prints it |
//! | `POST /v1/worker/metrics` `{alloc, chunk, offset, text}` | (workers) their GPU samples, as they take them |
//! | `GET /v1/worker/secrets` | (workers) the values of the secrets their job names, its owner's |
//!
//! What a user may write: `data/…`, a job's `code/…` and its `request.json` (create-only: the
//! URL signs `If-None-Match: *`, so it cannot overwrite). A PUT URL is bound to the content's
//! SHA-256 (`x-amz-checksum-sha256`, checked by S3) and to the declared size (a signed
//! `Content-Length`), which must be within the limits and the wallet's storage quota. Manifests, status and outputs are written by the pool alone.
//!
//! Files by concern: `session` (SIWE sign-in, tokens, nonces), `limits` (body size, the
//! callers' token buckets), `access` (what a user or a job's workers may reach), `presign`
//! (presigned URLs, multipart), `quota` (the storage quota per wallet), `sigv4` (a presigned
//! PUT bound to its length), `reads` (listings, jobs, logs, replicas, cancel); this file
//! holds the configuration and the routes.

mod access;
pub mod blob;
mod draft;
mod exec;
mod keys;
mod limits;
pub mod live;
mod payment;
mod presign;
mod quota;
mod reads;
mod session;
pub mod sigv4;
mod vault;

pub use session::session_token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aic_chain::siwe::SiweMessage;
use aic_core::grant::WorkerGrant;
use aic_core::layout::{JobKey, KeyKind, classify};
use aic_core::status;
use aic_core::store::{object_path, prefix_path};
use aic_schemas::validate::MAX_REQUEST_BYTES;
use aic_schemas::{Address, JobId};
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

use self::access::{Access, access, worker_prefixes};
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
    /// The key users' secrets are sealed under (`AIC_SECRETS_KEY`, 64 hex digits; the same on
    /// every replica); unset, the pool keeps no secrets (`aic_core::vault`).
    pub secrets_key: Option<String>,
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
    /// This gateway's own address (`http://host:port`), where the store cannot presign URLs
    /// and transfers go through the host (`blob`): the embedded pool's.
    pub public_url: Option<String>,
    /// The origins deployments answer at (`http://*.localhost:8800`), shown by `/v1/info`.
    pub serving: Option<String>,
    /// Whether this gateway relays live logs (`live`): a long-lived host does; a Lambda
    /// function, whose invocations share no memory, answers 404 and watchers read the bucket.
    pub live: bool,
    /// Wallets whose keys are public (the dev chain's accounts, on the embedded pool): they
    /// sign in from this machine (a loopback peer) only.
    pub local_signers: Vec<Address>,
    /// How long after its job ended a worker token still opens anything (the last log
    /// chunks and records of workers shutting down): not the token's whole hours + 24 h.
    pub worker_grace: Duration,
    /// Most bytes one wallet keeps in datasets and in the code of jobs not paid yet
    /// (`quota`); `None`: no quota.
    pub storage_quota: Option<u64>,
    /// Most bytes of one job's code (`AIC_MAX_CODE_BYTES`, what a worker takes: 512 MiB).
    pub max_code_bytes: u64,
}

impl GatewayConfig {
    fn session_ttl_chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.session_ttl).unwrap_or(chrono::Duration::hours(12))
    }

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
            public_url: None,
            serving: None,
            live: true,
            local_signers: vec![],
            worker_grace: Duration::from_secs(600),
            storage_quota: None,
            max_code_bytes: aic_core::max_code_bytes(),
            secrets_key: std::env::var("AIC_SECRETS_KEY")
                .ok()
                .filter(|k| !k.is_empty())
                .or_else(|| crate::secrets::get("AIC_SECRETS_KEY")),
        }
    }
}

pub struct Gateway {
    cfg: GatewayConfig,
    ctx: Ctx,
    inbox: Option<Inbox>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    /// `aic exec` sessions in flight (`exec`).
    exec: std::sync::Arc<exec::Relay>,
    /// What running jobs print, for watchers (`live`).
    live: live::Live,
    /// Their GPU samples, the same way.
    live_metrics: live::Live,
    store_origin: std::sync::OnceLock<Option<String>>,
    /// When each wallet last signed out, as last read (`session`).
    signed_out: Mutex<HashMap<Address, (Instant, Option<i64>)>>,
    /// When each job the workers of which called ended (`None`: it runs), as last read.
    job_ended: Mutex<HashMap<JobKey, JobEnded>>,
    /// What each wallet keeps in datasets, as last listed (`quota`).
    usage: quota::Usage,
    /// Users' secrets' key (`vault`), or why there is none.
    vault: Result<aic_core::vault::Vault, String>,
}

impl Gateway {
    /// A worker token opens nothing once its job has ended longer than
    /// [`GatewayConfig::worker_grace`] ago (its status read through a 5 s cache): a token a
    /// job's program copied does not reach the job's objects for the day after it.
    async fn worker_job_live(&self, g: &aic_core::grant::WorkerGrant, now: DateTime<Utc>) -> Result<(), ApiError> {
        let job = g.job_key();
        let cached =
            self.job_ended.lock().unwrap().get(&job).filter(|(at, _)| at.elapsed() < SIGNED_OUT_CACHE).map(|(_, e)| *e);
        let ended = match cached {
            Some(e) => e,
            None => {
                let st = aic_core::status::current(&self.ctx.store, &job).await.map_err(store_err)?;
                let e = st.filter(|r| r.state.is_terminal()).map(|r| r.at);
                let mut cache = self.job_ended.lock().unwrap();
                if cache.len() >= 100_000 {
                    cache.clear();
                }
                cache.insert(job.clone(), (Instant::now(), e));
                e
            }
        };
        match ended {
            Some(at) if now - at > chrono::Duration::from_std(self.cfg.worker_grace).unwrap_or_default() => Err(err(
                StatusCode::UNAUTHORIZED,
                format!("job {} ended at {at}: its workers' token opens nothing any more", g.job),
            )),
            _ => Ok(()),
        }
    }
}

/// When a job was last read (`Instant`), and when it had ended (`None`: it ran).
type JobEnded = (Instant, Option<DateTime<Utc>>);

/// How long a wallet's sign-out time is reused before the bucket is read again.
pub const SIGNED_OUT_CACHE: Duration = Duration::from_secs(5);

/// A refusal: status, the one-line reason, and for a 429 how many seconds to wait (the
/// answer's `Retry-After`).
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String, pub Option<u64>);

pub(super) type Reply = Result<Value, ApiError>;

pub(super) fn err(code: StatusCode, why: impl Into<String>) -> ApiError {
    ApiError(code, why.into(), None)
}

/// Too many requests: try again in `secs` seconds (said in the reason and in `Retry-After`).
pub(super) fn slow_down(secs: u64, why: impl Into<String>) -> ApiError {
    ApiError(StatusCode::TOO_MANY_REQUESTS, why.into(), Some(secs))
}

/// The `Retry-After` an answer's body asks for (`"retry_after"`: a 429's seconds).
pub fn retry_after_of(body: &Value) -> Option<String> {
    body["retry_after"].as_u64().map(|s| s.to_string())
}

pub(super) fn bad(why: impl Into<String>) -> ApiError {
    err(StatusCode::BAD_REQUEST, why)
}

pub(super) fn store_err(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "gateway store call failed");
    err(StatusCode::SERVICE_UNAVAILABLE, "the pool's storage did not answer; try again in a moment")
}
/// Who calls: a signed-in user, or the workers of one job.
#[derive(Debug)]
pub enum Caller {
    User(Address),
    Worker(WorkerGrant),
}

impl Gateway {
    pub fn new(cfg: GatewayConfig, ctx: Ctx, inbox: Option<Inbox>) -> Self {
        Gateway {
            ctx,
            inbox,
            buckets: Mutex::new(HashMap::new()),
            exec: Default::default(),
            live: Default::default(),
            live_metrics: Default::default(),
            store_origin: Default::default(),
            signed_out: Default::default(),
            job_ended: Default::default(),
            usage: Default::default(),
            vault: match cfg.secrets_key.as_deref() {
                Some(k) => aic_core::vault::Vault::new(k).map_err(|e| e.to_string()),
                None => Err("its operator has set no AIC_SECRETS_KEY".into()),
            },
            cfg,
        }
    }

    /// The live logs this host relays (its event handling tells it of status moves).
    /// A worker of `job` ended abnormally (killed, its miner lost): what it printed since its
    /// last stored chunk, which this host holds from the worker's live posts, is stored as
    /// that chunk (create-only: a chunk the worker did store is left as it is).
    /// Its GPU samples the same way.
    pub async fn keep_lost_log(&self, job: &JobKey, alloc: u32) {
        let kept = [
            self.live.pending(job, alloc).map(|(n, t)| (job.log_chunk(alloc, n), t)),
            self.live_metrics.pending(job, alloc).map(|(n, t)| (job.metrics_chunk(alloc, n), t)),
        ];
        for (key, text) in kept.into_iter().flatten() {
            match self.ctx.store.create_bytes(&key, bytes::Bytes::from(text)).await {
                Ok(aic_core::store::Created::Created) => {
                    tracing::info!(job = %job.job, alloc, key, "stored what a lost worker had not")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(job = %job.job, alloc, error = %e, "cannot store a lost worker's log"),
            }
        }
    }

    pub fn live(&self) -> &live::Live {
        &self.live
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
            Err(ApiError(code, why, None)) => (code, json!({ "error": why })),
            // The wait goes out as the answer's `Retry-After` (`retry_after_of`).
            Err(ApiError(code, why, Some(secs))) => (code, json!({ "error": why, "retry_after": secs })),
        }
    }

    pub(super) async fn route(
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
                    "max_put": if self.host_transfers() { blob::MAX_HOST_PUT as u64 } else { MAX_PUT }, "max_body": MAX_BODY, "max_request": MAX_REQUEST_BYTES, "serving": self.cfg.serving,
                    "session_seconds": self.cfg.session_ttl.as_secs(), "url_seconds": self.cfg.url_ttl.as_secs(),
                    "images": self.ctx.scheduler.images(),
                }));
            }
            (&Method::GET, "/v1/nonce") => {
                self.admit(&peer.to_string(), 1.0)?;
                let nonce = self.nonce(now);
                // With `address`, the whole message to sign (what a browser signs as it is).
                let message = match q.get("address") {
                    Some(a) => {
                        let address: Address =
                            a.parse().map_err(|_| bad(format!("address={a:?} is not an address")))?;
                        let address = aic_chain::to_alloy(&address);
                        let uri = self.cfg.public_url.clone().unwrap_or_else(|| format!("https://{}", self.cfg.domain));
                        let mut m = SiweMessage::new(
                            &self.cfg.domain,
                            &uri,
                            address,
                            self.cfg.chain_id,
                            self.cfg.session_ttl_chrono(),
                        );
                        m.nonce = nonce.clone();
                        Some(m.to_string())
                    }
                    None => None,
                };
                return Ok(
                    json!({"nonce": nonce, "domain": self.cfg.domain, "chain_id": self.cfg.chain_id, "message": message}),
                );
            }
            (&Method::POST, "/v1/session") => {
                self.admit(&peer.to_string(), 1.0)?;
                return self.session(peer, &body, now).await;
            }
            _ => {}
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| err(StatusCode::UNAUTHORIZED, "no session token; run `aic login`"))?;
        let caller = if aic_core::grant::is_worker_token(token) {
            let grant =
                aic_core::grant::verify(&self.cfg.secret, token, now).map_err(|e| err(StatusCode::UNAUTHORIZED, e))?;
            self.worker_job_live(&grant, now).await?;
            Caller::Worker(grant)
        } else {
            Caller::User(self.user(token, now).await?)
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
            // A worker waits for its job's `aic exec` commands and posts their output.
            Caller::Worker(g) => match (method, segs.as_slice()) {
                (&Method::GET, ["worker", "exec"]) => return self.exec_next(g, exec::alloc_of(&q)?).await,
                (&Method::POST, ["worker", "exec", session]) => return self.exec_post(g, session, &body).await,
                (&Method::GET, ["worker", "exec", session, "input"]) => {
                    return self.exec_input_next(g, session, exec::after(&q)?).await;
                }
                (&Method::GET, ["worker", "secrets"]) => return self.worker_secrets(g).await,
                (&Method::POST, ["worker", "logs"]) if self.cfg.live => {
                    return self.live_post(g, &body, live::Stream::Logs);
                }
                (&Method::POST, ["worker", "metrics"]) if self.cfg.live => {
                    return self.live_post(g, &body, live::Stream::Metrics);
                }
                (&Method::POST, ["worker", "logs"]) => {
                    return Err(err(StatusCode::NOT_FOUND, "this gateway relays no live logs"));
                }
                _ => {
                    return Err(err(
                        StatusCode::FORBIDDEN,
                        format!(
                            "the workers of job {} reach only its objects (sign, objects, multipart) and its exec sessions, not {path}",
                            g.job
                        ),
                    ));
                }
            },
        };
        match (method, segs.as_slice()) {
            (&Method::POST, ["logout"]) => self.logout(&who, now).await,
            (&Method::GET, ["jobs"]) => self.jobs(&who, &q).await,
            (&Method::GET, ["deployments"]) => {
                let d = aic_core::serving::deployments(&self.ctx.store, &who).await.map_err(store_err)?;
                Ok(json!({ "deployments": d }))
            }
            (&Method::GET, ["deployments", d, "keys"]) => self.keys_list(&who, d).await,
            (&Method::POST, ["deployments", d, "keys"]) => self.keys_create(&who, d, &body).await,
            (&Method::DELETE, ["deployments", d, "keys", id]) => self.keys_revoke(&who, d, id).await,
            (&Method::POST, ["draft"]) => self.draft(&who, &body).await,
            (&Method::GET, ["payments", job]) => self.payment_state(&who, job).await,
            (&Method::GET, ["deposits"]) => self.deposits(&who).await,
            (&Method::GET, ["usage"]) => self.usage(&who).await,
            (&Method::GET, ["secrets"]) => self.secrets_list(&who).await,
            (&Method::PUT, ["secrets", name]) => self.secret_set(&who, name, &body).await,
            (&Method::DELETE, ["secrets", name]) => self.secret_remove(&who, name).await,
            (&Method::POST, ["payments", job]) => self.payment_sending(&who, job, &body).await,
            (&Method::POST, ["payments", job, "tx"]) => self.payment_sent(&who, job, &body).await,
            (&Method::GET, ["pool"]) => {
                let mut gws = self.ctx.scheduler.pool().await.map_err(store_err)?;
                self.ctx.pricing.price_miners(&mut gws);
                Ok(json!({ "gateways": gws }))
            }
            (&Method::GET, ["jobs", id]) => self.job(&who, id).await,
            (&Method::GET, ["jobs", id, "replicas"]) => self.replicas(&who, id).await,
            (&Method::GET, ["jobs", id, "stats"]) => self.serving_stats(&who, id, &q).await,
            (&Method::GET, ["jobs", id, "live"]) if self.cfg.live => self.live_next(&who, id, &q).await,
            (&Method::GET, ["jobs", id, "logs"]) => {
                let stream = live::Stream::of(q.get("stream").map(String::as_str)).map_err(bad)?;
                self.logs(&who, id, q.get("after").map(String::as_str), stream).await
            }
            (&Method::POST, ["jobs", id, "cancel"]) => self.cancel(&who, id).await,
            (&Method::POST, ["jobs", id, "exec"]) => self.exec_start(&who, id, &body).await,
            (&Method::GET, ["exec", session]) => self.exec_read(&who, session, exec::after(&q)?).await,
            (&Method::POST, ["exec", session, "input"]) => self.exec_input(&who, session, &body).await,
            _ => Err(err(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {path}"))),
        }
    }

    /// The origin presigned transfers go to (the store's endpoint), for the web app's
    /// Content-Security-Policy; `None` where transfers go through this host.
    pub async fn store_origin(&self) -> Option<String> {
        let s3 = self.ctx.store.s3_client()?;
        if let Some(o) = self.store_origin.get() {
            return o.clone();
        }
        let url =
            s3.signed_url(Method::GET, &object_store::path::Path::from("x"), Duration::from_secs(60)).await.ok()?;
        let origin = Some(url.origin().ascii_serialization());
        let _ = self.store_origin.set(origin.clone());
        origin
    }

    pub(super) fn signer(&self) -> Result<&std::sync::Arc<object_store::aws::AmazonS3>, ApiError> {
        self.ctx.store.s3_client().ok_or_else(|| {
            err(
                StatusCode::NOT_IMPLEMENTED,
                "this pool's store cannot presign URLs (it is not S3); use the embedded pool",
            )
        })
    }
}
