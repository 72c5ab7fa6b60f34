//! The fuzz targets' bodies: every parser of bytes from outside the pool, fed anything.
//!
//! Each target must not panic, and where a parser has an inverse (a key and its encoding, a
//! SIWE message and its text, live-log cursors) the round trip must hold. `harness/` wraps
//! each in `libfuzzer_sys::fuzz_target!` for `cargo xtask fuzz`; `tests/corpora.rs` replays
//! the committed corpora (`corpus/<target>/`, seeds and every crash found) on every test run.

use std::path::{Component, Path};

use aic_chain::siwe::SiweMessage;
use aic_schemas::jobfile::JobFile;
use aic_schemas::{JobRequest, ResumeRequest};

/// A target: it takes any bytes, and panics on what it must not see.
pub type Target = fn(&[u8]);

/// Every target, by name (the corpus folder and the harness binary are named alike).
pub const TARGETS: &[(&str, Target)] = &[
    ("job_file", job_file),
    ("request", request),
    ("events", events),
    ("siwe", siwe),
    ("worker_token", worker_token),
    ("keys", keys),
    ("gateway_bodies", gateway_bodies),
    ("gateway", gateway),
];

fn text(data: &[u8]) -> &str {
    std::str::from_utf8(data).unwrap_or("")
}

/// A job file (`aic submit job.yaml`), as YAML and as JSON, and the request it becomes.
pub fn job_file(data: &[u8]) {
    let t = String::from_utf8_lossy(data);
    for json in [false, true] {
        if let Ok(f) = JobFile::parse(&t, json) {
            let _ = f.entrypoint_or(true);
            let _ = f.entrypoint_or(false);
        }
    }
    let _ = aic_schemas::jobfile::line_of(&t, "miners");
}

/// A job request as uploaded (`request.json`): parsed, validated, its EIP-712 signature
/// recovered; a resume request the same way.
pub fn request(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<JobRequest>(data) {
        let _ = req.validate(None);
        let _ = req.validate(Some(chrono::Utc::now()));
        let _ = aic_chain::request::check(&req, 31337);
        let _ = aic_chain::request::typed_data_json(&req, 31337);
    }
    if let Ok(r) = serde_json::from_slice::<ResumeRequest>(data) {
        let _ = aic_chain::request::check_resume(&r, 31337);
    }
}

/// A notification body (S3, MinIO, SNS): parsed as the webhook does, the SNS envelope's
/// signed text built; each record's key decoded.
pub fn events(data: &[u8]) {
    for sns_type in [None, Some("Notification"), Some("SubscriptionConfirmation")] {
        if let Ok((delivery, envelope)) = aic_functions::webhook::parse_with_envelope(data, sns_type) {
            if let Some(env) = &envelope {
                let _ = aic_functions::sns::canonical(env);
            }
            if let aic_functions::webhook::Delivery::Records(ev) = delivery {
                for r in &ev.records {
                    let _ = aic_core::layout::classify(&r.key());
                }
            }
        }
    }
    let t = text(data);
    let _ = aic_schemas::event::decode_key(t);
    assert_eq!(aic_schemas::event::decode_key(&aic_schemas::event::encode_key(t)), t, "a key survives its encoding");
}

/// A Sign-In with Ethereum message: parsed, printed and parsed again to the same message;
/// checked against a signature made of the rest of the input.
pub fn siwe(data: &[u8]) {
    let t = String::from_utf8_lossy(data);
    let (msg, sig) = t.split_once("\n\n\n").unwrap_or((&t, ""));
    if let Ok(m) = SiweMessage::parse(msg) {
        let again = SiweMessage::parse(&m.to_string()).expect("a printed message parses");
        assert_eq!(again.to_string(), m.to_string(), "a message prints the same after a round trip");
        let _ = m.verify(sig, "aic-pool", 31337, chrono::Utc::now());
    }
}

/// A worker token as a caller presents it.
pub fn worker_token(data: &[u8]) {
    let t = text(data);
    let _ = aic_core::grant::is_worker_token(t);
    assert!(
        aic_core::grant::verify(b"0123456789abcdef0123456789abcdef", t, chrono::Utc::now()).is_err(),
        "no token is forged by chance"
    );
}

/// Keys and names from outside: bucket keys (events, listings), file names to upload, paths
/// inside a code bundle (a key that passes `path_problem` never lands outside its folder),
/// live-log cursors.
pub fn keys(data: &[u8]) {
    let t = text(data);
    let _ = aic_core::layout::classify(t);
    let _ = aic_core::store::name_problem(t);
    if !t.is_empty() && aic_schemas::validate::path_problem(t).is_none() {
        let base = Path::new("/base");
        let joined = base.join(t);
        assert!(joined.starts_with(base), "{t:?} lands outside its folder");
        assert!(
            !Path::new(t)
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_))),
            "{t:?} climbs out of its folder"
        );
    }
    if let Ok(c) = aic_functions::gateway::live::parse_cursors(t) {
        let back = aic_functions::gateway::live::parse_cursors(&aic_functions::gateway::live::cursors_param(&c));
        assert_eq!(back.as_ref(), Ok(&c), "cursors survive a round trip");
    }
}

/// The gateway's request bodies (sign, multipart, a worker's live-log post).
pub fn gateway_bodies(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<aic_schemas::gateway::SignRequest>(data) {
        for i in &r.items {
            let _ = aic_core::layout::classify(&i.key);
            let _ = aic_schemas::validate::path_problem(&i.key);
        }
    }
    let _ = serde_json::from_slice::<aic_schemas::gateway::MultipartRequest>(data);
    let _ = serde_json::from_slice::<aic_functions::gateway::live::Post>(data);
    let _ = serde_json::from_slice::<aic_schemas::JobManifest>(data);
    let _ = serde_json::from_slice::<aic_schemas::StatusRecord>(data);
}

struct Api {
    rt: tokio::runtime::Runtime,
    gw: aic_functions::gateway::Gateway,
    user: String,
}

/// One gateway for the whole run: a free pool on a local store in a folder of its own, the
/// embedded pool's local scheduler (nothing is placed: no request reaches dispatch), no
/// rate limit (every input is one caller).
fn api() -> &'static Api {
    static API: std::sync::OnceLock<Api> = std::sync::OnceLock::new();
    API.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let dir = std::env::temp_dir().join(format!("aic-fuzz-gateway-{}", std::process::id()));
        let gw = rt.block_on(async {
            let store = aic_core::StoreConfig::Local { root: dir.join("store") }.open().expect("a local store");
            let scheduler = aic_core::scheduler::local::LocalScheduler::new(
                aic_core::scheduler::local::LocalConfig {
                    miners: 2,
                    gpus_per_miner: 1,
                    gateway: "local".into(),
                    worker_bin: dir.join("no-worker"),
                    work_root: dir.join("work"),
                    worker_env: vec![],
                    time_limit_grace: std::time::Duration::from_secs(1),
                    // Its workers are scripts that write into the test's folder: not sandboxed.
                    sandbox: false,
                    gpu_types: Vec::new(),
                },
                store.clone(),
            );
            let ctx = aic_functions::Ctx {
                store,
                scheduler: std::sync::Arc::new(scheduler),
                auth: std::sync::Arc::new(aic_chain::Eip712Auth { chain_id: 31337 }),
                payments: std::sync::Arc::new(aic_core::payment::FreePool),
                pricing: aic_core::pricing::Pricing::free(),
                settler: None,
            };
            let mut cfg = aic_functions::gateway::GatewayConfig::new(SECRET.to_vec(), "aic-fuzz", 31337);
            (cfg.rate, cfg.burst) = (1e12, 1e12);
            aic_functions::gateway::Gateway::new(cfg, ctx, None)
        });
        let owner: aic_schemas::Address = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8".parse().expect("an address");
        let user =
            aic_functions::gateway::session_token(SECRET, &owner, chrono::Utc::now() + chrono::Duration::days(365));
        Api { rt, gw, user }
    })
}

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A whole gateway call: the first byte picks the method and whether the caller is signed
/// in; then the path, a newline, the query, a newline, the body. Every answer is JSON, and
/// an error names what went wrong; long-polls are cut after 200 ms.
pub fn gateway(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    let method =
        [http::Method::GET, http::Method::POST, http::Method::PUT, http::Method::DELETE][(first & 3) as usize].clone();
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let query = parts.next().map(|q| String::from_utf8_lossy(q).into_owned());
    let body = bytes::Bytes::copy_from_slice(parts.next().unwrap_or_default());
    let path = if path.starts_with("/v1/") { path } else { format!("/v1/{path}") };
    let a = api();
    let mut headers = http::HeaderMap::new();
    if first & 4 != 0 {
        headers.insert(http::header::AUTHORIZATION, format!("Bearer {}", a.user).parse().expect("a header"));
    }
    let peer = std::net::IpAddr::from([127, 0, 0, 1]);
    let call = a.gw.call(peer, &method, &path, query.as_deref(), &headers, body);
    if let Ok((status, v)) =
        a.rt.block_on(async { tokio::time::timeout(std::time::Duration::from_millis(200), call).await })
    {
        if !status.is_success() {
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{method} {path}: {status} without a reason: {v}"
            );
        }
        assert!(status != http::StatusCode::INTERNAL_SERVER_ERROR, "{method} {path}: 500 {v}");
    }
}
