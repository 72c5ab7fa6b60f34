//! `aic` in pool mode (`AIC_GATEWAY`): the tutorial's flow against a pool whose bucket is
//! a real S3 server (LocalStack, signature checks on), through the `aic-functions` host
//! (gateway + webhook or poller) and real workers, paying on anvil. The user's `aic` holds
//! no pool credentials: every byte goes through URLs the gateway signed.
//!
//! Needs what `cargo xtask test` provides: LocalStack (`AIC_TEST_S3_ENDPOINT`), anvil
//! (`AIC_ANVIL`), python3 with numpy and scikit-learn, and the binaries built.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use crate::common::{repo, text};

fn bins() -> PathBuf {
    let aic = PathBuf::from(env!("CARGO_BIN_EXE_aic"));
    for b in ["aic-worker", "aic-functions"] {
        assert!(
            aic.with_file_name(b).exists(),
            "{b} is not built: run `cargo build --workspace --bins` (cargo xtask test does)"
        );
    }
    aic.parent().unwrap().to_path_buf()
}

fn endpoint() -> String {
    std::env::var("AIC_TEST_S3_ENDPOINT")
        .expect("AIC_TEST_S3_ENDPOINT is not set: run the suite with `cargo xtask test`, which starts LocalStack")
}

fn python() -> String {
    std::env::var("AIC_LOCALSTACK_PYTHON").unwrap_or_else(|_| {
        format!("{}/.cache/aic-tools/localstack-venv/bin/python", std::env::var("HOME").unwrap_or_default())
    })
}

fn fresh_bucket(tag: &str) -> String {
    let bucket = format!("aic-{tag}-{}", ulid::Ulid::new().to_string().to_lowercase());
    let ok = Command::new(python())
        .args(["-c", &format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{bucket}')",
            endpoint()
        )])
        .status()
        .unwrap();
    assert!(ok.success());
    bucket
}

#[derive(Clone, Copy, PartialEq)]
enum Events {
    Sns,
    Poll,
}

/// A pool: anvil, the functions host on a LocalStack bucket, two simulated miners.
struct Pool {
    dir: tempfile::TempDir,
    host: Child,
    url: String,
    bucket: String,
    _chain: aic_chain::devchain::DevChain,
    _rt: tokio::runtime::Runtime,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.host.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.host.wait();
    }
}

/// How the pool charges.
#[derive(Clone, Copy, PartialEq)]
enum Pay {
    Aic,
    /// `AIC_FREE_POOL=1`: no chain, nothing paid.
    Free,
}

fn pool(events: Events) -> Pool {
    pool_charging(events, Pay::Aic)
}

/// The gateway's secret in these pools (tests mint worker tokens with it).
const GATEWAY_SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// The key these pools seal users' secrets with.
const SECRETS_KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn pool_charging(events: Events, pay: Pay) -> Pool {
    pool_with(events, pay, &[])
}

/// A pool whose functions host has `env` besides.
fn pool_with(events: Events, pay: Pay, env: &[(&str, &str)]) -> Pool {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let chain = rt
        .block_on(aic_chain::devchain::start(
            &dir.path().join("state.json"),
            &dir.path().join("chain.json"),
            10u128.pow(18),
            1,
        ))
        .expect("anvil: run the suite with `cargo xtask test`, which installs it and sets AIC_ANVIL");
    let bucket = fresh_bucket(if events == Events::Sns { "sns" } else { "poll" });
    let topic = format!("aic-{bucket}");
    let c = &chain.config;
    // A port of its own, known before it starts: the web app's users sign in to this address
    // (the SIWE domain a wallet compares with the page's origin).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(bins().join("aic-functions"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("AIC_GATEWAY_DOMAIN", format!("127.0.0.1:{port}"))
        .env("AIC_STORE", format!("s3://{bucket}"))
        .env("AIC_S3_ENDPOINT", endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AIC_POOL_MINERS", "2")
        .env("AIC_POOL_GPUS", "1")
        .env("AIC_WORK_DIR", dir.path().join("work"))
        .env("AIC_GATEWAY_SECRET", GATEWAY_SECRET)
        .env("AIC_SECRETS_KEY", SECRETS_KEY)
        .env("AIC_SNS_TOPICS", format!("arn:aws:sns:us-east-1:000000000000:{topic}"))
        .env("AIC_SNS_CERT_ORIGINS", format!("{}/_aws/sns/", endpoint()))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("functions.log")).unwrap());
    match pay {
        Pay::Aic => cmd
            .env("AIC_RPC_URL", &c.rpc_url)
            .env("AIC_TOKEN", c.token.to_string())
            .env("AIC_TREASURY", c.treasury.to_string())
            .env("AIC_CHAIN_ID", c.chain_id.to_string())
            .env("AIC_PRICE", "1")
            .env("AIC_CONFIRMATIONS", "1")
            .env("AIC_ESCROW", c.escrow.unwrap().to_string())
            .env("AIC_SETTLER_KEY", aic_chain::devchain::DEV_KEYS[aic_chain::devchain::SETTLER as usize]),
        Pay::Free => cmd.env("AIC_FREE_POOL", "1").env("AIC_CHAIN_ID", c.chain_id.to_string()),
    };
    if events == Events::Poll {
        cmd.args(["--poll-ms", "200"]);
    }
    let mut host = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(host.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(dir.path().join("functions.log")).unwrap_or_default();
            panic!("aic-functions said {line:?}; its log:\n{log}")
        })
        .to_string();
    if events == Events::Sns {
        let out = Command::new(python())
            .arg(repo().join("localstack/wire.py"))
            .args(["--endpoint", &endpoint(), "--bucket", &bucket, "--topic", &topic, "--wait", "20"])
            .args(["--webhook", &format!("{url}/events")])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap();
        assert!(out.status.success(), "wire.py: {}", String::from_utf8_lossy(&out.stderr));
    }
    Pool { dir, host, url, bucket, _chain: chain, _rt: rt }
}

impl Pool {
    fn aic(&self, home: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(bins().join("aic"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("AIC_HOME", self.dir.path().join(home))
            .env("AIC_GATEWAY", &self.url)
            .env_remove("AIC_STORE")
            .env_remove("AIC_S3_ENDPOINT")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .stdin(Stdio::null());
        crate::common::shown(args, cmd)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("functions.log")).unwrap_or_default()
    }
}

/// login → data put → run (pay, upload, submit, watch) → results get → logs → jobs.
fn tutorial(p: &Pool) {
    // Before login: a clear refusal, nothing written.
    let (_, err) = text(&p.aic("u", &["data", "ls"]));
    assert!(err.contains("not signed in to the pool at") && err.lines().count() == 1, "{err}");
    assert!(p.aic("u", &["login", "--dev", "1"]).status.success(), "{}", p.log());
    let who = text(&p.aic("u", &["whoami"])).0;
    assert!(who.contains("0x70997970c51812dc3a010c7d01b50e0d17dc79c8"), "{who}");

    // Datasets and projects keep their file names through the gateway and S3.
    crate::common::odd_names_story(&|args| p.aic("u", args), &p.dir.path().join("odd"));

    let data = p.dir.path().join("digits-data");
    let made = Command::new("python3").arg(repo().join("examples/digits/make_dataset.py")).arg(&data).status().unwrap();
    assert!(made.success(), "python3 with scikit-learn is needed (cargo xtask test installs it)");
    assert!(p.aic("u", &["data", "put", data.to_str().unwrap(), "digits"]).status.success());
    assert!(text(&p.aic("u", &["data", "ls", "digits"])).0.contains("digits.csv"));

    let script = repo().join("examples/digits/train.py");
    let out = p.aic("u", &["run", script.to_str().unwrap(), "--data", "digits", "--", "--epochs", "5"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "aic run failed: {stderr}\n--- functions host:\n{}", p.log());
    assert!(stdout.contains("epoch 5/5"), "{stdout}");
    assert!(stderr.contains("quote:") && stderr.contains("succeeded; execution time"), "{stderr}");
    if stderr.contains("deposited") {
        // Settled by the functions host once the job's allocations ended (no bucket event
        // says so): what it used and what came back.
        assert!(stderr.lines().any(|l| l.trim_start().starts_with("used ") && l.contains("refunded")), "{stderr}");
    }

    let jobs: serde_json::Value = serde_json::from_slice(&p.aic("u", &["jobs", "--json"]).stdout).unwrap();
    let job = jobs[0]["job"].as_str().unwrap().to_string();
    let st: serde_json::Value = serde_json::from_slice(&p.aic("u", &["status", &job, "--json"]).stdout).unwrap();
    let states: Vec<&str> = st["history"].as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["submitted", "paid", "scheduled", "running", "succeeded"]);

    let dest = p.dir.path().join("results");
    assert!(p.aic("u", &["results", "get", &job, dest.to_str().unwrap()]).status.success());
    assert!(dest.join("model.npz").metadata().unwrap().len() > 1000);
    assert!(text(&p.aic("u", &["logs", &job])).0.contains("final test accuracy"));
    // Its GPU use, sampled by the worker and stored through the gateway with the job's token.
    let status = text(&p.aic("u", &["status", &job])).0;
    assert!(status.contains("GPU use, ") && status.contains("stand-in: simulated miner"), "{status}");
    assert!(text(&p.aic("u", &["logs", "--metrics", &job])).0.contains("[alloc 0] gpu "), "{}", p.log());

    // The pool through the gateway: the two simulated miners behind it.
    let pool: serde_json::Value = serde_json::from_slice(&p.aic("u", &["pool", "--json"]).stdout).unwrap();
    assert_eq!(pool[0]["miners"].as_array().map(|m| m.len()), Some(2), "{pool}");
    assert!(text(&p.aic("u", &["pool"])).0.starts_with("1. name: local, available miners: 2 of 2"));

    // Another user sees none of it.
    assert!(p.aic("v", &["login", "--dev", "2"]).status.success());
    let other: serde_json::Value = serde_json::from_slice(&p.aic("v", &["jobs", "--json"]).stdout).unwrap();
    assert_eq!(other.as_array().map(|a| a.len()), Some(0), "{other}");
    let (_, err) = text(&p.aic("v", &["status", &job]));
    assert!(!err.is_empty());
    let (out, _) = text(&p.aic("v", &["logs", "--metrics", &job]));
    assert!(out.is_empty(), "another wallet read the job's GPU samples: {out}");

    // The workers hold no store credentials, only their job's token, and the user's program
    // gets neither in its environment (nor from the worker's, which is non-dumpable: tested
    // in `embedded.rs`, as a user other than root).
    let probe = p.dir.path().join("probe.py");
    std::fs::write(&probe, PROBE).unwrap();
    let out = p.aic("u", &["run", probe.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let want = "store credentials: False; pool secret: False; token: False";
    assert!(stdout.contains(want), "missing {want:?} in {stdout}");
    let jobs: serde_json::Value = serde_json::from_slice(&p.aic("u", &["jobs", "--json"]).stdout).unwrap();
    let probe_job = jobs[0]["job"].as_str().unwrap().to_string();
    let dest = p.dir.path().join("probe-results");
    assert!(p.aic("u", &["results", "get", &probe_job, dest.to_str().unwrap()]).status.success());
    assert_eq!(dest.join("big.bin").metadata().unwrap().len(), 9 * 1024 * 1024);

    // And the job's token, had a program got it, reaches nothing but its job.
    let owner = format!("{:#x}", aic_chain::devchain::dev_key(1).address());
    let grant = aic_core::grant::WorkerGrant {
        owner: owner.parse().unwrap(),
        job: probe_job.parse().unwrap(),
        data: None,
        allocs: 1,
        exp: (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp(),
    };
    let token = aic_core::grant::mint(&hex::decode(GATEWAY_SECRET).unwrap(), &grant);
    let call = |path: &str, body: Option<serde_json::Value>| -> u16 {
        p._rt.block_on(async {
            let http = reqwest::Client::new();
            let url = format!("{}/v1/{path}", p.url);
            let rb = match body {
                Some(b) => http.post(url).json(&b),
                None => http.get(url),
            };
            rb.bearer_auth(&token).send().await.unwrap().status().as_u16()
        })
    };
    let sign = |method: &str, key: String| {
        call(
            "sign",
            Some(serde_json::json!({"items": [{"method": method, "key": key, "size": 1, "sha256": "00".repeat(32)}]})),
        )
    };
    let other = "users/0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc/data/digits/digits.csv".to_string();
    assert_eq!(sign("GET", other), 403, "another user's data");
    assert_eq!(sign("GET", format!("users/{owner}/jobs/01jb0000000000000000000000/output/model.npz")), 403);
    assert_eq!(sign("PUT", format!("users/{owner}/jobs/{probe_job}/code/probe.py")), 403, "its own code");
    assert_eq!(sign("PUT", format!("users/{owner}/jobs/{probe_job}/output/x.txt")), 200, "its own output");
    assert_eq!(call("jobs", None), 403, "the job list");
}

const PROBE: &str = r#"import os
env = os.environ
print(f"store credentials: {'AWS_SECRET_ACCESS_KEY' in env}; pool secret: {'AIC_GATEWAY_SECRET' in env}; token: {'AIC_WORKER_TOKEN' in env}")
# Over the single-upload size: the worker sends it in parts through the gateway.
with open(os.path.join(env["AIC_OUTPUT_DIR"], "big.bin"), "wb") as f:
    f.write(os.urandom(9 * 1024 * 1024))
"#;

#[test]
fn the_tutorial_through_the_gateway_with_bucket_events_over_sns() {
    let p = pool(Events::Sns);
    tutorial(&p);
}

#[test]
fn the_tutorial_through_the_gateway_with_the_poller() {
    let p = pool(Events::Poll);
    tutorial(&p);
}

#[test]
fn the_tutorial_on_a_free_pool_through_the_gateway() {
    let p = pool_charging(Events::Poll, Pay::Free);
    let info: serde_json::Value =
        p._rt.block_on(async { reqwest::get(format!("{}/v1/info", p.url)).await.unwrap().json().await.unwrap() });
    assert_eq!((info["free"].as_bool(), info["chain"].is_null()), (Some(true), true), "{info}");
    tutorial(&p);
    // Logging in again keeps what the pool said: still free, nothing to pay.
    assert!(p.aic("u", &["login", "--dev", "1"]).status.success());
    let out = p.aic("u", &["run", "-d", repo().join("examples/digits/train.py").to_str().unwrap(), "--data", "digits"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success() && stderr.contains("this pool charges nothing"), "{stderr}");
    assert!(text(&p.aic("u", &["whoami"])).0.contains("this pool charges nothing"));
}

/// A project's own environment, a secret and a dataset through the gateway on LocalStack, as
/// on the embedded pool (`environments.rs`, `secrets.rs`): the first job installs the
/// requirement and downloads the dataset into the miner's caches, the second takes both from
/// there; the secret reaches the program and is masked in the log the gateway serves.
#[test]
fn an_own_environment_a_secret_and_a_cached_dataset_through_the_gateway() {
    const VALUE: &str = "hf_gateway_secret_value_123";
    let p = pool_charging(Events::Poll, Pay::Free);
    assert!(p.aic("u", &["login", "--dev", "1"]).status.success(), "{}", p.log());
    let proj = p.dir.path().join("proj");
    let made = Command::new("python3")
        .arg(repo().join("examples/own-env/make_wheel.py"))
        .args([proj.join("wheels").to_str().unwrap(), "aicdemo", "1.0", "VALUE = 42\n"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    std::fs::write(proj.join("requirements.txt"), "--no-index\n--find-links wheels\naicdemo==1.0\n").unwrap();
    std::fs::write(
        proj.join("train.py"),
        "import os, aicdemo\nprint('aicdemo says', aicdemo.VALUE)\nprint('the token is', os.environ['HF_TOKEN'])\n\
         print('data:', open(os.path.join(os.environ['AIC_DATA_DIR'], 'a.txt')).read().strip(), flush=True)\n",
    )
    .unwrap();
    let data = p.dir.path().join("ds");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), "forty-two\n").unwrap();
    assert!(p.aic("u", &["data", "put", data.to_str().unwrap(), "ds"]).status.success());
    let value = p.dir.path().join("token");
    std::fs::write(&value, VALUE).unwrap();
    let set = p.aic("u", &["secret", "set", "HF_TOKEN", "--file", value.to_str().unwrap()]);
    assert!(set.status.success(), "{}", text(&set).1);
    let run = || {
        let out = p.aic(
            "u",
            &["run", proj.to_str().unwrap(), "--entrypoint", "train.py", "--data", "ds", "--secret", "HF_TOKEN"],
        );
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}\n--- functions host:\n{}", p.log());
        assert!(stdout.contains("aicdemo says 42") && stdout.contains("data: forty-two"), "{stdout}");
        assert!(stdout.contains("the token is ***") && !stdout.contains(VALUE), "not masked: {stdout}");
        stdout
    };
    let first = run();
    assert!(first.contains("installed 1 package ("), "{first}");
    assert!(first.contains("dataset ds (1 file") && first.contains("downloaded in"), "{first}");
    let second = run();
    assert!(second.contains("1 package, cached on this miner"), "{second}");
    assert!(second.contains("from this miner's cache"), "{second}");
}

/// A mixed farm behind the gateway, its models priced apart: `aic pool` shows each model's
/// price, a job asking memory or a model lands on those miners and is quoted and charged at
/// their price, one asking a model the pool lacks is refused before paying, and the host's
/// `/metrics` counts the GPUs of each model.
#[test]
fn gpu_models_memory_and_their_prices_through_the_gateway() {
    let p = pool_with(
        Events::Poll,
        Pay::Aic,
        &[
            ("AIC_POOL_GPU_TYPES", "A10:24:1,T4:16:1"),
            ("AIC_GPU_PRICES", "A10=2,T4=0.5"),
            ("AIC_METRICS_TOKEN", "scrape"),
        ],
    );
    assert!(p.aic("u", &["login", "--dev", "1"]).status.success(), "{}", p.log());
    let pool = text(&p.aic("u", &["pool"])).0;
    assert!(pool.contains("A10 24 GB: 1 of 1 free, 2 AIC per GPU-hour"), "{pool}");
    assert!(pool.contains("T4 16 GB: 1 of 1 free, 0.5 AIC per GPU-hour"), "{pool}");
    let who = p.dir.path().join("who.sh");
    std::fs::write(&who, "hostname\n").unwrap();
    for (args, miner, price) in [
        (["--min-gpu-memory", "20"], "miner-1", "2 AIC per GPU-hour (A10)"),
        (["--gpu-type", "t4"], "miner-2", "0.5 AIC per GPU-hour (T4)"),
    ] {
        let mut argv = vec!["run", who.to_str().unwrap(), "--hours", "0.01"];
        argv.extend(args);
        let out = p.aic("u", &argv);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}\n--- functions host:\n{}", p.log());
        assert!(stdout.contains(miner), "{args:?} ran elsewhere: {stdout}");
        assert!(stderr.contains(price), "{stderr}");
    }
    let out = p.aic("u", &["run", who.to_str().unwrap(), "--gpu-type", "H100"]);
    let stderr = text(&out).1;
    assert!(!out.status.success());
    assert!(
        stderr.contains("GPUs of model H100")
            && stderr.contains("1 × A10 24 GB, 1 × T4 16 GB")
            && stderr.contains("nothing was paid"),
        "{stderr}"
    );
    let scrape = reqwest::Client::new().get(format!("{}/metrics", p.url)).header("authorization", "Bearer scrape");
    let figures = p._rt.block_on(async { scrape.send().await.unwrap().text().await.unwrap() });
    assert!(figures.contains(r#"aic_gpus{gateway="local",model="A10",state="total"} 1"#), "{figures}");
    assert!(figures.contains(r#"aic_events_handled_total{function="validate",outcome="validated"} 2"#), "{figures}");
}

#[test]
fn exec_runs_commands_inside_a_running_job_for_its_owner_only() {
    let p = pool_charging(Events::Poll, Pay::Free);
    assert!(p.aic("u", &["login", "--dev", "1"]).status.success(), "{}", p.log());
    let script = p.dir.path().join("wait.sh");
    std::fs::write(&script, "echo started\nsleep 120\n").unwrap();
    let out = p.aic("u", &["run", "-d", script.to_str().unwrap(), "--miners", "2"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let job = text(&out).0.trim().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !text(&p.aic("u", &["logs", &job])).0.contains("started") {
        assert!(std::time::Instant::now() < deadline, "the job never started: {}", p.log());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // Output on its own streams, the exit code, the job's environment and folder.
    let t0 = std::time::Instant::now();
    let out = p.aic("u", &["exec", &job, "--", "sh", "-c", "echo out; echo err >&2; echo job=$AIC_JOB_ID; ls; exit 3"]);
    eprintln!("aic exec: first output after {:?} (whole command)", t0.elapsed());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stdout.contains("out\n") && stdout.contains(&format!("job={job}")) && stdout.contains("wait.sh"),
        "{stdout}"
    );
    assert!(stderr.contains("err") && !stdout.contains("err"), "{stdout} / {stderr}");
    // Stdin is passed through.
    let mut cmd = Command::new(bins().join("aic"));
    cmd.args(["exec", &job, "--", "cat"])
        .current_dir(p.dir.path())
        .env("AIC_HOME", p.dir.path().join("u"))
        .env("AIC_GATEWAY", &p.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"through stdin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!((out.status.code(), text(&out).0.as_str()), (Some(0), "through stdin\n"), "{}", text(&out).1);
    // Every allocation, tagged.
    let out = p.aic("u", &["exec", &job, "--all", "--", "sh", "-c", "echo index=$AIC_ALLOC_INDEX"]);
    let stdout = text(&out).0;
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(stdout.contains("[alloc 0] index=0") && stdout.contains("[alloc 1] index=1"), "{stdout}");
    // A command that does not exist, and an allocation that does not.
    let out = p.aic("u", &["exec", &job, "--", "no-such-command-here"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out).1.contains("cannot run no-such-command-here"), "{}", text(&out).1);
    let out = p.aic("u", &["exec", &job, "--alloc", "5", "--", "true"]);
    assert!(!out.status.success() && text(&out).1.contains("has 2 allocations"), "{}", text(&out).1);
    // A shell, driven through a terminal: it sees the job, follows a resize, a Ctrl-C stops
    // its foreground program but not the shell, and its exit code comes back.
    let mut term = Terminal::open(&p, &["shell", &job]);
    term.type_and_wait("echo shell-$AIC_JOB_ID\r", &format!("shell-{job}"));
    term.resize(40, 120);
    term.type_and_wait("stty size\r", "40 120");
    term.type_str("sleep 100\r");
    std::thread::sleep(std::time::Duration::from_millis(700));
    term.type_str("\x03");
    term.type_and_wait("echo alive-$((1+1))\r", "alive-2");
    term.type_str("exit 7\r");
    assert_eq!(term.wait(), Some(7), "{}", term.seen());
    assert_eq!(records_count(&p, &job), 6, "the shell is recorded too");

    // Another wallet reaches nothing of it.
    assert!(p.aic("v", &["login", "--dev", "2"]).status.success());
    let out = p.aic("v", &["exec", &job, "--", "true"]);
    assert!(!out.status.success() && text(&out).1.contains("no job"), "{}", text(&out).1);
    // Each session is recorded in the bucket: who, which allocation, the command, its exit.
    let records = records_of(&p, &job);
    assert_eq!(records.len(), 6, "{records:?}");
    assert!(records.iter().any(|r| r["exit"] == 3 && r["argv"][0] == "sh" && r["alloc"] == 0), "{records:?}");
    // Once the job has ended, there is nothing to run a command in.
    assert!(p.aic("u", &["cancel", &job]).status.success());
    let out = p.aic("u", &["exec", &job, "--", "true"]);
    assert!(!out.status.success() && text(&out).1.contains("is cancelled, not running"), "{}", text(&out).1);
}

/// A program that counts to 8, a step every half second, keeping its count in its outputs
/// (its checkpoint), and going on from the count it finds there.
const STEPS: &str = "n=$(cat \"$AIC_OUTPUT_DIR/step\" 2>/dev/null || echo 0)\necho \"from step $n\"\n\
while [ $n -lt 8 ]; do n=$((n+1)); echo $n > \"$AIC_OUTPUT_DIR/step\"; echo \"step $n\"; sleep 0.5; done\n";

#[test]
fn a_cancelled_job_resumes_through_the_gateway_paid_and_settled_once_per_run() {
    let p = pool(Events::Poll);
    assert!(p.aic("u", &["login", "--dev", "1"]).status.success(), "{}", p.log());
    let script = p.dir.path().join("steps.sh");
    std::fs::write(&script, STEPS).unwrap();
    let out = p.aic("u", &["run", "-d", script.to_str().unwrap(), "--hours", "1"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let job = text(&out).0.trim().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !text(&p.aic("u", &["logs", &job])).0.contains("step 3") {
        assert!(std::time::Instant::now() < deadline, "the job never got going: {}", p.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(p.aic("u", &["cancel", &job]).status.success());
    let state = |home: &str| {
        let v: serde_json::Value = serde_json::from_slice(&p.aic(home, &["status", &job, "--json"]).stdout).unwrap();
        v["history"].as_array().and_then(|h| h.last().cloned()).unwrap_or_default()
    };
    while state("u")["state"] != "cancelled" {
        assert!(std::time::Instant::now() < deadline, "never cancelled: {}", p.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Another wallet cannot resume it: it sees no such job of its own.
    assert!(p.aic("v", &["login", "--dev", "2"]).status.success());
    let out = p.aic("v", &["resume", &job]);
    assert!(!out.status.success() && text(&out).1.contains("no job"), "{}", text(&out).1);

    let out = p.aic("u", &["resume", &job, "--hours", "1"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}\n{}", p.log());
    assert!(stderr.contains("resumed as run 2") && stderr.contains(&format!("job {job} succeeded")), "{stderr}");
    let logs = text(&p.aic("u", &["logs", &job])).0;
    let from: u32 = logs
        .lines()
        .filter_map(|l| l.strip_prefix("from step "))
        .nth(1)
        .unwrap_or_else(|| panic!("a second run:\n{logs}"))
        .trim()
        .parse()
        .unwrap();
    assert!(from >= 3, "run 2 went on from step {from}, not from its checkpoint\n{logs}");
    let second: Vec<&str> = logs.lines().skip_while(|l| *l != format!("from step {from}")).collect();
    assert_eq!(second.iter().filter(|l| l.starts_with("step ")).count() as u32, 8 - from, "{logs}");

    // Each run paid and settled once; on chain the treasury has what both used, the owner
    // the rest, the escrow nothing.
    let st: serde_json::Value = serde_json::from_slice(&p.aic("u", &["status", &job, "--json"]).stdout).unwrap();
    let settled = st["settlements"].as_array().unwrap();
    assert_eq!(settled.iter().map(|s| s["run"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1], "{st}");
    let mut charged = 0u128;
    for s in settled {
        let (c, r): (u128, u128) =
            (s["charged"].as_str().unwrap().parse().unwrap(), s["refunded"].as_str().unwrap().parse().unwrap());
        assert_eq!(c + r, 10u128.pow(18), "{s}");
        charged += c;
    }
    let c = &p._chain.config;
    let balance = |who: alloy::primitives::Address| {
        p._rt.block_on(async {
            let provider = alloy::providers::ProviderBuilder::new().connect_http(c.rpc_url.parse().unwrap());
            u128::try_from(aic_chain::token::balance(&provider, c.token, who).await.unwrap()).unwrap()
        })
    };
    assert_eq!(balance(c.treasury), charged);
    assert_eq!(balance(aic_chain::devchain::dev_key(1).address()), aic_chain::devchain::DEV_FUNDS - charged);
    assert_eq!(balance(c.escrow.unwrap()), 0);
}

/// The `aic exec` session records of `job` in the pool's bucket.
fn records_of(p: &Pool, job: &str) -> Vec<serde_json::Value> {
    p._rt.block_on(async {
        let store = aic_core::StoreConfig::S3 {
            bucket: p.bucket.clone(),
            endpoint: Some(endpoint()),
            region: "us-east-1".into(),
            access_key: Some("test".into()),
            secret_key: Some("test".into()),
            session_token: None,
        }
        .open()
        .unwrap();
        let owner = format!("{:#x}", aic_chain::devchain::dev_key(1).address());
        let keys = store.list(&format!("pool/exec/{owner}/{job}/")).await.unwrap();
        let mut out = vec![];
        for k in keys {
            out.push(store.get_json::<serde_json::Value>(k.location.as_ref(), 1 << 16).await.unwrap().unwrap());
        }
        out
    })
}

fn records_count(p: &Pool, job: &str) -> usize {
    records_of(p, job).len()
}

/// `aic` on a terminal of its own (a pseudo-terminal this test drives, as a user would).
struct Terminal {
    master: std::fs::File,
    child: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Terminal {
    fn open(p: &Pool, args: &[&str]) -> Terminal {
        use std::os::unix::process::CommandExt;
        let ws = nix::pty::Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(&ws, None).unwrap();
        let slave = || Stdio::from(pty.slave.try_clone().unwrap());
        let mut cmd = Command::new(bins().join("aic"));
        cmd.args(args)
            .current_dir(p.dir.path())
            .env("AIC_HOME", p.dir.path().join("u"))
            .env("AIC_GATEWAY", &p.url)
            .stdin(slave())
            .stdout(slave())
            .stderr(slave());
        // SAFETY: a new session whose controlling terminal is the pty, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(pty.slave);
        let master = std::fs::File::from(pty.master);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
                if n == 0 {
                    break;
                }
                into.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { master, child, seen }
    }

    fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    fn type_str(&mut self, keys: &str) {
        std::io::Write::write_all(&mut self.master, keys.as_bytes()).unwrap();
    }

    fn type_and_wait(&mut self, keys: &str, want: &str) {
        let from = self.seen.lock().unwrap().len();
        self.type_str(keys);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = String::from_utf8_lossy(&self.seen.lock().unwrap()[from..]).into_owned();
            // What is typed is echoed too: `want` is what only running it prints.
            if text.contains(want) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {want:?} after typing {keys:?}; the terminal shows:\n{}",
                self.seen()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize through the pointer.
        unsafe { nix::libc::ioctl(self.master.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws) };
    }

    fn wait(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(std::time::Instant::now() < deadline, "aic shell did not end: {}", self.seen());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// The web app of a pool on LocalStack, in Chromium with the injected wallet
/// (`browser/webapp.cjs`): the tutorial end to end — sign in, the digits dataset uploaded
/// through presigned URLs (the bucket's CORS, set by `localstack/wire.py`), train_mpi.py on
/// two miners paid and signed in the wallet, the log to success, the checkpoint downloaded
/// from the bucket byte for byte, deployed, its address answering, removed.
#[test]
fn the_tutorial_in_the_web_app_of_a_pool() {
    let p = pool(Events::Sns);
    let chain: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.dir.path().join("chain.json")).unwrap()).unwrap();
    let (csv, first) = crate::common::digits_dataset(&p.dir.path().join("digits-data"));
    let owner = "0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc";
    let cfg = serde_json::json!({
        "base": p.url, "rpc": chain["rpc_url"], "out": repo().join("target"), "owner": owner,
        "other": "0x976ea74026e726554db657fa54763abd0c3a0aa9", "many": owner,
        "dataset": [csv], "project": repo().join("examples/digits"),
        "serve": repo().join("examples/digits/serve"), "pixels": &first[..64], "token": chain["token"],
        "prefix": "webapp-pool", "tutorialOnly": true,
    });
    let r = crate::common::run_webapp(&cfg);
    let dump = serde_json::to_string_pretty(&r).unwrap();
    assert!(r["error"].is_null(), "the browser run stopped: {dump}\n{}", p.log());
    assert_eq!(r["console"], serde_json::json!([]), "errors on the pages (CSP, CORS): {dump}");
    assert_eq!(r["jobState"], "succeeded", "{dump}");
    // Its GPU use drawn: a line for each allocation's GPU, the simulated miners' stand-in said.
    let lines: Vec<&str> = r["gpuLines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("alloc 0 · GPU ") && lines[1].starts_with("alloc 1 · GPU "),
        "{dump}"
    );
    assert!(r["gpuUse"].as_str().unwrap().contains("the program's CPU use stands in for GPU utilization"), "{dump}");
    assert!(r["log"].as_str().unwrap().contains("[rank 1]"), "{dump}");
    assert_eq!(r["wallet"]["sends"].as_array().map(Vec::len), Some(2), "one payment a job: {dump}");
    assert_eq!(r["prediction"]["status"], 200, "{dump}");
    assert_eq!(r["prediction"]["body"]["digit"].as_f64(), Some(first[64]), "{dump}");
    // The checkpoint the browser downloaded is the bucket's, byte for byte.
    let job = r["job"].as_str().unwrap();
    let got = Command::new(python())
        .args(["-c", &format!(
            "import boto3,sys; sys.stdout.buffer.write(boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').get_object(Bucket='{}', Key='users/{owner}/jobs/{job}/output/model.npz')['Body'].read())",
            endpoint(), p.bucket
        )])
        .output()
        .unwrap();
    assert!(got.status.success() && !got.stdout.is_empty());
    assert_eq!(std::fs::read(r["downloaded"].as_str().unwrap()).unwrap(), got.stdout);
    // The CLI of the same wallet sees the deployment the browser made, removed
    // (`/v1/deployments`: from the name dispatch recorded).
    let login = {
        let mut cmd = Command::new(bins().join("aic"));
        cmd.args(["login", "--env-key"])
            .env("AIC_HOME", p.dir.path().join("web-cli"))
            .env("AIC_GATEWAY", &p.url)
            .env("AIC_PRIVATE_KEY", aic_chain::devchain::DEV_KEYS[5])
            .stdin(Stdio::null());
        crate::common::shown(&["login"], cmd)
    };
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    let listed = p.aic("web-cli", &["deploy", "list", "--json"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let dep = r["deployment"].as_str().unwrap();
    let row = v.as_array().unwrap().iter().find(|d| d["deployment"] == dep).unwrap_or_else(|| panic!("{v}"));
    assert_eq!((row["name"].as_str(), row["state"].as_str()), (Some("digits-web"), Some("cancelled")), "{v}");
}

/// A FastAPI app deployed private through the gateway on LocalStack: served by uvicorn, its
/// keys made, listed and revoked through the gateway's routes; a request without a key, or
/// with the revoked one, is refused by the functions host; with one, its server-sent events
/// come one by one. Another wallet cannot reach the deployment's keys. Its requests are
/// counted (`aic deploy status` through the gateway). An autoscaled one stops when idle and
/// the next request wakes it.
#[test]
fn a_private_asgi_deployment_through_the_gateway() {
    let p = pool_with(
        Events::Poll,
        Pay::Aic,
        &[("AIC_SERVING_STATS_SECONDS", "1"), ("AIC_SCALE_IDLE_SECONDS", "3"), ("AIC_SCALE_DOWN_SECONDS", "1")],
    );
    assert!(p.aic("u", &["login", "--dev", "1"]).status.success(), "{}", p.log());
    let proj = repo().join("examples/fastapi");
    let out = p.aic("u", &["deploy", proj.to_str().unwrap(), "--name", "fast", "--private"]);
    assert!(out.status.success(), "{:?}\n{}", text(&out), p.log());
    let (api, dep, _) = crate::deploy::addresses(&out.stdout);
    let status = |key: Option<&str>| -> String {
        let mut c = Command::new("curl");
        c.args(["-s", "--max-time", "20", "-o", "/dev/stderr", "-w", "%{http_code}"]);
        if let Some(k) = key {
            c.args(["-H", &format!("Authorization: Bearer {k}")]);
        }
        let o = c.arg(&api).output().unwrap();
        let code = String::from_utf8_lossy(&o.stdout).to_string();
        if code != "200" {
            eprintln!("{code}: {}", String::from_utf8_lossy(&o.stderr));
        }
        code
    };
    assert_eq!(status(None), "401");
    let made = p.aic("u", &["deploy", "key", "create", "fast"]);
    let key = String::from_utf8_lossy(&made.stdout).trim().to_string();
    assert!(made.status.success() && key.starts_with("aicdk_"), "{:?}", text(&made));
    assert_eq!(status(Some(&key)), "200");
    crate::deploy::events_come_one_by_one(&api, Some(&key));
    let ls = text(&p.aic("u", &["deploy", "key", "ls", "fast", "--json"])).0;
    let keys: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{ls}");

    // Another wallet: the deployment is not theirs to find, nor its keys to list.
    assert!(p.aic("v", &["login", "--dev", "2"]).status.success());
    let theirs = p.aic("v", &["deploy", "key", "ls", &dep]);
    assert!(!theirs.status.success(), "{:?}", text(&theirs));
    // Through the gateway's route with their own session: no key for a deployment not theirs
    // (one made under their address would not open it anyway: `deploy.rs` shows that).
    let session: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.dir.path().join("v/gateway.json")).unwrap()).unwrap();
    let token = session["token"].as_str().unwrap().to_string();
    let made_by_them = p._rt.block_on(async {
        let http = reqwest::Client::new();
        let mut codes = vec![];
        for scope in ["fast", dep.as_str()] {
            let r = http
                .post(format!("{}/v1/deployments/{scope}/keys", p.url))
                .bearer_auth(&token)
                .body("{}")
                .send()
                .await
                .unwrap();
            codes.push(r.status().as_u16());
        }
        codes
    });
    assert_eq!(made_by_them, [404, 404], "another wallet made keys for a deployment not theirs");

    let id = keys[0]["id"].as_str().unwrap();
    assert!(p.aic("u", &["deploy", "key", "revoke", "fast", id]).status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status(Some(&key)) != "401" {
        assert!(std::time::Instant::now() < deadline, "a revoked key still opens the deployment");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A new key opens it (the gateway reads the keys again within a second); the revoked one
    // stays refused.
    let made = p.aic("u", &["deploy", "key", "create", "fast"]);
    let fresh = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status(Some(&fresh)) != "200" {
        assert!(std::time::Instant::now() < deadline, "a new key does not open the deployment");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(status(Some(&key)), "401");

    // Counted: every request above reached the gateway (the refused ones as refusals).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let o = p.aic("u", &["deploy", "status", "fast", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let s = &v["summary"];
        if s["refused"].as_u64().is_some_and(|r| r >= 3) && s["requests"].as_u64().is_some_and(|r| r >= 7) {
            assert_eq!(s["replica_errors"], 0, "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}\n{}", p.log());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    // Autoscaled to zero through the gateway: stopped when idle, woken by a request.
    let out = p.aic(
        "u",
        &["deploy", proj.to_str().unwrap(), "--name", "sleepy", "--min-replicas", "0", "--max-replicas", "1"],
    );
    assert!(out.status.success(), "{:?}\n{}", text(&out), p.log());
    let (sleepy, _, _) = crate::deploy::addresses(&out.stdout);
    let live = || -> u64 {
        let v: serde_json::Value =
            serde_json::from_slice(&p.aic("u", &["deploy", "status", "sleepy", "--json"]).stdout).unwrap_or_default();
        v["live"].as_u64().unwrap_or(u64::MAX)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while live() != 0 {
        assert!(std::time::Instant::now() < deadline, "never stopped when idle\n{}", p.log());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let o = Command::new("curl")
        .args(["-s", "--max-time", "180", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(&sleepy)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200", "{}", p.log());
    assert_eq!(live(), 1);
}
