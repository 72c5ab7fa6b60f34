//! The object store as aic uses it: create-only writes, size-limited JSON reads, streaming
//! transfers, and bucket notifications for stores that cannot send their own.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::list::PaginatedListStore;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::events::EventSink;

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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} is {size} bytes; the limit is {max}")]
    TooLarge { key: String, size: u64, max: u64 },
    #[error("{key} is not valid JSON for its kind: {source}")]
    Json { key: String, source: serde_json::Error },
    #[error("{key}: {source}")]
    Io { key: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] object_store::Error),
    /// What a caller sent cannot be taken (a part missing or not the one uploaded).
    #[error("{0}")]
    Refused(String),
}

/// The object_store path of `key`, exactly as written.
///
/// `Path::from` would percent-encode `%`, `#`, `?` and every non-ASCII byte *into the key
/// itself*, so that `학습.csv` was stored as `%ED%95%99….csv` and escaped
/// once more on the way back. Keys are UTF-8 and sent as they are; each backend encodes them
/// for its own wire (S3 URLs, file names). Refused: empty, `.` or `..` segments, control
/// characters, and a last segment ending in `#` and digits (the local directory store keeps
/// its unfinished uploads under such names and cannot hold them).
pub fn object_path(key: &str) -> object_store::Result<Path> {
    let path = Path::parse(key).map_err(|source| object_store::Error::InvalidPath { source })?;
    if let Some(why) = path.filename().and_then(name_problem) {
        return Err(object_store::Error::Generic { store: "aic", source: format!("{key:?}: {why}").into() });
    }
    Ok(path)
}

/// Why a folder's name cannot be part of a key, if it cannot.
fn folder_problem(name: &str) -> Option<&'static str> {
    name.chars().any(char::is_control).then_some("file names may not contain control characters")
}

/// The object_store path of a listing prefix (a folder: any name, trailing `/` or not).
pub fn prefix_path(prefix: &str) -> object_store::Result<Path> {
    Path::parse(prefix).map_err(|source| object_store::Error::InvalidPath { source })
}

/// Why a file name cannot be an object's last segment, if it cannot (besides what
/// `Path::parse` refuses).
pub fn name_problem(name: &str) -> Option<&'static str> {
    if let Some(why) = folder_problem(name) {
        return Some(why);
    }
    match name.rsplit_once('#') {
        Some((_, digits)) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some("names ending in '#' and digits are reserved by the local store")
        }
        _ => None,
    }
}

/// Whether a create-only write created the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    /// Another writer got there first; nothing was written.
    AlreadyExists,
}

/// Cheap to clone; every clone shares the connection pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    bucket: String,
    sink: Option<Arc<dyn EventSink>>,
    /// Presigning and explicit multipart, where the backend has them (S3): the gateway
    /// hands these to users who hold no credentials.
    s3: Option<Arc<object_store::aws::AmazonS3>>,
    /// Listings paged where the objects are (S3's `start-after` and `max-keys`, the
    /// gateway's), for [`Store::list_names`].
    paged: Option<Arc<dyn PaginatedListStore>>,
    /// The folder a local store keeps its objects in: its folder listings read the directory
    /// alone (names, no metadata per entry).
    local_root: Option<PathBuf>,
}

/// A page of [`Store::list_names`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Names {
    /// Sorted.
    pub names: Vec<String>,
    /// Whether more follow the last one.
    pub more: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner)
    }
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
    pub fn new(inner: Arc<dyn ObjectStore>, bucket: &str) -> Self {
        Store { inner, bucket: bucket.into(), sink: None, s3: None, paged: None, local_root: None }
    }

    /// A store whose listings page where the objects are (the gateway's).
    pub fn paged<S: ObjectStore + PaginatedListStore>(inner: Arc<S>, bucket: &str) -> Self {
        Store {
            inner: inner.clone(),
            bucket: bucket.into(),
            sink: None,
            s3: None,
            paged: Some(inner),
            local_root: None,
        }
    }

    /// An S3 store, which can also presign URLs and run multipart uploads step by step.
    pub fn s3(s3: object_store::aws::AmazonS3, bucket: &str) -> Self {
        let s3 = Arc::new(s3);
        Store {
            inner: s3.clone(),
            bucket: bucket.into(),
            sink: None,
            s3: Some(s3.clone()),
            paged: Some(s3),
            local_root: None,
        }
    }

    /// The same store failing on purpose as `faults` says (`crate::faults`); the counts of
    /// what failed.
    pub fn with_faults(mut self, faults: crate::faults::Faults) -> (Self, Arc<crate::faults::FaultCount>) {
        let f = crate::faults::FaultyStore::new(self.inner.clone(), faults);
        let count = f.count.clone();
        self.inner = Arc::new(f);
        // Listings then go through the failing store too.
        self.paged = None;
        self.local_root = None;
        (self, count)
    }

    /// A local store over the folder `root` (what `inner` keeps its objects in).
    pub fn local(inner: Arc<dyn ObjectStore>, root: PathBuf) -> Self {
        Store { local_root: Some(root), ..Store::new(inner, "local") }
    }

    /// The folder a local store keeps its objects in.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// The S3 client behind this store, if it is one (for presigned URLs and multipart).
    pub fn s3_client(&self) -> Option<&Arc<object_store::aws::AmazonS3>> {
        self.s3.as_ref()
    }

    /// The same store, announcing every write it makes to `sink` (the embedded pool's
    /// stand-in for bucket notifications).
    pub fn with_events(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn announce(&self, key: &str, size: u64) {
        if let Some(sink) = &self.sink {
            sink.object_created(&self.bucket, key, size);
        }
    }

    /// Size and etag of an object, or `None` when there is none.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        match self.inner.head(&object_path(key)?).await {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a whole object of at most `max` bytes. An object that is larger is refused
    /// without being read; a missing one is `None`.
    pub async fn get_limited(&self, key: &str, max: u64) -> Result<Option<Bytes>, StoreError> {
        let path = object_path(key)?;
        let meta = match self.inner.head(&path).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if meta.size > max {
            return Err(StoreError::TooLarge { key: key.into(), size: meta.size, max });
        }
        match self.inner.get(&path).await {
            Ok(r) => {
                // The object may have been replaced between head and get: read at most max+1.
                let mut stream = r.into_stream();
                let mut buf = Vec::with_capacity(meta.size as usize);
                while let Some(chunk) = stream.try_next().await? {
                    buf.extend_from_slice(&chunk);
                    if buf.len() as u64 > max {
                        return Err(StoreError::TooLarge { key: key.into(), size: buf.len() as u64, max });
                    }
                }
                Ok(Some(Bytes::from(buf)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads and parses a JSON document of at most `max` bytes.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &str, max: u64) -> Result<Option<T>, StoreError> {
        match self.get_limited(key, max).await? {
            None => Ok(None),
            Some(b) => {
                serde_json::from_slice(&b).map(Some).map_err(|source| StoreError::Json { key: key.into(), source })
            }
        }
    }

    /// Writes (or replaces) an object.
    pub async fn put_bytes(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let size = body.len() as u64;
        self.inner.put(&object_path(key)?, PutPayload::from_bytes(body)).await?;
        self.announce(key, size);
        Ok(())
    }

    /// Writes an object only if there is none at `key` (`If-None-Match: *`). Atomic on S3,
    /// MinIO, LocalStack and the local directory store.
    pub async fn create_bytes(&self, key: &str, body: Bytes) -> Result<Created, StoreError> {
        let size = body.len() as u64;
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.inner.put_opts(&object_path(key)?, PutPayload::from_bytes(body), opts).await {
            Ok(_) => {
                self.announce(key, size);
                Ok(Created::Created)
            }
            // S3 answers 412 for a failed If-None-Match; object_store maps it to
            // AlreadyExists or Precondition depending on the backend.
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                Ok(Created::AlreadyExists)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.put_bytes(key, to_json(value)).await
    }

    pub async fn create_json<T: Serialize>(&self, key: &str, value: &T) -> Result<Created, StoreError> {
        self.create_bytes(key, to_json(value)).await
    }

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

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&object_path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every object under `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        let locations = self.inner.list(Some(&prefix_path(prefix)?)).map_ok(|m| m.location).boxed();
        let deleted: Vec<Path> = self.inner.delete_stream(locations).try_collect().await?;
        Ok(deleted.len())
    }

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

fn to_json<T: Serialize>(value: &T) -> Bytes {
    // Serialising our own types cannot fail (no maps with non-string keys).
    Bytes::from(serde_json::to_vec_pretty(value).expect("serialisable"))
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
