//! What a caller may do with a key: a user within their own prefix (data, code, requests),
//! a job's workers within that job, its dataset and its serving registrations.

use super::*;

/// What a user may do with a key of their own.
#[derive(Debug, PartialEq)]
pub(super) enum Access {
    Read,
    /// data/… and code/…: written freely, deleted (data) freely.
    Write {
        deletable: bool,
    },
    /// request.json: written once.
    CreateOnly,
    /// A job's status records, log chunks and allocation records (workers): each written once.
    Append,
}

/// What `who` may do with `key`.
pub(super) fn access(who: &Caller, key: &str) -> Result<Access, ApiError> {
    match who {
        Caller::User(a) => user_access(a, key),
        Caller::Worker(g) => worker_access(g, key),
    }
}

/// Where a job's workers may list: the job, its dataset, its serving registrations.
pub(super) fn worker_prefixes(g: &WorkerGrant) -> Vec<String> {
    let mut v = vec![g.job_key().prefix()];
    if let Some(d) = &g.data {
        v.push(format!("{}/", aic_core::layout::data_key(&g.owner, d).trim_end_matches('/')));
    }
    v.push(aic_core::layout::serving_prefix(g.job.as_str()));
    v
}

/// What a job's workers may do with `key`: read the job and its dataset; write its logs, GPU
/// samples, outputs, status, allocation records and rendezvous (not its request, manifest or code);
/// write and delete its serving registrations. Nothing else.
pub(super) fn worker_access(g: &WorkerGrant, key: &str) -> Result<Access, ApiError> {
    if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(bad(format!("{key}: not a valid object key")));
    }
    let job = g.job_key().prefix();
    if let Some(rest) = key.strip_prefix(&job) {
        let first = rest.split('/').next().unwrap_or_default();
        let nested = rest.contains('/');
        return Ok(match first {
            "logs" | "metrics" | "allocs" | "status" if nested => Access::Append,
            "output" | "rendezvous" if nested => Access::Write { deletable: false },
            "status.json" => Access::Write { deletable: false },
            _ => Access::Read,
        });
    }
    let prefixes = worker_prefixes(g);
    if prefixes.len() == 3 && key.starts_with(&prefixes[1]) {
        return Ok(Access::Read);
    }
    if key.starts_with(prefixes.last().expect("serving prefix")) {
        return Ok(Access::Write { deletable: true });
    }
    Err(err(StatusCode::FORBIDDEN, format!("{key}: the workers of job {} may not reach it", g.job)))
}

/// What a user may do with `key`; refuses keys outside their prefix or of no known kind.
pub(super) fn user_access(who: &Address, key: &str) -> Result<Access, ApiError> {
    let mine = aic_core::layout::user_prefix(who);
    let forbidden = |why: String| err(StatusCode::FORBIDDEN, why);
    let Some(rest) = key.strip_prefix(&mine) else {
        return Err(forbidden(format!("{key}: not under your prefix {mine}")));
    };
    if rest.is_empty() || rest.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(bad(format!("{key}: not a valid object key")));
    }
    if rest.starts_with("data/") {
        return Ok(Access::Write { deletable: true });
    }
    match classify(key) {
        KeyKind::Request(_) | KeyKind::ResumeRequest(..) => Ok(Access::CreateOnly),
        _ => {
            let segs: Vec<&str> = rest.split('/').collect();
            // The id as the pool spells it (lower case): another spelling is another key that
            // nothing else (markers, listings, clean-up) would find.
            let canonical = segs.get(1).is_some_and(|j| j.parse::<JobId>().is_ok_and(|id| id.as_str() == *j));
            if segs.len() >= 4 && segs[0] == "jobs" && canonical && segs[2] == "code" {
                Ok(Access::Write { deletable: false })
            } else {
                Ok(Access::Read)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";

    #[test]
    fn users_write_data_code_and_requests_of_their_own_only() {
        let a = Caller::User(A.parse().unwrap());
        let job = JobId::generate();
        let mine = format!("users/{A}/");
        assert_eq!(access(&a, &format!("{mine}data/x/y.csv")).unwrap(), Access::Write { deletable: true });
        assert_eq!(access(&a, &format!("{mine}jobs/{job}/code/train.py")).unwrap(), Access::Write { deletable: false });
        assert_eq!(access(&a, &format!("{mine}jobs/{job}/request.json")).unwrap(), Access::CreateOnly);
        assert_eq!(access(&a, &format!("{mine}jobs/{job}/manifest.json")).unwrap(), Access::Read);
        // A resume: written once by its owner; its run's manifest is the pool's.
        assert_eq!(access(&a, &format!("{mine}jobs/{job}/runs/1/request.json")).unwrap(), Access::CreateOnly);
        assert_eq!(access(&a, &format!("{mine}jobs/{job}/runs/1/manifest.json")).unwrap(), Access::Read);
        assert_eq!(access(&a, &format!("{mine}jobs/{job}/status/00000001.json")).unwrap(), Access::Read);
        assert_eq!(access(&a, &format!("{mine}jobs/{job}/output/model.npz")).unwrap(), Access::Read);
        let other = "users/0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc/data/x";
        assert_eq!(access(&a, other).unwrap_err().0, StatusCode::FORBIDDEN);
        assert_eq!(access(&a, &format!("{mine}data/../../x")).unwrap_err().0, StatusCode::BAD_REQUEST);
        assert_eq!(access(&a, "pool/payments/1/0x.json").unwrap_err().0, StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_jobs_workers_reach_that_job_its_dataset_and_its_serving_records_only() {
        let job = JobId::generate();
        let g = WorkerGrant {
            owner: A.parse().unwrap(),
            job: job.clone(),
            data: Some("digits".into()),
            allocs: 1,
            exp: i64::MAX,
        };
        let w = Caller::Worker(g.clone());
        let j = format!("users/{A}/jobs/{job}/");
        let read = [
            format!("{j}manifest.json"),
            format!("{j}request.json"),
            format!("{j}runs/1/request.json"),
            format!("{j}runs/1/manifest.json"),
            format!("{j}code/train.py"),
            format!("users/{A}/data/digits/digits.csv"),
        ];
        for k in &read {
            assert_eq!(access(&w, k).unwrap(), Access::Read, "{k}");
        }
        for k in [
            format!("{j}status/00000003.json"),
            format!("{j}logs/0/00000001.log"),
            format!("{j}metrics/0/00000001.jsonl"),
            format!("{j}allocs/0/1.json"),
        ] {
            assert_eq!(access(&w, &k).unwrap(), Access::Append, "{k}");
        }
        for k in [format!("{j}status.json"), format!("{j}output/model.npz"), format!("{j}rendezvous/0/1.json")] {
            assert_eq!(access(&w, &k).unwrap(), Access::Write { deletable: false }, "{k}");
        }
        assert_eq!(access(&w, &format!("pool/serving/{job}/0.json")).unwrap(), Access::Write { deletable: true });
        let other_job = JobId::generate();
        for k in [
            format!("users/{A}/jobs/{other_job}/output/model.npz"),
            format!("users/{A}/jobs/{other_job}/metrics/0/00000000.jsonl"),
            format!("users/{A}/data/other/x.csv"),
            format!("users/{A}/data/digits-2/x.csv"),
            "users/0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc/data/digits/x.csv".to_string(),
            format!("pool/serving/{other_job}/0.json"),
            "pool/payments/1/0x.json".to_string(),
            format!("pool/names/{A}/digits/{job}.json"),
        ] {
            assert_eq!(access(&w, &k).unwrap_err().0, StatusCode::FORBIDDEN, "{k}");
        }
        assert_eq!(access(&w, &format!("{j}output/../../{other_job}/x")).unwrap_err().0, StatusCode::BAD_REQUEST);
        assert_eq!(worker_prefixes(&g), [j, format!("users/{A}/data/digits/"), format!("pool/serving/{job}/")]);
    }
}
