//! Every bucket key is built in `core/src/layout.rs`: no other source file of the workspace
//! spells one (a `"users/…` or `"pool/…` string, `format!` included). Unit tests at the end
//! of a file (`#[cfg(test)]`) and the integration tests may, since they check the layout.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_key_is_spelled_outside_the_layout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for krate in ["schemas", "core", "chain", "functions", "worker", "cli"] {
        sources(&root.join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 40, "found only {} source files under {}", files.len(), root.display());
    let mut found = Vec::new();
    for f in &files {
        if f.ends_with("core/src/layout.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        // What follows the unit tests' marker is test code.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (i, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap();
            if line.contains("\"users/") || line.contains("\"pool/") {
                found.push(format!("{}:{}: {}", f.strip_prefix(root).unwrap().display(), i + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "keys spelled outside core/src/layout.rs:\n{}", found.join("\n"));
}
