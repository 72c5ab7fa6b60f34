//! What every ready node has free for a rank: its GPUs, memory and disk less what every
//! namespace's allocations hold now.

use serde_json::json;

use super::{NomadScheduler, api};
use crate::scheduler::ScheduleError;
use crate::scheduler::gpus::GpuWants;

/// A node and what allocations hold of it now (every namespace's).
pub(super) struct Room {
    pub node: api::Node,
    pub used_gpus: u32,
    /// Of those, how many of each device group (by model).
    pub used_by_model: std::collections::HashMap<String, u32>,
    pub used_memory_mb: u64,
    pub used_disk_mb: u64,
}

impl Room {
    pub fn free_gpus(&self) -> u32 {
        self.node.gpus.saturating_sub(self.used_gpus)
    }

    /// Whether one more allocation of `gpus` (of what `wants` allows, from one device group),
    /// `memory_mb` and `disk_mb` fits here (memory or disk Nomad did not report: not counted
    /// against).
    pub fn fits(&self, gpus: u32, wants: &GpuWants, memory_mb: u64, disk_mb: u64) -> bool {
        let left = |total: Option<u64>, used: u64| total.map_or(u64::MAX, |t| t.saturating_sub(used));
        self.node.could_give(gpus, wants, &self.used_by_model)
            && left(self.node.memory_mb, self.used_memory_mb) >= memory_mb
            && left(self.node.disk_mb, self.used_disk_mb) >= disk_mb
    }
}

impl NomadScheduler {
    /// Every ready node with what allocations hold of its GPUs, memory and disk now.
    pub(super) async fn room(&self) -> Result<Vec<Room>, ScheduleError> {
        let nodes = self.gpu_nodes().await?;
        // What allocations hold now: their GPUs, memory (tasks') and disk (the group's).
        let allocs = self
            // Every namespace's: what other teams' jobs hold is not free for aic's.
            .call(reqwest::Method::GET, "allocations", &[("resources", "true".into()), ("namespace", "*".into())], None)
            .await?
            .unwrap_or(json!([]));
        let mut used: std::collections::HashMap<String, (u32, u64, u64)> = Default::default();
        let mut by_model: std::collections::HashMap<String, std::collections::HashMap<String, u32>> =
            Default::default();
        for a in allocs.as_array().into_iter().flatten() {
            if !matches!(a["ClientStatus"].as_str(), Some("pending" | "running")) {
                continue;
            }
            let node = a["NodeID"].as_str().unwrap_or("").to_string();
            let tasks: Vec<&serde_json::Value> =
                a["AllocatedResources"]["Tasks"].as_object().into_iter().flat_map(|t| t.values()).collect();
            // Each allocated device names its group (`AllocatedDeviceResource`: Vendor, Type,
            // Name, DeviceIDs).
            let mut gpus = 0;
            for d in tasks
                .iter()
                .flat_map(|t| t["Devices"].as_array().cloned().unwrap_or_default())
                .filter(|d| d["Vendor"] == "nvidia" && d["Type"] == "gpu")
            {
                let n = d["DeviceIDs"].as_array().map(|i| i.len()).unwrap_or(0) as u32;
                gpus += n;
                let model = d["Name"].as_str().unwrap_or("").to_string();
                *by_model.entry(node.clone()).or_default().entry(model).or_default() += n;
            }
            let memory: u64 = tasks.iter().filter_map(|t| t["Memory"]["MemoryMB"].as_u64()).sum();
            let disk = a["AllocatedResources"]["Shared"]["DiskMB"].as_u64().unwrap_or(0);
            let u = used.entry(node).or_default();
            *u = (u.0 + gpus, u.1 + memory, u.2 + disk);
        }
        Ok(nodes
            .into_iter()
            .map(|node| {
                let (used_gpus, used_memory_mb, used_disk_mb) = used.get(&node.id).copied().unwrap_or_default();
                let used_by_model = by_model.remove(&node.id).unwrap_or_default();
                Room { node, used_gpus, used_by_model, used_memory_mb, used_disk_mb }
            })
            .collect())
    }
}
