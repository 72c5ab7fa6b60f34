//! A worker's end: its slots freed; a lost allocation means what `recovery` says (a training
//! job starts again as a whole, a replica alone); queued jobs start as slots free up.

use super::*;

impl LocalScheduler {
    /// A serve job's replica whose worker was lost is started again on its own (the other
    /// replicas keep serving), on a miner with free slots — one without another replica of
    /// the deployment first. Each replica may be replaced [`MAX_RETRIES`] times on average;
    /// after that the deployment fails with the reason.
    pub(super) async fn replace_replica(&self, job: &JobKey, index: u32, why: String) {
        let started = {
            let mut st = self.inner.state.lock().unwrap();
            let Some(r) = st.running.get(job) else { return };
            if r.cancelled || r.restarting.is_some() {
                return;
            }
            let (count, attempt, need) = (r.allocs.len(), r.attempt, r.manifest.request.gpus_per_miner as usize);
            let wants = GpuWants::of(&r.manifest.request);
            let hosting: Vec<usize> = r.allocs.iter().filter(|a| !a.slots.is_empty()).map(|a| a.miner).collect();
            if r.replaced >= recovery::replacements_allowed(count) {
                Err(format!("{why}; no restarts left ({} used)", r.replaced))
            } else {
                let free = |m: &Miner| m.free.iter().filter(|f| **f).count();
                let pick = (0..st.miners.len())
                    .filter(|m| st.miners[*m].down.is_none() && free(&st.miners[*m]) >= need)
                    .filter(|m| wants.matches(st.miners[*m].gpu_model.as_deref(), st.miners[*m].gpu_memory_mb))
                    .max_by_key(|m| (!hosting.contains(m), free(&st.miners[*m])));
                match pick {
                    None => Ok(None),
                    Some(miner) => {
                        let slots: Vec<usize> = st.miners[miner]
                            .free
                            .iter()
                            .enumerate()
                            .filter(|(_, f)| **f)
                            .map(|(s, _)| s)
                            .take(need)
                            .collect();
                        let m = r.manifest.clone();
                        match self.spawn(&st, job, &m, index, count, attempt, miner, &slots) {
                            Ok(spawn::Spawned { child, port, gate, uid, net_slot }) => {
                                for s in &slots {
                                    st.miners[miner].free[*s] = false;
                                }
                                let pid = child.id().unwrap_or_default() as i32;
                                let ticks = ledger::started_ticks(pid).unwrap_or_default();
                                let name = st.miners[miner].name.clone();
                                let r = st.running.get_mut(job).expect("still running");
                                r.allocs[index as usize] = Alloc {
                                    miner,
                                    slots,
                                    pid,
                                    ticks,
                                    port,
                                    started: chrono::Utc::now(),
                                    lost: None,
                                    uid,
                                    net_slot,
                                    parked: false,
                                };
                                r.replaced += 1;
                                self.persist(&st, job);
                                gate.open();
                                Ok(Some((child, name)))
                            }
                            Err(e) => Err(format!("{why}; cannot start it again: {e}")),
                        }
                    }
                }
            }
        };
        match started {
            Ok(Some((child, miner))) => {
                tracing::warn!(job = %job.job, %why, %miner, "replica started again");
                self.reap(job.clone(), index, child);
            }
            Ok(None) => tracing::warn!(job = %job.job, %why, "no free GPUs to start the replica again"),
            Err(reason) => {
                let run =
                    self.inner.state.lock().unwrap().running.get(job).map_or(0, |r| crate::runs::run_of(r.attempt));
                let t = Transition::new(JobState::Failed, "scheduler").reason(reason).run(run);
                let _ = status::advance(&self.inner.store, job, t).await;
                let _ = self.cancel(job).await;
            }
        }
    }

    /// Waits for a worker to exit, then [`Self::ended`].
    pub(super) fn reap(&self, job: JobKey, index: u32, mut child: tokio::process::Child) {
        let this = self.clone();
        tokio::spawn(async move {
            let exit = child.wait().await;
            this.ended(job, index, Exit::Waited(exit), chrono::Utc::now()).await;
        });
    }

    /// A worker ended (at `ended_at`): its slots are freed and what it used recorded. A worker
    /// that died while its job was still going (killed, crashed, its miner lost) makes a
    /// training job start again from its last checkpoint — every allocation, since ranks
    /// depend on each other — up to [`MAX_RETRIES`] times; after that the job fails with the
    /// reason. A serve job's lost replica is started again alone. Then queued jobs that now
    /// fit are started.
    pub(super) async fn ended(&self, job: JobKey, index: u32, exit: Exit, ended_at: chrono::DateTime<chrono::Utc>) {
        let (miner_name, cancelled, restarting, run, given_up) = {
            let mut st = self.inner.state.lock().unwrap();
            let mut out = (String::new(), false, false, None, None);
            if let Some(r) = st.running.get_mut(&job) {
                out.1 = r.cancelled;
                out.2 = r.restarting.is_some();
                let attempt = r.attempt;
                // Allocations are stored in index order.
                if let Some(a) = r.allocs.get_mut(index as usize) {
                    let (miner, slots, pid, started) = (a.miner, std::mem::take(&mut a.slots), a.pid, a.started);
                    out.4 = a.lost.clone();
                    // Stopped by the autoscaler: like a cancelled job's, its end is no loss.
                    out.1 |= std::mem::take(&mut a.parked);
                    let gpus = slots.len() as u32;
                    for s in slots {
                        st.miners[miner].free[s] = true;
                    }
                    out.0 = st.miners[miner].name.clone();
                    out.3 = Some((attempt, gpus, pid, started, st.miners[miner].gpu_model.clone()));
                }
            }
            // The record on disk keeps the worker until what it used is recorded (below): a
            // host that takes over after a crash in between records it then.
            out
        };
        let store = &self.inner.store;
        // Nothing of the allocation outlives its worker (its namespace's init took the rest
        // down with it; its cgroup is emptied whatever escaped that).
        if let (Some(sandbox), Some((attempt, ..))) = (&self.inner.sandbox, &run) {
            sandbox.release(&job, index, *attempt, &self.work_dir(&miner_name, &job, index)).await;
        }
        let written = match &exit {
            Exit::Unwatched => self.exit_code_written(&miner_name, &job, index),
            Exit::Waited(_) => None,
        };
        // How it ended. A worker nobody waited for (adopted from an earlier host) is taken to
        // have finished when it stored its program's result or its job has ended.
        let (ok, how) = match &exit {
            Exit::Waited(Ok(s)) if s.success() => (true, "exited 0".to_string()),
            Exit::Waited(Ok(s)) => (false, format!("{s}")),
            Exit::Waited(Err(e)) => (false, e.to_string()),
            Exit::Unwatched if written.is_some() => {
                let code = written.unwrap_or_default();
                (code == 0, format!("exited {code} (adopted from an earlier host)"))
            }
            Exit::Unwatched => {
                let my_run = run.as_ref().map_or(0, |(attempt, ..)| crate::runs::run_of(*attempt));
                let result = match run {
                    Some((attempt, ..)) => matches!(store.head(&job.alloc_result(attempt, index)).await, Ok(Some(_))),
                    None => false,
                };
                let ended = matches!(status::current(store, &job).await,
                    Ok(Some(r)) if r.state.is_terminal() || r.run != my_run);
                match result || ended {
                    true => (true, "ended (adopted from an earlier host: exit status not known)".to_string()),
                    false => (false, "ended without its result while no host watched it".to_string()),
                }
            }
        };
        // What it used, as this scheduler saw it: from its start to its exit.
        if let Some((attempt, gpus, pid, started_at, ref gpu_model)) = run {
            let u = crate::usage::Usage {
                attempt,
                index,
                miner: miner_name.clone(),
                gpus,
                gpu_model: gpu_model.clone(),
                started_at,
                ended_at,
                how: how.clone(),
            };
            let run = format!("{pid}-{}", started_at.timestamp_millis());
            // What is charged rests on it: tried again until written, however long the
            // store fails (a record made twice is one: create-only). Meanwhile the job stays
            // in `running`, so `finished` says no and settle waits: given up on, the run
            // would have been settled as if it used nothing.
            let mut tries = 0u64;
            while let Err(e) = crate::usage::record(store, &job, &run, &u).await {
                tries += 1;
                tracing::warn!(job = %job.job, error = %e, tries, "cannot record what the allocation used; again");
                tokio::time::sleep(Duration::from_millis((25 * tries).min(5_000))).await;
            }
        }
        self.persist(&self.inner.state.lock().unwrap(), &job);
        if !ok {
            let hook = self.inner.worker_lost.lock().unwrap().clone();
            if let Some(hook) = hook {
                hook(&job, index);
            }
        }
        if !ok && !cancelled && !restarting {
            let how = match &exit {
                _ if given_up.is_some() => given_up.clone().unwrap_or_default(),
                Exit::Waited(Ok(s)) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(s)) {
                    (Some(c), _) => format!("exit code {c}"),
                    (None, Some(sig)) => format!("signal {sig}"),
                    _ => "unknown status".into(),
                },
                Exit::Waited(Err(e)) => e.to_string(),
                Exit::Unwatched => match written {
                    Some(code) => format!("exit code {code}, while the pool's host was down"),
                    None => "while the pool's host was down".into(),
                },
            };
            // Its run ended: the job is terminal, or already resumed as a later run.
            let my_run = run.as_ref().map_or(0, |(attempt, ..)| crate::runs::run_of(*attempt));
            let ended = matches!(status::current(store, &job).await,
                Ok(Some(r)) if r.state.is_terminal() || r.run != my_run);
            let serve = self
                .inner
                .state
                .lock()
                .unwrap()
                .running
                .get(&job)
                .is_some_and(|r| r.manifest.request.kind == JobKind::Serve);
            if ended {
                // The worker recorded the program's failure: stop the other allocations.
                let _ = self.cancel(&job).await;
            } else if serve {
                // Replicas do not depend on each other: only the lost one starts again.
                let why = recovery::lost("replica", index, &miner_name, &format!("lost ({how})"));
                self.replace_replica(&job, index, why).await;
            } else {
                // Lost: stop the others; the job starts again when they are gone.
                let why = recovery::lost("allocation", index, &miner_name, &format!("lost ({how})"));
                tracing::warn!(job = %job.job, %why, "restarting the job");
                let others: Vec<i32> = {
                    let mut st = self.inner.state.lock().unwrap();
                    let others = match st.running.get_mut(&job) {
                        Some(r) => {
                            r.restarting.get_or_insert(why);
                            r.allocs.iter().filter(|a| !a.slots.is_empty()).map(|a| a.pid).collect()
                        }
                        None => Vec::new(),
                    };
                    self.persist(&st, &job);
                    others
                };
                self.stop_workers(&job, others);
            }
        }
        self.after_a_worker(job).await;
    }

    /// After a worker of `job` ended: when none is left, the job leaves the scheduler (and
    /// starts again if it was restarting) and its host is told; queued jobs that now fit start.
    pub(super) async fn after_a_worker(&self, job: JobKey) {
        // An autoscaled deployment without a worker stays (scaled to zero, or waiting for room
        // to start the replicas asked), unless it was removed or has ended.
        let idle_autoscaled = {
            let st = self.inner.state.lock().unwrap();
            st.running.get(&job).is_some_and(|r| {
                r.allocs.iter().all(|a| a.slots.is_empty())
                    && !r.cancelled
                    && r.restarting.is_none()
                    && r.wanted.is_some()
            })
        };
        let ended_meanwhile = idle_autoscaled
            && matches!(status::current(&self.inner.store, &job).await, Ok(Some(r)) if r.state.is_terminal());
        let gone = {
            let mut st = self.inner.state.lock().unwrap();
            let all_gone = st.running.get(&job).is_some_and(|r| {
                r.allocs.iter().all(|a| a.slots.is_empty())
                    && (r.cancelled || r.restarting.is_some() || r.wanted.is_none() || ended_meanwhile)
            });
            let gone = if all_gone { st.running.remove(&job) } else { None };
            self.persist(&st, &job);
            gone
        };
        // Its networks go with it (a restart makes them anew).
        if let (Some(n), Some(r)) = (&self.inner.net, &gone) {
            for a in &r.allocs {
                if let Some(slot) = a.net_slot {
                    n.drop_network_of(&job, a.miner as u32, slot);
                }
            }
        }
        let ended = gone.is_some();
        if let Some(r) = gone.filter(|r| !r.cancelled)
            && let Some(why) = r.restarting
        {
            self.restart(job.clone(), r.manifest, r.attempt, why).await;
        }
        if ended {
            // Every worker of the job is gone (a restart starts them later): its host may
            // settle what it used, if it has ended.
            let hook = self.inner.job_ended.lock().unwrap().clone();
            if let Some(hook) = hook {
                hook(&job);
            }
        }
        // Autoscaled deployments asked for more replicas than the pool had room for (a
        // replica still stopping held the miner) get them as room frees, before queued jobs.
        let short: Vec<(JobKey, u32)> = {
            let st = self.inner.state.lock().unwrap();
            st.running
                .iter()
                .filter(|(_, r)| !r.cancelled && r.restarting.is_none())
                .filter_map(|(k, r)| {
                    let active = r.allocs.iter().filter(|a| !a.slots.is_empty() && !a.parked).count() as u32;
                    r.wanted.filter(|w| *w > active).map(|w| (k.clone(), w))
                })
                .collect()
        };
        for (j, w) in short {
            if let Err(e) = self.scale_to(&j, w, true).await {
                tracing::warn!(job = %j.job, error = %e, "cannot start the replicas the deployment waits for");
            }
        }
        self.start_queued().await;
        self.inner.idle.notify_waiters();
    }

    /// Starts a job again after a lost allocation, or fails it when retries are used up.
    pub(super) async fn restart(&self, job: JobKey, manifest: JobManifest, attempt: u32, why: String) {
        let next = match recovery::after_lost_allocation(&self.inner.store, &job, &why, attempt).await {
            Ok(recovery::AfterLoss::Retry { attempt }) => attempt,
            Ok(_) => return,
            // The store is out: start again all the same (the status catches up on the next change).
            Err(e) if crate::runs::retry_of(attempt) < MAX_RETRIES => {
                tracing::warn!(job = %job.job, error = %e, "could not record the retry");
                attempt + 1
            }
            Err(_) => return,
        };
        let mut st = self.inner.state.lock().unwrap();
        st.queue.push_front(Queued::new(job.clone(), manifest, next, true));
        self.persist(&st, &job);
    }
}
