//! The pool's own figures for its operator, in Prometheus' text exposition format (0.0.4),
//! at `GET /metrics` on the functions host with `Authorization: Bearer $AIC_METRICS_TOKEN`
//! (no token set: no endpoint). A Prometheus scrape job reads it as it is:
//!
//! ```yaml
//! - job_name: aic
//!   authorization: { credentials_file: /etc/prometheus/aic-token }
//!   static_configs: [{ targets: ["functions.pool.example:8080"] }]
//! ```
//!
//! - `aic_events_handled_total{function, outcome}`: bucket events this process handled, by
//!   the function that took them and how each ended (`deferred`, `unavailable`, `error` for
//!   those to be tried again);
//! - `aic_jobs{gateway, state}`: jobs the scheduler holds, running or queued (where the
//!   backend can tell);
//! - `aic_gpus{gateway, model, state}`: GPUs by model, `total` and `free` (miners down
//!   count in neither);
//! - `aic_miners{gateway, state}`: miners `up` and `down`;
//! - `aic_settle_latency_seconds`: from a paid run's end (its terminal status) to its
//!   settlement on chain, a histogram;
//! - where this host serves deployments: `aic_deployment_requests_total{deployment, outcome}`
//!   (`answered`, `replica_error`: a replica's 5xx, `gateway_error`: the gateway's own 5xx,
//!   `refused`: a private deployment's 401s), `aic_deployment_latency_seconds{deployment}` (to
//!   the head of a replica's answer, a histogram), `aic_deployment_in_flight{deployment}` and
//!   `aic_deployment_replicas{deployment}` (`proxy::stats`).
//!
//! Counters live in this process (they start at zero when it does, as Prometheus expects of
//! a counter); the gauges are read from the scheduler at each scrape.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{LazyLock, Mutex};

use crate::{Ctx, HandlerError, Outcome};

/// The settle latency histogram's upper bounds, seconds.
const SETTLE_BUCKETS: [f64; 8] = [1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 21600.0];

#[derive(Default)]
struct Figures {
    events: BTreeMap<(&'static str, &'static str), u64>,
    /// Observations per bucket (the last: over every bound), their sum and count.
    settle: [u64; SETTLE_BUCKETS.len() + 1],
    settle_sum: f64,
    settle_count: u64,
}

static FIGURES: LazyLock<Mutex<Figures>> = LazyLock::new(Default::default);

/// Counts one event `function` handled, by how it ended.
pub fn handled(function: &'static str, result: &Result<Outcome, HandlerError>) {
    let outcome = match result {
        Ok(Outcome::Ignored) => "ignored",
        Ok(Outcome::Validated(_)) => "validated",
        Ok(Outcome::Rejected(..)) => "rejected",
        Ok(Outcome::Dispatched(_)) => "dispatched",
        Ok(Outcome::Unplaceable(..)) => "unplaceable",
        Ok(Outcome::Cancelled(_)) => "cancelled",
        Ok(Outcome::Settled(..)) => "settled",
        Ok(Outcome::AlreadyDone(_)) => "already_done",
        Err(HandlerError::Deferred(_)) => "deferred",
        Err(HandlerError::Unavailable(_)) => "unavailable",
        Err(_) => "error",
    };
    *FIGURES.lock().unwrap().events.entry((function, outcome)).or_default() += 1;
}

/// A paid run was settled `seconds` after it ended.
pub fn settled_after(seconds: f64) {
    let seconds = seconds.max(0.0);
    let mut f = FIGURES.lock().unwrap();
    let i = SETTLE_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(SETTLE_BUCKETS.len());
    f.settle[i] += 1;
    f.settle_sum += seconds;
    f.settle_count += 1;
}

/// A label value as the format writes it: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The exposition: the counters, then the gauges read from the scheduler now.
pub async fn render(ctx: &Ctx, proxy: Option<&crate::proxy::Proxy>) -> String {
    let mut out = String::new();
    if let Some(p) = proxy {
        p.stats().render(&mut out);
    }
    let (events, settle, settle_sum, settle_count) = {
        let f = FIGURES.lock().unwrap();
        (f.events.clone(), f.settle, f.settle_sum, f.settle_count)
    };
    out.push_str("# HELP aic_events_handled_total Bucket events handled by this process, by function and outcome.\n");
    out.push_str("# TYPE aic_events_handled_total counter\n");
    for ((function, outcome), n) in &events {
        let _ = writeln!(out, "aic_events_handled_total{{function=\"{function}\",outcome=\"{outcome}\"}} {n}");
    }
    out.push_str("# HELP aic_settle_latency_seconds From a paid run's end to its settlement.\n");
    out.push_str("# TYPE aic_settle_latency_seconds histogram\n");
    let mut cumulative = 0;
    for (i, bound) in SETTLE_BUCKETS.iter().enumerate() {
        cumulative += settle[i];
        let _ = writeln!(out, "aic_settle_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "aic_settle_latency_seconds_bucket{{le=\"+Inf\"}} {settle_count}");
    let _ = writeln!(out, "aic_settle_latency_seconds_sum {settle_sum}");
    let _ = writeln!(out, "aic_settle_latency_seconds_count {settle_count}");

    out.push_str("# HELP aic_jobs Jobs the scheduler holds, by state.\n# TYPE aic_jobs gauge\n");
    match ctx.scheduler.jobs_by_state().await {
        Ok(states) => {
            for (state, n) in states {
                let _ = writeln!(out, "aic_jobs{{state=\"{}\"}} {n}", label(&state));
            }
        }
        // The scrape still answers: the other figures are this host's own.
        Err(e) => tracing::warn!(error = %e, "the scheduler did not say its jobs by state"),
    }
    match ctx.scheduler.pool().await {
        Ok(gateways) => {
            out.push_str("# HELP aic_gpus GPUs by gateway, model and state (total, free).\n# TYPE aic_gpus gauge\n");
            let mut miners = String::new();
            for g in &gateways {
                let mut by_model: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
                let (mut up, mut down) = (0, 0);
                for m in &g.miners {
                    if m.down.is_some() {
                        down += 1;
                        continue;
                    }
                    up += 1;
                    let e = by_model.entry(m.gpu_model.as_deref().unwrap_or("unknown")).or_default();
                    e.0 += m.gpus;
                    e.1 += m.free_gpus;
                }
                let gw = label(&g.name);
                for (model, (total, free)) in by_model {
                    let model = label(model);
                    let _ = writeln!(out, "aic_gpus{{gateway=\"{gw}\",model=\"{model}\",state=\"total\"}} {total}");
                    let _ = writeln!(out, "aic_gpus{{gateway=\"{gw}\",model=\"{model}\",state=\"free\"}} {free}");
                }
                let _ = writeln!(miners, "aic_miners{{gateway=\"{gw}\",state=\"up\"}} {up}");
                let _ = writeln!(miners, "aic_miners{{gateway=\"{gw}\",state=\"down\"}} {down}");
            }
            out.push_str("# HELP aic_miners Miners by gateway and state.\n# TYPE aic_miners gauge\n");
            out.push_str(&miners);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: the scheduler did not say what the pool has"),
    }
    out
}
