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
