//! The keeper, the init and the worker: what each does between fork and exec, with only
//! what was made before (no allocation, async-signal-safe calls).

use super::*;

/// A folder that comes back into the view (at its own path, or the work folder's).
pub(super) struct Bind {
    pub(super) from: CString,
    pub(super) at: CString,
    pub(super) writable: bool,
}

/// Everything the keeper, the init and the worker need between fork and exec, made before.
pub(super) struct Jail {
    /// The allocation's `cgroup.procs` files, open for writing.
    pub(super) procs: Vec<std::fs::File>,
    /// Folders covered with an empty file system (`true`: a private `/tmp`-like one).
    pub(super) cover: Vec<(CString, bool)>,
    pub(super) mkdirs: Vec<CString>,
    pub(super) binds: Vec<Bind>,
    pub(super) passwd: (CString, CString),
    pub(super) exit_file: CString,
}

pub(super) fn check(r: nix::libc::c_int) -> std::io::Result<()> {
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

impl Jail {
    /// In the forked child: becomes the keeper, whose child is the namespace's init, whose
    /// child returns from here to exec the worker (which drops to the job's uid itself).
    pub(super) fn enter(&self) -> std::io::Result<()> {
        use nix::libc;
        // SAFETY: system calls on strings and descriptors that outlive the calls; this
        // process is the single-threaded child of a fork.
        unsafe {
            for f in &self.procs {
                if libc::write(f.as_raw_fd(), c"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            check(libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWIPC))?;
            let init = libc::fork();
            if init < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if init > 0 {
                libc::prctl(libc::PR_SET_NAME, c"aic-keeper".as_ptr(), 0, 0, 0);
                self.keep(init);
            }
            libc::prctl(libc::PR_SET_NAME, c"aic-init".as_ptr(), 0, 0, 0);
            // The namespace's init: gone with the keeper. (Its parent is outside its
            // namespace: `getppid` says 0 whether or not the keeper still lives.)
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // A mount namespace of its own, private: the keeper keeps the host's view, where
            // it writes the exit file.
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                say(c"aic: cannot make the job's mount namespace", std::io::Error::last_os_error());
                libc::_exit(126);
            }
            if let Err(e) = self.view() {
                say(c"aic: cannot make the job's view of this machine", e);
                libc::_exit(126);
            }
            let worker = libc::fork();
            if worker < 0 {
                libc::_exit(126);
            }
            if worker > 0 {
                reap_until(worker);
            }
            // The worker: started as root, it becomes the job's uid itself (`AIC_JOB_UID`, no
            // groups, no new privileges) once it has started the miner's environment keeper,
            // before anything of the job runs (`aic-worker`'s `confine`), as in a Nomad task.
            // Started in `/`, never in the job's folder (whatever an earlier run left there is
            // not found through a relative `PATH` or `LD_LIBRARY_PATH` entry by a root exec);
            // it goes to its folder once it is the job's user.
            check(libc::chdir(c"/".as_ptr()))?;
        }
        Ok(())
    }

    /// The mounts of the view, in the init (root, in the new mount namespace).
    pub(super) unsafe fn view(&self) -> std::io::Result<()> {
        use nix::libc;
        // SAFETY: as in `enter`.
        unsafe {
            check(libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
            // POSIX message queues of the allocation's own IPC namespace (the host's are at
            // /dev/mqueue otherwise).
            let _ = libc::mount(
                c"mqueue".as_ptr(),
                c"/dev/mqueue".as_ptr(),
                c"mqueue".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            );
            // The job's user first: its files are in the pool's folder, covered next.
            bind(&self.passwd.0, c"/etc/passwd", true)?;
            bind(&self.passwd.1, c"/etc/group", true)?;
            // What comes back is held open across the covering (a mount is bound from a path
            // of this namespace's: a descriptor opened before `unshare` names the old one's).
            let mut held = [-1; 64];
            for (b, fd) in self.binds.iter().zip(held.iter_mut()) {
                *fd = libc::open(b.from.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
                if *fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (at, private) in &self.cover {
                let opts: &CStr = if *private { c"mode=1777" } else { c"mode=0755,size=1m" };
                check(libc::mount(
                    c"tmpfs".as_ptr(),
                    at.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    opts.as_ptr().cast(),
                ))?;
            }
            for d in &self.mkdirs {
                if libc::mkdir(d.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (b, fd) in self.binds.iter().zip(held) {
                // `/proc/self/fd/<fd>`, written out without allocating.
                let mut from = [0u8; 32];
                let head = b"/proc/self/fd/";
                from[..head.len()].copy_from_slice(head);
                let mut digits = [0u8; 4];
                let d = decimal(fd, &mut digits);
                from[head.len()..head.len() + d.len()].copy_from_slice(d);
                bind(CStr::from_bytes_until_nul(&from).unwrap_or(c"/"), &b.at, !b.writable)?;
                libc::close(fd);
            }
        }
        return Ok(());

        unsafe fn bind(from: &CStr, to: &CStr, read_only: bool) -> std::io::Result<()> {
            use nix::libc;
            // SAFETY: as in `enter`.
            unsafe {
                check(libc::mount(
                    from.as_ptr(),
                    to.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                if read_only {
                    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
                    check(libc::mount(std::ptr::null(), to.as_ptr(), std::ptr::null(), flags, std::ptr::null()))?;
                }
            }
            Ok(())
        }
    }

    /// The keeper: waits for the init, records how the worker ended, and ends the same way.
    pub(super) fn keep(&self, init: nix::libc::pid_t) -> ! {
        use nix::libc;
        // SAFETY: as in `enter`.
        unsafe {
            close_from(3);
            let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            // The host's SIGTERM reaches the worker through the process group; the keeper
            // stays until the worker has finished with it.
            for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
                libc::signal(s, libc::SIG_IGN);
            }
            let code = wait_for(init);
            let fd = libc::open(
                self.exit_file.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o644,
            );
            if fd >= 0 {
                let mut digits = [0u8; 4];
                let text = decimal(code, &mut digits);
                libc::write(fd, text.as_ptr().cast(), text.len());
                libc::close(fd);
            }
            // Ended by a signal that ends a process: the keeper ends by it too (never by a
            // stop signal, which would leave it stopped and the allocation held).
            let fatal = [
                libc::SIGHUP,
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGILL,
                libc::SIGABRT,
                libc::SIGBUS,
                libc::SIGFPE,
                libc::SIGKILL,
                libc::SIGSEGV,
                libc::SIGPIPE,
                libc::SIGALRM,
                libc::SIGTERM,
                libc::SIGUSR1,
                libc::SIGUSR2,
            ];
            if code > 128 && fatal.contains(&(code - 128)) {
                libc::signal(code - 128, libc::SIG_DFL);
                libc::kill(libc::getpid(), code - 128);
            }
            libc::_exit(code)
        }
    }
}

/// The init's loop: reaps every process orphaned to it; exits as `worker` does.
pub(super) fn reap_until(worker: nix::libc::pid_t) -> ! {
    use nix::libc;
    // SAFETY: system calls only.
    unsafe {
        close_from(3);
        loop {
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, 0);
            if pid == worker {
                libc::_exit(code_of(status));
            }
            if pid < 0 && *libc::__errno_location() == libc::ECHILD {
                libc::_exit(1);
            }
        }
    }
}

/// Waits for `pid`; its exit code (128 + the signal that killed it).
pub(super) fn wait_for(pid: nix::libc::pid_t) -> i32 {
    use nix::libc;
    loop {
        let mut status = 0;
        // SAFETY: a system call on a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return code_of(status);
        }
        // SAFETY: reading this thread's errno.
        if r < 0 && unsafe { *libc::__errno_location() } != libc::EINTR {
            return 1;
        }
    }
}

pub(super) fn code_of(status: i32) -> i32 {
    use nix::libc;
    if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) }
}

pub(super) fn decimal(n: i32, buf: &mut [u8; 4]) -> &[u8] {
    let n = n.clamp(0, 999) as u32;
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Closes every descriptor from `fd` up (the host's, inherited across the fork, and the pipe
/// through which the process that spawned the worker learns that it exec'd: held open here it
/// would wait for the keeper).
pub(super) fn close_from(fd: u32) {
    // SAFETY: a system call; nothing here uses the descriptors it closes.
    unsafe {
        if nix::libc::syscall(nix::libc::SYS_close_range, fd, u32::MAX, 0) != 0 {
            for f in fd..4096 {
                nix::libc::close(f as i32);
            }
        }
    }
}

/// Writes `what: error` to standard error (the worker's log), with system calls only.
pub(super) fn say(what: &CStr, e: std::io::Error) {
    use nix::libc;
    let code = e.raw_os_error().unwrap_or(0);
    let mut digits = [0u8; 4];
    // SAFETY: writes of buffers that outlive the calls.
    unsafe {
        libc::write(2, what.as_ptr().cast(), what.to_bytes().len());
        libc::write(2, c" (errno ".as_ptr().cast(), 8);
        let d = decimal(code, &mut digits);
        libc::write(2, d.as_ptr().cast(), d.len());
        libc::write(2, c")\n".as_ptr().cast(), 2);
    }
}
