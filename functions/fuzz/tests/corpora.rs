//! Replays every committed corpus (`corpus/<target>/`: the seeds, and each input a fuzzing
//! run found a crash with, kept as a regression) through its target: the short pass that
//! runs with the tests. `cargo xtask fuzz` fuzzes for real (cargo fuzz, libFuzzer).

use std::path::Path;

#[test]
fn every_corpus_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (name, target) in aic_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "target {name} has no seed in {}", dir.display());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("{name} fails on {}", f.display());
            }
        }
        total += files.len();
    }
    eprintln!("{total} inputs replayed through {} targets", aic_fuzz::TARGETS.len());
}

#[test]
fn every_target_has_a_harness_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (name, _) in aic_fuzz::TARGETS {
        let src = std::fs::read_to_string(root.join(format!("fuzz_targets/{name}.rs")))
            .unwrap_or_else(|_| panic!("no harness for {name}"));
        assert!(src.contains(&format!("aic_fuzz::{name}(")), "harness {name} calls another target");
        assert!(manifest.contains(&format!("name = \"{name}\"")), "harness/Cargo.toml has no [[bin]] {name}");
    }
}
