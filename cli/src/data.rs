//! `aic data put|get|ls|rm`: datasets under `users/<addr>/data/`.

use std::path::{Path, PathBuf};

use aic_core::layout::data_key;
use aic_core::store::local_files;
use anyhow::{Context, anyhow, bail};

use crate::env::Env;
use crate::progress;

fn check_name(name: &str) -> anyhow::Result<String> {
    let name = name.trim_end_matches('/');
    if let Some(why) = aic_schemas::validate::path_problem(name) {
        bail!("dataset name {name:?} {why}");
    }
    if name.is_empty() {
        bail!("a dataset name must not be empty");
    }
    Ok(name.to_string())
}

/// Uploads a file or folder as dataset `name`; returns the key prefix.
pub async fn put(env: &Env, local: &Path, name: Option<String>) -> anyhow::Result<String> {
    let meta = std::fs::metadata(local).with_context(|| format!("cannot read {}", local.display()))?;
    let default_name = local
        .canonicalize()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow!("give the dataset a name: aic data put {} NAME", local.display()))?;
    let name = check_name(&name.unwrap_or(default_name))?;
    let prefix = format!("{}/", data_key(&env.owner, &name));
    let files: Vec<(PathBuf, String)> = if meta.is_dir() {
        local_files(local)?
    } else {
        let name = local
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("{}: the file name is not UTF-8; rename it", local.display()))?;
        if let Some(why) = aic_core::store::name_problem(name) {
            bail!("{}: {why}; rename it", local.display());
        }
        vec![(local.to_path_buf(), name.to_string())]
    };
    let total: u64 = files.iter().filter_map(|(p, _)| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    // Past the pool's storage quota: refused before anything moves (the pool refuses it too).
    if let Some(gw) = env.gateway_client() {
        let v = gw.call(reqwest::Method::GET, "usage", None).await?;
        if let (Some(used), Some(quota)) = (v["data_bytes"].as_u64(), v["quota_bytes"].as_u64())
            && used + total > quota
        {
            bail!("{}", aic_core::over_storage_quota(used, total, quota));
        }
    }
    let pb = progress::bytes(total, &format!("uploading {name}"));
    let (n, bytes) = if meta.is_dir() {
        env.store.upload_dir(local, &prefix, &|b| pb.set_position(b)).await?
    } else {
        let b = env.store.upload_file(local, &format!("{prefix}{}", files[0].1), &|b| pb.set_position(b)).await?;
        (1, b)
    };
    pb.finish_and_clear();
    eprintln!("uploaded {} ({}) as dataset {name}", aic_core::plural(n as u64, "file"), progress::size(bytes));
    Ok(prefix)
}

pub async fn get(env: &Env, name: &str, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let name = check_name(name)?;
    let prefix = format!("{}/", data_key(&env.owner, &name));
    let dir = dir.unwrap_or_else(|| PathBuf::from(name.rsplit('/').next().unwrap_or(&name)));
    let total: u64 = env.store.list(&prefix).await?.iter().map(|m| m.size).sum();
    let pb = progress::bytes(total, &format!("downloading {name}"));
    let (n, bytes) = env.store.download_prefix(&prefix, &dir, &|b| pb.set_position(b)).await?;
    pb.finish_and_clear();
    if n == 0 {
        bail!("no dataset {name}; see `aic data ls`");
    }
    eprintln!("downloaded {n} files ({}) to {}", progress::size(bytes), dir.display());
    Ok(())
}

pub async fn ls(env: &Env, name: Option<String>, json: bool) -> anyhow::Result<()> {
    let base = data_key(&env.owner, "");
    match name {
        None => {
            let (dirs, objects) = env.store.list_dir(&base).await?;
            let mut names: Vec<String> = dirs
                .iter()
                .map(|d| d.trim_end_matches('/').rsplit('/').next().unwrap_or(d).to_string())
                .chain(objects.iter().map(|o| o.location.filename().unwrap_or_default().to_string()))
                .collect();
            names.sort();
            if json {
                println!("{}", serde_json::to_string_pretty(&names)?);
            } else if names.is_empty() {
                eprintln!("no datasets yet; upload one with `aic data put DIR NAME`");
            } else {
                for n in names {
                    println!("{n}");
                }
                eprintln!("{}", usage(env).await?);
            }
        }
        Some(name) => {
            let name = check_name(&name)?;
            let prefix = format!("{}/", data_key(&env.owner, &name));
            let objects = env.store.list(&prefix).await?;
            if json {
                let rows: Vec<_> = objects
                    .iter()
                    .map(|o| serde_json::json!({"path": o.location.as_ref().strip_prefix(&prefix).unwrap_or(o.location.as_ref()), "size": o.size, "modified": o.last_modified}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for o in &objects {
                    println!(
                        "{:>10}  {}",
                        progress::size(o.size),
                        o.location.as_ref().strip_prefix(&prefix).unwrap_or(o.location.as_ref())
                    );
                }
                if objects.is_empty() {
                    bail!("no dataset {name}; see `aic data ls`");
                }
            }
        }
    }
    Ok(())
}

/// What the wallet keeps in datasets, and the pool's quota: `storage: 1.2 GiB of 100.0 GiB`.
async fn usage(env: &Env) -> anyhow::Result<String> {
    let (used, quota) = match env.gateway_client() {
        Some(gw) => {
            let v = gw.call(reqwest::Method::GET, "usage", None).await?;
            (v["data_bytes"].as_u64().unwrap_or(0), v["quota_bytes"].as_u64())
        }
        None => (env.store.list(&data_key(&env.owner, "")).await?.iter().map(|m| m.size).sum(), None),
    };
    Ok(match quota {
        Some(q) => format!("storage: {} of {} (this pool's quota per wallet)", progress::size(used), progress::size(q)),
        None => format!("storage: {} in datasets", progress::size(used)),
    })
}

pub async fn rm(env: &Env, name: &str) -> anyhow::Result<()> {
    let name = check_name(name)?;
    let prefix = format!("{}/", data_key(&env.owner, &name));
    let n = env.store.delete_prefix(&prefix).await?;
    if n == 0 {
        bail!("no dataset {name}; see `aic data ls`");
    }
    eprintln!("deleted dataset {name} ({n} files)");
    Ok(())
}
