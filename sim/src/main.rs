use clap::Parser;
use ferry_core::TestBug;
use ferry_sim::{replay_command, run_seed, FaultKind, Options};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "ferry-sim", about = "Deterministic simulation of ferry under seeded faults")]
struct Cli {
    /// Run one seed and print its summary.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run a swarm of seeds, e.g. 1..10000 (end exclusive).
    #[arg(long)]
    seeds: Option<String>,
    /// Comma-separated fault kinds to allow (default: all): drop,delay,partition,crash,disk-full,eio,bit-flip
    #[arg(long)]
    faults: Option<String>,
    /// Print the event log of the seed.
    #[arg(long)]
    trace: bool,
    /// Switch on a deliberately wrong behaviour (see --list-bugs).
    #[arg(long)]
    bug: Option<String>,
    /// Print the names of the deliberate bugs, one per line.
    #[arg(long)]
    list_bugs: bool,
}

fn parse_range(text: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = text.split_once("..").ok_or("--seeds takes A..B")?;
    let a = a.parse().map_err(|_| "bad range start")?;
    let b = b.parse().map_err(|_| "bad range end")?;
    if a >= b {
        return Err("--seeds A..B needs A < B".into());
    }
    Ok(a..b)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ferry-sim: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<bool, String> {
    let faults = match &cli.faults {
        Some(list) => list.split(',').map(|f| FaultKind::parse(f.trim())).collect::<Result<Vec<_>, _>>()?,
        None => FaultKind::ALL.to_vec(),
    };
    if cli.list_bugs {
        for bug in TestBug::ALL {
            println!("{}", bug.name());
        }
        return Ok(true);
    }
    let bug = match cli.bug.as_deref() {
        None => None,
        Some(name) => Some(TestBug::parse(name).ok_or_else(|| format!("unknown bug '{name}' (--list-bugs lists them)"))?),
    };
    let options = |seed| Options { seed, faults: faults.clone(), trace: cli.trace, bug };
    if let Some(range) = &cli.seeds {
        return Ok(swarm(parse_range(range)?, &options));
    }
    let seed = cli.seed.unwrap_or(1);
    let started = Instant::now();
    let report = run_seed(&options(seed));
    let wall = started.elapsed();
    println!("seed {seed}");
    println!("  swarm            {}", report.swarm);
    println!("  virtual time     {} ms ({} ms of it healing)", report.virtual_ms, report.heal_ms);
    println!("  wall time        {:.1} ms ({:.0}x faster than real time)", wall.as_secs_f64() * 1e3, report.virtual_ms as f64 / 1e3 / wall.as_secs_f64());
    println!("  pubacked         {}", report.pubacked);
    println!("  deliveries       {} ({} redeliveries; {} coalesced)", report.deliveries, report.redeliveries, report.coalesced);
    println!("  latency (virt.)  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms", report.latency_p50_ms, report.latency_p99_ms, report.latency_max_ms);
    println!("  faults           {:?}", report.faults);
    println!("  trace hash       {:016x}", report.trace_hash);
    for (invariant, detail) in &report.violations {
        println!("  VIOLATION {invariant}: {detail}");
    }
    if !report.passed() {
        println!("replay: {}", replay_command(&options(seed)));
    }
    Ok(report.passed())
}

fn swarm(range: std::ops::Range<u64>, options: &dyn Fn(u64) -> Options) -> bool {
    let started = Instant::now();
    let total = range.end - range.start;
    let (mut failed, mut virtual_ms) = (Vec::new(), 0u64);
    let mut slowest = (0u64, std::time::Duration::ZERO);
    let mut walls = Vec::with_capacity(total as usize);
    for (done, seed) in range.enumerate() {
        let mut opts = options(seed);
        opts.trace = false;
        let seed_started = Instant::now();
        let report = run_seed(&opts);
        let wall = seed_started.elapsed();
        walls.push(report.virtual_ms as f64 / 1e3 / wall.as_secs_f64().max(1e-9));
        if wall > slowest.1 {
            slowest = (seed, wall);
        }
        virtual_ms += report.virtual_ms;
        if !report.passed() {
            let (invariant, detail) = &report.violations[0];
            eprintln!("\nseed {seed} FAILED {invariant}: {detail}\n  replay: {}", replay_command(&opts));
            failed.push(seed);
        }
        if (done + 1) % 50 == 0 || done as u64 + 1 == total {
            let secs = started.elapsed().as_secs_f64();
            eprint!("\r{}/{total} seeds, {} failed, {:.0} seeds/min, {:.0}x real time   ", done + 1, failed.len(), (done + 1) as f64 / secs * 60.0, virtual_ms as f64 / 1e3 / secs);
        }
    }
    eprintln!();
    walls.sort_by(f64::total_cmp);
    let median_ratio = walls.get(walls.len() / 2).copied().unwrap_or(0.0);
    println!("median seed {median_ratio:.0}x real time; slowest seed {} took {:.0} ms", slowest.0, slowest.1.as_secs_f64() * 1e3);
    println!("{} seeds, {} failed{}", total, failed.len(), if failed.is_empty() { String::new() } else { format!(": {failed:?}") });
    failed.is_empty()
}
