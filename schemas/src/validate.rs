//! Limits on user-supplied documents, and errors that name the field.

use std::collections::BTreeMap;
use std::fmt;

pub const MAX_MINERS: u32 = 64;
pub const MAX_GPUS: u32 = 8;
pub const MAX_HOURS: f64 = 168.0;
/// Largest request.json a function reads; anything larger is rejected unread.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// Largest job file `aic submit` reads.
pub const MAX_JOB_FILE_BYTES: u64 = 64 * 1024;
/// Largest manifest, status record or registration a reader accepts.
pub const MAX_DOC_BYTES: u64 = 256 * 1024;
pub const MAX_ARGS: usize = 256;
pub const MAX_ARG_BYTES: usize = 4096;
pub const MAX_ENV: usize = 128;
pub const MAX_ENV_VALUE_BYTES: usize = 4096;
/// Most secrets a job may name, and an owner may keep.
pub const MAX_SECRETS: usize = 64;
pub const MAX_PATH_BYTES: usize = 512;
/// Most GPU models a request may name, and the longest name.
pub const MAX_GPU_TYPES: usize = 8;
pub const MAX_GPU_TYPE_BYTES: usize = 64;
pub const MAX_GPU_MEMORY_GB: u32 = 1024;

/// One problem with one field of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `miners` or `env.FOO`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All the problems found in a document, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn result(errs: Vec<FieldError>) -> Result<(), ValidationErrors> {
        if errs.is_empty() { Ok(()) } else { Err(ValidationErrors(errs)) }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&parts.join("; "))
    }
}

/// Whether `model` can name a GPU model: letters, digits, spaces and `-_.`, with at least
/// one letter or digit, 1 to 64 bytes.
pub fn is_gpu_model(model: &str) -> bool {
    !model.trim().is_empty()
        && model.len() <= MAX_GPU_TYPE_BYTES
        && model.chars().all(|c| c.is_ascii_alphanumeric() || "-_. ".contains(c))
        && model.chars().any(|c| c.is_ascii_alphanumeric())
}

pub(crate) fn gpu_types(field: &str, models: &[String], errs: &mut Vec<FieldError>) {
    if models.len() > MAX_GPU_TYPES {
        errs.push(FieldError::new(field, format!("{} GPU models; name at most {MAX_GPU_TYPES}", models.len())));
    }
    for m in models {
        if !is_gpu_model(m) {
            errs.push(FieldError::new(
                field,
                format!(
                    "{m:?} is not a GPU model: use letters, digits, spaces, '-', '_' and '.' (e.g. A100, RTX 4090)"
                ),
            ));
        }
    }
}

/// Whether `value` is a name: 1 to 63 of a-z, 0-9 and `-`.
pub fn is_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(crate) fn name(field: &str, value: &str, errs: &mut Vec<FieldError>) {
    if !is_name(value) {
        errs.push(FieldError::new(field, format!("{value:?} is not a name: use 1 to 63 of a-z, 0-9 and -")));
    }
}

/// A path relative to a folder the job owns: no leading `/`, no `..`, no empty or `.`
/// segments, no backslashes or control characters.
pub(crate) fn relative_path(field: &str, value: &str, allow_empty: bool, errs: &mut Vec<FieldError>) {
    if value.is_empty() {
        if !allow_empty {
            errs.push(FieldError::new(field, "must not be empty"));
        }
        return;
    }
    if let Some(why) = path_problem(value) {
        errs.push(FieldError::new(field, format!("{value:?} {why}")));
    }
}

/// Why `value` is not a safe relative path, if it is not.
pub fn path_problem(value: &str) -> Option<&'static str> {
    if value.len() > MAX_PATH_BYTES {
        return Some("is too long (512 bytes at most)");
    }
    if value.starts_with('/') {
        return Some("must be relative (no leading /)");
    }
    if value.contains('\\') || value.chars().any(char::is_control) {
        return Some("must not contain backslashes or control characters");
    }
    let trimmed = value.strip_suffix('/').unwrap_or(value);
    if trimmed.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Some("must stay inside its folder (no empty, . or .. segments)");
    }
    None
}

/// The size of a job as `aic quote` and the flags take it: `Err` names the first bad flag.
pub fn check_size(miners: u32, gpus: u32, hours: f64) -> Result<(), String> {
    let mut errs = Vec::new();
    range_u32("--miners", "miners", miners, 1, MAX_MINERS, &mut errs);
    range_u32("--gpus", "GPUs per miner", gpus, 1, MAX_GPUS, &mut errs);
    self::hours("--hours", hours, &mut errs);
    match errs.first() {
        Some(e) => Err(e.to_string()),
        None => Ok(()),
    }
}

pub(crate) fn range_u32(field: &str, what: &str, v: u32, lo: u32, hi: u32, errs: &mut Vec<FieldError>) {
    if v < lo || v > hi {
        let _ = what;
        errs.push(FieldError::new(field, format!("must be between {lo} and {hi} (got {v})")));
    }
}

pub(crate) fn hours(field: &str, v: f64, errs: &mut Vec<FieldError>) {
    if !(v.is_finite() && v > 0.0 && v <= MAX_HOURS) {
        errs.push(FieldError::new(field, format!("must be more than 0 and at most {MAX_HOURS} (got {v})")));
    }
}

pub(crate) fn args(field: &str, args: &[String], errs: &mut Vec<FieldError>) {
    if args.len() > MAX_ARGS {
        errs.push(FieldError::new(field, format!("at most {MAX_ARGS} arguments (got {})", args.len())));
    }
    for (i, a) in args.iter().enumerate() {
        if a.len() > MAX_ARG_BYTES {
            errs.push(FieldError::new(format!("{field}[{i}]"), format!("longer than {MAX_ARG_BYTES} bytes")));
        }
        if a.contains('\0') {
            errs.push(FieldError::new(format!("{field}[{i}]"), "contains a NUL byte"));
        }
    }
}

pub(crate) fn env(field: &str, env: &BTreeMap<String, String>, errs: &mut Vec<FieldError>) {
    if env.len() > MAX_ENV {
        errs.push(FieldError::new(field, format!("at most {MAX_ENV} variables (got {})", env.len())));
    }
    for (k, v) in env {
        let f = format!("{field}.{k}");
        let valid_name = !k.is_empty()
            && k.len() <= 128
            && !k.as_bytes()[0].is_ascii_digit()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name {
            errs.push(FieldError::new(f, "is not a variable name: use A-Z, a-z, 0-9 and _, not starting with a digit"));
        } else if k.starts_with("AIC_") || k == "CUDA_VISIBLE_DEVICES" {
            errs.push(FieldError::new(f, "is set by the pool; choose another name"));
        } else if v.len() > MAX_ENV_VALUE_BYTES || v.contains('\0') {
            errs.push(FieldError::new(f, format!("value must be under {MAX_ENV_VALUE_BYTES} bytes with no NUL")));
        }
    }
}

/// A secret's name: what the program finds it under, `[A-Z_][A-Z0-9_]{0,63}`, not a name the
/// pool sets.
pub fn secret_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(format!(
            "{name:?} is not a secret's name: use A-Z, 0-9 and _, at most 64, not starting with a digit"
        ));
    }
    if name.starts_with("AIC_") || name == "CUDA_VISIBLE_DEVICES" || name == "PYTHONPATH" || name == "PATH" {
        return Err(format!("{name} is set by the pool; choose another name"));
    }
    Ok(())
}

pub(crate) fn secrets(field: &str, names: &[String], env: &BTreeMap<String, String>, errs: &mut Vec<FieldError>) {
    if names.len() > MAX_SECRETS {
        errs.push(FieldError::new(field, format!("at most {MAX_SECRETS} secrets (got {})", names.len())));
    }
    for (i, n) in names.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if let Err(e) = secret_name(n) {
            errs.push(FieldError::new(f, e));
        } else if env.contains_key(n) {
            errs.push(FieldError::new(f, format!("{n} is also in env: a secret's name must be its own")));
        } else if names[..i].contains(n) {
            errs.push(FieldError::new(f, format!("{n} is named twice")));
        }
    }
}

/// A container image reference as Docker takes it: `[registry[:port]/]path[:tag][@sha256:…]`,
/// lower-case path components, at most 255 characters.
pub fn image_ref(r: &str) -> Result<(), String> {
    let bad = || Err(format!("{r:?} is not an image reference (like ghcr.io/me/train:1.0 or pytorch/pytorch:2.5.1)"));
    if r.is_empty() || r.len() > 255 || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad();
    }
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest
        && !(d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())))
    {
        return bad();
    }
    // A tag follows the last `:` after the last `/` (a registry's port comes before a `/`).
    let (path, tag) = match name.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, Some(t)),
        _ => (name, None),
    };
    if let Some(t) = tag
        && (t.is_empty() || t.len() > 128 || !t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        return bad();
    }
    let parts: Vec<&str> = path.split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        let registry = i == 0 && parts.len() > 1 && (p.contains('.') || p.contains(':') || *p == "localhost");
        let ok = if registry {
            p.starts_with(|c: char| c.is_ascii_alphanumeric())
                && p.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
        } else {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                && !p.starts_with(['.', '_', '-'])
        };
        if !ok {
            return bad();
        }
    }
    Ok(())
}

/// Whether image `r` is one of `patterns` (globs: `*` matches any run of characters, `/`
/// included; `ghcr.io/myorg/*`, `pytorch/pytorch:*`).
pub fn image_allowed(r: &str, patterns: &[String]) -> bool {
    fn glob(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
            Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
        }
    }
    patterns.iter().any(|p| glob(p.trim().as_bytes(), r.as_bytes()))
}

/// A signed document's validity window: it ends after it starts and, at `now`, has not ended.
pub(crate) fn window(
    created: chrono::DateTime<chrono::Utc>,
    expires: chrono::DateTime<chrono::Utc>,
    now: Option<chrono::DateTime<chrono::Utc>>,
    errs: &mut Vec<FieldError>,
) {
    if expires <= created {
        errs.push(FieldError::new("expires_at", "must be after created_at"));
    }
    if let Some(now) = now
        && expires < now
    {
        errs.push(FieldError::new(
            "expires_at",
            format!("request expired at {} (sign a new one)", expires.format("%Y-%m-%d %H:%M:%S UTC")),
        ));
    }
}

pub(crate) fn tx_hash(field: &str, v: &str, errs: &mut Vec<FieldError>) {
    let ok = v.len() == 66 && v.starts_with("0x") && v[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if !ok {
        errs.push(FieldError::new(field, "is not a transaction hash (0x followed by 64 hex digits)"));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_references_are_dockers_and_patterns_glob_them() {
        for ok in ["pytorch/pytorch:2.5.1", "ghcr.io/me/train:1.0", "localhost:5000/x/y:latest", "ubuntu"] {
            assert!(super::image_ref(ok).is_ok(), "{ok}");
        }
        let pinned = format!("ghcr.io/me/train@sha256:{}", "a".repeat(64));
        assert!(super::image_ref(&pinned).is_ok());
        for bad in ["", "Upper/case", "a b", "x:", "x@sha256:12", "../x", "-x/y", "x\ny"] {
            assert!(super::image_ref(bad).is_err(), "{bad:?}");
        }
        let allowed = vec!["ghcr.io/me/*".to_string(), "pytorch/pytorch:*".to_string()];
        assert!(super::image_allowed("ghcr.io/me/train:1.0", &allowed));
        assert!(super::image_allowed("pytorch/pytorch:2.5.1", &allowed));
        assert!(!super::image_allowed("ghcr.io/other/train:1.0", &allowed));
        assert!(!super::image_allowed("pytorch/pytorch", &allowed), "no tag: not pytorch/pytorch:*");
        assert!(!super::image_allowed("evil.io/ghcr.io/me/x", &allowed));
        assert!(!super::image_allowed("x", &[]));
    }

    use super::*;

    #[test]
    fn paths_that_escape_are_refused() {
        for bad in ["/etc", "../x", "a/../../b", "a//b", "./a", "a\\b", "a/\u{7}"] {
            assert!(path_problem(bad).is_some(), "{bad:?} should be refused");
        }
        for good in ["train.py", "a/b/c.txt", "digits/", "my data/x"] {
            assert!(path_problem(good).is_none(), "{good:?} should pass");
        }
    }
}
