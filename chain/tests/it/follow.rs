//! A payment the wallet sped up or cancelled after handing back its first hash, followed on
//! a real chain (anvil): the speed-up's hash pays, a cancellation pays nothing, and the
//! treasury's balance on chain says the same.

use std::time::Duration;

use aic_chain::devchain::{self, dev_key};
use aic_chain::follow::{Followed, Sent, follow};
use aic_chain::token::{self, IAIC};
use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;

const AIC: u128 = 10u128.pow(18);

struct Chain {
    _dir: tempfile::TempDir,
    chain: devchain::DevChain,
    payer: DynProvider,
}

async fn chain() -> Chain {
    let dir = tempfile::tempdir().unwrap();
    let chain = devchain::start(&dir.path().join("state.json"), &dir.path().join("chain.json"), AIC, 1)
        .await
        .expect("anvil: run the suite with `cargo xtask test`, which installs it and sets AIC_ANVIL");
    let payer = ProviderBuilder::new()
        .wallet(EthereumWallet::from(dev_key(1)))
        .connect_http(chain.anvil.endpoint_url())
        .erased();
    Chain { _dir: dir, chain, payer }
}

impl Chain {
    fn from(&self) -> Address {
        dev_key(1).address()
    }

    async fn treasury_balance(&self) -> U256 {
        token::balance(&self.payer, self.chain.config.token, self.chain.config.treasury).await.unwrap()
    }

    /// Sends `tx` with `nonce` and a max fee of `gwei`, without waiting.
    async fn send(&self, tx: TransactionRequest, nonce: u64, gwei: u128) -> B256 {
        let tx = tx
            .with_from(self.from())
            .with_nonce(nonce)
            .with_gas_limit(120_000)
            .with_max_fee_per_gas(gwei * 1_000_000_000)
            .with_max_priority_fee_per_gas(gwei * 1_000_000_000);
        *self.payer.send_transaction(tx).await.unwrap().tx_hash()
    }

    fn call(&self) -> Vec<u8> {
        IAIC::transferCall { to: self.chain.config.treasury, value: U256::from(AIC) }.abi_encode()
    }

    fn payment(&self) -> TransactionRequest {
        TransactionRequest::default().with_to(self.chain.config.token).with_input(self.call())
    }

    /// What the wallet is about to be asked to send, as the wallet page records it.
    async fn about_to_send(&self) -> Sent {
        Sent {
            from: self.from(),
            to: self.chain.config.token,
            input: self.call().into(),
            nonce: self.payer.get_transaction_count(self.from()).pending().await.unwrap(),
            since: self.payer.get_block_number().await.unwrap(),
        }
    }

    async fn automine(&self, on: bool) {
        let _: serde_json::Value = self.payer.raw_request("evm_setAutomine".into(), (on,)).await.unwrap();
    }

    async fn mine(&self) {
        let _: serde_json::Value = self.payer.raw_request("evm_mine".into(), ()).await.unwrap();
    }

    /// Sends the payment, then `replacement` with the same nonce and twice the fee, mines
    /// both into one block, and follows the first hash.
    async fn replaced_by(&self, replacement: TransactionRequest) -> (B256, Followed) {
        let sent = self.about_to_send().await;
        self.automine(false).await;
        let first = self.send(self.payment(), sent.nonce, 2).await;
        self.send(replacement, sent.nonce, 4).await;
        self.mine().await;
        self.automine(true).await;
        let f = follow(&self.payer, first, &sent, Duration::from_millis(50), Duration::from_secs(20)).await.unwrap();
        (first, f)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_mined_as_sent_is_its_own_hash() {
    let c = chain().await;
    let before = c.treasury_balance().await;
    let sent = c.about_to_send().await;
    let hash = c.send(c.payment(), sent.nonce, 2).await;
    let f = follow(&c.payer, hash, &sent, Duration::from_millis(50), Duration::from_secs(20)).await.unwrap();
    assert_eq!(f, Followed::Mined { tx: hash, replaced: false });
    assert_eq!(c.treasury_balance().await - before, U256::from(AIC));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sped_up_payment_is_followed_to_its_new_hash() {
    let c = chain().await;
    let before = c.treasury_balance().await;
    let (first, f) = c.replaced_by(c.payment()).await;
    let Followed::Mined { tx, replaced: true } = f else { panic!("{f:?}") };
    assert_ne!(tx, first);
    assert!(c.payer.get_transaction_receipt(first).await.unwrap().is_none(), "the first hash never mines");
    assert!(c.payer.get_transaction_receipt(tx).await.unwrap().unwrap().status());
    assert_eq!(c.treasury_balance().await - before, U256::from(AIC), "paid once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_payment_pays_nothing() {
    let c = chain().await;
    let before = c.treasury_balance().await;
    let cancel = TransactionRequest::default().with_to(c.from()).with_value(U256::ZERO);
    let (first, f) = c.replaced_by(cancel).await;
    let Followed::Cancelled { by } = f else { panic!("{f:?}") };
    assert_ne!(by, first);
    assert_eq!(c.treasury_balance().await, before, "nothing reached the treasury");
}
