//! dispatch: `users/<addr>/jobs/<job>/manifest.json` created.
//!
//! A manifest exists only once validate accepted and was paid, so a job still at
//! `submitted` (the manifest's event overtook validate's status write) is moved to `paid`
//! here. A `paid` job is submitted to the scheduler — idempotent there — and moved to
//! `scheduled`; one that can never be placed is `failed` with the scheduler's reason. Any
//! later state means the event is a duplicate. A named deployment is first recorded under
//! its owner's name (`pool/names/…`), which the serving gateway's `/n/<owner>/<name>/` reads.

use aic_core::layout::JobKey;
use aic_core::runs;
use aic_core::scheduler::{ScheduleError, Submitted};
use aic_core::status::{self, Transition};
use aic_schemas::{JobKind, JobState, StatusDetail};

use crate::{Ctx, HandlerError, Outcome};

const BY: &str = "dispatch";

pub async fn handle(ctx: &Ctx, job: &JobKey) -> Result<Outcome, HandlerError> {
    let store = &ctx.store;
    // The current run's manifest (a resumed job has one per run; an event for an earlier
    // run's is late, and the current run is the one to start, if any).
    let Some(cur) = status::current(store, job).await? else { return Ok(Outcome::Ignored) };
    let run = cur.run;
    let Some(manifest) = runs::manifest(store, job, run).await? else {
        return Ok(Outcome::Ignored);
    };
    match cur.state {
        JobState::Submitted => {
            status::advance(store, job, Transition::new(JobState::Paid, BY).run(run)).await?;
        }
        JobState::Paid => {}
        _ => return Ok(Outcome::AlreadyDone(job.clone())),
    }
    // A named deployment joins its name's route before any replica can register.
    let r = &manifest.request;
    if r.kind == JobKind::Serve
        && let Some(name) = &r.name
    {
        let key = aic_core::layout::serving_name(&job.owner, name, &job.job);
        store.create_json(&key, &serde_json::json!({ "deployment": job.job, "name": name })).await?;
    }
    // An autoscaled one joins the autoscaler's list.
    if aic_core::scheduler::autoscaled(r) {
        let key = aic_core::layout::autoscaled(job.job.as_str());
        store.create_json(&key, &serde_json::json!({ "owner": job.owner, "deployment": job.job })).await?;
    }
    match ctx.scheduler.submit(job, &manifest).await {
        Ok(Submitted::Placed(miners)) => {
            let t = Transition::new(JobState::Scheduled, BY)
                .reason(format!("placed on {}", miners.join(", ")))
                .detail(StatusDetail { placement: miners, ..Default::default() })
                .run(run);
            // The worker may already have moved the job on; that is fine.
            status::advance(store, job, t).await?;
            Ok(Outcome::Dispatched(job.clone()))
        }
        Ok(Submitted::Queued(why)) => {
            status::advance(store, job, Transition::new(JobState::Scheduled, BY).reason(why).run(run)).await?;
            Ok(Outcome::Dispatched(job.clone()))
        }
        Err(ScheduleError::Unplaceable(why)) => {
            let t = Transition::new(JobState::Failed, BY).reason(format!("cannot be placed: {why}")).run(run);
            status::advance(store, job, t).await?;
            Ok(Outcome::Unplaceable(job.clone(), why))
        }
        Err(e) => Err(e.into()),
    }
}
