//! The load tool against the real binary on tiny counts: it runs end to end and its numbers
//! add up. (Timing goals live in the benchmarks, not here.)

mod support;

use clap::Parser;
use ferry_benches::report::Progress;
use ferry_benches::{ferry_adapter, Args};
use std::sync::Arc;
use support::Server;

#[test]
fn load_tool_smoke_run() {
    let dir = support::temp_dir("bench-smoke");
    let server = Server::start(&dir, "127.0.0.1:0", &["--set", "segment_bytes_max=4194304"]);
    let url = server.url();
    let args = Args::parse_from(["ferry-bench", "--url", &url, "--count", "2000", "--publishers", "2", "--subscribers", "2", "--topic", "smoke"]);
    let report = ferry_adapter::run(&args, &Arc::new(Progress::default())).expect("load run");
    assert_eq!(report.messages, 2000);
    assert!(report.acked_publishes_per_s > 0.0 && report.deliveries_per_s > 0.0);
    let [p50, _, p99, _, max] = report.latency_us;
    assert!(p50 <= p99 && p99 <= max && max > 0.0, "{:?}", report.latency_us);

    let paced = Args::parse_from(["ferry-bench", "--url", &url, "--count", "200", "--rate", "2000", "--topic", "smoke-paced"]);
    let report = ferry_adapter::run(&paced, &Arc::new(Progress::default())).expect("paced run");
    assert_eq!(report.messages, 200);

    let scale = Args::parse_from(["ferry-bench", "--url", &url, "--idle-subscribers", "50", "--topic", "smoke-scale"]);
    let report = ferry_adapter::scale(&scale, 50, &Arc::new(Progress::default())).expect("scale run");
    assert_eq!(report.subscribers, 50);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
