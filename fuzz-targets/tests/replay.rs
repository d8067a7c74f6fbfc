//! Replays every saved input of `fuzz/corpus/<target>/` through its target, then a fixed
//! number of pseudo-random inputs (seeded ChaCha bytes, read through `arbitrary`), so the
//! targets' checks run on stable in every `cargo test --workspace`. A failing input is named:
//! `cargo fuzz run <target> <file>` (nightly) or this test replays it.

use ferry_fuzz_targets::TARGETS;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;

/// Pseudo-random inputs per target, and the longest one.
const RANDOM_INPUTS: u64 = 1_000;
const RANDOM_BYTES_MAX: usize = 4_096;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.expect("dir entry").path()).collect();
    files.sort();
    files.into_iter().map(|path| (path.clone(), std::fs::read(&path).expect("corpus file reads"))).collect()
}

fn replay(target: &str) {
    let run = TARGETS.iter().find(|(name, _)| *name == target).expect("target exists").1;
    let inputs = corpus(target);
    assert!(!inputs.is_empty(), "fuzz/corpus/{target}/ has no inputs");
    for (path, bytes) in inputs {
        if std::panic::catch_unwind(|| run(&bytes)).is_err() {
            panic!("{target}: saved input {} fails", path.display());
        }
    }
    for seed in 0..RANDOM_INPUTS {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut bytes = vec![0u8; rng.gen_range(0..=RANDOM_BYTES_MAX)];
        rng.fill_bytes(&mut bytes);
        if std::panic::catch_unwind(|| run(&bytes)).is_err() {
            panic!("{target}: pseudo-random input of seed {seed} fails");
        }
    }
}

#[test]
fn frame_corpus_and_random_inputs() {
    replay("frame");
}

#[test]
fn segments_corpus_and_random_inputs() {
    replay("segments");
}

#[test]
fn harness_corpus_and_random_inputs() {
    replay("harness");
}

#[test]
fn raft_corpus_and_random_inputs() {
    replay("raft");
}
