//! The object store as aic uses it: create-only writes, size-limited JSON reads, streaming
//! transfers, and bucket notifications for stores that cannot send their own.
//!
//! - `names`: which keys and file names can be objects, and their object_store paths;
//! - `list`: listings (whole, after an offset, paged folder names, one level);
//! - `transfer`: files and folders in and out, streamed and in parallel (multipart).

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

mod list;
mod names;
mod transfer;

pub use list::Names;
pub use names::{name_problem, object_path, prefix_path};
pub use transfer::{
    FILE_CONCURRENCY, PART_CONCURRENCY, PART_SIZE, SMALL_FILE, SMALL_FILE_CONCURRENCY, SMALL_UPLOAD_BYTES, local_files,
};

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

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner)
    }
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
}

fn to_json<T: Serialize>(value: &T) -> Bytes {
    // Serialising our own types cannot fail (no maps with non-string keys).
    Bytes::from(serde_json::to_vec_pretty(value).expect("serialisable"))
}
