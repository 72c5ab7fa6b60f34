//! The `command` launcher: the entrypoint run as a program in the code folder.
//!
//! `train.py ARGS` runs as `$AIC_PYTHON train.py ARGS` (default `python3`), `run.sh ARGS`
//! as `bash run.sh ARGS`, anything else as `./entrypoint ARGS`.

use super::{LaunchCtx, program};

pub fn build(ctx: &LaunchCtx<'_>) -> Result<tokio::process::Command, String> {
    let entry = &ctx.request.entrypoint;
    let path = ctx.code_dir.join(entry);
    if !path.is_file() {
        return Err(format!("entrypoint {entry} is not in the job's code; upload it with the job"));
    }
    if !entry.ends_with(".py") && !entry.ends_with(".sh") {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
    }
    let argv = program(entry);
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .args(&ctx.request.args)
        .current_dir(&ctx.code_dir)
        .envs(&ctx.request.env)
        .envs(&ctx.env)
        .env("PYTHONUNBUFFERED", "1");
    Ok(cmd)
}
