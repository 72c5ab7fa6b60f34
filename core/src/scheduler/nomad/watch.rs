//! The allocation event stream: aic jobs' lost and failed allocations, and what
//! `scheduler::recovery` says they mean.

use std::time::Duration;

use aic_schemas::JobManifest;
use serde_json::Value;

use super::{NomadError, NomadScheduler, gang};
use crate::Store;
use crate::layout::JobKey;
use crate::scheduler::{ScheduleError, Scheduler, recovery};
use crate::status;

/// What the watcher did about one allocation update.
#[derive(Debug, Clone, PartialEq)]
pub enum AllocAction {
    Nothing,
    /// The job was registered again with this attempt.
    Restarted(u32),
    /// Retries were used up; the job failed with this reason.
    Failed(String),
    /// The program failed (the worker said so): the other allocations were stopped.
    Stopped,
}

impl NomadScheduler {
    /// Follows Nomad's event stream (allocation updates in the namespace) and acts on aic
    /// jobs' lost or failed allocations; reconnects from the last index after a drop. No
    /// polling: the stream is a long-lived response.
    pub async fn watch(&self, store: Store, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut index = 0u64;
        loop {
            // What the stream may have missed while it was down (or before it first opened).
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "cannot reconcile Nomad's allocations");
            }
            tokio::select! {
                _ = &mut stop => return,
                r = self.follow(&store, &mut index) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "Nomad event stream dropped; reconnecting");
                    }
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
        }
    }

    async fn follow(&self, store: &Store, index: &mut u64) -> Result<(), NomadError> {
        // A stream opened at index N starts with the frame of index N: resume after it.
        let from = if *index == 0 { 0 } else { *index + 1 };
        // Every namespace's allocations: one of another team's ending frees GPUs a waiting gang
        // job may take (the ACL policy reads jobs in every namespace).
        let url = self.url(
            "event/stream",
            &[("topic", "Allocation:*".into()), ("index", from.to_string()), ("namespace", "*".into())],
        );
        let mut rb = self.stream_http.get(url);
        if let Some(t) = &self.cfg.token {
            rb = rb.header("X-Nomad-Token", t);
        }
        let silent = || {
            NomadError::Unreachable(format!(
                "{}: the event stream was silent for {} s",
                self.cfg.addr,
                self.cfg.stream_idle.as_secs_f64()
            ))
        };
        let mut resp = tokio::time::timeout(self.cfg.stream_idle, rb.send())
            .await
            .map_err(|_| silent())?
            .map_err(|e| NomadError::Unreachable(format!("{}: {e}", self.cfg.addr)))?;
        if !resp.status().is_success() {
            let code = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            return Err(if code == 403 { NomadError::Forbidden(text) } else { NomadError::Api(code, text) });
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            // Nomad sends a heartbeat every 10 s: silence for longer is a dead connection.
            let chunk = tokio::time::timeout(self.cfg.stream_idle, resp.chunk())
                .await
                .map_err(|_| silent())?
                .map_err(|e| NomadError::Unreachable(e.to_string()))?;
            let Some(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(v) = serde_json::from_slice::<Value>(&line) else { continue };
                for ev in v["Events"].as_array().into_iter().flatten() {
                    if let Some(a) = ev.get("Payload").and_then(|p| p.get("Allocation")) {
                        if let Err(e) = self.pull_progress(store, a).await {
                            tracing::warn!(alloc = ?a["ID"], error = %e, "cannot report an image pull in the job's log");
                        }
                        if matches!(a["ClientStatus"].as_str(), Some("complete" | "failed" | "lost" | "unknown")) {
                            // GPUs may have freed up for a job waiting to be placed whole.
                            self.freed.notify_one();
                            if let Err(e) = self.meter_ended(a).await {
                                tracing::warn!(alloc = ?a["ID"], error = %e, "cannot record what the allocation used");
                            }
                        }
                        match self.on_alloc(store, a).await {
                            Ok(act) => {
                                if act != AllocAction::Nothing {
                                    tracing::info!(job = ?a["JobID"], ?act, "acted on an allocation update");
                                }
                                if matches!(
                                    a["ClientStatus"].as_str(),
                                    Some("complete" | "failed" | "lost" | "unknown")
                                ) && let Some(id) = a["ID"].as_str()
                                {
                                    self.handled(id);
                                }
                            }
                            Err(e) => tracing::warn!(job = ?a["JobID"], error = %e, "allocation update not handled"),
                        }
                    }
                }
                if let Some(i) = v["Index"].as_u64() {
                    *index = (*index).max(i);
                }
            }
        }
        Ok(())
    }

    /// What the event stream may have missed: Nomad keeps its last events in a buffer of
    /// 100 and a stream resumed past them starts at the closest one it has
    /// (`nomad/stream/event_buffer.go`, `StartAtClosest`), so an allocation lost while the
    /// watcher was reconnecting (or before it started) would never be acted on, its job
    /// `running` for ever. Lists the namespace's allocations and handles every ended one of
    /// aic's jobs as its event would have been: metered, and a lost, failed or unknown one
    /// acted on (`on_alloc` changes nothing for one of a version already replaced). Run on
    /// every (re)connect of the stream and every housekeeping pass; allocations handled are
    /// remembered and skipped. How many it acted on.
    pub async fn reconcile(&self) -> Result<usize, ScheduleError> {
        let ns = self.namespace();
        let allocs =
            self.call(reqwest::Method::GET, "allocations", &[("namespace", ns)], None).await?.unwrap_or_default();
        let mut acted = 0;
        for a in allocs.as_array().into_iter().flatten() {
            let Some(id) = a["ID"].as_str() else { continue };
            if !a["JobID"].as_str().is_some_and(|j| j.starts_with("aic-"))
                || !matches!(a["ClientStatus"].as_str(), Some("complete" | "failed" | "lost" | "unknown"))
                || self.reconciled.lock().unwrap().contains(id)
            {
                continue;
            }
            self.meter_ended(a).await?;
            match self.on_alloc(&self.store, a).await? {
                AllocAction::Nothing => {}
                act => {
                    acted += 1;
                    tracing::warn!(job = ?a["JobID"], alloc = id, ?act, "acted on an allocation the event stream did not report");
                }
            }
            self.handled(id);
        }
        Ok(acted)
    }

    /// A user's image being pulled (`--image`): the docker driver reports it as task events
    /// of type `Driver` (`structs.TaskDriverMessage`): "Downloading image" when the pull
    /// starts (`drivers/docker/driver.go` `pullImage`), then "Docker image pull progress:
    /// Pulled 3/7 (1.2GiB/4.1GiB) layers: …" every 2 minutes while it lasts
    /// (`drivers/docker/progress.go`, the coordinator's `handleSlowPullProgressReport`), and
    /// a `Driver Failure` event with its `DriverError` when it fails. Before the worker runs
    /// nobody else can tell the job's owner: each new one becomes a line of the allocation's
    /// log (`[aic] pulling image …`), stored as a chunk of its own (create-only, at the next
    /// free number: the worker's own chunks take the numbers after it). How many lines it
    /// wrote.
    pub async fn pull_progress(&self, store: &Store, a: &Value) -> Result<usize, ScheduleError> {
        let (Some(id), Some(jid)) = (a["ID"].as_str(), a["JobID"].as_str().filter(|j| j.starts_with("aic-"))) else {
            return Ok(0);
        };
        if a["Namespace"].as_str().zip(self.cfg.namespace.as_deref()).is_some_and(|(n, mine)| n != mine) {
            return Ok(0);
        }
        let seen = self.pulls.lock().unwrap().get(id).map_or(i64::MIN, |p| p.0);
        let mut lines: Vec<(i64, String)> = Vec::new();
        for ev in a["TaskStates"]["worker"]["Events"].as_array().into_iter().flatten() {
            let at = ev["Time"].as_i64().unwrap_or(0);
            if at <= seen {
                continue;
            }
            let text = |k: &str| ev[k].as_str().unwrap_or_default().trim().to_string();
            let line = match ev["Type"].as_str() {
                Some("Driver") => {
                    let msg = text("DriverMessage");
                    if msg == "Downloading image" {
                        "pulling image {image}".to_string()
                    } else if let Some(p) = msg.strip_prefix("Docker image pull progress:") {
                        format!("pulling image: {}", p.trim())
                    } else {
                        continue;
                    }
                }
                Some("Driver Failure") if text("DriverError").contains("pull") => {
                    format!("the image could not be pulled: {}", text("DriverError"))
                }
                _ => continue,
            };
            lines.push((at, line));
        }
        let Some(newest) = lines.iter().map(|l| l.0).max() else { return Ok(0) };
        // The job the allocation is of (an allocation event carries no job).
        let Some(job) = self.call(reqwest::Method::GET, &format!("job/{jid}"), &[], None).await? else {
            return Ok(0);
        };
        let meta = &job["Meta"];
        let (Some(owner), Some(aic_job)) = (meta["aic_owner"].as_str(), meta["aic_job"].as_str()) else {
            return Ok(0);
        };
        let bad = |e: String| ScheduleError::Backend(format!("{jid}: {e}"));
        let key = JobKey::new(
            owner.parse().map_err(|e| bad(format!("aic_owner: {e}")))?,
            aic_job.parse().map_err(|e: String| bad(format!("aic_job: {e}")))?,
        );
        let index: u32 = a["Name"]
            .as_str()
            .and_then(|n| n.rsplit('[').next())
            .and_then(|n| n.trim_end_matches(']').parse().ok())
            .unwrap_or(0);
        let image = job["TaskGroups"][0]["Tasks"][0]["Config"]["image"].as_str().unwrap_or("?");
        let text: String = lines.iter().map(|(_, l)| format!("[aic] {}\n", l.replace("{image}", image))).collect();
        let mut n = self.pulls.lock().unwrap().get(id).map_or(0, |p| p.1);
        loop {
            let created = store
                .create_bytes(&key.log_chunk(index, n), bytes::Bytes::from(text.clone()))
                .await
                .map_err(|e| ScheduleError::Backend(e.to_string()))?;
            n += 1;
            if created == crate::store::Created::Created {
                break;
            }
        }
        let mut pulls = self.pulls.lock().unwrap();
        if pulls.len() >= 10_000 {
            pulls.clear();
        }
        pulls.insert(id.to_string(), (newest, n));
        Ok(lines.len())
    }

    /// Remembers an ended allocation as handled.
    fn handled(&self, id: &str) {
        let mut seen = self.reconciled.lock().unwrap();
        if seen.len() >= 100_000 {
            seen.clear();
        }
        seen.insert(id.to_string());
    }

    /// Records what an ended allocation of one of aic's jobs used (see `limits`); when none of
    /// the job's allocations runs any more, tells the host (`Scheduler::on_job_end`).
    pub async fn meter_ended(&self, a: &Value) -> Result<(), ScheduleError> {
        if !a["JobID"].as_str().is_some_and(|id| id.starts_with("aic-"))
            || a["Namespace"].as_str().zip(self.cfg.namespace.as_deref()).is_some_and(|(n, mine)| n != mine)
        {
            return Ok(());
        }
        let id = a["ID"].as_str().unwrap_or_default();
        let Some(full) = self.call(reqwest::Method::GET, &format!("allocation/{id}"), &[], None).await? else {
            return Ok(());
        };
        if let Some(job) = self.meter(&full).await? {
            let hook = self.job_ended.lock().unwrap().clone();
            if self.finished(&job).await? {
                // No task of it runs: its uid goes back to the pool.
                let id = full["JobID"].as_str().unwrap_or_default();
                self.release_uid(id, &full["Job"]["Meta"]).await?;
                if let Some(hook) = hook {
                    hook(&job);
                }
            }
        }
        Ok(())
    }

    /// One allocation update. A lost allocation (its node gone) or one that failed while the
    /// job is still going restarts the whole job from its last checkpoint with the next
    /// attempt (at most [`MAX_RETRIES`] times, then the job fails with the reason); a failure
    /// the worker recorded stops the other allocations. Updates of an older version of the
    /// job (the allocations a restart replaced) change nothing.
    pub async fn on_alloc(&self, store: &Store, a: &Value) -> Result<AllocAction, ScheduleError> {
        let Some(id) = a["JobID"].as_str().filter(|id| id.starts_with("aic-")) else { return Ok(AllocAction::Nothing) };
        if let (Some(ns_), Some(mine)) = (a["Namespace"].as_str(), &self.cfg.namespace)
            && ns_ != mine
        {
            return Ok(AllocAction::Nothing); // another team's job that happens to be named aic-…
        }
        let client = a["ClientStatus"].as_str().unwrap_or("");
        // `unknown`: its node stopped answering, and the job's `disconnect { replace = false }`
        // keeps Nomad from replacing it; for a training job that is a lost rank. A rank Nomad's
        // servers stopped while the job goes on (its node drained: batch allocations are
        // stopped at the drain's deadline and never replaced, `nomad/drainer/watch_jobs.go`;
        // before 1.11 one was replaced alone) is lost too: the job would wait for it for ever.
        let stopped_by_nomad = client == "complete" && a["DesiredStatus"] == "stop";
        if !matches!(client, "lost" | "failed" | "unknown") && !stopped_by_nomad {
            return Ok(AllocAction::Nothing);
        }
        let Some(job) = self.call(reqwest::Method::GET, &format!("job/{id}"), &[], None).await? else {
            return Ok(AllocAction::Nothing); // deregistered (cancelled)
        };
        if job["Stop"] == true {
            // aic records a job's ending before it stops its Nomad job; stopped with none
            // recorded, it was stopped outside aic (`nomad job stop`).
            return self.stopped_outside(store, &job).await;
        }
        // Which version of the job the allocation ran: an allocation event carries no job
        // (Nomad strips it to keep events small: nomad/state/events.go), so it is read from
        // the allocation itself (`GET /v1/allocation/:id` returns it with the job it was made
        // for). An allocation of an older version (one a restart replaced) changes nothing.
        let alloc_id = a["ID"].as_str().unwrap_or_default();
        let Some(full) = self.call(reqwest::Method::GET, &format!("allocation/{alloc_id}"), &[], None).await? else {
            return Ok(AllocAction::Nothing); // collected: long gone
        };
        // A job purged and registered again (a gang job's restart) is a new job: its
        // CreateIndex differs from the one the allocation was made for.
        let other_job =
            full["Job"]["CreateIndex"].as_u64().zip(job["CreateIndex"].as_u64()).is_some_and(|(a, b)| a != b);
        if other_job || full["Job"]["Version"].as_u64() < job["Version"].as_u64() {
            return Ok(AllocAction::Nothing);
        }
        let meta = &job["Meta"];
        let (Some(owner), Some(jid)) = (meta["aic_owner"].as_str(), meta["aic_job"].as_str()) else {
            return Ok(AllocAction::Nothing);
        };
        let key = JobKey::new(
            owner.parse().map_err(|e| ScheduleError::Backend(format!("{id}: aic_owner: {e}")))?,
            jid.parse().map_err(|e: String| ScheduleError::Backend(format!("{id}: aic_job: {e}")))?,
        );
        let attempt: u32 = meta["aic_attempt"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
        let backend = |e: crate::StoreError| ScheduleError::Backend(e.to_string());
        let current = status::current(store, &key).await.map_err(backend)?;
        let run = crate::runs::run_of(attempt);
        if current.as_ref().is_some_and(|c| c.run != run) {
            return Ok(AllocAction::Nothing); // an allocation of a run that ended before
        }
        if current.as_ref().is_some_and(|c| c.state.is_terminal()) {
            // The worker recorded how the program ended: nothing of the job should run on.
            self.cancel(&key).await?;
            return Ok(AllocAction::Stopped);
        }
        if stopped_by_nomad && meta["aic_kind"] == "serve" {
            return Ok(AllocAction::Nothing); // a replica: Nomad migrates it (its service's `migrate`)
        }
        if meta["aic_kind"] == "serve" {
            // Replicas do not depend on each other: Nomad reschedules the lost one alone
            // (the service's ReschedulePolicy) while the others serve.
            return Ok(AllocAction::Nothing);
        }
        let node = a["NodeName"].as_str().unwrap_or("?");
        let why = recovery::lost(
            "allocation",
            a["Name"].as_str().and_then(|n| n.rsplit('[').next()).map(|n| n.trim_end_matches(']')).unwrap_or("?"),
            node,
            &format!(
                "{}{}",
                if client == "unknown" {
                    "lost"
                } else if stopped_by_nomad {
                    "stopped by Nomad"
                } else {
                    client
                },
                // An unknown allocation's own words ("alloc is unknown since its node is
                // disconnected") say less to the job's owner than what happened.
                if client == "unknown" {
                    Some("its node stopped answering")
                } else {
                    a[if stopped_by_nomad { "DesiredDescription" } else { "ClientDescription" }]
                        .as_str()
                        .filter(|d| !d.is_empty())
                }
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
            ),
        );
        let attempt = match recovery::after_lost_allocation(store, &key, &why, attempt).await.map_err(backend)? {
            recovery::AfterLoss::Retry { attempt } => attempt,
            recovery::AfterLoss::Failed(reason) => {
                self.cancel(&key).await?;
                return Ok(AllocAction::Failed(reason));
            }
            recovery::AfterLoss::Ended => return Ok(AllocAction::Nothing),
        };
        let manifest: JobManifest = crate::runs::manifest(store, &key, run)
            .await
            .map_err(backend)?
            .ok_or_else(|| ScheduleError::Backend(format!("{id}: the run has no manifest")))?;
        // Started again only while its deposit stays held long enough for the rest of its
        // run (as a queued run: `payment::too_late_to_start`); else it ends here, refunded
        // for what it did not use.
        if let Some(why) = crate::payment::too_late_to_start(&manifest, chrono::Utc::now()) {
            let t = crate::status::Transition::new(aic_schemas::JobState::Failed, recovery::BY)
                .reason(why.clone())
                .run(run);
            crate::status::advance(store, &key, t).await.map_err(backend)?;
            self.cancel(&key).await?;
            return Ok(AllocAction::Failed(why));
        }
        let registered = if gang::is_gang(&manifest) {
            // Every rank stops (each keeps its last checkpoint) and the job is registered anew,
            // whole or not at all (`gang`): a new version would be placed in part like any.
            self.purge(id).await?;
            self.register(&key, &manifest, attempt, true).await
        } else {
            self.register(&key, &manifest, attempt, false).await
        };
        match registered {
            Ok(_) => Ok(AllocAction::Restarted(attempt)),
            // The pool no longer has room for it at all (its node is down in Nomad's word, and
            // no other fits): it fails with the reason and is settled for what it used. (The
            // error was only logged: the job stayed `retrying`, its deposit locked.)
            Err(ScheduleError::Unplaceable(why)) => {
                let why = format!("cannot be placed again: {why}");
                let t = crate::status::Transition::new(aic_schemas::JobState::Failed, recovery::BY)
                    .reason(why.clone())
                    .run(run);
                crate::status::advance(store, &key, t).await.map_err(backend)?;
                self.cancel(&key).await?;
                Ok(AllocAction::Failed(why))
            }
            Err(e) => Err(e),
        }
    }

    /// An allocation of a Nomad job stopped with no ending of aic's recorded for its run: it
    /// was stopped outside aic (the operator's `nomad job stop`). The run fails with that
    /// reason (and is settled for what it used) rather than staying `running`, its deposit
    /// locked or reclaimable unpaid.
    async fn stopped_outside(&self, store: &Store, job: &Value) -> Result<AllocAction, ScheduleError> {
        let meta = &job["Meta"];
        let (Some(owner), Some(jid)) = (meta["aic_owner"].as_str(), meta["aic_job"].as_str()) else {
            return Ok(AllocAction::Nothing);
        };
        let (Ok(owner), Ok(jid)) = (owner.parse(), jid.parse::<aic_schemas::JobId>()) else {
            return Ok(AllocAction::Nothing);
        };
        let key = JobKey::new(owner, jid);
        let attempt: u32 = meta["aic_attempt"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
        let run = crate::runs::run_of(attempt);
        let why = "its Nomad job was stopped outside aic (nomad job stop); charged for what it ran".to_string();
        let t =
            crate::status::Transition::new(aic_schemas::JobState::Failed, recovery::BY).reason(why.clone()).run(run);
        match crate::status::advance(store, &key, t).await.map_err(|e| ScheduleError::Backend(e.to_string()))? {
            crate::status::Advanced::Applied(_) => Ok(AllocAction::Failed(why)),
            _ => Ok(AllocAction::Nothing),
        }
    }
}
