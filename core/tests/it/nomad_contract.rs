//! The Nomad backend against a server that speaks Nomad's HTTP API as its documentation
//! says (paths, `X-Nomad-Token`, `?namespace=`, `EnforceIndex` registration, blocking
//! evaluation reads, `FailedTGAllocs`, 403/404/500 answers). Nomad itself cannot run on this
//! machine; `nomad_live.rs` runs against a real cluster where `NOMAD_ADDR` is set.

use std::sync::{Arc, Mutex};

use aic_core::layout::JobKey;
use aic_core::scheduler::nomad::{NomadScheduler, nomad_id};
use aic_core::scheduler::{ScheduleError, Scheduler, Submitted};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn jobs_are_registered_once_placed_queued_or_refused_with_reasons_and_cancelled() {
    let (state, addr) = nomad().await;
    let n = NomadScheduler::new(cfg(&addr, TOKEN), temp_store());

    // 2 miners × 2 GPUs: placed on the two eligible nodes.
    let (job, m) = manifest(2, 2);
    let placed = n.submit(&job, &m).await.unwrap();
    assert_eq!(placed, Submitted::Placed(vec!["node-a".into(), "node-b".into()]));
    {
        let s = state.lock().unwrap();
        let calls: Vec<(&str, &str)> = s.seen.iter().map(|(m, p, _)| (m.as_str(), p.as_str())).collect();
        assert_eq!(calls[0], ("GET", "/v1/nodes"));
        assert_eq!(calls.iter().filter(|c| **c == ("POST", "/v1/jobs")).count(), 1);
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
            "no node with 2 free nvidia/gpu in gateway test_gateway (3 nodes evaluated: 2 without 2 free nvidia/gpu, 1 filtered by ${node.eligibility})"
        ),
        other => panic!("{other:?}"),
    }
    // The operator's figures (`aic_jobs`): one running, one registered and waiting for GPUs
    // (Nomad's job stubs: `Status` `running` or `pending`, structs.JobStatus*).
    let figures =
        || async { n.jobs_by_state().await.unwrap().into_iter().collect::<std::collections::BTreeMap<_, _>>() };
    assert_eq!(figures().await, [("queued".to_string(), 1), ("running".to_string(), 1)].into());

    // More miners than the gateway has eligible nodes with that many GPUs: never placeable.
    let (job3, m3) = manifest(3, 2);
    match n.submit(&job3, &m3).await {
        Err(ScheduleError::Unplaceable(why)) => {
            assert_eq!(
                why,
                "needs 3 miners with 2 nvidia/gpu, 4096 MiB of memory and 10240 MiB of disk each; gateway test_gateway has 2 ready nodes, 2 that could hold one"
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
    assert!(state.lock().unwrap().is_stopped(&nomad_id(&job)));
    assert_eq!(figures().await["running"], 0, "a stopped job runs no more");
    n.cancel(&job).await.unwrap();
    assert!(
        state.lock().unwrap().seen.iter().any(|(m, p, _)| m == "DELETE" && *p == format!("/v1/job/{}", nomad_id(&job)))
    );
}

/// A job in a user's own image (`--image`), on a pool whose operator allows it: registered with
/// the docker driver's config as the driver reads it (drivers/docker/config.go: `image`,
/// `command`, and a `mount` block of `type`, `source`, `target`, `readonly`; a bind of a host
/// folder needs the plugin's `volumes { enabled = true }`): the image, the pool's worker from
/// the client's folder bound in read-only and run from there, the image named to the worker.
/// A pool without the worker's folder runs no images at all.
#[tokio::test]
async fn a_job_in_its_own_image_runs_the_pools_worker_bound_in_read_only() {
    let (state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    c.driver = "docker".into();
    c.images = vec!["ghcr.io/me/*".into()];
    assert!(NomadScheduler::new(c.clone(), temp_store()).images().is_empty(), "no worker folder: no images");
    c.worker_mount = Some("/opt/aic-worker".into());
    let n = NomadScheduler::new(c, temp_store());
    assert_eq!(n.images(), ["ghcr.io/me/*"]);
    let (job, mut m) = manifest(1, 1);
    m.request.image = Some("ghcr.io/me/train:1.0".into());
    n.submit(&job, &m).await.unwrap();
    let spec = state.lock().unwrap().jobs[&nomad_id(&job)].clone();
    let task = &spec["TaskGroups"][0]["Tasks"][0];
    assert_eq!(task["Driver"], "docker");
    let config = task["Config"].as_object().unwrap();
    assert_eq!(config["image"], "ghcr.io/me/train:1.0");
    assert_eq!(config["command"], "/opt/aic/aic-worker");
    let mounts = config["mount"].as_array().unwrap();
    assert_eq!(mounts.len(), 1);
    let mount = mounts[0].as_object().unwrap();
    let known = ["type", "target", "source", "readonly", "bind_options", "volume_options", "tmpfs_options"];
    assert!(mount.keys().all(|k| known.contains(&k.as_str())), "a key the docker driver does not read: {mount:?}");
    assert_eq!((mount["type"].as_str(), mount["readonly"].as_bool()), (Some("bind"), Some(true)));
    assert_eq!((mount["source"].as_str(), mount["target"].as_str()), (Some("/opt/aic-worker"), Some("/opt/aic")));
    assert!(
        config["command"].as_str().unwrap().starts_with(mount["target"].as_str().unwrap()),
        "the worker runs from the mount"
    );
    assert_eq!(task["Env"]["AIC_IMAGE"], "ghcr.io/me/train:1.0");
}

/// A user's image being pulled: the docker driver's task events (type `Driver`,
/// `structs.TaskDriverMessage`: "Downloading image" from `drivers/docker/driver.go`
/// `pullImage`, "Docker image pull progress: …" every 2 minutes from
/// `drivers/docker/progress.go` through the coordinator's `handleSlowPullProgressReport`,
/// `Driver Failure` with the pull's error) reach the allocation's log through the event
/// stream, each once, before the worker's own chunks, which take the numbers after them.
#[tokio::test]
async fn an_images_pull_is_a_phase_of_the_jobs_log_with_its_progress() {
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    (c.driver, c.images, c.worker_mount) = ("docker".into(), vec!["ghcr.io/me/*".into()], Some("/opt/w".into()));
    let n = NomadScheduler::new(c, store.clone());
    let (_, mut m) = manifest(2, 1);
    m.request.image = Some("ghcr.io/me/train:1.0".into());
    let job = running_job(&store, &m).await;
    n.submit(&job, &m).await.unwrap();
    let t0: i64 = 1_700_000_000_000_000_000;
    let ev = |t: i64, ty: &str, k: &str, msg: &str| json!({"Type": ty, "Time": t0 + t, k: msg});
    let pending = |events: Vec<serde_json::Value>| {
        let mut a = lost(&state.lock().unwrap(), &job, "node-b");
        a["ClientStatus"] = json!("pending");
        a["TaskStates"] = json!({"worker": {"State": "pending", "Events": events}});
        a
    };
    let pulling = vec![
        ev(1, "Received", "DisplayMessage", "Task received by client"),
        ev(2, "Task Setup", "Message", "Building Task Directory"),
        ev(3, "Driver", "DriverMessage", "Downloading image"),
    ];
    let progress = "Pulled 2/5 (310.5MiB/1.2GiB) layers: 1 waiting/2 pulling - est 301.2s remaining";
    let mut later = pulling.clone();
    later.push(ev(4, "Driver", "DriverMessage", &format!("Docker image pull progress: {progress}")));
    let mut failed = later.clone();
    failed.push(ev(5, "Driver Failure", "DriverError", "Failed to pull `ghcr.io/me/train:1.0`: manifest unknown"));
    // Nomad sends every update of the allocation with all its events so far.
    let frames: Vec<String> = [pulling.clone(), pulling, later.clone(), later, failed]
        .into_iter()
        .enumerate()
        .map(|(i, evs)| {
            json!({"Index": 50 + i, "Events": [{"Topic": "Allocation", "Type": "AllocationUpdated",
                "Key": "a", "Namespace": "aic", "Index": 50 + i, "Payload": {"Allocation": pending(evs)}}]})
            .to_string()
        })
        .collect();
    state.lock().unwrap().stream = frames;
    let (tx, w) = watching(&n, &store);
    let chunk = |i: u64| {
        let (store, job) = (store.clone(), job.clone());
        async move {
            store
                .get_limited(&job.log_chunk(1, i), 1 << 20)
                .await
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).to_string())
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while chunk(2).await.is_none() {
        assert!(std::time::Instant::now() < deadline, "the pull never reached the log: {:?}", chunk(0).await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tx.send(()).unwrap();
    w.await.unwrap();
    assert_eq!(chunk(0).await.unwrap(), "[aic] pulling image ghcr.io/me/train:1.0\n");
    assert_eq!(chunk(1).await.unwrap(), format!("[aic] pulling image: {progress}\n"));
    assert_eq!(
        chunk(2).await.unwrap(),
        "[aic] the image could not be pulled: Failed to pull `ghcr.io/me/train:1.0`: manifest unknown\n"
    );
    assert_eq!(chunk(3).await, None, "an event reported twice");
    // The other allocation's log has none of it.
    assert!(store.get_limited(&job.log_chunk(0, 0), 1 << 20).await.unwrap().is_none());
}

/// A second owner's job under the same id (ids are unique per owner; Nomad's `aic-<id>` is
/// not): its cancel leaves the first owner's Nomad job registered and sends no DELETE, and it
/// is never registered over the first's.
#[tokio::test]
async fn another_owners_job_under_the_same_id_neither_stops_nor_replaces_the_first() {
    let (state, addr) = nomad().await;
    let n = NomadScheduler::new(cfg(&addr, TOKEN), temp_store());
    let (job, m) = manifest(1, 1);
    n.submit(&job, &m).await.unwrap();
    let mut theirs = m.clone();
    theirs.request.owner = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc".parse().unwrap();
    let twin = JobKey::new(theirs.request.owner, job.job.clone());

    n.cancel(&twin).await.unwrap();
    let deleted = |s: &Nomad| s.seen.iter().any(|(m, p, _)| m == "DELETE" && p.ends_with(&nomad_id(&job)));
    {
        let s = state.lock().unwrap();
        assert!(!s.is_stopped(&nomad_id(&job)), "the first owner's job was stopped");
        assert!(!deleted(&s), "a DELETE of the first owner's job was sent");
    }
    match n.submit(&twin, &theirs).await {
        Err(ScheduleError::Unplaceable(why)) => assert!(why.contains("another owner's"), "{why}"),
        other => panic!("{other:?}"),
    }
    let registered = state.lock().unwrap().jobs[&nomad_id(&job)]["Meta"]["aic_owner"].clone();
    assert_eq!(registered, job.owner.to_string());
    n.cancel(&job).await.unwrap();
    assert!(state.lock().unwrap().is_stopped(&nomad_id(&job)), "its owner's cancel stops it");
}

#[tokio::test]
async fn a_bad_token_and_an_unreachable_cluster_say_what_to_fix() {
    let (_state, addr) = nomad().await;
    let (job, m) = manifest(1, 1);
    let err = NomadScheduler::new(cfg(&addr, "wrong"), temp_store()).submit(&job, &m).await.unwrap_err().to_string();
    assert!(err.contains("403") && err.contains("NOMAD_TOKEN"), "{err}");
    let err = NomadScheduler::new(cfg("http://127.0.0.1:1", TOKEN), temp_store())
        .submit(&job, &m)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach Nomad at http://127.0.0.1:1"), "{err}");
}

/// The watcher of `n` running in the background; send on the answer's first to stop it.
fn watching(
    n: &NomadScheduler,
    store: &aic_core::Store,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (n, store) = (n.clone(), store.clone());
    let w = tokio::spawn(async move {
        n.watch(store, async {
            let _ = rx.await;
        })
        .await
    });
    (tx, w)
}

type Setup = (tempfile::TempDir, aic_core::Store, Arc<Mutex<Nomad>>, NomadScheduler, JobKey);

/// A local store, the Nomad-speaking server, and a job of `miners` × 1 GPU registered on it
/// and running.
async fn submitted_and_running(miners: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    let n = NomadScheduler::new(cfg(&addr, TOKEN), store.clone());
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
    let (mut ok, stale) = {
        let s = state.lock().unwrap();
        (lost(&s, &job, "node-b"), lost(&s, &job, "node-a"))
    };
    ok["ClientStatus"] = json!("running");
    assert_eq!(n.on_alloc(&store, &ok).await.unwrap(), AllocAction::Nothing);
    // node-b is lost: every rank stops and the job is registered anew, whole, with attempt 1,
    // and the status says why.
    let ev = lose(&state, &job, "node-b");
    assert_eq!(n.on_alloc(&store, &ev).await.unwrap(), AllocAction::Restarted(1));
    let st = status::current(&store, &job).await.unwrap().unwrap();
    assert_eq!(st.state, JobState::Retrying);
    assert_eq!(
        st.reason.as_deref(),
        Some("allocation 1 on node-b was lost (node is down); starting again from the last checkpoint (retry 1 of 2)")
    );
    {
        // Placed whole at once: the old rank on node-a runs on until its client has killed it
        // (its kill timeout), beside the new one (node-a has a GPU for each). Its worker,
        // stopped, says nothing of how the job ended (`worker/src/main.rs`; the embedded
        // pool's `a_rank_stopped_for_a_restart_does_not_end_the_job`).
        let s = state.lock().unwrap();
        assert_eq!(s.purged, [nomad_id(&job)]);
        assert_eq!(s.stopping(), [s.history.keys().find(|a| a.contains("node-a-c")).unwrap().clone()]);
        assert_eq!(s.jobs[&nomad_id(&job)]["Meta"]["aic_attempt"].as_str(), Some("1"));
        assert_eq!(s.allocs[&nomad_id(&job)].len(), 2, "placed whole");
    }
    state.lock().unwrap().kill_stopped();
    // The other rank of the purged job reports lost too: it changes nothing.
    assert_eq!(n.on_alloc(&store, &stale).await.unwrap(), AllocAction::Nothing);
    // The worker of the new attempt runs; lost again, and again: retries run out.
    status::advance(&store, &job, aic_core::status::Transition::new(JobState::Running, "worker")).await.unwrap();
    let ev = lose(&state, &job, "node-a");
    assert_eq!(n.on_alloc(&store, &ev).await.unwrap(), AllocAction::Restarted(2));
    status::advance(&store, &job, aic_core::status::Transition::new(JobState::Running, "worker")).await.unwrap();
    let ev = lose(&state, &job, "node-a");
    match n.on_alloc(&store, &ev).await.unwrap() {
        AllocAction::Failed(why) => assert!(why.ends_with(&format!("no retries left ({MAX_RETRIES} used)")), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(status::current(&store, &job).await.unwrap().unwrap().state, JobState::Failed);
    assert!(state.lock().unwrap().is_stopped(&nomad_id(&job)), "deregistered");
}

#[tokio::test]
async fn a_node_going_down_leaves_its_rank_unknown_unreplaced_and_a_job_the_pool_can_no_longer_hold_fails() {
    // Nomad replaces a lost allocation whatever the reschedule policy; a rank replaced alone
    // would start beside aic's own restart with the same index and attempt. The train job
    // asks for `disconnect { replace = false }`: the rank goes `unknown`, and aic restarts the
    // whole job with the next attempt.
    use aic_core::scheduler::nomad::AllocAction;
    use aic_schemas::JobState;
    let (_dir, store, state, n, job) = submitted_and_running(2).await;
    let events = state.lock().unwrap().node_down("node-b");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["ClientStatus"], "unknown");
    assert!(state.lock().unwrap().replacements.is_empty(), "Nomad placed a lone replacement rank");
    // Its node is down in Nomad's word, and the gateway has no other for the second rank:
    // the job cannot be placed again, and fails with the reason (it stayed `retrying`, its
    // deposit locked, the error only logged).
    match n.on_alloc(&store, &events[0]).await.unwrap() {
        AllocAction::Failed(why) => assert!(why.starts_with("cannot be placed again: needs 2 miners"), "{why}"),
        other => panic!("{other:?}"),
    }
    let hist = aic_core::status::history(&store, &job).await.unwrap();
    let states: Vec<JobState> = hist.iter().map(|r| r.state).collect();
    assert_eq!(states[states.len() - 2..], [JobState::Retrying, JobState::Failed]);
    assert_eq!(
        hist[hist.len() - 2].reason.as_deref(),
        Some(
            "allocation 1 on node-b was lost (its node stopped answering); starting again from the last checkpoint (retry 1 of 2)"
        )
    );
    assert!(state.lock().unwrap().is_stopped(&nomad_id(&job)), "what was left of it is stopped");
    // A deployment's replica on a node that goes down is Nomad's to replace, alone.
    let (_, m) = manifest_of("serve", 1, 1);
    let dep = running_job(&store, &m).await;
    n.submit(&dep, &m).await.unwrap();
    let node = state.lock().unwrap().allocs[&nomad_id(&dep)][0].clone();
    let events = state.lock().unwrap().node_down(&node);
    let ev = events.iter().find(|e| e["JobID"] == nomad_id(&dep)).unwrap();
    assert_eq!(ev["ClientStatus"], "lost");
    assert_eq!(state.lock().unwrap().replacements.len(), 1, "the replica is replaced");
    assert_eq!(n.on_alloc(&store, ev).await.unwrap(), AllocAction::Nothing);
}

#[tokio::test]
async fn a_lost_replica_of_a_deployment_is_left_to_nomads_reschedule() {
    use aic_core::scheduler::nomad::AllocAction;
    use aic_schemas::JobState;
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    let n = NomadScheduler::new(cfg(&addr, TOKEN), store.clone());
    let (_, m) = manifest_of("serve", 2, 1);
    let job = running_job(&store, &m).await;
    n.submit(&job, &m).await.unwrap();
    let ev = lost(&state.lock().unwrap(), &job, "node-b");
    assert_eq!(n.on_alloc(&store, &ev).await.unwrap(), AllocAction::Nothing);
    let st = aic_core::status::current(&store, &job).await.unwrap().unwrap();
    assert_eq!(st.state, JobState::Running, "the deployment keeps running");
    let s = state.lock().unwrap();
    assert_eq!(s.jobs[&nomad_id(&job)]["Version"].as_u64(), Some(0), "not registered again");
}

#[tokio::test]
async fn serving_endpoints_are_where_nomad_placed_the_deployments_service() {
    let (state, addr) = nomad().await;
    let n = NomadScheduler::new(cfg(&addr, TOKEN), temp_store());
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
    // A replica whose check fails, or has no result yet (starting), gets no traffic.
    {
        let mut s = state.lock().unwrap();
        let id = nomad_id(&job);
        let (a, b) = (s.alloc_of(&id, "node-a"), s.alloc_of(&id, "node-b"));
        s.checks.insert(a, Some("failure"));
        s.checks.insert(b, None);
    }
    assert_eq!(n.endpoints(job.job.as_str()).await.unwrap().unwrap(), []);
    {
        let mut s = state.lock().unwrap();
        let b = s.alloc_of(&nomad_id(&job), "node-b");
        s.checks.insert(b, Some("success"));
    }
    assert_eq!(n.endpoints(job.job.as_str()).await.unwrap().unwrap(), [("10.0.0.2".to_string(), 25001)]);
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
    let mut failed = lost(&state.lock().unwrap(), &job, "node-a");
    failed["ClientStatus"] = json!("failed");
    assert_eq!(n.on_alloc(&store, &failed).await.unwrap(), AllocAction::Stopped);
    assert!(state.lock().unwrap().is_stopped(&nomad_id(&job)));
}

#[tokio::test]
async fn the_watcher_follows_the_event_stream_and_resumes_from_its_index() {
    use aic_schemas::JobState;
    let (_dir, store, state, n, job) = submitted_and_running(1).await;
    let ev = json!({"Index": 42, "Events": [{"Topic": "Allocation", "Type": "AllocationUpdated", "Key": "alloc-1",
        "Namespace": "aic", "Index": 42, "Payload": {"Allocation": lost(&state.lock().unwrap(), &job, "node-a")}}]});
    state.lock().unwrap().stream = vec![ev.to_string()];
    let (tx, w) = watching(&n, &store);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while aic_core::status::current(&store, &job).await.unwrap().unwrap().state != JobState::Retrying {
        assert!(std::time::Instant::now() < deadline, "the watcher never acted on the event");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // After the stream closed, it reconnects after the last index it saw (a stream opened
    // at index N would start with frame N again).
    while state.lock().unwrap().stream_queries.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let qs = state.lock().unwrap().stream_queries.clone();
    assert_eq!((qs[0]["index"].as_str(), qs[1]["index"].as_str()), ("0", "43"));
    // Past the newest frame, Nomad sends the newest again (`StartAtClosest`): the lost
    // allocation's event is handled once more on every reconnect, and changes nothing (the
    // job it was of is an earlier one: purged and registered again).
    while state.lock().unwrap().stream_queries.len() < 3 {
        assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(10), "no second reconnect");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tx.send(()).unwrap();
    w.await.unwrap();
    let hist = aic_core::status::history(&store, &job).await.unwrap();
    assert_eq!(hist.iter().filter(|r| r.state == JobState::Retrying).count(), 1, "{hist:?}");
    assert_eq!(state.lock().unwrap().jobs[&nomad_id(&job)]["Meta"]["aic_attempt"].as_str(), Some("1"));
}

/// An allocation lost while the watcher was not listening (reconnecting, or past the 100
/// events Nomad keeps: a stream resumed beyond them starts at the closest it has,
/// `nomad/stream/event_buffer.go` `StartAtClosest`, and never replays it) is found when the
/// watcher (re)connects, from the allocations Nomad lists, and acted on as its event would
/// have been. (The job stayed `running` for ever, its deposit locked.)
#[tokio::test]
async fn an_allocation_lost_while_the_stream_was_down_is_found_when_the_watcher_reconnects() {
    use aic_schemas::JobState;
    let (_dir, store, state, n, job) = submitted_and_running(2).await;
    {
        // node-b's rank is lost; no event of it is left to stream.
        let mut s = state.lock().unwrap();
        let aid = s.alloc_of(&nomad_id(&job), "node-b");
        s.ended(&aid, "lost");
        s.stream.clear();
    }
    let (tx, w) = watching(&n, &store);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let st = loop {
        let st = aic_core::status::current(&store, &job).await.unwrap().unwrap();
        if st.state == JobState::Retrying {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "the lost allocation was never acted on");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(st.reason.as_deref().unwrap_or_default().contains("on node-b was lost"), "{st:?}");
    assert_eq!(state.lock().unwrap().jobs[&nomad_id(&job)]["Meta"]["aic_attempt"].as_str(), Some("1"));
    // Found again by the next pass: nothing more happens.
    assert_eq!(n.reconcile().await.unwrap(), 0);
    tx.send(()).unwrap();
    w.await.unwrap();
}

/// A node drained under a training job: Nomad stops its batch allocation at the drain's
/// deadline and never replaces it (`nomad/drainer/watch_jobs.go`: batch allocations are only
/// force-stopped), so the other ranks would wait for it for ever. aic takes the stopped rank
/// for lost and starts the job again, whole, elsewhere. (Nothing happened: `complete` was
/// taken for a rank that finished.)
#[tokio::test]
async fn a_rank_stopped_by_a_node_drain_restarts_the_training_job() {
    use aic_schemas::JobState;
    let (_dir, store, state, n, job) = submitted_and_running(2).await;
    state.lock().unwrap().drain("node-b");
    assert_eq!(n.reconcile().await.unwrap(), 1);
    let st = aic_core::status::current(&store, &job).await.unwrap().unwrap();
    assert_eq!(st.state, JobState::Retrying, "{st:?}");
    assert!(
        st.reason.as_deref().unwrap_or_default().contains("on node-b was stopped by Nomad (alloc is being migrated)"),
        "{st:?}"
    );
    assert_eq!(state.lock().unwrap().jobs[&nomad_id(&job)]["Meta"]["aic_attempt"].as_str(), Some("1"));
}

/// The operator stops a job's Nomad job by hand (`nomad job stop`): aic recorded no ending
/// (it records one before it stops a job), its workers record none when stopped, so the job
/// fails with the reason once its allocations have stopped, and is settled. (It stayed
/// `running` for ever.)
#[tokio::test]
async fn a_job_stopped_outside_aic_fails_with_the_reason() {
    use aic_schemas::JobState;
    let (_dir, store, state, n, job) = submitted_and_running(2).await;
    n.call(reqwest::Method::DELETE, &format!("job/{}", nomad_id(&job)), &[], None).await.unwrap();
    state.lock().unwrap().kill_stopped();
    assert_eq!(n.reconcile().await.unwrap(), 1, "acted on once");
    let st = aic_core::status::current(&store, &job).await.unwrap().unwrap();
    assert_eq!(st.state, JobState::Failed, "{st:?}");
    assert!(st.reason.as_deref().unwrap_or_default().contains("stopped outside aic"), "{st:?}");
    assert_eq!(n.reconcile().await.unwrap(), 0);
}

/// With a worker gateway, the workers' token is not in the job's `Env` (which anyone with
/// `read-job` on the namespace reads): the functions write it into the job's own Nomad
/// Variable (`nomad/jobs/aic-<id>`, which the job's tasks read through their workload
/// identity, rendered by the task's template), and delete it with the job.
#[tokio::test]
async fn the_workers_token_is_kept_in_the_jobs_own_variable_not_in_its_env() {
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    c.worker_gateway =
        Some(aic_core::grant::WorkerGateway { url: "http://gw.pool:8800".into(), secret: secret.clone() });
    let n = NomadScheduler::new(c, store.clone());
    let (_, m) = manifest(2, 1);
    let job = running_job(&store, &m).await;
    n.submit(&job, &m).await.unwrap();
    let id = nomad_id(&job);
    {
        let s = state.lock().unwrap();
        let env = &s.jobs[&id]["TaskGroups"][0]["Tasks"][0]["Env"];
        assert!(env.get("AIC_WORKER_TOKEN").is_none(), "the token is in the job's Env: {env}");
        let token = s.vars[&format!("nomad/jobs/{id}")]["worker_token"].as_str().unwrap().to_string();
        let grant = aic_core::grant::verify(&secret, &token, chrono::Utc::now()).unwrap();
        assert_eq!(grant.job_key(), job);
    }
    n.cancel(&job).await.unwrap();
    assert!(!state.lock().unwrap().vars.contains_key(&format!("nomad/jobs/{id}")), "the token outlived its job");
}

/// Of two functions hosts on one Nomad (the job file's `count = 2`), one leads: it holds a
/// lock on a Nomad Variable and alone follows the event stream and keeps house (two would
/// each restart a lost job, and one purge what the other just registered). When the leader
/// stops, it gives the lock up and the other takes over.
#[tokio::test]
async fn of_two_functions_hosts_one_watches_and_the_other_takes_over_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    c.leader_ttl = std::time::Duration::from_secs(10);
    let host = |c: &aic_core::scheduler::nomad::NomadConfig| {
        let n = NomadScheduler::new(c.clone(), store.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let store = store.clone();
        let task = tokio::spawn(async move {
            let stop: aic_core::scheduler::Stop = Box::pin(async {
                let _ = rx.await;
            });
            n.run(store, stop).await
        });
        (tx, task)
    };
    // Host a starts first and leads; host b starts and waits.
    let (stop_a, a) = host(&c);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while state.lock().unwrap().stream_queries.is_empty() {
        assert!(std::time::Instant::now() < deadline, "nobody leads");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (stop_b, b) = host(&c);
    // b asks for the lead every TTL/3 (here 3 s): let it ask twice.
    let settled = std::time::Instant::now() + std::time::Duration::from_secs(7);
    while std::time::Instant::now() < settled {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(state.lock().unwrap().acquired, 1, "both hosts took the lead");
    assert_eq!(state.lock().unwrap().stream_queries.len(), 1, "both hosts watch the event stream");
    // a stops: it gives the lock up, and b leads and watches.
    stop_a.send(()).unwrap();
    a.await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while state.lock().unwrap().acquired < 2 || state.lock().unwrap().stream_queries.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the other host never took over");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop_b.send(()).unwrap();
    b.await.unwrap();
    assert!(!state.lock().unwrap().locks.contains_key("aic/leader"), "the last leader kept the lock");
}

/// Nomad's servers busy (the evaluation stays pending): registering answers within its
/// `eval_wait` with what it knows, instead of blocking a minute (six 10 s blocking queries),
/// which outlived a Lambda function's 30 s invocation.
#[tokio::test]
async fn registering_waits_for_a_busy_evaluation_no_longer_than_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    state.lock().unwrap().stuck_evals = true;
    let mut c = cfg(&addr, TOKEN);
    c.eval_wait = std::time::Duration::from_secs(2);
    let n = NomadScheduler::new(c, store.clone());
    let (_, m) = manifest(1, 1);
    let job = running_job(&store, &m).await;
    let t = std::time::Instant::now();
    let submitted = n.submit(&job, &m).await.unwrap();
    // (Six blocking queries of 10 s took 50 s here.)
    assert!(t.elapsed() < std::time::Duration::from_secs(20), "registering waited {:?}", t.elapsed());
    assert!(state.lock().unwrap().jobs.contains_key(&nomad_id(&job)), "registered: {submitted:?}");
}

#[tokio::test]
async fn a_silent_event_stream_is_taken_for_dead_and_reopened() {
    // Nomad sends a heartbeat every 30 s; a connection that says nothing for longer than
    // `stream_idle` is dead (a half-open TCP connection would otherwise hang the watcher).
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    c.stream_idle = std::time::Duration::from_millis(500);
    let n = NomadScheduler::new(c, store.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let w = tokio::spawn(async move {
        n.watch(store, async {
            let _ = rx.await;
        })
        .await
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while state.lock().unwrap().stream_queries.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the silent stream was never reopened");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tx.send(()).unwrap();
    w.await.unwrap();
}

/// Nomad as production runs it: TLS with a private CA and client certificates
/// (`verify_https_client`), the servers' certificates for `server.global.nomad`
/// (Nomad's `NOMAD_CACERT`, `NOMAD_CLIENT_CERT`, `NOMAD_CLIENT_KEY`, `NOMAD_TLS_SERVER_NAME`):
/// the API and the exec WebSocket (`wss://`) go through; without the client's certificate,
/// or checking the certificate against the address's own name, nothing does.
#[tokio::test]
async fn nomad_over_tls_with_a_private_ca_and_client_certificates() {
    use aic_core::scheduler::{ExecInput, ExecOutput, ExecStart};
    let dir = tempfile::tempdir().unwrap();
    nomad_certs(dir.path());
    let (_state, addr) = nomad_tls(dir.path()).await;
    let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    let tls = aic_core::scheduler::nomad::NomadTls {
        ca: Some(read("ca.pem")),
        client: Some((read("client.pem"), read("client.key"))),
        server_name: Some("server.global.nomad".into()),
    };
    let store = aic_core::StoreConfig::Local { root: dir.path().join("store") }.open().unwrap();
    let wrapper = dir.path().join("aic-worker");
    std::fs::write(&wrapper, "#!/bin/sh\nshift 2\nexec \"$@\"\n").unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let with = |tls: aic_core::scheduler::nomad::NomadTls| {
        let mut c = cfg(&addr, TOKEN);
        c.tls = tls;
        c.worker = wrapper.to_string_lossy().into_owned();
        NomadScheduler::new(c, store.clone())
    };
    let n = with(tls.clone());
    assert!(n.pool().await.unwrap().iter().any(|g| g.name == "test_gateway"), "the API over TLS");
    let (_, m) = manifest(1, 1);
    let job = running_job(&store, &m).await;
    n.submit(&job, &m).await.unwrap();
    let argv = ["sh", "-c", "echo over-wss"].map(String::from).to_vec();
    let io = n.exec(&job, 0, ExecStart { argv, tty: None }).await.unwrap().expect("Nomad has an exec API");
    io.input.send(ExecInput::Close).await.unwrap();
    let (out, _, end) = drain(io).await;
    assert_eq!((out.as_str(), end), ("over-wss\n", ExecOutput::Exited(0)));
    // Refused: no client certificate; the certificate checked against 127.0.0.1.
    for bad in [
        aic_core::scheduler::nomad::NomadTls { client: None, ..tls.clone() },
        aic_core::scheduler::nomad::NomadTls { server_name: None, ..tls.clone() },
    ] {
        assert!(with(bad).pool().await.is_err(), "reached Nomad without what TLS asks");
    }
}

#[tokio::test]
async fn a_device_request_is_met_within_one_device_group() {
    // Nomad's DeviceChecker (scheduler/feasible.go) meets a request of N GPUs from one
    // device group (vendor/type/model): a node with 2 T4s and 2 A100s cannot run 4 GPUs.
    let (_state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    c.datacenter = "mixed".into();
    let n = NomadScheduler::new(c, temp_store());
    let (job, m) = manifest(1, 4);
    match n.submit(&job, &m).await {
        Err(ScheduleError::Unplaceable(why)) => assert!(why.contains("0 that could hold one"), "{why}"),
        other => panic!("{other:?}"),
    }
    let (job, m) = manifest(1, 2);
    assert!(matches!(n.submit(&job, &m).await.unwrap(), Submitted::Placed(_)));
}

/// A request's GPU models and memory become device constraints (and, for several models,
/// affinities in order of preference) on `${device.model}` and `${device.attr.memory}`, which
/// the fake evaluates as Nomad's scheduler does; a model the gateway lacks is refused before
/// anything is registered, naming what it has.
#[tokio::test]
async fn a_request_for_gpu_models_and_memory_is_placed_by_the_device_attributes() {
    let (state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    c.datacenter = "mixed".into();
    let n = NomadScheduler::new(c, temp_store());
    let ask = |models: &[&str], gb: Option<u32>| {
        let (job, mut m) = manifest(1, 2);
        m.request.gpu_types = models.iter().map(|m| m.to_string()).collect();
        m.request.min_gpu_memory_gb = gb;
        (job, m)
    };
    let group_of = |job: &JobKey| {
        let s = state.lock().unwrap();
        let id = nomad_id(job);
        s.info.iter().find(|(aid, _)| s.history[*aid]["ID"] == id.as_str()).map(|(_, i)| i.group.clone())
    };
    // A100 preferred over T4: the A100s, though the T4 group comes first on the node.
    let (a, m) = ask(&["A100", "T4"], None);
    assert!(matches!(n.submit(&a, &m).await.unwrap(), Submitted::Placed(_)));
    assert_eq!(group_of(&a).as_deref(), Some("A100"));
    {
        let s = state.lock().unwrap();
        let dev = &s.jobs[&nomad_id(&a)]["TaskGroups"][0]["Tasks"][0]["Resources"]["Devices"][0];
        assert_eq!(dev["Constraints"][0]["LTarget"], "${device.model}");
        assert_eq!(dev["Constraints"][0]["Operand"], "regexp");
        assert_eq!(dev["Affinities"].as_array().unwrap().len(), 2);
    }
    // 20 GB each: only the A100s have it, and they are taken; the free T4s are not used.
    let (b, m) = ask(&[], Some(20));
    match n.submit(&b, &m).await.unwrap() {
        Submitted::Queued(why) => assert!(why.starts_with("no node with 2 free nvidia/gpu"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(group_of(&b), None);
    // The T4s by name, in another case.
    let (t, m) = ask(&["t4"], Some(15));
    assert!(matches!(n.submit(&t, &m).await.unwrap(), Submitted::Placed(_)));
    assert_eq!(group_of(&t).as_deref(), Some("Tesla T4"));
    // A model the gateway has none of: refused, with what it has; nothing registered.
    let (h, m) = ask(&["H100"], None);
    match n.submit(&h, &m).await {
        Err(ScheduleError::Unplaceable(why)) => assert!(
            why.contains("(GPUs of model H100)") && why.contains("its GPUs: 2 × A100 40 GB, 2 × Tesla T4 15 GB"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(!state.lock().unwrap().jobs.contains_key(&nomad_id(&h)));
    // What the pool counts as room: the T4 group and the A100 group, each taken.
    let (e, m) = ask(&["T4"], None);
    assert!(matches!(n.submit(&e, &m).await.unwrap(), Submitted::Queued(_)));
}

/// What a miner has, as the NVIDIA device plugin fingerprints it: each device group's name
/// (the GPU model) and its `memory` attribute (MiB), reported by `aic pool`.
#[tokio::test]
async fn a_miners_gpu_model_and_memory_come_from_the_device_plugins_fingerprint() {
    let (_state, addr) = nomad().await;
    let n = NomadScheduler::new(cfg(&addr, TOKEN), temp_store());
    let pool = n.pool().await.unwrap();
    let tg = pool.iter().find(|g| g.name == "test_gateway").unwrap();
    for m in &tg.miners {
        assert_eq!((m.gpu_model.as_deref(), m.gpu_memory_mb), (Some("Tesla T4"), Some(15360)), "{m:?}");
    }
    let json = serde_json::to_value(&tg.miners[0]).unwrap();
    assert_eq!((&json["gpu_model"], &json["gpu_memory_mb"]), (&json!("Tesla T4"), &json!(15360)));
}

#[tokio::test]
async fn gpus_held_by_other_namespaces_are_not_free() {
    let (state, addr) = nomad().await;
    state.lock().unwrap().foreign.push(("node-b".into(), 2));
    let n = NomadScheduler::new(cfg(&addr, TOKEN), temp_store());
    let pool = n.pool().await.unwrap();
    let tg = pool.iter().find(|g| g.name == "test_gateway").unwrap();
    assert_eq!(
        tg.miners.iter().map(|m| (m.name.as_str(), m.free_gpus)).collect::<Vec<_>>(),
        [("node-a", 2), ("node-b", 0)]
    );
}

/// A node with its GPUs free but its memory taken (by another team's job) is no room for a
/// rank: Nomad's scheduler would pass it over (`scheduler/rank.go`, memory is bin-packed as
/// GPUs are), so a training job counting it would be placed in part and purged, again and
/// again. The job waits unregistered, saying what it waits for; the gang pre-check counts a
/// node's memory and disk less its client's reservation and what every allocation holds, in
/// aic's node pool only.
#[tokio::test]
async fn a_node_whose_memory_is_taken_is_no_room_for_a_rank() {
    let store = temp_store();
    let (state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    c.gang_retry = std::time::Duration::from_secs(3600);
    let rank_memory = 2 * c.memory_mb;
    let n = NomadScheduler::new(c, store.clone());
    // node-b keeps its GPUs free but 60 of its 63 GiB are another team's: less than a rank's
    // memory is left.
    assert!(u64::from(rank_memory) > 3 * 1024);
    state.lock().unwrap().foreign_memory.insert("node-b".into(), 60 * 1024);
    let (_, m) = manifest(2, 2);
    let job = running_job(&store, &m).await;
    match n.submit(&job, &m).await.unwrap() {
        Submitted::Queued(why) => {
            assert!(why.contains(&format!("{rank_memory} MiB of memory")) && why.contains("(1 now)"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    {
        let s = state.lock().unwrap();
        assert!(s.purged.is_empty(), "registered, placed in part and purged: {:?}", s.purged);
        assert!(!s.jobs.contains_key(&nomad_id(&job)), "registered without room for every rank");
    }
    // The other team's job ends: placed whole.
    state.lock().unwrap().foreign_memory.clear();
    assert_eq!(n.place_waiting().await.unwrap(), std::slice::from_ref(&job));
    assert_eq!(state.lock().unwrap().allocs[&nomad_id(&job)].len(), 2);
}

#[tokio::test]
async fn a_training_job_placed_only_in_part_gives_its_gpus_back_and_waits_to_start_whole() {
    // Nomad places what it can of a group and blocks the rest: a 2-miner job would hold one
    // miner's GPUs while its rank waits for the other. aic purges it and waits.
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    let n = NomadScheduler::new(cfg(&addr, TOKEN), store.clone());
    let (_, m) = manifest(2, 2);
    let job = running_job(&store, &m).await;
    // Another scheduler takes node-b between aic's look at the pool and its registration.
    state.lock().unwrap().busy.insert("node-b".into(), 2);
    match n.submit(&job, &m).await.unwrap() {
        Submitted::Queued(why) => assert!(why.starts_with("no node with 2 free nvidia/gpu"), "{why}"),
        other => panic!("{other:?}"),
    }
    {
        let s = state.lock().unwrap();
        assert_eq!(s.purged, [nomad_id(&job)], "the placed rank was purged");
        assert!(!s.allocs.contains_key(&nomad_id(&job)));
        assert_eq!(s.stopping().len(), 1, "the purged rank runs until its kill timeout");
    }
    let waiting = n.waiting().await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!((waiting[0].job.clone(), waiting[0].attempt), (job.job.clone(), 0));
    // Still no room: trying again changes nothing.
    assert!(n.place_waiting().await.unwrap().is_empty());
    assert_eq!(n.waiting().await.unwrap().len(), 1);
    // node-b frees up, but the purged rank still holds node-a's GPUs until its client has
    // killed it: the job waits on (registered now, Nomad would place one rank and block the
    // other).
    state.lock().unwrap().busy.insert("node-b".into(), 0);
    assert!(n.place_waiting().await.unwrap().is_empty(), "registered while the old rank holds node-a");
    assert!(!state.lock().unwrap().allocs.contains_key(&nomad_id(&job)));
    // Killed: placed whole, and out of the queue.
    assert_eq!(state.lock().unwrap().kill_stopped().len(), 1);
    assert_eq!(state.lock().unwrap().busy.get("node-a").copied().unwrap_or(0), 0, "node-a's GPUs are free again");
    assert_eq!(n.place_waiting().await.unwrap(), std::slice::from_ref(&job));
    assert_eq!(state.lock().unwrap().allocs[&nomad_id(&job)].len(), 2);
    assert!(n.waiting().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_training_job_without_room_for_every_rank_is_not_registered_and_starts_when_an_allocation_ends() {
    use aic_schemas::JobState;
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    c.stream_idle = std::time::Duration::from_millis(300);
    c.gang_retry = std::time::Duration::from_secs(3600);
    let n = NomadScheduler::new(c, store.clone());
    // Another namespace's job holds node-b.
    state.lock().unwrap().foreign.push(("node-b".into(), 2));
    let (_, m) = manifest(2, 2);
    let job = running_job(&store, &m).await;
    match n.submit(&job, &m).await.unwrap() {
        Submitted::Queued(why) => {
            assert_eq!(
                why,
                "waiting for 2 miners with 2 free nvidia/gpu, 4096 MiB of memory and 10240 MiB of disk each at once in gateway test_gateway (1 now)"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!state.lock().unwrap().jobs.contains_key(&nomad_id(&job)), "nothing registered, nothing held");
    // A job cancelled while it waits leaves the queue.
    let (_, m2) = manifest(2, 2);
    let gone = running_job(&store, &m2).await;
    n.submit(&gone, &m2).await.unwrap();
    aic_core::status::advance(&store, &gone, aic_core::status::Transition::new(JobState::Cancelled, "test"))
        .await
        .unwrap();
    assert_eq!(n.waiting().await.unwrap().len(), 2);

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let n = n.clone();
        let store = store.clone();
        tokio::spawn(async move {
            aic_core::scheduler::Scheduler::run(
                &n,
                store,
                Box::pin(async {
                    let _ = rx.await;
                }),
            )
            .await
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    // The first look finds no room, and drops the cancelled job.
    while n.waiting().await.unwrap().len() != 1 {
        assert!(std::time::Instant::now() < deadline, "the cancelled job never left the queue");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!state.lock().unwrap().jobs.contains_key(&nomad_id(&job)));
    // The other namespace's allocation ends; the stream says so, and the job is placed whole.
    {
        let mut s = state.lock().unwrap();
        s.foreign.clear();
        let ev = json!({"Index": 7, "Events": [{"Topic": "Allocation", "Type": "AllocationUpdated", "Index": 7,
            "Payload": {"Allocation": {"ID": "other-node-b", "JobID": "trainer", "Namespace": "ml-team",
                "NodeName": "node-b", "ClientStatus": "complete"}}}]});
        s.stream = vec![ev.to_string()];
    }
    while state.lock().unwrap().allocs.get(&nomad_id(&job)).is_none_or(|a| a.len() != 2) {
        assert!(std::time::Instant::now() < deadline, "the waiting job was never placed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Its queue entry goes once the registration's evaluation is read (after the fake has
    // placed the allocations): not at the same instant.
    while !n.waiting().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the placed job stayed in the queue");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!state.lock().unwrap().jobs.contains_key(&nomad_id(&gone)), "a cancelled job is never placed");
    tx.send(()).unwrap();
    runner.await.unwrap();
}

#[tokio::test]
async fn a_training_job_is_stopped_at_its_paid_time_and_charged_what_nomad_saw() {
    use aic_core::scheduler::nomad::AllocAction;
    use aic_schemas::JobState;
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    c.time_limit_grace = std::time::Duration::ZERO;
    let n = NomadScheduler::new(c, store.clone());
    // Paid for 0.001 h (3.6 s) of 1 miner × 1 GPU.
    let (_, mut m) = manifest(1, 1);
    m.request.max_hours = 0.0005;
    let job = running_job(&store, &m).await;
    let t0 = chrono::Utc::now().timestamp();
    assert!(matches!(n.submit(&job, &m).await.unwrap(), Submitted::Placed(_)));
    let deadline: i64 =
        state.lock().unwrap().jobs[&nomad_id(&job)]["Meta"]["aic_deadline"].as_str().unwrap().parse().unwrap();
    assert!((t0 + 3..=t0 + 5).contains(&deadline), "deadline {deadline} for a job placed at {t0}");
    assert!(n.stop_overdue().await.unwrap().is_empty(), "not yet");
    let aid = state.lock().unwrap().alloc_of(&nomad_id(&job), "node-a");
    stopped_overdue(&n, &job).await;
    let st = aic_core::status::current(&store, &job).await.unwrap().unwrap();
    assert_eq!(st.state, JobState::TimedOut);
    assert_eq!(
        st.reason.as_deref(),
        Some("time limit: paid for 0.001 h; stopped by the scheduler; outputs up to then are kept")
    );
    assert!(state.lock().unwrap().is_stopped(&nomad_id(&job)), "deregistered");
    // Its allocation's end reaches the watcher: what it used is recorded from Nomad's own
    // account of the task (not from anything the job's program could write).
    let ev = json!({"ID": aid, "JobID": nomad_id(&job), "Namespace": "aic", "ClientStatus": "complete"});
    n.meter_ended(&ev).await.unwrap();
    n.meter_ended(&ev).await.unwrap();
    let runs = aic_core::usage::of(&store, &job).await.unwrap();
    assert_eq!(runs.len(), 1, "recorded once: {runs:?}");
    assert_eq!((runs[0].gpus, runs[0].miner.as_str(), runs[0].attempt), (1, "node-a", 0));
    assert!((3.0..6.0).contains(&runs[0].seconds()), "{runs:?}");

    // A job restarted after a lost rank gets what is left of its paid time.
    let (_, mut m) = manifest(1, 1);
    m.request.max_hours = 0.002; // 7.2 s
    let job = running_job(&store, &m).await;
    n.submit(&job, &m).await.unwrap();
    let id = nomad_id(&job);
    {
        let mut s = state.lock().unwrap();
        let aid = s.alloc_of(&id, "node-a");
        s.info.get_mut(&aid).unwrap().started_at = chrono::Utc::now() - chrono::Duration::seconds(5);
    }
    let events = state.lock().unwrap().node_down("node-a");
    let ev = events.iter().find(|e| e["JobID"] == id.as_str()).unwrap();
    n.meter_ended(ev).await.unwrap();
    assert_eq!(n.on_alloc(&store, ev).await.unwrap(), AllocAction::Restarted(1));
    let t1 = chrono::Utc::now().timestamp();
    let deadline: i64 = state.lock().unwrap().jobs[&id]["Meta"]["aic_deadline"].as_str().unwrap().parse().unwrap();
    assert!((t1 + 1..=t1 + 4).contains(&deadline), "7.2 s paid, 5 s used: deadline {deadline} at {t1}");
}

/// A deployment's paid hours are the pool's to enforce: registered with its deadline (and its
/// workers told `AIC_SERVE_UNTIL`, the same for every restart of a task: an app that kills its
/// worker gets no fresh hours when Nomad restarts it), and deregistered past it, `succeeded`.
/// (Deployments had no deadline of the pool's: each worker counted its hours from its own
/// start, and a worker whose app killed it started them anew.)
#[tokio::test]
async fn a_deployment_is_stopped_at_its_paid_hours_however_often_its_worker_restarts() {
    use aic_schemas::JobState;
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap();
    let (state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    c.time_limit_grace = std::time::Duration::from_secs(1);
    let n = NomadScheduler::new(c, store.clone());
    let (_, mut m) = manifest_of("serve", 1, 1);
    m.request.max_hours = 0.0005; // paid as 0.001 h: 3.6 s
    let job = running_job(&store, &m).await;
    let t0 = chrono::Utc::now().timestamp();
    n.submit(&job, &m).await.unwrap();
    let spec = state.lock().unwrap().jobs[&nomad_id(&job)].clone();
    let meta = |k: &str| spec["Meta"][k].as_str().unwrap_or_else(|| panic!("no {k}: {spec}")).parse::<i64>().unwrap();
    let (deadline, until) = (meta("aic_deadline"), meta("aic_serve_until"));
    assert_eq!(deadline - until, 1, "the workers stop a grace before the pool does");
    assert!((t0 + 4..=t0 + 6).contains(&deadline), "deadline {deadline} for a deployment placed at {t0}");
    let env = &spec["TaskGroups"][0]["Tasks"][0]["Env"];
    assert_eq!(env["AIC_SERVE_UNTIL"], "${NOMAD_META_aic_serve_until}", "{env}");
    // Its app kills its worker 2 s in; Nomad restarts the task in place.
    let aid = state.lock().unwrap().alloc_of(&nomad_id(&job), "node-a");
    state.lock().unwrap().info.get_mut(&aid).unwrap().started_at = chrono::Utc::now() - chrono::Duration::seconds(2);
    state.lock().unwrap().restart_task(&aid);
    let restarted = chrono::Utc::now();
    stopped_overdue(&n, &job).await;
    let st = aic_core::status::current(&store, &job).await.unwrap().unwrap();
    assert_eq!(st.state, JobState::Succeeded);
    assert_eq!(st.reason.as_deref(), Some("served for its paid 0.001 h; stopped by the scheduler"));
    assert!(state.lock().unwrap().is_stopped(&nomad_id(&job)), "deregistered");
    // Metered from the task's first start, not its restart (`StartedAt` is the last start).
    state.lock().unwrap().ended(&aid, "complete");
    let ev = json!({"ID": aid, "JobID": nomad_id(&job), "Namespace": "aic", "ClientStatus": "complete"});
    n.meter_ended(&ev).await.unwrap();
    let runs = aic_core::usage::of(&store, &job).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(
        runs[0].started_at <= restarted - chrono::Duration::milliseconds(1900),
        "metered from the task's first start, 2 s before its restart: {runs:?}"
    );
}

/// Waits (10 s at most) until the housekeeping stops `job`, and only it, as overdue.
async fn stopped_overdue(n: &NomadScheduler, job: &JobKey) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while n.stop_overdue().await.unwrap() != std::slice::from_ref(job) {
        assert!(std::time::Instant::now() < until, "never stopped");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Output of an exec session until its end: (stdout, stderr, how it ended).
async fn drain(mut io: aic_core::scheduler::ExecIo) -> (String, String, aic_core::scheduler::ExecOutput) {
    use aic_core::scheduler::ExecOutput;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, io.output.recv()).await.expect("the session ended within 20 s") {
            Some(ExecOutput::Stdout(d)) => out.extend(d),
            Some(ExecOutput::Stderr(d)) => err.extend(d),
            Some(end) => return (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap(), end),
            None => panic!("the session ended without saying how"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_in_the_allocation_through_nomads_exec_api_frames_and_all() {
    use aic_core::scheduler::{ExecInput, ExecOutput, ExecStart};
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().join("store") }.open().unwrap();
    let (state, addr) = nomad().await;
    // In the task the command runs under the worker's wrapper (`aic-worker in-job -- CMD…`);
    // here a script that checks it was called so and runs the rest.
    let wrapper = dir.path().join("aic-worker");
    std::fs::write(&wrapper, "#!/bin/sh\n[ \"$1\" = in-job ] && [ \"$2\" = -- ] || exit 90\nshift 2\nexec \"$@\"\n")
        .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut c = cfg(&addr, TOKEN);
    c.worker = wrapper.to_string_lossy().into_owned();
    let n = NomadScheduler::new(c, store.clone());
    let (_, m) = manifest(2, 1);
    let job = running_job(&store, &m).await;
    n.submit(&job, &m).await.unwrap();

    // Stdin in, stdout and stderr apart, the exit code.
    let argv = ["sh", "-c", "cat; echo err >&2; exit 3"].map(String::from).to_vec();
    let io = n.exec(&job, 1, ExecStart { argv, tty: None }).await.unwrap().expect("Nomad has an exec API");
    io.input.send(ExecInput::Stdin(b"through stdin\n".to_vec())).await.unwrap();
    io.input.send(ExecInput::Close).await.unwrap();
    let (out, err, end) = drain(io).await;
    assert_eq!((out.as_str(), err.as_str(), end), ("through stdin\n", "err\n", ExecOutput::Exited(3)));
    {
        let s = state.lock().unwrap();
        let (aid, command) = s.execs.last().unwrap();
        assert_eq!(*aid, s.alloc_of(&nomad_id(&job), &s.allocs[&nomad_id(&job)][1]), "allocation 1's id");
        let command: Vec<String> = serde_json::from_str(command).unwrap();
        assert_eq!(command[..4], [wrapper.to_string_lossy().as_ref(), "in-job", "--", "sh"]);
        assert!(s.exec_inputs.contains(&json!({"stdin": {"data": "dGhyb3VnaCBzdGRpbgo="}})), "{:?}", s.exec_inputs);
        assert!(s.exec_inputs.contains(&json!({"stdin": {"close": true}})));
        assert!(s.seen.iter().any(|(_, p, t)| p.ends_with("/exec") && t.as_deref() == Some(TOKEN)), "the token sent");
    }

    // A terminal's size goes as Nomad's tty_size frame, first. The command waits for a line
    // sent after it (frames arrive in order), so the session cannot end before the fake has
    // read the size (it did, under load: the command had ended first).
    let argv = ["sh", "-c", "read line; echo on-a-terminal"].map(String::from).to_vec();
    let io = n.exec(&job, 0, ExecStart { argv, tty: Some((40, 120)) }).await.unwrap().unwrap();
    io.input.send(ExecInput::Stdin(b"go\n".to_vec())).await.unwrap();
    let (out, _, end) = drain(io).await;
    assert_eq!((out.as_str(), end), ("on-a-terminal\n", ExecOutput::Exited(0)));
    assert!(state.lock().unwrap().exec_inputs.contains(&json!({"tty_size": {"height": 40, "width": 120}})));

    // No such allocation: refused with the reason before anything opens.
    let argv = vec!["true".to_string()];
    match n.exec(&job, 5, ExecStart { argv: argv.clone(), tty: None }).await {
        Err(ScheduleError::Refused(why)) => assert!(why.contains("allocation 5 of job") && why.contains("not running")),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("exec in an allocation that does not exist"),
    }
    // Nomad's own refusal (here: the allocation stopped since it was listed) ends the session
    // with Nomad's words.
    let aid = { state.lock().unwrap().execs.last().unwrap().0.clone() };
    state.lock().unwrap().gone_on_exec.insert(aid);
    let io = n.exec(&job, 0, ExecStart { argv, tty: None }).await.unwrap().unwrap();
    match drain(io).await.2 {
        ExecOutput::Failed(why) => assert!(why.contains("unknown allocation"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// A job's program on a Nomad client (docker driver, host network): the worker, started as
/// the container's root with the job spec's environment, becomes its job's uid before the
/// program runs, and the clients' egress rules as shipped (`infra/nomad/egress.nft`, loaded
/// into a network namespace standing for the node, linked to another standing for the rest of
/// the network) refuse that uid the node's own services (the Nomad client's API on 4646 and an
/// exporter on 9100, at its loopback and at its address), the clouds' metadata addresses, a
/// container bridge's workload and another node's Nomad, while a peer's port on another node,
/// the pool's serving gateway on the node (the worker's `/v1`) and the dynamic ports on the
/// node (where a job's own processes meet: torchrun's workers reach their agent's store at
/// `localhost`) stay open. The same probes from root in the same namespace reach every one
/// (the refusals are the rules' and the uid's). Before: the program ran as root in the
/// node's network and reached them all.
#[tokio::test]
async fn a_jobs_program_on_a_nomad_client_reaches_nothing_of_the_node() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    if !nix::unistd::geteuid().is_root() || Command::new("nft").arg("--version").output().is_err() {
        eprintln!("needs root and nft (cargo xtask test installs nftables); nothing run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().to_path_buf();
    // Two network namespaces: the node (its loopback, its address 10.77.0.1) and, at the other
    // end of a link, the rest of the network: another node at 10.77.0.2 and the cloud's
    // metadata address, routed through it.
    let (ns, far) = (format!("aic-egress-{}", std::process::id()), format!("aic-egress-far-{}", std::process::id()));
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let mut gone = vec![];
    for n in [&ns, &far] {
        let _ = Command::new("ip").args(["netns", "del", n]).status();
        assert!(Command::new("ip").args(["netns", "add", n]).status().unwrap().success());
        gone.push(Gone(n.clone()));
    }
    let ip = |n: &str, args: &[&str]| {
        let o = Command::new("ip").args(["netns", "exec", n, "ip"]).args(args).output().unwrap();
        assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    ip(&ns, &["link", "set", "lo", "up"]);
    ip(&ns, &["link", "add", "node0", "type", "veth", "peer", "name", "far0", "netns", &far]);
    ip(&ns, &["addr", "add", "10.77.0.1/24", "dev", "node0"]);
    ip(&ns, &["link", "set", "node0", "up"]);
    ip(&far, &["addr", "add", "10.77.0.2/24", "dev", "far0"]);
    for a in ["169.254.169.254", "168.63.129.16", "172.17.0.2"] {
        ip(&far, &["addr", "add", &format!("{a}/32"), "dev", "far0"]);
    }
    ip(&far, &["link", "set", "far0", "up"]);
    for a in ["169.254.169.254", "168.63.129.16", "172.17.0.2"] {
        ip(&ns, &["route", "add", &format!("{a}/32"), "via", "10.77.0.2"]);
    }
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/nomad/egress.nft");
    let o = Command::new("ip").args(["netns", "exec", &ns, "nft", "-f"]).arg(&rules).output().unwrap();
    assert!(o.status.success(), "nft -f egress.nft: {}", String::from_utf8_lossy(&o.stderr));
    let here = [
        ("127.0.0.1", 4646),
        ("127.0.0.1", 9100),
        ("127.0.0.1", 25002),
        ("10.77.0.1", 9100),
        ("10.77.0.1", 4646),
        ("10.77.0.1", 8800),
    ];
    let there = [
        ("169.254.169.254", 80),
        ("168.63.129.16", 80),
        ("172.17.0.2", 25003),
        ("10.77.0.2", 4646),
        ("10.77.0.2", 25001),
    ];
    let py = |t: &[(&str, u16)]| {
        format!("[{}]", t.iter().map(|(h, p)| format!("('{h}', {p})")).collect::<Vec<_>>().join(", "))
    };
    let mut listeners = vec![];
    for (n, t) in [(&ns, py(&here)), (&far, py(&there))] {
        let listen = format!(
            "import socket, threading, sys\n\
             def serve(s):\n    while True:\n        s.accept()[0].close()\n\
             for h, p in {t}:\n    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n    \
             s.bind((h, p)); s.listen(64)\n    threading.Thread(target=serve, args=(s,), daemon=True).start()\n\
             print('up', flush=True)\nsys.stdin.read()\n"
        );
        let mut listener = tokio::process::Command::new("ip")
            .args(["netns", "exec", n, "python3", "-c", &listen])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut up = String::new();
        let out = listener.stdout.as_mut().unwrap();
        tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(out), &mut up).await.unwrap();
        assert_eq!(up.trim(), "up");
        listeners.push(listener);
    }
    let targets: Vec<(&str, u16)> = here.iter().chain(&there).copied().collect();
    let py_targets = py(&targets);
    let probe = format!(
        "import os, socket\nprint('uid', os.getuid())\nfor h, p in {py_targets}:\n    \
         s = socket.socket(); s.settimeout(5)\n    try:\n        s.connect((h, p)); print(h, p, 'open')\n    \
         except OSError as e:\n        print(h, p, 'refused')\n    s.close()\n"
    );
    // From root in the node's network: everything answers.
    let o = Command::new("ip").args(["netns", "exec", &ns, "python3", "-c", &probe]).output().unwrap();
    let as_root = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(as_root.matches(" open").count(), targets.len(), "{as_root}");

    // The job, its code (the probe) and its status in the store the worker reaches.
    let store_root = root.join("store");
    let store = aic_core::StoreConfig::Local { root: store_root.clone() }.open().unwrap();
    let (_, m) = manifest(1, 1);
    let job = running_job(&store, &m).await;
    store.put_bytes(&format!("{}train.py", job.code_prefix()), probe.into_bytes().into()).await.unwrap();
    // (A local folder stands for the bucket: open to the job's uid as the gateway would be.)
    assert!(Command::new("chmod").args(["-R", "a+rwX"]).arg(&store_root).status().unwrap().success());

    // The task as the docker driver starts it: root, the spec's environment with Nomad's
    // values filled in.
    let mut c = cfg("http://127.0.0.1:1", TOKEN);
    c.driver = "docker".into();
    let uid = 3_000_123;
    let spec = aic_core::scheduler::nomad::job_spec(&c, &job, &m, 0, uid);
    let task_dir = root.join("alloc/worker/local");
    let fill = |v: &str| {
        v.replace("${NOMAD_ALLOC_INDEX}", "0")
            .replace("${NOMAD_META_aic_attempt}", "0")
            .replace("${node.unique.name}", "node-a")
            .replace("${NOMAD_IP_rdzv}", "10.77.0.1")
            .replace("${NOMAD_PORT_rdzv}", "25000")
            .replace("${NOMAD_TASK_DIR}", task_dir.to_str().unwrap())
    };
    let env: Vec<(String, String)> = spec["TaskGroups"][0]["Tasks"][0]["Env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), fill(v.as_str().unwrap())))
        .collect();
    assert!(env.iter().any(|(k, v)| k == "AIC_JOB_UID" && *v == uid.to_string()), "{env:?}");
    let worker = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("aic-worker");
    assert!(worker.exists(), "aic-worker is not built beside the tests: cargo build --bins");
    // The task's own `/etc/passwd` and `/etc/group` (a container's), which the worker gives
    // its job's user: copies bound over this machine's in a mount namespace of the task's.
    let (passwd, group) = (root.join("passwd"), root.join("group"));
    std::fs::copy("/etc/passwd", &passwd).unwrap();
    std::fs::copy("/etc/group", &group).unwrap();
    let task = "mount --bind \"$1\" /etc/passwd && mount --bind \"$2\" /etc/group && exec ip netns exec \"$3\" \"$4\"";
    let out = tokio::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", task, "task"])
        .args([passwd.as_os_str(), group.as_os_str(), std::ffi::OsStr::new(&ns), worker.as_os_str()])
        .env_clear()
        .envs(env)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("AIC_STORE", format!("file://{}", store_root.display()))
        .env("NOMAD_ALLOC_ID", "alloc-1")
        .output()
        .await
        .unwrap();
    for mut l in listeners {
        l.kill().await.unwrap();
    }
    let st = aic_core::status::current(&store, &job).await.unwrap().unwrap();
    assert_eq!(st.state, aic_schemas::JobState::Succeeded, "{st:?}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut logs = String::new();
    for k in store.list(&format!("{}logs/0/", job.prefix())).await.unwrap() {
        logs.push_str(&String::from_utf8_lossy(
            &store.get_limited(k.location.as_ref(), 1 << 20).await.unwrap().unwrap(),
        ));
    }
    assert!(logs.contains(&format!("uid {uid}\n")), "the program ran as another user:\n{logs}");
    assert!(std::fs::read_to_string(&passwd).unwrap().contains(&format!("aic:x:{uid}:{uid}:")), "the task's passwd");
    assert!(
        !std::fs::read_to_string("/etc/passwd").unwrap().contains(&format!(":{uid}:")),
        "this machine's passwd changed"
    );
    for (what, line) in [
        ("the node's loopback (Nomad's API)", "127.0.0.1 4646 refused"),
        ("the node's loopback (an exporter there)", "127.0.0.1 9100 refused"),
        ("its own processes' port on loopback (torchrun's store at localhost)", "127.0.0.1 25002 open"),
        ("the node's service at its own address", "10.77.0.1 9100 refused"),
        ("Nomad's port at the node's address", "10.77.0.1 4646 refused"),
        ("the pool's serving gateway on this node (the worker's /v1)", "10.77.0.1 8800 open"),
        ("the metadata address", "169.254.169.254 80 refused"),
        ("Azure's WireServer", "168.63.129.16 80 refused"),
        ("a container bridge's workload", "172.17.0.2 25003 refused"),
        ("another node's Nomad", "10.77.0.2 4646 refused"),
        ("a peer's port on another node", "10.77.0.2 25001 open"),
    ] {
        assert!(logs.contains(line), "{what}: expected {line:?}:\n{logs}");
    }
}

/// A job's uid on Nomad is handed out by the pool, never computed from the job's id (which
/// its owner chooses: a hostile owner could pick an id whose uid is a victim's). With a
/// range of two uids, two jobs registered at once by two functions hosts get the two (a
/// claim is a Variable written only if absent, `?cas=0`); a third waits for one to come
/// back; a cancelled job's uid comes back once its tasks have ended (not at the cancel: they
/// run on until their client has killed them); a claim whose job Nomad does not run is taken
/// over only once it is old (a claim is made just before its job is registered).
#[tokio::test]
async fn a_jobs_uid_is_handed_out_by_the_pool_one_job_at_a_time() {
    use aic_core::scheduler::nomad::uids::{PREFIX, STALE_AFTER};
    let (state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    c.job_uids = (5000, 2);
    let (one, two) = (NomadScheduler::new(c.clone(), temp_store()), NomadScheduler::new(c, temp_store()));
    let uid_of = |s: &Nomad, job: &JobKey| {
        let j = &s.jobs[&nomad_id(job)];
        let env = j["TaskGroups"][0]["Tasks"][0]["Env"]["AIC_JOB_UID"].as_str().unwrap().to_string();
        assert_eq!(j["Meta"]["aic_uid"].as_str(), Some(env.as_str()), "the meta keeps the uid the task runs as");
        let claim = &s.vars[&format!("{PREFIX}{env}")];
        assert_eq!(claim["job"].as_str(), Some(nomad_id(job).as_str()), "the claim names its job");
        env.parse::<u32>().unwrap()
    };
    let ((a, ma), (b, mb)) = (manifest(1, 1), manifest(1, 1));
    let (ra, rb) = tokio::join!(one.submit(&a, &ma), two.submit(&b, &mb));
    ra.unwrap();
    rb.unwrap();
    let (ua, ub) = {
        let s = state.lock().unwrap();
        (uid_of(&s, &a), uid_of(&s, &b))
    };
    assert_ne!(ua, ub, "two jobs registered at once share a uid");
    assert!([ua, ub].iter().all(|u| (5000..5002).contains(u)));

    // Every uid is held: a third job is not registered under one of them.
    let (c3, m3) = manifest(1, 1);
    match one.submit(&c3, &m3).await {
        Err(ScheduleError::Backend(why)) => assert!(why.contains("no free job uid"), "{why}"),
        other => panic!("a job got a uid another holds: {other:?}"),
    }
    assert!(!state.lock().unwrap().jobs.contains_key(&nomad_id(&c3)));

    // Cancelled, a's tasks run on until killed: its uid is still its own.
    two.cancel(&a).await.unwrap();
    assert!(one.submit(&c3, &m3).await.is_err(), "a uid went to a new job while the cancelled one's tasks ran");
    // They end: the watcher gives the uid back, and the third job gets it.
    let ended: Vec<String> = state.lock().unwrap().kill_stopped();
    assert!(!ended.is_empty());
    for aid in ended {
        let ev = json!({"ID": aid, "JobID": nomad_id(&a), "Namespace": "aic", "ClientStatus": "complete"});
        one.meter_ended(&ev).await.unwrap();
    }
    assert!(!state.lock().unwrap().vars.contains_key(&format!("{PREFIX}{ua}")), "the claim outlived its job");
    one.submit(&c3, &m3).await.unwrap();
    assert_eq!(uid_of(&state.lock().unwrap(), &c3), ua);

    // A claim whose job Nomad does not run (its host stopped before giving it back): kept
    // while it is young, taken over once it is old.
    two.cancel(&b).await.unwrap();
    state.lock().unwrap().kill_stopped();
    let ghost = "aic-01ghost00000000000000000";
    {
        let mut s = state.lock().unwrap();
        s.vars.insert(format!("{PREFIX}{ub}"), json!({"job": ghost}));
        s.index += 1;
        let index = s.index;
        s.var_meta.insert(format!("{PREFIX}{ub}"), (index, chrono::Utc::now().timestamp_nanos_opt().unwrap()));
    }
    let (d, md) = manifest(1, 1);
    assert!(one.submit(&d, &md).await.is_err(), "a claim made an instant ago was taken");
    {
        let mut s = state.lock().unwrap();
        let old =
            chrono::Utc::now() - chrono::Duration::from_std(STALE_AFTER + std::time::Duration::from_secs(1)).unwrap();
        s.var_meta.get_mut(&format!("{PREFIX}{ub}")).unwrap().1 = old.timestamp_nanos_opt().unwrap();
    }
    one.submit(&d, &md).await.unwrap();
    assert_eq!(uid_of(&state.lock().unwrap(), &d), ub);
}
