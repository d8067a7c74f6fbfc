//! In-flight state past `group_state_bytes_max` against the real binary: chunks of it go to
//! `shard-0.spill` in the data directory and come back for acks and ack deadlines; a restart
//! (after `kill -9`) starts without the file and redelivers what was unacked.

mod support;

use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{http_get, Client, Server};

const MESSAGES: u64 = 1_000;

/// The value of metric line `name` (with its labels, if any) in `/metrics`.
fn metric(server: &Server, name: &str) -> Option<u64> {
    let (_, text) = http_get(&server.addr, "/metrics");
    text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Subscribes with room for every message and takes `count` deliveries: their ids.
fn receive(url: &str, count: usize) -> (Client, BTreeSet<u64>) {
    let mut consumer = Client::connect(url).unwrap();
    consumer.send(&json!({"op": "sub", "req": "s", "topic": "orders", "group": "sync", "from": "earliest", "window": 2_000})).unwrap();
    consumer.expect_op("suback");
    let mut ids = BTreeSet::new();
    while ids.len() < count {
        ids.insert(consumer.expect_op("msg")["id"].as_u64().unwrap());
    }
    (consumer, ids)
}

fn spill_file_len(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir.join("shard-0.spill")).ok().map(|m| m.len())
}

#[test]
fn in_flight_state_past_its_budget_is_spilled_brought_back_for_acks_and_gone_after_a_kill() {
    let dir = support::temp_dir("spill");
    let listen = format!("127.0.0.1:{}", support::restartable_port());
    let settings = ["--set", "group_state_bytes_max=1", "--set", "group_state_chunk_entries=64", "--set", "ack_timeout_ms=600000"];
    let mut server = Server::start(&dir, &listen, &settings);
    let mut publisher = Client::connect(&server.url()).unwrap();
    let published: BTreeSet<u64> = support::publish_many(&mut publisher, "orders", MESSAGES, |n| json!({"n": n})).into_iter().collect();
    let (mut consumer, delivered) = receive(&server.url(), MESSAGES as usize);
    assert_eq!(delivered, published);
    let spilled = "ferry_group_state_spilled_bytes";
    wait_for("the in-flight state to be spilled", || metric(&server, spilled).is_some_and(|bytes| bytes > 0));
    assert!(spill_file_len(&dir).is_some_and(|len| len > 0), "the spill file holds it");

    // Acks of spilled messages bring their chunks back and settle them.
    let first_half: Vec<u64> = published.iter().copied().take(MESSAGES as usize / 2).collect();
    consumer.send(&json!({"op": "ack", "topic": "orders", "group": "sync", "ids": first_half})).unwrap();
    let backlog = "ferry_group_backlog{topic=\"orders\",group=\"sync\"}";
    wait_for("the first half acked", || metric(&server, backlog) == Some(MESSAGES / 2));
    // Acked positions are written within ack_persist_interval_ms (10 ms) and an fsync.
    std::thread::sleep(Duration::from_secs(1));
    server.kill();

    // In-flight state is not durable: the file goes, the unacked half comes again.
    let server = Server::start(&dir, &listen, &settings);
    assert_eq!(spill_file_len(&dir), None, "a start removes the spill file of the run before");
    let (mut consumer, again) = receive(&server.url(), MESSAGES as usize / 2);
    assert_eq!(again, published.iter().copied().skip(MESSAGES as usize / 2).collect::<BTreeSet<u64>>(), "the unacked half, redelivered");
    wait_for("the redelivered half to be spilled", || metric(&server, spilled).is_some_and(|bytes| bytes > 0));
    consumer.send(&json!({"op": "ack", "topic": "orders", "group": "sync", "ids": again})).unwrap();
    wait_for("every message acked", || metric(&server, backlog) == Some(0));
    wait_for("every spilled chunk back", || metric(&server, spilled) == Some(0));
}
