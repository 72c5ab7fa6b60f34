//! The embedded pool's host killed outright (SIGKILL) while jobs run, a job waits and a
//! deployment serves: the next host takes over what it left (issue 19, crash recovery).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

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

/// Deploys a Flask app answering `ok from <replica index>` with `replicas` replicas: its id.
fn deploy_api(h: &Home, replicas: u32) -> String {
    h.write("api/app.py", "import os\nfrom flask import Flask\napp = Flask(__name__)\n\n@app.get('/')\ndef index():\n    return 'ok from ' + os.environ.get('AIC_ALLOC_INDEX', '?')\n");
    h.write("api/requirements.txt", "flask\n");
    let n = replicas.to_string();
    let out = h.aic(&["deploy", h.path().join("api").to_str().unwrap(), "--replicas", &n]);
    assert!(out.status.success(), "{:?}", text(&out));
    text(&out)
        .0
        .lines()
        .find_map(|l| l.strip_prefix("deployment  : "))
        .and_then(|l| l.split(' ').next())
        .expect("the deployment is printed")
        .to_string()
}

fn usage(h: &Home, job: &str) -> Vec<serde_json::Value> {
    let dir = h.path().join(format!("aic/store/pool/usage/{OWNER}/{job}"));
    walk(&dir).iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect()
}

#[test]
fn a_killed_host_is_taken_over_by_the_next_running_and_waiting_jobs_and_deployments_alike() {
    let h = Home::new();
    let go = h.shared().join("go");
    let wait = |name: &str| {
        h.write(
            &format!("{name}.sh"),
            &format!("echo {name}-started\nwhile [ ! -e {} ]; do sleep 0.05; done\necho {name}-done\n", go.display()),
        )
    };
    let mut pool = DevUp::start_with(&h, &[("AIC_POOL_MINERS", "3")]);

    // A deployment on one miner, two jobs on the two others, a third waiting for a miner.
    let dep = deploy_api(&h, 1);
    let api = |h: &Home| deployment_origin(h, &dep);
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
    crate::common::kill_group_of(wb[0]);
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

/// Whether the miners can be hosts of their own here (root, `ip`): cutting one off needs it.
fn namespaces() -> bool {
    let ok = nix::unistd::geteuid().is_root() && std::process::Command::new("ip").arg("-V").output().is_ok();
    if !ok {
        eprintln!("not root or no `ip`: the miners share this host's loopback and cannot be cut off");
    }
    ok
}

/// The namespace of the miner a process runs on (`aic<id>-<n>`), and its number.
fn miner_of(pid: i32) -> (String, u32) {
    let out = std::process::Command::new("ip").args(["netns", "identify", &pid.to_string()]).output().unwrap();
    // A worker runs in its job's network on its miner, `aic<pool>-<miner>j<slot>`; the
    // miner's own namespace is `aic<pool>-<miner>`.
    let ns = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (pool, job_net) = ns.rsplit_once('-').unwrap_or_else(|| panic!("pid {pid} in {ns:?}"));
    let n: u32 =
        job_net.split('j').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("pid {pid} in {ns:?}"));
    (format!("{pool}-{n}"), n)
}

/// Sets miner namespace `ns`'s link (`eth0`) up or down.
fn link(ns: &str, state: &str) {
    let ok = std::process::Command::new("ip").args(["-n", ns, "link", "set", "eth0", state]).status().unwrap();
    assert!(ok.success(), "ip -n {ns} link set eth0 {state}");
}

const LOST_POOL: [(&str, &str); 4] =
    [("AIC_POOL_MINERS", "3"), ("AIC_POOL_NETNS", "1"), ("AIC_POOL_LOST_AFTER", "4"), ("AIC_SYNC_SECONDS", "0.3")];

/// A miner cut off the network (its link down) during an MPI job: its heartbeat stops, the
/// pool takes it for lost (as Nomad does: "if an allocation is on a node that misses
/// heartbeats, the allocation will be marked lost and will be replaced", Nomad's `disconnect`
/// block documentation, developer.hashicorp.com/nomad/docs/job-specification/disconnect; its
/// servers' default heartbeat TTL is 10 s, the pool's default `AIC_POOL_LOST_AFTER`), the job starts again from its checkpoint on the other miners,
/// and nothing is placed on it while it is down; with its link back it rejoins the pool.
#[test]
fn a_miner_cut_off_the_network_is_lost_its_mpi_job_resumes_elsewhere_and_it_rejoins() {
    if !namespaces() {
        return;
    }
    let h = Home::new();
    let data = h.path().join("digits-data");
    digits_dataset(&data);
    assert!(h.aic(&["data", "put", data.to_str().unwrap(), "digits"]).status.success());
    let _pool = DevUp::start_with(&h, &LOST_POOL);
    let job = mpi_digits_detached(&h, 12, "0.4");
    let ckpt = h.path().join(format!("aic/store/users/{OWNER}/jobs/{job}/output/model.npz"));
    until("training gets going", 90, || ckpt.exists() && text(&h.aic(&["logs", &job])).0.contains("epoch 4/12"));
    let workers = workers_of(&job);
    assert_eq!(workers.len(), 2, "{workers:?}");
    let (ns, n) = miner_of(workers[1]);
    let cut = format!("miner-{n}");

    link(&ns, "down");
    until("the job starts again", 60, || h.history(&job).iter().any(|r| r["state"] == "retrying"));
    let retry = h.history(&job).into_iter().find(|r| r["state"] == "retrying").unwrap();
    let reason = retry["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("on {cut} was lost ({cut} stopped answering (no heartbeat for")), "{retry}");
    assert!(reason.contains("starting again from the last checkpoint"), "{retry}");
    let pool = text(&h.aic(&["pool"])).0;
    assert!(pool.contains(&cut) && pool.contains("down: "), "the pool shows it down: {pool}");
    assert!(pool.contains("available miners: ") && !pool.contains("available miners: 3"), "{pool}");

    until("the job succeeds", 180, || h.state(&job) == "succeeded");
    let logs = text(&h.aic(&["logs", &job])).0;
    let resumed: u32 = logs
        .lines()
        .find_map(|l| l.split("resuming from checkpoint at epoch ").nth(1))
        .expect("the restarted run resumes")
        .trim()
        .parse()
        .unwrap();
    assert!(resumed >= 4, "{logs}");
    // The retry ran on the two miners left, not on the one cut off.
    let allocs = h.path().join(format!("aic/store/users/{OWNER}/jobs/{job}/allocs"));
    let mut attempts: Vec<u32> =
        std::fs::read_dir(&allocs).unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    // Each allocation's result is under its attempt; the lost attempt's workers left none.
    attempts.sort();
    assert_eq!(attempts, [1], "only the retry's allocations ended with a result");
    until("both allocations' results", 30, || walk(&allocs.join("1")).len() == 2);
    let placed: Vec<String> = walk(&allocs.join("1"))
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v["miner"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(placed.len(), 2, "{placed:?}");
    assert!(!placed.contains(&cut), "the retry went to the miner cut off: {placed:?}");

    // Back on the network: it rejoins, and a job that needs every miner runs on it.
    link(&ns, "up");
    until("the miner rejoins", 30, || !text(&h.aic(&["pool"])).0.contains("down: "));
    let who = h.write("who.sh", "hostname\n");
    let out = h.aic(&["run", who.to_str().unwrap(), "--miners", "3"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(&cut), "{stdout}");
}

/// A replica's miner cut off the network: the deployment keeps answering from the other
/// replica all along, the lost one is started again on a miner still up, and the miner
/// rejoins when its link is back.
#[test]
fn a_deployment_keeps_answering_while_a_replicas_miner_is_cut_off() {
    if !namespaces() {
        return;
    }
    let h = Home::new();
    let _pool = DevUp::start_with(&h, &LOST_POOL);
    let dep = deploy_api(&h, 2);
    let api = deployment_origin(&h, &dep);
    let mut seen = std::collections::BTreeSet::new();
    until("both replicas answer", 120, || {
        let (code, body) = get(&api);
        if code == 200 {
            seen.insert(body);
        }
        seen.len() == 2
    });
    let workers = workers_of(&dep);
    assert_eq!(workers.len(), 2, "{workers:?}");
    let (ns, n) = miner_of(workers[0]);
    let cut = format!("miner-{n}");
    // The uWSGI processes of the replica on the miner about to be cut off.
    let uwsgi_on_cut = || processes_of(&dep).into_iter().filter(|(p, c)| c == "uwsgi" && miner_of(*p).1 == n).count();
    assert!(uwsgi_on_cut() > 0, "no uWSGI of {dep} on {cut}");

    link(&ns, "down");
    // Every request answers while the replica is lost and replaced (a request that meets
    // the cut-off one first is passed to the other).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut answered = 0;
    loop {
        let (code, body) = get(&api);
        assert_eq!(code, 200, "request {answered} after the cut: {body}");
        answered += 1;
        let now = workers_of(&dep);
        if now.len() == 2 && !now.contains(&workers[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "the lost replica was not started again");
    }
    let now = workers_of(&dep);
    assert!(now.iter().all(|p| miner_of(*p).1 != n), "a replica runs on {cut}, cut off");
    // Its worker was killed outright: its uWSGI goes with it, not left serving, orphaned.
    until("the lost replica's uWSGI stops", 30, || uwsgi_on_cut() == 0);
    until("the new replica answers too", 120, || {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let (code, body) = get(&api);
            assert_eq!(code, 200, "{body}");
            seen.insert(body);
        }
        seen.len() == 2
    });
    let pool = text(&h.aic(&["pool"])).0;
    assert!(pool.contains("down: "), "{pool}");
    link(&ns, "up");
    until("the miner rejoins", 30, || !text(&h.aic(&["pool"])).0.contains("down: "));
    assert!(h.aic(&["deploy", "rm", &dep]).status.success());
    until("the replicas stop, uWSGI and all", 30, || processes_of(&dep).is_empty());
}
