//! Paid time and usage on Nomad.
//!
//! - **Time limit.** A training job or deployment is registered with `aic_deadline` in its
//!   meta: now + its paid hours − the wall time its earlier attempts used (the pool's `usage`
//!   records) + the grace its workers get to stop the program themselves (a deployment's
//!   workers stop at `aic_serve_until`, the deadline less the grace, told as `AIC_SERVE_UNTIL`). Nomad has no run-time limit of its
//!   own, so the housekeeping loop lists aic's jobs with their meta (`GET /v1/jobs?meta=true`:
//!   what runs now, not the history) and deregisters any past its deadline, recording
//!   `timed_out`. A worker that dies, or a program that kills its worker, extends nothing.
//! - **Usage.** When an allocation of an aic job ends (complete, failed, lost, unknown), the
//!   watcher reads it (`GET /v1/allocation/:id`) and records its task's start and end as Nomad
//!   saw them (`TaskStates.worker`: its first `Started` event or `StartedAt`, whichever is
//!   earlier — `StartedAt` is the last start of a task restarted in place — to `FinishedAt`; for a lost or unknown allocation, when
//!   Nomad marked it so) and its reserved GPUs, create-only under `pool/usage/`.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::NomadScheduler;
use crate::layout::JobKey;
use crate::scheduler::{ScheduleError, Scheduler};
use crate::status;
use crate::usage::{self, Usage};
use aic_schemas::JobManifest;

fn backend(e: crate::StoreError) -> ScheduleError {
    ScheduleError::Backend(e.to_string())
}

/// A time Nomad wrote (RFC 3339; the zero time means "never").
fn nomad_time(v: &Value) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(v.as_str()?).ok()?.with_timezone(&Utc);
    (t.timestamp() > 0).then_some(t)
}

impl NomadScheduler {
    /// When the job registered now for `attempt` must stop (unix seconds).
    pub(super) async fn deadline(&self, job: &JobKey, m: &JobManifest, attempt: u32) -> Result<i64, ScheduleError> {
        // This run's earlier attempts (a resumed job's runs each have their own paid hours).
        let runs = usage::of_run(&self.store, job, crate::runs::run_of(attempt)).await.map_err(backend)?;
        let before: Vec<Usage> = runs.into_iter().filter(|u| u.attempt < attempt).collect();
        let left = (crate::pricing::paid_hours(m.request.max_hours) * 3600.0 - usage::wall_seconds(&before)).max(0.0);
        Ok(Utc::now().timestamp() + left.ceil() as i64 + self.cfg.time_limit_grace.as_secs() as i64)
    }

    /// Deregisters aic's jobs past their deadline and records `timed_out` (a deployment:
    /// `succeeded`, served its hours); returns the jobs stopped.
    pub async fn stop_overdue(&self) -> Result<Vec<JobKey>, ScheduleError> {
        let q = [("prefix", "aic-".to_string()), ("meta", "true".to_string())];
        let jobs = self.call(reqwest::Method::GET, "jobs", &q, None).await?.unwrap_or(Value::Null);
        let now = Utc::now().timestamp();
        let mut stopped = vec![];
        for j in jobs.as_array().into_iter().flatten() {
            let meta = &j["Meta"];
            let Some(deadline) = meta["aic_deadline"].as_str().and_then(|d| d.parse::<i64>().ok()) else { continue };
            if deadline > now || j["Status"] == "dead" || j["Stop"] == true {
                continue;
            }
            let (Some(owner), Some(id)) = (meta["aic_owner"].as_str(), meta["aic_job"].as_str()) else { continue };
            let (Ok(owner), Ok(id)) = (owner.parse(), id.parse()) else { continue };
            let key = JobKey::new(owner, id);
            let run = crate::runs::run_of(meta["aic_attempt"].as_str().and_then(|a| a.parse().ok()).unwrap_or(0));
            // The ending first, then the stop: its workers record none when stopped, so a job
            // stopped with nothing recorded would stay `running`.
            let m: Option<JobManifest> = crate::runs::manifest(&self.store, &key, run).await.map_err(backend)?;
            let serve = m.as_ref().is_some_and(|m| m.request.kind == aic_schemas::JobKind::Serve);
            let t = crate::scheduler::recovery::paid_time_over(serve, m.map_or(0.0, |m| m.request.max_hours), run);
            status::advance(&self.store, &key, t).await.map_err(backend)?;
            self.cancel(&key).await?;
            stopped.push(key);
        }
        Ok(stopped)
    }

    /// Records what an ended allocation of an aic job used (`full`: `GET /v1/allocation/:id`);
    /// the job it belongs to.
    pub(super) async fn meter(&self, full: &Value) -> Result<Option<JobKey>, ScheduleError> {
        let meta = &full["Job"]["Meta"];
        let (Some(owner), Some(id)) = (meta["aic_owner"].as_str(), meta["aic_job"].as_str()) else { return Ok(None) };
        let (Ok(owner), Ok(id)) = (owner.parse(), id.parse()) else { return Ok(None) };
        let key = JobKey::new(owner, id);
        let task = &full["TaskStates"]["worker"];
        // `StartedAt` is the task's last start (Nomad updates it each time the task starts):
        // a task restarted in place (its program killed the worker) held its GPUs from its
        // first start, which its `Started` events keep.
        let first_event = task["Events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["Type"] == "Started")
            .filter_map(|e| e["Time"].as_i64())
            .min()
            .map(DateTime::from_timestamp_nanos);
        let Some(started_at) = nomad_time(&task["StartedAt"]).into_iter().chain(first_event).min() else {
            return Ok(Some(key)); // never started
        };
        let status = full["ClientStatus"].as_str().unwrap_or("");
        let modified = full["ModifyTime"].as_i64().and_then(|ns| DateTime::from_timestamp_nanos(ns).into());
        let ended_at = match status {
            // Its node stopped answering: counted until Nomad marked it so.
            "lost" | "unknown" => modified.unwrap_or_else(Utc::now),
            _ => nomad_time(&task["FinishedAt"]).or(modified).unwrap_or_else(Utc::now),
        };
        let gpus = full["AllocatedResources"]["Tasks"]["worker"]["Devices"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d["DeviceIDs"].as_array().map(|i| i.len()).unwrap_or(0) as u32)
            .sum();
        // Their device group's name: the model it is charged at.
        let gpu_model = full["AllocatedResources"]["Tasks"]["worker"]["Devices"][0]["Name"].as_str().map(String::from);
        let index = full["Name"]
            .as_str()
            .and_then(|n| n.rsplit('[').next())
            .and_then(|n| n.trim_end_matches(']').parse().ok())
            .unwrap_or(0);
        let u = Usage {
            attempt: meta["aic_attempt"].as_str().and_then(|a| a.parse().ok()).unwrap_or(0),
            index,
            miner: full["NodeName"].as_str().unwrap_or("?").to_string(),
            gpus,
            gpu_model,
            started_at,
            ended_at: ended_at.max(started_at),
            how: status.to_string(),
        };
        usage::record(&self.store, &key, full["ID"].as_str().unwrap_or("alloc"), &u).await.map_err(backend)?;
        Ok(Some(key))
    }
}
