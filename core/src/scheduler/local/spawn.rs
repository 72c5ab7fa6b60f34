//! A worker process: its own process group, folder, address and port, the slots it holds,
//! and what it is told (the launch contract, the operator's settings, never the pool's secrets).

use super::*;

/// A simulated miner's share of this machine's cores (at least one).
pub(super) fn cpus_per_miner(miners: usize) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / miners.max(1)).max(1)
}

/// Where a worker writes its exit code as it exits (the local scheduler's workers).
pub const EXIT_FILE: &str = "AIC_EXIT_FILE";

impl LocalScheduler {
    /// An allocation's work folder: `<root>/<miner>/<job>-<index>/`.
    pub(super) fn work_dir(&self, miner: &str, job: &JobKey, index: u32) -> PathBuf {
        self.inner.cfg.work_root.join(miner).join(format!("{}-{index}", job.job))
    }

    /// Starts the worker of allocation `index` of `count` on `miner`, holding `slots`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn(
        &self,
        st: &State,
        job: &JobKey,
        manifest: &JobManifest,
        index: u32,
        count: usize,
        attempt: u32,
        miner: usize,
        slots: &[usize],
    ) -> std::io::Result<Spawned> {
        if let Some(why) = &self.inner.net_refused {
            return Err(std::io::Error::other(why.clone()));
        }
        let cfg = &self.inner.cfg;
        let miner_name = &st.miners[miner].name;
        // Its job's network on the miner (`net::jobs`): the slot its other allocations have.
        let net_slot = match &self.inner.net {
            None => None,
            Some(n) => {
                let (own, taken) = own_and_others(st, job, |a| a.net_slot);
                let slot = n.slot_for(job, own, &taken).ok_or_else(|| {
                    std::io::Error::other("every job network of the pool is in use: a job waits for one to end")
                })?;
                n.job_network(job, miner as u32, slot)?;
                Some(slot)
            }
        };
        let host = match (&self.inner.net, net_slot) {
            (Some(n), Some(slot)) => n.job_address(miner as u32, slot),
            _ => st.miners[miner].host,
        };
        let work = self.work_dir(miner_name, job, index);
        // Where the worker sees it (sandboxed: the same path in each of the job's allocations).
        let seen_at = match &self.inner.sandbox {
            Some(_) => sandbox::Sandbox::work_seen_at(&cfg.work_root, job),
            None => work.clone(),
        };
        let port = match &self.inner.net {
            // Each miner has its own network stack: only this miner's allocations hold ports.
            Some(_) => {
                let held: std::collections::HashSet<u16> = st
                    .running
                    .values()
                    .flat_map(|r| r.allocs.iter())
                    .filter(|a| a.miner == miner && !a.slots.is_empty())
                    .map(|a| a.port)
                    .collect();
                let from = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .subsec_nanos();
                (0..10_000u32)
                    .map(|k| 20_000 + ((from + k) % 10_000) as u16)
                    .find(|p| !held.contains(p))
                    .unwrap_or(20_000)
            }
            None => free_port(host)?,
        };
        std::fs::create_dir_all(&work)?;
        let exit_file = work.with_extension("exit");
        let _ = std::fs::remove_file(&exit_file);
        let log = std::fs::File::create(work.with_extension("worker.log"))?;
        let mut cmd = std::process::Command::new(&cfg.worker_bin);
        // The pool's secrets never reach a worker (nor so the user's program).
        for k in crate::grant::NEVER_INHERITED {
            cmd.env_remove(k);
        }
        let gateway = self.inner.worker_gateway.lock().unwrap().clone();
        if gateway.is_some() {
            for (k, _) in std::env::vars() {
                if crate::grant::is_store_variable(&k) {
                    cmd.env_remove(k);
                }
            }
        }
        let access = if gateway.is_some() { StoreAccess::Gateway } else { StoreAccess::Environment };
        // A sandboxed job gets only what a program needs from the host's environment, never
        // the rest of it (a provider key in an RPC URL, a token the operator exported).
        if self.inner.sandbox.is_some() {
            cmd.env_clear();
            cmd.envs(std::env::vars().filter(|(k, _)| {
                sandbox::inherited(k)
                    && !crate::grant::NEVER_INHERITED.contains(&k.as_str())
                    && (!crate::grant::is_store_variable(k) || access == StoreAccess::Environment)
            }));
        }
        let worker_env = launch::passed_on(&cfg.worker_env, access);
        // Defaults for the simulated miners first: the operator's worker_env may change
        // them; the allocation's own variables come last.
        // Open MPI's TCP transport on the miners' own interface only: on the loopback the
        // machine's other interfaces (other pools' bridges, which come and go) are not theirs.
        cmd.env("OMPI_MCA_btl_tcp_if_include", if self.inner.net.is_some() { "eth0" } else { "lo" });
        cmd.env("OMPI_MCA_coll", "^han")
            .env("OMPI_MCA_mpi_yield_when_idle", "1")
            .env("OMPI_MCA_btl", "self,sm,tcp")
            .env("AIC_CPUS", cpus_per_miner(st.miners.len()).to_string())
            .envs(worker_env.map(|(k, v)| (k, v)));
        if let Some(g) = &gateway {
            cmd.envs(g.env(job, manifest, chrono::Utc::now()));
        } else if let Some(g) = self.inner.exec_gateway.lock().unwrap().clone() {
            for (k, v) in g.env(job, manifest, chrono::Utc::now()) {
                cmd.env(if k == "AIC_WORKER_GATEWAY" { "AIC_EXEC_GATEWAY" } else { k.as_str() }, v);
            }
        }
        let launch = Launch {
            owner: job.owner,
            job: job.job.clone(),
            index,
            count: count as u32,
            attempt,
            miner: Some(miner_name.clone()),
            host: Some(host.to_string()),
            port: Some(port),
            work_dir: seen_at.clone(),
            serve_port: None,
            gpus: Some(slots.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")),
            // A replica started again keeps the deployment's end.
            serve_until: (manifest.request.kind == aic_schemas::JobKind::Serve).then(|| {
                let since = st.running.get(job).map_or_else(chrono::Utc::now, |r| r.since);
                since.timestamp() + (crate::pricing::paid_hours(manifest.request.max_hours) * 3600.0).ceil() as i64
            }),
        };
        // The machine's environment cache (its simulated miners share its disk): the
        // operator's AIC_ENV_CACHE, else one beside the work folders; empty: none.
        let cache = match std::env::var_os(launch::ENV_CACHE) {
            Some(v) if v.is_empty() => None,
            Some(v) => Some(std::path::PathBuf::from(v)),
            None => Some(cfg.work_root.join(".env-cache")),
        };
        if let Some(cache) = cache {
            std::fs::create_dir_all(&cache)?;
            cmd.env(launch::ENV_CACHE, cache);
        }
        // The worker writes its exit code there as it exits: a host that adopted it (its
        // parent died) learns how it ended.
        cmd.env(EXIT_FILE, &exit_file);
        // It waits on its stdin until the scheduler has recorded it ([`Gate`]).
        let (gate, held) = std::os::unix::net::UnixStream::pair()?;
        cmd.env(START_GATE, "stdin");
        cmd.envs(launch.to_env()).stdin(std::os::fd::OwnedFd::from(held)).stdout(log.try_clone()?).stderr(log);
        if let (Some(n), Some(slot)) = (&self.inner.net, net_slot) {
            // The worker runs in its job's network on the miner; the loopback services it is
            // told of (and the store's, whose presigned URLs the gateway hands out) answer
            // there too.
            let ns = n.job_netns(miner as u32, slot);
            let told: Vec<String> = cmd
                .get_envs()
                .filter_map(|(_, v)| Some(v?.to_str()?.to_string()))
                .chain(cfg.worker_env.iter().map(|(_, v)| v.clone()))
                .collect();
            for v in told {
                n.relay_loopback(&ns, miner as u32, &v)?;
            }
            cmd.envs(n.egress_env(&ns, miner as u32, slot)?);
            net::enter(n, &mut cmd, miner as u32, Some(slot), miner_name.clone())?;
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        // Its job's uid: the one its other allocations run under (`sandbox::free_uid`).
        let uid = match &self.inner.sandbox {
            None => None,
            Some(sandbox) => {
                let (own, taken) = own_and_others(st, job, |a| a.uid);
                let uid = own.or_else(|| sandbox.free_uid(job, &taken)).ok_or_else(|| {
                    std::io::Error::other("every uid of AIC_JOB_UIDS is held by a running job: widen the range")
                })?;
                sandbox.confine(&mut cmd, job, index, attempt, uid, slots.len(), &work, &seen_at, &exit_file)?;
                Some(uid)
            }
        };
        let child = tokio::process::Command::from(cmd).kill_on_drop(false).spawn()?;
        Ok(Spawned { child, port, gate: Gate(gate), uid, net_slot })
    }
}

/// What `job`'s allocations hold of `what` (a uid, a network slot), and what other running
/// jobs' hold.
fn own_and_others<T: Copy + Eq + std::hash::Hash>(
    st: &State,
    job: &JobKey,
    what: impl Fn(&Alloc) -> Option<T>,
) -> (Option<T>, std::collections::HashSet<T>) {
    let own = st.running.get(job).and_then(|r| r.allocs.iter().find_map(&what));
    let others = st.running.iter().filter(|(k, _)| *k != job).flat_map(|(_, r)| r.allocs.iter().filter_map(&what));
    (own, others.collect())
}

/// A worker just started, waiting at its [`Gate`].
pub(super) struct Spawned {
    pub(super) child: tokio::process::Child,
    /// The port it was given.
    pub(super) port: u16,
    pub(super) gate: Gate,
    /// Its job's uid (`sandbox`).
    pub(super) uid: Option<u32>,
    /// Its job's network's slot (`net::jobs`).
    pub(super) net_slot: Option<u8>,
}

/// Tells a worker it may start (`AIC_START_GATE=stdin`: it reads a line from its stdin
/// first). The scheduler opens it once the worker is recorded on disk (`ledger`): a host
/// that dies before that closes it unopened, and the worker, reading end of file, runs
/// nothing. So a worker that runs is always one a later host can adopt.
pub(super) struct Gate(std::os::unix::net::UnixStream);

impl Gate {
    pub(super) fn open(self) {
        use std::os::fd::AsRawFd;
        // SAFETY: a send of a 3-byte buffer on a socket this value owns. MSG_NOSIGNAL: a
        // worker already gone must not take the host down with SIGPIPE.
        let _ = unsafe { nix::libc::send(self.0.as_raw_fd(), b"go\n".as_ptr().cast(), 3, nix::libc::MSG_NOSIGNAL) };
    }
}

/// Set for the local scheduler's workers: `stdin` (see [`Gate`]).
pub const START_GATE: &str = "AIC_START_GATE";

/// A port nobody listens on at `host` (the kernel's choice; the worker binds it soon after).
pub(super) fn free_port(host: std::net::Ipv4Addr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}
