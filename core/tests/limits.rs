//! Memory bounded in bytes: the topics' caches in total, the read cache, bytes waiting for
//! the disk, and fetches waiting for the disk; a full budget answers `overloaded`.

mod common;

use common::*;
use ferry_core::Config;
use serde_json::json;

fn body(bytes: usize) -> serde_json::Value {
    json!("b".repeat(bytes))
}

#[test]
fn all_topic_caches_together_stay_within_cache_bytes_total() {
    let config = Config { topic_cache_bytes: 32 << 10, cache_bytes_total: 64 << 10, ..Config::default() };
    let mut h = harness(config);
    for round in 0..20 {
        for t in 0..40 {
            publish(&mut h, &format!("topic-{t}"), None, json!({"round": round, "pad": "p".repeat(1000)}));
        }
    }
    let memory = h.node.memory();
    assert!(memory.topic_cache_bytes <= 64 << 10, "{memory:?}");
    subscribe(&mut h, S, "topic-0", "g", json!({"window": 100}));
    assert_eq!(msgs(&mut h, S).len(), 20, "messages evicted from the cache are read from disk");
}

#[test]
fn the_read_cache_stays_within_read_cache_bytes() {
    let config = Config { topic_cache_bytes: 1, read_cache_bytes: 20 << 10, ..Config::default() };
    let mut h = harness(config);
    for _ in 0..50 {
        publish(&mut h, "t", None, body(2000));
    }
    h.send_json(S, json!({"op": "fetch", "req": 1, "topic": "t", "from": 1, "to": 50}));
    let fetched = h.take_op(S, "fetched");
    assert_eq!(fetched[0]["messages"].as_array().unwrap().len(), 50);
    let memory = h.node.memory();
    assert!(memory.read_cache_bytes <= 20 << 10, "{memory:?}");
}

#[test]
fn bytes_waiting_for_the_disk_are_bounded_and_answered_overloaded() {
    let config = Config { frame_bytes_max: 16 << 10, segment_bytes_max: 1 << 20, pending_publish_bytes_max: 64 << 10, ..Config::default() };
    let mut h = harness(config);
    h.hold_writes = true;
    for n in 0..20 {
        h.send_json(P, json!({"op": "pub", "req": n, "topic": "t", "body": body(8000)}));
    }
    let refused = h.take_op(P, "error");
    assert!(!refused.is_empty(), "20 x 8 KB cannot all wait behind a 64 KiB budget");
    assert!(refused.iter().all(|e| e["code"] == "overloaded" && e["message"].as_str().unwrap().contains("pending_publish_bytes_max")), "{refused:?}");
    assert!(h.node.memory().unwritten_log_bytes <= (64 << 10) + 8100);
    h.hold_writes = false;
    h.complete_writes();
    assert_eq!(h.take_op(P, "puback").len(), 20 - refused.len());
    publish(&mut h, "t", None, body(8000));
}

#[test]
fn fetches_waiting_for_the_disk_are_bounded_per_connection() {
    let config = Config { topic_cache_bytes: 1, ..Config::default() };
    let mut h = harness(config);
    for n in 0..10 {
        publish(&mut h, "t", None, json!(n));
    }
    h.hold_reads = true;
    for n in 0..5u64 {
        h.send_json(S, json!({"op": "fetch", "req": n, "topic": "t", "from": n + 1, "to": n + 1}));
    }
    let refused = h.take_op(S, "error");
    assert_eq!(refused.len(), 1, "the fifth fetch waiting on one connection is refused");
    assert_eq!((refused[0]["code"].as_str(), refused[0]["req"].as_u64()), (Some("overloaded"), Some(4)));
    h.hold_reads = false;
    h.complete_writes();
    assert_eq!(h.take_op(S, "fetched").len(), 4);
}
