//! The scheduler contract: what every `Scheduler` backend must do, written once and run
//! against each — the local scheduler for real (worker processes), and the Nomad backend
//! against the server that speaks Nomad's API (`common`). A new backend adds itself to
//! `backends!` and passes every case, or is not done.
//!
//! The pool in each: two miners with 2 GPUs each in gateway `test_gateway` (Nomad's fake also
//! has an ineligible node there, and another gateway).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aic_core::layout::JobKey;
use aic_core::scheduler::local::{LocalConfig, LocalScheduler};
use aic_core::scheduler::nomad::{AllocAction, NomadScheduler, nomad_id};
use aic_core::scheduler::recovery::MAX_RETRIES;
use aic_core::scheduler::{ScheduleError, Scheduler, Submitted};
use aic_core::status::{self, Transition};
use aic_core::{Store, StoreConfig};
use aic_schemas::{JobManifest, JobState};

use crate::common::*;

const GATEWAY: &str = "test_gateway";

/// One backend under test, and how it learns that an allocation was lost.
enum Backend {
    Local { sched: LocalScheduler, store: Store, starts: std::path::PathBuf, _dir: tempfile::TempDir },
    Nomad { sched: Box<NomadScheduler>, store: Store, state: Arc<Mutex<Nomad>>, _dir: tempfile::TempDir },
}

fn local() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Local { root: dir.path().join("store") }.open().unwrap();
    let starts = dir.path().join("starts.txt");
    let worker = dir.path().join("worker.sh");
    // A worker that runs until stopped, and says which allocation and attempt it is.
    std::fs::write(
        &worker,
        "#!/bin/sh\necho \"$AIC_JOB_ID $AIC_ALLOC_INDEX $AIC_ATTEMPT $$\" >> \"$STARTS\"\nexec sleep 120\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sched = LocalScheduler::new(
        LocalConfig {
            miners: 2,
            gpus_per_miner: 2,
            gateway: GATEWAY.into(),
            worker_bin: worker,
            work_root: dir.path().join("work"),
            worker_env: vec![("STARTS".into(), starts.to_string_lossy().into_owned())],
            time_limit_grace: Duration::from_secs(1),
            // Its workers are scripts that write into the test's folder: not sandboxed.
            sandbox: false,
            gpu_types: Vec::new(),
        },
        store.clone(),
    );
    Backend::Local { sched, store, starts, _dir: dir }
}

async fn nomad_backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Local { root: dir.path().join("store") }.open().unwrap();
    let (state, addr) = nomad().await;
    let mut c = cfg(&addr, TOKEN);
    c.time_limit_grace = Duration::from_secs(1);
    Backend::Nomad { sched: Box::new(NomadScheduler::new(c, store.clone())), store, state, _dir: dir }
}

impl Backend {
    fn scheduler(&self) -> &dyn Scheduler {
        match self {
            Backend::Local { sched, .. } => sched,
            Backend::Nomad { sched, .. } => sched.as_ref(),
        }
    }

    fn store(&self) -> &Store {
        match self {
            Backend::Local { store, .. } | Backend::Nomad { store, .. } => store,
        }
    }

    /// Allocation `index` of `job` is lost, as the backend would find out: the local
    /// worker process killed; Nomad's event stream reporting the allocation `lost`.
    async fn lose(&self, job: &JobKey, index: u32) {
        match self {
            Backend::Local { starts, .. } => {
                let pid = eventually("the worker to start", || {
                    let text = std::fs::read_to_string(starts).unwrap_or_default();
                    text.lines().rev().find_map(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        (f.len() == 4 && f[0] == job.job.as_str() && f[1] == index.to_string())
                            .then(|| f[3].parse::<i32>().unwrap())
                    })
                })
                .await;
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                // Forget it, so the next loss waits for the next worker.
                let text = std::fs::read_to_string(starts).unwrap();
                let kept: Vec<&str> = text.lines().filter(|l| !l.ends_with(&format!(" {pid}"))).collect();
                std::fs::write(starts, kept.join("\n") + "\n").unwrap();
            }
            Backend::Nomad { sched, store, state, .. } => {
                let mut ev = {
                    let node = state.lock().unwrap().allocs[&nomad_id(job)][index as usize].clone();
                    crate::common::lose(state, job, &node)
                };
                ev["Name"] = serde_json::json!(format!("{}.train[{index}]", nomad_id(job)));
                let act = sched.on_alloc(store, &ev).await.unwrap();
                assert!(!matches!(act, AllocAction::Stopped), "{act:?}");
                self.stopped_ones_end().await;
            }
        }
    }

    /// The allocations the backend stopped have ended: their kill timeout passed (Nomad's
    /// clients kill a stopped task within it, and until then its GPUs stay taken); what the
    /// housekeeping does when they end is done (waiting jobs tried again). The local
    /// scheduler stops its workers itself (SIGTERM, SIGKILL after its grace).
    async fn stopped_ones_end(&self) {
        if let Backend::Nomad { sched, state, .. } = self {
            state.lock().unwrap().kill_stopped();
            sched.place_waiting().await.unwrap();
        }
    }

    /// Waits until the backend has acted on the loss of replica `index` (the local scheduler
    /// starts a worker for it again; Nomad's watcher acts as it reads the event, in `lose`).
    async fn handled_loss(&self, job: &JobKey, index: u32) {
        if let Backend::Local { starts, .. } = self {
            eventually("the replica to start again", || {
                let text = std::fs::read_to_string(starts).unwrap_or_default();
                text.lines().any(|l| l.starts_with(&format!("{} {index} ", job.job))).then_some(())
            })
            .await;
        }
    }

    /// What the backend does on its own over time about paid time: the local scheduler's
    /// timers fire by themselves; Nomad's housekeeping looks at the jobs' deadlines.
    async fn enforce(&self) {
        if let Backend::Nomad { sched, .. } = self {
            sched.stop_overdue().await.unwrap();
        }
    }

    /// Waiting jobs are tried again as room frees (local: at once, by itself; Nomad: its
    /// housekeeping).
    async fn place_waiting(&self) {
        if let Backend::Nomad { sched, .. } = self {
            sched.place_waiting().await.unwrap();
        }
    }

    /// Whether no allocation of `job` was ever started.
    async fn never_started(&self, job: &JobKey) -> bool {
        match self {
            Backend::Local { starts, .. } => {
                !std::fs::read_to_string(starts).unwrap_or_default().contains(job.job.as_str())
            }
            Backend::Nomad { state, .. } => !state.lock().unwrap().jobs.contains_key(&nomad_id(job)),
        }
    }

    /// The allocations of `job` that ended reach the backend (Nomad: on its event stream).
    async fn report_ended(&self, job: &JobKey) {
        if let Backend::Nomad { sched, state, .. } = self {
            let ended: Vec<String> = {
                let s = state.lock().unwrap();
                let id = nomad_id(job);
                s.info
                    .iter()
                    .filter(|(a, i)| a.starts_with(&id) && i.finished_at.is_some())
                    .map(|(a, _)| a.clone())
                    .collect()
            };
            for aid in ended {
                let ev = serde_json::json!({"ID": aid, "JobID": nomad_id(job), "Namespace": "aic", "ClientStatus": "complete"});
                sched.meter_ended(&ev).await.unwrap();
            }
        }
    }

    /// Waits until `job`'s allocation 0 was started as attempt `want` (a worker writes its
    /// start line a moment after it is spawned); the attempt it was last started as.
    async fn attempt_now(&self, job: &JobKey, want: u32) -> u32 {
        match self {
            Backend::Local { starts, .. } => {
                let last = || {
                    let text = std::fs::read_to_string(starts).unwrap_or_default();
                    text.lines().rev().find_map(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        (f.len() == 4 && f[0] == job.job.as_str() && f[1] == "0").then(|| f[2].parse::<u32>().unwrap())
                    })
                };
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    match last() {
                        Some(a) if a == want || Instant::now() > deadline => return a,
                        None if Instant::now() > deadline => panic!("the worker never started"),
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
            Backend::Nomad { state, .. } => {
                let s = state.lock().unwrap();
                s.jobs[&nomad_id(job)]["Meta"]["aic_attempt"].as_str().unwrap().parse().unwrap()
            }
        }
    }

    /// Free GPUs of the gateway, as the pool view says.
    async fn free_gpus(&self) -> u32 {
        let pool = self.scheduler().pool().await.unwrap();
        pool.iter().filter(|g| g.name == GATEWAY).flat_map(|g| &g.miners).map(|m| m.free_gpus).sum()
    }
}

impl Drop for Backend {
    /// Every worker a case started dies with it, passed or failed.
    fn drop(&mut self) {
        if let Backend::Local { starts, .. } = self {
            for line in std::fs::read_to_string(starts).unwrap_or_default().lines() {
                if let Some(pid) = line.rsplit(' ').next().and_then(|p| p.parse::<i32>().ok()) {
                    let _ =
                        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

/// Polls `f` until it gives a value, for at most 20 s.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job of `miners` × 2 GPUs, its manifest in the store and its status `running` (as the
/// functions and the worker would have written them).
async fn job(b: &Backend, kind: &str, miners: u32) -> (JobKey, JobManifest) {
    let (_, m) = manifest_of(kind, miners, 2);
    (running_job(b.store(), &m).await, m)
}

/// The same, where a case's own variable is named `job`.
async fn job_of(b: &Backend, kind: &str, miners: u32) -> (JobKey, JobManifest) {
    job(b, kind, miners).await
}

async fn states(b: &Backend, job: &JobKey) -> Vec<JobState> {
    status::history(b.store(), job).await.unwrap().into_iter().map(|r| r.state).collect()
}

/// After a case: stops what the backend started, whether the case passed or not.
async fn finish(b: Backend, outcome: std::thread::Result<()>) {
    b.scheduler().shutdown().await;
    drop(b);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

macro_rules! backends {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let b = super::local();
                    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(super::$case(&b))).await;
                    super::finish(b, outcome).await;
                }
            )*
        }
        mod nomad {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let b = super::nomad_backend().await;
                    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(super::$case(&b))).await;
                    super::finish(b, outcome).await;
                }
            )*
        }
    };
}

backends!(
    submitting_twice_places_the_job_once_one_allocation_per_miner,
    a_job_the_pool_can_never_hold_is_unplaceable_with_the_reason,
    a_job_that_fits_later_waits_with_a_reason,
    cancel_frees_the_gpus_and_cancelling_an_unknown_job_is_not_an_error,
    a_lost_allocation_starts_the_training_job_again_until_retries_run_out,
    a_lost_replica_never_restarts_the_whole_deployment,
    serving_endpoints_are_where_the_replicas_were_placed,
    a_training_job_past_its_paid_time_is_stopped_and_what_it_used_recorded,
    a_resumed_run_is_placed_anew_at_its_own_first_attempt,
    a_queued_job_whose_deposit_is_due_back_before_it_could_end_is_never_started,
    another_owners_job_under_a_running_id_is_refused_and_its_cancel_stops_nothing,
    a_lost_allocation_does_not_restart_a_job_whose_deposit_is_due_back_too_soon,
    an_autoscaled_deployment_runs_the_replicas_asked_within_its_bounds,
);

/// An autoscaled deployment (`--min-replicas 0 --max-replicas 2`) starts with one replica;
/// asked for more it runs them (never more than its most), asked for none it runs none and
/// stays going (a request may wake it: `only_up` never lowers the count), and once removed it
/// is finished. A deployment that is not autoscaled is not scaled.
async fn an_autoscaled_deployment_runs_the_replicas_asked_within_its_bounds(b: &Backend) {
    let (_, mut m) = manifest_of("serve", 2, 1);
    m.request.serving =
        Some(aic_schemas::ServeOptions { min_replicas: Some(0), target_concurrency: Some(1), ..Default::default() });
    let job = running_job(b.store(), &m).await;
    let s = b.scheduler();
    s.submit(&job, &m).await.unwrap();
    let replicas = || async { s.endpoints(job.job.as_str()).await.unwrap().unwrap().len() };
    assert_eq!(replicas().await, 1, "it starts with one replica");
    assert_eq!(s.scale(&job, 5, false).await.unwrap(), 2, "never more than its most");
    assert_eq!(replicas().await, 2);
    assert_eq!(s.scale(&job, 0, false).await.unwrap(), 0);
    b.stopped_ones_end().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while replicas().await != 0 {
        assert!(Instant::now() < deadline, "replicas still serve after scaling to none");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(states(b, &job).await.last(), Some(&JobState::Running), "at zero it is still going");
    assert_eq!(s.scale(&job, 0, true).await.unwrap(), 0, "only up: nothing lowered");
    assert_eq!(s.scale(&job, 1, true).await.unwrap(), 1, "a request wakes it");
    assert_eq!(replicas().await, 1);
    assert_eq!(s.scale(&job, 0, true).await.unwrap(), 1, "only up never lowers it");
    // A fixed deployment is not the autoscaler's.
    let (fixed, fm) = job_of(b, "serve", 1).await;
    s.submit(&fixed, &fm).await.unwrap();
    assert!(matches!(s.scale(&fixed, 0, false).await, Err(ScheduleError::Refused(_))));
    s.cancel(&job).await.unwrap();
    b.stopped_ones_end().await;
    b.report_ended(&job).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.finished(&job).await.unwrap() {
        assert!(Instant::now() < deadline, "the removed deployment never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Names across a backend (folders, routes, Nomad's job) use the id alone: a job of another
/// owner under an id that runs (one validated before ids were claimed pool-wide) is refused,
/// and its cancel stops nothing of the first owner's.
async fn another_owners_job_under_a_running_id_is_refused_and_its_cancel_stops_nothing(b: &Backend) {
    let (first, m) = job(b, "serve", 1).await;
    assert!(matches!(b.scheduler().submit(&first, &m).await.unwrap(), Submitted::Placed(_)));
    let mut theirs = m.clone();
    theirs.request.owner = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc".parse().unwrap();
    let twin = JobKey::new(theirs.request.owner, first.job.clone());
    match b.scheduler().submit(&twin, &theirs).await {
        Err(ScheduleError::Unplaceable(why)) => assert!(why.contains("is another owner's"), "{why}"),
        other => panic!("{other:?}"),
    }
    b.scheduler().cancel(&twin).await.unwrap();
    assert!(!b.scheduler().finished(&first).await.unwrap(), "the first owner's job was stopped");
}

/// Waits until `job` has failed; the reason.
async fn failed_because(b: &Backend, job: &JobKey) -> String {
    let last = eventually("the job's end", || {
        let h = futures::executor::block_on(status::history(b.store(), job)).unwrap();
        h.last().filter(|r| r.state == JobState::Failed).cloned()
    })
    .await;
    last.reason.unwrap_or_default()
}

/// A deposit's claim in a manifest, its depositor free to reclaim it `secs` from now.
fn deposit_due_back_in(secs: i64) -> aic_schemas::manifest::PaymentClaim {
    aic_schemas::manifest::PaymentClaim {
        chain_id: 31337,
        tx: format!("0x{}", "ab".repeat(32)),
        paid: "1".into(),
        escrow: Some(aic_schemas::manifest::EscrowDeposit {
            contract: "0x5fbdb2315678afecb367f032d93f642f64180aa3".into(),
            run_key: format!("0x{}", "cd".repeat(32)),
            run: 0,
            deadline: Some(chrono::Utc::now().timestamp() + secs),
        }),
    }
}

/// A lost allocation does not start the job again once its deposit may be reclaimed before
/// the rest of its run could end: it fails with the reason (settle refunds what it did not
/// use). Restarted, it would run on a deposit its owner could take back mid-run.
async fn a_lost_allocation_does_not_restart_a_job_whose_deposit_is_due_back_too_soon(b: &Backend) {
    let (_, mut m) = manifest_of("train", 2, 2);
    m.payment = Some(deposit_due_back_in(1800));
    let job = running_job(b.store(), &m).await;
    b.scheduler().submit(&job, &m).await.unwrap();
    b.lose(&job, 1).await;
    let why = failed_because(b, &job).await;
    assert!(why.starts_with("not started: it waited until its deposit may be reclaimed"), "{why}");
}

/// A training job that waited for room until its deposit may be reclaimed before it could
/// run its paid hours and settle is not started when room frees: it fails with the reason
/// (settle then refunds its deposit whole). Started, it would have run on a deposit its owner
/// could take back mid-run.
async fn a_queued_job_whose_deposit_is_due_back_before_it_could_end_is_never_started(b: &Backend) {
    let (first, m) = job(b, "train", 2).await;
    assert!(matches!(b.scheduler().submit(&first, &m).await.unwrap(), Submitted::Placed(_)));
    let (_, mut late) = manifest_of("train", 2, 2);
    // Half an hour left: too soon for its paid hour.
    late.payment = Some(deposit_due_back_in(1800));
    let second = running_job(b.store(), &late).await;
    assert!(matches!(b.scheduler().submit(&second, &late).await.unwrap(), Submitted::Queued(_)));
    b.scheduler().cancel(&first).await.unwrap();
    b.place_waiting().await;
    let why = failed_because(b, &second).await;
    assert!(why.starts_with("not started: it waited until its deposit may be reclaimed in 0.5 h"), "{why}");
    assert!(b.never_started(&second).await, "it was started");
}

async fn a_resumed_run_is_placed_anew_at_its_own_first_attempt(b: &Backend) {
    use aic_core::runs::first_attempt;
    let before = b.free_gpus().await;
    let (job, m) = job(b, "train", 2).await;
    b.scheduler().submit(&job, &m).await.unwrap();
    assert_eq!(b.attempt_now(&job, 0).await, 0);
    // The owner cancels: the run ends and its allocations stop.
    status::cancel(b.store(), &job, "cli").await.unwrap();
    b.scheduler().cancel(&job).await.unwrap();
    b.stopped_ones_end().await;
    eventually("the first run's allocations to stop", || {
        let done = futures::executor::block_on(b.scheduler().finished(&job)).unwrap();
        (done && futures::executor::block_on(b.free_gpus()) == before).then_some(())
    })
    .await;
    // `aic resume`: run 1 begins, with its own manifest (validate writes both).
    let started = status::resume(b.store(), &job, 1, "validate").await.unwrap();
    assert!(matches!(started, status::Resumed::Started(ref r) if r.run == 1 && r.state == JobState::Submitted));
    let m1 = JobManifest { run: 1, ..m.clone() };
    b.store().create_json(&job.run_manifest(1), &m1).await.unwrap();
    let placed = b.scheduler().submit(&job, &m1).await.unwrap();
    assert!(matches!(placed, Submitted::Placed(_)), "the resumed run is placed anew: {placed:?}");
    assert_eq!(b.free_gpus().await, before - 4, "the resumed run holds its GPUs");
    assert_eq!(b.scheduler().submit(&job, &m1).await.unwrap(), placed, "a repeat changes nothing");
    assert_eq!(b.free_gpus().await, before - 4);
    // Attempts number on across runs: the run's allocations start at its own first attempt.
    assert_eq!(b.attempt_now(&job, first_attempt(1)).await, first_attempt(1));
    // A late writer of the run that ended (its worker, its scheduler) moves nothing.
    let late = Transition::new(JobState::Failed, "worker").reason("late").run(0);
    assert!(matches!(status::advance(b.store(), &job, late).await.unwrap(), status::Advanced::Refused(_)));
    let h = status::history(b.store(), &job).await.unwrap();
    let tail: Vec<(JobState, u32)> = h[h.len() - 3..].iter().map(|r| (r.state, r.run)).collect();
    assert_eq!(tail, [(JobState::Running, 0), (JobState::Cancelled, 0), (JobState::Submitted, 1)]);
}

async fn a_training_job_past_its_paid_time_is_stopped_and_what_it_used_recorded(b: &Backend) {
    // Workers that ignore the limit (these run `sleep 120`): the scheduler stops the job.
    let before = b.free_gpus().await;
    let (_, mut m) = manifest_of("train", 2, 2);
    m.request.max_hours = 0.0005; // paid: 0.001 h = 3.6 s
    let job = running_job(b.store(), &m).await;
    assert!(matches!(b.scheduler().submit(&job, &m).await.unwrap(), Submitted::Placed(_)));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    let st = loop {
        b.enforce().await;
        let st = status::current(b.store(), &job).await.unwrap().unwrap();
        if st.state.is_terminal() {
            break st;
        }
        assert!(Instant::now() < deadline, "never stopped at its paid time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(st.state, JobState::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(3500), "stopped before its time: {:?}", started.elapsed());
    assert_eq!(
        st.reason.as_deref(),
        Some("time limit: paid for 0.001 h; stopped by the scheduler; outputs up to then are kept")
    );
    b.stopped_ones_end().await;
    b.report_ended(&job).await;
    let runs = eventually("what it used to be recorded", || {
        let runs = futures::executor::block_on(aic_core::usage::of(b.store(), &job)).unwrap();
        (runs.len() == 2).then_some(runs)
    })
    .await;
    for u in &runs {
        assert_eq!((u.gpus, u.attempt), (2, 0), "{u:?}");
        assert!((3.0..12.0).contains(&u.seconds()), "{u:?}");
    }
    eventually("the GPUs back", || (futures::executor::block_on(b.free_gpus()) == before).then_some(())).await;
}

async fn submitting_twice_places_the_job_once_one_allocation_per_miner(b: &Backend) {
    let before = b.free_gpus().await;
    let (job, m) = job(b, "train", 2).await;
    let first = b.scheduler().submit(&job, &m).await.unwrap();
    let Submitted::Placed(mut miners) = first.clone() else { panic!("{first:?}") };
    miners.dedup();
    assert_eq!(miners.len(), 2, "one allocation per miner: {miners:?}");
    let again = b.scheduler().submit(&job, &m).await.unwrap();
    assert_eq!(again, first, "a second submit changes nothing");
    assert_eq!(b.free_gpus().await, before - 4, "2 miners × 2 GPUs held, once");
}

async fn a_job_the_pool_can_never_hold_is_unplaceable_with_the_reason(b: &Backend) {
    let (job, m) = job(b, "train", 3).await;
    match b.scheduler().submit(&job, &m).await {
        Err(ScheduleError::Unplaceable(why)) => assert!(why.contains("needs 3 miners"), "{why}"),
        other => panic!("{other:?}"),
    }
}

async fn a_job_that_fits_later_waits_with_a_reason(b: &Backend) {
    let (first, m) = job(b, "train", 2).await;
    assert!(matches!(b.scheduler().submit(&first, &m).await.unwrap(), Submitted::Placed(_)));
    let (second, m) = job(b, "train", 1).await;
    match b.scheduler().submit(&second, &m).await.unwrap() {
        Submitted::Queued(why) => assert!(why.contains("2") && why.to_lowercase().contains("gpu"), "{why}"),
        other => panic!("{other:?}"),
    }
}

async fn cancel_frees_the_gpus_and_cancelling_an_unknown_job_is_not_an_error(b: &Backend) {
    let before = b.free_gpus().await;
    let (job, m) = job(b, "train", 2).await;
    b.scheduler().submit(&job, &m).await.unwrap();
    b.scheduler().cancel(&job).await.unwrap();
    b.stopped_ones_end().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.free_gpus().await != before {
        assert!(Instant::now() < deadline, "the job's GPUs were not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (unknown, _) = manifest(1, 1);
    b.scheduler().cancel(&unknown).await.unwrap();
}

async fn a_lost_allocation_starts_the_training_job_again_until_retries_run_out(b: &Backend) {
    let (job, m) = job(b, "train", 2).await;
    b.scheduler().submit(&job, &m).await.unwrap();
    for retry in 1..=MAX_RETRIES {
        b.lose(&job, 1).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while states(b, &job).await.iter().filter(|s| **s == JobState::Retrying).count() < retry as usize {
            assert!(Instant::now() < deadline, "no retry {retry}: {:?}", states(b, &job).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last = status::current(b.store(), &job).await.unwrap().unwrap();
        let want = format!("starting again from the last checkpoint (retry {retry} of {MAX_RETRIES})");
        assert!(
            last.reason.as_deref().is_some_and(|r| r.contains("allocation 1 on ") && r.ends_with(&want)),
            "{last:?}"
        );
        // The next attempt's worker runs.
        status::advance(b.store(), &job, Transition::new(JobState::Running, "worker")).await.unwrap();
    }
    b.lose(&job, 1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = status::current(b.store(), &job).await.unwrap().unwrap();
        if last.state == JobState::Failed {
            assert!(last.reason.unwrap().ends_with(&format!("no retries left ({MAX_RETRIES} used)")));
            break;
        }
        assert!(Instant::now() < deadline, "the job did not fail: {:?}", states(b, &job).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_lost_replica_never_restarts_the_whole_deployment(b: &Backend) {
    let (job, m) = job(b, "serve", 2).await;
    b.scheduler().submit(&job, &m).await.unwrap();
    b.lose(&job, 1).await;
    b.handled_loss(&job, 1).await;
    // Whatever the backend does for the replica (start it again, or leave it to the
    // runtime), the deployment goes on: no retry, no failure, the other replica held.
    assert_eq!(states(b, &job).await.last(), Some(&JobState::Running), "{:?}", states(b, &job).await);
    assert!(!states(b, &job).await.contains(&JobState::Retrying));
    assert!(b.free_gpus().await <= 2, "replica 0 still holds its GPUs");
}

async fn serving_endpoints_are_where_the_replicas_were_placed(b: &Backend) {
    let (job, m) = job(b, "serve", 2).await;
    b.scheduler().submit(&job, &m).await.unwrap();
    let ends = b.scheduler().endpoints(job.job.as_str()).await.unwrap().expect("the backend knows its endpoints");
    assert_eq!(ends.len(), 2, "{ends:?}");
    let hosts: std::collections::BTreeSet<&str> = ends.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(hosts.len(), 2, "one replica per miner: {ends:?}");
    assert_eq!(
        b.scheduler().endpoints("01jb0000000000000000000000").await.unwrap(),
        Some(vec![]),
        "no such deployment"
    );
}

/// What a run is charged rests on its usage records: while the store refuses them (here the
/// first 30 writes under `pool/usage/`, none of them landed, more than the 20 tries the scheduler once gave up
/// after, settling the run as if it used nothing), the job is not `finished` (settle waits),
/// and the record lands once the store heals, with the time the allocation held its GPUs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_record_the_store_refuses_is_written_once_it_heals_and_settle_waits_meanwhile() {
    let b = local();
    let Backend::Local { store, starts, _dir, .. } = &b else { unreachable!() };
    let faults = aic_core::faults::Faults {
        share: 1.0,
        only_under: Some("pool/usage/".into()),
        at_most: Some(30),
        landed: Some(0.0),
        ..Default::default()
    };
    let (failing, count) = store.clone().with_faults(faults);
    let sched = LocalScheduler::new(
        LocalConfig {
            miners: 2,
            gpus_per_miner: 2,
            gateway: GATEWAY.into(),
            worker_bin: _dir.path().join("worker.sh"),
            work_root: _dir.path().join("work-faulty"),
            worker_env: vec![("STARTS".into(), starts.to_string_lossy().into_owned())],
            time_limit_grace: Duration::from_secs(1),
            // Its workers are scripts that write into the test's folder: not sandboxed.
            sandbox: false,
            gpu_types: Vec::new(),
        },
        failing,
    );
    let (_, mut m) = manifest_of("train", 1, 2);
    m.request.max_hours = 0.0005; // paid: 0.001 h = 3.6 s, then stopped by the scheduler
    let job = running_job(store, &m).await;
    assert!(matches!(sched.submit(&job, &m).await.unwrap(), Submitted::Placed(_)));
    let failed = |n| {
        count.before.load(std::sync::atomic::Ordering::Relaxed) + count.after.load(std::sync::atomic::Ordering::Relaxed)
            >= n
    };
    // The allocation ended and its record keeps failing: the run is not finished.
    eventually("the first usage writes to fail", || failed(5).then_some(())).await;
    assert!(!sched.finished(&job).await.unwrap(), "finished while its usage record is unwritten");
    assert!(aic_core::usage::of(store, &job).await.unwrap().is_empty());
    let deadline = Instant::now() + Duration::from_secs(40);
    let runs = loop {
        let runs = aic_core::usage::of(store, &job).await.unwrap();
        if !runs.is_empty() {
            break runs;
        }
        assert!(Instant::now() < deadline, "the usage record was never written ({:?} failed)", count.before);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(failed(30), "written before the store healed");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].gpus, 2);
    assert!((3.0..12.0).contains(&runs[0].seconds()), "{:?}", runs[0]);
    eventually("the run finished", || futures::executor::block_on(sched.finished(&job)).unwrap().then_some(())).await;
    sched.shutdown().await;
    finish(b, Ok(())).await;
}
