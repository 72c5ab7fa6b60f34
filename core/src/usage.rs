//! What each allocation used, as the pool measured it: where it ran, how many GPUs, from
//! when to when. The scheduler writes these (the local one from the worker processes it
//! starts and reaps, Nomad's watcher from the allocations' task events), create-only, under
//! `pool/usage/`, which no worker token reaches: nothing charged or enforced rests on a
//! record the user's program can write (`allocs/` records are the program's own account, for
//! people to read).
//!
//! The time limit counts wall time: per attempt the longest allocation (they run side by
//! side), summed over attempts. The charge counts GPU-seconds: each allocation's seconds ×
//! its GPUs, summed, so a restarted run pays for the seconds its allocations actually held
//! GPUs, each once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::layout::{self, JobKey};
use crate::{Created, Store, StoreError};

/// One allocation's run, start to end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub attempt: u32,
    pub index: u32,
    pub miner: String,
    pub gpus: u32,
    /// Its GPUs' model, where the scheduler knows it: what it is charged at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// How it ended: `exited 0`, `lost`, `time limit`, `stopped`…
    pub how: String,
}

impl Usage {
    pub fn seconds(&self) -> f64 {
        (self.ended_at - self.started_at).num_milliseconds().max(0) as f64 / 1000.0
    }
}

/// Records one run (`run` tells runs of the same allocation apart: a Nomad allocation id, a
/// worker's pid and start). A second record of the same run changes nothing.
pub async fn record(store: &Store, job: &JobKey, run: &str, u: &Usage) -> Result<(), StoreError> {
    match store.create_json(&layout::usage_record(job, u.attempt, u.index, run), u).await? {
        Created::Created | Created::AlreadyExists => Ok(()),
    }
}

/// Every run of the job the pool recorded.
pub async fn of(store: &Store, job: &JobKey) -> Result<Vec<Usage>, StoreError> {
    let mut out = vec![];
    for m in store.list(&layout::usage_prefix(job)).await? {
        if let Some(u) = store.get_json::<Usage>(m.location.as_ref(), 64 * 1024).await? {
            out.push(u);
        }
    }
    out.sort_by_key(|u| (u.attempt, u.index, u.started_at));
    Ok(out)
}

/// What paid run `run` of the job used: its attempts' records.
pub async fn of_run(store: &Store, job: &JobKey, run: u32) -> Result<Vec<Usage>, StoreError> {
    Ok(of(store, job).await?.into_iter().filter(|u| crate::runs::run_of(u.attempt) == run).collect())
}

/// How the job's paid runs were settled (`pool/settlements/`), oldest run first.
pub async fn settlements(store: &Store, job: &JobKey) -> Result<Vec<aic_schemas::Settlement>, StoreError> {
    let mut out = vec![];
    for m in store.list(&layout::settlements_prefix(job)).await? {
        if let Some(s) = store.get_json::<aic_schemas::Settlement>(m.location.as_ref(), 64 * 1024).await? {
            out.push(s);
        }
    }
    out.sort_by_key(|s| s.run);
    Ok(out)
}

/// Wall seconds counted against the paid hours: per attempt the longest run, summed.
pub fn wall_seconds(runs: &[Usage]) -> f64 {
    let mut per_attempt: std::collections::BTreeMap<u32, f64> = Default::default();
    for u in runs {
        let e = per_attempt.entry(u.attempt).or_default();
        *e = e.max(u.seconds());
    }
    per_attempt.values().sum()
}

/// What the runs cost at `pricing`: for each price, the GPU-seconds of the runs on models of
/// that price (rounded up to a whole second) × the price per GPU-hour, rounded up to the
/// smallest unit. (price, GPU-seconds, charge) by price, the default's model `None`.
pub fn charges(runs: &[Usage], pricing: &crate::pricing::Pricing) -> Vec<(crate::pricing::Price, u64, u128)> {
    let mut by_price: Vec<(crate::pricing::Price, Vec<Usage>)> = vec![];
    for u in runs {
        let price = pricing.price_of(u.gpu_model.as_deref());
        match by_price.iter_mut().find(|(p, _)| *p == price) {
            Some((_, us)) => us.push(u.clone()),
            None => by_price.push((price, vec![u.clone()])),
        }
    }
    by_price
        .into_iter()
        .map(|(p, us)| {
            let secs = gpu_seconds(&us);
            let charge = (secs as u128 * p.per_gpu_hour).div_ceil(3600);
            (p, secs, charge)
        })
        .collect()
}

/// GPU-seconds to charge: each run's seconds × GPUs, summed, rounded up to a whole second.
pub fn gpu_seconds(runs: &[Usage]) -> u64 {
    let millis: i64 = runs.iter().map(|u| (u.ended_at - u.started_at).num_milliseconds().max(0) * u.gpus as i64).sum();
    (millis as u64).div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(attempt: u32, index: u32, gpus: u32, from: i64, to_ms: i64) -> Usage {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        Usage {
            attempt,
            index,
            miner: "m".into(),
            gpus,
            gpu_model: None,
            started_at: t0 + chrono::Duration::seconds(from),
            ended_at: t0 + chrono::Duration::milliseconds(to_ms),
            how: "exited 0".into(),
        }
    }

    #[test]
    fn the_limit_counts_wall_time_and_the_charge_gpu_seconds_each_once() {
        // Attempt 0: two ranks of 2 GPUs, one lost at 10 s, the other stopped at 12 s;
        // attempt 1: both for 5.5 s.
        let runs =
            [run(0, 0, 2, 0, 12_000), run(0, 1, 2, 0, 10_000), run(1, 0, 2, 20, 25_500), run(1, 1, 2, 20, 25_500)];
        assert_eq!(wall_seconds(&runs), 12.0 + 5.5);
        assert_eq!(gpu_seconds(&runs), 2 * 12 + 2 * 10 + 2 * 2 * 6 - 2);
        assert_eq!(gpu_seconds(&[run(0, 0, 1, 0, 1)]), 1, "a started second is a second");
        assert_eq!(gpu_seconds(&[]), 0);
    }
}
