//! What the validate function asks of the chain: who signed a request, and whether a
//! payment pays for it.

use aic_core::auth::Authenticator;
use aic_core::layout::{JobKey, payment_claim};
use aic_core::payment::{PaymentRejected, PaymentVerdict, PaymentVerifier};
use aic_core::pricing::format_aic;
use aic_core::{Created, Store};
use aic_schemas::manifest::PaymentClaim;
use aic_schemas::validate::MAX_DOC_BYTES;
use aic_schemas::{JobRequest, Quote};
use alloy::primitives::{B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::escrow::IAICEscrow;
use crate::token::IAIC;
use crate::{ChainConfig, from_alloy, to_alloy};
use aic_schemas::manifest::EscrowDeposit;

/// Requests must carry their owner's EIP-712 signature for this chain.
pub struct Eip712Auth {
    pub chain_id: u64,
}

impl Authenticator for Eip712Auth {
    fn authenticate(&self, req: &JobRequest) -> Result<(), String> {
        crate::request::check(req, self.chain_id).map_err(|e| e.to_string())
    }
    fn authenticate_resume(&self, req: &aic_schemas::ResumeRequest) -> Result<(), String> {
        crate::request::check_resume(req, self.chain_id).map_err(|e| e.to_string())
    }
}

/// A payment claim, `pool/payments/<chain>/<tx>.json`: this tx paid for this job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub job: String,
    /// The paid run of the job it paid for (0: the first; `aic resume` pays for more).
    #[serde(default)]
    pub run: u32,
    pub owner: String,
    pub paid: String,
    pub claimed_at: chrono::DateTime<chrono::Utc>,
}

/// Payments in AIC to the pool treasury, checked against the chain's receipts.
pub struct ChainPayments {
    cfg: ChainConfig,
    provider: DynProvider,
    store: Store,
}

impl ChainPayments {
    pub fn new(cfg: ChainConfig, store: Store) -> anyhow::Result<Self> {
        let provider = ProviderBuilder::new().connect_http(cfg.rpc_url.parse()?).erased();
        Ok(ChainPayments { cfg, provider, store })
    }
}

fn reject(why: String) -> PaymentVerdict {
    PaymentRejected(why).into()
}

fn aic(v: U256) -> String {
    u128::try_from(v).map(format_aic).unwrap_or_else(|_| format!("{v} units"))
}

#[async_trait]
impl PaymentVerifier for ChainPayments {
    async fn verify(
        &self,
        job: &JobKey,
        run: u32,
        req: &JobRequest,
        quote: &Quote,
    ) -> Result<Option<PaymentClaim>, PaymentVerdict> {
        let total: u128 = quote.total.parse().unwrap_or(u128::MAX);
        let Some(p) = &req.payment else {
            if total == 0 {
                return Ok(None);
            }
            return Err(reject(format!(
                "the job costs {} and names no payment; `aic run` pays it, or pass --tx with a transfer to the treasury {}",
                format_aic(total),
                self.cfg.treasury
            )));
        };
        if p.chain_id != self.cfg.chain_id {
            return Err(reject(format!(
                "the payment is on chain {}; this pool takes payments on chain {}",
                p.chain_id, self.cfg.chain_id
            )));
        }
        let hash: B256 = p.tx.parse().map_err(|_| reject(format!("{} is not a transaction hash", p.tx)))?;
        let unavailable = |e: alloy::transports::TransportError| PaymentVerdict::Unavailable(e.to_string());
        let Some(receipt) = self.provider.get_transaction_receipt(hash).await.map_err(unavailable)? else {
            return match self.provider.get_transaction_by_hash(hash).await.map_err(unavailable)? {
                Some(_) => Err(PaymentVerdict::Pending(format!("payment {} is not mined yet", p.tx))),
                None => Err(reject(format!(
                    "there is no transaction {} on chain {}: if it was sped up or cancelled in the wallet, it has a new hash; \
                     submit the job again with --tx NEW_HASH (a payment pays one job), or pay again",
                    p.tx, self.cfg.chain_id
                ))),
            };
        };
        if !receipt.status() {
            return Err(reject(format!("payment {} reverted on chain; nothing was paid", p.tx)));
        }
        let head = self.provider.get_block_number().await.map_err(unavailable)?;
        let mined = receipt.block_number.unwrap_or(head);
        let confirmations = head.saturating_sub(mined) + 1;
        if confirmations < self.cfg.confirmations {
            return Err(PaymentVerdict::Pending(format!(
                "payment {} has {confirmations} of {} confirmations",
                p.tx, self.cfg.confirmations
            )));
        }

        // A deposit into the pool's escrow for this job's run, from its owner; else (where the
        // pool takes them) AIC transfers to the treasury.
        let owner = to_alloy(&req.owner);
        let (mut paid, mut escrow) = match self.deposit(&receipt, job, run, owner, p)? {
            Some(d) => d,
            None if !self.cfg.transfers => {
                return Err(reject(format!(
                    "transaction {} is no deposit for this job into the pool's escrow {}; this pool takes deposits \
                     only (`aic run` makes one)",
                    p.tx,
                    self.cfg.escrow.map(|e| e.to_string()).unwrap_or_default()
                )));
            }
            None => (self.transferred(&receipt, owner, p)?, None),
        };
        if let Some(e) = escrow.as_mut() {
            let (held, deadline) = self.still_held(e, owner, req.max_hours, p).await?;
            (paid, e.deadline) = (held, Some(deadline as i64));
        }
        if paid < U256::from(total) {
            return Err(reject(format!(
                "underpaid: payment {} {} {} but the job costs {}",
                p.tx,
                if escrow.is_some() { "deposits" } else { "transfers" },
                aic(paid),
                format_aic(total)
            )));
        }

        // One payment pays for one job: claim the transaction create-only.
        let key = payment_claim(p.chain_id, &p.tx);
        let claim = ClaimRecord {
            job: job.job.to_string(),
            run,
            owner: req.owner.to_string(),
            paid: paid.to_string(),
            claimed_at: chrono::Utc::now(),
        };
        let unavailable_store = |e: aic_core::StoreError| PaymentVerdict::Unavailable(e.to_string());
        match self.store.create_json(&key, &claim).await.map_err(unavailable_store)? {
            Created::Created => {}
            Created::AlreadyExists => {
                let existing: Option<ClaimRecord> =
                    self.store.get_json(&key, MAX_DOC_BYTES).await.map_err(unavailable_store)?;
                match existing {
                    // A duplicate event: the same owner's job and run.
                    Some(c) if c.owner == req.owner.to_string() && c.job == job.job.as_str() && c.run == run => {}
                    Some(c) if c.owner == req.owner.to_string() && c.job == job.job.as_str() => {
                        return Err(reject(format!(
                            "payment {} already paid for run {} of this job; a resume is paid anew",
                            p.tx,
                            c.run + 1
                        )));
                    }
                    Some(c) => {
                        return Err(reject(format!(
                            "payment {} already paid for job {}; one payment pays one job",
                            p.tx, c.job
                        )));
                    }
                    None => return Err(PaymentVerdict::Unavailable("payment claim vanished".into())),
                }
            }
        }
        Ok(Some(PaymentClaim { chain_id: p.chain_id, tx: p.tx.to_lowercase(), paid: paid.to_string(), escrow }))
    }
}

/// How long past a run's paid hours its deposit must stay held for validate to accept it:
/// time to wait in a queue, restart after a lost miner, and settle.
pub const DEPOSIT_MARGIN_HOURS: u64 = 24;

impl ChainPayments {
    /// What the escrow holds now for the owner's deposit `e` (the event says only what it
    /// once held): it must still be held, and its deadline (after which its depositor may
    /// reclaim it) must leave the run its `hours` plus [`DEPOSIT_MARGIN_HOURS`] from now.
    /// Otherwise refused with the reason (a held one is then refunded by settle). What it
    /// holds, and its deadline.
    async fn still_held(
        &self,
        e: &EscrowDeposit,
        owner: alloy::primitives::Address,
        hours: f64,
        p: &aic_schemas::PaymentRef,
    ) -> Result<(U256, u64), PaymentVerdict> {
        let unavailable = |e: anyhow::Error| PaymentVerdict::Unavailable(e.to_string());
        let escrow: alloy::primitives::Address =
            e.contract.parse().map_err(|_| PaymentVerdict::Unavailable("escrow address".into()))?;
        let run: B256 = e.run_key.parse().map_err(|_| PaymentVerdict::Unavailable("run key".into()))?;
        let h = crate::escrow::held(&self.provider, escrow, owner, run).await.map_err(unavailable)?;
        match h.state {
            crate::escrow::HELD => {}
            crate::escrow::RECLAIMED => {
                return Err(reject(format!("deposit {} was reclaimed by its depositor; pay again", p.tx)));
            }
            _ => return Err(reject(format!("deposit {} was already settled; a run is paid anew", p.tx))),
        }
        let now = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(|e| PaymentVerdict::Unavailable(e.to_string()))?
            .map(|b| b.header.timestamp)
            .unwrap_or_else(|| chrono::Utc::now().timestamp() as u64);
        let needed = (hours.max(0.0) * 3600.0).ceil() as u64 + DEPOSIT_MARGIN_HOURS * 3600;
        if h.deadline < now.saturating_add(needed) {
            let left = h.deadline.saturating_sub(now) as f64 / 3600.0;
            return Err(reject(format!(
                "deposit {} may be reclaimed in {left:.1} h, too soon for a run of {hours} h plus {DEPOSIT_MARGIN_HOURS} h to settle; \
                 it is refunded: deposit for the request's hours (`aic run` does) and submit again",
                p.tx
            )));
        }
        Ok((h.amount, h.deadline))
    }

    /// The deposit the transaction made into the pool's escrow for run `run_no` of this job,
    /// from its owner; `None` when it made none into that escrow. A deposit for another run or
    /// from another address is refused with the reason.
    fn deposit(
        &self,
        receipt: &alloy::rpc::types::TransactionReceipt,
        job: &JobKey,
        run_no: u32,
        owner: alloy::primitives::Address,
        p: &aic_schemas::PaymentRef,
    ) -> Result<Option<(U256, Option<EscrowDeposit>)>, PaymentVerdict> {
        let Some(escrow) = self.cfg.escrow else { return Ok(None) };
        let run = crate::escrow::run_id(owner, job.job.as_str(), run_no);
        let mut refusal = None;
        for log in receipt.inner.logs() {
            let Ok(d) = log.log_decode::<IAICEscrow::Deposited>() else { continue };
            let d = d.inner;
            if d.address != escrow {
                continue;
            }
            if d.data.depositor != owner {
                refusal = Some(format!(
                    "deposit {} is from {}, not from the job's owner {}",
                    p.tx, d.data.depositor, job.owner
                ));
            } else if d.data.run != run {
                refusal = Some(format!("deposit {} is for another job or run, not job {}", p.tx, job.job));
            } else {
                let e = EscrowDeposit {
                    contract: escrow.to_string(),
                    run_key: format!("{run:#x}"),
                    run: run_no,
                    deadline: None,
                };
                return Ok(Some((d.data.amount, Some(e))));
            }
        }
        match refusal {
            Some(why) => Err(reject(why)),
            None => Ok(None),
        }
    }

    /// The AIC the transaction transferred from `owner` to the treasury; refused with the
    /// reason when it transferred none there.
    fn transferred(
        &self,
        receipt: &alloy::rpc::types::TransactionReceipt,
        owner: alloy::primitives::Address,
        p: &aic_schemas::PaymentRef,
    ) -> Result<U256, PaymentVerdict> {
        let mut other_token = None;
        let mut from_other = None;
        let mut to_other = None;
        let mut paid = U256::ZERO;
        for log in receipt.inner.logs() {
            let Ok(t) = log.log_decode::<IAIC::Transfer>() else { continue };
            let t = t.inner;
            if t.address != self.cfg.token {
                other_token = Some(t.address);
            } else if t.data.from != owner {
                from_other = Some(t.data.from);
            } else if t.data.to != self.cfg.treasury {
                to_other = Some(t.data.to);
            } else {
                paid += t.data.value;
            }
        }
        if !paid.is_zero() {
            return Ok(paid);
        }
        let why = if let Some(to) = to_other {
            format!("payment {} goes to {to}, not to the pool treasury {}", p.tx, self.cfg.treasury)
        } else if let Some(from) = from_other {
            format!("payment {} is from {from}, not from the job's owner {}", p.tx, from_alloy(owner))
        } else if let Some(token) = other_token {
            format!("payment {} is in token {token}, not in AIC ({})", p.tx, self.cfg.token)
        } else {
            format!("transaction {} is not an AIC transfer to the pool treasury", p.tx)
        };
        Err(reject(why))
    }
}
