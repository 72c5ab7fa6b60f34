//! `aic exec JOB [--alloc I | --all] -- CMD ARGS…`: a command run inside a running job's
//! allocation, relayed by the pool's gateway (its workers pick commands up with an outbound
//! long-poll, so miners behind NAT are reached): stdout and stderr come back separately, and
//! `aic` exits with the command's exit code.

use std::io::{IsTerminal, Read, Write};

use anyhow::{anyhow, bail};
use base64::Engine;

use crate::env::Env;

/// The job (resolved), its allocation count, and the gateway: what both commands need.
async fn target(env: &Env, job: &str) -> anyhow::Result<(crate::remote::Gateway, aic_core::JobKey, u32)> {
    let gw = match env.gateway_client() {
        Some(gw) => gw,
        None => env.embedded_gateway()?,
    };
    let job = env.resolve(job).await?;
    match env.store.get_json::<aic_schemas::JobManifest>(&job.manifest(), aic_schemas::validate::MAX_DOC_BYTES).await? {
        Some(m) => Ok((gw, job, m.request.miners)),
        // Through the gateway only the caller's own jobs are visible.
        None => bail!("no job {} of yours that the pool accepted; see `aic jobs`", job.job),
    }
}

/// The local terminal in raw mode (keys go through as typed, Ctrl-C included) until dropped.
struct Raw(Option<nix::sys::termios::Termios>);

impl Raw {
    fn enter() -> Raw {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else { return Raw(None) };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        Raw(Some(saved))
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

/// The local terminal's size, (rows, cols).
fn size() -> (u16, u16) {
    use std::os::fd::AsRawFd;
    let mut ws = nix::pty::Winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which lives across the call.
    let ok = unsafe { nix::libc::ioctl(std::io::stdout().as_raw_fd(), nix::libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 { (ws.ws_row, ws.ws_col) } else { (24, 80) }
}

/// `aic shell JOB [--alloc I]`: an interactive shell in the allocation on a terminal of its
/// own: keys (Ctrl-C too) go to it, its size follows this terminal's, and this terminal is
/// restored when the shell or the job ends. Its exit code.
pub async fn shell(env: &Env, job: &str, alloc: u32) -> anyhow::Result<i32> {
    use tokio::io::AsyncReadExt;
    let (gw, job, _) = target(env, job).await?;
    let (rows, cols) = size();
    let body = serde_json::json!({ "alloc": alloc, "argv": [], "tty": { "rows": rows, "cols": cols } });
    let v = gw.call(reqwest::Method::POST, &format!("jobs/{}/exec", job.job), Some(body)).await?;
    let session = v["session"].as_str().ok_or_else(|| anyhow!("the gateway started no session"))?.to_string();
    let raw = Raw::enter();
    let keys = {
        let (gw, session) = (gw.clone(), session.clone());
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
            let mut buf = vec![0u8; 4096];
            loop {
                let frame = tokio::select! {
                    n = stdin.read(&mut buf) => match n {
                        Ok(0) | Err(_) => return,
                        Ok(n) => serde_json::json!({ "d": base64::engine::general_purpose::STANDARD.encode(&buf[..n]) }),
                    },
                    Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                        let (rows, cols) = size();
                        serde_json::json!({ "rows": rows, "cols": cols })
                    }
                };
                let body = serde_json::json!({ "frames": [frame] });
                if gw.call(reqwest::Method::POST, &format!("exec/{session}/input"), Some(body)).await.is_err() {
                    return;
                }
            }
        })
    };
    let code = follow(&gw, &session, None).await;
    keys.abort();
    drop(raw);
    code
}

/// Runs `command` in allocation `alloc` with this process's stdin streamed to it as it comes
/// (`aic exec -i`, `aic ssh-proxy`); its exit code.
async fn streamed(env: &Env, job: &str, alloc: u32, command: Vec<String>) -> anyhow::Result<i32> {
    use tokio::io::AsyncReadExt;
    let (gw, job, _) = target(env, job).await?;
    let body = serde_json::json!({ "alloc": alloc, "argv": command, "stream": true });
    let v = gw.call(reqwest::Method::POST, &format!("jobs/{}/exec", job.job), Some(body)).await?;
    let session = v["session"].as_str().ok_or_else(|| anyhow!("the gateway started no session"))?.to_string();
    let input = {
        let (gw, session) = (gw.clone(), session.clone());
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            // 32 KiB a frame: in base 64 (43.7 KiB) it fits the gateway's 64 KiB body limit
            // (a pipe's 64 KiB read did not, and the rest of the input was lost).
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let frame = match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => serde_json::json!({ "eof": true }),
                    Ok(n) => serde_json::json!({ "d": base64::engine::general_purpose::STANDARD.encode(&buf[..n]) }),
                };
                let eof = frame["eof"] == true;
                let body = serde_json::json!({ "frames": [frame] });
                if gw.call(reqwest::Method::POST, &format!("exec/{session}/input"), Some(body)).await.is_err() || eof {
                    return;
                }
            }
        })
    };
    let code = follow(&gw, &session, None).await;
    input.abort();
    code
}

/// `aic ssh-proxy JOB [--alloc I] --key PUB`: an `sshd -i` in the allocation, for this key
/// only, with a host key made for the session, spoken to over stdin and stdout: what
/// `ssh`'s ProxyCommand needs. The allocation must have sshd (the worker image does).
pub async fn ssh_proxy(env: &Env, job: &str, alloc: u32, key: &std::path::Path) -> anyhow::Result<i32> {
    let public =
        std::fs::read_to_string(key).map_err(|e| anyhow!("cannot read the public key {}: {e}", key.display()))?;
    let public = public.trim();
    if !public.starts_with("ssh-") && !public.starts_with("ecdsa-") {
        bail!("{} is not an OpenSSH public key (ssh-ed25519 …)", key.display());
    }
    let script = format!(
        "d=$(mktemp -d) && ssh-keygen -q -t ed25519 -N '' -f \"$d/host\" && printf '%s\\n' '{public}' > \"$d/keys\" && \
         exec \"${{AIC_SSHD:-/usr/sbin/sshd}}\" -i -f /dev/null -o HostKey=\"$d/host\" -o AuthorizedKeysFile=\"$d/keys\" \
         -o StrictModes=no -o PidFile=none -o UsePAM=no -o PasswordAuthentication=no -o LogLevel=ERROR \
         -o 'Subsystem=sftp internal-sftp'"
    );
    streamed(env, job, alloc, vec!["sh".into(), "-c".into(), script]).await
}

/// `aic ssh-config JOB [--alloc I] [--key PRIVATE]`: an OpenSSH `Host` entry through
/// `aic ssh-proxy`, so that `ssh`, `scp` and editors' remote modes reach the allocation with
/// the user's own key (never a pool key).
pub async fn ssh_config(env: &Env, job: &str, alloc: u32, key: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let (gw, job, _) = target(env, job).await?;
    let key = match key {
        Some(k) => k,
        None => {
            let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_default();
            ["id_ed25519", "id_ecdsa", "id_rsa"]
                .iter()
                .map(|n| home.join(".ssh").join(n))
                .find(|p| p.exists())
                .ok_or_else(|| anyhow!("no key in ~/.ssh: make one with `ssh-keygen -t ed25519`, or pass --key"))?
        }
    };
    let public = std::path::PathBuf::from(format!("{}.pub", key.display()));
    if !public.exists() {
        bail!("no public key beside {} ({} is missing)", key.display(), public.display());
    }
    // Whom sshd in the allocation can log in as: the worker's user.
    let body = serde_json::json!({ "alloc": alloc, "argv": ["id", "-un"] });
    let v = gw.call(reqwest::Method::POST, &format!("jobs/{}/exec", job.job), Some(body)).await?;
    let session = v["session"].as_str().ok_or_else(|| anyhow!("the gateway started no session"))?.to_string();
    let user = ssh_user(collect(&gw, &session).await?.trim())?;
    let me = std::env::current_exe()?;
    let mut env_vars = String::new();
    for k in ["AIC_HOME", "AIC_GATEWAY"] {
        if let Ok(v) = std::env::var(k) {
            env_vars.push_str(&format!("{k}={} ", shell_quote(&v)));
        }
    }
    println!("Host aic-{}-{alloc}", job.job);
    println!("  User {user}");
    println!("  IdentityFile {}", key.display());
    println!("  IdentitiesOnly yes");
    println!(
        "  ProxyCommand env {env_vars}{} ssh-proxy {} --alloc {alloc} --key {}",
        shell_quote(&me.display().to_string()),
        job.job,
        shell_quote(&public.display().to_string())
    );
    println!("  # the allocation's host key is made for each session");
    println!("  StrictHostKeyChecking no");
    println!("  UserKnownHostsFile /dev/null");
    println!("  LogLevel ERROR");
    Ok(())
}

/// The allocation's user name as an ssh config line may hold it: what the allocation answers
/// is its program's to choose (an `id` of its own on PATH), and a name with a newline or a
/// space would add lines of its choosing (a `ProxyCommand`) to the user's ssh config. POSIX's
/// portable user names only: letters, digits, `.`, `_`, `-`, not starting with `-`, at most
/// 32 characters; anything else is refused with the reason.
fn ssh_user(name: &str) -> anyhow::Result<String> {
    let portable = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !portable {
        bail!(
            "the allocation answered {name:?} for its user name, which an ssh config cannot hold safely; nothing was written"
        );
    }
    Ok(name.to_string())
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A session's whole stdout, once it has ended.
async fn collect(gw: &crate::remote::Gateway, session: &str) -> anyhow::Result<String> {
    let mut next = 0u64;
    let mut out = Vec::new();
    loop {
        let v = gw.call(reqwest::Method::GET, &format!("exec/{session}?after={next}"), None).await?;
        for f in v["frames"].as_array().into_iter().flatten().filter(|f| f["s"] == "o") {
            out.extend(base64::engine::general_purpose::STANDARD.decode(f["d"].as_str().unwrap_or(""))?);
        }
        next = v["next"].as_u64().unwrap_or(next);
        if v["exit"].is_i64() {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
    }
}

/// Runs `command` in allocation `alloc` (or every one); the exit code to exit with.
pub async fn exec(
    env: &Env,
    job: &str,
    alloc: u32,
    all: bool,
    interactive: bool,
    command: Vec<String>,
) -> anyhow::Result<i32> {
    if interactive {
        if all {
            bail!("-i streams your input to one allocation; leave out --all");
        }
        return streamed(env, job, alloc, command).await;
    }
    let (gw, job, miners) = target(env, job).await?;
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

#[cfg(test)]
mod tests {
    use super::ssh_user;

    /// A job's program answers the user-name question itself: nothing it says may add lines
    /// (a `ProxyCommand` that runs on the user's machine) to the user's ssh config.
    #[test]
    fn a_user_name_that_would_add_ssh_config_lines_is_refused() {
        assert_eq!(ssh_user("root").unwrap(), "root");
        assert_eq!(ssh_user("aic-job_1.x").unwrap(), "aic-job_1.x");
        for bad in ["root\n  ProxyCommand touch /tmp/owned", "a b", "-oProxyCommand=x", "", "x\"y", &"u".repeat(33)] {
            assert!(ssh_user(bad).is_err(), "{bad:?}");
        }
    }
}
