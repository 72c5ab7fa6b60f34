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

use alloy::primitives::{Address, U256};
use alloy::providers::DynProvider;
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
    let sched = crate::common::idle_scheduler(dir.path().join("work"), &store, 2);
    let ctx = Ctx::on_chain(store.clone(), Arc::new(sched), &chain.config)
        .unwrap()
        .with_settler(&chain.config, dev_key(devchain::SETTLER))
        .unwrap();
    World { _dir: dir, chain, store, ctx }
}

impl World {
    fn wallet(&self, i: u32) -> DynProvider {
        devchain::dev_wallet(&self.chain.anvil, i)
    }

    fn treasury(&self) -> Address {
        self.chain.config.treasury
    }

    /// `who`'s AIC, read on chain.
    async fn balance(&self, who: Address) -> U256 {
        token::balance(&self.wallet(0), self.chain.config.token, who).await.unwrap()
    }

    async fn pay(&self, from: u32, to: Address, amount: u128) -> String {
        let tx = token::pay(&self.wallet(from), self.chain.config.token, to, U256::from(amount)).await.unwrap();
        format!("{tx:#x}")
    }

    /// A 1 miner × 1 GPU × 1 hour request (1 AIC) by dev account `owner`, unsigned.
    fn request(&self, owner: u32, tx: Option<&str>) -> JobRequest {
        let mut req = crate::common::unsigned_by(from_alloy(dev_key(owner).address()), 1);
        req.payment = tx.map(|t| PaymentRef { chain_id: self.chain.config.chain_id, tx: t.into() });
        req
    }

    /// Deposits `amount` from dev account `from` into the pool's escrow for `job`'s first run.
    async fn deposit(&self, from: u32, job: &aic_schemas::JobId, amount: u128) -> String {
        let escrow = self.chain.config.escrow.unwrap();
        let run = aic_chain::escrow::run_id(dev_key(from).address(), job.as_str(), 0);
        let tx = aic_chain::escrow::deposit(
            &self.wallet(from),
            self.chain.config.token,
            escrow,
            run,
            U256::from(amount),
            1000,
        )
        .await
        .unwrap();
        format!("{tx:#x}")
    }

    /// A request of dev account `owner` paid by a deposit of its quote (1 AIC), signed,
    /// submitted and validated.
    async fn deposited_and_validated(&self, owner: u32) -> (JobRequest, JobKey) {
        let mut req = self.request(owner, None);
        let tx = self.deposit(owner, &req.job_id, PRICE).await;
        req.payment = Some(PaymentRef { chain_id: self.chain.config.chain_id, tx });
        let req = self.sign(owner, req).await;
        let (job, out) = self.submit(&req).await;
        assert_eq!(out.unwrap(), Outcome::Validated(job.clone()));
        (req, job)
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
async fn a_deposit_into_the_escrow_pays_for_its_own_job_only() {
    let w = world(1).await;
    let escrow = w.chain.config.escrow.unwrap();
    let aic = |who: Address| w.balance(who);
    // The owner's deposit for this job's run: the job is paid, and the escrow holds it.
    let mut req = w.request(1, None);
    let tx = w.deposit(1, &req.job_id, 2 * PRICE).await;
    req.payment = Some(PaymentRef { chain_id: w.chain.config.chain_id, tx: tx.clone() });
    let (job, out) = w.submit(&w.sign(1, req).await).await;
    assert_eq!(out.unwrap(), Outcome::Validated(job.clone()));
    let m: aic_schemas::JobManifest = w.store.get_json(&job.manifest(), 1 << 20).await.unwrap().unwrap();
    let p = m.payment.unwrap();
    assert_eq!(p.paid, (2 * PRICE).to_string());
    let e = p.escrow.expect("paid by deposit");
    assert_eq!((e.contract.as_str(), e.run), (escrow.to_string().as_str(), 0));
    assert_eq!(
        e.run_key,
        format!("{:#x}", aic_chain::escrow::run_id(aic_chain::to_alloy(&job.owner), job.job.as_str(), 0))
    );
    assert_eq!(aic(escrow).await, U256::from(2 * PRICE), "held, not yet the treasury's");
    // The same deposit for another job.
    let mut other = w.request(1, None);
    other.payment = Some(PaymentRef { chain_id: w.chain.config.chain_id, tx });
    let why = w.rejected_because(&w.sign(1, other).await).await;
    assert!(why.contains("is for another job or run"), "{why}");
    // A deposit for the job by someone else than its owner.
    let mut req = w.request(1, None);
    let tx = w.deposit(2, &req.job_id, PRICE).await;
    req.payment = Some(PaymentRef { chain_id: w.chain.config.chain_id, tx });
    let why = w.rejected_because(&w.sign(1, req).await).await;
    assert!(why.contains("not from the job's owner"), "{why}");
    // Too little.
    let mut req = w.request(1, None);
    let tx = w.deposit(1, &req.job_id, PRICE / 2).await;
    req.payment = Some(PaymentRef { chain_id: w.chain.config.chain_id, tx });
    let why = w.rejected_because(&w.sign(1, req).await).await;
    assert!(why.starts_with("underpaid") && why.contains("deposits 0.5 AIC") && why.contains("costs 1 AIC"), "{why}");
    // A pool that takes deposits only refuses a plain transfer.
    let mut strict = w.chain.config.clone();
    strict.transfers = false;
    let ctx = Ctx::on_chain(w.store.clone(), w.ctx.scheduler.clone(), &strict).unwrap();
    let tx = w.pay(1, w.treasury(), PRICE).await;
    let req = w.sign(1, w.request(1, Some(&tx))).await;
    let job = JobKey::new(req.owner, req.job_id.clone());
    w.store.put_json(&job.request(), &req).await.unwrap();
    match handle_record(&ctx, &S3EventRecord::object_created(w.store.bucket(), &job.request(), 100)).await.unwrap() {
        Outcome::Rejected(_, why) => assert!(why.contains("this pool takes deposits only"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_charged_what_the_pool_measured_once_and_the_rest_comes_back() {
    use aic_core::usage::{self, Usage};
    let w = world(1).await;
    let escrow = w.chain.config.escrow.unwrap();
    let aic = |who: Address| w.balance(who);
    let owner = dev_key(1).address();
    let (o0, t0) = (aic(owner).await, aic(w.treasury()).await);
    // 1 miner × 1 GPU × 1 h at 1 AIC per GPU-hour: 1 AIC deposited.
    let (_, job) = w.deposited_and_validated(1).await;
    // The scheduler measured 10 s of one GPU; the job's program claims far less, in the
    // records it can write (its allocation's account and its final status).
    let t = Utc::now();
    let run = Usage {
        attempt: 0,
        index: 0,
        miner: "miner-1".into(),
        gpus: 1,
        gpu_model: None,
        started_at: t - chrono::Duration::seconds(10),
        ended_at: t,
        how: "exited 0".into(),
    };
    usage::record(&w.store, &job, "4242-1", &run).await.unwrap();
    let forged = aic_schemas::AllocResult {
        alloc: 0,
        miner: "miner-1".into(),
        exit_code: Some(0),
        signal: None,
        wall_seconds: 0.001,
        gpu_seconds: 0.001,
        finished_at: t,
    };
    w.store.create_json(&job.alloc_result(0, 0), &forged).await.unwrap();
    for st in [JobState::Scheduled, JobState::Running] {
        status::advance(&w.store, &job, status::Transition::new(st, "test")).await.unwrap();
    }
    let done = status::Transition::new(JobState::Succeeded, "worker")
        .detail(aic_schemas::StatusDetail { gpu_seconds: Some(0.001), ..Default::default() });
    status::advance(&w.store, &job, done).await.unwrap();
    // The snapshot's event, three times: settled once, for what the pool measured.
    let ev = S3EventRecord::object_created(w.store.bucket(), &job.status_snapshot(), 100);
    let charged = (10 * PRICE).div_ceil(3600);
    match handle_record(&w.ctx, &ev).await.unwrap() {
        Outcome::Settled(j, line) => {
            assert_eq!(j, job);
            assert!(line.starts_with("used 10 GPU-seconds = 0.002778 AIC; refunded 0.997222 AIC in 0x"), "{line}");
        }
        other => panic!("{other:?}"),
    }
    for _ in 0..2 {
        assert_eq!(handle_record(&w.ctx, &ev).await.unwrap(), Outcome::AlreadyDone(job.clone()));
    }
    let s = &usage::settlements(&w.store, &job).await.unwrap()[0];
    assert_eq!(
        (s.gpu_seconds, s.charged.clone(), s.refunded.clone()),
        (10, charged.to_string(), (PRICE - charged).to_string())
    );
    assert_eq!(aic(w.treasury()).await, t0 + U256::from(charged), "the charge, on chain");
    assert_eq!(aic(owner).await, o0 - U256::from(charged), "the rest back, on chain");
    assert_eq!(aic(escrow).await, U256::ZERO);
    // A crash between the settlement and its record: the next delivery reads it back from
    // the chain (the escrow refuses a second one) and pays nothing twice.
    let first = s.clone();
    w.store.delete(&aic_core::layout::settlement(&job, 0)).await.unwrap();
    assert!(matches!(handle_record(&w.ctx, &ev).await.unwrap(), Outcome::Settled(..)));
    let again = &usage::settlements(&w.store, &job).await.unwrap()[0];
    assert_eq!((&again.charged, &again.refunded, &again.tx), (&first.charged, &first.refunded, &first.tx));
    assert_eq!(aic(w.treasury()).await, t0 + U256::from(charged));
    assert_eq!(aic(owner).await, o0 - U256::from(charged));

    // A refused request's deposit comes back whole.
    let o1 = aic(owner).await;
    let mut req = w.request(1, None);
    let tx = w.deposit(1, &req.job_id, PRICE).await;
    req.payment = Some(PaymentRef { chain_id: w.chain.config.chain_id, tx });
    let why = w.rejected_because(&w.sign(2, req.clone()).await).await;
    assert!(why.contains("signed by"), "{why}");
    assert_eq!(aic(owner).await, o1 - U256::from(PRICE));
    let rejected = JobKey::new(req.owner, req.job_id.clone());
    let ev = S3EventRecord::object_created(w.store.bucket(), &rejected.status_snapshot(), 100);
    match handle_record(&w.ctx, &ev).await.unwrap() {
        Outcome::Settled(_, line) => assert!(line.contains("refunded 1 AIC"), "{line}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(aic(owner).await, o1, "all of it back");
    assert_eq!(aic(w.treasury()).await, t0 + U256::from(charged), "nothing to the treasury");
}

/// Prices per GPU model (`AIC_GPU_PRICES`): the quote covers the dearest model a request
/// allows, so a deposit made at a cheaper model's price for a request that allows the dear
/// one is refused; a run is charged each allocation at its own model's price, as quoted, and
/// the rest comes back, on chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_charged_by_the_gpu_model_it_ran_on_and_a_deposit_covers_the_dearest_it_allows() {
    use aic_core::usage::{self, Usage};
    let mut w = world(1).await;
    let mut cfg = w.chain.config.clone();
    cfg.gpu_prices = aic_chain::config::parse_gpu_prices("A100=3,T4=0.5").unwrap();
    w.ctx = Ctx::on_chain(w.store.clone(), w.ctx.scheduler.clone(), &cfg)
        .unwrap()
        .with_settler(&cfg, dev_key(devchain::SETTLER))
        .unwrap();
    w.chain.config = cfg;
    let owner = dev_key(1).address();
    // Any model: the A100's price is what it could cost. Deposited at the T4's: refused.
    let mut req = w.request(1, None);
    let tx = w.deposit(1, &req.job_id, PRICE / 2).await;
    req.payment = Some(PaymentRef { chain_id: w.chain.config.chain_id, tx });
    let why = w.rejected_because(&w.sign(1, req).await).await;
    assert!(why.starts_with("underpaid") && why.contains("costs 3 AIC"), "{why}");
    // Asking for T4s: 0.5 AIC covers it, and the quote says which model it priced.
    let mut req = w.request(1, None);
    req.gpu_types = vec!["T4".into()];
    let tx = w.deposit(1, &req.job_id, PRICE / 2).await;
    req.payment = Some(PaymentRef { chain_id: w.chain.config.chain_id, tx });
    let (job, out) = w.submit(&w.sign(1, req).await).await;
    assert_eq!(out.unwrap(), Outcome::Validated(job.clone()));
    let m: aic_schemas::JobManifest = w.store.get_json(&job.manifest(), 1 << 20).await.unwrap().unwrap();
    assert_eq!((m.quote.model.as_deref(), m.quote.total.as_str()), (Some("T4"), "500000000000000000"));
    // The signed models cannot be dropped afterwards to run it on an A100: the signature
    // covers them.
    let mut forged: JobRequest = w.store.get_json(&job.request(), 1 << 20).await.unwrap().unwrap();
    forged.gpu_types.clear();
    forged.job_id = aic_schemas::JobId::generate();
    assert!(aic_chain::request::check(&forged, w.chain.config.chain_id).is_err());

    // Any model, 3 AIC deposited; it ran 10 s on an A100, then (restarted) 20 s on a T4.
    let (o0, t0) = (w.balance(owner).await, w.balance(w.treasury()).await);
    let mut req = w.request(1, None);
    let tx = w.deposit(1, &req.job_id, 3 * PRICE).await;
    req.payment = Some(PaymentRef { chain_id: w.chain.config.chain_id, tx });
    let (job, out) = w.submit(&w.sign(1, req).await).await;
    assert_eq!(out.unwrap(), Outcome::Validated(job.clone()));
    let t = Utc::now();
    for (attempt, model, secs) in [(0, "NVIDIA A100-SXM4-40GB", 10), (1, "Tesla T4", 20)] {
        let u = Usage {
            attempt,
            index: 0,
            miner: format!("miner-{attempt}"),
            gpus: 1,
            gpu_model: Some(model.into()),
            started_at: t - chrono::Duration::seconds(secs),
            ended_at: t,
            how: "exited 0".into(),
        };
        usage::record(&w.store, &job, &format!("run-{attempt}"), &u).await.unwrap();
    }
    for st in [JobState::Scheduled, JobState::Running, JobState::Succeeded] {
        status::advance(&w.store, &job, status::Transition::new(st, "test")).await.unwrap();
    }
    let ev = S3EventRecord::object_created(w.store.bucket(), &job.status_snapshot(), 100);
    assert!(matches!(handle_record(&w.ctx, &ev).await.unwrap(), Outcome::Settled(..)));
    let a100 = (10 * 3 * PRICE).div_ceil(3600);
    let t4 = (20 * PRICE / 2).div_ceil(3600);
    let s = &usage::settlements(&w.store, &job).await.unwrap()[0];
    assert_eq!((s.gpu_seconds, s.charged.clone()), (30, (a100 + t4).to_string()));
    let by: Vec<(&str, u64, String)> =
        s.by_model.iter().map(|c| (c.model.as_str(), c.gpu_seconds, c.cost.clone())).collect();
    assert_eq!(by, [("A100", 10, a100.to_string()), ("T4", 20, t4.to_string())]);
    assert_eq!(w.balance(w.treasury()).await, t0 + U256::from(a100 + t4), "the charge, on chain");
    assert_eq!(w.balance(owner).await, o0 - U256::from(a100 + t4), "the rest back, on chain");
    // The operator's figures count the settlement's latency.
    let figures = aic_functions::metrics::render(&w.ctx, None).await;
    let count = figures.lines().find_map(|l| l.strip_prefix("aic_settle_latency_seconds_count ")).unwrap();
    assert!(count.parse::<u64>().unwrap() >= 1, "{figures}");
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

/// MinIO's webhook target with a `queue_dir`: stored events go out one at a time, in order,
/// and the head is posted again until it gets a 2xx (minio `internal/store/store.go`,
/// `sendItems`/`replayItems`: every 3 s; here every 100 ms). Returns the bodies as they were
/// taken, in order.
async fn minio_queue(url: String, bodies: Vec<String>) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut taken = vec![];
    for body in bodies {
        loop {
            let r = http.post(format!("{url}/events")).body(body.clone()).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                taken.push(body);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_awaiting_confirmations_holds_up_no_queue_and_is_validated_once_confirmed() {
    use aic_functions::host::{Host, MinioPosts};
    let w = world(3).await;
    let aic = |who: Address| w.balance(who);
    let treasury_before = aic(w.treasury()).await;
    // Bob's payment is deep enough; Alice's (later) has 1 of 3 confirmations.
    let bob_tx = w.pay(2, w.treasury(), PRICE).await;
    devchain::mine(&w.wallet(0), 3).await.unwrap();
    let alice_tx = w.pay(1, w.treasury(), PRICE).await;
    let alice = w.sign(1, w.request(1, Some(&alice_tx))).await;
    let bob = w.sign(2, w.request(2, Some(&bob_tx))).await;
    let (a_job, b_job) = (JobKey::new(alice.owner, alice.job_id.clone()), JobKey::new(bob.owner, bob.job_id.clone()));
    w.store.put_json(&a_job.request(), &alice).await.unwrap();
    w.store.put_json(&b_job.request(), &bob).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let host = Host {
        ctx: w.ctx.clone(),
        sns: None,
        gateway: None,
        minio: MinioPosts::Open,
        proxy: None,
        own_addresses: vec![],
        metrics_token: None,
    };
    tokio::spawn(aic_functions::host::serve(host, listener));
    let body = |key: String| {
        let mut v = serde_json::to_value(aic_schemas::event::S3Event {
            records: vec![S3EventRecord::object_created(w.store.bucket(), &key, 100)],
        })
        .unwrap();
        v["EventName"] = serde_json::json!("s3:ObjectCreated:Put");
        v.to_string()
    };
    // Alice's event is at the head of the queue: it is taken (kept for later), and Bob's,
    // behind it, is delivered and validated at once.
    let queue = tokio::spawn(minio_queue(url, vec![body(a_job.request()), body(b_job.request())]));
    let taken = tokio::time::timeout(std::time::Duration::from_secs(20), queue)
        .await
        .expect("the queue is held up behind the deferred event")
        .unwrap();
    assert_eq!(taken.len(), 2);
    assert_eq!(status::current(&w.store, &b_job).await.unwrap().unwrap().state, JobState::Paid);
    assert!(w.store.head(&a_job.manifest()).await.unwrap().is_none(), "not validated before its confirmations");
    let entry = aic_core::layout::redrive_entry(&a_job.request());
    let d: aic_functions::redrive::Deferred = w.store.get_json(&entry, 1 << 16).await.unwrap().unwrap();
    assert!(d.why.contains("has 1 of 3 confirmations"), "{d:?}");

    // The same on Lambda: a deferred record is kept, and the invocation succeeds (Lambda would
    // drop it after two retries).
    let carol_tx = w.pay(3, w.treasury(), PRICE).await;
    let carol = w.sign(3, w.request(3, Some(&carol_tx))).await;
    let c_job = JobKey::new(carol.owner, carol.job_id.clone());
    w.store.put_json(&c_job.request(), &carol).await.unwrap();
    let payload =
        serde_json::json!({"Records": [S3EventRecord::object_created(w.store.bucket(), &c_job.request(), 100)]});
    let out =
        aic_functions::lambda::s3_event(&w.ctx, aic_functions::lambda::Function::Validate, payload).await.unwrap();
    assert_eq!(out["records"][0]["outcome"], "deferred", "{out}");

    // Not due yet: nothing is tried. Once the blocks are there and the entries are due,
    // one pass validates both, once.
    let r = aic_functions::redrive::Redriver::new(w.ctx.clone());
    let p = r.pass().await.unwrap();
    assert_eq!((p.done.len(), p.waiting), (0, 2));
    devchain::mine(&w.wallet(0), 3).await.unwrap();
    let p = r.pass_at(Utc::now() + chrono::Duration::seconds(11)).await.unwrap();
    let mut done: Vec<_> = p.done.into_iter().map(|(_, o)| o).collect();
    done.sort_by_key(|o| format!("{o:?}"));
    let mut want = vec![Outcome::Validated(a_job.clone()), Outcome::Validated(c_job.clone())];
    want.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(done, want);
    assert!(w.store.list(aic_core::layout::REDRIVE).await.unwrap().is_empty(), "the queue is empty");
    for j in [&a_job, &b_job, &c_job] {
        assert_eq!(status::current(&w.store, j).await.unwrap().unwrap().state, JobState::Paid);
    }
    // On chain: the treasury got the three payments, each job was paid once.
    assert_eq!(aic(w.treasury()).await, treasury_before + U256::from(3 * PRICE));
    for (tx, j) in [(&alice_tx, &a_job), (&bob_tx, &b_job), (&carol_tx, &c_job)] {
        let m: aic_schemas::JobManifest = w.store.get_json(&j.manifest(), 1 << 20).await.unwrap().unwrap();
        assert_eq!(m.payment.as_ref().unwrap().tx, *tx);
    }
}

/// A TCP relay to anvil that can go down: while down it refuses every connection (accepts
/// and drops it) and cuts the ones it was relaying, as a dead RPC endpoint or its load
/// balancer does.
struct Relay {
    url: String,
    up: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn to(target: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (up, rx) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*rx.borrow() {
                    continue;
                }
                let (target, mut rx) = (target.clone(), rx.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Relay { url, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// The chain's RPC down for 30 s while paid requests arrive: each is deferred (never
/// rejected, nothing claimed), passes of the re-driver during the outage change nothing, and
/// once the RPC is back every one is accepted once, its deposit still in the escrow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_wait_out_an_rpc_outage_and_none_is_lost() {
    const JOBS: usize = 5;
    let w = world(1).await;
    let anvil = w.chain.config.rpc_url.trim_start_matches("http://").to_string();
    let relay = Relay::to(anvil).await;
    let mut cfg = w.chain.config.clone();
    cfg.rpc_url = relay.url.clone();
    let sched = crate::common::idle_scheduler(w._dir.path().join("work2"), &w.store, 2);
    let ctx = Ctx::on_chain(w.store.clone(), Arc::new(sched), &cfg).unwrap();
    let mut jobs = Vec::new();
    for _ in 0..JOBS {
        let req = w.request(1, None);
        let tx = w.deposit(1, &req.job_id, PRICE).await;
        let mut req = req;
        req.payment = Some(PaymentRef { chain_id: cfg.chain_id, tx });
        let req = w.sign(1, req).await;
        let job = JobKey::new(req.owner, req.job_id.clone());
        w.store.put_json(&job.request(), &req).await.unwrap();
        jobs.push(job);
    }
    let escrow = w.chain.config.escrow.unwrap();
    let held = token::balance(&w.wallet(1), w.chain.config.token, escrow).await.unwrap();

    // Down: every request event fails as "unavailable" and is kept for later, as a host does.
    relay.set(false);
    let outage = std::time::Instant::now();
    for job in &jobs {
        let ev = S3EventRecord::object_created(w.store.bucket(), &job.request(), 100);
        match handle_record(&ctx, &ev).await {
            Err(HandlerError::Unavailable(why)) => {
                aic_functions::redrive::defer(&w.store, &job.request(), &why).await.unwrap();
            }
            other => panic!("{}: with the RPC down: {other:?}", job.job),
        }
    }
    // The re-driver keeps trying (every entry, due or not) for the rest of the 30 s.
    let redriver = aic_functions::redrive::Redriver::new(ctx.clone());
    let mut passes = 0;
    while outage.elapsed() < std::time::Duration::from_secs(30) {
        let p = redriver.pass_at(Utc::now() + chrono::Duration::days(1)).await.unwrap();
        assert!(p.done.is_empty(), "handled with the RPC down: {:?}", p.done);
        assert_eq!(p.again, JOBS);
        passes += 1;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    assert!(passes >= 10, "{passes} passes");
    for job in &jobs {
        assert!(w.store.head(&job.manifest()).await.unwrap().is_none(), "{}: accepted while down", job.job);
        let states: Vec<_> = status::history(&w.store, job).await.unwrap().into_iter().map(|r| r.state).collect();
        assert!(!states.contains(&JobState::Rejected), "{}: {states:?}", job.job);
    }
    assert!(w.store.list("pool/payments/").await.unwrap().is_empty(), "nothing claimed while down");

    // Back: the next pass accepts each once; nothing is left to do.
    relay.set(true);
    let p = redriver.pass_at(Utc::now() + chrono::Duration::days(1)).await.unwrap();
    assert_eq!(p.done.len(), JOBS, "{p:?}");
    assert!(p.done.iter().all(|(_, o)| matches!(o, Outcome::Validated(_))), "{:?}", p.done);
    assert!(w.store.list(aic_core::layout::REDRIVE).await.unwrap().is_empty());
    for job in &jobs {
        let m: aic_schemas::JobManifest = w.store.get_json(&job.manifest(), 1 << 20).await.unwrap().unwrap();
        assert_eq!(m.payment.unwrap().paid, PRICE.to_string());
        assert_eq!(status::current(&w.store, job).await.unwrap().unwrap().state, JobState::Paid);
    }
    assert_eq!(w.store.list("pool/payments/").await.unwrap().len(), JOBS, "one claim each");
    let after = token::balance(&w.wallet(1), w.chain.config.token, escrow).await.unwrap();
    assert_eq!(after, held, "every deposit still held for its job");
    assert_eq!(held, U256::from(PRICE * JOBS as u128));
}

/// What the escrow holds from dev account `who` for its job `job`'s first run.
async fn held_for(w: &World, who: u32, job: &aic_schemas::JobId) -> aic_chain::escrow::Held {
    let run = aic_chain::escrow::run_id(dev_key(who).address(), job.as_str(), 0);
    aic_chain::escrow::held(&w.wallet(0), w.chain.config.escrow.unwrap(), dev_key(who).address(), run).await.unwrap()
}

/// A second wallet uploads a twin of the owner's request (same job id, the owner's deposit
/// transaction) under its own address: the twin is refused, and its refusal refunds nothing
/// of the owner's deposit. (The run key had no owner: settling the twin's refusal walked the
/// transaction and refunded the owner's deposit in full while the owner's job ran, to be
/// charged 0.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_wallets_twin_request_cannot_refund_anothers_deposit() {
    let w = world(1).await;
    let escrow = w.chain.config.escrow.unwrap();
    let aic = |who: Address| w.balance(who);
    let (victim, attacker) = (dev_key(1).address(), dev_key(2).address());
    let (v0, a0) = (aic(victim).await, aic(attacker).await);
    let mut req = w.request(1, None);
    let tx = w.deposit(1, &req.job_id, PRICE).await;
    req.payment = Some(PaymentRef { chain_id: w.chain.config.chain_id, tx: tx.clone() });
    let (job, out) = w.submit(&w.sign(1, req.clone()).await).await;
    assert_eq!(out.unwrap(), Outcome::Validated(job.clone()));

    let mut twin = w.request(2, Some(&tx));
    twin.job_id = req.job_id.clone();
    let why = w.rejected_because(&w.sign(2, twin.clone()).await).await;
    assert!(why.contains("is another owner's on this pool"), "{why}");
    let twin_key = JobKey::new(twin.owner, twin.job_id.clone());
    let ev = S3EventRecord::object_created(w.store.bucket(), &twin_key.status_snapshot(), 100);
    let out = handle_record(&w.ctx, &ev).await.unwrap();
    assert!(!matches!(out, Outcome::Settled(..)), "the twin's refusal settled something: {out:?}");

    let h = held_for(&w, 1, &req.job_id).await;
    assert_eq!(h.state, aic_chain::escrow::HELD, "the owner's deposit is still held for the owner's job");
    assert_eq!(aic(escrow).await, U256::from(PRICE));
    assert_eq!(aic(victim).await, v0 - U256::from(PRICE), "the owner's deposit stays in the escrow");
    assert_eq!(aic(attacker).await, a0, "the attacker neither paid nor got anything");
}

/// A deposit that its owner can reclaim before the run could end and settle is refused, and
/// refunded; one already reclaimed is refused and moves nothing. (validate read the event
/// only: a deposit reclaimed after its deadline still paid for a job, charged 0.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_reclaimed_or_due_back_too_soon_pays_for_nothing() {
    let w = world(1).await;
    let escrow = w.chain.config.escrow.unwrap();
    let aic = |who: Address| w.balance(who);
    let owner = dev_key(1).address();
    let (o0, t0) = (aic(owner).await, aic(w.treasury()).await);
    let soon = w.request(1, None);
    let tx_soon = w.deposit(1, &soon.job_id, PRICE).await;
    let gone = w.request(1, None);
    let tx_gone = w.deposit(1, &gone.job_id, PRICE).await;
    // Six and a half days later a deposit of one hour (+ the escrow's 7-day grace) may be
    // reclaimed in half a day: too soon for a 1-hour run plus the margin to settle.
    aic_chain::devchain::advance_time(&w.wallet(0), 6 * 86_400 + 12 * 3_600).await.unwrap();
    let mut soon = soon;
    soon.payment = Some(PaymentRef { chain_id: w.chain.config.chain_id, tx: tx_soon });
    let why = w.rejected_because(&w.sign(1, soon.clone()).await).await;
    assert!(why.contains("too soon for a run of 1 h") && why.contains("it is refunded"), "{why}");
    let key = JobKey::new(soon.owner, soon.job_id.clone());
    let ev = S3EventRecord::object_created(w.store.bucket(), &key.status_snapshot(), 100);
    match handle_record(&w.ctx, &ev).await.unwrap() {
        Outcome::Settled(_, line) => assert!(line.contains("refunded 1 AIC"), "{line}"),
        other => panic!("{other:?}"),
    }
    // Past the deadline the owner reclaims the other, then submits naming it.
    aic_chain::devchain::advance_time(&w.wallet(0), 86_400).await.unwrap();
    let run = aic_chain::escrow::run_id(owner, gone.job_id.as_str(), 0);
    reclaim(&w, escrow, run).await;
    let mut gone = gone;
    gone.payment = Some(PaymentRef { chain_id: w.chain.config.chain_id, tx: tx_gone });
    let why = w.rejected_because(&w.sign(1, gone).await).await;
    assert!(why.contains("was reclaimed by its depositor"), "{why}");
    assert_eq!(aic(owner).await, o0, "both deposits back, one refunded, one reclaimed");
    assert_eq!(aic(w.treasury()).await, t0, "nothing charged");
    assert_eq!(aic(escrow).await, U256::ZERO);
}

/// A deposit cannot be taken back while the run it pays for may still be live: validate
/// leaves the run its paid hours plus a day before the deposit's deadline, and the pool stops
/// every run at its paid hours (a queued run is refunded rather than started late). A day
/// after the run's paid hour ran out, the owner's reclaim still reverts on chain, moving
/// nothing, and the run settles for what it used. (So the pool need not follow `Reclaimed`
/// events for live runs: there are none.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_cannot_be_reclaimed_while_its_run_may_still_be_live() {
    let w = world(1).await;
    let escrow = w.chain.config.escrow.unwrap();
    let aic = |who: Address| w.balance(who);
    let owner = dev_key(1).address();
    let (o0, t0) = (aic(owner).await, aic(w.treasury()).await);
    let (req, job) = w.deposited_and_validated(1).await;
    // Its hour, and the day of margin after it, pass; the run would have been stopped long ago.
    aic_chain::devchain::advance_time(&w.wallet(0), 3_600 + 86_400 - 60).await.unwrap();
    let run = aic_chain::escrow::run_id(owner, req.job_id.as_str(), 0);
    let wallet = w.wallet(1);
    let contract = aic_chain::escrow::IAICEscrow::new(escrow, &wallet);
    let call = contract.reclaim(run);
    let refused = match call.send().await {
        Err(e) => e.to_string(),
        Ok(pending) => {
            let r = pending.get_receipt().await.unwrap();
            assert!(!r.status(), "the owner reclaimed a deposit whose run may still be live");
            "reverted".into()
        }
    };
    assert!(refused.contains("revert") || refused.contains("TooEarly"), "{refused}");
    assert_eq!(aic(escrow).await, U256::from(PRICE), "the deposit stays in the escrow");
    assert_eq!(aic(owner).await, o0 - U256::from(PRICE));
    // The run ends having used 36 GPU-seconds, and settles: 0.01 AIC charged, the rest back.
    let t = Utc::now();
    let used = aic_core::usage::Usage {
        attempt: 0,
        index: 0,
        miner: "miner-1".into(),
        gpus: 1,
        gpu_model: None,
        started_at: t - chrono::Duration::seconds(36),
        ended_at: t,
        how: "exited 0".into(),
    };
    aic_core::usage::record(&w.store, &job, "1-1", &used).await.unwrap();
    for st in [JobState::Scheduled, JobState::Running, JobState::Succeeded] {
        status::advance(&w.store, &job, status::Transition::new(st, "test")).await.unwrap();
    }
    let ev = S3EventRecord::object_created(w.store.bucket(), &job.status_snapshot(), 100);
    assert!(matches!(handle_record(&w.ctx, &ev).await.unwrap(), Outcome::Settled(..)));
    let charged = PRICE / 100;
    assert_eq!(aic(w.treasury()).await, t0 + U256::from(charged));
    assert_eq!(aic(owner).await, o0 - U256::from(charged));
    assert_eq!(aic(escrow).await, U256::ZERO);
}

#[allow(non_snake_case)]
async fn reclaim(w: &World, escrow: Address, run: alloy::primitives::B256) {
    let r = aic_chain::escrow::IAICEscrow::new(escrow, &w.wallet(1)).reclaim(run).send().await.unwrap();
    assert!(r.get_receipt().await.unwrap().status(), "reclaim reverted");
}

/// A payment claimed for another owner's job of the same id is not taken for a duplicate
/// event of this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_by_another_owner_under_the_same_job_id_is_no_duplicate() {
    let w = world(1).await;
    let tx = w.pay(1, w.treasury(), PRICE).await;
    let req = w.sign(1, w.request(1, Some(&tx))).await;
    let theirs = aic_chain::verify::ClaimRecord {
        job: req.job_id.to_string(),
        run: 0,
        owner: from_alloy(dev_key(2).address()).to_string(),
        paid: PRICE.to_string(),
        claimed_at: Utc::now(),
    };
    w.store.put_json(&payment_claim(w.chain.config.chain_id, &tx), &theirs).await.unwrap();
    let why = w.rejected_because(&req).await;
    assert!(why.contains("already paid for job"), "{why}");
}

/// A second wallet submits under the id of another owner's job, paying properly: refused
/// with the reason, its own deposit back whole; its cancel (the status record it may write
/// while its request waits) stops nothing. (Ids were unique per owner only while the pool's
/// names use the id alone: such a cancel deregistered the first owner's Nomad job.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_another_owner_claimed_is_refused_and_its_twin_cancels_nothing() {
    let w = world(1).await;
    let aic = |who: Address| w.balance(who);
    let attacker = dev_key(2).address();
    let tx = w.pay(1, w.treasury(), PRICE).await;
    let (job, out) = w.submit(&w.sign(1, w.request(1, Some(&tx))).await).await;
    assert_eq!(out.unwrap(), Outcome::Validated(job.clone()));

    let a0 = aic(attacker).await;
    let mut twin = w.request(2, None);
    twin.job_id = job.job.clone();
    let deposit = w.deposit(2, &twin.job_id, PRICE).await;
    twin.payment = Some(PaymentRef { chain_id: w.chain.config.chain_id, tx: deposit });
    let why = w.rejected_because(&w.sign(2, twin.clone()).await).await;
    assert!(why.contains("is another owner's on this pool"), "{why}");
    let twin_key = JobKey::new(twin.owner, twin.job_id.clone());
    let ev = S3EventRecord::object_created(w.store.bucket(), &twin_key.status_snapshot(), 100);
    match handle_record(&w.ctx, &ev).await.unwrap() {
        Outcome::Settled(_, line) => assert!(line.contains("refunded 1 AIC"), "{line}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(aic(attacker).await, a0, "the refused twin's own deposit came back");

    // A cancel record of the twin's (as if written while it waited) reaches no scheduler.
    let cancel = aic_schemas::StatusRecord {
        state: JobState::Cancelled,
        ..status::current(&w.store, &twin_key).await.unwrap().unwrap()
    };
    w.store.put_json(&twin_key.status_record(99), &cancel).await.unwrap();
    let out = aic_functions::cancel::handle(&w.ctx, &twin_key, 99).await.unwrap();
    assert_eq!(out, Outcome::Ignored, "the twin's cancel reached the scheduler");
    let claim: serde_json::Value =
        w.store.get_json(&aic_core::layout::job_id_claim(&job.job), 1 << 16).await.unwrap().unwrap();
    assert_eq!(claim["owner"], job.owner.to_string());

    // Nor do the id's serving registrations (hosts and ports of the victim's replicas) reach
    // the twin through the gateway: its request is its own, the id's registrations are not.
    let reg = serde_json::json!({"deployment": job.job, "job_id": job.job, "alloc": 0, "host": "10.1.2.3", "port": 20001,
        "healthy": true, "started_at": Utc::now(), "heartbeat_at": Utc::now(), "ttl_seconds": 20});
    w.store.put_json(&aic_core::layout::serving_registration(job.job.as_str(), "0"), &reg).await.unwrap();
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let gw = aic_functions::gateway::Gateway::new(
        aic_functions::gateway::GatewayConfig::new(secret.clone(), "pool.test", w.chain.config.chain_id),
        w.ctx.clone(),
        None,
    );
    let call = |who: Address| {
        let token =
            aic_functions::gateway::session_token(&secret, &from_alloy(who), Utc::now() + chrono::Duration::hours(1));
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        let path = format!("/v1/jobs/{}/replicas", job.job);
        let gw = &gw;
        async move { gw.call([127, 0, 0, 1].into(), &http::Method::GET, &path, None, &headers, Default::default()).await }
    };
    let (code, theirs) = call(dev_key(2).address()).await;
    assert_eq!((code.as_u16(), theirs["replicas"].as_array().map(Vec::len)), (200, Some(0)), "{theirs}");
    let (code, owners) = call(dev_key(1).address()).await;
    assert_eq!((code.as_u16(), owners["replicas"][0]["host"].as_str()), (200, Some("10.1.2.3")), "{owners}");
}

/// Signing out ends the wallet's sessions on the pool, not only on the device: a token copied
/// elsewhere, and another device's session, are refused from then on, and a sign-in message
/// signed before the sign-out, replayed within its nonce's 10 minutes, opens nothing. Another
/// wallet's session is untouched; a new sign-in works. (Tokens were stateless: a copied one
/// worked for its 12 hours whatever `aic logout` did.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_ends_every_session_of_the_wallet_and_a_replayed_sign_in_opens_nothing() {
    use alloy::signers::Signer;
    let w = world(1).await;
    let gw = aic_functions::gateway::Gateway::new(
        aic_functions::gateway::GatewayConfig::new(
            b"0123456789abcdef0123456789abcdef".to_vec(),
            "pool.test",
            w.chain.config.chain_id,
        ),
        w.ctx.clone(),
        None,
    );
    let call = |method: http::Method, path: &'static str, token: Option<String>, body: serde_json::Value| {
        let gw = &gw;
        async move {
            let mut headers = http::HeaderMap::new();
            if let Some(t) = token {
                headers.insert(http::header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
            }
            let body = if body.is_null() { Default::default() } else { bytes::Bytes::from(body.to_string()) };
            gw.call([127, 0, 0, 1].into(), &method, path, None, &headers, body).await
        }
    };
    // A signed sign-in message of wallet 1 (the body `/v1/session` takes).
    let signed = || async {
        let (_, n) = call(http::Method::GET, "/v1/nonce", None, serde_json::Value::Null).await;
        let key = dev_key(1);
        let mut msg = aic_chain::siwe::SiweMessage::new(
            "pool.test",
            "http://pool.test/",
            key.address(),
            w.chain.config.chain_id,
            chrono::Duration::hours(1),
        );
        msg.nonce = n["nonce"].as_str().unwrap().to_string();
        let sig = key.sign_message(msg.to_string().as_bytes()).await.unwrap();
        serde_json::json!({"message": msg.to_string(), "signature": format!("0x{}", alloy::hex::encode(sig.as_bytes()))})
    };
    let session = |body: serde_json::Value| async move {
        let (code, v) = call(http::Method::POST, "/v1/session", None, body).await;
        (code.as_u16(), v["token"].as_str().map(str::to_string), v)
    };
    let jobs =
        |token: String| async move { call(http::Method::GET, "/v1/jobs", Some(token), serde_json::Value::Null).await };
    let laptop = session(signed().await).await.1.unwrap();
    let replayed = signed().await;
    let phone = session(replayed.clone()).await.1.unwrap();
    let other = aic_functions::gateway::session_token(
        b"0123456789abcdef0123456789abcdef",
        &from_alloy(dev_key(2).address()),
        Utc::now() + chrono::Duration::hours(1),
    );
    for t in [&laptop, &phone, &other] {
        assert_eq!(jobs(t.clone()).await.0.as_u16(), 200);
    }
    // Sign-in messages carry whole seconds: the sign-out comes in a later second than theirs.
    let signed_at = Utc::now().timestamp();
    while Utc::now().timestamp() <= signed_at {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (code, out) = call(http::Method::POST, "/v1/logout", Some(laptop.clone()), serde_json::Value::Null).await;
    assert_eq!(code.as_u16(), 200, "{out}");
    for t in [&laptop, &phone] {
        let (code, v) = jobs(t.clone()).await;
        assert_eq!(code.as_u16(), 401, "a session survived signing out: {v}");
        assert!(v["error"].as_str().unwrap().contains("signed out"), "{v}");
    }
    assert_eq!(jobs(other).await.0.as_u16(), 200, "another wallet's session was ended");
    let (code, _, v) = session(replayed).await;
    assert_eq!(code, 401, "a sign-in signed before the sign-out opened a session: {v}");
    assert!(v["error"].as_str().unwrap().contains("signed before you signed out"), "{v}");
    // Messages carry whole seconds: the next sign-in is signed a second after the sign-out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let again = loop {
        let (code, token, v) = session(signed().await).await;
        if code == 200 {
            break token.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "signing in again was refused: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(jobs(again).await.0.as_u16(), 200);
}

/// On the embedded pool the dev chain's accounts have public keys (anvil's): whoever reaches
/// the host from another machine (it was started with `AIC_SERVE_ADDR=0.0.0.0:…`) cannot sign
/// in as one, and so cannot act in the developer's jobs; from this machine they can, and a
/// wallet of one's own can from anywhere. (Anyone reaching the port signed in as the
/// developer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_accounts_sign_in_from_this_machine_only() {
    use alloy::signers::Signer;
    let w = world(1).await;
    let mut cfg = aic_functions::gateway::GatewayConfig::new(
        b"0123456789abcdef0123456789abcdef".to_vec(),
        "pool.test",
        w.chain.config.chain_id,
    );
    cfg.local_signers = (0..3).map(|i| from_alloy(dev_key(i).address())).collect();
    let gw = aic_functions::gateway::Gateway::new(cfg, w.ctx.clone(), None);
    let sign_in = |peer: [u8; 4], key: alloy::signers::local::PrivateKeySigner| {
        let gw = &gw;
        let chain = w.chain.config.chain_id;
        async move {
            let headers = http::HeaderMap::new();
            let (_, n) =
                gw.call(peer.into(), &http::Method::GET, "/v1/nonce", None, &headers, Default::default()).await;
            let mut msg = aic_chain::siwe::SiweMessage::new(
                "pool.test",
                "http://pool.test/",
                key.address(),
                chain,
                chrono::Duration::hours(1),
            );
            msg.nonce = n["nonce"].as_str().unwrap().to_string();
            let sig = key.sign_message(msg.to_string().as_bytes()).await.unwrap();
            let body = serde_json::json!({"message": msg.to_string(), "signature": format!("0x{}", alloy::hex::encode(sig.as_bytes()))});
            gateway_call(gw, peer, None, http::Method::POST, "/v1/session", body).await
        }
    };
    let (code, v) = sign_in([192, 168, 1, 20], dev_key(0)).await;
    assert_eq!(code, 403, "a dev account signed in from another machine: {v}");
    assert!(v["error"].as_str().unwrap().contains("signs in from this machine only"), "{v}");
    assert_eq!(sign_in([127, 0, 0, 1], dev_key(0)).await.0, 200);
    let own: alloy::signers::local::PrivateKeySigner =
        "0x1111111111111111111111111111111111111111111111111111111111111111".parse().unwrap();
    assert_eq!(sign_in([192, 168, 1, 20], own).await.0, 200, "a wallet of one's own signs in from anywhere");
}

/// Where the pool polls for requests (a store that sends no notifications), every upload URL
/// for a request makes the poller wait on it for the URL's lifetime: one wallet has at most
/// 16 such requests waiting; the 17th URL is refused with the reason, other wallets are
/// untouched, and an upload that arrives frees its place. (Each signed URL added a waiting
/// entry, with no bound: one wallet could make every poll slower for everyone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_wallet_cannot_fill_the_pollers_inbox() {
    let w = world(1).await;
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let mut cfg = aic_functions::gateway::GatewayConfig::new(secret.clone(), "pool.test", w.chain.config.chain_id);
    cfg.public_url = Some("http://127.0.0.1:9".into());
    let gw = aic_functions::gateway::Gateway::new(
        cfg,
        w.ctx.clone(),
        Some(aic_functions::poll::Inbox::new(w.store.clone())),
    );
    let sign = |who: Address, key: String| {
        let (gw, secret) = (&gw, &secret);
        async move {
            let body = serde_json::json!({"items": [{"method": "PUT", "key": key, "size": 2, "sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}]});
            let me = Some((secret.as_slice(), from_alloy(who)));
            gateway_call(gw, [127, 0, 0, 1], me, http::Method::POST, "/v1/sign", body).await
        }
    };
    let request_of = |who: u32| JobKey::new(from_alloy(dev_key(who).address()), aic_schemas::JobId::generate());
    let mut first = None;
    for _ in 0..aic_functions::poll::MAX_WAITING_PER_OWNER {
        let job = request_of(1);
        let (code, v) = sign(dev_key(1).address(), job.request()).await;
        assert_eq!(code, 200, "{v}");
        first.get_or_insert(job);
    }
    let (code, v) = sign(dev_key(1).address(), request_of(1).request()).await;
    assert_eq!(code, 403, "a 17th waiting request was signed: {v}");
    assert!(v["error"].as_str().unwrap().contains("signed for upload and not uploaded"), "{v}");
    assert_eq!(sign(dev_key(2).address(), request_of(2).request()).await.0, 200, "another wallet was refused");
    // One of them arrives: the poller takes it (validate refuses it: unsigned), and its place
    // is free again.
    let first = first.unwrap();
    w.store.put_json(&first.request(), &w.request(1, None)).await.unwrap();
    let mut poller = aic_functions::poll::Poller::load(w.ctx.clone()).await.unwrap();
    let report = poller.poll().await.unwrap();
    assert_eq!(report.handled, 1, "{report:?}");
    let (code, v) = sign(dev_key(1).address(), request_of(1).request()).await;
    assert_eq!(code, 200, "the arrived request's place was not freed: {v}");
}

/// A deposit sent with its bare gas estimate runs out of gas when a settlement empties the
/// escrow between the estimate and the block (its balance written from zero costs 20,000 gas,
/// not 2,900): the deposit reverted and the run failed with "the deposit … reverted" (seen in
/// CI: a job's settlement, then the next `aic run`). The margin `aic` sends with covers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_estimated_before_a_settlement_empties_the_escrow_still_goes_through() {
    let w = world(1).await;
    let escrow = w.chain.config.escrow.unwrap();
    // Wallet 1 holds a deposit: the escrow's balance is not zero.
    let first = w.request(1, None);
    w.deposit(1, &first.job_id, PRICE).await;
    // Wallet 2 approves and estimates its deposit on that state.
    let wallet = w.wallet(2);
    let erc20 = aic_chain::escrow::IERC20Approve::new(w.chain.config.token, &wallet);
    let approve = erc20.approve(escrow, U256::from(PRICE));
    assert!(approve.send().await.unwrap().get_receipt().await.unwrap().status());
    let contract = aic_chain::escrow::IAICEscrow::new(escrow, &wallet);
    let run = aic_chain::escrow::run_id(dev_key(2).address(), "01jb0000000000000000000000", 0);
    let call = contract.deposit(run, U256::from(PRICE), 1000);
    let estimate = call.estimate_gas().await.unwrap();
    // The settler settles wallet 1's deposit: the escrow is empty now.
    let settler = w.wallet(devchain::SETTLER);
    let first_run = aic_chain::escrow::run_id(dev_key(1).address(), first.job_id.as_str(), 0);
    let by_settler = aic_chain::escrow::IAICEscrow::new(escrow, &settler);
    let settle = by_settler.settle(dev_key(1).address(), first_run, U256::ZERO);
    assert!(settle.send().await.unwrap().get_receipt().await.unwrap().status());
    assert_eq!(w.balance(escrow).await, U256::ZERO);
    // With the bare estimate the deposit runs out of gas; with aic's margin it goes through.
    let bare = call.gas(estimate).send().await.unwrap().get_receipt().await.unwrap();
    assert!(!bare.status(), "the bare estimate was enough: the test shows nothing");
    let call = contract.deposit(run, U256::from(PRICE), 1000);
    let sent = call.gas(aic_chain::token::with_margin(estimate)).send().await.unwrap().get_receipt().await.unwrap();
    assert!(sent.status(), "the deposit with aic's margin reverted");
    assert_eq!(w.balance(escrow).await, U256::from(PRICE));
}

/// A job's workers' token (which its program can read and copy) opens the job's objects while
/// the job runs and for a grace after it ends (the last chunks of workers shutting down), not
/// for the rest of its hours + 24 h. (A copied token kept writing to the job's outputs for a
/// day after it ended.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_token_opens_nothing_once_its_job_has_ended() {
    let w = world(1).await;
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let mut cfg = aic_functions::gateway::GatewayConfig::new(secret.clone(), "pool.test", w.chain.config.chain_id);
    cfg.public_url = Some("http://127.0.0.1:9".into());
    cfg.worker_grace = std::time::Duration::ZERO;
    let gw = aic_functions::gateway::Gateway::new(cfg, w.ctx.clone(), None);
    let (_, job) = w.deposited_and_validated(1).await;
    let m: aic_schemas::JobManifest = w.store.get_json(&job.manifest(), 1 << 20).await.unwrap().unwrap();
    for st in [JobState::Scheduled, JobState::Running] {
        status::advance(&w.store, &job, status::Transition::new(st, "test")).await.unwrap();
    }
    let token = aic_core::grant::WorkerGateway { url: String::new(), secret }.token(&job, &m, Utc::now());
    let list = || {
        let (gw, token, job) = (&gw, &token, &job);
        async move {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
            let q = format!("prefix={}", job.output_prefix());
            let (code, v) = gw
                .call([127, 0, 0, 1].into(), &http::Method::GET, "/v1/objects", Some(&q), &headers, Default::default())
                .await;
            (code.as_u16(), v)
        }
    };
    let (code, v) = list().await;
    assert_eq!(code, 200, "a running job's token was refused: {v}");
    status::advance(&w.store, &job, status::Transition::new(JobState::Succeeded, "worker")).await.unwrap();
    // The gateway reads a job's status again after 5 s at most.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let v = loop {
        let (code, v) = list().await;
        if code == 401 {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "the ended job's token still opens its objects: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(v["error"].as_str().unwrap().contains("its workers' token opens nothing any more"), "{v}");
}

/// A job's code is uploaded before its request, so it is nobody's free storage either: a
/// job's code counts against its owner's storage quota until validate takes the job in (a
/// marker under `pool/code-pending/`); one job's code is at most `AIC_MAX_CODE_BYTES`; a
/// wallet has at most 16 jobs' code waiting; a submitted job's code is fixed; the code of a
/// job never paid goes a day after its upload began. (Code under endless fresh job ids was
/// unlimited storage, the storage quota notwithstanding.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_cannot_park_storage_in_its_jobs_code() {
    let w = world(1).await;
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let gateway = || {
        let mut cfg = aic_functions::gateway::GatewayConfig::new(secret.clone(), "pool.test", w.chain.config.chain_id);
        cfg.public_url = Some("http://127.0.0.1:9".into());
        cfg.storage_quota = Some(10 << 20);
        cfg.max_code_bytes = 4 << 20;
        aic_functions::gateway::Gateway::new(cfg, w.ctx.clone(), None)
    };
    let owner = from_alloy(dev_key(1).address());
    let call = |gw, me, method, path, body| gateway_call(gw, [127, 0, 0, 1], Some(me), method, path, body);
    let me = (secret.as_slice(), owner);
    let put = |key: String, size: u64| serde_json::json!({"items": [{"method": "PUT", "key": key, "size": size, "sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}]});
    let job = |n: u8| JobKey::new(owner, format!("01jb{:022}", n).parse().unwrap());
    let gw = gateway();
    // 3 MiB of code for job 1, uploaded; 2 more would pass the job's 4 MiB.
    let j1 = job(1);
    assert_eq!(
        call(&gw, me, http::Method::POST, "/v1/sign", put(format!("{}t.py", j1.code_prefix()), 3 << 20)).await.0,
        200
    );
    w.store.put_bytes(&format!("{}t.py", j1.code_prefix()), vec![b'c'; 3 << 20].into()).await.unwrap();
    let (code, v) =
        call(&gw, me, http::Method::POST, "/v1/sign", put(format!("{}u.py", j1.code_prefix()), 2 << 20)).await;
    assert_eq!(code, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("over the pool's 4194304-byte limit"), "{v}");
    // It counts against the quota: 8 MiB of data more do not fit (3 + 8 > 10).
    let data = format!("users/{owner}/data/d/x");
    let (code, v) = call(&gw, me, http::Method::POST, "/v1/sign", put(data.clone(), 8 << 20)).await;
    assert_eq!(code, 507, "{v}");
    assert!(v["error"].as_str().unwrap().contains("storage quota"), "{v}");
    // 16 jobs with code waiting at most.
    for n in 2..=16 {
        let (code, v) =
            call(&gw, me, http::Method::POST, "/v1/sign", put(format!("{}t.py", job(n).code_prefix()), 1)).await;
        assert_eq!(code, 200, "job {n}: {v}");
    }
    let (code, v) =
        call(&gw, me, http::Method::POST, "/v1/sign", put(format!("{}t.py", job(17).code_prefix()), 1)).await;
    assert_eq!(code, 429, "{v}");
    assert!(v["error"].as_str().unwrap().contains("16 jobs of yours have code uploaded"), "{v}");
    // The job id as the pool spells it only: another spelling is a key nothing would count.
    let upper = format!("users/{owner}/jobs/{}/code/t.py", job(18).job.as_str().to_uppercase());
    let (code, v) = call(&gw, me, http::Method::POST, "/v1/sign", put(upper, 1)).await;
    assert_eq!(code, 403, "{v}");
    // A submitted job's code is fixed.
    w.store.put_json(&job(2).request(), &serde_json::json!({})).await.unwrap();
    let (code, v) =
        call(&gw, me, http::Method::POST, "/v1/sign", put(format!("{}v.py", job(2).code_prefix()), 1)).await;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("its code is fixed"), "{v}");
    // A day on, job 1 was never paid: its code goes (on the owner's next look), and the room
    // it took is free; job 3 was paid meanwhile: its code stays.
    let day_ago = serde_json::json!({ "since": Utc::now() - chrono::Duration::hours(25) });
    for n in [1, 3] {
        w.store.put_json(&aic_core::layout::code_pending(&owner, &job(n).job), &day_ago).await.unwrap();
    }
    w.store.put_bytes(&format!("{}t.py", job(3).code_prefix()), vec![b'c'; 1].into()).await.unwrap();
    w.store.put_json(&job(3).manifest(), &serde_json::json!({})).await.unwrap();
    let gw = gateway();
    let (code, v) = call(&gw, me, http::Method::GET, "/v1/usage", serde_json::json!(null)).await;
    assert_eq!(code, 200, "{v}");
    assert!(w.store.list(&j1.code_prefix()).await.unwrap().is_empty(), "the never-paid job's code was kept");
    assert_eq!(w.store.list(&job(3).code_prefix()).await.unwrap().len(), 1, "a paid job's code went");
    assert_eq!(call(&gw, me, http::Method::POST, "/v1/sign", put(data, 8 << 20)).await.0, 200, "{v}");
}

/// One gateway call from `peer`, with a session token of `who` (made with its secret) when
/// given.
async fn gateway_call(
    gw: &aic_functions::gateway::Gateway,
    peer: [u8; 4],
    who: Option<(&[u8], aic_schemas::Address)>,
    method: http::Method,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut headers = http::HeaderMap::new();
    if let Some((secret, owner)) = who {
        let token = aic_functions::gateway::session_token(secret, &owner, Utc::now() + chrono::Duration::hours(1));
        headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    }
    let (code, v) = gw.call(peer.into(), &method, path, None, &headers, bytes::Bytes::from(body.to_string())).await;
    (code.as_u16(), v)
}
