//! The JSON Schema files in `schemas/json/` are generated from the Rust types; this test
//! fails when they are stale. Regenerate with `AIC_BLESS=1 cargo test -p aic-schemas`.

use std::path::Path;

#[test]
fn json_schema_files_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let bless = std::env::var_os("AIC_BLESS").is_some();
    let mut stale = Vec::new();
    for (name, schema) in aic_schemas::json_schemas() {
        let want = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let path = dir.join(name);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, want).unwrap();
            } else {
                stale.push(name);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale JSON Schema files {stale:?}: run `AIC_BLESS=1 cargo test -p aic-schemas` and commit schemas/json/"
    );
}
