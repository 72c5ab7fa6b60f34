//! The miner's cache of prepared Python environments (`pyenv`), shared by every job and
//! replica on the miner, read-only to all of them.
//!
//! Layout under `AIC_ENV_CACHE` (the local scheduler: `<work root>/.env-cache`, one per machine;
//! Nomad: the operator's host volume, `infra/nomad/README.md`):
//!
//! - `envs/<digest>/`: an environment, or a dataset (`stage`), every file and folder owned by the keeper (root where
//!   jobs run under uids of their own) and not writable by anyone else;
//! - `meta/<digest>`: its size in bytes; its modification time is its last use (LRU);
//! - `locks/<digest>`: taken exclusively while one allocation builds or evicts the environment,
//!   shared while any allocation uses it (an environment in use is never evicted); mode 0600,
//!   so a job's program cannot take (and hold) one;
//! - `tmp/`: copies on their way into `envs/`.
//!
//! A job's program must never change what another owner's imports, and its worker runs as
//! its uid: so the worker builds an environment in its own allocation's folder (which no other
//! job sees), and the **keeper** copies it into the cache. The keeper is `aic-worker
//! env-keeper`, started by the worker while it is still root (the sandbox's worker and a Nomad
//! task's both start as root and drop to the job's uid, `confine`), before it drops: it takes
//! requests on its stdin (`lock D`, `seal D`, `unlock D`), copies without following any link
//! (a link planted in the build folder to a root-only file stays a link), and dies with the
//! worker. Where the worker is not root (jobs run as the host's user, or Nomad's raw_exec) it
//! does the same in its own process: jobs share its uid there and nothing is read-only to
//! them anyway.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::libc;

/// Where the cache is (set by the scheduler).
pub(crate) const CACHE_VAR: &str = aic_core::scheduler::launch::ENV_CACHE;
/// Its bound in MiB (`AIC_ENV_CACHE_MB`, 20480 by default): least recently used
/// environments not in use are evicted past it.
const LIMIT_VAR: &str = "AIC_ENV_CACHE_MB";
/// Where an allocation builds its environment, in its own folder.
pub(crate) const BUILD_DIR: &str = ".aic-env";

/// The cache on this miner.
pub(crate) struct Cache {
    root: PathBuf,
    limit: u64,
    /// Locks held by this process, by digest.
    held: std::sync::Mutex<std::collections::HashMap<String, File>>,
}

/// What `lock` found.
#[derive(Debug, PartialEq)]
pub(crate) enum Taken {
    Ready(PathBuf),
    Build,
    Busy,
}

/// A digest names an environment: 64 hex digits, nothing else (it becomes a file name).
fn checked(digest: &str) -> std::io::Result<&str> {
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        Ok(digest)
    } else {
        Err(std::io::Error::other(format!("not an environment digest: {digest:?}")))
    }
}

fn flock(f: &File, how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor this file owns.
    if unsafe { libc::flock(f.as_raw_fd(), how) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

impl Cache {
    pub(crate) fn open(root: &Path) -> std::io::Result<Cache> {
        if !root.is_absolute() {
            return Err(std::io::Error::other(format!("{} is not an absolute path", root.display())));
        }
        std::fs::create_dir_all(root)?;
        if !std::fs::symlink_metadata(root)?.is_dir() {
            return Err(std::io::Error::other(format!("{} is not a folder", root.display())));
        }
        // `envs/`: through, not listed (a job reaches its environment by its digest, and sees
        // nobody else's); the rest the keeper's alone.
        for (d, mode) in [("envs", 0o711), ("meta", 0o700), ("locks", 0o700), ("tmp", 0o700)] {
            let p = root.join(d);
            std::fs::create_dir_all(&p)?;
            if !std::fs::symlink_metadata(&p)?.is_dir() {
                return Err(std::io::Error::other(format!("{} is not a folder", p.display())));
            }
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
        // Copies a keeper killed mid-way left (none younger than an hour: another may be copying).
        for e in std::fs::read_dir(root.join("tmp"))?.flatten() {
            let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
            if old.is_some_and(|age| age > std::time::Duration::from_secs(3600)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let mb = std::env::var(LIMIT_VAR).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(20_480);
        Ok(Cache { root: root.to_path_buf(), limit: mb * 1024 * 1024, held: Default::default() })
    }

    fn env_dir(&self, digest: &str) -> PathBuf {
        self.root.join("envs").join(digest)
    }

    fn lock_file(&self, digest: &str) -> std::io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.root.join("locks").join(digest))
    }

    /// Takes environment `digest` for this allocation: `Ready(folder)` when it is there (then
    /// held shared for as long as this process lives), `Build` when the caller is to build it
    /// (held exclusively until `seal` or `unlock`), `Busy` when another allocation has been
    /// building it for longer than `wait` (the caller builds one of its own, uncached: no job
    /// holds up another's start for longer than that).
    pub(crate) fn lock(&self, digest: &str, wait: std::time::Duration) -> std::io::Result<Taken> {
        let digest = checked(digest)?;
        let f = self.lock_file(digest)?;
        let dir = self.env_dir(digest);
        let until = std::time::Instant::now() + wait;
        let try_lock = |how: libc::c_int| -> std::io::Result<bool> {
            match flock(&f, how | libc::LOCK_NB) {
                Ok(()) => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
                Err(e) => Err(e),
            }
        };
        let taken = loop {
            // Shared first: any number of users hold it so at once (a build holds it
            // exclusively, so a shared hold sees a finished environment or none).
            if try_lock(libc::LOCK_SH)? {
                if dir.is_dir() {
                    break Taken::Ready(dir);
                }
                if try_lock(libc::LOCK_EX)? {
                    // Built by whoever held it before?
                    if dir.is_dir() {
                        flock(&f, libc::LOCK_SH)?;
                        break Taken::Ready(dir);
                    }
                    break Taken::Build;
                }
                flock(&f, libc::LOCK_UN)?;
            }
            if std::time::Instant::now() >= until {
                return Ok(Taken::Busy);
            }
            // Two that both wait to build step back by different amounts.
            std::thread::sleep(std::time::Duration::from_millis(100 + u64::from(std::process::id() % 7) * 30));
        };
        if matches!(taken, Taken::Ready(_)) {
            self.touch(digest);
        }
        self.held.lock().unwrap().insert(digest.to_string(), f);
        Ok(taken)
    }

    /// Lets go of `digest` (a build that failed).
    pub(crate) fn unlock(&self, digest: &str) {
        if let Some(f) = self.held.lock().unwrap().remove(digest) {
            let _ = flock(&f, libc::LOCK_UN);
        }
    }

    fn touch(&self, digest: &str) {
        let meta = self.root.join("meta").join(digest);
        if let Ok(f) = File::options().write(true).open(&meta) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Copies the build of `digest` (`<work>/.aic-env/<digest>`, opened without following a
    /// link at any step below `work`, every entry `builder`'s) into the cache, owned by this
    /// process and read-only to everyone else; holds it shared from then on; evicts past the
    /// bound. Returns its folder.
    pub(crate) fn seal(&self, digest: &str, work: &Path, builder: u32) -> std::io::Result<PathBuf> {
        let digest = checked(digest)?;
        if !self.held.lock().unwrap().contains_key(digest) {
            return Err(std::io::Error::other("seal without lock"));
        }
        let c = |s: &OsStr| CString::new(s.as_bytes()).map_err(std::io::Error::other);
        let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let work_fd = open_at(libc::AT_FDCWD, &c(work.as_os_str())?, dir_flags)?;
        let build = open_at(work_fd.as_raw_fd(), &c(OsStr::new(BUILD_DIR))?, dir_flags)?;
        let src = open_at(build.as_raw_fd(), &c(OsStr::new(digest))?, dir_flags)?;
        let tmp = self.root.join("tmp").join(format!("{digest}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let mut budget = Copy { builder, bytes_left: self.limit, entries_left: MAX_ENTRIES, bytes: 0 };
        let copied = copy_dir(&src, &tmp, &mut budget, 0);
        let bytes = self.limit - budget.bytes_left;
        let dest = self.env_dir(digest);
        let placed = copied.and_then(|()| match std::fs::rename(&tmp, &dest) {
            // Built meanwhile by a holder of an older lock file (the cache was cleared): theirs stays.
            Err(_) if dest.is_dir() => std::fs::remove_dir_all(&tmp),
            r => r,
        });
        if let Err(e) = placed {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::write(self.root.join("meta").join(digest), bytes.to_string())?;
        if let Some(f) = self.held.lock().unwrap().get(digest) {
            flock(f, libc::LOCK_SH)?;
        }
        self.evict();
        Ok(dest)
    }

    /// Past the bound: the least recently used environments nobody holds go, oldest first.
    pub(crate) fn evict(&self) {
        let mut envs: Vec<(std::time::SystemTime, u64, String)> = std::fs::read_dir(self.root.join("meta"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                checked(&name).ok()?;
                let size = std::fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
                Some((e.metadata().ok()?.modified().ok()?, size, name))
            })
            .collect();
        let mut total: u64 = envs.iter().map(|e| e.1).sum();
        envs.sort();
        for (_, size, digest) in envs {
            if total <= self.limit {
                break;
            }
            if self.held.lock().unwrap().contains_key(&digest) {
                continue;
            }
            let Ok(f) = self.lock_file(&digest) else { continue };
            // SAFETY: flock on a descriptor `f` owns.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                continue; // in use
            }
            let gone = self.root.join("tmp").join(format!("{digest}.evicted.{}", std::process::id()));
            if std::fs::rename(self.env_dir(&digest), &gone).is_ok() {
                let _ = std::fs::remove_dir_all(&gone);
            }
            let _ = std::fs::remove_file(self.root.join("meta").join(&digest));
            total = total.saturating_sub(size);
            tracing::info!(env = %digest, bytes = size, "environment evicted from the cache");
        }
    }
}

fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: openat with a NUL-terminated name; the descriptor returned is owned here.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
    if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd) }) }
}

/// What one environment may take while it is copied in, and whose its files must be.
struct Copy {
    /// The uid that built it (the job's): a file of anyone else's (a hard link to a file the
    /// job may not read, on a machine that allows one) is refused.
    builder: u32,
    /// Bytes left (each entry counts its blocks, and at least 4 KiB: inodes are not free).
    bytes_left: u64,
    entries_left: u64,
    /// Bytes of file content copied.
    bytes: u64,
}

/// Most entries one environment may hold.
const MAX_ENTRIES: u64 = 500_000;

/// Copies the folder open at `src` into the new folder `dst`: folders 0755, files 0644 (0755
/// where any execute bit was set); nothing is followed (every name is opened relative to its
/// folder's descriptor with `O_NOFOLLOW`), and a link, a special file, a file with more than
/// one name or one not the builder's refuses the whole copy (pip installing wheels makes
/// none of them).
fn copy_dir(src: &OwnedFd, dst: &Path, budget: &mut Copy, depth: u32) -> std::io::Result<()> {
    let refuse = |why: String| Err(std::io::Error::other(why));
    if depth > 64 {
        return refuse("the environment nests folders more than 64 deep".into());
    }
    std::fs::create_dir(dst)?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755))?;
    // The folder itself, through its descriptor (a magic link to exactly that folder).
    for e in std::fs::read_dir(format!("/proc/self/fd/{}", src.as_raw_fd()))? {
        let e = e?;
        let name = e.file_name();
        let c = CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstatat into a stat buffer of the right type.
        if unsafe { libc::fstatat(src.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: filled by the successful call above.
        let st = unsafe { st.assume_init() };
        let shown = name.to_string_lossy();
        if st.st_uid != budget.builder {
            return refuse(format!("{shown} in the environment is not its builder's"));
        }
        let cost = (st.st_blocks as u64 * 512).max(st.st_size as u64).max(4096);
        if budget.entries_left == 0 || budget.bytes_left < cost {
            return refuse("the environment is larger than this miner's cache may hold (AIC_ENV_CACHE_MB)".into());
        }
        budget.entries_left -= 1;
        budget.bytes_left -= cost;
        let to = dst.join(&name);
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
                copy_dir(&open_at(src.as_raw_fd(), &c, flags)?, &to, budget, depth + 1)?;
            }
            libc::S_IFREG if st.st_nlink == 1 => {
                let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
                let mut from = File::from(open_at(src.as_raw_fd(), &c, flags)?);
                let m = from.metadata()?;
                if !m.is_file() || std::os::unix::fs::MetadataExt::ino(&m) != st.st_ino {
                    return refuse(format!("{shown} changed while it was copied"));
                }
                let mut out = File::create_new(&to)?;
                budget.bytes += std::io::copy(&mut (&mut from).take(st.st_size as u64), &mut out)?;
                let mode = if st.st_mode & 0o111 != 0 { 0o755 } else { 0o644 };
                out.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            libc::S_IFREG => return refuse(format!("{shown} in the environment has other names (a hard link)")),
            libc::S_IFLNK => return refuse(format!("{shown} in the environment is a link")),
            _ => return refuse(format!("{shown} in the environment is not a file or a folder")),
        }
    }
    Ok(())
}

/// The worker's side: the keeper it started as root, or the cache in its own process.
pub(crate) enum Keeper {
    Root(std::sync::Mutex<(std::process::ChildStdin, std::io::BufReader<std::process::ChildStdout>)>),
    Direct(Cache),
}

static KEEPER: std::sync::OnceLock<Option<Keeper>> = std::sync::OnceLock::new();

/// The keeper, if this miner has a cache (`confine` starts it).
pub(crate) fn keeper() -> Option<&'static Keeper> {
    KEEPER.get().and_then(Option::as_ref)
}

/// In the worker, before it drops root (`as_root`: it is root and will become the job's
/// uid): starts the keeper where the miner has a cache. Said once if the cache cannot be
/// used; environments are then built in the allocation's folder alone.
pub(crate) fn start(as_root: bool) {
    let keeper = std::env::var_os(CACHE_VAR).filter(|v| !v.is_empty()).map(PathBuf::from).and_then(|root| {
        let k = if as_root { spawn_root(&root) } else { Cache::open(&root).map(Keeper::Direct) };
        k.map_err(|e| {
            eprintln!("aic-worker: the environment cache {} is not usable ({e}); nothing is cached", root.display())
        })
        .ok()
    });
    let _ = KEEPER.set(keeper);
}

fn spawn_root(root: &Path) -> std::io::Result<Keeper> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    // Only what it needs: nothing of the job's (its name and environment tell it apart from
    // the allocation's worker).
    cmd.arg("env-keeper").env_clear().env(CACHE_VAR, root);
    for k in [aic_core::scheduler::launch::WORK_DIR, aic_core::scheduler::job_user::JOB_UID, LIMIT_VAR, "PATH"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    // SAFETY: one system call between fork and exec: it dies with the worker (its locks with it).
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn()?;
    let (stdin, stdout) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"));
    // Reaped by nobody: it ends with the worker.
    std::mem::forget(child);
    let k = Keeper::Root(std::sync::Mutex::new((stdin, std::io::BufReader::new(stdout))));
    match k.ask("hello")? {
        r if r == "ok" => Ok(k),
        r => Err(std::io::Error::other(r)),
    }
}

impl Keeper {
    fn ask(&self, line: &str) -> std::io::Result<String> {
        let Keeper::Root(io) = self else { return Err(std::io::Error::other("no keeper")) };
        let mut io = io.lock().unwrap();
        writeln!(io.0, "{line}")?;
        io.0.flush()?;
        let mut answer = String::new();
        if io.1.read_line(&mut answer)? == 0 {
            return Err(std::io::Error::other("the environment keeper is gone"));
        }
        Ok(answer.trim_end().to_string())
    }

    /// `Cache::lock`, through the keeper where there is one.
    pub(crate) fn lock(&self, digest: &str, wait: std::time::Duration) -> std::io::Result<Taken> {
        match self {
            Keeper::Direct(c) => c.lock(digest, wait),
            Keeper::Root(_) => match self.ask(&format!("lock {digest} {}", wait.as_secs()))?.split_once(' ') {
                Some(("ready", dir)) => Ok(Taken::Ready(PathBuf::from(dir))),
                Some(("build", _)) => Ok(Taken::Build),
                Some(("busy", _)) => Ok(Taken::Busy),
                Some(("error", why)) => Err(std::io::Error::other(why.to_string())),
                _ => Err(std::io::Error::other("the environment keeper answered out of turn")),
            },
        }
    }

    /// `Cache::seal` of this allocation's build.
    pub(crate) fn seal(&self, digest: &str, work: &Path) -> std::io::Result<PathBuf> {
        match self {
            Keeper::Direct(c) => c.seal(digest, work, nix::unistd::getuid().as_raw()),
            Keeper::Root(_) => match self.ask(&format!("seal {digest}"))?.split_once(' ') {
                Some(("ready", dir)) => Ok(PathBuf::from(dir)),
                Some((_, why)) => Err(std::io::Error::other(why.to_string())),
                None => Err(std::io::Error::other("the environment keeper answered out of turn")),
            },
        }
    }

    pub(crate) fn unlock(&self, digest: &str) {
        match self {
            Keeper::Direct(c) => c.unlock(digest),
            Keeper::Root(_) => {
                let _ = self.ask(&format!("unlock {digest}"));
            }
        }
    }
}

/// `aic-worker env-keeper`: the keeper's loop (root; the worker's requests on stdin, one
/// answer a line on stdout). The build it copies is always the one in its worker's own
/// allocation folder (`AIC_WORK_DIR`), whatever the request says.
pub(crate) fn keep() -> ! {
    let _ = nix::sys::prctl::set_name(c"aic-env-keeper");
    let root = std::env::var_os(CACHE_VAR).map(PathBuf::from);
    let work = std::env::var_os(aic_core::scheduler::launch::WORK_DIR).map(PathBuf::from);
    let builder = std::env::var(aic_core::scheduler::job_user::JOB_UID).ok().and_then(|v| v.parse::<u32>().ok());
    let (Some(root), Some(work), Some(builder)) = (root, work, builder) else {
        println!("error AIC_ENV_CACHE, AIC_WORK_DIR and AIC_JOB_UID are needed");
        std::process::exit(2)
    };
    let cache = match Cache::open(&root) {
        Ok(c) => c,
        Err(e) => {
            println!("error {e}");
            std::process::exit(2)
        }
    };
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (verb, digest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let answer = match verb {
            "hello" => "ok".to_string(),
            "lock" => {
                let (digest, wait) = digest.split_once(' ').unwrap_or((digest, "0"));
                let wait = std::time::Duration::from_secs(wait.parse().unwrap_or(0).min(24 * 3600));
                match cache.lock(digest, wait) {
                    Ok(Taken::Ready(dir)) => format!("ready {}", dir.display()),
                    Ok(Taken::Build) => "build -".into(),
                    Ok(Taken::Busy) => "busy -".into(),
                    Err(e) => format!("error {e}"),
                }
            }
            "seal" => match cache.seal(digest, &work, builder) {
                Ok(dir) => format!("ready {}", dir.display()),
                Err(e) => format!("error {e}"),
            },
            "unlock" => {
                cache.unlock(digest);
                "ok".into()
            }
            _ => "error unknown request".into(),
        };
        if writeln!(out, "{answer}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: std::time::Duration = std::time::Duration::ZERO;

    fn digest(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    fn build(work: &Path, d: &str) -> PathBuf {
        let b = work.join(BUILD_DIR).join(d);
        std::fs::create_dir_all(b.join("pkg")).unwrap();
        std::fs::write(b.join("pkg/__init__.py"), "X = 1\n").unwrap();
        b
    }

    /// A build is copied in whole, read-only; the next lock finds it ready, while this one
    /// still holds it (both shared); one that is built meanwhile is busy to others.
    #[test]
    fn a_sealed_build_is_a_read_only_copy_found_by_the_next_lock() {
        let root = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let cache = Cache::open(root.path()).unwrap();
        let d = digest('a');
        assert_eq!(cache.lock(&d, NOW).unwrap(), Taken::Build, "nothing is cached yet: the caller builds");
        let other = Cache::open(root.path()).unwrap();
        assert_eq!(other.lock(&d, NOW).unwrap(), Taken::Busy, "two built it at once");
        let b = build(work.path(), &d);
        std::fs::write(b.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let dir = cache.seal(&d, work.path(), me()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("pkg/__init__.py")).unwrap(), "X = 1\n");
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir.join("pkg/__init__.py")), 0o644);
        assert_eq!(mode(&dir.join("tool")), 0o755);
        assert_eq!(mode(&dir.join("pkg")), 0o755);
        assert_eq!(mode(&root.path().join("envs")), 0o711, "anyone may list the cache");
        assert_eq!(other.lock(&d, NOW).unwrap(), Taken::Ready(dir));
    }

    /// What pip never makes refuses the whole copy: the build folder as a link (to a folder
    /// the job may not read), a link inside, a hard link (a second name for a file), a file
    /// of another uid's.
    #[test]
    fn links_and_files_of_others_are_refused() {
        let secret = tempfile::tempdir().unwrap();
        std::fs::write(secret.path().join("key"), "pool's").unwrap();
        type Plant = Box<dyn Fn(&Path, &Path)>;
        let cases: Vec<(&str, Plant)> = vec![
            (
                "the build is a link",
                Box::new(|work: &Path, _: &Path| {
                    std::fs::create_dir_all(work.join(BUILD_DIR)).unwrap();
                    std::os::unix::fs::symlink("/etc", work.join(BUILD_DIR).join(digest('b'))).unwrap();
                }),
            ),
            (
                "a link inside",
                Box::new(|work: &Path, _: &Path| {
                    std::os::unix::fs::symlink("/etc/hostname", build(work, &digest('b')).join("outside")).unwrap();
                }),
            ),
            (
                "a hard link",
                Box::new(|work: &Path, secret: &Path| {
                    std::fs::hard_link(secret.join("key"), build(work, &digest('b')).join("key")).unwrap();
                }),
            ),
        ];
        for (what, plant) in cases {
            let root = tempfile::tempdir().unwrap();
            let work = tempfile::tempdir().unwrap();
            let cache = Cache::open(root.path()).unwrap();
            assert_eq!(cache.lock(&digest('b'), NOW).unwrap(), Taken::Build);
            plant(work.path(), secret.path());
            assert!(cache.seal(&digest('b'), work.path(), me()).is_err(), "{what}: sealed");
            assert!(!root.path().join("envs").join(digest('b')).exists(), "{what}");
        }
        // A file of another uid's (as root, which can make one).
        if nix::unistd::geteuid().is_root() {
            let root = tempfile::tempdir().unwrap();
            let work = tempfile::tempdir().unwrap();
            let cache = Cache::open(root.path()).unwrap();
            cache.lock(&digest('c'), NOW).unwrap();
            let b = build(work.path(), &digest('c'));
            std::os::unix::fs::chown(b.join("pkg/__init__.py"), Some(4242), None).unwrap();
            let e = cache.seal(&digest('c'), work.path(), me()).unwrap_err().to_string();
            assert!(e.contains("not its builder's"), "{e}");
        }
    }

    /// Past the bound the least recently used environment goes, unless someone holds it; an
    /// environment larger than the whole bound is refused.
    #[test]
    fn eviction_takes_the_oldest_environment_nobody_holds() {
        let root = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let mut holder = Cache::open(root.path()).unwrap();
        let (old, held, new) = (digest('1'), digest('2'), digest('3'));
        let seal = |d: &str, c: &Cache| {
            assert_eq!(c.lock(d, NOW).unwrap(), Taken::Build);
            build(work.path(), d);
            c.seal(d, work.path(), me())
        };
        let builder = Cache::open(root.path()).unwrap();
        seal(&old, &builder).unwrap();
        builder.unlock(&old);
        seal(&held, &builder).unwrap(); // `builder` keeps holding it
        // Sealing `new` with room for it alone evicts what it can: `old`; not `held` (in
        // use), nor its own.
        holder.limit = 3 * 4096;
        seal(&new, &holder).unwrap();
        let envs = root.path().join("envs");
        assert!(!envs.join(&old).exists(), "an environment nobody held stayed past the bound");
        assert!(envs.join(&held).exists(), "an environment in use was evicted");
        assert!(envs.join(&new).exists());
        holder.limit = 4096;
        let e = seal(&digest('4'), &holder).unwrap_err().to_string();
        assert!(e.contains("larger than this miner's cache"), "{e}");
    }

    #[test]
    fn only_digests_name_environments() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::open(root.path()).unwrap();
        for bad in ["../x", "", &"A".repeat(64), &"a".repeat(63)] {
            assert!(cache.lock(bad, NOW).is_err(), "{bad:?}");
        }
        assert!(Cache::open(Path::new("relative/cache")).is_err());
    }
}
