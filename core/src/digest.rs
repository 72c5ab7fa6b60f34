//! The code digest a request signs: SHA-256 over `"<sha256 of file>  <relative path>\n"`
//! for every file, sorted by path (the `sha256sum` format), so the same tree always gives
//! the same digest whatever the order it was walked or uploaded in.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::store::local_files;

/// The digest of the files below `dir`, hex.
pub fn tree(dir: &Path) -> std::io::Result<String> {
    tree_with(dir, &[])
}

/// The digest of the files below `dir` and of `extra` files uploaded beside them under the
/// names given (a name there replaces the folder's file of that name).
pub fn tree_with(dir: &Path, extra: &[(String, std::path::PathBuf)]) -> std::io::Result<String> {
    let mut pairs = vec![];
    for (path, rel) in local_files(dir)? {
        if !extra.iter().any(|(name, _)| *name == rel) {
            pairs.push((rel, file(&path)?));
        }
    }
    for (name, path) in extra {
        pairs.push((name.clone(), file(path)?));
    }
    Ok(of_pairs(pairs))
}

/// The digest of files uploaded under the names given.
pub fn files(files: &[(String, std::path::PathBuf)]) -> std::io::Result<String> {
    let mut pairs = vec![];
    for (name, path) in files {
        pairs.push((name.clone(), file(path)?));
    }
    Ok(of_pairs(pairs))
}

/// The digest of one file uploaded as `name` (a single-script job).
pub fn single(path: &Path, name: &str) -> std::io::Result<String> {
    files(&[(name.to_string(), path.to_path_buf())])
}

fn of_pairs(mut pairs: Vec<(String, String)>) -> String {
    pairs.sort();
    let mut h = Sha256::new();
    for (rel, sum) in pairs {
        h.update(format!("{sum}  {rel}\n").as_bytes());
    }
    hex::encode(h.finalize())
}

/// SHA-256 of a file, streamed.
pub fn file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_and_the_same_single_file_agree_and_changes_show() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("train.py"), "print(1)\n").unwrap();
        let t = tree(d.path()).unwrap();
        assert_eq!(t, single(&d.path().join("train.py"), "train.py").unwrap());
        std::fs::write(d.path().join("train.py"), "print(2)\n").unwrap();
        assert_ne!(t, tree(d.path()).unwrap());
    }
}
