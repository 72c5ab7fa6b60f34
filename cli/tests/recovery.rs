//! The embedded pool's host killed outright (SIGKILL) while jobs run, a job waits and a
//! deployment serves: the next host takes over what it left (issue 19, crash recovery).

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::*;

const OWNER: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";

fn until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn detached(h: &Home, script: &Path) -> String {
    let out = h.aic(&["run", "--detach", script.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    text(&out).0.trim().to_string()
}

/// `GET <base>` through curl: (status, body).
fn get(url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl").args(["-s", "-m", "5", "-w", "\n%{http_code}", url]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

fn usage(h: &Home, job: &str) -> Vec<serde_json::Value> {
    let dir = h.path().join(format!("aic/store/pool/usage/{OWNER}/{job}"));
    walk(&dir).iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect()
}

#[test]
fn a_killed_host_is_taken_over_by_the_next_running_and_waiting_jobs_and_deployments_alike() {
    let h = Home::new();
    let go = h.path().join("go");
    let wait = |name: &str| {
        h.write(
            &format!("{name}.sh"),
            &format!("echo {name}-started\nwhile [ ! -e {} ]; do sleep 0.05; done\necho {name}-done\n", go.display()),
        )
    };
    let mut pool = DevUp::start_with(&h, &[("AIC_POOL_MINERS", "3")]);

    // A deployment on one miner, two jobs on the two others, a third waiting for a miner.
    h.write("api/app.py", "import os\nfrom flask import Flask\napp = Flask(__name__)\n\n@app.get('/')\ndef index():\n    return 'ok from ' + os.environ.get('AIC_ALLOC_INDEX', '?')\n");
    h.write("api/requirements.txt", "flask\n");
    let out = h.aic(&["deploy", h.path().join("api").to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    let dep = text(&out)
        .0
        .lines()
        .find_map(|l| l.strip_prefix("deployment  : "))
        .and_then(|l| l.split(' ').next())
        .expect("the deployment is printed")
        .to_string();
    let serve = |h: &Home| std::fs::read_to_string(h.path().join("aic/serve.addr")).unwrap();
    let api = |h: &Home| format!("{}/d/{dep}/", serve(h));
    until("the deployment answers", 60, || get(&api(&h)) == (200, "ok from 0".into()));
    let (a, b) = (detached(&h, &wait("a")), detached(&h, &wait("b")));
    let c = detached(&h, &h.write("c.sh", "echo c-ran\n"));
    for j in [&a, &b] {
        until("the job prints", 60, || text(&h.aic(&["logs", j])).0.contains("-started"));
    }
    until("the third job waits", 30, || {
        h.history(&c).last().is_some_and(|r| r["reason"].as_str().unwrap_or_default().starts_with("waiting for"))
    });
    let (wa, wb, wdep) = (workers_of(&a), workers_of(&b), workers_of(&dep));
    assert_eq!((wa.len(), wb.len(), wdep.len()), (1, 1, 1));

    // The host dies outright; while no host runs, b's miner is lost (worker and program).
    pool.0.kill().unwrap();
    pool.0.wait().unwrap();
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(wb[0]), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(workers_of(&a), wa, "a's worker outlives its host");
    std::fs::remove_file(h.path().join("aic/serve.addr")).unwrap();
    let _pool = DevUp::start_with(&h, &[("AIC_POOL_MINERS", "3")]);

    // The deployment keeps serving from the worker it had (adopted, not started again).
    until("the deployment answers through the new host", 30, || get(&api(&h)) == (200, "ok from 0".into()));
    assert_eq!(workers_of(&dep), wdep, "the replica was adopted, not replaced");
    // b was lost while no host watched: it starts again, with the reason in its status.
    until("b starts again", 60, || h.history(&b).iter().any(|r| r["state"] == "retrying"));
    let retry = h.history(&b).into_iter().find(|r| r["state"] == "retrying").unwrap();
    assert!(retry["reason"].as_str().unwrap().contains("was lost (while the pool's host was down)"), "{retry}");
    until("b runs again", 60, || workers_of(&b).len() == 1);
    std::fs::write(&go, "").unwrap();
    for j in [&a, &b, &c] {
        until("the job ends", 90, || h.state(j) == "succeeded");
    }
    let hist_a = h.history(&a);
    assert!(hist_a.iter().all(|r| r["state"] != "retrying"), "a ran once, adopted: {hist_a:?}");
    assert_eq!(text(&h.aic(&["logs", &a])).0, "a-started\na-done\n");
    assert_eq!(text(&h.aic(&["logs", &c])).0, "c-ran\n");
    // What each ran is recorded once per worker: a's one, b's lost one and its restart.
    let (ua, ub) = (usage(&h, &a), usage(&h, &b));
    assert_eq!(ua.len(), 1, "{ua:?}");
    assert!(ua[0]["how"].as_str().unwrap().contains("adopted"), "{ua:?}");
    assert_eq!(ub.len(), 2, "{ub:?}");
    assert!(ub.iter().any(|u| u["how"].as_str().unwrap().contains("while no host watched")), "{ub:?}");
    // A lost worker is charged up to its last sign of life, never past the restart.
    for u in &ub {
        let (s, e) = (u["started_at"].as_str().unwrap(), u["ended_at"].as_str().unwrap());
        assert!(s <= e, "{u}");
    }

    // Removing the deployment stops its adopted worker; nothing is left running or recorded.
    assert!(h.aic(&["deploy", "rm", &dep]).status.success());
    until("every worker is gone", 30, || [&a, &b, &c, &dep].iter().all(|j| workers_of(j).is_empty()));
    let ledger = h.path().join("aic/work/.scheduler");
    until("the scheduler holds nothing", 10, || walk(&ledger).is_empty());
}
