//! Each deployment's request figures as this host sees them: requests, errors (5xx from a
//! replica, 5xx from the gateway), refusals, the time to each answer's head, requests under
//! way (an answer still streaming counts), live replicas. Kept two ways: totals since this
//! process started, for Prometheus (`render`); and a document per deployment and minute in
//! the bucket (`aic_core::servingstats`), written every [`flush_every`] while the minute lasts
//! and once more after it, for `aic deploy status`, `aic deploy list` and the web app, where
//! every host's documents add up.

use std::fmt::Write;
use std::sync::Weak;
use std::sync::atomic::AtomicBool;

use aic_schemas::ServingMinute;
use aic_schemas::serving::LATENCY_BOUNDS_MS;
use chrono::DurationRound;

use super::*;

/// How often the current minutes are written (`AIC_SERVING_STATS_SECONDS`, default 10).
fn flush_every() -> Duration {
    let s = std::env::var("AIC_SERVING_STATS_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10u64);
    Duration::from_secs(s.clamp(1, 60))
}

/// Most deployments kept; the least recently seen goes first.
const KEPT: usize = 5_000;

/// This host's figures, by deployment.
pub struct Stats {
    host: String,
    by: Mutex<HashMap<String, Arc<Dep>>>,
    flushing: AtomicBool,
}

/// One deployment's figures.
pub struct Dep {
    deployment: String,
    in_flight: std::sync::atomic::AtomicU64,
    inner: Mutex<Inner>,
    /// An autoscaled deployment's: its load goes to the bucket every second.
    autoscaled: AtomicBool,
    load: Mutex<Load>,
}

/// Requests under way over time (their integral), for an autoscaled deployment's load.
struct Load {
    since: Instant,
    last: Instant,
    area: f64,
    now: u64,
    last_request: Option<chrono::DateTime<Utc>>,
}

impl Load {
    fn step(&mut self, by: i64) {
        let t = Instant::now();
        self.area += self.now as f64 * t.duration_since(self.last).as_secs_f64();
        self.last = t;
        self.now = self.now.saturating_add_signed(by);
    }
}

/// What a functions host tells the autoscaler of a deployment (`pool/serving-load/…`).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct LoadDoc {
    pub host: String,
    pub at: chrono::DateTime<Utc>,
    /// Requests under way on average since the last document.
    pub in_flight: f64,
    pub last_request_at: Option<chrono::DateTime<Utc>>,
}

#[derive(Default)]
struct Inner {
    /// The minute being counted, and ended ones not written yet.
    now: ServingMinute,
    ended: Vec<ServingMinute>,
    dirty: bool,
    seen: Option<Instant>,
    /// Since this process started: answered, replica 5xx, gateway 5xx, refused.
    totals: [u64; 4],
    hist: [u64; LATENCY_BOUNDS_MS.len() + 1],
    seconds: f64,
    replicas: u32,
}

/// How a request for a deployment ended at the gateway.
pub(super) enum Outcome {
    /// A replica answered with this status after this long (to its answer's head).
    Answered(StatusCode, Duration),
    /// The gateway answered 5xx itself.
    GatewayError,
    /// Refused for want of a key.
    Refused,
}

/// A request under way: counted in flight until dropped (its answer's end).
pub struct Flight(Arc<Dep>);

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut l = self.0.load.lock().unwrap();
        l.step(-1);
        l.last_request = Some(Utc::now());
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            host: ulid::Ulid::new().to_string().to_ascii_lowercase()[16..].to_string(),
            by: Mutex::new(HashMap::new()),
            flushing: AtomicBool::new(false),
        }
    }
}

fn minute_of(t: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    t.duration_trunc(chrono::Duration::minutes(1)).unwrap_or(t)
}

impl Stats {
    /// The deployment's figures (made on first sight).
    pub(super) fn of(&self, deployment: &str) -> Arc<Dep> {
        let mut by = self.by.lock().unwrap();
        if let Some(d) = by.get(deployment) {
            return d.clone();
        }
        if by.len() >= KEPT {
            // The one unseen longest (its last minute was written, or is lost with it).
            let oldest = by.iter().min_by_key(|(_, d)| d.inner.lock().unwrap().seen).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                by.remove(&k);
            }
        }
        let d = Arc::new(Dep {
            deployment: deployment.to_string(),
            in_flight: Default::default(),
            inner: Mutex::new(Inner::default()),
            autoscaled: AtomicBool::new(false),
            load: Mutex::new(Load {
                since: Instant::now(),
                last: Instant::now(),
                area: 0.0,
                now: 0,
                last_request: None,
            }),
        });
        by.insert(deployment.to_string(), d.clone());
        d
    }

    /// Writes the figures to `store` every [`flush_every`], from the first request on (one
    /// task per host, gone with the proxy).
    pub(super) fn start_flushing(self: &Arc<Self>, store: &Store) {
        if self.flushing.swap(true, Ordering::Relaxed) {
            return;
        }
        let (me, store) = (Arc::downgrade(self), store.clone());
        tokio::spawn(async move {
            let every = flush_every();
            let mut flushed = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(stats) = Weak::upgrade(&me) else { return };
                stats.write_load(&store).await;
                if flushed.elapsed() >= every {
                    flushed = Instant::now();
                    stats.flush(&store).await;
                }
            }
        });
    }

    /// Writes each autoscaled deployment's load since the last time (while it had requests in
    /// the last 10 minutes or has some under way).
    async fn write_load(&self, store: &Store) {
        let deps: Vec<Arc<Dep>> =
            self.by.lock().unwrap().values().filter(|d| d.autoscaled.load(Ordering::Relaxed)).cloned().collect();
        let now = Utc::now();
        for d in deps {
            let doc = {
                let mut l = d.load.lock().unwrap();
                l.step(0);
                let span = l.last.duration_since(l.since).as_secs_f64().max(0.001);
                let doc = LoadDoc {
                    host: self.host.clone(),
                    at: now,
                    in_flight: l.area / span,
                    last_request_at: if l.now > 0 { Some(now) } else { l.last_request },
                };
                l.area = 0.0;
                l.since = l.last;
                doc
            };
            let recent = doc.last_request_at.is_some_and(|t| now - t < chrono::Duration::minutes(10));
            if !recent {
                continue;
            }
            let key = aic_core::layout::serving_load(&d.deployment, &self.host);
            if let Err(e) = store.put_json(&key, &doc).await {
                tracing::warn!(error = %e, deployment = d.deployment, "cannot write a deployment's load");
            }
        }
    }

    /// Writes the minutes that changed since the last write.
    pub async fn flush(&self, store: &Store) {
        let deps: Vec<Arc<Dep>> = self.by.lock().unwrap().values().cloned().collect();
        for d in deps {
            let docs = {
                let mut i = d.inner.lock().unwrap();
                d.roll(&mut i, Utc::now());
                let mut docs = std::mem::take(&mut i.ended);
                if i.dirty {
                    docs.push(i.now.clone());
                    i.dirty = false;
                }
                docs
            };
            for mut doc in docs {
                doc.host = self.host.clone();
                let key = aic_core::layout::serving_stats_minute(&d.deployment, doc.minute, &self.host);
                if let Err(e) = store.put_json(&key, &doc).await {
                    tracing::warn!(error = %e, deployment = d.deployment, "cannot write a deployment's figures; next time");
                    let mut i = d.inner.lock().unwrap();
                    i.ended.push(doc);
                }
            }
        }
    }

    /// The Prometheus exposition of every deployment's figures since this process started.
    pub fn render(&self, out: &mut String) {
        let deps: Vec<Arc<Dep>> = {
            let mut v: Vec<Arc<Dep>> = self.by.lock().unwrap().values().cloned().collect();
            v.sort_by(|a, b| a.deployment.cmp(&b.deployment));
            v
        };
        out.push_str(
            "# HELP aic_deployment_requests_total Requests for a deployment at this host, by how they ended.\n",
        );
        out.push_str("# TYPE aic_deployment_requests_total counter\n");
        let mut rest = String::new();
        let _ = writeln!(rest, "# HELP aic_deployment_latency_seconds Time to the head of a replica's answer.");
        let _ = writeln!(rest, "# TYPE aic_deployment_latency_seconds histogram");
        let mut gauges = String::from(
            "# HELP aic_deployment_in_flight Requests under way (answers still streaming count).\n# TYPE aic_deployment_in_flight gauge\n",
        );
        let mut replicas = String::from(
            "# HELP aic_deployment_replicas Live replicas last seen.\n# TYPE aic_deployment_replicas gauge\n",
        );
        for d in deps {
            let i = d.inner.lock().unwrap();
            let dep = &d.deployment;
            for (n, outcome) in i.totals.iter().zip(["answered", "replica_error", "gateway_error", "refused"]) {
                let _ =
                    writeln!(out, "aic_deployment_requests_total{{deployment=\"{dep}\",outcome=\"{outcome}\"}} {n}");
            }
            let mut cumulative = 0;
            for (b, n) in LATENCY_BOUNDS_MS.iter().zip(&i.hist) {
                cumulative += n;
                let _ = writeln!(
                    rest,
                    "aic_deployment_latency_seconds_bucket{{deployment=\"{dep}\",le=\"{}\"}} {cumulative}",
                    *b as f64 / 1000.0
                );
            }
            let count: u64 = i.hist.iter().sum();
            let _ = writeln!(rest, "aic_deployment_latency_seconds_bucket{{deployment=\"{dep}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(rest, "aic_deployment_latency_seconds_sum{{deployment=\"{dep}\"}} {}", i.seconds);
            let _ = writeln!(rest, "aic_deployment_latency_seconds_count{{deployment=\"{dep}\"}} {count}");
            let _ = writeln!(
                gauges,
                "aic_deployment_in_flight{{deployment=\"{dep}\"}} {}",
                d.in_flight.load(Ordering::Relaxed)
            );
            let _ = writeln!(replicas, "aic_deployment_replicas{{deployment=\"{dep}\"}} {}", i.replicas);
        }
        out.push_str(&rest);
        out.push_str(&gauges);
        out.push_str(&replicas);
    }
}

impl Dep {
    /// Its load goes to the autoscaler.
    pub(super) fn autoscaled(&self) {
        self.autoscaled.store(true, Ordering::Relaxed);
    }

    /// A request came (one that waits for a replica to start counts, so the autoscaler does
    /// not stop it meanwhile).
    pub(super) fn touch(&self) {
        self.load.lock().unwrap().last_request = Some(Utc::now());
    }

    /// A request waited `took` for an autoscaled deployment's first replica to start.
    pub(super) fn cold_start(&self, took: Duration) {
        let mut i = self.inner.lock().unwrap();
        self.roll(&mut i, Utc::now());
        i.now.cold_starts += 1;
        i.now.cold_start_ms = i.now.cold_start_ms.max(took.as_millis() as u64);
        i.dirty = true;
    }

    /// A request begins: in flight until the returned guard goes.
    pub(super) fn enter(self: &Arc<Self>) -> Flight {
        {
            let mut l = self.load.lock().unwrap();
            l.step(1);
            l.last_request = Some(Utc::now());
        }
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let mut i = self.inner.lock().unwrap();
        self.roll(&mut i, Utc::now());
        i.now.max_in_flight = i.now.max_in_flight.max(n);
        Flight(self.clone())
    }

    /// A request ended as `how`, with `replicas` live.
    pub(super) fn record(&self, how: Outcome, replicas: usize) {
        let mut i = self.inner.lock().unwrap();
        self.roll(&mut i, Utc::now());
        i.now.requests += 1;
        i.now.replicas = i.now.replicas.max(replicas as u32);
        i.replicas = replicas as u32;
        match how {
            Outcome::Answered(status, took) => {
                let ms = took.as_millis() as u64;
                let b = LATENCY_BOUNDS_MS.iter().position(|b| ms <= *b).unwrap_or(LATENCY_BOUNDS_MS.len());
                if i.now.latency_ms.len() <= b {
                    i.now.latency_ms.resize(LATENCY_BOUNDS_MS.len() + 1, 0);
                }
                i.now.latency_ms[b] += 1;
                i.hist[b] += 1;
                i.seconds += took.as_secs_f64();
                if status.is_server_error() {
                    i.now.replica_errors += 1;
                    i.totals[1] += 1;
                } else {
                    i.totals[0] += 1;
                }
            }
            Outcome::GatewayError => {
                i.now.gateway_errors += 1;
                i.totals[2] += 1;
            }
            Outcome::Refused => {
                i.now.refused += 1;
                i.totals[3] += 1;
            }
        }
        i.dirty = true;
        i.seen = Some(Instant::now());
    }

    /// Starts a new minute when `now` is past the one counted (the ended one kept to write).
    fn roll(&self, i: &mut Inner, now: chrono::DateTime<Utc>) {
        let minute = minute_of(now);
        if i.now.minute == minute {
            return;
        }
        let old = std::mem::replace(
            &mut i.now,
            ServingMinute {
                deployment: self.deployment.clone(),
                minute,
                latency_ms: vec![0; LATENCY_BOUNDS_MS.len() + 1],
                max_in_flight: self.in_flight.load(Ordering::Relaxed),
                ..Default::default()
            },
        );
        if i.dirty {
            i.ended.push(old);
            i.dirty = false;
        }
    }
}
