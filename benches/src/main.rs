//! ferry-bench: a load tool that measures ferry (and, with `--features peers`, Mosquitto and
//! NATS JetStream) with one workload: P publishers, S subscribers, N messages of B bytes.

mod ferry_adapter;
#[cfg(feature = "peers")]
mod peers;
mod report;

use clap::{Parser, ValueEnum};
use report::{Progress, Report};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum System {
    Ferry,
    Mosquitto,
    Nats,
}

#[derive(Parser, Clone, Debug)]
#[command(name = "ferry-bench", about = "Load tool: publish, deliver, ack; report throughput, latency and server memory")]
pub struct Args {
    #[arg(long, value_enum, default_value = "ferry")]
    pub system: System,
    /// ferry: ws://HOST:PORT/ws; mosquitto: HOST:PORT; nats: nats://HOST:PORT
    #[arg(long, default_value = "ws://127.0.0.1:7700/ws")]
    pub url: String,
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Messages in all (split across publishers); every subscriber receives all of them.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Target publish rate in msgs/s over all publishers; 0 = as fast as pubacks allow.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Publishes each publisher keeps unacknowledged.
    #[arg(long, default_value_t = 1_000)]
    pub publish_window: usize,
    /// Subscription window (in-flight messages per subscriber).
    #[arg(long, default_value_t = 1_024)]
    pub window: u32,
    /// Topic (a unique one per run by default, so runs do not see each other's messages).
    #[arg(long)]
    pub topic: Option<String>,
    /// PID of the server, to report its peak RSS (VmHWM).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// Scale scenario: hold this many idle subscribers, then publish one message to all.
    #[arg(long)]
    pub idle_subscribers: Option<usize>,
    /// Source addresses for the scale scenario's connections, e.g. 127.0.0.1,127.0.0.2.
    #[arg(long, value_delimiter = ',')]
    pub source_addrs: Vec<String>,
    #[arg(long)]
    pub json: bool,
    /// Write every delivery's latency (us, in arrival order per subscriber) to this file.
    #[arg(long)]
    pub dump_latencies: Option<std::path::PathBuf>,
}

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
    let result = match (args.system, args.idle_subscribers) {
        (System::Ferry, Some(idle)) => ferry_adapter::scale(&args, idle, &progress),
        (System::Ferry, None) => ferry_adapter::run(&args, &progress),
        #[cfg(feature = "peers")]
        (System::Mosquitto, None) => peers::mqtt(&args, &progress),
        #[cfg(feature = "peers")]
        (System::Nats, None) => peers::nats(&args, &progress),
        (other, _) => Err(format!("{other:?} is not available in this build (scale runs are ferry-only; peers need --features peers)")),
    };
    match result {
        Ok(report) => {
            let report = Report { server_peak_rss_kib: args.pid.and_then(report::peak_rss_kib), ..report };
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
