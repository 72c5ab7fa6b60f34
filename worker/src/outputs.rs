//! Output sync: `AIC_OUTPUT_DIR` to the job's `output/` prefix, on change and at exit.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use aic_core::Store;
use aic_core::store::local_files;

/// Remembers what was uploaded, so that each pass sends only new or changed files.
#[derive(Default)]
pub struct OutputSync {
    seen: HashMap<String, (u64, SystemTime)>,
}

impl OutputSync {
    /// Uploads files that are new or changed since the last pass; returns how many.
    pub async fn pass(&mut self, store: &Store, dir: &Path, prefix: &str) -> anyhow::Result<usize> {
        let mut sent = 0;
        for (path, rel) in local_files(dir)? {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let stamp = (meta.len(), meta.modified()?);
            if self.seen.get(&rel) == Some(&stamp) {
                continue;
            }
            store.upload_file(&path, &format!("{prefix}{rel}"), &|_| {}).await?;
            self.seen.insert(rel, stamp);
            sent += 1;
        }
        Ok(sent)
    }
}
