//! ferry-bench: a load tool that measures ferry (and, with `--features peers`, Mosquitto and
//! NATS JetStream) with one workload: P publishers, S subscribers, N messages of B bytes.

use clap::Parser;
use ferry_benches::report::{self, Progress, Report};
use ferry_benches::{ferry_adapter, Args, System};
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.topic.is_none() {
        let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        args.topic = Some(format!("bench-{unique}"));
    }
    if args.publishers == 0 || args.subscribers == 0 || args.count == 0 || args.size < 32 {
        eprintln!("ferry-bench: need publishers >= 1, subscribers >= 1, count >= 1, size >= 32");
        return ExitCode::from(2);
    }
    let progress = Arc::new(Progress::default());
    if let Some(every_ms) = args.probe_ms {
        return match ferry_benches::probe::run(&args, every_ms) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferry-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(keys) = args.peak_sync_keys {
        return match ferry_benches::peak_sync::run(&args, keys, &progress) {
            Ok(result) if args.json => {
                println!("{}", result.to_json());
                ExitCode::SUCCESS
            }
            Ok(result) => {
                println!("{}", result.table());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferry-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cpu_before = args.pid.and_then(report::cpu_ms);
    let result = match (args.system, args.idle_subscribers) {
        (System::Ferry, Some(idle)) => ferry_adapter::scale(&args, idle, &progress),
        (System::Ferry, None) => ferry_adapter::run(&args, &progress),
        #[cfg(feature = "peers")]
        (System::Mosquitto, None) => ferry_benches::peers::mqtt(&args, &progress),
        #[cfg(feature = "peers")]
        (System::Nats, None) => ferry_benches::peers::nats(&args, &progress),
        (other, _) => Err(format!("{other:?} is not available in this build (scale runs are ferry-only; peers need --features peers)")),
    };
    match result {
        Ok(report) => {
            let server_cpu_ms = cpu_before.zip(args.pid.and_then(report::cpu_ms)).map(|(before, after)| after.since(before));
            let report = Report { server_peak_rss_kib: args.pid.and_then(report::peak_rss_kib), server_cpu_ms, ..report };
            if args.json {
                println!("{}", report.to_json());
            } else {
                println!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
