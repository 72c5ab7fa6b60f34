//! A visitor's request body on its way to a replica. A small body of known length is held
//! whole, so a request that failed at one replica goes to the next with it; any other (an
//! upload of a large file to a model, a chunked one) is passed on as it comes, read from the
//! visitor only as fast as the replica takes it, and goes to another replica only while none
//! of it has left (a replica that could not be reached, a kept connection it had closed).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

use super::*;

/// Bodies up to this size, of known length, are held whole (and may be sent again).
pub const HELD: u64 = 64 * 1024;
/// Largest request body passed on to a replica.
pub const MAX_BODY: u64 = 1 << 30;
/// Longest pause between two parts of a streamed body (as nginx's `client_body_timeout`).
pub const BODY_IDLE: Duration = Duration::from_secs(60);
/// After its first minute, a streamed body must have come at this many bytes a second on
/// average: a visitor trickling a byte a minute does not hold a connection for ever.
pub const MIN_RATE: u64 = 8 * 1024;

/// A request's body for a replica: held whole, or streamed from the visitor.
pub enum Outgoing {
    Held(Option<Bytes>),
    Streamed(Box<Streamed>),
}

/// A visitor's body passed on as it comes.
pub struct Streamed {
    body: Incoming,
    idle: Pin<Box<Sleep>>,
    sent: u64,
    began: Instant,
    /// Told when the body has been passed on whole (or broke off).
    ended: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Outgoing {
    /// The visitor's body: held when it is small and its length known (read within
    /// `within`), else streamed. `Err`: the answer to give instead (too large, too slow).
    pub async fn of(body: Incoming, within: Duration) -> Result<Outgoing, Answer> {
        if body.is_end_stream() {
            return Ok(Outgoing::Held(None));
        }
        let len = body.size_hint().exact();
        if len.is_some_and(|l| l > MAX_BODY) {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over the serving gateway's {MAX_BODY}-byte limit"),
            ));
        }
        if len.is_some_and(|l| l <= HELD) {
            use http_body_util::BodyExt;
            return match tokio::time::timeout(within, body.collect()).await {
                Ok(Ok(b)) => Ok(Outgoing::Held(Some(b.to_bytes()))),
                Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, format!("the request body broke off ({e})"))),
                Err(_) => Err(error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body was not sent within {} s", within.as_secs()),
                )),
            };
        }
        Ok(Outgoing::Streamed(Box::new(Streamed {
            body,
            idle: Box::pin(tokio::time::sleep(BODY_IDLE)),
            sent: 0,
            began: Instant::now(),
            ended: None,
        })))
    }

    /// When the body will have been passed on whole (a held one: at once); the wait for the
    /// replica's answer starts then.
    pub(super) fn end(&mut self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        match self {
            Outgoing::Held(_) => None,
            Outgoing::Streamed(s) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                s.ended = Some(tx);
                Some(rx)
            }
        }
    }

    /// The same body again, for another replica: only a held one can be.
    pub(super) fn again(&self) -> Option<Outgoing> {
        match self {
            Outgoing::Held(b) => Some(Outgoing::Held(b.clone())),
            Outgoing::Streamed(_) => None,
        }
    }
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Outgoing::Held(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Outgoing::Streamed(s) => {
                let s = &mut **s;
                match Pin::new(&mut s.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(d) = frame.data_ref() {
                            s.sent += d.len() as u64;
                            if s.sent > MAX_BODY {
                                s.ended = None;
                                return Poll::Ready(Some(Err(io::Error::other(format!(
                                    "request body over the serving gateway's {MAX_BODY}-byte limit"
                                )))));
                            }
                            let secs = s.began.elapsed().as_secs();
                            if secs > BODY_IDLE.as_secs() && s.sent < secs * MIN_RATE {
                                s.ended = None;
                                return Poll::Ready(Some(Err(io::Error::other(format!(
                                    "the visitor sent its request body slower than {} KiB/s",
                                    MIN_RATE / 1024
                                )))));
                            }
                        }
                        s.idle.as_mut().reset(tokio::time::Instant::now() + BODY_IDLE);
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        s.ended = None;
                        Poll::Ready(Some(Err(io::Error::other(format!(
                            "the visitor broke off its request body ({e})"
                        )))))
                    }
                    Poll::Ready(None) => {
                        if let Some(tx) = s.ended.take() {
                            let _ = tx.send(());
                        }
                        Poll::Ready(None)
                    }
                    Poll::Pending => match s.idle.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::other(format!(
                            "the visitor sent nothing of its request body for {} s",
                            BODY_IDLE.as_secs()
                        ))))),
                        Poll::Pending => Poll::Pending,
                    },
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Held(b) => b.is_none(),
            Outgoing::Streamed(s) => s.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outgoing::Held(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            // hyper's counts what is left of it.
            Outgoing::Streamed(s) => s.body.size_hint(),
        }
    }
}
