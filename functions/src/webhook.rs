//! Bodies that bucket notifications arrive in over HTTP, unwrapped into S3 event records.
//!
//! - MinIO's webhook target: the S3 event JSON itself (with MinIO's extra `EventName`/`Key`).
//! - SNS HTTP(S) subscriptions (AWS, LocalStack): an envelope whose `Type` is
//!   `SubscriptionConfirmation` (confirm by fetching `SubscribeURL`), `Notification` (the S3
//!   event JSON as the string `Message`) or `UnsubscribeConfirmation`.
//!
//! # Format
//! ```json
//! {"Type":"Notification","MessageId":"…","TopicArn":"arn:aws:sns:…:aic-events",
//!  "Message":"{\"Records\":[…]}","Timestamp":"…","SignatureVersion":"1","Signature":"…",
//!  "SigningCertURL":"https://sns…/SimpleNotificationService-….pem"}
//! ```
//! Checking an SNS envelope's signature is [`crate::sns`]'s job; this module only reads the
//! shapes, and hands the envelope back for that check.

use aic_schemas::event::S3Event;
use serde::Deserialize;

/// Largest notification body read.
pub const MAX_BODY: usize = 1024 * 1024;

/// What an HTTP delivery asks of the host.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Records to hand to the functions.
    Records(S3Event),
    /// An SNS subscription to confirm by fetching `subscribe_url`.
    ConfirmSubscription { topic: String, subscribe_url: String },
    /// Nothing to do (S3's test event, an unsubscribe confirmation); the reason is for logs.
    Ignore(String),
}

/// The fields of an SNS envelope this host reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnsEnvelope {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub message_id: String,
    #[serde(default)]
    pub topic_arn: String,
    #[serde(default)]
    pub message: String,
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub signature_version: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(rename = "SigningCertURL", default)]
    pub signing_cert_url: Option<String>,
}

/// Reads a delivery body; `sns_type` is the `x-amz-sns-message-type` header, if any.
///
/// Returns an error with a reason for bodies that are neither shape (the host answers 400).
pub fn parse(body: &[u8], sns_type: Option<&str>) -> Result<Delivery, String> {
    parse_with_envelope(body, sns_type).map(|(d, _)| d)
}

/// Like [`parse`], also returning the SNS envelope (whose signature must be checked) if the
/// body is one.
pub fn parse_with_envelope(body: &[u8], sns_type: Option<&str>) -> Result<(Delivery, Option<SnsEnvelope>), String> {
    if body.len() > MAX_BODY {
        return Err(format!("notification of {} bytes is over the {MAX_BODY}-byte limit", body.len()));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let is_sns = sns_type.is_some() || value.get("Type").and_then(|t| t.as_str()).is_some();
    if !is_sns {
        return records(value).map(|d| (d, None));
    }
    let env: SnsEnvelope = serde_json::from_value(value).map_err(|e| format!("not an SNS envelope: {e}"))?;
    let delivery = match env.kind.as_str() {
        "SubscriptionConfirmation" => match &env.subscribe_url {
            Some(url) => Ok(Delivery::ConfirmSubscription { topic: env.topic_arn.clone(), subscribe_url: url.clone() }),
            None => Err("SubscriptionConfirmation without SubscribeURL".into()),
        },
        "Notification" => {
            let inner: serde_json::Value =
                serde_json::from_str(&env.message).map_err(|e| format!("SNS message is not JSON: {e}"))?;
            records(inner)
        }
        "UnsubscribeConfirmation" => Ok(Delivery::Ignore(format!("unsubscribed from {}", env.topic_arn))),
        other => Err(format!("unknown SNS message type {other:?}")),
    }?;
    Ok((delivery, Some(env)))
}

fn records(value: serde_json::Value) -> Result<Delivery, String> {
    // S3 sends {"Event":"s3:TestEvent"} when a notification is configured.
    if value.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(Delivery::Ignore("S3 test event".into()));
    }
    let ev: S3Event = serde_json::from_value(value).map_err(|e| format!("not an S3 event: {e}"))?;
    if ev.records.is_empty() {
        return Ok(Delivery::Ignore("no records".into()));
    }
    Ok(Delivery::Records(ev))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"aic"},"object":{"key":"users/0xab/jobs/j/request.json","size":812}}}"#;

    #[test]
    fn a_minio_webhook_body_is_its_records() {
        let body = format!(
            r#"{{"EventName":"s3:ObjectCreated:Put","Key":"aic/users/0xab/jobs/j/request.json","Records":[{RECORD}]}}"#
        );
        match parse(body.as_bytes(), None).unwrap() {
            Delivery::Records(ev) => assert_eq!(ev.records[0].key(), "users/0xab/jobs/j/request.json"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_sns_notification_carries_the_s3_event_as_a_string() {
        let message = serde_json::to_string(&format!(r#"{{"Records":[{RECORD}]}}"#)).unwrap();
        let body = format!(
            r#"{{"Type":"Notification","MessageId":"m1","TopicArn":"arn:aws:sns:us-east-1:000000000000:aic","Message":{message},"SignatureVersion":"1","Signature":"c2ln","SigningCertURL":"http://localhost/cert.pem"}}"#
        );
        match parse(body.as_bytes(), Some("Notification")).unwrap() {
            Delivery::Records(ev) => assert_eq!(ev.records.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subscriptions_are_confirmed_and_test_events_ignored() {
        let body = r#"{"Type":"SubscriptionConfirmation","TopicArn":"arn:aws:sns:us-east-1:000000000000:aic","Message":"You have chosen to subscribe","SubscribeURL":"http://localhost:4566/?Action=ConfirmSubscription&Token=t"}"#;
        assert_eq!(
            parse(body.as_bytes(), Some("SubscriptionConfirmation")).unwrap(),
            Delivery::ConfirmSubscription {
                topic: "arn:aws:sns:us-east-1:000000000000:aic".into(),
                subscribe_url: "http://localhost:4566/?Action=ConfirmSubscription&Token=t".into()
            }
        );
        assert!(matches!(parse(br#"{"Event":"s3:TestEvent","Bucket":"aic"}"#, None).unwrap(), Delivery::Ignore(_)));
    }

    #[test]
    fn bodies_of_no_known_shape_are_refused_with_a_reason() {
        assert!(parse(b"nope", None).unwrap_err().starts_with("not JSON"));
        assert!(parse(br#"{"Records":"x"}"#, None).unwrap_err().starts_with("not an S3 event"));
        assert!(parse(br#"{"Type":"Weird"}"#, Some("Weird")).unwrap_err().contains("unknown SNS message type"));
        assert!(parse(&vec![b' '; MAX_BODY + 1], None).unwrap_err().contains("limit"));
    }
}
