//! The tutorial's user stories on the embedded pool, through the real `aic` and
//! `aic-worker` binaries and real processes. Training needs `python3` with numpy and
//! scikit-learn on PATH (`cargo xtask test` provides it).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Exports the digits set and uploads it as dataset `digits`.
fn put_digits(h: &Home) {
    let data = h.path().join("digits-data");
    let made = Command::new("python3").arg(repo().join("examples/digits/make_dataset.py")).arg(&data).status().unwrap();
    assert!(made.success(), "python3 with scikit-learn is needed (cargo xtask test installs it)");
    assert!(h.aic(&["data", "put", data.to_str().unwrap(), "digits"]).status.success());
    let ls = text(&h.aic(&["data", "ls", "digits"])).0;
    assert!(ls.contains("digits.csv"), "{ls}");
}

#[test]
fn aic_run_trains_the_example_and_the_checkpoint_comes_back() {
    let h = Home::new();
    put_digits(&h);

    let script = repo().join("examples/digits/train.py");
    let out = h.aic(&["run", script.to_str().unwrap(), "--data", "digits", "--", "--epochs", "5"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "aic run failed: {stderr}");
    assert!(stdout.contains("epoch 5/5"), "the log shows training: {stdout}");
    assert!(stderr.contains("succeeded; execution time"), "{stderr}");

    let job = h.last_job();
    let hist = h.history(&job);
    let states: Vec<&str> = hist.iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["submitted", "paid", "scheduled", "running", "succeeded"]);
    assert!(hist.last().unwrap()["detail"]["wall_seconds"].as_f64().unwrap() > 0.0);

    let dest = h.path().join("results");
    assert!(h.aic(&["results", "get", &job, dest.to_str().unwrap()]).status.success());
    assert!(dest.join("model.npz").metadata().unwrap().len() > 1000, "the checkpoint is downloaded");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["test_accuracy"].as_f64().unwrap() > 0.85, "{metrics}");

    // The log stays readable after the run.
    let logs = text(&h.aic(&["logs", &job[..10]])).0;
    assert!(logs.contains("final test accuracy"), "{logs}");
}

#[test]
fn a_failing_script_fails_with_its_exit_code_and_log_tail() {
    let h = Home::new();
    let script = h.write("fail.sh", "echo starting\necho 'something broke' >&2\nexit 3\n");
    let out = h.aic(&["run", script.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("failed: fail.sh exited with code 3 on miner-1 (allocation 0)"), "{stderr}");
    let job = h.last_job();
    let last = h.history(&job).pop().unwrap();
    assert_eq!(last["state"], "failed");
    assert_eq!(last["detail"]["exit_code"], 3);
    assert!(last["detail"]["log_tail"].as_str().unwrap().contains("something broke"), "{last}");
}

#[test]
fn a_job_stops_at_its_paid_time_and_keeps_its_outputs() {
    // Paid for 0.002 h (7.2 s); the script would run for 40 s.
    let h = Home::new();
    let script = h.write(
        "long.sh",
        "echo started\necho early > \"$AIC_OUTPUT_DIR/early.txt\"\nfor i in $(seq 1 40); do echo tick $i; sleep 1; done\necho never\n",
    );
    let started = std::time::Instant::now();
    let out = h.aic(&["run", script.to_str().unwrap(), "--hours", "0.002"]);
    let took = started.elapsed();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped at its time limit: paid for 0.002 h; outputs up to then are kept"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(30), "ran for {took:?}");
    let job = h.last_job();
    let last = h.history(&job).pop().unwrap();
    assert_eq!(last["state"], "timed_out");
    let wall = last["detail"]["wall_seconds"].as_f64().unwrap();
    assert!((7.0..10.0).contains(&wall), "stopped after {wall} s");
    assert!(!text(&h.aic(&["logs", &job])).0.contains("never"));
    let dest = h.path().join("kept");
    assert!(h.aic(&["results", "get", &job, dest.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read_to_string(dest.join("early.txt")).unwrap().trim(), "early");
}

#[test]
fn a_job_pays_for_what_it_used_and_gets_the_rest_back() {
    // The dev chain charges 1 AIC per GPU-hour and takes deposits into its escrow: the job
    // deposits 1 AIC for an hour, runs a few seconds, and the rest comes back.
    let h = Home::new();
    let _pool = DevUp::start(&h);
    let script = h.write("short.sh", "echo working; sleep 3; echo done\n");
    let out = h.aic(&["run", script.to_str().unwrap(), "--hours", "1"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("deposited 1 AIC into the pool's escrow"), "{stderr}");
    let line = stderr.lines().find(|l| l.trim_start().starts_with("used ")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("GPU-seconds") && line.contains("; refunded 0.99") && line.contains(" in 0x"), "{line}");
    let job = h.last_job();
    let st: serde_json::Value = serde_json::from_slice(&h.aic(&["status", &job, "--json"]).stdout).unwrap();
    let s = &st["settlements"][0];
    let (charged, refunded): (u128, u128) =
        (s["charged"].as_str().unwrap().parse().unwrap(), s["refunded"].as_str().unwrap().parse().unwrap());
    let gpu_seconds = s["gpu_seconds"].as_u64().unwrap();
    assert!((3..30).contains(&gpu_seconds), "{s}");
    assert_eq!(charged, (gpu_seconds as u128 * 10u128.pow(18)).div_ceil(3600), "the quoted price per GPU-second");
    assert_eq!(charged + refunded, 10u128.pow(18));
    // On chain: the treasury holds the charge, the owner the rest, the escrow nothing.
    let chain: aic_chain::ChainConfig =
        serde_json::from_slice(&std::fs::read(h.path().join("aic/chain.json")).unwrap()).unwrap();
    let owner = std::fs::read_dir(h.path().join("aic/store/users")).unwrap().next().unwrap().unwrap().file_name();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let balance = |who: alloy::primitives::Address| {
        rt.block_on(async {
            let p = alloy::providers::ProviderBuilder::new().connect_http(chain.rpc_url.parse().unwrap());
            u128::try_from(aic_chain::token::balance(&p, chain.token, who).await.unwrap()).unwrap()
        })
    };
    assert_eq!(balance(chain.treasury), charged);
    assert_eq!(balance(owner.to_str().unwrap().parse().unwrap()), aic_chain::devchain::DEV_FUNDS - charged);
    assert_eq!(balance(chain.escrow.unwrap()), 0);
    let status = text(&h.aic(&["status", &job])).0;
    assert!(status.contains("paid 1 AIC by deposit") && status.contains("refunded"), "{status}");
    let spend = text(&h.aic(&["spend"])).0;
    assert!(spend.lines().any(|l| l.starts_with(&job) && l.contains("succeeded")), "{spend}");
    assert!(spend.contains("total: paid 1 AIC, charged 0.00"), "{spend}");
    // Only the jobs of a window: this one is in the last hour, none is after 2099.
    assert!(text(&h.aic(&["spend", "--since", "1h"])).0.contains("total: paid 1 AIC"));
    let none = h.aic(&["spend", "--since", "2099-01-01"]);
    assert!(none.status.success() && text(&none).1.contains("nothing paid yet"), "{}", text(&none).1);
    let quote = h.aic(&["quote", "--hours", "2"]);
    assert!(text(&quote).1.contains("that is a deposit"), "{}", text(&quote).1);
}

#[test]
fn exec_reaches_a_running_job_on_the_embedded_pool() {
    // The same command as on a pool: the embedded host relays it; its workers keep their
    // store access and take their job's commands from it.
    let h = Home::new();
    let pool = DevUp::start(&h);
    let script = h.write("wait.sh", "echo started\nsleep 60\n");
    let out = h.aic(&["run", "-d", script.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    let job = text(&out).0.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text(&h.aic(&["logs", &job])).0.contains("started") {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = h.aic(&["exec", &job, "--", "sh", "-c", "echo hi-$AIC_JOB_ID; echo oops >&2; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out).1);
    assert!(text(&out).0.contains(&format!("hi-{job}")) && text(&out).1.contains("oops"), "{:?}", text(&out));
    // Output far over the gateway's 64 KiB body limit comes back whole, with the exit code
    // (a post over the limit was refused and the output lost with the code).
    let out = h.aic(&["exec", &job, "--", "sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
    assert!(out.stdout.len() == 3_000_000 && out.stdout.iter().all(|b| *b == b'x'), "{} bytes", out.stdout.len());
    // -i streams stdin as it comes.
    let mut child =
        h.cmd(&["exec", "-i", &job, "--", "cat"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"streamed\nin\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!((out.status.code(), text(&out).0.as_str()), (Some(0), "streamed\nin\n"));
    // A megabyte through -i arrives whole (each frame under the gateway's body limit).
    let mut child =
        h.cmd(&["exec", "-i", &job, "--", "wc", "-c"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &vec![b'm'; 1_000_000]));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(text(&out).0.trim(), "1000000", "{}", text(&out).1);
    // 1,000 sessions asked for at once and 100 MB on a session's stdin: refused past the
    // limits, and the host's memory stays bounded.
    let host_rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pool.0.id())).unwrap();
        let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap();
        kb.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap() * 1024
    };
    let rss_before = host_rss();
    let base = std::fs::read_to_string(h.path().join("aic/serve.addr")).unwrap();
    let secret = hex::decode(std::fs::read_to_string(h.path().join("aic/exec.secret")).unwrap().trim()).unwrap();
    let owner: aic_schemas::Address = std::fs::read_dir(h.path().join("aic/store/users"))
        .unwrap()
        .flatten()
        .find(|u| u.path().join("jobs").join(&job).exists())
        .unwrap()
        .file_name()
        .to_string_lossy()
        .parse()
        .unwrap();
    let token = aic_functions::gateway::session_token(&secret, &owner, chrono::Utc::now() + chrono::Duration::hours(1));
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut child = h.cmd(&["exec", "-i", &job, "--", "sleep", "60"]).stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let counted = written.clone();
    std::thread::spawn(move || {
        let mb = vec![b's'; 1 << 20];
        for _ in 0..100 {
            if std::io::Write::write_all(&mut stdin, &mb).is_err() {
                return;
            }
            counted.fetch_add(mb.len(), std::sync::atomic::Ordering::SeqCst);
        }
    });
    // Held back once the session holds its 4 MiB unread: what was written stops growing.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = usize::MAX;
    loop {
        let now = written.load(std::sync::atomic::Ordering::SeqCst);
        if now == last && now > 0 {
            break;
        }
        last = now;
        assert!(Instant::now() < deadline, "100 MB of stdin never held back");
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert!(last < 20 << 20, "{} MiB of stdin taken in", last >> 20);
    let grown = host_rss().saturating_sub(rss_before);
    assert!(grown < 64 << 20, "the host grew by {} MiB", grown >> 20);
    let _ = child.kill();
    let _ = child.wait();
    // ssh and scp reach the allocation through `aic ssh-config`, with the user's own key.
    let key = h.path().join("id_test");
    let made =
        std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(&key).status();
    assert!(made.unwrap().success());
    let out = h.aic(&["ssh-config", &job, "--key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    let cfg = h.write("ssh_config", &text(&out).0);
    let host = format!("aic-{job}-0");
    let out = std::process::Command::new("ssh").arg("-F").arg(&cfg).args([&host, "echo over-ssh"]).output().unwrap();
    assert!(text(&out).0.contains("over-ssh"), "{:?}", text(&out));
    let local = h.write("sent.txt", "sent by scp\n");
    let remote = format!("{host}:/tmp/aic-scp-{job}.txt");
    let out = std::process::Command::new("scp").arg("-F").arg(&cfg).arg(&local).arg(&remote).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let out = h.aic(&["exec", &job, "--", "cat", &format!("/tmp/aic-scp-{job}.txt")]);
    assert_eq!(text(&out).0, "sent by scp\n");
    // What a scheduler's own exec API (Nomad's) runs in the task: `aic-worker in-job -- CMD`,
    // in the program's folder with its environment and none of the task's store access.
    // Sandboxed (as root), the allocation's folder is where its worker sees it, in its mount
    // namespace: the command runs there, as a task's exec does.
    let worker = workers_of(&job)[0];
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    let work = environ
        .split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"AIC_WORK_DIR="))
        .map(|v| std::path::PathBuf::from(String::from_utf8_lossy(v).into_owned()))
        .unwrap();
    let in_job = || {
        let bin = aic_bin().with_file_name("aic-worker");
        if work.exists() {
            std::process::Command::new(bin)
        } else {
            let mut c = std::process::Command::new("nsenter");
            c.args(["-t", &worker.to_string(), "-m", "-p", "--"]).arg(bin);
            c
        }
    };
    let out = in_job()
        .args([
            "in-job",
            "--",
            "sh",
            "-c",
            "echo job=$AIC_JOB_ID data=$AIC_DATA_DIR; pwd; echo key=$AWS_SECRET_ACCESS_KEY",
        ])
        .env("AIC_WORK_DIR", &work)
        .env("AWS_SECRET_ACCESS_KEY", "the-pools-own")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("job={job} data=")) && stdout.contains(&format!("{}/code\n", work.display())),
        "{stdout}"
    );
    assert!(stdout.contains("key=\n"), "the task's store access is not passed on: {stdout}");
    let out = in_job().args(["in-job", "--", "no-such-command-here"]).env("AIC_WORK_DIR", &work).output().unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out).1.contains("cannot run no-such-command-here"), "{}", text(&out).1);
    // One job holds at most 8 sessions open at once: sessions are opened one by one, each
    // seen running in the allocation, until one is refused with the reason (sessions of the
    // steps above may still count).
    let sleeps = || processes_of(&job).iter().filter(|(_, comm)| comm == "sleep").count();
    let before = sleeps();
    let mut held: Vec<std::process::Child> = Vec::new();
    let refusal = loop {
        assert!(held.len() <= 8, "a 9th session was taken");
        let mut c =
            h.cmd(&["exec", &job, "--", "sleep", "60"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let ran = loop {
            if sleeps() > before + held.len() {
                break true;
            }
            if c.try_wait().unwrap().is_some() {
                break false;
            }
            assert!(Instant::now() < deadline, "a session neither ran nor was refused");
            std::thread::sleep(Duration::from_millis(100));
        };
        if !ran {
            break text(&c.wait_with_output().unwrap()).1;
        }
        held.push(c);
    };
    assert!(refusal.contains("has 8 exec sessions open, the most at once"), "{refusal}");
    for mut c in held {
        let _ = c.kill();
        let _ = c.wait();
    }
    let codes: Vec<u16> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let http = reqwest::Client::new();
        let asks = (0..1000).map(|_| {
            http.post(format!("{}/v1/jobs/{job}/exec", base.trim()))
                .bearer_auth(&token)
                .json(&serde_json::json!({"alloc": 0, "argv": ["sleep", "60"]}))
                .send()
        });
        futures::future::join_all(asks).await.into_iter().map(|r| r.map(|r| r.status().as_u16()).unwrap_or(0)).collect()
    });
    let taken = codes.iter().filter(|c| **c == 200).count();
    assert!(taken <= 8, "{taken} of 1,000 sessions taken");
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    let grown = host_rss().saturating_sub(rss_before);
    assert!(grown < 64 << 20, "after 1,000 sessions asked for, the host grew by {} MiB", grown >> 20);

    assert!(h.aic(&["cancel", &job]).status.success());
    let out = h.aic(&["exec", &job, "--", "true"]);
    assert!(!out.status.success() && text(&out).1.contains("not running"), "{}", text(&out).1);
}

#[test]
fn a_jobs_program_gets_none_of_its_workers_secrets() {
    // The worker reads its store access once and takes it out of its environment, and is
    // non-dumpable: a program running as the same user cannot read `/proc/<worker>/environ`
    // (which keeps what the worker was started with) nor trace it. Checked as a user other
    // than root, since root may read any process's memory: the whole embedded pool runs as
    // `nobody` here.
    let h = Home::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(h.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = h.write(
        "probe.sh",
        "echo \"in its environment: token=${AIC_WORKER_TOKEN:-none} store=${AIC_STORE:-none}\"\n\
         if cat /proc/$PPID/environ > \"$AIC_OUTPUT_DIR/env\" 2>/dev/null; then\n\
           if grep -q aic-canary \"$AIC_OUTPUT_DIR/env\"; then echo 'the worker environment: read, token seen'; else echo 'the worker environment: read'; fi\n\
         else echo 'the worker environment: denied'; fi\n\
         echo \"the parent $(ps -o comm= -p $PPID) runs as $(ps -o user= -p $PPID) and this program as $(id -un)\"\n",
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let root = nix::unistd::geteuid().is_root();
    let mut cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(aic_bin());
        c
    } else {
        std::process::Command::new(aic_bin())
    };
    cmd.args(["run", script.to_str().unwrap()])
        .current_dir(h.path())
        .env("AIC_HOME", h.path().join("aic"))
        .env("HOME", h.path())
        .env_remove("AIC_STORE")
        .env_remove("AIC_GATEWAY")
        .env("AIC_POOL_MINERS", "1")
        .env("AIC_POOL_GPUS", "1")
        // What a worker's token would be: in the worker's environment when it starts.
        .env("AIC_WORKER_TOKEN", "aic-canary-0123456789")
        .stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    let (stdout, stderr) = text(&out);
    let all = format!("{stdout}{stderr}");
    assert!(out.status.success(), "{all}");
    assert!(all.contains("in its environment: token=none store=none"), "{all}");
    assert!(all.contains("the worker environment: denied"), "{all}");
    let user = if root {
        "nobody".to_string()
    } else {
        String::from_utf8(std::process::Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    assert!(all.contains(&format!("the parent aic-worker runs as {user} and this program as {user}")), "{all}");
}

#[test]
fn a_job_the_pool_cannot_run_is_refused_before_anything_is_paid() {
    let h = Home::new();
    let script = h.write("ok.sh", "echo hi\n");
    for (flags, need) in [
        (["--miners", "3", "--gpus", "1"], "needs 3 miners with 1 free GPU; pool local has 2 miners with 1 GPU each"),
        (["--miners", "1", "--gpus", "2"], "needs 1 miner with 2 free GPUs; pool local has 2 miners with 1 GPU each"),
    ] {
        let mut args = vec!["run", script.to_str().unwrap()];
        args.extend_from_slice(&flags);
        let out = h.aic(&args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr.contains(need), "{stderr}");
        // Refused before the quote: nothing paid, nothing uploaded.
        assert!(stderr.contains("nothing was paid") && !stderr.contains("quote:"), "{stderr}");
        assert!(h.store_keys().is_empty(), "{:?}", h.store_keys());
    }
    // The same for a dataset that is not there.
    let out = h.aic(&["run", script.to_str().unwrap(), "--data", "nosuch"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("no dataset nosuch: upload it with `aic data put PATH nosuch`"), "{stderr}");
    assert!(stderr.contains("nothing was paid") && !stderr.contains("quote:"), "{stderr}");
    assert!(h.store_keys().is_empty(), "{:?}", h.store_keys());
}

#[test]
fn bad_job_files_get_field_errors_and_nothing_is_written() {
    let h = Home::new();
    h.write("train.py", "print('never runs')\n");
    let file = h.write("job.yaml", "code: train.py\nminers: 0\ngpus: 12\nenv:\n  AIC_JOB_ID: mine\n");
    let out = h.aic(&["submit", file.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    for want in [
        "job.yaml:2: miners: must be between 1 and 64 (got 0)",
        "job.yaml:3: gpus: must be between 1 and 8 (got 12)",
        "job.yaml:5: env.AIC_JOB_ID: is set by the pool; choose another name",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in {stderr}");
    }
    let file = h.write("typo.json", "{\n  \"code\": \"train.py\",\n  \"minerz\": 2\n}\n");
    let (_, stderr) = text(&h.aic(&["submit", file.to_str().unwrap()]));
    assert!(stderr.contains("typo.json:3: unknown field `minerz`"), "{stderr}");
    let bad_flag = h.aic(&["run", h.path().join("train.py").to_str().unwrap(), "--gpus", "9"]);
    assert!(text(&bad_flag).1.contains("--gpus: must be between 1 and 8 (got 9)"));
    assert!(h.store_keys().is_empty(), "nothing may reach the bucket: {:?}", h.store_keys());
}

#[test]
fn a_job_file_runs_across_two_miners() {
    let h = Home::new();
    h.write("proj/main.sh", "echo \"hello from allocation $AIC_ALLOC_INDEX of $AIC_ALLOC_COUNT on GPU $CUDA_VISIBLE_DEVICES\"\necho done > \"$AIC_OUTPUT_DIR/out-$AIC_ALLOC_INDEX.txt\"\n");
    let file = h.write("job.yaml", "code: proj\nentrypoint: main.sh\nminers: 2\ngpus: 1\nhours: 0.5\n");
    let out = h.aic(&["submit", file.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("[0] hello from allocation 0 of 2 on GPU 0"), "{stdout}");
    assert!(stdout.contains("[1] hello from allocation 1 of 2 on GPU 0"), "{stdout}");
    let job = h.last_job();
    let last = h.history(&job).pop().unwrap();
    assert_eq!(last["state"], "succeeded");
    let dest = h.path().join("res");
    assert!(h.aic(&["results", "get", &job, dest.to_str().unwrap()]).status.success());
    assert!(dest.join("out-0.txt").exists() && dest.join("alloc-1/out-1.txt").exists(), "{:?}", walk(&dest));
}

/// A program on each of two miners that looks up its own host name and the other miner's
/// (as Gloo, torch's c10d store and NCCL's bootstrap do), listens at its own name's address
/// and connects to the other's listener by name; each checks the connection it accepted
/// came from the address the other's name resolves to.
const NAMES_PY: &str = r#"import socket, sys, threading, time
me = socket.gethostname()
other = [n for n in sys.argv[1:] if n != me][0]
def v4(name):
    return socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
mine, theirs = v4(me), v4(other)
srv = socket.create_server((mine, 29555))
heard = {}
def accept():
    conn, (addr, _) = srv.accept()
    heard["name"], heard["addr"] = conn.recv(64).decode(), addr
t = threading.Thread(target=accept)
t.start()
deadline = time.time() + 60
while True:
    try:
        with socket.create_connection((other, 29555), timeout=5) as c:
            c.sendall(me.encode())
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
t.join(60)
assert heard.get("name") == other and heard.get("addr") == theirs, (heard, other, theirs)
print(f"{me} at {mine} reached {other} at {theirs} by name and heard from it", flush=True)
"#;

/// Horovod's Gloo and torchrun resolve the miners' host names: each simulated miner's name
/// resolves, inside every miner, to the address the others reach it at (they did not:
/// "Unable to find address for: miner-1", and "Temporary failure in name resolution").
#[test]
fn each_miner_resolves_its_own_name_and_the_others_and_they_connect_by_name() {
    if !nix::unistd::geteuid().is_root() || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("the miners are hosts with names of their own only as root with ip: not run here");
        return;
    }
    let h = Home::new();
    let script = h.write("names.py", NAMES_PY);
    let out = h.aic(&["run", script.to_str().unwrap(), "--miners", "2", "--hours", "0.05", "--", "miner-1", "miner-2"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    for (i, me, other) in [(0, "miner-1", "miner-2"), (1, "miner-2", "miner-1")] {
        let line = format!("[{i}] {me} at 10.");
        assert!(
            stdout.lines().any(|l| l.starts_with(&line) && l.contains(&format!("reached {other} at 10."))),
            "{stdout}"
        );
    }
}

#[test]
fn cancel_stops_a_running_job_on_a_pool_hosted_by_dev_up() {
    let h = Home::new();
    let pool = DevUp::start(&h);
    let script = h.write("slow.sh", "echo started\nexec sleep 120\n");
    let out = h.aic(&["run", "--detach", script.to_str().unwrap()]);
    assert!(out.status.success());
    let job = text(&out).0.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.state(&job) != "running" {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The program has started when its first line is in the log.
    while !text(&h.aic(&["logs", &job])).0.contains("started") {
        assert!(Instant::now() < deadline, "no output");
        std::thread::sleep(Duration::from_millis(200));
    }
    // `aic pool` shows the running job's one GPU taken.
    assert_eq!(pool_summary(&h), ("local".to_string(), 2, 1));
    let t0 = Instant::now();
    assert!(h.aic(&["cancel", &job]).status.success());
    let result = h
        .path()
        .join("aic/store/users/0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/jobs")
        .join(&job)
        .join("allocs/0/0.json");
    while !result.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the program was not stopped within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(h.state(&job), "cancelled");
    let (_, stderr) = text(&h.aic(&["cancel", &job]));
    assert!(stderr.contains("was already cancelled"), "{stderr}");
    assert!(pool.stop(), "dev up did not stop on Ctrl-C");
}

/// A line a job prints reaches `aic logs -f` (and `aic logs`) from the host's memory before
/// the chunk it is in is stored (every 10 s, or at the end), and once: the stored and the
/// live copies of a line are never both printed.
#[test]
fn a_printed_line_reaches_the_watcher_before_it_is_stored() {
    use std::io::BufRead;
    let h = Home::new();
    let _pool = DevUp::start(&h);
    let go = h.shared().join("go");
    let script = h.write(
        "wait.sh",
        &format!("echo hello-live\nwhile [ ! -e {} ]; do sleep 0.05; done\necho bye\n", go.display()),
    );
    let out = h.aic(&["run", "--detach", script.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let job = text(&out).0.trim().to_string();
    let mut follow = h.cmd(&["logs", "-f", &job]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(60)).expect("no line reached `aic logs -f`");
    assert_eq!(first, "hello-live");
    let logs = h.path().join("aic/store/users/0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/jobs").join(&job).join("logs");
    assert!(walk(&logs).is_empty(), "the line was read from a stored chunk: {:?}", walk(&logs));
    let (shown, _) = text(&h.aic(&["logs", &job]));
    assert_eq!(shown, "hello-live\n", "`aic logs` shows what is not stored yet");
    std::fs::write(&go, "").unwrap();
    let mut rest = vec![];
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(60)) {
        rest.push(l);
    }
    let status = follow.wait().unwrap();
    assert!(status.success(), "{rest:?}");
    assert_eq!(rest, ["bye"]);
    assert_eq!(walk(&logs).len(), 1, "the log is stored once the program ends");
    assert_eq!(text(&h.aic(&["logs", &job])).0, "hello-live\nbye\n");

    // A log longer than a pipe holds, read by `head`: aic ends quietly when `head` does.
    let script = h.write("chatty.sh", "seq 1 30000\n");
    let out = h.aic(&["run", script.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let job = h.last_job();
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(format!("'{}' logs {job} | head -n 2", aic_bin().display()));
    let piped =
        sh.envs(h.cmd(&[]).get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))).output().unwrap();
    let (shown, err) = text(&piped);
    assert_eq!(shown, "1\n2\n");
    assert!(err.is_empty(), "aic said something when the pipe closed: {err}");
}

/// Each allocation's worker samples its GPUs (a simulated miner's sample is a stand-in, and
/// says so): the samples reach `aic top` while the program runs, before any is stored; once
/// it ends they are stored, `aic status` sums them up per allocation and GPU, and `aic logs
/// --metrics` prints them.
#[test]
fn a_jobs_gpu_use_is_followed_live_and_summed_up_in_its_status() {
    use std::io::BufRead;
    let h = Home::new();
    let _pool = DevUp::start_with(&h, &[("AIC_METRICS_SECONDS", "0.3")]);
    let go = h.shared().join("go");
    // Busy on its core until told to end.
    let script = h.write("busy.sh", &format!("while [ ! -e {} ]; do :; done\necho done\n", go.display()));
    let out = h.aic(&["run", "--detach", "--miners", "2", script.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let job = text(&out).0.trim().to_string();
    let mut top = h.cmd(&["top", &job]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = top.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // `10:00:05 [alloc 0] gpu 0  util  87%  memory 12 MiB  (stand-in)`: a busy one from each
    // allocation, while the program still runs.
    let mut busy = std::collections::BTreeSet::new();
    while busy.len() < 2 {
        let l = rx.recv_timeout(Duration::from_secs(60)).expect("no busy sample of both allocations reached `aic top`");
        assert!(l.ends_with("(stand-in)"), "a simulated miner's sample not labelled: {l}");
        let alloc = l.split("[alloc ").nth(1).and_then(|r| r.split(']').next()).unwrap().to_string();
        let util: f64 = l.split("util").nth(1).and_then(|r| r.split('%').next()).unwrap().trim().parse().unwrap();
        if util > 20.0 {
            busy.insert(alloc);
        }
    }
    let metrics =
        h.path().join("aic/store/users/0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/jobs").join(&job).join("metrics");
    assert!(walk(&metrics).is_empty(), "the samples were read from a stored chunk: {:?}", walk(&metrics));
    std::fs::write(&go, "").unwrap();
    assert!(top.wait().unwrap().success(), "`aic top` ends with the job, as it succeeded");
    assert_eq!(walk(&metrics).len(), 2, "a chunk per allocation once the program ended");

    let status = text(&h.aic(&["status", &job])).0;
    assert!(status.contains("stand-in: simulated miner, the program's CPU and memory"), "{status}");
    // `  0      0           93%        12%  14 MiB`: alloc, gpu, average, last, memory.
    let rows: Vec<Vec<&str>> = status
        .lines()
        .skip_while(|l| !l.starts_with("GPU use, "))
        .skip(2)
        .take_while(|l| l.starts_with("  ") && l.contains('%'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.iter().map(|r| r[0]).collect::<Vec<_>>(), ["0", "1"], "{status}");
    for r in &rows {
        let avg: f64 = r[2].trim_end_matches('%').parse().unwrap();
        assert!(avg > 10.0, "the program spun most of its run: {status}");
    }
    let lines = text(&h.aic(&["logs", "--metrics", &job])).0;
    assert!(lines.contains("[alloc 0] gpu ") && lines.contains("[alloc 1] gpu "), "{lines}");
}

/// `aic pool --json`'s first gateway: (name, miners, free GPUs).
fn pool_summary(h: &Home) -> (String, usize, u64) {
    let v: serde_json::Value = serde_json::from_slice(&h.aic(&["pool", "--json"]).stdout).unwrap();
    let miners = v[0]["miners"].as_array().unwrap();
    let free = miners.iter().map(|m| m["free_gpus"].as_u64().unwrap()).sum();
    (v[0]["name"].as_str().unwrap_or_default().to_string(), miners.len(), free)
}

fn wait_for_state(h: &Home, job: &str, want: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hist = h.history(job);
        let last = hist.last().map(|r| r["state"].as_str().unwrap().to_string()).unwrap_or_default();
        if last == want {
            return hist;
        }
        assert!(
            !["succeeded", "failed", "rejected", "cancelled"].contains(&last.as_str()),
            "job {job} ended {last}: {hist:?}"
        );
        assert!(Instant::now() < deadline, "job {job} never reached {want}: {hist:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_keystore_login_and_a_payment_made_elsewhere_pay_for_one_job_only() {
    let h = Home::new();
    let _pool = DevUp::start(&h);
    // Anvil's dev account 3, in an encrypted keystore.
    let key = aic_chain::devchain::dev_key(3);
    let ks = aic_chain::wallet::save_keystore(h.path(), &key, "correct horse", "ks.json").unwrap();
    let wrong =
        h.cmd(&["login", "--keystore", ks.to_str().unwrap()]).env("AIC_KEYSTORE_PASSWORD", "nope").output().unwrap();
    assert!(!wrong.status.success());
    assert!(text(&wrong).1.contains("cannot unlock"), "{}", text(&wrong).1);
    let ok = h
        .cmd(&["login", "--keystore", ks.to_str().unwrap()])
        .env("AIC_KEYSTORE_PASSWORD", "correct horse")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok).1);
    let me = format!("{:#x}", key.address());
    assert!(text(&ok).1.contains(&format!("signed in as {me}")), "{}", text(&ok).1);
    let quote = text(&h.aic(&["quote", "--miners", "2", "--gpus", "3", "--hours", "1.5"])).0;
    assert_eq!(quote.trim(), "2 miners × 3 GPUs × 1.5 h × 1 AIC per GPU-hour = 9 AIC");

    // Pay 1 AIC to the treasury outside aic (as Metamask or cast would).
    let chain: aic_chain::ChainConfig =
        serde_json::from_slice(&std::fs::read(h.path().join("aic/chain.json")).unwrap()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tx = rt.block_on(async {
        use alloy::providers::ProviderBuilder;
        let p = ProviderBuilder::new()
            .wallet(alloy::network::EthereumWallet::from(key.clone()))
            .connect_http(chain.rpc_url.parse().unwrap());
        let tx = aic_chain::token::pay(&p, chain.token, chain.treasury, alloy::primitives::U256::from(10u128.pow(18)))
            .await
            .unwrap();
        format!("{tx:#x}")
    });
    let script = h.write("ok.sh", "echo paid elsewhere\n");
    let keystore_env = |args: &[&str]| {
        let out = h.cmd(args).env("AIC_KEYSTORE_PASSWORD", "correct horse").output().unwrap();
        eprintln!("$ aic {}\n{}{}", args.join(" "), text(&out).0, text(&out).1);
        out
    };
    let first = keystore_env(&["run", "--detach", "--tx", &tx, script.to_str().unwrap()]);
    assert!(first.status.success());
    let job = text(&first).0.trim().to_string();
    let hist = wait_for_state(&h, &job, "succeeded");
    assert!(hist[1]["reason"].as_str().unwrap().contains(&format!("paid 1 AIC in {tx}")), "{hist:?}");
    // The same transaction for a second job is refused with the reason.
    let second = keystore_env(&["run", "--detach", "--tx", &tx, script.to_str().unwrap()]);
    let job2 = text(&second).0.trim().to_string();
    let hist = wait_for_state(&h, &job2, "rejected");
    assert!(
        hist.last().unwrap()["reason"].as_str().unwrap().contains(&format!("already paid for job {job}")),
        "{hist:?}"
    );
}

#[test]
fn mpi_training_across_two_miners_converges_with_identical_parameters() {
    let h = Home::new();
    put_digits(&h);
    let code = repo().join("examples/digits");
    let out = h.aic(&[
        "run",
        code.to_str().unwrap(),
        "--entrypoint",
        "train_mpi.py",
        "--launcher",
        "mpi",
        "--miners",
        "2",
        "--gpus",
        "1",
        "--data",
        "digits",
        "--",
        "--epochs",
        "15",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // Every rank ends with a digest of its parameters: data parallelism keeps them equal.
    let digest = |rank: u32| {
        let tag = format!("[rank {rank}] rank {rank} params ");
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&tag))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no digest from rank {rank}: {stdout}"))
    };
    assert_eq!(digest(0), digest(1), "the ranks' parameters differ");
    let job = h.last_job();
    let dest = h.path().join("mpi-results");
    assert!(h.aic(&["results", "get", &job, dest.to_str().unwrap()]).status.success());
    assert!(dest.join("model.npz").is_file(), "the checkpoint is in the bucket");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["ranks"], 2);
    // The second allocation ran on the second miner.
    let second = h
        .path()
        .join("aic/store/users/0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/jobs")
        .join(&job)
        .join("allocs/0/1.json");
    let second: serde_json::Value = serde_json::from_slice(&std::fs::read(second).unwrap()).unwrap();
    assert_eq!(second["miner"], "miner-2");
    assert!(metrics["test_accuracy"].as_f64().unwrap() >= 0.9, "{metrics}");
    let last = h.history(&job).pop().unwrap();
    // Both miners' GPUs were held for the run.
    let (wall, gpu) =
        (last["detail"]["wall_seconds"].as_f64().unwrap(), last["detail"]["gpu_seconds"].as_f64().unwrap());
    assert!((gpu - 2.0 * wall).abs() < 1e-6, "{last}");
}

/// Two simulated miners share this machine's cores: their ranks must not be pinned to the
/// same core (each mpirun daemon would bind as if it had the node alone), and each process's
/// thread pools get its miner's share of the cores unless the job sets OMP_NUM_THREADS.
#[test]
fn mpi_ranks_share_the_cores_instead_of_pinning_to_the_same_one() {
    let h = Home::new();
    h.write(
        "cores/show.py",
        "import os\nfrom mpi4py import MPI\nr = MPI.COMM_WORLD.Get_rank()\n\
         print(f\"rank {r} cores {sorted(os.sched_getaffinity(0))} threads {os.environ.get('OMP_NUM_THREADS')}\")\n\
         print(f\"rank {r} nccl {os.environ.get('NCCL_DEBUG')}\")\n",
    );
    let code = h.path().join("cores");
    let run_with = |extra: &[&str], worker_env: &str| {
        let mut args = vec!["run", code.to_str().unwrap(), "--entrypoint", "show.py", "--launcher", "mpi"];
        args.extend_from_slice(&["--miners", "2"]);
        args.extend_from_slice(extra);
        let mut cmd = h.cmd(&args);
        cmd.env("AIC_WORKER_ENV", worker_env);
        let out = shown(&args, cmd);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        stdout
    };
    // The cores this test may use, as the ranks' Python sees them.
    let all = std::process::Command::new("python3")
        .args(["-c", "import os; print(sorted(os.sched_getaffinity(0)))"])
        .output()
        .unwrap();
    let all = String::from_utf8(all.stdout).unwrap().trim().to_string();
    let share = (std::thread::available_parallelism().unwrap().get() / 2).max(1);
    let stdout = run_with(&[], "");
    for rank in 0..2 {
        let want = format!("[rank {rank}] rank {rank} cores {all} threads {share}");
        assert!(stdout.contains(&want), "missing {want:?} in {stdout}");
    }
    let stdout = run_with(&["--env", "OMP_NUM_THREADS=3"], "");
    assert_eq!(stdout.matches(" threads 3").count(), 2, "the job's OMP_NUM_THREADS wins: {stdout}");
    // The operator's settings for the miners reach every rank, the remote one through sshd.
    let stdout = run_with(&[], "NCCL_DEBUG=WARN OMP_NUM_THREADS=7");
    assert_eq!(stdout.matches(" nccl WARN").count(), 2, "{stdout}");
    assert_eq!(stdout.matches(" threads 7").count(), 2, "{stdout}");
}

#[test]
fn a_launcher_missing_on_the_miner_fails_with_the_reason() {
    let h = Home::new();
    let script = h.write("hvd.py", "print('never runs')\n");
    let out = h.aic(&["run", script.to_str().unwrap(), "--launcher", "horovod", "--miners", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let (_, stderr) = text(&out);
    assert!(stderr.contains("horovodrun is not installed on miner-1; install Horovod on the miners"), "{stderr}");
}

#[test]
fn cancel_stops_every_rank_of_an_mpi_job_within_seconds() {
    let h = Home::new();
    put_digits(&h);
    let _pool = DevUp::start(&h);
    let job = mpi_digits_detached(&h, 100, "0.5");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text(&h.aic(&["logs", &job])).0.contains("epoch 2/100") {
        assert!(Instant::now() < deadline, "training did not get going");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ranks = processes_of(&job).into_iter().filter(|(_, c)| c.starts_with("python")).count();
    assert_eq!(ranks, 2, "{:?}", processes_of(&job));
    // `aic pool` shows both miners' GPUs taken by the job.
    assert_eq!(pool_summary(&h), ("local".to_string(), 2, 0));
    let t0 = Instant::now();
    assert!(h.aic(&["cancel", &job]).status.success());
    while !processes_of(&job).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "still running 10 s after cancel: {:?}", processes_of(&job));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(h.state(&job), "cancelled");
}

/// One miner of a 2-miner job is lost: the scheduler stops the other allocation (SIGTERM,
/// its program killed) and starts the job again. The stopped worker says nothing of how the
/// job ended — its scheduler does — so the job retries and succeeds. (It recorded `failed`,
/// "killed by signal 15", and the restart found the job ended: a Nomad purge, a node drain
/// and the embedded pool's own restart stop ranks the same way.)
#[test]
fn a_rank_stopped_for_a_restart_does_not_end_the_job() {
    let h = Home::new();
    let _pool = DevUp::start(&h);
    let go = h.shared().join("go");
    let script = h.write(
        "ranks.sh",
        &format!(
            "echo rank-$AIC_ALLOC_INDEX-started\nwhile [ ! -e {} ]; do sleep 0.05; done\necho rank-$AIC_ALLOC_INDEX-done\n",
            go.display()
        ),
    );
    let out = h.aic(&["run", "--detach", "--miners", "2", script.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let job = text(&out).0.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while workers_of(&job).len() != 2 || !text(&h.aic(&["logs", &job])).0.contains("rank-1-started") {
        assert!(Instant::now() < deadline, "the ranks did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = workers_of(&job);
    kill_group_of(first[1]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while workers_of(&job).len() != 2 || workers_of(&job).iter().any(|p| first.contains(p)) {
        assert!(Instant::now() < deadline, "the job did not start again: {:?}", h.history(&job));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&go, "").unwrap();
    let hist = wait_for_state(&h, &job, "succeeded");
    let states: Vec<&str> = hist.iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["submitted", "paid", "scheduled", "running", "retrying", "running", "succeeded"], "{hist:?}");
}

/// A job's program signals its own worker (same uid) to stop: only the worker's scheduler
/// stops it, so the SIGTERM is ignored, the program runs on and the job ends as the program
/// does, settled. (Taken for a stop, it ended the job with no ending recorded: `running` for
/// ever, its deposit open to being reclaimed unpaid.)
#[test]
fn a_program_cannot_stop_its_own_worker() {
    let h = Home::new();
    let _pool = DevUp::start(&h);
    let script = h.write("stop.sh", "kill -TERM $PPID\nsleep 1\necho still-here\n");
    let out = h.aic(&["run", "--detach", script.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let job = text(&out).0.trim().to_string();
    let hist = wait_for_state(&h, &job, "succeeded");
    assert!(!hist.iter().any(|r| r["state"] == "failed"), "{hist:?}");
    assert_eq!(text(&h.aic(&["logs", &job])).0, "still-here\n");
}

#[test]
fn a_lost_worker_is_restarted_and_resumes_from_its_checkpoint() {
    let h = Home::new();
    put_digits(&h);
    let _pool = DevUp::start_with(&h, &[("AIC_SYNC_SECONDS", "0.3")]);
    let script = repo().join("examples/digits/train.py");
    let out = h.aic(&[
        "run",
        "--detach",
        script.to_str().unwrap(),
        "--data",
        "digits",
        "--",
        "--epochs",
        "12",
        "--sleep",
        "0.4",
    ]);
    assert!(out.status.success());
    let job = text(&out).0.trim().to_string();
    let ckpt = h
        .path()
        .join("aic/store/users/0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/jobs")
        .join(&job)
        .join("output/model.npz");
    // Wait until a few epochs are done and their checkpoint is in the bucket.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(ckpt.exists() && text(&h.aic(&["logs", &job])).0.contains("epoch 4/12")) {
        assert!(Instant::now() < deadline, "training did not get going");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The miner is lost: its worker and the program die at once.
    let pids = workers_of(&job);
    assert_eq!(pids.len(), 1, "{pids:?}");
    kill_group_of(pids[0]);
    let hist = wait_for_state(&h, &job, "succeeded");
    let retry = hist.iter().find(|r| r["state"] == "retrying").expect("a retrying record");
    assert!(retry["reason"].as_str().unwrap().contains("allocation 0 on miner-1 was lost (signal 9)"), "{retry}");
    let logs = text(&h.aic(&["logs", &job])).0;
    let resumed: u32 = logs
        .lines()
        .find_map(|l| l.strip_prefix("resuming from checkpoint at epoch "))
        .expect("the restarted run resumes")
        .trim()
        .parse()
        .unwrap();
    assert!(resumed >= 1, "{logs}");
    let epochs_run = logs.lines().filter(|l| l.starts_with("epoch ")).count() as u32;
    // A SIGKILLed worker loses its last unshipped second of output, so fewer than 12 lines
    // can be there; what matters is that not many were run twice.
    assert!(epochs_run.saturating_sub(12) < 12, "{epochs_run} epochs run for 12: too many re-run\n{logs}");
    assert_eq!(
        12 - resumed,
        logs.lines().skip_while(|l| !l.starts_with("resuming")).filter(|l| l.starts_with("epoch ")).count() as u32
    );
}

/// A worker killed outright loses nothing of what its program printed: the lines it had not
/// stored yet (chunks are stored every 10 s) reached the host live, and the host stores them.
#[test]
fn a_killed_workers_unstored_lines_are_stored_by_the_host() {
    let h = Home::new();
    let _pool = DevUp::start(&h);
    let go = h.shared().join("go");
    let script = h.write(
        "wait.sh",
        &format!("echo printed-before-the-loss\nwhile [ ! -e {} ]; do sleep 0.05; done\necho end\n", go.display()),
    );
    let out = h.aic(&["run", "--detach", script.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let job = text(&out).0.trim().to_string();
    let logs = h.path().join("aic/store/users/0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/jobs").join(&job).join("logs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text(&h.aic(&["logs", &job])).0.contains("printed-before-the-loss") {
        assert!(Instant::now() < deadline, "the line never reached the host");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(walk(&logs).is_empty(), "already stored: {:?}", walk(&logs));
    let pids = workers_of(&job);
    assert_eq!(pids.len(), 1, "{pids:?}");
    kill_group_of(pids[0]);
    // The host stores the line as the lost worker's chunk; the job starts again.
    while walk(&logs).is_empty() {
        assert!(Instant::now() < deadline, "the host did not store the lost worker's lines");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stored = std::fs::read_to_string(&walk(&logs)[0]).unwrap();
    assert_eq!(stored, "printed-before-the-loss\n");
    std::fs::write(&go, "").unwrap();
    wait_for_state(&h, &job, "succeeded");
    assert_eq!(
        text(&h.aic(&["logs", &job])).0,
        "printed-before-the-loss\nprinted-before-the-loss\nend\n",
        "the lost run's line, then the retry's"
    );
}

#[test]
fn a_failing_rank_fails_the_mpi_job_with_that_ranks_log_tail() {
    let h = Home::new();
    h.write(
        "ranks/fail.py",
        "import sys\nfrom mpi4py import MPI\nr = MPI.COMM_WORLD.Get_rank()\nprint(f'rank {r} up', flush=True)\nif r == 1:\n    sys.exit('rank 1 gives up: out of memory')\nMPI.COMM_WORLD.Barrier()\n",
    );
    let out = h.aic(&[
        "run",
        h.path().join("ranks").to_str().unwrap(),
        "--entrypoint",
        "fail.py",
        "--launcher",
        "mpi",
        "--miners",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let job = h.last_job();
    let last = h.history(&job).pop().unwrap();
    assert_eq!(last["state"], "failed");
    assert!(last["reason"].as_str().unwrap().contains("fail.py exited with code"), "{last}");
    let tail = last["detail"]["log_tail"].as_str().unwrap();
    assert!(tail.contains("[rank 1] rank 1 gives up: out of memory"), "{tail}");
}

#[test]
fn quote_and_cancel_refuse_what_does_not_exist_with_the_reason() {
    let h = Home::new();
    let out = h.aic(&["quote", "--miners", "2", "--gpus", "3", "--hours", "2"]);
    assert!(text(&out).0.contains("2 miners × 3 GPUs × 2 h × 1 AIC per GPU-hour = 12 AIC"), "{}", text(&out).0);
    for (args, why) in [
        (["quote", "--hours", "0"], "--hours: must be more than 0 and at most 168 (got 0)"),
        (["quote", "--miners", "65"], "--miners: must be between 1 and 64 (got 65)"),
        (["quote", "--gpus", "9"], "--gpus: must be between 1 and 8 (got 9)"),
    ] {
        let out = h.aic(&args);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out).1.contains(why), "{}", text(&out).1);
    }
    let out = h.aic(&["cancel", "01m89rksxq1qpkk5d08ccnbg6j"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("no job 01m89rksxq1qpkk5d08ccnbg6j; see `aic jobs`"), "{}", text(&out).1);
}

#[test]
fn datasets_and_projects_keep_their_file_names_whatever_they_are() {
    let h = Home::new();
    odd_names_story(&|args| h.aic(args), &h.path().join("odd"));
    // On the local store too, each object is a file under its real name.
    let keys = h.store_keys();
    assert!(keys.iter().any(|k| k.ends_with("/data/kr/학습데이터.csv")), "{keys:?}");
    assert!(keys.iter().any(|k| k.ends_with("/data/kr/%ED%95%99 literal.txt")), "{keys:?}");
}

#[test]
fn a_file_name_the_store_cannot_hold_refuses_the_whole_upload() {
    let h = Home::new();
    h.write("ds/fine.txt", "fine\n");
    h.write("ds/ckpt#2", "a name the local store keeps for itself\n");
    let out = h.aic(&["data", "put", h.path().join("ds").to_str().unwrap(), "ds"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("ckpt#2") && stderr.contains("rename it"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(h.store_keys().iter().all(|k| !k.contains("/data/")), "nothing was uploaded: {:?}", h.store_keys());
}

/// A plain mpi4py data-parallel loop: every rank adds its gradient-sized array with
/// Allreduce, many times, and checks the sums.
const ALLREDUCE_PY: &str = r#"import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
r, n = comm.Get_rank(), comm.Get_size()
w = np.zeros(20000)
for step in range(200):
    g = np.full(w.shape, float(r + step))
    total = np.empty_like(g)
    comm.Allreduce(g, total, op=MPI.SUM)
    want = n * step + n * (n - 1) / 2
    assert np.allclose(total, want), (step, total[0], want)
    w -= 1e-3 * total
print(f"rank {r} of {n} ok {w[0]:.6f}")
"#;

/// Several ranks per miner on several miners: each simulated miner's MPI daemon numbers its
/// ranks from 0 under the same host name, which made their shared-memory segments collide
/// (a SIGSEGV in about half the 2×2 runs). Each layout runs `AIC_TEST_MPI_RUNS` times
/// (default 2; `AIC_TEST_MPI_RUNS=20` for the full check), with the miners in namespaces of
/// their own and on the loopback fallback.
#[test]
fn mpi_jobs_with_several_ranks_on_each_of_several_miners_run_every_time() {
    // As root the miners are hosts of their own (network and UTS namespaces); the fallback
    // (loopback addresses, one hostname) must work as well: both are run where both exist.
    let netns = nix::unistd::geteuid().is_root() && Command::new("ip").arg("-V").output().is_ok();
    let modes: &[&str] = if netns { &["1", "0"] } else { &["0"] };
    let runs: usize = std::env::var("AIC_TEST_MPI_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    for mode in modes {
        let h = Home::new();
        let script = h.write("allreduce.py", ALLREDUCE_PY);
        let pool = [("AIC_POOL_MINERS", "4"), ("AIC_POOL_GPUS", "2"), ("AIC_POOL_NETNS", mode)];
        let _up = DevUp::start_with(&h, &pool);
        if *mode == "1" {
            // Each miner has its own hostname and address, off this machine's loopback.
            let who = h.write("who.sh", "echo \"$(hostname) $AIC_HOST\"\n");
            let out = h.cmd(&["run", who.to_str().unwrap(), "--miners", "4"]).envs(pool).output().unwrap();
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "{stderr}");
            let seen: std::collections::BTreeSet<(String, String)> = stdout
                .lines()
                .filter_map(|l| l.strip_prefix('[')?.split_once("] ")?.1.split_once(' '))
                .map(|(n, a)| (n.to_string(), a.to_string()))
                .collect();
            let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["miner-1", "miner-2", "miner-3", "miner-4"], "{stdout}");
            let addrs: std::collections::BTreeSet<&str> = seen.iter().map(|(_, a)| a.as_str()).collect();
            assert_eq!(addrs.len(), 4, "{stdout}");
            assert!(addrs.iter().all(|a| a.starts_with("10.")), "namespace addresses: {stdout}");
        }
        for (miners, gpus) in [(2u32, 2u32), (4, 2)] {
            let ranks = miners * gpus;
            for run in 0..runs {
                let (m, g) = (miners.to_string(), gpus.to_string());
                // Paid for 3 minutes: a run that hangs is stopped at its time limit and fails
                // here, instead of holding the suite.
                let args = [
                    "run",
                    script.to_str().unwrap(),
                    "--launcher",
                    "mpi",
                    "--miners",
                    &m,
                    "--gpus",
                    &g,
                    "--hours",
                    "0.05",
                ];
                let out = h.cmd(&args).envs(pool).output().unwrap();
                let (stdout, stderr) = text(&out);
                assert!(out.status.success(), "AIC_POOL_NETNS={mode} {miners}×{gpus} run {run}: {stderr}\n{stdout}");
                let ok: Vec<&str> = stdout.lines().filter(|l| l.contains(&format!(" of {ranks} ok "))).collect();
                assert_eq!(ok.len(), ranks as usize, "{miners}×{gpus} run {run}: {stdout}");
                // Data parallel: every rank ends with the same weights.
                let w: std::collections::BTreeSet<&str> = ok.iter().filter_map(|l| l.rsplit(' ').next()).collect();
                assert_eq!(w.len(), 1, "{stdout}");
            }
        }
    }
}

#[test]
fn a_cancelled_job_resumes_from_its_checkpoint_as_a_run_paid_and_settled_of_its_own() {
    let h = Home::new();
    put_digits(&h);
    let _pool = DevUp::start_with(&h, &[("AIC_SYNC_SECONDS", "0.3")]);
    let script = repo().join("examples/digits/train.py");
    let args = ["--data", "digits", "--hours", "1", "--", "--epochs", "10", "--sleep", "0.8"];
    let out = h.aic(&[&["run", "--detach", script.to_str().unwrap()], &args[..]].concat());
    assert!(out.status.success(), "{}", text(&out).1);
    let job = text(&out).0.trim().to_string();
    let ckpt = h.path().join("aic/store/users/0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/jobs").join(&job);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(ckpt.join("output/model.npz").exists() && text(&h.aic(&["logs", &job])).0.contains("epoch 3/10")) {
        assert!(Instant::now() < deadline, "training did not get going");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A running job is not resumed: it has not ended.
    let busy = h.aic(&["resume", &job]);
    assert!(!busy.status.success());
    assert!(text(&busy).1.contains("is running; only a job that ended can be resumed"), "{}", text(&busy).1);
    assert!(h.aic(&["cancel", &job]).status.success());
    wait_for_state(&h, &job, "cancelled");
    let epochs_before = text(&h.aic(&["logs", &job])).0.lines().filter(|l| l.starts_with("epoch ")).count();

    // Resumed: a new run under the same id, paid by its own deposit, from the checkpoint.
    let out = h.aic(&["resume", &job, "--hours", "1"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("job {job} resumed as run 2")), "{stderr}");
    assert!(stderr.contains("deposited 1 AIC into the pool's escrow"), "{stderr}");
    assert!(stderr.contains(&format!("job {job} succeeded")), "{stderr}");
    let logs = text(&h.aic(&["logs", &job])).0;
    let from: usize = logs
        .lines()
        .find_map(|l| l.strip_prefix("resuming from checkpoint at epoch "))
        .unwrap_or_else(|| panic!("the resumed run starts from the checkpoint:\n{logs}"))
        .trim()
        .parse()
        .unwrap();
    assert!(from >= 3, "resumed from epoch {from}, before the last synced one\n{logs}");
    let after: Vec<&str> =
        logs.lines().skip_while(|l| !l.starts_with("resuming")).filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(after.len(), 10 - from, "the resumed run trains only what is left\n{logs}");
    assert!(epochs_before >= 3 && after[0].starts_with(&format!("epoch {}/10", from + 1)), "{logs}");

    // The history shows each run; each run was settled once, on chain.
    let st: serde_json::Value = serde_json::from_slice(&h.aic(&["status", &job, "--json"]).stdout).unwrap();
    let runs: Vec<(String, u64)> = st["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["state"].as_str().unwrap().to_string(), r["run"].as_u64().unwrap_or(0)))
        .collect();
    assert!(runs.contains(&("cancelled".into(), 0)) && runs.last() == Some(&("succeeded".into(), 1)), "{runs:?}");
    assert!(!runs.iter().any(|(s, _)| s == "retrying"), "the cancel of run 1 reached nothing of run 2: {runs:?}");
    let settled = st["settlements"].as_array().unwrap();
    assert_eq!(settled.iter().map(|s| s["run"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1], "{settled:?}");
    let mut charged_total = 0u128;
    for s in settled {
        let (c, r): (u128, u128) =
            (s["charged"].as_str().unwrap().parse().unwrap(), s["refunded"].as_str().unwrap().parse().unwrap());
        assert_eq!(c + r, 10u128.pow(18), "each run's deposit is charged and refunded whole: {s}");
        assert!(c > 0, "{s}");
        charged_total += c;
    }
    let chain: aic_chain::ChainConfig =
        serde_json::from_slice(&std::fs::read(h.path().join("aic/chain.json")).unwrap()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let balance = |who: alloy::primitives::Address| {
        rt.block_on(async {
            let p = alloy::providers::ProviderBuilder::new().connect_http(chain.rpc_url.parse().unwrap());
            u128::try_from(aic_chain::token::balance(&p, chain.token, who).await.unwrap()).unwrap()
        })
    };
    let owner: alloy::primitives::Address = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap();
    assert_eq!(balance(chain.treasury), charged_total);
    assert_eq!(balance(owner), aic_chain::devchain::DEV_FUNDS - charged_total);
    assert_eq!(balance(chain.escrow.unwrap()), 0);
    let status = text(&h.aic(&["status", &job])).0;
    assert!(status.contains(" run 2\n") && status.contains("run 2: paid 1 AIC by deposit"), "{status}");
    let spend = text(&h.aic(&["spend"])).0;
    assert!(spend.contains("total: paid 2 AIC"), "{spend}");

    // A job that succeeded is not resumed, and nothing is paid.
    let again = h.aic(&["resume", &job]);
    assert!(!again.status.success());
    assert!(
        text(&again).1.contains("succeeded; only a failed, cancelled or timed-out training job"),
        "{}",
        text(&again).1
    );
    assert_eq!(balance(owner), aic_chain::devchain::DEV_FUNDS - charged_total);
}

#[test]
fn exec_all_reaches_every_allocation_of_a_two_miner_mpi_job() {
    // On an MPI job only allocation 0 runs the launch; the other serves its ranks over SSH,
    // and takes `aic exec` commands all the same.
    let h = Home::new();
    let _pool = DevUp::start(&h);
    h.write(
        "ranks/wait.py",
        "import time\nfrom mpi4py import MPI\nprint(f'rank {MPI.COMM_WORLD.Get_rank()} up', flush=True)\ntime.sleep(60)\n",
    );
    let dir = h.path().join("ranks");
    let args = ["run", "-d", dir.to_str().unwrap(), "--entrypoint", "wait.py", "--launcher", "mpi", "--miners", "2"];
    let out = h.aic(&args);
    assert!(out.status.success(), "{}", text(&out).1);
    let job = text(&out).0.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text(&h.aic(&["logs", &job])).0.contains("rank 1 up") {
        assert!(Instant::now() < deadline, "the ranks never came up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = h.aic(&["exec", &job, "--all", "--", "sh", "-c", "echo index=$AIC_ALLOC_INDEX on $AIC_JOB_ID"]);
    let stdout = text(&out).0;
    assert!(out.status.success(), "{}", text(&out).1);
    for i in 0..2 {
        assert!(stdout.contains(&format!("[alloc {i}] index={i} on {job}")), "{stdout}");
    }
    assert!(h.aic(&["cancel", &job]).status.success());
}

/// A short soak (the long one is `cargo xtask soak`, 1,000 jobs): 32 small paid jobs, 8 at a
/// time, through `dev up`'s pool of 4 miners × 2 GPUs — every one succeeds, each with its own
/// output, and once the pool is idle the event spool is empty.
#[test]
fn a_short_soak_of_small_jobs_eight_at_a_time_leaves_nothing_behind() {
    let h = Home::new();
    let _up = DevUp::start_with(&h, &[("AIC_POOL_MINERS", "4"), ("AIC_POOL_GPUS", "2")]);
    let script = h.write("small.py", "import os\nopen(os.path.join(os.environ['AIC_OUTPUT_DIR'], 'done.txt'), 'w').write(os.environ['AIC_JOB_ID'])\n");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 32 {
                    let out = h
                        .cmd(&["run", script.to_str().unwrap()])
                        .env("AIC_POOL_MINERS", "4")
                        .env("AIC_POOL_GPUS", "2")
                        .output()
                        .unwrap();
                    if !out.status.success() {
                        failed.lock().unwrap().push(String::from_utf8_lossy(&out.stderr).into_owned());
                    }
                }
            });
        }
    });
    assert_eq!(failed.lock().unwrap().as_slice(), &[] as &[String]);
    let out = h.aic(&["jobs", "--all", "--json"]);
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs.len(), 32);
    let keys = h.store_keys();
    for j in &jobs {
        assert_eq!(j["state"], "succeeded", "{j}");
        let id = j["job"].as_str().unwrap();
        assert!(keys.iter().any(|k| k.ends_with(&format!("{id}/output/done.txt"))), "{id}");
    }
    let spool = h.path().join("aic/events");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(
            Instant::now() < deadline,
            "events left in the spool: {:?}",
            std::fs::read_dir(&spool).unwrap().count()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deposits the pool never settled come back with `aic reclaim` once past their deadline: a
/// job paid but never submitted (by `aic reclaim JOB`), one under the escrow's older run key
/// (`--all`, after `aic spend` lists it); one not yet due stays held, and another wallet's
/// deposit is never touched. Balances read on chain.
#[test]
fn aic_reclaim_takes_back_ones_own_deposits_past_their_deadline_and_nothing_else() {
    use aic_chain::devchain::dev_key;
    use aic_chain::escrow;
    use alloy::primitives::U256;
    let h = Home::new();
    let _pool = DevUp::start(&h);
    assert!(h.aic(&["login", "--dev", "4"]).status.success());
    let chain: aic_chain::ChainConfig =
        serde_json::from_slice(&std::fs::read(h.path().join("aic/chain.json")).unwrap()).unwrap();
    let (token, escrow_at) = (chain.token, chain.escrow.unwrap());
    let (me, other) = (dev_key(4).address(), dev_key(5).address());
    let aic = 10u128.pow(18);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let wallet = |i: u32| {
        alloy::providers::ProviderBuilder::new()
            .wallet(alloy::network::EthereumWallet::from(dev_key(i)))
            .connect_http(chain.rpc_url.parse().unwrap())
    };
    let balance = |who| rt.block_on(aic_chain::token::balance(&wallet(0), token, who)).unwrap();
    let (paid_never_submitted, legacy, long) =
        (aic_schemas::JobId::generate(), aic_schemas::JobId::generate(), aic_schemas::JobId::generate());
    let me0 = balance(me);
    rt.block_on(async {
        let deposit = |i: u32, run, milli_hours| async move {
            escrow::deposit(&wallet(i), token, escrow_at, run, U256::from(aic), milli_hours).await.unwrap()
        };
        deposit(4, escrow::run_id(me, paid_never_submitted.as_str(), 0), 1000).await;
        deposit(4, escrow::legacy_run_id(legacy.as_str(), 0), 1000).await;
        deposit(4, escrow::run_id(me, long.as_str(), 0), 100_000).await;
        deposit(5, escrow::run_id(other, legacy.as_str(), 0), 1000).await;
    });
    assert_eq!(balance(me), me0 - U256::from(3 * aic));
    let early = text(&h.aic(&["reclaim", "--all"])).1;
    assert!(
        early.contains("nothing to reclaim now") && early.matches("is held until its deadline").count() == 3,
        "{early}"
    );
    // Past the deadline of a one-hour deposit (its hour + the escrow's 7 days).
    rt.block_on(aic_chain::devchain::advance_time(&wallet(0), 7 * 86_400 + 7_200)).unwrap();

    let one = h.aic(&["reclaim", paid_never_submitted.as_str()]);
    let (said, err) = text(&one);
    assert!(one.status.success() && said.starts_with("reclaimed 1 AIC (deposit 0x"), "{said}{err}");
    assert_eq!(balance(me), me0 - U256::from(2 * aic));
    let spend = text(&h.aic(&["spend"])).0;
    assert_eq!(spend.matches("is past its deadline and yours to take back").count(), 1, "{spend}");
    let all = h.aic(&["reclaim", "--all"]);
    let (said, err) = text(&all);
    assert!(all.status.success() && said.lines().count() == 1 && said.starts_with("reclaimed 1 AIC"), "{said}{err}");
    assert!(err.contains("is held until its deadline"), "the 100-hour deposit is not due yet: {err}");
    assert_eq!(balance(me), me0 - U256::from(aic), "both due deposits back, the long one still held");
    let held = |who, run| rt.block_on(escrow::held(&wallet(0), escrow_at, who, run)).unwrap().state;
    assert_eq!(held(other, escrow::run_id(other, legacy.as_str(), 0)), escrow::HELD, "another wallet's deposit");
    assert_eq!(held(me, escrow::run_id(me, long.as_str(), 0)), escrow::HELD);
    let none = h.aic(&["reclaim", aic_schemas::JobId::generate().as_str()]);
    assert!(text(&none).1.contains("you made no deposit for job"), "{}", text(&none).1);
}

/// A job's program is a stranger's (issue: tenants isolated). On the embedded pool, as root,
/// a second wallet's program reads every `/proc/*/environ` it can see for the pool's settler
/// key, the pool's `exec.secret`, a file the host keeps in `/tmp`, another job's files and its
/// socket; then another of its programs starts a child in a session of its own and kills its
/// worker. Each is refused or contained: the program runs as a uid of its own in namespaces
/// of its own, and nothing of an allocation outlives its worker, time charged until it ends.
/// (As the pool ran jobs before: root, every probe succeeded and the child lived on.)
#[test]
fn a_jobs_program_reaches_nothing_of_the_host_nor_of_another_job_and_nothing_outlives_it() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var("CI").is_err(), "CI runs the suite as root: jobs are sandboxed only there");
        eprintln!("skipped: jobs are sandboxed only when the pool runs as root");
        return;
    }
    let h = Home::new();
    let settler = aic_chain::devchain::DEV_KEYS[aic_chain::devchain::SETTLER as usize];
    // The pool's host also has a token of the operator's in its environment.
    let _pool = DevUp::start_with(&h, &[("AIC_SETTLER_KEY", settler), ("HF_TOKEN", "hf-operators-own")]);
    let canary = format!("aic-host-canary-{}", std::process::id());
    std::fs::write(std::env::temp_dir().join(&canary), "the host's").unwrap();
    let home = h.path().join("aic");
    let home = home.to_str().unwrap();

    // The victim: a file and a socket in its folder, and a port open to every address (as
    // torch's store, Gloo and NCCL open theirs).
    let victim = h.write(
        "victim.py",
        "import os, socket, time\nopen('victim-secret.txt', 'w').write('the victim\\'s')\n\
         s = socket.socket(socket.AF_UNIX); s.bind('victim.sock'); s.listen()\n\
         t = socket.socket(); t.bind(('0.0.0.0', 0)); t.listen()\n\
         print('victim at', os.environ['AIC_HOST'], t.getsockname()[1], flush=True)\n\
         print('victim ready', flush=True)\ntime.sleep(120)\n",
    );
    let out = h.aic(&["run", "--detach", victim.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let victim = text(&out).0.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text(&h.aic(&["logs", &victim])).0.contains("victim ready") {
        assert!(Instant::now() < deadline, "the victim never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    let victim_log = text(&h.aic(&["logs", &victim])).0;
    let at: Vec<String> =
        victim_log.split("victim at ").nth(1).unwrap().lines().next().unwrap().split(' ').map(String::from).collect();
    let (victim_host, victim_port) = (at[0].clone(), at[1].clone());
    // From this machine (the serving gateway's side) the port answers: the probe's refusal
    // below is the network's rule, not a port that is not there.
    let to: std::net::SocketAddr = format!("{victim_host}:{victim_port}").parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)).is_ok(),
        "the host reaches no job at {to}"
    );

    // The second wallet's `aic`.
    let stranger = |args: &[&str]| {
        let mut c = h.cmd(args);
        c.env("AIC_PRIVATE_KEY", aic_chain::devchain::DEV_KEYS[5]);
        let out = c.output().unwrap();
        assert!(out.status.success(), "{:?}", text(&out));
        text(&out).0.trim().to_string()
    };
    let state = |job: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(&stranger(&["status", job, "--json"])).unwrap();
        v["history"]
            .as_array()
            .and_then(|h| h.last())
            .map(|r| r["state"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let probe = h.write(
        "probe.py",
        r#"import glob, os, socket, sys
home, settler, canary, vhost, vport = sys.argv[1:6]
print('probe uid', os.getuid(), flush=True)
print('probe operator token', os.environ.get('HF_TOKEN', 'none'))
found = 0
for p in os.listdir('/proc'):
    try:
        found += p.isdigit() and settler.encode() in open(f'/proc/{p}/environ', 'rb').read()
    except OSError:
        pass
print('probe environs with the settler key', found)
for name, path in [('secret', f'{home}/exec.secret'), ('tmp', f'/tmp/{canary}')]:
    try:
        open(path).read(); print('probe host', name, 'read')
    except OSError as e:
        print('probe host', name, 'refused:', e.strerror)
read = 0
for f in glob.glob(f'{home}/work/*/*/**/victim-secret.txt', recursive=True):
    try:
        open(f).read(); read += 1
    except OSError:
        pass
print('probe victim files read', read)
reached = 0
for f in glob.glob(f'{home}/work/*/*/**/victim.sock', recursive=True):
    try:
        socket.socket(socket.AF_UNIX).connect(f); reached += 1
    except OSError:
        pass
print('probe victim sockets reached', reached)
# The victim's port, at its address (another job's network, on this miner or another).
try:
    socket.create_connection((vhost, int(vport)), timeout=3); print('probe victim port reached')
except OSError as e:
    print('probe victim port unreached:', e)
# The memory its cgroup allows (cgroup v2's memory.max, else v1's memory hierarchy).
limit = 'none'
for line in open('/proc/self/cgroup').read().splitlines():
    _, ctl, path = line.split(':', 2)
    for f in ([f'/sys/fs/cgroup{path}/memory.max', f'/sys/fs/cgroup/unified{path}/memory.max'] if ctl == '' else
              [f'/sys/fs/cgroup/memory{path}/memory.limit_in_bytes'] if 'memory' in ctl.split(',') else []):
        try:
            v = open(f).read().strip()
            if v != 'max':
                limit = v
        except OSError:
            pass
print('probe memory limit', limit)
# The egress proxy, asked for this machine's loopback under another spelling, and for the
# cloud's metadata address.
import urllib.parse
proxy = os.environ.get('HTTPS_PROXY') or os.environ.get('https_proxy')
port = urllib.parse.urlparse(os.environ.get('AIC_WORKER_GATEWAY', 'http://127.0.0.1:1')).port
for target in [f'[::ffff:127.0.0.1]:{port}', '169.254.169.254:80']:
    if proxy:
        u = urllib.parse.urlparse(proxy)
        c = socket.create_connection((u.hostname, u.port))
        c.sendall(f'CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n'.encode())
        print('probe proxy to', target, c.recv(64).split(b'\r\n')[0].decode())
    else:
        print('probe proxy to', target, 'no proxy')
print('probe lock folder', sorted(os.listdir('/run/lock')) if os.path.isdir('/run/lock') else 'none', flush=True)
"#,
    );
    let job = stranger(&[
        "run",
        "--detach",
        probe.to_str().unwrap(),
        "--",
        home,
        settler,
        &canary,
        &victim_host,
        &victim_port,
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(state(&job).as_str(), "succeeded" | "failed") {
        assert!(Instant::now() < deadline, "the probe never ended");
        std::thread::sleep(Duration::from_millis(200));
    }
    let said = stranger(&["logs", &job]);
    let uid: u32 = said.split("probe uid ").nth(1).and_then(|r| r.lines().next()?.trim().parse().ok()).unwrap();
    assert!(uid != 0 && uid >= 1000, "the program ran as uid {uid}: {said}");
    assert!(said.contains("probe environs with the settler key 0"), "{said}");
    assert!(said.contains("probe operator token none"), "the host's environment reached the job: {said}");
    assert!(said.contains("probe host secret refused"), "{said}");
    assert!(said.contains("probe host tmp refused"), "{said}");
    assert!(said.contains("probe victim files read 0"), "{said}");
    assert!(said.contains("probe victim sockets reached 0"), "{said}");
    assert!(said.contains("probe victim port unreached"), "another job's port answered: {said}");
    for target in ["[::ffff:127.0.0.1]", "169.254.169.254"] {
        let line = said.lines().find(|l| l.starts_with(&format!("probe proxy to {target}"))).unwrap_or_default();
        assert!(line.contains("403"), "the egress proxy reached {target}: {said}");
    }
    // One GPU's worth (AIC_JOB_MEMORY_MB, 8192 by default).
    assert!(said.contains(&format!("probe memory limit {}", 8192u64 << 20)), "{said}");

    // A program that leaves a child in a session of its own and kills its worker.
    let escape = h.write(
        "escape.py",
        r#"import os, signal, subprocess, sys
subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', 'escapee-' + sys.argv[1]],
                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print('child started', flush=True)
pid = os.getppid()
while pid > 1:
    if open(f'/proc/{pid}/comm').read().strip() == 'aic-worker':
        os.kill(pid, signal.SIGKILL)
        break
    pid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])
"#,
    );
    let job = stranger(&["run", "--detach", escape.to_str().unwrap(), "--", &canary]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !matches!(state(&job).as_str(), "succeeded" | "failed" | "cancelled") {
        assert!(Instant::now() < deadline, "the escaping job never ended: {}", state(&job));
        std::thread::sleep(Duration::from_millis(200));
    }
    let marker = format!("escapee-{canary}");
    let escapees = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                cmd.split(|b| *b == 0).any(|a| a == marker.as_bytes())
            })
            .count()
    };
    // Ended means its workers have ended: nothing of theirs is left.
    assert_eq!(escapees(), 0, "a child the job left in a session of its own outlived its allocation");
    let used: Vec<String> =
        h.store_keys().into_iter().filter(|k| k.contains("pool/usage/") && k.contains(&job)).collect();
    assert!(!used.is_empty(), "the escaping job's time was not recorded");
    assert!(h.aic(&["cancel", &victim]).status.success());
    let _ = std::fs::remove_file(std::env::temp_dir().join(&canary));
}

/// A mixed farm (`aic dev up --gpu-type MODEL:MEM_GB[:COUNT]`, one per miner, as
/// `docs/commands.md` writes it): `aic pool` shows each miner's model and memory and
/// the free GPUs of each model; a job asking 4 GPUs on a miner runs on one of the miners that
/// has 4, and one asking more than any miner has is refused before paying, saying what the
/// pool has. A `--gpu-type` that is not MODEL:MEM_GB[:COUNT] is refused with how to write it.
#[test]
fn a_mixed_farm_shows_its_models_and_places_a_job_on_the_miners_big_enough() {
    let h = Home::new();
    let bad = h.aic(&["dev", "up", "--gpu-type", "A10"]);
    assert_eq!(bad.status.code(), Some(2), "{:?}", text(&bad));
    assert!(text(&bad).1.contains("MODEL:MEM_GB[:COUNT]"), "{:?}", text(&bad));
    let farm = ["--gpu-type", "A10:24:2", "--gpu-type", "A10:24:2", "--gpu-type", "T4:8:4", "--gpu-type", "T4:8:4"];
    let docs = std::fs::read_to_string(repo().join("docs/commands.md")).unwrap();
    assert!(docs.contains(&format!("aic dev up {}", farm.join(" "))), "docs/commands.md shows another farm");
    // The operator prices the models apart.
    let _pool = DevUp::start_args(&h, &farm, &[("AIC_GPU_PRICES", "A10=2,T4=0.5")]);
    let pool = text(&h.aic(&["pool"])).0;
    assert!(pool.contains("A10 24 GB: 4 of 4 free, 2 AIC per GPU-hour"), "{pool}");
    assert!(pool.contains("T4 8 GB: 8 of 8 free, 0.5 AIC per GPU-hour"), "{pool}");
    assert!(pool.contains("miner-1") && pool.contains("2 GPUs (A10, 24 GB), 2 free"), "{pool}");
    assert!(pool.contains("miner-4") && pool.contains("4 GPUs (T4, 8 GB), 4 free"), "{pool}");
    let json: serde_json::Value = serde_json::from_str(&text(&h.aic(&["pool", "--json"])).0).unwrap();
    assert_eq!(json[0]["miners"][2]["gpu_model"], "T4");
    assert_eq!(json[0]["miners"][2]["gpu_memory_mb"], 8192);

    let who = h.write("who.sh", "hostname\n");
    let out = h.aic(&["run", who.to_str().unwrap(), "--gpus", "4"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("miner-3") || stdout.contains("miner-4"), "a 4-GPU job ran on a 2-GPU miner: {stdout}");
    // Any model: quoted at the dearest (the A10's), charged at the T4's it ran on.
    assert!(stderr.contains("quote: 4 GPU-hours × 2 AIC per GPU-hour (A10) = 8 AIC"), "{stderr}");
    assert!(stderr.contains("GPU-seconds at 0.5 AIC per GPU-hour") && stderr.contains("T4: "), "{stderr}");
    assert!(!stderr.contains("A10: "), "{stderr}");
    let out = h.aic(&["run", who.to_str().unwrap(), "--gpus", "5"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("5 free GPUs") && stderr.contains("4 × T4 8 GB") && stderr.contains("nothing was paid"),
        "{stderr}"
    );

    // Asking for memory: 20 GB each runs only on the A10s.
    for _ in 0..2 {
        let out = h.aic(&["run", who.to_str().unwrap(), "--min-gpu-memory", "20"]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("miner-1") || stdout.contains("miner-2"), "a 20 GB job ran on a T4: {stdout}");
    }
    // Models in order of preference, in any case: the T4s first.
    let out = h.aic(&["run", who.to_str().unwrap(), "--gpu-type", "t4,a10"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("miner-3") || stdout.contains("miner-4"), "T4 preferred: {stdout}");
    // A job file asks the same way.
    let file = h.write("who.yaml", "code: who.sh\ngpu_types: [A10]\nmin_gpu_memory: 24\n");
    let out = h.aic(&["submit", file.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("miner-1") || stdout.contains("miner-2"), "an A10 job ran on a T4: {stdout}");
    // A model the pool lacks, or more memory with more GPUs than any miner has: refused before
    // paying, with what the pool has.
    for (args, asked) in [
        (vec!["--gpu-type", "H100"], "GPUs of model H100"),
        (vec!["--min-gpu-memory", "20", "--gpus", "4"], "GPUs with 20 GB or more"),
    ] {
        let mut argv = vec!["run", who.to_str().unwrap()];
        argv.extend(args);
        let out = h.aic(&argv);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{stdout}");
        assert!(
            stderr.contains(asked)
                && stderr.contains("2 × A10 24 GB, 4 × T4 8 GB")
                && stderr.contains("nothing was paid"),
            "{stderr}"
        );
    }
    let bad = h.aic(&["run", who.to_str().unwrap(), "--gpu-type", "A100;rm"]);
    assert!(text(&bad).1.contains("--gpu-type: \"A100;rm\" is not a GPU model"), "{:?}", text(&bad));
}
