//! Bucket notifications for stores that send none: the local event spool.
//!
//! MinIO and S3 announce every created object to the functions. A local directory store
//! cannot, so every process of the embedded pool that writes through a [`Store`] built
//! `with_events(spool)` drops an S3 event record into a spool folder; the pool reads the
//! spool in name order (names are ULIDs: time order) and removes each event once handled.
//! Delivery is at least once, as with the real thing.
//!
//! [`Store`]: crate::Store

use std::path::{Path, PathBuf};

use aic_schemas::event::S3EventRecord;

/// Something that hears about created objects.
pub trait EventSink: Send + Sync {
    fn object_created(&self, bucket: &str, key: &str, size: u64);
}

/// A folder of pending S3 event records.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
}

/// One event read from the spool; `ack` it once handled.
#[derive(Debug)]
pub struct Pending {
    pub path: PathBuf,
    pub record: S3EventRecord,
}

impl Spool {
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one record, atomically (temporary name, then rename).
    pub fn emit(&self, record: &S3EventRecord) -> std::io::Result<()> {
        let name = ulid::Ulid::new().to_string();
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(record)?)?;
        std::fs::rename(&tmp, self.dir.join(format!("{name}.json")))
    }

    /// The pending events, oldest first. Unreadable files are removed: an event that
    /// cannot be parsed can never be handled.
    pub fn pending(&self) -> std::io::Result<Vec<Pending>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let path = self.dir.join(&n);
            match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(record) => out.push(Pending { path, record }),
                None => {
                    tracing::warn!(event = %n, "dropping unreadable event");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(out)
    }

    pub fn ack(&self, p: &Pending) {
        let _ = std::fs::remove_file(&p.path);
    }

    /// Wakes its holder when an event lands in the spool (inotify): the pool reads the spool
    /// on change, not on a timer.
    pub fn watch(&self) -> std::io::Result<SpoolWatch> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // Events are renamed into place (`emit`); a writer that creates them in place closes them.
        ino.add_watch(&self.dir, AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE)?;
        // SAFETY: the descriptor is the `Inotify`'s own, which the `AsyncFd` owns and which
        // closes it only when dropped with it: it stays open and the same for its lifetime.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(Ino(ino)) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(SpoolWatch { fd })
    }
}

struct Ino(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for Ino {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

/// See [`Spool::watch`].
pub struct SpoolWatch {
    fd: tokio::io::unix::AsyncFd<Ino>,
}

impl SpoolWatch {
    /// Returns once something landed in the spool since the last call (at once if it did).
    pub async fn changed(&self) {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                // The descriptor broke: never wake (callers keep a slower timer beside it).
                return std::future::pending().await;
            };
            match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(events)) if !events.is_empty() => return,
                Ok(Ok(_)) | Err(_) => continue,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(Err(_)) => return std::future::pending().await,
            }
        }
    }
}

impl EventSink for Spool {
    fn object_created(&self, bucket: &str, key: &str, size: u64) {
        if let Err(e) = self.emit(&S3EventRecord::object_created(bucket, key, size)) {
            tracing::warn!(%key, error = %e, "could not spool the event for a created object");
        }
    }
}
