//! Which keys and file names can be objects, and their object_store paths.

use object_store::path::Path;

/// The object_store path of `key`, exactly as written.
///
/// `Path::from` would percent-encode `%`, `#`, `?` and every non-ASCII byte *into the key
/// itself*, so that `학습.csv` was stored as `%ED%95%99….csv` and escaped
/// once more on the way back. Keys are UTF-8 and sent as they are; each backend encodes them
/// for its own wire (S3 URLs, file names). Refused: empty, `.` or `..` segments, control
/// characters, and a last segment ending in `#` and digits (the local directory store keeps
/// its unfinished uploads under such names and cannot hold them).
pub fn object_path(key: &str) -> object_store::Result<Path> {
    let path = Path::parse(key).map_err(|source| object_store::Error::InvalidPath { source })?;
    if let Some(why) = path.filename().and_then(name_problem) {
        return Err(object_store::Error::Generic { store: "aic", source: format!("{key:?}: {why}").into() });
    }
    Ok(path)
}

/// Why a folder's name cannot be part of a key, if it cannot.
pub(super) fn folder_problem(name: &str) -> Option<&'static str> {
    name.chars().any(char::is_control).then_some("file names may not contain control characters")
}

/// The object_store path of a listing prefix (a folder: any name, trailing `/` or not).
pub fn prefix_path(prefix: &str) -> object_store::Result<Path> {
    Path::parse(prefix).map_err(|source| object_store::Error::InvalidPath { source })
}

/// Why a file name cannot be an object's last segment, if it cannot (besides what
/// `Path::parse` refuses).
pub fn name_problem(name: &str) -> Option<&'static str> {
    if let Some(why) = folder_problem(name) {
        return Some(why);
    }
    match name.rsplit_once('#') {
        Some((_, digits)) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some("names ending in '#' and digits are reserved by the local store")
        }
        _ => None,
    }
}
