//! Who asked this worker to stop. Only its scheduler may: the container runtime Nomad drives
//! (from outside the task's PID namespace), the embedded pool's host (outside the sandbox's
//! namespace) or the process that started it (the host without a sandbox, Nomad's executor).
//! The job's own processes run as the worker's uid and may signal it: a SIGTERM from one of
//! them is not a stop (it would end the job with nothing recorded, its deposit unsettled).

use std::sync::atomic::{AtomicI32, Ordering};

/// The sender of the last SIGTERM as the kernel gave it (`si_pid`: 0 for a sender outside
/// this PID namespace); -1 before any.
static TERM_FROM: AtomicI32 = AtomicI32::new(-1);

/// Records the sender of every SIGTERM from now on (beside tokio's own handler: both are
/// actions of signal-hook-registry, the registry tokio's signals use).
pub(crate) fn watch() -> std::io::Result<()> {
    // SAFETY: the action only stores an integer in an atomic (async-signal-safe), and reads
    // `si_pid` of a SIGTERM's siginfo, which the kernel fills for signals sent by kill(2).
    unsafe {
        signal_hook_registry::register_sigaction(nix::libc::SIGTERM, |info: &nix::libc::siginfo_t| {
            TERM_FROM.store(info.si_pid(), Ordering::SeqCst)
        })?;
    }
    Ok(())
}

/// The sender of the last SIGTERM (0: outside this PID namespace).
pub(crate) fn sender() -> i32 {
    TERM_FROM.load(Ordering::SeqCst)
}

/// Whether the last SIGTERM came from the scheduler's side (see the module's text).
pub(crate) fn by_scheduler() -> bool {
    let from = sender();
    from == 0 || from == nix::unistd::getppid().as_raw()
}
