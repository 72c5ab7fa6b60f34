//! Launchers: how the user's program is started, one file each.
//!
//! - `command`: the entrypoint in every allocation, on its own.
//! - `mpi`, `horovod`: one launch from the leading allocation (index 0) over SSH into every
//!   allocation (`ssh` runs an sshd in each), one process per GPU slot.
//! - `torchrun`: a torchrun in every allocation, joined at the leader's c10d rendezvous.
//!
//! The builders here are pure: they take what the rendezvous found and return the command,
//! so the exact command lines are tested without the launchers installed.

pub mod command;
pub mod horovod;
pub mod mpi;
pub mod ssh;
pub mod torchrun;

use std::collections::BTreeMap;
use std::path::PathBuf;

use aic_schemas::JobRequest;

/// What every launcher knows about the allocation it starts.
pub struct LaunchCtx<'a> {
    pub request: &'a JobRequest,
    pub code_dir: PathBuf,
    /// Variables the pool sets for the program (AIC_*, CUDA_VISIBLE_DEVICES).
    pub env: BTreeMap<String, String>,
}

/// One allocation as the others see it (`rendezvous/<index>.json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    pub alloc: u32,
    pub miner: String,
    pub host: String,
    /// Its sshd (mpi, horovod) or the c10d store (torchrun, leader only).
    pub port: u16,
    pub slots: u32,
    /// The leader's public key, which every other allocation's sshd accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubkey: Option<String>,
    /// Its sshd's host key (public): the leader's ssh accepts that sshd only, so whoever else
    /// answers at its address and port (a program of another job on the same miner that took
    /// the port first) gets no rank's commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostkey: Option<String>,
    /// torchrun's rendezvous id, the leader's secret (128 random bits): the c10d store
    /// anyone can connect to keeps every key of the rendezvous under it
    /// (`torch.rendezvous.<id>…`) and lists none, so a program that connects without it
    /// (another job's, guessing the job id) neither joins the job nor reads or changes a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdzv_id: Option<String>,
}

/// The interpreter for an entrypoint: `[$AIC_PYTHON|python3, file]` for `.py`, `[bash,
/// file]` for `.sh`, `[./file]` otherwise.
pub fn program(entry: &str) -> Vec<String> {
    if entry.ends_with(".py") {
        vec![std::env::var("AIC_PYTHON").unwrap_or_else(|_| "python3".into()), entry.into()]
    } else if entry.ends_with(".sh") {
        vec!["bash".into(), entry.into()]
    } else {
        vec![format!("./{entry}")]
    }
}

/// Runs a rank in its own allocation's folders: `cd $AIC_CODE_DIR`, one GPU of the
/// allocation's slots per local rank, `AIC_RANK` set. Argument 0 of `sh -c`; the program
/// follows.
pub const RANK_SHIM: &str = r#"cd "$AIC_CODE_DIR" || { echo "aic: no code folder on $(hostname)" >&2; exit 97; }
lr="${OMPI_COMM_WORLD_LOCAL_RANK:-${HOROVOD_LOCAL_RANK:-}}"
if [ -n "$lr" ] && [ -n "$AIC_GPUS" ]; then
  CUDA_VISIBLE_DEVICES=$(printf %s "$AIC_GPUS" | cut -d, -f$((lr + 1))); export CUDA_VISIBLE_DEVICES
fi
AIC_RANK="${OMPI_COMM_WORLD_RANK:-${HOROVOD_RANK:-0}}"; export AIC_RANK
if [ -n "${AIC_SHM_DIR:-}" ]; then OMPI_MCA_btl_sm_backing_directory="$AIC_SHM_DIR"; export OMPI_MCA_btl_sm_backing_directory; fi
exec "$@""#;

/// An allocation's own folder for shared-memory files, removed when dropped.
///
/// Open MPI's shared-memory transport names its segment
/// `<backing dir>/sm_segment.<hostname>.<uid>.<jobid>.<local rank>`. Two allocations of one
/// job on one host (the simulated miners; two allocations Nomad placed on one node) run a
/// daemon each that numbers its local ranks from 0 under the same host name and job id, so
/// with the default `/dev/shm` their ranks mapped each other's segments and crashed inside
/// `MPI_Allreduce` (SIGSEGV in `mca_btl_sm_poll_handle_frag`). The rank shim points
/// `btl_sm_backing_directory` at this folder (`AIC_SHM_DIR`) in every rank, after mpirun has
/// forwarded its own environment, so each allocation's ranks share memory among themselves only.
pub struct ShmDir(std::path::PathBuf);

impl ShmDir {
    /// `/dev/shm/aic-<job>-<attempt>-<index>` (memory-backed), else `<work>/shm`.
    pub fn create(job: &str, attempt: u32, index: u32, work: &std::path::Path) -> std::io::Result<ShmDir> {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() { shm.join(format!("aic-{job}-{attempt}-{index}")) } else { work.join("shm") };
        std::fs::create_dir_all(&dir)?;
        Ok(ShmDir(dir))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The cores this allocation may use: `AIC_CPUS` when the scheduler sets it (the simulated
/// miners share one machine), else what the OS grants this process (cgroup quota, affinity).
pub fn cpus() -> usize {
    std::env::var("AIC_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Threads per process when `procs` processes share `cpus` cores: each gets its share, at
/// least one (torchrun's rule of one thread per process, generalised), so BLAS and OpenMP
/// pools of neighbouring ranks do not fight over the same cores.
pub fn threads_per_process(cpus: usize, procs: u32) -> usize {
    (cpus / procs.max(1) as usize).max(1)
}

/// How many of the job's processes run in one allocation.
pub fn procs_per_alloc(req: &JobRequest) -> u32 {
    match req.launcher {
        aic_schemas::Launcher::Command => 1,
        _ => req.gpus_per_miner.max(1),
    }
}

/// Checks that `bin` can be run here; the error is the job's failure reason.
pub fn require(bin: &str, miner: &str, install: &str) -> Result<(), String> {
    let found = std::env::split_paths(&path()).any(|d| d.join(bin).is_file());
    if found {
        return Ok(());
    }
    Err(missing(bin, miner, install, image().as_deref()))
}

/// The `bin/` folder of the project's own environment (`pyenv`), once prepared: its
/// launchers (a `horovodrun` or `torchrun` the requirements installed) come first on the
/// PATH of the program and the launchers.
static ENV_BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Puts the environment's `bin/` first on [`path`] (once; nothing without one).
pub fn use_env_bin(dir: &std::path::Path) {
    let bin = dir.join("bin");
    if bin.is_dir() {
        let _ = ENV_BIN.set(bin);
    }
}

/// The PATH the program and the launchers run with: the worker's, after the environment's
/// `bin/` when it has one.
pub fn path() -> String {
    let own = std::env::var("PATH").unwrap_or_default();
    match ENV_BIN.get() {
        Some(bin) => format!("{}:{own}", bin.display()),
        None => own,
    }
}

/// The user's own image the job runs in (`--image`), if it does.
pub fn image() -> Option<String> {
    std::env::var("AIC_IMAGE").ok().filter(|i| !i.is_empty())
}

/// What to say when `what` is not here: in a user's own image it is the image that lacks it
/// (and the image's owner who adds it), on a miner of the pool its operator.
pub fn missing(what: &str, miner: &str, install: &str, image: Option<&str>) -> String {
    match image {
        Some(image) => format!("the image {image} has no {what}; add it to the image (this launcher needs it)"),
        None => format!("{what} is not installed on {miner}; {install}"),
    }
}

/// Whether the entrypoints' Python can import `module`.
pub async fn python_has(dir: &std::path::Path, module: &str) -> bool {
    let python = std::env::var("AIC_PYTHON").unwrap_or_else(|_| "python3".into());
    tokio::process::Command::new(python)
        .args(["-c", &format!("import {module}")])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_missing_is_the_images_in_a_users_image_and_the_pools_on_its_miners() {
        let install = "install OpenSSH's server on the miners (apt-get install openssh-server)";
        assert_eq!(
            missing("sshd (/usr/sbin/sshd)", "miner-1", install, Some("ghcr.io/me/t:1")),
            "the image ghcr.io/me/t:1 has no sshd (/usr/sbin/sshd); add it to the image (this launcher needs it)"
        );
        assert_eq!(
            missing("mpirun", "miner-1", "install Open MPI", None),
            "mpirun is not installed on miner-1; install Open MPI"
        );
    }

    #[test]
    fn thread_pools_split_the_cores_between_processes() {
        assert_eq!(threads_per_process(16, 4), 4);
        assert_eq!(threads_per_process(16, 3), 5);
        assert_eq!(threads_per_process(1, 1), 1);
        assert_eq!(threads_per_process(2, 3), 1);
        assert_eq!(threads_per_process(8, 0), 8);
    }
}
