//! How busy a job's GPUs are: `users/<addr>/jobs/<job>/metrics/<alloc>/<n>.jsonl`, one
//! [`GpuSample`] a line, written by the allocation's worker every few seconds (stored in
//! coarse chunks, relayed live as the log is).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a sample's figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SampleSource {
    /// The NVIDIA driver (`nvidia-smi --query-gpu`): the GPU's own utilization and memory.
    NvidiaSmi,
    /// A simulated miner (no GPU): the program's CPU use stands in for utilization (its share
    /// of the allocation's cores) and its resident memory for GPU memory. Never a GPU's figure.
    StandIn,
}

impl SampleSource {
    /// As a person reads it, beside the figures.
    pub fn label(self) -> &'static str {
        match self {
            SampleSource::NvidiaSmi => "nvidia-smi",
            SampleSource::StandIn => "stand-in: simulated miner, the program's CPU and memory",
        }
    }
}

/// One GPU's figures in a sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GpuReading {
    /// The GPU as the miner numbers it (`nvidia-smi`'s index; a simulated miner's slot).
    pub gpu: String,
    /// Percent of time one or more kernels ran, over the driver's last sample period (0–100);
    /// a stand-in's: the CPU share of the allocation's cores its processes took since the
    /// last sample.
    pub util_pct: f32,
    /// Memory in use, MiB.
    pub mem_used_mib: u64,
    /// The GPU's memory, MiB (none for a stand-in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_total_mib: Option<u64>,
}

/// What one allocation's GPUs did at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GpuSample {
    pub at: DateTime<Utc>,
    /// The allocation (a rank's miner) that sampled.
    pub alloc: u32,
    pub source: SampleSource,
    pub gpus: Vec<GpuReading>,
}
