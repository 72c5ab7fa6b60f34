//! How a paid run of a job was settled: `pool/settlements/<owner>/<job>/<run>.json`, written
//! once by the settle function when the job has ended and its allocations have stopped.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the money of one paid run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SettlementKind {
    /// The escrow paid the treasury what was used and refunded the rest.
    Settled,
    /// The owner took the whole deposit back (the pool had not settled by the deadline).
    Reclaimed,
    /// A plain transfer to the treasury: nothing to refund.
    Transfer,
}

/// What GPUs of one priced model cost a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelCharge {
    /// The model as the pool prices it, or `other models` (the default price).
    pub model: String,
    pub gpu_seconds: u64,
    /// Smallest units per GPU-hour.
    pub price_per_gpu_hour: String,
    /// Smallest units.
    pub cost: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Settlement {
    /// 0 for the job's first run, then each resume.
    pub run: u32,
    pub kind: SettlementKind,
    pub chain_id: u64,
    /// What was paid (deposited or transferred), smallest unit.
    pub paid: String,
    /// GPU-seconds the pool measured for the run (rounded up to whole seconds).
    pub gpu_seconds: u64,
    /// What the run was charged: min(paid, GPU-seconds × the quoted price), smallest unit.
    pub charged: String,
    /// Where the pool prices GPU models apart: the run's GPU-seconds and their cost by the
    /// model (price) they ran at, before the cap at what was paid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_model: Vec<ModelCharge>,
    /// What went back to the owner, smallest unit.
    pub refunded: String,
    /// The settling (or reclaiming) transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<String>,
    pub at: DateTime<Utc>,
}
