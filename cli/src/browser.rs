//! A browser wallet (MetaMask) as a signer: `aic` serves a page on 127.0.0.1 that asks
//! the wallet for the signatures and posts them back.
//!
//! The page's URL carries a random token that every call must repeat, so another page in
//! the same browser cannot drive it. Two tasks:
//! - login: Sign-In with Ethereum (`personal_sign`) for this page's own address (wallets
//!   compare the message's domain with the page's origin), kept as the session;
//! - sign: a job request — the page checks that the wallet's account is the job's owner and
//!   that the wallet is on the pool's chain (switching to it, or adding it with its RPC URL),
//!   sends the AIC payment (`eth_sendTransaction`: where the pool has an escrow, an allowance
//!   for it when one is needed, then the deposit for the job's run; else a transfer to the
//!   treasury), which `aic` follows to its receipt through speed-ups and cancellations, then
//!   signs the request with the payment in it (`eth_signTypedData_v4`). A payment is made
//!   once: trying again after a refused signature signs without paying again.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aic_chain::siwe::SiweMessage;
use aic_schemas::{JobRequest, PaymentRef};
use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::identity::{self, Session, Source};

const PAGE: &str = include_str!("../assets/wallet.html");
const MAX_BODY: usize = 64 * 1024;
/// How long the page waits for a payment the wallet sent to be mined (`AIC_PAYMENT_WAIT`,
/// seconds; 180 by default).
fn payment_wait() -> std::time::Duration {
    let secs = std::env::var("AIC_PAYMENT_WAIT").ok().and_then(|v| v.parse().ok()).unwrap_or(180);
    std::time::Duration::from_secs(secs)
}

/// What the page is asked to do.
pub enum Task {
    Login { chain_id: u64 },
    Sign { req: Box<JobRequest>, chain: Box<aic_chain::ChainConfig>, payment: Option<Payment> },
}

pub use aic_chain::escrow::Payment;

pub enum Done {
    LoggedIn(Box<Session>),
    Signed(Box<JobRequest>),
}

struct State {
    home: PathBuf,
    token: String,
    /// This page's own address (`127.0.0.1:PORT`): the SIWE domain.
    authority: String,
    task: Task,
    challenge: Option<SiweMessage>,
    /// The payment once mined, under its final hash: a second try signs without paying again.
    paid: Option<String>,
    /// A payment the wallet sent that is not mined yet: a second try waits for it rather
    /// than sending another.
    pending: Option<String>,
    /// What the wallet was about to be asked to send (nonce, height): how its payment is
    /// followed through a speed-up or a cancellation.
    sending: Option<aic_chain::follow::Sent>,
    done: Option<oneshot::Sender<Done>>,
}

type Shared = Arc<Mutex<State>>;

/// Serves the page until the wallet finished the task; prints the URL to open.
pub async fn run(home: PathBuf, task: Task) -> anyhow::Result<Done> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    let token = ulid::Ulid::new().to_string().to_lowercase();
    let (tx, rx) = oneshot::channel();
    let state = Arc::new(Mutex::new(State {
        home,
        token: token.clone(),
        authority: addr.to_string(),
        task,
        challenge: None,
        paid: None,
        pending: None,
        sending: None,
        done: Some(tx),
    }));
    let url = format!("http://{addr}/?t={token}");
    eprintln!("open {url} in the browser that has your wallet (Metamask)");
    open_in_browser(&url);
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

/// Opens `url` in the desktop's browser (`xdg-open`), unless `AIC_NO_BROWSER` is set; the
/// caller prints it too, for a machine without one.
pub fn open_in_browser(url: &str) {
    if std::env::var_os("AIC_NO_BROWSER").is_none() {
        let _ = std::process::Command::new("xdg-open")
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
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
        (Method::POST, "/approving") => approving(&state, body).await,
        (Method::POST, "/approved") => approved(&state, body).await,
        (Method::POST, "/paying") => paying(&state, body).await,
        (Method::POST, "/paid") => paid(&state, body).await,
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
        Task::Sign { req, chain, payment } => {
            let payment = payment.as_ref().map(|p| {
                let mut v = p.to_json();
                v["display"] = aic_core::pricing::format_aic(p.amount).into();
                v
            });
            let name =
                if chain.chain_id == 31337 /* anvil's */ {
                "aic dev chain".to_string()
            } else {
                format!("chain {}", chain.chain_id)
            };
            // What `wallet_addEthereumChain` takes (EIP-3085), for a wallet that lacks the chain.
            let add = (!chain.rpc_url.is_empty()).then(|| {
                serde_json::json!({
                    "chainId": format!("0x{:x}", chain.chain_id),
                    "chainName": name,
                    "rpcUrls": [chain.rpc_url],
                    "nativeCurrency": { "name": "Ether", "symbol": "ETH", "decimals": 18 },
                })
            });
            serde_json::json!({
                "kind": "sign",
                "job": req.job_id,
                "owner": aic_chain::to_alloy(&req.owner).to_string(),
                "chainId": chain.chain_id,
                "chainHex": format!("0x{:x}", chain.chain_id),
                "chainName": name,
                "addChain": add,
                "payment": payment,
                "paid": st.paid,
                "pending": st.pending,
            })
        }
    })
}

#[derive(Deserialize)]
struct AddressBody {
    address: alloy::primitives::Address,
}

fn challenge(state: &Shared, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let b: AddressBody = serde_json::from_value(body).context("want {address}")?;
    let mut st = state.lock().unwrap();
    let Task::Login { chain_id } = st.task else { anyhow::bail!("this page is not signing in") };
    // The page's own address, which the wallet checks against the page's origin (MetaMask's
    // `isValidSIWEOrigin`): a message for another domain gets a danger alert.
    let uri = format!("http://{}/", st.authority);
    let msg = SiweMessage::new(&st.authority, &uri, b.address, chain_id, chrono::Duration::days(7));
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
    let session = identity::finish_login(&st.home, Source::Browser, &b.message, &b.signature, chain_id, &st.authority)?;
    let address = session.address;
    if let Some(done) = st.done.take() {
        let _ = done.send(Done::LoggedIn(Box::new(session)));
    }
    Ok(serde_json::json!({ "address": address }))
}

/// The job's owner, when `address` is not it: the one line the page shows.
fn not_the_owner(req: &JobRequest, address: alloy::primitives::Address) -> Option<String> {
    let owner = aic_chain::to_alloy(&req.owner);
    (owner != address)
        .then(|| format!("the wallet's account is {address}; switch it to {owner}, the account this job belongs to"))
}

/// The page is about to send the payment from `address`: only the owner pays, once.
async fn paying(state: &Shared, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let b: AddressBody = serde_json::from_value(body).context("want {address}")?;
    let (rpc, sent) = {
        let st = state.lock().unwrap();
        let Task::Sign { req, chain, payment } = &st.task else { anyhow::bail!("this page is not signing a job") };
        if let Some(why) = not_the_owner(req, b.address) {
            anyhow::bail!(why);
        }
        let Some(p) = payment else { anyhow::bail!("this job needs no payment") };
        if let Some(tx) = &st.paid {
            anyhow::bail!("this job is paid already (in {tx}); sign it");
        }
        if let Some(tx) = &st.pending {
            anyhow::bail!(
                "the payment {tx} is not mined yet; it is not sent again: wait for it (or speed it up in your wallet)"
            );
        }
        let (to, input) = p.call();
        (chain.rpc_url.clone(), (b.address, to, input))
    };
    let provider = alloy::providers::ProviderBuilder::new().connect_http(rpc.parse()?);
    use alloy::providers::Provider as _;
    let unreachable = || format!("cannot reach the pool's chain at {rpc}");
    let since = provider.get_block_number().await.with_context(unreachable)?;
    let nonce = provider.get_transaction_count(sent.0).pending().await.with_context(unreachable)?;
    let (from, to, input) = sent;
    state.lock().unwrap().sending = Some(aic_chain::follow::Sent { from, to, input: input.into(), nonce, since });
    Ok(serde_json::json!({ "ok": true }))
}

/// Whether the wallet must allow the escrow to take the deposit first (an allowance given
/// before, and not used, is enough).
async fn approving(state: &Shared, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let b: AddressBody = serde_json::from_value(body).context("want {address}")?;
    let (rpc, token, escrow, amount) = {
        let st = state.lock().unwrap();
        let Task::Sign { req, chain, payment } = &st.task else { anyhow::bail!("this page is not signing a job") };
        if let Some(why) = not_the_owner(req, b.address) {
            anyhow::bail!(why);
        }
        let Some(p) = payment else { anyhow::bail!("this job needs no payment") };
        let Some(e) = &p.escrow else { return Ok(serde_json::json!({ "needed": false })) };
        (chain.rpc_url.clone(), p.token, e.contract, p.amount)
    };
    let provider = alloy::providers::ProviderBuilder::new().connect_http(rpc.parse()?);
    let have = aic_chain::escrow::IERC20Approve::new(token, &provider)
        .allowance(b.address, escrow)
        .call()
        .await
        .with_context(|| format!("cannot reach the pool's chain at {rpc}"))?;
    Ok(serde_json::json!({ "needed": have < alloy::primitives::U256::from(amount) }))
}

/// The wallet sent the allowance as `tx`: wait for it to be mined (a reverted one says so).
async fn approved(state: &Shared, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    #[derive(Deserialize)]
    struct B {
        tx: alloy::primitives::B256,
    }
    let b: B = serde_json::from_value(body).context("want {tx}")?;
    let rpc = {
        let st = state.lock().unwrap();
        let Task::Sign { chain, .. } = &st.task else { anyhow::bail!("this page is not signing a job") };
        chain.rpc_url.clone()
    };
    let provider = alloy::providers::ProviderBuilder::new().connect_http(rpc.parse()?);
    use alloy::providers::Provider as _;
    let deadline = std::time::Instant::now() + payment_wait();
    loop {
        if let Some(r) = provider.get_transaction_receipt(b.tx).await? {
            anyhow::ensure!(r.status(), "the allowance {:#x} reverted on chain; try again", b.tx);
            return Ok(serde_json::json!({ "ok": true }));
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the allowance {:#x} is not mined yet: try again once it is", b.tx);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The wallet sent the payment as `tx`: follow it to its receipt (a speed-up's new hash, or
/// a cancellation) before the request names it.
async fn paid(state: &Shared, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    #[derive(Deserialize)]
    struct B {
        tx: alloy::primitives::B256,
    }
    let b: B = serde_json::from_value(body).context("want {tx}")?;
    let (rpc, sent) = {
        let mut st = state.lock().unwrap();
        let Task::Sign { chain, .. } = &st.task else { anyhow::bail!("this page is not signing a job") };
        let rpc = chain.rpc_url.clone();
        let sent = st.sending.clone().ok_or_else(|| anyhow!("the page did not say it was paying; reload it"))?;
        // From now on a second try follows this payment instead of sending another.
        st.pending = Some(format!("{:#x}", b.tx));
        (rpc, sent)
    };
    let provider = alloy::providers::ProviderBuilder::new().connect_http(rpc.parse()?);
    let every = std::time::Duration::from_millis(250);
    let followed = aic_chain::follow::follow(&provider, b.tx, &sent, every, payment_wait()).await?;
    state.lock().unwrap().pending = None;
    match followed {
        aic_chain::follow::Followed::Mined { tx, replaced } => {
            let tx = format!("{tx:#x}");
            state.lock().unwrap().paid = Some(tx.clone());
            Ok(serde_json::json!({ "tx": tx, "replaced": replaced }))
        }
        aic_chain::follow::Followed::Cancelled { by } => {
            anyhow::bail!("the payment was cancelled in your wallet (by {by:#x}); nothing was paid: try again to pay")
        }
    }
}

fn typed(state: &Shared, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let b: AddressBody = serde_json::from_value(body).context("want {address}")?;
    let mut st = state.lock().unwrap();
    let paid = st.paid.clone();
    let Task::Sign { req, chain, payment } = &mut st.task else { anyhow::bail!("this page is not signing a job") };
    if let Some(why) = not_the_owner(req, b.address) {
        anyhow::bail!(why);
    }
    match (paid, payment.is_some()) {
        (Some(tx), _) => req.payment = Some(PaymentRef { chain_id: chain.chain_id, tx }),
        (None, true) => anyhow::bail!("the job must be paid first"),
        (None, false) => {}
    }
    aic_chain::request::typed_data_json(req, chain.chain_id)
}

fn signed(state: &Shared, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    #[derive(Deserialize)]
    struct B {
        signature: String,
    }
    let b: B = serde_json::from_value(body).context("want {signature}")?;
    let mut st = state.lock().unwrap();
    let Task::Sign { req, chain, .. } = &mut st.task else { anyhow::bail!("this page is not signing a job") };
    let mut signed = req.clone();
    signed.signature = Some(b.signature);
    aic_chain::request::check(&signed, chain.chain_id)?;
    if let Some(done) = st.done.take() {
        let _ = done.send(Done::Signed(signed));
    }
    Ok(serde_json::json!({ "ok": true }))
}
