//! Payment verification, behind a trait: a free pool here; the chain verifier beside it.

use aic_schemas::manifest::{EscrowDeposit, PaymentClaim};
use aic_schemas::{Address, JobRequest, Quote};
use async_trait::async_trait;

use crate::layout::JobKey;

/// Why a payment does not pay for a job. The text goes into the job's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PaymentRejected(pub String);

#[async_trait]
pub trait PaymentVerifier: Send + Sync {
    /// Checks that the request's payment covers the quote and claims it for this job
    /// (so that one payment never pays for two jobs, or two runs of one) for paid run `run`
    /// (0, then each resume). `Ok(None)`: nothing to pay.
    async fn verify(
        &self,
        job: &JobKey,
        run: u32,
        req: &JobRequest,
        quote: &Quote,
    ) -> Result<Option<PaymentClaim>, PaymentVerdict>;
}

/// The two ways verification can end without a claim.
#[derive(Debug, thiserror::Error)]
pub enum PaymentVerdict {
    #[error(transparent)]
    Rejected(#[from] PaymentRejected),
    /// Not yet: the transaction is not mined or has too few confirmations. Try the event
    /// again later; the text says what is awaited.
    #[error("{0}")]
    Pending(String),
    /// The chain or the store could not be asked; try the event again.
    #[error("payment check unavailable: {0}")]
    Unavailable(String),
}

/// A pool that charges nothing: every quote must be zero.
pub struct FreePool;

#[async_trait]
impl PaymentVerifier for FreePool {
    async fn verify(
        &self,
        _job: &JobKey,
        _run: u32,
        _req: &JobRequest,
        quote: &Quote,
    ) -> Result<Option<PaymentClaim>, PaymentVerdict> {
        if quote.total != "0" {
            return Err(PaymentRejected(format!(
                "this pool charges {} for the job but has no payment verifier configured; ask the operator",
                quote.total
            ))
            .into());
        }
        Ok(None)
    }
}

/// What the escrow says of a deposit once the settle function is done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnChain {
    /// Settled (now, or before: a crash between the transaction and its record is read back):
    /// `used` to the treasury, `refunded` to the owner, in `tx`.
    Settled { used: u128, refunded: u128, tx: Option<String> },
    /// Taken back whole by its owner after the deadline.
    Reclaimed { amount: u128, tx: Option<String> },
}

/// Settles deposits in the pool's escrow: the pool's settler key signs, and the key never
/// leaves the functions.
#[async_trait]
pub trait Settler: Send + Sync {
    /// Settles `depositor`'s deposit for `deposit` with `used` once. A deposit settled before
    /// is read back, never settled again.
    async fn settle(&self, depositor: &Address, deposit: &EscrowDeposit, used: u128)
    -> Result<OnChain, PaymentVerdict>;

    /// The deposit of `job`'s owner for its paid run `run` made in transaction `tx` (a refused
    /// request's), refunded in full; one already settled or reclaimed is read back. Another
    /// wallet's deposit in that transaction is never touched.
    async fn refund_deposits_in(&self, job: &JobKey, run: u32, tx: &str) -> Result<Vec<OnChain>, PaymentVerdict>;
}

/// How long before its deposit's deadline a run must be able to end: the time to stop it and
/// settle.
pub const START_MARGIN_SECONDS: i64 = 3600;

/// Why a run that waited (in a queue, for room) must not start now: its deposit may be
/// reclaimed by its depositor before its paid hours and [`START_MARGIN_SECONDS`] are over, and
/// a run whose deposit is gone would be served for nothing. `None`: it may start. It is then
/// ended `failed` with this reason, and settle refunds the deposit whole (it used nothing).
pub fn too_late_to_start(m: &aic_schemas::JobManifest, now: chrono::DateTime<chrono::Utc>) -> Option<String> {
    let deadline = m.payment.as_ref()?.escrow.as_ref()?.deadline?;
    let needed = (crate::pricing::paid_hours(m.request.max_hours) * 3600.0).ceil() as i64 + START_MARGIN_SECONDS;
    (now.timestamp() + needed > deadline).then(|| {
        let left = (deadline - now.timestamp()).max(0) as f64 / 3600.0;
        format!(
            "not started: it waited until its deposit may be reclaimed in {left:.1} h, too soon for its paid {} h; \
             the deposit is refunded whole (submit it again)",
            crate::pricing::format_hours(m.request.max_hours)
        )
    })
}
