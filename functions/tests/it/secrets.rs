//! Users' secrets through the gateway, from the other side: a second wallet lists, removes
//! and gets none of the first's; a job's workers get their owner's values, only for the
//! names their job's request gives, only while it runs; a pool without its own key keeps none.

use aic_core::JobKey;
use aic_core::status::Transition;
use aic_functions::gateway::{Gateway, GatewayConfig, session_token};
use aic_schemas::{JobId, JobState};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::common::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const OTHER: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
const VALUE: &str = "hf_the_first_wallets_token";

async fn call(gw: &Gateway, bearer: &str, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, format!("Bearer {bearer}").parse().unwrap());
    gw.call("127.0.0.1".parse().unwrap(), &method, path, None, &headers, Bytes::from(body.to_string())).await
}

fn session(owner: &str) -> String {
    session_token(SECRET, &owner.parse().unwrap(), chrono::Utc::now() + chrono::Duration::hours(1))
}

/// A running job of `owner` whose request names `secrets`, and its workers' token.
async fn running_job(p: &Pool, owner: &str, secrets: &[&str]) -> (JobKey, String) {
    let mut req = unsigned_by(owner.parse().unwrap(), 1);
    req.job_id = JobId::generate();
    req.secrets = secrets.iter().map(|s| s.to_string()).collect();
    let job = put_request(&p.store, &req).await;
    for s in [JobState::Submitted, JobState::Paid, JobState::Scheduled, JobState::Running] {
        aic_core::status::advance(&p.store, &job, Transition::new(s, "test")).await.unwrap();
    }
    let token = worker_token(SECRET, &job);
    (job, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_wallet_and_other_jobs_get_nothing_of_a_wallets_secrets() {
    let p = pool(1, "exit 0");
    let mut cfg = GatewayConfig::new(SECRET.to_vec(), "aic-test", CHAIN);
    cfg.secrets_key = Some("ab".repeat(32));
    let gw = Gateway::new(cfg, p.ctx.clone(), None);
    let (mine, theirs) = (session(OWNER), session(OTHER));

    let (code, v) = call(&gw, &mine, Method::PUT, "/v1/secrets/HF_TOKEN", json!({"value": VALUE})).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (_, v) = call(&gw, &mine, Method::GET, "/v1/secrets", Value::Null).await;
    assert_eq!(v["secrets"][0]["name"], "HF_TOKEN");
    assert!(!v.to_string().contains(VALUE), "a listing shows the value: {v}");

    // The second wallet: lists none of mine, removes nothing of mine.
    let (_, v) = call(&gw, &theirs, Method::GET, "/v1/secrets", Value::Null).await;
    assert_eq!(v["secrets"], json!([]), "{v}");
    let (code, _) = call(&gw, &theirs, Method::DELETE, "/v1/secrets/HF_TOKEN", Value::Null).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (_, v) = call(&gw, &mine, Method::GET, "/v1/secrets", Value::Null).await;
    assert_eq!(v["secrets"][0]["name"], "HF_TOKEN", "the second wallet removed my secret");

    // My job's workers get my value; the second wallet's job naming the same name gets none.
    let (job, token) = running_job(&p, OWNER, &["HF_TOKEN"]).await;
    let (code, v) = call(&gw, &token, Method::GET, "/v1/worker/secrets", Value::Null).await;
    assert_eq!((code, v["secrets"]["HF_TOKEN"].as_str()), (StatusCode::OK, Some(VALUE)), "{v}");
    let (_, their_token) = running_job(&p, OTHER, &["HF_TOKEN"]).await;
    let (code, v) = call(&gw, &their_token, Method::GET, "/v1/worker/secrets", Value::Null).await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    assert!(!v.to_string().contains(VALUE), "another wallet's job got my secret: {v}");
    // A job of mine that names no secret gets none.
    let (_, plain) = running_job(&p, OWNER, &[]).await;
    let (_, v) = call(&gw, &plain, Method::GET, "/v1/worker/secrets", Value::Null).await;
    assert_eq!(v["secrets"], json!({}), "{v}");
    // A user's session is not a worker's token, nor the reverse.
    let (code, _) = call(&gw, &mine, Method::GET, "/v1/worker/secrets", Value::Null).await;
    assert_ne!(code, StatusCode::OK);
    let (code, _) = call(&gw, &token, Method::GET, "/v1/secrets", Value::Null).await;
    assert_ne!(code, StatusCode::OK);

    // The job ended: its token (copied out of an allocation) gets nothing any more.
    aic_core::status::advance(&p.store, &job, Transition::new(JobState::Succeeded, "test")).await.unwrap();
    let (code, v) = call(&gw, &token, Method::GET, "/v1/worker/secrets", Value::Null).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{v}");
    assert!(!v.to_string().contains(VALUE));

    // A pool whose operator set no key of its own keeps no secrets.
    let keyless = Gateway::new(GatewayConfig::new(SECRET.to_vec(), "aic-test", CHAIN), p.ctx.clone(), None);
    let (code, v) = call(&keyless, &mine, Method::PUT, "/v1/secrets/HF_TOKEN", json!({"value": "x1234"})).await;
    assert_eq!(code, StatusCode::NOT_IMPLEMENTED, "{v}");
}
