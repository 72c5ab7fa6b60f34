//! S3 event notifications, the shape AWS S3, MinIO and LocalStack send.
//!
//! # Format
//! ```json
//! {"Records":[{"eventName":"ObjectCreated:Put",
//!   "s3":{"bucket":{"name":"aic"},"object":{"key":"users/0xab../request.json","size":812}}}]}
//! ```
//! Keys arrive URL-encoded (`+` for a space); [`S3EventRecord::key`] decodes them.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct S3Event {
    #[serde(rename = "Records", default)]
    pub records: Vec<S3EventRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3EventRecord {
    #[serde(default)]
    pub event_version: Option<String>,
    #[serde(default)]
    pub event_source: Option<String>,
    #[serde(default)]
    pub event_time: Option<String>,
    pub event_name: String,
    pub s3: S3Entity,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct S3Entity {
    pub bucket: S3Bucket,
    pub object: S3Object,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct S3Bucket {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Object {
    pub key: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub e_tag: Option<String>,
    #[serde(default)]
    pub sequencer: Option<String>,
}

impl S3EventRecord {
    /// A record for an object written at `key` (used by the local event spool and tests).
    pub fn object_created(bucket: &str, key: &str, size: u64) -> Self {
        S3EventRecord {
            event_version: Some("2.1".into()),
            event_source: Some("aic:local".into()),
            event_time: Some(chrono::Utc::now().to_rfc3339()),
            event_name: "ObjectCreated:Put".into(),
            s3: S3Entity {
                bucket: S3Bucket { name: bucket.into() },
                object: S3Object { key: encode_key(key), size: Some(size), e_tag: None, sequencer: None },
            },
        }
    }

    pub fn is_object_created(&self) -> bool {
        self.event_name.starts_with("ObjectCreated") || self.event_name.starts_with("s3:ObjectCreated")
    }

    /// The object key, URL-decoded.
    pub fn key(&self) -> String {
        decode_key(&self.s3.object.key)
    }
}

/// Decodes an S3 event key: `+` is a space, `%XX` a byte.
pub fn decode_key(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes a key the way S3 event notifications do.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_event_encoding() {
        for k in ["users/0xab/jobs/x/request.json", "users/0xab/data/my file+1%.csv", "ü/€"] {
            assert_eq!(decode_key(&encode_key(k)), k);
        }
        assert_eq!(decode_key("a+b%2Fc%"), "a b/c%");
    }

    #[test]
    fn parses_a_minio_style_event() {
        let raw = r#"{"EventName":"s3:ObjectCreated:Put","Key":"aic/users/x","Records":[{"eventVersion":"2.0","eventSource":"minio:s3","awsRegion":"","eventTime":"2026-01-01T00:00:00.000Z","eventName":"s3:ObjectCreated:Put","userIdentity":{"principalId":"minio"},"s3":{"s3SchemaVersion":"1.0","configurationId":"Config","bucket":{"name":"aic","ownerIdentity":{"principalId":"minio"},"arn":"arn:aws:s3:::aic"},"object":{"key":"users%2F0xab%2Fjobs%2Fj%2Frequest.json","size":10,"eTag":"abc","sequencer":"17"}}}]}"#;
        let ev: S3Event = serde_json::from_str(raw).unwrap();
        assert!(ev.records[0].is_object_created());
        assert_eq!(ev.records[0].key(), "users/0xab/jobs/j/request.json");
    }
}
