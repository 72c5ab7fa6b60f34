//! Shared library of aic.
//!
//! - `auth`: the `Authenticator` trait (who signed a request).
//! - `config`: where the object store is, from the environment.
//! - `layout`: the key layout of the bucket (DESIGN.md), built and parsed in one place.
//! - `store`: create-only writes, size-limited JSON reads, streaming transfers.
//! - `status`: a job's state as an append-only log of create-only records.
//! - `events`: the local event spool, the embedded pool's bucket notifications.
//! - `payment`: the `PaymentVerifier` trait (a free pool here; the chain's in aic-chain).
//! - `pricing`: quotes.
//! - `scheduler`: the `Scheduler` trait, its local and Nomad backends.
//! - `remote`: the bucket through a pool's gateway (`GatewayStore`).
//! - `grant`: job-scoped worker tokens.
//! - `digest`: the code digest a request signs.
//! - `serving`: a deployment's serving registrations.
//! - `usage`: what each allocation used, as the pool measured it (limits and charges).
//! - `faults`: a store decorator that fails on purpose, for tests under faults.
//! - `runs`: a job's paid runs (`aic resume`), their manifests, and the attempts each owns.
//!
//! This crate knows nothing of the CLI and serves no HTTP; it speaks HTTP only as a client
//! (`scheduler::nomad` to Nomad's API, `remote` to a pool's gateway).

pub mod auth;
pub mod config;
pub mod deploykeys;
pub mod digest;
pub mod events;
pub mod faults;
pub mod grant;
pub mod layout;
pub mod payment;
pub mod pricing;
pub mod remote;
pub mod runs;
pub mod scheduler;
pub mod serving;
pub mod servingstats;
pub mod status;
pub mod store;
pub mod usage;
pub mod vault;

pub use config::StoreConfig;

/// Human size: `1.2 MiB`.
pub fn size(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", units[u]) }
}

/// Largest code folder (or deployed project) a job may have: `AIC_MAX_CODE_BYTES`, 512 MiB
/// (what a worker takes, and what the gateway lets one job's code hold).
pub fn max_code_bytes() -> u64 {
    std::env::var("AIC_MAX_CODE_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(512 * 1024 * 1024)
}

/// Why an upload of `bytes` is refused when a wallet's files take `used` of the pool's
/// storage `quota`, and what to do (the gateway's refusal, and `aic`'s before it asks).
pub fn over_storage_quota(used: u64, bytes: u64, quota: u64) -> String {
    format!(
        "storage quota: your datasets take {} of this pool's {} per wallet, and this upload needs {} more; delete datasets you no longer need (`aic data rm NAME`) and upload again",
        size(used),
        size(quota),
        size(bytes)
    )
}

/// `n` and `what`, plural unless one: "1 miner", "2 miners", "0 GPUs".
pub fn plural(n: impl Into<u64>, what: &str) -> String {
    let n = n.into();
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}
pub use layout::JobKey;
pub use store::{Created, Store, StoreError};
