//! A node in cluster mode whose shard has one voter, itself: publishes and group creations go
//! through raft (entries in the node's own log), and clients see what a single node gives.

use ferry_core::testkit::Harness;
use ferry_core::{Config, DiskError};
use serde_json::json;

mod common;

use common::*;

fn voter_alone() -> Config {
    Config { peers: "1@127.0.0.1:7811".into(), peer_listen: "127.0.0.1:7811".into(), node_id: 1, ..Config::default() }
}

/// How many raft entry records the node has written (kind 7 in the log's records).
fn raft_entries_on_disk(h: &Harness) -> usize {
    let mut count = 0;
    for (_, bytes) in h.disk.segments() {
        ferry_core::recovery::scan_segment(bytes, true, |_, _, record, _| count += usize::from(matches!(record, ferry_core::record::RecordRef::RaftEntry(_))));
    }
    count
}

#[test]
fn publishes_are_raft_entries_acknowledged_once_durable_and_delivered_in_order() {
    let mut h = harness(voter_alone());
    subscribe(&mut h, S, "t", "g", json!({}));
    h.hold_writes = true;
    for n in 0..3 {
        h.send_json(P, json!({"op": "pub", "req": n, "topic": "t", "body": n}));
    }
    assert!(h.take_op(P, "puback").is_empty(), "a puback went out before its entry was durable");
    assert!(msgs(&mut h, S).is_empty(), "a message was delivered before its entry was committed");
    h.hold_writes = false;
    h.complete_writes();
    let acked: Vec<u64> = h.take_op(P, "puback").iter().map(|a| a["id"].as_u64().unwrap()).collect();
    assert_eq!(acked, vec![1, 2, 3]);
    let delivered = msgs(&mut h, S);
    assert_eq!(ids(&delivered), vec![1, 2, 3]);
    assert_eq!(delivered[2]["body"], json!(2));
    assert_eq!(delivered[1]["prev"], json!(1));
    // The group creation, a leader's first (empty) entry and the three publishes.
    assert_eq!(raft_entries_on_disk(&h), 5);
}

#[test]
fn a_retried_producer_seq_is_stored_once_and_answered_with_the_first_id() {
    let mut h = harness(voter_alone());
    let frame = json!({"op": "pub", "req": 1, "topic": "t", "producer": "shop", "seq": 7, "body": "x"});
    h.hold_writes = true;
    h.send_json(P, frame.clone());
    h.send_json(P, frame.clone());
    h.hold_writes = false;
    h.complete_writes();
    h.send_json(P, frame);
    let acked: Vec<u64> = h.take_op(P, "puback").iter().map(|a| a["id"].as_u64().unwrap()).collect();
    assert_eq!(acked, vec![1, 1, 1], "a retry in flight and a retry after commit both answer the first id");
    assert_eq!(h.node.topic_next_id("t"), Some(2), "stored once");
    assert_eq!(publish(&mut h, "t", None, json!("y")), 2);
}

#[test]
fn a_new_group_admits_its_members_once_its_creation_is_applied_and_keeps_its_filter() {
    let mut h = harness(voter_alone());
    publish(&mut h, "t", Some("a1"), json!(1));
    publish(&mut h, "t", Some("b1"), json!(2));
    h.hold_writes = true;
    h.send_json(S, json!({"op": "sub", "req": "s", "topic": "t", "group": "g", "from": "earliest", "filter": {"key_prefix": "b"}}));
    assert!(h.take_op(S, "suback").is_empty(), "admitted before the group's creation was applied");
    h.hold_writes = false;
    h.complete_writes();
    assert_eq!(h.take_op(S, "suback").len(), 1);
    assert_eq!(ids(&msgs(&mut h, S)), vec![2], "the filter and the start chosen at apply hold");
    h.send_json(P, json!({"op": "sub", "req": "c", "topic": "t", "group": "g"}));
    assert_eq!(h.take_op(P, "error")[0]["code"], json!("conflict"));
}

#[test]
fn messages_no_longer_cached_are_read_back_from_their_entries() {
    let config = Config { topic_cache_bytes: 1, cache_bytes_total: 1, ..voter_alone() };
    let mut h = harness(config);
    let published: Vec<u64> = (0..5).map(|n| publish(&mut h, "t", Some("k"), json!({"n": n}))).collect();
    let reads_before = h.reads;
    subscribe(&mut h, S, "t", "g", json!({"window": 1}));
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let m = msgs(&mut h, S);
        assert_eq!(m.len(), 1);
        bodies.push(m[0]["body"]["n"].as_u64().unwrap());
        ack(&mut h, S, "t", "g", &ids(&m));
    }
    assert_eq!(bodies, vec![0, 1, 2, 3, 4]);
    assert!(h.reads > reads_before, "the messages came from the disk");
    assert_eq!(published, vec![1, 2, 3, 4, 5]);
}

#[test]
fn a_message_past_its_attempts_is_copied_to_the_dead_letter_topic_through_raft() {
    let config = Config { max_attempts: 1, ack_timeout_ms: 100, ..voter_alone() };
    let mut h = harness(config);
    subscribe(&mut h, S, "t", "g", json!({}));
    publish(&mut h, "t", Some("k"), json!("poison"));
    assert_eq!(ids(&msgs(&mut h, S)), vec![1]);
    h.advance_ms(150);
    assert_eq!(h.node.topic_next_id("t.dlq"), Some(2), "the copy is stored in t.dlq");
    assert_eq!(h.node.group_outstanding("t", "g"), Some(0), "and the id settled for the group");
    h.connect(ferry_core::ConnId(9));
    subscribe(&mut h, ferry_core::ConnId(9), "t.dlq", "d", json!({}));
    let copies = msgs(&mut h, ferry_core::ConnId(9));
    assert_eq!((copies[0]["body"].clone(), copies[0]["key"].clone()), (json!("poison"), json!("k")));
}

#[test]
fn a_failed_raft_write_stops_the_node() {
    let mut h = harness(voter_alone());
    h.fail_next_write = Some(DiskError::Io("EIO".into()));
    h.send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "body": 1}));
    let why = h.stopped.clone().expect("the node asked to stop");
    assert!(why.contains("raft log"), "{why}");
    assert!(h.take_op(P, "puback").is_empty());
}
