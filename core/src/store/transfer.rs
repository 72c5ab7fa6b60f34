//! Files and folders in and out of the store: streamed, multipart, in parallel.

use super::names::folder_problem;
use super::*;

/// Part size of multipart uploads; also the most a transfer holds in memory per part.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once.
pub const PART_CONCURRENCY: usize = 4;
/// Files of one folder transfer in flight at once when they are over [`SMALL_FILE`].
pub const FILE_CONCURRENCY: usize = 8;
/// Files of a folder transfer moved at once when they are small (at most [`SMALL_FILE`]):
/// many small files are bound by round trips, not bandwidth (and where a store closes each
/// connection after an answer, as LocalStack does, by connection set-ups too).
pub const SMALL_FILE_CONCURRENCY: usize = 128;
/// What small files being uploaded hold in memory at once, at most (each is read whole):
/// 32 of 1 MiB, or all [`SMALL_FILE_CONCURRENCY`] of a few KiB. Downloads stream.
pub const SMALL_UPLOAD_BYTES: u64 = 32 * 1024 * 1024;
pub const SMALL_FILE: u64 = 1024 * 1024;

impl Store {
    /// Uploads a local file to `key`, streaming: at most [`PART_CONCURRENCY`] parts of
    /// [`PART_SIZE`] are in memory at once. `progress` is called with bytes sent so far.
    pub async fn upload_file(
        &self,
        local: &FsPath,
        key: &str,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, StoreError> {
        let io = |source| StoreError::Io { key: local.display().to_string(), source };
        let mut file = tokio::fs::File::open(local).await.map_err(io)?;
        let len = file.metadata().await.map_err(io)?.len();
        if len <= PART_SIZE as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).await.map_err(io)?;
            let n = buf.len() as u64;
            self.put_bytes(key, Bytes::from(buf)).await?;
            progress(n);
            return Ok(n);
        }
        let upload = self.inner.put_multipart(&object_path(key)?).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut sent = 0u64;
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(io(e));
                }
            };
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(PART_CONCURRENCY).await?;
            writer.write(&buf[..n]);
            sent += n as u64;
            progress(sent);
        }
        writer.finish().await?;
        self.announce(key, sent);
        Ok(sent)
    }

    /// Writes the bytes of `chunks` to `key` as they come, part by part: at most
    /// [`PART_CONCURRENCY`] parts of [`PART_SIZE`] in memory. Nothing is written when a chunk
    /// fails. Returns the size written.
    pub async fn write_stream(
        &self,
        key: &str,
        mut chunks: futures::stream::BoxStream<'_, Result<Bytes, StoreError>>,
    ) -> Result<u64, StoreError> {
        let upload = self.inner.put_multipart(&object_path(key)?).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut sent = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e);
                }
            };
            writer.wait_for_capacity(PART_CONCURRENCY).await?;
            sent += chunk.len() as u64;
            writer.put(chunk);
        }
        writer.finish().await?;
        self.announce(key, sent);
        Ok(sent)
    }

    /// Downloads `key` into `local` (parent folders created), streaming into a temporary
    /// file that is renamed into place only when complete.
    pub async fn download_file(
        &self,
        key: &str,
        local: &FsPath,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, StoreError> {
        let io = |source| StoreError::Io { key: local.display().to_string(), source };
        if let Some(parent) = local.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        let tmp = partial_name(local);
        let result = async {
            let mut stream = self.inner.get(&object_path(key)?).await?.into_stream();
            let mut out = tokio::fs::File::create(&tmp).await.map_err(io)?;
            let mut got = 0u64;
            while let Some(chunk) = stream.try_next().await? {
                out.write_all(&chunk).await.map_err(io)?;
                got += chunk.len() as u64;
                progress(got);
            }
            out.flush().await.map_err(io)?;
            drop(out);
            tokio::fs::rename(&tmp, local).await.map_err(io)?;
            Ok(got)
        }
        .await;
        if result.is_err() {
            // A failed download leaves nothing half-written behind.
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Uploads every file below `dir` to `prefix` + relative path, several at once.
    /// Returns (files, bytes).
    pub async fn upload_dir(
        &self,
        dir: &FsPath,
        prefix: &str,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(usize, u64), StoreError> {
        let files = local_files(dir).map_err(|source| StoreError::Io { key: dir.display().to_string(), source })?;
        let jobs = files
            .into_iter()
            .map(|(path, rel)| {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(u64::MAX);
                Transfer::Up(path, format!("{prefix}{rel}"), size)
            })
            .collect();
        self.transfer_all(jobs, progress).await
    }

    /// Downloads every object under `prefix` into `dir`, keeping relative paths, several at
    /// once. Keys that would land outside `dir` are refused. Returns (files, bytes).
    pub async fn download_prefix(
        &self,
        prefix: &str,
        dir: &FsPath,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(usize, u64), StoreError> {
        let objects = self.list(prefix).await?;
        let mut jobs = Vec::new();
        for m in &objects {
            let key = m.location.to_string();
            let rel = key.strip_prefix(prefix).unwrap_or(&key).to_string();
            if rel.is_empty() || aic_schemas::validate::path_problem(&rel).is_some() {
                return Err(StoreError::Io {
                    key,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "key would land outside the target folder",
                    ),
                });
            }
            jobs.push(Transfer::Down(key, dir.join(rel), m.size));
        }
        self.transfer_all(jobs, progress).await
    }

    /// Runs transfers [`SMALL_FILE_CONCURRENCY`] at a time, of which at most
    /// [`FILE_CONCURRENCY`] of files over [`SMALL_FILE`] and small uploads of at most
    /// [`SMALL_UPLOAD_BYTES`] together (what a transfer holds in memory stays bounded);
    /// `progress` gets the bytes moved so far over all of them. Returns (files, bytes).
    async fn transfer_all(
        &self,
        jobs: Vec<Transfer>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(usize, u64), StoreError> {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        let total = AtomicU64::new(0);
        let big = tokio::sync::Semaphore::new(FILE_CONCURRENCY);
        // In KiB: a permit each.
        let held = tokio::sync::Semaphore::new((SMALL_UPLOAD_BYTES / 1024) as usize);
        let results: Vec<u64> = futures::stream::iter(jobs.iter())
            .map(|job| {
                let (total, big, held) = (&total, &big, &held);
                async move {
                    let size = match job {
                        Transfer::Up(_, _, n) | Transfer::Down(_, _, n) => *n,
                    };
                    let _permit = if size > SMALL_FILE { big.acquire().await.ok() } else { None };
                    let _held = match job {
                        Transfer::Up(..) if size <= SMALL_FILE => {
                            held.acquire_many(size.div_ceil(1024).max(1) as u32).await.ok()
                        }
                        _ => None,
                    };
                    // Each transfer reports its own running count; add only the growth.
                    let last = AtomicU64::new(0);
                    let report = |n: u64| {
                        let prev = last.swap(n, Relaxed);
                        progress(total.fetch_add(n - prev, Relaxed) + n - prev);
                    };
                    match job {
                        Transfer::Up(path, key, _) => self.upload_file(path, key, &report).await,
                        Transfer::Down(key, path, _) => self.download_file(key, path, &report).await,
                    }
                }
            })
            .buffer_unordered(SMALL_FILE_CONCURRENCY)
            .try_collect()
            .await?;
        Ok((results.len(), results.iter().sum()))
    }
}

/// One file transfer of a folder transfer, with its size.
enum Transfer {
    /// Local file → key.
    Up(PathBuf, String, u64),
    /// Key → local file.
    Down(String, PathBuf, u64),
}

fn partial_name(local: &FsPath) -> PathBuf {
    let mut name = local.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".aic-partial");
    local.with_file_name(name)
}

/// Regular files below `dir` with their `/`-separated relative paths, sorted. Symbolic
/// links are not followed. A name that cannot be a key as it is (not UTF-8, control
/// characters, see [`name_problem`]) is an error naming the file, before anything moves:
/// a file is never stored under another name.
pub fn local_files(dir: &FsPath) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(std::io::Error::other)?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).map_err(std::io::Error::other)?;
        let mut parts = Vec::new();
        let count = rel.components().count();
        for (i, c) in rel.components().enumerate() {
            // A lossy conversion would store the file under another name: refuse instead.
            let part = c.as_os_str().to_str().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: the file name is not UTF-8; rename it", entry.path().display()),
                )
            })?;
            let problem = if i + 1 == count { name_problem(part) } else { folder_problem(part) };
            if let Some(why) = problem {
                let msg = format!("{}: {why}; rename it", entry.path().display());
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, msg));
            }
            parts.push(part);
        }
        out.push((entry.path().to_path_buf(), parts.join("/")));
    }
    Ok(out)
}
