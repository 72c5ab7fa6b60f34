//! The `mpi` launcher: `mpirun` from the leader across every allocation, one rank per GPU
//! slot, over SSH (each allocation's sshd, reached through a per-job `ssh_config`).
//!
//! Ranks start in their own allocation's code folder (the rank shim), so the same command
//! works where miners do not share a file system. Output comes back tagged by rank.

use std::path::Path;

use aic_schemas::JobRequest;

use super::{Peer, RANK_SHIM, program};

/// The mpirun argv for `peers` (the leader first). With `mpi4py`, a Python entrypoint runs
/// under `python -m mpi4py`, which aborts the whole job when one rank raises; without it,
/// the others would wait for that rank forever.
///
/// The leader's own ranks are started by mpirun itself (`localhost`), never over SSH into
/// its own allocation; a one-miner job needs no SSH at all. Ranks are not bound to cores
/// (`--bind-to none`, as Horovod's mpirun recipe has it): each allocation's mpirun daemon
/// binds as if it had the node to itself, so two allocations sharing a machine would pin
/// their ranks to the same core. Thread pools are sized per process instead (OMP_NUM_THREADS).
pub fn argv(req: &JobRequest, peers: &[Peer], ssh_config: &Path, as_root: bool, mpi4py: bool) -> Vec<String> {
    let np: u32 = peers.iter().map(|p| p.slots).sum();
    let hosts: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}:{}", if i == 0 { "localhost" } else { p.host.as_str() }, p.slots))
        .collect();
    let mut v: Vec<String> = vec!["mpirun".into()];
    if as_root {
        v.push("--allow-run-as-root".into());
    }
    v.extend([
        "-np".into(),
        np.to_string(),
        "--host".into(),
        hosts.join(","),
        "--mca".into(),
        "plm_rsh_args".into(),
        format!("-F {}", ssh_config.display()),
        "--bind-to".into(),
        "none".into(),
        "--tag-output".into(),
        // The remote working folder is the rank shim's business; / exists everywhere.
        "--wdir".into(),
        "/".into(),
        "-x".into(),
        "PATH".into(),
        "-x".into(),
        "PYTHONUNBUFFERED=1".into(),
    ]);
    for (k, val) in &req.env {
        v.push("-x".into());
        v.push(format!("{k}={val}"));
    }
    v.extend(["sh".into(), "-c".into(), RANK_SHIM.into(), "aic-rank".into()]);
    let mut prog = program(&req.entrypoint);
    if mpi4py && req.entrypoint.ends_with(".py") {
        prog.splice(1..1, ["-m".to_string(), "mpi4py".to_string()]);
    }
    v.extend(prog);
    v.extend(req.args.iter().cloned());
    v
}

/// `[1,3]<stdout>: text` → `(Some(3), "text")`.
pub fn untag(line: &str) -> (Option<u32>, &str) {
    let Some(rest) = line.strip_prefix("[1,") else { return (None, line) };
    let Some(close) = rest.find(']') else { return (None, line) };
    let Ok(rank) = rest[..close].parse() else { return (None, line) };
    let after = &rest[close + 1..];
    let text = after
        .strip_prefix("<stdout>:")
        .or_else(|| after.strip_prefix("<stderr>:"))
        .map(|t| t.strip_prefix(' ').unwrap_or(t))
        .unwrap_or(after);
    (Some(rank), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> JobRequest {
        serde_json::from_value(serde_json::json!({
            "version": 1, "kind": "train", "owner": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
            "job_id": "01jb0000000000000000000000", "entrypoint": "train.py", "miners": 2, "gpus_per_miner": 2,
            "max_hours": 1.0, "launcher": "mpi", "args": ["--epochs", "3"], "env": {"SEED": "7"},
            "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z"
        }))
        .unwrap()
    }

    fn peer(i: u32, host: &str, port: u16) -> Peer {
        Peer {
            alloc: i,
            miner: format!("miner-{}", i + 1),
            host: host.into(),
            port,
            slots: 2,
            pubkey: None,
            hostkey: None,
            rdzv_id: None,
        }
    }

    #[test]
    fn mpirun_spans_every_slot_of_every_miner() {
        let peers = [peer(0, "10.0.0.5", 2222), peer(1, "10.0.0.6", 2223)];
        let v = argv(&req(), &peers, Path::new("/w/ssh/config"), true, false);
        let s = v.join(" ");
        assert!(
            s.starts_with(
                "mpirun --allow-run-as-root -np 4 --host localhost:2,10.0.0.6:2 --mca plm_rsh_args -F /w/ssh/config --bind-to none --tag-output"
            ),
            "{s}"
        );
        assert!(s.contains("-x SEED=7"), "{s}");
        assert!(s.ends_with("aic-rank python3 train.py --epochs 3"), "{s}");
        let with = argv(&req(), &peers, Path::new("/w/ssh/config"), true, true).join(" ");
        assert!(with.ends_with("aic-rank python3 -m mpi4py train.py --epochs 3"), "{with}");
    }

    #[test]
    fn rank_tags_are_read() {
        assert_eq!(untag("[1,3]<stdout>: epoch 1"), (Some(3), "epoch 1"));
        assert_eq!(untag("[1,0]<stderr>: oops"), (Some(0), "oops"));
        assert_eq!(untag("plain"), (None, "plain"));
    }
}
