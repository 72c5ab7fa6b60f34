//! aic on Ethereum (alloy).
//!
//! - `config`: which chain, token, treasury, price and confirmations a pool uses.
//! - `token`: the AIC ERC-20 (contracts/), its bindings, deployment and transfers.
//! - `escrow`: deposits for paid runs, settled by the pool with refunds (contracts/).
//! - `request`: the job request as EIP-712 typed data: hash, sign, recover.
//! - `siwe`: Sign-In with Ethereum (EIP-4361) messages.
//! - `verify`: the validate function's signature and payment checks.
//! - `settle`: the pool's settler: deposits settled once with what a run used.
//! - `wallet`: signers from a private key or an encrypted keystore.
//! - `follow`: a payment a wallet sent, followed to its receipt through speed-ups and cancellations.
//! - `devchain`: anvil with the token deployed and the dev accounts funded.

pub mod config;
pub mod devchain;
pub mod escrow;
pub mod follow;
pub mod request;
pub mod settle;
pub mod siwe;
pub mod token;
pub mod verify;
pub mod wallet;

pub use alloy::signers::local::PrivateKeySigner;
pub use config::ChainConfig;
pub use verify::{ChainPayments, Eip712Auth};

/// Converts between the wire address type and alloy's.
pub fn to_alloy(a: &aic_schemas::Address) -> alloy::primitives::Address {
    alloy::primitives::Address::from(*a.as_bytes())
}

pub fn from_alloy(a: alloy::primitives::Address) -> aic_schemas::Address {
    aic_schemas::Address::from_bytes(a.into_array())
}
