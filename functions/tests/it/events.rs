//! The event functions under at-least-once delivery: duplicated, shuffled, concurrent
//! events; bad requests; jobs that cannot be placed; cancellation. The scheduler is the
//! real local one; its "worker" is a small script that records each allocation it starts.

use std::path::Path;
use std::time::{Duration, Instant};

use aic_core::layout::JobKey;
use aic_core::pricing::Pricing;
use aic_core::scheduler::local::LocalScheduler;
use aic_core::status;
use aic_functions::{Ctx, Outcome, handle_record};
use aic_schemas::event::S3EventRecord;
use aic_schemas::{JobId, JobState};
use chrono::Utc;

use crate::common::*;

/// A deterministic shuffle (xorshift), so a failure can be replayed.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

async fn deliver_all(ctx: &Ctx, events: Vec<S3EventRecord>) -> Vec<Outcome> {
    let futs = events.iter().map(|e| handle_record(ctx, e));
    futures::future::join_all(futs).await.into_iter().map(|r| r.unwrap()).collect()
}

async fn wait_idle(sched: &LocalScheduler, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !sched.is_idle() {
        assert!(Instant::now() < deadline, "the scheduler never became idle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_shuffled_events_make_one_manifest_and_one_dispatch_per_job() {
    let p = pool(4, "exit 0");
    let mut jobs = Vec::new();
    for _ in 0..30 {
        jobs.push(put_request(&p.store, &request(1).await).await);
    }
    // Every request event three times, shuffled, all at once.
    let mut events: Vec<_> = jobs.iter().flat_map(|j| std::iter::repeat_n(event(&p.store, &j.request()), 3)).collect();
    shuffle(&mut events, 7);
    let outcomes = deliver_all(&p.ctx, events).await;
    let validated = outcomes.iter().filter(|o| matches!(o, Outcome::Validated(_))).count();
    assert_eq!(validated, 30, "each job validated exactly once: {outcomes:?}");

    // Manifest events three times each, mixed with late duplicates of the requests.
    let mut events: Vec<_> = jobs
        .iter()
        .flat_map(|j| {
            let mut v = vec![event(&p.store, &j.manifest()); 3];
            v.push(event(&p.store, &j.request()));
            v
        })
        .collect();
    shuffle(&mut events, 11);
    let outcomes = deliver_all(&p.ctx, events).await;
    let dispatched = outcomes.iter().filter(|o| matches!(o, Outcome::Dispatched(_))).count();
    assert!(dispatched >= 30, "{outcomes:?}");
    wait_idle(&p.sched, Duration::from_secs(30)).await;

    let starts = start_lines(&p.starts);
    assert_eq!(starts.len(), 30, "one allocation started per job, not more: {starts:?}");
    for j in &jobs {
        assert_eq!(starts.iter().filter(|l| l.starts_with(j.job.as_str())).count(), 1);
        let states: Vec<JobState> = status::history(&p.store, j).await.unwrap().iter().map(|r| r.state).collect();
        assert_eq!(states, [JobState::Submitted, JobState::Paid, JobState::Scheduled], "job {}", j.job);
        assert!(p.store.head(&j.manifest()).await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_event_that_overtakes_validate_still_dispatches_once() {
    let p = pool(2, "exit 0");
    let req = request(1).await;
    let job = put_request(&p.store, &req).await;
    // validate crashed after the manifest, before `paid`: the log says `submitted`.
    status::advance(&p.store, &job, status::Transition::new(JobState::Submitted, "validate")).await.unwrap();
    let m = aic_schemas::JobManifest {
        version: 1,
        request: req.clone(),
        quote: Pricing::free().quote(&req),
        payment: None,
        placement: Default::default(),
        validated_at: Utc::now(),
        run: 0,
    };
    p.store.create_json(&job.manifest(), &m).await.unwrap();
    assert_eq!(
        handle_record(&p.ctx, &event(&p.store, &job.manifest())).await.unwrap(),
        Outcome::Dispatched(job.clone())
    );
    // The request's redelivery finds the work done.
    assert_eq!(
        handle_record(&p.ctx, &event(&p.store, &job.request())).await.unwrap(),
        Outcome::AlreadyDone(job.clone())
    );
    wait_idle(&p.sched, Duration::from_secs(10)).await;
    assert_eq!(start_lines(&p.starts).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_rejected_with_their_reason_and_get_no_manifest() {
    let p = pool(2, "exit 0");
    let cases: Vec<(serde_json::Value, &str)> = {
        let mut other_owner = serde_json::to_value(request(1).await).unwrap();
        other_owner["owner"] = serde_json::json!("0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc");
        let mut zero_miners = serde_json::to_value(request(1).await).unwrap();
        zero_miners["miners"] = serde_json::json!(0);
        let mut expired = serde_json::to_value(request(1).await).unwrap();
        expired["created_at"] = serde_json::json!("2020-01-01T00:00:00Z");
        expired["expires_at"] = serde_json::json!("2020-01-01T01:00:00Z");
        let mut escape = serde_json::to_value(request(1).await).unwrap();
        escape["data"] = serde_json::json!("../../0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc/data/secret");
        let unsigned_req = serde_json::to_value(unsigned(1)).unwrap();
        // A job in an image of its own, on a pool that runs none (the local scheduler).
        let mut in_image = unsigned(1);
        in_image.image = Some("pytorch/pytorch:2.5.1".into());
        let in_image = serde_json::to_value(signed(in_image).await).unwrap();
        // A secret its owner never set.
        let mut with_secret = unsigned(1);
        with_secret.secrets = vec!["HF_TOKEN".into()];
        let with_secret = serde_json::to_value(signed(with_secret).await).unwrap();
        let mut tampered = serde_json::to_value(request(1).await).unwrap();
        tampered["gpus_per_miner"] = serde_json::json!(2);
        vec![
            (unsigned_req, "the request is not signed"),
            (tampered, "not by its owner"),
            (other_owner, "but was uploaded under"),
            (zero_miners, "miners: must be between 1 and 64 (got 0)"),
            (expired, "request expired"),
            (escape, "data: "),
            (serde_json::json!({"not": "a request"}), "request.json is not a job request"),
            (in_image, "this pool runs no container images: submit it without --image pytorch/pytorch:2.5.1"),
            (with_secret, "secret HF_TOKEN is not set"),
        ]
    };
    for (doc, why) in cases {
        let id = doc.get("job_id").and_then(|j| j.as_str()).map(|j| j.parse().unwrap()).unwrap_or_else(JobId::generate);
        let job = JobKey::new(OWNER.parse().unwrap(), id);
        p.store.put_json(&job.request(), &doc).await.unwrap();
        let out = handle_record(&p.ctx, &event(&p.store, &job.request())).await.unwrap();
        assert!(matches!(&out, Outcome::Rejected(_, r) if r.contains(why)), "{why}: {out:?}");
        let last = status::current(&p.store, &job).await.unwrap().unwrap();
        assert_eq!(last.state, JobState::Rejected);
        assert!(last.reason.unwrap().contains(why));
        assert!(p.store.head(&job.manifest()).await.unwrap().is_none(), "no manifest for a rejected request");
    }
    // An oversized request is refused without being read.
    let job = JobKey::new(OWNER.parse().unwrap(), JobId::generate());
    p.store.put_bytes(&job.request(), bytes::Bytes::from(vec![b' '; 70 * 1024])).await.unwrap();
    let out = handle_record(&p.ctx, &event(&p.store, &job.request())).await.unwrap();
    assert!(matches!(&out, Outcome::Rejected(_, r) if r.contains("the limit is 64 KiB")), "{out:?}");
    assert!(start_lines(&p.starts).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_bigger_than_the_pool_fails_with_the_reason() {
    let p = pool(2, "exit 0");
    let job = put_request(&p.store, &request(3).await).await;
    handle_record(&p.ctx, &event(&p.store, &job.request())).await.unwrap();
    let out = handle_record(&p.ctx, &event(&p.store, &job.manifest())).await.unwrap();
    assert!(matches!(out, Outcome::Unplaceable(..)), "{out:?}");
    let last = status::current(&p.store, &job).await.unwrap().unwrap();
    assert_eq!(last.state, JobState::Failed);
    assert_eq!(
        last.reason.as_deref(),
        Some("cannot be placed: needs 3 miners with 1 free GPU; pool local has 2 miners with 1 GPU each")
    );
    assert!(start_lines(&p.starts).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_for_free_gpus_then_start_in_order() {
    let p = pool(1, "sleep 0.3");
    let a = put_request(&p.store, &request(1).await).await;
    let b = put_request(&p.store, &request(1).await).await;
    for j in [&a, &b] {
        handle_record(&p.ctx, &event(&p.store, &j.request())).await.unwrap();
        handle_record(&p.ctx, &event(&p.store, &j.manifest())).await.unwrap();
    }
    let b_status = status::current(&p.store, &b).await.unwrap().unwrap();
    assert_eq!(b_status.reason.as_deref(), Some("waiting for 1 miner with 1 free GPU"));
    wait_idle(&p.sched, Duration::from_secs(10)).await;
    let starts = start_lines(&p.starts);
    assert_eq!(starts.len(), 2);
    assert!(starts[0].starts_with(a.job.as_str()) && starts[1].starts_with(b.job.as_str()), "{starts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_status_stops_the_allocations() {
    let p = pool(2, "exec sleep 60");
    let job = put_request(&p.store, &request(2).await).await;
    handle_record(&p.ctx, &event(&p.store, &job.request())).await.unwrap();
    handle_record(&p.ctx, &event(&p.store, &job.manifest())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while start_lines(&p.starts).len() < 2 {
        assert!(Instant::now() < deadline, "allocations did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = status::Transition::new(JobState::Cancelled, "cli").reason("cancelled by its owner");
    let rec = match status::advance(&p.store, &job, t).await.unwrap() {
        status::Advanced::Applied(r) => r,
        other => panic!("{other:?}"),
    };
    let cancelled_at = Instant::now();
    let out = handle_record(&p.ctx, &event(&p.store, &job.status_record(rec.seq))).await.unwrap();
    assert_eq!(out, Outcome::Cancelled(job.clone()));
    wait_idle(&p.sched, Duration::from_secs(10)).await;
    assert!(cancelled_at.elapsed() < Duration::from_secs(10));
    // Cancelled stays: the dead workers do not turn it into `failed`.
    assert_eq!(status::current(&p.store, &job).await.unwrap().unwrap().state, JobState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_the_scheduler_missed_is_driven_again_until_it_is_done() {
    // The gateway records the cancel and tells the scheduler at once; here the scheduler
    // (Nomad, unreachable) does not answer, and on AWS no event of the status record would
    // ever try again: the cancel is kept, and the re-driver passes it on once Nomad is back.
    let p = pool(1, "exec sleep 60");
    let job = put_request(&p.store, &request(1).await).await;
    handle_record(&p.ctx, &event(&p.store, &job.request())).await.unwrap();
    handle_record(&p.ctx, &event(&p.store, &job.manifest())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while start_lines(&p.starts).is_empty() {
        assert!(Instant::now() < deadline, "the allocation did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rec = match status::cancel(&p.store, &job, "gateway").await.unwrap() {
        status::Cancel::Cancelled(r) => r,
        other => panic!("{other:?}"),
    };
    let down = aic_core::scheduler::nomad::NomadScheduler::new(
        aic_core::scheduler::nomad::NomadConfig::new("http://127.0.0.1:1"),
        p.store.clone(),
    );
    let unreachable = aic_functions::Ctx { scheduler: std::sync::Arc::new(down), ..p.ctx.clone() };
    aic_functions::cancel::now_or_later(&unreachable, &job, rec.seq).await.unwrap();
    let entry = aic_core::layout::redrive_entry(&job.status_record(rec.seq));
    let d: aic_functions::redrive::Deferred = p.store.get_json(&entry, 1 << 16).await.unwrap().unwrap();
    assert!(d.why.contains("cannot reach Nomad"), "{d:?}");
    // Still down at the next try: kept, with a longer wait.
    let r = aic_functions::redrive::Redriver::new(unreachable);
    let p1 = r.pass_at(chrono::Utc::now() + chrono::Duration::seconds(11)).await.unwrap();
    assert_eq!(p1.again, 1);
    let d2: aic_functions::redrive::Deferred = p.store.get_json(&entry, 1 << 16).await.unwrap().unwrap();
    assert_eq!(d2.tries, 2);
    assert!(d2.next - d.next >= chrono::Duration::seconds(9), "{d:?} then {d2:?}");
    // Back: the allocation is stopped, and the entry gone.
    let r = aic_functions::redrive::Redriver::new(p.ctx.clone());
    let p2 = r.pass_at(chrono::Utc::now() + chrono::Duration::seconds(60)).await.unwrap();
    assert_eq!(p2.done, [(job.status_record(rec.seq), Outcome::Cancelled(job.clone()))]);
    wait_idle(&p.sched, Duration::from_secs(10)).await;
    assert!(p.store.get_json::<aic_functions::redrive::Deferred>(&entry, 1 << 16).await.unwrap().is_none());
}

/// A resume request for run `run` of `job`, signed by `who` (dev account index).
async fn resume_by(job: &JobKey, run: u32, who: u32) -> aic_schemas::ResumeRequest {
    let now = Utc::now();
    let mut r = aic_schemas::ResumeRequest {
        version: 1,
        owner: job.owner,
        job_id: job.job.clone(),
        run,
        max_hours: 0.5,
        payment: None,
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
        signature: None,
    };
    aic_chain::request::sign_resume(&aic_chain::devchain::dev_key(who), &mut r, CHAIN).await.unwrap();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_starts_the_next_run_once_and_refuses_what_it_cannot_resume() {
    let p = pool(2, "exec sleep 60");
    let job = put_request(&p.store, &request(1).await).await;
    handle_record(&p.ctx, &event(&p.store, &job.request())).await.unwrap();
    handle_record(&p.ctx, &event(&p.store, &job.manifest())).await.unwrap();
    status::advance(&p.store, &job, status::Transition::new(JobState::Running, "worker")).await.unwrap();

    // While run 1 goes on, a resume waits for it to end (the event comes again).
    p.store.create_json(&job.run_request(1), &resume_by(&job, 1, 1).await).await.unwrap();
    let resume = event(&p.store, &job.run_request(1));
    let e = handle_record(&p.ctx, &resume).await.unwrap_err();
    assert!(e.to_string().contains("is still running (run 1); run 2 starts once it ended"), "{e}");

    // Cancelled and stopped: the resume starts run 2 from its own manifest, once.
    status::cancel(&p.store, &job, "cli").await.unwrap();
    aic_core::scheduler::Scheduler::cancel(&p.sched, &job).await.unwrap();
    wait_idle(&p.sched, Duration::from_secs(20)).await;
    let outcomes = deliver_all(&p.ctx, vec![resume.clone(), resume.clone()]).await;
    assert_eq!(outcomes.iter().filter(|o| matches!(o, Outcome::Validated(_))).count(), 1, "{outcomes:?}");
    let m = aic_core::runs::manifest(&p.store, &job, 1).await.unwrap().expect("run 2's manifest");
    assert_eq!((m.run, m.request.max_hours), (1, 0.5));
    assert_eq!(
        handle_record(&p.ctx, &event(&p.store, &job.run_manifest(1))).await.unwrap(),
        Outcome::Dispatched(job.clone())
    );
    let h = status::history(&p.store, &job).await.unwrap();
    let tail: Vec<(JobState, u32)> = h[h.len() - 4..].iter().map(|r| (r.state, r.run)).collect();
    assert_eq!(
        tail,
        [(JobState::Cancelled, 0), (JobState::Submitted, 1), (JobState::Paid, 1), (JobState::Scheduled, 1)]
    );
    // Its workers start at the run's first attempt.
    let deadline = Instant::now() + Duration::from_secs(20);
    while start_lines(&p.starts).len() < 2 {
        assert!(Instant::now() < deadline, "run 2 never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Run 2 is cancelled too; a resume signed by another wallet gets run 3 rejected with the
    // reason, and the job may be resumed again after it.
    status::cancel(&p.store, &job, "cli").await.unwrap();
    aic_core::scheduler::Scheduler::cancel(&p.sched, &job).await.unwrap();
    wait_idle(&p.sched, Duration::from_secs(20)).await;
    p.store.create_json(&job.run_request(2), &resume_by(&job, 2, 2).await).await.unwrap();
    match handle_record(&p.ctx, &event(&p.store, &job.run_request(2))).await.unwrap() {
        Outcome::Rejected(_, why) => assert!(why.contains("not by its owner"), "{why}"),
        other => panic!("{other:?}"),
    }
    let last = status::current(&p.store, &job).await.unwrap().unwrap();
    assert_eq!((last.state, last.run), (JobState::Rejected, 2));
    assert!(status::resumable(last.state, last.run));
    assert!(aic_core::runs::manifest(&p.store, &job, 2).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_succeeded_or_serves_is_not_resumed() {
    let p = pool(1, "exit 0");
    let job = put_request(&p.store, &request(1).await).await;
    handle_record(&p.ctx, &event(&p.store, &job.request())).await.unwrap();
    for s in [JobState::Scheduled, JobState::Running, JobState::Succeeded] {
        status::advance(&p.store, &job, status::Transition::new(s, "worker")).await.unwrap();
    }
    p.store.create_json(&job.run_request(1), &resume_by(&job, 1, 1).await).await.unwrap();
    match handle_record(&p.ctx, &event(&p.store, &job.run_request(1))).await.unwrap() {
        Outcome::Rejected(_, why) => assert!(why.contains("succeeded; only a failed, cancelled or timed-out"), "{why}"),
        other => panic!("{other:?}"),
    }
    let last = status::current(&p.store, &job).await.unwrap().unwrap();
    assert_eq!((last.state, last.run), (JobState::Succeeded, 0), "no run begins");

    // A deployment that ended is not resumed either (`aic deploy` serves it again).
    let mut req = serve_request(request(1).await);
    req.signature = None;
    let req = signed(req).await;
    let dep = put_request(&p.store, &req).await;
    handle_record(&p.ctx, &event(&p.store, &dep.request())).await.unwrap();
    status::cancel(&p.store, &dep, "cli").await.unwrap();
    p.store.create_json(&dep.run_request(1), &resume_by(&dep, 1, 1).await).await.unwrap();
    match handle_record(&p.ctx, &event(&p.store, &dep.run_request(1))).await.unwrap() {
        Outcome::Rejected(_, why) => assert!(why.contains("only a training job can be resumed"), "{why}"),
        other => panic!("{other:?}"),
    }
}

fn serve_request(mut r: aic_schemas::JobRequest) -> aic_schemas::JobRequest {
    r.kind = aic_schemas::JobKind::Serve;
    r.entrypoint = "app.py".into();
    r
}
