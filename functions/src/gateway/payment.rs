//! Payments a browser's wallet is sending, kept by the pool so that none is sent twice.
//!
//! The web app asks its wallet to pay a job's deposit; the wallet hands back a hash, and the
//! user may then speed the transaction up or cancel it in the wallet (a new hash with the same
//! nonce), reload the tab, or close it while the wallet still asks. Kept in the page alone,
//! any of these made a second "Pay" send a second payment. So the pool keeps each one
//! (`users/<addr>/payments/<job>.json`, written by the gateway alone) from before the wallet
//! is asked, as the CLI's wallet page does, and says what became of it:
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/payments/<job>` `{to, data}` | the wallet is about to be asked: keeps the call, the sender's next nonce and the chain's height; answers what became of an earlier one (then nothing is to be sent) or `ready` |
//! | `POST /v1/payments/<job>/tx` `{tx}` | the hash the wallet handed back |
//! | `GET /v1/payments/<job>` | `mined` (its hash: the one sent or the speed-up that replaced it), `pending`, `cancelled` (the nonce taken by another call: nothing paid), `unsent` (the nonce unused, no hash), or `none` |
//!
//! What each answer means is the chain's word ([`aic_chain::follow`]), read on every call.

use super::*;
use aic_chain::follow::{Followed, Sent};
use alloy::providers::Provider;

/// How long one `GET` follows a pending payment before it answers `pending`.
const FOLLOW_FOR: Duration = Duration::from_secs(10);
/// Payments kept at once per owner (each goes once its job is validated).
pub const MAX_KEPT_PAYMENTS: usize = 16;

/// A kept payment.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    from: alloy::primitives::Address,
    to: alloy::primitives::Address,
    input: alloy::primitives::Bytes,
    nonce: u64,
    since: u64,
    #[serde(default)]
    tx: Option<alloy::primitives::B256>,
}

fn chain_err(e: String) -> ApiError {
    err(StatusCode::BAD_GATEWAY, format!("the pool's chain: {e}"))
}

impl Gateway {
    fn chain_provider(&self) -> Result<alloy::providers::DynProvider, ApiError> {
        let c: aic_chain::ChainConfig = serde_json::from_value(self.cfg.chain_info.clone())
            .map_err(|_| err(StatusCode::NOT_FOUND, "this pool charges nothing: there is no payment to keep"))?;
        let url =
            c.rpc_url.parse().map_err(|_| err(StatusCode::BAD_GATEWAY, "the pool's chain address is not a URL"))?;
        Ok(alloy::providers::ProviderBuilder::new().connect_http(url).erased())
    }

    async fn kept(&self, who: &Address, job: &JobId) -> Result<Option<Kept>, ApiError> {
        let key = aic_core::layout::pending_payment(who, job);
        self.ctx.store.get_json(&key, 64 * 1024).await.map_err(store_err)
    }

    /// What became of the payment kept for `job`, as JSON `{state, tx?}`.
    async fn payment_now(&self, k: &Kept) -> Reply {
        let p = self.chain_provider()?;
        let sent = Sent { from: k.from, to: k.to, input: k.input.clone(), nonce: k.nonce, since: k.since };
        let chain = |e: aic_chain::follow::FollowError| err(StatusCode::BAD_GATEWAY, e.to_string());
        let followed = match k.tx {
            Some(tx) => match aic_chain::follow::follow(&p, tx, &sent, Duration::from_millis(500), FOLLOW_FOR).await {
                Ok(f) => Some(f),
                Err(aic_chain::follow::FollowError::Timeout(..)) => {
                    return Ok(json!({"state": "pending", "tx": format!("{tx:#x}")}));
                }
                Err(e) => return Err(chain(e)),
            },
            None => aic_chain::follow::without_hash(&p, &sent).await.map_err(chain)?,
        };
        Ok(match followed {
            Some(Followed::Mined { tx, .. }) => json!({"state": "mined", "tx": format!("{tx:#x}")}),
            Some(Followed::Cancelled { by }) => json!({"state": "cancelled", "by": format!("{by:#x}")}),
            None => {
                // No hash, the nonce not mined: the wallet may still have sent it (the tab
                // closed before the hash came back). A transaction pending at that nonce is
                // taken for it: never a second payment while the first may still go through.
                let pending = p.get_transaction_count(k.from).pending().await.map_err(|e| chain_err(e.to_string()))?;
                if pending > k.nonce { json!({"state": "pending"}) } else { json!({"state": "unsent"}) }
            }
        })
    }

    /// `GET /v1/payments/<job>`.
    pub(super) async fn payment_state(&self, who: &Address, job: &str) -> Reply {
        let job: JobId = job.parse().map_err(|_| bad(format!("{job:?} is not a job id")))?;
        match self.kept(who, &job).await? {
            Some(k) => self.payment_now(&k).await,
            None => Ok(json!({"state": "none"})),
        }
    }

    /// `POST /v1/payments/<job>` `{to, data}`: before the wallet is asked.
    pub(super) async fn payment_sending(&self, who: &Address, job: &str, body: &[u8]) -> Reply {
        #[derive(Deserialize)]
        struct Asked {
            to: alloy::primitives::Address,
            data: alloy::primitives::Bytes,
        }
        let job: JobId = job.parse().map_err(|_| bad(format!("{job:?} is not a job id")))?;
        let asked: Asked =
            serde_json::from_slice(body).map_err(|e| bad(format!("the body must be {{to, data}}: {e}")))?;
        if let Some(k) = self.kept(who, &job).await? {
            // One sent before for this job that went through, or may still: nothing more.
            let now = self.payment_now(&k).await?;
            if now["state"] == "mined" || now["state"] == "pending" {
                return Ok(now);
            }
        }
        let kept = self.ctx.store.list(&aic_core::layout::pending_payments(who)).await.map_err(store_err)?;
        if kept.len() >= MAX_KEPT_PAYMENTS {
            return Err(err(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} payments of yours are being followed for jobs not submitted yet: submit or discard one first",
                    kept.len()
                ),
            ));
        }
        let p = self.chain_provider()?;
        let chain = |e: alloy::transports::TransportError| chain_err(e.to_string());
        let from = aic_chain::to_alloy(who);
        let nonce = p.get_transaction_count(from).pending().await.map_err(chain)?;
        let since = p.get_block_number().await.map_err(chain)?;
        let k = Kept { from, to: asked.to, input: asked.data, nonce, since, tx: None };
        let key = aic_core::layout::pending_payment(who, &job);
        self.ctx.store.put_json(&key, &k).await.map_err(store_err)?;
        Ok(json!({"state": "ready"}))
    }

    /// `POST /v1/payments/<job>/tx` `{tx}`: the hash the wallet handed back.
    pub(super) async fn payment_sent(&self, who: &Address, job: &str, body: &[u8]) -> Reply {
        #[derive(Deserialize)]
        struct Hash {
            tx: alloy::primitives::B256,
        }
        let job: JobId = job.parse().map_err(|_| bad(format!("{job:?} is not a job id")))?;
        let h: Hash = serde_json::from_slice(body).map_err(|e| bad(format!("the body must be {{tx}}: {e}")))?;
        let mut k = self
            .kept(who, &job)
            .await?
            .ok_or_else(|| bad(format!("no payment is being sent for job {job}: POST /v1/payments/{job} first")))?;
        k.tx = Some(h.tx);
        self.ctx.store.put_json(&aic_core::layout::pending_payment(who, &job), &k).await.map_err(store_err)?;
        Ok(json!({"state": "sent"}))
    }
}

impl Gateway {
    /// `GET /v1/deposits`: the caller's deposits in the pool's escrow (its `Deposited` events),
    /// each with its state now, whether it is due back (held past its deadline: the pool never
    /// settled it), and for those the wallet call that reclaims it.
    pub(super) async fn deposits(&self, who: &Address) -> Reply {
        use alloy::sol_types::SolCall;
        let p = self.chain_provider()?;
        let c: aic_chain::ChainConfig = serde_json::from_value(self.cfg.chain_info.clone())
            .map_err(|_| err(StatusCode::NOT_FOUND, "this pool charges nothing: there are no deposits"))?;
        let Some(escrow) = c.escrow else { return Ok(json!({"deposits": []})) };
        let chain = chain_err;
        let now = p
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(|e| chain(e.to_string()))?
            .map(|b| b.header.timestamp)
            .unwrap_or_default();
        let seen = aic_chain::escrow::deposits_of(&p, escrow, aic_chain::to_alloy(who))
            .await
            .map_err(|e| chain(e.to_string()))?;
        let out: Vec<Value> = seen
            .iter()
            .map(|d| {
                let state = match d.now.state {
                    aic_chain::escrow::HELD => "held",
                    aic_chain::escrow::SETTLED => "settled",
                    aic_chain::escrow::RECLAIMED => "reclaimed",
                    _ => "none",
                };
                let due = d.now.state == aic_chain::escrow::HELD && d.deadline < now;
                let call = aic_chain::escrow::IAICEscrow::reclaimCall { run: d.run }.abi_encode();
                json!({
                    "run": format!("{:#x}", d.run), "tx": d.tx.map(|t| format!("{t:#x}")), "amount": d.amount.to_string(),
                    "deadline": d.deadline, "state": state, "due": due,
                    "reclaim": due.then(|| json!({"to": escrow.to_string(), "data": format!("0x{}", alloy::hex::encode(call))})),
                })
            })
            .collect();
        Ok(json!({"deposits": out, "now": now}))
    }
}
