//! The bodies of ferry's fuzz targets, in a crate that builds on stable: `fuzz/` (cargo-fuzz,
//! nightly) runs each under libFuzzer, and `tests/replay.rs` replays the saved corpus and a
//! fixed set of pseudo-random inputs in every `cargo test --workspace`. Each target takes raw
//! bytes and reads them through `arbitrary::Unstructured`; a target returns normally or panics
//! (a finding).

pub mod frame;
pub mod harness;
pub mod raft;
pub mod segments;

/// A target's body: returns, or panics on a finding.
pub type Target = fn(&[u8]);

/// Each target: its name (the directory of its corpus under `fuzz/corpus/`) and its body.
pub const TARGETS: &[(&str, Target)] = &[("frame", frame::run), ("segments", segments::run), ("harness", harness::run), ("raft", raft::run)];
