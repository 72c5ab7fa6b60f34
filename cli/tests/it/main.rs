//! The crate's integration tests, one binary (one link of the dependency graph, not one a
//! file): each former `tests/<name>.rs` is the module `<name>` here; run one with
//! `cargo test -p <crate> --test it <name>::`.

mod browser;
mod common;
mod deploy;
mod embedded;
mod environments;
mod frameworks;
mod pool_mode;
mod readme;
mod recovery;
mod secrets;
mod webapp;
