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
    // A leader's first (empty) entry, the group creation, the new group's position and the
    // three publishes.
    assert_eq!(raft_entries_on_disk(&h), 6);
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

#[test]
fn a_restart_applies_the_committed_entries_again_and_goes_on_with_the_same_ids() {
    let mut h = harness(voter_alone());
    subscribe(&mut h, S, "t", "g", json!({}));
    h.send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "producer": "shop", "seq": 1, "body": "a"}));
    assert_eq!(h.take_op(P, "puback")[0]["id"], json!(1));
    publish(&mut h, "t", Some("k"), json!("b"));
    publish(&mut h, "t", None, json!("c"));
    assert_eq!(ids(&msgs(&mut h, S)), vec![1, 2, 3]);
    ack(&mut h, S, "t", "g", &[1, 2]);
    h.advance_ms(50);
    // A process crash: positions are written without an fsync of their own (as on a single node).
    h.restart(false);
    assert_eq!(h.node.topic_next_id("t"), Some(4), "the three publishes applied again");
    h.connect(P);
    h.connect(S);
    h.send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "producer": "shop", "seq": 1, "body": "a"}));
    assert_eq!(h.take_op(P, "puback")[0]["id"], json!(1), "the retry is answered with the first id");
    assert_eq!(publish(&mut h, "t", None, json!("d")), 4, "ids go on after the last one given");
    subscribe(&mut h, S, "t", "g", json!({}));
    let again = msgs(&mut h, S);
    assert_eq!(ids(&again), vec![3, 4], "acked messages are not delivered again");
    assert_eq!(again[0]["body"], json!("c"));
}

#[test]
fn a_write_lost_to_a_power_cut_was_never_acknowledged_and_the_log_goes_on_after_it() {
    let mut h = harness(voter_alone());
    assert_eq!(publish(&mut h, "t", None, json!(1)), 1);
    h.hold_writes = true;
    h.send_json(P, json!({"op": "pub", "req": 2, "topic": "t", "body": 2}));
    // The write reaches the file but not its fsync: a power cut may keep any part of it.
    let held = h.held.pop_front().expect("the write of the publish's entry");
    if let ferry_core::DiskOp::Write { segment, offset, data, .. } = held {
        h.disk.write(segment, offset, &data[..data.len() / 2]);
        h.disk.mark_durable(segment, offset as usize + data.len() / 2);
    }
    assert!(h.take_op(P, "puback").is_empty());
    h.hold_writes = false;
    h.restart(true);
    assert_eq!(h.node.topic_next_id("t"), Some(2), "only the acknowledged publish is there");
    h.connect(P);
    assert_eq!(publish(&mut h, "t", None, json!(3)), 2);
    h.restart(true);
    assert_eq!(h.node.topic_next_id("t"), Some(3), "the write after the cut one reads back");
}

#[test]
fn retention_deletes_segments_whose_entries_a_newer_snapshot_holds_and_restarts_from_the_oldest_kept() {
    let config = Config { segment_bytes_max: 4096, frame_bytes_max: 1024, retention_bytes: 4096 * 3, pending_publish_bytes_max: 4096, ..voter_alone() };
    let mut h = harness(config);
    let body = "x".repeat(200);
    let mut last = 0;
    for _ in 0..100 {
        last = publish(&mut h, "t", None, json!(body));
        h.advance_ms(10);
    }
    h.advance_ms(2_000);
    let segments: Vec<u64> = h.disk.segments().iter().map(|(s, _)| *s).collect();
    assert!(segments[0] > 1 && segments.len() <= 5, "retention deleted old segments: {segments:?}");
    h.restart(true);
    assert_eq!(h.node.topic_next_id("t"), Some(last + 1));
    h.connect(P);
    h.connect(S);
    assert_eq!(publish(&mut h, "t", None, json!("after")), last + 1);
    h.send_json(S, json!({"op": "sub", "req": "s", "topic": "t", "group": "g", "from": "earliest", "window": 1000}));
    let kept = ids(&msgs(&mut h, S));
    assert!(kept.len() > 5 && kept.len() < 101, "the retained messages are delivered: {kept:?}");
    assert_eq!(*kept.last().unwrap(), last + 1);
    assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "no gap among the retained: {kept:?}");
}

#[test]
fn a_cluster_node_and_a_single_node_refuse_each_others_logs() {
    let mut single = harness(Config::default());
    publish(&mut single, "t", None, json!(1));
    let mut as_cluster = Harness::new(Config::default());
    as_cluster.disk = single.disk.clone();
    as_cluster.config = voter_alone();
    let error = as_cluster.try_restart_from_disk().unwrap_err().to_string();
    assert!(error.contains("single node's log"), "{error}");

    let mut cluster = harness(voter_alone());
    publish(&mut cluster, "t", None, json!(1));
    cluster.config = Config::default();
    let error = cluster.try_restart_from_disk().unwrap_err().to_string();
    assert!(error.contains("cluster node's raft log"), "{error}");
}

#[test]
fn a_segment_rolled_before_its_entries_were_applied_goes_only_with_the_segments_that_need_it() {
    let config = Config { segment_bytes_max: 4096, frame_bytes_max: 1024, retention_age_ms: 5_000, pending_publish_bytes_max: 8192, ..voter_alone() };
    let mut h = harness(config);
    let body = "x".repeat(200);
    for _ in 0..10 {
        publish(&mut h, "t", None, json!(body));
    }
    // Entries written into segment 1 but not yet durable, so not applied, when the log rolls
    // to segment 2: its snapshot records an applied index below them.
    h.hold_writes = true;
    for n in 0..12 {
        h.send_json(P, json!({"op": "pub", "req": n, "topic": "t", "body": body}));
    }
    h.hold_writes = false;
    h.complete_writes();
    assert_eq!(h.take_op(P, "puback").len(), 12);
    h.advance_ms(3_000);
    let mut last = 0;
    for _ in 0..40 {
        last = publish(&mut h, "t", None, json!(body));
        h.advance_ms(10);
    }
    // Segment 1 is past the retention age, segment 2 is not.
    h.advance_ms(2_700);
    h.restart(true);
    assert_eq!(h.node.topic_next_id("t"), Some(last + 1), "the restart found every entry its snapshot does not hold");
    h.connect(P);
    h.advance_ms(5_000);
    for _ in 0..20 {
        last = publish(&mut h, "t", None, json!(body));
    }
    h.advance_ms(1_000);
    let segments: Vec<u64> = h.disk.segments().iter().map(|(s, _)| *s).collect();
    assert!(segments[0] > 2, "once old enough, segment 1 went together with segment 2: {segments:?}");
    h.restart(true);
    assert_eq!(h.node.topic_next_id("t"), Some(last + 1));
}

#[test]
fn a_restart_keeps_only_the_newest_applied_entries_in_memory() {
    let mut h = harness(Config { raft_log_memory_bytes: 512, ..voter_alone() });
    for n in 0..40 {
        publish(&mut h, "t", None, json!({"n": n, "pad": "x".repeat(100)}));
    }
    h.restart(false);
    assert_eq!(h.node.topic_next_id("t"), Some(41));
    // Every entry was read back to restart raft; applied, they leave memory at once (not at
    // the next retention check, a second later).
    assert!(h.node.raft_memory_bytes() < 1_024, "{} bytes of entries in memory after a restart", h.node.raft_memory_bytes());
}

#[test]
fn a_data_directory_keeps_its_shard_count_and_welcome_names_each_shard_s_leader() {
    let mut h = harness(Config { shards: 3, ..voter_alone() });
    for topic in ["a", "b", "c", "d"] {
        publish(&mut h, topic, None, json!(1));
    }
    let welcome = h.connect(ferry_core::ConnId(9));
    let shards: Vec<(u64, u64)> = welcome["shards"].as_array().unwrap().iter().map(|s| (s["shard"].as_u64().unwrap(), s["leader"].as_u64().unwrap())).collect();
    assert_eq!(shards, vec![(0, 1), (1, 1), (2, 1)], "{welcome}");
    for other in [1, 2, 5] {
        h.config.shards = other;
        let error = h.try_restart_from_disk().unwrap_err().to_string();
        assert!(error.contains("shard count cannot change"), "shards = {other}: {error}");
    }
    h.config.shards = 3;
    h.restart(false);
    assert_eq!(h.node.topic_next_id("d"), Some(2));
}

#[test]
fn a_restart_reads_committed_entries_one_at_a_time_and_keeps_none_in_memory() {
    // A budget that would hold them all: a restart still leaves the committed entries on
    // disk, applied one at a time as it reads them (a retained log may exceed memory).
    let mut h = harness(voter_alone());
    for n in 0..40 {
        publish(&mut h, "t", None, json!({"n": n, "pad": "x".repeat(100)}));
    }
    assert!(h.node.raft_memory_bytes() > 40 * 100, "while running, applied entries stay in memory up to the budget");
    h.restart(false);
    assert_eq!(h.node.topic_next_id("t"), Some(41), "every entry applied again");
    // Only the new term's empty entry, not yet committed when the restart returns.
    assert!(h.node.raft_memory_bytes() < 100, "committed entries are read from the segments, not held: {} bytes", h.node.raft_memory_bytes());
    h.connect(P);
    assert_eq!(publish(&mut h, "t", None, json!("after")), 41);
}
