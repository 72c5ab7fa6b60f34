//! Staging: the code (checked against the signed digest, within the size limit, nothing
//! outside its folder), the dataset, and the outputs of an earlier attempt.
//!
//! The dataset is cached on the miner (`envcache`, beside the environments) by a digest of
//! its owner, its name and each object's key, ETag and size: a second job with the same
//! dataset, a retry, another allocation of the job on the same miner reads it from there.
//! One owner's copy is never another's (the owner is in the digest). The cached copy is the
//! keeper's, read-only; the allocation's `data/` holds a link to each of its files (folders
//! as folders), so a program reads the dataset as before and may add files beside it.

use std::path::PathBuf;

use aic_schemas::JobRequest;
use anyhow::{Context, anyhow};
use sha2::Digest;
use tokio::sync::mpsc;

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
pub(crate) async fn stage(a: &Alloc, req: &JobRequest, log: &mpsc::Sender<String>) -> anyhow::Result<Staged> {
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
        dataset(a, data, &data_dir, log).await?;
    }
    let out_prefix = output_prefix(a);
    let restored = a.store.download_prefix(&out_prefix, &out_dir, &|_| {}).await.context("restoring outputs")?;
    if restored.0 > 0 {
        tracing::info!(files = restored.0, "restored earlier outputs");
    }
    Ok(Staged { code_dir, data_dir, out_dir, out_prefix })
}

/// Stages dataset `data` at `data_dir`: from the miner's cache, into it, or downloaded for
/// this allocation alone (no cache, objects without ETags, or another allocation building
/// the same for too long).
async fn dataset(a: &Alloc, data: &str, data_dir: &std::path::Path, log: &mpsc::Sender<String>) -> anyhow::Result<()> {
    let prefix = format!("{}/", aic_core::layout::data_key(&a.job.owner, data).trim_end_matches('/'));
    let objects = a.store.list(&prefix).await.context("listing the dataset")?;
    if objects.is_empty() {
        return Err(anyhow!("dataset {data:?} is empty or missing; upload it with `aic data put`"));
    }
    let bytes: u64 = objects.iter().map(|m| m.size).sum();
    let shown =
        format!("dataset {data} ({}, {})", aic_core::plural(objects.len() as u64, "file"), aic_core::size(bytes));
    let started = std::time::Instant::now();
    let say = |line: String| crate::logs::say(log, line);
    let digest = objects.iter().all(|m| m.e_tag.is_some()).then(|| {
        let mut lines: Vec<String> = objects
            .iter()
            .map(|m| format!("{}\t{}\t{}", m.location, m.e_tag.as_deref().unwrap_or_default(), m.size))
            .collect();
        lines.sort();
        let mut h = sha2::Sha256::new();
        h.update(format!("aic-data 1\n{}\n{prefix}\n{}", a.job.owner, lines.join("\n")).as_bytes());
        hex::encode(h.finalize())
    });
    let keeper = crate::envcache::keeper();
    if let (Some(k), Some(d)) = (keeper, digest) {
        let d2 = d.clone();
        let taken = tokio::task::spawn_blocking(move || crate::envcache::keeper().expect("set").lock(&d2, DATA_WAIT))
            .await
            .map_err(|e| anyhow!(e))?
            .context("the miner's cache")?;
        let cached = match taken {
            crate::envcache::Taken::Ready(dir) => {
                say(format!("{shown}: from this miner's cache in {:.1} s", started.elapsed().as_secs_f64())).await;
                Some(dir)
            }
            crate::envcache::Taken::Build => {
                let build = a.work.join(crate::envcache::BUILD_DIR);
                let _ = std::fs::remove_dir_all(&build);
                std::fs::create_dir_all(build.join(&d))?;
                let got = a.store.download_prefix(&prefix, &build.join(&d), &|_| {}).await;
                let sealed = match got {
                    Ok(_) => {
                        let (d3, work) = (d.clone(), a.work.clone());
                        tokio::task::spawn_blocking(move || crate::envcache::keeper().expect("set").seal(&d3, &work))
                            .await
                            .map_err(|e| anyhow!(e))
                            .and_then(|r| r.context("keeping the dataset in the miner's cache"))
                    }
                    Err(e) => Err(anyhow!(e).context("downloading the dataset")),
                };
                let _ = std::fs::remove_dir_all(&build);
                match sealed {
                    Ok(dir) => {
                        say(format!(
                            "{shown}: downloaded in {:.1} s, kept in this miner's cache",
                            started.elapsed().as_secs_f64()
                        ))
                        .await;
                        Some(dir)
                    }
                    Err(e) => {
                        k.unlock(&d);
                        tracing::warn!(error = %format!("{e:#}"), "the dataset is not cached; downloading it for this allocation");
                        None
                    }
                }
            }
            crate::envcache::Taken::Busy => None,
        };
        if let Some(dir) = cached {
            // A fresh view: what an earlier attempt left in `data/` goes.
            let _ = std::fs::remove_dir_all(data_dir);
            link_tree(&dir, data_dir).context("linking the cached dataset")?;
            return Ok(());
        }
    }
    let (n, got) = a.store.download_prefix(&prefix, data_dir, &|_| {}).await.context("downloading the dataset")?;
    tracing::info!(files = n, bytes = got, "dataset ready");
    say(format!("{shown}: downloaded in {:.1} s", started.elapsed().as_secs_f64())).await;
    Ok(())
}

/// The longest an allocation waits for another downloading the same dataset into the cache.
const DATA_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// `to` made a tree of folders mirroring `from`'s, each file a link to `from`'s.
fn link_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in walkdir::WalkDir::new(from).min_depth(1).follow_links(false) {
        let e = e.map_err(std::io::Error::other)?;
        let rel = e.path().strip_prefix(from).map_err(std::io::Error::other)?;
        let at = to.join(rel);
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&at)?;
        } else if e.file_type().is_file() {
            std::os::unix::fs::symlink(e.path(), &at)?;
        }
    }
    Ok(())
}
