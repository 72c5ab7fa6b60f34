//! `aic exec JOB [--alloc I | --all] -- CMD ARGS…`: a command run inside a running job's
//! allocation, relayed by the pool's gateway (its workers pick commands up with an outbound
//! long-poll, so miners behind NAT are reached): stdout and stderr come back separately, and
//! `aic` exits with the command's exit code.

use std::io::{IsTerminal, Read, Write};

use anyhow::{anyhow, bail};
use base64::Engine;

use crate::env::Env;

/// Runs `command` in allocation `alloc` (or every one); the exit code to exit with.
pub async fn exec(env: &Env, job: &str, alloc: u32, all: bool, command: Vec<String>) -> anyhow::Result<i32> {
    let Some(gw) = env.gateway_client() else {
        bail!(
            "aic exec reaches a job through a pool's gateway (AIC_GATEWAY); on the embedded pool the job's folders are \
             under $AIC_HOME/work/<miner>/<job>-<alloc>/"
        );
    };
    let job = crate::jobs::resolve(env, job).await?;
    let miners = match env
        .store
        .get_json::<aic_schemas::JobManifest>(&job.manifest(), aic_schemas::validate::MAX_DOC_BYTES)
        .await?
    {
        Some(m) => m.request.miners,
        // Through the gateway only the caller's own jobs are visible.
        None => bail!("no job {} of yours that the pool accepted; see `aic jobs`", job.job),
    };
    // What the command reads: this process's stdin, when it is not a terminal.
    let mut stdin = Vec::new();
    if !std::io::stdin().is_terminal() {
        std::io::stdin().take(1 << 20).read_to_end(&mut stdin)?;
    }
    let stdin = base64::engine::general_purpose::STANDARD.encode(stdin);
    let allocs: Vec<u32> = if all { (0..miners).collect() } else { vec![alloc] };
    let mut sessions = Vec::new();
    for i in &allocs {
        let body = serde_json::json!({ "alloc": i, "argv": command, "stdin": stdin });
        let v = gw.call(reqwest::Method::POST, &format!("jobs/{}/exec", job.job), Some(body)).await?;
        let s = v["session"].as_str().ok_or_else(|| anyhow!("the gateway started no session"))?.to_string();
        sessions.push((*i, s));
    }
    let reads = sessions.into_iter().map(|(i, s)| {
        let gw = &gw;
        async move { follow(gw, &s, all.then_some(i)).await }
    });
    let codes = futures::future::try_join_all(reads).await?;
    Ok(codes.into_iter().find(|c| *c != 0).unwrap_or(0))
}

/// Prints a session's output as it comes; its exit code.
async fn follow(gw: &crate::remote::Gateway, session: &str, tag: Option<u32>) -> anyhow::Result<i32> {
    let mut next = 0u64;
    let (mut out_line, mut err_line) = (Vec::new(), Vec::new());
    loop {
        let v = gw.call(reqwest::Method::GET, &format!("exec/{session}?after={next}"), None).await?;
        for f in v["frames"].as_array().into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD.decode(f["d"].as_str().unwrap_or(""))?;
            let stderr = f["s"] == "e";
            match tag {
                None if stderr => std::io::stderr().write_all(&bytes)?,
                None => std::io::stdout().write_all(&bytes)?,
                Some(i) => {
                    let buf = if stderr { &mut err_line } else { &mut out_line };
                    buf.extend_from_slice(&bytes);
                    while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        let text = format!("[alloc {i}] {}", String::from_utf8_lossy(&line));
                        if stderr { eprint!("{text}") } else { print!("{text}") }
                    }
                }
            }
        }
        std::io::stdout().flush()?;
        next = v["next"].as_u64().unwrap_or(next);
        if let Some(code) = v["exit"].as_i64() {
            if let Some(i) = tag {
                for (buf, stderr) in [(&out_line, false), (&err_line, true)] {
                    if !buf.is_empty() {
                        let text = format!("[alloc {i}] {}\n", String::from_utf8_lossy(buf));
                        if stderr { eprint!("{text}") } else { print!("{text}") }
                    }
                }
            }
            return Ok(code as i32);
        }
    }
}
