//! Shared by the scheduler tests: a server that speaks Nomad's HTTP API as its documentation
//! says (paths, `X-Nomad-Token`, `?namespace=`, `EnforceIndex` registration, blocking
//! evaluation reads, `FailedTGAllocs`, 403/404/500 answers), and job manifests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use aic_core::layout::JobKey;
use aic_core::scheduler::nomad::{NomadConfig, nomad_id};
use aic_schemas::{JobId, JobManifest};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{Value, json};

pub const TOKEN: &str = "s3cr3t-token";

/// Three ready nodes with 2 GPUs each in `test_gateway` (one ineligible), one in `other`.
#[derive(Default)]
pub struct Nomad {
    pub jobs: BTreeMap<String, Value>,
    /// node name → GPUs in use
    pub busy: BTreeMap<String, u32>,
    pub allocs: BTreeMap<String, Vec<String>>,
    pub evals: BTreeMap<String, (u32, Value)>,
    pub seen: Vec<(String, String, Option<String>)>,
    /// Nomad's event buffer: the frames (`{"Index": …, "Events": […]}`, one line each) the
    /// event stream sends from, oldest first. Each connection sends Nomad's opening `{}`, the
    /// frames a subscription at its `index` starts with, then closes.
    pub stream: Vec<String>,
    pub stream_queries: Vec<BTreeMap<String, String>>,
    /// Allocations of other namespaces' jobs: (node name, GPUs they hold).
    pub foreign: Vec<(String, u32)>,
    /// Memory (MiB) other namespaces' allocations hold on a node, by node name: counted by
    /// the scheduler as Nomad's does (`scheduler/rank.go` `BinPackIterator`: a node whose
    /// memory the allocation does not fit is passed over), listed in `/v1/allocations`.
    pub foreign_memory: BTreeMap<String, u64>,
    /// Replacements Nomad's reconciler placed for lost allocations: (job, node, version).
    pub replacements: Vec<(String, String, u64)>,
    /// Every allocation ever placed, with the job as it was when it was made (what
    /// `GET /v1/allocation/:id` returns).
    pub history: BTreeMap<String, Value>,
    /// What the client reports of each allocation ever placed.
    pub info: BTreeMap<String, AllocInfo>,
    /// Nomad's raft index, for jobs' `CreateIndex`.
    pub index: u64,
    /// Jobs purged (`DELETE …?purge=true`).
    pub purged: Vec<String>,
    /// Check results by allocation id (`success`, `failure`; absent: no result yet). An
    /// allocation not named here passes its checks.
    pub checks: BTreeMap<String, Option<&'static str>>,
    /// Exec sessions opened: (allocation id, the `command` query as sent).
    pub execs: Vec<(String, String)>,
    /// Every input frame exec sessions sent.
    pub exec_inputs: Vec<Value>,
    /// Nodes that missed their heartbeats: `down` in `GET /v1/nodes` (nomad/heartbeat.go
    /// `invalidateHeartbeat` sets the node's status to down), nothing placed on them.
    pub down: std::collections::BTreeSet<String>,
    /// Nomad Variables by path (`PUT`/`GET`/`DELETE /v1/var/:path`, the api-docs' Variables
    /// HTTP API): their `Items`.
    pub vars: BTreeMap<String, Value>,
    /// Each variable's `ModifyIndex` and `ModifyTime` (unix nanoseconds).
    pub var_meta: BTreeMap<String, (u64, i64)>,
    /// Locks over variables (the Locks HTTP API: `PUT /v1/var/:path?lock-acquire|lock-renew|
    /// lock-release`): the holder's lock ID and when its TTL runs out. A held lock refuses
    /// another `lock-acquire` with a conflict (409).
    pub locks: BTreeMap<String, (String, std::time::Instant)>,
    /// How many times each lock was acquired.
    pub acquired: u32,
    /// Evaluations stay `pending` (servers busy): a blocking query waits its `wait` out
    /// and answers the same (nomad/blocking queries: no change by the deadline).
    pub stuck_evals: bool,
    /// Allocations that end just as an exec session reaches them (their client stopped them
    /// since aic listed them running).
    pub gone_on_exec: std::collections::BTreeSet<String>,
}

/// An allocation as its client reports it (`TaskStates.worker`, `ClientStatus`).
#[derive(Clone, Debug)]
pub struct AllocInfo {
    pub node: String,
    pub index: usize,
    pub gpus: u32,
    /// The device group its GPUs came from (the group's model, `Name`).
    pub group: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Its task's earlier starts, before a restart in place (Nomad's restart tracker).
    pub earlier_starts: Vec<chrono::DateTime<chrono::Utc>>,
    pub status: String,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub modified_at: chrono::DateTime<chrono::Utc>,
    /// Set when Nomad's servers stopped it (`DesiredStatus` stop), with the description.
    pub stopped: Option<String>,
    /// Nomad's raft index when it was made.
    pub create_index: u64,
}

impl Nomad {
    /// Records a new allocation as placed (its task starts at once).
    fn placed(&mut self, id: &str, node: &str, index: usize, job: &Value) {
        let gpus = job["TaskGroups"][0]["Tasks"][0]["Resources"]["Devices"][0]["Count"].as_u64().unwrap_or(0) as u32;
        let group = self.group_for(node, job).unwrap_or_else(|| "Tesla T4".into());
        let aid = alloc_id(id, node, job);
        let now = chrono::Utc::now();
        self.index += 1;
        let create_index = self.index;
        self.history.insert(aid.clone(), job.clone());
        self.info.insert(
            aid,
            AllocInfo {
                node: node.into(),
                index,
                gpus,
                group,
                started_at: now,
                earlier_starts: Vec::new(),
                status: "running".into(),
                finished_at: None,
                modified_at: now,
                stopped: None,
                create_index,
            },
        );
    }

    /// Its task exits and Nomad's restart tracker starts it again in place, as the restart
    /// policy of a service job does (`client/allocrunner/taskrunner/restarts`): the same
    /// allocation; `StartedAt` becomes the new start ("updated each time the task starts"),
    /// and a `Started` event is added for each start.
    pub fn restart_task(&mut self, aid: &str) {
        let i = self.info.get_mut(aid).expect("a placed allocation");
        i.earlier_starts.push(i.started_at);
        i.started_at = chrono::Utc::now();
        i.modified_at = i.started_at;
    }

    /// The allocation ends as its client reports it (`complete`, `failed`).
    /// What it held is free for the scheduler from then on (client-terminal).
    pub fn ended(&mut self, aid: &str, status: &str) {
        let i = self.info.get_mut(aid).expect("a placed allocation");
        let now = chrono::Utc::now();
        i.status = status.into();
        i.modified_at = now;
        if i.finished_at.replace(now).is_none()
            && let Some(b) = self.busy.get_mut(&i.node)
        {
            *b = b.saturating_sub(i.gpus);
        }
    }

    /// Node `node` is drained past its deadline: its batch allocations are stopped with no
    /// replacement (Nomad ≥ 1.11; `nomad/drainer/watch_jobs.go` `handleTaskGroup`: batch
    /// allocations are never migrated, only force-stopped at the deadline), so each becomes
    /// `complete` with `DesiredStatus` stop and `DesiredTransition.Migrate` set.
    pub fn drain(&mut self, node: &str) {
        let now = chrono::Utc::now();
        for i in self.info.values_mut().filter(|i| i.node == node && i.finished_at.is_none()) {
            i.status = "complete".into();
            i.finished_at = Some(now);
            i.modified_at = now;
            i.stopped = Some("alloc is being migrated".into());
        }
    }

    /// Whether job `id` is stopped (deregistered: `Stop`) or gone.
    pub fn is_stopped(&self, id: &str) -> bool {
        self.jobs.get(id).is_none_or(|j| j["Stop"] == true)
    }

    /// The id of job `id`'s allocation on `node` now.
    pub fn alloc_of(&self, id: &str, node: &str) -> String {
        alloc_id(id, node, &self.jobs[id])
    }

    /// Nomad's servers stop job `id`'s allocations (deregistered, or replaced by a new
    /// version): `DesiredStatus` becomes stop at once, but their tasks run on until the
    /// client has killed them (`KillSignal`, then `KillTimeout`): `ClientStatus` stays
    /// `running`, and what they hold stays taken for the scheduler until then
    /// (`scheduler/context.go` `ProposedAllocs`, the `DeviceAccounter` and `structs.AllocsFit`
    /// skip only client-terminal allocations), so nothing new is placed on their GPUs before
    /// [`Nomad::kill_stopped`].
    fn stop_allocs(&mut self, id: &str, why: &str) {
        let Some(job) = self.jobs.get(id).cloned() else { return };
        for n in self.allocs.remove(id).unwrap_or_default() {
            let aid = alloc_id(id, &n, &job);
            if let Some(i) = self.info.get_mut(&aid).filter(|i| i.finished_at.is_none()) {
                i.stopped = Some(why.to_string());
                i.modified_at = chrono::Utc::now();
            }
        }
    }

    /// The kill timeout of every allocation Nomad's servers stopped has passed: their clients
    /// have killed the tasks and report them `complete`; their GPUs are free. Returns their
    /// ids.
    pub fn kill_stopped(&mut self) -> Vec<String> {
        let ids: Vec<String> = self
            .info
            .iter()
            .filter(|(_, i)| i.stopped.is_some() && i.finished_at.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.ended(id, "complete");
        }
        ids
    }

    /// Allocations whose tasks still run though Nomad's servers stopped them.
    pub fn stopping(&self) -> Vec<String> {
        self.info
            .iter()
            .filter(|(_, i)| i.stopped.is_some() && i.finished_at.is_none())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// An allocation as `GET /v1/job/:id/allocations` and `GET /v1/allocations` list it
    /// (nomad/structs `AllocListStub`): its client's status and the servers' wish.
    fn stub(&self, aid: &str) -> Value {
        let (j, i) = (&self.history[aid], &self.info[aid]);
        let id = j["ID"].as_str().unwrap();
        let group = j["TaskGroups"][0]["Name"].as_str().unwrap_or("worker");
        let node_id = NODES.iter().find(|x| x.1 == i.node).unwrap().0;
        json!({"ID": aid, "JobID": id, "Namespace": "aic", "Name": format!("{id}.{group}[{}]", i.index),
            "NodeID": node_id, "NodeName": i.node, "ClientStatus": i.status, "JobVersion": j["Version"],
            "ClientDescription": if i.status == "lost" { "alloc is lost since its node is down" } else { "" },
            "DesiredStatus": if i.stopped.is_some() { "stop" } else { "run" },
            "DesiredDescription": i.stopped.clone().unwrap_or_default(),
            "CreateIndex": i.create_index, "ModifyIndex": i.create_index,
            "AllocatedResources": {"Tasks": {"worker": {"Devices": [{"Vendor": "nvidia", "Type": "gpu", "Name": i.group,
                "DeviceIDs": (0..i.gpus).map(|g| format!("GPU-{node_id}-{g}")).collect::<Vec<_>>()}],
                "Memory": {"MemoryMB": j["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"]}}},
                "Shared": {"DiskMB": j["TaskGroups"][0]["EphemeralDisk"]["SizeMB"]}}})
    }

    /// A node stops heartbeating and is marked down, and Nomad's reconciler acts on each
    /// allocation there (scheduler/reconcile_util.go, `filterByTainted`): a running
    /// allocation of a group whose `disconnect { replace = false }` becomes `unknown` and is
    /// left alone; any other is `lost` and replaced on another node at once (whatever the
    /// reschedule policy: lost allocations are always replaced). Returns the allocation
    /// events the stream sends.
    /// The memory (MiB) left for allocations on `node`: aic's placed allocations' and other
    /// namespaces' taken.
    pub fn free_memory(&self, node: &str) -> u64 {
        let aics: u64 = self
            .info
            .iter()
            .filter(|(_, i)| {
                i.node == node
                    && i.finished_at.is_none()
                    && !matches!(i.status.as_str(), "lost" | "complete" | "failed")
            })
            .map(|(aid, _)| {
                self.history[aid]["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"].as_u64().unwrap_or(0)
            })
            .sum();
        let theirs = self.foreign_memory.get(node).copied().unwrap_or(0);
        (NODE_MEMORY_MB - NODE_RESERVED_MB).saturating_sub(aics + theirs)
    }

    pub fn node_down(&mut self, node: &str) -> Vec<Value> {
        self.down.insert(node.to_string());
        let mut events = vec![];
        let ids: Vec<String> =
            self.allocs.iter().filter(|(_, ns)| ns.iter().any(|n| n == node)).map(|(id, _)| id.clone()).collect();
        for id in ids {
            let job = self.jobs[&id].clone();
            let version = job["Version"].as_u64().unwrap();
            let tg = &job["TaskGroups"][0];
            let index = self.allocs[&id].iter().position(|n| n == node).unwrap();
            let keep = tg["Disconnect"]["Replace"] == false;
            let aid = self.alloc_of(&id, node);
            if let Some(i) = self.info.get_mut(&aid) {
                i.status = if keep { "unknown" } else { "lost" }.into();
                i.modified_at = chrono::Utc::now();
            }
            // Nomad's own words (scheduler/reconcile_util.go: `allocUnknown`, `allocLost`).
            let mut ev = json!({"ID": aid, "JobID": id,
                "Name": format!("{id}.{}[{index}]", tg["Name"].as_str().unwrap()), "NodeName": node,
                "ClientStatus": if keep { "unknown" } else { "lost" }, "DesiredStatus": "run", "Namespace": "aic",
                "ClientDescription": "alloc is unknown since its node is disconnected"});
            if !keep {
                ev["ClientDescription"] = json!("alloc is lost since its node is down");
                let gpus = tg["Tasks"][0]["Resources"]["Devices"][0]["Count"].as_u64().unwrap_or(0) as u32;
                let dc = job["Datacenters"][0].as_str().unwrap().to_string();
                let taken = self.allocs[&id].clone();
                let spare = NODES.iter().find(|n| {
                    n.2 == dc
                        && n.4
                        && n.1 != node
                        && !taken.iter().any(|t| t == n.1)
                        && n.3 - self.busy.get(n.1).copied().unwrap_or(0) >= gpus
                        && self.group_for(n.1, &job).is_some()
                });
                if let Some(n) = spare {
                    *self.busy.entry(n.1.to_string()).or_default() += gpus;
                    self.allocs.get_mut(&id).unwrap()[index] = n.1.to_string();
                    self.placed(&id, n.1, index, &job);
                    self.replacements.push((id.clone(), n.1.to_string(), version));
                }
            }
            events.push(ev);
        }
        events
    }
}

/// (id, name, datacenter, GPUs, eligible). `node-e` in `mixed` has its 4 GPUs in two
/// device groups of 2 (two models), as `nomad node status` shows a mixed node.
/// Every node's memory for allocations, MiB: 64 GiB less the 1 GiB its client reserves.
pub const NODE_MEMORY_MB: u64 = 65536;
pub const NODE_RESERVED_MB: u64 = 1024;

pub const NODES: [(&str, &str, &str, u32, bool); 5] = [
    ("n1", "node-a", "test_gateway", 2, true),
    ("n2", "node-b", "test_gateway", 2, true),
    ("n3", "node-c", "test_gateway", 2, false),
    ("n4", "node-d", "other", 8, true),
    ("n5", "node-e", "mixed", 4, true),
];

/// Each node's NVIDIA device groups: (model, memory each in MiB, GPUs). `node-e` in `mixed`
/// has its 4 GPUs in two groups of 2, as `nomad node status` shows a mixed node.
pub fn device_groups(node: &str) -> Vec<(&'static str, u64, u32)> {
    let n = NODES.iter().find(|n| n.1 == node).expect("a node");
    if n.2 == "mixed" {
        vec![("Tesla T4", 15360, n.3 / 2), ("A100", 40960, n.3 - n.3 / 2)]
    } else {
        vec![("Tesla T4", 15360, n.3)]
    }
}

/// Whether a device group meets a task's device request's constraints, as Nomad's scheduler
/// decides it (`scheduler/feasible.go` `nodeDeviceMatches`: every constraint, its targets
/// resolved by `resolveDeviceTarget` — `${device.model}` the group's name,
/// `${device.attr.memory}` its attribute — and `checkAttributeConstraint`: `regexp` a Go
/// regular expression matched against the string, `>=` a comparison of numbers in the same
/// unit, here MiB).
fn device_matches(model: &str, memory_mib: u64, constraints: &Value) -> bool {
    constraints.as_array().into_iter().flatten().all(|c| {
        let (l, r, op) =
            (c["LTarget"].as_str().unwrap(), c["RTarget"].as_str().unwrap(), c["Operand"].as_str().unwrap());
        match (l, op) {
            ("${device.model}", "regexp") => regex_lite::Regex::new(r).expect("Nomad compiles it").is_match(model),
            ("${device.attr.memory}", ">=") => {
                let want: u64 = r.strip_suffix(" MiB").expect("a value in MiB").parse().unwrap();
                memory_mib >= want
            }
            other => panic!("a device constraint this fake does not evaluate: {other:?}"),
        }
    })
}

/// How the device's affinities score a group: the sum of the weights of those it meets
/// (`scheduler/rank.go` `DeviceAffinityIterator`, which prefers the best-scoring group).
fn device_score(model: &str, affinities: &Value) -> i64 {
    affinities
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| regex_lite::Regex::new(a["RTarget"].as_str().unwrap()).unwrap().is_match(model))
        .map(|a| a["Weight"].as_i64().unwrap())
        .sum()
}

impl Nomad {
    /// The device group of `node` Nomad would give one allocation of `job`: one whose
    /// constraints it meets, with its GPUs free (a request is met from one group), the best
    /// scored by the affinities first. `None`: none can.
    pub fn group_for(&self, node: &str, job: &Value) -> Option<String> {
        let dev = &job["TaskGroups"][0]["Tasks"][0]["Resources"]["Devices"][0];
        let gpus = dev["Count"].as_u64().unwrap_or(0) as u32;
        let used = |model: &str| -> u32 {
            self.info
                .values()
                .filter(|i| i.node == node && i.group == model && i.finished_at.is_none())
                .map(|i| i.gpus)
                .sum()
        };
        // The first group of the best score.
        device_groups(node)
            .into_iter()
            .rev()
            .filter(|(model, mib, count)| {
                device_matches(model, *mib, &dev["Constraints"]) && count - used(model).min(*count) >= gpus
            })
            .max_by_key(|(model, _, _)| device_score(model, &dev["Affinities"]))
            .map(|(model, _, _)| model.to_string())
    }
}

/// The frames of Nomad's event buffer `buffer` a subscription at `index` is sent first
/// (nomad/stream/event_broker.go `Subscribe`, event_buffer.go `StartAtClosest`; the
/// subscription's first `Next` returns its start item itself): with 0, the whole buffer; with
/// an index it holds, that frame again and what follows; between two, from the later; past
/// the newest, the newest again.
fn replayed(buffer: &[String], index: u64) -> Vec<String> {
    let frames: Vec<(u64, &String)> =
        buffer.iter().filter_map(|l| Some((serde_json::from_str::<Value>(l).ok()?["Index"].as_u64()?, l))).collect();
    let start = if index == 0 {
        0
    } else {
        frames.iter().position(|(i, _)| *i >= index).unwrap_or(frames.len().saturating_sub(1))
    };
    frames[start.min(frames.len())..].iter().map(|(_, l)| l.to_string()).collect()
}

fn reply(code: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder().status(code).body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

fn text(code: u16, body: &str) -> Response<Full<Bytes>> {
    Response::builder().status(code).body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// `GET /v1/client/allocation/:id/exec` (command/agent/alloc_endpoint.go `allocExec`): the
/// connection is upgraded to a WebSocket first; a refusal is then a close frame whose text
/// says why. The command runs here as the allocation's client would run it in the task
/// (`task` must be the task's name), its stdin, stdout and stderr in the frames of
/// api/allocations.go (`ExecStreamingInput`/`ExecStreamingOutput`, `[]byte` as base64), and
/// its exit code last. No terminal: `tty=true` is taken, and its size frames, but the
/// command gets pipes.
fn exec_upgrade(state: Arc<Mutex<Nomad>>, mut req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};
    let key = req.headers().get("sec-websocket-key").cloned().unwrap();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let token = req.headers().get("x-nomad-token").map(|v| v.to_str().unwrap().to_string());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use futures::{SinkExt, StreamExt};
        let io = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let aid = path.trim_start_matches("/v1/client/allocation/").trim_end_matches("/exec").to_string();
        let refusal = {
            let mut s = state.lock().unwrap();
            s.seen.push(("GET".into(), path.clone(), token.clone()));
            if s.gone_on_exec.remove(&aid) {
                s.ended(&aid, "complete");
            }
            if token.as_deref() != Some(TOKEN) {
                Some("Permission denied".to_string())
            } else if s.info.get(&aid).is_none_or(|i| i.status != "running") {
                Some(format!("unknown allocation \"{aid}\""))
            } else if query.get("task").map(String::as_str) != Some("worker") {
                Some(format!("task {:?} not found", query.get("task")))
            } else {
                s.execs.push((aid.clone(), query.get("command").cloned().unwrap_or_default()));
                None
            }
        };
        if let Some(why) = refusal {
            let f = CloseFrame { code: CloseCode::Policy, reason: why.into() };
            let _ = ws.send(tokio_tungstenite::tungstenite::Message::Close(Some(f))).await;
            return;
        }
        let argv: Vec<String> = serde_json::from_str(&query["command"]).unwrap();
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (mut tx, mut rx) = ws.split();
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Value>(16);
        let b64 = |d: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, d);
        for (name, mut pipe) in [
            ("stdout", Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            ("stderr", Box::new(child.stderr.take().unwrap())),
        ] {
            let out_tx = out_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match tokio::io::AsyncReadExt::read(&mut pipe, &mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = out_tx.send(json!({ name: {"close": true} })).await;
                            return;
                        }
                        Ok(n) => {
                            let _ = out_tx.send(json!({ name: {"data": b64(&buf[..n])} })).await;
                        }
                    }
                }
            });
        }
        drop(out_tx);
        let mut stdin = child.stdin.take();
        let inputs = state.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = rx.next().await {
                let Ok(v) = serde_json::from_str::<Value>(m.to_text().unwrap_or("")) else { continue };
                inputs.lock().unwrap().exec_inputs.push(v.clone());
                if let Some(d) = v["stdin"]["data"].as_str() {
                    let d = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, d).unwrap();
                    if let Some(w) = stdin.as_mut() {
                        let _ = tokio::io::AsyncWriteExt::write_all(w, &d).await;
                    }
                } else if v["stdin"]["close"] == true {
                    stdin = None;
                }
            }
        });
        // Both pipes drained, then the exit code, then a normal close.
        while let Some(f) = out_rx.recv().await {
            tx.send(tokio_tungstenite::tungstenite::Message::text(f.to_string())).await.unwrap();
        }
        let code = child.wait().await.unwrap().code().unwrap_or(-1);
        // As Nomad encodes it: `exit_code` is `omitempty` (protoc-gen-go's tags in
        // plugins/drivers/proto/driver.pb.go), so a 0 is left out.
        let exited = if code == 0 {
            json!({"exited": true, "result": {}})
        } else {
            json!({"exited": true, "result": {"exit_code": code}})
        };
        tx.send(tokio_tungstenite::tungstenite::Message::text(exited.to_string())).await.unwrap();
        let _ = tx.send(tokio_tungstenite::tungstenite::Message::Close(None)).await;
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn handle(
    state: Arc<Mutex<Nomad>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path().ends_with("/exec") && req.headers().contains_key("upgrade") {
        return Ok(exec_upgrade(state, req));
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let token = req.headers().get("x-nomad-token").map(|v| v.to_str().unwrap().to_string());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if path == "/v1/event/stream" && token.as_deref() == Some(TOKEN) {
        assert_eq!(query.get("topic").map(String::as_str), Some("Allocation:*"));
        assert_eq!(query.get("namespace").map(String::as_str), Some("*"), "every namespace's allocations");
        let lines = {
            let mut s = state.lock().unwrap();
            s.stream_queries.push(query.clone());
            replayed(&s.stream, query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0))
        };
        // Nomad's NDJSON stream opens with a heartbeat, `{}`, and sends one every 30 s
        // (nomad/stream/ndjson.go `JsonHeartbeat`; nomad/event_endpoint.go
        // `stream.NewJsonStream(ctx, 30*time.Second)`).
        if lines.is_empty() {
            // Nothing more: hold the connection like a quiet stream.
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            return Ok(text(200, "{}\n{}\n"));
        }
        return Ok(text(200, &format!("{{}}\n{}\n", lines.join("\n"))));
    }
    if let Some(id) = path.strip_prefix("/v1/evaluation/") {
        let stuck = {
            let s = state.lock().unwrap();
            s.stuck_evals && s.evals.contains_key(id)
        };
        if stuck && token.as_deref() == Some(TOKEN) {
            let wait: u64 = query.get("wait").and_then(|w| w.trim_end_matches('s').parse().ok()).unwrap_or(300);
            if query.get("index").is_some_and(|i| i != "0") {
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
            }
            return Ok(reply(200, json!({"ID": id, "Status": "pending", "ModifyIndex": 11})));
        }
    }
    let mut s = state.lock().unwrap();
    s.seen.push((method.clone(), path.clone(), token.clone()));
    if token.as_deref() != Some(TOKEN) {
        return Ok(text(403, "Permission denied"));
    }
    // Listing allocations may name every namespace (`*`); everything else is the job's own.
    let all_namespaces = path == "/v1/allocations" && query.get("namespace").map(String::as_str) == Some("*");
    if query.get("namespace").map(String::as_str) != Some("aic") && !all_namespaces {
        return Ok(text(400, "expected namespace=aic"));
    }
    let ok = match (method.as_str(), path.as_str()) {
        ("GET", "/v1/nodes") => {
            assert_eq!(query.get("resources").map(String::as_str), Some("true"));
            let nodes: Vec<Value> = NODES
                .iter()
                .map(|(id, name, dc, _, eligible)| {
                    let inst = |from: u32, to: u32| -> Vec<Value> {
                        (from..to).map(|i| json!({"ID": format!("GPU-{id}-{i}"), "Healthy": true})).collect()
                    };
                    // Each group's `memory` attribute as the NVIDIA device plugin fingerprints it
                    // (an integer in MiB: nomad-device-nvidia fingerprint.go), in the API's
                    // `Attribute` JSON.
                    let mem = |mib: u64| json!({"memory": {"Int": mib, "Unit": "MiB"}, "power": {"Int": 70, "Unit": "W"}});
                    let mut from = 0;
                    let devices: Vec<Value> = device_groups(name)
                        .into_iter()
                        .map(|(model, mib, count)| {
                            from += count;
                            json!({"Vendor": "nvidia", "Type": "gpu", "Name": model, "Instances": inst(from - count, from), "Attributes": mem(mib)})
                        })
                        .collect();
                    let status = if s.down.contains(*name) { "down" } else { "ready" };
                    // api/nodes.go `NodeListStub` with `resources=true`: `NodeResources` and
                    // `ReservedResources`; `NodePool` (Nomad ≥ 1.6).
                    json!({"ID": id, "Name": name, "Datacenter": dc, "Status": status, "NodePool": "default",
                        "SchedulingEligibility": if *eligible { "eligible" } else { "ineligible" },
                        "NodeResources": {"Devices": devices, "Memory": {"MemoryMB": NODE_MEMORY_MB}, "Disk": {"DiskMB": 500_000}},
                        "ReservedResources": {"Memory": {"MemoryMB": NODE_RESERVED_MB}, "Disk": {"DiskMB": 0}}})
                })
                .collect();
            reply(200, json!(nodes))
        }
        ("POST", "/v1/jobs") => {
            let v: Value = serde_json::from_slice(&body).unwrap();
            let job = &v["Job"];
            let id = job["ID"].as_str().unwrap().to_string();
            let kind = if job["Meta"]["aic_kind"] == "serve" { "service" } else { "batch" };
            assert_eq!(job["Type"], kind);
            assert_eq!(job["TaskGroups"][0]["Tasks"][0]["Resources"]["Devices"][0]["Name"], "nvidia/gpu");
            // nomad/job_endpoint.go `Register`: EnforceIndex is a compare-and-set on the job's
            // JobModifyIndex (0: only a new job), each refusal an HTTP 500 with this text.
            if v["EnforceIndex"] == true {
                let jmi = v["JobModifyIndex"].as_u64().unwrap_or(0);
                match s.jobs.get(&id).map(|j| j["JobModifyIndex"].as_u64().unwrap()) {
                    Some(_) if jmi == 0 => return Ok(text(500, "Enforcing job modify index 0: job already exists")),
                    Some(cur) if cur != jmi => {
                        let m = format!(
                            "Enforcing job modify index {jmi}: job exists with conflicting job modify index: {cur}"
                        );
                        return Ok(text(500, &m));
                    }
                    None if jmi != 0 => {
                        return Ok(text(500, &format!("Enforcing job modify index {jmi}: job does not exist")));
                    }
                    _ => {}
                }
            }
            let version = s.jobs.get(&id).map(|j| j["Version"].as_u64().unwrap() + 1).unwrap_or(0);
            s.index += 1;
            let create = s.jobs.get(&id).map(|j| j["CreateIndex"].as_u64().unwrap()).unwrap_or(s.index);
            // The old version's allocations are stopped (a destructive update:
            // scheduler/reconcile.go `allocUpdating`).
            s.stop_allocs(&id, "alloc is being updated due to job update");
            let mut stored = v["Job"].clone();
            stored["Version"] = json!(version);
            stored["CreateIndex"] = json!(create);
            stored["Stop"] = json!(false);
            stored["JobModifyIndex"] = json!(s.index);
            let count = job["TaskGroups"][0]["Count"].as_u64().unwrap() as u32;
            let gpus = job["TaskGroups"][0]["Tasks"][0]["Resources"]["Devices"][0]["Count"].as_u64().unwrap() as u32;
            let dc = job["Datacenters"][0].as_str().unwrap();
            let memory = job["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"].as_u64().unwrap_or(0);
            // Place one allocation per node with room (GPUs and memory), as the scheduler would.
            let free: Vec<String> = NODES
                .iter()
                .filter(|n| {
                    n.2 == dc
                        && n.4
                        && !s.down.contains(n.1)
                        && n.3 - s.busy.get(n.1).copied().unwrap_or(0) >= gpus
                        && s.free_memory(n.1) >= memory
                        && s.group_for(n.1, job).is_some()
                })
                .map(|n| n.1.to_string())
                .collect();
            let eval_id = format!("eval-{}", s.evals.len() + 1);
            // Nomad places what it can of the group and blocks the rest.
            let placed: Vec<String> = free.iter().take(count as usize).cloned().collect();
            for (i, n) in placed.iter().enumerate() {
                *s.busy.entry(n.clone()).or_default() += gpus;
                s.placed(&id, n, i, &stored);
            }
            if !placed.is_empty() {
                s.allocs.insert(id.clone(), placed);
            }
            let eval = if free.len() as u32 >= count {
                json!({"ID": eval_id, "Status": "complete"})
            } else {
                json!({"ID": eval_id, "Status": "complete", "BlockedEval": "eval-blocked",
                    "FailedTGAllocs": {"train": {"NodesEvaluated": 3, "NodesFiltered": 1, "NodesExhausted": 2,
                        "ConstraintFiltered": {"${node.eligibility}": 1},
                        "DimensionExhausted": {"devices: no devices match request": 2},
                        "CoalescedFailures": count - free.len().min(count as usize) as u32 - 1}}})
            };
            s.evals.insert(eval_id.clone(), (0, eval));
            let modify = stored["JobModifyIndex"].clone();
            s.jobs.insert(id, stored);
            reply(200, json!({"EvalID": eval_id, "EvalCreateIndex": modify, "JobModifyIndex": modify, "Warnings": ""}))
        }
        ("POST", p) if p.starts_with("/v1/job/") && p.ends_with("/scale") => {
            // nomad/job_endpoint.go `Scale`: a count outside the group's `Scaling` bounds is
            // refused (400, Nomad's words); else the group takes the count in a new job
            // modify index and the reconciler places the allocations missing or stops the
            // newest (scheduler/reconcile.go stops the highest name indexes first). Nomad
            // updates the allocations it keeps in place to the job's new version; here they
            // keep their ids.
            let id = p.trim_start_matches("/v1/job/").trim_end_matches("/scale").to_string();
            let v: Value = serde_json::from_slice(&body).unwrap();
            let Some(mut job) = s.jobs.get(&id).cloned() else { return Ok(text(404, "job not found")) };
            assert_eq!(v["Target"]["Group"], job["TaskGroups"][0]["Name"], "the group to scale");
            let count = v["Count"].as_u64().unwrap();
            let scaling = job["TaskGroups"][0]["Scaling"].clone();
            if let Some(min) = scaling["Min"].as_u64().filter(|m| count < *m) {
                return Ok(text(400, &format!("group count was less than scaling policy minimum: {count} < {min}")));
            }
            if let Some(max) = scaling["Max"].as_u64().filter(|m| count > *m) {
                return Ok(text(400, &format!("group count was greater than scaling policy maximum: {count} > {max}")));
            }
            s.index += 1;
            job["TaskGroups"][0]["Count"] = json!(count);
            job["JobModifyIndex"] = json!(s.index);
            s.jobs.insert(id.clone(), job.clone());
            let mut now = s.allocs.get(&id).cloned().unwrap_or_default();
            let gpus = job["TaskGroups"][0]["Tasks"][0]["Resources"]["Devices"][0]["Count"].as_u64().unwrap() as u32;
            let memory = job["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"].as_u64().unwrap_or(0);
            let dc = job["Datacenters"][0].as_str().unwrap().to_string();
            while (now.len() as u64) < count {
                let free = NODES.iter().find(|n| {
                    n.2 == dc
                        && n.4
                        && !s.down.contains(n.1)
                        && !now.iter().any(|h| h == n.1)
                        && n.3 - s.busy.get(n.1).copied().unwrap_or(0) >= gpus
                        && s.free_memory(n.1) >= memory
                        && s.group_for(n.1, &job).is_some()
                });
                let Some(n) = free.map(|n| n.1.to_string()) else { break };
                *s.busy.entry(n.clone()).or_default() += gpus;
                let index = now.len();
                s.placed(&id, &n, index, &job);
                now.push(n);
            }
            while now.len() as u64 > count {
                let n = now.pop().unwrap();
                let aid = alloc_id(&id, &n, &job);
                if let Some(i) = s.info.get_mut(&aid).filter(|i| i.finished_at.is_none()) {
                    i.stopped = Some("alloc not needed due to job update".into());
                    i.modified_at = chrono::Utc::now();
                }
            }
            s.allocs.insert(id, now);
            let index = s.index;
            reply(200, json!({"EvalID": "eval-scale", "EvalCreateIndex": index, "JobModifyIndex": index}))
        }
        ("GET", p) if p.starts_with("/v1/evaluation/") => {
            let id = p.trim_start_matches("/v1/evaluation/").to_string();
            let Some((reads, eval)) = s.evals.get_mut(&id) else { return Ok(text(404, "eval not found")) };
            // The first read is answered "pending" (a blocking query must follow the index).
            *reads += 1;
            if *reads == 1 {
                assert_eq!(query.get("index").map(String::as_str), Some("0"));
                return Ok(reply(200, json!({"ID": id, "Status": "pending", "ModifyIndex": 11})));
            }
            assert_eq!(query.get("index").map(String::as_str), Some("11"), "blocking query on the last index");
            let mut e = eval.clone();
            e["ModifyIndex"] = json!(12);
            reply(200, e)
        }
        ("GET", p) if p.starts_with("/v1/job/") && p.ends_with("/allocations") => {
            // Every allocation of the job, of every version, with its status (allocations are
            // kept until garbage-collected): nomad/state/state_store.go `AllocsByJob` skips
            // only those made for an earlier job of the same id (another `CreateIndex`: one
            // purged and registered again), and with the job gone (purged) lists them all.
            let id = p.trim_start_matches("/v1/job/").trim_end_matches("/allocations");
            let instance = s.jobs.get(id).map(|j| j["CreateIndex"].clone());
            let mut allocs: Vec<Value> = s
                .history
                .iter()
                .filter(|(_, j)| j["ID"] == id && instance.as_ref().is_none_or(|c| j["CreateIndex"] == *c))
                .map(|(aid, _)| s.stub(aid))
                .collect();
            allocs.sort_by_key(|a| a["CreateIndex"].as_u64());
            reply(200, json!(allocs))
        }
        ("GET", p) if p.starts_with("/v1/job/") => {
            let id = p.trim_start_matches("/v1/job/");
            match s.jobs.get(id) {
                Some(j) => reply(200, j.clone()),
                None => text(404, "job not found"),
            }
        }
        ("DELETE", p) if p.starts_with("/v1/job/") => {
            let id = p.trim_start_matches("/v1/job/").to_string();
            if !s.jobs.contains_key(&id) {
                return Ok(text(404, "job not found"));
            }
            s.stop_allocs(&id, "alloc not needed due to job update");
            // Stopped, the job stays (dead, `Stop`, a new modify index) until collected;
            // `purge=true` removes it at once (nomad/job_endpoint.go `Deregister`).
            if query.get("purge").map(String::as_str) == Some("true") {
                s.jobs.remove(&id);
                s.purged.push(id.clone());
            } else {
                s.index += 1;
                let index = s.index;
                let j = s.jobs.get_mut(&id).unwrap();
                j["Stop"] = json!(true);
                j["Status"] = json!("dead");
                j["JobModifyIndex"] = json!(index);
            }
            reply(200, json!({"EvalID": "eval-stop", "EvalCreateIndex": 20, "JobModifyIndex": 20}))
        }
        ("GET", p) if p.starts_with("/v1/service/aic-serve-") => {
            // Nomad-native service registrations of a serve job's replicas: node address, port.
            let id = format!("aic-{}", p.trim_start_matches("/v1/service/aic-serve-"));
            let regs: Vec<Value> = s
                .allocs
                .get(&id)
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, n)| {
                    let ip = format!("10.0.0.{}", NODES.iter().position(|x| x.1 == n).unwrap() + 1);
                    json!({"ServiceName": p.trim_start_matches("/v1/service/"), "JobID": id, "Address": ip, "Port": 25000 + i,
                        "Namespace": "aic", "AllocID": s.alloc_of(&id, n)})
                })
                .collect();
            reply(200, json!(regs))
        }
        ("GET", p) if p.starts_with("/v1/client/allocation/") && p.ends_with("/checks") => {
            // The latest result of each Nomad service check of the allocation, keyed by check
            // id (api/allocations.go `Checks`, AllocCheckStatuses); `{}` before the first one.
            let aid = p.trim_start_matches("/v1/client/allocation/").trim_end_matches("/checks");
            let Some(job) = s.history.get(aid) else { return Ok(text(404, "alloc not found")) };
            let svc = job["TaskGroups"][0]["Services"][0]["Name"].clone();
            match s.checks.get(aid).copied().unwrap_or(Some("success")) {
                None => reply(200, json!({})),
                Some(status) => reply(
                    200,
                    json!({"9f4e18fd0867cebb": {"ID": "9f4e18fd0867cebb", "Check": "listening",
                    "Group": format!("{}.serve[0]", job["ID"].as_str().unwrap()), "Mode": "healthiness", "Service": svc,
                    "Status": status, "StatusCode": 0, "Task": "", "Timestamp": 1_700_000_000, "Output": "nomad: tcp ok"}}),
                ),
            }
        }
        ("GET", p) if p.starts_with("/v1/allocation/") => {
            // One allocation, with the job as it was when the allocation was made (an
            // allocation event carries no job: Nomad strips it, nomad/state/events.go), its
            // task's state and its reserved devices.
            let aid = p.trim_start_matches("/v1/allocation/");
            let (Some(j), Some(i)) = (s.history.get(aid), s.info.get(aid)) else {
                return Ok(text(404, "alloc not found"));
            };
            let zero = "0001-01-01T00:00:00Z".to_string();
            let node_id = NODES.iter().find(|x| x.1 == i.node).unwrap().0;
            let ids: Vec<String> = (0..i.gpus).map(|g| format!("GPU-{node_id}-{g}")).collect();
            reply(
                200,
                json!({"ID": aid, "JobID": j["ID"], "Job": j, "Namespace": "aic", "NodeName": i.node,
                    "Name": format!("{}.{}[{}]", j["ID"].as_str().unwrap(), j["TaskGroups"][0]["Name"].as_str().unwrap(), i.index),
                    "ClientStatus": i.status, "ModifyTime": i.modified_at.timestamp_nanos_opt().unwrap(),
                    "DesiredStatus": if i.stopped.is_some() { "stop" } else { "run" },
                    "DesiredDescription": i.stopped.clone().unwrap_or_default(),
                    "DesiredTransition": {"Migrate": i.stopped.is_some()},
                    "TaskStates": {"worker": {"State": if i.finished_at.is_some() { "dead" } else { "running" },
                        "StartedAt": i.started_at.to_rfc3339(),
                        "Restarts": i.earlier_starts.len(),
                        "Events": i.earlier_starts.iter().chain([&i.started_at])
                            .map(|t| json!({"Type": "Started", "Time": t.timestamp_nanos_opt().unwrap()}))
                            .collect::<Vec<_>>(),
                        "FinishedAt": i.finished_at.map(|t| t.to_rfc3339()).unwrap_or(zero)}},
                    "AllocatedResources": {"Tasks": {"worker": {"Devices": [{"Vendor": "nvidia", "Type": "gpu", "Name": i.group, "DeviceIDs": ids}]}}}}),
            )
        }
        ("PUT", p) if p.starts_with("/v1/var/") && query.keys().any(|k| k.starts_with("lock-")) => {
            let path = p.trim_start_matches("/v1/var/").to_string();
            let v: Value = serde_json::from_slice(&body).unwrap();
            let ttl: u64 = v["Lock"]["TTL"].as_str().unwrap().trim_end_matches('s').parse().unwrap();
            let now = std::time::Instant::now();
            let held = s.locks.get(&path).filter(|(_, until)| *until > now).map(|(id, _)| id.clone());
            let asked = v["Lock"]["ID"].as_str().map(String::from);
            if query.contains_key("lock-acquire") {
                if held.is_some() {
                    return Ok(text(409, "variable already locked"));
                }
                let id = format!("lock-{}", ulid::Ulid::new());
                s.locks.insert(path.clone(), (id.clone(), now + std::time::Duration::from_secs(ttl)));
                s.acquired += 1;
                reply(
                    200,
                    json!({"Namespace": "aic", "Path": path, "Items": v["Items"], "Lock": {"ID": id, "TTL": v["Lock"]["TTL"]}}),
                )
            } else if held.is_none() || held != asked {
                text(409, "lock is not held by this ID")
            } else if query.contains_key("lock-renew") {
                s.locks.insert(path.clone(), (asked.unwrap(), now + std::time::Duration::from_secs(ttl)));
                reply(200, json!({"Namespace": "aic", "Path": path, "Lock": v["Lock"]}))
            } else {
                s.locks.remove(&path);
                reply(200, json!({"Namespace": "aic", "Path": path}))
            }
        }
        // Check-and-set (`?cas=N`, command/agent/variable_endpoint.go `parseCAS`): written
        // only if the variable's ModifyIndex is N, 0 meaning "does not exist"; otherwise 409
        // with the variable that is there (`out.Conflict`). A DELETE answers 204, no body.
        ("PUT" | "DELETE", p)
            if p.starts_with("/v1/var/")
                && query.get("cas").is_some_and(|cas| {
                    let have = s.var_meta.get(p.trim_start_matches("/v1/var/")).map_or(0, |m| m.0);
                    cas.parse::<u64>().ok() != Some(have)
                }) =>
        {
            let path = p.trim_start_matches("/v1/var/");
            let (index, time) = s.var_meta.get(path).copied().unwrap_or_default();
            let items = s.vars.get(path).cloned().unwrap_or(Value::Null);
            reply(
                409,
                json!({"Namespace": "aic", "Path": path, "Items": items, "ModifyIndex": index, "ModifyTime": time}),
            )
        }
        ("PUT", p) if p.starts_with("/v1/var/") => {
            let path = p.trim_start_matches("/v1/var/").to_string();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["Path"].as_str(), Some(path.as_str()), "the body names the variable's path");
            s.index += 1;
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
            s.vars.insert(path.clone(), v["Items"].clone());
            let index = s.index;
            s.var_meta.insert(path.clone(), (index, now));
            reply(
                200,
                json!({"Namespace": "aic", "Path": path, "Items": v["Items"], "ModifyIndex": index, "ModifyTime": now}),
            )
        }
        ("GET", p) if p.starts_with("/v1/var/") => match s.vars.get(p.trim_start_matches("/v1/var/")) {
            Some(items) => {
                let path = p.trim_start_matches("/v1/var/");
                let (index, time) = s.var_meta.get(path).copied().unwrap_or_default();
                reply(
                    200,
                    json!({"Namespace": "aic", "Path": path, "Items": items, "ModifyIndex": index, "ModifyTime": time}),
                )
            }
            None => text(404, "variable not found"),
        },
        ("DELETE", p) if p.starts_with("/v1/var/") => {
            let path = p.trim_start_matches("/v1/var/");
            s.var_meta.remove(path);
            match s.vars.remove(path) {
                Some(_) => Response::builder().status(204).body(Full::new(Bytes::new())).unwrap(),
                None => text(404, "variable not found"),
            }
        }
        ("GET", "/v1/jobs") => {
            // Job stubs (`JobListStub`); with `meta=true` their meta (Nomad 1.6+).
            let prefix = query.get("prefix").cloned().unwrap_or_default();
            let with_meta = query.get("meta").map(String::as_str) == Some("true");
            let stubs: Vec<Value> = s
                .jobs
                .iter()
                .filter(|(id, _)| id.starts_with(&prefix))
                .map(|(id, j)| {
                    let running = s.allocs.get(id).is_some_and(|a| !a.is_empty());
                    // A stopped job is `dead` once none of its allocations runs any more.
                    let live = s.allocs.get(id).is_some_and(|a| {
                        a.iter().any(|aid| s.info.get(aid).is_some_and(|i| i.finished_at.is_none()))
                    });
                    let status = match (j["Stop"] == true, live, running) {
                        (true, false, _) => "dead",
                        (_, _, true) => "running",
                        _ => "pending",
                    };
                    let mut stub = json!({"ID": id, "Name": id, "Type": j["Type"], "Namespace": "aic", "Stop": j["Stop"],
                        "Status": status, "Version": j["Version"]});
                    if with_meta {
                        stub["Meta"] = j["Meta"].clone();
                    }
                    stub
                })
                .collect();
            reply(200, json!(stubs))
        }
        ("GET", "/v1/allocations") => {
            let mut out = vec![];
            if all_namespaces {
                for (n, gpus) in &s.foreign {
                    let id = NODES.iter().find(|x| x.1 == n).unwrap().0;
                    let ids: Vec<String> = (0..*gpus).map(|i| format!("GPU-{id}-{i}")).collect();
                    out.push(json!({"ID": format!("other-{n}"), "Namespace": "ml-team", "NodeID": id, "ClientStatus": "running",
                        "AllocatedResources": {"Tasks": {"trainer": {"Devices": [{"Vendor": "nvidia", "Type": "gpu", "Name": "Tesla T4", "DeviceIDs": ids}]}}}}));
                }
                // (api/allocations.go `AllocListStub.AllocatedResources`: tasks' `Memory`,
                // the group's `Shared.DiskMB`.)
                for (n, mb) in &s.foreign_memory {
                    let id = NODES.iter().find(|x| x.1 == n).unwrap().0;
                    out.push(json!({"ID": format!("other-mem-{n}"), "Namespace": "ml-team", "NodeID": id, "ClientStatus": "running",
                        "AllocatedResources": {"Tasks": {"db": {"Memory": {"MemoryMB": mb}, "Devices": []}}, "Shared": {"DiskMB": 300}}}));
                }
            }
            // Every allocation not yet garbage-collected, each with its status as its client
            // reports it and the servers' wish (nomad/structs `AllocListStub`).
            let mut ours: Vec<Value> = s.info.keys().map(|aid| s.stub(aid)).collect();
            ours.sort_by_key(|a| a["CreateIndex"].as_u64());
            out.extend(ours);
            reply(200, json!(out))
        }
        _ => text(404, "no such endpoint"),
    };
    Ok(ok)
}

pub async fn nomad() -> (Arc<Mutex<Nomad>>, String) {
    let state = Arc::new(Mutex::new(Nomad::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(serve_connection(st.clone(), s));
        }
    });
    (state, addr)
}

/// The fake's answers on one connection (plain or TLS), upgrades (exec) included.
async fn serve_connection<S>(state: Arc<Mutex<Nomad>>, s: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |r| handle(state.clone(), r));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
        .with_upgrades()
        .await;
}

/// A private CA, a server certificate for `server.global.nomad` and a client certificate it
/// signed (openssl), as a TLS-enabled Nomad cluster has them; their PEM files in `dir`.
pub fn nomad_certs(dir: &std::path::Path) {
    let sh = |script: &str| {
        let ok = std::process::Command::new("sh").arg("-ec").arg(script).current_dir(dir).output().unwrap();
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=nomad-ca 2>/dev/null
        printf 'subjectAltName=DNS:server.global.nomad\nextendedKeyUsage=serverAuth\n' > server.ext
        printf 'extendedKeyUsage=clientAuth\n' > client.ext
        for who in server client; do
          openssl req -new -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj /CN=$who.global.nomad 2>/dev/null
          openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 1 -extfile $who.ext 2>/dev/null
        done");
}

/// The fake Nomad over TLS (`nomad_certs` in `dir`), requiring a client certificate its CA
/// signed (`verify_https_client`); its address `https://127.0.0.1:<port>`.
pub async fn nomad_tls(dir: &std::path::Path) -> (Arc<Mutex<Nomad>>, String) {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&read("ca.pem")) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let chain: Vec<_> =
        rustls::pki_types::CertificateDer::pem_slice_iter(&read("server.pem")).map(|c| c.unwrap()).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&read("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let state = Arc::new(Mutex::new(Nomad::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("https://{}", listener.local_addr().unwrap());
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let (st, acceptor) = (st.clone(), acceptor.clone());
            tokio::spawn(async move {
                // A client without the CA's certificate gets no further than the handshake.
                if let Ok(tls) = acceptor.accept(s).await {
                    serve_connection(st, tls).await;
                }
            });
        }
    });
    (state, addr)
}

pub fn cfg(addr: &str, token: &str) -> NomadConfig {
    let mut c = NomadConfig::new(addr);
    c.token = Some(token.into());
    c.namespace = Some("aic".into());
    c.datacenter = "test_gateway".into();
    c.driver = "exec".into();
    c.worker = "aic-worker".into();
    c.cpu_mhz = 1000;
    c.memory_mb = 2048;
    c.secrets_var = None;
    c
}

pub fn manifest(miners: u32, gpus: u32) -> (JobKey, JobManifest) {
    manifest_of("train", miners, gpus)
}

pub fn manifest_of(kind: &str, miners: u32, gpus: u32) -> (JobKey, JobManifest) {
    let now = chrono::Utc::now();
    let m: JobManifest = serde_json::from_value(json!({
        "version": 1,
        "request": {"version": 1, "kind": kind, "owner": "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
            "job_id": JobId::generate(), "entrypoint": "train.py", "miners": miners, "gpus_per_miner": gpus,
            "max_hours": 1.0, "created_at": now, "expires_at": now + chrono::Duration::hours(1)},
        "quote": {"gpu_hours": 1.0, "price_per_gpu_hour": "0", "total": "0"},
        "validated_at": now,
    }))
    .unwrap();
    (JobKey::new(m.request.owner, m.request.job_id.clone()), m)
}

/// The fake's id of the allocation of Nomad job `id` (as registered: `job`) on `node`.
pub fn alloc_id(id: &str, node: &str, job: &Value) -> String {
    format!("{id}-{node}-c{}-v{}", job["CreateIndex"], job["Version"])
}

/// An allocation event as Nomad's stream sends it (`Payload.Allocation`) for job `job`'s
/// allocation on `node` now: the allocation without its job, so without the job's version
/// (nomad/state/events.go sets `Job` to nil).
pub fn lost(s: &Nomad, job: &JobKey, node: &str) -> Value {
    json!({"ID": s.alloc_of(&nomad_id(job), node), "JobID": nomad_id(job), "Name": format!("{}.train[1]", nomad_id(job)),
        "NodeName": node, "ClientStatus": "lost", "ClientDescription": "node is down", "Namespace": "aic"})
}

/// Job `job`'s allocation on `node` is lost (its client reports it so) and the event the
/// stream sends of it.
pub fn lose(state: &Mutex<Nomad>, job: &JobKey, node: &str) -> Value {
    let mut s = state.lock().unwrap();
    let aid = s.alloc_of(&nomad_id(job), node);
    s.ended(&aid, "lost");
    lost(&s, job, node)
}

pub async fn running_job(store: &aic_core::Store, m: &JobManifest) -> JobKey {
    use aic_schemas::JobState::{Paid, Running, Scheduled, Submitted};
    recorded(store, m, &[Submitted, Paid, Scheduled, Running]).await
}

/// Job `m` as validate and dispatch leave it in `store`: its manifest, and its status moved
/// through `states`.
pub async fn recorded(store: &aic_core::Store, m: &JobManifest, states: &[aic_schemas::JobState]) -> JobKey {
    let job = JobKey::new(m.request.owner, m.request.job_id.clone());
    store.create_json(&job.manifest(), m).await.unwrap();
    for st in states {
        aic_core::status::advance(store, &job, aic_core::status::Transition::new(*st, "test")).await.unwrap();
    }
    job
}

/// A local store in a folder that outlives the test (for schedulers whose store a test does
/// not look at).
pub fn temp_store() -> aic_core::Store {
    let dir = tempfile::tempdir().unwrap().keep();
    aic_core::StoreConfig::Local { root: dir }.open().unwrap()
}
