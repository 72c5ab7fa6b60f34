//! Worker grants: what one job's workers may reach in the bucket, as a token the pool's
//! gateway signs and checks, so that workers on miners hold no store credentials.
//!
//! A token is `w1.<hex of the grant's JSON>.<HMAC-SHA256>`, made with the gateway's secret
//! when the job is placed and handed to its workers (`AIC_WORKER_TOKEN`, beside
//! `AIC_WORKER_GATEWAY`). The gateway lets its bearer read the job's prefix and its dataset,
//! write the job's logs, outputs, status, allocation records and rendezvous (not its request,
//! manifest or code), and register the job's serving replicas — nothing else.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use aic_schemas::{Address, JobId, JobManifest};

use crate::layout::JobKey;

/// Extra validity beyond the job's own hours: time spent queued, the last uploads.
pub const GRACE_HOURS: i64 = 24;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerGrant {
    pub owner: Address,
    pub job: JobId,
    /// The dataset the job reads (`users/<owner>/data/<data>/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// How many allocations share the token (the gateway's rate limit scales with it).
    #[serde(default)]
    pub allocs: u32,
    /// Unix seconds after which the token is refused.
    pub exp: i64,
}

impl WorkerGrant {
    /// The grant for `job`, valid for its hours plus [`GRACE_HOURS`] from `now`.
    pub fn for_job(job: &JobKey, m: &JobManifest, now: DateTime<Utc>) -> Self {
        let hours = (m.request.max_hours.ceil() as i64).max(1) + GRACE_HOURS;
        WorkerGrant {
            owner: job.owner,
            job: job.job.clone(),
            data: m.request.data.clone(),
            allocs: m.request.miners,
            exp: (now + chrono::Duration::hours(hours)).timestamp(),
        }
    }

    pub fn job_key(&self) -> JobKey {
        JobKey::new(self.owner, self.job.clone())
    }
}

fn mac(secret: &[u8], body: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    m.update(b"worker|");
    m.update(body.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// Whether `got` (hex: the first `hex_len / 2` bytes of the MAC, `hex_len` characters) is the
/// HMAC-SHA256 of `parts` under `secret`. Compared in constant time by `hmac` itself
/// (`verify_truncated_left`), never by hand.
pub fn mac_matches(secret: &[u8], parts: &[&[u8]], got: &str, hex_len: usize) -> bool {
    if got.len() != hex_len {
        return false;
    }
    let Ok(got) = hex::decode(got) else { return false };
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    for p in parts {
        m.update(p);
    }
    m.verify_truncated_left(&got).is_ok()
}

/// The token for `grant`, signed with `secret`.
pub fn mint(secret: &[u8], grant: &WorkerGrant) -> String {
    let body = format!("w1.{}", hex::encode(serde_json::to_vec(grant).expect("a grant serializes")));
    let m = mac(secret, &body);
    format!("{body}.{m}")
}

/// Whether `token` looks like a worker token (rather than a user's session).
pub fn is_worker_token(token: &str) -> bool {
    token.starts_with("w1.")
}

/// The grant of a valid, unexpired token, or why not.
pub fn verify(secret: &[u8], token: &str, now: DateTime<Utc>) -> Result<WorkerGrant, String> {
    let (body, got) = token.rsplit_once('.').ok_or("malformed worker token")?;
    if !mac_matches(secret, &[b"worker|", body.as_bytes()], got, 64) {
        return Err("worker token is not valid".into());
    }
    let hexed = body.strip_prefix("w1.").ok_or("malformed worker token")?;
    let json = hex::decode(hexed).map_err(|_| "malformed worker token")?;
    let grant: WorkerGrant = serde_json::from_slice(&json).map_err(|_| "malformed worker token")?;
    if grant.exp <= now.timestamp() {
        return Err(format!("the worker token of job {} expired", grant.job));
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mac_matches_only_whole_or_truncated_to_the_asked_length() {
        use hmac::Mac;
        let mut m = super::Hmac::<super::Sha256>::new_from_slice(b"k").unwrap();
        m.update(b"a|b");
        let full = hex::encode(m.finalize().into_bytes());
        assert!(super::mac_matches(b"k", &[b"a|", b"b"], &full, 64));
        assert!(super::mac_matches(b"k", &[b"a|b"], &full[..24], 24));
        assert!(!super::mac_matches(b"k", &[b"a|b"], &full[..24], 64), "shorter than asked");
        assert!(!super::mac_matches(b"k", &[b"a|b"], &full[..23], 23), "not whole bytes");
        assert!(!super::mac_matches(b"other", &[b"a|b"], &full, 64));
        let mut wrong = full.clone().into_bytes();
        wrong[63] = if wrong[63] == b'0' { b'1' } else { b'0' };
        assert!(!super::mac_matches(b"k", &[b"a|b"], std::str::from_utf8(&wrong).unwrap(), 64));
    }

    use super::*;

    #[test]
    fn tokens_verify_only_unchanged_unexpired_and_with_the_same_secret() {
        let g = WorkerGrant {
            owner: "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap(),
            job: JobId::generate(),
            data: Some("digits.v2".into()),
            allocs: 2,
            exp: Utc::now().timestamp() + 60,
        };
        let t = mint(b"0123456789abcdef", &g);
        assert!(is_worker_token(&t));
        assert_eq!(verify(b"0123456789abcdef", &t, Utc::now()).unwrap(), g);
        assert!(verify(b"another secret!!", &t, Utc::now()).unwrap_err().contains("not valid"));
        let later = Utc::now() + chrono::Duration::seconds(120);
        assert!(verify(b"0123456789abcdef", &t, later).unwrap_err().contains("expired"));
        // Changing the grant (another job) breaks the MAC.
        let other = WorkerGrant { job: JobId::generate(), ..g.clone() };
        let forged = format!("{}.{}", mint(b"x", &other).rsplit_once('.').unwrap().0, t.rsplit_once('.').unwrap().1);
        assert!(verify(b"0123456789abcdef", &forged, Utc::now()).is_err());
    }
}

/// Where a pool's workers reach the bucket instead of holding its credentials: the gateway's
/// URL (as the miners reach it) and the secret its tokens are signed with.
#[derive(Clone)]
pub struct WorkerGateway {
    pub url: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for WorkerGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerGateway").field("url", &self.url).finish_non_exhaustive()
    }
}

impl WorkerGateway {
    /// A token for the workers of `job`.
    pub fn token(&self, job: &JobKey, m: &JobManifest, now: DateTime<Utc>) -> String {
        mint(&self.secret, &WorkerGrant::for_job(job, m, now))
    }

    /// The variables a worker of `job` gets: the gateway and its job's token.
    pub fn env(&self, job: &JobKey, m: &JobManifest, now: DateTime<Utc>) -> [(String, String); 2] {
        [
            ("AIC_WORKER_GATEWAY".into(), self.url.clone()),
            ("AIC_WORKER_TOKEN".into(), mint(&self.secret, &WorkerGrant::for_job(job, m, now))),
        ]
    }
}

/// Variables a worker (and so the user's program) must never inherit from the process that
/// starts it: the pool's secrets and, when workers go through the gateway, the store's
/// credentials.
pub const NEVER_INHERITED: &[&str] = &[
    "AIC_GATEWAY_SECRET",
    "AIC_WEBHOOK_TOKEN",
    "AIC_PRIVATE_KEY",
    "AIC_KEYSTORE_PASSWORD",
    "AIC_SETTLER_KEY",
    "NOMAD_TOKEN",
    "AIC_SECRETS_KEY",
    "AIC_SECRETS_ID",
];

/// Whether `key` is one of the store's location or credential variables.
pub fn is_store_variable(key: &str) -> bool {
    key.starts_with("AWS_") || key == "AIC_STORE" || key == "AIC_S3_ENDPOINT"
}
