//! The job request: what a user asks the pool to run, and signs.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Address;
use crate::validate::{self, FieldError, ValidationErrors};

/// Current version of the request document.
pub const REQUEST_VERSION: u32 = 1;

/// A job identifier: a ULID in lower case, so that ids sort by creation time in listings.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JsonSchema for JobId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "JobId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9a-hjkmnp-tv-z]{26}$",
            "description": "ULID in lower case"
        })
    }
}

impl JobId {
    /// A fresh id, ordered after every id made earlier on this clock.
    pub fn generate() -> Self {
        JobId(ulid::Ulid::new().to_string().to_ascii_lowercase())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// When the id was made (the ULID's timestamp).
    pub fn created(&self) -> Option<DateTime<Utc>> {
        let u = ulid::Ulid::from_string(&self.0.to_ascii_uppercase()).ok()?;
        DateTime::<Utc>::from_timestamp_millis(u.timestamp_ms() as i64)
    }
}

impl FromStr for JobId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        if lower.len() == 26 && ulid::Ulid::from_string(&lower.to_ascii_uppercase()).is_ok() {
            Ok(JobId(lower))
        } else {
            Err(format!("not a job id (26-character ULID): {:?}", s.chars().take(40).collect::<String>()))
        }
    }
}

impl TryFrom<String> for JobId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<JobId> for String {
    fn from(j: JobId) -> String {
        j.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a job does with its allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Run a script to completion (training); outputs are synced back.
    Train,
    /// Run a project as an HTTP service until its hours run out or it is removed.
    Serve,
}

/// How the worker starts the user's program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Launcher {
    /// The entrypoint run as a plain program (`python3 script.py ARGS` for a `.py`).
    #[default]
    Command,
    /// `mpirun` across every GPU slot of every miner.
    Mpi,
    /// `horovodrun` across every GPU slot of every miner.
    Horovod,
    /// `torchrun` with a c10d rendezvous at the leading miner.
    Torchrun,
}

impl FromStr for Launcher {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "command" => Ok(Launcher::Command),
            "mpi" => Ok(Launcher::Mpi),
            "horovod" => Ok(Launcher::Horovod),
            "torchrun" => Ok(Launcher::Torchrun),
            other => Err(format!("unknown launcher {other:?} (use command, mpi, horovod or torchrun)")),
        }
    }
}

/// The payment a request points at: an ERC-20 transfer on a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRef {
    pub chain_id: u64,
    /// Transaction hash, `0x` + 64 hex digits.
    pub tx: String,
}

/// A job request, written by its owner to `users/<owner>/jobs/<job_id>/request.json`.
///
/// Paths in it are relative: `entrypoint` to the job's `code/` folder, `data` to the owner's
/// `data/` folder. Nothing in a request can name a key outside the owner's own prefix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub version: u32,
    pub kind: JobKind,
    pub owner: Address,
    pub job_id: JobId,
    /// A short name for listings and deployments, `[a-z0-9-]{1,63}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The program to start, relative to the job's `code/` folder (e.g. `train.py`).
    pub entrypoint: String,
    /// SHA-256 over the code as uploaded (see `aic_core::digest`), hex; the worker refuses
    /// code that does not match. Empty: not checked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code_digest: String,
    /// The dataset, as a prefix under the owner's `data/` folder (e.g. `digits`); mounted at
    /// `AIC_DATA_DIR` in every allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    pub miners: u32,
    pub gpus_per_miner: u32,
    /// Upper bound on wall time; the quote is computed from it.
    pub max_hours: f64,
    #[serde(default)]
    pub launcher: Launcher,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The owner's secrets (`aic secret set`) the program gets in its environment, by name:
    /// only names here; the values stay with the pool, encrypted, and reach the worker at
    /// start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// A container image to run the job in (`--image REF`), where the pool runs images (Nomad
    /// with the docker driver, an image its operator allows); the pool's worker is mounted
    /// into it. None: the pool's own worker image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// GPU models the job may run on, in order of preference (`--gpu-type A100 --gpu-type
    /// A10`): a miner's model matches one when its words appear in it in order, case aside
    /// (`A100` matches `NVIDIA A100-SXM4-80GB`, not `A10`). Empty: any model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_types: Vec<String>,
    /// The least memory each GPU must have, in GB (`--min-gpu-memory 20`). None: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_gpu_memory_gb: Option<u32>,
    /// How a deployment is served (its server, processes, threads, privacy); none: the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<crate::serving::ServeOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentRef>,
    pub created_at: DateTime<Utc>,
    /// The request is refused by validate after this time.
    pub expires_at: DateTime<Utc>,
    /// The owner's signature over the request (EIP-712), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl JobRequest {
    /// Total GPU slots the job occupies.
    pub fn total_gpus(&self) -> u64 {
        self.miners as u64 * self.gpus_per_miner as u64
    }

    /// Checks every field against the limits, collecting all problems.
    ///
    /// `now` decides expiry; pass `None` to skip the expiry check (e.g. when a job file is
    /// checked before it is signed).
    pub fn validate(&self, now: Option<DateTime<Utc>>) -> Result<(), ValidationErrors> {
        let mut errs = Vec::new();
        if self.version != REQUEST_VERSION {
            errs.push(FieldError::new(
                "version",
                format!("unsupported version {} (this pool reads {REQUEST_VERSION})", self.version),
            ));
        }
        if let Some(name) = &self.name {
            validate::name("name", name, &mut errs);
        }
        validate::relative_path("entrypoint", &self.entrypoint, false, &mut errs);
        if let Some(data) = &self.data {
            validate::relative_path("data", data, true, &mut errs);
        }
        let (miners_field, miners_what) = match self.kind {
            JobKind::Train => ("miners", "miners"),
            JobKind::Serve => ("miners", "replicas"),
        };
        validate::range_u32(miners_field, miners_what, self.miners, 1, validate::MAX_MINERS, &mut errs);
        validate::range_u32("gpus_per_miner", "GPUs per miner", self.gpus_per_miner, 1, validate::MAX_GPUS, &mut errs);
        validate::hours("max_hours", self.max_hours, &mut errs);
        validate::args("args", &self.args, &mut errs);
        validate::env("env", &self.env, &mut errs);
        validate::secrets("secrets", &self.secrets, &self.env, &mut errs);
        if let Some(Err(e)) = self.image.as_deref().map(validate::image_ref) {
            errs.push(FieldError::new("image", e));
        }
        validate::gpu_types("gpu_types", &self.gpu_types, &mut errs);
        if let Some(gb) = self.min_gpu_memory_gb
            && !(1..=validate::MAX_GPU_MEMORY_GB).contains(&gb)
        {
            errs.push(FieldError::new(
                "min_gpu_memory_gb",
                format!("{gb} GB is not a GPU's memory: ask 1 to {} GB", validate::MAX_GPU_MEMORY_GB),
            ));
        }
        if let Some(o) = &self.serving {
            if self.kind == JobKind::Serve {
                o.check("serving", &mut errs);
                o.check_against(self.miners, "serving", &mut errs);
            } else {
                errs.push(FieldError::new("serving", "only a deployment (kind: serve) is served: leave it out"));
            }
        }
        if let Some(p) = &self.payment {
            validate::tx_hash("payment.tx", &p.tx, &mut errs);
        }
        let is_digest = self.code_digest.len() == 64 && self.code_digest.bytes().all(|b| b.is_ascii_hexdigit());
        if !self.code_digest.is_empty() && !is_digest {
            errs.push(FieldError::new("code_digest", "is not a SHA-256 digest (64 hex digits)"));
        }
        validate::window(self.created_at, self.expires_at, now, &mut errs);
        let size = self.stored_size();
        if size > validate::MAX_REQUEST_BYTES {
            errs.push(FieldError::new(
                "request",
                format!(
                    "would be {size} bytes, over the {} KiB a request may be (its args and env take the room): \
                     pass large inputs as files in the code or a dataset",
                    validate::MAX_REQUEST_BYTES / 1024
                ),
            ));
        }
        ValidationErrors::result(errs)
    }

    /// The size of request.json as it is stored (pretty JSON), counting the payment and
    /// signature it will carry once paid and signed, so that one limit is checked before
    /// anything is paid, signed or uploaded.
    pub fn stored_size(&self) -> u64 {
        // Each of them, pretty-printed, takes under 160 bytes.
        const ROOM: u64 = 160;
        let own = serde_json::to_vec_pretty(self).map(|v| v.len() as u64).unwrap_or(u64::MAX);
        let missing = u64::from(self.signature.is_none()) + u64::from(self.payment.is_none());
        own.saturating_add(missing * ROOM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> JobRequest {
        let now = Utc::now();
        JobRequest {
            version: REQUEST_VERSION,
            kind: JobKind::Train,
            owner: "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap(),
            job_id: JobId::generate(),
            name: Some("digits".into()),
            entrypoint: "train.py".into(),
            code_digest: String::new(),
            data: Some("digits".into()),
            miners: 2,
            gpus_per_miner: 1,
            max_hours: 1.0,
            launcher: Launcher::Command,
            args: vec!["--epochs".into(), "5".into()],
            env: BTreeMap::new(),
            secrets: vec![],
            image: None,
            gpu_types: vec![],
            min_gpu_memory_gb: None,
            serving: None,
            payment: None,
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
            signature: None,
        }
    }

    #[test]
    fn a_good_request_validates() {
        sample().validate(Some(Utc::now())).unwrap();
    }

    #[test]
    fn serving_options_are_a_deployments_and_checked_with_what_to_write() {
        use crate::serving::{AppServer, ServeOptions};
        let mut r = sample();
        r.serving = Some(ServeOptions { private: true, ..Default::default() });
        let e = r.validate(None).unwrap_err().to_string();
        assert!(e.contains("serving: only a deployment (kind: serve) is served"), "{e}");
        r.kind = JobKind::Serve;
        r.validate(None).unwrap();
        r.serving = Some(ServeOptions {
            server: Some(AppServer::Wsgi),
            workers: Some(4),
            threads: Some(8),
            private: false,
            ..Default::default()
        });
        r.validate(None).unwrap();
        r.serving = Some(ServeOptions {
            server: None,
            workers: Some(0),
            threads: Some(33),
            private: false,
            ..Default::default()
        });
        let e = r.validate(None).unwrap_err().to_string();
        assert!(e.contains("serving.workers: 0 processes: a replica runs 1 to 16"), "{e}");
        assert!(e.contains("serving.threads: 33 threads: a process runs 1 to 32"), "{e}");
        r.serving = Some(ServeOptions {
            server: Some(AppServer::Asgi),
            workers: None,
            threads: Some(2),
            private: false,
            ..Default::default()
        });
        let e = r.validate(None).unwrap_err().to_string();
        assert!(e.contains("serving.threads: an ASGI app serves its requests on an event loop"), "{e}");
        assert_eq!("ASGI".parse::<AppServer>(), Ok(AppServer::Asgi));
        // Autoscaled: the fewest at most the most, a sane target, idle minutes for zero only.
        r.serving = Some(ServeOptions { min_replicas: Some(0), target_concurrency: Some(2), ..Default::default() });
        r.validate(None).unwrap();
        assert_eq!(r.serving.as_ref().unwrap().initial_replicas(r.miners), 1);
        r.serving = Some(ServeOptions {
            min_replicas: Some(3),
            target_concurrency: Some(0),
            idle_minutes: Some(5),
            ..Default::default()
        });
        let e = r.validate(None).unwrap_err().to_string();
        assert!(e.contains("serving.min_replicas: 3 is over the most replicas (2)"), "{e}");
        assert!(e.contains("serving.target_concurrency: 0 requests per replica"), "{e}");
        assert!(e.contains("serving.idle_minutes: only a deployment that scales to zero"), "{e}");
        assert_eq!(ServeOptions::default().initial_replicas(2), 2, "not autoscaled: all of them");
        assert!("uwsgi".parse::<AppServer>().unwrap_err().contains("say wsgi (Flask, Django) or asgi"));
    }

    #[test]
    fn gpu_models_and_memory_are_checked_with_what_to_write() {
        let mut r = sample();
        r.gpu_types = vec!["A100".into(), "RTX 4090".into(), "a10g-24gb".into()];
        r.min_gpu_memory_gb = Some(24);
        r.validate(None).unwrap();
        r.gpu_types = vec!["A100;rm".into(), " ".into()];
        r.min_gpu_memory_gb = Some(0);
        let e = r.validate(None).unwrap_err().to_string();
        assert!(e.contains(r#"gpu_types: "A100;rm" is not a GPU model"#), "{e}");
        assert!(e.contains(r#"gpu_types: " " is not a GPU model"#), "{e}");
        assert!(e.contains("min_gpu_memory_gb: 0 GB is not a GPU's memory: ask 1 to 1024 GB"), "{e}");
        r.gpu_types = (0..9).map(|i| format!("m{i}")).collect();
        r.min_gpu_memory_gb = None;
        assert!(r.validate(None).unwrap_err().to_string().contains("9 GPU models; name at most 8"));
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut r = sample();
        r.miners = 0;
        r.gpus_per_miner = 9;
        r.max_hours = 200.0;
        r.name = Some("Bad_Name".into());
        r.entrypoint = "../etc/passwd".into();
        r.data = Some("/abs".into());
        r.env.insert("AIC_JOB_ID".into(), "x".into());
        let errs = r.validate(None).unwrap_err();
        let fields: Vec<_> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "entrypoint", "data", "miners", "gpus_per_miner", "max_hours", "env.AIC_JOB_ID"]);
        assert!(errs.to_string().contains("miners: must be between 1 and 64 (got 0)"), "{errs}");
    }

    #[test]
    fn expiry_is_checked_against_now() {
        let r = sample();
        let later = r.expires_at + chrono::Duration::seconds(1);
        let errs = r.validate(Some(later)).unwrap_err();
        assert_eq!(errs.0[0].field, "expires_at");
    }

    #[test]
    fn a_request_over_the_size_limit_is_refused_before_it_is_paid_or_signed() {
        let mut r = sample();
        r.args = (0..20).map(|_| "x".repeat(3500)).collect();
        let errs = r.validate(None).unwrap_err();
        assert_eq!(errs.0[0].field, "request");
        assert!(errs.to_string().contains("64 KiB"), "{errs}");
    }

    #[test]
    fn the_room_kept_for_payment_and_signature_is_enough() {
        let mut r = sample();
        let unsigned = r.stored_size();
        r.payment = Some(PaymentRef { chain_id: u64::MAX, tx: format!("0x{}", "f".repeat(64)) });
        r.signature = Some(format!("0x{}", "f".repeat(130)));
        let signed = serde_json::to_vec_pretty(&r).unwrap().len() as u64;
        assert_eq!(r.stored_size(), signed);
        assert!(signed <= unsigned, "signed {signed} bytes, estimated {unsigned}");
    }

    #[test]
    fn job_ids_sort_by_creation_and_round_trip() {
        let a = JobId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = JobId::generate();
        assert!(a < b);
        assert_eq!(a.as_str().parse::<JobId>().unwrap(), a);
        assert!("not-an-id".parse::<JobId>().is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["surprise"] = serde_json::json!(1);
        let err = serde_json::from_value::<JobRequest>(v).unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
    }
}
