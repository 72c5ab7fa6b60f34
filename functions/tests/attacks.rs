//! Identity and payment on a real chain (anvil, started per test from the npm package;
//! `cargo xtask test` sets AIC_ANVIL). Each way of cheating is rejected with its own reason.

use std::sync::Arc;

use aic_chain::devchain::{self, DevChain, dev_key};
use aic_chain::from_alloy;
use aic_chain::token::{self, IAIC};
use aic_core::layout::{JobKey, payment_claim};
use aic_core::status;
use aic_core::{Store, StoreConfig};
use aic_functions::{Ctx, HandlerError, Outcome, handle_record};
use aic_schemas::event::S3EventRecord;
use aic_schemas::{JobRequest, JobState, PaymentRef};

mod common;
use alloy::network::EthereumWallet;
use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use chrono::Utc;

const AIC: u128 = 10u128.pow(18);
/// The pool's price in these tests: 1 AIC per GPU-hour.
const PRICE: u128 = AIC;

struct World {
    _dir: tempfile::TempDir,
    chain: DevChain,
    store: Store,
    ctx: Ctx,
}

async fn world(confirmations: u64) -> World {
    let dir = tempfile::tempdir().unwrap();
    let chain = devchain::start(&dir.path().join("state.json"), &dir.path().join("chain.json"), PRICE, confirmations)
        .await
        .expect("anvil: run the suite with `cargo xtask test`, which installs it and sets AIC_ANVIL");
    let store = StoreConfig::Local { root: dir.path().join("store") }.open().unwrap();
    let sched = common::idle_scheduler(dir.path().join("work"), &store, 2);
    let ctx = Ctx::on_chain(store.clone(), Arc::new(sched), &chain.config).unwrap();
    World { _dir: dir, chain, store, ctx }
}

impl World {
    fn wallet(&self, i: u32) -> DynProvider {
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(dev_key(i)))
            .connect_http(self.chain.anvil.endpoint_url())
            .erased()
    }

    fn treasury(&self) -> Address {
        self.chain.config.treasury
    }

    async fn pay(&self, from: u32, to: Address, amount: u128) -> String {
        let tx = token::pay(&self.wallet(from), self.chain.config.token, to, U256::from(amount)).await.unwrap();
        format!("{tx:#x}")
    }

    /// A 1 miner × 1 GPU × 1 hour request (1 AIC) by dev account `owner`, unsigned.
    fn request(&self, owner: u32, tx: Option<&str>) -> JobRequest {
        let mut req = common::unsigned_by(from_alloy(dev_key(owner).address()), 1);
        req.payment = tx.map(|t| PaymentRef { chain_id: self.chain.config.chain_id, tx: t.into() });
        req
    }

    async fn sign(&self, signer: u32, mut req: JobRequest) -> JobRequest {
        aic_chain::request::sign(&dev_key(signer), &mut req, self.chain.config.chain_id).await.unwrap();
        req
    }

    /// Uploads the request under its owner's prefix and delivers its event.
    async fn submit(&self, req: &JobRequest) -> (JobKey, Result<Outcome, HandlerError>) {
        let job = JobKey::new(req.owner, req.job_id.clone());
        self.store.put_json(&job.request(), req).await.unwrap();
        let ev = S3EventRecord::object_created(self.store.bucket(), &job.request(), 100);
        (job.clone(), handle_record(&self.ctx, &ev).await)
    }

    async fn rejected_because(&self, req: &JobRequest) -> String {
        let (job, out) = self.submit(req).await;
        let reason = match out.unwrap() {
            Outcome::Rejected(_, r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        };
        let last = status::current(&self.store, &job).await.unwrap().unwrap();
        assert_eq!(last.state, JobState::Rejected);
        assert_eq!(last.reason.as_deref(), Some(reason.as_str()), "the status carries the reason");
        assert!(self.store.head(&job.manifest()).await.unwrap().is_none(), "no manifest for a rejected job");
        reason
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_keys_are_anvils_accounts() {
    let w = world(1).await;
    let keys: Vec<Address> = (0..10).map(|i| dev_key(i).address()).collect();
    assert_eq!(keys, w.chain.anvil.addresses());
    let b = token::balance(&w.wallet(1), w.chain.config.token, dev_key(1).address()).await.unwrap();
    assert_eq!(b, U256::from(devchain::DEV_FUNDS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_and_signed_request_is_accepted_once_and_its_duplicate_is_a_no_op() {
    let w = world(1).await;
    let tx = w.pay(1, w.treasury(), PRICE).await;
    let req = w.sign(1, w.request(1, Some(&tx))).await;
    let (job, out) = w.submit(&req).await;
    assert_eq!(out.unwrap(), Outcome::Validated(job.clone()));
    let m: aic_schemas::JobManifest = w.store.get_json(&job.manifest(), 1 << 20).await.unwrap().unwrap();
    assert_eq!(m.payment.unwrap().paid, PRICE.to_string());
    assert_eq!(m.quote.total, PRICE.to_string());
    let claim_key = payment_claim(w.chain.config.chain_id, &tx);
    let claim_before = w.store.get_limited(&claim_key, 4096).await.unwrap().unwrap();
    // The same event again: nothing changes.
    let ev = S3EventRecord::object_created(w.store.bucket(), &job.request(), 100);
    assert_eq!(handle_record(&w.ctx, &ev).await.unwrap(), Outcome::AlreadyDone(job.clone()));
    assert_eq!(w.store.get_limited(&claim_key, 4096).await.unwrap().unwrap(), claim_before);
    let states: Vec<_> = status::history(&w.store, &job).await.unwrap().into_iter().map(|r| r.state).collect();
    assert_eq!(states, [JobState::Submitted, JobState::Paid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_signatures_are_rejected() {
    let w = world(1).await;
    let tx = w.pay(1, w.treasury(), PRICE).await;
    // Forged: bytes that are no one's signature of this request.
    let mut forged = w.request(1, Some(&tx));
    forged.signature = Some(format!("0x{}1b", "11".repeat(64)));
    let why = w.rejected_because(&forged).await;
    assert!(why.contains("not by its owner") || why.contains("malformed"), "{why}");
    // Signed by another wallet.
    let foreign = w.sign(2, w.request(1, Some(&tx))).await;
    let why = w.rejected_because(&foreign).await;
    assert!(why.contains(&format!("signed by {:#x}", dev_key(2).address())), "{why}");
    // Tampered with after signing: more GPUs than were signed for.
    let mut tampered = w.sign(1, w.request(1, Some(&tx))).await;
    tampered.gpus_per_miner = 2;
    assert!(w.rejected_because(&tampered).await.contains("not by its owner"));
    // Signed for another chain.
    let mut other_chain = w.request(1, Some(&tx));
    aic_chain::request::sign(&dev_key(1), &mut other_chain, 1).await.unwrap();
    assert!(w.rejected_because(&other_chain).await.contains("not by its owner"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_pays_for_one_job_only() {
    let w = world(1).await;
    let tx = w.pay(1, w.treasury(), PRICE).await;
    let first = w.sign(1, w.request(1, Some(&tx))).await;
    let (job, out) = w.submit(&first).await;
    assert_eq!(out.unwrap(), Outcome::Validated(job.clone()));
    let replay = w.sign(1, w.request(1, Some(&tx))).await;
    let why = w.rejected_because(&replay).await;
    assert!(why.contains(&format!("already paid for job {}", job.job)), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_that_do_not_pay_are_rejected_each_with_its_reason() {
    let w = world(1).await;
    // Underpaid.
    let tx = w.pay(1, w.treasury(), PRICE / 2).await;
    let why = w.rejected_because(&w.sign(1, w.request(1, Some(&tx))).await).await;
    assert!(why.starts_with("underpaid") && why.contains("0.5 AIC") && why.contains("costs 1 AIC"), "{why}");
    // Wrong recipient.
    let tx = w.pay(1, dev_key(3).address(), PRICE).await;
    let why = w.rejected_because(&w.sign(1, w.request(1, Some(&tx))).await).await;
    assert!(why.contains("not to the pool treasury"), "{why}");
    // Wrong token: a look-alike token deployed by someone else.
    let fake = token::deploy(&w.wallet(4), dev_key(4).address()).await.unwrap();
    IAIC::new(fake, w.wallet(4))
        .mint(dev_key(1).address(), U256::from(PRICE))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let tx = token::pay(&w.wallet(1), fake, w.treasury(), U256::from(PRICE)).await.unwrap();
    let why = w.rejected_because(&w.sign(1, w.request(1, Some(&format!("{tx:#x}")))).await).await;
    assert!(why.contains(&format!("in token {fake}")), "{why}");
    // Paid by someone else than the owner.
    let tx = w.pay(2, w.treasury(), PRICE).await;
    let why = w.rejected_because(&w.sign(1, w.request(1, Some(&tx))).await).await;
    assert!(why.contains("not from the job's owner"), "{why}");
    // Reverted: more than the wallet holds, sent with a fixed gas limit so it is mined.
    let too_much = U256::from(devchain::DEV_FUNDS * 2);
    let pending = IAIC::new(w.chain.config.token, w.wallet(1))
        .transfer(w.treasury(), too_much)
        .gas(100_000)
        .send()
        .await
        .unwrap();
    let receipt = pending.get_receipt().await.unwrap();
    assert!(!receipt.status());
    let tx = format!("{:#x}", receipt.transaction_hash);
    let why = w.rejected_because(&w.sign(1, w.request(1, Some(&tx))).await).await;
    assert!(why.contains("reverted"), "{why}");
    // No such transaction.
    let ghost = format!("0x{}", "ab".repeat(32));
    let why = w.rejected_because(&w.sign(1, w.request(1, Some(&ghost))).await).await;
    assert!(why.contains("there is no transaction"), "{why}");
    // No payment at all.
    let why = w.rejected_because(&w.sign(1, w.request(1, None)).await).await;
    assert!(why.contains("costs 1 AIC and names no payment"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_chain_and_expired_requests_are_rejected() {
    let w = world(1).await;
    let tx = w.pay(1, w.treasury(), PRICE).await;
    let mut wrong_chain = w.request(1, Some(&tx));
    wrong_chain.payment.as_mut().unwrap().chain_id = 1;
    let why = w.rejected_because(&w.sign(1, wrong_chain).await).await;
    assert!(why.contains("the payment is on chain 1; this pool takes payments on chain 31337"), "{why}");
    let mut expired = w.request(1, Some(&tx));
    expired.created_at = Utc::now() - chrono::Duration::hours(3);
    expired.expires_at = Utc::now() - chrono::Duration::hours(2);
    let why = w.rejected_because(&w.sign(1, expired).await).await;
    assert!(why.contains("request expired"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_with_too_few_confirmations_waits_then_is_accepted() {
    let w = world(3).await;
    let tx = w.pay(1, w.treasury(), PRICE).await;
    let req = w.sign(1, w.request(1, Some(&tx))).await;
    let (job, out) = w.submit(&req).await;
    match out {
        Err(HandlerError::Deferred(why)) => assert!(why.contains("has 1 of 3 confirmations"), "{why}"),
        other => panic!("expected the event to be deferred, got {other:?}"),
    }
    assert!(w.store.head(&job.manifest()).await.unwrap().is_none());
    devchain::mine(&w.wallet(0), 2).await.unwrap();
    let ev = S3EventRecord::object_created(w.store.bucket(), &job.request(), 100);
    assert_eq!(handle_record(&w.ctx, &ev).await.unwrap(), Outcome::Validated(job));
}
