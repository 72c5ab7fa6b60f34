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

/// A model name's words, lower case: `NVIDIA A100-SXM4-80GB` is `nvidia a100 sxm4 80gb`.
fn words(model: &str) -> Vec<String> {
    model.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_ascii_lowercase).collect()
}

/// Whether the GPU model `model` (as a miner reports it) is the one `asked` names: `asked`'s
/// words appear among `model`'s in the same order, case aside. `A100` is
/// `NVIDIA A100-SXM4-80GB` and `A100 80GB` is too; `A10` is not `A100`; `T4` is `Tesla T4`.
pub fn model_matches(asked: &str, model: &str) -> bool {
    let have = words(model);
    let mut at = have.iter();
    let want = words(asked);
    !want.is_empty() && want.iter().all(|w| at.any(|h| h == w))
}

/// A regular expression (Go's RE2 syntax, as Nomad's `regexp` constraint operand compiles it)
/// that matches the model names [`model_matches`] does for any of `asked`.
pub fn models_regex(asked: &[String]) -> String {
    let sep = "[^a-z0-9]";
    let one = |a: &String| words(a).join(&format!("({sep}|{sep}.*{sep})"));
    let alts: Vec<String> = asked.iter().map(one).filter(|a| !a.is_empty()).collect();
    format!("(?i)(^|{sep})({})($|{sep})", alts.join("|"))
}

/// Drivers report a GPU's memory less what they reserve, under what it is sold as: an A10
/// "24 GB" reports 22.5 GiB (23028 MiB), a T4 "16 GB" 15 GiB. A request for N GB is met by
/// a GPU reporting at least this share of N GiB.
const MEMORY_SOLD_SHARE: f64 = 0.93;

/// The least memory (MiB, as reported) a GPU must have to count as `gb` GB.
pub fn min_memory_mb(gb: u32) -> u64 {
    (gb as f64 * 1024.0 * MEMORY_SOLD_SHARE).floor() as u64
}

/// What a request asks of its GPUs: one of these models (in order of preference; none: any),
/// with at least this much memory each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuWants {
    pub models: Vec<String>,
    pub min_memory_gb: Option<u32>,
}

impl GpuWants {
    pub fn of(r: &aic_schemas::JobRequest) -> Self {
        GpuWants { models: r.gpu_types.clone(), min_memory_gb: r.min_gpu_memory_gb }
    }

    /// Whether it asks nothing of the GPUs' model and memory.
    pub fn any(&self) -> bool {
        self.models.is_empty() && self.min_memory_gb.is_none()
    }

    /// Where a miner of `model` with `memory_mb` per GPU stands in the request's preference
    /// (0 first); `None`: it does not meet the request. Unknown model or memory meets only a
    /// request that asks nothing of them.
    pub fn rank(&self, model: Option<&str>, memory_mb: Option<u64>) -> Option<usize> {
        if let Some(gb) = self.min_memory_gb
            && memory_mb.is_none_or(|m| m < min_memory_mb(gb))
        {
            return None;
        }
        if self.models.is_empty() {
            return Some(0);
        }
        let model = model?;
        self.models.iter().position(|a| model_matches(a, model))
    }

    pub fn matches(&self, model: Option<&str>, memory_mb: Option<u64>) -> bool {
        self.rank(model, memory_mb).is_some()
    }

    /// The request's ask as people read it: `GPUs of model A100 or A10 with 20 GB or more`.
    pub fn describe(&self) -> String {
        let mut s = String::from("GPUs");
        if !self.models.is_empty() {
            s.push_str(&format!(" of model {}", self.models.join(" or ")));
        }
        if let Some(gb) = self.min_memory_gb {
            s.push_str(&format!(" with {gb} GB or more"));
        }
        s
    }
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
    fn a_model_is_asked_by_its_words_in_order_and_memory_by_what_it_is_sold_as() {
        assert!(model_matches("A100", "NVIDIA A100-SXM4-80GB"));
        assert!(model_matches("a100 80gb", "NVIDIA A100-SXM4-80GB"));
        assert!(model_matches("T4", "Tesla T4"));
        assert!(model_matches("RTX 4090", "NVIDIA GeForce RTX 4090"));
        assert!(!model_matches("A10", "NVIDIA A100-SXM4-80GB"));
        assert!(!model_matches("80GB A100", "NVIDIA A100-SXM4-80GB"), "in order");
        assert!(!model_matches("-", "A100"));
        let wants = GpuWants { models: vec!["H100".into(), "A100".into()], min_memory_gb: Some(24) };
        assert_eq!(wants.rank(Some("NVIDIA A100-SXM4-80GB"), Some(81920)), Some(1));
        assert_eq!(wants.rank(Some("NVIDIA H100 80GB HBM3"), Some(81559)), Some(0));
        assert_eq!(wants.rank(Some("A100"), Some(16 * 1024)), None, "too little memory");
        assert_eq!(wants.rank(None, Some(81920)), None, "unknown model");
        // An A10 sold as 24 GB reports 23028 MiB; a T4 sold as 16 GB, 15360 MiB.
        let mem = |gb| GpuWants { models: vec![], min_memory_gb: Some(gb) };
        assert!(mem(24).matches(Some("NVIDIA A10"), Some(23028)));
        assert!(mem(16).matches(Some("Tesla T4"), Some(15360)));
        assert!(!mem(20).matches(Some("Tesla T4"), Some(15360)));
        assert!(!mem(1).matches(Some("x"), None));
        assert!(GpuWants::default().matches(None, None));
        assert_eq!(wants.describe(), "GPUs of model H100 or A100 with 24 GB or more");
        // Nomad's `regexp` operand matches what `model_matches` does.
        let re = regex_lite::Regex::new(&models_regex(&["a100 80gb".into(), "T4".into()])).unwrap();
        for (model, yes) in [
            ("NVIDIA A100-SXM4-80GB", true),
            ("A100 80GB", true),
            ("Tesla T4", true),
            ("NVIDIA A100-SXM4-40GB", false),
            ("Tesla T40", false),
            ("A10", false),
        ] {
            assert_eq!(re.is_match(model), yes, "{model}");
            assert_eq!(model_matches("a100 80gb", model) || model_matches("T4", model), yes, "{model}");
        }
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
