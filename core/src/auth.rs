//! Who signed a request: the `Authenticator` trait (EIP-712 recovery lives in aic-chain).

use aic_schemas::{JobRequest, ResumeRequest};

/// Checks that a request was signed by its owner. `Err` is the reason for the job's status.
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, req: &JobRequest) -> Result<(), String>;
    /// The same for a resume request (`aic resume`): signed by the job's owner.
    fn authenticate_resume(&self, req: &ResumeRequest) -> Result<(), String>;
}
