//! Limits: requests are admitted from one token bucket per caller (a job's workers share
//! one sized for all of them), bodies from their declared length.

use super::*;

impl Caller {
    /// The token bucket it draws from, and how many callers' worth of rate it gets: a job's
    /// allocations share one bucket sized for all of them.
    pub(super) fn rate_key(&self) -> (String, f64) {
        match self {
            Caller::User(a) => (a.to_string(), 1.0),
            Caller::Worker(g) => (format!("job:{}", g.job), g.allocs.clamp(1, 1024) as f64),
        }
    }
}

impl Gateway {
    /// Token bucket per caller (`scale` callers' worth); `Err` carries the seconds to wait.
    pub(super) fn admit(&self, who: &str, scale: f64) -> Result<(), ApiError> {
        take_token(&self.buckets, self.cfg.rate * scale, self.cfg.burst * scale, who, Instant::now())
    }

    /// Checks a request before its body is read: `Content-Length` over the limit is refused here.
    pub fn precheck(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let len = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if len.is_some_and(|l| l > MAX_BODY as u64) {
            return Err(err(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over the gateway's {MAX_BODY}-byte limit; upload files through presigned URLs"),
            ));
        }
        Ok(())
    }
}

/// Takes one token from `who`'s bucket (`rate` per second, at most `burst`); `Err` says how
/// long to wait.
pub(super) fn take_token(
    buckets: &Mutex<HashMap<String, (f64, Instant)>>,
    rate: f64,
    burst: f64,
    who: &str,
    now: Instant,
) -> Result<(), ApiError> {
    let mut b = buckets.lock().unwrap();
    if b.len() > 100_000 {
        b.retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(60));
    }
    let (tokens, last) = b.entry(who.to_string()).or_insert((burst, now));
    *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(burst);
    *last = now;
    if *tokens < 1.0 {
        let wait = ((1.0 - *tokens) / rate).ceil().max(1.0) as u64;
        return Err(slow_down(wait, format!("too many requests; retry in {wait} s")));
    }
    *tokens -= 1.0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";

    #[test]
    fn a_jobs_allocations_share_a_bucket_sized_for_all_of_them() {
        let buckets = Mutex::new(HashMap::new());
        let now = Instant::now();
        let job = WorkerGrant { owner: A.parse().unwrap(), job: JobId::generate(), data: None, allocs: 8, exp: 0 };
        let (key, scale) = Caller::Worker(job).rate_key();
        assert_eq!(scale, 8.0);
        // rate 1/s, burst 2 per caller: the job's 8 allocations get 16 at once, not 2.
        for i in 0..16 {
            assert!(take_token(&buckets, scale, 2.0 * scale, &key, now).is_ok(), "call {i}");
        }
        let e = take_token(&buckets, scale, 2.0 * scale, &key, now).unwrap_err();
        assert_eq!(e.0, StatusCode::TOO_MANY_REQUESTS);
        // A user is one caller.
        let (user, one) = Caller::User(A.parse().unwrap()).rate_key();
        assert!(
            take_token(&buckets, one, 2.0, &user, now).is_ok() && take_token(&buckets, one, 2.0, &user, now).is_ok()
        );
        assert!(take_token(&buckets, one, 2.0, &user, now).is_err());
        assert!(take_token(&buckets, one, 2.0, &user, now + Duration::from_secs(1)).is_ok(), "refilled after 1 s");
    }
}
