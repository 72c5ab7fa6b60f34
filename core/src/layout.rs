//! The bucket's key layout (DESIGN.md, "State lives in the bucket"), in one place.
//!
//! ```text
//! users/<addr>/data/...                         datasets
//! users/<addr>/jobs/<job>/request.json          signed request (create-only)
//! users/<addr>/jobs/<job>/code/...              script or project bundle
//! users/<addr>/jobs/<job>/runs/<run>/request.json    a resume: the owner asks for paid run <run> (1..)
//! users/<addr>/jobs/<job>/runs/<run>/manifest.json   that run's manifest, by validate
//! users/<addr>/jobs/<job>/manifest.json         written by validate (create-only)
//! users/<addr>/jobs/<job>/status/<seq>.json     transitions (each create-only)
//! users/<addr>/jobs/<job>/status.json           latest-state snapshot
//! users/<addr>/jobs/<job>/allocs/<attempt>/<index>.json      what each allocation's program did
//! users/<addr>/jobs/<job>/rendezvous/<attempt>/<index>.json  where each allocation listens
//! users/<addr>/jobs/<job>/logs/<alloc>/<n>.log  log chunks
//! users/<addr>/jobs/<job>/metrics/<alloc>/<n>.jsonl  GPU use samples (`GpuSample` a line)
//! users/<addr>/jobs/<job>/output/...            checkpoints and results
//! users/<addr>/payments/<job>.json              a payment the owner's browser wallet is sending (the gateway's)
//! pool/ids/<job>.json                           which owner a job id is, pool-wide (create-only)
//! pool/payments/<chain>/<tx>.json               payment claims (create-only)
//! pool/serving/<deployment>/<alloc>.json        serving registrations
//! pool/names/<addr>/<name>/<deployment>.json    an owner's deployments by name (the stable route)
//! pool/inbox/<ulid>.json                        the poller's inbox: a request URL was signed
//! pool/poller/state.json                        the poller's cursor and waiting set
//! pool/gang/<job>.json                          a training job waiting to be placed whole (Nomad)
//! pool/redrive/<hash>.json                      an event whose handling must be tried again
//! pool/usage/<addr>/<job>/<attempt>-<index>-<run>.json  what an allocation used (the scheduler's)
//! pool/settlements/<addr>/<job>/<run>.json      how a paid run was settled (charged, refunded)
//! pool/exec/<addr>/<job>/<session>.json         an `aic exec` session: who, when, where, the command, its exit
//! pool/code-pending/<addr>/<job>.json           a job whose code the gateway signed uploads for and that is not paid yet
//! pool/secrets/<addr>/<NAME>.json               a user's secret, sealed with the pool's key (`vault`)
//! ```
//!
//! No other file spells a key: a test (`core/tests/it/layout_only.rs`) fails on a `"users/` or
//! `"pool/` string outside this one.

use aic_schemas::{Address, JobId};

/// Width of zero-padded sequence numbers, so that keys sort as numbers.
const SEQ_WIDTH: usize = 8;

pub fn user_prefix(owner: &Address) -> String {
    format!("users/{owner}/")
}

/// `users/<addr>/data/<rel>`.
/// `users/<addr>/payments/<job>.json`: a payment the owner's browser wallet is sending for a
/// job, kept by the pool (the gateway alone writes it) so that a reload or a retry follows it
/// instead of paying again.
pub fn pending_payment(owner: &Address, job: &JobId) -> String {
    format!("{}{job}.json", pending_payments(owner))
}

/// `users/<addr>/payments/`: the payments kept for an owner's browser wallet.
pub fn pending_payments(owner: &Address) -> String {
    format!("users/{owner}/payments/")
}

pub fn data_key(owner: &Address, rel: &str) -> String {
    format!("users/{owner}/data/{}", rel.trim_start_matches('/'))
}

pub fn jobs_prefix(owner: &Address) -> String {
    format!("users/{owner}/jobs/")
}

/// `users/<addr>/index/`: a folder per job the pool took in, named by the job's id with every
/// base-32 digit inverted ([`invert_id`]), so that a listing (key order, from a given key)
/// gives the newest first, a page at a time, however long the history.
pub fn job_index_prefix(owner: &Address) -> String {
    format!("users/{owner}/index/")
}

/// The marker of `job` in its owner's index (empty; written once, by validate).
pub fn job_index_marker(job: &JobKey) -> String {
    format!("{}{}/job", job_index_prefix(&job.owner), invert_id(job.job.as_str()).unwrap_or_default())
}

/// A job id (a lower-case ULID) with each digit `d` turned into `31 - d`: later ids sort
/// first. Its own inverse; `None` for a name that is not such an id.
pub fn invert_id(id: &str) -> Option<String> {
    const DIGITS: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    id.bytes().map(|b| DIGITS.iter().position(|&d| d == b).map(|i| DIGITS[31 - i] as char)).collect()
}

/// `pool/ids/<job>.json`: which owner a job id is, pool-wide (claimed create-only by validate
/// before anything pool-wide uses the id: Nomad's `aic-<job>`, `pool/gang/`, `pool/serving/`,
/// `/d/<job>/`, the local scheduler's folders).
pub fn job_id_claim(job: &aic_schemas::JobId) -> String {
    format!("pool/ids/{job}.json")
}

pub fn payment_claim(chain_id: u64, tx: &str) -> String {
    format!("pool/payments/{chain_id}/{}.json", tx.to_ascii_lowercase())
}

/// `pool/serving/<deployment>/`: the deployment's serving registrations.
/// When `owner` last signed out of this pool (`{"not_before": unix ms}`): sessions
/// issued, and sign-in messages signed, before then are refused. Written by the pool alone.
pub fn signed_out(owner: &Address) -> String {
    format!("pool/sessions/{owner}.json")
}

/// An owner's secret, sealed (`vault`).
pub fn secret(owner: &Address, name: &str) -> String {
    format!("pool/secrets/{owner}/{name}.json")
}

/// Where an owner's secrets are.
pub fn secrets_prefix(owner: &Address) -> String {
    format!("pool/secrets/{owner}/")
}

pub fn serving_prefix(deployment: &str) -> String {
    format!("pool/serving/{deployment}/")
}

pub fn serving_registration(deployment: &str, alloc: &str) -> String {
    format!("{}{alloc}.json", serving_prefix(deployment))
}

/// `pool/autoscale/`: the autoscaled deployments going, one record each (`{owner, deployment}`),
/// written by dispatch; the autoscaler removes one whose deployment has ended.
pub const AUTOSCALED: &str = "pool/autoscale/";

pub fn autoscaled(deployment: &str) -> String {
    format!("{AUTOSCALED}{deployment}.json")
}

/// `pool/serving-load/<deployment>/<host>.json`: the requests a functions host has had under
/// way for an autoscaled deployment lately, rewritten every second.
pub fn serving_load_prefix(deployment: &str) -> String {
    format!("pool/serving-load/{deployment}/")
}

pub fn serving_load(deployment: &str, host: &str) -> String {
    format!("{}{host}.json", serving_load_prefix(deployment))
}

/// `pool/serving-stats/<deployment>/<YYYYMMDDHH>/`: a deployment's request figures of one
/// hour, a document per minute and functions host (`servingstats`).
pub fn serving_stats_hour(deployment: &str, hour: chrono::DateTime<chrono::Utc>) -> String {
    format!("pool/serving-stats/{deployment}/{}/", hour.format("%Y%m%d%H"))
}

pub fn serving_stats_minute(deployment: &str, minute: chrono::DateTime<chrono::Utc>, host: &str) -> String {
    format!("{}{}-{host}.json", serving_stats_hour(deployment, minute), minute.format("%M"))
}

/// `pool/deploy-keys/<owner>/<scope>/`: the keys to `owner`'s private deployment `scope` (its
/// name, or its id when it has none), written by the pool alone.
pub fn deploy_keys_prefix(owner: &Address, scope: &str) -> String {
    format!("pool/deploy-keys/{owner}/{scope}/")
}

pub fn deploy_key(owner: &Address, scope: &str, id: &str) -> String {
    format!("{}{id}.json", deploy_keys_prefix(owner, scope))
}

/// The poller's inbox: `pool/inbox/<ulid>.json` for each request URL the gateway signed.
pub const POLLER_INBOX: &str = "pool/inbox/";
/// One marker per request a wallet was given an upload URL for and the poller still waits
/// on: `pool/inbox-owners/<owner>/<job>-<run>` (what bounds a wallet's share of the inbox).
pub fn inbox_marker(job: &JobKey, run: u32) -> String {
    format!("pool/inbox-owners/{}/{}-{run}", job.owner, job.job)
}

/// A job whose code the gateway signed uploads for and that validate has not taken in yet:
/// its code counts against its owner's storage quota (`pool/code-pending/<owner>/<job>.json`).
pub fn code_pending(owner: &Address, job: &JobId) -> String {
    format!("{}{job}.json", code_pending_prefix(owner))
}

pub fn code_pending_prefix(owner: &Address) -> String {
    format!("pool/code-pending/{owner}/")
}

pub fn inbox_markers(owner: &Address) -> String {
    format!("pool/inbox-owners/{owner}/")
}
/// The poller's cursor and the requests it waits for.
pub const POLLER_STATE: &str = "pool/poller/state.json";

/// Events whose handling was deferred (a payment awaiting confirmations, the chain or the
/// scheduler down), tried again by the functions themselves.
pub const REDRIVE: &str = "pool/redrive/";

/// The one entry of deferred work for object `key` (a hash, so that a key deferred twice
/// has one entry).
pub fn redrive_entry(key: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(key.as_bytes());
    format!("{REDRIVE}{}.json", &hex::encode(h)[..32])
}

/// What the job's allocations used, as the scheduler measured it (no worker token reaches
/// `pool/`).
pub fn usage_prefix(job: &JobKey) -> String {
    format!("pool/usage/{}/{}/", job.owner, job.job)
}

/// One run of allocation `index` in `attempt` (`run` tells runs of one allocation apart).
pub fn usage_record(job: &JobKey, attempt: u32, index: u32, run: &str) -> String {
    format!("{}{attempt}-{index}-{run}.json", usage_prefix(job))
}

/// How the job's paid runs were settled.
pub fn settlements_prefix(job: &JobKey) -> String {
    format!("pool/settlements/{}/{}/", job.owner, job.job)
}

/// How paid run `run` of the job was settled.
pub fn settlement(job: &JobKey, run: u32) -> String {
    format!("{}{run}.json", settlements_prefix(job))
}

/// An `aic exec` session's record (never its input or output).
pub fn exec_record(job: &JobKey, session: &str) -> String {
    format!("pool/exec/{}/{}/{session}.json", job.owner, job.job)
}

/// A part of an upload through the gateway's host (`/v1/multipart` on a store that cannot
/// presign URLs), kept until the upload is completed or aborted.
pub fn upload_parts(upload: &str) -> String {
    format!("pool/uploads/{upload}/")
}

pub fn upload_part(upload: &str, part: u32) -> String {
    format!("{}{part:05}", upload_parts(upload))
}

/// Training jobs waiting for room to start every rank at once (the Nomad backend's queue).
pub const GANG_WAITING: &str = "pool/gang/";

/// A training job waiting to be placed whole: job ids are ULIDs, so the listing is in order
/// of submission.
pub fn gang_waiting(job: &JobId) -> String {
    format!("{GANG_WAITING}{job}.json")
}

/// `pool/names/<addr>/<name>/`: the deployments named `name` by `owner`, one record each,
/// written by dispatch; the newest with a live replica answers `/n/<addr>/<name>/`.
pub fn serving_names_prefix(owner: &Address, name: &str) -> String {
    format!("{}{name}/", serving_names_of(owner))
}

/// `pool/names/<addr>/`: every name of `owner`'s deployments.
pub fn serving_names_of(owner: &Address) -> String {
    format!("pool/names/{owner}/")
}

pub fn serving_name(owner: &Address, name: &str, deployment: &JobId) -> String {
    format!("{}{deployment}.json", serving_names_prefix(owner, name))
}

/// One job of one owner; builds every key under `users/<addr>/jobs/<job>/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobKey {
    pub owner: Address,
    pub job: JobId,
}

impl JobKey {
    pub fn new(owner: Address, job: JobId) -> Self {
        JobKey { owner, job }
    }
    pub fn prefix(&self) -> String {
        format!("users/{}/jobs/{}/", self.owner, self.job)
    }
    pub fn request(&self) -> String {
        self.prefix() + "request.json"
    }
    pub fn manifest(&self) -> String {
        self.prefix() + "manifest.json"
    }
    /// The owner's request to start paid run `run` (1.. : `aic resume`).
    pub fn run_request(&self, run: u32) -> String {
        format!("{}runs/{run}/request.json", self.prefix())
    }
    /// The manifest of paid run `run`: `manifest.json` for the first, then the resumes'.
    pub fn run_manifest(&self, run: u32) -> String {
        match run {
            0 => self.manifest(),
            n => format!("{}runs/{n}/manifest.json", self.prefix()),
        }
    }
    pub fn code_prefix(&self) -> String {
        self.prefix() + "code/"
    }
    pub fn status_prefix(&self) -> String {
        self.prefix() + "status/"
    }
    pub fn status_record(&self, seq: u64) -> String {
        format!("{}status/{seq:0SEQ_WIDTH$}.json", self.prefix())
    }
    pub fn status_snapshot(&self) -> String {
        self.prefix() + "status.json"
    }
    pub fn allocs_prefix(&self) -> String {
        self.prefix() + "allocs/"
    }
    /// What allocation `alloc` of start `attempt` (0, then 1.. after a lost allocation) did.
    pub fn alloc_result(&self, attempt: u32, alloc: u32) -> String {
        format!("{}allocs/{attempt}/{alloc}.json", self.prefix())
    }
    /// Where allocations find each other (host, ports, the leader's SSH key).
    pub fn rendezvous_prefix(&self) -> String {
        self.prefix() + "rendezvous/"
    }
    pub fn rendezvous(&self, attempt: u32, alloc: u32) -> String {
        format!("{}rendezvous/{attempt}/{alloc}.json", self.prefix())
    }
    pub fn logs_prefix(&self) -> String {
        self.prefix() + "logs/"
    }
    pub fn log_chunk(&self, alloc: u32, n: u64) -> String {
        format!("{}logs/{alloc}/{n:0SEQ_WIDTH$}.log", self.prefix())
    }
    pub fn metrics_prefix(&self) -> String {
        self.prefix() + "metrics/"
    }
    pub fn metrics_chunk(&self, alloc: u32, n: u64) -> String {
        format!("{}metrics/{alloc}/{n:0SEQ_WIDTH$}.jsonl", self.prefix())
    }
    pub fn output_prefix(&self) -> String {
        self.prefix() + "output/"
    }
}

/// What a key is, for routing events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Request(JobKey),
    /// `runs/<run>/request.json`: the owner asks for another paid run (`aic resume`).
    ResumeRequest(JobKey, u32),
    /// `manifest.json`, or a later run's `runs/<run>/manifest.json`.
    Manifest(JobKey),
    StatusRecord(JobKey, u64),
    /// `status.json`, the job's latest state (written with every transition).
    StatusSnapshot(JobKey),
    /// Any other key (data, code, logs, outputs, pool records).
    Other,
}

/// Parses a key of the layout. Keys that only look alike (a bad address, a bad job id)
/// are `Other`.
pub fn classify(key: &str) -> KeyKind {
    let parts: Vec<&str> = key.split('/').collect();
    let job_key = || -> Option<JobKey> {
        if parts.len() < 5 || parts[0] != "users" || parts[2] != "jobs" {
            return None;
        }
        // Keys carry lower-case addresses only; anything else is not ours.
        if parts[1].bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        Some(JobKey::new(parts[1].parse().ok()?, parts[3].parse().ok().filter(|j: &JobId| j.as_str() == parts[3])?))
    };
    match (parts.len(), job_key()) {
        (5, Some(k)) if parts[4] == "request.json" => KeyKind::Request(k),
        (5, Some(k)) if parts[4] == "manifest.json" => KeyKind::Manifest(k),
        (5, Some(k)) if parts[4] == "status.json" => KeyKind::StatusSnapshot(k),
        (7, Some(k)) if parts[4] == "runs" => match parts[5].parse::<u32>() {
            Ok(run) if run > 0 && parts[5] == run.to_string() && parts[6] == "request.json" => {
                KeyKind::ResumeRequest(k, run)
            }
            Ok(run) if run > 0 && parts[5] == run.to_string() && parts[6] == "manifest.json" => KeyKind::Manifest(k),
            _ => KeyKind::Other,
        },
        (6, Some(k)) if parts[4] == "status" => {
            match parts[5].strip_suffix(".json").and_then(|n| n.parse::<u64>().ok()) {
                Some(seq) => KeyKind::StatusRecord(k, seq),
                None => KeyKind::Other,
            }
        }
        _ => KeyKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverted_ids_sort_newest_first_and_invert_back() {
        let (a, b) = (JobId::generate(), JobId::generate());
        let (older, newer) = if a < b { (a, b) } else { (b, a) };
        let (io, inew) = (invert_id(older.as_str()).unwrap(), invert_id(newer.as_str()).unwrap());
        assert!(inew < io, "{inew} sorts before {io}");
        assert_eq!(invert_id(&io).as_deref(), Some(older.as_str()));
        assert_eq!(invert_id("01ARZ3NDEKTSV4RRFFQ69G5FAV"), None, "upper case is not an id of ours");
        let k = JobKey::new("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap(), newer);
        assert_eq!(classify(&job_index_marker(&k)), KeyKind::Other);
    }

    #[test]
    fn keys_round_trip_through_classify() {
        let k = JobKey::new("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap(), JobId::generate());
        assert_eq!(classify(&k.request()), KeyKind::Request(k.clone()));
        assert_eq!(classify(&k.manifest()), KeyKind::Manifest(k.clone()));
        assert_eq!(classify(&k.status_record(7)), KeyKind::StatusRecord(k.clone(), 7));
        assert_eq!(classify(&k.status_snapshot()), KeyKind::StatusSnapshot(k.clone()));
        assert!(k.status_record(7).ends_with("status/00000007.json"));
        assert_eq!(classify(&k.run_request(2)), KeyKind::ResumeRequest(k.clone(), 2));
        assert_eq!(k.run_manifest(0), k.manifest());
        assert_eq!(classify(&k.run_manifest(2)), KeyKind::Manifest(k.clone()));
        for odd in ["runs/0/request.json", "runs/02/request.json", "runs/x/manifest.json", "runs/1/other.json"] {
            assert_eq!(classify(&format!("{}{odd}", k.prefix())), KeyKind::Other, "{odd}");
        }
        assert_eq!(classify(&k.log_chunk(0, 1)), KeyKind::Other);
        assert_eq!(classify("users/0xnope/jobs/x/request.json"), KeyKind::Other);
        let upper = k.request().replace("0xf39fd6", "0xF39FD6");
        assert_eq!(classify(&upper), KeyKind::Other);
    }
}
