//! The manifest: what validate writes once a request is accepted and paid for.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::JobRequest;

/// The price of a job, in the token's smallest unit (decimal strings: values exceed 2^64).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Quote {
    /// The price the total was computed at: where the pool prices GPU models apart, the
    /// dearest the request allows (`model`).
    pub price_per_gpu_hour: String,
    pub gpu_hours: f64,
    pub total: String,
    /// The ERC-20 contract paid in; absent on a free pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The GPU model priced (of `gpu_prices`, or `other models`: the default price); absent
    /// where the pool has one price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The pool's prices per GPU-hour by model when quoted: what the run is charged by, each
    /// allocation at its GPUs' model's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpu_prices: BTreeMap<String, String>,
    /// The price of a model not in `gpu_prices`; absent: `price_per_gpu_hour`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_price_per_gpu_hour: Option<String>,
}

/// The payment claimed for this job (`pool/payments/<chain>/<tx>.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentClaim {
    pub chain_id: u64,
    pub tx: String,
    /// Amount transferred (or deposited), smallest unit.
    pub paid: String,
    /// Paid by deposit into the pool's escrow: what the job does not use goes back to its
    /// owner when the pool settles the run. `None`: a plain transfer (no refund).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escrow: Option<EscrowDeposit>,
}

/// A deposit held by the pool's escrow for one paid run of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EscrowDeposit {
    /// The escrow contract.
    pub contract: String,
    /// The run's deposit key (`keccak256(abi.encodePacked("aic-run", owner, job id, run))`),
    /// `0x` + 64 hex digits.
    pub run_key: String,
    /// 0 for the job's first run, then each resume.
    pub run: u32,
    /// When its depositor may reclaim the deposit (unix seconds, the escrow's word at
    /// validation): a run that could not end and settle before then is not started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
}

/// Hints for the scheduler.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Placement {
    /// A gateway (datacenter / node pool) to place in, if the request or pool names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// Written create-only to `users/<owner>/jobs/<job>/manifest.json` by validate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobManifest {
    pub version: u32,
    pub request: JobRequest,
    pub quote: Quote,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentClaim>,
    #[serde(default)]
    pub placement: Placement,
    pub validated_at: DateTime<Utc>,
    /// Which paid run this is: 0 for the job's first (`manifest.json`), then each resume
    /// (`runs/<run>/manifest.json`, whose `request` is the job's own with the run's hours and
    /// payment; the owner's signature for the run is its resume request's).
    #[serde(default, skip_serializing_if = "crate::status::is_zero")]
    pub run: u32,
}
