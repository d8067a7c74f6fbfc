//! The log: JSON lines with RFC 3339 timestamps when asked (`--log-format json`), and levels
//! per module (`--log-level info,ferry::peers=warn`).

mod support;

use serde_json::Value;
use std::net::TcpListener;
use support::Server;

#[test]
fn json_lines_with_rfc3339_timestamps_and_levels_per_module() {
    let dir = support::temp_dir("logging");
    let peer = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let peers = format!("peers=1@{peer}");
    let peer_listen = format!("peer_listen={peer}");
    let args = ["--log-format", "json", "--log-level", "info,ferry::peers=warn", "--set", &peers, "--set", &peer_listen];
    let server = Server::start(&dir, "127.0.0.1:0", &args);
    let text = server.log_text();
    let lines: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))).collect();
    let listening = lines.iter().find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("listening on ws://"))).expect("the listening line");
    assert_eq!((listening["level"].as_str(), listening["target"].as_str()), (Some("INFO"), Some("ferry::server")));
    // RFC 3339, UTC: 2026-11-27T04:09:21.734539Z
    let timestamp = listening["timestamp"].as_str().unwrap();
    let shape: String = timestamp.chars().map(|c| if c.is_ascii_digit() { 'd' } else { c }).collect();
    assert!(shape.starts_with("dddd-dd-ddTdd:dd:dd.") && shape.ends_with('Z'), "{timestamp}");
    // ferry::peers logs its listening line at info: held back by its own level.
    assert!(!text.contains("listening for peers"), "{text}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
