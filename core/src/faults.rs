//! A store that fails on purpose: wraps any `ObjectStore` (the object_store decorator style)
//! and makes a share of its calls fail, as a real bucket does under load or across a bad
//! network: before the call reaches the store (nothing happened), or after a write landed
//! (it happened, but the caller hears an error and must not do it twice), and optionally
//! slowly. For tests of what the functions and schedulers do under faults (`Store::with_faults`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};

/// What goes wrong, and how often.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// The share of calls that fail (0.0 to 1.0). A failing write fails, with even odds,
    /// before it reaches the store or after it landed.
    pub share: f64,
    /// Added to every call.
    pub latency: Duration,
    /// Seeds the draws, so that a failing run can be replayed.
    pub seed: u64,
    /// Only calls on keys starting with this fail (writes and reads; listings and deletes
    /// are then spared). `None`: any call.
    pub only_under: Option<String>,
    /// At most this many calls fail in all, then the store heals. `None`: no end.
    pub at_most: Option<u64>,
    /// The odds that a failing write had landed. `None`: even odds.
    pub landed: Option<f64>,
}

/// How many calls failed, each way.
#[derive(Debug, Default)]
pub struct FaultCount {
    pub before: AtomicU64,
    pub after: AtomicU64,
    pub calls: AtomicU64,
}

pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Faults,
    state: AtomicU64,
    pub count: Arc<FaultCount>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, faults: Faults) -> Self {
        let state = AtomicU64::new(faults.seed.max(1));
        FaultyStore { inner, faults, state, count: Default::default() }
    }

    /// One draw in [0, 1) (xorshift, shared by every caller).
    fn draw(&self) -> f64 {
        let mut x = self.state.load(Ordering::Relaxed);
        loop {
            let mut n = x;
            n ^= n << 13;
            n ^= n >> 7;
            n ^= n << 17;
            match self.state.compare_exchange_weak(x, n, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (n >> 11) as f64 / (1u64 << 53) as f64,
                Err(now) => x = now,
            }
        }
    }

    /// A listing that fails (decided as it is asked for, before anything is listed).
    fn failed_list(&self, prefix: Option<&Path>) -> Option<BoxStream<'static, object_store::Result<ObjectMeta>>> {
        if !self.eligible(None) || self.draw() >= self.faults.share {
            return None;
        }
        self.count.before.fetch_add(1, Ordering::Relaxed);
        let p = prefix.cloned().unwrap_or_default();
        Some(futures::stream::once(async move { Err(injected("list", &p)) }).boxed())
    }

    /// Whether a call on `location` (`None`: a listing or a batch) may fail at all.
    fn eligible(&self, location: Option<&Path>) -> bool {
        let spent = self.count.before.load(Ordering::Relaxed) + self.count.after.load(Ordering::Relaxed);
        self.faults.at_most.is_none_or(|n| spent < n)
            && match (&self.faults.only_under, location) {
                (None, _) => true,
                (Some(under), Some(at)) => at.as_ref().starts_with(under.as_str()),
                (Some(_), None) => false,
            }
    }

    /// Whether this call on `location` fails, and when: `Some(true)` after the store did it.
    async fn fate(&self, location: Option<&Path>, write: bool) -> Option<bool> {
        self.count.calls.fetch_add(1, Ordering::Relaxed);
        if !self.faults.latency.is_zero() {
            tokio::time::sleep(self.faults.latency).await;
        }
        if !self.eligible(location) || self.draw() >= self.faults.share {
            return None;
        }
        let after = write && self.draw() < self.faults.landed.unwrap_or(0.5);
        let c = if after { &self.count.after } else { &self.count.before };
        c.fetch_add(1, Ordering::Relaxed);
        Some(after)
    }
}

fn injected(what: &str, location: &Path) -> object_store::Error {
    object_store::Error::Generic {
        store: "faults",
        source: format!("injected fault: {what} {location} (the connection broke)").into(),
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({}, {:.0}%)", self.inner, self.faults.share * 100.0)
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        match self.fate(Some(location), true).await {
            None => self.inner.put_opts(location, payload, opts).await,
            Some(false) => Err(injected("put", location)),
            Some(true) => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(injected("put (it landed)", location))
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        match self.fate(Some(location), false).await {
            None => self.inner.put_multipart_opts(location, opts).await,
            Some(_) => Err(injected("multipart upload", location)),
        }
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        match self.fate(Some(location), false).await {
            None => self.inner.get_opts(location, options).await,
            Some(_) => Err(injected("get", location)),
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        // Decided once for the whole batch, before anything is deleted.
        if self.eligible(None) && self.draw() < self.faults.share {
            self.count.before.fetch_add(1, Ordering::Relaxed);
            return futures::stream::once(async { Err(injected("delete", &Path::from("…"))) }).boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.failed_list(prefix).unwrap_or_else(|| self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.failed_list(prefix).unwrap_or_else(|| self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        match self.fate(None, false).await {
            None => self.inner.list_with_delimiter(prefix).await,
            Some(_) => Err(injected("list", &prefix.cloned().unwrap_or_default())),
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        match self.fate(Some(to), true).await {
            None => self.inner.copy_opts(from, to, options).await,
            Some(false) => Err(injected("copy", to)),
            Some(true) => {
                self.inner.copy_opts(from, to, options).await?;
                Err(injected("copy (it landed)", to))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn a_share_of_calls_fails_some_after_the_write_landed() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let f = FaultyStore::new(
            inner.clone(),
            Faults { share: 0.3, latency: Duration::ZERO, seed: 7, ..Default::default() },
        );
        let mut failed = 0;
        for i in 0..1000 {
            let p = Path::from(format!("k/{i}"));
            if f.put(&p, PutPayload::from_static(b"x")).await.is_err() {
                failed += 1;
            }
        }
        assert!((200..400).contains(&failed), "{failed} of 1000 failed at 30%");
        let (before, after) = (f.count.before.load(Ordering::Relaxed), f.count.after.load(Ordering::Relaxed));
        assert_eq!(before + after, failed);
        assert!(before > 50 && after > 50, "both ways: {before} before, {after} after");
        // A write that failed after it landed is in the store; one that failed before is not.
        let landed = inner.list(None).count().await as u64;
        assert_eq!(landed, 1000 - before);
    }
}
