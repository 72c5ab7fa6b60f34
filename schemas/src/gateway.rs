//! The gateway API's bodies: what `aic-functions`' gateway takes and answers, and what its
//! clients (`aic` in pool mode, `aic-worker` with a job token) send and read.
//!
//! # Format
//! ```json
//! POST /v1/sign       {"items": [{"method": "PUT", "key": "users/0x…/data/d/x.csv", "size": 5, "sha256": "…"}]}
//!                  →  {"urls": [{"url": "https://…", "method": "PUT", "headers": {"x-amz-checksum-sha256": "…"}}], "expires_in": 900}
//! GET  /v1/objects →  {"objects": [{"key": "…", "size": 5, "last_modified": "…", "e_tag": "…"}], "prefixes": []}
//! POST /v1/multipart  {"action": "create" | "part" | "complete" | "abort", "key": "…", "upload_id": "…", "part": 0, "parts": ["etag"]}
//!                  →  {"upload_id": "…"} | {"url": "…"} | {"ok": true}
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `POST /v1/sign`: presigned URLs for these objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SignRequest {
    pub items: Vec<SignItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SignItem {
    /// GET, HEAD, PUT or DELETE.
    pub method: String,
    pub key: String,
    /// The content's size, for a PUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SHA-256 of the content, hex: PUT URLs are bound to it (S3 checks
    /// `x-amz-checksum-sha256`), so a URL writes that content and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Create-only: the URL carries a signed `If-None-Match: *`, so S3 refuses (412) to
    /// replace an existing object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create: bool,
}

impl SignItem {
    /// A GET, HEAD or DELETE of `key`.
    pub fn of(method: &str, key: &str) -> SignItem {
        SignItem { method: method.into(), key: key.into(), size: None, sha256: None, create: false }
    }
}

/// The answer to [`SignRequest`]: one URL an item, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SignResponse {
    pub urls: Vec<SignedUrl>,
    /// Seconds the URLs stay valid.
    pub expires_in: u64,
}

/// A presigned URL and the headers that must go with it (they are part of its signature).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SignedUrl {
    pub url: String,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `GET /v1/objects`: objects (and, with `delimiter`, folders) under a prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Listing {
    pub objects: Vec<ListedObject>,
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// A paged listing (`max`) left more after these.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
    pub e_tag: Option<String>,
}

/// `POST /v1/multipart`: one step of a large upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultipartRequest {
    /// `create`, `part` (a URL for part `part`), `complete` (with the parts' ETags) or `abort`.
    pub action: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// 0-based.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<usize>,
    /// With `part`: its size in bytes, which its URL then binds (needed for a dataset's parts
    /// where the pool has a storage quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_item_round_trips_and_optional_fields_stay_out() {
        let get = serde_json::to_value(SignItem::of("GET", "k")).unwrap();
        assert_eq!(get, serde_json::json!({"method": "GET", "key": "k"}));
        let put = SignItem { size: Some(5), sha256: Some("ab".into()), create: true, ..SignItem::of("PUT", "k") };
        let back: SignItem = serde_json::from_value(serde_json::to_value(&put).unwrap()).unwrap();
        assert_eq!(back, put);
    }
}
