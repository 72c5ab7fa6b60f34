//! The live side of log shipping: lines posted to the pool's host as they come, for watchers
//! (`aic_functions::gateway::live`), while `logs.rs` stores them in coarse chunks.
//!
//! One post at a time, at most one every [`EVERY`]: a line printed alone goes out at once,
//! a burst goes out together. What cannot be posted is dropped here (it is in the stored
//! chunk): a live watcher never holds the program up.

use std::time::Duration;

use aic_core::remote::{Gateway, GatewayError};
use serde_json::json;
use tokio::sync::mpsc;

/// Least time between two posts.
pub const EVERY: Duration = Duration::from_millis(50);
/// Most text in one post (the gateway reads bodies up to 64 KiB).
const MOST: usize = 32 * 1024;

enum Msg {
    Text {
        chunk: u64,
        offset: u64,
        text: String,
    },
    Status,
    /// Answered once everything sent before it is posted.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Where the worker's live output goes; cheap to clone.
#[derive(Clone)]
pub struct LiveLog {
    tx: mpsc::Sender<Msg>,
}

impl LiveLog {
    /// Starts posting allocation `alloc`'s `stream` (`logs` or `metrics`) to the gateway at
    /// `url` with the job's token.
    pub fn start(url: &str, token: &str, alloc: u32, stream: &'static str) -> LiveLog {
        let (tx, rx) = mpsc::channel(4096);
        let gw = Gateway::new(url, Some(token.to_string()));
        tokio::spawn(post_loop(gw, alloc, stream, rx));
        LiveLog { tx }
    }

    /// Bytes `offset..` of chunk `chunk` (whole lines).
    pub fn text(&self, chunk: u64, offset: u64, text: String) {
        let _ = self.tx.try_send(Msg::Text { chunk, offset, text });
    }

    /// The worker moved the job's status.
    pub fn status(&self) {
        let _ = self.tx.try_send(Msg::Status);
    }

    /// Waits (at most `limit`) until everything sent so far is posted: before the worker exits.
    pub async fn flush(&self, limit: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }
}

async fn post_loop(gw: Gateway, alloc: u32, stream: &'static str, mut rx: mpsc::Receiver<Msg>) {
    let mut carry: Option<Msg> = None;
    let mut last = tokio::time::Instant::now() - EVERY;
    loop {
        let first = match carry.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => return,
            },
        };
        let (mut chunk, mut offset, mut text, mut status) = match first {
            Msg::Text { chunk, offset, text } => (chunk, offset, text, false),
            Msg::Status => (0, 0, String::new(), true),
            Msg::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        tokio::time::sleep_until(last + EVERY).await;
        // Everything waiting that continues the first message goes in the same post.
        while text.len() < MOST {
            match rx.try_recv() {
                Ok(Msg::Status) => status = true,
                Ok(m @ Msg::Flush(_)) => {
                    carry = Some(m);
                    break;
                }
                Ok(Msg::Text { chunk: c, offset: o, text: t }) => {
                    if text.is_empty() {
                        (chunk, offset, text) = (c, o, t);
                    } else if c == chunk && o == offset + text.len() as u64 {
                        text.push_str(&t);
                    } else {
                        carry = Some(Msg::Text { chunk: c, offset: o, text: t });
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        last = tokio::time::Instant::now();
        let body = json!({ "alloc": alloc, "chunk": chunk, "offset": offset, "text": text, "status": status });
        if let Err(e) = gw.call(reqwest::Method::POST, &format!("worker/{stream}"), Some(body)).await {
            // A gateway without live logs (a Lambda one) says so once: stop posting.
            if e.downcast_ref::<GatewayError>().is_some_and(|g| g.status == 404) {
                tracing::info!("the pool's gateway takes no live logs; watchers read the stored chunks");
                return;
            }
            tracing::debug!(error = %e, "a live log post failed; the lines are in the stored chunk");
        }
    }
}
