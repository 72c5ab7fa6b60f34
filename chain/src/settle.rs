//! The pool's side of the escrow: settling deposits with what a run used, signed with the
//! settler's key (a pool secret: `AIC_SETTLER_KEY`, never in a worker's reach).
//!
//! Settling is once per deposit, and the contract refuses a second time: a settle function
//! that crashed between the transaction and its record reads the settlement back (the
//! deposit's state and `used`, and the `Settled` event for its transaction) on the next try.
//! Settlements from one process go one at a time (one key, one nonce sequence).

use aic_core::layout::JobKey;
use aic_core::payment::{OnChain, PaymentRejected, PaymentVerdict, Settler};
use aic_schemas::Address as WireAddress;
use aic_schemas::manifest::EscrowDeposit;
use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::Filter;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use async_trait::async_trait;

use crate::escrow::{self, HELD, IAICEscrow, NONE, RECLAIMED, SETTLED};
use crate::{ChainConfig, to_alloy};

pub struct ChainSettler {
    cfg: ChainConfig,
    provider: DynProvider,
    one_at_a_time: tokio::sync::Mutex<()>,
}

fn unavailable(e: impl std::fmt::Display) -> PaymentVerdict {
    PaymentVerdict::Unavailable(e.to_string())
}

fn units(v: U256) -> u128 {
    u128::try_from(v).unwrap_or(u128::MAX)
}

impl ChainSettler {
    pub fn new(cfg: ChainConfig, key: PrivateKeySigner) -> anyhow::Result<Self> {
        let provider =
            ProviderBuilder::new().wallet(EthereumWallet::from(key)).connect_http(cfg.rpc_url.parse()?).erased();
        Ok(ChainSettler { cfg, provider, one_at_a_time: tokio::sync::Mutex::new(()) })
    }

    /// The transaction of `depositor`'s event `E` for `run` in the escrow.
    async fn event_tx<E: SolEvent>(&self, escrow: Address, run: B256, depositor: Address) -> Option<String> {
        let filter = Filter::new()
            .address(escrow)
            .event_signature(E::SIGNATURE_HASH)
            .topic1(run)
            .topic2(depositor.into_word())
            .from_block(0);
        let logs = self.provider.get_logs(&filter).await.ok()?;
        logs.first().and_then(|l| l.transaction_hash).map(|h| format!("{h:#x}"))
    }

    /// What the escrow says of a deposit it no longer holds.
    async fn read_back(
        &self,
        escrow: Address,
        run: B256,
        depositor: Address,
    ) -> Result<Option<OnChain>, PaymentVerdict> {
        let h = escrow::held(&self.provider, escrow, depositor, run).await.map_err(unavailable)?;
        Ok(match h.state {
            SETTLED => Some(OnChain::Settled {
                used: units(h.used),
                refunded: units(h.amount - h.used),
                tx: self.event_tx::<IAICEscrow::Settled>(escrow, run, depositor).await,
            }),
            RECLAIMED => Some(OnChain::Reclaimed {
                amount: units(h.amount),
                tx: self.event_tx::<IAICEscrow::Reclaimed>(escrow, run, depositor).await,
            }),
            _ => None,
        })
    }

    async fn settle_run(
        &self,
        escrow: Address,
        run: B256,
        depositor: Address,
        used: u128,
    ) -> Result<OnChain, PaymentVerdict> {
        let _one = self.one_at_a_time.lock().await;
        let h = escrow::held(&self.provider, escrow, depositor, run).await.map_err(unavailable)?;
        match h.state {
            HELD => {}
            NONE => {
                return Err(PaymentRejected(format!(
                    "the escrow {escrow} holds no deposit from {depositor} for run {run:#x}"
                ))
                .into());
            }
            _ => return self.read_back(escrow, run, depositor).await?.ok_or_else(|| unavailable("deposit state")),
        }
        let used = U256::from(used).min(h.amount);
        let c = IAICEscrow::new(escrow, &self.provider);
        let call = c.settle(depositor, run, used);
        // With a margin over the estimate (`token::with_margin`): another settlement in the
        // same block may write the treasury's balance from zero first.
        let sent = match call.estimate_gas().await {
            Ok(gas) => call.gas(crate::token::with_margin(gas)).send().await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(pending) => {
                let r = pending.get_receipt().await.map_err(unavailable)?;
                if r.status() {
                    return Ok(OnChain::Settled {
                        used: units(used),
                        refunded: units(h.amount - used),
                        tx: Some(format!("{:#x}", r.transaction_hash)),
                    });
                }
            }
            Err(e) => {
                tracing::info!(run = %run, error = %escrow::revert_reason(&e), "settle refused; reading the deposit back")
            }
        }
        // Refused or reverted: another settler (or the owner's reclaim) was first.
        self.read_back(escrow, run, depositor).await?.ok_or_else(|| unavailable("the settlement did not go through"))
    }
}

#[async_trait]
impl Settler for ChainSettler {
    async fn settle(
        &self,
        depositor: &WireAddress,
        deposit: &EscrowDeposit,
        used: u128,
    ) -> Result<OnChain, PaymentVerdict> {
        let escrow: Address = deposit.contract.parse().map_err(|e| unavailable(format!("escrow address: {e}")))?;
        if Some(escrow) != self.cfg.escrow {
            return Err(PaymentRejected(format!(
                "the deposit is in escrow {escrow}, not this pool's ({:?})",
                self.cfg.escrow
            ))
            .into());
        }
        let run: B256 = deposit.run_key.parse().map_err(|e| unavailable(format!("run key: {e}")))?;
        self.settle_run(escrow, run, to_alloy(depositor), used).await
    }

    async fn refund_deposits_in(&self, job: &JobKey, run_no: u32, tx: &str) -> Result<Vec<OnChain>, PaymentVerdict> {
        let Some(escrow) = self.cfg.escrow else { return Ok(vec![]) };
        let Ok(hash) = tx.parse::<B256>() else { return Ok(vec![]) };
        let Some(receipt) = self.provider.get_transaction_receipt(hash).await.map_err(unavailable)? else {
            return Ok(vec![]);
        };
        // Only the job's owner's deposit for this run: a request anyone can upload under
        // their own address may name anyone's transaction.
        let owner = to_alloy(&job.owner);
        let run = escrow::run_id(owner, job.job.as_str(), run_no);
        let mut out = vec![];
        for log in receipt.inner.logs() {
            let Ok(d) = log.log_decode::<IAICEscrow::Deposited>() else { continue };
            if d.inner.address == escrow && d.inner.data.run == run && d.inner.data.depositor == owner {
                out.push(self.settle_run(escrow, run, owner, 0).await?);
            }
        }
        Ok(out)
    }
}
