//! The browser wallet, end to end: `aic login --browser` and a job request signed (and
//! paid) in the wallet page, in headless Chromium (Debian's) driven by playwright-core with
//! an injected EIP-1193 provider backed by anvil's unlocked accounts.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

struct Pool {
    home: tempfile::TempDir,
    dev: Child,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.dev.id() as i32), nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.dev.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.dev.kill();
    }
}

fn aic(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_aic"));
    c.current_dir(home)
        .env("AIC_HOME", home.join("aic"))
        .env("AIC_NO_BROWSER", "1")
        .env_remove("AIC_STORE")
        .env_remove("AIC_PRIVATE_KEY")
        .stdin(Stdio::null());
    c
}

fn start_pool() -> Pool {
    let home = tempfile::tempdir().unwrap();
    let dev = aic(home.path()).args(["dev", "up"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !home.path().join("aic/chain.json").exists() {
        assert!(Instant::now() < deadline, "dev up did not start its chain");
        std::thread::sleep(Duration::from_millis(100));
    }
    Pool { home, dev }
}

/// Starts `aic ARGS`, waits for the wallet page URL it prints, and lets the headless
/// browser act as account `account` there. Returns the finished command's output.
fn through_the_wallet_page(pool: &Pool, args: &[&str], account: &str, shot: &str) -> (std::process::Output, String) {
    let mut child = aic(pool.home.path()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let url = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "aic ended before printing the wallet URL: {seen}");
        seen.push_str(&line);
        if let Some(rest) = line.trim().strip_prefix("open ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let chain: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pool.home.path().join("aic/chain.json")).unwrap()).unwrap();
    let shot_path = repo().join("target").join(shot);
    let page = Command::new("node")
        .arg(repo().join("cli/tests/browser/wallet.cjs"))
        .args([&url, chain["rpc_url"].as_str().unwrap(), account, shot_path.to_str().unwrap()])
        .env("NODE_PATH", repo().join("contracts/node_modules"))
        .output()
        .unwrap();
    let page_text = format!("{}{}", String::from_utf8_lossy(&page.stdout), String::from_utf8_lossy(&page.stderr));
    assert!(page.status.success(), "the wallet page did not finish: {page_text}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let mut out = child.wait_with_output().unwrap();
    out.stderr = format!("{seen}{rest}").into_bytes();
    (out, page_text)
}

#[test]
fn login_and_a_paid_job_signed_in_the_browser_wallet() {
    let pool = start_pool();
    // Anvil's dev account 2, unlocked, plays the Metamask user.
    let account = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
    let (out, page) = through_the_wallet_page(&pool, &["login", "--browser"], account, "browser-login.png");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(page.contains(&format!("Signed in as {account}")), "{page}");
    let who = aic(pool.home.path()).arg("whoami").output().unwrap();
    let who = String::from_utf8_lossy(&who.stdout);
    assert!(who.contains(&format!("{account} (browser wallet)")), "{who}");
    assert!(who.contains("balance: 1000 AIC"), "{who}");

    let script = pool.home.path().join("hello.sh");
    std::fs::write(&script, "echo hello from the browser-signed job\n").unwrap();
    let (out, page) =
        through_the_wallet_page(&pool, &["run", "--detach", script.to_str().unwrap()], account, "browser-sign.png");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(page.contains("signed and paid"), "{page}");
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = aic(pool.home.path()).args(["status", &job, "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
        let hist = v["history"].as_array().cloned().unwrap_or_default();
        if hist.last().is_some_and(|r| r["state"] == "succeeded") {
            assert!(
                hist.iter().any(|r| r["reason"].as_str().is_some_and(|x| x.starts_with("paid 1 AIC in 0x"))),
                "{v}"
            );
            break;
        }
        assert!(!hist.last().is_some_and(|r| r["state"] == "rejected" || r["state"] == "failed"), "{v}");
        assert!(Instant::now() < deadline, "the job did not succeed: {v} {stderr}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = aic(pool.home.path()).args(["logs", &job]).output().unwrap();
    assert!(String::from_utf8_lossy(&logs.stdout).contains("hello from the browser-signed job"));
}
