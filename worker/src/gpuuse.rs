//! How busy this allocation's GPUs are: a sample every [`EVERY`] (`AIC_METRICS_SECONDS`),
//! shipped as the log is (`logs::Shipper` with [`Stream::Metrics`]: live to watchers, stored
//! in `metrics/<alloc>/<n>.jsonl` chunks).
//!
//! On a miner with NVIDIA's driver the figures are the GPUs' own, from `nvidia-smi
//! --query-gpu=index,uuid,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits`
//! (the fields and the CSV options as `nvidia-smi --help-query-gpu` lists them; utilization is
//! "percent of time over the past sample period during which one or more kernels was executing
//! on the GPU"). A simulated miner has no GPU: its samples say so (`SampleSource::StandIn`)
//! and carry the program's CPU use as its share of the allocation's cores, and its resident
//! memory, split evenly over the allocation's GPU slots.
//!
//! The worker samples, not the program: what it ships is the pool's reading, and the
//! program's own output cannot pass for it.

use std::collections::HashMap;
use std::time::Duration;

use aic_schemas::{GpuReading, GpuSample, SampleSource};
use tokio::sync::{mpsc, oneshot};

use crate::logs::Shipper;

/// Least time between samples by default.
pub const EVERY: Duration = Duration::from_secs(5);

/// The sampler of a running allocation; [`Sampler::finish`] stores what it holds.
pub struct Sampler {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Samples allocation `alloc`'s GPUs (`gpus`: as `CUDA_VISIBLE_DEVICES` lists them) into
    /// `shipper` (one of `Stream::Metrics`).
    pub fn start(shipper: Shipper, alloc: u32, gpus: Option<String>) -> Sampler {
        let every = std::env::var("AIC_METRICS_SECONDS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map_or(EVERY, Duration::from_secs_f64);
        let (tx, rx) = mpsc::channel::<String>(64);
        let (stop, mut stopped) = oneshot::channel();
        let cores = crate::launcher::cpus();
        let task = tokio::spawn(async move {
            let ship = tokio::spawn(shipper.run(rx));
            let mut probe = Probe::new(gpus, cores);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is at once: it only sets where the CPU counts start.
            tick.tick().await;
            probe.sample(alloc).await;
            loop {
                // The last sample is taken as it stops: a program shorter than the interval
                // has one too.
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = &mut stopped => true,
                };
                if let Some(s) = probe.sample(alloc).await
                    && let Ok(line) = serde_json::to_string(&s)
                    && tx.send(line).await.is_err()
                {
                    break;
                }
                if last {
                    break;
                }
            }
            drop(tx);
            let _ = ship.await;
        });
        Sampler { stop: Some(stop), task }
    }

    /// Stops sampling and waits (at most 10 s) until the last chunk is stored.
    pub async fn finish(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

struct Probe {
    /// The allocation's GPUs as `CUDA_VISIBLE_DEVICES` lists them (none: every GPU the driver has).
    gpus: Option<Vec<String>>,
    cores: usize,
    /// `nvidia-smi` answered before (or never tried): tried first.
    smi: bool,
    /// CPU ticks of the worker's descendants at the last sample, and when.
    last: Option<(u64, std::time::Instant)>,
}

impl Probe {
    fn new(gpus: Option<String>, cores: usize) -> Probe {
        let gpus = gpus.map(|g| g.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
        Probe { gpus, cores: cores.max(1), smi: true, last: None }
    }

    async fn sample(&mut self, alloc: u32) -> Option<GpuSample> {
        if self.smi {
            match nvidia_smi().await {
                // A miner with the driver: its GPUs' figures, or no sample this time (the
                // driver busy, or none of the allocation's GPUs listed); never the stand-in.
                Smi::Answered(out) => {
                    let gpus = readings(&out, self.gpus.as_deref());
                    return (!gpus.is_empty()).then(|| GpuSample {
                        at: chrono::Utc::now(),
                        alloc,
                        source: SampleSource::NvidiaSmi,
                        gpus,
                    });
                }
                Smi::Failed => return None,
                Smi::Absent => self.smi = false,
            }
        }
        // `/proc` is read off the runtime's threads.
        let mut me = std::mem::replace(self, Probe::new(None, 1));
        let (s, back) = tokio::task::spawn_blocking(move || (me.stand_in(alloc), me)).await.ok()?;
        *self = back;
        s
    }

    /// The program's CPU share and resident memory (every process under this worker).
    fn stand_in(&mut self, alloc: u32) -> Option<GpuSample> {
        let (ticks, rss) = descendants(std::process::id());
        let now = std::time::Instant::now();
        let last = self.last.replace((ticks, now));
        let (before, then) = last?;
        let secs = now.duration_since(then).as_secs_f64();
        let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
        let busy = ticks.saturating_sub(before) as f64 / per_sec;
        let util = if secs > 0.0 { (100.0 * busy / (secs * self.cores as f64)).min(100.0) } else { 0.0 };
        let slots = self.gpus.clone().unwrap_or_else(|| vec!["0".into()]);
        let mem = rss / (1 << 20) / slots.len().max(1) as u64;
        let gpus = slots
            .into_iter()
            .map(|gpu| GpuReading { gpu, util_pct: util as f32, mem_used_mib: mem, mem_total_mib: None })
            .collect();
        Some(GpuSample { at: chrono::Utc::now(), alloc, source: SampleSource::StandIn, gpus })
    }
}

/// What `nvidia-smi` said.
enum Smi {
    Answered(String),
    /// It is there but failed, or took over 5 s, this time.
    Failed,
    /// Not installed: a miner without NVIDIA's driver.
    Absent,
}

/// `nvidia-smi`'s CSV: the operator's (`AIC_NVIDIA_SMI`, an absolute path: where jobs run in
/// images of their own, the image's `PATH` is the user's), else the one on the worker's `PATH`.
async fn nvidia_smi() -> Smi {
    let bin = std::env::var("AIC_NVIDIA_SMI").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "nvidia-smi".into());
    let out = tokio::process::Command::new(bin)
        .args(["--query-gpu=index,uuid,utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(5), out).await {
        Ok(Ok(o)) if o.status.success() => Smi::Answered(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Smi::Absent,
        _ => Smi::Failed,
    }
}

/// The rows of `nvidia-smi`'s CSV for the GPUs `visible` names (by index or UUID; all when
/// `None`). A field the driver cannot read (`[N/A]`, `[Not Supported]`) reads as 0.
fn readings(csv: &str, visible: Option<&[String]>) -> Vec<GpuReading> {
    let mut out = Vec::new();
    for line in csv.lines() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [index, uuid, util, used, total] = f[..] else { continue };
        if let Some(v) = visible
            && !v.iter().any(|g| g == index || g == uuid)
        {
            continue;
        }
        let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
        out.push(GpuReading {
            gpu: index.to_string(),
            util_pct: num(util) as f32,
            mem_used_mib: num(used) as u64,
            mem_total_mib: Some(num(total) as u64).filter(|t| *t > 0),
        });
    }
    out
}

/// CPU ticks (user and system, with reaped children's) and resident bytes of every process
/// under `root` (not `root` itself, but the ticks of its children it reaped: the program's,
/// once it ended), from `/proc`.
fn descendants(root: u32) -> (u64, u64) {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut figures: HashMap<u32, (u64, u64)> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return (0, 0) };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the command's closing parenthesis: state, ppid, … (proc(5)).
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // Fields 4 (ppid), 14–17 (utime, stime, cutime, cstime), 24 (rss pages); `f[0]` is field 3.
        parent.insert(pid, n(1) as u32);
        figures.insert(pid, (n(11) + n(12) + n(13) + n(14), n(21) * page));
    }
    let under = |mut p: u32| {
        for _ in 0..64 {
            match parent.get(&p) {
                Some(&pp) if pp == root => return true,
                Some(&pp) if pp > 1 => p = pp,
                _ => return false,
            }
        }
        false
    };
    let reaped = std::fs::read_to_string(format!("/proc/{root}/stat")).ok().and_then(|stat| {
        let f: Vec<u64> = stat.rsplit_once(')')?.1.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
        Some(f.get(13)? + f.get(14)?)
    });
    figures
        .iter()
        .filter(|(pid, _)| under(**pid))
        .fold((reaped.unwrap_or(0), 0), |(t, r), (_, (dt, dr))| (t + dt, r + dr))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used,memory.total
    /// --format=csv,noheader,nounits` prints on a two-GPU node.
    const SMI: &str = "0, GPU-1b2c3d4e-0000-1111-2222-333344445555, 87, 20311, 24564\n\
                       1, GPU-9f8e7d6c-0000-1111-2222-333344445555, [N/A], 3, 24564\n";

    #[test]
    fn the_allocations_gpus_are_read_by_index_or_uuid() {
        let all = readings(SMI, None);
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[0],
            GpuReading { gpu: "0".into(), util_pct: 87.0, mem_used_mib: 20311, mem_total_mib: Some(24564) }
        );
        assert_eq!(all[1].util_pct, 0.0, "[N/A] reads as 0");
        let by_uuid = readings(SMI, Some(&["GPU-9f8e7d6c-0000-1111-2222-333344445555".to_string()]));
        assert_eq!(by_uuid.iter().map(|g| g.gpu.as_str()).collect::<Vec<_>>(), ["1"]);
        assert!(readings(SMI, Some(&["2".to_string()])).is_empty());
    }

    #[test]
    fn a_busy_child_shows_in_the_stand_in() {
        let mut child = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        let mut p = Probe::new(Some("0,1".into()), 1);
        assert!(p.stand_in(0).is_none(), "the first call only starts the count");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let s = loop {
            let s = p.stand_in(0).unwrap();
            if s.gpus[0].util_pct > 20.0 || std::time::Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(s.source, SampleSource::StandIn);
        assert_eq!(s.gpus.len(), 2);
        assert!(s.gpus[0].util_pct > 20.0, "a spinning child reads busy: {s:?}");
        assert!(s.gpus.iter().all(|g| g.mem_total_mib.is_none()));
    }
}
