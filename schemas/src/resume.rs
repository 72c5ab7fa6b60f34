//! A resume request: the owner asks that a training job which failed, was cancelled or ran
//! out of time start again under the same id from its synced outputs, as a new paid run.
//! Written by its owner to `users/<owner>/jobs/<job>/runs/<run>/request.json`, create-only.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{self, FieldError, ValidationErrors};
use crate::{Address, JobId, PaymentRef};

/// Current version of the resume document.
pub const RESUME_VERSION: u32 = 1;

/// The most runs a job may have (its first and its resumes).
pub const MAX_RUNS: u32 = 1000;

/// What the owner signs to resume a job: the job, which run this is, the hours paid for it.
/// Everything else (code, data, miners, GPUs, launcher, arguments) is the job's own request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    pub version: u32,
    pub owner: Address,
    pub job_id: JobId,
    /// 1 for the first resume, then 2.. (run 0 is the job's first run).
    pub run: u32,
    /// Upper bound on this run's wall time; the run is quoted from it.
    pub max_hours: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentRef>,
    pub created_at: DateTime<Utc>,
    /// Refused by validate after this time.
    pub expires_at: DateTime<Utc>,
    /// The owner's signature over the request (EIP-712), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl ResumeRequest {
    /// Checks every field, collecting all problems; `now` decides expiry (`None`: not checked).
    pub fn validate(&self, now: Option<DateTime<Utc>>) -> Result<(), ValidationErrors> {
        let mut errs = Vec::new();
        if self.version != RESUME_VERSION {
            errs.push(FieldError::new(
                "version",
                format!("unsupported version {} (this pool reads {RESUME_VERSION})", self.version),
            ));
        }
        validate::range_u32("run", "run", self.run, 1, MAX_RUNS, &mut errs);
        validate::hours("max_hours", self.max_hours, &mut errs);
        if let Some(p) = &self.payment {
            validate::tx_hash("payment.tx", &p.tx, &mut errs);
        }
        validate::window(self.created_at, self.expires_at, now, &mut errs);
        ValidationErrors::result(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ResumeRequest {
        let now = Utc::now();
        ResumeRequest {
            version: RESUME_VERSION,
            owner: "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap(),
            job_id: JobId::generate(),
            run: 1,
            max_hours: 0.5,
            payment: None,
            created_at: now,
            expires_at: now + chrono::Duration::minutes(10),
            signature: None,
        }
    }

    #[test]
    fn a_resume_names_a_later_run_and_its_hours() {
        assert!(sample().validate(Some(Utc::now())).is_ok());
        let r = ResumeRequest { run: 0, max_hours: 0.0, ..sample() };
        let e = r.validate(None).unwrap_err().to_string();
        assert!(e.contains("run") && e.contains("max_hours"), "{e}");
        let expired = ResumeRequest { expires_at: Utc::now() - chrono::Duration::minutes(1), ..sample() };
        assert!(expired.validate(Some(Utc::now())).unwrap_err().to_string().contains("expired"));
    }
}
