//! Launchers: how the user's program is started, one file each.

pub mod command;

use std::collections::BTreeMap;
use std::path::PathBuf;

use aic_schemas::{JobRequest, Launcher};

/// What every launcher knows about the allocation it starts.
pub struct LaunchCtx<'a> {
    pub request: &'a JobRequest,
    pub code_dir: PathBuf,
    /// Variables the pool sets for the program (AIC_*, CUDA_VISIBLE_DEVICES).
    pub env: BTreeMap<String, String>,
}

/// Builds the program's command line. `Err` is the reason the job cannot start, for the
/// job's status.
pub fn build(ctx: &LaunchCtx<'_>) -> Result<tokio::process::Command, String> {
    match ctx.request.launcher {
        Launcher::Command => command::build(ctx),
        other => {
            Err(format!("launcher {other:?} is not installed on this pool yet; use launcher `command`").to_lowercase())
        }
    }
}
