//! Sign-In with Ethereum (EIP-4361): the message a wallet signs to log in.
//!
//! # Format
//! ```text
//! localhost wants you to sign in with your Ethereum account:
//! 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266
//!
//! Sign in to the aic pool.
//!
//! URI: http://localhost/
//! Version: 1
//! Chain ID: 31337
//! Nonce: 4f1a0c7e9b2d
//! Issued At: 2026-11-25T12:00:00Z
//! Expiration Time: 2026-11-26T12:00:00Z
//! ```

use alloy::primitives::{Address, Signature};
use chrono::{DateTime, SecondsFormat, Utc};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiweMessage {
    pub domain: String,
    pub address: Address,
    pub statement: String,
    pub uri: String,
    pub chain_id: u64,
    pub nonce: String,
    pub issued_at: DateTime<Utc>,
    pub expiration: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiweError {
    #[error("not a Sign-In with Ethereum message: {0}")]
    Malformed(String),
    #[error("the login was signed by {signer}, not by {address}")]
    WrongSigner { signer: Address, address: Address },
    #[error("the login expired at {0}; log in again")]
    Expired(DateTime<Utc>),
    #[error("the login is for chain {got}; this pool is on chain {want}")]
    WrongChain { got: u64, want: u64 },
    #[error("the login is for {got}; this pool is {want}")]
    WrongDomain { got: String, want: String },
}

impl SiweMessage {
    pub fn new(domain: &str, uri: &str, address: Address, chain_id: u64, valid_for: chrono::Duration) -> Self {
        let now = Utc::now();
        let nonce = ulid::Ulid::new().to_string();
        SiweMessage {
            domain: domain.into(),
            address,
            statement: "Sign in to the aic pool.".into(),
            uri: uri.into(),
            chain_id,
            nonce,
            issued_at: now,
            expiration: now + valid_for,
        }
    }

    pub fn parse(text: &str) -> Result<Self, SiweError> {
        let bad = |why: &str| SiweError::Malformed(why.into());
        let lines: Vec<&str> = text.lines().collect();
        let domain = lines
            .first()
            .and_then(|l| l.strip_suffix(" wants you to sign in with your Ethereum account:"))
            .ok_or_else(|| bad("first line"))?;
        let address: Address = lines.get(1).ok_or_else(|| bad("address"))?.parse().map_err(|_| bad("address"))?;
        let statement = lines.get(3).ok_or_else(|| bad("statement"))?.to_string();
        let field = |name: &str| -> Result<&str, SiweError> {
            lines.iter().find_map(|l| l.strip_prefix(&format!("{name}: "))).ok_or_else(|| bad(name))
        };
        let time = |name: &str| -> Result<DateTime<Utc>, SiweError> {
            DateTime::parse_from_rfc3339(field(name)?).map(|t| t.with_timezone(&Utc)).map_err(|_| bad(name))
        };
        if field("Version")? != "1" {
            return Err(bad("Version"));
        }
        Ok(SiweMessage {
            domain: domain.into(),
            address,
            statement,
            uri: field("URI")?.into(),
            chain_id: field("Chain ID")?.parse().map_err(|_| bad("Chain ID"))?,
            nonce: field("Nonce")?.into(),
            issued_at: time("Issued At")?,
            expiration: time("Expiration Time")?,
        })
    }

    /// Checks an EIP-191 signature of this message's text by its address, its expiry,
    /// chain and domain.
    pub fn verify(&self, signature: &str, domain: &str, chain_id: u64, now: DateTime<Utc>) -> Result<(), SiweError> {
        let sig: Signature = signature.parse().map_err(|_| SiweError::Malformed("signature".into()))?;
        let signer = sig
            .recover_address_from_msg(self.to_string().as_bytes())
            .map_err(|_| SiweError::Malformed("signature".into()))?;
        if signer != self.address {
            return Err(SiweError::WrongSigner { signer, address: self.address });
        }
        if self.expiration < now {
            return Err(SiweError::Expired(self.expiration));
        }
        if self.chain_id != chain_id {
            return Err(SiweError::WrongChain { got: self.chain_id, want: chain_id });
        }
        if self.domain != domain {
            return Err(SiweError::WrongDomain { got: self.domain.clone(), want: domain.into() });
        }
        Ok(())
    }
}

impl std::fmt::Display for SiweMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} wants you to sign in with your Ethereum account:\n{}\n\n{}\n\nURI: {}\nVersion: 1\nChain ID: {}\nNonce: {}\nIssued At: {}\nExpiration Time: {}",
            self.domain,
            self.address.to_checksum(None),
            self.statement,
            self.uri,
            self.chain_id,
            self.nonce,
            self.issued_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            self.expiration.to_rfc3339_opts(SecondsFormat::Secs, true),
        )
    }
}
