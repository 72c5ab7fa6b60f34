//! This allocation as the scheduler started it (`aic_core::scheduler::launch`), and where
//! its folders and outputs are.

use std::path::{Path, PathBuf};

use aic_core::scheduler::launch::Launch;
use aic_core::{JobKey, Store, StoreConfig};
use anyhow::anyhow;

use crate::live::LiveLog;

/// Who writes the worker's status records.
pub(crate) const BY: &str = "worker";

pub(crate) struct Alloc {
    pub(crate) store: Store,
    pub(crate) job: JobKey,
    pub(crate) index: u32,
    pub(crate) count: u32,
    /// 0, then 1.. each time the job starts again after a lost allocation.
    pub(crate) attempt: u32,
    pub(crate) miner: String,
    /// Where the other allocations reach this one, and its assigned port.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) work: PathBuf,
    /// The gateway this worker reaches the bucket through, and its job's token: where its
    /// job's `aic exec` commands come from. `None` on a pool whose workers hold store access.
    pub(crate) gateway: Option<(String, String)>,
    /// Where the program's output and status moves go live (started on first use, inside
    /// the runtime); `None` without a gateway.
    pub(crate) live: std::sync::OnceLock<Option<LiveLog>>,
    /// The same for its GPU samples (`gpuuse.rs`).
    pub(crate) live_metrics: std::sync::OnceLock<Option<LiveLog>>,
    /// Its GPU sampler while it runs (`gpuuse.rs`).
    pub(crate) sampler: tokio::sync::Mutex<Option<crate::gpuuse::Sampler>>,
    /// A deployment's end as the scheduler set it (unix seconds): the same across restarts.
    pub(crate) serve_until: Option<i64>,
}

impl Alloc {
    /// The paid run this allocation belongs to (its attempt says).
    pub(crate) fn run(&self) -> u32 {
        aic_core::runs::run_of(self.attempt)
    }

    /// A status transition within this allocation's run: a worker of a run that ended never
    /// moves a resumed job's next run.
    pub(crate) fn transition(&self, to: aic_schemas::JobState) -> aic_core::status::Transition {
        aic_core::status::Transition::new(to, BY).run(self.run())
    }

    /// The live side of this allocation's log (`live.rs`), when it has a gateway.
    pub(crate) fn live(&self) -> Option<LiveLog> {
        self.live
            .get_or_init(|| self.gateway.as_ref().map(|(url, token)| LiveLog::start(url, token, self.index, "logs")))
            .clone()
    }

    /// The live side of its GPU samples.
    pub(crate) fn live_metrics(&self) -> Option<LiveLog> {
        self.live_metrics
            .get_or_init(|| self.gateway.as_ref().map(|(url, token)| LiveLog::start(url, token, self.index, "metrics")))
            .clone()
    }

    /// Stops sampling its GPUs and stores the last samples: before its result is recorded, so
    /// that a job that ended has them all.
    pub(crate) async fn stop_sampling(&self) {
        if let Some(s) = self.sampler.lock().await.take() {
            s.finish().await;
        }
    }

    /// Moves the job's status (`status::advance`) and tells its watchers.
    pub(crate) async fn advance(&self, t: aic_core::status::Transition) -> anyhow::Result<aic_core::status::Advanced> {
        let r = aic_core::status::advance(&self.store, &self.job, t).await?;
        if let Some(l) = self.live() {
            l.status();
        }
        Ok(r)
    }
}

pub(crate) fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| anyhow!("{name} is not set; aic-worker is started by the pool's scheduler"))
}

pub(crate) fn setup() -> anyhow::Result<Alloc> {
    // On a pool whose workers hold no store credentials: the gateway, with this job's token.
    let (store, gateway) = match (std::env::var("AIC_WORKER_GATEWAY"), std::env::var("AIC_WORKER_TOKEN")) {
        (Ok(url), Ok(token)) if !url.is_empty() => {
            let gw = aic_core::remote::Gateway::new(&url, Some(token.clone()));
            let store = aic_core::Store::paged(std::sync::Arc::new(aic_core::remote::GatewayStore::new(gw)), "gateway");
            (store, Some((url, token)))
        }
        // Store access of its own, and (the embedded pool) where `aic exec` commands come from.
        _ => {
            let exec = std::env::var("AIC_EXEC_GATEWAY").ok().filter(|u| !u.is_empty());
            (StoreConfig::parse(&env("AIC_STORE")?)?.open()?, exec.zip(std::env::var("AIC_WORKER_TOKEN").ok()))
        }
    };
    // What the scheduler told this allocation (`aic_core::scheduler::launch`).
    let l = Launch::from_env(|k| std::env::var(k).ok()).map_err(|e| anyhow!(e))?;
    Ok(Alloc {
        store,
        job: JobKey::new(l.owner, l.job),
        index: l.index,
        count: l.count,
        attempt: l.attempt,
        miner: l.miner.unwrap_or_else(hostname),
        host: l.host.unwrap_or_else(|| "127.0.0.1".into()),
        port: match l.port {
            Some(p) => p,
            None => std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port(),
        },
        work: l.work_dir,
        gateway,
        live: Default::default(),
        live_metrics: Default::default(),
        sampler: Default::default(),
        serve_until: l.serve_until,
    })
}

pub(crate) use aic_core::max_code_bytes;

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "miner".into())
}

/// Allocation 0 writes `output/`; others write `output/alloc-<i>/`, so no output is
/// overwritten by another allocation's.
pub(crate) fn output_prefix(a: &Alloc) -> String {
    if a.index == 0 { a.job.output_prefix() } else { format!("{}alloc-{}/", a.job.output_prefix(), a.index) }
}

/// A regular file of the job's folder, at most `max` bytes, never through a link nor a FIFO
/// (the job's program could have put either there).
pub(crate) fn read_jobs_file(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(format!("{} is not a file", path.display())));
    }
    let mut b = vec![];
    f.take(max).read_to_end(&mut b)?;
    Ok(b)
}

pub(crate) fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The GPUs this allocation holds, as `CUDA_VISIBLE_DEVICES` lists them: the scheduler's own
/// list (the local scheduler's slots), else what NVIDIA's Nomad device plugin reserved
/// (`NVIDIA_VISIBLE_DEVICES`: GPU UUIDs, which CUDA takes as they are; its `Reserve` sets no
/// `CUDA_VISIBLE_DEVICES`, and interpolating it in the job's env does not work since task env
/// is built before device env). `None` when nothing says: the program is then given no
/// `CUDA_VISIBLE_DEVICES` at all (an empty one would hide every GPU).
pub(crate) fn visible_gpus(get: impl Fn(&str) -> Option<String>) -> Option<String> {
    let listed = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    listed(get("CUDA_VISIBLE_DEVICES"))
        .or_else(|| listed(get("NVIDIA_VISIBLE_DEVICES")).filter(|v| !matches!(v.trim(), "all" | "none" | "void")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn the_gpus_come_from_the_scheduler_else_from_the_device_plugin() {
        assert_eq!(visible_gpus(env(&[("CUDA_VISIBLE_DEVICES", "0,1")])).as_deref(), Some("0,1"));
        let plugin = [("NVIDIA_VISIBLE_DEVICES", "GPU-1b2c,GPU-3d4e")];
        assert_eq!(visible_gpus(env(&plugin)).as_deref(), Some("GPU-1b2c,GPU-3d4e"));
        assert_eq!(visible_gpus(env(&[("CUDA_VISIBLE_DEVICES", ""), plugin[0]])).as_deref(), Some("GPU-1b2c,GPU-3d4e"));
        assert_eq!(visible_gpus(env(&[("NVIDIA_VISIBLE_DEVICES", "all")])), None);
        assert_eq!(visible_gpus(env(&[])), None);
    }
}
