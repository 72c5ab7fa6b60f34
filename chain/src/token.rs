//! The AIC token: bindings, deployment from the committed artifact, transfers.

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::sol;
use alloy::sol_types::SolValue;

sol! {
    #[sol(rpc)]
    interface IAIC {
        event Transfer(address indexed from, address indexed to, uint256 value);
        function transfer(address to, uint256 value) external returns (bool);
        function balanceOf(address account) external view returns (uint256);
        function mint(address to, uint256 amount) external;
        function decimals() external view returns (uint8);
        function symbol() external view returns (string);
    }
}

/// `contracts/out/AIC.json`, compiled by `node contracts/build.js`.
pub const ARTIFACT: &str = include_str!("../../contracts/out/AIC.json");

/// The creation bytecode from the artifact.
pub fn bytecode() -> anyhow::Result<Bytes> {
    let v: serde_json::Value = serde_json::from_str(ARTIFACT)?;
    let hex = v["bytecode"].as_str().ok_or_else(|| anyhow::anyhow!("artifact without bytecode"))?;
    Ok(hex.parse()?)
}

/// Deploys the token with `owner` as its minter; returns its address.
pub async fn deploy<P: Provider>(provider: &P, owner: Address) -> anyhow::Result<Address> {
    let mut code = bytecode()?.to_vec();
    code.extend_from_slice(&owner.abi_encode());
    let tx = TransactionRequest::default().with_from(owner).with_deploy_code(code);
    let receipt = provider.send_transaction(tx).await?.get_receipt().await?;
    receipt.contract_address.ok_or_else(|| anyhow::anyhow!("deployment produced no contract"))
}

/// The gas to send a transaction with, from its estimate: an estimate is exact for the state
/// it was made on, and a storage slot another transaction changes before this one is mined
/// costs more (a balance written from zero: 20,000 gas instead of 2,900 — the escrow emptied
/// by a settlement just before a deposit into it). A deposit sent with the bare estimate ran
/// out of gas and reverted that way. Unused gas is not charged.
pub fn with_margin(estimate: u64) -> u64 {
    estimate + estimate / 4 + 30_000
}

/// Sends `amount` of the token from the provider's wallet to `to`; returns the tx hash
/// once mined.
pub async fn pay<P: Provider>(provider: &P, token: Address, to: Address, amount: U256) -> anyhow::Result<B256> {
    let c = IAIC::new(token, provider);
    let call = c.transfer(to, amount);
    let gas = call.estimate_gas().await?;
    let receipt = call.gas(with_margin(gas)).send().await?.get_receipt().await?;
    if !receipt.status() {
        anyhow::bail!("the payment transaction {} reverted (not enough AIC?)", receipt.transaction_hash);
    }
    Ok(receipt.transaction_hash)
}

pub async fn balance<P: Provider>(provider: &P, token: Address, who: Address) -> anyhow::Result<U256> {
    Ok(IAIC::new(token, provider).balanceOf(who).call().await?)
}
