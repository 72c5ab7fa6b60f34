//! `aic deploy`: a project (app.py exposing a WSGI or ASGI `app`, requirements.txt, model files) as
//! an HTTP API on N replicas, behind the pool's serving gateway, each deployment at an origin
//! of its own (`http://<deployment>.localhost:8800/`: `aic_schemas::origin`).
//!
//! A deployment is a `serve` job: quoted, paid and signed like a training job (replicas ×
//! GPUs × hours), validated and dispatched the same way; each replica is an allocation whose
//! worker runs the app under uWSGI or uvicorn and registers itself. Its id is the job id; its name
//! (`--name`, else the folder's) is what `aic deploy list` shows and commands accept, and its
//! stable address: `<name>--<owner>.<domain>` reaches the newest live deployment of that name.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aic_core::JobKey;
use aic_schemas::origin::Origins;
use aic_schemas::{JobId, JobKind, JobRequest, Launcher, ServingRegistration};
use anyhow::{Context, anyhow, bail};
use chrono::Utc;

use crate::env::Env;
use crate::jobs;
use crate::pool::Hosted;
use crate::submit::{self, Code};

/// How long a new deployment gets to have its replicas up (requirements are installed first).
const UP_WITHIN: Duration = Duration::from_secs(300);

pub struct DeployOpts {
    pub path: PathBuf,
    pub name: Option<String>,
    pub replicas: u32,
    pub gpus: u32,
    pub hours: f64,
    pub entrypoint: Option<String>,
    pub tx: Option<String>,
    pub detach: bool,
    pub secrets: Vec<String>,
    pub gpu: crate::GpuArgs,
    /// Its server, processes, threads and privacy.
    pub serving: aic_schemas::ServeOptions,
}

/// Where users reach deployments: the gateway in pool mode, else the embedded pool's.
pub fn base_url(env: &Env, host: Option<&Hosted>) -> anyhow::Result<String> {
    if let Some(g) = &env.gateway {
        return Ok(g.clone());
    }
    if let Some(h) = host {
        return Ok(h.serve_addr.clone());
    }
    std::fs::read_to_string(env.home.join("serve.addr"))
        .map(|s| s.trim().to_string())
        .map_err(|_| anyhow!("nothing hosts the pool: start `aic dev up`, then deploy again"))
}

/// The origins the pool serves deployments at (its `/v1/info`'s `serving`).
pub async fn origins(env: &Env, host: Option<&Hosted>) -> anyhow::Result<Origins> {
    let base = base_url(env, host)?;
    let info: serde_json::Value = match env.gateway_client() {
        Some(gw) => gw.call(reqwest::Method::GET, "info", None).await?,
        None => {
            reqwest::get(format!("{}/v1/info", base.trim_end_matches('/')))
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("asking the pool at {base} where deployments answer"))?
                .json()
                .await?
        }
    };
    let serving = info["serving"]
        .as_str()
        .ok_or_else(|| anyhow!("the pool at {base} serves no deployments (its host has no AIC_SERVING_ORIGIN)"))?;
    serving.parse().map_err(|e: String| anyhow!(e))
}

/// A deployment's own address (this version alone).
pub fn address(origins: &Origins, job: &JobKey) -> String {
    origins.deployment(job.job.as_str())
}

/// The stable address of the owner's deployments named `name`: it follows `scale` and
/// redeploys under the same name (`None` for a name over `MAX_NAMED` characters).
pub fn named_address(origins: &Origins, job: &JobKey, name: &str) -> Option<String> {
    origins.named(&job.owner, name)
}

/// Prints where the deployment answers: its name's stable address when it has a name.
fn print_addresses(origins: &Origins, job: &JobKey, name: Option<&str>) {
    match name.and_then(|n| named_address(origins, job, n)) {
        Some(named) => {
            println!("API address : {named}");
            println!("deployment  : {} (this version alone: {})", job.job, address(origins, job));
        }
        None => println!("API address : {}", address(origins, job)),
    }
}

/// An HTTP client that reaches `url`'s host, resolving a `*.localhost` name to loopback as
/// browsers and curl do (RFC 6761 §6.3; the system's resolver may not).
pub fn client_for(url: &str) -> reqwest::Client {
    let mut b = reqwest::Client::builder();
    if let Ok(u) = reqwest::Url::parse(url)
        && let Some(h) = u.host_str()
        && h.ends_with(".localhost")
    {
        let port = u.port_or_known_default().unwrap_or(80);
        b = b.resolve(h, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    b.build().unwrap_or_default()
}

/// A deployment's default name: its folder's, made a name (`My_Model` → `my-model`).
pub fn default_name(path: &std::path::Path) -> Option<String> {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let raw = abs.file_name()?.to_string_lossy().to_ascii_lowercase();
    let mut name = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if !(c == '-' && (name.is_empty() || name.ends_with('-'))) {
            name.push(c);
        }
    }
    // Short enough for its address to hold it with the owner's.
    let name: String = name.trim_end_matches('-').chars().take(aic_schemas::origin::MAX_NAMED).collect();
    let name = name.trim_end_matches('-').to_string();
    aic_schemas::validate::is_name(&name).then_some(name)
}

/// The deployment's registrations (live or not).
pub async fn replicas(env: &Env, job: &JobKey) -> anyhow::Result<Vec<ServingRegistration>> {
    if let Some(gw) = env.gateway_client() {
        let v = gw.call(reqwest::Method::GET, &format!("jobs/{}/replicas", job.job), None).await?;
        return Ok(serde_json::from_value(v["replicas"].clone())?);
    }
    Ok(aic_core::serving::registrations(&env.store, job.job.as_str()).await?.into_iter().map(|(_, r)| r).collect())
}

/// Builds, pays for and submits the deployment; returns it and its name.
pub async fn submit(env: &Env, o: &DeployOpts, host: Option<&Hosted>) -> anyhow::Result<(JobKey, Option<String>)> {
    if !o.path.is_dir() {
        bail!(
            "{} is not a folder: a deployment is a project folder with app.py (a WSGI or ASGI `app`)",
            o.path.display()
        );
    }
    if let Some(n) = &o.name
        && n.len() > aic_schemas::origin::MAX_NAMED
    {
        bail!(
            "--name {n:?} is over {} characters: a deployment's address holds its name and your wallet's; choose a shorter name",
            aic_schemas::origin::MAX_NAMED
        );
    }
    let code = Code::resolve(&o.path, Some(o.entrypoint.clone().unwrap_or_else(|| "app.py".into())))
        .context("a deployment needs app.py exposing a WSGI or ASGI `app` (or --entrypoint)")?;
    let file = aic_schemas::jobfile::JobFile {
        kind: Some(JobKind::Serve),
        name: o.name.clone().or_else(|| default_name(&o.path)),
        code: o.path.to_string_lossy().into_owned(),
        entrypoint: Some(code.entrypoint.clone()),
        data: None,
        miners: o.replicas,
        gpus: o.gpus,
        hours: o.hours,
        launcher: Launcher::Command,
        args: vec![],
        env: Default::default(),
        secrets: o.secrets.clone(),
        image: None,
        gpu_types: o.gpu.gpu_types.iter().map(|m| m.trim().to_string()).collect(),
        min_gpu_memory: o.gpu.min_gpu_memory,
        serving: Some(o.serving.clone()).filter(|s| *s != Default::default()),
    };
    let req: JobRequest =
        file.to_request(env.owner, JobId::generate(), code.entrypoint.clone(), Utc::now(), chrono::Duration::hours(1));
    req.validate(None).map_err(|e| submit::flag_names(e, "--replicas"))?;
    let name = req.name.clone();
    let job = submit::pay_sign_submit(env, &code, req, o.tx.clone(), o.detach, host).await?;
    eprintln!(
        "deployment {} submitted: {}{}",
        job.job,
        aic_core::plural(o.replicas, "replica"),
        name.as_deref().map(|n| format!(", named {n}")).unwrap_or_default()
    );
    Ok((job, name))
}

/// Waits until `want` replicas are live (stepping the pool if this process hosts it).
pub async fn wait_up(env: &Env, job: &JobKey, want: u32, host: Option<&Hosted>) -> anyhow::Result<usize> {
    wait_up_or_queued(env, job, want, host, None).await
}

/// The same; with `queued_limit`, gives up (`Err`) when the pool keeps the deployment queued
/// for lack of free GPUs that long.
async fn wait_up_or_queued(
    env: &Env,
    job: &JobKey,
    want: u32,
    host: Option<&Hosted>,
    queued_limit: Option<Duration>,
) -> anyhow::Result<usize> {
    let started = Instant::now();
    let deadline = Instant::now() + UP_WITHIN;
    let mut last_state = None;
    loop {
        if let Some(h) = host {
            h.step().await?;
        }
        let now = Utc::now();
        let live = replicas(env, job).await?.iter().filter(|r| r.is_live(now)).count();
        if live as u32 >= want {
            return Ok(live);
        }
        if let Some(r) = aic_core::status::current(&env.store, job).await? {
            if r.state.is_terminal() {
                let tail = r.detail.log_tail.map(|t| format!("\nlast lines:\n{t}")).unwrap_or_default();
                bail!("deployment {} {}: {}{tail}", job.job, r.state, r.reason.unwrap_or_default());
            }
            if last_state != Some(r.state) {
                eprintln!("● {:<10} {}", r.state.to_string(), r.reason.clone().unwrap_or_default());
                last_state = Some(r.state);
            }
            if let Some(limit) = queued_limit
                && r.state == aic_schemas::JobState::Scheduled
                && r.reason.as_deref().is_some_and(|w| w.starts_with("waiting for"))
                && started.elapsed() > limit
            {
                bail!("the pool has no free GPUs for it: {}", r.reason.unwrap_or_default());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "deployment {}: {live} of {want} replicas up after {} s; see `aic deploy logs {}`",
                job.job,
                UP_WITHIN.as_secs(),
                job.job
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `aic deploy PATH`.
pub async fn create(env: &Env, o: DeployOpts) -> anyhow::Result<i32> {
    let host = if o.detach { None } else { submit::host(env).await? };
    let base = origins(env, host.as_ref()).await?;
    let (job, name) = submit(env, &o, host.as_ref()).await?;
    if o.serving.private {
        let who = name.clone().unwrap_or_else(|| job.job.to_string());
        eprintln!("private: callers send `Authorization: Bearer <key>`; make a key with `aic deploy key create {who}`");
    }
    if o.detach {
        println!("{}", address(&base, &job));
        return Ok(0);
    }
    // An autoscaled one starts with its fewest (at least one).
    let first = o.serving.initial_replicas(o.replicas);
    let live = wait_up(env, &job, first, host.as_ref()).await?;
    eprintln!("{} up", aic_core::plural(live as u64, "replica"));
    print_addresses(&base, &job, name.as_deref());
    match host {
        Some(h) => serve_here(env, &h, &job).await,
        None => Ok(0),
    }
}

/// This process hosts the embedded pool: the deployment lives while it does (until Ctrl-C).
async fn serve_here(env: &Env, h: &Hosted, job: &JobKey) -> anyhow::Result<i32> {
    eprintln!(
        "serving until Ctrl-C (the embedded pool runs in this process; `aic dev up` keeps deployments up on its own)"
    );
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    loop {
        h.step().await?;
        tokio::select! {
            _ = h.changed() => {}
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
    }
    eprintln!("stopping deployment {}", job.job);
    jobs::cancel(env, job.job.as_str()).await?;
    h.drain(Duration::from_secs(20)).await;
    Ok(0)
}

/// `aic deploy scale NAME N` and `aic deploy extend NAME --hours H`: a new deployment of the
/// same project with N replicas (or for H hours), paid for its hours, beside the old one,
/// then — once its replicas answer — the old one removed (and settled: what it did not use
/// comes back), so requests never stop. The name's address (`/n/<owner>/<name>/`) moves to
/// the new one as soon as it answers. On a pool without room for both, nothing changes and
/// the error says what to do.
pub async fn replace(env: &Env, name: &str, replicas: Option<u32>, hours: Option<f64>) -> anyhow::Result<i32> {
    let old = resolve(env, name).await?;
    let req: JobRequest = env
        .store
        .get_json(&old.request(), aic_schemas::validate::MAX_DOC_BYTES)
        .await?
        .ok_or_else(|| anyhow!("deployment {} has no request", old.job))?;
    if req.kind != JobKind::Serve {
        bail!("job {} is a training job, not a deployment", old.job);
    }
    if let Some(r) = aic_core::status::current(&env.store, &old).await?
        && r.state.is_terminal()
    {
        bail!("deployment {} already {}; deploy it again with `aic deploy`", old.job, r.state);
    }
    // The project exactly as deployed (its digest is the one signed before).
    let dir = env.home.join("scale").join(old.job.as_str());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    env.store.download_prefix(&old.code_prefix(), &dir, &|_| {}).await.context("fetching the deployed project")?;
    let host = submit::host(env).await?;
    let base = origins(env, host.as_ref()).await?;
    let replicas = replicas.unwrap_or(req.miners);
    if let Some(h) = hours
        && !(h > 0.0 && h.is_finite())
    {
        bail!("--hours must be a positive number of hours (it was {h})");
    }
    let opts = DeployOpts {
        path: dir.clone(),
        name: req.name.clone(),
        replicas,
        gpus: req.gpus_per_miner,
        hours: hours.unwrap_or(req.max_hours),
        entrypoint: Some(req.entrypoint.clone()),
        tx: None,
        detach: false,
        // The replacement gets the secrets the deployment it replaces got.
        secrets: req.secrets.clone(),
        // And the GPUs it asked for.
        gpu: crate::GpuArgs { gpu_types: req.gpu_types.clone(), min_gpu_memory: req.min_gpu_memory_gb },
        // And is served the same way (a private one stays private, its keys keep working).
        serving: req.serving.clone().unwrap_or_default(),
    };
    let (new, name) = submit(env, &opts, host.as_ref()).await?;
    // The new replicas start beside the old ones; a full pool cannot do that.
    // An autoscaled one's new version starts with its fewest (`scale` sets its most).
    let first = opts.serving.initial_replicas(replicas);
    if let Err(e) = wait_up_or_queued(env, &new, first, host.as_ref(), Some(Duration::from_secs(10))).await {
        let _ = jobs::cancel(env, new.job.as_str()).await;
        bail!(
            "deployment {} stays as it is ({e:#}); to change it on a full pool, `aic deploy rm {}` and deploy again with --replicas {replicas}",
            old.job,
            old.job
        );
    }
    jobs::cancel(env, old.job.as_str()).await?;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "deployment {} ({} replicas, {} h) replaced {} ({} replicas){}",
        new.job,
        replicas,
        aic_core::pricing::format_hours(opts.hours),
        old.job,
        req.miners,
        if name.is_some() { "; the API address stays the same" } else { "" }
    );
    print_addresses(&base, &new, name.as_deref());
    match host {
        Some(h) => serve_here(env, &h, &new).await,
        None => Ok(0),
    }
}

/// A deployment by job id (prefix) or `--name`.
pub async fn resolve(env: &Env, s: &str) -> anyhow::Result<JobKey> {
    if let Ok(j) = env.resolve(s).await {
        return Ok(j);
    }
    // By name: the newest one still going, else the newest.
    let mut found = Vec::new();
    for (job, req) in deployments(env).await? {
        if req.name.as_deref() == Some(s) {
            found.push(job);
        }
    }
    for job in found.iter().rev() {
        let ended = aic_core::status::current(&env.store, job).await?.is_some_and(|r| r.state.is_terminal());
        if !ended {
            return Ok(job.clone());
        }
    }
    found.pop().ok_or_else(|| anyhow!("no deployment named or numbered {s:?}; see `aic deploy list`"))
}

/// Your serve jobs, oldest first: from the names dispatch records and your newest jobs
/// (`aic_core::serving::deployments`; through the gateway in pool mode), not from every job.
async fn deployments(env: &Env) -> anyhow::Result<Vec<(JobKey, JobRequest)>> {
    let listed: Vec<aic_core::status::Listed> = match env.gateway_client() {
        Some(gw) => {
            serde_json::from_value(gw.call(reqwest::Method::GET, "deployments", None).await?["deployments"].clone())?
        }
        None => aic_core::serving::deployments(&env.store, &env.owner).await?,
    };
    Ok(listed
        .into_iter()
        .rev()
        .filter_map(|l| Some((JobKey::new(env.owner, l.job_id), l.request.filter(|r| r.kind == JobKind::Serve)?)))
        .collect())
}

/// `aic deploy list`.
pub async fn list(env: &Env, json: bool) -> anyhow::Result<()> {
    let base = origins(env, None).await.ok();
    let now = Utc::now();
    let mut rows = Vec::new();
    for (job, req) in deployments(env).await?.into_iter().rev() {
        let state = aic_core::status::current(&env.store, &job)
            .await?
            .map(|r| r.state.to_string())
            .unwrap_or("submitted".into());
        let live = replicas(env, &job).await?.iter().filter(|r| r.is_live(now)).count();
        // Paid time left: from when it started serving, for its paid hours.
        let history = aic_core::status::history(&env.store, &job).await?;
        let left = history
            .iter()
            .find(|r| r.state == aic_schemas::JobState::Running)
            .filter(|_| history.last().is_some_and(|r| !r.state.is_terminal()))
            .map(|r| {
                let paid = aic_core::pricing::paid_hours(req.max_hours) * 3600.0;
                (paid - (now - r.at).num_milliseconds() as f64 / 1000.0).max(0.0)
            });
        // Named: the name's stable address; the version's own is under "version_address".
        let own = base.as_ref().map(|b| address(b, &job));
        let named = base.as_ref().zip(req.name.as_deref()).and_then(|(b, n)| named_address(b, &job, n));
        let low = left.is_some_and(|l| low_on_time(l, req.max_hours));
        // Its last hour's requests (read for the ones still going).
        let hour = match left {
            Some(_) => stats(env, &job, 60).await.map(|(s, _)| s).unwrap_or_default(),
            None => serde_json::Value::Null,
        };
        rows.push(serde_json::json!({
            "deployment": job.job, "name": req.name, "state": state, "replicas": req.miners, "live": live,
            "address": named.clone().or(own.clone()), "version_address": own,
            "seconds_left": left.map(|l| l.round() as u64), "low": low,
            "private": req.serving.as_ref().is_some_and(|s| s.private), "last_hour": hour,
            "autoscale": autoscale_json(&req),
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!("no deployments; make one with `aic deploy ./project --replicas 2`");
    }
    for r in rows {
        let left = r["seconds_left"].as_u64().map(|s| format!("{} left", human_duration(s))).unwrap_or_default();
        let h = &r["last_hour"];
        let load = match h["requests"].as_u64() {
            Some(n) => format!(
                "{n} req/h {} err p95 {}",
                h["replica_errors"].as_u64().unwrap_or(0) + h["gateway_errors"].as_u64().unwrap_or(0),
                ms(&h["p95_ms"])
            ),
            None => String::new(),
        };
        let live = match r["autoscale"].as_object() {
            Some(a) => format!("{} live ({}–{})", r["live"], a["min_replicas"], a["max_replicas"]),
            None => format!("{}/{} live", r["live"], r["replicas"]),
        };
        let cold = match h["cold_starts"].as_u64() {
            Some(n) if n > 0 => format!(
                " {} cold start{} (≤{:.1} s)",
                n,
                if n == 1 { "" } else { "s" },
                h["max_cold_start_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
            ),
            _ => String::new(),
        };
        let load = format!("{load}{cold}");
        println!(
            "{}  {:<14} {:<10} {:<13} {:<14} {:<28} {}{}",
            r["deployment"].as_str().unwrap_or_default(),
            r["name"].as_str().unwrap_or("-"),
            r["state"].as_str().unwrap_or_default(),
            live,
            left,
            load,
            r["address"].as_str().unwrap_or(""),
            if r["private"] == true { "  (private)" } else { "" }
        );
        if r["low"] == true {
            let who = r["name"].as_str().or(r["deployment"].as_str()).unwrap_or_default();
            println!(
                "  ⚠ under 10% of its paid time left; it stops when it runs out: `aic deploy extend {who} --hours H`"
            );
        }
    }
    Ok(())
}

/// A deployment's request figures of its last `minutes` minutes: the summary and each minute.
pub async fn stats(
    env: &Env,
    job: &JobKey,
    minutes: i64,
) -> anyhow::Result<(serde_json::Value, Vec<aic_schemas::ServingMinute>)> {
    if let Some(gw) = env.gateway_client() {
        let v = gw.call(reqwest::Method::GET, &format!("jobs/{}/stats?minutes={minutes}", job.job), None).await?;
        return Ok((v["summary"].clone(), serde_json::from_value(v["minutes"].clone())?));
    }
    let now = Utc::now();
    let m = aic_core::servingstats::read(&env.store, job.job.as_str(), now - chrono::Duration::minutes(minutes), now)
        .await?;
    Ok((aic_core::servingstats::summary(&m), m))
}

/// How the pool scales the deployment (`null`: a fixed number of replicas).
fn autoscale_json(req: &JobRequest) -> serde_json::Value {
    match req.serving.as_ref().filter(|_| aic_core::scheduler::autoscaled(req)) {
        Some(s) => serde_json::json!({
            "min_replicas": s.min_replicas.unwrap_or(1), "max_replicas": req.miners,
            "target_concurrency": s.target(),
            "idle_minutes": (s.min_replicas == Some(0))
                .then(|| s.idle_minutes.unwrap_or(aic_schemas::serving::DEFAULT_IDLE_MINUTES)),
        }),
        None => serde_json::Value::Null,
    }
}

/// "12 ms", "—".
fn ms(v: &serde_json::Value) -> String {
    v.as_u64().map(|m| format!("≤{m} ms")).unwrap_or_else(|| "—".into())
}

/// `aic deploy status NAME`: what it is, its replicas, and its requests of the last hour.
pub async fn status(env: &Env, name: &str, minutes: i64, json: bool) -> anyhow::Result<()> {
    let job = resolve(env, name).await?;
    let req: JobRequest = env
        .store
        .get_json(&job.request(), aic_schemas::validate::MAX_DOC_BYTES)
        .await?
        .ok_or_else(|| anyhow!("deployment {} has no request", job.job))?;
    if req.kind != JobKind::Serve {
        bail!("job {} is a training job, not a deployment: see `aic status {}`", job.job, job.job);
    }
    let state =
        aic_core::status::current(&env.store, &job).await?.map(|r| r.state.to_string()).unwrap_or("submitted".into());
    let now = Utc::now();
    let regs = replicas(env, &job).await?;
    let live = regs.iter().filter(|r| r.is_live(now)).count();
    let (summary, per_minute) = stats(env, &job, minutes).await?;
    let base = origins(env, None).await.ok();
    let address = base
        .as_ref()
        .map(|b| req.name.as_deref().and_then(|n| named_address(b, &job, n)).unwrap_or_else(|| address(b, &job)));
    let serving = req.serving.clone().unwrap_or_default();
    if json {
        let v = serde_json::json!({
            "deployment": job.job, "name": req.name, "state": state, "replicas": req.miners, "live": live,
            "address": address, "private": serving.private, "server": serving.server,
            "workers": serving.workers, "threads": serving.threads, "autoscale": autoscale_json(&req),
            "minutes": minutes, "summary": summary, "per_minute": per_minute,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("deployment  : {} ({})", job.job, req.name.as_deref().unwrap_or("no name"));
    println!(
        "state       : {state}, {live}/{} replicas live{}",
        req.miners,
        if serving.private { ", private" } else { "" }
    );
    if let Some(a) = &address {
        println!("address     : {a}");
    }
    if let Some(a) = autoscale_json(&req).as_object() {
        println!(
            "autoscaled  : {}–{} replicas, {} requests under way per replica{}",
            a["min_replicas"],
            a["max_replicas"],
            a["target_concurrency"],
            a["idle_minutes"].as_u64().map(|m| format!("; none after {m} min without a request")).unwrap_or_default()
        );
    }
    let n = |k: &str| summary[k].as_u64().unwrap_or(0);
    let requests = n("requests");
    let errors = n("replica_errors") + n("gateway_errors");
    println!(
        "last {}: {requests} requests, {errors} errors ({} from replicas, {} from the gateway){}",
        if minutes % 60 == 0 {
            aic_core::plural((minutes / 60) as u64, "hour")
        } else {
            aic_core::plural(minutes as u64, "minute")
        },
        n("replica_errors"),
        n("gateway_errors"),
        if n("refused") > 0 { format!(", {} refused without a key", n("refused")) } else { String::new() }
    );
    println!(
        "latency     : p50 {}  p95 {}  p99 {} (to the answer's first byte); at most {} in flight",
        ms(&summary["p50_ms"]),
        ms(&summary["p95_ms"]),
        ms(&summary["p99_ms"]),
        n("max_in_flight")
    );
    if n("cold_starts") > 0 {
        println!(
            "cold starts : {} (a request found no replica and waited for one; the longest {:.1} s)",
            n("cold_starts"),
            n("max_cold_start_ms") as f64 / 1000.0
        );
    }
    if !per_minute.is_empty() {
        println!("{:<6} {:>8} {:>7} {:>9} {:>9} {:>8}", "minute", "requests", "errors", "p95", "in flight", "replicas");
        for m in per_minute.iter().rev().take(10).rev() {
            println!(
                "{:<6} {:>8} {:>7} {:>9} {:>9} {:>8}",
                m.minute.format("%H:%M"),
                m.requests,
                m.replica_errors + m.gateway_errors,
                m.percentile_ms(0.95).map(|v| format!("≤{v} ms")).unwrap_or_else(|| "—".into()),
                m.max_in_flight,
                m.replicas
            );
        }
    }
    Ok(())
}

/// Whether a deployment with `left` seconds of its paid `hours` is under 10% of them.
fn low_on_time(left: f64, hours: f64) -> bool {
    left < aic_core::pricing::paid_hours(hours) * 3600.0 * 0.1
}

/// "2 h 5 min", "12 min", "40 s".
fn human_duration(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_is_low_on_time_under_a_tenth_of_its_hours() {
        assert!(!low_on_time(400.0, 1.0));
        assert!(low_on_time(359.0, 1.0));
        assert!(low_on_time(0.0, 0.5));
        assert_eq!(
            (human_duration(40), human_duration(720), human_duration(7500)),
            ("40 s".into(), "12 min".into(), "2 h 5 min".into())
        );
    }

    #[test]
    fn a_deployments_default_name_is_its_folders_made_a_name() {
        let d = tempfile::tempdir().unwrap();
        for (folder, want) in [
            ("My_Model", Some("my-model")),
            ("digits-api", Some("digits-api")),
            ("  __x__  ", Some("x")),
            ("___", None),
        ] {
            let p = d.path().join(folder);
            std::fs::create_dir_all(&p).unwrap();
            assert_eq!(default_name(&p).as_deref(), want, "{folder:?}");
        }
        let long = d.path().join("a".repeat(80));
        std::fs::create_dir_all(&long).unwrap();
        // Short enough for a named address (`aic_schemas::origin`).
        assert_eq!(default_name(&long).unwrap().len(), aic_schemas::origin::MAX_NAMED);
    }
}
