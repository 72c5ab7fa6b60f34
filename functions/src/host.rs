//! The functions host's HTTP side: one hyper server that takes bucket notifications.
//!
//! - `POST /events`: a MinIO webhook body or an SNS delivery ([`crate::webhook`]); the records
//!   go to [`crate::handle_event`]. Answers 200 when every record was handled, 503 when one
//!   must be delivered again (so MinIO and SNS retry), 400 for a body of no known shape.
//!   An SNS `SubscriptionConfirmation` is confirmed by fetching its `SubscribeURL`.
//! - `GET /healthz`: 200.
//!
//! Not yet here (see the event-functions issue): SNS signature verification, the gateway
//! API, the polling source.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::webhook::{self, Delivery};
use crate::{Ctx, handle_event};

/// Serves on `listener` until the task is dropped.
pub async fn serve(ctx: Ctx, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(ctx.clone(), peer, req));
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

async fn handle(ctx: Ctx, peer: SocketAddr, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => Ok(reply(StatusCode::OK, serde_json::json!({"ok": true}))),
        (&Method::POST, "/events") => {
            let sns_type = req.headers().get("x-amz-sns-message-type").and_then(|v| v.to_str().ok()).map(String::from);
            let body = match Limited::new(req.into_body(), webhook::MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return Ok(reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        serde_json::json!({"error": "notification too large"}),
                    ));
                }
            };
            Ok(deliver(&ctx, peer, &body, sns_type.as_deref()).await)
        }
        _ => Ok(reply(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such endpoint"}))),
    }
}

async fn deliver(ctx: &Ctx, peer: SocketAddr, body: &[u8], sns_type: Option<&str>) -> Response<Full<Bytes>> {
    match webhook::parse(body, sns_type) {
        Err(why) => {
            tracing::warn!(%peer, %why, "refused a notification");
            reply(StatusCode::BAD_REQUEST, serde_json::json!({"error": why}))
        }
        Ok(Delivery::Ignore(why)) => reply(StatusCode::OK, serde_json::json!({"ignored": why})),
        Ok(Delivery::ConfirmSubscription { topic, subscribe_url }) => match confirm(&subscribe_url).await {
            Ok(()) => {
                tracing::info!(%topic, "confirmed the SNS subscription");
                reply(StatusCode::OK, serde_json::json!({"confirmed": topic}))
            }
            Err(why) => reply(StatusCode::BAD_GATEWAY, serde_json::json!({"error": why})),
        },
        Ok(Delivery::Records(ev)) => {
            let results = handle_event(ctx, &ev).await;
            let failed: Vec<String> = results.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
            if failed.is_empty() {
                reply(StatusCode::OK, serde_json::json!({"handled": results.len()}))
            } else {
                // Ask the sender to deliver again; handlers are idempotent.
                reply(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"retry": failed}))
            }
        }
    }
}

async fn confirm(url: &str) -> Result<(), String> {
    let resp = reqwest::get(url).await.map_err(|e| format!("cannot reach SubscribeURL: {e}"))?;
    if resp.status().is_success() { Ok(()) } else { Err(format!("SubscribeURL answered {}", resp.status())) }
}
