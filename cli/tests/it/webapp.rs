//! The web app in a real browser (Debian's Chromium through playwright-core) against the
//! embedded pool (`aic dev up`), with an injected EIP-1193 wallet backed by anvil
//! (`browser/provider.cjs`, MetaMask's behaviour where the app must respect it): the
//! tutorial end to end, the refusals, an accessibility scan and screenshots of every page at
//! desktop and phone widths (`target/webapp-*.png`), and the jobs page of a wallet with 200
//! jobs. `browser/webapp.cjs` drives the browser; this file prepares the pool and judges
//! what happened, balances read on chain.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{DevUp, Home, digits_dataset, repo, run_browser, run_webapp, walk};

/// `aic dev up` with three simulated miners of one GPU (a 16 GB T4 each): room for a
/// two-replica deployment and the one-replica deployment that replaces it.
struct Pool {
    home: Home,
    _up: DevUp,
}

fn aic(h: &Home) -> Command {
    let mut c = h.cmd(&[]);
    c.env("AIC_NO_BROWSER", "1").env_remove("AIC_PRIVATE_KEY").env_remove("AIC_SERVE_ADDR");
    c
}

impl Pool {
    fn start() -> Pool {
        Pool::start_with(&[])
    }

    fn start_with(env: &[(&str, &str)]) -> Pool {
        let home = Home::new();
        let env = [
            &[("AIC_POOL_MINERS", "3"), ("AIC_POOL_GPU_TYPES", "T4:16:1,T4:16:1,T4:16:1"), ("AIC_SERVE_ADDR", "")],
            env,
        ]
        .concat();
        let up = DevUp::start_with(&home, &env);
        Pool { home, _up: up }
    }

    fn base(&self) -> Option<String> {
        std::fs::read_to_string(self.home.path().join("aic/serve.addr")).ok().filter(|s| !s.is_empty())
    }

    fn chain(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.home.path().join("aic/chain.json")).unwrap()).unwrap()
    }

    fn balance(&self, who: &str) -> u128 {
        let chain = self.chain();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let p = alloy::providers::ProviderBuilder::new()
                .connect_http(chain["rpc_url"].as_str().unwrap().parse().unwrap());
            let token = chain["token"].as_str().unwrap().parse().unwrap();
            u128::try_from(aic_chain::token::balance(&p, token, who.parse().unwrap()).await.unwrap()).unwrap()
        })
    }

    /// `OWNER`'s job as the store holds it: its status history and settlements.
    fn status(&self, job: &str) -> serde_json::Value {
        let read_all = |dir: PathBuf| -> Vec<serde_json::Value> {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
            files.sort();
            files.iter().filter_map(|f| serde_json::from_slice(&std::fs::read(f).ok()?).ok()).collect()
        };
        let store = self.home.path().join("aic/store");
        serde_json::json!({
            "history": read_all(store.join(format!("users/{OWNER}/jobs/{job}/status"))),
            "settlements": read_all(store.join(format!("pool/settlements/{OWNER}/{job}"))),
        })
    }

    /// `aic ARGS` in pool mode against this pool's host (AIC_GATEWAY, no store access), as
    /// `OWNER` with its own home: whether it succeeded, and what it printed.
    fn in_pool_mode(&self, args: &[&str]) -> (bool, String) {
        let out = aic(&self.home)
            .env("AIC_HOME", self.home.path().join("cli"))
            .env("AIC_GATEWAY", self.base().unwrap())
            .env("AIC_PRIVATE_KEY", "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// Writes `n` finished jobs of `owner` straight into the store (no events: nothing runs).
    fn seed_jobs(&self, owner: &str, n: usize) {
        let now = chrono::Utc::now();
        for i in 0..n {
            let id = aic_schemas::JobId::generate();
            let dir = self.home.path().join(format!("aic/store/users/{owner}/jobs/{id}"));
            std::fs::create_dir_all(&dir).unwrap();
            let req = serde_json::json!({
                "version": 1, "kind": "train", "owner": owner, "job_id": id, "entrypoint": format!("train{i}.py"),
                "miners": 1 + i % 2, "gpus_per_miner": 1, "max_hours": 0.5, "launcher": "command", "args": [], "env": {},
                "created_at": now, "expires_at": now + chrono::Duration::hours(1),
            });
            let snap = serde_json::json!({
                "seq": 5, "state": if i % 3 == 0 { "failed" } else { "succeeded" }, "at": now, "by": "worker",
                "detail": { "wall_seconds": 12.5 + i as f64 },
            });
            std::fs::write(dir.join("request.json"), req.to_string()).unwrap();
            std::fs::write(dir.join("status.json"), snap.to_string()).unwrap();
        }
    }
}

const AIC: u128 = 10u128.pow(18);
/// Anvil's dev accounts: 5 plays the MetaMask user, 6 another wallet, 7 a wallet with 200 jobs.
const OWNER: &str = "0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc";
const OTHER: &str = "0x976ea74026e726554db657fa54763abd0c3a0aa9";
const MANY: &str = "0x14dc79964da2c08b23698b3d3cc7ca32193d9955";

#[test]
fn the_tutorial_in_the_web_app_with_refusals_accessibility_and_screenshots() {
    let pool = Pool::start();
    let base = pool.base().unwrap();
    pool.seed_jobs(MANY, 200);
    let (csv, first) = digits_dataset(&pool.home.path().join("digits-data"));
    let (pixels, label) = (&first[..64], first[64]);
    let chain = pool.chain();
    // The other wallet holds no AIC (all of it sent to the wallet with 200 jobs).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let key: alloy::signers::local::PrivateKeySigner = aic_chain::devchain::DEV_KEYS[6].parse().unwrap();
        let p = alloy::providers::ProviderBuilder::new()
            .wallet(key)
            .connect_http(chain["rpc_url"].as_str().unwrap().parse().unwrap());
        let token = chain["token"].as_str().unwrap().parse().unwrap();
        let all = aic_chain::token::balance(&p, token, OTHER.parse().unwrap()).await.unwrap();
        aic_chain::token::pay(&p, token, MANY.parse().unwrap(), all).await.unwrap();
    });
    drop(rt);
    assert_eq!(pool.balance(OTHER), 0);
    let script = pool.home.path().join("hello.py");
    std::fs::write(&script, "print('hello')\n").unwrap();
    // A job of the wallet with 200 jobs that prints a line once the page has it open and ends
    // when told: its page must show the line before the chunk it is in is stored.
    let (start, end) = (pool.home.shared().join("live.start"), pool.home.shared().join("live.end"));
    let wait = pool.home.path().join("live.sh");
    std::fs::write(
        &wait,
        format!(
            "while [ ! -e {} ]; do sleep 0.05; done\necho hello-live\nwhile [ ! -e {} ]; do sleep 0.05; done\necho bye\n",
            start.display(),
            end.display()
        ),
    )
    .unwrap();
    // Started by the browser's driver once the tutorial is done (it would hold a miner), as
    // the wallet with 200 jobs (anvil's account 7), which `aic` here signs in as.
    assert!(aic(&pool.home).args(["login", "--dev", "7"]).output().unwrap().status.success());
    let mut run_live = aic(&pool.home);
    run_live.args(["run", "--detach", wait.to_str().unwrap()]);
    let live_env: serde_json::Map<String, serde_json::Value> = run_live
        .get_envs()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_string_lossy().into_owned()).into()))
        .collect();
    let mut live_argv = vec![run_live.get_program().to_string_lossy().into_owned()];
    live_argv.extend(run_live.get_args().map(|a| a.to_string_lossy().into_owned()));
    let (owner_before, treasury_before) = (pool.balance(OWNER), pool.balance(chain["treasury"].as_str().unwrap()));
    let many_before = pool.balance(MANY);
    let out = repo().join("target");
    let cfg = serde_json::json!({
        "live": {"argv": live_argv, "env": live_env, "start": start, "end": end},
        "base": base, "rpc": chain["rpc_url"], "out": out, "owner": OWNER, "other": OTHER, "many": MANY,
        "dataset": [csv], "project": repo().join("examples/digits"),
        "serve": repo().join("examples/digits/serve"), "pixels": pixels, "token": chain["token"], "script": script,
    });
    let r = run_webapp(&cfg);
    let dump = serde_json::to_string_pretty(&r).unwrap();
    std::fs::write(out.join("webapp-result.json"), &dump).unwrap();
    assert!(r["error"].is_null(), "the browser run stopped: {dump}");
    // Errors on the pages (a CSP violation shows here), but for the refusal the other wallet
    // is meant to get (the owner's job is not found for it).
    let errors: Vec<&serde_json::Value> = r["console"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !(e.as_str().unwrap().starts_with("other: ") && e.as_str().unwrap().contains("status of 404")))
        .collect();
    assert!(errors.is_empty(), "errors on the pages: {dump}");

    // Signed in; the balance shown; AIC offered to the wallet.
    assert!(r["balanceShown"].as_str().unwrap().ends_with(" AIC"), "{dump}");
    assert_eq!(r["wallet"]["watched"], serde_json::json!([chain["token"].as_str().unwrap().to_lowercase()]), "{dump}");
    assert_eq!(r["wallet"]["added"], serde_json::json!(["0x7a69"]), "the pool's chain added: {dump}");
    assert_eq!(r["wallet"]["wrongChainSends"], 0, "{dump}");
    // The Pool page: each miner's GPU model, memory and price.
    let rows = r["poolRows"].as_array().unwrap();
    assert_eq!(
        rows[0],
        serde_json::json!(["Miner", "GPUs", "Model", "Memory", "Price per GPU-hour", "Free"]),
        "{dump}"
    );
    assert!(rows[1..].iter().all(|row| row[2] == "T4" && row[3] == "16 GB" && row[4] == "1 AIC"), "{dump}");

    // The training job: paid once (the declined signature did not pay twice), signed, ran on
    // two miners with both ranks in the log, succeeded; its checkpoint downloaded byte for byte.
    assert!(r["refusals"]["declined"].as_str().unwrap().contains("will not pay twice"), "{dump}");
    assert!(r["paidNotice"].as_str().unwrap().contains("was not submitted"), "{dump}");
    assert_eq!(r["jobState"], "succeeded", "{dump}");
    assert!(
        r["log"].as_str().unwrap().contains("[rank 0]") && r["log"].as_str().unwrap().contains("[rank 1]"),
        "{dump}"
    );
    // Its GPU use drawn: a line for each allocation's GPU, the simulated miners' stand-in said.
    let lines: Vec<&str> = r["gpuLines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("alloc 0 · GPU ") && lines[1].starts_with("alloc 1 · GPU "),
        "{dump}"
    );
    assert!(r["gpuUse"].as_str().unwrap().contains("the program's CPU use stands in for GPU utilization"), "{dump}");
    let job = r["job"].as_str().unwrap();
    let st = pool.status(job);
    let hist = st["history"].as_array().unwrap();
    // Both allocations ran, on two miners (the second's record names its own).
    let allocs = pool.home.path().join(format!("aic/store/users/{OWNER}/jobs/{job}/allocs/0"));
    let miners: Vec<String> = (0..2)
        .map(|i| {
            let a: serde_json::Value =
                serde_json::from_slice(&std::fs::read(allocs.join(format!("{i}.json"))).unwrap()).unwrap();
            a["miner"].as_str().unwrap().to_string()
        })
        .collect();
    assert_ne!(miners[0], miners[1], "{st}");
    let paid: Vec<&str> = hist.iter().filter_map(|h| h["reason"].as_str()?.strip_prefix("paid ")).collect();
    assert_eq!(paid.len(), 1, "{st}");
    let stored = pool.home.path().join(format!("aic/store/users/{OWNER}/jobs/{job}/output/model.npz"));
    assert_eq!(std::fs::read(r["downloaded"].as_str().unwrap()).unwrap(), std::fs::read(stored).unwrap());
    // Three payments from the owner (the training job, the deployment and its scale), each a
    // deposit settled once: the owner is down exactly what the treasury gained.
    assert_eq!(r["wallet"]["sends"].as_array().map(Vec::len), Some(3), "{dump}");
    assert_eq!(r["wallet"]["signedTyped"], 3, "{dump}");
    let deployment = r["deployment"].as_str().unwrap();
    let scaled = r["scaled"].as_str().unwrap_or_else(|| panic!("no scaled deployment: {dump}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled = |j: &str| pool.status(j)["settlements"].as_array().is_some_and(|a| a.len() == 1);
    // And the live log's job, paid by the wallet with 200 jobs.
    let live = r["live"]["job"].as_str().unwrap();
    let live_settled = pool.home.path().join(format!("aic/store/pool/settlements/{MANY}/{live}"));
    while ![job, deployment, scaled].iter().all(|j| settled(j)) || walk(&live_settled).is_empty() {
        assert!(
            Instant::now() < deadline,
            "not settled: {} {} {}",
            pool.status(job),
            pool.status(deployment),
            pool.status(scaled)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (owner_after, treasury_after) = (pool.balance(OWNER), pool.balance(chain["treasury"].as_str().unwrap()));
    assert!(owner_after < owner_before && owner_before - owner_after < AIC / 10, "{owner_before} → {owner_after}");
    let many_paid = many_before - pool.balance(MANY);
    assert!(many_paid > 0 && many_paid < AIC / 10, "{many_paid}");
    assert_eq!(
        owner_before - owner_after + many_paid,
        treasury_after - treasury_before,
        "what the owner and the other wallet paid, the treasury has"
    );

    // The deployment answered through the address the app shows, then was removed.
    // Each at an origin of its own, never the app's.
    let port = base.rsplit(':').next().unwrap().trim_end_matches('/');
    let named = aic_schemas::origin::named_label(&OWNER.parse().unwrap(), "digits-web").unwrap();
    assert_eq!(r["namedLink"].as_str().unwrap(), format!("http://{named}.localhost:{port}/"), "{dump}");
    assert_eq!(r["versionLink"].as_str().unwrap(), format!("http://{deployment}.localhost:{port}/"), "{dump}");
    assert_eq!(r["prediction"]["status"], 200, "{dump}");
    assert_eq!(r["prediction"]["body"]["digit"].as_f64(), Some(label), "{dump}");
    // Its requests counted on the Deployments page, as `aic deploy status` counts them.
    let figures = r["deploymentFigures"].as_str().unwrap_or_default();
    assert!(
        figures.contains(" requests · 0 errors") && figures.contains("p50 ≤") && figures.contains("in flight"),
        "{dump}"
    );
    assert_eq!(pool.status(deployment)["history"].as_array().unwrap().last().unwrap()["state"], "cancelled");
    // Scaled: the same project (the same code digest) on one replica, answering at the name's
    // address once the old one was removed; then removed too.
    let store = pool.home.path().join(format!("aic/store/users/{OWNER}/jobs"));
    let request = |j: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(store.join(j).join("request.json")).unwrap()).unwrap()
    };
    let (old, new) = (request(deployment), request(scaled));
    assert_eq!((old["miners"].as_u64(), new["miners"].as_u64()), (Some(2), Some(1)));
    assert_eq!(old["code_digest"], new["code_digest"]);
    assert_eq!(old["name"], new["name"]);
    assert_eq!(r["scaledPrediction"]["status"], 200, "{dump}");
    assert_eq!(r["scaledPrediction"]["body"]["digit"].as_f64(), Some(label), "{dump}");
    assert_eq!(pool.status(scaled)["history"].as_array().unwrap().last().unwrap()["state"], "cancelled");

    // Refusals: the wrong chain says so and signs nobody in; another wallet sees nothing.
    let wrong = r["refusals"]["wrongChain"].as_str().unwrap();
    assert!(wrong.contains("not the pool's aic dev chain") && wrong.contains("switch it"), "{dump}");
    assert!(r["refusals"]["wrongChainUrl"].as_str().unwrap().contains("/signin"), "{dump}");
    assert_eq!(r["refusals"]["otherJob"]["title"], "No such job", "{dump}");
    assert_eq!(r["refusals"]["otherJob"]["log"], false, "{dump}");
    assert!(!r["refusals"]["otherJob"]["text"].as_str().unwrap().contains("train_mpi"), "{dump}");
    assert_eq!(r["refusals"]["otherLogs"]["status"], 404, "{dump}");
    let no_aic = r["refusals"]["noAic"].as_str().unwrap();
    assert!(no_aic.contains("You have 0 AIC; this job costs"), "{dump}");
    assert_eq!(r["refusals"]["noAicSends"], 0, "nothing sent: {dump}");

    // No serious or critical accessibility finding on any page.
    let pages = r["axe"].as_array().unwrap();
    assert_eq!(pages.len(), 7, "{dump}");
    for p in pages {
        let bad: Vec<_> = p["violations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["impact"] == "serious" || v["impact"] == "critical")
            .collect();
        assert!(bad.is_empty(), "{}: {bad:?}", p["page"]);
    }
    for s in r["shots"].as_array().unwrap() {
        assert!(std::fs::metadata(s.as_str().unwrap()).unwrap().len() > 5000, "{s}");
    }
    assert_eq!(r["rows"], 200, "{dump}");
    assert!(r["live"]["shown"].as_str().unwrap().contains("hello-live"), "{dump}");
    assert_eq!(r["live"]["stored"], 0, "the line came from a stored chunk: {dump}");
    assert_eq!(r["live"]["final"], "hello-live\nbye\n", "each line once: {dump}");
    eprintln!(
        "web app: jobs page with 200 jobs first rendered in {} ms; quote {:?}; axe: {}",
        r["firstRenderMs"],
        r["quote"],
        pages
            .iter()
            .map(|p| format!("{} {}", p["page"], p["violations"].as_array().unwrap().len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// A stranger's deployed page, opened by a user signed in to the web app in the same browser
/// (real Chromium, `browser/hostile.cjs`), reaches nothing of the app's: it answers at an
/// origin of its own, so the app's storage (the session) is not its storage; the service
/// worker it registers (scope `/`, with `Service-Worker-Allowed: /`) works at its own origin
/// only; the cookie its answer sets for a wider domain is dropped; its calls to the pool's API
/// are refused (another origin); the wallet will not sign the pool's sign-in for it.
#[test]
fn a_deployed_page_reaches_nothing_of_the_web_app_in_the_browser() {
    let pool = Pool::start();
    let base = pool.base().unwrap();
    let proj = pool.home.path().join("hostile");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("app.py"), HOSTILE_APP).unwrap();
    let out = aic(&pool.home)
        .args(["deploy", proj.to_str().unwrap(), "--replicas", "1", "--hours", "0.05"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let api = stdout.lines().find_map(|l| l.strip_prefix("API address : ")).expect("the address").to_string();
    let port = base.rsplit(':').next().unwrap();
    assert!(api.starts_with("http://hostile--") && api.ends_with(&format!(".localhost:{port}/")), "{api}");
    let cfg = serde_json::json!({ "base": base, "rpc": pool.chain()["rpc_url"], "owner": OWNER, "deployment": api });
    let r = run_browser("hostile.cjs", &cfg);
    let dump = serde_json::to_string_pretty(&r).unwrap();
    assert!(r["error"].is_null(), "the browser run stopped: {dump}");
    assert_eq!(r["signedIn"], true, "{dump}");
    let page = &r["page"];
    assert_eq!(page["origin"].as_str().unwrap(), api.trim_end_matches('/'), "{dump}");
    assert_eq!(page["storage"], serde_json::json!([]), "the app's storage is not the page's: {dump}");
    assert!(page["session"].is_null(), "{dump}");
    assert_eq!(page["sw"].as_str().unwrap(), api, "the page's worker registered at its own origin: {dump}");
    assert_eq!(r["swAtOwnOrigin"], "hijacked", "and works there: {dump}");
    for call in ["api", "info"] {
        assert!(page[call].as_str().is_some_and(|s| s.starts_with("refused")), "{call}: {dump}");
    }
    assert!(page["siwe"].as_str().unwrap().starts_with("refused: 4001"), "{dump}");
    let app = &r["app"];
    assert_eq!(app["workers"], serde_json::json!([]), "no worker of the page's over the app: {dump}");
    assert_eq!(app["cookie"], "", "{dump}");
    assert_eq!((app["session"].as_bool(), app["path"].as_str()), (Some(true), Some("/jobs")), "{dump}");
    let cookies = r["cookies"].as_array().unwrap();
    assert!(!cookies.iter().any(|c| c["name"] == "hdr"), "the answer's cookie for a wider domain: {dump}");
    assert!(cookies.iter().any(|c| c["name"] == "own"), "its own cookie is kept: {dump}");
    assert!(!cookies.iter().any(|c| c["domain"].as_str().unwrap().contains("127.0.0.1")), "{dump}");
}

/// A browser's sign-in with `key` (`OWNER`'s): the pool writes the SIWE message
/// (`/v1/nonce?address=`), the key signs it as a wallet does (EIP-191), the session's token
/// comes back.
async fn sign_in_as_a_browser_does(
    http: &reqwest::Client,
    base: &str,
    key: &alloy::signers::local::PrivateKeySigner,
) -> String {
    use alloy::signers::Signer;
    let nonce: serde_json::Value =
        http.get(format!("{base}/v1/nonce?address={OWNER}")).send().await.unwrap().json().await.unwrap();
    let message = nonce["message"].as_str().unwrap().to_string();
    assert!(message.starts_with(&format!("{} wants you", base.trim_start_matches("http://"))), "{message}");
    let signature = key.sign_message(message.as_bytes()).await.unwrap();
    let session: serde_json::Value = http
        .post(format!("{base}/v1/session"))
        .json(&serde_json::json!({"message": message, "signature": signature.to_string()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    session["token"].as_str().unwrap_or_else(|| panic!("{session}")).to_string()
}

/// The stranger's app (`a_deployed_page_reaches_nothing_of_the_web_app_in_the_browser`).
const HOSTILE_APP: &str = r#"
PAGE = """<!doctype html><title>hostile</title><script>
(async () => {
  const out = { origin: location.origin };
  const app = new URLSearchParams(location.search).get("app");
  out.storage = Object.keys(localStorage);
  out.session = localStorage.getItem("aic.session");
  document.cookie = "js=1; path=/";
  try {
    const reg = await navigator.serviceWorker.register("/sw.js", { scope: "/" });
    await navigator.serviceWorker.ready;
    out.sw = reg.scope;
  } catch (e) { out.sw = "refused: " + e.message; }
  for (const [k, path] of [["api", "/v1/jobs"], ["info", "/v1/info"]]) {
    try { const r = await fetch(app + path, { credentials: "include" }); out[k] = r.status; }
    catch (e) { out[k] = "refused: " + e.message; }
  }
  try {
    const [acct] = await ethereum.request({ method: "eth_requestAccounts" });
    const msg = new URL(app).host + " wants you to sign in with your Ethereum account:\\n" + acct +
      "\\n\\nSign in to the pool\\n\\nURI: " + app + "\\nVersion: 1\\nChain ID: 31337\\nNonce: 12345678\\nIssued At: " + new Date().toISOString();
    const hex = "0x" + Array.from(new TextEncoder().encode(msg)).map((b) => b.toString(16).padStart(2, "0")).join("");
    await ethereum.request({ method: "personal_sign", params: [hex, acct] });
    out.siwe = "signed";
  } catch (e) { out.siwe = "refused: " + e.code + " " + e.message; }
  window.result = out;
})();
</script>"""

WORKER = "self.addEventListener('fetch', (e) => e.respondWith(new Response('hijacked')));"


def app(environ, start_response):
    if environ["PATH_INFO"] == "/sw.js":
        start_response("200 OK", [("Content-Type", "text/javascript"), ("Service-Worker-Allowed", "/")])
        return [WORKER.encode()]
    start_response("200 OK", [
        ("Content-Type", "text/html"),
        ("Set-Cookie", "hdr=stolen; Domain=localhost; Path=/"),
        ("Set-Cookie", "own=1; Path=/"),
    ])
    return [PAGE.encode()]
"#;

/// A wallet keeps at most the pool's storage quota in datasets (`AIC_STORAGE_QUOTA_MB`, 20
/// MiB here), whatever its client does: `aic data put` past it is refused before anything
/// moves (single uploads: the sizes `/v1/sign` is given) or once the upload is whole (parts:
/// the object is then removed), with the reason; a client that declares a smaller size than
/// it sends is refused by the URL, which binds the size; `aic data ls` shows what is used;
/// deleting a dataset makes room. (Without the quota the pool's bucket was anyone's free
/// storage.)
#[test]
fn a_wallet_cannot_keep_more_than_its_storage_quota() {
    let pool = Pool::start_with(&[("AIC_STORAGE_QUOTA_MB", "20")]);
    let base = pool.base().unwrap();
    let home = pool.home.path();
    let cli = |args: &[&str]| pool.in_pool_mode(args);
    assert!(cli(&["login", "--env-key"]).0);
    let folder = |name: &str, files: &[(&str, usize)]| {
        let dir = home.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, n) in files {
            std::fs::write(dir.join(f), vec![b'x'; *n]).unwrap();
        }
        dir.to_str().unwrap().to_string()
    };
    let stored = |name: &str| home.join(format!("aic/store/users/{OWNER}/data/{name}"));
    const MB: usize = 1 << 20;
    let (ok, said) = cli(&["data", "put", &folder("first", &[("a.bin", 12 * MB)]), "first"]);
    assert!(ok, "{said}");
    let (ok, said) = cli(&["data", "ls"]);
    assert!(ok && said.contains("storage: 12.0 MiB of 20.0 MiB"), "{said}");
    // Five files of 2 MiB, one of 10 MiB: `aic` refuses them before anything moves.
    let files = [("1", 2 * MB), ("2", 2 * MB), ("3", 2 * MB), ("4", 2 * MB), ("5", 2 * MB)];
    let (ok, said) = cli(&["data", "put", &folder("small", &files), "small"]);
    assert!(!ok && said.contains("storage quota: your datasets take 12.0 MiB of this pool's 20.0 MiB"), "{said}");
    assert_eq!(said.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{said}");
    assert!(!stored("small").exists(), "a file of the refused upload was stored");
    let (ok, said) = cli(&["data", "put", &folder("big", &[("b.bin", 10 * MB)]), "big"]);
    assert!(!ok && said.contains("storage quota"), "{said}");
    assert!(!stored("big").exists());
    // A client of its own is refused by the pool: what it signs in one call past the quota;
    // a declared 10 bytes sent as 3 MiB (the URL is for 10 bytes); a part past the quota.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sha2::Digest;
        let key: alloy::signers::local::PrivateKeySigner =
            "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba".parse().unwrap();
        let http = reqwest::Client::new();
        let token = sign_in_as_a_browser_does(&http, &base, &key).await;
        let call = |path: &str, body: serde_json::Value| {
            http.post(format!("{base}/v1/{path}")).bearer_auth(&token).json(&body).send()
        };
        let body = vec![b'y'; 3 * MB];
        let sha = hex::encode(sha2::Sha256::digest(&body));
        let item =
            |key: &str, size: usize| serde_json::json!({"method": "PUT", "key": key, "size": size, "sha256": sha});
        let items: Vec<_> = (0..3).map(|i| item(&format!("users/{OWNER}/data/many/{i}"), 3 * MB)).collect();
        let r = call("sign", serde_json::json!({ "items": items })).await.unwrap();
        assert_eq!(r.status(), 507, "9 MiB more signed past the quota");
        assert!(r.text().await.unwrap().contains("storage quota"));
        let key = format!("users/{OWNER}/data/liar/c.bin");
        let v: serde_json::Value =
            call("sign", serde_json::json!({"items": [item(&key, 10)]})).await.unwrap().json().await.unwrap();
        let url = v["urls"][0]["url"].as_str().unwrap_or_else(|| panic!("{v}"));
        let r = http.put(url).body(body).send().await.unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("the URL is for 10"));
        let key = format!("users/{OWNER}/data/parts/d.bin");
        let v: serde_json::Value =
            call("multipart", serde_json::json!({"action": "create", "key": key})).await.unwrap().json().await.unwrap();
        let upload = v["upload_id"].as_str().unwrap_or_else(|| panic!("{v}")).to_string();
        let part = |n: usize| {
            call(
                "multipart",
                serde_json::json!({"action": "part", "key": key, "upload_id": upload, "part": n, "size": 3 * MB}),
            )
        };
        for n in 0..2 {
            let v: serde_json::Value = part(n).await.unwrap().json().await.unwrap();
            let r = http
                .put(v["url"].as_str().unwrap_or_else(|| panic!("{v}")))
                .body(vec![b'z'; 3 * MB])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        // The third part would take the wallet past its quota: refused before it is sent.
        let r = part(2).await.unwrap();
        assert_eq!(r.status(), 507);
        assert!(r.text().await.unwrap().contains("needs 3.0 MiB more"));
        // Aborted: what its parts took is free again; the 10 bytes signed and not arrived
        // count until their URL expires.
        let r =
            call("multipart", serde_json::json!({"action": "abort", "key": key, "upload_id": upload})).await.unwrap();
        assert!(r.status().is_success());
        let usage: serde_json::Value =
            http.get(format!("{base}/v1/usage")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        assert_eq!(usage["data_bytes"], 12 * MB + 10, "{usage}");
        assert_eq!(usage["quota_bytes"], 20 * MB, "{usage}");
    });
    for refused in ["many", "liar", "parts"] {
        assert!(!stored(refused).exists() || walk(&stored(refused)).is_empty(), "{refused} was kept");
    }
    // Room made: the upload goes through.
    assert!(cli(&["data", "rm", "first"]).0);
    let (ok, said) = cli(&["data", "put", &folder("big", &[]), "big"]);
    assert!(ok, "{said}");
    assert_eq!(std::fs::metadata(stored("big/b.bin")).unwrap().len(), 10 * MB as u64);
}

/// `aic dev up` serves the same `/v1` API as a pool's gateway: `aic` in pool mode against it
/// (AIC_GATEWAY, no store access) signs in, uploads a dataset (a file over 8 MiB goes in
/// parts through the host, which stages them under `pool/uploads/` until completed), reads it
/// back byte for byte, and 600 small files (more than the gateway's burst of calls), and
/// runs a paid job; a host transfer URL whose grant was changed is
/// refused; `aic open` names the app's pages.
#[test]
fn aic_in_pool_mode_against_dev_up_with_transfers_through_the_host() {
    let pool = Pool::start();
    let base = pool.base().unwrap();
    let home = pool.home.path();
    let cli = |args: &[&str]| {
        let (ok, text) = pool.in_pool_mode(args);
        assert!(ok, "aic {args:?}: {text}");
        text
    };
    let said = cli(&["login", "--env-key"]);
    assert!(said.contains(OWNER), "{said}");
    let data = home.join("ds");
    std::fs::create_dir_all(&data).unwrap();
    let big: Vec<u8> = (0..20_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(data.join("big.bin"), &big).unwrap();
    std::fs::write(data.join("학습 #1.csv"), "a,b\n1,2\n").unwrap();
    cli(&["data", "put", data.to_str().unwrap(), "mine"]);
    let stored = home.join(format!("aic/store/users/{OWNER}/data/mine"));
    assert_eq!(std::fs::read(stored.join("big.bin")).unwrap(), big);
    assert!(
        !home.join("aic/store/pool/uploads").exists()
            || std::fs::read_dir(home.join("aic/store/pool/uploads")).unwrap().next().is_none(),
        "parts left behind"
    );
    cli(&["data", "get", "mine", home.join("back").to_str().unwrap()]);
    assert_eq!(std::fs::read(home.join("back/big.bin")).unwrap(), big);
    assert_eq!(std::fs::read_to_string(home.join("back/학습 #1.csv")).unwrap(), "a,b\n1,2\n");
    // More files than the gateway's burst of calls (400): their URLs are signed many at a
    // call, and a 429 is waited out, so every file arrives.
    let many = home.join("many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..600 {
        std::fs::write(many.join(format!("f{i:03}.txt")), format!("file {i}\n")).unwrap();
    }
    cli(&["data", "put", many.to_str().unwrap(), "many"]);
    cli(&["data", "get", "many", home.join("many-back").to_str().unwrap()]);
    for i in 0..600 {
        assert_eq!(
            std::fs::read_to_string(home.join(format!("many-back/f{i:03}.txt"))).unwrap(),
            format!("file {i}\n")
        );
    }
    let script = home.join("hello.py");
    std::fs::write(&script, "print('hello through the host')\n").unwrap();
    let said = cli(&["run", script.to_str().unwrap()]);
    assert!(said.contains("hello through the host") && said.contains("succeeded"), "{said}");
    // Its code waited for the payment under a marker (a storage quota counts it), which
    // validate removed once the job was paid.
    let pending = home.join(format!("aic/store/pool/code-pending/{OWNER}"));
    assert!(!pending.exists() || walk(&pending).is_empty(), "a paid job's code still counted as waiting");

    // A browser's sign-in: the pool writes the SIWE message (`/v1/nonce?address=`), the key
    // signs it as a wallet does (EIP-191), the session comes back. A host URL is a grant:
    // the same URL for another key, or another method, is refused.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let key: alloy::signers::local::PrivateKeySigner =
            "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba".parse().unwrap();
        let http = reqwest::Client::new();
        let get = |u: String| http.get(u).send();
        let token = sign_in_as_a_browser_does(&http, &base, &key).await;
        let sign_get = |key: String| {
            http.post(format!("{base}/v1/sign"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"items": [{"method": "GET", "key": key}]}))
                .send()
        };
        let v: serde_json::Value =
            sign_get(format!("users/{OWNER}/data/mine/big.bin")).await.unwrap().json().await.unwrap();
        let url = v["urls"][0]["url"].as_str().unwrap_or_else(|| panic!("{v}")).to_string();
        let ranged = http.get(&url).header("range", "bytes=10-19").send().await.unwrap();
        assert_eq!(ranged.status(), 206);
        assert_eq!(ranged.bytes().await.unwrap().as_ref(), &big[10..20]);
        let other = url.replace("big.bin", "other.bin");
        assert_eq!(http.get(&other).send().await.unwrap().status(), 403);
        assert_eq!(http.delete(&url).send().await.unwrap().status(), 403);
        // Another user's key is not signed for this session.
        let theirs = sign_get(format!("users/{OTHER}/data/x")).await.unwrap();
        assert_eq!(theirs.status(), 403);
        // Nor can a URL for a key of one's own be made into one for theirs. The fields were
        // signed joined by '|': a key ending in `||<theirs>`, replayed as `<theirs>` with the
        // rest moved into the upload field, signed the same text (this read their file).
        let secret = pool.home.path().join(format!("aic/store/users/{OTHER}/data/secret.txt"));
        std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
        std::fs::write(&secret, "theirs").unwrap();
        let victim = format!("users/{OTHER}/data/secret.txt");
        let v: serde_json::Value =
            sign_get(format!("users/{OWNER}/data/a||{victim}")).await.unwrap().json().await.unwrap();
        let mut signed = url::Url::parse(v["urls"][0]["url"].as_str().unwrap_or_else(|| panic!("{v}"))).unwrap();
        let pairs: Vec<(String, String)> = signed.query_pairs().into_owned().collect();
        let mut forged = signed.query_pairs_mut();
        forged.clear();
        for (k, v) in &pairs {
            forged.append_pair(k, if k == "key" { &victim } else { v });
        }
        forged.append_pair("u", &format!("||users/{OWNER}/data/a"));
        drop(forged);
        let answer = http.get(signed.as_str()).send().await.unwrap();
        assert_eq!(answer.status(), 403, "a forged URL read another's file: {}", answer.text().await.unwrap());
        for (u, p) in [("", "1"), ("a|b", "1"), ("ab", "x")] {
            signed.query_pairs_mut().append_pair("u", u).append_pair("p", p);
            assert_eq!(http.get(signed.as_str()).send().await.unwrap().status(), 403, "u={u:?} p={p:?}");
        }
        // A page elsewhere that rebinds its name to this loopback address (DNS rebinding), or
        // calls the pool from its own origin, is refused: with it, any web page the developer
        // opened could read and drive the pool as its user.
        let authority = base.trim_start_matches("http://");
        let rebound = http
            .get(format!("{base}/v1/jobs"))
            .header("host", format!("rebound.example:{}", authority.rsplit_once(':').unwrap().1))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status(), 403, "a rebound name reached the pool: {}", rebound.text().await.unwrap());
        let foreign = http
            .post(format!("{base}/v1/sign"))
            .header("origin", "http://evil.example")
            .bearer_auth(&token)
            .json(&serde_json::json!({"items": [{"method": "GET", "key": format!("users/{OWNER}/data/mine/big.bin")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(foreign.status(), 403, "another origin's page reached the pool");
        let own = http.get(format!("{base}/v1/jobs")).header("origin", base.as_str()).bearer_auth(&token).send().await;
        assert_eq!(own.unwrap().status(), 200, "the pool's own pages are answered");
        // A transfer URL that allows nothing is refused before its body is read: the answer
        // comes while the 32 MiB announced have not been sent.
        {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(authority).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(
                s,
                "PUT /v1/blob?key=users/{OWNER}/data/x&m=PUT&e=9999999999&sig=forged HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 33554432\r\n\r\n"
            )
            .unwrap();
            let mut head = [0u8; 12];
            s.read_exact(&mut head).expect("an answer before the body was sent");
            assert_eq!(&head, b"HTTP/1.1 403");
        }
        let page = get(format!("{base}/new")).await.unwrap();
        let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{csp}");
        assert!(page.text().await.unwrap().contains("/app.js"));
    });

    let open = aic(&pool.home).args(["open", "new"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&open.stdout).trim(), format!("{base}/new"));
    let open = aic(&pool.home).args(["open", "nowhere"]).output().unwrap();
    assert!(String::from_utf8_lossy(&open.stderr).contains("no page \"nowhere\""), "{open:?}");
}

/// `aic jobs` shows the newest 50 (or `--limit`, `--all`, `--since`), newest first, the same on
/// the embedded store and through the gateway (paged with `before`), reading only what it
/// shows: 1,200 jobs, 100 of them from the last hour.
#[test]
fn aic_jobs_shows_the_newest_in_a_window_locally_and_through_the_gateway() {
    let pool = Pool::start();
    let base = pool.base().unwrap();
    let now = chrono::Utc::now();
    let mut ids = Vec::new();
    for i in 0..1200u64 {
        let at = if i < 1100 { now - chrono::Duration::days(3) } else { now - chrono::Duration::hours(1) };
        let ms = at.timestamp_millis() as u64 + i;
        let id = ulid::Ulid::from_parts(ms, i as u128).to_string().to_lowercase();
        let dir = pool.home.path().join(format!("aic/store/users/{OWNER}/jobs/{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let req = serde_json::json!({
            "version": 1, "kind": "train", "owner": OWNER, "job_id": id, "entrypoint": format!("train{i}.py"),
            "miners": 1, "gpus_per_miner": 1, "max_hours": 0.5, "launcher": "command", "args": [], "env": {},
            "created_at": at, "expires_at": at + chrono::Duration::hours(1),
        });
        std::fs::write(dir.join("request.json"), req.to_string()).unwrap();
        std::fs::write(
            dir.join("status.json"),
            serde_json::json!({"seq": 3, "state": "succeeded", "at": at, "by": "worker"}).to_string(),
        )
        .unwrap();
        ids.push(id);
    }
    ids.reverse();
    let listed = |home: &str, gateway: bool, args: &[&str]| -> (Vec<String>, String) {
        let mut c = aic(&pool.home);
        c.env("AIC_HOME", pool.home.path().join(home)).arg("jobs").arg("--json").args(args);
        if gateway {
            c.env("AIC_GATEWAY", &base);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got = v.as_array().unwrap().iter().map(|j| j["job"].as_str().unwrap().to_string()).collect();
        (got, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let login = |home: &str, gateway: bool| {
        let mut c = aic(&pool.home);
        c.env("AIC_HOME", pool.home.path().join(home)).args(["login", "--env-key"]);
        c.env("AIC_PRIVATE_KEY", aic_chain::devchain::DEV_KEYS[5]);
        if gateway {
            c.env("AIC_GATEWAY", &base);
        }
        assert!(c.output().unwrap().status.success());
    };
    login("aic", false);
    login("remote", true);
    for (home, gateway) in [("aic", false), ("remote", true)] {
        let (got, said) = listed(home, gateway, &[]);
        assert_eq!(got, ids[..50], "{home}");
        assert!(said.contains("the newest 50 shown"), "{home}: {said}");
        assert_eq!(listed(home, gateway, &["--limit", "5"]).0, ids[..5], "{home}");
        assert_eq!(listed(home, gateway, &["--since", "2h", "--all"]).0, ids[..100], "{home}");
        assert_eq!(listed(home, gateway, &["--since", "2h", "--limit", "30"]).0, ids[..30], "{home}");
        let (all, said) = listed(home, gateway, &["--all"]);
        assert_eq!(all, ids, "{home}");
        assert!(!said.contains("shown"), "{home}: {said}");
        // A job named by a prefix of its id: only the ids that start with it are listed
        // (through the gateway, a paged listing of `/v1/objects`).
        let status = |prefix: &str| {
            let mut c = aic(&pool.home);
            c.env("AIC_HOME", pool.home.path().join(home)).args(["status", prefix, "--json"]);
            if gateway {
                c.env("AIC_GATEWAY", &base);
            }
            c.output().unwrap()
        };
        let one = status(&ids[3][..16]);
        assert!(one.status.success(), "{home}: {}", String::from_utf8_lossy(&one.stderr));
        assert!(String::from_utf8_lossy(&one.stdout).contains(&ids[3]), "{home}");
        let shared = &ids[0][..6];
        let many = ids.iter().filter(|i| i.starts_with(shared)).count();
        let err = String::from_utf8_lossy(&status(shared).stderr).into_owned();
        assert!(err.contains(&format!("{many} jobs start with {shared}; give more of the id")), "{home}: {err}");
        let err = String::from_utf8_lossy(&status("0000000000").stderr).into_owned();
        assert!(err.contains("no job 0000000000; see `aic jobs`"), "{home}: {err}");
    }
    let bad = aic(&pool.home).args(["jobs", "--since", "yesterday"]).output().unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since yesterday: say 30m, 2h, 3d, 1w"), "{bad:?}");
}

/// One payment per job in the web app, whatever the wallet and the tab do: a payment sped up
/// in the wallet is followed to its new hash; one slow to be mined, the tab reloaded and the
/// job tried again, is followed (never sent again); one cancelled in the wallet is said to
/// have paid nothing and, tried again, pays once. (The page kept a payment only once mined:
/// a reload while it waited, or a hash that changed, made "Pay" send a second payment under
/// a new job id.) On chain: one deposit per job, each settled, the wallet charged what the
/// jobs used and nothing more.
#[test]
fn the_web_app_pays_once_per_job_through_a_speed_up_a_reload_and_a_cancel() {
    let pool = Pool::start();
    let base = pool.base().unwrap();
    let chain = pool.chain();
    let script = pool.home.write("hello.py", "print('paid once')\n");
    let before = pool.balance(OWNER);
    let r = run_browser(
        "payments.cjs",
        &serde_json::json!({"base": base, "rpc": chain["rpc_url"], "owner": OWNER, "script": script}),
    );
    assert!(r["error"].is_null(), "{r}");
    let sends = |w: &str| r["wallets"][w]["sends"].as_array().map_or(0, |s| s.len());
    assert_eq!(sends("spedUp"), 1, "{r}");
    assert!(r["wallets"]["spedUp"]["spedUp"].is_string(), "{r}");
    assert_eq!(sends("reloaded"), 1, "the reloaded tab sent the payment again: {r}");
    assert!(r["said"]["reloaded"].as_str().unwrap().contains("does not pay twice"), "{r}");
    assert_eq!(sends("cancelled"), 2, "cancelled, then paid once: {r}");
    assert!(r["said"]["cancelled"].as_str().unwrap().contains("nothing was paid"), "{r}");
    let jobs: Vec<String> =
        ["spedUp", "reloaded", "cancelled"].iter().map(|k| r["jobs"][k].as_str().unwrap().to_string()).collect();
    // Each job runs and is settled once.
    let mut charged = 0u128;
    for job in &jobs {
        let deadline = Instant::now() + Duration::from_secs(90);
        let s = loop {
            let s = pool.status(job);
            if let Some(s) = s["settlements"].as_array().and_then(|a| a.first()).cloned() {
                break s;
            }
            assert!(Instant::now() < deadline, "job {job} was never settled: {s}");
            std::thread::sleep(Duration::from_millis(300));
        };
        charged += s["charged"].as_str().unwrap().parse::<u128>().unwrap();
    }
    // On chain: exactly one deposit per job from the wallet, all settled.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let deposits = rt.block_on(async {
        let p =
            alloy::providers::ProviderBuilder::new().connect_http(chain["rpc_url"].as_str().unwrap().parse().unwrap());
        let escrow = chain["escrow"].as_str().unwrap().parse().unwrap();
        aic_chain::escrow::deposits_of(&p, escrow, OWNER.parse().unwrap()).await.unwrap()
    });
    assert_eq!(deposits.len(), 3, "one deposit per job: {deposits:?}");
    assert!(deposits.iter().all(|d| d.now.state == aic_chain::escrow::SETTLED), "{deposits:?}");
    assert_eq!(pool.balance(OWNER), before - charged, "charged what the jobs used, once each");

    // A job paid but never submitted (the wallet paid, the tab was closed for good): past
    // its deadline the Jobs page offers its deposit back, and Reclaim takes it.
    let key = aic_chain::devchain::dev_key(5);
    assert_eq!(format!("{:#x}", key.address()), OWNER);
    let stranded = aic_schemas::JobId::generate();
    let (rpc, escrow, token): (String, alloy::primitives::Address, alloy::primitives::Address) = (
        chain["rpc_url"].as_str().unwrap().into(),
        chain["escrow"].as_str().unwrap().parse().unwrap(),
        chain["token"].as_str().unwrap().parse().unwrap(),
    );
    let run = aic_chain::escrow::run_id(key.address(), stranded.as_str(), 0);
    rt.block_on(async {
        let w = alloy::providers::ProviderBuilder::new()
            .wallet(alloy::network::EthereumWallet::from(key.clone()))
            .connect_http(rpc.parse().unwrap());
        aic_chain::escrow::deposit(&w, token, escrow, run, alloy::primitives::U256::from(10u128.pow(18)), 1000)
            .await
            .unwrap();
        aic_chain::devchain::advance_time(&w, 7 * 86_400 + 7_200).await.unwrap();
    });
    let paid = pool.balance(OWNER);
    let r = run_browser(
        "payments.cjs",
        &serde_json::json!({"base": base, "rpc": rpc, "owner": OWNER, "script": script, "mode": "reclaim"}),
    );
    assert!(r["error"].is_null(), "{r}");
    assert!(r["said"]["due"].as_str().unwrap().contains("Deposits you can take back"), "{r}");
    assert!(r["said"]["reclaimed"].as_str().unwrap().starts_with("Reclaimed 1 AIC in 0x"), "{r}");
    assert_eq!(pool.balance(OWNER), paid + 10u128.pow(18), "the stranded deposit is back");
    let state = rt.block_on(async {
        let p = alloy::providers::ProviderBuilder::new().connect_http(rpc.parse().unwrap());
        aic_chain::escrow::held(&p, escrow, key.address(), run).await.unwrap().state
    });
    assert_eq!(state, aic_chain::escrow::RECLAIMED);
}
