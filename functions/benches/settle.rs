//! Settlement on anvil: the gas of paying by deposit (allowance + deposit) beside a plain
//! transfer, and of a settlement; settlements per second (one settler: one at a time); and
//! the latency a settlement adds from a job's terminal state to its record, beside the time
//! validate takes for the same job (both real chain round trips).
//!
//! Run: `cargo xtask bench settle` (sets AIC_ANVIL). A benchmark, not a test: it prints figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_chain::devchain::{self, SETTLER, dev_key};
use aic_chain::escrow::{IAICEscrow, IERC20Approve, run_id};
use aic_chain::from_alloy;
use aic_core::layout::JobKey;
use aic_core::status::{Transition, advance};
use aic_core::usage::{self, Usage};
use aic_core::{Store, StoreConfig};
use aic_functions::{Ctx, Outcome, handle_record};
use aic_schemas::event::S3EventRecord;
use aic_schemas::{JobState, PaymentRef};
use alloy::network::EthereumWallet;
use alloy::primitives::U256;
use alloy::providers::{Provider, ProviderBuilder};

#[path = "../tests/it/common/mod.rs"]
mod common;

const PRICE: u128 = 10u128.pow(15);

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("AIC_BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let dir = tempfile::tempdir()?;
    let chain = devchain::start(&dir.path().join("state.json"), &dir.path().join("chain.json"), PRICE, 1).await?;
    let store: Store = StoreConfig::Local { root: dir.path().join("store") }.open()?;
    let sched = common::idle_scheduler(dir.path().join("work"), &store, 1);
    let ctx =
        Ctx::on_chain(store.clone(), Arc::new(sched), &chain.config)?.with_settler(&chain.config, dev_key(SETTLER))?;
    let (token, escrow) = (chain.config.token, chain.config.escrow.expect("the dev chain has an escrow"));
    let key = dev_key(5);
    let wallet =
        ProviderBuilder::new().wallet(EthereumWallet::from(key.clone())).connect_http(chain.anvil.endpoint_url());

    // Gas, from receipts.
    let transfer = aic_chain::token::pay(&wallet, token, chain.config.treasury, U256::from(PRICE)).await?;
    let gas = |h| {
        let w = wallet.clone();
        async move { anyhow::Ok(w.get_transaction_receipt(h).await?.expect("mined").gas_used) }
    };
    let approve =
        IERC20Approve::new(token, &wallet).approve(escrow, U256::from(PRICE)).send().await?.get_receipt().await?;
    let run = run_id(key.address(), "01jb0000000000000000000000", 0);
    let deposit =
        IAICEscrow::new(escrow, &wallet).deposit(run, U256::from(PRICE), 1000).send().await?.get_receipt().await?;
    let settler =
        ProviderBuilder::new().wallet(EthereumWallet::from(dev_key(SETTLER))).connect_http(chain.anvil.endpoint_url());
    let settle = IAICEscrow::new(escrow, &settler)
        .settle(key.address(), run, U256::from(PRICE / 3))
        .send()
        .await?
        .get_receipt()
        .await?;
    println!("gas on anvil (cancun), from receipts");
    println!("  plain transfer to the treasury      {:>7}", gas(transfer).await?);
    println!("  allowance for the escrow (approve)  {:>7}", approve.gas_used);
    println!("  deposit for a run                   {:>7}", deposit.gas_used);
    println!("  settle (charge + refund, one tx)    {:>7}", settle.gas_used);

    // N jobs paid by deposit, validated, run for 10 s of a GPU (as the scheduler records),
    // ended: then settled one after another.
    let mut validate_times = Vec::with_capacity(n);
    let mut jobs = Vec::with_capacity(n);
    for _ in 0..n {
        let mut req = common::unsigned_by(from_alloy(key.address()), 1);
        let run = run_id(key.address(), req.job_id.as_str(), 0);
        let tx = aic_chain::escrow::deposit(&wallet, token, escrow, run, U256::from(PRICE), 1000).await?;
        req.payment = Some(PaymentRef { chain_id: chain.config.chain_id, tx: format!("{tx:#x}") });
        aic_chain::request::sign(&key, &mut req, chain.config.chain_id).await?;
        let job = JobKey::new(req.owner, req.job_id.clone());
        store.put_json(&job.request(), &req).await?;
        let t0 = Instant::now();
        let out = handle_record(&ctx, &S3EventRecord::object_created(store.bucket(), &job.request(), 1000)).await?;
        validate_times.push(t0.elapsed());
        anyhow::ensure!(matches!(out, Outcome::Validated(_)), "{out:?}");
        let t = chrono::Utc::now();
        let u = Usage {
            attempt: 0,
            index: 0,
            miner: "m".into(),
            gpus: 1,
            gpu_model: None,
            started_at: t - chrono::Duration::seconds(10),
            ended_at: t,
            how: "exited 0".into(),
        };
        usage::record(&store, &job, "bench", &u).await?;
        for st in [JobState::Scheduled, JobState::Running, JobState::Succeeded] {
            advance(&store, &job, Transition::new(st, "bench")).await?;
        }
        jobs.push(job);
    }
    let mut settle_times = Vec::with_capacity(n);
    let all = Instant::now();
    for job in &jobs {
        let t0 = Instant::now();
        let out =
            handle_record(&ctx, &S3EventRecord::object_created(store.bucket(), &job.status_snapshot(), 100)).await?;
        settle_times.push(t0.elapsed());
        anyhow::ensure!(matches!(out, Outcome::Settled(..)), "{out:?}");
    }
    let secs = all.elapsed().as_secs_f64();
    println!("\n{n} jobs, each paid by deposit and settled on anvil (local store)");
    println!("  settlements per second (one settler)   {:>8.1}", n as f64 / secs);
    println!(
        "  terminal state → settled: p50 {:>6.1} ms  p95 {:>6.1} ms",
        pct(settle_times.clone(), 0.5),
        pct(settle_times, 0.95)
    );
    println!(
        "  beside validate of the same jobs: p50 {:>6.1} ms  p95 {:>6.1} ms",
        pct(validate_times.clone(), 0.5),
        pct(validate_times, 0.95)
    );
    Ok(())
}
