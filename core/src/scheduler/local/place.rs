//! Placement: the miners and slots a job gets (most free first, so jobs spread), and the
//! queue of jobs that wait for free slots, in order.

use super::*;

impl LocalScheduler {
    pub(super) fn describe_need(m: &JobManifest) -> String {
        let r = &m.request;
        let wants = GpuWants::of(r);
        let what = if wants.any() { String::new() } else { format!(" ({})", wants.describe()) };
        format!("{} with {}{what}", crate::plural(r.miners, "miner"), crate::plural(r.gpus_per_miner, "free GPU"))
    }

    /// Picks miners for the job among those whose GPUs it asks for (`--gpu-type`,
    /// `--min-gpu-memory`): of the model it prefers first, then the ones with the most free
    /// slots, so jobs spread.
    pub(super) fn pick(st: &State, m: &JobManifest) -> Option<Vec<(usize, Vec<usize>)>> {
        let need = m.request.gpus_per_miner as usize;
        let wants = GpuWants::of(&m.request);
        let mut candidates: Vec<(usize, usize, usize)> = st
            .miners
            .iter()
            .enumerate()
            .filter(|(_, mi)| mi.down.is_none())
            .filter_map(|(i, mi)| Some((i, wants.rank(mi.gpu_model.as_deref(), mi.gpu_memory_mb)?, mi)))
            .map(|(i, rank, mi)| (i, rank, mi.free.iter().filter(|f| **f).count()))
            .filter(|(_, _, free)| *free >= need)
            .collect();
        // An autoscaled deployment starts with its fewest replicas (at least one).
        let count = super::replicas_at_start(&m.request) as usize;
        if candidates.len() < count {
            return None;
        }
        candidates.sort_by_key(|(i, rank, free)| (*rank, std::cmp::Reverse(*free), *i));
        Some(
            candidates
                .into_iter()
                .take(count)
                .map(|(i, _, _)| {
                    let slots =
                        st.miners[i].free.iter().enumerate().filter(|(_, f)| **f).map(|(s, _)| s).take(need).collect();
                    (i, slots)
                })
                .collect(),
        )
    }

    /// Starts the allocations of a job whose miners were picked. On a spawn failure the
    /// allocations already started are stopped and the slots freed.
    pub(super) fn start(
        &self,
        st: &mut State,
        job: &JobKey,
        manifest: &JobManifest,
        attempt: u32,
        picks: Vec<(usize, Vec<usize>)>,
    ) -> Result<Vec<String>, ScheduleError> {
        let cfg = &self.inner.cfg;
        let count = picks.len();
        let since = chrono::Utc::now();
        let mut allocs = Vec::new();
        let mut names = Vec::new();
        let mut gates = Vec::new();
        for (index, (miner, slots)) in picks.into_iter().enumerate() {
            let miner_name = st.miners[miner].name.clone();
            let spawned = self.spawn(st, job, manifest, index as u32, count, attempt, miner, &slots);
            match spawned {
                Ok(spawn::Spawned { child, port, gate, uid, net_slot }) => {
                    gates.push(gate);
                    for s in &slots {
                        st.miners[miner].free[*s] = false;
                    }
                    let pid = child.id().unwrap_or_default() as i32;
                    let ticks = ledger::started_ticks(pid).unwrap_or_default();
                    let started = chrono::Utc::now();
                    allocs.push(Alloc {
                        miner,
                        slots,
                        pid,
                        ticks,
                        port,
                        started,
                        lost: None,
                        uid,
                        net_slot,
                        parked: false,
                    });
                    names.push(miner_name);
                    self.reap(job.clone(), index as u32, child);
                }
                Err(e) => {
                    for a in &allocs {
                        let _ = killpg(Pid::from_raw(a.pid), Signal::SIGKILL);
                    }
                    let m = manifest.clone();
                    st.running.insert(
                        job.clone(),
                        Running {
                            allocs,
                            cancelled: true,
                            restarting: None,
                            manifest: m,
                            attempt,
                            replaced: 0,
                            since,
                            wanted: None,
                        },
                    );
                    self.persist(st, job);
                    return Err(ScheduleError::Backend(format!("cannot start {}: {e}", cfg.worker_bin.display())));
                }
            }
        }
        let m = manifest.clone();
        st.running.insert(
            job.clone(),
            Running {
                allocs,
                cancelled: false,
                restarting: None,
                manifest: m,
                attempt,
                replaced: 0,
                since,
                wanted: super::autoscaled(&manifest.request).then_some(count as u32),
            },
        );
        self.persist(st, job);
        // Recorded: they may start.
        gates.into_iter().for_each(spawn::Gate::open);
        self.enforce_time_limit(job.clone(), attempt, manifest.request.max_hours, since);
        Ok(names)
    }

    /// Starts queued jobs, in order, while they fit.
    pub(super) async fn start_queued(&self) {
        loop {
            let next = {
                let mut st = self.inner.state.lock().unwrap();
                if st.stopping {
                    return;
                }
                let Some(Queued { job, manifest: m, attempt, .. }) = st.queue.front().cloned() else { return };
                // One that waited until its deposit may be taken back before it could end is
                // not started: it fails, and settle refunds the deposit whole.
                if let Some(why) = crate::payment::too_late_to_start(&m, chrono::Utc::now()) {
                    st.queue.pop_front();
                    self.persist(&st, &job);
                    (job, Err(ScheduleError::Unplaceable(why)), m.run)
                } else {
                    let Some(picks) = Self::pick(&st, &m) else { return };
                    st.queue.pop_front();
                    let r = self.start(&mut st, &job, &m, attempt, picks);
                    (job, r, m.run)
                }
            };
            let (job, r, m_run) = next;
            let t = match r {
                Err(ScheduleError::Unplaceable(why)) => {
                    Transition::new(JobState::Failed, "scheduler").reason(why).run(m_run)
                }
                Ok(names) => Transition::new(JobState::Running, "scheduler")
                    .reason("placed after waiting for free GPUs")
                    .detail(StatusDetail { placement: names, ..Default::default() }),
                Err(e) => Transition::new(JobState::Failed, "scheduler").reason(e.to_string()).run(m_run),
            };
            // The worker writes `running` itself; only a failure needs recording here.
            if t.to == JobState::Failed {
                let _ = status::advance(&self.inner.store, &job, t).await;
            }
        }
    }
}

impl LocalScheduler {
    /// Stops a job that runs past its paid hours (less what its earlier attempts ran, as this
    /// scheduler measured it) plus the grace its workers get to stop the program themselves:
    /// kills every worker's process group and records `timed_out` (a deployment: `succeeded`,
    /// its hours served). A worker that dies, ignores the limit, or is replaced (a replica
    /// whose app killed its worker) does not extend it.
    /// `since`: when this attempt's workers started (earlier than now for workers adopted
    /// from an earlier host).
    pub(super) fn enforce_time_limit(
        &self,
        job: JobKey,
        attempt: u32,
        hours: f64,
        since: chrono::DateTime<chrono::Utc>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let store = &this.inner.store;
            let runs = crate::usage::of(store, &job).await.unwrap_or_default();
            let first = crate::runs::first_attempt(crate::runs::run_of(attempt));
            let before: Vec<_> = runs.into_iter().filter(|u| (first..attempt).contains(&u.attempt)).collect();
            let ran = (chrono::Utc::now() - since).as_seconds_f64().max(0.0);
            let left =
                (crate::pricing::paid_hours(hours) * 3600.0 - crate::usage::wall_seconds(&before) - ran).max(0.0);
            tokio::time::sleep(Duration::from_secs_f64(left) + this.inner.cfg.time_limit_grace).await;
            let (pids, serve): (Vec<i32>, bool) = {
                let mut st = this.inner.state.lock().unwrap();
                let found = match st.running.get_mut(&job) {
                    Some(r) if r.attempt == attempt && !r.cancelled => {
                        r.cancelled = true;
                        let pids = r.allocs.iter().filter(|a| !a.slots.is_empty()).map(|a| a.pid).collect();
                        (pids, r.manifest.request.kind == JobKind::Serve)
                    }
                    _ => return,
                };
                this.persist(&st, &job);
                found
            };
            tracing::warn!(job = %job.job, hours, "past its paid time and grace; killing its workers");
            // Recorded first: once its workers are gone, the job is settled as it ended.
            let t = super::recovery::paid_time_over(serve, hours, crate::runs::run_of(attempt));
            let _ = status::advance(store, &job, t).await;
            for pid in pids {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        });
    }
}
