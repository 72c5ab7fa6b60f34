//! Log shipping: the program's output, in chunks, to `logs/<alloc>/<n>.log`.
//!
//! A chunk is written when a second has passed since the last one or when it reaches
//! [`CHUNK_BYTES`], so `aic logs -f` follows within about a second and a chatty program does
//! not turn into one object per line. Each chunk is create-only: a restarted shipper never
//! overwrites an earlier chunk.

use std::collections::VecDeque;
use std::time::Duration;

use aic_core::{Created, JobKey, Store};
use bytes::Bytes;
use tokio::sync::mpsc;

pub const CHUNK_BYTES: usize = 256 * 1024;
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Lines kept for a failed status's log tail.
pub const TAIL_LINES: usize = 20;

pub struct Shipper {
    store: Store,
    job: JobKey,
    alloc: u32,
    next: u64,
    buf: String,
    tail: VecDeque<String>,
}

impl Shipper {
    pub fn new(store: Store, job: JobKey, alloc: u32) -> Self {
        Shipper { store, job, alloc, next: 0, buf: String::new(), tail: VecDeque::new() }
    }

    /// Ships lines from `rx` until it closes; returns the last lines for the log tail.
    pub async fn run(mut self, mut rx: mpsc::Receiver<String>) -> Vec<String> {
        // A restarted allocation continues after the chunks its earlier run wrote.
        let prefix = format!("{}{}/", self.job.logs_prefix(), self.alloc);
        if let Ok(existing) = self.store.list(&prefix).await
            && let Some(last) = existing.last()
        {
            let name = last.location.filename().unwrap_or_default();
            self.next = name.trim_end_matches(".log").parse::<u64>().map(|n| n + 1).unwrap_or(0);
        }
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                line = rx.recv() => match line {
                    Some(l) => {
                        self.push(l);
                        if self.buf.len() >= CHUNK_BYTES {
                            self.flush().await;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => self.flush().await,
            }
        }
        self.flush().await;
        self.tail.into_iter().collect()
    }

    fn push(&mut self, line: String) {
        self.buf.push_str(&line);
        self.buf.push('\n');
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    async fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let body = Bytes::from(std::mem::take(&mut self.buf));
        // Keep trying: losing a user's log is worse than a late one.
        let mut failures = 0;
        while failures < 5 {
            match self.store.create_bytes(&self.job.log_chunk(self.alloc, self.next), body.clone()).await {
                Ok(Created::Created) => {
                    self.next += 1;
                    return;
                }
                // A chunk with this number exists (written by an earlier run): take the next.
                Ok(Created::AlreadyExists) => self.next += 1,
                Err(e) => {
                    tracing::warn!(error = %e, failures, "log chunk upload failed");
                    tokio::time::sleep(Duration::from_millis(200 << failures)).await;
                    failures += 1;
                }
            }
        }
        tracing::error!(bytes = body.len(), "a log chunk could not be stored and is lost");
    }
}
