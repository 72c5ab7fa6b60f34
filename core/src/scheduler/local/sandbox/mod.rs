//! Jobs as strangers: each allocation's worker (and so the user's program, its sshd, uWSGI and
//! `aic exec` sessions) runs as an unprivileged uid of its job's own, in PID, mount and IPC
//! namespaces of its own, in a cgroup, as a container runtime would run a Nomad task.
//!
//! As root the scheduler starts every worker through a keeper:
//!
//! - the **keeper** (the process the host started and waits for, in the host's PID namespace)
//!   joins the allocation's cgroups, makes new PID, mount and IPC namespaces and forks the
//!   namespace's init; it ignores the host's SIGTERM (the worker gets it through the process
//!   group), waits for the init, writes the exit code to `AIC_EXIT_FILE` (for a host that
//!   adopts it after a crash) and ends as the worker ended;
//! - the **init** (PID 1 of the new namespace, root, dies with the keeper) mounts a `/proc` of
//!   the namespace, builds the view (below), forks the worker and reaps whatever is orphaned
//!   to it; when the worker ends it exits, and the kernel kills every process left in the
//!   namespace — a program that kills its worker or `setsid`s away cannot outlive it;
//! - the **worker** (PID 2) starts in its work folder as root with `AIC_JOB_UID` and drops to
//!   the job's uid and gid itself (no supplementary groups, no new privileges) before anything
//!   of the job runs, once it has started the miner's environment keeper (the one process of
//!   the allocation left as root: it copies environments into the cache, `aic-worker`'s
//!   `envcache`).
//!
//! The view: the host's folders (its home, the pool's folder with its store and secrets,
//! every other allocation's work folder and sockets), `/tmp`, `/var/tmp` and `/dev/shm` are
//! covered with empty file systems of the allocation's own; its work folder comes back
//! (writable, owned by the job's uid), the miner's environment cache (`AIC_ENV_CACHE`; root's,
//! read-only to the job's uid by its modes), and what the worker is told to run — the worker
//! binary's folder, the installations on its `PATH` — comes back read-only. `/etc/passwd`
//! and `/etc/group` gain the job's user (`aic`, home = the work folder), which ssh and
//! Python's `getpass` look up. Folders the operator lists in `AIC_JOB_SHARED` (`:`-separated,
//! as Nomad host volumes) come back read-only too.
//!
//! The cgroup (v2 where its controllers are, else the v1 `memory` and `pids` hierarchies this
//! machine mounts) limits memory (`AIC_JOB_MEMORY_MB` per GPU held, 8192 by default) and
//! processes (`AIC_JOB_PIDS`, 4096); when the allocation ends it is killed whole and removed.
//! Jobs take uids from `AIC_JOB_UIDS` (`first-last`, 3000000-3065535 by default), the
//! lowest free one, the same for all of a job's allocations.
//!
//! Not root: jobs run as the host's user, as before, with a warning (said once).
//!
//! Here: what a job may see and the set-up; `jail`: the keeper, the init and the worker
//! between fork and exec; `cgroups`: the allocation's cgroup.

use std::ffi::{CStr, CString};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::super::job_user::{hand_over, with_user};
use crate::layout::JobKey;

mod cgroups;
mod jail;

use cgroups::Cgroups;
use jail::{Bind, Jail};

/// World-writable folders each allocation gets empty ones of its own (nothing left in them
/// reaches the next job, nor another's).
const PRIVATE: [&str; 5] = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock"];

/// The job's user name in the allocation's `/etc/passwd`.
pub use super::super::job_user::USER;

/// How jobs are confined on this host.
pub(super) struct Sandbox {
    first_uid: u32,
    uids: u32,
    /// Where the next uid is looked for (an offset into the range).
    next_uid: std::sync::atomic::AtomicU32,
    /// The job the last uid was given to, and that uid.
    last_given: std::sync::Mutex<Option<(JobKey, u32)>>,
    memory_mb_per_gpu: u64,
    pids: u64,
    /// The host's folders a job must not see (its home, the pool's folder).
    hidden: Vec<PathBuf>,
    /// Host folders every job sees read-only (`AIC_JOB_SHARED`, as a Nomad host volume).
    shared: Vec<PathBuf>,
    cgroups: Cgroups,
}

impl Sandbox {
    /// The sandbox for a pool working in `work_root`, or `None` (with a warning) where this
    /// host cannot make one (not root).
    pub(super) fn setup(work_root: &Path, store_root: Option<&Path>) -> Option<Sandbox> {
        if !nix::unistd::geteuid().is_root() {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "jobs run as this host's user, seeing what it sees: start the pool as root to run each job \
                 under a uid, PID namespace and cgroup of its own (AIC_JOB_SANDBOX=0 says you know)"
                )
            });
            return None;
        }
        let (first_uid, uids) = super::super::job_user::uid_range();
        let number = |k: &str, default: u64| {
            std::env::var(k).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(default)
        };
        let mut hidden = vec![];
        if let Some(home) =
            std::env::var_os("HOME").map(PathBuf::from).filter(|h| h.is_absolute() && h != Path::new("/"))
        {
            hidden.push(home);
        }
        hidden.push(Path::new("/root").to_path_buf());
        // The pool's folder (its store, secrets and ledger: the work root's parent, unless that
        // is `/`), and a local store wherever it is.
        if let Some(pool) = work_root.parent().filter(|p| *p != Path::new("/")) {
            hidden.push(pool.to_path_buf());
        }
        hidden.push(work_root.to_path_buf());
        hidden.extend(store_root.map(Path::to_path_buf));
        use sha2::Digest;
        let id = hex::encode(&sha2::Sha256::digest(work_root.to_string_lossy().as_bytes())[..4]);
        let cgroups = Cgroups::setup(&format!("aic-{id}"));
        // Its memory holds what signs for the pool: no job's uid may read it, nor a core dump.
        // SAFETY: a plain prctl on this process.
        unsafe { nix::libc::prctl(nix::libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        // Starting from the clock's offset: a host started again does not hand out at once
        // the uids the last one just used.
        let start = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
            % uids as u64) as u32;
        Some(Sandbox {
            first_uid,
            uids,
            next_uid: start.into(),
            last_given: Default::default(),
            memory_mb_per_gpu: number("AIC_JOB_MEMORY_MB", 8192),
            pids: number("AIC_JOB_PIDS", 4096),
            hidden,
            shared: std::env::var_os("AIC_JOB_SHARED")
                .map(|v| std::env::split_paths(&v).filter(|p| p.is_absolute()).collect())
                .unwrap_or_default(),
            cgroups,
        })
    }

    /// A uid for a new allocation of `job`, none of `taken` (other jobs' uids): the one the
    /// job's allocations placed just before got (they are started one after another, before
    /// the job is recorded), else the next after the last one given, so that a uid comes back
    /// only after every other one has been used (what a job left under its uid — a keyring,
    /// a lock — never meets the next job).
    pub(super) fn free_uid(&self, job: &JobKey, taken: &std::collections::HashSet<u32>) -> Option<u32> {
        let mut last = self.last_given.lock().unwrap();
        if let Some((j, uid)) = last.as_ref()
            && j == job
            && !taken.contains(uid)
        {
            return Some(*uid);
        }
        let start = self.next_uid.load(std::sync::atomic::Ordering::Relaxed);
        let uid = (0..self.uids).map(|k| self.first_uid + (start + k) % self.uids).find(|u| !taken.contains(u))?;
        self.next_uid.store((uid - self.first_uid + 1) % self.uids, std::sync::atomic::Ordering::Relaxed);
        *last = Some((job.clone(), uid));
        Some(uid)
    }

    /// Where an allocation of `job` sees its work folder: one path for all of them (as every
    /// Nomad task sees its own at the same place), under the covered work root.
    pub(super) fn work_seen_at(work_root: &Path, job: &JobKey) -> PathBuf {
        work_root.canonicalize().unwrap_or_else(|_| work_root.to_path_buf()).join(".jobs").join(job.job.as_str())
    }

    fn cgroup_name(job: &JobKey, index: u32, attempt: u32) -> String {
        let owner = job.owner.to_string();
        format!("{}-{}-{index}-{attempt}", &owner[2..10], job.job)
    }

    /// Prepares allocation `index` (of `job`'s `attempt`) to run under `uid` holding `gpus`,
    /// and has `cmd` (its worker) start inside: the work folder handed to the uid, the
    /// cgroup made, the view's files written; then, between fork and exec, the keeper, the
    /// init and the worker as the module says.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn confine(
        &self,
        cmd: &mut std::process::Command,
        job: &JobKey,
        index: u32,
        attempt: u32,
        uid: u32,
        gpus: usize,
        work: &Path,
        seen_at: &Path,
        exit_file: &Path,
    ) -> std::io::Result<()> {
        hand_over(work, uid)?;
        let passwd = with_user(
            &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
            &format!("{USER}:x:{uid}:{uid}:aic job:{}:/bin/sh", seen_at.display()),
        );
        let group = with_user(&std::fs::read_to_string("/etc/group").unwrap_or_default(), &format!("{USER}:x:{uid}:"));
        let passwd_at = work.with_extension("passwd");
        let group_at = work.with_extension("group");
        std::fs::write(&passwd_at, passwd)?;
        std::fs::write(&group_at, group)?;
        let memory = self.memory_mb_per_gpu * gpus.max(1) as u64 * 1024 * 1024;
        let procs = self.cgroups.make(&Self::cgroup_name(job, index, attempt), memory, self.pids)?;
        // What comes back into the view: the work folder, writable; what the worker runs, read-only.
        let path = cmd
            .get_envs()
            .find(|(k, _)| *k == "PATH")
            .and_then(|(_, v)| v.map(|v| v.to_os_string()))
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        let program = cmd.get_program().to_os_string();
        let mut hidden: Vec<PathBuf> = self.hidden.clone();
        hidden.extend(PRIVATE.map(PathBuf::from));
        let hidden: Vec<PathBuf> =
            hidden.into_iter().filter(|h| h.is_dir()).filter_map(|h| h.canonicalize().ok()).collect();
        // Only the outermost of nested folders is covered.
        let mut cover: Vec<PathBuf> = vec![];
        for h in {
            let mut h = hidden.clone();
            h.sort_by_key(|p| p.components().count());
            h
        } {
            if !cover.iter().any(|c| h.starts_with(c)) {
                cover.push(h);
            }
        }
        let under_cover = |p: &Path| cover.iter().any(|c| p.starts_with(c));
        // The work folder, writable, at `seen_at` (the same path in every allocation of the
        // job: launchers that start ranks over ssh, horovodrun's, `cd` to the leader's).
        let mut keep: Vec<(PathBuf, PathBuf, bool)> = vec![(work.canonicalize()?, seen_at.to_path_buf(), true)];
        // The environment cache, at its own path: the keeper (root) writes it; its modes keep
        // the job's uid to reading.
        if let Some(cache) =
            cmd.get_envs().find(|(k, _)| *k == super::super::launch::ENV_CACHE).and_then(|(_, v)| v).map(PathBuf::from)
            && let Ok(cache) = cache.canonicalize()
        {
            keep.push((cache.clone(), cache, true));
        }
        // Never a folder holding one the job must not see (a `PATH` of `~/bin` gives `~/bin`,
        // not the home).
        let secret: Vec<PathBuf> = self.hidden.iter().filter_map(|h| h.canonicalize().ok()).collect();
        let mut ro = |p: &Path| -> bool {
            let Ok(p) = p.canonicalize() else { return false };
            if !under_cover(&p) || secret.iter().any(|h| h.starts_with(&p)) {
                return false;
            }
            if !keep.iter().any(|(k, _, _)| p.starts_with(k)) {
                keep.retain(|(k, _, _)| !k.starts_with(&p));
                keep.push((p.clone(), p, false));
            }
            true
        };
        if let Some(dir) = Path::new(&program).parent() {
            ro(dir);
        }
        for dir in &self.shared {
            if !ro(dir) && dir.exists() {
                tracing::warn!(folder = %dir.display(), "AIC_JOB_SHARED names a folder that holds the pool's own: not shared");
            }
        }
        for dir in std::env::split_paths(&path) {
            // An installation's prefix (`<prefix>/bin`), and those its programs link to (a
            // virtual environment's interpreter).
            let prefix =
                |d: &Path| if d.ends_with("bin") { d.parent().unwrap_or(d).to_path_buf() } else { d.to_path_buf() };
            if !dir.is_absolute() || !under_cover(&dir) {
                continue;
            }
            let _ = (installation(&prefix(&dir)) && ro(&prefix(&dir))) || ro(&dir);
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten().take(4096) {
                if e.file_type().is_ok_and(|t| t.is_symlink())
                    && let Ok(real) = e.path().canonicalize()
                    && let Some(d) = real.parent()
                {
                    let _ = (installation(&prefix(d)) && ro(&prefix(d))) || ro(d);
                }
            }
        }
        keep.sort_by_key(|(_, at, _)| at.components().count());
        keep.truncate(64);
        let c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other);
        let mut mkdirs = vec![];
        let mut binds = vec![];
        for (from, at, writable) in &keep {
            for a in at.ancestors().collect::<Vec<_>>().into_iter().rev().skip(1) {
                if under_cover(a) {
                    mkdirs.push(c(a)?);
                }
            }
            binds.push(Bind { from: c(from)?, at: c(at)?, writable: *writable });
        }
        let private = PRIVATE.map(|p| Path::new(p).canonicalize().ok());
        let cover = cover
            .iter()
            .map(|p| Ok((c(p)?, private.iter().flatten().any(|q| q == p))))
            .collect::<std::io::Result<Vec<_>>>()?;
        let jail = Arc::new(Jail {
            procs,
            cover,
            mkdirs,
            binds,
            passwd: (c(&passwd_at)?, c(&group_at)?),
            exit_file: c(exit_file)?,
        });
        cmd.env("HOME", seen_at).env("USER", USER).env("LOGNAME", USER).current_dir("/");
        cmd.env(super::super::job_user::JOB_UID, uid.to_string());
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec the closure makes system calls only, on strings and
        // descriptors made before the fork (see `Jail::enter`).
        unsafe {
            cmd.pre_exec(move || jail.enter());
        }
        Ok(())
    }

    /// After allocation `index`'s worker ended: kills whatever is left in its cgroup (nothing,
    /// when its namespace's init took it down) and removes it, then its view's files.
    pub(super) async fn release(&self, job: &JobKey, index: u32, attempt: u32, work: &Path) {
        self.cgroups.kill_and_remove(&Self::cgroup_name(job, index, attempt)).await;
        let _ = std::fs::remove_file(work.with_extension("passwd"));
        let _ = std::fs::remove_file(work.with_extension("group"));
    }
}

/// Whether `prefix` is a Python installation or virtual environment (`pyvenv.cfg`, or
/// `bin/python3` beside `lib/python3.*`): its programs need the whole of it. Any other
/// `PATH` folder comes back alone (a `~/.local/bin` brings not the rest of `~/.local`).
fn installation(prefix: &Path) -> bool {
    prefix.join("pyvenv.cfg").is_file()
        || (prefix.join("bin/python3").exists()
            && std::fs::read_dir(prefix.join("lib"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("python3")))
}

/// Whether a sandboxed worker inherits the host's variable `key`: the program's locale,
/// paths and runtimes' settings, aic's own (`AIC_*`, the pool's secrets excepted by the
/// caller), the store's where workers hold store access; nothing else.
pub(super) fn inherited(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    ];
    const PREFIXES: &[&str] = &[
        "AIC_", "LC_", "CUDA_", "NVIDIA_", "NCCL_", "OMPI_", "PMIX_", "HOROVOD_", "GLOO_", "TORCH_", "PYTHON", "PIP_",
        "UV_", "RUST_", "AWS_",
    ];
    EXACT.contains(&key) || PREFIXES.iter().any(|p| key.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::jail::decimal;
    use super::*;

    #[test]
    fn the_jobs_user_replaces_any_line_of_its_name_or_id() {
        let host =
            "root:x:0:0:root:/root:/bin/bash\naic:x:1001:1001::/home/aic:/bin/bash\nold:x:3000000:1::/:/bin/sh\n";
        assert_eq!(
            with_user(host, "aic:x:3000000:3000000:aic job:/w:/bin/sh"),
            "root:x:0:0:root:/root:/bin/bash\naic:x:3000000:3000000:aic job:/w:/bin/sh\n"
        );
    }

    /// The allocations of one job, started one after another, share a uid; the next job gets
    /// the next one, and a uid another job holds is never given.
    #[test]
    fn a_jobs_allocations_share_its_uid_and_the_next_job_gets_the_next() {
        let s = Sandbox {
            first_uid: 3_000_000,
            uids: 4,
            next_uid: 3.into(),
            last_given: Default::default(),
            memory_mb_per_gpu: 1,
            pids: 1,
            hidden: vec![],
            shared: vec![],
            cgroups: Cgroups::default(),
        };
        let job =
            |n: u8| JobKey::new(format!("0x{}", hex::encode([n; 20])).parse().unwrap(), aic_schemas::JobId::generate());
        let (a, b) = (job(1), job(2));
        let none = std::collections::HashSet::new();
        let ua = s.free_uid(&a, &none).unwrap();
        assert_eq!(ua, 3_000_003);
        assert_eq!(s.free_uid(&a, &none), Some(ua), "a second allocation of the job got another uid");
        let taken: std::collections::HashSet<u32> = [ua].into();
        assert_eq!(s.free_uid(&b, &taken), Some(3_000_000), "the next job: the next uid, wrapping");
        assert_eq!(s.free_uid(&b, &taken), Some(3_000_000));
        let all: std::collections::HashSet<u32> = (3_000_000..3_000_004).collect();
        assert_eq!(s.free_uid(&job(3), &all), None);
    }

    #[test]
    fn exit_codes_are_written_in_decimal() {
        let mut b = [0u8; 4];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(137, &mut b), b"137");
    }

    #[test]
    fn handing_a_folder_over_never_follows_a_link_out_of_it() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("host-file");
        std::fs::write(&outside, "host").unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("sub")).unwrap();
        std::fs::write(work.join("sub/data"), "job").unwrap();
        std::os::unix::fs::symlink(&outside, work.join("link")).unwrap();
        hand_over(&work, 3_000_123).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(work.join("sub/data")).unwrap().uid(), 3_000_123);
        assert_eq!(std::fs::metadata(&outside).unwrap().uid(), 0, "the link's target was handed over");
        assert_eq!(std::fs::symlink_metadata(work.join("link")).unwrap().uid(), 3_000_123);
    }
}
