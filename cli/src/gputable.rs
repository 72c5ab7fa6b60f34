//! GPU samples as a person reads them: a line a GPU a sample, or a table per allocation and
//! GPU (average and last).

use std::collections::BTreeMap;

use aic_schemas::{GpuReading, GpuSample};

/// One GPU of one sample as a line: `10:00:05 [alloc 0] gpu 0  util  87%  memory 20311 / 24564 MiB`.
pub fn line(s: &GpuSample, g: &GpuReading) -> String {
    format!(
        "{} [alloc {}] gpu {}  util {:>3.0}%  memory {}{}",
        s.at.format("%H:%M:%S"),
        s.alloc,
        g.gpu,
        g.util_pct,
        memory(g),
        stand_in(s),
    )
}

fn memory(g: &GpuReading) -> String {
    match g.mem_total_mib {
        Some(t) => format!("{} / {t} MiB", g.mem_used_mib),
        None => format!("{} MiB", g.mem_used_mib),
    }
}

fn stand_in(s: &GpuSample) -> &'static str {
    match s.source {
        aic_schemas::SampleSource::StandIn => "  (stand-in)",
        aic_schemas::SampleSource::NvidiaSmi => "",
    }
}

/// Every allocation's GPUs: the average utilization, and the last utilization and memory.
pub fn table(samples: &[GpuSample]) -> String {
    let mut by: BTreeMap<(u32, String), (f64, usize, &GpuReading)> = BTreeMap::new();
    for s in samples {
        for g in &s.gpus {
            let e = by.entry((s.alloc, g.gpu.clone())).or_insert((0.0, 0, g));
            e.0 += g.util_pct as f64;
            e.1 += 1;
            e.2 = g;
        }
    }
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return String::new() };
    let sources: std::collections::BTreeSet<&str> = samples.iter().map(|s| s.source.label()).collect();
    let mut out = format!(
        "GPU use, {} sample{} from {} to {} ({})\n  {:<6} {:<5} {:>9} {:>10}  {}\n",
        samples.len(),
        if samples.len() == 1 { "" } else { "s" },
        first.at.format("%H:%M:%S"),
        last.at.format("%H:%M:%S"),
        sources.into_iter().collect::<Vec<_>>().join("; "),
        "alloc",
        "gpu",
        "util avg",
        "util last",
        "memory last",
    );
    for ((alloc, gpu), (sum, n, g)) in &by {
        out.push_str(&format!(
            "  {:<6} {:<5} {:>8.0}% {:>9.0}%  {}\n",
            alloc,
            gpu,
            sum / *n as f64,
            g.util_pct,
            memory(g)
        ));
    }
    out
}
