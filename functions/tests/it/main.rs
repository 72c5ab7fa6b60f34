//! The crate's integration tests, one binary (one link of the dependency graph, not one a
//! file): each former `tests/<name>.rs` is the module `<name>` here; run one with
//! `cargo test -p <crate> --test it <name>::`.

mod attacks;
mod common;
mod events;
mod host;
mod infra;
mod lambda;
mod localstack;
mod nomad_exec;
mod secrets;
