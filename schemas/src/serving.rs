//! Serving registrations: a running replica of a deployment announces itself here.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::JobId;
use crate::validate::FieldError;

/// Most processes a replica's app server may run (`--workers`).
pub const MAX_WORKERS: u32 = 16;
/// Most threads per process (`--threads`, WSGI).
pub const MAX_THREADS: u32 = 32;
/// A replica's processes and threads when the deployment does not say (uWSGI's 2 × 2).
pub const DEFAULT_WORKERS: u32 = 2;
pub const DEFAULT_THREADS: u32 = 2;

/// How a deployment's app is served: `aic deploy --server --workers --threads --private`,
/// or a job file's `serving:`. Signed with the request (it changes what runs and who may call it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// `wsgi` (uWSGI) or `asgi` (uvicorn); unset: told from the app as its replica starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<AppServer>,
    /// Processes per replica (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// Threads per process, WSGI apps only (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// Every request must carry `Authorization: Bearer <key>`, a key of the deployment's
    /// (`aic deploy key create`); others are refused at the gateway.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    /// Autoscaled: the fewest replicas it keeps (0: none while nobody calls it, the first
    /// request starting one). Its most are the request's `miners`, which the deposit covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    /// Autoscaled: the requests under way per replica it aims at (more for a while: a replica
    /// is added; fewer: one is removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_concurrency: Option<u32>,
    /// Autoscaled to zero: minutes without a request before the last replica stops (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_minutes: Option<u32>,
}

/// Requests under way per replica an autoscaled deployment aims at unless it says.
pub const DEFAULT_TARGET_CONCURRENCY: u32 = 4;
/// Most requests under way per replica a deployment may aim at.
pub const MAX_TARGET_CONCURRENCY: u32 = 1000;
/// Minutes without a request before an autoscaled deployment with no minimum stops its last replica.
pub const DEFAULT_IDLE_MINUTES: u32 = 5;

/// The server a deployment's app runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AppServer {
    /// A WSGI `app` (Flask, Django) under uWSGI.
    Wsgi,
    /// An ASGI `app` (FastAPI, Starlette) under uvicorn.
    Asgi,
}

impl std::fmt::Display for AppServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppServer::Wsgi => "wsgi",
            AppServer::Asgi => "asgi",
        })
    }
}

impl std::str::FromStr for AppServer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "wsgi" => Ok(AppServer::Wsgi),
            "asgi" => Ok(AppServer::Asgi),
            _ => Err(format!("{s:?} is not a server: say wsgi (Flask, Django) or asgi (FastAPI, Starlette)")),
        }
    }
}

impl ServeOptions {
    /// Field-level problems, named `<prefix>.<field>`.
    pub fn check(&self, prefix: &str, errs: &mut Vec<FieldError>) {
        if let Some(w) = self.workers
            && !(1..=MAX_WORKERS).contains(&w)
        {
            errs.push(FieldError::new(
                format!("{prefix}.workers"),
                format!("{w} processes: a replica runs 1 to {MAX_WORKERS}"),
            ));
        }
        if let Some(t) = self.threads {
            if self.server == Some(AppServer::Asgi) {
                errs.push(FieldError::new(
                    format!("{prefix}.threads"),
                    "an ASGI app serves its requests on an event loop: threads are for WSGI apps; use --workers",
                ));
            } else if !(1..=MAX_THREADS).contains(&t) {
                errs.push(FieldError::new(
                    format!("{prefix}.threads"),
                    format!("{t} threads: a process runs 1 to {MAX_THREADS}"),
                ));
            }
        }
        if let Some(c) = self.target_concurrency
            && !(1..=MAX_TARGET_CONCURRENCY).contains(&c)
        {
            errs.push(FieldError::new(
                format!("{prefix}.target_concurrency"),
                format!("{c} requests per replica: aim at 1 to {MAX_TARGET_CONCURRENCY}"),
            ));
        }
        if let Some(m) = self.idle_minutes
            && !(1..=24 * 60).contains(&m)
        {
            errs.push(FieldError::new(format!("{prefix}.idle_minutes"), format!("{m} minutes: say 1 to 1440")));
        }
        if self.idle_minutes.is_some() && self.min_replicas != Some(0) {
            errs.push(FieldError::new(
                format!("{prefix}.idle_minutes"),
                "only a deployment that scales to zero (--min-replicas 0) stops when idle",
            ));
        }
    }

    /// Problems against the deployment's most replicas (`miners`).
    pub fn check_against(&self, miners: u32, prefix: &str, errs: &mut Vec<FieldError>) {
        if let Some(m) = self.min_replicas
            && m > miners
        {
            errs.push(FieldError::new(
                format!("{prefix}.min_replicas"),
                format!("{m} is over the most replicas ({miners}): the fewest must be at most the most"),
            ));
        }
    }

    /// Whether the pool scales it (`--min-replicas`, `--target-concurrency`).
    pub fn autoscaled(&self) -> bool {
        self.min_replicas.is_some() || self.target_concurrency.is_some()
    }

    /// Its replicas at first: the fewest it keeps, at least one (so that it is seen to
    /// answer), or all `miners` when it is not autoscaled.
    pub fn initial_replicas(&self, miners: u32) -> u32 {
        match self.autoscaled() {
            true => self.min_replicas.unwrap_or(1).max(1).min(miners),
            false => miners,
        }
    }

    /// Requests under way per replica it aims at.
    pub fn target(&self) -> u32 {
        self.target_concurrency.unwrap_or(DEFAULT_TARGET_CONCURRENCY)
    }

    /// What the owner signs for these options: their JSON, fields in a fixed order.
    pub fn signed(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Upper bounds of the latency buckets, milliseconds (one more bucket counts what is above).
pub const LATENCY_BOUNDS_MS: [u64; 14] =
    [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000];

/// One functions host's figures of one deployment for one minute, at
/// `pool/serving-stats/<deployment>/<YYYYMMDDHH>/<MM>-<host>.json` (rewritten while the minute
/// lasts). A request counts once, in the minute it arrived.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServingMinute {
    pub deployment: String,
    /// The functions host that counted them (several share a pool's traffic).
    pub host: String,
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Every request for the deployment that reached the gateway.
    pub requests: u64,
    /// Of them, answered 5xx by a replica.
    pub replica_errors: u64,
    /// Answered 5xx by the gateway itself (no live replica, none answered).
    pub gateway_errors: u64,
    /// Refused for want of a key (a private deployment's 401s).
    pub refused: u64,
    /// Requests a replica answered, by the time to its answer's head, per
    /// [`LATENCY_BOUNDS_MS`] bucket and one over them all.
    pub latency_ms: Vec<u64>,
    /// Most requests under way at once (their answers still streaming count).
    pub max_in_flight: u64,
    /// Most live replicas seen.
    pub replicas: u32,
    /// Requests that found an autoscaled deployment at zero replicas and waited for one to start.
    #[serde(default)]
    pub cold_starts: u64,
    /// The longest such wait, in ms (from the request's arrival to a replica answering health checks).
    #[serde(default)]
    pub cold_start_ms: u64,
}

impl ServingMinute {
    /// Adds `o`'s counts to these (a minute's, or a window's).
    pub fn add(&mut self, o: &ServingMinute) {
        self.requests += o.requests;
        self.replica_errors += o.replica_errors;
        self.gateway_errors += o.gateway_errors;
        self.refused += o.refused;
        if self.latency_ms.len() < o.latency_ms.len() {
            self.latency_ms.resize(o.latency_ms.len(), 0);
        }
        for (a, b) in self.latency_ms.iter_mut().zip(&o.latency_ms) {
            *a += b;
        }
        self.max_in_flight = self.max_in_flight.max(o.max_in_flight);
        self.replicas = self.replicas.max(o.replicas);
        self.cold_starts += o.cold_starts;
        self.cold_start_ms = self.cold_start_ms.max(o.cold_start_ms);
    }

    /// The latency under which a share `q` (0..=1) of the answered requests came, in ms: the
    /// bound of the bucket it falls in (the last bound when above them all); `None` without any.
    pub fn percentile_ms(&self, q: f64) -> Option<u64> {
        let total: u64 = self.latency_ms.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.latency_ms.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_MS[i.min(LATENCY_BOUNDS_MS.len() - 1)]);
            }
        }
        None
    }
}

/// A key to a private deployment, as the pool keeps it (`pool/deploy-keys/<owner>/<scope>/<id>.json`):
/// its SHA-256 only; the key itself is shown once, when it is made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeployKey {
    /// What `aic deploy key revoke` names it by.
    pub id: String,
    /// The owner's words for it (`--label`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    /// The deployment it opens: its name, or its id when it has none.
    pub scope: String,
    /// SHA-256 of the key, hex.
    pub sha256: String,
    /// The key's last 4 characters, to tell keys apart.
    pub ends_with: String,
    pub created_at: DateTime<Utc>,
}

/// Stored at `pool/serving/<deployment>/<alloc>.json`, refreshed by a heartbeat; readers
/// drop a registration whose `heartbeat_at + ttl_seconds` has passed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServingRegistration {
    pub deployment: String,
    pub job_id: JobId,
    pub alloc: u32,
    pub host: String,
    pub port: u16,
    pub healthy: bool,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub ttl_seconds: u32,
    /// A private deployment's replica answers only requests carrying this in `X-Aic-Replica`
    /// (chosen by its worker at each start; only the pool reads registrations), so nothing on
    /// the pool's network reaches the app past the gateway's key check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
}

impl ServingRegistration {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.healthy && self.heartbeat_at + chrono::Duration::seconds(self.ttl_seconds as i64) >= now
    }
}
