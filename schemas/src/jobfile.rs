//! The job file a user writes and hands to `aic submit` (YAML or JSON).
//!
//! # Format
//! ```yaml
//! code: examples/digits        # a local script or folder, uploaded as the job's code
//! entrypoint: train.py         # the program inside it (default: the script itself)
//! data: digits                 # a dataset under your data/ folder (aic data put)
//! miners: 2
//! gpus: 1                      # GPUs per miner
//! hours: 1                     # upper bound; the quote is computed from it
//! launcher: command            # command | mpi | horovod | torchrun
//! args: [--epochs, "20"]
//! env: {SEED: "7"}
//! secrets: [HF_TOKEN]          # your secrets the program gets (aic secret set)
//! ```
//! Every error names the field and, where it can, the line: `job.yaml:4: miners: must be
//! between 1 and 64 (got 0)`.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::job::REQUEST_VERSION;
use crate::validate::{FieldError, MAX_JOB_FILE_BYTES};
use crate::{Address, JobId, JobKind, JobRequest, Launcher};

fn one() -> u32 {
    1
}
fn one_hour() -> f64 {
    1.0
}

#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// `train` (default) or `serve`.
    #[serde(default)]
    pub kind: Option<JobKind>,
    #[serde(default)]
    pub name: Option<String>,
    /// A local script or folder, uploaded as the job's code (relative to the job file).
    pub code: String,
    /// The program inside the code folder; defaults to the script when `code` is a file.
    #[serde(default)]
    pub entrypoint: Option<String>,
    /// A dataset prefix under your `data/` folder.
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default = "one")]
    pub miners: u32,
    /// GPUs per miner.
    #[serde(default = "one")]
    pub gpus: u32,
    #[serde(default = "one_hour")]
    pub hours: f64,
    #[serde(default)]
    pub launcher: Launcher,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The owner's secrets the program gets in its environment (`aic secret set NAME`).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// A container image to run the job in, where the pool runs images (`--image`).
    #[serde(default)]
    pub image: Option<String>,
    /// GPU models the job may run on, in order of preference (`--gpu-type`); none: any.
    #[serde(default)]
    pub gpu_types: Vec<String>,
    /// The least memory each GPU must have, in GB (`--min-gpu-memory`).
    #[serde(default)]
    pub min_gpu_memory: Option<u32>,
    /// A deployment's server, processes, threads and privacy (`kind: serve`).
    #[serde(default)]
    pub serving: Option<crate::serving::ServeOptions>,
}

/// A problem in a job file, located where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFileError {
    pub line: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for JobFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl JobFile {
    /// Parses a job file; `json` picks the JSON reader (YAML otherwise).
    ///
    /// Returns every problem found: a syntax or type error alone (with its line), or all
    /// field-level errors of a well-formed file.
    pub fn parse(text: &str, json: bool) -> Result<JobFile, Vec<JobFileError>> {
        if text.len() as u64 > MAX_JOB_FILE_BYTES {
            return Err(vec![JobFileError {
                line: None,
                field: None,
                message: format!("job file is larger than {} KiB; keep data out of it", MAX_JOB_FILE_BYTES / 1024),
            }]);
        }
        let parsed: Result<JobFile, (Option<usize>, String)> = if json {
            serde_json::from_str(text).map_err(|e| (Some(e.line()).filter(|l| *l > 0), strip_position(&e.to_string())))
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| (e.location().map(|l| l.line()), strip_position(&e.to_string())))
        };
        let file = parsed.map_err(|(line, message)| {
            let field = field_in_message(&message);
            vec![JobFileError { line, field, message }]
        })?;
        let errs = file.check();
        if errs.is_empty() {
            Ok(file)
        } else {
            Err(errs
                .into_iter()
                .map(|e| JobFileError { line: line_of(text, &e.field), field: Some(e.field), message: e.message })
                .collect())
        }
    }

    /// The entrypoint: the explicit one, or the file name of `code` when `code` is a script.
    pub fn entrypoint_or(&self, code_is_file: bool) -> Option<String> {
        self.entrypoint.clone().or_else(|| {
            code_is_file.then(|| {
                std::path::Path::new(&self.code)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
        })
    }

    /// The request this file describes, for `owner` as job `job_id`.
    pub fn to_request(
        &self,
        owner: Address,
        job_id: JobId,
        entrypoint: String,
        now: DateTime<Utc>,
        valid_for: chrono::Duration,
    ) -> JobRequest {
        JobRequest {
            version: REQUEST_VERSION,
            kind: self.kind.unwrap_or(JobKind::Train),
            owner,
            job_id,
            name: self.name.clone(),
            entrypoint,
            code_digest: String::new(),
            data: self.data.clone().map(|d| d.trim_end_matches('/').to_string()),
            miners: self.miners,
            gpus_per_miner: self.gpus,
            max_hours: self.hours,
            launcher: self.launcher,
            args: self.args.clone(),
            env: self.env.clone(),
            secrets: self.secrets.clone(),
            image: self.image.clone(),
            gpu_types: self.gpu_types.clone(),
            min_gpu_memory_gb: self.min_gpu_memory,
            serving: self.serving.clone(),
            payment: None,
            created_at: now,
            expires_at: now + valid_for,
            signature: None,
        }
    }

    /// Field-level checks, with the job file's own field names.
    fn check(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.code.trim().is_empty() {
            errs.push(FieldError::new("code", "must name a local script or folder"));
        }
        let now = Utc::now();
        let entry = self.entrypoint.clone().unwrap_or_else(|| "main".into());
        let req =
            self.to_request(Address::from_bytes([0; 20]), JobId::generate(), entry, now, chrono::Duration::hours(1));
        if let Err(v) = req.validate(None) {
            for mut e in v.0 {
                e.field = match e.field.as_str() {
                    "gpus_per_miner" => "gpus".into(),
                    "max_hours" => "hours".into(),
                    "min_gpu_memory_gb" => "min_gpu_memory".into(),
                    _ => e.field,
                };
                errs.push(e);
            }
        }
        errs
    }
}

/// serde messages end with " at line L column C"; the line is reported separately.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The field a serde message is about, when it names one (`unknown field `x``).
fn field_in_message(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    msg.contains("field").then(|| msg[start..start + len].to_string())
}

/// The 1-based line where a dotted field path is written, for YAML and JSON alike.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let mut from = 0usize;
    let mut found = None;
    let segments: Vec<&str> = path.split('.').map(|s| s.split('[').next().unwrap_or(s)).collect();
    for seg in segments {
        let hit = text.lines().enumerate().skip(from).find(|(_, line)| line_has_key(line, seg))?;
        found = Some(hit.0 + 1);
        from = hit.0;
    }
    found
}

fn line_has_key(line: &str, key: &str) -> bool {
    let t = line.trim_start().trim_start_matches("- ").trim_start_matches(['{', ',', ' ']);
    for quoted in [format!("\"{key}\""), format!("'{key}'"), key.to_string()] {
        if let Some(rest) = t.strip_prefix(quoted.as_str())
            && rest.trim_start().starts_with(':')
        {
            return true;
        }
    }
    // flow mappings: `env: {A: "1", B: "2"}`
    line.contains(&format!("{{{key}:")) || line.contains(&format!(", {key}:")) || line.contains(&format!("\"{key}\":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_yaml_file_takes_defaults() {
        let f = JobFile::parse("code: train.py\n", false).unwrap();
        assert_eq!((f.miners, f.gpus, f.hours, f.launcher), (1, 1, 1.0, Launcher::Command));
        assert_eq!(f.entrypoint_or(true).as_deref(), Some("train.py"));
    }

    #[test]
    fn field_errors_point_at_their_lines() {
        let text = "code: train.py\nminers: 0\ngpus: 12\nenv:\n  AIC_X: y\n";
        let errs = JobFile::parse(text, false).unwrap_err();
        let got: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            got,
            [
                "line 2: miners: must be between 1 and 64 (got 0)",
                "line 3: gpus: must be between 1 and 8 (got 12)",
                "line 5: env.AIC_X: is set by the pool; choose another name",
            ]
        );
    }

    #[test]
    fn type_errors_and_unknown_fields_are_located() {
        let errs = JobFile::parse("code: a.py\nminers: two\n", false).unwrap_err();
        assert_eq!(errs[0].line, Some(2), "{errs:?}");
        let errs = JobFile::parse("{\n  \"code\": \"a.py\",\n  \"minres\": 2\n}", true).unwrap_err();
        assert_eq!(errs[0].line, Some(3), "{errs:?}");
        assert_eq!(errs[0].field.as_deref(), Some("minres"));
        assert!(errs[0].message.contains("unknown field"), "{errs:?}");
    }

    #[test]
    fn json_job_files_are_checked_the_same_way() {
        let text = "{\n  \"code\": \"a.py\",\n  \"hours\": 500\n}";
        let errs = JobFile::parse(text, true).unwrap_err();
        assert_eq!(errs[0].to_string(), "line 3: hours: must be more than 0 and at most 168 (got 500)");
    }
}
