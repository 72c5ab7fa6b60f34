//! Following a payment a wallet sent until it is mined, through the wallet's own changes.
//!
//! A wallet hands back a transaction's hash when it broadcasts it, but the user may still
//! *speed it up* or *cancel* it (MetaMask sends a new transaction with the same nonce and a
//! higher fee: a speed-up carries the same call, a cancel an empty self-transfer). The first
//! hash then never gets a receipt. As viem's `waitForTransactionReceipt` does, once the
//! sender's nonce has moved past the transaction's, the block range since it was sent is
//! searched for the transaction that took its nonce; what it does tells a speed-up from a
//! cancellation.

use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, Bytes};
use alloy::providers::Provider;
use serde_json::Value;

/// What the wallet was asked to send, and where to look for it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub from: Address,
    pub to: Address,
    pub input: Bytes,
    /// The sender's next nonce (pending) when the wallet was asked: the transaction's nonce
    /// unless the wallet sent something else first (then the node's word for it is taken).
    pub nonce: u64,
    /// The chain's height then: replacements are looked for from here.
    pub since: u64,
}

/// What became of a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// Mined under this hash: the one sent, or the speed-up that replaced it.
    Mined { tx: B256, replaced: bool },
    /// The wallet cancelled it (or replaced it with a transaction that does something else):
    /// nothing was paid by it.
    Cancelled { by: B256 },
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("the chain did not answer: {0}")]
    Rpc(String),
    #[error("transaction {0} was not mined within {1} s; it is still pending in the wallet")]
    Timeout(B256, u64),
}

fn rpc(e: impl std::fmt::Display) -> FollowError {
    FollowError::Rpc(e.to_string())
}

fn hex_u64(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.trim_start_matches("0x"), 16).ok()
}

/// Waits for `hash`, sent as `sent` says, to be mined, polling every `every` until `within`
/// has passed.
pub async fn follow<P: Provider>(
    provider: &P,
    hash: B256,
    sent: &Sent,
    every: Duration,
    within: Duration,
) -> Result<Followed, FollowError> {
    let deadline = Instant::now() + within;
    let mut nonce = sent.nonce;
    let mut asked_node = false;
    let mut searched = sent.since;
    loop {
        if provider.get_transaction_receipt(hash).await.map_err(rpc)?.is_some() {
            return Ok(Followed::Mined { tx: hash, replaced: false });
        }
        if !asked_node {
            // While it is pending, the node knows the transaction's own nonce.
            let v: Value = provider.raw_request("eth_getTransactionByHash".into(), (hash,)).await.map_err(rpc)?;
            if let Some(n) = hex_u64(&v["nonce"]) {
                nonce = n;
                asked_node = true;
            }
        }
        if let Some(f) = taken_since(provider, sent, nonce, hash, &mut searched).await? {
            return Ok(f);
        }
        if Instant::now() >= deadline {
            return Err(FollowError::Timeout(hash, within.as_secs()));
        }
        tokio::time::sleep(every).await;
    }
}

/// What took the sender's nonce `nonce` (the one `sent` was to have), looked for from block
/// `*searched` on: the transaction `hash` itself (mined), a speed-up of it (the same call), or
/// a cancellation (anything else). `None` while the nonce is unused or its block not found yet
/// (`*searched` then moves on, keeping one block back).
async fn taken_since<P: Provider>(
    provider: &P,
    sent: &Sent,
    nonce: u64,
    hash: B256,
    searched: &mut u64,
) -> Result<Option<Followed>, FollowError> {
    let used = provider.get_transaction_count(sent.from).await.map_err(rpc)?;
    if used <= nonce {
        return Ok(None);
    }
    // The nonce was taken: by a receipt we will see next round, or by a replacement.
    let head = provider.get_block_number().await.map_err(rpc)?;
    for n in *searched..=head {
        let block: Value =
            provider.raw_request("eth_getBlockByNumber".into(), (format!("0x{n:x}"), true)).await.map_err(rpc)?;
        for t in block["transactions"].as_array().into_iter().flatten() {
            let from = t["from"].as_str().and_then(|f| f.parse::<Address>().ok());
            if from != Some(sent.from) || hex_u64(&t["nonce"]) != Some(nonce) {
                continue;
            }
            let by: B256 = t["hash"].as_str().and_then(|h| h.parse().ok()).ok_or_else(|| rpc("no hash"))?;
            if by == hash {
                return Ok(Some(Followed::Mined { tx: hash, replaced: false }));
            }
            // A speed-up repeats the call; anything else is a cancellation.
            let to = t["to"].as_str().and_then(|a| a.parse::<Address>().ok());
            let input = t["input"].as_str().and_then(|i| i.parse::<Bytes>().ok());
            let same_call = to == Some(sent.to) && input.as_ref() == Some(&sent.input);
            return Ok(Some(if same_call {
                Followed::Mined { tx: by, replaced: true }
            } else {
                Followed::Cancelled { by }
            }));
        }
    }
    *searched = head.saturating_sub(1).max(*searched);
    Ok(None)
}

/// What became of a payment whose hash the wallet never handed back (the tab was closed or
/// reloaded while the wallet asked): the transaction that took the nonce `sent` names, if
/// any yet. `None`: the nonce is still unused (nothing was sent, or it is still pending).
pub async fn without_hash<P: Provider>(provider: &P, sent: &Sent) -> Result<Option<Followed>, FollowError> {
    let mut searched = sent.since;
    taken_since(provider, sent, sent.nonce, B256::ZERO, &mut searched).await
}
