//! The bucket through a pool's gateway, for callers that hold no store credentials: `aic` in
//! pool mode (a user's session token) and `aic-worker` on a miner (its job's worker token).
//!
//! [`GatewayStore`] is an `object_store::ObjectStore` whose every call goes through the
//! gateway: listings are gateway calls; reads and writes use presigned URLs the gateway signs
//! for what the caller may reach, sent straight to S3 (data never passes through the
//! gateway). PUTs are bound to the content's SHA-256, create-only writes carry a signed
//! `If-None-Match: *`, and large files go up part by part.
//!
//! This module: the gateway client ([`Gateway`]) and its errors; `store`: the
//! `ObjectStore` over it; `multipart`: uploads part by part through presigned URLs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use serde_json::{Value, json};
use sha2::Digest;

use crate::store::prefix_path;
use aic_schemas::gateway::{ListedObject, Listing, MultipartRequest, SignItem, SignRequest, SignResponse, SignedUrl};

mod multipart;
mod store;

pub use store::GatewayStore;

const STORE: &str = "gateway";

/// Talks to a gateway's API.
#[derive(Clone, Debug)]
pub struct Gateway {
    pub base: String,
    token: Option<String>,
    pub(crate) http: reqwest::Client,
}

fn err(e: impl std::fmt::Display) -> object_store::Error {
    object_store::Error::Generic { store: STORE, source: e.to_string().into() }
}

impl Gateway {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Gateway {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder().timeout(Duration::from_secs(120)).build().expect("an HTTP client builds"),
        }
    }

    /// Calls `/v1/<path>`; a refusal becomes an error with the gateway's reason. Asked to
    /// slow down (429), it waits as told and calls again (10 times at most).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut tries = 0;
        loop {
            match self.call_once(method.clone(), path, body.clone()).await {
                Err(e) if tries < 10 && e.downcast_ref::<GatewayError>().is_some_and(|g| g.status == 429) => {
                    tries += 1;
                    let wait = e.downcast_ref::<GatewayError>().and_then(|g| g.retry_after);
                    tokio::time::sleep(
                        wait.unwrap_or(Duration::from_secs(1)).clamp(Duration::from_millis(50), MAX_WAIT),
                    )
                    .await;
                }
                r => return r,
            }
        }
    }

    async fn call_once(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut rb = self.http.request(method, format!("{}/v1/{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.map_err(|e| anyhow::anyhow!("cannot reach the gateway at {}: {e}", self.base))?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let why = v["error"].as_str().unwrap_or("no reason given");
            return Err(GatewayError { status: status.as_u16(), reason: why.to_string(), retry_after }.into());
        }
        Ok(v)
    }
}

/// The longest a 429 is waited out before calling again.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// How long an answer's `Retry-After` header (seconds, RFC 9110 §10.2.3) says to wait.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// A gateway's refusal.
#[derive(Debug, thiserror::Error)]
#[error("the gateway refused ({status}): {reason}")]
pub struct GatewayError {
    pub status: u16,
    pub reason: String,
    /// What its `Retry-After` said (a 429's wait, a 503's).
    pub retry_after: Option<Duration>,
}

fn to_store_err(path: &str, e: anyhow::Error) -> object_store::Error {
    match e.downcast::<GatewayError>() {
        Ok(g) if g.status == 403 => object_store::Error::PermissionDenied { path: path.into(), source: g.into() },
        Ok(g) if g.status == 401 => object_store::Error::Unauthenticated { path: path.into(), source: g.into() },
        Ok(g) => err(g),
        Err(e) => err(format!("{e:#}")),
    }
}

/// A multipart step's body.
fn step(action: &str, key: &str, upload_id: Option<&str>) -> MultipartRequest {
    MultipartRequest {
        action: action.into(),
        key: key.into(),
        upload_id: upload_id.map(String::from),
        part: None,
        size: None,
        parts: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_says_how_long_to_wait_in_its_retry_after_header() {
        let h = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            h
        };
        assert_eq!(retry_after(&h("2")), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(&h("Wed, 21 Oct 2015 07:28:00 GMT")), None, "a date: waited as none");
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);
    }
}
