//! Staging: the code (checked against the signed digest, within the size limit, nothing
//! outside its folder), the dataset, and the outputs of an earlier attempt.

use std::path::PathBuf;

use aic_schemas::JobRequest;
use anyhow::{Context, anyhow};

use crate::alloc::{Alloc, max_code_bytes, output_prefix};

/// The allocation's folders, filled.
pub(crate) struct Staged {
    pub(crate) code_dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) out_dir: PathBuf,
    /// Where the outputs sync to.
    pub(crate) out_prefix: String,
}

/// Downloads what the program needs into the allocation's folder.
pub(crate) async fn stage(a: &Alloc, req: &JobRequest) -> anyhow::Result<Staged> {
    let code_dir = a.work.join("code");
    let data_dir = a.work.join("data");
    let out_dir = a.work.join("output");
    // A restarted allocation may find its earlier folder; the code must be exactly what was
    // signed (no leftovers such as __pycache__), so it starts from an empty folder.
    let _ = tokio::fs::remove_dir_all(&code_dir).await;
    for d in [&code_dir, &data_dir, &out_dir] {
        tokio::fs::create_dir_all(d).await.with_context(|| format!("creating {}", d.display()))?;
    }
    // Over the limit: refused before anything is downloaded.
    let code_bytes: u64 = a.store.list(&a.job.code_prefix()).await?.iter().map(|m| m.size).sum();
    let limit = max_code_bytes();
    if code_bytes > limit {
        return Err(anyhow!(
            "the code is {code_bytes} bytes, over the {limit}-byte limit (AIC_MAX_CODE_BYTES); ship large files as a dataset"
        ));
    }
    let (files, _) = a.store.download_prefix(&a.job.code_prefix(), &code_dir, &|_| {}).await.map_err(|e| match e {
        // A key that would land outside the folder (`..`, absolute): nothing was written.
        aic_core::StoreError::Io { key, source } if source.kind() == std::io::ErrorKind::InvalidData => {
            anyhow!("refused the code: {key} would land outside the code folder")
        }
        e => anyhow!(e).context("downloading the code"),
    })?;
    if files == 0 {
        return Err(anyhow!("the job has no code under {}", a.job.code_prefix()));
    }
    if !req.code_digest.is_empty() {
        let got = aic_core::digest::tree(&code_dir).context("hashing the code")?;
        if got != req.code_digest {
            return Err(anyhow!(
                "the code in the bucket is not the code its owner signed (digest {got}); submit the job again"
            ));
        }
    }
    if let Some(data) = &req.data {
        let prefix = format!("{}/", aic_core::layout::data_key(&a.job.owner, data).trim_end_matches('/'));
        let (n, bytes) =
            a.store.download_prefix(&prefix, &data_dir, &|_| {}).await.context("downloading the dataset")?;
        if n == 0 {
            return Err(anyhow!("dataset {data:?} is empty or missing; upload it with `aic data put`"));
        }
        tracing::info!(files = n, bytes, "dataset ready");
    }
    let out_prefix = output_prefix(a);
    let restored = a.store.download_prefix(&out_prefix, &out_dir, &|_| {}).await.context("restoring outputs")?;
    if restored.0 > 0 {
        tracing::info!(files = restored.0, "restored earlier outputs");
    }
    Ok(Staged { code_dir, data_dir, out_dir, out_prefix })
}
