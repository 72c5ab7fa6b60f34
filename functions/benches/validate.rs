//! validate throughput with real receipt checks against anvil: requests per second at
//! concurrency 1, 8 and 64. Each request is signed and paid by its own transfer, so every
//! validation does the full work: read, signature recovery, receipt + block number, claim,
//! manifest, two status records.
//!
//! Run: `cargo xtask bench` (sets AIC_ANVIL). A benchmark, not a test: it prints figures.

use std::sync::Arc;
use std::time::Instant;

use aic_chain::devchain::{self, dev_key};
use aic_chain::from_alloy;
use aic_core::layout::JobKey;
use aic_core::{Store, StoreConfig};
use aic_functions::{Ctx, Outcome, handle_record};
use aic_schemas::PaymentRef;
use aic_schemas::event::S3EventRecord;
use alloy::network::EthereumWallet;
use alloy::primitives::U256;
use alloy::providers::ProviderBuilder;
use futures::StreamExt;

#[path = "../tests/it/common/mod.rs"]
mod common;

const PRICE: u128 = 10u128.pow(15); // 0.001 AIC per GPU-hour: many jobs per dev wallet

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let per_level: usize = std::env::var("AIC_BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let dir = tempfile::tempdir()?;
    let chain = devchain::start(&dir.path().join("state.json"), &dir.path().join("chain.json"), PRICE, 1).await?;
    let store: Store = StoreConfig::Local { root: dir.path().join("store") }.open()?;
    let sched = common::idle_scheduler(dir.path().join("work"), &store, 1);
    let ctx = Ctx::on_chain(store.clone(), Arc::new(sched), &chain.config)?;
    let key = dev_key(5);
    let wallet =
        ProviderBuilder::new().wallet(EthereumWallet::from(key.clone())).connect_http(chain.anvil.endpoint_url());
    println!("validate throughput, {per_level} paid and signed requests per level, local store, anvil receipts");
    println!("{:>11}  {:>10}  {:>10}", "concurrency", "req/s", "total s");
    for conc in [1usize, 8, 64] {
        // Prepare: one payment and one signed request per job (not timed).
        let mut events = Vec::with_capacity(per_level);
        for _ in 0..per_level {
            let tx =
                aic_chain::token::pay(&wallet, chain.config.token, chain.config.treasury, U256::from(PRICE)).await?;
            let mut req = common::unsigned_by(from_alloy(key.address()), 1);
            req.payment = Some(PaymentRef { chain_id: chain.config.chain_id, tx: format!("{tx:#x}") });
            aic_chain::request::sign(&key, &mut req, chain.config.chain_id).await?;
            let job = JobKey::new(req.owner, req.job_id.clone());
            store.put_json(&job.request(), &req).await?;
            events.push(S3EventRecord::object_created(store.bucket(), &job.request(), 1000));
        }
        let t0 = Instant::now();
        let outcomes: Vec<_> =
            futures::stream::iter(events.iter()).map(|e| handle_record(&ctx, e)).buffer_unordered(conc).collect().await;
        let secs = t0.elapsed().as_secs_f64();
        let ok = outcomes.iter().filter(|o| matches!(o, Ok(Outcome::Validated(_)))).count();
        anyhow::ensure!(
            ok == per_level,
            "only {ok} of {per_level} validated: {:?}",
            outcomes.iter().find(|o| !matches!(o, Ok(Outcome::Validated(_))))
        );
        println!("{conc:>11}  {:>10.1}  {secs:>10.2}", per_level as f64 / secs);
    }
    Ok(())
}
