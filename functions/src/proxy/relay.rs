//! A replica's answer on its way to the visitor: each frame passed on as the replica sends it
//! (no whole-answer buffer, no size limit), read from the replica only when the visitor's
//! connection takes the previous one (hyper polls the body as it writes). Read to its end,
//! the connection to the replica is kept for the next request; dropped before (the visitor
//! went away), it is closed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::*;

/// The connection an answer came on, and where it goes back to.
pub(super) struct GiveBack {
    pub(super) links: Links,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) sender: SendRequest<Outgoing>,
}

impl GiveBack {
    /// Keeps the connection for the next request (up to [`IDLE_PER_REPLICA`] a replica, none
    /// unused for [`IDLE_FOR`]); the replica answered, so it has not failed.
    fn keep(self) {
        let mut links = self.links.lock().unwrap();
        let link = match links.get_mut(&self.host) {
            Some(ports) => ports.entry(self.port).or_default(),
            None => links.entry(self.host.clone()).or_default().entry(self.port).or_default(),
        };
        link.failed = None;
        link.idle.retain(|(at, _)| at.elapsed() < IDLE_FOR);
        if link.idle.len() >= IDLE_PER_REPLICA {
            drop(link.idle.remove(0));
        }
        link.idle.push((Instant::now(), self.sender));
    }
}

/// A replica's answer body, passed on frame by frame.
pub struct Relay {
    body: Incoming,
    back: Option<GiveBack>,
    /// The request, counted under way until the answer has gone (or the visitor has).
    flight: Option<super::stats::Flight>,
}

impl Relay {
    pub(super) fn new(body: Incoming, back: GiveBack) -> Relay {
        let mut r = Relay { body, back: Some(back), flight: None };
        r.ended();
        r
    }

    /// Counts the request under way as long as its answer is.
    pub(super) fn hold(&mut self, flight: super::stats::Flight) {
        self.flight = Some(flight);
    }

    /// At the answer's end, its connection goes back.
    fn ended(&mut self) {
        if self.body.is_end_stream()
            && let Some(b) = self.back.take()
        {
            b.keep();
        }
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(b) = this.back.take() {
                    b.keep();
                }
                this.flight = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.ended();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // The connection is broken: never kept.
                this.back = None;
                Poll::Ready(Some(Err(io::Error::other(format!("the replica broke off its answer ({e})")))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
