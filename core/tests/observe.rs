//! What the node shows operators (metrics, admin API, console): latencies, a group's oldest
//! unacked message, the log on disk.

mod common;

use common::*;
use ferry_core::group::{EntryState, IdPosition};
use ferry_core::latency::LATENCY_BOUNDS_NS;
use ferry_core::node::message_trace::Storage;
use ferry_core::Config;
use serde_json::json;

/// The bucket (index into the histogram's counts) a latency of `ns` falls in.
fn bucket_of(ns: u64) -> usize {
    LATENCY_BOUNDS_NS.iter().position(|&bound| ns <= bound).unwrap_or(LATENCY_BOUNDS_NS.len())
}

#[test]
fn publish_to_puback_counts_the_wait_for_the_disk() {
    let mut h = harness(Config::default());
    h.hold_writes = true;
    h.send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "body": 1}));
    h.advance_ms(3);
    h.hold_writes = false;
    h.complete_writes();
    assert_eq!(h.take_op(P, "puback").len(), 1);
    let latency = h.node.stats().publish_to_puback;
    assert_eq!(latency.count(), 1);
    assert_eq!(latency.counts[bucket_of(3_000_000)], 1, "{latency:?}");
    assert_eq!(latency.sum_ns, 3_000_000);
}

#[test]
fn store_to_deliver_counts_first_deliveries_only() {
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    h.advance_ms(30);
    subscribe(&mut h, S, "t", "g", json!({}));
    assert_eq!(msgs(&mut h, S).len(), 1);
    h.advance_ms(Config::default().ack_timeout_ms + 1);
    let again = msgs(&mut h, S);
    assert_eq!(again.len(), 1, "redelivered");
    h.send_json(S, json!({"op": "nack", "topic": "t", "group": "g", "ids": [again[0]["id"]]}));
    assert_eq!((h.node.stats().nacked, h.node.topics_view()[0].groups[0].counters.nacked), (1, 1), "the nack is counted");
    let latency = h.node.stats().store_to_deliver;
    assert_eq!(latency.count(), 1, "a redelivery is not a new store → delivery latency");
    assert_eq!(latency.counts[bucket_of(30_000_000)], 1, "{latency:?}");
}

#[test]
fn a_group_shows_its_oldest_unacked_message_and_its_age_whether_cached_or_not() {
    // A cache of one message: the oldest unacked is dated by the topic's timeline.
    let mut h = harness(Config { topic_cache_bytes: 1, ..Config::default() });
    let first = publish(&mut h, "t", None, json!(1));
    h.advance_ms(10_000);
    publish(&mut h, "t", None, json!(2));
    h.advance_ms(2_000);
    subscribe(&mut h, S, "t", "g", json!({"window": 1}));
    let got = msgs(&mut h, S);
    assert_eq!(ids(&got), vec![first]);
    let view = h.node.topics_view();
    let group = &view[0].groups[0];
    assert_eq!((group.in_flight, group.backlog, group.oldest_unacked_id), (1, 2, Some(first)));
    assert_eq!(group.oldest_unacked_age_ms, Some(12_000));
    ack(&mut h, S, "t", "g", &[first]);
    let view = h.node.topics_view();
    let group = &view[0].groups[0];
    assert_eq!((group.oldest_unacked_id, group.oldest_unacked_age_ms), (Some(first + 1), Some(2_000)), "the second, cached");
    let second = ids(&msgs(&mut h, S));
    ack(&mut h, S, "t", "g", &second);
    let view = h.node.topics_view();
    assert_eq!((view[0].groups[0].oldest_unacked_id, view[0].groups[0].backlog), (None, 0));
}

#[test]
fn the_log_on_disk_and_retention_deletions_are_counted() {
    let config = Config { frame_bytes_max: 1024, segment_bytes_max: 4096, retention_bytes: 4096 * 1000, ..Config::default() };
    let mut h = harness(config);
    for _ in 0..100 {
        publish(&mut h, "t", None, json!("x".repeat(200)));
    }
    let disk = h.node.disk_view();
    assert_eq!(disk.segments, h.disk.files.len());
    assert_eq!(disk.bytes, h.disk.files.values().map(|f| f.len() as u64).sum::<u64>());
    assert_eq!(h.node.stats().segments_deleted, 0);
    h.config.retention_bytes = 4096 * 2;
    h.restart(true);
    h.advance_ms(1_100);
    let deleted = h.node.stats().segments_deleted;
    assert!(deleted > 0 && h.disk.files.len() < disk.segments, "{deleted} deleted, {} files left", h.disk.files.len());
    assert_eq!(h.node.disk_view().segments, h.disk.files.len());
}

#[test]
fn a_trace_tells_where_a_message_is_and_what_happened_to_it() {
    let mut h = harness(Config::default());
    let id = publish(&mut h, "t", None, json!(1));
    let other = publish(&mut h, "t", None, json!(2));
    subscribe(&mut h, S, "t", "g", json!({"window": 1}));
    assert_eq!(ids(&msgs(&mut h, S)), vec![id]);
    h.advance_ms(Config::default().ack_timeout_ms + 1);
    assert_eq!(ids(&msgs(&mut h, S)), vec![id], "redelivered");
    ack(&mut h, S, "t", "g", &[id]);
    let trace = h.node.trace_message("t", id).expect("topic t");
    let events: Vec<(&str, Option<u32>)> = trace.events.iter().map(|line| (line.event, line.attempt)).collect();
    assert_eq!(events, vec![("stored", None), ("delivered", Some(1)), ("timed_out", None), ("delivered", Some(2)), ("acked", None)]);
    assert!(trace.events[1..].iter().all(|line| line.group.as_deref() == Some("g")));
    assert!(matches!(trace.storage, Storage::Stored(loc) if loc.len > 0));
    assert_eq!(trace.groups, vec![("g".to_string(), IdPosition::Settled)]);
    assert_eq!(trace.events_forgotten_until_ms, None);
    // The next one is in flight now; an id not given yet is not stored.
    let next = h.node.trace_message("t", other).unwrap();
    assert!(matches!(next.groups[0].1, IdPosition::Held(EntryState::InFlight { conn, attempts: 1, .. }) if conn == S), "{next:?}");
    assert_eq!(h.node.trace_message("t", 99).unwrap().storage, Storage::NotYetStored);
    assert!(h.node.trace_message("nothing", 1).is_none());
}

#[test]
fn the_trace_ring_is_bounded_in_bytes_and_says_when_it_let_go() {
    let event_bytes = std::mem::size_of::<ferry_core::trace_book::TraceEvent>() as u64;
    let mut h = harness(Config { trace_bytes_max: 4 * event_bytes, ..Config::default() });
    let first = publish(&mut h, "t", None, json!(1));
    for n in 0..8 {
        publish(&mut h, "t", None, json!(n));
    }
    assert_eq!(h.node.memory().trace_bytes, 4 * event_bytes);
    let trace = h.node.trace_message("t", first).unwrap();
    assert!(trace.events.is_empty() && trace.events_forgotten_until_ms.is_some(), "{trace:?}");
    assert!(matches!(trace.storage, Storage::Stored(_)), "the state still says where it is");
}
