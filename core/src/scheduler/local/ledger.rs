//! What the scheduler holds, on disk: one record per job it runs or keeps waiting, under
//! `<work_root>/.scheduler/`, rewritten whenever that changes. A host started after one that
//! died (SIGKILL, a crash, a reboot of the process) takes over from it ([`LocalScheduler::adopt`]):
//!
//! - a worker still alive is **adopted**: its slots stay taken, it is watched through a pidfd
//!   (the kernel says when it exits, as `wait` does for a parent; how it exited, it writes
//!   itself to `AIC_EXIT_FILE`, as container shims do for their runtimes), its deployment
//!   keeps serving, its time limit is enforced from when it started;
//! - a worker that died meanwhile is **lost**, as if the host had seen it die: what it used is
//!   recorded up to its last sign of life, and its job starts again from its checkpoint (a
//!   replica alone), with the reason in the job's status;
//! - a job that was waiting for free slots waits again, in its place.
//!
//! A process is the recorded worker only when its start time (in clock ticks since boot, from
//! `/proc/<pid>/stat`) is the recorded one: a reused process id is not adopted.

use std::path::Path;

use aic_schemas::{Address, JobId};
use serde::{Deserialize, Serialize};

use super::*;

/// A job as the scheduler holds it.
#[derive(Serialize, Deserialize)]
struct Record {
    owner: Address,
    job: JobId,
    manifest: JobManifest,
    attempt: u32,
    #[serde(default)]
    replaced: u32,
    #[serde(default)]
    cancelled: bool,
    #[serde(default)]
    restarting: Option<String>,
    /// Its place in the queue when it waits for free slots (smaller first).
    #[serde(default)]
    queued: Option<i64>,
    /// In index order; an ended allocation holds no slots.
    #[serde(default)]
    allocs: Vec<Alloc>,
    /// When this attempt's workers were first started (`Running::since`).
    #[serde(default)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// An autoscaled deployment's replicas as last scaled (`Running::wanted`).
    #[serde(default)]
    wanted: Option<u32>,
}

/// When the process `pid` started, in clock ticks since boot (field 22 of `/proc/<pid>/stat`);
/// `None` when there is no such process.
pub(super) fn started_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let state = rest.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Waits until process `pid` exits (a pidfd turns readable); at once when it cannot be watched.
async fn exited(pid: i32) {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: the descriptor was just made and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the `AsyncFd` owns the descriptor and closes it only when dropped with it.
    let Ok(fd) = (unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    let _ = fd.readable().await;
}

impl LocalScheduler {
    fn ledger_dir(&self) -> PathBuf {
        self.inner.cfg.work_root.join(".scheduler")
    }

    fn ledger_path(&self, job: &JobKey) -> PathBuf {
        self.ledger_dir().join(format!("{}-{}.json", job.owner, job.job))
    }

    /// Writes what the scheduler holds of `job` (running, waiting, or nothing: the record goes).
    pub(super) fn persist(&self, st: &State, job: &JobKey) {
        let record = if let Some(r) = st.running.get(job) {
            Some(Record {
                owner: job.owner,
                job: job.job.clone(),
                manifest: r.manifest.clone(),
                attempt: r.attempt,
                replaced: r.replaced,
                cancelled: r.cancelled,
                restarting: r.restarting.clone(),
                queued: None,
                allocs: r.allocs.iter().map(|a| Alloc { slots: a.slots.clone(), lost: a.lost.clone(), ..*a }).collect(),
                since: Some(r.since),
                wanted: r.wanted,
            })
        } else {
            st.queue.iter().find(|q| &q.job == job).map(|q| Record {
                owner: job.owner,
                job: job.job.clone(),
                manifest: q.manifest.clone(),
                attempt: q.attempt,
                replaced: 0,
                cancelled: false,
                restarting: None,
                queued: Some(q.order),
                allocs: Vec::new(),
                since: None,
                wanted: None,
            })
        };
        let path = self.ledger_path(job);
        let written = match record {
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Some(r) => write_atomically(&path, &serde_json::to_vec(&r).expect("a record serialises")),
        };
        if let Err(e) = written {
            tracing::warn!(job = %job.job, error = %e, "cannot record what the scheduler holds; a host started after this one would not know it");
        }
    }

    /// Takes over what an earlier host of this pool left (see the module's text): run once,
    /// when the host starts, before it takes events. Returns how many workers it adopted.
    pub async fn adopt(&self) -> usize {
        // What the workers were told of on this machine's loopback (relayed again below).
        let told: Vec<String> =
            [self.inner.worker_gateway.lock().unwrap().clone(), self.inner.exec_gateway.lock().unwrap().clone()]
                .into_iter()
                .flatten()
                .map(|g| g.url)
                .chain(self.inner.cfg.worker_env.iter().map(|(_, v)| v.clone()))
                .chain(std::env::vars().filter(|(k, _)| crate::grant::is_store_variable(k)).map(|(_, v)| v))
                .collect();
        // (miner, slot) of each adopted worker's job network.
        let mut networks = Vec::new();
        let dir = self.ledger_dir();
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => records.push(r),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "an unreadable scheduler record; left alone")
                }
            }
        }
        // Waiting jobs keep their order.
        records.sort_by_key(|r| r.queued);
        let mut watch = Vec::new();
        let mut gone = Vec::new();
        // Jobs whose workers had all ended (what they used recorded) when the host died.
        let mut done = Vec::new();
        let mut limits = Vec::new();
        {
            let mut st = self.inner.state.lock().unwrap();
            for r in records {
                let job = JobKey::new(r.owner, r.job);
                if let Some(order) = r.queued {
                    let why = format!("waiting for {}", Self::describe_need(&r.manifest));
                    st.accepted.insert((job.clone(), r.manifest.run), Submitted::Queued(why));
                    st.queue.push_back(Queued { job, manifest: r.manifest, attempt: r.attempt, order });
                    continue;
                }
                let mut allocs = Vec::new();
                let mut names = Vec::new();
                for (index, a) in r.allocs.into_iter().enumerate() {
                    if a.miner >= st.miners.len() || a.slots.iter().any(|s| *s >= st.miners[a.miner].free.len()) {
                        // The pool is smaller now: the worker is stopped and counted as lost.
                        let _ = killpg(Pid::from_raw(a.pid), Signal::SIGKILL);
                        tracing::warn!(job = %job.job, "a worker on a miner this pool no longer has; stopped");
                        allocs.push(Alloc { slots: Vec::new(), ..a });
                        continue;
                    }
                    if !a.slots.is_empty() {
                        for s in &a.slots {
                            st.miners[a.miner].free[*s] = false;
                        }
                        names.push(st.miners[a.miner].name.clone());
                        if started_ticks(a.pid) == Some(a.ticks) {
                            watch.push((job.clone(), index as u32, a.pid));
                            if let Some(slot) = a.net_slot {
                                networks.push((job.clone(), a.miner as u32, slot));
                            }
                        } else {
                            gone.push((job.clone(), index as u32));
                        }
                    }
                    allocs.push(a);
                }
                if allocs.iter().all(|a| a.slots.is_empty()) {
                    done.push(job.clone());
                }
                let since = r.since.or_else(|| allocs.iter().map(|a| a.started).min()).unwrap_or_else(chrono::Utc::now);
                if !r.cancelled {
                    limits.push((job.clone(), r.attempt, r.manifest.request.max_hours, since));
                }
                st.accepted.insert((job.clone(), r.manifest.run), Submitted::Placed(names));
                st.running.insert(
                    job,
                    Running {
                        allocs,
                        cancelled: r.cancelled,
                        restarting: r.restarting,
                        manifest: r.manifest,
                        attempt: r.attempt,
                        replaced: r.replaced,
                        since,
                        wanted: r.wanted,
                    },
                );
            }
        }
        // The services the workers were told of on this machine's loopback answered in
        // their jobs' networks through relays of the host that died (as did the egress
        // proxy): this host relays them again, so an adopted worker reaches its gateway (and
        // store) where it was told.
        if let Some(n) = &self.inner.net {
            for (job, miner, slot) in networks {
                n.adopt_job_network(&job, miner, slot);
                let ns = n.job_netns(miner, slot);
                for v in &told {
                    if let Err(e) = n.relay_loopback(&ns, miner, v) {
                        tracing::warn!(error = %e, miner, "cannot relay a service into a job's network again");
                    }
                }
                if let Err(e) = n.egress_env(&ns, miner, slot) {
                    tracing::warn!(error = %e, miner, "cannot relay the egress proxy into a job's network again");
                }
            }
            n.sweep_job_networks();
        }
        let adopted = watch.len();
        if adopted + gone.len() > 0 {
            tracing::warn!(adopted, lost = gone.len(), "took over the workers an earlier host of this pool left");
        }
        for (job, attempt, hours, since) in limits {
            self.enforce_time_limit(job, attempt, hours, since);
        }
        for (job, index, pid) in watch {
            let this = self.clone();
            tokio::spawn(async move {
                exited(pid).await;
                this.ended(job, index, Exit::Unwatched, chrono::Utc::now()).await;
            });
        }
        for (job, index) in gone {
            let at = self.last_sign_of_life(&job, index);
            self.ended(job, index, Exit::Unwatched, at).await;
        }
        for job in done {
            self.after_a_worker(job).await;
        }
        self.start_queued().await;
        adopted
    }

    /// When a worker that died unwatched was last seen doing something: the latest change to
    /// its log or its work folder, never before its start nor after now. What it is charged
    /// for ends there (the pool cannot tell more; it errs towards the user).
    fn last_sign_of_life(&self, job: &JobKey, index: u32) -> chrono::DateTime<chrono::Utc> {
        let st = self.inner.state.lock().unwrap();
        let now = chrono::Utc::now();
        let Some(a) = st.running.get(job).and_then(|r| r.allocs.get(index as usize)) else { return now };
        let work = self.work_dir(&st.miners[a.miner].name, job, index);
        let seen = [work.with_extension("worker.log"), work]
            .iter()
            .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .max()
            .map(chrono::DateTime::<chrono::Utc>::from)
            .unwrap_or(a.started);
        seen.clamp(a.started, now)
    }
}

impl LocalScheduler {
    /// The exit code a worker this host did not start wrote as it exited, if it did.
    pub(super) fn exit_code_written(&self, miner: &str, job: &JobKey, index: u32) -> Option<i32> {
        let f = self.work_dir(miner, job, index).with_extension("exit");
        std::fs::read_to_string(f).ok()?.trim().parse().ok()
    }
}

/// Writes `body` to `path` through a temporary file and a rename: a reader (or a host started
/// after a crash) sees the old record or the new one, never half of one.
fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}
