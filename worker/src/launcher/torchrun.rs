//! The `torchrun` launcher: a torchrun in every allocation, `--nproc-per-node` = its GPU
//! slots, all joined at the leader's c10d rendezvous (`host:port` from the leader's
//! rendezvous record). torchrun sets RANK, LOCAL_RANK and WORLD_SIZE per process.

use aic_schemas::JobRequest;

use super::Peer;

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
        req.job_id.to_string(),
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
        };
        assert_eq!(
            argv(&req, 1, &leader).join(" "),
            "torchrun --nnodes 2 --nproc-per-node 4 --node-rank 1 --rdzv-backend c10d --rdzv-endpoint 10.0.0.5:29400 --rdzv-id 01jb0000000000000000000000 --max-restarts 0 ddp.py"
        );
    }
}
