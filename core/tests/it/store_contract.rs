//! The storage layer's contract, run against the local directory store AND a real S3
//! server (LocalStack in host mode, started by `cargo xtask test`, which sets
//! `AIC_TEST_S3_ENDPOINT` and `AIC_TEST_S3_BUCKET`).

use std::sync::Arc;

use aic_core::status::{self, Advanced, Transition};
use aic_core::{Created, JobKey, Store, StoreConfig};
use aic_schemas::{JobId, JobState};
use bytes::Bytes;

enum Backend {
    Local(tempfile::TempDir),
    S3,
}

/// A store for one test, with a fresh prefix so tests can share a bucket.
fn open(backend: &Backend) -> (Store, String) {
    let store = match backend {
        Backend::Local(dir) => StoreConfig::Local { root: dir.path().to_path_buf() }.open().unwrap(),
        Backend::S3 => {
            let endpoint = std::env::var("AIC_TEST_S3_ENDPOINT").expect(
                "AIC_TEST_S3_ENDPOINT is not set: run the suite with `cargo xtask test`, which starts LocalStack",
            );
            let bucket = std::env::var("AIC_TEST_S3_BUCKET").unwrap_or_else(|_| "aic-test".into());
            StoreConfig::S3 {
                bucket,
                endpoint: Some(endpoint),
                region: "us-east-1".into(),
                access_key: Some("test".into()),
                secret_key: Some("test".into()),
                session_token: None,
            }
            .open()
            .unwrap()
        }
    };
    (store, format!("t/{}/", ulid::Ulid::new()))
}

fn job_key(prefix: &str) -> JobKey {
    // The layout is fixed under users/<addr>/; a fresh job id keeps tests apart.
    let _ = prefix;
    JobKey::new("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap(), JobId::generate())
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Backend::Local(tempfile::tempdir().unwrap())).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Backend::S3).await;
                }
            )*
        }
    };
}

contract!(
    create_only_lets_exactly_one_writer_win,
    status_log_stays_a_valid_chain_under_racing_writers,
    large_files_stream_through_multipart_and_back,
    folders_round_trip_with_nested_paths,
    list_after_returns_only_what_is_new,
    oversized_documents_are_refused_unread,
    deleting_a_prefix_removes_every_object_under_it,
    file_names_are_kept_exactly,
    the_newest_jobs_are_found_by_looking_back_in_time,
);

async fn create_only_lets_exactly_one_writer_win(b: &Backend) {
    let (store, p) = open(b);
    let key = format!("{p}claim.json");
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (s, k) = (store.clone(), key.clone());
            tokio::spawn(async move { s.create_bytes(&k, Bytes::from(format!("writer {i}"))).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        if t.await.unwrap() == Created::Created {
            won += 1;
        }
    }
    assert_eq!(won, 1, "exactly one create-only writer must win");
    assert_eq!(store.create_bytes(&key, Bytes::from("late")).await.unwrap(), Created::AlreadyExists);
    let body = store.get_limited(&key, 100).await.unwrap().unwrap();
    assert!(body.starts_with(b"writer "), "the winner's body stays: {body:?}");
}

async fn status_log_stays_a_valid_chain_under_racing_writers(b: &Backend) {
    let (store, p) = open(b);
    let job = job_key(&p);
    let store = Arc::new(store);
    // Eight writers all try to open the log; one does.
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let (s, j) = (store.clone(), job.clone());
            tokio::spawn(
                async move { status::advance(&s, &j, Transition::new(JobState::Submitted, "test")).await.unwrap() },
            )
        })
        .collect();
    let mut applied = 0;
    for t in opens {
        if t.await.unwrap().applied() {
            applied += 1;
        }
    }
    assert_eq!(applied, 1);
    // Then racing, conflicting moves: pay vs cancel vs reject.
    let moves = [
        JobState::Paid,
        JobState::Cancelled,
        JobState::Rejected,
        JobState::Paid,
        JobState::Cancelled,
        JobState::Rejected,
    ];
    let tasks: Vec<_> = moves
        .iter()
        .map(|to| {
            let (s, j, to) = (store.clone(), job.clone(), *to);
            tokio::spawn(
                async move { status::advance(&s, &j, Transition::new(to, "test").reason("race")).await.unwrap() },
            )
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let hist = status::history(&store, &job).await.unwrap();
    let mut prev = None;
    for (i, r) in hist.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "sequence numbers are contiguous");
        assert!(JobState::allows(prev, r.state), "{prev:?} -> {} is not a transition", r.state);
        prev = Some(r.state);
    }
    assert!(prev.unwrap().is_terminal(), "the race ends in a terminal state: {hist:?}");
    let snap = status::snapshot(&store, &job).await.unwrap().unwrap();
    assert_eq!(snap.seq, hist.last().unwrap().seq, "the snapshot shows the latest record");
    // Terminal is final.
    assert!(matches!(
        status::advance(&store, &job, Transition::new(JobState::Running, "test")).await.unwrap(),
        Advanced::Refused(_)
    ));
}

async fn large_files_stream_through_multipart_and_back(b: &Backend) {
    let (store, p) = open(b);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    // 20 MiB + a bit: three parts, the last one short.
    let data: Vec<u8> = (0..20 * 1024 * 1024 + 12345u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let key = format!("{p}big.bin");
    let last = std::sync::atomic::AtomicU64::new(0);
    let sent = store.upload_file(&src, &key, &|n| last.store(n, std::sync::atomic::Ordering::Relaxed)).await.unwrap();
    assert_eq!(sent, data.len() as u64);
    assert_eq!(last.load(std::sync::atomic::Ordering::Relaxed), data.len() as u64, "progress reaches the end");
    assert_eq!(store.head(&key).await.unwrap().unwrap().size, data.len() as u64);
    let dst = dir.path().join("out/big.bin");
    store.download_file(&key, &dst, &|_| {}).await.unwrap();
    assert!(std::fs::read(&dst).unwrap() == data, "downloaded bytes differ");
    assert!(!dir.path().join("out/big.bin.aic-partial").exists());
}

async fn folders_round_trip_with_nested_paths(b: &Backend) {
    let (store, p) = open(b);
    let src = tempfile::tempdir().unwrap();
    for (rel, body) in [("a.txt", "A"), ("sub/b.txt", "BB"), ("sub/deeper/c.csv", "1,2,3"), ("with space.txt", "s")] {
        let path = src.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    let prefix = format!("{p}ds/");
    let (n, bytes) = store.upload_dir(src.path(), &prefix, &|_| {}).await.unwrap();
    assert_eq!((n, bytes), (4, 9));
    let dst = tempfile::tempdir().unwrap();
    let (n, _) = store.download_prefix(&prefix, dst.path(), &|_| {}).await.unwrap();
    assert_eq!(n, 4);
    assert_eq!(std::fs::read_to_string(dst.path().join("sub/deeper/c.csv")).unwrap(), "1,2,3");
    assert_eq!(std::fs::read_to_string(dst.path().join("with space.txt")).unwrap(), "s");
}

/// Any UTF-8 name is a key as it is: listed under it and read back byte for byte (object
/// store's `Path::from` would have escaped these into other names).
async fn file_names_are_kept_exactly(b: &Backend) {
    let (store, p) = open(b);
    let names = [
        "학습데이터.csv",
        "rate 50%.txt",
        "a+b #1?.txt",
        "ünï.txt",
        "emoji 🚀.txt",
        "%ED%95%99.txt",
        "d/東京 & co.txt",
    ];
    let src = tempfile::tempdir().unwrap();
    for (i, rel) in names.iter().enumerate() {
        let path = src.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{i}")).unwrap();
    }
    let prefix = format!("{p}names/");
    store.upload_dir(src.path(), &prefix, &|_| {}).await.unwrap();
    let mut listed: Vec<String> = store
        .list(&prefix)
        .await
        .unwrap()
        .iter()
        .map(|m| m.location.as_ref().strip_prefix(&prefix).unwrap().to_string())
        .collect();
    listed.sort();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    let dst = tempfile::tempdir().unwrap();
    store.download_prefix(&prefix, dst.path(), &|_| {}).await.unwrap();
    for (i, rel) in names.iter().enumerate() {
        assert_eq!(std::fs::read_to_string(dst.path().join(rel)).unwrap(), format!("{i}"), "{rel}");
    }
    // A name the store cannot hold is refused before anything is written.
    std::fs::write(src.path().join("ckpt#2"), "x").unwrap();
    let e = store.upload_dir(src.path(), &format!("{p}refused/"), &|_| {}).await.unwrap_err();
    assert!(e.to_string().contains("ckpt#2") && e.to_string().contains("rename it"), "{e}");
    assert!(store.list(&format!("{p}refused/")).await.unwrap().is_empty());
}

async fn list_after_returns_only_what_is_new(b: &Backend) {
    let (store, p) = open(b);
    for i in 0..5 {
        store.put_bytes(&format!("{p}log/{i:08}.log"), Bytes::from("x")).await.unwrap();
    }
    let after = store.list_after(&format!("{p}log/"), &format!("{p}log/00000002.log")).await.unwrap();
    let keys: Vec<String> = after.iter().map(|m| m.location.to_string()).collect();
    assert_eq!(keys, [format!("{p}log/00000003.log"), format!("{p}log/00000004.log")]);
}

async fn oversized_documents_are_refused_unread(b: &Backend) {
    let (store, p) = open(b);
    let key = format!("{p}request.json");
    store.put_bytes(&key, Bytes::from(vec![b' '; 2000])).await.unwrap();
    let err = store.get_limited(&key, 1000).await.unwrap_err();
    assert!(err.to_string().contains("2000 bytes; the limit is 1000"), "{err}");
    assert!(store.get_limited(&format!("{p}missing"), 10).await.unwrap().is_none());
}

async fn deleting_a_prefix_removes_every_object_under_it(b: &Backend) {
    let (store, p) = open(b);
    for k in ["x/1", "x/2", "x/y/3", "z"] {
        store.put_bytes(&format!("{p}{k}"), Bytes::from("v")).await.unwrap();
    }
    assert_eq!(store.delete_prefix(&format!("{p}x/")).await.unwrap(), 3);
    let left: Vec<String> = store.list(&p).await.unwrap().iter().map(|m| m.location.to_string()).collect();
    assert_eq!(left, [format!("{p}z")]);
}

/// The S3 tests mean something only if the server checks signatures where users meet it:
/// presigned URLs. A URL signed with the wrong secret must be refused, and one signed
/// with the right secret accepted. (LocalStack does not check the signatures of
/// credentialed requests, only of presigned URLs, with `S3_SKIP_SIGNATURE_VALIDATION=0`.)
#[tokio::test]
async fn the_s3_server_refuses_a_url_signed_with_a_wrong_secret() {
    use object_store::ObjectStoreExt;
    use object_store::signer::Signer;
    let endpoint = std::env::var("AIC_TEST_S3_ENDPOINT")
        .expect("AIC_TEST_S3_ENDPOINT is not set: run the suite with `cargo xtask test`, which starts LocalStack");
    let bucket = std::env::var("AIC_TEST_S3_BUCKET").unwrap_or_else(|_| "aic-test".into());
    let s3 = |secret: &str| {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region("us-east-1")
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_access_key_id("test")
            .with_secret_access_key(secret)
            .build()
            .unwrap()
    };
    let key = object_store::path::Path::from(format!("t/{}/secret.txt", ulid::Ulid::new()));
    s3("test").put(&key, Bytes::from("for the owner").into()).await.unwrap();
    let http = reqwest::Client::new();
    let ttl = std::time::Duration::from_secs(60);
    let good = s3("test").signed_url(http::Method::GET, &key, ttl).await.unwrap();
    let resp = http.get(good).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "for the owner");
    let forged = s3("not-the-secret").signed_url(http::Method::GET, &key, ttl).await.unwrap();
    let resp = http.get(forged).send().await.unwrap();
    assert_eq!(resp.status(), 403, "a URL signed with the wrong secret must be refused");
}

/// A "zip-slip" code folder: keys with `..` (which S3 allows, and only a writer with the
/// pool's credentials could create) are refused before anything is downloaded.
#[tokio::test]
async fn keys_that_would_land_outside_the_folder_are_refused_and_nothing_is_written() {
    let endpoint = std::env::var("AIC_TEST_S3_ENDPOINT")
        .expect("AIC_TEST_S3_ENDPOINT is not set: run the suite with `cargo xtask test`, which starts LocalStack");
    let bucket = std::env::var("AIC_TEST_S3_BUCKET").unwrap_or_else(|_| "aic-test".into());
    let prefix = format!("zs/{}/code/", ulid::Ulid::new());
    let python = std::env::var("AIC_LOCALSTACK_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(python)
        .args(["-c", &format!(
            "import boto3; c = boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1'); \
             c.put_object(Bucket='{bucket}', Key='{prefix}a-fine.txt', Body=b'ok'); \
             c.put_object(Bucket='{bucket}', Key='{prefix}../../evil.txt', Body=b'evil')"
        )])
        .status()
        .unwrap();
    assert!(ok.success());
    let (store, _) = open(&Backend::S3);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("code");
    let err = store.download_prefix(&prefix, &target, &|_| {}).await.unwrap_err().to_string();
    assert!(err.contains("evil.txt") || err.contains(".."), "{err}");
    assert!(!target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(), "nothing was downloaded");
    assert!(!dir.path().join("evil.txt").exists());
}

/// `status::newest_ids` (what `aic jobs`, `/v1/jobs` and `aic deploy list` list from) against
/// every job sorted: an owner with a month of sparse history, a burst of 1,500 jobs in 1.5 s,
/// 1,100 made in the same millisecond (more than a listing page: read through), 40 in the
/// last 10 minutes and one from a clock a minute ahead; windows of every kind. On S3 it looks
/// back in stretches of time, a page each; on a folder it lists once. Also a prefix of an id
/// (`aic status 01j…`) finds only the ids that start with it. The same again with the pool's
/// index of jobs holding the middle of that history.
async fn the_newest_jobs_are_found_by_looking_back_in_time(b: &Backend) {
    use futures::StreamExt;
    let (store, _) = open(b);
    let owner: aic_schemas::Address = format!("0x{:040x}", ulid::Ulid::new().0 >> 8).parse().unwrap();
    let now = chrono::Utc::now().timestamp_millis() as u64;
    let (hour, day) = (3_600_000u64, 86_400_000u64);
    let mut ids: Vec<JobId> = Vec::new();
    let mut id = |ms: u64, n: u128| ids.push(ulid::Ulid::from_parts(ms, n).to_string().to_lowercase().parse().unwrap());
    for i in 0..300u64 {
        id(now - 30 * day + i * 2 * hour + 17, i as u128);
    }
    for i in 0..1500u64 {
        id(now - 5 * hour + i, i as u128);
    }
    for i in 0..1100u128 {
        id(now - 3 * hour, 7_000_000 + i);
    }
    for i in 0..40u64 {
        id(now - 10 * 60_000 + i * 15_000, i as u128);
    }
    id(now + 60_000, 1);
    futures::stream::iter(ids.iter().map(|i| {
        let (store, key) = (store.clone(), JobKey::new(owner, i.clone()).request());
        async move { store.put_bytes(&key, Bytes::from_static(b"{}")).await.unwrap() }
    }))
    .buffer_unordered(64)
    .collect::<Vec<()>>()
    .await;
    ids.sort();
    ids.reverse();
    assert_eq!(store.pages_listings(), matches!(b, Backend::S3));

    let at = |ms: u64| chrono::DateTime::from_timestamp_millis(ms as i64).unwrap();
    let windows = [
        (Some(1), None, None),
        (Some(50), None, None),
        (Some(100), None, None),
        (Some(700), None, None),
        (Some(2000), None, None),
        (Some(5000), None, None),
        (None, None, None),
        (Some(700), None, Some(ids[1500].clone())),
        (Some(50), None, Some(ids[2700].clone())),
        (Some(50), Some(at(now - 4 * hour)), None),
        (Some(5000), Some(at(now - 10 * day)), None),
        (Some(10), Some(at(now + hour)), None),
        (Some(10), None, Some(ids.last().unwrap().clone())),
    ];
    let check = |what: &'static str| {
        let (store, ids, windows) = (store.clone(), ids.clone(), windows.clone());
        async move {
            for (limit, since, before) in windows {
                let w = status::Window { limit, since, before: before.clone() };
                let want: Vec<JobId> = ids
                    .iter()
                    .filter(|i| {
                        before.as_ref().is_none_or(|b| *i < b) && since.is_none_or(|s| i.created().unwrap() >= s)
                    })
                    .take(limit.unwrap_or(usize::MAX))
                    .cloned()
                    .collect();
                let got = status::newest_ids(&store, &owner, &w).await.unwrap();
                assert_eq!(got.len(), want.len(), "{what}: {limit:?} {since:?} {before:?}");
                assert!(got == want, "{what}: {limit:?} {since:?} {before:?}: not the newest in order");
            }
        }
    };
    check("no index").await;
    // The pool's index (validate writes a marker per job it takes in) from some time on: the
    // jobs before it are not in it (a bucket from before the index), nor are the 5 newest
    // (requests validate has not taken in yet). Every window gives the same answer.
    futures::stream::iter(ids[5..1800].iter().map(|i| {
        let (store, job) = (store.clone(), JobKey::new(owner, i.clone()));
        async move { status::index(&store, &job).await.unwrap() }
    }))
    .buffer_unordered(64)
    .collect::<Vec<()>>()
    .await;
    check("indexed from the middle on").await;
    // Indexed twice (an event redelivered): the marker is written once, no error.
    status::index(&store, &JobKey::new(owner, ids[7].clone())).await.unwrap();

    let dir = aic_core::layout::jobs_prefix(&owner);
    let one = &ids[1234].as_str()[..20];
    let page = store.list_names(&dir, one, None, 1000).await.unwrap();
    assert_eq!(page.names, [ids[1234].to_string()]);
    let burst = &ids[100].as_str()[..10];
    let page = store.list_names(&dir, burst, None, 1000).await.unwrap();
    assert_eq!((page.names.len(), page.more), (1000, true), "1,100 ids share the burst's millisecond");
    let rest = store.list_names(&dir, burst, page.names.last().map(|s| s.as_str()), 1000).await.unwrap();
    assert_eq!((rest.names.len(), rest.more), (100, false));
}
