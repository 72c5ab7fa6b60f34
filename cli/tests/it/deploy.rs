//! `aic deploy` on the embedded pool (hosted by `aic dev up`): the digits model served by
//! Flask under real uWSGI on two replicas behind the pool's gateway; a killed replica; a
//! dead registration; logs; removal; an oversized project. Needs python3 with numpy,
//! scikit-learn, Flask and uWSGI on PATH (`cargo xtask test` provides them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// The serving example with a model trained here (train.py run bare, 15 epochs).
fn project(h: &Home) -> (PathBuf, PathBuf) {
    let data = h.path().join("data");
    assert!(
        Command::new("python3")
            .arg(repo().join("examples/digits/make_dataset.py"))
            .arg(&data)
            .status()
            .unwrap()
            .success()
    );
    let proj = h.path().join("digits-api");
    std::fs::create_dir_all(&proj).unwrap();
    for f in ["app.py", "requirements.txt"] {
        std::fs::copy(repo().join("examples/digits/serve").join(f), proj.join(f)).unwrap();
    }
    let out = Command::new("python3")
        .arg(repo().join("examples/digits/train.py"))
        .args(["--epochs", "15"])
        .env("AIC_DATA_DIR", &data)
        .env("AIC_OUTPUT_DIR", &proj)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(proj.join("metrics.json")).ok();
    (proj, data.join("digits.csv"))
}

/// What `aic deploy` printed: the name's API address, the deployment id, its own address.
pub(crate) fn addresses(stdout: &[u8]) -> (String, String, String) {
    let stdout = String::from_utf8_lossy(stdout);
    let api = stdout.lines().find_map(|l| l.strip_prefix("API address : ")).expect("the API address is printed");
    let line = stdout.lines().find_map(|l| l.strip_prefix("deployment  : ")).expect("the deployment is printed");
    let (id, rest) = line.split_once(' ').unwrap();
    let own = rest.trim_start_matches("(this version alone: ").trim_end_matches(')');
    (api.to_string(), id.to_string(), own.to_string())
}

fn predict(api: &str, pixels: &[f64]) -> (u16, serde_json::Value) {
    let body = serde_json::json!({ "pixels": pixels }).to_string();
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-H", "content-type: application/json", "--data", &body])
        .arg(format!("{api}predict"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (json, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap_or(0), serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
}

/// A client that sent one request to `base` over HTTP/1.1, read its answer and keeps the
/// connection open, idle. A server holding a worker per such connection stops answering
/// others until one times out (uWSGI's workers speaking HTTP themselves did after 4, for
/// 4 s each): the read times out here first, after 3 s.
fn keep_alive_client(base: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let rest = base.trim_start_matches("http://");
    let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
    // A deployment's origin `<label>.localhost:<port>` is loopback (as curl and browsers take it).
    let mut s = match addr.split_once(".localhost:") {
        Some((_, port)) => std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap(),
        None => std::net::TcpStream::connect(addr).unwrap(),
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(s, "GET /{path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or_else(|e| panic!("{base}: no answer while other clients sit idle: {e}"));
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 "), "{base}: {head}");
    assert!(!head.to_ascii_lowercase().contains("connection: close"), "{base} closes its connections: {head}");
    s
}

/// `n` predictions through `api` (cycling over `rows`) all answer 200.
fn all_answer(api: &str, rows: &[Vec<f64>], n: usize, when: &str) {
    for r in rows.iter().cycle().take(n) {
        let (code, v) = predict(api, &r[..64]);
        assert_eq!(code, 200, "a request failed {when}: {v}");
    }
}

/// Waits up to `secs` for replica `alloc` to run a uWSGI other than `old`.
fn replaced(job: &str, alloc: u32, old: i32, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while uwsgi_of(job, alloc).is_none_or(|p| p == old) {
        assert!(Instant::now() < deadline, "replica {alloc} was not started again");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')').next().and_then(|s| s.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// The uWSGI master of a replica (found by its working folder).
fn uwsgi_of(job: &str, alloc: u32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmd).starts_with("uwsgi") {
            continue;
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid: i32 =
            stat.rsplit(')').next().and_then(|s| s.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0);
        let parent = std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap_or_default();
        // Its allocation: from its folder, or (sandboxed: every allocation of a job sees its
        // own at one path) from the environment its worker gave it.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let has = |v: String| vars.contains(&v.as_bytes());
        let ours = cwd.to_string_lossy().contains(&format!("{job}-{alloc}/code"))
            || (has(format!("AIC_JOB_ID={job}")) && has(format!("AIC_ALLOC_INDEX={alloc}")));
        if parent.trim() == "aic-worker" && ours {
            return Some(pid);
        }
    }
    None
}

/// A deployed Flask app streaming server-sent events (`examples/stream`): the first event
/// reaches the client through the pool's gateway while the app still holds the second, which
/// it sends once the client has acknowledged the first (`POST /ack`), saying whether it had.
/// A gateway that held the answer to its end would deliver both at once, `acked=False`.
#[test]
fn a_streamed_answer_reaches_the_client_event_by_event_through_the_gateway() {
    let h = Home::new();
    let _pool = DevUp::start(&h);
    let out = h.aic(&["deploy", repo().join("examples/stream").to_str().unwrap(), "--replicas", "1"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let (api, _, _) = addresses(&out.stdout);
    events_come_one_by_one(&api, None);
}

/// `GET <api>events` read line by line (with `key`, a private deployment's): the first event, then (after `POST <api>ack`) the
/// second, which says the acknowledgement came first.
pub(crate) fn events_come_one_by_one(api: &str, key: Option<&str>) {
    use std::io::BufRead;
    let auth: Vec<String> = key.map(|k| vec!["-H".into(), format!("Authorization: Bearer {k}")]).unwrap_or_default();
    let mut curl = Command::new("curl")
        .args(["-sN", "--max-time", "60"])
        .args(&auth)
        .arg(format!("{api}events"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(curl.stdout.take().unwrap()).lines().map_while(Result::ok);
    assert_eq!(lines.next().as_deref(), Some("data: 1"), "the first event");
    let ack = Command::new("curl").args(["-s", "-X", "POST"]).args(&auth).arg(format!("{api}ack")).output().unwrap();
    assert!(String::from_utf8_lossy(&ack.stdout).contains("\"acked\":true"), "{ack:?}");
    let rest: Vec<String> = lines.filter(|l| !l.is_empty()).collect();
    assert_eq!(rest, ["data: 2 acked=True"], "the second event came after the client read the first");
    assert!(curl.wait().unwrap().success());
}

/// A FastAPI app (`examples/fastapi`) is told for an ASGI app and served by uvicorn with the
/// processes asked: its server-sent events come one by one through the gateway, and a 40 MiB
/// upload reaches it whole. Threads are for WSGI apps: asked of an ASGI one, the deployment is
/// refused before anything is paid.
#[test]
fn an_asgi_app_is_served_by_uvicorn_and_streams_both_ways_through_the_gateway() {
    let h = Home::new();
    let _pool = DevUp::start(&h);
    let proj = repo().join("examples/fastapi");
    let refused = h.aic(&["deploy", proj.to_str().unwrap(), "--server", "asgi", "--threads", "4"]);
    let (_, err) = text(&refused);
    assert!(!refused.status.success() && err.contains("--threads: an ASGI app"), "{err}");
    let out = h.aic(&["deploy", proj.to_str().unwrap(), "--name", "fast", "--workers", "3"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let (api, job, _) = addresses(&out.stdout);
    events_come_one_by_one(&api, None);

    let big = h.path().join("upload.bin");
    std::fs::write(&big, vec![b'x'; 40 << 20]).unwrap();
    let echo = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-H", "content-type: application/octet-stream", "--data-binary"])
        .arg(format!("@{}", big.display()))
        .arg(format!("{api}echo"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&echo.stdout), format!("{{\"bytes\":{}}}", 40 << 20), "{echo:?}");

    let logs = String::from_utf8_lossy(&h.aic(&["deploy", "logs", "fast"]).stdout).to_string();
    assert!(logs.contains("[aic] an ASGI app under uvicorn: 3 processes"), "{logs}");
    // uvicorn's own lines: its workers started, each the app's.
    assert!(logs.matches("Application startup complete").count() >= 3, "{logs}");
    // Its replica is registered like any other.
    let reg = h.path().join(format!("aic/store/pool/serving/{job}/0.json"));
    assert!(reg.is_file(), "{}", reg.display());

    // An ASGI app of no framework (nothing to tell it by its imports), printing as it loads:
    // imported and asked, then served by uvicorn.
    let raw = h.write(
        "raw/app.py",
        "print('loading the model', flush=True)\n\nasync def app(scope, receive, send):\n    if scope['type'] != 'http':\n        return\n    await send({'type': 'http.response.start', 'status': 200, 'headers': [(b'content-type', b'text/plain')]})\n    await send({'type': 'http.response.body', 'body': b'raw asgi'})\n",
    );
    let out = h.aic(&["deploy", raw.parent().unwrap().to_str().unwrap(), "--name", "raw", "--workers", "1"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let (api, _, _) = addresses(&out.stdout);
    let o = Command::new("curl").args(["-s", "--max-time", "20"]).arg(&api).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "raw asgi");
    let logs = String::from_utf8_lossy(&h.aic(&["deploy", "logs", "raw"]).stdout).to_string();
    assert!(logs.contains("[aic] an ASGI app under uvicorn: 1 process"), "{logs}");
}

#[test]
fn two_replicas_serve_predictions_and_survive_a_killed_one() {
    let h = Home::new();
    let (proj, csv) = project(&h);
    // Three miners: room for a scaled copy beside the two replicas.
    let _pool = DevUp::start_with(&h, &[("AIC_POOL_MINERS", "3")]);
    let out = h.aic(&["deploy", proj.to_str().unwrap(), "--name", "digits", "--replicas", "2"]);
    assert!(out.status.success());
    let (api, job, _) = addresses(&out.stdout);
    // The name's address: an origin of its own, holding the name and the owner.
    let owner: aic_schemas::Address = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap();
    let label = aic_schemas::origin::named_label(&owner, "digits").unwrap();
    assert!(api.starts_with(&format!("http://{label}.localhost:")) && api.ends_with('/'), "the name's address: {api}");

    // Predictions through the gateway are right, and both replicas answer.
    let rows: Vec<Vec<f64>> = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .step_by(90)
        .take(20)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    let mut right = 0;
    let mut replicas = std::collections::BTreeSet::new();
    for r in &rows {
        let (code, v) = predict(&api, &r[..64]);
        assert_eq!(code, 200, "{v}");
        right += (v["digit"].as_f64() == Some(r[64])) as usize;
        replicas.insert(v["replica"].as_str().unwrap().to_string());
    }
    assert!(right >= 18, "{right} of 20 right");
    assert_eq!(replicas.into_iter().collect::<Vec<_>>(), ["0", "1"], "round robin over both replicas");
    let (code, v) = predict(&api, &[1.0; 3]);
    assert_eq!(code, 400, "the app's own errors come through: {v}");

    // 200 idle keep-alive clients on the gateway and 200 on replica 0 itself hold nothing
    // another client needs: predictions still answer through both.
    let reg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.path().join(format!("aic/store/pool/serving/{job}/0.json"))).unwrap())
            .unwrap();
    let direct = format!("http://{}:{}/", reg["host"].as_str().unwrap(), reg["port"]);
    let idle: Vec<std::net::TcpStream> = [api.as_str(), direct.as_str()]
        .iter()
        .flat_map(|base| (0..200).map(move |_| keep_alive_client(base)))
        .collect();
    assert_eq!(idle.len(), 400);
    for base in [&api, &direct] {
        all_answer(base, &rows, 8, &format!("with 400 idle keep-alive clients open ({base})"));
    }
    drop(idle);

    // A registration whose replica is gone (no heartbeat for minutes) is dropped, and
    // requests never go to it.
    let dead = h.path().join(format!("aic/store/pool/serving/{job}/7.json"));
    let old = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    std::fs::write(
        &dead,
        serde_json::json!({"deployment": job, "job_id": job, "alloc": 7, "host": "127.0.0.1", "port": 9, "healthy": true,
            "started_at": old, "heartbeat_at": old, "ttl_seconds": 20})
        .to_string(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(predict(&api, &rows[0][..64]).0, 200);
    assert!(!dead.exists(), "the dead registration was dropped");

    // Kill replica 1's uWSGI: every request still succeeds (the gateway tries the other).
    let victim = uwsgi_of(&job, 1).expect("replica 1's uWSGI");
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(victim), nix::sys::signal::Signal::SIGKILL);
    all_answer(&api, &rows, 40, "after a replica was killed");
    // The replica's worker starts it again; it registers again.
    replaced(&job, 1, victim, 30);
    // Its log says so once shipped (within about a second): before the next step kills that
    // worker, whose unshipped lines would go with it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !String::from_utf8_lossy(&h.aic(&["deploy", "logs", "digits"]).stdout).contains("uWSGI exited") {
        assert!(Instant::now() < deadline, "the restart never reached the log");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Lose replica 1's whole allocation (its worker and its uWSGI, as when a miner dies):
    // replica 0 keeps serving untouched, and only replica 1 starts again, on the free miner.
    let (r0, u1) = (uwsgi_of(&job, 0).unwrap(), uwsgi_of(&job, 1).unwrap());
    let host_of = |alloc: u32| -> String {
        let reg: serde_json::Value = serde_json::from_slice(
            &std::fs::read(h.path().join(format!("aic/store/pool/serving/{job}/{alloc}.json"))).unwrap_or_default(),
        )
        .unwrap_or_default();
        reg["host"].as_str().unwrap_or_default().to_string()
    };
    // The miners' addresses: loopback ones, or their namespaces' (AIC_POOL_NETNS=1).
    let (host0, host1) = (host_of(0), host_of(1));
    let w1 = parent_of(u1);
    for p in [w1, u1] {
        crate::common::kill_group_of(p);
    }
    all_answer(&api, &rows, 20, "after a replica's allocation was lost");
    replaced(&job, 1, u1, 60);
    assert_ne!(parent_of(uwsgi_of(&job, 1).unwrap()), w1, "a new worker runs replica 1");
    assert_eq!(uwsgi_of(&job, 0), Some(r0), "replica 0 was not restarted");
    let replica1 = h.path().join(format!("aic/store/pool/serving/{job}/1.json"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&replica1).unwrap_or_default()).unwrap_or_default();
        let host = reg["host"].as_str().unwrap_or_default();
        if !host.is_empty() && host != host0 && host != host1 && reg["healthy"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "replica 1 did not register from the third miner: {reg}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut answered = std::collections::BTreeSet::new();
    std::thread::sleep(Duration::from_millis(1100));
    for r in rows.iter().take(6) {
        let (code, v) = predict(&api, &r[..64]);
        assert_eq!(code, 200, "{v}");
        answered.insert(v["replica"].as_str().unwrap().to_string());
    }
    assert_eq!(answered.into_iter().collect::<Vec<_>>(), ["0", "1"], "both replicas answer again");

    let list: serde_json::Value = serde_json::from_slice(&h.aic(&["deploy", "list", "--json"]).stdout).unwrap();
    assert_eq!((list[0]["name"].as_str(), list[0]["state"].as_str()), (Some("digits"), Some("running")));
    assert_eq!(list[0]["address"].as_str(), Some(api.as_str()), "the list shows the name's address");
    assert_eq!(list[0]["version_address"].as_str().unwrap(), deployment_origin(&h, &job));
    // The uWSGI log, with the restart in it.
    let logs = String::from_utf8_lossy(&h.aic(&["deploy", "logs", "digits"]).stdout).to_string();
    assert!(logs.contains("WSGI app 0") && logs.contains("[aic] serving on"), "the uWSGI log: {logs}");
    assert!(logs.contains("uWSGI exited"), "{logs}");
    // Following the log until Ctrl-C: it says so on a line of its own, so the shell's prompt
    // does not land on the last log line.
    let mut follow = h
        .cmd(&["deploy", "logs", "digits", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut log, &mut first).unwrap();
    assert!(!first.is_empty(), "the log is followed");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(follow.id() as i32), nix::sys::signal::Signal::SIGINT);
    std::io::Read::read_to_string(&mut log, &mut first).unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut said).unwrap();
    assert_eq!(follow.wait().unwrap().code(), Some(130), "{said}");
    assert!(said.contains("stopped following") && said.ends_with('\n'), "{said:?}");

    // A replica takes `aic exec` too: its project folder and the app's environment.
    let out = h.aic(&["exec", &job, "--alloc", "1", "--", "sh", "-c", "ls; echo job=$AIC_JOB_ID"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("app.py") && listing.contains(&format!("job={job}")), "{listing}");

    // Scaling to three does not fit beside the two running: nothing changes, and it says why.
    let out = h.aic(&["deploy", "scale", "digits", "3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no free GPUs"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(predict(&api, &rows[0][..64]).0, 200, "the old deployment still serves");
    // Scale to one replica: a new deployment of the same project replaces the old one, and
    // the name's address answers all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let caller = {
        let (api, pixels, stop) = (api.clone(), rows[0][..64].to_vec(), stop.clone());
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                codes.push(predict(&api, &pixels).0);
                std::thread::sleep(Duration::from_millis(50));
            }
            codes
        })
    };
    let out = h.aic(&["deploy", "scale", "digits", "1"]);
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let codes = caller.join().unwrap();
    assert!(codes.len() > 10 && codes.iter().all(|c| *c == 200), "the name's address failed during scale: {codes:?}");
    let (api_after, job2, versioned) = addresses(&out.stdout);
    assert_eq!(api_after, api, "scaling keeps the API address");
    assert_ne!(job2, job);
    assert_eq!(predict(&versioned, &rows[0][..64]).0, 200);
    let api2 = api.clone();
    let list: serde_json::Value = serde_json::from_slice(&h.aic(&["deploy", "list", "--json"]).stdout).unwrap();
    let by_id = |id: &str| list.as_array().unwrap().iter().find(|d| d["deployment"] == id).cloned().unwrap();
    assert_eq!((by_id(&job2)["replicas"].as_u64(), by_id(&job2)["live"].as_u64()), (Some(1), Some(1)));
    assert_eq!(by_id(&job)["state"], "cancelled");
    let deadline = Instant::now() + Duration::from_secs(20);
    while uwsgi_of(&job, 0).is_some() || uwsgi_of(&job, 1).is_some() {
        assert!(Instant::now() < deadline, "the old deployment's uWSGI still runs");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1100));
    let old_version = versioned.replace(&job2, &job);
    assert_eq!(predict(&old_version, &rows[0][..64]).0, 503, "the old version is gone");
    assert_eq!(predict(&api, &rows[0][..64]).0, 200, "the name reaches the new version");
    let (job, api) = (job2, api2);

    // More hours: a new deployment paid for them replaces it under the same address, and the
    // old one's unused time comes back.
    let out = h.aic(&["deploy", "extend", "digits", "--hours", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 h) replaced"), "{}", String::from_utf8_lossy(&out.stderr));
    let (api_after, job3, _) = addresses(&out.stdout);
    assert_eq!(api_after, api, "extending keeps the API address");
    assert_eq!(predict(&api, &rows[0][..64]).0, 200);
    let list: serde_json::Value = serde_json::from_slice(&h.aic(&["deploy", "list", "--json"]).stdout).unwrap();
    let extended = list.as_array().unwrap().iter().find(|d| d["deployment"] == job3.as_str()).cloned().unwrap();
    let left = extended["seconds_left"].as_u64().unwrap();
    assert!((6000..=7200).contains(&left) && extended["low"] == false, "{extended}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let settled = loop {
        let st: serde_json::Value = serde_json::from_slice(&h.aic(&["status", &job, "--json"]).stdout).unwrap();
        if let Some(s) = st["settlements"].as_array().and_then(|a| a.first()).cloned() {
            break s;
        }
        assert!(Instant::now() < deadline, "the replaced deployment was never settled: {st}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let refunded: u128 = settled["refunded"].as_str().unwrap().parse().unwrap();
    assert!(settled["kind"] == "settled" && refunded > 0, "{settled}");
    let spend: serde_json::Value = serde_json::from_slice(&h.aic(&["spend", "--json"]).stdout).unwrap();
    let row = |id: &str| spend["jobs"].as_array().unwrap().iter().find(|r| r["job"] == id).cloned().unwrap();
    assert_eq!(row(&job)["refunded"], settled["refunded"], "{spend}");
    assert_eq!(row(&job3)["held"], row(&job3)["paid"], "still running: its deposit is held: {spend}");
    let total = |k: &str| spend["totals"][k].as_str().unwrap().parse::<u128>().unwrap();
    let sum = |k: &str| {
        spend["jobs"].as_array().unwrap().iter().map(|r| r[k].as_str().unwrap().parse::<u128>().unwrap()).sum::<u128>()
    };
    for k in ["paid", "charged", "refunded", "held"] {
        assert_eq!(total(k), sum(k), "{k}: {spend}");
    }
    assert_eq!(total("paid"), total("charged") + total("refunded") + total("held"), "{spend}");
    let job = job3;

    // Removal: out of the gateway, processes gone, cancelled.
    assert!(h.aic(&["deploy", "rm", "digits"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while uwsgi_of(&job, 0).is_some() || uwsgi_of(&job, 1).is_some() {
        assert!(Instant::now() < deadline, "uWSGI still runs after rm");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, v) = predict(&api, &rows[0][..64]);
    assert_eq!(code, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no live replica"));
    let list: serde_json::Value = serde_json::from_slice(&h.aic(&["deploy", "list", "--json"]).stdout).unwrap();
    assert!(list.as_array().unwrap().iter().all(|d| d["state"] == "cancelled"), "{list}");
}

#[test]
fn an_oversized_project_is_refused_with_the_reason_and_nothing_runs() {
    let h = Home::new();
    let proj = h.path().join("big");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(
        proj.join("app.py"),
        "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'hi']\n",
    )
    .unwrap();
    std::fs::write(proj.join("weights.bin"), vec![7u8; 5000]).unwrap();
    let _pool = DevUp::start_with(&h, &[("AIC_MAX_CODE_BYTES", "2000")]);
    let out = h.aic(&["deploy", proj.to_str().unwrap(), "--replicas", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("over the 2000-byte limit"), "{err}");
    assert!(
        !h.path().join("aic/work").exists() || walk_has_no(&h.path().join("aic/work"), "weights.bin"),
        "nothing was unpacked"
    );
    // Not a folder, no app.py: said before anything is paid.
    let out = h.aic(&["deploy", proj.join("app.py").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a folder"));
}

fn walk_has_no(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().all(|e| {
                let p = e.path();
                p.file_name().is_none_or(|n| n != name) && (!p.is_dir() || walk_has_no(&p, name))
            })
        })
        .unwrap_or(true)
}

/// A deployed app that kills its own worker (the allocation's `aic-worker`, which the
/// scheduler then starts again) gets no fresh hours: the deployment still ends at its run's
/// first start + its paid hours, and both workers' time is metered. (Each worker counted the
/// hours from its own start: killed late, a replica served on for its whole hours again.)
#[test]
fn an_app_that_kills_its_worker_gets_no_fresh_hours() {
    let h = Home::new();
    let proj = h.path().join("killer");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("requirements.txt"), "flask\n").unwrap();
    std::fs::write(
        proj.join("app.py"),
        r#"import os, signal
from flask import Flask
app = Flask(__name__)

def worker():
    pid = os.getpid()
    while pid > 1:
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() == "aic-worker":
                return pid
    raise RuntimeError("no aic-worker above this app")

@app.route("/")
def index():
    return "ok"

@app.route("/kill")
def kill():
    os.kill(worker(), signal.SIGKILL)
    return "killed"
"#,
    )
    .unwrap();
    let _pool = DevUp::start_with(&h, &[("AIC_POOL_MINERS", "1")]);
    // Paid for 0.005 h: 18 s.
    let out = h.aic(&["deploy", proj.to_str().unwrap(), "--name", "killer", "--hours", "0.005"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (api, job, _) = addresses(&out.stdout);
    // 8 s in, the app kills its worker; the scheduler starts the replica again.
    std::thread::sleep(Duration::from_secs(8));
    let old = uwsgi_of(&job, 0).expect("the replica's uWSGI");
    let _ = Command::new("curl").args(["-s", "-m", "5"]).arg(format!("{api}kill")).output();
    replaced(&job, 0, old, 30);
    let deadline = Instant::now() + Duration::from_secs(90);
    let hist = loop {
        let hist = h.history(&job);
        if hist.last().is_some_and(|r| ["succeeded", "failed", "cancelled"].contains(&r["state"].as_str().unwrap())) {
            break hist;
        }
        assert!(Instant::now() < deadline, "the deployment never ended: {hist:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let at = |r: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(r["at"].as_str().unwrap()).unwrap();
    let running = hist.iter().find(|r| r["state"] == "running").expect("it ran");
    let end = hist.last().unwrap();
    assert_eq!(end["state"], "succeeded", "{hist:?}");
    let served = (at(end) - at(running)).as_seconds_f64();
    // 18 s paid from the first start; a fresh 18 s from the restart would end past 26 s.
    assert!(served < 24.0, "served {served:.1} s for 18 s paid: {hist:?}");
    let usage_dir = h.path().join(format!("aic/store/pool/usage/0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/{job}"));
    // Each worker's time is recorded by the scheduler as it sees the worker end (a moment
    // after the last one wrote the job's end).
    let deadline = Instant::now() + Duration::from_secs(30);
    while walk(&usage_dir).len() < 2 {
        assert!(Instant::now() < deadline, "both workers' time is metered: {:?}", walk(&usage_dir));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A private deployment (`--private`) answers only requests carrying one of its keys: none, a
/// wrong one, a second wallet's key to its own deployment of the same name, or a revoked one
/// are refused at the gateway (401) and never reach the app (its server's log has none of
/// their paths); a key made with `aic deploy key create` opens it, `ls` lists it (never the
/// key), and `revoke` closes it again at once.
#[test]
fn a_private_deployment_answers_only_with_a_key_of_its_own() {
    let h = Home::new();
    // Room for both wallets' deployments and a WSGI one.
    let _pool = DevUp::start_with(&h, &[("AIC_POOL_MINERS", "3")]);
    let proj = repo().join("examples/fastapi");
    let out = h.aic(&["deploy", proj.to_str().unwrap(), "--name", "priv", "--private"]);
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("aic deploy key create priv"), "{err}");
    let (api, _, _) = addresses(&out.stdout);
    let call = |path: &str, key: Option<&str>| -> (String, String) {
        let mut c = Command::new("curl");
        c.args(["-s", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"]);
        if let Some(k) = key {
            c.args(["-H", &format!("Authorization: Bearer {k}")]);
        }
        let o = c.arg(format!("{api}{path}")).output().unwrap();
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        let (body, code) = t.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    let (code, body) = call("refused-none", None);
    assert_eq!(code, "401", "{body}");
    // Nor does anything on the pool's network reach the app past the gateway: its replica
    // answers only with the guard its worker registered for the gateway.
    let direct = |job: &str, guard: bool| -> String {
        let reg: serde_json::Value = serde_json::from_slice(
            &std::fs::read(h.path().join(format!("aic/store/pool/serving/{job}/0.json"))).unwrap(),
        )
        .unwrap();
        let g = reg["guard"].as_str().expect("a private replica registers a guard").to_string();
        let mut c = Command::new("curl");
        c.args(["-s", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}"]);
        if guard {
            c.args(["-H", &format!("X-Aic-Replica: {g}")]);
        } else {
            c.args(["-H", &format!("X-Aic-Replica: {}", "0".repeat(64))]);
        }
        let url = format!("http://{}:{}/direct-probe", reg["host"].as_str().unwrap(), reg["port"]);
        String::from_utf8_lossy(&c.arg(url).output().unwrap().stdout).to_string()
    };
    let (_, job, _) = addresses(&out.stdout);
    assert_eq!(direct(&job, false), "403", "a private replica answered without its guard");
    assert!(body.contains("deployment priv is private") && body.contains("aic deploy key create priv"), "{body}");

    let made = h.aic(&["deploy", "key", "create", "priv", "--label", "ci"]);
    assert!(made.status.success(), "{:?}", text(&made));
    let key = String::from_utf8_lossy(&made.stdout).trim().to_string();
    assert!(key.starts_with("aicdk_") && key.len() == 6 + 64, "{key}");
    assert_eq!(call("accepted-1", Some(&key)).0, "404", "the app's own answer (it has no such path)");
    assert_eq!(call("", Some(&key)).0, "200");
    assert_eq!(call("refused-wrong", Some(&format!("aicdk_{}", "0".repeat(64)))).0, "401");
    let listed = String::from_utf8_lossy(&h.aic(&["deploy", "key", "ls", "priv"]).stdout).to_string();
    assert!(listed.contains(&format!("…{}", &key[key.len() - 4..])) && listed.contains("ci"), "{listed}");
    assert!(!listed.contains(&key), "ls shows the key: {listed}");

    // A second wallet's deployment of the same name, and its key: another deployment's.
    let stranger = |args: &[&str]| {
        let mut c = h.cmd(args);
        c.env("AIC_PRIVATE_KEY", aic_chain::devchain::DEV_KEYS[5]);
        c.output().unwrap()
    };
    let theirs = stranger(&["deploy", proj.to_str().unwrap(), "--name", "priv", "--private"]);
    assert!(theirs.status.success(), "{:?}", text(&theirs));
    let their_key = stranger(&["deploy", "key", "create", "priv"]);
    let their_key = String::from_utf8_lossy(&their_key.stdout).trim().to_string();
    assert!(their_key.starts_with("aicdk_"), "{their_key}");
    assert_eq!(call("refused-stranger", Some(&their_key)).0, "401");

    // Revoked (by the key itself): refused from then on.
    let revoked = h.aic(&["deploy", "key", "revoke", "priv", &key]);
    assert!(revoked.status.success(), "{:?}", text(&revoked));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while call("", Some(&key)).0 != "401" {
        assert!(std::time::Instant::now() < deadline, "a revoked key still opens the deployment");
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = String::from_utf8_lossy(&h.aic(&["deploy", "key", "ls", "priv"]).stdout).to_string();
    assert!(listed.trim().is_empty(), "{listed}");

    // The app saw the accepted requests and none of the refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let logs = loop {
        let logs = String::from_utf8_lossy(&h.aic(&["deploy", "logs", "priv"]).stdout).to_string();
        if logs.contains("/accepted-1") {
            break logs;
        }
        assert!(std::time::Instant::now() < deadline, "the accepted request is not in the app's log: {logs}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!logs.contains("/refused-"), "a refused request reached the app: {logs}");
    // The direct one was turned away by the replica's guard (uvicorn logs it, 403).
    assert!(logs.contains("\"GET /direct-probe HTTP/1.1\" 403"), "{logs}");

    // A WSGI app (Flask under uWSGI) is guarded the same way.
    let out = h.aic(&["deploy", repo().join("examples/stream").to_str().unwrap(), "--name", "privw", "--private"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let (wsgi, job, _) = addresses(&out.stdout);
    assert_eq!(direct(&job, false), "403", "a private WSGI replica answered without its guard");
    assert_eq!(direct(&job, true), "404", "the guard lets the gateway's request through to the app");
    let made = h.aic(&["deploy", "key", "create", "privw"]);
    let key = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let o = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {key}")])
        .arg(&wsgi)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200");
}

/// A deployment's request figures match the requests sent: `aic deploy status` counts every
/// request, the replica's 5xx apart, the time to each answer's head in buckets; a stream
/// still flowing counts in flight (the Prometheus endpoint says so while it flows), and the
/// figures are in `aic deploy list` too.
#[test]
fn a_deployments_request_figures_match_the_requests_sent() {
    let h = Home::new();
    let _pool = DevUp::start_with(&h, &[("AIC_SERVING_STATS_SECONDS", "1"), ("AIC_METRICS_TOKEN", "scrape")]);
    let proj = repo().join("examples/fastapi");
    let out = h.aic(&["deploy", proj.to_str().unwrap(), "--name", "counted"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let (api, job, _) = addresses(&out.stdout);
    let code = |path: &str| -> String {
        let o = Command::new("curl")
            .args(["-s", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{api}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    for _ in 0..20 {
        assert_eq!(code(""), "200");
    }
    for _ in 0..3 {
        assert_eq!(code("fail"), "500");
    }
    // A stream under way: in flight until it ends.
    let serve = std::fs::read_to_string(h.path().join("aic/serve.addr")).unwrap();
    let scrape = || {
        let o = Command::new("curl")
            .args(["-s", "-H", "Authorization: Bearer scrape"])
            .arg(format!("{}/metrics", serve.trim().trim_end_matches('/')))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let mut stream = Command::new("curl")
        .args(["-sN", "--max-time", "60"])
        .arg(format!("{api}tokens?n=3&every=2"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream.stdout.as_mut().unwrap()), &mut first).unwrap();
    assert_eq!(first, "data: token 0\n");
    let flowing = format!("aic_deployment_in_flight{{deployment=\"{job}\"}} 1");
    let figures = scrape();
    assert!(figures.contains(&flowing), "{figures}");
    assert!(stream.wait().unwrap().success());
    let figures = scrape();
    assert!(figures.contains(&format!("aic_deployment_in_flight{{deployment=\"{job}\"}} 0")), "{figures}");
    assert!(
        figures.contains(&format!("aic_deployment_requests_total{{deployment=\"{job}\",outcome=\"answered\"}} 21")),
        "{figures}"
    );
    assert!(
        figures.contains(&format!("aic_deployment_requests_total{{deployment=\"{job}\",outcome=\"replica_error\"}} 3")),
        "{figures}"
    );

    // The bucket's figures, written every second, add up to the same.
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let o = h.aic(&["deploy", "status", "counted", "--json"]);
        assert!(o.status.success(), "{:?}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if v["summary"]["requests"] == 24 {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let s = &v["summary"];
    assert_eq!((s["replica_errors"].as_u64(), s["gateway_errors"].as_u64()), (Some(3), Some(0)), "{v}");
    assert_eq!((s["max_in_flight"].as_u64(), s["max_replicas"].as_u64()), (Some(1), Some(1)), "{v}");
    assert!(s["p50_ms"].as_u64().is_some_and(|p| p <= 1000), "{v}");
    let per_minute: u64 = v["per_minute"].as_array().unwrap().iter().map(|m| m["requests"].as_u64().unwrap()).sum();
    assert_eq!(per_minute, 24, "{v}");
    let shown = text(&h.aic(&["deploy", "status", "counted"])).0;
    assert!(shown.contains("24 requests, 3 errors (3 from replicas, 0 from the gateway)"), "{shown}");
    let listed = text(&h.aic(&["deploy", "list"])).0;
    assert!(listed.contains("24 req/h 3 err"), "{listed}");
}

/// The live replicas the bucket has registered for `job`.
fn live_replicas(h: &Home, job: &str) -> usize {
    let dir = h.path().join(format!("aic/store/pool/serving/{job}"));
    let now = chrono::Utc::now();
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| serde_json::from_slice::<aic_schemas::ServingRegistration>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|r| r.is_live(now))
        .count()
}

/// Polls `cond` every 200 ms until it holds, or fails with `what` after `secs`.
fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An autoscaled deployment (`--min-replicas 0 --max-replicas 2 --target-concurrency 1`) on a
/// pool of two miners: one replica at first; three streams at once (a bounded load) bring a
/// second; without them it goes back to one, and to none once idle; the next request starts a
/// replica and is answered, its wait counted as a cold start; removed, it is charged what its
/// replicas ran (less than its two replicas for the whole time its deposit covered).
#[test]
fn an_autoscaled_deployment_scales_up_under_load_down_to_zero_and_back() {
    let h = Home::new();
    let _pool = DevUp::start_with(
        &h,
        &[
            ("AIC_POOL_MINERS", "2"),
            ("AIC_SCALE_UP_SECONDS", "1"),
            ("AIC_SCALE_DOWN_SECONDS", "2"),
            ("AIC_SCALE_IDLE_SECONDS", "6"),
            ("AIC_SERVING_STATS_SECONDS", "1"),
        ],
    );
    let proj = repo().join("examples/fastapi");
    let started = Instant::now();
    let out = h.aic(&[
        "deploy",
        proj.to_str().unwrap(),
        "--name",
        "auto",
        "--min-replicas",
        "0",
        "--max-replicas",
        "2",
        "--target-concurrency",
        "1",
        "--workers",
        "1",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let (api, job, _) = addresses(&out.stdout);
    assert_eq!(live_replicas(&h, &job), 1, "it starts with one replica");
    let shown = text(&h.aic(&["deploy", "status", "auto"])).0;
    assert!(shown.contains("autoscaled  : 0–2 replicas, 1 requests under way per replica"), "{shown}");

    // Three streams of 6 s at once: three requests under way for one replica aiming at one.
    let streams: Vec<std::process::Child> = (0..3)
        .map(|_| {
            Command::new("curl")
                .args(["-sN", "--max-time", "60"])
                .arg(format!("{api}tokens?n=13&every=0.5"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    eventually(30, "a second replica under load", || live_replicas(&h, &job) == 2);
    for s in streams {
        let out = s.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).matches("data: token").count(), 13, "every event came");
    }
    // No load: one fewer, then none once idle (6 s here).
    eventually(60, "down to none when idle", || live_replicas(&h, &job) == 0);
    let st: serde_json::Value = serde_json::from_slice(&h.aic(&["deploy", "status", "auto", "--json"]).stdout).unwrap();
    assert_eq!((st["state"].as_str(), st["live"].as_u64()), (Some("running"), Some(0)), "{st}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(live_replicas(&h, &job), 0, "nothing started while nobody called");

    // The next request wakes it and is answered.
    let woke = Instant::now();
    let o = Command::new("curl")
        .args(["-s", "--max-time", "180", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(&api)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200", "the request that woke it is answered");
    let waited = woke.elapsed();
    assert_eq!(live_replicas(&h, &job), 1);
    let mut last = serde_json::Value::Null;
    eventually(20, "the cold start counted", || {
        last = serde_json::from_slice(&h.aic(&["deploy", "status", "auto", "--json"]).stdout).unwrap();
        last["summary"]["cold_starts"] == 1
    });
    let cold = last["summary"]["max_cold_start_ms"].as_u64().unwrap();
    assert!(cold > 0 && cold <= waited.as_millis() as u64, "cold start {cold} ms of a {waited:?} wait: {last}");
    let listed = text(&h.aic(&["deploy", "list"])).0;
    assert!(listed.contains("1 live (0–2)") && listed.contains("1 cold start"), "{listed}");

    // Removed: charged what its replicas ran, the rest back.
    assert!(h.aic(&["deploy", "rm", "auto"]).status.success());
    let wall = started.elapsed().as_secs();
    let mut settled = serde_json::Value::Null;
    eventually(30, "the deployment settled", || {
        let st: serde_json::Value = serde_json::from_slice(&h.aic(&["status", &job, "--json"]).stdout).unwrap();
        settled = st["settlements"].as_array().and_then(|a| a.first()).cloned().unwrap_or_default();
        !settled.is_null()
    });
    let spend: serde_json::Value = serde_json::from_slice(&h.aic(&["spend", "--json"]).stdout).unwrap();
    let row = spend["jobs"].as_array().unwrap().iter().find(|r| r["job"] == job.as_str()).cloned().unwrap();
    let n = |k: &str| row[k].as_str().unwrap().parse::<u128>().unwrap();
    assert_eq!(n("paid"), n("charged") + n("refunded"), "{row}");
    let gpu_seconds = row["gpu_seconds"].as_u64().unwrap();
    // Its replicas' own time (one, two, one, none, one: each charged from its start to its
    // end, the 2 s drain included), under two replicas' all along; the deposit, for two
    // replicas' paid hour, mostly back.
    assert!(gpu_seconds > 0 && gpu_seconds < wall * 2, "{gpu_seconds} GPU-seconds over {wall} s: {row}");
    assert!(n("charged") < n("paid") / 10, "{row}");
}
