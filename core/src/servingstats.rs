//! A deployment's request figures as the bucket holds them: each functions host writes, for
//! each deployment it forwarded requests to, a document per minute
//! (`pool/serving-stats/<deployment>/<YYYYMMDDHH>/<MM>-<host>.json`, `ServingMinute`); a reader
//! lists only the hours it asks for, so what it reads does not grow with the deployment's age.

use aic_schemas::ServingMinute;
use chrono::{DateTime, Duration, DurationRound, Utc};

use crate::layout::serving_stats_hour;
use crate::store::{Store, StoreError};

/// Largest figures document read.
const MAX_DOC: u64 = 16 * 1024;
/// Most hours one read looks through.
pub const MAX_HOURS: i64 = 48;

/// The deployment's figures from `since` to `now`, one per minute (every host's added up),
/// oldest first.
pub async fn read(
    store: &Store,
    deployment: &str,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<ServingMinute>, StoreError> {
    let since = since.max(now - Duration::hours(MAX_HOURS));
    let mut hour = since.duration_trunc(Duration::hours(1)).unwrap_or(since);
    let mut by_minute: std::collections::BTreeMap<DateTime<Utc>, ServingMinute> = Default::default();
    while hour <= now {
        for m in store.list(&serving_stats_hour(deployment, hour)).await? {
            let doc = match store.get_json::<ServingMinute>(m.location.as_ref(), MAX_DOC).await {
                Ok(Some(d)) => d,
                Ok(None) | Err(StoreError::Json { .. }) | Err(StoreError::TooLarge { .. }) => continue,
                Err(e) => return Err(e),
            };
            if doc.minute + Duration::minutes(1) <= since || doc.deployment != deployment {
                continue;
            }
            let e = by_minute.entry(doc.minute).or_insert_with(|| ServingMinute {
                deployment: deployment.to_string(),
                host: "*".into(),
                minute: doc.minute,
                ..Default::default()
            });
            e.add(&doc);
        }
        hour += Duration::hours(1);
    }
    Ok(by_minute.into_values().collect())
}

/// The minutes' figures added up (`host` "*", `minute` the first's).
pub fn total(minutes: &[ServingMinute]) -> ServingMinute {
    let mut t = ServingMinute { host: "*".into(), ..Default::default() };
    if let Some(first) = minutes.first() {
        t.deployment = first.deployment.clone();
        t.minute = first.minute;
    }
    for m in minutes {
        t.add(m);
    }
    t
}

/// A window's figures as `aic deploy status` and the web app show them.
pub fn summary(minutes: &[ServingMinute]) -> serde_json::Value {
    let t = total(minutes);
    serde_json::json!({
        "requests": t.requests,
        "replica_errors": t.replica_errors,
        "gateway_errors": t.gateway_errors,
        "refused": t.refused,
        "p50_ms": t.percentile_ms(0.50),
        "p95_ms": t.percentile_ms(0.95),
        "p99_ms": t.percentile_ms(0.99),
        "max_in_flight": t.max_in_flight,
        "max_replicas": t.replicas,
        "cold_starts": t.cold_starts,
        "max_cold_start_ms": (t.cold_starts > 0).then_some(t.cold_start_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_merged_buckets() {
        let mut a = ServingMinute { latency_ms: vec![0; 15], ..Default::default() };
        a.latency_ms[2] = 90; // ≤ 25 ms
        let mut b = ServingMinute { latency_ms: vec![0; 15], ..Default::default() };
        b.latency_ms[6] = 9; // ≤ 500 ms
        b.latency_ms[14] = 1; // over 120 s
        let t = total(&[a, b]);
        assert_eq!(t.percentile_ms(0.5), Some(25));
        assert_eq!(t.percentile_ms(0.95), Some(500));
        assert_eq!(t.percentile_ms(0.99), Some(500));
        assert_eq!(t.percentile_ms(1.0), Some(120_000));
        assert_eq!(ServingMinute::default().percentile_ms(0.5), None);
    }
}
