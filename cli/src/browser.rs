//! A browser wallet (Metamask) as a signer: `aic` serves a page on 127.0.0.1 that asks
//! `window.ethereum` for the signatures and posts them back.
//!
//! The page's URL carries a random token that every call must repeat, so another page in
//! the same browser cannot drive it. Two tasks:
//! - login: Sign-In with Ethereum (`personal_sign`), kept as the session;
//! - sign: a job request — the page sends the AIC payment (`eth_sendTransaction`), then signs
//!   the request with the payment in it (`eth_signTypedData_v4`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aic_chain::siwe::SiweMessage;
use aic_schemas::{JobRequest, PaymentRef};
use alloy::sol_types::SolCall;
use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::identity::{self, SIWE_DOMAIN, SIWE_URI, Session, Source};

const PAGE: &str = include_str!("../assets/wallet.html");
const MAX_BODY: usize = 64 * 1024;

/// What the page is asked to do.
pub enum Task {
    Login { chain_id: u64 },
    Sign { req: Box<JobRequest>, chain_id: u64, payment: Option<Payment> },
}

/// A transfer of `amount` AIC (`token`) to `treasury` the page asks the wallet to send.
pub struct Payment {
    pub token: alloy::primitives::Address,
    pub treasury: alloy::primitives::Address,
    pub amount: u128,
}

pub enum Done {
    LoggedIn(Box<Session>),
    Signed(Box<JobRequest>),
}

struct State {
    home: PathBuf,
    token: String,
    task: Task,
    challenge: Option<SiweMessage>,
    done: Option<oneshot::Sender<Done>>,
}

type Shared = Arc<Mutex<State>>;

/// Serves the page until the wallet finished the task; prints the URL to open.
pub async fn run(home: PathBuf, task: Task) -> anyhow::Result<Done> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    let token = ulid::Ulid::new().to_string().to_lowercase();
    let (tx, rx) = oneshot::channel();
    let state = Arc::new(Mutex::new(State { home, token: token.clone(), task, challenge: None, done: Some(tx) }));
    let url = format!("http://{addr}/?t={token}");
    eprintln!("open {url} in the browser that has your wallet (Metamask)");
    if std::env::var_os("AIC_NO_BROWSER").is_none() {
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    let done = rx.await.map_err(|_| anyhow!("the wallet page closed without finishing"))?;
    // Let the page read its last answer before the server goes away.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.abort();
    Ok(done)
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

fn error(status: StatusCode, why: impl std::fmt::Display) -> Response<Full<Bytes>> {
    reply(status, serde_json::json!({ "error": why.to_string() }))
}

async fn handle(state: Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let token_ok = {
        let want = format!("t={}", state.lock().unwrap().token);
        req.uri().query().is_some_and(|q| q.split('&').any(|p| p == want))
    };
    if !token_ok {
        return Ok(error(StatusCode::FORBIDDEN, "open the exact URL aic printed"));
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let body: serde_json::Value = if method == Method::POST {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or(serde_json::Value::Null),
            Err(_) => return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, "request too large")),
        }
    } else {
        serde_json::Value::Null
    };
    let result = match (method, path.as_str()) {
        (Method::GET, "/") => {
            return Ok(Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .header("cache-control", "no-store")
                .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
                .expect("valid response"));
        }
        (Method::GET, "/task") => task(&state),
        (Method::POST, "/challenge") => challenge(&state, body),
        (Method::POST, "/login") => login(&state, body),
        (Method::POST, "/typed") => typed(&state, body),
        (Method::POST, "/signed") => signed(&state, body),
        _ => return Ok(error(StatusCode::NOT_FOUND, "no such page")),
    };
    Ok(match result {
        Ok(v) => reply(StatusCode::OK, v),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    })
}

fn task(state: &Shared) -> anyhow::Result<serde_json::Value> {
    let st = state.lock().unwrap();
    Ok(match &st.task {
        Task::Login { chain_id } => serde_json::json!({ "kind": "login", "chainId": chain_id }),
        Task::Sign { req, chain_id, payment } => {
            let payment = payment.as_ref().map(|p| {
                let data = aic_chain::token::IAIC::transferCall {
                    to: p.treasury,
                    value: alloy::primitives::U256::from(p.amount),
                }
                .abi_encode();
                serde_json::json!({
                    "token": p.token.to_string(),
                    "data": format!("0x{}", alloy::hex::encode(data)),
                    "display": aic_core::pricing::format_aic(p.amount),
                })
            });
            serde_json::json!({ "kind": "sign", "job": req.job_id, "chainId": chain_id, "payment": payment })
        }
    })
}

#[derive(Deserialize)]
struct AddressBody {
    address: alloy::primitives::Address,
    #[serde(default)]
    tx: Option<String>,
}

fn challenge(state: &Shared, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let b: AddressBody = serde_json::from_value(body).context("want {address}")?;
    let mut st = state.lock().unwrap();
    let Task::Login { chain_id } = st.task else { anyhow::bail!("this page is not signing in") };
    let msg = SiweMessage::new(SIWE_DOMAIN, SIWE_URI, b.address, chain_id, chrono::Duration::days(7));
    let text = msg.to_string();
    st.challenge = Some(msg);
    Ok(serde_json::json!({ "message": text }))
}

fn login(state: &Shared, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    #[derive(Deserialize)]
    struct B {
        message: String,
        signature: String,
    }
    let b: B = serde_json::from_value(body).context("want {message, signature}")?;
    let mut st = state.lock().unwrap();
    let Task::Login { chain_id } = st.task else { anyhow::bail!("this page is not signing in") };
    // Only the message this server issued (its nonce) is accepted.
    let issued = st.challenge.as_ref().map(|m| m.to_string());
    if issued.as_deref() != Some(b.message.as_str()) {
        anyhow::bail!("that is not the message this page asked you to sign; reload");
    }
    let session = identity::finish_login(&st.home, Source::Browser, &b.message, &b.signature, chain_id)?;
    let address = session.address;
    if let Some(done) = st.done.take() {
        let _ = done.send(Done::LoggedIn(Box::new(session)));
    }
    Ok(serde_json::json!({ "address": address }))
}

fn typed(state: &Shared, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let b: AddressBody = serde_json::from_value(body).context("want {address, tx}")?;
    let mut st = state.lock().unwrap();
    let Task::Sign { req, chain_id, payment } = &mut st.task else { anyhow::bail!("this page is not signing a job") };
    if aic_chain::to_alloy(&req.owner) != b.address {
        anyhow::bail!(
            "the wallet's account is {}; switch it to {}, the account you signed in with",
            b.address,
            req.owner
        );
    }
    match (&b.tx, payment.is_some()) {
        (Some(tx), _) => req.payment = Some(PaymentRef { chain_id: *chain_id, tx: tx.to_lowercase() }),
        (None, true) => anyhow::bail!("the job must be paid first"),
        (None, false) => {}
    }
    aic_chain::request::typed_data_json(req, *chain_id)
}

fn signed(state: &Shared, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    #[derive(Deserialize)]
    struct B {
        signature: String,
    }
    let b: B = serde_json::from_value(body).context("want {signature}")?;
    let mut st = state.lock().unwrap();
    let Task::Sign { req, chain_id, .. } = &mut st.task else { anyhow::bail!("this page is not signing a job") };
    let mut signed = req.clone();
    signed.signature = Some(b.signature);
    aic_chain::request::check(&signed, *chain_id)?;
    if let Some(done) = st.done.take() {
        let _ = done.send(Done::Signed(signed));
    }
    Ok(serde_json::json!({ "ok": true }))
}
