//! Nomad's HTTP API as the scheduler calls it: typed JSON over reqwest, `X-Nomad-Token`,
//! the namespace and region on every call, 404 as `None`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::NomadScheduler;
use crate::scheduler::ScheduleError;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RegisterResponse {
    #[serde(rename = "EvalID", default)]
    pub(super) eval_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Evaluation {
    #[serde(default)]
    pub(super) status: String,
    #[serde(rename = "FailedTGAllocs", default)]
    pub(super) failed_tg_allocs: Option<Value>,
    #[serde(default)]
    pub(super) blocked_eval: String,
    #[serde(default)]
    pub(super) status_description: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct AllocStub {
    #[serde(default)]
    pub(super) node_name: String,
    #[serde(default)]
    pub(super) client_status: String,
    #[serde(default)]
    pub(super) desired_status: String,
}

impl NomadScheduler {
    pub(super) fn url(&self, path: &str, query: &[(&str, String)]) -> String {
        let mut q: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        if let Some(ns_) = &self.cfg.namespace
            && !q.iter().any(|(k, _)| k == "namespace")
        {
            q.push(("namespace".into(), ns_.clone()));
        }
        if let Some(r) = &self.cfg.region {
            q.push(("region".into(), r.clone()));
        }
        let mut u = format!("{}/v1/{path}", self.base);
        if !q.is_empty() {
            u.push('?');
            u.push_str(&url::form_urlencoded::Serializer::new(String::new()).extend_pairs(q).finish());
        }
        u
    }

    /// One API call (the namespace and region added, `X-Nomad-Token` sent); `Ok(None)` for
    /// 404. Public for the live tests, which read what Nomad did.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Option<Value>, NomadError> {
        let mut rb = self.http.request(method, self.url(path, query));
        if let Some(t) = &self.cfg.token {
            rb = rb.header("X-Nomad-Token", t);
        }
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b.to_string());
        }
        let resp = rb.send().await.map_err(|e| NomadError::Unreachable(format!("{}: {e}", self.cfg.addr)))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| NomadError::Unreachable(e.to_string()))?;
        match status.as_u16() {
            // A DELETE answers 204 with no body (`variableDelete`).
            200..=299 if text.trim().is_empty() => Ok(Some(Value::Null)),
            200..=299 => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| NomadError::Api(status.as_u16(), format!("bad JSON: {e}"))),
            404 => Ok(None),
            403 => Err(NomadError::Forbidden(text.trim().to_string())),
            code => Err(NomadError::Api(code, text.trim().to_string())),
        }
    }

    /// Nodes ready for work, with the GPUs one allocation can have there.
    pub(super) async fn gpu_nodes(&self) -> Result<Vec<Node>, NomadError> {
        let nodes =
            self.call(reqwest::Method::GET, "nodes", &[("resources", "true".into())], None).await?.unwrap_or(json!([]));
        let mut out = vec![];
        for n in nodes.as_array().into_iter().flatten() {
            if n["Status"] != "ready" || n["SchedulingEligibility"] == "ineligible" {
                continue;
            }
            // A request of N GPUs is met from one device group (vendor/type/model: Nomad's
            // DeviceChecker in scheduler/feasible.go), so a node can give one allocation as
            // many as its largest group has healthy.
            // The NVIDIA device plugin names a group by its device name and fingerprints each
            // group's `memory` as an integer attribute in MiB (nomad-device-nvidia
            // fingerprint.go `attributesFromFingerprintDeviceData`; the API's `Attribute`
            // JSON is `{"Int": …, "Unit": "MiB"}`).
            let groups: Vec<GpuGroup> = n["NodeResources"]["Devices"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["Vendor"] == "nvidia" && d["Type"] == "gpu")
                .map(|d| {
                    let healthy = d["Instances"]
                        .as_array()
                        .map(|i| i.iter().filter(|x| x["Healthy"] != false).count())
                        .unwrap_or(0) as u32;
                    let m = &d["Attributes"]["memory"];
                    let memory_mb = m["Int"].as_u64().and_then(|v| match m["Unit"].as_str().unwrap_or("MiB") {
                        "MiB" | "MB" => Some(v),
                        "GiB" | "GB" => Some(v * 1024),
                        "KiB" | "KB" => Some(v / 1024),
                        _ => None,
                    });
                    let model = d["Name"].as_str().unwrap_or("").to_string();
                    GpuGroup { model, memory_mb, healthy }
                })
                .collect();
            let largest = groups.iter().max_by_key(|g| g.healthy);
            let gpus = largest.map_or(0, |g| g.healthy);
            let gpu_model = largest.map(|g| g.model.clone()).filter(|m| !m.is_empty());
            let gpu_memory_mb = largest.and_then(|g| g.memory_mb);
            // What the scheduler may give allocations: the node's memory and disk less what
            // its client reserves (api/nodes.go: `NodeResources`, `ReservedResources`).
            let less_reserved = |what: &str, field: &str| {
                let total = n["NodeResources"][what][field].as_u64();
                let reserved = n["ReservedResources"][what][field].as_u64().unwrap_or(0);
                total.map(|t| t.saturating_sub(reserved))
            };
            out.push(Node {
                datacenter: n["Datacenter"].as_str().unwrap_or("").to_string(),
                name: n["Name"].as_str().unwrap_or("").to_string(),
                id: n["ID"].as_str().unwrap_or("").to_string(),
                // Nodes registered before node pools (Nomad < 1.6) are in `default`.
                pool: n["NodePool"].as_str().filter(|p| !p.is_empty()).unwrap_or("default").to_string(),
                gpus,
                memory_mb: less_reserved("Memory", "MemoryMB"),
                disk_mb: less_reserved("Disk", "DiskMB"),
                gpu_model,
                gpu_memory_mb,
                groups,
            });
        }
        Ok(out)
    }

    pub(super) async fn allocations(&self, id: &str) -> Result<Vec<AllocStub>, NomadError> {
        let v =
            self.call(reqwest::Method::GET, &format!("job/{id}/allocations"), &[], None).await?.unwrap_or(json!([]));
        serde_json::from_value(v).map_err(|e| NomadError::Api(200, format!("allocations: {e}")))
    }

    /// Waits (blocking queries of at most 10 s) for the evaluation to be processed, up to
    /// `eval_wait` in all; `None` when it is still pending then.
    pub(super) async fn evaluation(&self, eval_id: &str) -> Result<Option<Evaluation>, NomadError> {
        let mut index = 0u64;
        let until = std::time::Instant::now() + self.cfg.eval_wait;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let q = [("index", index.to_string()), ("wait", format!("{}s", left.as_secs().clamp(1, 10)))];
            let Some(v) = self.call(reqwest::Method::GET, &format!("evaluation/{eval_id}"), &q, None).await? else {
                return Ok(None);
            };
            index = v["ModifyIndex"].as_u64().unwrap_or(index);
            let e: Evaluation =
                serde_json::from_value(v).map_err(|e| NomadError::Api(200, format!("evaluation: {e}")))?;
            if e.status != "pending" {
                return Ok(Some(e));
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NomadError {
    #[error("cannot reach Nomad at {0}")]
    Unreachable(String),
    #[error("Nomad refused the token (403: {0}); check NOMAD_TOKEN's ACL policy (submit-job, read-job, node:read)")]
    Forbidden(String),
    #[error("Nomad answered {0}: {1}")]
    Api(u16, String),
}

impl From<NomadError> for ScheduleError {
    fn from(e: NomadError) -> Self {
        ScheduleError::Backend(e.to_string())
    }
}

/// A ready, eligible node as `GET /v1/nodes?resources=true` lists it: its GPUs (the largest
/// device group's healthy ones) and what allocations may take of its memory and disk
/// (`None` where Nomad did not say).
#[derive(Clone, Debug)]
pub struct Node {
    pub datacenter: String,
    pub name: String,
    pub id: String,
    pub pool: String,
    pub gpus: u32,
    pub memory_mb: Option<u64>,
    pub disk_mb: Option<u64>,
    /// The model of its largest NVIDIA device group (the group's `Name`) and each GPU's
    /// memory (its `memory` attribute, in MiB: the device plugin's fingerprint).
    pub gpu_model: Option<String>,
    pub gpu_memory_mb: Option<u64>,
    /// Its NVIDIA device groups: a request of N GPUs is met from one of them.
    pub groups: Vec<GpuGroup>,
}

/// One device group of a node (vendor/type/model: `NodeDeviceResource`): its model (the
/// group's `Name`, what `${device.model}` resolves to), memory each and healthy GPUs.
#[derive(Clone, Debug)]
pub struct GpuGroup {
    pub model: String,
    pub memory_mb: Option<u64>,
    pub healthy: u32,
}

impl Node {
    /// Whether one allocation of `gpus` GPUs of what `wants` allows could be met here, with
    /// `used` of each group's GPUs taken (by model).
    pub fn could_give(
        &self,
        gpus: u32,
        wants: &crate::scheduler::gpus::GpuWants,
        used: &std::collections::HashMap<String, u32>,
    ) -> bool {
        self.groups.iter().any(|g| {
            let model = Some(g.model.as_str()).filter(|m| !m.is_empty());
            wants.matches(model, g.memory_mb)
                && g.healthy.saturating_sub(used.get(&g.model).copied().unwrap_or(0)) >= gpus
        })
    }
}
