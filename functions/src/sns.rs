//! Checking that an SNS delivery really comes from SNS, and from our topic.
//!
//! An SNS HTTP delivery is signed: the canonical string of its fields (fixed order, `Key\nValue\n`)
//! is signed with RSA PKCS#1 v1.5 over SHA-1 (`SignatureVersion` 1) or SHA-256 (2), and
//! `SigningCertURL` names the certificate. The host accepts a delivery only when
//! - its `TopicArn` is one the operator named (anyone can create a topic and have SNS sign
//!   for it, so a good signature alone proves nothing about the sender);
//! - the certificate URL is on an allowed origin (`https://sns.<region>.amazonaws.com/…pem` by
//!   default; LocalStack's own origin when the operator adds it), so nobody can point us at a
//!   certificate of their own;
//! - the signature over the canonical string verifies with that certificate's key.
//!
//! Certificates are fetched once per URL and kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use base64::Engine;
use x509_cert::Certificate;
use x509_cert::der::DecodePem;

use crate::webhook::SnsEnvelope;

/// Largest certificate fetched.
const MAX_CERT: usize = 64 * 1024;

pub struct SnsVerifier {
    topics: Vec<String>,
    cert_origins: Vec<String>,
    http: reqwest::Client,
    keys: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl SnsVerifier {
    /// `topics`: the topic ARNs whose deliveries are taken. `extra_cert_origins`: URL prefixes
    /// besides AWS's own that may serve signing certificates (e.g. `http://127.0.0.1:4566/_aws/sns/`).
    pub fn new(topics: Vec<String>, extra_cert_origins: Vec<String>) -> Self {
        SnsVerifier {
            topics,
            cert_origins: extra_cert_origins,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("an HTTP client builds"),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// From `AIC_SNS_TOPICS` and `AIC_SNS_CERT_ORIGINS` (comma-separated); `None` when no
    /// topic is named (the host then refuses SNS deliveries, saying so).
    pub fn from_env() -> Option<Self> {
        let list = |k: &str| -> Vec<String> {
            std::env::var(k)
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let topics = list("AIC_SNS_TOPICS");
        (!topics.is_empty()).then(|| SnsVerifier::new(topics, list("AIC_SNS_CERT_ORIGINS")))
    }

    fn cert_url_allowed(&self, url: &str) -> bool {
        if self.cert_origins.iter().any(|o| url.starts_with(o.as_str())) {
            return true;
        }
        let Ok(u) = url::Url::parse(url) else { return false };
        let host = u.host_str().unwrap_or("");
        // `sns.<region>.amazonaws.com(.cn)`, the region one label of letters, digits and
        // hyphens (the AWS SDKs' message validators: `^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$`).
        // Anything more is someone else's: `sns.s3.<region>.amazonaws.com` is the S3 bucket
        // named `sns`, whoever owns it.
        let region = host
            .strip_prefix("sns.")
            .and_then(|h| h.strip_suffix(".amazonaws.com").or_else(|| h.strip_suffix(".amazonaws.com.cn")));
        let region_ok =
            region.is_some_and(|r| r.len() >= 3 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        u.scheme() == "https" && region_ok && u.port().is_none() && u.path().ends_with(".pem")
    }

    async fn key(&self, url: &str) -> Result<Arc<Vec<u8>>, String> {
        if let Some(k) = self.keys.lock().unwrap().get(url) {
            return Ok(k.clone());
        }
        let resp = self.http.get(url).send().await.map_err(|e| format!("cannot fetch the signing certificate: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("the signing certificate URL answered {}", resp.status()));
        }
        let pem = resp.bytes().await.map_err(|e| format!("reading the signing certificate: {e}"))?;
        if pem.len() > MAX_CERT {
            return Err("the signing certificate is too large".into());
        }
        let key = Arc::new(public_key(&pem)?);
        self.keys.lock().unwrap().insert(url.to_string(), key.clone());
        Ok(key)
    }

    /// `Ok` when the envelope is from an allowed topic and its signature verifies.
    pub async fn verify(&self, env: &SnsEnvelope) -> Result<(), String> {
        if !self.topics.iter().any(|t| t == &env.topic_arn) {
            return Err(format!("SNS topic {:?} is not one this host serves (AIC_SNS_TOPICS)", env.topic_arn));
        }
        let url = env.signing_cert_url.as_deref().ok_or("SNS delivery without SigningCertURL")?;
        if !self.cert_url_allowed(url) {
            return Err(format!("SigningCertURL {url:?} is not an allowed certificate origin"));
        }
        let sig = env.signature.as_deref().ok_or("SNS delivery without Signature")?;
        let sig = base64::engine::general_purpose::STANDARD.decode(sig).map_err(|_| "SNS Signature is not base64")?;
        let alg: &'static dyn signature::VerificationAlgorithm = match env.signature_version.as_deref() {
            Some("1") | None => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            Some("2") => &signature::RSA_PKCS1_2048_8192_SHA256,
            Some(v) => return Err(format!("unknown SNS SignatureVersion {v:?}")),
        };
        let key = self.key(url).await?;
        UnparsedPublicKey::new(alg, key.as_slice())
            .verify(canonical(env)?.as_bytes(), &sig)
            .map_err(|_| "SNS signature does not verify".to_string())
    }
}

/// The RSA public key (PKCS#1 DER) of a PEM certificate.
pub fn public_key(pem: &[u8]) -> Result<Vec<u8>, String> {
    let cert = Certificate::from_pem(pem).map_err(|e| format!("the signing certificate is not PEM X.509: {e}"))?;
    let spki = &cert.tbs_certificate.subject_public_key_info;
    spki.subject_public_key
        .as_bytes()
        .map(|b| b.to_vec())
        .ok_or_else(|| "the signing certificate's key is not a whole number of bytes".into())
}

/// The string SNS signs, per message type.
pub fn canonical(env: &SnsEnvelope) -> Result<String, String> {
    let mut out = String::new();
    let mut add = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            out.push_str(k);
            out.push('\n');
            out.push_str(v);
            out.push('\n');
        }
    };
    match env.kind.as_str() {
        "Notification" => {
            add("Message", Some(&env.message));
            add("MessageId", Some(&env.message_id));
            add("Subject", env.subject.as_deref());
            add("Timestamp", Some(&env.timestamp));
            add("TopicArn", Some(&env.topic_arn));
            add("Type", Some(&env.kind));
        }
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
            add("Message", Some(&env.message));
            add("MessageId", Some(&env.message_id));
            add("SubscribeURL", env.subscribe_url.as_deref());
            add("Timestamp", Some(&env.timestamp));
            add("Token", env.token.as_deref());
            add("TopicArn", Some(&env.topic_arn));
            add("Type", Some(&env.kind));
        }
        other => return Err(format!("unknown SNS message type {other:?}")),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kind: &str) -> SnsEnvelope {
        serde_json::from_value(serde_json::json!({
            "Type": kind, "MessageId": "m", "TopicArn": "arn:t", "Message": "hi", "Timestamp": "2026-01-01T00:00:00.000Z",
            "Token": "tok", "SubscribeURL": "http://x/confirm",
        }))
        .unwrap()
    }

    #[test]
    fn canonical_strings_follow_the_documented_field_order() {
        assert_eq!(
            canonical(&env("Notification")).unwrap(),
            "Message\nhi\nMessageId\nm\nTimestamp\n2026-01-01T00:00:00.000Z\nTopicArn\narn:t\nType\nNotification\n"
        );
        assert_eq!(
            canonical(&env("SubscriptionConfirmation")).unwrap(),
            "Message\nhi\nMessageId\nm\nSubscribeURL\nhttp://x/confirm\nTimestamp\n2026-01-01T00:00:00.000Z\nToken\ntok\nTopicArn\narn:t\nType\nSubscriptionConfirmation\n"
        );
    }

    #[test]
    fn only_aws_sns_hosts_or_named_origins_may_serve_certificates() {
        let v = SnsVerifier::new(vec!["arn:t".into()], vec!["http://127.0.0.1:4566/_aws/sns/".into()]);
        assert!(v.cert_url_allowed("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem"));
        assert!(v.cert_url_allowed("http://127.0.0.1:4566/_aws/sns/SimpleNotificationService-x.pem"));
        assert!(!v.cert_url_allowed("http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem"));
        assert!(!v.cert_url_allowed("https://sns.us-east-1.amazonaws.com.evil.com/x.pem"));
        assert!(!v.cert_url_allowed("https://evil.com/sns.amazonaws.com/x.pem"));
        // The S3 bucket `sns` (virtual-hosted), and other hosts that only end like SNS's.
        assert!(!v.cert_url_allowed("https://sns.s3.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem"));
        assert!(!v.cert_url_allowed("https://sns.x.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem"));
        assert!(!v.cert_url_allowed("https://sns.amazonaws.com/SimpleNotificationService-abc.pem"));
        assert!(v.cert_url_allowed("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem"));
    }

    #[tokio::test]
    async fn a_foreign_topic_is_refused_before_anything_is_fetched() {
        let v = SnsVerifier::new(vec!["arn:mine".into()], vec![]);
        let err = v.verify(&env("Notification")).await.unwrap_err();
        assert!(err.contains("not one this host serves"), "{err}");
    }
}
