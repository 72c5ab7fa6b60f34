//! The Nomad backend against a server that speaks Nomad's HTTP API as its documentation
//! says (paths, `X-Nomad-Token`, `?namespace=`, `EnforceIndex` registration, blocking
//! evaluation reads, `FailedTGAllocs`, 403/404/500 answers). Nomad itself cannot run on this
//! machine; `nomad_live.rs` runs against a real cluster where `NOMAD_ADDR` is set.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use aic_core::layout::JobKey;
use aic_core::scheduler::nomad::{NomadConfig, NomadScheduler, nomad_id};
use aic_core::scheduler::{ScheduleError, Scheduler, Submitted};
use aic_schemas::{JobId, JobManifest};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{Value, json};

const TOKEN: &str = "s3cr3t-token";

/// Three ready nodes with 2 GPUs each in `test_gateway` (one ineligible), one in `other`.
#[derive(Default)]
struct Nomad {
    jobs: BTreeMap<String, Value>,
    /// node name → GPUs in use
    busy: BTreeMap<String, u32>,
    allocs: BTreeMap<String, Vec<String>>,
    evals: BTreeMap<String, (u32, Value)>,
    seen: Vec<(String, String, Option<String>)>,
    /// NDJSON lines the event stream sends (then it closes).
    stream: Vec<String>,
    stream_queries: Vec<BTreeMap<String, String>>,
}

const NODES: [(&str, &str, &str, u32, bool); 4] = [
    ("n1", "node-a", "test_gateway", 2, true),
    ("n2", "node-b", "test_gateway", 2, true),
    ("n3", "node-c", "test_gateway", 2, false),
    ("n4", "node-d", "other", 8, true),
];

fn reply(code: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder().status(code).body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

fn text(code: u16, body: &str) -> Response<Full<Bytes>> {
    Response::builder().status(code).body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

async fn handle(
    state: Arc<Mutex<Nomad>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let token = req.headers().get("x-nomad-token").map(|v| v.to_str().unwrap().to_string());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if path == "/v1/event/stream" && token.as_deref() == Some(TOKEN) {
        assert_eq!(query.get("topic").map(String::as_str), Some("Allocation:*"));
        let lines = {
            let mut s = state.lock().unwrap();
            s.stream_queries.push(query.clone());
            std::mem::take(&mut s.stream)
        };
        if lines.is_empty() {
            // Nothing more: hold the connection like a quiet stream.
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            return Ok(text(200, "{}\n"));
        }
        return Ok(text(200, &(lines.join("\n") + "\n")));
    }
    let mut s = state.lock().unwrap();
    s.seen.push((method.clone(), path.clone(), token.clone()));
    if token.as_deref() != Some(TOKEN) {
        return Ok(text(403, "Permission denied"));
    }
    if query.get("namespace").map(String::as_str) != Some("aic") {
        return Ok(text(400, "expected namespace=aic"));
    }
    let ok = match (method.as_str(), path.as_str()) {
        ("GET", "/v1/nodes") => {
            assert_eq!(query.get("resources").map(String::as_str), Some("true"));
            let nodes: Vec<Value> = NODES
                .iter()
                .map(|(id, name, dc, gpus, eligible)| {
                    let inst: Vec<Value> = (0..*gpus).map(|i| json!({"ID": format!("GPU-{id}-{i}"), "Healthy": true})).collect();
                    json!({"ID": id, "Name": name, "Datacenter": dc, "Status": "ready",
                        "SchedulingEligibility": if *eligible { "eligible" } else { "ineligible" },
                        "NodeResources": {"Devices": [{"Vendor": "nvidia", "Type": "gpu", "Name": "Tesla T4", "Instances": inst}]}})
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
            if v["EnforceIndex"] == true && v["JobModifyIndex"] == 0 && s.jobs.contains_key(&id) {
                return Ok(text(500, "Enforcing job modify index 0: job already exists"));
            }
            let version = s.jobs.get(&id).map(|j| j["Version"].as_u64().unwrap() + 1).unwrap_or(0);
            if let Some(old) = s.allocs.remove(&id) {
                for n in old {
                    *s.busy.get_mut(&n).unwrap() -=
                        job["TaskGroups"][0]["Tasks"][0]["Resources"]["Devices"][0]["Count"].as_u64().unwrap() as u32;
                }
            }
            let count = job["TaskGroups"][0]["Count"].as_u64().unwrap() as u32;
            let gpus = job["TaskGroups"][0]["Tasks"][0]["Resources"]["Devices"][0]["Count"].as_u64().unwrap() as u32;
            let dc = job["Datacenters"][0].as_str().unwrap();
            // Place one allocation per free node, as the scheduler would.
            let free: Vec<String> = NODES
                .iter()
                .filter(|n| n.2 == dc && n.4 && n.3 - s.busy.get(n.1).copied().unwrap_or(0) >= gpus)
                .map(|n| n.1.to_string())
                .collect();
            let eval_id = format!("eval-{}", s.evals.len() + 1);
            let eval = if free.len() as u32 >= count {
                let placed: Vec<String> = free.into_iter().take(count as usize).collect();
                for n in &placed {
                    *s.busy.entry(n.clone()).or_default() += gpus;
                }
                s.allocs.insert(id.clone(), placed);
                json!({"ID": eval_id, "Status": "complete"})
            } else {
                json!({"ID": eval_id, "Status": "complete", "BlockedEval": "eval-blocked",
                    "FailedTGAllocs": {"train": {"NodesEvaluated": 3, "NodesFiltered": 1, "NodesExhausted": 2,
                        "ConstraintFiltered": {"${node.eligibility}": 1},
                        "DimensionExhausted": {"devices: nvidia/gpu": 2}, "CoalescedFailures": count - 1}}})
            };
            s.evals.insert(eval_id.clone(), (0, eval));
            let mut stored = v["Job"].clone();
            stored["Version"] = json!(version);
            stored["Stop"] = json!(false);
            s.jobs.insert(id, stored);
            reply(200, json!({"EvalID": eval_id, "EvalCreateIndex": 10, "JobModifyIndex": 10, "Warnings": ""}))
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
            let id = p.trim_start_matches("/v1/job/").trim_end_matches("/allocations");
            let allocs: Vec<Value> = s
                .allocs
                .get(id)
                .into_iter()
                .flatten()
                .map(|n| json!({"ID": format!("{id}-{n}"), "NodeName": n, "ClientStatus": "running", "DesiredStatus": "run"}))
                .collect();
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
            if s.jobs.remove(&id).is_none() {
                return Ok(text(404, "job not found"));
            }
            s.allocs.remove(&id);
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
                    json!({"ServiceName": p.trim_start_matches("/v1/service/"), "JobID": id, "Address": ip, "Port": 25000 + i, "Namespace": "aic"})
                })
                .collect();
            reply(200, json!(regs))
        }
        ("GET", "/v1/allocations") => {
            let mut out = vec![];
            for (job, nodes) in &s.allocs {
                for n in nodes {
                    let id = NODES.iter().find(|x| x.1 == n).unwrap().0;
                    out.push(json!({"ID": format!("{job}-{n}"), "NodeID": id, "ClientStatus": "running",
                        "AllocatedResources": {"Tasks": {"worker": {"Devices": [{"Vendor": "nvidia", "Type": "gpu", "Name": "Tesla T4", "DeviceIDs": ["GPU-x", "GPU-y"]}]}}}}));
                }
            }
            reply(200, json!(out))
        }
        _ => text(404, "no such endpoint"),
    };
    Ok(ok)
}

async fn nomad() -> (Arc<Mutex<Nomad>>, String) {
    let state = Arc::new(Mutex::new(Nomad::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let st = st.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |r| handle(st.clone(), r));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (state, addr)
}

fn cfg(addr: &str, token: &str) -> NomadConfig {
    NomadConfig {
        addr: addr.into(),
        token: Some(token.into()),
        region: None,
        namespace: Some("aic".into()),
        datacenter: "test_gateway".into(),
        driver: "exec".into(),
        worker: "aic-worker".into(),
        cpu_mhz: 1000,
        memory_mb: 2048,
        worker_env: vec![],
        secrets_var: None,
        worker_gateway: None,
    }
}

fn manifest(miners: u32, gpus: u32) -> (JobKey, JobManifest) {
    manifest_of("train", miners, gpus)
}

fn manifest_of(kind: &str, miners: u32, gpus: u32) -> (JobKey, JobManifest) {
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

#[tokio::test]
async fn jobs_are_registered_once_placed_queued_or_refused_with_reasons_and_cancelled() {
    let (state, addr) = nomad().await;
    let n = NomadScheduler::new(cfg(&addr, TOKEN));

    // 2 miners × 2 GPUs: placed on the two eligible nodes.
    let (job, m) = manifest(2, 2);
    let placed = n.submit(&job, &m).await.unwrap();
    assert_eq!(placed, Submitted::Placed(vec!["node-a".into(), "node-b".into()]));
    {
        let s = state.lock().unwrap();
        let calls: Vec<(&str, &str)> = s.seen.iter().map(|(m, p, _)| (m.as_str(), p.as_str())).collect();
        assert_eq!(calls[..2], [("GET", "/v1/nodes"), ("POST", "/v1/jobs")]);
        assert!(s.seen.iter().all(|(_, _, t)| t.as_deref() == Some(TOKEN)), "every call carries X-Nomad-Token");
        assert!(s.jobs.contains_key(&nomad_id(&job)));
    }
    // The same event again: no second registration, the same answer.
    assert_eq!(n.submit(&job, &m).await.unwrap(), placed);
    assert_eq!(state.lock().unwrap().jobs.len(), 1);

    // Fits the pool, but the GPUs are taken: queued, with Nomad's reasons in words.
    let (job2, m2) = manifest(1, 2);
    match n.submit(&job2, &m2).await.unwrap() {
        Submitted::Queued(why) => assert_eq!(
            why,
            "no node with 2 free nvidia/gpu in gateway test_gateway (3 nodes evaluated: 2 out of devices: nvidia/gpu, 1 filtered by ${node.eligibility})"
        ),
        other => panic!("{other:?}"),
    }

    // More miners than the gateway has eligible nodes with that many GPUs: never placeable.
    let (job3, m3) = manifest(3, 2);
    match n.submit(&job3, &m3).await {
        Err(ScheduleError::Unplaceable(why)) => {
            assert_eq!(
                why,
                "needs 3 miners with 2 nvidia/gpu each; gateway test_gateway has 2 ready nodes, 2 with that many GPUs"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!state.lock().unwrap().jobs.contains_key(&nomad_id(&job3)), "nothing registered for it");

    // The pool as users see it.
    let pool = n.pool().await.unwrap();
    let tg = pool.iter().find(|g| g.name == "test_gateway").unwrap();
    assert_eq!(
        tg.miners.iter().map(|m| (m.name.as_str(), m.gpus, m.free_gpus)).collect::<Vec<_>>(),
        [("node-a", 2, 0), ("node-b", 2, 0)]
    );
    assert_eq!(pool.iter().find(|g| g.name == "other").unwrap().miners[0].free_gpus, 8);

    // Cancel deregisters; cancelling again (or an unknown job) is fine.
    n.cancel(&job).await.unwrap();
    assert!(!state.lock().unwrap().jobs.contains_key(&nomad_id(&job)));
    n.cancel(&job).await.unwrap();
    assert!(
        state.lock().unwrap().seen.iter().any(|(m, p, _)| m == "DELETE" && *p == format!("/v1/job/{}", nomad_id(&job)))
    );
}

#[tokio::test]
async fn a_bad_token_and_an_unreachable_cluster_say_what_to_fix() {
    let (_state, addr) = nomad().await;
    let (job, m) = manifest(1, 1);
    let err = NomadScheduler::new(cfg(&addr, "wrong")).submit(&job, &m).await.unwrap_err().to_string();
    assert!(err.contains("403") && err.contains("NOMAD_TOKEN"), "{err}");
    let err = NomadScheduler::new(cfg("http://127.0.0.1:1", TOKEN)).submit(&job, &m).await.unwrap_err().to_string();
    assert!(err.contains("cannot reach Nomad at http://127.0.0.1:1"), "{err}");
}

fn lost(job: &JobKey, version: u64, node: &str) -> Value {
    json!({"ID": "alloc-1", "JobID": nomad_id(job), "Name": format!("{}.train[1]", nomad_id(job)), "NodeName": node,
        "ClientStatus": "lost", "ClientDescription": "node is down", "JobVersion": version, "Namespace": "aic"})
}

async fn running_job(store: &aic_core::Store, m: &JobManifest) -> JobKey {
    use aic_core::status::{Transition, advance};
    use aic_schemas::JobState;
    let job = JobKey::new(m.request.owner, m.request.job_id.clone());
    store.create_json(&job.manifest(), m).await.unwrap();
    for st in [JobState::Submitted, JobState::Paid, JobState::Scheduled, JobState::Running] {
        advance(store, &job, Transition::new(st, "test")).await.unwrap();
    }
    job
}

type Setup = (tempfile::TempDir, aic_core::Store, Arc<Mutex<Nomad>>, NomadScheduler, JobKey);

/// A local store, the Nomad-speaking server, and a job of `miners` × 1 GPU registered on it
/// and running.
async fn submitted_and_running(miners: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    let n = NomadScheduler::new(cfg(&addr, TOKEN));
    let (_, m) = manifest(miners, 1);
    let job = running_job(&store, &m).await;
    n.submit(&job, &m).await.unwrap();
    (dir, store, state, n, job)
}

#[tokio::test]
async fn a_lost_allocation_restarts_the_whole_job_with_the_next_attempt_until_retries_run_out() {
    use aic_core::scheduler::nomad::{AllocAction, MAX_RETRIES};
    use aic_core::status;
    use aic_schemas::JobState;
    let (_dir, store, state, n, job) = submitted_and_running(2).await;

    // A running allocation's update: nothing to do.
    let mut ok = lost(&job, 0, "node-b");
    ok["ClientStatus"] = json!("running");
    assert_eq!(n.on_alloc(&store, &ok).await.unwrap(), AllocAction::Nothing);
    // node-b is lost: the job is registered again with attempt 1, and says why.
    assert_eq!(n.on_alloc(&store, &lost(&job, 0, "node-b")).await.unwrap(), AllocAction::Restarted(1));
    let st = status::current(&store, &job).await.unwrap().unwrap();
    assert_eq!(st.state, JobState::Retrying);
    assert_eq!(
        st.reason.as_deref(),
        Some("allocation 1 on node-b was lost (node is down); starting again from the last checkpoint (retry 1 of 2)")
    );
    {
        let s = state.lock().unwrap();
        let j = &s.jobs[&nomad_id(&job)];
        assert_eq!((j["Version"].as_u64(), j["Meta"]["aic_attempt"].as_str()), (Some(1), Some("1")));
    }
    // The other allocation of the replaced version reports lost too: it changes nothing.
    assert_eq!(n.on_alloc(&store, &lost(&job, 0, "node-a")).await.unwrap(), AllocAction::Nothing);
    // The worker of the new attempt runs; lost again, and again: retries run out.
    status::advance(&store, &job, aic_core::status::Transition::new(JobState::Running, "worker")).await.unwrap();
    assert_eq!(n.on_alloc(&store, &lost(&job, 1, "node-a")).await.unwrap(), AllocAction::Restarted(2));
    status::advance(&store, &job, aic_core::status::Transition::new(JobState::Running, "worker")).await.unwrap();
    match n.on_alloc(&store, &lost(&job, 2, "node-a")).await.unwrap() {
        AllocAction::Failed(why) => assert!(why.ends_with(&format!("no retries left ({MAX_RETRIES} used)")), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(status::current(&store, &job).await.unwrap().unwrap().state, JobState::Failed);
    assert!(!state.lock().unwrap().jobs.contains_key(&nomad_id(&job)), "deregistered");
}

#[tokio::test]
async fn a_lost_replica_of_a_deployment_is_left_to_nomads_reschedule() {
    use aic_core::scheduler::nomad::AllocAction;
    use aic_schemas::JobState;
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    let n = NomadScheduler::new(cfg(&addr, TOKEN));
    let (_, m) = manifest_of("serve", 2, 1);
    let job = running_job(&store, &m).await;
    n.submit(&job, &m).await.unwrap();
    assert_eq!(n.on_alloc(&store, &lost(&job, 0, "node-b")).await.unwrap(), AllocAction::Nothing);
    let st = aic_core::status::current(&store, &job).await.unwrap().unwrap();
    assert_eq!(st.state, JobState::Running, "the deployment keeps running");
    let s = state.lock().unwrap();
    assert_eq!(s.jobs[&nomad_id(&job)]["Version"].as_u64(), Some(0), "not registered again");
}

#[tokio::test]
async fn serving_endpoints_are_where_nomad_placed_the_deployments_service() {
    let (state, addr) = nomad().await;
    let n = NomadScheduler::new(cfg(&addr, TOKEN));
    let (job, m) = manifest_of("serve", 2, 1);
    n.submit(&job, &m).await.unwrap();
    let eps = n.endpoints(job.job.as_str()).await.unwrap().unwrap();
    assert_eq!(eps, [("10.0.0.1".to_string(), 25000), ("10.0.0.2".to_string(), 25001)]);
    assert!(
        state
            .lock()
            .unwrap()
            .seen
            .iter()
            .any(|(m, p, _)| m == "GET" && *p == format!("/v1/service/aic-serve-{}", job.job))
    );
    // Another deployment has none; a made-up id asks Nomad nothing.
    let (other, _) = manifest_of("serve", 1, 1);
    assert_eq!(n.endpoints(other.job.as_str()).await.unwrap(), Some(vec![]));
    let before = state.lock().unwrap().seen.len();
    assert_eq!(n.endpoints("../../v1/acl/tokens").await.unwrap(), Some(vec![]));
    assert_eq!(state.lock().unwrap().seen.len(), before);
}

#[tokio::test]
async fn a_failure_the_worker_recorded_stops_the_other_allocations() {
    use aic_core::scheduler::nomad::AllocAction;
    use aic_core::status::{Transition, advance};
    use aic_schemas::JobState;
    let (_dir, store, state, n, job) = submitted_and_running(2).await;
    advance(&store, &job, Transition::new(JobState::Failed, "worker").reason("exit code 1")).await.unwrap();
    let mut failed = lost(&job, 0, "node-a");
    failed["ClientStatus"] = json!("failed");
    assert_eq!(n.on_alloc(&store, &failed).await.unwrap(), AllocAction::Stopped);
    assert!(!state.lock().unwrap().jobs.contains_key(&nomad_id(&job)));
}

#[tokio::test]
async fn the_watcher_follows_the_event_stream_and_resumes_from_its_index() {
    use aic_schemas::JobState;
    let (_dir, store, state, n, job) = submitted_and_running(1).await;
    let ev = json!({"Index": 42, "Events": [{"Topic": "Allocation", "Type": "AllocationUpdated", "Key": "alloc-1",
        "Namespace": "aic", "Index": 42, "Payload": {"Allocation": lost(&job, 0, "node-a")}}]});
    state.lock().unwrap().stream = vec!["{}".into(), ev.to_string(), "{}".into()];
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let w = {
        let n = n.clone();
        let store = store.clone();
        tokio::spawn(async move {
            n.watch(store, async {
                let _ = rx.await;
            })
            .await
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while aic_core::status::current(&store, &job).await.unwrap().unwrap().state != JobState::Retrying {
        assert!(std::time::Instant::now() < deadline, "the watcher never acted on the event");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // After the stream closed, it reconnects from the last index it saw.
    while state.lock().unwrap().stream_queries.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let qs = state.lock().unwrap().stream_queries.clone();
    assert_eq!((qs[0]["index"].as_str(), qs[1]["index"].as_str()), ("0", "42"));
    tx.send(()).unwrap();
    w.await.unwrap();
}
