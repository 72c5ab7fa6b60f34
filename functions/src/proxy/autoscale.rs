//! Autoscaled deployments (`aic deploy --min-replicas A --max-replicas B --target-concurrency C`).
//!
//! The serving gateway counts each one's requests under way (`stats`); every functions host
//! writes that load every second (`pool/serving-load/<deployment>/<host>.json`). The leading
//! host's autoscaler reads every host's, each second, for the deployments dispatch listed
//! (`pool/autoscale/`), and asks the scheduler for `ceil(load / C)` replicas within [A, B]: more
//! once the load has stayed over for [`up_after`], one fewer each [`down_after`] it stays
//! under. With A = 0 the last replica stops after the deployment's idle minutes without a
//! request; the next request starts one and waits for it (at most [`COLD_START`]), and that
//! wait is counted (`ServingMinute::cold_starts`). A deployment at zero whose paid hours are up
//! is ended here (its replicas would have ended it). What it is charged is what ran: each
//! replica's own time (`core::usage`), within the deposit, which covers B replicas.

use std::collections::HashSet;

use aic_schemas::{JobState, ServeOptions};

use super::*;

/// Longest a request waits for a stopped deployment's first replica.
pub const COLD_START: Duration = Duration::from_secs(180);

fn seconds_from_env(var: &str, default: u64) -> Duration {
    Duration::from_secs(std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

/// How long the load stays over the target before a replica is added (`AIC_SCALE_UP_SECONDS`, 2).
fn up_after() -> Duration {
    seconds_from_env("AIC_SCALE_UP_SECONDS", 2)
}

/// How long it stays under before one is removed (`AIC_SCALE_DOWN_SECONDS`, 30).
fn down_after() -> Duration {
    seconds_from_env("AIC_SCALE_DOWN_SECONDS", 30)
}

/// How long without a request before a deployment with no minimum stops: its idle minutes
/// (`AIC_SCALE_IDLE_SECONDS` overrides them, for tests and benchmarks).
fn idle_for(o: &ServeOptions) -> Duration {
    match std::env::var("AIC_SCALE_IDLE_SECONDS").ok().and_then(|v| v.parse().ok()) {
        Some(s) => Duration::from_secs(s),
        None => Duration::from_secs(60 * o.idle_minutes.unwrap_or(aic_schemas::serving::DEFAULT_IDLE_MINUTES) as u64),
    }
}

/// What the autoscaler keeps of one deployment.
struct Scaled {
    job: aic_core::JobKey,
    opts: ServeOptions,
    most: u32,
    hours: f64,
    wanted: u32,
    over_since: Option<Instant>,
    under_since: Option<Instant>,
    /// The latest request any host saw, or when the autoscaler first saw the deployment.
    active_at: chrono::DateTime<Utc>,
    running_since: Option<chrono::DateTime<Utc>>,
}

#[derive(serde::Deserialize)]
struct Listed {
    owner: aic_schemas::Address,
    deployment: aic_schemas::JobId,
}

impl Proxy {
    /// Waits for a replica of `deployment`, which has none live, when it is autoscaled and
    /// going: asks the scheduler for one and reads the registrations until one is live.
    /// `None`: not such a deployment (the caller goes on as for any without replicas).
    pub(super) async fn cold_start(&self, deployment: &str, headers: &HeaderMap) -> Option<Result<Replicas, Answer>> {
        let scheduler = self.scheduler.clone()?;
        let g = self.guard(deployment).await.ok().flatten()?;
        g.autoscale.as_ref()?;
        // A private one's: no key, no start.
        if let Err(a) = self.admit(deployment, headers).await {
            return Some(Err(a));
        }
        let state = aic_core::status::current(&self.store, &g.job).await.ok().flatten()?;
        if state.state != JobState::Running {
            return None;
        }
        let dep = self.stats.of(deployment);
        dep.autoscaled();
        dep.touch();
        let began = Instant::now();
        if let Err(e) = scheduler.scale(&g.job, 1, true).await {
            tracing::warn!(deployment, error = %e, "cannot start a replica for a waiting request");
            return None;
        }
        tracing::info!(deployment, "a request woke the deployment: waiting for a replica");
        while began.elapsed() < COLD_START {
            tokio::time::sleep(Duration::from_millis(200)).await;
            dep.touch();
            let regs = self.replicas(deployment, true).await;
            if !regs.is_empty() {
                dep.cold_start(began.elapsed());
                return Some(Ok(regs));
            }
        }
        Some(Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "deployment {deployment} was stopped for want of requests and no replica answered within {} s of this one; see `aic deploy logs`",
                COLD_START.as_secs()
            ),
        )))
    }

    /// Runs the autoscaler beside the host (it acts only while the scheduler says this host
    /// leads), until the proxy goes.
    pub fn start_autoscaler(self: &Arc<Self>) {
        let Some(scheduler) = self.scheduler.clone() else { return };
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut scaled: HashMap<String, Scaled> = HashMap::new();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(proxy) = std::sync::Weak::upgrade(&me) else { return };
                if !scheduler.leads() {
                    scaled.clear();
                    continue;
                }
                if let Err(e) = proxy.autoscale_once(&*scheduler, &mut scaled).await {
                    tracing::warn!(error = %e, "autoscaler: the store failed; next second");
                }
            }
        });
    }

    async fn autoscale_once(
        &self,
        scheduler: &dyn Scheduler,
        scaled: &mut HashMap<String, Scaled>,
    ) -> Result<(), aic_core::store::StoreError> {
        let store = &self.store;
        let listed = store.list(aic_core::layout::AUTOSCALED).await?;
        let mut seen = HashSet::new();
        let now = Utc::now();
        for m in listed {
            let key = m.location.to_string();
            let Ok(Some(l)) = store.get_json::<Listed>(&key, 4096).await else { continue };
            let id = l.deployment.to_string();
            seen.insert(id.clone());
            let job = aic_core::JobKey::new(l.owner, l.deployment);
            let Some(cur) = aic_core::status::current(store, &job).await? else { continue };
            if cur.state.is_terminal() {
                let _ = store.delete(&key).await;
                let _ = store.delete_prefix(&aic_core::layout::serving_load_prefix(&id)).await;
                scaled.remove(&id);
                continue;
            }
            if cur.state != JobState::Running {
                continue;
            }
            if !scaled.contains_key(&id) {
                let Some(manifest) = store.get_json::<aic_schemas::JobManifest>(&job.manifest(), 1 << 20).await? else {
                    continue;
                };
                let r = &manifest.request;
                let opts = r.serving.clone().unwrap_or_default();
                let wanted = opts.initial_replicas(r.miners);
                scaled.insert(
                    id.clone(),
                    Scaled {
                        job: job.clone(),
                        opts,
                        most: r.miners,
                        hours: r.max_hours,
                        wanted,
                        over_since: None,
                        under_since: None,
                        active_at: now,
                        running_since: None,
                    },
                );
            }
            let s = scaled.get_mut(&id).expect("just put");
            // The load every host saw lately.
            let mut load = 0.0;
            for d in store.list(&aic_core::layout::serving_load_prefix(&id)).await? {
                if let Ok(Some(doc)) = store.get_json::<stats::LoadDoc>(d.location.as_ref(), 4096).await {
                    if now - doc.at < chrono::Duration::seconds(5) {
                        load += doc.in_flight;
                    }
                    if let Some(t) = doc.last_request_at {
                        s.active_at = s.active_at.max(t);
                    }
                }
            }
            self.scale_one(scheduler, s, load, now).await;
        }
        scaled.retain(|id, _| seen.contains(id));
        Ok(())
    }

    /// One deployment's step: the replicas its load asks for, within its bounds and delays.
    async fn scale_one(&self, scheduler: &dyn Scheduler, s: &mut Scaled, load: f64, now: chrono::DateTime<Utc>) {
        let least = s.opts.min_replicas.unwrap_or(1);
        let target = s.opts.target() as f64;
        let mut desired = ((load / target).ceil() as u32).clamp(least, s.most);
        let idle = (now - s.active_at).to_std().unwrap_or_default();
        if least == 0 && desired == 0 && idle < idle_for(&s.opts) {
            desired = 1;
        }
        // At zero, its paid hours still run: once they are up, it ends here.
        if s.wanted == 0 {
            if s.running_since.is_none() {
                let history = aic_core::status::history(&self.store, &s.job).await.unwrap_or_default();
                s.running_since = history.iter().find(|r| r.state == JobState::Running).map(|r| r.at);
            }
            let paid = aic_core::pricing::paid_hours(s.hours);
            if let Some(since) = s.running_since
                && (now - since).num_milliseconds() as f64 / 3_600_000.0 >= paid
            {
                let t = aic_core::status::Transition::new(JobState::Succeeded, "autoscaler")
                    .reason(format!("served for {} h", s.hours));
                let _ = aic_core::status::advance(&self.store, &s.job, t).await;
                let _ = scheduler.cancel(&s.job).await;
                return;
            }
        }
        let t = Instant::now();
        let step = if desired > s.wanted {
            s.under_since = None;
            let since = *s.over_since.get_or_insert(t);
            // From zero at once: a request is waiting.
            (s.wanted == 0 || t.duration_since(since) >= up_after()).then_some(desired)
        } else if desired < s.wanted {
            s.over_since = None;
            let since = *s.under_since.get_or_insert(t);
            (t.duration_since(since) >= down_after()).then(|| {
                s.under_since = Some(t);
                s.wanted - 1
            })
        } else {
            s.over_since = None;
            s.under_since = None;
            None
        };
        if let Some(n) = step {
            match scheduler.scale(&s.job, n, false).await {
                Ok(now_running) => {
                    tracing::info!(deployment = %s.job.job, load, from = s.wanted, to = n, now_running, "scaled");
                    s.wanted = n;
                    s.over_since = None;
                }
                Err(e) => tracing::warn!(deployment = %s.job.job, error = %e, "cannot scale"),
            }
        }
    }
}
