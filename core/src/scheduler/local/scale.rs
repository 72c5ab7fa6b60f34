//! An autoscaled deployment's replicas, more or fewer (`Scheduler::scale`): new ones on free
//! miners (one without a replica of the deployment first), in the lowest index an ended one
//! left or a new one; fewer by stopping the newest, whose end is then no loss. The count asked
//! is kept: what the pool had no room for starts as room frees (`reap`). At zero the job stays
//! here, going, until a request wakes it or it is removed.

use super::*;

impl LocalScheduler {
    pub(super) async fn scale_to(&self, job: &JobKey, replicas: u32, only_up: bool) -> Result<u32, ScheduleError> {
        let (started, stop): (Vec<(u32, tokio::process::Child)>, Vec<i32>) = {
            let mut st = self.inner.state.lock().unwrap();
            let Some(r) = st.running.get_mut(job) else {
                return Err(ScheduleError::Refused(format!("deployment {} is not running here", job.job)));
            };
            if r.cancelled || r.restarting.is_some() {
                return Err(ScheduleError::Refused(format!("deployment {} is stopping", job.job)));
            }
            if !autoscaled(&r.manifest.request) {
                return Err(ScheduleError::Refused(format!("deployment {} is not autoscaled", job.job)));
            }
            let most = r.manifest.request.miners;
            let active: Vec<usize> =
                r.allocs.iter().enumerate().filter(|(_, a)| !a.slots.is_empty() && !a.parked).map(|(i, _)| i).collect();
            let mut want = replicas.min(most);
            if only_up {
                want = want.max(active.len() as u32);
            }
            r.wanted = Some(want);
            let mut stop = Vec::new();
            if (active.len() as u32) > want {
                // The newest go first.
                for i in active.iter().rev().take(active.len() - want as usize) {
                    r.allocs[*i].parked = true;
                    stop.push(r.allocs[*i].pid);
                }
            }
            let mut started = Vec::new();
            let mut now = active.len() as u32;
            while now < want {
                let r = st.running.get(job).expect("still running");
                let (need, attempt, m) = (r.manifest.request.gpus_per_miner as usize, r.attempt, r.manifest.clone());
                let wants = GpuWants::of(&m.request);
                let hosting: Vec<usize> = r.allocs.iter().filter(|a| !a.slots.is_empty()).map(|a| a.miner).collect();
                // The lowest index an ended replica left (never one still stopping), else a new one.
                let index = r.allocs.iter().position(|a| a.slots.is_empty()).unwrap_or(r.allocs.len());
                let free = |mi: &Miner| mi.free.iter().filter(|f| **f).count();
                let pick = (0..st.miners.len())
                    .filter(|i| st.miners[*i].down.is_none() && free(&st.miners[*i]) >= need)
                    .filter(|i| wants.matches(st.miners[*i].gpu_model.as_deref(), st.miners[*i].gpu_memory_mb))
                    .max_by_key(|i| (!hosting.contains(i), free(&st.miners[*i])));
                let Some(miner) = pick else { break };
                let slots: Vec<usize> =
                    st.miners[miner].free.iter().enumerate().filter(|(_, f)| **f).map(|(s, _)| s).take(need).collect();
                let spawned = self.spawn(&st, job, &m, index as u32, most as usize, attempt, miner, &slots);
                let spawn::Spawned { child, port, gate, uid, net_slot } = match spawned {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(job = %job.job, error = %e, "cannot start another replica");
                        break;
                    }
                };
                for s in &slots {
                    st.miners[miner].free[*s] = false;
                }
                let pid = child.id().unwrap_or_default() as i32;
                let ticks = ledger::started_ticks(pid).unwrap_or_default();
                let a = Alloc {
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
                let r = st.running.get_mut(job).expect("still running");
                if index == r.allocs.len() {
                    r.allocs.push(a);
                } else {
                    r.allocs[index] = a;
                }
                gate.open();
                started.push((index as u32, child));
                now += 1;
            }
            self.persist(&st, job);
            (started, stop)
        };
        let running = {
            let st = self.inner.state.lock().unwrap();
            st.running.get(job).map_or(0, |r| r.allocs.iter().filter(|a| !a.slots.is_empty() && !a.parked).count())
        };
        for (index, child) in started {
            self.reap(job.clone(), index, child);
        }
        if !stop.is_empty() {
            tracing::info!(job = %job.job, replicas, "stopping replicas the deployment no longer needs");
            self.stop_workers(job, stop);
        }
        Ok(running as u32)
    }
}
