//! No import circles: between the modules of each Rust crate (two levels deep:
//! `scheduler::recovery`, `store::list`) and between the web app's TypeScript files. A module
//! may use its parent's items and its children's (a folder is one concept); two modules that
//! each use the other, directly or around a longer ring, fail the check with the ring named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every ring of modules that import each other, in `crate_src` (a crate's `src/`).
pub(crate) fn rust_rings(crate_src: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for entry in walk(crate_src)? {
        if entry.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = entry.strip_prefix(crate_src)?.with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        if parts == ["lib"] || parts == ["main"] || parts.first().is_some_and(|p| p == "bin") {
            continue;
        }
        files.insert(parts.join("::"), code_of(&std::fs::read_to_string(&entry)?));
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    // Two levels: `a::b::c` counts as `a::b`.
    let unit = |m: &str| m.split("::").take(2).collect::<Vec<_>>().join("::");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &files {
        let from = unit(module);
        let mut targets = vec![];
        for path in crate_paths(code) {
            targets.push(path);
        }
        let parent: Vec<&str> = module.split("::").collect();
        for name in after(code, "super::") {
            let mut p: Vec<&str> = parent[..parent.len().saturating_sub(1)].to_vec();
            p.push(name);
            targets.push(p.join("::"));
        }
        for t in targets {
            // The longest module the path names.
            let mut t = unit(&t);
            while !modules.contains(&t) && t.contains("::") {
                t = t.rsplit_once("::").map(|(a, _)| a.to_string()).unwrap_or_default();
            }
            let related = t == from || t.starts_with(&format!("{from}::")) || from.starts_with(&format!("{t}::"));
            if modules.contains(&t) && !related {
                graph.entry(from.clone()).or_default().insert(t);
            }
        }
        graph.entry(from).or_default();
    }
    Ok(rings(&graph))
}

/// Every ring of TypeScript files that import each other under `src`.
pub(crate) fn ts_rings(src: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in walk(src)? {
        if entry.extension().is_none_or(|e| e != "ts") {
            continue;
        }
        let name = entry.strip_prefix(src)?.to_string_lossy().into_owned();
        let dir = entry.parent().unwrap_or(src);
        let text = std::fs::read_to_string(&entry)?;
        let deps = graph.entry(name).or_default();
        for line in text.lines().filter(|l| l.trim_start().starts_with("import ")) {
            let Some(spec) = line.split(" from ").nth(1).and_then(|s| s.trim().trim_end_matches(';').get(1..)) else {
                continue;
            };
            let spec = spec.trim_end_matches(['"', '\'']);
            if spec.starts_with('.') {
                let target = normalize(&dir.join(format!("{spec}.ts")));
                deps.insert(target.strip_prefix(src).unwrap_or(&target).to_string_lossy().into_owned());
            }
        }
    }
    Ok(rings(&graph))
}

fn normalize(p: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// The code of a Rust file: comments and its `mod tests` left out.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The module paths `crate::…` names: `crate::a::b::c`, and each of `use crate::{a, b::c}`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = vec![];
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            out.extend(group[..end].split(',').map(|s| path_at(s.trim())).filter(|s| !s.is_empty()));
        } else {
            out.push(path_at(rest));
        }
    }
    out
}

/// The identifiers after each `prefix` in `code`.
fn after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    code.match_indices(prefix)
        .map(|(i, _)| {
            let s = &code[i + prefix.len()..];
            &s[..s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len())]
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// The `a::b::c` path at the start of `s`.
fn path_at(s: &str) -> String {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(s.len());
    s[..end].trim_end_matches(':').to_string()
}

fn walk(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The strongly connected groups of more than one node (Tarjan), each sorted.
fn rings(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[w].min(t.low[v]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.index[w].min(t.low[v]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut ring = vec![];
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                ring.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if ring.len() > 1 {
                ring.sort();
                t.out.push(ring);
            }
        }
    }
    let mut t =
        T { g: graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], on: BTreeSet::new(), out: vec![] };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Fails naming every ring in the workspace's crates and the web app.
pub(crate) fn check(root: &Path) -> anyhow::Result<()> {
    let mut found = vec![];
    for krate in ["schemas", "core", "chain", "functions", "worker", "cli"] {
        let src = root.join(krate).join("src");
        if src.is_dir() {
            found.extend(rust_rings(&src)?.into_iter().map(|r| format!("{krate}: {}", r.join(" ⇄ "))));
        }
    }
    found.extend(ts_rings(&root.join("functions/web/src"))?.into_iter().map(|r| format!("web: {}", r.join(" ⇄ "))));
    if found.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "modules that import each other (move what they share where neither imports the other):\n  {}",
        found.join("\n  ")
    )
}

#[cfg(test)]
mod tests {
    /// What `cargo xtask test` checks, on this repository.
    #[test]
    fn the_workspace_and_the_web_app_have_no_import_circles() {
        super::check(&crate::root()).unwrap();
    }

    #[test]
    fn a_ring_is_found_and_a_parent_child_pair_is_not() {
        let dir = std::env::temp_dir().join(format!("aic-circles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("store")).unwrap();
        std::fs::write(dir.join("lib.rs"), "mod a; mod b; mod store;").unwrap();
        std::fs::write(dir.join("a.rs"), "use crate::b::thing;\n// crate::c in a comment\n").unwrap();
        std::fs::write(dir.join("b.rs"), "fn f() { crate::a::other(); }").unwrap();
        std::fs::write(dir.join("store/mod.rs"), "mod list; pub use list::Names;").unwrap();
        std::fs::write(dir.join("store/list.rs"), "use super::*; use crate::store::Store;").unwrap();
        assert_eq!(super::rust_rings(&dir).unwrap(), [["a".to_string(), "b".to_string()]]);
        std::fs::write(dir.join("b.rs"), "fn f() {}").unwrap();
        assert!(super::rust_rings(&dir).unwrap().is_empty());
        std::fs::write(dir.join("x.ts"), "import { y } from \"./pages/y\";\n").unwrap();
        std::fs::create_dir_all(dir.join("pages")).unwrap();
        std::fs::write(dir.join("pages/y.ts"), "import { x } from \"../x\";\n").unwrap();
        assert_eq!(super::ts_rings(&dir).unwrap(), [["pages/y.ts".to_string(), "x.ts".to_string()]]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
