//! `aic exec`: a command run inside a running allocation, relayed by the gateway.
//!
//! On a scheduler with an exec API of its own (Nomad's allocation exec, through its servers)
//! the gateway starts the command there and relays that session's frames the same way
//! (`pump`). Otherwise —
//! miners may sit behind NAT, so the gateway never dials one — each worker of a running job
//! keeps one long-poll open (`GET /v1/worker/exec?alloc=I`, its job's token) and picks up the
//! commands its job's owner asked for; it runs them beside the program (its folders, its
//! environment, its GPUs) and posts their output back in frames
//! (`POST /v1/worker/exec/<session>`). The owner starts a session (`POST
//! /v1/jobs/<id>/exec`) and reads its frames with long-polls (`GET /v1/exec/<session>?after=N`)
//! until the exit code. Only plain JSON requests: it works through any proxy in front of the
//! host. Sessions live in this host's memory (a pool with several functions hosts needs its
//! load balancer to keep a job's callers on one: by job id in the path), for 10 minutes at
//! most. Each is recorded in the bucket — who, when, which allocation, the command, the exit
//! code — never its input or output.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aic_core::layout::{self, JobKey};
use aic_core::status;
use aic_schemas::{Address, JobManifest, JobState};
use base64::Engine;
use bytes::Bytes;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiError, Gateway, Reply, bad, err, store_err};
use aic_core::grant::WorkerGrant;
use aic_core::scheduler::{ExecInput, ExecIo, ExecOutput, ExecStart, ScheduleError};
use std::sync::Arc;

mod sessions;

use sessions::*;
pub use sessions::{Frame, Relay};

/// How long a long-poll waits before it answers with nothing new.
pub(super) const POLL: Duration = Duration::from_secs(20);
/// How long a started session waits for its allocation's worker to pick it up.
pub(super) const PICKUP: Duration = Duration::from_secs(30);
/// How long a session is kept.
pub(super) const KEEP: Duration = Duration::from_secs(600);
/// Largest stdin a session takes, and output a worker posts at once.
pub(super) const MAX_STDIN: usize = 1 << 20;
/// Sessions open at once (not ended) per job, and per owner: what one user can hold of this
/// host's memory and of its workers' attention.
pub const MAX_SESSIONS_PER_JOB: usize = 8;
pub const MAX_SESSIONS_PER_OWNER: usize = 32;
/// Sessions an owner's calls keep in this host's memory, ended ones included (they are kept
/// for [`KEEP`] so that their output can still be read).
pub const MAX_HELD_PER_OWNER: usize = 64;
/// Output (base64) a session keeps that its owner has not read yet, and input its worker has
/// not read yet: past it, a post is refused with 429 until the other side reads (what was read
/// is dropped at once).
pub const MAX_UNREAD: usize = 4 << 20;

/// What a session record in the bucket holds.
#[derive(Serialize, Deserialize)]
struct Record {
    by: Address,
    at: chrono::DateTime<chrono::Utc>,
    alloc: u32,
    argv: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exit: Option<i32>,
}

#[derive(Deserialize)]
struct Start {
    #[serde(default)]
    alloc: u32,
    #[serde(default)]
    argv: Vec<String>,
    /// `{rows, cols}`: run it on a terminal (an interactive shell when `argv` is empty).
    #[serde(default)]
    tty: Option<Value>,
    /// Stream stdin as input frames instead of sending it with the command.
    #[serde(default)]
    stream: bool,
    /// Base64 of what the command reads on its stdin.
    #[serde(default)]
    stdin: String,
}

#[derive(Deserialize)]
struct Post {
    #[serde(default)]
    frames: Vec<Frame>,
    #[serde(default)]
    exit: Option<i32>,
}

/// A session the scheduler runs (Nomad's exec API): the owner's input goes to it, its
/// output comes into the session, as a worker would post it.
async fn pump(relay: Arc<Relay>, store: aic_core::Store, session: String, io: ExecIo, once: Option<Vec<u8>>) {
    let ExecIo { input, mut output } = io;
    if let Some(stdin) = once {
        let _ = input.send(ExecInput::Stdin(stdin)).await;
        let _ = input.send(ExecInput::Close).await;
    }
    // The owner's keystrokes, resizes and streamed stdin, in order.
    let feeder = {
        let (relay, session) = (relay.clone(), session.clone());
        tokio::spawn(async move {
            let mut next = 0;
            loop {
                let changed = relay.changed.notified();
                let frames: Vec<Value> = match relay.sessions.lock().unwrap().get_mut(&session) {
                    Some(s) if s.exit.is_none() => s.input_after(next).0,
                    _ => return,
                };
                next += frames.len();
                for f in frames {
                    let i = if f["eof"] == true {
                        ExecInput::Close
                    } else if let (Some(r), Some(c)) = (f["rows"].as_u64(), f["cols"].as_u64()) {
                        ExecInput::Resize { rows: r as u16, cols: c as u16 }
                    } else {
                        let d = f["d"].as_str().and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok());
                        ExecInput::Stdin(d.unwrap_or_default())
                    };
                    if input.send(i).await.is_err() {
                        return;
                    }
                }
                let _ = tokio::time::timeout(POLL, changed).await;
            }
        })
    };
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    loop {
        let (frame, exit) = match output.recv().await {
            Some(ExecOutput::Stdout(d)) => (Some(Frame { s: "o".into(), d: b64(&d) }), None),
            Some(ExecOutput::Stderr(d)) => (Some(Frame { s: "e".into(), d: b64(&d) }), None),
            Some(ExecOutput::Exited(code)) => (None, Some(code)),
            Some(ExecOutput::Failed(why)) => (
                Some(Frame { s: "e".into(), d: b64(format!("aic: the session ended: {why}\n").as_bytes()) }),
                Some(255),
            ),
            None => (None, Some(255)),
        };
        // What the owner has not read is bounded here too: Nomad's stream waits meanwhile
        // (a command printing without end, never read, would fill this host's memory).
        loop {
            let changed = relay.changed.notified();
            match relay.sessions.lock().unwrap().get(&session) {
                Some(s) if s.unread_output() > MAX_UNREAD => {}
                Some(_) => break,
                None => return feeder.abort(),
            }
            let _ = tokio::time::timeout(POLL, changed).await;
        }
        let record = {
            let mut sessions = relay.sessions.lock().unwrap();
            let Some(s) = sessions.get_mut(&session) else { break };
            s.frames.extend(frame);
            s.record.clone()
        };
        relay.changed.notify_waiters();
        if let Some(code) = exit {
            // Recorded before the owner hears of the end.
            record_exit(&store, &record, code).await;
            if let Some(s) = relay.sessions.lock().unwrap().get_mut(&session) {
                s.exit.get_or_insert(code);
            }
            relay.changed.notify_waiters();
            break;
        }
    }
    feeder.abort();
}

/// The session's record in the bucket gets its exit code.
async fn record_exit(store: &aic_core::Store, record: &str, code: i32) {
    if let Ok(Some(mut rec)) = store.get_json::<Record>(record, 64 * 1024).await {
        rec.exit = Some(code);
        if let Err(e) = store.put_json(record, &rec).await {
            tracing::warn!(record, error = %e, "cannot record an exec session's exit code");
        }
    }
}

impl Gateway {
    /// A long-poll: `look` at the sessions (told whether the wait is over) whenever they
    /// change, at least every `step`, until it answers; a waited-for session of a job that
    /// has ended (`ends_with_job`) is ended first.
    async fn long_poll(
        &self,
        step: Duration,
        ends_with_job: Option<&str>,
        mut look: impl FnMut(&mut HashMap<String, Session>, bool) -> Result<Option<Value>, ApiError>,
    ) -> Reply {
        let deadline = Instant::now() + POLL;
        loop {
            // Taken before looking, so that a change right after the look is not missed.
            let changed = self.exec.changed.notified();
            if let Some(v) = look(&mut self.exec.sessions.lock().unwrap(), Instant::now() >= deadline)? {
                return Ok(v);
            }
            let wait = deadline.saturating_duration_since(Instant::now()).min(step);
            if tokio::time::timeout(wait, changed).await.is_err()
                && let Some(session) = ends_with_job
            {
                self.end_if_job_ended(session).await;
            }
        }
    }

    /// The owner starts a command in allocation `alloc` of their running job.
    pub(super) async fn exec_start(&self, who: &Address, id: &str, body: &Bytes) -> Reply {
        let job = self.job_key(who, id)?;
        let b: Start = serde_json::from_slice(body).map_err(|e| bad(format!("want {{alloc, argv, stdin}}: {e}")))?;
        if (b.argv.is_empty() && b.tty.is_none()) || b.argv.first().is_some_and(|a| a.is_empty()) {
            return Err(bad("name the command to run: `aic exec JOB -- CMD ARGS…`"));
        }
        if b.stdin.len() > MAX_STDIN * 4 / 3 + 4 {
            return Err(err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "stdin over 1 MiB: copy the file with `aic data put` instead",
            ));
        }
        let Some(m) = self.ctx.store.get_json::<JobManifest>(&job.manifest(), 1 << 20).await.map_err(store_err)? else {
            return Err(err(StatusCode::NOT_FOUND, format!("no job {id} of yours")));
        };
        let state = status::current(&self.ctx.store, &job).await.map_err(store_err)?.map(|r| r.state);
        if state != Some(JobState::Running) {
            let now = state.map(|s| s.to_string()).unwrap_or_else(|| "not started".into());
            return Err(err(
                StatusCode::CONFLICT,
                format!("job {id} is {now}, not running: there is nothing to run a command in"),
            ));
        }
        if b.alloc >= m.request.miners {
            return Err(bad(format!(
                "job {id} has {}; allocations are numbered from 0",
                aic_core::plural(m.request.miners, "allocation")
            )));
        }
        self.exec.gc();
        // Refused early here; checked again as the session is taken in (starts in flight at
        // once could otherwise pass together).
        room_for(&self.exec.sessions.lock().unwrap(), &job)?;
        // A scheduler with an exec API of its own (Nomad) runs it; else the allocation's
        // worker picks it up here.
        let tty =
            b.tty.as_ref().map(|t| (t["rows"].as_u64().unwrap_or(24) as u16, t["cols"].as_u64().unwrap_or(80) as u16));
        let io = match self.ctx.scheduler.exec(&job, b.alloc, ExecStart { argv: b.argv.clone(), tty }).await {
            Ok(io) => io,
            Err(ScheduleError::Refused(why)) => return Err(err(StatusCode::CONFLICT, why)),
            Err(e) => {
                return Err(err(
                    StatusCode::BAD_GATEWAY,
                    format!("the pool's scheduler could not start the command: {e}"),
                ));
            }
        };
        let session = ulid::Ulid::new().to_string().to_lowercase();
        let record = layout::exec_record(&job, &session);
        let rec = Record { by: *who, at: chrono::Utc::now(), alloc: b.alloc, argv: b.argv.clone(), exit: None };
        self.ctx.store.put_json(&record, &rec).await.map_err(store_err)?;
        let once = (b.tty.is_none() && !b.stream)
            .then(|| base64::engine::general_purpose::STANDARD.decode(&b.stdin).unwrap_or_default());
        let refused = {
            let mut sessions = self.exec.sessions.lock().unwrap();
            let room = room_for(&sessions, &job);
            if room.is_ok() {
                sessions.insert(
                    session.clone(),
                    Session {
                        job,
                        alloc: b.alloc,
                        argv: b.argv,
                        // Sent with the command at once where the scheduler runs it: not kept.
                        stdin: if io.is_some() { String::new() } else { b.stdin },
                        tty: b.tty,
                        stream: b.stream,
                        input: vec![],
                        created: Instant::now(),
                        picked: io.is_some(),
                        frames: vec![],
                        read: 0,
                        input_read: 0,
                        exit: None,
                        record: record.clone(),
                    },
                );
            }
            room.err()
        };
        if let Some(e) = refused {
            let _ = self.ctx.store.delete(&record).await;
            return Err(e);
        }
        self.exec.changed.notify_waiters();
        if let Some(io) = io {
            tokio::spawn(pump(self.exec.clone(), self.ctx.store.clone(), session.clone(), io, once));
        }
        Ok(json!({ "session": session }))
    }

    /// The owner reads a session's frames after the first `after`, waiting for new ones.
    pub(super) async fn exec_read(&self, who: &Address, session: &str, after: usize) -> Reply {
        let look = |sessions: &mut HashMap<String, Session>, over: bool| {
            let s = sessions
                .get_mut(session)
                .filter(|s| s.job.owner == *who)
                .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no exec session {session} of yours")))?;
            let (frames, first) = s.output_after(after);
            if !s.picked && s.created.elapsed() > PICKUP {
                return Err(err(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "allocation {} of job {} did not pick the command up within {} s (its worker may have no gateway to reach, or be stopping)",
                        s.alloc,
                        s.job.job,
                        PICKUP.as_secs()
                    ),
                ));
            }
            Ok((!frames.is_empty() || s.exit.is_some() || over)
                .then(|| json!({ "frames": frames, "next": first + frames.len(), "exit": s.exit })))
        };
        self.long_poll(Duration::from_secs(2), Some(session), look).await
    }

    /// A session whose job has ended ends too (its worker is gone with its commands).
    async fn end_if_job_ended(&self, session: &str) {
        let job = match self.exec.sessions.lock().unwrap().get(session) {
            Some(s) if s.exit.is_none() && s.picked => s.job.clone(),
            _ => return,
        };
        if let Ok(Some(r)) = status::current(&self.ctx.store, &job).await
            && r.state.is_terminal()
        {
            if let Some(s) = self.exec.sessions.lock().unwrap().get_mut(session) {
                let why = format!("\r\naic: job {} is {}; the session ended with it\r\n", job.job, r.state);
                s.frames.push(Frame { s: "e".into(), d: base64::engine::general_purpose::STANDARD.encode(why) });
                s.exit.get_or_insert(129);
            }
            self.exec.changed.notify_waiters();
        }
    }

    /// A worker of the job waits for a command for its allocation.
    pub(super) async fn exec_next(&self, g: &WorkerGrant, alloc: u32) -> Reply {
        let job = g.job_key();
        let look = |sessions: &mut HashMap<String, Session>, over: bool| {
            if let Some((id, s)) = sessions.iter_mut().find(|(_, s)| s.job == job && s.alloc == alloc && !s.picked) {
                s.picked = true;
                // Handed over: not kept here any longer.
                let stdin = std::mem::take(&mut s.stdin);
                let v = json!({ "session": id, "argv": s.argv, "stdin": stdin, "tty": s.tty, "stream": s.stream });
                return Ok(Some(v));
            }
            Ok(over.then(|| json!({ "session": Value::Null })))
        };
        self.long_poll(POLL, None, look).await
    }

    /// A worker posts a session's output, and at the end its exit code.
    pub(super) async fn exec_post(&self, g: &WorkerGrant, session: &str, body: &Bytes) -> Reply {
        let p: Post = serde_json::from_slice(body).map_err(|e| bad(format!("want {{frames, exit}}: {e}")))?;
        let job = g.job_key();
        let done = {
            let mut sessions = self.exec.sessions.lock().unwrap();
            let s = sessions
                .get_mut(session)
                .filter(|s| s.job == job)
                .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no exec session {session} of this job")))?;
            for f in &p.frames {
                if base64::engine::general_purpose::STANDARD.decode(&f.d).is_err() || !matches!(f.s.as_str(), "o" | "e")
                {
                    return Err(bad("a frame is {s: o|e, d: base64}"));
                }
            }
            let more: usize = p.frames.iter().map(|f| f.d.len()).sum();
            if more > 0 && s.unread_output() + more > MAX_UNREAD {
                return Err(busy(format!(
                    "session {session}: its owner has not read its output yet; post again shortly"
                )));
            }
            s.frames.extend(p.frames);
            p.exit.filter(|_| s.exit.is_none()).map(|code| (s.record.clone(), code))
        };
        self.exec.changed.notify_waiters();
        if let Some((record, code)) = done {
            // Recorded before the owner hears of the end.
            record_exit(&self.ctx.store, &record, code).await;
            if let Some(s) = self.exec.sessions.lock().unwrap().get_mut(session) {
                s.exit.get_or_insert(code);
            }
            self.exec.changed.notify_waiters();
        }
        Ok(json!({ "ok": true }))
    }
}

impl Gateway {
    /// The owner's keystrokes and resizes for a terminal session.
    pub(super) async fn exec_input(&self, who: &Address, session: &str, body: &Bytes) -> Reply {
        #[derive(Deserialize)]
        struct In {
            frames: Vec<Value>,
        }
        let b: In = serde_json::from_slice(body).map_err(|e| bad(format!("want {{frames}}: {e}")))?;
        {
            let mut sessions = self.exec.sessions.lock().unwrap();
            let s = sessions
                .get_mut(session)
                .filter(|s| s.job.owner == *who)
                .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no exec session {session} of yours")))?;
            if s.tty.is_none() && !s.stream {
                return Err(bad("this session takes no input; its stdin went with the command"));
            }
            let more: usize = b.frames.iter().map(|f| f.to_string().len()).sum();
            if s.unread_input() + more > MAX_UNREAD {
                return Err(busy(format!(
                    "session {session}: the command has not read its input yet; send again shortly"
                )));
            }
            s.input.extend(b.frames);
        }
        self.exec.changed.notify_waiters();
        Ok(json!({ "ok": true }))
    }

    /// A worker waits for the owner's input to a terminal session after the first `after`.
    pub(super) async fn exec_input_next(&self, g: &WorkerGrant, session: &str, after: usize) -> Reply {
        let job = g.job_key();
        let look = |sessions: &mut HashMap<String, Session>, over: bool| {
            let s = sessions
                .get_mut(session)
                .filter(|s| s.job == job)
                .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no exec session {session} of this job")))?;
            let (frames, first) = s.input_after(after);
            Ok((!frames.is_empty() || s.exit.is_some() || over)
                .then(|| json!({ "frames": frames, "next": first + frames.len(), "ended": s.exit.is_some() })))
        };
        self.long_poll(POLL, None, look).await
    }
}

/// `after=N` of a read.
pub(super) fn after(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    q.get("after").map(|a| a.parse().map_err(|_| bad(format!("after={a:?} is not a number")))).unwrap_or(Ok(0))
}

/// `alloc=I` of a worker's long-poll.
pub(super) fn alloc_of(q: &HashMap<String, String>) -> Result<u32, ApiError> {
    q.get("alloc").map(|a| a.parse().map_err(|_| bad(format!("alloc={a:?} is not a number")))).unwrap_or(Ok(0))
}

#[cfg(test)]
mod tests {
    use super::after_dropping;

    /// What a reader has is dropped as soon as it asks past it, so a session holds only what
    /// its reader has not read; asking again from an older number gives what is left.
    #[test]
    fn frames_read_are_dropped_and_numbering_goes_on() {
        let (mut frames, mut dropped) = (vec![0, 1, 2, 3], 0);
        assert_eq!(after_dropping(&mut frames, &mut dropped, 0), (vec![0, 1, 2, 3], 0));
        assert_eq!(after_dropping(&mut frames, &mut dropped, 3), (vec![3], 3));
        assert_eq!((frames.len(), dropped), (1, 3), "frames 0 to 2 dropped");
        frames.extend([4, 5]);
        assert_eq!(after_dropping(&mut frames, &mut dropped, 1), (vec![3, 4, 5], 3), "an older number: what is left");
        assert_eq!(after_dropping(&mut frames, &mut dropped, 6), (vec![], 6));
        assert!(frames.is_empty());
        assert_eq!(after_dropping(&mut frames, &mut dropped, 9), (vec![], 9), "ahead of what there is");
    }
}
