//! What GPUs a miner has: their model and memory. On Nomad from the NVIDIA device plugin's
//! fingerprint (`nomad/api.rs`); on the local scheduler from the pool's configuration
//! (`AIC_POOL_GPU_TYPES`, `aic dev up --gpu-type`), else from `nvidia-smi` where there is one.

use std::str::FromStr;

/// One miner's GPUs: their model, memory each (MiB) and, where given, how many.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuType {
    pub model: String,
    pub memory_mb: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

impl FromStr for GpuType {
    type Err = String;

    /// `MODEL:MEM_GB[:COUNT]`, as `aic dev up --gpu-type` takes it (`A10:24:2`: two A10s of
    /// 24 GB each).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("--gpu-type {s:?}: {why}; write MODEL:MEM_GB[:COUNT], e.g. A10:24:2");
        let mut parts = s.split(':');
        let model = parts.next().unwrap_or("").trim();
        if model.is_empty() || !model.chars().all(|c| c.is_ascii_alphanumeric() || "-_. ".contains(c)) {
            return Err(bad("the model is letters, digits, '-', '_', '.' or spaces"));
        }
        let memory_gb: f64 = parts
            .next()
            .and_then(|m| m.trim().parse().ok())
            .filter(|m: &f64| m.is_finite() && *m > 0.0 && *m <= 4096.0)
            .ok_or_else(|| bad("the memory is a number of GB"))?;
        let count = match parts.next() {
            None => None,
            Some(c) => Some(
                c.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|c| (1..=64).contains(c))
                    .ok_or_else(|| bad("the count is 1 to 64"))?,
            ),
        };
        if parts.next().is_some() {
            return Err(bad("too many ':'"));
        }
        Ok(GpuType { model: model.to_string(), memory_mb: (memory_gb * 1024.0).round() as u64, count })
    }
}

/// The miners' GPUs from `AIC_POOL_GPU_TYPES` (one `MODEL:MEM_GB[:COUNT]` per miner, comma
/// separated); none when it is unset.
pub fn from_env() -> Result<Vec<GpuType>, String> {
    match std::env::var("AIC_POOL_GPU_TYPES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|t| t.trim().parse()).collect(),
        _ => Ok(Vec::new()),
    }
}

/// This machine's GPUs as `nvidia-smi` reports them (the first model, how many of it), if it
/// has any.
pub fn from_nvidia_smi() -> Option<GpuType> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    out.status.success().then(|| parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout))).flatten()
}

/// `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`: a line per GPU,
/// `NAME, MiB`. The first GPU's model and memory, and how many GPUs are of that model.
pub fn parse_nvidia_smi(text: &str) -> Option<GpuType> {
    let gpus: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let (name, mem) = l.rsplit_once(',')?;
            Some((name.trim().to_string(), mem.trim().parse().ok()?))
        })
        .collect();
    let (model, memory_mb) = gpus.first()?.clone();
    let count = gpus.iter().filter(|(m, _)| *m == model).count() as u32;
    Some(GpuType { model, memory_mb, count: Some(count) })
}

/// `memory_mb` as people read it: `24 GB`, `7.5 GB`.
pub fn memory_text(memory_mb: u64) -> String {
    let gb = memory_mb as f64 / 1024.0;
    if (gb - gb.round()).abs() < 0.05 { format!("{} GB", gb.round()) } else { format!("{gb:.1} GB") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_type_reads_model_memory_and_count_or_says_how_to_write_it() {
        assert_eq!(
            "A10:24:2".parse::<GpuType>(),
            Ok(GpuType { model: "A10".into(), memory_mb: 24 * 1024, count: Some(2) })
        );
        assert_eq!("RTX 3060:12".parse::<GpuType>().unwrap().count, None);
        assert_eq!("T4:7.5".parse::<GpuType>().unwrap().memory_mb, 7680);
        for bad in ["", ":24", "A10", "A10:x", "A10:0", "A10:24:0", "A10:24:2:1", "A10;rm:24"] {
            let e = bad.parse::<GpuType>().unwrap_err();
            assert!(e.contains("MODEL:MEM_GB[:COUNT]"), "{bad}: {e}");
        }
        assert_eq!(memory_text(24 * 1024), "24 GB");
        assert_eq!(memory_text(7680), "7.5 GB");
    }

    #[test]
    fn nvidia_smis_csv_gives_the_first_model_and_its_count() {
        let t = "NVIDIA A100-SXM4-80GB, 81920\nNVIDIA A100-SXM4-80GB, 81920\nTesla T4, 15360\n";
        assert_eq!(
            parse_nvidia_smi(t),
            Some(GpuType { model: "NVIDIA A100-SXM4-80GB".into(), memory_mb: 81920, count: Some(2) })
        );
        assert_eq!(parse_nvidia_smi("No devices were found\n"), None);
    }
}
