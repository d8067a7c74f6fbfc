//! Coalescing groups against the real binary: a slow consumer of many changes over few keys
//! is handed the newest of each key (last), not every change; the group keeps its window
//! across a restart and refuses members asking for another.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{http_get, Client, Server};

const CHANGES: u64 = 1_000;
const KEYS: u64 = 10;

fn sub_frame(coalesce_ms: Option<u64>) -> Value {
    let mut frame = json!({"op": "sub", "req": "s", "topic": "orders", "group": "sync", "from": "earliest", "window": 1});
    if let Some(ms) = coalesce_ms {
        frame["coalesce_ms"] = json!(ms);
    }
    frame
}

/// Publishes `CHANGES` changes of `KEYS` orders (key `order-{n % KEYS}`), at most 100 ahead
/// of their pubacks; returns the newest id of each key.
fn publish_changes(url: &str) -> BTreeMap<String, u64> {
    let mut publisher = Client::connect(url).unwrap();
    let mut keys = BTreeMap::new();
    let mut newest = BTreeMap::new();
    let mut take_puback = |publisher: &mut Client, keys: &mut BTreeMap<u64, String>| {
        let puback = publisher.expect_op("puback");
        let key = keys.remove(&puback["req"].as_u64().unwrap()).unwrap();
        let id = puback["id"].as_u64().unwrap();
        let slot = newest.entry(key).or_insert(0);
        *slot = id.max(*slot);
    };
    for n in 0..CHANGES {
        let key = format!("order-{}", n % KEYS);
        publisher.send(&json!({"op": "pub", "req": n, "topic": "orders", "key": key, "body": {"change": n}})).unwrap();
        keys.insert(n, key);
        if keys.len() >= 100 {
            take_puback(&mut publisher, &mut keys);
        }
    }
    while !keys.is_empty() {
        take_puback(&mut publisher, &mut keys);
    }
    newest
}

/// Receives and acks (each `ack_delay` after it came) until a second passes without a
/// message; returns (key, id) of every delivery, in order.
fn consume_slowly(consumer: &mut Client, ack_delay: Duration, until: impl Fn(&[(String, u64)]) -> bool) -> Vec<(String, u64)> {
    let mut handed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        let Some(frame) = consumer.recv().expect("connection alive") else {
            if until(&handed) && quiet_since.elapsed() > Duration::from_secs(1) {
                return handed;
            }
            continue;
        };
        if frame["op"] != "msg" {
            continue;
        }
        quiet_since = Instant::now();
        let id = frame["id"].as_u64().unwrap();
        handed.push((frame["key"].as_str().unwrap().to_string(), id));
        std::thread::sleep(ack_delay);
        consumer.send(&json!({"op": "ack", "topic": "orders", "group": "sync", "ids": [id]})).unwrap();
    }
    panic!("the consumer did not settle within 60 s: it was handed {handed:?}");
}

#[test]
fn a_slow_consumer_of_a_thousand_changes_over_ten_keys_gets_few_messages_and_the_newest_of_each_key_last() {
    let dir = support::temp_dir("coalescing-slow");
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let url = server.url();
    let mut consumer = Client::connect(&url).unwrap();
    consumer.send(&sub_frame(Some(60_000))).unwrap();
    consumer.expect_op("suback");
    let publishing = std::thread::spawn({
        let url = url.clone();
        move || publish_changes(&url)
    });
    // One message at a time, each acked 20 ms after it came: far slower than the publisher.
    let newest_seen = |handed: &[(String, u64)]| handed.iter().map(|(_, id)| *id).max().unwrap_or(0) >= CHANGES;
    let handed = consume_slowly(&mut consumer, Duration::from_millis(20), newest_seen);
    let newest = publishing.join().unwrap();
    eprintln!("{} deliveries for {CHANGES} changes over {KEYS} keys", handed.len());

    assert!(handed.len() < 200, "{} deliveries for {CHANGES} changes over {KEYS} keys; the first 20: {:?}", handed.len(), &handed[..20]);
    let mut last_of_key: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, id) in &handed {
        let last = last_of_key.entry(key).or_insert(0);
        assert!(*id > *last, "key {key}: id {id} handed after id {last}");
        *last = *id;
    }
    for (key, id) in &newest {
        assert_eq!(last_of_key.get(key.as_str()), Some(id), "key {key}: its newest change (id {id}) must be handed last");
    }
    let (_, metrics) = http_get(&server.addr, "/metrics");
    let coalesced = metrics.lines().find(|l| l.starts_with("ferry_group_coalesced_total{")).and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert_eq!(coalesced, Some(CHANGES - handed.len() as u64), "every change not handed was coalesced:\n{metrics}");
}

#[test]
fn a_group_keeps_its_window_across_a_restart_and_refuses_another() {
    let dir = support::temp_dir("coalescing-restart");
    let port = support::restartable_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Server::start(&dir, &listen, &[]);
    let mut client = Client::connect(&server.url()).unwrap();
    client.send(&json!({"op": "sub", "req": "zero", "topic": "orders", "group": "sync", "coalesce_ms": 0})).unwrap();
    let refused = client.expect_op("error");
    assert_eq!((refused["req"].as_str(), refused["code"].as_str()), (Some("zero"), Some("bad_frame")), "{refused}");
    client.send(&sub_frame(Some(5_000))).unwrap();
    client.expect_op("suback");
    client.close();
    server.kill();

    let server = Server::start(&dir, &listen, &[]);
    let mut client = Client::connect(&server.url()).unwrap();
    for other in [None, Some(4_000)] {
        client.send(&sub_frame(other)).unwrap();
        let refused = client.expect_op("error");
        assert_eq!(refused["code"], "conflict", "{refused}");
        assert!(refused["message"].as_str().unwrap().contains("coalesce_ms 5000"), "{refused}");
    }
    // Published after the restart, consumed after all of it is stored: one message per key.
    let newest = publish_changes(&server.url());
    client.send(&sub_frame(Some(5_000))).unwrap();
    client.expect_op("suback");
    let handed = consume_slowly(&mut client, Duration::ZERO, |handed| handed.len() as u64 >= KEYS);
    assert_eq!(handed.len() as u64, KEYS, "one message per key; the first 20: {:?}", &handed[..handed.len().min(20)]);
    let handed: BTreeMap<String, u64> = handed.into_iter().collect();
    assert_eq!(handed, newest, "only the newest change of each key is handed");
}
