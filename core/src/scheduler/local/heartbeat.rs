//! Lost miners (namespaced pools): a miner whose heartbeat has not reached the host for
//! `AIC_POOL_LOST_AFTER` seconds (10 by default, Nomad's default heartbeat TTL) is down. As
//! Nomad does with a node that misses its heartbeats, its allocations are lost and replaced
//! (a training job starts again from its checkpoint on other miners, a replica elsewhere)
//! and nothing new is placed on it; its workers are stopped (a Nomad client that comes back
//! stops the allocations its servers gave up on). When it is heard again, it rejoins the pool.

use super::*;

/// How long a miner may stay silent before it is down.
fn lost_after() -> Duration {
    let secs = std::env::var("AIC_POOL_LOST_AFTER").ok().and_then(|v| v.parse::<f64>().ok());
    Duration::from_secs_f64(secs.filter(|s| *s > 0.0).unwrap_or(10.0))
}

impl LocalScheduler {
    /// Starts the miners' heartbeats and the watch on them (namespaced pools, in a runtime).
    pub(super) fn watch_miners(&self) {
        let Some(net) = &self.inner.net else { return };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let lost_after = lost_after();
        let every = (lost_after / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let beats = match net.start_heartbeats(every) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "the miners' heartbeats cannot start; a miner cut off will not be noticed");
                return;
            }
        };
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                LocalScheduler { inner }.check_miners(&beats, lost_after).await;
            }
        });
    }

    /// Marks silent miners down (their workers stopped, their allocations lost) and heard
    /// ones up again.
    async fn check_miners(&self, beats: &net::Beats, lost_after: Duration) {
        let mut kill = Vec::new();
        let mut back = false;
        {
            let mut st = self.inner.state.lock().unwrap();
            let st = &mut *st;
            let mut touched = Vec::new();
            for (i, m) in st.miners.iter_mut().enumerate() {
                let silent = beats.silent_for(i);
                match (&m.down, silent >= lost_after) {
                    (None, true) => {
                        let why =
                            format!("{} stopped answering (no heartbeat for {:.0} s)", m.name, silent.as_secs_f64());
                        tracing::warn!(miner = %m.name, "{why}: its allocations are lost");
                        for (job, r) in st.running.iter_mut() {
                            for a in r.allocs.iter_mut().filter(|a| a.miner == i && !a.slots.is_empty()) {
                                a.lost.get_or_insert(why.clone());
                                kill.push(a.pid);
                                touched.push(job.clone());
                            }
                        }
                        m.down = Some(why);
                    }
                    (Some(_), false) => {
                        tracing::info!(miner = %m.name, "heard again: it rejoins the pool");
                        m.down = None;
                        back = true;
                    }
                    _ => {}
                }
            }
            touched.sort_by(|a: &JobKey, b: &JobKey| a.job.cmp(&b.job));
            touched.dedup();
            for job in touched {
                self.persist(st, &job);
            }
        }
        for pid in kill {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if back {
            self.start_queued().await;
            self.inner.idle.notify_waiters();
        }
    }
}
