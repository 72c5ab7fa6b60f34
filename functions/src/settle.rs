//! settle: a job's status snapshot written (or its allocations ended, through `redrive`).
//! When the job has ended and the scheduler says none of its allocations runs any more, its
//! paid run (the current one: a job resumed with `aic resume` has one per run, each with its
//! own deposit and manifest) is settled once:
//!
//! - paid by deposit into the pool's escrow: charged min(deposit, GPU-seconds the pool
//!   measured (`core::usage`, rounded up to whole seconds) × the quoted price per GPU-hour
//!   of the model they ran on, where the pool prices models apart),
//!   settled on chain (the charge to the treasury, the rest back to the owner in the same
//!   transaction). Rejected, unplaceable and never-started jobs used nothing and get it all
//!   back;
//! - refused before a manifest (rejected): any deposit its request made for it is refunded in
//!   full;
//! - paid by a plain transfer: recorded as charged in full (nothing can come back);
//! - free: nothing to settle.
//!
//! The record, `pool/settlements/<owner>/<job>/<run>.json`, is written once after the chain
//! says so; a crash between the two is recovered on the next delivery (the escrow refuses a
//! second settlement and the settler reads the first back).

use aic_core::layout::{self, JobKey};
use aic_core::payment::{OnChain, PaymentVerdict};
use aic_core::pricing::format_aic_short as format_aic;
use aic_core::{runs, status, usage};
use aic_schemas::validate::MAX_DOC_BYTES;
use aic_schemas::{JobRequest, JobState, PaymentRef, ResumeRequest, Settlement, SettlementKind};
use chrono::Utc;

use crate::{Ctx, HandlerError, Outcome};

fn verdict(e: PaymentVerdict) -> HandlerError {
    match e {
        PaymentVerdict::Rejected(r) => HandlerError::Unavailable(format!("cannot settle: {r}")),
        PaymentVerdict::Pending(p) => HandlerError::Deferred(p),
        PaymentVerdict::Unavailable(u) => HandlerError::Unavailable(u),
    }
}

pub async fn handle(ctx: &Ctx, job: &JobKey) -> Result<Outcome, HandlerError> {
    let store = &ctx.store;
    let Some(st) = status::current(store, job).await? else { return Ok(Outcome::Ignored) };
    if !st.state.is_terminal() {
        return Ok(Outcome::Ignored);
    }
    let run = st.run;
    let key = layout::settlement(job, run);
    if store.head(&key).await?.is_some() {
        return Ok(Outcome::AlreadyDone(job.clone()));
    }
    let Some(m) = runs::manifest(store, job, run).await? else {
        return refund_refused(ctx, job, run, st.state).await;
    };
    let Some(p) = &m.payment else { return Ok(Outcome::Ignored) }; // free
    let paid: u128 = p.paid.parse().unwrap_or(0);
    // Every allocation must have stopped: what they used is then all recorded.
    if !ctx.scheduler.finished(job).await? {
        return Err(HandlerError::Deferred(format!("job {}: its allocations are still stopping", job.job)));
    }
    let runs = usage::of_run(store, job, run).await?;
    let gpu_seconds = usage::gpu_seconds(&runs);
    // Each allocation at the price, as quoted, of the model it ran on (one price: the quote's).
    let charges = usage::charges(&runs, &aic_core::pricing::Pricing::of_quote(&m.quote));
    let used = charges.iter().map(|(_, _, c)| *c).sum::<u128>().min(paid);
    let by_model = match m.quote.gpu_prices.is_empty() {
        true => vec![],
        false => charges
            .iter()
            .map(|(p, secs, cost)| aic_schemas::ModelCharge {
                model: p.model.clone().unwrap_or_else(|| aic_core::pricing::OTHER_MODELS.into()),
                gpu_seconds: *secs,
                price_per_gpu_hour: p.per_gpu_hour.to_string(),
                cost: cost.to_string(),
            })
            .collect(),
    };
    let (kind, charged, refunded, tx) = match &p.escrow {
        None => (SettlementKind::Transfer, paid, 0, None),
        Some(deposit) => {
            let settler = ctx.settler.as_ref().ok_or_else(|| {
                HandlerError::Unavailable("the pool's escrow needs its settler's key (AIC_SETTLER_KEY)".into())
            })?;
            match settler.settle(&job.owner, deposit, used).await.map_err(verdict)? {
                OnChain::Settled { used, refunded, tx } => (SettlementKind::Settled, used, refunded, tx),
                OnChain::Reclaimed { amount, tx } => (SettlementKind::Reclaimed, 0, amount, tx),
            }
        }
    };
    let s = Settlement {
        run,
        kind,
        chain_id: p.chain_id,
        paid: paid.to_string(),
        gpu_seconds,
        charged: charged.to_string(),
        by_model,
        refunded: refunded.to_string(),
        tx,
        at: Utc::now(),
    };
    store.create_json(&key, &s).await?;
    crate::metrics::settled_after((s.at - st.at).num_milliseconds() as f64 / 1000.0);
    Ok(Outcome::Settled(job.clone(), summary(&s)))
}

/// A refused request's deposits for the job's run, refunded in full.
async fn refund_refused(ctx: &Ctx, job: &JobKey, run: u32, state: JobState) -> Result<Outcome, HandlerError> {
    if state != JobState::Rejected {
        return Ok(Outcome::Ignored);
    }
    let payment = match run {
        0 => {
            ctx.store.get_json::<JobRequest>(&job.request(), MAX_DOC_BYTES).await.ok().flatten().and_then(|r| r.payment)
        }
        n => ctx
            .store
            .get_json::<ResumeRequest>(&job.run_request(n), MAX_DOC_BYTES)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.payment),
    };
    match payment {
        Some(p) => refund_run(ctx, job, run, &p).await,
        None => Ok(Outcome::Ignored),
    }
}

/// The deposits transaction `p` made for the job's run `run`, refunded in full and recorded
/// as the run's settlement (a refused request's, or a resume the job could not take).
pub(crate) async fn refund_run(ctx: &Ctx, job: &JobKey, run: u32, p: &PaymentRef) -> Result<Outcome, HandlerError> {
    let key = layout::settlement(job, run);
    if ctx.store.head(&key).await?.is_some() {
        return Ok(Outcome::AlreadyDone(job.clone()));
    }
    let Some(settler) = ctx.settler.as_ref() else { return Ok(Outcome::Ignored) };
    let back = settler.refund_deposits_in(job, run, &p.tx).await.map_err(verdict)?;
    let (mut refunded, mut tx) = (0u128, None);
    for b in back {
        let (OnChain::Settled { refunded: r, tx: t, .. } | OnChain::Reclaimed { amount: r, tx: t }) = b;
        refunded += r;
        tx = tx.or(t);
    }
    if refunded == 0 {
        return Ok(Outcome::Ignored);
    }
    let s = Settlement {
        run,
        kind: SettlementKind::Settled,
        chain_id: p.chain_id,
        paid: refunded.to_string(),
        gpu_seconds: 0,
        charged: "0".into(),
        by_model: vec![],
        refunded: refunded.to_string(),
        tx,
        at: Utc::now(),
    };
    ctx.store.create_json(&key, &s).await?;
    Ok(Outcome::Settled(job.clone(), summary(&s)))
}

/// "used 6.5 GPU-seconds = 0.0018 AIC; refunded 1.9982 AIC in 0x…".
pub fn summary(s: &Settlement) -> String {
    let (charged, refunded) = (s.charged.parse().unwrap_or(0), s.refunded.parse().unwrap_or(0));
    let mut out = format!("used {} GPU-seconds = {}", s.gpu_seconds, format_aic(charged));
    // Where models are priced apart: what each cost (`A10: 12 GPU-seconds at 2 AIC`).
    if !s.by_model.is_empty() {
        let parts: Vec<String> = s
            .by_model
            .iter()
            .map(|c| {
                let price = aic_core::pricing::format_aic(c.price_per_gpu_hour.parse().unwrap_or(0));
                format!("{}: {} GPU-seconds at {price} per GPU-hour", c.model, c.gpu_seconds)
            })
            .collect();
        out.push_str(&format!(" ({})", parts.join(", ")));
    }
    match s.kind {
        SettlementKind::Transfer => out.push_str(" (paid by transfer: nothing to refund)"),
        SettlementKind::Reclaimed => {
            out = format!("the deposit of {} was reclaimed by its owner", format_aic(refunded))
        }
        SettlementKind::Settled => out.push_str(&format!("; refunded {}", format_aic(refunded))),
    }
    if let Some(tx) = &s.tx {
        out.push_str(&format!(" in {tx}"));
    }
    out
}
