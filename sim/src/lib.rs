//! ferry-sim: the core's real state machines driven through seeded faults on a virtual clock.
//! One seed decides everything (the fault mix included), so a failing seed replays exactly.

pub mod checker;
pub mod clients;
pub mod disk;
pub mod identity;
pub mod misuse;
pub mod world;

use ferry_core::TestBug;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Drop,
    Delay,
    Partition,
    Crash,
    DiskFull,
    Eio,
    BitFlip,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [FaultKind::Drop, FaultKind::Delay, FaultKind::Partition, FaultKind::Crash, FaultKind::DiskFull, FaultKind::Eio, FaultKind::BitFlip];

    pub fn parse(name: &str) -> Result<FaultKind, String> {
        Ok(match name {
            "drop" => FaultKind::Drop,
            "delay" => FaultKind::Delay,
            "partition" => FaultKind::Partition,
            "crash" => FaultKind::Crash,
            "disk-full" => FaultKind::DiskFull,
            "eio" => FaultKind::Eio,
            "bit-flip" => FaultKind::BitFlip,
            other => return Err(format!("unknown fault '{other}' (drop, delay, partition, crash, disk-full, eio, bit-flip)")),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub faults: Vec<FaultKind>,
    pub trace: bool,
    pub bug: Option<TestBug>,
}

impl Options {
    pub fn new(seed: u64) -> Options {
        Options { seed, faults: FaultKind::ALL.to_vec(), trace: false, bug: None }
    }
}

#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub virtual_ms: u64,
    pub heal_ms: u64,
    pub pubacked: u64,
    pub deliveries: u64,
    pub redeliveries: u64,
    /// Messages the nodes settled unseen in coalescing groups (their own count).
    pub coalesced: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub faults: Vec<(String, u64)>,
    /// (invariant, detail); empty when the seed passed.
    pub violations: Vec<(&'static str, String)>,
    pub trace_hash: u64,
    pub swarm: String,
}

impl SeedReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs one seed. A panic inside the core (a broken assertion) is reported as a violation.
pub fn run_seed(options: &Options) -> SeedReport {
    let attempt = catch_unwind(AssertUnwindSafe(|| world::World::new(options.clone()).run()));
    attempt.unwrap_or_else(|panic| {
        let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        SeedReport {
            seed: options.seed,
            virtual_ms: 0,
            heal_ms: 0,
            pubacked: 0,
            deliveries: 0,
            redeliveries: 0,
            coalesced: 0,
            latency_p50_ms: 0.0,
            latency_p99_ms: 0.0,
            latency_max_ms: 0.0,
            faults: Vec::new(),
            violations: vec![("assertion", message)],
            trace_hash: 0,
            swarm: String::new(),
        }
    })
}

/// The command that replays `seed` with the same settings.
pub fn replay_command(options: &Options) -> String {
    let mut command = format!("cargo run --release -p ferry-sim -- --seed {}", options.seed);
    if options.faults.len() != FaultKind::ALL.len() {
        let names: Vec<String> = options.faults.iter().map(|f| format!("{f:?}").to_lowercase()).collect();
        command.push_str(&format!(" --faults {}", names.join(",")));
    }
    if let Some(bug) = options.bug {
        command.push_str(&format!(" --bug {bug:?}"));
    }
    command
}
