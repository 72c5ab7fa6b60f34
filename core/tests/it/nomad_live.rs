//! Live tests against a real Nomad cluster; they run when `NOMAD_ADDR` is set (with
//! `NOMAD_TOKEN` where ACLs are on) and otherwise print why they did nothing. For a pool
//! operator:
//!
//! ```text
//! NOMAD_ADDR=http://nomad.pool:4646 NOMAD_TOKEN=… NOMAD_NAMESPACE=aic AIC_NOMAD_DATACENTER=dc1 \
//!   AIC_NOMAD_IMAGE=registry.pool.example/aic-worker:0.1.0 \
//!   cargo test -p aic-core --test it nomad_live:: -- --nocapture --test-threads 1
//! ```
//!
//! - `a_job_is_placed_or_queued_then_deregistered_on_a_real_cluster`: a 1-miner × 1-GPU job
//!   whose task is `/bin/true`, placed or queued with a reason, registered once, deregistered.
//! - `a_rank_sees_exactly_the_gpus_nomad_reserved`: a 1-miner × 1-GPU job whose task runs
//!   `nvidia-smi -L` in the worker image (docker driver, NVIDIA runtime); its output lists
//!   exactly one GPU, the one whose UUID the device plugin reserved.
//! - `a_training_job_waits_whole_while_a_node_is_taken`: one node's GPUs taken by a blocker,
//!   a job of as many miners as there are GPU nodes waits without registering anything, then
//!   is placed whole when the blocker is stopped.
//! - `a_lost_node_restarts_the_whole_job` (only with `AIC_NOMAD_LIVE_LOSE=1`, by hand): a
//!   2-miner job is placed, the test says which node's Nomad client to stop, and checks that
//!   the rank there goes `unknown`, that Nomad places no replacement, and that the watcher
//!   registers attempt 1.
//! - `exec_in_an_allocation_ends_with_the_commands_exit_code_zero_included`: `aic exec`'s path
//!   (`aic-worker in-job` through Nomad's exec API) answers 0 for `true` and 3 for `exit 3`.
//! - `a_drained_node_restarts_the_training_job_whole` (only with `AIC_NOMAD_LIVE_DRAIN=1`: it
//!   drains one node for a short while): the rank stopped by the drain's deadline is taken for
//!   lost and the job registered again as attempt 1.
//! - `a_users_image_runs_with_the_pools_worker_bound_in` (with `AIC_NOMAD_LIVE_IMAGE`, an image
//!   the cluster can pull, and `AIC_NOMAD_WORKER_MOUNT`, the clients' folder holding a static
//!   `aic-worker`; the docker plugin with `volumes { enabled = true }`): the job runs in that
//!   image, and the worker bound in at `/opt/aic` answers `aic-worker --version` there.
//! - `a_request_for_a_gpu_model_lands_on_it_and_one_the_cluster_lacks_is_refused`: a job asking
//!   the model and memory of the cluster's first GPU node (its device plugin's group name and
//!   `memory` attribute) is placed on a node with that group, and the GPUs Nomad reserved are
//!   of that model; one asking a model no node has is refused with the cluster's GPUs named.
//! - `a_job_outlives_a_redeploy_of_the_functions_host` (with `AIC_NOMAD_LIVE_FUNCTIONS`, the
//!   functions' Nomad job id, and `AIC_STORE`, the pool's store): the functions host is
//!   redeployed while a job prints for a minute; every line and the job's success still
//!   reach the store through the stable worker gateway address.

use std::time::{Duration, Instant};

use aic_core::layout::JobKey;
use aic_core::scheduler::nomad::{NomadConfig, NomadScheduler, nomad_id};
use aic_core::scheduler::{ScheduleError, Scheduler, Submitted};
use aic_schemas::{JobId, JobManifest};
use serde_json::{Value, json};

use crate::common::recorded;

fn live() -> Option<(NomadScheduler, aic_core::Store)> {
    match NomadConfig::from_env(vec![]) {
        Ok(Some(cfg)) => {
            let dir = tempfile::tempdir().unwrap().keep();
            let store = aic_core::StoreConfig::Local { root: dir }.open().unwrap();
            Some((NomadScheduler::new(cfg, store.clone()), store))
        }
        Ok(None) => {
            eprintln!("nomad_live: NOMAD_ADDR is not set; nothing to run against (see this file's header)");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// The live scheduler, its task `/bin/true` unless `AIC_NOMAD_WORKER` names one: for tests of
/// placement alone.
fn live_placing() -> Option<NomadScheduler> {
    let (n, store) = live()?;
    if std::env::var("AIC_NOMAD_WORKER").is_ok() {
        return Some(n);
    }
    let mut cfg = n.config().clone();
    cfg.worker = "/bin/true".into();
    Some(NomadScheduler::new(cfg, store))
}

fn manifest(miners: u32, gpus: u32) -> (JobKey, JobManifest) {
    let now = chrono::Utc::now();
    let m: JobManifest = serde_json::from_value(json!({
        "version": 1,
        "request": {"version": 1, "kind": "train", "owner": "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
            "job_id": JobId::generate(), "entrypoint": "train.py", "miners": miners, "gpus_per_miner": gpus,
            "max_hours": 0.01, "created_at": now, "expires_at": now + chrono::Duration::hours(1)},
        "quote": {"gpu_hours": 0.01, "price_per_gpu_hour": "0", "total": "0"},
        "validated_at": now,
    }))
    .unwrap();
    (JobKey::new(m.request.owner, m.request.job_id.clone()), m)
}

/// Registers the job's spec with its task's command replaced by `argv` (the worker image
/// runs it), and returns the Nomad job id.
async fn register_running(n: &NomadScheduler, job: &JobKey, m: &JobManifest, argv: &[&str]) -> String {
    let mut spec = aic_core::scheduler::nomad::job_spec(n.config(), job, m, 0, 3_000_123);
    let task = &mut spec["TaskGroups"][0]["Tasks"][0];
    task["Config"]["command"] = json!(argv[0]);
    task["Config"]["args"] = json!(argv[1..]);
    n.call(reqwest::Method::POST, "jobs", &[], Some(&json!({"Job": spec}))).await.unwrap();
    nomad_id(job)
}

async fn allocations(n: &NomadScheduler, id: &str) -> Vec<Value> {
    let v = n.call(reqwest::Method::GET, &format!("job/{id}/allocations"), &[], None).await.unwrap();
    v.and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

/// The scheduler's watcher and housekeeping in the background; send on the first to stop them.
fn running(
    n: &NomadScheduler,
    store: &aic_core::Store,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (n, store) = (n.clone(), store.clone());
    let watcher = tokio::spawn(async move {
        n.run(
            store,
            Box::pin(async {
                let _ = rx.await;
            }),
        )
        .await
    });
    (tx, watcher)
}

/// The exit code of `argv` run in allocation 0 of the job through Nomad's exec API, asked
/// again until the task has published its environment (125 before).
async fn exec_code(n: &NomadScheduler, job: &JobKey, argv: &[String]) -> i32 {
    use aic_core::scheduler::{ExecOutput, ExecStart};
    until("the exec session to open", Duration::from_secs(60), async || {
        let mut io = n.exec(job, 0, ExecStart { argv: argv.to_vec(), tty: None }).await.unwrap()?;
        drop(io.input);
        loop {
            match io.output.recv().await {
                Some(ExecOutput::Exited(125)) | None => return None,
                Some(ExecOutput::Exited(c)) => return Some(c),
                Some(ExecOutput::Failed(why)) => panic!("{why}"),
                Some(_) => {}
            }
        }
    })
    .await
}

async fn until<T>(what: &str, within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn a_job_is_placed_or_queued_then_deregistered_on_a_real_cluster() {
    let Some(n) = live_placing() else { return };
    let pool = n.pool().await.expect("reading the cluster's nodes");
    eprintln!("gateways: {pool:#?}");
    let (job, m) = manifest(1, 1);
    match n.submit(&job, &m).await {
        Ok(Submitted::Placed(nodes)) => assert!(!nodes.is_empty()),
        Ok(Submitted::Queued(why)) => eprintln!("queued: {why}"),
        Err(ScheduleError::Unplaceable(why)) => {
            eprintln!("this cluster has no GPU node in {}: {why}", n.config().datacenter);
            return;
        }
        Err(e) => panic!("{e}"),
    }
    // Registering again is a no-op.
    assert!(n.submit(&job, &m).await.is_ok());
    n.cancel(&job).await.unwrap();
    n.cancel(&job).await.unwrap();
}

#[tokio::test]
async fn a_request_for_a_gpu_model_lands_on_it_and_one_the_cluster_lacks_is_refused() {
    let Some(n) = live_placing() else { return };
    let pool = n.pool().await.expect("reading the cluster's nodes");
    let Some((model, memory_mb)) = pool
        .iter()
        .filter(|g| g.name == n.config().datacenter)
        .flat_map(|g| &g.miners)
        .find_map(|m| Some((m.gpu_model.clone()?, m.gpu_memory_mb?)))
    else {
        eprintln!("no node in {} reports its GPUs' model and memory; nothing to ask for", n.config().datacenter);
        return;
    };
    let (job, mut m) = manifest(1, 1);
    m.request.gpu_types = vec![model.clone()];
    m.request.min_gpu_memory_gb = Some(((memory_mb as f64) / 1024.0).floor().max(1.0) as u32);
    match n.submit(&job, &m).await.unwrap() {
        Submitted::Placed(_) => {
            let id = nomad_id(&job);
            let alloc = until("an allocation", Duration::from_secs(120), async || {
                allocations(&n, &id).await.into_iter().next()
            })
            .await;
            let aid = alloc["ID"].as_str().unwrap();
            let full = n.call(reqwest::Method::GET, &format!("allocation/{aid}"), &[], None).await.unwrap().unwrap();
            let got = full["AllocatedResources"]["Tasks"]["worker"]["Devices"][0]["Name"].as_str().unwrap_or("");
            assert_eq!(got, model, "Nomad reserved GPUs of another model");
        }
        Submitted::Queued(why) => eprintln!("queued (its GPUs are busy): {why}"),
    }
    n.cancel(&job).await.unwrap();
    let (job, mut m) = manifest(1, 1);
    m.request.gpu_types = vec!["NoSuchGPU9000".into()];
    match n.submit(&job, &m).await {
        Err(ScheduleError::Unplaceable(why)) => assert!(why.contains("its GPUs:") && why.contains(&model), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_rank_sees_exactly_the_gpus_nomad_reserved() {
    let Some((n, _store)) = live() else { return };
    let (job, m) = manifest(1, 1);
    let id = register_running(&n, &job, &m, &["nvidia-smi", "-L"]).await;
    let alloc = until("the allocation to finish", Duration::from_secs(300), async || {
        allocations(&n, &id)
            .await
            .into_iter()
            .find(|a| matches!(a["ClientStatus"].as_str(), Some("complete" | "failed")))
    })
    .await;
    let aid = alloc["ID"].as_str().unwrap();
    let full = n.call(reqwest::Method::GET, &format!("allocation/{aid}"), &[], None).await.unwrap().unwrap();
    let reserved: Vec<String> = full["AllocatedResources"]["Tasks"]["worker"]["Devices"][0]["DeviceIDs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("task", "worker"), ("type", "stdout"), ("plain", "true"), ("origin", "start")])
        .finish();
    let logs = reqwest::Client::new()
        .get(format!("{}/v1/client/fs/logs/{aid}?{q}", n.config().addr))
        .header("X-Nomad-Token", n.config().token.clone().unwrap_or_default())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    eprintln!("nvidia-smi -L in the rank:\n{logs}\nreserved: {reserved:?}");
    assert_eq!(alloc["ClientStatus"], "complete", "nvidia-smi failed in the rank: {logs}");
    let listed: Vec<&str> = logs.lines().filter(|l| l.starts_with("GPU ")).collect();
    assert_eq!(listed.len(), 1, "the rank sees other GPUs than its own");
    assert!(listed[0].contains(&reserved[0]), "the rank sees {} but Nomad reserved {reserved:?}", listed[0]);
    n.cancel(&job).await.unwrap();
}

#[tokio::test]
async fn a_training_job_waits_whole_while_a_node_is_taken() {
    let Some((n, store)) = live() else { return };
    let gw = n.config().datacenter.clone();
    let pool = n.pool().await.unwrap();
    let miners: Vec<_> =
        pool.iter().filter(|g| g.name == gw).flat_map(|g| g.miners.clone()).filter(|m| m.gpus > 0).collect();
    if miners.len() < 2 || miners.iter().any(|m| m.free_gpus < m.gpus) {
        eprintln!("needs 2 or more idle GPU nodes in {gw}: {miners:?}");
        return;
    }
    // A blocker takes every GPU of one node.
    let biggest = miners.iter().map(|m| m.gpus).max().unwrap();
    let (blocker, bm) = manifest(1, biggest);
    register_running(&n, &blocker, &bm, &["sleep", "600"]).await;
    until("the blocker to run", Duration::from_secs(300), async || {
        allocations(&n, &nomad_id(&blocker)).await.into_iter().find(|a| a["ClientStatus"] == "running")
    })
    .await;
    let (job, m) = manifest(miners.len() as u32, 1);
    let _ = aic_core::status::advance(
        &store,
        &job,
        aic_core::status::Transition::new(aic_schemas::JobState::Submitted, "test"),
    )
    .await;
    store.create_json(&job.manifest(), &m).await.unwrap();
    match n.submit(&job, &m).await.unwrap() {
        Submitted::Queued(why) => eprintln!("waits: {why}"),
        other => panic!("{other:?} while a node is taken"),
    }
    assert!(allocations(&n, &nomad_id(&job)).await.is_empty(), "a rank holds GPUs while the job waits");
    n.cancel(&blocker).await.unwrap();
    until("the job to be placed whole", Duration::from_secs(300), async || {
        let p = n.place_waiting().await.unwrap();
        p.contains(&job).then_some(())
    })
    .await;
    assert_eq!(allocations(&n, &nomad_id(&job)).await.len(), miners.len());
    n.cancel(&job).await.unwrap();
}

#[tokio::test]
async fn a_lost_node_restarts_the_whole_job() {
    if std::env::var("AIC_NOMAD_LIVE_LOSE").as_deref() != Ok("1") {
        eprintln!("nomad_live: AIC_NOMAD_LIVE_LOSE=1 runs the lost-node test (you stop a Nomad client by hand)");
        return;
    }
    let Some((n, store)) = live() else { return };
    let (_, m) = manifest(2, 1);
    use aic_schemas::JobState::{Paid, Scheduled, Submitted as Sent};
    let job = recorded(&store, &m, &[Sent, Paid, Scheduled]).await;
    let Submitted::Placed(nodes) = n.submit(&job, &m).await.unwrap() else { panic!("no room for 2 miners") };
    let (tx, watcher) = running(&n, &store);
    eprintln!("stop the Nomad client on {} now (systemctl stop nomad); waiting up to 10 minutes", nodes[1]);
    let id = nomad_id(&job);
    until("the rank to go unknown", Duration::from_secs(600), async || {
        allocations(&n, &id).await.into_iter().find(|a| a["ClientStatus"] == "unknown")
    })
    .await;
    until("attempt 1", Duration::from_secs(120), async || {
        let j = n.call(reqwest::Method::GET, &format!("job/{id}"), &[], None).await.unwrap()?;
        (j["Meta"]["aic_attempt"] == "1").then_some(())
    })
    .await;
    let allocs = allocations(&n, &id).await;
    assert!(
        allocs.iter().all(|a| a["PreviousAllocation"].as_str().unwrap_or("").is_empty()),
        "Nomad replaced a rank by itself: {allocs:#?}"
    );
    tx.send(()).unwrap();
    watcher.await.unwrap();
    n.cancel(&job).await.unwrap();
}

/// An `aic exec` on a real cluster ends with the command's own exit code, 0 included (Nomad
/// leaves a 0 `exit_code` out of its exit frame; it was read as -1). The task runs the worker
/// image's shell instead of the worker and publishes what `aic-worker in-job` reads.
#[tokio::test]
async fn exec_in_an_allocation_ends_with_the_commands_exit_code_zero_included() {
    let Some((n, _store)) = live() else { return };
    let (job, m) = manifest(1, 1);
    let publish = "printf '{\"env\":{},\"cwd\":\"/\"}' > \"$AIC_WORK_DIR/exec-env.json\"; exec sleep 600";
    let id = register_running(&n, &job, &m, &["sh", "-c", publish]).await;
    until("the allocation to run", Duration::from_secs(300), async || {
        allocations(&n, &id).await.into_iter().find(|a| a["ClientStatus"] == "running")
    })
    .await;
    for (argv, want) in [(vec!["true"], 0), (vec!["sh", "-c", "exit 3"], 3)] {
        let argv: Vec<String> = argv.into_iter().map(String::from).collect();
        assert_eq!(exec_code(&n, &job, &argv).await, want, "{argv:?}");
    }
    n.cancel(&job).await.unwrap();
}

/// A node drained under a 2-miner training job (only with `AIC_NOMAD_LIVE_DRAIN=1`: it drains
/// one of the cluster's nodes for a minute and marks it eligible again): Nomad stops the rank
/// there at the drain's deadline and places no replacement (batch allocations are never
/// migrated: `nomad/drainer/watch_jobs.go`; before the fix of hashicorp/nomad#26929 one was
/// replaced alone); the watcher takes the stopped rank for lost and registers attempt 1.
#[tokio::test]
async fn a_drained_node_restarts_the_training_job_whole() {
    if std::env::var("AIC_NOMAD_LIVE_DRAIN").as_deref() != Ok("1") {
        eprintln!("nomad_live: AIC_NOMAD_LIVE_DRAIN=1 runs the drain test (it drains one of the cluster's nodes)");
        return;
    }
    let Some((n, store)) = live() else { return };
    let (_, m) = manifest(2, 1);
    use aic_schemas::JobState::{Paid, Running, Submitted as Sent};
    let job = recorded(&store, &m, &[Sent, Paid, Running]).await;
    let Submitted::Placed(_) = n.submit(&job, &m).await.unwrap() else { panic!("no room for 2 miners") };
    let id = nomad_id(&job);
    let rank = until("both ranks to run", Duration::from_secs(300), async || {
        let allocs = allocations(&n, &id).await;
        (allocs.iter().filter(|a| a["ClientStatus"] == "running").count() == 2).then(|| allocs[1].clone())
    })
    .await;
    let (tx, watcher) = running(&n, &store);
    let node = rank["NodeID"].as_str().unwrap().to_string();
    // `POST /v1/node/:node_id/drain` (api/nodes.go `UpdateDrainOpts`): a 10 s deadline.
    let drain = json!({"NodeID": node, "DrainSpec": {"Deadline": 10_000_000_000u64, "IgnoreSystemJobs": true}});
    n.call(reqwest::Method::POST, &format!("node/{node}/drain"), &[], Some(&drain)).await.unwrap();
    let restarted = until("attempt 1", Duration::from_secs(180), async || {
        let j = n.call(reqwest::Method::GET, &format!("job/{id}"), &[], None).await.unwrap()?;
        (j["Meta"]["aic_attempt"] == "1").then_some(())
    })
    .await;
    let undrain = json!({"NodeID": node, "DrainSpec": null, "MarkEligible": true});
    n.call(reqwest::Method::POST, &format!("node/{node}/drain"), &[], Some(&undrain)).await.unwrap();
    let () = restarted;
    let st = aic_core::status::history(&store, &job).await.unwrap();
    assert!(st.iter().any(|r| r.state == aic_schemas::JobState::Retrying), "{st:?}");
    tx.send(()).unwrap();
    watcher.await.unwrap();
    n.cancel(&job).await.unwrap();
}

/// The functions host is redeployed while a job runs (only with `AIC_NOMAD_LIVE_FUNCTIONS` =
/// the functions' Nomad job id and `AIC_STORE` = the pool's store, which the test reads and
/// writes with the operator's credentials): the job's worker, which reaches the host through
/// the stable worker gateway address (`AIC_NOMAD_WORKER_GATEWAY`), keeps storing its
/// program's lines and its status through the new host; the job succeeds with every line.
#[tokio::test]
async fn a_job_outlives_a_redeploy_of_the_functions_host() {
    let (Ok(functions), Ok(url)) = (std::env::var("AIC_NOMAD_LIVE_FUNCTIONS"), std::env::var("AIC_STORE")) else {
        eprintln!("nomad_live: AIC_NOMAD_LIVE_FUNCTIONS and AIC_STORE run the redeploy test");
        return;
    };
    let Some((n, _)) = live() else { return };
    assert!(n.config().worker_gateway.is_some(), "the redeploy test needs AIC_NOMAD_WORKER_GATEWAY");
    let store = aic_core::StoreConfig::parse(&url).unwrap().open().unwrap();
    let (_, m) = manifest(1, 1);
    use aic_schemas::JobState::{Paid, Scheduled, Submitted as Sent};
    let job = recorded(&store, &m, &[Sent, Paid, Scheduled]).await;
    let program = "import time\nfor i in range(60):\n    print('line', i, flush=True)\n    time.sleep(1)\n";
    store.put_bytes(&format!("{}train.py", job.code_prefix()), program.as_bytes().to_vec().into()).await.unwrap();
    let Submitted::Placed(_) = n.submit(&job, &m).await.unwrap() else { panic!("no room for the job") };
    let logs = |store: aic_core::Store, job: JobKey| async move {
        let mut text = String::new();
        let mut keys = store.list(&format!("{}logs/0/", job.prefix())).await.unwrap();
        keys.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        for k in keys {
            let chunk = store.get_limited(k.location.as_ref(), 1 << 20).await.unwrap().unwrap_or_default();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    };
    until("the program to print", Duration::from_secs(300), async || {
        logs(store.clone(), job.clone()).await.contains("line 0").then_some(())
    })
    .await;
    // Redeployed: the same job spec with a new meta value is a new version, its allocation
    // replaced (`nomad job run` of a changed file does the same).
    let mut spec = n.call(reqwest::Method::GET, &format!("job/{functions}"), &[], None).await.unwrap().unwrap();
    spec["Meta"]["aic_redeployed"] = json!(chrono::Utc::now().to_rfc3339());
    n.call(reqwest::Method::POST, "jobs", &[], Some(&json!({"Job": spec}))).await.unwrap();
    let st = until("the job to end", Duration::from_secs(600), async || {
        let st = aic_core::status::current(&store, &job).await.unwrap()?;
        st.state.is_terminal().then_some(st)
    })
    .await;
    assert_eq!(st.state, aic_schemas::JobState::Succeeded, "{st:?}");
    let text = logs(store.clone(), job.clone()).await;
    assert!((0..60).all(|i| text.contains(&format!("line {i}\n"))), "lines lost across the redeploy:\n{text}");
}

/// A user's image with the pool's worker bound in (only with `AIC_NOMAD_LIVE_IMAGE` and
/// `AIC_NOMAD_WORKER_MOUNT`): the task's image is the user's, and the worker runs from the
/// mount inside it (its `in-job` path through Nomad's exec answers `true` with 0).
#[tokio::test]
async fn a_users_image_runs_with_the_pools_worker_bound_in() {
    let Ok(image) = std::env::var("AIC_NOMAD_LIVE_IMAGE") else {
        eprintln!("nomad_live: AIC_NOMAD_LIVE_IMAGE (with AIC_NOMAD_WORKER_MOUNT) runs the image test");
        return;
    };
    let Some((n, store)) = live() else { return };
    let mut cfg = n.config().clone();
    assert!(cfg.worker_mount.is_some(), "set AIC_NOMAD_WORKER_MOUNT to the clients' folder with a static aic-worker");
    cfg.images = vec![image.clone()];
    let n = NomadScheduler::new(cfg, store);
    assert_eq!(n.images(), std::slice::from_ref(&image));
    let (job, mut m) = manifest(1, 1);
    m.request.image = Some(image.clone());
    // The worker's own run needs a store; this one only needs the task up: the worker from
    // the mount, kept alive, its environment published for `in-job`.
    let publish = "printf '{\"env\":{},\"cwd\":\"/\"}' > \"$AIC_WORK_DIR/exec-env.json\"; exec sleep 600";
    let id = register_running(&n, &job, &m, &["sh", "-c", publish]).await;
    let alloc = until("the allocation to run", Duration::from_secs(600), async || {
        allocations(&n, &id).await.into_iter().find(|a| a["ClientStatus"] == "running")
    })
    .await;
    let full = n
        .call(reqwest::Method::GET, &format!("allocation/{}", alloc["ID"].as_str().unwrap()), &[], None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(full["Job"]["TaskGroups"][0]["Tasks"][0]["Config"]["image"], image.as_str());
    // `register_running` replaced the command; exec runs the worker bound in at /opt/aic.
    assert_eq!(exec_code(&n, &job, &["true".to_string()]).await, 0);
    n.cancel(&job).await.unwrap();
}
