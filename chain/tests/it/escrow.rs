//! The escrow on a real chain (anvil, with the dev chain's token and escrow): every path and
//! every refusal, with balances read on chain.

use aic_chain::devchain::{self, SETTLER, dev_key};
use aic_chain::escrow::{self, HELD, IAICEscrow, RECLAIMED, SETTLED, run_id};
use aic_chain::token;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider};

const AIC: u128 = 10u128.pow(18);

struct World {
    _dir: tempfile::TempDir,
    chain: devchain::DevChain,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let chain = devchain::start(&dir.path().join("state.json"), &dir.path().join("chain.json"), AIC, 1)
        .await
        .expect("anvil: run the suite with `cargo xtask test`, which installs it and sets AIC_ANVIL");
    World { _dir: dir, chain }
}

impl World {
    fn wallet(&self, i: u32) -> DynProvider {
        devchain::dev_wallet(&self.chain.anvil, i)
    }
    fn escrow(&self) -> Address {
        self.chain.config.escrow.expect("the dev chain has an escrow")
    }
    async fn aic(&self, who: Address) -> U256 {
        token::balance(&self.wallet(0), self.chain.config.token, who).await.unwrap()
    }
    async fn deposit(&self, from: u32, run: B256, amount: u128, milli_hours: u32) -> anyhow::Result<B256> {
        escrow::deposit(
            &self.wallet(from),
            self.chain.config.token,
            self.escrow(),
            run,
            U256::from(amount),
            milli_hours,
        )
        .await
    }
    /// Calls `settle` of alice's deposit for `run` as dev account `from`; the escrow's error
    /// when it refuses.
    async fn settle(&self, from: u32, run: B256, used: u128) -> Result<(), String> {
        let w = self.wallet(from);
        match IAICEscrow::new(self.escrow(), &w).settle(alice(), run, U256::from(used)).send().await {
            Ok(p) => {
                assert!(p.get_receipt().await.unwrap().status());
                Ok(())
            }
            Err(e) => Err(escrow::revert_reason(&e)),
        }
    }
    async fn reclaim(&self, from: u32, run: B256) -> Result<(), String> {
        let w = self.wallet(from);
        match IAICEscrow::new(self.escrow(), &w).reclaim(run).send().await {
            Ok(p) => {
                assert!(p.get_receipt().await.unwrap().status());
                Ok(())
            }
            Err(e) => Err(escrow::revert_reason(&e)),
        }
    }
    async fn held(&self, run: B256) -> escrow::Held {
        escrow::held(&self.wallet(0), self.escrow(), alice(), run).await.unwrap()
    }
}

fn alice() -> Address {
    dev_key(1).address()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_settled_once_what_was_used_to_the_treasury_the_rest_back_at_once() {
    let w = world().await;
    let (treasury, esc) = (w.chain.config.treasury, w.escrow());
    let (a0, t0) = (w.aic(alice()).await, w.aic(treasury).await);
    let run = run_id(dev_key(1).address(), "01jb0000000000000000000000", 0);
    let tx = w.deposit(1, run, 2 * AIC, 2000).await.unwrap();
    // The deposit's event, for validate to read.
    let receipt = w.wallet(0).get_transaction_receipt(tx).await.unwrap().unwrap();
    let ev = receipt.inner.logs().iter().find_map(|l| l.log_decode::<IAICEscrow::Deposited>().ok()).unwrap().inner;
    assert_eq!((ev.address, ev.data.run, ev.data.depositor, ev.data.amount), (esc, run, alice(), U256::from(2 * AIC)));
    assert_eq!(w.aic(alice()).await, a0 - U256::from(2 * AIC));
    assert_eq!(w.aic(esc).await, U256::from(2 * AIC));
    let h = w.held(run).await;
    assert_eq!((h.depositor, h.state, h.amount), (alice(), HELD, U256::from(2 * AIC)));

    // 0.0018 AIC used: to the treasury; 1.9982 AIC back, in the same transaction.
    let used = 18 * AIC / 10_000;
    w.settle(SETTLER, run, used).await.unwrap();
    assert_eq!(w.aic(treasury).await, t0 + U256::from(used));
    assert_eq!(w.aic(alice()).await, a0 - U256::from(used));
    assert_eq!(w.aic(esc).await, U256::ZERO);
    let h = w.held(run).await;
    assert_eq!((h.state, h.used), (SETTLED, U256::from(used)), "the settlement can be read back");

    // Never twice, and not reclaimed after.
    let again = w.settle(SETTLER, run, used).await.unwrap_err();
    assert!(again.contains("NotHeld"), "{again}");
    let late = w.reclaim(1, run).await.unwrap_err();
    assert!(late.contains("NotHeld"), "{late}");
    assert_eq!(w.aic(treasury).await, t0 + U256::from(used));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_settler_settles_and_never_more_than_was_deposited() {
    let w = world().await;
    let run = run_id(dev_key(1).address(), "01jb0000000000000000000001", 0);
    w.deposit(1, run, AIC, 1000).await.unwrap();
    let by_user = w.settle(1, run, 0).await.unwrap_err();
    assert!(by_user.contains("NotSettler"), "{by_user}");
    let by_treasury = w.settle(9, run, AIC).await.unwrap_err();
    assert!(by_treasury.contains("NotSettler"), "{by_treasury}");
    let too_much = w.settle(SETTLER, run, AIC + 1).await.unwrap_err();
    assert!(too_much.contains("UsedMoreThanDeposit"), "{too_much}");
    assert_eq!(w.held(run).await.state, HELD, "refusals change nothing");
    // All of it used: all to the treasury, nothing back.
    let t0 = w.aic(w.chain.config.treasury).await;
    w.settle(SETTLER, run, AIC).await.unwrap();
    assert_eq!(w.aic(w.chain.config.treasury).await, t0 + U256::from(AIC));
    // An unknown run cannot be settled.
    let unknown =
        w.settle(SETTLER, run_id(dev_key(1).address(), "01jb0000000000000000000009", 0), 0).await.unwrap_err();
    assert!(unknown.contains("NotHeld"), "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_deposit_is_reclaimed_by_its_depositor_after_its_deadline_only() {
    let w = world().await;
    let run = run_id(dev_key(1).address(), "01jb0000000000000000000002", 0);
    let a0 = w.aic(alice()).await;
    w.deposit(1, run, 3 * AIC, 500).await.unwrap();
    let h = w.held(run).await;
    let grace = IAICEscrow::new(w.escrow(), w.wallet(0)).GRACE().call().await.unwrap();
    let now = w.wallet(0).get_block_by_number(Default::default()).await.unwrap().unwrap().header.timestamp;
    assert_eq!(h.deadline, now + 1800 + grace, "paid hours (0.5 h) + the grace");
    let early = w.reclaim(1, run).await.unwrap_err();
    assert!(early.contains("TooEarly"), "{early}");
    devchain::advance_time(&w.wallet(0), 1800 + grace + 1).await.unwrap();
    let not_theirs = w.reclaim(2, run).await.unwrap_err();
    assert!(not_theirs.contains("NotHeld"), "nobody else's deposit to take: {not_theirs}");
    w.reclaim(1, run).await.unwrap();
    assert_eq!(w.aic(alice()).await, a0, "all of it back");
    assert_eq!(w.held(run).await.state, RECLAIMED);
    let settle = w.settle(SETTLER, run, 0).await.unwrap_err();
    assert!(settle.contains("NotHeld"), "{settle}");
    let twice = w.reclaim(1, run).await.unwrap_err();
    assert!(twice.contains("NotHeld"), "{twice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_takes_one_deposit_and_each_resume_is_a_run_of_its_own() {
    let w = world().await;
    let job = "01jb0000000000000000000003";
    let (first, resume) = (run_id(dev_key(1).address(), job, 0), run_id(dev_key(1).address(), job, 1));
    assert_ne!(first, resume);
    // Someone else depositing for the run first takes nothing from its owner: deposits are
    // kept per depositor (the pool counts only the job owner's).
    w.deposit(2, first, 1, 1000).await.unwrap();
    w.deposit(1, first, AIC, 1000).await.unwrap();
    assert_eq!(w.held(first).await.amount, U256::from(AIC));
    let again = w.deposit(1, first, AIC, 1000).await.unwrap_err().to_string();
    assert!(again.contains("AlreadyDeposited"), "{again}");
    w.deposit(1, resume, AIC, 1000).await.unwrap();
    assert_eq!(w.aic(w.escrow()).await, U256::from(2 * AIC + 1));
    // Nothing, or no hours, is not a deposit.
    let zero = w.deposit(1, run_id(dev_key(1).address(), job, 2), 0, 1000).await.unwrap_err().to_string();
    assert!(zero.contains("ZeroAmount"), "{zero}");
    let no_hours = w.deposit(1, run_id(dev_key(1).address(), job, 2), AIC, 0).await.unwrap_err().to_string();
    assert!(no_hours.contains("BadHours"), "{no_hours}");
}
