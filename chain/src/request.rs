//! The job request as EIP-712 typed data.
//!
//! The signed struct covers every field that changes what runs or what it costs: owner,
//! job id, kind, name, entrypoint, the code's digest, dataset, miners, GPUs, hours
//! (in thousandths, as the quote counts them), launcher, arguments, environment, secrets,
//! image, the GPU models and memory asked, how a deployment is served, payment,
//! and the validity window. The domain binds the chain id, so a signature made for one
//! chain is worthless on another.

use aic_schemas::{JobKind, JobRequest, Launcher, ResumeRequest};
use alloy::primitives::{B256, Signature};
use alloy::signers::Signer;
use alloy::sol;
use alloy::sol_types::{Eip712Domain, SolStruct, eip712_domain};

use crate::to_alloy;

sol! {
    /// What an aic job request's owner signs.
    #[derive(Debug, serde::Serialize)]
    struct AicJobRequest {
        address owner;
        string jobId;
        string kind;
        string name;
        string entrypoint;
        bytes32 codeDigest;
        string data;
        uint32 miners;
        uint32 gpusPerMiner;
        uint64 maxMilliHours;
        string launcher;
        string[] args;
        string[] env;
        string[] secrets;
        string image;
        string[] gpuTypes;
        uint32 minGpuMemoryGb;
        string serving;
        uint64 paymentChainId;
        bytes32 paymentTx;
        uint64 createdAt;
        uint64 expiresAt;
    }

    /// What a job's owner signs to resume it as paid run `run` (`aic resume`).
    #[derive(Debug, serde::Serialize)]
    struct AicResume {
        address owner;
        string jobId;
        uint32 run;
        uint64 maxMilliHours;
        uint64 paymentChainId;
        bytes32 paymentTx;
        uint64 createdAt;
        uint64 expiresAt;
    }
}

pub fn domain(chain_id: u64) -> Eip712Domain {
    eip712_domain! { name: "aic", version: "1", chain_id: chain_id, }
}

fn b256(hex_str: &str) -> B256 {
    hex_str.parse().unwrap_or_default()
}

/// The struct the owner signs for `req`.
pub fn typed(req: &JobRequest) -> AicJobRequest {
    AicJobRequest {
        owner: to_alloy(&req.owner),
        jobId: req.job_id.to_string(),
        kind: match req.kind {
            JobKind::Train => "train",
            JobKind::Serve => "serve",
        }
        .into(),
        name: req.name.clone().unwrap_or_default(),
        entrypoint: req.entrypoint.clone(),
        codeDigest: if req.code_digest.is_empty() { B256::ZERO } else { b256(&format!("0x{}", req.code_digest)) },
        data: req.data.clone().unwrap_or_default(),
        miners: req.miners,
        gpusPerMiner: req.gpus_per_miner,
        maxMilliHours: (req.max_hours * 1000.0).ceil() as u64,
        launcher: match req.launcher {
            Launcher::Command => "command",
            Launcher::Mpi => "mpi",
            Launcher::Horovod => "horovod",
            Launcher::Torchrun => "torchrun",
        }
        .into(),
        args: req.args.clone(),
        env: req.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        secrets: req.secrets.clone(),
        image: req.image.clone().unwrap_or_default(),
        gpuTypes: req.gpu_types.clone(),
        minGpuMemoryGb: req.min_gpu_memory_gb.unwrap_or(0),
        serving: req.serving.as_ref().map(|o| o.signed()).unwrap_or_default(),
        paymentChainId: req.payment.as_ref().map_or(0, |p| p.chain_id),
        paymentTx: req.payment.as_ref().map_or(B256::ZERO, |p| b256(&p.tx)),
        createdAt: req.created_at.timestamp().max(0) as u64,
        expiresAt: req.expires_at.timestamp().max(0) as u64,
    }
}

/// The EIP-712 digest of `req` on `chain_id`.
pub fn signing_hash(req: &JobRequest, chain_id: u64) -> B256 {
    typed(req).eip712_signing_hash(&domain(chain_id))
}

/// Signs `req` and stores the signature in it.
pub async fn sign<S: Signer + Sync>(signer: &S, req: &mut JobRequest, chain_id: u64) -> anyhow::Result<()> {
    req.signature = None;
    let sig = signer.sign_hash(&signing_hash(req, chain_id)).await?;
    req.signature = Some(format!("0x{}", alloy::hex::encode(sig.as_bytes())));
    Ok(())
}

/// Why a request's signature does not prove its owner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    #[error("the request is not signed; sign it with the owner's wallet (aic does this when you submit)")]
    Missing,
    #[error("the signature is malformed: {0}")]
    Malformed(String),
    #[error("the request is signed by {signer}, not by its owner {owner} (forged, or changed after signing)")]
    NotOwner { signer: String, owner: String },
}

/// Recovers the signer of `req` and checks it is the owner.
pub fn check(req: &JobRequest, chain_id: u64) -> Result<(), SignatureProblem> {
    check_hash(req.signature.as_deref(), &signing_hash(req, chain_id), &req.owner)
}

fn check_hash(signature: Option<&str>, hash: &B256, owner: &aic_schemas::Address) -> Result<(), SignatureProblem> {
    let raw = signature.ok_or(SignatureProblem::Missing)?;
    let sig: Signature = raw.parse().map_err(|e| SignatureProblem::Malformed(format!("{e}")))?;
    let signer = sig.recover_address_from_prehash(hash).map_err(|e| SignatureProblem::Malformed(e.to_string()))?;
    if signer != to_alloy(owner) {
        return Err(SignatureProblem::NotOwner { signer: signer.to_string().to_lowercase(), owner: owner.to_string() });
    }
    Ok(())
}

/// The struct the owner signs to resume a job.
pub fn resume_typed(r: &ResumeRequest) -> AicResume {
    AicResume {
        owner: to_alloy(&r.owner),
        jobId: r.job_id.to_string(),
        run: r.run,
        maxMilliHours: (r.max_hours * 1000.0).ceil() as u64,
        paymentChainId: r.payment.as_ref().map_or(0, |p| p.chain_id),
        paymentTx: r.payment.as_ref().map_or(B256::ZERO, |p| b256(&p.tx)),
        createdAt: r.created_at.timestamp().max(0) as u64,
        expiresAt: r.expires_at.timestamp().max(0) as u64,
    }
}

/// Signs a resume request and stores the signature in it.
pub async fn sign_resume<S: Signer + Sync>(signer: &S, r: &mut ResumeRequest, chain_id: u64) -> anyhow::Result<()> {
    r.signature = None;
    let sig = signer.sign_hash(&resume_typed(r).eip712_signing_hash(&domain(chain_id))).await?;
    r.signature = Some(format!("0x{}", alloy::hex::encode(sig.as_bytes())));
    Ok(())
}

/// Recovers the signer of a resume request and checks it is the job's owner.
pub fn check_resume(r: &ResumeRequest, chain_id: u64) -> Result<(), SignatureProblem> {
    check_hash(r.signature.as_deref(), &resume_typed(r).eip712_signing_hash(&domain(chain_id)), &r.owner)
}

/// The typed data as `eth_signTypedData_v4` takes it (for a browser wallet).
pub fn typed_data_json(req: &JobRequest, chain_id: u64) -> anyhow::Result<serde_json::Value> {
    let data = alloy::dyn_abi::TypedData::from_struct(&typed(req), Some(domain(chain_id)));
    Ok(serde_json::to_value(data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How a deployment is served is signed: a private deployment made public (or given more
    /// processes) after signing no longer carries its owner's signature.
    #[tokio::test]
    async fn a_deployments_serving_options_are_signed() {
        let key: alloy::signers::local::PrivateKeySigner =
            "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcb5cc6aa0b5a2b4d5".parse().unwrap();
        let now = chrono::Utc::now();
        let file = aic_schemas::jobfile::JobFile {
            kind: Some(JobKind::Serve),
            name: Some("api".into()),
            code: "proj".into(),
            entrypoint: None,
            data: None,
            miners: 1,
            gpus: 1,
            hours: 1.0,
            launcher: Launcher::Command,
            args: vec![],
            env: Default::default(),
            secrets: vec![],
            image: None,
            gpu_types: vec![],
            min_gpu_memory: None,
            serving: Some(aic_schemas::ServeOptions { private: true, ..Default::default() }),
        };
        let owner = crate::from_alloy(key.address());
        let mut req =
            file.to_request(owner, aic_schemas::JobId::generate(), "app.py".into(), now, chrono::Duration::hours(1));
        sign(&key, &mut req, 31337).await.unwrap();
        check(&req, 31337).unwrap();
        let mut public = req.clone();
        public.serving = None;
        assert!(matches!(check(&public, 31337), Err(SignatureProblem::NotOwner { .. })));
        let mut more = req.clone();
        more.serving.as_mut().unwrap().workers = Some(8);
        assert!(matches!(check(&more, 31337), Err(SignatureProblem::NotOwner { .. })));
    }
}
