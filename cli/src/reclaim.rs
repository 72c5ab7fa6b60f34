//! `aic reclaim [JOB | --all]`: takes back your deposits the pool did not settle in time.
//!
//! The escrow lets a depositor take a held deposit back once its deadline (the run's paid
//! hours + 7 days) has passed. That is the way back for a deposit of a job paid but never
//! submitted (`aic` stopped between paying and submitting, or the request's hour went by),
//! of a run the pool never settled, and of one made under the escrow's older run key (before
//! it named the owner), which pays for no job. Every deposit is found from the escrow's
//! `Deposited` events for your address, so none is missed, whatever the bucket holds.

use aic_chain::escrow::{self, DepositSeen, HELD};
use aic_core::pricing::format_aic;
use alloy::primitives::B256;
use alloy::providers::Provider;
use anyhow::{anyhow, bail};

use crate::env::Env;

/// The most runs of one job looked for by `aic reclaim JOB`.
const RUNS_LOOKED_FOR: u32 = 64;

/// Reclaims `job`'s deposits whose deadline has passed (`None`: every such deposit of yours).
pub async fn reclaim(env: &Env, job: Option<&str>) -> anyhow::Result<()> {
    use alloy::network::EthereumWallet;
    use alloy::providers::ProviderBuilder;
    let chain = env.chain()?;
    let escrow = chain.escrow.ok_or_else(|| anyhow!("this pool takes no deposits: there is nothing to reclaim"))?;
    let key = env.source.signer()?.ok_or_else(|| {
        anyhow!("reclaiming sends a transaction from your key: sign in with `aic login --keystore F` (or set AIC_PRIVATE_KEY)")
    })?;
    let me = key.address();
    let provider = ProviderBuilder::new().wallet(EthereumWallet::from(key)).connect_http(chain.rpc_url.parse()?);
    let mut seen = escrow::deposits_of(&provider, escrow, me).await?;
    if let Some(job) = job {
        let id = match job.parse::<aic_schemas::JobId>() {
            Ok(id) => id,
            Err(_) => env.resolve(job).await?.job,
        };
        let keys: Vec<(B256, u32)> = (0..RUNS_LOOKED_FOR)
            .flat_map(|r| [(escrow::run_id(me, id.as_str(), r), r), (escrow::legacy_run_id(id.as_str(), r), r)])
            .collect();
        seen.retain(|d| keys.iter().any(|(k, _)| *k == d.run));
        if seen.is_empty() {
            bail!("you made no deposit for job {id} in the pool's escrow {escrow}; see `aic spend`");
        }
    }
    let now = provider
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await?
        .map(|b| b.header.timestamp)
        .ok_or_else(|| anyhow!("the chain has no latest block"))?;
    let (due, waiting): (Vec<DepositSeen>, Vec<DepositSeen>) =
        seen.into_iter().filter(|d| d.now.state == HELD).partition(|d| d.deadline < now);
    for d in &waiting {
        let left = (d.deadline - now) as f64 / 3600.0;
        eprintln!(
            "deposit {} ({}) is held until its deadline, {left:.1} h from now: the pool settles it when its run ends, or reclaim it then",
            short(d),
            format_aic(u128::try_from(d.amount).unwrap_or(u128::MAX))
        );
    }
    if due.is_empty() {
        eprintln!("nothing to reclaim now");
        return Ok(());
    }
    let c = escrow::IAICEscrow::new(escrow, &provider);
    for d in due {
        let pending = c
            .reclaim(d.run)
            .send()
            .await
            .map_err(|e| anyhow!("reclaiming {}: {}", short(&d), escrow::revert_reason(&e)))?;
        let r = pending.get_receipt().await?;
        if !r.status() {
            bail!("reclaiming {} reverted in {:#x}", short(&d), r.transaction_hash);
        }
        println!(
            "reclaimed {} (deposit {}) in {:#x}",
            format_aic(u128::try_from(d.amount).unwrap_or(u128::MAX)),
            short(&d),
            r.transaction_hash
        );
    }
    Ok(())
}

/// Your held deposits past their deadline, `(deposit, amount)`: what `aic reclaim --all`
/// takes back (`aic spend` lists them). Empty where the pool takes no deposits.
pub async fn due(env: &Env) -> anyhow::Result<Vec<(String, u128)>> {
    let chain = env.chain()?;
    let Some(escrow) = chain.escrow else { return Ok(Vec::new()) };
    let provider = alloy::providers::ProviderBuilder::new().connect_http(chain.rpc_url.parse()?);
    let me = aic_chain::to_alloy(&env.owner);
    let now = provider
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await?
        .map(|b| b.header.timestamp)
        .unwrap_or_default();
    Ok(escrow::deposits_of(&provider, escrow, me)
        .await?
        .iter()
        .filter(|d| d.now.state == HELD && d.deadline < now)
        .map(|d| (short(d), u128::try_from(d.amount).unwrap_or(u128::MAX)))
        .collect())
}

/// A deposit as the user knows it: its transaction, else its run key.
fn short(d: &DepositSeen) -> String {
    match d.tx {
        Some(tx) => format!("{tx:#x}"),
        None => format!("for run {:#x}", d.run),
    }
}
