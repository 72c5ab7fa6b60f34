//! The `horovod` launcher: `horovodrun` from the leader with the Gloo controller across
//! every allocation, one process per GPU slot, as the seed tutorial's `aicrun` did.
//!
//! horovodrun reaches the other allocations with plain `ssh HOST`; an `ssh` wrapper first on
//! its PATH adds the per-job `ssh_config` (each allocation's sshd port and the job's key).

use std::path::Path;

use aic_schemas::JobRequest;

use super::{Peer, RANK_SHIM, program};

/// The horovodrun argv for `peers` (the leader first).
pub fn argv(req: &JobRequest, peers: &[Peer], key: &Path) -> Vec<String> {
    let np: u32 = peers.iter().map(|p| p.slots).sum();
    let hosts: Vec<String> = peers.iter().map(|p| format!("{}:{}", p.host, p.slots)).collect();
    let mut v: Vec<String> = vec![
        "horovodrun".into(),
        "-np".into(),
        np.to_string(),
        "-H".into(),
        hosts.join(","),
        "--gloo".into(),
        "--ssh-identity-file".into(),
        key.display().to_string(),
        "sh".into(),
        "-c".into(),
        RANK_SHIM.into(),
        "aic-rank".into(),
    ];
    v.extend(program(&req.entrypoint));
    v.extend(req.args.iter().cloned());
    v
}

/// The environment horovodrun needs besides the pool's: PATH with the ssh wrapper first.
pub fn env(wrapper_dir: &Path) -> Vec<(String, String)> {
    let path = super::path();
    vec![("PATH".into(), format!("{}:{path}", wrapper_dir.display())), ("PYTHONUNBUFFERED".into(), "1".into())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(miners: u32) -> JobRequest {
        serde_json::from_value(serde_json::json!({
            "version": 1, "kind": "train", "owner": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
            "job_id": "01jb0000000000000000000000", "entrypoint": "keras_mnist.py", "miners": miners,
            "gpus_per_miner": 3, "max_hours": 1.0, "launcher": "horovod", "args": ["--epochs", "2"],
            "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z"
        }))
        .unwrap()
    }

    fn peer(i: u32) -> Peer {
        Peer {
            alloc: i,
            miner: format!("miner-{}", i + 1),
            host: format!("10.0.0.{}", i + 5),
            port: 2222 + i as u16,
            slots: 3,
            pubkey: None,
            hostkey: None,
            rdzv_id: None,
        }
    }

    #[test]
    fn one_miner() {
        let v = argv(&req(1), &[peer(0)], Path::new("/w/ssh/id"));
        assert_eq!(
            v[..8],
            ["horovodrun", "-np", "3", "-H", "10.0.0.5:3", "--gloo", "--ssh-identity-file", "/w/ssh/id"]
        );
        assert_eq!(v[v.len() - 4..], ["python3", "keras_mnist.py", "--epochs", "2"]);
    }

    #[test]
    fn two_miners_reach_each_other_through_the_ssh_wrapper() {
        let v = argv(&req(2), &[peer(0), peer(1)], Path::new("/w/ssh/id"));
        assert_eq!(v[..5], ["horovodrun", "-np", "6", "-H", "10.0.0.5:3,10.0.0.6:3"]);
        let env = env(Path::new("/w/ssh/bin"));
        assert!(env[0].1.starts_with("/w/ssh/bin:"), "{env:?}");
    }
}
