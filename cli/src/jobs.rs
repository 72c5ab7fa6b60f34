//! `aic jobs`, `status`, `logs`, `results get`, `cancel`: your jobs, read and cancelled.

use std::path::PathBuf;

use aic_core::JobKey;
use aic_core::plural;
use aic_core::status::{self, Cancel};
use aic_schemas::JobId;
use anyhow::bail;

use crate::env::Env;
use crate::{progress, watch};

/// Your job ids, newest first.
async fn job_ids(env: &Env) -> anyhow::Result<Vec<JobId>> {
    let mut ids = aic_core::status::job_ids(&env.store, &env.owner).await?;
    ids.reverse();
    Ok(ids)
}

/// `--since`: `30m`, `2h`, `3d`, `1w` ago, or a date (`2026-12-01`) or time (RFC 3339).
pub fn parse_since(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let now = chrono::Utc::now();
    let t = s.trim();
    if let Some((n, unit)) = t.find(|c: char| !c.is_ascii_digit()).map(|i| t.split_at(i))
        && let Ok(n) = n.parse::<i64>()
    {
        // Anything else (`2026-12-01` starts with digits too) is tried as a date below.
        let d = match unit {
            "s" => Some(chrono::Duration::seconds(n)),
            "m" => Some(chrono::Duration::minutes(n)),
            "h" => Some(chrono::Duration::hours(n)),
            "d" => Some(chrono::Duration::days(n)),
            "w" => Some(chrono::Duration::weeks(n)),
            _ => None,
        };
        if let Some(d) = d {
            return Ok(now - d);
        }
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    bail!("--since {s}: say 30m, 2h, 3d, 1w, or a date like 2026-12-01")
}

/// Your newest jobs in the window: through the gateway in pool mode (one call a page; the
/// pool reads them), else from the store (16 reads at a time).
async fn recent(env: &Env, w: status::Window) -> anyhow::Result<Vec<status::Listed>> {
    let Some(gw) = env.gateway_client() else {
        return Ok(status::recent(&env.store, &env.owner, &w).await?);
    };
    let mut out: Vec<status::Listed> = Vec::new();
    loop {
        let want = w.limit.map(|l| l - out.len()).unwrap_or(1000).clamp(1, 1000);
        let mut q = url::form_urlencoded::Serializer::new(format!("jobs?limit={want}"));
        if let Some(s) = w.since {
            q.append_pair("since", &s.to_rfc3339());
        }
        if let Some(b) = out.last().map(|l| l.job_id.to_string()).or(w.before.as_ref().map(|b| b.to_string())) {
            q.append_pair("before", &b);
        }
        let v = gw.call(reqwest::Method::GET, &q.finish(), None).await?;
        let page: Vec<status::Listed> = serde_json::from_value(v["jobs"].clone())?;
        let more = v["more"].as_bool().unwrap_or(false) && !page.is_empty();
        out.extend(page);
        if !more || w.limit.is_some_and(|l| out.len() >= l) {
            return Ok(out);
        }
    }
}

pub async fn list(
    env: &Env,
    json: bool,
    limit: Option<usize>,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<()> {
    // One more than shown: whether to say there are more.
    let mut listed = recent(env, status::Window { limit: limit.map(|l| l + 1), since, before: None }).await?;
    let more = limit.is_some_and(|l| listed.len() > l);
    listed.truncate(limit.unwrap_or(usize::MAX));
    let rows: Vec<_> = listed.into_iter().map(|l| (l.job_id, l.status, l.request)).collect();
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|(id, st, req)| {
                serde_json::json!({
                    "job": id, "state": st.as_ref().map(|s| s.state), "reason": st.as_ref().and_then(|s| s.reason.clone()),
                    "entrypoint": req.as_ref().map(|r| r.entrypoint.clone()), "name": req.as_ref().and_then(|r| r.name.clone()),
                    "miners": req.as_ref().map(|r| r.miners), "gpus_per_miner": req.as_ref().map(|r| r.gpus_per_miner),
                    "created": id.created(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        if more {
            eprintln!("the newest {} shown; `--all` or `--limit N` for more", limit.unwrap_or_default());
        }
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!("no jobs yet; start one with `aic run SCRIPT`");
        return Ok(());
    }
    println!("{:<26}  {:<10}  {:<19}  {:<9}  WHAT", "JOB", "STATE", "CREATED", "MINERS");
    for (id, st, req) in rows {
        let state = st.as_ref().map(|s| s.state.as_str()).unwrap_or("uploading");
        let created = id.created().map(|c| c.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default();
        let shape = req.as_ref().map(|r| format!("{}×{}", r.miners, r.gpus_per_miner)).unwrap_or_default();
        let what = req.as_ref().map(|r| r.name.clone().unwrap_or_else(|| r.entrypoint.clone())).unwrap_or_default();
        println!("{id:<26}  {state:<10}  {created:<19}  {shape:<9}  {what}");
    }
    if more {
        eprintln!("the newest {} shown; `--all` or `--limit N` for more", limit.unwrap_or_default());
    }
    Ok(())
}

/// What was paid for each run of the job (from its manifests), as people read it.
async fn payment_lines(env: &Env, job: &JobKey) -> Vec<String> {
    let ms = aic_core::runs::manifests(&env.store, job).await.unwrap_or_default();
    let many = ms.len() > 1;
    ms.into_iter()
        .filter_map(|m| {
            let p = m.payment?;
            let amount = aic_core::pricing::format_aic(p.paid.parse().unwrap_or(0));
            let run = if many { format!("run {}: ", aic_schemas::shown_run(m.run)) } else { String::new() };
            Some(match p.escrow {
                Some(_) => format!("{run}paid {amount} by deposit in {} (what the job does not use comes back)", p.tx),
                None => format!("{run}paid {amount} by transfer in {}", p.tx),
            })
        })
        .collect()
}

/// A row of `aic spend` and its amounts: paid, charged, refunded, held.
type SpendRow = (serde_json::Value, [u128; 4]);

/// One paid job's row of `aic spend`; `None` when the job was never paid.
async fn spend_row(env: &Env, id: JobId) -> anyhow::Result<Option<SpendRow>> {
    let job = JobKey::new(env.owner, id.clone());
    // Every paid run of the job (a resumed job has several, each paid and settled).
    let paid_runs: Vec<aic_schemas::JobManifest> =
        aic_core::runs::manifests(&env.store, &job).await?.into_iter().filter(|m| m.payment.is_some()).collect();
    let (Some(m), Some(p)) = (paid_runs.first(), paid_runs.first().and_then(|m| m.payment.as_ref())) else {
        return Ok(None);
    };
    let amount = |m: &aic_schemas::JobManifest| m.payment.as_ref().map_or(0, |p| p.paid.parse::<u128>().unwrap_or(0));
    let paid: u128 = paid_runs.iter().map(amount).sum();
    let (settled, state) = futures::join!(env.settlements(&job), status::snapshot(&env.store, &job));
    let settled = settled.unwrap_or_default();
    let state = state?.map(|s| s.state.to_string()).unwrap_or_default();
    let (charged, refunded): (u128, u128) = settled.iter().fold((0, 0), |(c, r), s| {
        (c + s.charged.parse::<u128>().unwrap_or(0), r + s.refunded.parse::<u128>().unwrap_or(0))
    });
    let held: u128 = paid_runs
        .iter()
        .filter(|m| m.payment.as_ref().is_some_and(|p| p.escrow.is_some()) && !settled.iter().any(|s| s.run == m.run))
        .map(amount)
        .sum();
    let row = serde_json::json!({
        "job": id, "kind": m.request.kind, "what": m.request.name.clone().unwrap_or(m.request.entrypoint.clone()),
        "state": state, "paid": paid.to_string(), "charged": charged.to_string(), "refunded": refunded.to_string(),
        "held": held.to_string(), "gpu_seconds": settled.iter().map(|s| s.gpu_seconds).sum::<u64>(),
        "payment_tx": p.tx, "settlement_tx": settled.first().and_then(|s| s.tx.clone()),
        "by": if p.escrow.is_some() { "deposit" } else { "transfer" },
    });
    Ok(Some((row, [paid, charged, refunded, held])))
}

/// `aic spend`: every paid job and deployment (created since `since`), what was paid,
/// charged and refunded, what the escrow still holds (jobs not settled yet), and the
/// totals. Jobs are read [`status::LIST_READS_IN_FLIGHT`] at a time, newest first.
pub async fn spend(env: &Env, json: bool, since: Option<chrono::DateTime<chrono::Utc>>) -> anyhow::Result<()> {
    use aic_core::pricing::format_aic_short as aic;
    use futures::StreamExt;
    let ids = job_ids(env).await?.into_iter().filter(|id| since.is_none_or(|t| id.created().is_none_or(|c| c >= t)));
    let read: Vec<anyhow::Result<Option<SpendRow>>> =
        futures::stream::iter(ids).map(|id| spend_row(env, id)).buffered(status::LIST_READS_IN_FLIGHT).collect().await;
    let mut rows = Vec::new();
    let [mut paid_t, mut charged_t, mut refunded_t, mut held_t] = [0u128; 4];
    for r in read {
        let Some((row, [paid, charged, refunded, held])) = r? else { continue };
        paid_t += paid;
        charged_t += charged;
        refunded_t += refunded;
        held_t += held;
        rows.push(row);
    }
    let totals = serde_json::json!({
        "paid": paid_t.to_string(), "charged": charged_t.to_string(), "refunded": refunded_t.to_string(), "held": held_t.to_string(),
    });
    let due = crate::reclaim::due(env).await.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "the escrow's deposits could not be read");
        Vec::new()
    });
    if json {
        let due: Vec<_> =
            due.iter().map(|(tx, amount)| serde_json::json!({"deposit": tx, "amount": amount.to_string()})).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"jobs": rows, "totals": totals, "reclaimable": due}))?
        );
        return Ok(());
    }
    for (tx, amount) in &due {
        println!("deposit {tx} ({}) is past its deadline and yours to take back: `aic reclaim --all`", aic(*amount));
    }
    if rows.is_empty() {
        eprintln!("nothing paid yet");
        return Ok(());
    }
    let amount = |v: &serde_json::Value| aic(v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0));
    println!(
        "{:<26}  {:<5}  {:<10}  {:>14}  {:>14}  {:>14}  {:>14}  WHAT",
        "JOB", "KIND", "STATE", "PAID", "CHARGED", "REFUNDED", "HELD"
    );
    for r in &rows {
        println!(
            "{:<26}  {:<5}  {:<10}  {:>14}  {:>14}  {:>14}  {:>14}  {}",
            r["job"].as_str().unwrap_or_default(),
            r["kind"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
            amount(&r["paid"]),
            amount(&r["charged"]),
            amount(&r["refunded"]),
            amount(&r["held"]),
            r["what"].as_str().unwrap_or_default()
        );
    }
    println!(
        "total: paid {}, charged {}, refunded {}, held in the escrow {}",
        aic(paid_t),
        aic(charged_t),
        aic(refunded_t),
        aic(held_t)
    );
    Ok(())
}

pub async fn status(env: &Env, s: &str, json: bool) -> anyhow::Result<()> {
    let job = env.resolve(s).await?;
    let hist = status::history(&env.store, &job).await?;
    let settled = env.settlements(&job).await.unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"job": job.job, "history": hist, "settlements": settled})
            )?
        );
        return Ok(());
    }
    if hist.is_empty() {
        if env.store.head(&job.request()).await?.is_some() {
            println!("job {}: waiting for the pool to pick it up (is `aic dev up` running?)", job.job);
            return Ok(());
        }
        bail!("no job {}; see `aic jobs`", job.job);
    }
    println!("job {}", job.job);
    let resumed = hist.iter().any(|r| r.run > 0);
    for (i, r) in hist.iter().enumerate() {
        // A resumed job's history, run by run.
        if resumed && (i == 0 || hist[i - 1].run != r.run) {
            println!(" run {}", aic_schemas::shown_run(r.run));
        }
        println!("  {}  {}", r.at.format("%H:%M:%S"), watch::describe(r));
    }
    if let Some(tail) = hist.last().and_then(|r| r.detail.log_tail.as_ref()) {
        println!("last lines of output:\n{tail}");
    }
    let used = crate::gpuuse::read(env, &job).await.unwrap_or_default();
    if !used.is_empty() {
        print!("{}", crate::gputable::table(&used));
    }
    for line in payment_lines(env, &job).await {
        println!("  {line}");
    }
    for s in &settled {
        let run = if resumed { format!("run {}: ", aic_schemas::shown_run(s.run)) } else { String::new() };
        println!("  {run}{}", aic_functions::settle::summary(s));
    }
    Ok(())
}

pub async fn logs(env: &Env, s: &str, follow: bool) -> anyhow::Result<i32> {
    let job = env.resolve(s).await?;
    if follow {
        return watch::follow_logs(env, &job).await;
    }
    let mut cursor = watch::LogCursor::default();
    let printed = cursor.print_new(env, &job).await? + cursor.print_live(env, &job).await?;
    // A progress bar drawn from the log's `AIC_PROGRESS` lines is cleared, not left behind.
    cursor.finish();
    if printed == 0 {
        eprintln!("no output yet");
    }
    Ok(0)
}

pub async fn results_get(env: &Env, s: &str, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let job = env.resolve(s).await?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(format!("{}-output", job.job)));
    let prefix = job.output_prefix();
    let total: u64 = env.store.list(&prefix).await?.iter().map(|m| m.size).sum();
    let pb = progress::bytes(total, "downloading results");
    let (n, bytes) = env.store.download_prefix(&prefix, &dir, &|b| pb.set_position(b)).await?;
    pb.finish_and_clear();
    if n == 0 {
        bail!("job {} has no outputs (yet): the program writes them to $AIC_OUTPUT_DIR", job.job);
    }
    eprintln!("downloaded {} ({}) to {}", plural(n as u64, "file"), progress::size(bytes), dir.display());
    Ok(())
}

pub async fn cancel(env: &Env, s: &str) -> anyhow::Result<()> {
    let job = env.resolve(s).await?;
    if let Some(gw) = env.gateway_client() {
        let v = gw.call(reqwest::Method::POST, &format!("jobs/{}/cancel", job.job), None).await?;
        if v["already"].as_bool() == Some(true) {
            eprintln!("job {} was already cancelled", job.job);
        } else {
            eprintln!("job {} cancelled; its allocations are stopping", job.job);
        }
        return Ok(());
    }
    // A job submitted a moment ago (`aic run -d`) is cancelled once the pool picks it up.
    let mut outcome = status::cancel(&env.store, &job, "cli").await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while outcome == Cancel::NotStarted
        && std::time::Instant::now() < deadline
        && env.store.head(&job.request()).await?.is_some()
    {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        outcome = status::cancel(&env.store, &job, "cli").await?;
    }
    match outcome {
        Cancel::Cancelled(_) => eprintln!("job {} cancelled; its allocations are stopping", job.job),
        Cancel::Already(_) => eprintln!("job {} was already cancelled", job.job),
        Cancel::NotStarted if env.store.head(&job.request()).await?.is_none() => {
            bail!("no job {}; see `aic jobs`", job.job)
        }
        other => bail!(other.refusal(&job.job).unwrap_or_default()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_takes_spans_dates_and_times_and_says_what_it_wants_otherwise() {
        // Now taken after parsing: the span is never under what was asked.
        let ago = |s: &str| {
            let t = parse_since(s).unwrap();
            (chrono::Utc::now() - t).num_minutes()
        };
        assert_eq!((ago("30m"), ago("2h"), ago("3d"), ago("1w")), (30, 120, 3 * 1440, 7 * 1440));
        assert_eq!(parse_since("2026-12-01").unwrap().to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(parse_since("2026-12-01T10:30:00+02:00").unwrap().to_rfc3339(), "2026-12-01T08:30:00+00:00");
        for bad in ["3x", "2026-13-01", "soon", ""] {
            let e = parse_since(bad).unwrap_err().to_string();
            assert!(e.contains("say 30m, 2h, 3d, 1w, or a date like 2026-12-01"), "{bad}: {e}");
        }
    }
}
