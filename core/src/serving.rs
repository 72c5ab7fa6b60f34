//! A deployment's serving registrations as the bucket holds them.

use aic_schemas::ServingRegistration;

use crate::layout::serving_prefix;
use crate::store::{Store, StoreError};

/// Largest registration read.
pub const MAX_REGISTRATION_BYTES: u64 = 64 * 1024;

/// The registrations of `deployment`, with their keys. A registration is a claim a job's
/// code can write, so one that is not a registration (too large, not its JSON) is passed
/// over; a store that does not answer is an error.
pub async fn registrations(store: &Store, deployment: &str) -> Result<Vec<(String, ServingRegistration)>, StoreError> {
    let mut out = Vec::new();
    for m in store.list(&serving_prefix(deployment)).await? {
        let key = m.location.to_string();
        match store.get_json::<ServingRegistration>(&key, MAX_REGISTRATION_BYTES).await {
            Ok(Some(r)) => out.push((key, r)),
            Ok(None) | Err(StoreError::Json { .. }) | Err(StoreError::TooLarge { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// How many of an owner's newest jobs a deployment listing also looks through, for
/// deployments without a name (which have no record under `pool/names/`).
pub const UNNAMED_LOOKBACK: usize = 100;

/// `owner`'s deployments, newest first, each with its status and request: the named ones from
/// the records dispatch writes (`pool/names/<owner>/<name>/<deployment>.json`), and unnamed
/// ones among the newest [`UNNAMED_LOOKBACK`] jobs — without reading every job the owner has.
pub async fn deployments(
    store: &Store,
    owner: &aic_schemas::Address,
) -> Result<Vec<crate::status::Listed>, StoreError> {
    use crate::status::{Listed, Window, read_listed, recent};
    let prefix = crate::layout::serving_names_of(owner);
    let mut ids: Vec<aic_schemas::JobId> = store
        .list(&prefix)
        .await?
        .iter()
        .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok())
        .collect();
    let newest = recent(store, owner, &Window { limit: Some(UNNAMED_LOOKBACK), ..Default::default() }).await?;
    let mut out: Vec<Listed> = newest
        .into_iter()
        .filter(|l| l.request.as_ref().is_some_and(|r| r.kind == aic_schemas::JobKind::Serve))
        .collect();
    ids.retain(|id| !out.iter().any(|l| &l.job_id == id));
    ids.sort();
    ids.dedup();
    out.extend(read_listed(store, owner, ids).await?);
    out.sort_by(|a, b| b.job_id.cmp(&a.job_id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 300 training jobs, two named deployments older than the newest 100 jobs, one unnamed
    /// deployment among them: the three deployments, newest first; the training jobs are not
    /// read (their requests are junk here, which reading would refuse).
    #[tokio::test]
    async fn deployments_come_from_the_names_and_the_newest_jobs_not_from_every_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
        let owner: aic_schemas::Address = "0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc".parse().unwrap();
        let id = |n: u64| -> aic_schemas::JobId {
            ulid::Ulid::from_parts(1_780_000_000_000 + n * 1000, n as u128).to_string().to_lowercase().parse().unwrap()
        };
        let request = |n: u64, kind: &str, name: Option<&str>| {
            serde_json::json!({
                "version": 1, "kind": kind, "owner": owner, "job_id": id(n), "entrypoint": "app.py", "name": name,
                "miners": 1, "gpus_per_miner": 1, "max_hours": 1.0, "launcher": "command", "args": [], "env": {},
                "created_at": "2026-06-01T00:00:00Z", "expires_at": "2026-06-01T01:00:00Z",
            })
        };
        for n in 0..300u64 {
            let job = crate::JobKey::new(owner, id(n));
            let (kind, name) = match n {
                10 => ("serve", Some("api")),
                20 => ("serve", Some("api")),
                250 => ("serve", None),
                _ => ("train", None),
            };
            let body = if kind == "train" && n < 200 {
                bytes::Bytes::from_static(b"not json")
            } else {
                bytes::Bytes::from(request(n, kind, name).to_string())
            };
            store.put_bytes(&job.request(), body).await.unwrap();
            if let Some(name) = name {
                store
                    .put_json(&crate::layout::serving_name(&owner, name, &id(n)), &serde_json::json!({}))
                    .await
                    .unwrap();
            }
        }
        let got: Vec<aic_schemas::JobId> =
            deployments(&store, &owner).await.unwrap().into_iter().map(|l| l.job_id).collect();
        assert_eq!(got, vec![id(250), id(20), id(10)]);
    }
}
