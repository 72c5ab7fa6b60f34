//! The job state machine and its records.
//!
//! A job's history is an append-only log `status/<seq>.json`; each record is claimed
//! create-only, so two writers racing for the same sequence number cannot both win. The
//! loser re-reads and re-decides.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// States of a job. `succeeded`, `failed`, `timed_out`, `cancelled` and `rejected` are
/// terminal. `timed_out`: the program ran for the hours paid for and was stopped (its
/// outputs up to then are kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Submitted,
    Paid,
    Scheduled,
    Running,
    Retrying,
    Succeeded,
    Failed,
    #[serde(rename = "timed_out")]
    TimedOut,
    Cancelled,
    Rejected,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::TimedOut | JobState::Cancelled | JobState::Rejected
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Submitted => "submitted",
            JobState::Paid => "paid",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::TimedOut => "timed_out",
            JobState::Cancelled => "cancelled",
            JobState::Rejected => "rejected",
        }
    }

    /// Whether the machine allows `self → to`. `from = None` is the empty log.
    pub fn allows(from: Option<JobState>, to: JobState) -> bool {
        use JobState::*;
        match from {
            None => to == Submitted,
            Some(f) if f.is_terminal() => false,
            Some(Submitted) => matches!(to, Paid | Rejected | Cancelled),
            Some(Paid) => matches!(to, Scheduled | Failed | Cancelled),
            Some(Scheduled) => matches!(to, Running | Failed | Cancelled),
            Some(Running) => matches!(to, Retrying | Succeeded | Failed | TimedOut | Cancelled),
            Some(Retrying) => matches!(to, Running | Failed | TimedOut | Cancelled),
            Some(_) => false,
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Measurements attached to a record (final states carry them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Wall time of the user's program, seconds (the seed's "execution time").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_seconds: Option<f64>,
    /// GPU slots × seconds held, summed over allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_seconds: Option<f64>,
    /// The allocation the record is about, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc: Option<u32>,
    /// Where the allocations were placed (miner names), for `scheduled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<String>,
    /// Last lines of the failing program's output, for `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// One transition of a job, stored at `status/<seq>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusRecord {
    pub seq: u64,
    pub state: JobState,
    pub at: DateTime<Utc>,
    /// Who wrote it: `validate`, `dispatch`, `worker`, `scheduler`, `cli`.
    pub by: String,
    /// Human-readable reason; always present for rejected and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub detail: StatusDetail,
    /// The paid run the record belongs to: 0 for the job's first, then one more for each
    /// `aic resume`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u32,
}

pub(crate) fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// What one allocation reports when its program ends, at `allocs/<index>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AllocResult {
    pub alloc: u32,
    pub miner: String,
    pub exit_code: Option<i32>,
    /// Set when the program was killed by a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub wall_seconds: f64,
    pub gpu_seconds: f64,
    pub finished_at: DateTime<Utc>,
}

/// How people count runs: "run 1" is the first (`StatusRecord::run` counts from 0).
pub fn shown_run(run: u32) -> u32 {
    run + 1
}

#[cfg(test)]
mod tests {
    use super::JobState::*;
    use super::*;

    #[test]
    fn the_state_machine_of_the_design() {
        assert!(JobState::allows(None, Submitted));
        assert!(!JobState::allows(None, Paid));
        assert!(JobState::allows(Some(Submitted), Rejected));
        assert!(!JobState::allows(Some(Paid), Rejected));
        assert!(JobState::allows(Some(Running), Retrying));
        assert!(JobState::allows(Some(Retrying), Running));
        assert!(JobState::allows(Some(Running), TimedOut));
        assert!(!JobState::allows(Some(Paid), TimedOut), "only a program that ran can run out of time");
        assert_eq!(serde_json::to_string(&TimedOut).unwrap(), "\"timed_out\"");
        for t in [Succeeded, Failed, TimedOut, Cancelled, Rejected] {
            for to in [Submitted, Paid, Running, Failed, Cancelled] {
                assert!(!JobState::allows(Some(t), to), "{t} must be final");
            }
        }
    }
}
