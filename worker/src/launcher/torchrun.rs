//! The `torchrun` launcher: a torchrun in every allocation, `--nproc-per-node` = its GPU
//! slots, all joined at the leader's c10d rendezvous (`host:port` from the leader's
//! rendezvous record). torchrun sets RANK, LOCAL_RANK and WORLD_SIZE per process.

use aic_schemas::JobRequest;

use super::Peer;

/// A rendezvous id for a leader's record (`Peer::rdzv_id`): 128 random bits, in hex. Not a
/// guard: torch's store lists its keys to whoever connects (see the test below); it keeps the
/// id out of reach of a blind `get` on torch versions that do not list.
pub fn rendezvous_secret() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The torchrun argv of allocation `index`, given the leader's record.
pub fn argv(req: &JobRequest, index: u32, leader: &Peer) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "torchrun".into(),
        "--nnodes".into(),
        req.miners.to_string(),
        "--nproc-per-node".into(),
        req.gpus_per_miner.to_string(),
        "--node-rank".into(),
        index.to_string(),
        "--rdzv-backend".into(),
        "c10d".into(),
        "--rdzv-endpoint".into(),
        format!("{}:{}", leader.host, leader.port),
        "--rdzv-id".into(),
        leader.rdzv_id.clone().unwrap_or_else(|| req.job_id.to_string()),
        // Who hosts the store, said rather than guessed: the leader, or it fails (a program
        // that took the port first is never joined as the store: torch's guess falls back to
        // joining whoever listens there), and no other allocation, ever.
        "--rdzv-conf".into(),
        format!("is_host={}", u8::from(index == 0)),
        "--max-restarts".into(),
        "0".into(),
        req.entrypoint.clone(),
    ];
    v.extend(req.args.iter().cloned());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_joins_the_leaders_rendezvous() {
        let req: JobRequest = serde_json::from_value(serde_json::json!({
            "version": 1, "kind": "train", "owner": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
            "job_id": "01jb0000000000000000000000", "entrypoint": "ddp.py", "miners": 2, "gpus_per_miner": 4,
            "max_hours": 1.0, "launcher": "torchrun", "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z"
        }))
        .unwrap();
        let leader = Peer {
            alloc: 0,
            miner: "miner-1".into(),
            host: "10.0.0.5".into(),
            port: 29400,
            slots: 4,
            pubkey: None,
            hostkey: None,
            rdzv_id: None,
        };
        assert_eq!(
            argv(&req, 1, &leader).join(" "),
            "torchrun --nnodes 2 --nproc-per-node 4 --node-rank 1 --rdzv-backend c10d --rdzv-endpoint 10.0.0.5:29400 --rdzv-id 01jb0000000000000000000000 --rdzv-conf is_host=0 --max-restarts 0 ddp.py"
        );
    }

    /// What a program of another job gets from a torchrun job's c10d store (its address and
    /// port are no secret on a shared miner). The rendezvous id is the leader's secret, so a
    /// stranger who asks for the state under the job's id finds nothing, while the owner's
    /// request under the secret finds it; but torch's store lists its keys to any client
    /// (`Store.list_keys`), so the secret keeps nobody out: the stranger lists the keys, learns
    /// the secret from them, and reads the state. This test holds `docs/security.md` to that
    /// (torch's stores are for trusted networks; the isolation a pool needs is the network's):
    /// it fails the day torch authenticates its clients or stops listing keys. Real torch:
    /// `AIC_TEST_TORCH` (set by `cargo xtask test`; unset, the test says so, and fails under `CI`).
    #[test]
    fn a_stranger_cannot_guess_the_rendezvous_id_but_torchs_store_lists_it() {
        let Some(bin) = std::env::var_os("AIC_TEST_TORCH").map(std::path::PathBuf::from) else {
            assert!(std::env::var_os("CI").is_none(), "AIC_TEST_TORCH is not set in CI (cargo xtask test sets it)");
            eprintln!("AIC_TEST_TORCH is not set; nothing run");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wait.py"), "import time\nprint('up', flush=True)\ntime.sleep(60)\n").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let req: JobRequest = serde_json::from_value(serde_json::json!({
            "version": 1, "kind": "train", "owner": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
            "job_id": "01jb0000000000000000000000", "entrypoint": "wait.py", "miners": 1, "gpus_per_miner": 1,
            "max_hours": 1.0, "launcher": "torchrun", "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z"
        }))
        .unwrap();
        let secret = rendezvous_secret().unwrap();
        assert_eq!(secret.len(), 32);
        assert_ne!(secret, rendezvous_secret().unwrap());
        let leader = Peer {
            alloc: 0,
            miner: "miner-1".into(),
            host: "127.0.0.1".into(),
            port,
            slots: 1,
            pubkey: None,
            hostkey: None,
            rdzv_id: Some(secret.clone()),
        };
        let argv = argv(&req, 0, &leader);
        let mut job = std::process::Command::new(bin.join(&argv[0]))
            .args(&argv[1..])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut up = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(job.stdout.as_mut().unwrap()), &mut up).unwrap();
        assert_eq!(up.trim(), "up", "the job's torchrun did not start");
        let ask = |question: &str| {
            let probe = format!(
                "import datetime\nfrom torch.distributed import TCPStore\n\
                 s = TCPStore('127.0.0.1', {port}, is_master=False, timeout=datetime.timedelta(seconds=3))\n\
                 try:\n    print({question})\nexcept Exception as e:\n    print('nothing')\n"
            );
            let o = std::process::Command::new(bin.join("python3")).args(["-c", &probe]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        let read = |run_id: &str| ask(&format!("'read', len(s.get('torch.rendezvous.{run_id}'))"));
        let (stranger, owner) = (read(req.job_id.as_str()), read(&secret));
        let listed = ask("' '.join(s.list_keys())");
        let _ = job.kill();
        let _ = job.wait();
        assert_eq!(stranger, "nothing", "a stranger read the rendezvous under the job id");
        assert!(owner.starts_with("read "), "the store holds no rendezvous under the secret: {owner}");
        assert!(
            listed.contains(&secret),
            "torch's store no longer lists the rendezvous id to any client ({listed:?}): docs/security.md says it does"
        );
    }
}
