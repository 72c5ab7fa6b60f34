//! What the worker takes away before anything of the job runs: the variables that reach the
//! bucket (out of its environment, so no program inherits them), the secrets Nomad rendered
//! for it (deleted once read), and root (it becomes the job's own uid, in a Nomad task and in
//! the local scheduler's sandbox, after starting the miner's environment keeper: `envcache`).

/// Before the runtime starts (one thread: the environment may change): all three.
pub(crate) fn before_the_job() {
    for k in STORE_ACCESS {
        // SAFETY: no other thread runs yet (the runtime starts after), so nothing reads the
        // environment while it changes.
        unsafe { std::env::remove_var(k) };
    }
    forget_rendered_secrets(std::env::var_os("NOMAD_SECRETS_DIR").map(std::path::PathBuf::from).as_deref());
    let dropping =
        nix::unistd::geteuid().is_root() && std::env::var_os(aic_core::scheduler::job_user::JOB_UID).is_some();
    crate::envcache::start(dropping);
    become_job_user();
}

/// The variables that give access to the bucket (and where the worker writes its exit code):
/// read once into the worker, then taken out of its environment, so that no program it starts
/// inherits them.
pub(crate) const STORE_ACCESS: &[&str] = &[
    aic_core::scheduler::local::EXIT_FILE,
    aic_core::scheduler::local::START_GATE,
    "AIC_WORKER_TOKEN",
    "AIC_STORE",
    "AIC_S3_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
];

/// Files Nomad renders into the task's secrets folder for the worker (`store.env`: the
/// bucket's keys, on a pool without a worker gateway; `worker.env`: the job's token, on a pool
/// with one; `nomad/spec.rs`): read into its
/// environment when the task started (`Envvars`), then deleted here, before any program
/// runs, so the program (same task, same user) cannot read them. Safe: the worker already
/// holds what they said; Nomad renders a file again only when the variable changes, and its
/// `ChangeMode` restart then starts a new worker, which reads and deletes it again.
const RENDERED_SECRETS: &[&str] = &["store.env", "worker.env"];

fn forget_rendered_secrets(dir: Option<&std::path::Path>) {
    let Some(dir) = dir else { return };
    for f in RENDERED_SECRETS {
        match std::fs::remove_file(dir.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                eprintln!("aic-worker: cannot delete {}: {e}; the job's program could read it", dir.join(f).display());
                crate::exit(2);
            }
        }
    }
}

/// In a Nomad task (started as the container's root) and in the local scheduler's sandbox
/// (started as root in the allocation's namespaces) the worker becomes its job's own user
/// (`AIC_JOB_UID`, set by the job's spec or the sandbox) before anything of the job runs: the
/// program, its sshd and uWSGI then run as a uid the clients' egress rules refuse the node's own
/// services, the metadata address and the pool's control plane (`infra/nomad/egress.nft`), and
/// that may not write the miner's environment cache. Elsewhere (not root) nothing changes.
fn become_job_user() {
    let Some(given) = std::env::var_os(aic_core::scheduler::job_user::JOB_UID) else { return };
    let Some(uid) = given.to_str().and_then(|v| v.parse::<u32>().ok()).filter(|u| *u != 0) else {
        eprintln!("aic-worker: AIC_JOB_UID is {given:?}, not a uid; nothing of the job was run");
        crate::exit(2);
    };
    // The task's own `/etc/passwd` gains the job's user only in a Nomad task (a container's
    // or the exec driver's chroot's copy), never a machine's own.
    let home = std::env::var_os(aic_core::scheduler::launch::WORK_DIR)
        .filter(|_| std::env::var_os("NOMAD_ALLOC_ID").is_some())
        .map(std::path::PathBuf::from);
    if let Err(e) = aic_core::scheduler::job_user::become_job_user(uid, home.as_deref()) {
        eprintln!("aic-worker: cannot become the job's user (uid {uid}): {e}; nothing of the job was run");
        crate::exit(2);
    }
    // Started in `/` (the sandbox never starts anything as root in a folder the job wrote:
    // a relative `LD_LIBRARY_PATH` or `PATH` entry would load the job's files as root); its
    // work folder once it is the job's user.
    if let Some(work) = std::env::var_os(aic_core::scheduler::launch::WORK_DIR) {
        let _ = std::env::set_current_dir(work);
    }
}

#[cfg(test)]
mod tests {
    /// The bucket's keys Nomad rendered into the task's secrets folder are gone before any
    /// program runs; other files there stay.
    #[test]
    fn the_rendered_store_keys_are_deleted_once_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("store.env"), "AWS_ACCESS_KEY_ID=pool\nAWS_SECRET_ACCESS_KEY=pools-own\n")
            .unwrap();
        std::fs::write(dir.path().join("other"), "kept").unwrap();
        super::forget_rendered_secrets(Some(dir.path()));
        assert!(!dir.path().join("store.env").exists(), "the program could read the bucket's keys");
        assert!(dir.path().join("other").exists());
        super::forget_rendered_secrets(Some(dir.path())); // nothing to delete: no error
        super::forget_rendered_secrets(None);
    }
}
