//! `aic exec` through the gateway on a pool scheduled by Nomad: the gateway starts the
//! command with Nomad's allocation exec API (the server of core's Nomad tests, which speaks
//! its WebSocket frames and runs the command) and relays its frames to the owner as it does
//! a worker's; the session is recorded with its exit code.

use std::sync::Arc;

use aic_core::pricing::Pricing;
use aic_core::scheduler::Scheduler;
use aic_core::scheduler::nomad::NomadScheduler;
use aic_functions::gateway::{Gateway, GatewayConfig, session_token};
use aic_functions::{Ctx, FreePool};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};

#[path = "../../../core/tests/it/common/mod.rs"]
mod nomad_fake;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_on_a_nomad_pool_goes_through_nomads_exec_api_and_back_to_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = aic_core::StoreConfig::Local { root: dir.path().join("store") }.open().unwrap();
    let (state, addr) = nomad_fake::nomad().await;
    let wrapper = dir.path().join("aic-worker");
    std::fs::write(&wrapper, "#!/bin/sh\n[ \"$1\" = in-job ] && [ \"$2\" = -- ] || exit 90\nshift 2\nexec \"$@\"\n")
        .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut c = nomad_fake::cfg(&addr, nomad_fake::TOKEN);
    c.worker = wrapper.to_string_lossy().into_owned();
    let n = NomadScheduler::new(c, store.clone());
    let (_, m) = nomad_fake::manifest(2, 1);
    let job = nomad_fake::running_job(&store, &m).await;
    n.submit(&job, &m).await.unwrap();
    let ctx = Ctx {
        store: store.clone(),
        scheduler: Arc::new(n),
        auth: Arc::new(aic_chain::Eip712Auth { chain_id: 31337 }),
        payments: Arc::new(FreePool),
        pricing: Pricing::free(),
        settler: None,
    };
    let gw = Gateway::new(GatewayConfig::new(SECRET.to_vec(), "aic-test", 31337), ctx, None);
    let mut headers = HeaderMap::new();
    let token = session_token(SECRET, &job.owner, chrono::Utc::now() + chrono::Duration::hours(1));
    headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    let call = |method: Method, path: String, body: Value| {
        let (gw, headers) = (&gw, &headers);
        async move {
            let (path, query) =
                path.split_once('?').map_or((path.clone(), None), |(p, q)| (p.into(), Some(q.to_string())));
            let body = Bytes::from(body.to_string());
            gw.call("127.0.0.1".parse().unwrap(), &method, &path, query.as_deref(), headers, body).await
        }
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let argv = json!(["sh", "-c", "cat; echo oops >&2; exit 5"]);
    let (code, v) = call(
        Method::POST,
        format!("/v1/jobs/{}/exec", job.job),
        json!({"alloc": 0, "argv": argv, "stdin": b64("hello\n")}),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let session = v["session"].as_str().unwrap().to_string();
    let (mut out, mut err, mut next) = (String::new(), String::new(), 0);
    let exit = loop {
        let (code, v) = call(Method::GET, format!("/v1/exec/{session}?after={next}"), Value::Null).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        for f in v["frames"].as_array().unwrap() {
            let d = base64::engine::general_purpose::STANDARD.decode(f["d"].as_str().unwrap()).unwrap();
            if f["s"] == "o" { &mut out } else { &mut err }.push_str(&String::from_utf8(d).unwrap());
        }
        next = v["next"].as_u64().unwrap() as usize;
        if let Some(e) = v["exit"].as_i64() {
            break e;
        }
    };
    assert_eq!((out.as_str(), err.as_str(), exit), ("hello\n", "oops\n", 5));
    // Nomad ran it in the job's allocation, under the worker's wrapper.
    {
        let s = state.lock().unwrap();
        let (aid, command) = s.execs.last().unwrap();
        assert_eq!(
            *aid,
            s.alloc_of(
                &aic_core::scheduler::nomad::nomad_id(&job),
                &s.allocs[&aic_core::scheduler::nomad::nomad_id(&job)][0]
            )
        );
        assert!(command.contains("\"in-job\",\"--\",\"sh\""), "{command}");
    }
    // Recorded with its exit code.
    let records = store.list(&format!("pool/exec/{}/{}/", job.owner, job.job)).await.unwrap();
    assert_eq!(records.len(), 1);
    let rec: Value = store.get_json(records[0].location.as_ref(), 1 << 16).await.unwrap().unwrap();
    assert_eq!((rec["exit"].as_i64(), rec["argv"][0].as_str()), (Some(5), Some("sh")));
    // An allocation Nomad does not run (any more): refused with the reason, nothing recorded.
    let id = aic_core::scheduler::nomad::nomad_id(&job);
    {
        let mut s = state.lock().unwrap();
        let aid = s.alloc_of(&id, &s.allocs[&id][1].clone());
        s.ended(&aid, "complete");
    }
    let (code, v) =
        call(Method::POST, format!("/v1/jobs/{}/exec", job.job), json!({"alloc": 1, "argv": ["true"]})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("allocation 1 of job")
            && v["error"].as_str().unwrap().contains("not running on Nomad"),
        "{v}"
    );
    assert_eq!(store.list(&format!("pool/exec/{}/{}/", job.owner, job.job)).await.unwrap().len(), 1);
}
