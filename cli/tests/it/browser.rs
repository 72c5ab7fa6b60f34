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

/// What the wallet page and the wallet did (printed by `wallet.cjs`).
#[derive(serde::Deserialize, Debug)]
struct Page {
    status: String,
    done: bool,
    errors: Vec<String>,
    waits: Vec<String>,
    wallet: serde_json::Value,
}

/// Starts `aic ARGS`, waits for the wallet page URL it prints, and lets the headless
/// browser play the wallet user as `scenario` says (see `browser/wallet.cjs`). Returns the
/// finished command's output and what happened on the page.
fn through_the_wallet_page(
    pool: &Pool,
    args: &[&str],
    scenario: serde_json::Value,
    shot: &str,
) -> (std::process::Output, Page) {
    through_the_wallet_page_with(pool, args, &[], scenario, shot)
}

/// The same, with extra environment for `aic`.
fn through_the_wallet_page_with(
    pool: &Pool,
    args: &[&str],
    env: &[(&str, &str)],
    scenario: serde_json::Value,
    shot: &str,
) -> (std::process::Output, Page) {
    let mut child = aic(pool.home.path())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    let shot_path = repo().join("target").join(shot);
    let page = Command::new("node")
        .arg(repo().join("cli/tests/browser/wallet.cjs"))
        .args([&url, &pool.rpc(), &scenario.to_string(), shot_path.to_str().unwrap()])
        .env("NODE_PATH", repo().join("contracts/node_modules"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&page.stdout);
    let result: Page = serde_json::from_str(said.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
        panic!("the wallet page gave no result ({e}): {said}{}", String::from_utf8_lossy(&page.stderr))
    });
    assert!(result.done, "the wallet page did not finish: {result:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let mut out = child.wait_with_output().unwrap();
    out.stderr = format!("{seen}{rest}").into_bytes();
    (out, result)
}

impl Pool {
    fn chain(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.home.path().join("aic/chain.json")).unwrap()).unwrap()
    }

    fn rpc(&self) -> String {
        self.chain()["rpc_url"].as_str().unwrap().to_string()
    }

    /// `who`'s AIC balance, read on chain, in the token's smallest units.
    fn balance(&self, who: &str) -> u128 {
        let chain = self.chain();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let p = alloy::providers::ProviderBuilder::new().connect_http(self.rpc().parse().unwrap());
            let token = chain["token"].as_str().unwrap().parse().unwrap();
            let b = aic_chain::token::balance(&p, token, who.parse().unwrap()).await.unwrap();
            u128::try_from(b).unwrap()
        })
    }

    /// Waits for `job`'s paid run to be settled; what it was charged (the rest went back).
    fn charged(&self, job: &str) -> u128 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = aic(self.home.path()).args(["status", job, "--json"]).output().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
            if let Some(s) = v["settlements"].as_array().and_then(|a| a.first()) {
                assert_eq!(s["kind"], "settled", "{v}");
                let (charged, refunded): (u128, u128) =
                    (s["charged"].as_str().unwrap().parse().unwrap(), s["refunded"].as_str().unwrap().parse().unwrap());
                assert_eq!(charged + refunded, AIC, "{v}");
                assert!(charged > 0 && charged < AIC / 100, "a few GPU-seconds of an hour: {v}");
                return charged;
            }
            assert!(Instant::now() < deadline, "the job was not settled: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for `job` to succeed; its history.
    fn succeeded(&self, job: &str) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = aic(self.home.path()).args(["status", job, "--json"]).output().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
            let hist = v["history"].as_array().cloned().unwrap_or_default();
            if hist.last().is_some_and(|r| r["state"] == "succeeded") {
                return hist;
            }
            assert!(!hist.last().is_some_and(|r| r["state"] == "rejected" || r["state"] == "failed"), "{v}");
            assert!(Instant::now() < deadline, "the job did not succeed: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

const AIC: u128 = 10u128.pow(18);
/// Anvil's dev account 2, unlocked, plays the MetaMask user; dev account 3 is another
/// account in the same wallet; dev account 9 is the pool's treasury.
const USER: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
const OTHER: &str = "0x90f79bf6eb2c4f870365e785982e1f101e93b906";
const TREASURY: &str = "0xa0ee7a142d267c1f36714e4a8f75612f20a79720";

fn paid_with(hist: &[serde_json::Value]) -> String {
    hist.iter()
        .find_map(|r| r["reason"].as_str().and_then(|x| x.strip_prefix("paid 1 AIC in ")).map(str::to_string))
        .unwrap_or_else(|| panic!("no payment in {hist:?}"))
}

#[test]
fn login_and_a_paid_job_signed_in_the_browser_wallet() {
    let pool = start_pool();
    // Two wallets installed, the other one holding window.ethereum: the user picks MetaMask.
    // The sign-in message names the page's own address, which MetaMask checks.
    let scenario = serde_json::json!({ "account": USER, "wallets": ["Other Wallet"] });
    let (out, page) = through_the_wallet_page(&pool, &["login", "--browser"], scenario, "browser-login.png");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(page.status.contains(&format!("Signed in as {USER}")), "{page:?}");
    let who = aic(pool.home.path()).arg("whoami").output().unwrap();
    let who = String::from_utf8_lossy(&who.stdout);
    assert!(who.contains(&format!("{USER} (browser wallet)")), "{who}");
    assert!(who.contains("balance: 1000 AIC"), "{who}");

    // The wallet is on mainnet, does not know the pool's chain, has the wrong account
    // selected, and the user declines the first signature: nothing is paid from the wrong
    // account or on the wrong chain, the chain is added and switched to, and trying again
    // signs without paying again.
    let (user, other, treasury) = (pool.balance(USER), pool.balance(OTHER), pool.balance(TREASURY));
    let script = pool.home.path().join("hello.sh");
    std::fs::write(&script, "echo hello from the browser-signed job\n").unwrap();
    let scenario =
        serde_json::json!({ "account": OTHER, "switchTo": USER, "startChain": "0x1", "rejectSignOnce": true });
    let (out, page) =
        through_the_wallet_page(&pool, &["run", "--detach", script.to_str().unwrap()], scenario, "browser-sign.png");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(page.status.contains("signed and paid"), "{page:?}");
    assert!(page.waits.iter().any(|w| w.contains(OTHER) && w.contains("belongs to")), "{page:?}");
    assert!(
        page.errors.iter().any(|e| e.contains("declined signing the job") && e.contains("without paying again")),
        "{page:?}"
    );
    assert_eq!(page.wallet["wrongChainSends"], 0, "{page:?}");
    assert_eq!(page.wallet["added"], serde_json::json!(["0x7a69"]), "{page:?}");
    assert_eq!(page.wallet["sends"].as_array().map(Vec::len), Some(1), "one payment: {page:?}");
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let hist = pool.succeeded(&job);
    assert_eq!(paid_with(&hist), page.wallet["sends"][0].as_str().unwrap());
    // Paid by deposit into the pool's escrow: once settled, the treasury has what the job
    // used and the rest is back in the wallet.
    let charged = pool.charged(&job);
    assert_eq!(
        (pool.balance(USER), pool.balance(OTHER), pool.balance(TREASURY)),
        (user - charged, other, treasury + charged)
    );
    assert_eq!(page.wallet["approvals"].as_array().map(Vec::len), Some(1), "one allowance: {page:?}");
    let logs = aic(pool.home.path()).args(["logs", &job]).output().unwrap();
    assert!(String::from_utf8_lossy(&logs.stdout).contains("hello from the browser-signed job"));
}

#[test]
fn a_payment_sped_up_in_the_wallet_pays_the_job_under_its_new_hash() {
    let pool = start_pool();
    let scenario = serde_json::json!({ "account": USER });
    let (out, _) = through_the_wallet_page(&pool, &["login", "--browser"], scenario, "browser-login-2.png");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let treasury = pool.balance(TREASURY);
    let script = pool.home.path().join("hello.sh");
    std::fs::write(&script, "echo sped up\n").unwrap();
    let scenario =
        serde_json::json!({ "account": USER, "startChain": "0x7a69", "knownChains": ["0x7a69"], "speedUp": true });
    let (out, page) =
        through_the_wallet_page(&pool, &["run", "--detach", script.to_str().unwrap()], scenario, "browser-speedup.png");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fast = page.wallet["spedUp"].as_str().unwrap().to_string();
    assert!(page.status.contains(&fast), "the page names the hash that paid: {page:?}");
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(paid_with(&pool.succeeded(&job)), fast);
    // Settled first: the treasury's balance is read once the settlement is recorded.
    let charged = pool.charged(&job);
    assert_eq!(pool.balance(TREASURY), treasury + charged, "paid once");
}

#[test]
fn a_payment_not_mined_in_time_is_waited_for_on_the_next_try_never_sent_again() {
    let pool = start_pool();
    let (out, _) = through_the_wallet_page(
        &pool,
        &["login", "--browser"],
        serde_json::json!({ "account": USER }),
        "browser-login-3.png",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (user, treasury) = (pool.balance(USER), pool.balance(TREASURY));
    let script = pool.home.path().join("hello.sh");
    std::fs::write(&script, "echo held\n").unwrap();
    // The chain does not include the payment within the page's wait (2 s here); the user
    // tries again once it is mined.
    let scenario =
        serde_json::json!({ "account": USER, "startChain": "0x7a69", "knownChains": ["0x7a69"], "holdPayment": true });
    let (out, page) = through_the_wallet_page_with(
        &pool,
        &["run", "--detach", script.to_str().unwrap()],
        &[("AIC_PAYMENT_WAIT", "2")],
        scenario,
        "browser-held.png",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(page.errors.iter().any(|e| e.contains("not mined")), "{page:?}");
    assert_eq!(page.wallet["sends"].as_array().map(Vec::len), Some(1), "paid once: {page:?}");
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(paid_with(&pool.succeeded(&job)), page.wallet["sends"][0].as_str().unwrap());
    let charged = pool.charged(&job);
    assert_eq!((pool.balance(USER), pool.balance(TREASURY)), (user - charged, treasury + charged));
}
