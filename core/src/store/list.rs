//! Listings: whole, after an offset, paged folder names, one level.

use super::*;

/// A page of [`Store::list_names`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Names {
    /// Sorted.
    pub names: Vec<String>,
    /// Whether more follow the last one.
    pub more: bool,
}

/// The names of the folders in `folder` (none when it does not exist), from the directory
/// alone: its entries' types, no metadata read per entry.
fn local_folders(folder: &FsPath) -> std::io::Result<Vec<String>> {
    let rd = match std::fs::read_dir(folder) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e?;
        if e.file_type()?.is_dir()
            && let Ok(name) = e.file_name().into_string()
            && prefix_path(&name).is_ok()
        {
            out.push(name);
        }
    }
    Ok(out)
}

impl Store {
    /// Every object under `prefix`, sorted by key. For bounded prefixes (a job's status
    /// log, a job's allocations); use [`Store::list_after`] to follow a growing one.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out: Vec<ObjectMeta> = self.inner.list(Some(&prefix_path(prefix)?)).try_collect().await?;
        out.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(out)
    }

    /// Objects under `prefix` whose keys sort after `offset`, sorted: what is new since the
    /// last look, at a cost that does not grow with what was already seen (S3 `start-after`).
    pub async fn list_after(&self, prefix: &str, offset: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out: Vec<ObjectMeta> =
            self.inner.list_with_offset(Some(&prefix_path(prefix)?), &object_path(offset)?).try_collect().await?;
        out.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(out)
    }

    /// Up to `max` names of the "folders" right under `dir` (a prefix ending in `/`) that
    /// start with `start` and sort after `after`, sorted, and whether more follow. One request
    /// where the store pages listings (S3, the gateway), so its cost does not grow with how
    /// many there are; a listing of `dir` elsewhere (a local folder).
    pub async fn list_names(
        &self,
        dir: &str,
        start: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Names, StoreError> {
        let max = max.max(1);
        let name_of = |p: &str| p.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_string();
        if let Some(paged) = &self.paged {
            let opts = object_store::list::PaginatedListOptions {
                // After every key under the folder `a` too (`dir/a/…` sorts after `dir/a`):
                // the highest code point sorts after any byte a key holds there.
                offset: after.map(|a| format!("{dir}{a}/\u{10FFFF}")),
                delimiter: Some("/".into()),
                max_keys: Some(max),
                ..Default::default()
            };
            let page = paged.list_paginated(Some(&format!("{dir}{start}")), opts).await?;
            let mut names: Vec<String> = page.result.common_prefixes.iter().map(|p| name_of(p.as_ref())).collect();
            names.sort();
            return Ok(Names { names, more: page.page_token.is_some() });
        }
        let all: Vec<String> = match &self.local_root {
            Some(root) => {
                let folder = root.join(dir.trim_end_matches('/'));
                tokio::task::spawn_blocking(move || local_folders(&folder))
                    .await
                    .map_err(|e| StoreError::Io { key: dir.into(), source: std::io::Error::other(e) })?
                    .map_err(|source| StoreError::Io { key: dir.into(), source })?
            }
            None => {
                let (dirs, _) = self.list_dir(dir).await?;
                dirs.iter().map(|d| name_of(d)).collect()
            }
        };
        let mut names: Vec<String> =
            all.into_iter().filter(|n| n.starts_with(start) && after.is_none_or(|a| n.as_str() > a)).collect();
        names.sort();
        let more = names.len() > max;
        names.truncate(max);
        Ok(Names { names, more })
    }

    /// Whether [`Store::list_names`] pages where the objects are.
    pub fn pages_listings(&self) -> bool {
        self.paged.is_some()
    }

    /// The immediate "folders" and objects under `prefix`.
    pub async fn list_dir(&self, prefix: &str) -> Result<(Vec<String>, Vec<ObjectMeta>), StoreError> {
        let r = self.inner.list_with_delimiter(Some(&prefix_path(prefix)?)).await?;
        Ok((r.common_prefixes.into_iter().map(|p| p.to_string()).collect(), r.objects))
    }
}
