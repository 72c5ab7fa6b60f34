//! The dev chain of the embedded pool: anvil, with the AIC token deployed by the first dev
//! account, 1000 AIC minted to each of the first nine accounts, the tenth account as the
//! pool treasury, and the escrow jobs are paid into, settled by the ninth account
//! ([`SETTLER`]). Anvil keeps its state in a file, so balances and past payments
//! survive restarts; the token's address is the same on every fresh chain (same deployer,
//! nonce 0).

use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::U256;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use anyhow::Context;

use crate::ChainConfig;
use crate::token::{self, IAIC};

/// The dev account that settles deposits on the dev chain (a pool's settler key is its own
/// secret, `AIC_SETTLER_KEY`).
pub const SETTLER: u32 = 8;

/// AIC minted to each dev account on a new chain.
pub const DEV_FUNDS: u128 = 1000 * 10u128.pow(18);

/// The anvil binary: `AIC_ANVIL`, else `anvil` on PATH.
pub fn anvil_bin() -> PathBuf {
    std::env::var_os("AIC_ANVIL").filter(|p| !p.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("anvil"))
}

/// The well-known private keys of anvil's ten dev accounts (from its default mnemonic
/// `test test ... junk`; public knowledge, for dev chains only). A test checks them
/// against a running anvil.
pub const DEV_KEYS: [&str; 10] = [
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "dbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
];

/// The signer of anvil's dev account `i` (0..10).
pub fn dev_key(i: u32) -> PrivateKeySigner {
    DEV_KEYS[i as usize].parse().expect("a dev key")
}

/// A provider on `chain` that signs as dev account `i`.
pub fn dev_wallet(chain: &AnvilInstance, i: u32) -> alloy::providers::DynProvider {
    ProviderBuilder::new().wallet(EthereumWallet::from(dev_key(i))).connect_http(chain.endpoint_url()).erased()
}

pub struct DevChain {
    /// Stops anvil when dropped.
    pub anvil: AnvilInstance,
    pub config: ChainConfig,
}

/// Starts anvil (state in `state`), makes sure the token exists and the dev accounts are
/// funded, and writes the resulting config to `config_path`.
pub async fn start(
    state: &Path,
    config_path: &Path,
    price_per_gpu_hour: u128,
    confirmations: u64,
) -> anyhow::Result<DevChain> {
    let bin = anvil_bin();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let anvil = Anvil::new()
        .path(&bin)
        .port(port)
        .arg("--state")
        .arg(state)
        .arg("--state-interval")
        .arg("2")
        .timeout(30_000)
        .try_spawn()
        .with_context(|| {
            format!("cannot start anvil ({}); install it with `cargo xtask setup` or set AIC_ANVIL", bin.display())
        })?;
    let deployer = dev_key(0);
    let treasury = dev_key(9).address();
    let provider =
        ProviderBuilder::new().wallet(EthereumWallet::from(deployer.clone())).connect_http(anvil.endpoint_url());
    // Same deployer, nonce 0: the same address on every fresh chain.
    let token_addr = deployer.address().create(0);
    let code = provider.get_code_at(token_addr).await?;
    if code.is_empty() {
        let deployed = token::deploy(&provider, deployer.address()).await?;
        anyhow::ensure!(deployed == token_addr, "the token was deployed at {deployed}, expected {token_addr}");
        let aic = IAIC::new(token_addr, &provider);
        for i in 0..9 {
            aic.mint(dev_key(i).address(), U256::from(DEV_FUNDS)).send().await?.get_receipt().await?;
        }
    }
    // The escrow, next (nonce 10 on a fresh chain: the same address every time).
    let escrow_addr = deployer.address().create(10);
    if provider.get_code_at(escrow_addr).await?.is_empty() {
        let deployed =
            crate::escrow::deploy(&provider, deployer.address(), token_addr, treasury, dev_key(SETTLER).address())
                .await?;
        anyhow::ensure!(deployed == escrow_addr, "the escrow was deployed at {deployed}, expected {escrow_addr}");
    }
    let config = ChainConfig {
        rpc_url: anvil.endpoint(),
        chain_id: anvil.chain_id(),
        token: token_addr,
        treasury,
        price_per_gpu_hour: price_per_gpu_hour.to_string(),
        // Prices per GPU model, as a pool's operator sets them (`AIC_GPU_PRICES`).
        gpu_prices: match std::env::var("AIC_GPU_PRICES") {
            Ok(v) => crate::config::parse_gpu_prices(&v).map_err(|e| anyhow::anyhow!("AIC_GPU_PRICES: {e}"))?,
            Err(_) => Default::default(),
        },
        confirmations,
        escrow: Some(escrow_addr),
        transfers: true,
    };
    config.save(config_path)?;
    Ok(DevChain { anvil, config })
}

/// Moves the chain's clock `secs` forward and mines a block (anvil only).
pub async fn advance_time<P: Provider>(provider: &P, secs: u64) -> anyhow::Result<()> {
    let _: serde_json::Value = provider.raw_request("evm_increaseTime".into(), (secs,)).await?;
    mine(provider, 1).await
}

/// Mines `n` blocks (anvil only).
pub async fn mine<P: Provider>(provider: &P, n: u64) -> anyhow::Result<()> {
    let _: serde_json::Value = provider.raw_request("anvil_mine".into(), (n,)).await?;
    Ok(())
}

/// Whether something answers JSON-RPC at `url` within a second.
pub async fn is_up(url: &str) -> bool {
    let Ok(url) = url.parse() else { return false };
    let p = ProviderBuilder::new().connect_http(url);
    matches!(tokio::time::timeout(Duration::from_secs(1), p.get_chain_id()).await, Ok(Ok(_)))
}
