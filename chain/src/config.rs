//! A pool's chain settings: `chain.json` in the pool's home (written by the dev chain), with
//! environment overrides for a real pool.
//!
//! | variable | field |
//! |---|---|
//! | `AIC_RPC_URL` | `rpc_url` |
//! | `AIC_CHAIN_ID` | `chain_id` |
//! | `AIC_TOKEN` | `token` (the AIC contract) |
//! | `AIC_TREASURY` | `treasury` |
//! | `AIC_PRICE` | `price_per_gpu_hour`, in AIC (decimal, e.g. `0.5`): of a model not in `gpu_prices` |
//! | `AIC_GPU_PRICES` | `gpu_prices`: `MODEL=AIC` pairs, comma separated (`A100=3,T4=0.4`) |
//! | `AIC_CONFIRMATIONS` | `confirmations` |
//! | `AIC_ESCROW` | `escrow` (the AICEscrow contract: jobs are paid by deposit, unused time refunded) |
//! | `AIC_ACCEPT_TRANSFERS` | `transfers`: `0` takes deposits into the escrow only; default `1` |
//! | `AIC_SETTLER_KEY` | the settler's private key (hex), a pool secret: it settles deposits; never in `chain.json`, never given to a worker |

use std::path::Path;

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainConfig {
    pub rpc_url: String,
    pub chain_id: u64,
    pub token: Address,
    pub treasury: Address,
    /// Smallest units (AIC has 18 decimals) per GPU-hour, decimal string.
    pub price_per_gpu_hour: String,
    /// Prices per GPU-hour by GPU model (smallest units, decimal strings), each model matched
    /// as users' `--gpu-type` is; a model not here costs `price_per_gpu_hour`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub gpu_prices: std::collections::BTreeMap<String, String>,
    /// Blocks a payment needs, counting its own (1 = mined).
    pub confirmations: u64,
    /// The escrow jobs are paid into (`AICEscrow`): the pool settles each paid run with what
    /// it used and the rest goes back. Without one, payments are plain transfers to the
    /// treasury (no refunds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escrow: Option<Address>,
    /// Whether plain transfers to the treasury also pay (no refunds); with an escrow, a pool
    /// may take deposits only (`AIC_ACCEPT_TRANSFERS=0`).
    #[serde(default = "yes")]
    pub transfers: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}={1:?} is not valid: {2}")]
    Bad(&'static str, String, String),
    #[error("cannot read {0}: {1}")]
    Read(String, String),
}

impl ChainConfig {
    pub fn price(&self) -> u128 {
        self.price_per_gpu_hour.parse().unwrap_or(0)
    }

    pub fn pricing(&self) -> aic_core::pricing::Pricing {
        aic_core::pricing::Pricing {
            price_per_gpu_hour: self.price(),
            gpu_prices: self.gpu_prices.iter().map(|(m, p)| (m.clone(), p.parse().unwrap_or(0))).collect(),
            token: Some(self.token.to_string()),
        }
    }

    /// A pool that charges nothing (`AIC_FREE_POOL=1`): requests are still signed by their
    /// owners for `chain_id`; nothing is paid and no RPC is needed.
    pub fn free(chain_id: u64) -> ChainConfig {
        ChainConfig {
            rpc_url: String::new(),
            chain_id,
            token: Address::ZERO,
            treasury: Address::ZERO,
            price_per_gpu_hour: "0".into(),
            gpu_prices: Default::default(),
            confirmations: 0,
            escrow: None,
            transfers: true,
        }
    }

    /// Whether jobs here cost nothing (so nothing is paid or quoted).
    pub fn is_free(&self) -> bool {
        self.pricing().is_free()
    }

    /// Reads `path`, then applies the environment's overrides.
    pub fn load(path: &Path) -> Result<Option<ChainConfig>, ConfigError> {
        let base: Option<ChainConfig> = match std::fs::read(path) {
            Ok(b) => Some(
                serde_json::from_slice(&b).map_err(|e| ConfigError::Read(path.display().to_string(), e.to_string()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ConfigError::Read(path.display().to_string(), e.to_string())),
        };
        let env = |k: &'static str| std::env::var(k).ok().filter(|v| !v.is_empty()).map(|v| (k, v));
        let Some(mut c) = base.or_else(|| {
            // Without a file, the environment must name at least the RPC and the token.
            let (rpc, token, treasury) = (env("AIC_RPC_URL")?, env("AIC_TOKEN")?, env("AIC_TREASURY")?);
            Some(ChainConfig {
                rpc_url: rpc.1,
                chain_id: 1,
                token: token.1.parse().ok()?,
                treasury: treasury.1.parse().ok()?,
                price_per_gpu_hour: "0".into(),
                gpu_prices: Default::default(),
                confirmations: 12,
                escrow: None,
                transfers: true,
            })
        }) else {
            return Ok(None);
        };
        if let Some((_, v)) = env("AIC_RPC_URL") {
            c.rpc_url = v;
        }
        if let Some((k, v)) = env("AIC_CHAIN_ID") {
            c.chain_id = v.parse().map_err(|e: std::num::ParseIntError| ConfigError::Bad(k, v, e.to_string()))?;
        }
        if let Some((k, v)) = env("AIC_TOKEN") {
            c.token = v.parse().map_err(|e: alloy::hex::FromHexError| ConfigError::Bad(k, v.clone(), e.to_string()))?;
        }
        if let Some((k, v)) = env("AIC_TREASURY") {
            c.treasury =
                v.parse().map_err(|e: alloy::hex::FromHexError| ConfigError::Bad(k, v.clone(), e.to_string()))?;
        }
        if let Some((k, v)) = env("AIC_PRICE") {
            c.price_per_gpu_hour = parse_aic(&v).map_err(|e| ConfigError::Bad(k, v, e))?.to_string();
        }
        if let Some((k, v)) = env("AIC_GPU_PRICES") {
            c.gpu_prices = parse_gpu_prices(&v).map_err(|e| ConfigError::Bad(k, v, e))?;
        }
        // Prices from the file are amounts of the smallest unit; one that is not is refused
        // (it would read as free).
        for (model, price) in &c.gpu_prices {
            if price.parse::<u128>().is_err() {
                return Err(ConfigError::Read(
                    path.display().to_string(),
                    format!("gpu_prices.{model} = {price:?} is not an amount of the smallest unit (a whole number)"),
                ));
            }
        }
        if let Some((k, v)) = env("AIC_ESCROW") {
            c.escrow =
                Some(v.parse().map_err(|e: alloy::hex::FromHexError| ConfigError::Bad(k, v.clone(), e.to_string()))?);
        }
        if let Some((k, v)) = env("AIC_ACCEPT_TRANSFERS") {
            c.transfers = match v.as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                _ => return Err(ConfigError::Bad(k, v, "use 1 or 0".into())),
            };
        }
        if let Some((k, v)) = env("AIC_CONFIRMATIONS") {
            c.confirmations = v.parse().map_err(|e: std::num::ParseIntError| ConfigError::Bad(k, v, e.to_string()))?;
        }
        Ok(Some(c))
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }
}

/// Parses a decimal AIC amount (`1.5`) into smallest units.
pub fn parse_aic(s: &str) -> Result<u128, String> {
    let s = s.trim().trim_end_matches("AIC").trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 18 || whole.is_empty() && frac.is_empty() {
        return Err("use a decimal number of AIC with at most 18 decimals".into());
    }
    let w: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| "not a number".to_string())? };
    let f: u128 =
        if frac.is_empty() { 0 } else { format!("{frac:0<18}").parse().map_err(|_| "not a number".to_string())? };
    w.checked_mul(10u128.pow(18)).and_then(|x| x.checked_add(f)).ok_or_else(|| "too large".into())
}

/// `A100=3,T4=0.4`: a price in AIC per GPU-hour for each model, as smallest units.
pub fn parse_gpu_prices(s: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (model, price) =
                pair.split_once('=').ok_or_else(|| format!("{pair:?} is not MODEL=AIC (e.g. A100=3)"))?;
            let model = model.trim();
            if !aic_schemas::validate::is_gpu_model(model) {
                return Err(format!("{model:?} is not a GPU model: letters, digits, spaces, '-', '_' and '.'"));
            }
            let price = parse_aic(price).map_err(|e| format!("{model}: {e}"))?;
            Ok((model.to_string(), price.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_prices_are_model_equals_aic_pairs() {
        let p = parse_gpu_prices("A100=3, RTX 4090 = 0.5").unwrap();
        assert_eq!(p["A100"], (3 * 10u128.pow(18)).to_string());
        assert_eq!(p["RTX 4090"], (5 * 10u128.pow(17)).to_string());
        assert!(parse_gpu_prices("A100").unwrap_err().contains("MODEL=AIC"));
        assert!(parse_gpu_prices("A;B=1").unwrap_err().contains("not a GPU model"));
        assert!(parse_gpu_prices("A100=x").unwrap_err().contains("A100"));
    }

    #[test]
    fn aic_amounts() {
        assert_eq!(parse_aic("1.5").unwrap(), 15 * 10u128.pow(17));
        assert_eq!(parse_aic("0.000000000000000001").unwrap(), 1);
        assert_eq!(parse_aic("2 AIC").unwrap(), 2 * 10u128.pow(18));
        assert!(parse_aic("x").is_err());
        assert!(parse_aic("0.0000000000000000001").is_err());
    }
}
