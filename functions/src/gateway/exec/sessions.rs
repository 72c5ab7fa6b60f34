//! The exec sessions this host holds: their frames, what one owner and one job may hold at
//! once, and what is dropped once read.

use super::*;

/// One chunk of a command's output: `s` is `o` (stdout) or `e` (stderr), `d` base64.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Frame {
    pub s: String,
    pub d: String,
}

pub(super) struct Session {
    pub(super) job: JobKey,
    pub(super) alloc: u32,
    pub(super) argv: Vec<String>,
    pub(super) stdin: String,
    /// With a terminal (`aic shell`): its size, `{rows, cols}`; the owner's keystrokes and
    /// resizes then follow in `input`.
    pub(super) tty: Option<Value>,
    /// Without a terminal, stdin streamed as input frames (`aic exec -i`, `aic ssh-proxy`).
    pub(super) stream: bool,
    pub(super) input: Vec<Value>,
    pub(super) created: Instant,
    pub(super) picked: bool,
    /// Output frames not read by the owner yet: the first is frame number `read`.
    pub(super) frames: Vec<Frame>,
    pub(super) read: usize,
    /// Input frames (`input`) the worker has read and that are dropped: the first kept is
    /// input frame number `input_read`.
    pub(super) input_read: usize,
    pub(super) exit: Option<i32>,
    pub(super) record: String,
}

impl Session {
    pub(super) fn unread_output(&self) -> usize {
        self.frames.iter().map(|f| f.d.len()).sum()
    }

    pub(super) fn unread_input(&self) -> usize {
        self.input.iter().map(|f| f.to_string().len()).sum()
    }

    /// Output frames from number `after` on, dropping those before it (the owner has them),
    /// and the number of the first one given (`after`, or the first kept when it asked for
    /// frames already dropped).
    pub(super) fn output_after(&mut self, after: usize) -> (Vec<Frame>, usize) {
        after_dropping(&mut self.frames, &mut self.read, after)
    }

    /// Input frames from number `after` on, dropping those before it (the worker has them).
    pub(super) fn input_after(&mut self, after: usize) -> (Vec<Value>, usize) {
        after_dropping(&mut self.input, &mut self.input_read, after)
    }
}

/// `frames` hold the frames numbered from `*dropped` on: those before `after` are dropped,
/// and the rest given with the number of the first.
pub(super) fn after_dropping<T: Clone>(frames: &mut Vec<T>, dropped: &mut usize, after: usize) -> (Vec<T>, usize) {
    let seen = after.saturating_sub(*dropped).min(frames.len());
    frames.drain(..seen);
    *dropped += seen;
    let first = after.max(*dropped);
    (frames.iter().skip(first - *dropped).cloned().collect(), first)
}

/// Whether `job`'s owner may open one more session: the limits per job, per owner, and kept
/// per owner ([`MAX_SESSIONS_PER_JOB`], [`MAX_SESSIONS_PER_OWNER`], [`MAX_HELD_PER_OWNER`]).
pub(super) fn room_for(sessions: &HashMap<String, Session>, job: &JobKey) -> Result<(), ApiError> {
    let held = sessions.values().filter(|s| s.job.owner == job.owner).count();
    if held >= MAX_HELD_PER_OWNER {
        return Err(busy(format!(
            "{held} of your exec sessions are kept here (ended ones for 10 minutes): try again in a few minutes"
        )));
    }
    let open = sessions.values().filter(|s| s.exit.is_none());
    let (mine, this_job) =
        open.fold((0, 0), |(o, j), s| (o + (s.job.owner == job.owner) as usize, j + (s.job == *job) as usize));
    if this_job >= MAX_SESSIONS_PER_JOB {
        return Err(busy(format!(
            "job {} has {this_job} exec sessions open, the most at once: end one (or let it end) first",
            job.job
        )));
    }
    if mine >= MAX_SESSIONS_PER_OWNER {
        return Err(busy(format!(
            "you have {mine} exec sessions open, the most at once: end one (or let it end) first"
        )));
    }
    Ok(())
}

pub(super) fn busy(why: String) -> ApiError {
    err(StatusCode::TOO_MANY_REQUESTS, why)
}

#[derive(Default)]
pub struct Relay {
    pub(super) sessions: Mutex<HashMap<String, Session>>,
    pub(super) changed: tokio::sync::Notify,
}

impl Relay {
    pub(super) fn gc(&self) {
        self.sessions.lock().unwrap().retain(|_, s| s.created.elapsed() < KEEP);
    }
}
