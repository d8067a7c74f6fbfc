//! Load protection against the real binary: a publisher over its rate gets `overloaded` with
//! `retry_after_ms` while another publisher goes on, and an address over its connection count
//! is answered 429 at the handshake.

mod support;

use serde_json::json;
use support::{Client, Server};

#[test]
fn a_fast_publisher_is_told_to_wait_and_a_slow_one_is_not() {
    let dir = support::temp_dir("rate");
    let set = ["--set", "publish_rate_per_connection=50", "--set", "publish_burst_per_connection=10", "--set", "connections_per_ip_max=3"];
    let server = Server::start(&dir, "127.0.0.1:0", &set);
    let mut fast = Client::connect(&server.url()).unwrap();
    let mut slow = Client::connect(&server.url()).unwrap();
    // The fast one sends 30 at once: its burst of 10 goes through, then it is told to wait.
    for req in 1..=30 {
        fast.send(&support::pub_frame(req, "t", json!(req))).unwrap();
    }
    let (mut acked, mut refused) = (0, Vec::new());
    while acked + refused.len() < 30 {
        let answer = fast.expect_op_any(&["puback", "error"]);
        if answer["op"] == "puback" {
            acked += 1;
        } else {
            refused.push(answer);
        }
    }
    assert!((10..=12).contains(&acked), "about the burst went through: {acked}");
    let first = &refused[0];
    assert_eq!(first["code"], json!("overloaded"), "{first}");
    assert!(first["retry_after_ms"].as_u64().is_some_and(|ms| (1..=20).contains(&ms)), "a wait of about one interval (20 ms): {first}");
    assert!(first["req"].as_u64().is_some(), "on the publish's own req: {first}");
    // The slow one is not held back by the fast one.
    slow.send(&support::pub_frame(100, "t", json!("slow"))).unwrap();
    assert_eq!(slow.expect_op_any(&["puback", "error"])["op"], json!("puback"));
    // The address has 2 connections open; a third is admitted, a fourth is refused with 429.
    let third = Client::connect(&server.url()).unwrap();
    let refused = Client::connect(&server.url()).err().unwrap_or_default();
    assert!(refused.contains("429"), "{refused}");
    drop(third);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
