//! AWS Lambda transports: the same handlers, reached from S3 event notifications (validate,
//! dispatch, settle) and from a Lambda function URL (the gateway). The binaries
//! `aic-lambda-validate`, `aic-lambda-dispatch`, `aic-lambda-settle` and `aic-lambda-gateway`
//! wrap these in `lambda_runtime`; `infra/aws/template.yaml` wires them to the bucket.
//!
//! Work that cannot be done yet (a payment awaiting confirmations, an outage) is kept in the
//! bucket (`crate::redrive`) and driven again by `aic-lambda-redrive`, which EventBridge runs
//! every minute ([`redrive`]): Lambda's own retries of an asynchronous S3 invocation stop
//! after two (1 and 2 minutes apart). An invocation returns an error, for Lambda to retry,
//! only when that record could not be written.

use std::net::{IpAddr, Ipv4Addr};

use aic_core::layout::{KeyKind, classify};
use aic_schemas::event::S3Event;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{Value, json};

use crate::gateway::{Gateway, MAX_BODY};
use crate::{Ctx, handle_record};

/// Which records a function takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Function {
    Validate,
    Dispatch,
    /// The status snapshot: settles a job's paid run once it has ended.
    Settle,
}

impl Function {
    fn takes(self, key: &str) -> bool {
        matches!(
            (self, classify(key)),
            (Function::Validate, KeyKind::Request(_) | KeyKind::ResumeRequest(..))
                | (Function::Dispatch, KeyKind::Manifest(_))
                | (Function::Settle, KeyKind::StatusSnapshot(_))
        )
    }
}

/// Handles an S3 notification event. `Err` makes Lambda deliver it again.
pub async fn s3_event(ctx: &Ctx, f: Function, payload: Value) -> Result<Value, String> {
    if !payload.get("Records").is_some_and(|r| r.is_array()) {
        return Err("not an S3 event: no Records".into());
    }
    let ev: S3Event = serde_json::from_value(payload).map_err(|e| format!("not an S3 event: {e}"))?;
    let mut outcomes = Vec::new();
    for r in &ev.records {
        if !f.takes(&r.key()) {
            outcomes.push(json!({"key": r.key(), "outcome": "ignored"}));
            continue;
        }
        match handle_record(ctx, r).await {
            Ok(out) => outcomes.push(json!({"key": r.key(), "outcome": format!("{out:?}")})),
            // Kept and driven again by `aic-lambda-redrive` (Lambda itself retries twice, then
            // drops the event); only when that cannot be recorded does Lambda retry.
            Err(e) => {
                crate::redrive::defer(&ctx.store, &r.key(), &e.to_string())
                    .await
                    .map_err(|se| format!("{}: {e}; and it could not be kept for later: {se}", r.key()))?;
                outcomes.push(json!({"key": r.key(), "outcome": "deferred", "why": e.to_string()}));
            }
        }
    }
    Ok(json!({ "records": outcomes }))
}

/// Answers a function-URL (payload format 2.0) request with the gateway.
pub async fn function_url(gw: &Gateway, payload: Value) -> Value {
    let reply = |code: u16, body: Value| {
        let mut headers = json!({"content-type": "application/json"});
        if let Some(secs) = crate::gateway::retry_after_of(&body) {
            headers["retry-after"] = json!(secs);
        }
        json!({"statusCode": code, "headers": headers, "body": body.to_string()})
    };
    let method: Method =
        payload["requestContext"]["http"]["method"].as_str().unwrap_or("GET").parse().unwrap_or(Method::GET);
    let path = payload["rawPath"].as_str().unwrap_or("/");
    let query = payload["rawQueryString"].as_str().filter(|q| !q.is_empty());
    let peer: IpAddr = payload["requestContext"]["http"]["sourceIp"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut headers = HeaderMap::new();
    if let Some(h) = payload["headers"].as_object() {
        for (k, v) in h {
            if let (Ok(k), Some(Ok(v))) = (HeaderName::from_bytes(k.as_bytes()), v.as_str().map(HeaderValue::from_str))
            {
                headers.insert(k, v);
            }
        }
    }
    if let Err(e) = gw.precheck(&headers) {
        return reply(e.0.as_u16(), json!({"error": e.1}));
    }
    let raw = payload["body"].as_str().unwrap_or("");
    let body = if payload["isBase64Encoded"].as_bool() == Some(true) {
        match base64::engine::general_purpose::STANDARD.decode(raw) {
            Ok(b) => Bytes::from(b),
            Err(_) => return reply(400, json!({"error": "body is not base64"})),
        }
    } else {
        Bytes::copy_from_slice(raw.as_bytes())
    };
    if body.len() > MAX_BODY {
        return reply(413, json!({"error": format!("request body over the gateway's {MAX_BODY}-byte limit")}));
    }
    if !path.starts_with("/v1/") {
        return reply(404, json!({"error": "no such endpoint"}));
    }
    let (code, v) = gw.call(peer, &method, path, query, &headers, body).await;
    reply(code.as_u16(), v)
}

/// Runs an S3-event function under `lambda_runtime`.
pub async fn run_s3(f: Function) -> Result<(), lambda_runtime::Error> {
    crate::secrets::load().await.map_err(|e| format!("{e:#}"))?;
    let built = crate::config::build().map_err(|e| format!("{e:#}"))?;
    let ctx = built.ctx;
    lambda_runtime::run(lambda_runtime::service_fn(move |ev: lambda_runtime::LambdaEvent<Value>| {
        let ctx = ctx.clone();
        async move { s3_event(&ctx, f, ev.payload).await.map_err(lambda_runtime::Error::from) }
    }))
    .await
}

/// Runs the re-driver under `lambda_runtime`: one pass per (scheduled) invocation.
pub async fn run_redrive() -> Result<(), lambda_runtime::Error> {
    crate::secrets::load().await.map_err(|e| format!("{e:#}"))?;
    let built = crate::config::build().map_err(|e| format!("{e:#}"))?;
    let ctx = built.ctx;
    lambda_runtime::run(lambda_runtime::service_fn(move |_: lambda_runtime::LambdaEvent<Value>| {
        let ctx = ctx.clone();
        async move { redrive(&ctx).await.map_err(lambda_runtime::Error::from) }
    }))
    .await
}

/// Runs the gateway under `lambda_runtime` (function URL events).
pub async fn run_gateway() -> Result<(), lambda_runtime::Error> {
    crate::secrets::load().await.map_err(|e| format!("{e:#}"))?;
    let built = crate::config::build().map_err(|e| format!("{e:#}"))?;
    let mut cfg = crate::config::gateway(&built)
        .map_err(|e| format!("{e:#}"))?
        .ok_or("AIC_GATEWAY_SECRET is not set: the gateway needs its token key")?;
    // Invocations share no memory: watchers read the stored chunks.
    cfg.live = false;
    let gw = std::sync::Arc::new(Gateway::new(cfg, built.ctx.clone(), None));
    lambda_runtime::run(lambda_runtime::service_fn(move |ev: lambda_runtime::LambdaEvent<Value>| {
        let gw = gw.clone();
        async move { Ok::<Value, lambda_runtime::Error>(function_url(&gw, ev.payload).await) }
    }))
    .await
}

/// One pass over the deferred work (the scheduled `aic-lambda-redrive`).
pub async fn redrive(ctx: &Ctx) -> Result<Value, String> {
    let p = crate::redrive::Redriver::new(ctx.clone()).pass().await.map_err(|e| e.to_string())?;
    Ok(json!({
        "done": p.done.iter().map(|(k, o)| json!({"key": k, "outcome": format!("{o:?}")})).collect::<Vec<_>>(),
        "again": p.again,
        "waiting": p.waiting,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_function_takes_its_own_keys() {
        let job = "users/0x70997970c51812dc3a010c7d01b50e0d17dc79c8/jobs/01kbx8m3s2q4fz3x9m2w5a7c8d";
        assert!(Function::Validate.takes(&format!("{job}/request.json")));
        assert!(!Function::Validate.takes(&format!("{job}/manifest.json")));
        assert!(Function::Dispatch.takes(&format!("{job}/manifest.json")));
        assert!(!Function::Dispatch.takes(&format!("{job}/status/00000001.json")));
        assert!(Function::Settle.takes(&format!("{job}/status.json")));
        assert!(!Function::Settle.takes(&format!("{job}/status/00000001.json")));
    }
}
