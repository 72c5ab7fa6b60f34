//! Each job's uid on Nomad, handed out by the pool, never derived from the job's id (its owner
//! chooses the id: a uid computed from it could be made to equal a victim's, and then the two
//! programs could signal each other and read each other's files in what the tasks share, the
//! environment cache above all).
//!
//! A uid is held by a claim: the Nomad Variable `aic/uids/<uid>` naming the Nomad job,
//! written only if it does not exist (`PUT /v1/var/:path?cas=0`; Nomad's `variableUpsert`,
//! `command/agent/variable_endpoint.go`, answers 409 with the variable that holds the path),
//! so two functions hosts registering at once never take the same one. The job's meta keeps
//! it (`aic_uid`): a restart (a new version of the job) keeps its uid, and the uids in use are
//! those of the jobs Nomad runs (`GET /v1/jobs?meta=true`, what runs now, not the history).
//! A claim is given back once no allocation of its job runs any more (the watcher's
//! `meter_ended`: a deregistered job's tasks run on until their client has killed them, so
//! not at the cancel) and the job as Nomad has it is stopped, gone or holds another uid
//! (`DELETE ?cas=<its index>`, only the job's own); one whose job runs no more (a host stopped
//! before it gave it back, a job cancelled before it was placed) is taken over once it is
//! older than [`STALE_AFTER`] (a claim is made just before its job is registered, and must
//! not be taken in that instant).

use serde_json::{Value, json};

use super::{NomadError, NomadScheduler};
use crate::scheduler::ScheduleError;

/// Where the claims are: `<PREFIX><uid>`.
pub const PREFIX: &str = "aic/uids/";

/// How old a claim whose job Nomad does not run must be before another job takes its uid.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Claims tried before giving up (each a uid no running job holds).
const TRIES: u32 = 64;

impl NomadScheduler {
    /// The uid of Nomad job `id` (`registered`: the job as Nomad has it, if it does): the one
    /// its meta names while its claim is still its own, else a free one, claimed.
    pub(super) async fn job_uid(&self, id: &str, registered: Option<&Value>) -> Result<u32, ScheduleError> {
        let (first, count) = self.cfg.job_uids;
        let in_range = |u: u32| u >= first && u - first < count;
        // The uids Nomad's running aic jobs hold.
        let q = [("prefix", "aic-".to_string()), ("meta", "true".to_string())];
        let jobs = self.call(reqwest::Method::GET, "jobs", &q, None).await?.unwrap_or(Value::Null);
        let live: std::collections::HashMap<u32, String> = jobs
            .as_array()
            .into_iter()
            .flatten()
            // A stopped job's tasks run on until its client has killed them: live until dead.
            .filter(|j| j["Status"] != "dead")
            .filter_map(|j| Some((j["Meta"]["aic_uid"].as_str()?.parse().ok()?, j["ID"].as_str()?.to_string())))
            .collect();
        // The uid its meta names, unless another running job holds it now.
        let held = registered
            .and_then(|j| j["Meta"]["aic_uid"].as_str()?.parse::<u32>().ok())
            .filter(|u| in_range(*u) && live.get(u).is_none_or(|j| j == id));
        let start = (ulid::Ulid::new().random() % u128::from(count.max(1))) as u32;
        let candidates = held
            .into_iter()
            .chain(
                (0..count).map(|k| first + (start + k) % count).filter(|u| !live.contains_key(u) && Some(*u) != held),
            )
            .take(TRIES as usize + 1);
        for uid in candidates {
            if self.claim(uid, id, &live).await? {
                return Ok(uid);
            }
        }
        Err(ScheduleError::Backend(format!(
            "no free job uid: {TRIES} uids of AIC_JOB_UIDS tried were all claimed ({} jobs run now)",
            live.len()
        )))
    }

    /// Claims `uid` for job `id`: true when the claim is (now) the job's.
    async fn claim(
        &self,
        uid: u32,
        id: &str,
        live: &std::collections::HashMap<u32, String>,
    ) -> Result<bool, ScheduleError> {
        let path = format!("{PREFIX}{uid}");
        let body = json!({"Namespace": self.namespace(), "Path": path, "Items": {"job": id}});
        let put = |cas: u64| {
            let body = body.clone();
            let path = path.clone();
            async move {
                self.call(reqwest::Method::PUT, &format!("var/{path}"), &[("cas", cas.to_string())], Some(&body)).await
            }
        };
        match put(0).await {
            Ok(_) => Ok(true),
            Err(NomadError::Api(409, text)) => {
                // Held: the variable that holds it.
                let held: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                // A claim whose holder cannot be read is held.
                let Some(holder) = held["Items"]["job"].as_str() else { return Ok(false) };
                if holder == id {
                    return Ok(true);
                }
                let age_ns =
                    held["ModifyTime"].as_i64().map(|t| chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) - t);
                let stale =
                    !live.values().any(|j| j == holder) && age_ns.is_some_and(|a| a >= STALE_AFTER.as_nanos() as i64);
                let Some(index) = held["ModifyIndex"].as_u64().filter(|_| stale) else { return Ok(false) };
                match put(index).await {
                    Ok(_) => Ok(true),
                    Err(NomadError::Api(409, _)) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Gives back the uid job `id` held (`meta`: the meta of the version whose allocations
    /// all ended), if the claim is still its own and the job as Nomad has it now (a restart
    /// registers it again) does not run under it.
    pub(super) async fn release_uid(&self, id: &str, meta: &Value) -> Result<(), ScheduleError> {
        let Some(uid) = meta["aic_uid"].as_str().and_then(|u| u.parse::<u32>().ok()) else { return Ok(()) };
        if let Some(now) = self.call(reqwest::Method::GET, &format!("job/{id}"), &[], None).await?
            && now["Stop"] != true
            && now["Status"] != "dead"
            && now["Meta"]["aic_uid"].as_str() == Some(uid.to_string().as_str())
        {
            return Ok(());
        }
        let path = format!("var/{PREFIX}{uid}");
        let Some(held) = self.call(reqwest::Method::GET, &path, &[], None).await? else { return Ok(()) };
        let Some(index) = held["ModifyIndex"].as_u64().filter(|_| held["Items"]["job"] == id) else { return Ok(()) };
        match self.call(reqwest::Method::DELETE, &path, &[("cas", index.to_string())], None).await {
            // Taken over meanwhile: another job's now.
            Ok(_) | Err(NomadError::Api(409, _)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
