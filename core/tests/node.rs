//! The node against a manual clock and an in-memory disk.

use ferry_core::node::DiskError;
use ferry_core::{Config, ConnId, FsyncPolicy};

use ferry_core::testkit::Harness;
use serde_json::{json, Value};

mod common;

use common::*;

#[test]
fn publish_then_deliver_with_prev_chain() {
    let mut h = harness(Config::default());
    let a = publish(&mut h, "orders", None, json!({"n": 1}));
    let b = publish(&mut h, "orders", None, json!({"n": 2}));
    assert!(a < b);
    subscribe(&mut h, S, "orders", "billing", json!({}));
    let got = msgs(&mut h, S);
    assert_eq!(ids(&got), vec![a, b]);
    assert_eq!(got[0]["prev"], 0);
    assert_eq!(got[1]["prev"], a);
    assert_eq!(got[0]["attempt"], 1);
    assert_eq!(got[0]["body"], json!({"n": 1}));
    assert!(got[0]["ts"].as_u64().unwrap() > 1_600_000_000_000);
}

#[test]
fn puback_waits_for_the_write_and_batches_form_while_it_runs() {
    let mut h = harness(Config::default());
    h.hold_writes = true;
    h.send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "body": 1}));
    h.send_json(P, json!({"op": "pub", "req": 2, "topic": "t", "body": 2}));
    h.send_json(P, json!({"op": "pub", "req": 3, "topic": "t", "body": 3}));
    assert!(h.take_op(P, "puback").is_empty(), "puback before durability");
    // The boot snapshot is in flight; all three publishes wait in one batch behind it.
    assert_eq!(h.held.len(), 1);
    h.hold_writes = false;
    h.complete_writes();
    assert_eq!(h.take_op(P, "puback").len(), 3);
    assert_eq!(h.node.stats().flushes, 2, "snapshot write + one group-commit batch");
}

#[test]
fn ack_timeout_redelivers_with_next_attempt_and_same_prev() {
    let config = Config { ack_timeout_ms: 1_000, ..Config::default() };
    let mut h = harness(config);
    publish(&mut h, "t", None, json!(1));
    let id = publish(&mut h, "t", None, json!(2));
    subscribe(&mut h, S, "t", "g", json!({}));
    let first = msgs(&mut h, S);
    ack(&mut h, S, "t", "g", &[first[0]["id"].as_u64().unwrap()]);
    h.advance_ms(999);
    assert!(msgs(&mut h, S).is_empty());
    h.advance_ms(2);
    let again = msgs(&mut h, S);
    assert_eq!(ids(&again), vec![id]);
    assert_eq!(again[0]["attempt"], 2);
    assert_eq!(again[0]["prev"], first[1]["prev"]);
    ack(&mut h, S, "t", "g", &[id]);
    h.advance_ms(5_000);
    assert!(msgs(&mut h, S).is_empty(), "acked message redelivered");
}

#[test]
fn max_attempts_moves_the_message_to_the_dead_letter_topic() {
    let config = Config { ack_timeout_ms: 100, max_attempts: 3, ..Config::default() };
    let mut h = harness(config);
    let id = publish(&mut h, "pay", Some("k"), json!({"x": 1}));
    subscribe(&mut h, S, "pay", "g", json!({}));
    for attempt in 1..=3 {
        let got = msgs(&mut h, S);
        assert_eq!(ids(&got), vec![id]);
        assert_eq!(got[0]["attempt"], attempt);
        h.advance_ms(101);
    }
    assert!(msgs(&mut h, S).is_empty(), "delivered past max_attempts");
    assert_eq!(h.node.stats().dead_lettered, 1);
    assert_eq!(h.node.group_outstanding("pay", "g"), Some(0));
    subscribe(&mut h, S, "pay.dlq", "ops", json!({}));
    let dead = msgs(&mut h, S);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["body"], json!({"x": 1}));
    assert_eq!(dead[0]["key"], "k");
    h.send_json(P, json!({"op": "pub", "req": 9, "topic": "pay.dlq", "body": 1}));
    assert_eq!(h.take_op(P, "error")[0]["code"], "forbidden");
}

#[test]
fn window_bounds_in_flight_messages() {
    let mut h = harness(Config::default());
    for n in 0..10 {
        publish(&mut h, "t", None, json!(n));
    }
    subscribe(&mut h, S, "t", "g", json!({"window": 3}));
    let mut seen = Vec::new();
    for _ in 0..10 {
        let got = msgs(&mut h, S);
        assert!(got.len() <= 3, "window exceeded: {}", got.len());
        assert_eq!(h.node.in_flight_to(S, "t", "g"), Some(got.len()));
        if got.is_empty() {
            break;
        }
        let batch = ids(&got);
        ack(&mut h, S, "t", "g", &batch);
        seen.extend(batch);
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
}

#[test]
fn same_key_is_not_delivered_while_an_earlier_one_is_unacked() {
    let mut h = harness(Config::default());
    let a1 = publish(&mut h, "t", Some("a"), json!(1));
    let a2 = publish(&mut h, "t", Some("a"), json!(2));
    let b1 = publish(&mut h, "t", Some("b"), json!(3));
    let a3 = publish(&mut h, "t", Some("a"), json!(4));
    subscribe(&mut h, S, "t", "g", json!({}));
    assert_eq!(ids(&msgs(&mut h, S)), vec![a1, b1]);
    ack(&mut h, S, "t", "g", &[b1]);
    assert!(msgs(&mut h, S).is_empty());
    ack(&mut h, S, "t", "g", &[a1]);
    let next = msgs(&mut h, S);
    assert_eq!(ids(&next), vec![a2]);
    assert_eq!(next[0]["prev"], a1, "prev follows the group's sequence, not the key's");
    ack(&mut h, S, "t", "g", &[a2]);
    assert_eq!(ids(&msgs(&mut h, S)), vec![a3]);
}

#[test]
fn idempotent_publish_stores_once() {
    let mut h = harness(Config::default());
    let frame = json!({"op": "pub", "req": 1, "topic": "t", "body": 1, "producer": "svc-a", "seq": 7});
    h.send_json(P, frame.clone());
    h.send_json(P, frame.clone());
    let acks = h.take_op(P, "puback");
    assert_eq!(acks.len(), 2);
    assert_eq!(acks[0]["id"], acks[1]["id"]);
    assert_eq!(h.node.topic_next_id("t"), Some(2), "stored once");
    // Held writes: the repeat arrives while the original is not yet durable.
    h.hold_writes = true;
    let frame2 = json!({"op": "pub", "req": 2, "topic": "t", "body": 2, "producer": "svc-a", "seq": 8});
    h.send_json(P, frame2.clone());
    h.send_json(P, frame2.clone());
    assert!(h.take_op(P, "puback").is_empty());
    h.hold_writes = false;
    h.complete_writes();
    let acks = h.take_op(P, "puback");
    assert_eq!(ids(&acks), vec![2, 2]);
    // And after a restart the dedupe state is rebuilt from the log.
    h.restart(true);
    h.connect(P);
    h.send_json(P, frame);
    assert_eq!(ids(&h.take_op(P, "puback")), vec![1]);
    assert_eq!(h.node.topic_next_id("t"), Some(3));
}

#[test]
fn restart_resumes_groups_without_losing_or_replaying_acked() {
    let mut h = harness(Config::default());
    for n in 0..10 {
        publish(&mut h, "t", Some(&format!("k{}", n % 3)), json!(n));
    }
    subscribe(&mut h, S, "t", "g", json!({}));
    let first = msgs(&mut h, S);
    // Acks of 1..=4 and 7: floor 4, 7 acked above it.
    ack(&mut h, S, "t", "g", &[1, 2, 3, 4, 7]);
    let delivered_before: Vec<_> = first.iter().map(|m| (m["id"].as_u64().unwrap(), m["prev"].as_u64().unwrap())).collect();
    let more = msgs(&mut h, S);
    let mut prevs: std::collections::BTreeMap<u64, u64> = delivered_before.into_iter().collect();
    for m in &more {
        prevs.insert(m["id"].as_u64().unwrap(), m["prev"].as_u64().unwrap());
    }
    // Acked positions are written within ack_persist_interval_ms (without an fsync of their
    // own): a process crash keeps them.
    h.advance_ms(10);
    h.restart(false);
    h.connect(S);
    subscribe(&mut h, S, "t", "g", json!({"from": "latest"}));
    let mut redelivered = Vec::new();
    loop {
        let got = msgs(&mut h, S);
        if got.is_empty() {
            break;
        }
        for m in &got {
            let id = m["id"].as_u64().unwrap();
            if let Some(p) = prevs.get(&id) {
                assert_eq!(m["prev"].as_u64().unwrap(), *p, "prev of {id} changed across restart");
            }
        }
        let batch = ids(&got);
        ack(&mut h, S, "t", "g", &batch);
        redelivered.extend(batch);
    }
    redelivered.sort();
    assert_eq!(redelivered, vec![5, 6, 8, 9, 10]);
    h.connect(P);
    let next = publish(&mut h, "t", None, json!("after"));
    assert_eq!(next, 11, "ids continue after restart");
}

#[test]
fn unsynced_publishes_are_not_acked_and_their_ids_are_not_delivered_after_crash() {
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    h.hold_writes = true;
    h.send_json(P, json!({"op": "pub", "req": 2, "topic": "t", "body": 2}));
    assert!(h.take_op(P, "puback").is_empty());
    h.restart(true);
    h.hold_writes = false;
    h.complete_writes();
    h.connect(P);
    h.connect(S);
    subscribe(&mut h, S, "t", "g", json!({}));
    assert_eq!(ids(&msgs(&mut h, S)), vec![1]);
    let id = publish(&mut h, "t", None, json!(3));
    assert_eq!(id, 2, "an id never acked nor delivered may be assigned again");
}

#[test]
fn failed_fsync_answers_internal_and_the_store_goes_on_from_its_durable_point() {
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    h.fail_next_write = Some(DiskError::Io("EIO".into()));
    h.send_json(P, json!({"op": "pub", "req": 2, "topic": "t", "body": 2}));
    let errors = h.take_op(P, "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "internal");
    assert_eq!(errors[0]["req"], 2);
    let id = publish(&mut h, "t", None, json!(3));
    assert_eq!(id, 2);
    h.restart(true);
    h.connect(S);
    subscribe(&mut h, S, "t", "g", json!({}));
    let got = msgs(&mut h, S);
    assert_eq!(got.iter().map(|m| m["body"].clone()).collect::<Vec<_>>(), vec![json!(1), json!(3)]);
}

#[test]
fn full_disk_answers_overloaded_then_resumes() {
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    subscribe(&mut h, S, "t", "g", json!({}));
    assert_eq!(msgs(&mut h, S).len(), 1);
    h.fail_next_write = Some(DiskError::NoSpace);
    h.send_json(P, json!({"op": "pub", "req": 2, "topic": "t", "body": 2}));
    assert_eq!(h.take_op(P, "error")[0]["code"], "overloaded");
    h.send_json(P, json!({"op": "pub", "req": 3, "topic": "t", "body": 3}));
    assert_eq!(h.take_op(P, "error")[0]["code"], "overloaded");
    ack(&mut h, S, "t", "g", &[1]);
    assert!(h.take_op(S, "error").is_empty(), "acks go on while the disk is full");
    // A group already on disk takes new members without a write.
    let late = ConnId(3);
    h.connect(late);
    h.send_json(late, json!({"op": "sub", "req": "late", "topic": "t", "group": "g"}));
    assert_eq!(h.take_op(late, "suback").len(), 1, "joining a durable group needs no write");
    h.send_json(late, json!({"op": "pull", "req": "p", "topic": "t", "group": "g", "max": 1, "wait_ms": 0}));
    h.advance_ms(0);
    assert_eq!(h.take_op(late, "pulled").len(), 1, "a pull on a durable group is answered while the disk is full");
    h.advance_ms(1_001);
    let id = publish(&mut h, "t", None, json!(4));
    assert_eq!(ids(&msgs(&mut h, S)), vec![id]);
}

#[test]
fn group_filters_apply_at_delivery_and_prev_follows_the_filtered_sequence() {
    let mut h = harness(Config::default());
    subscribe(&mut h, S, "t", "eu", json!({"filter": {"key_prefix": "eu-"}, "from": "latest"}));
    h.connect(ConnId(3));
    subscribe(&mut h, ConnId(3), "t", "big", json!({"filter": {"field": "order.total", "equals": 100}}));
    let e1 = publish(&mut h, "t", Some("eu-1"), json!({"order": {"total": 5}}));
    publish(&mut h, "t", Some("us-1"), json!({"order": {"total": 100}}));
    let e2 = publish(&mut h, "t", Some("eu-2"), json!({"order": {"total": 100}}));
    let eu = msgs(&mut h, S);
    assert_eq!(ids(&eu), vec![e1, e2]);
    assert_eq!(eu[1]["prev"], e1);
    let big = msgs(&mut h, ConnId(3));
    assert_eq!(ids(&big), vec![2, 3]);
    assert_eq!(big[0]["prev"], 0);
    h.send_json(S, json!({"op": "sub", "req": 5, "topic": "t", "group": "eu", "filter": {"key_prefix": "us-"}}));
    assert_eq!(h.take_op(S, "error")[0]["code"], "conflict");
}

#[test]
fn bad_input_gets_error_frames_and_the_connection_stays() {
    let mut h = harness(Config::default());
    let cases = [
        ("{nope", "bad_frame"),
        (r#"{"op":"fly","req":1}"#, "unknown_op"),
        (r#"{"op":"pub","req":1,"topic":"a b","body":1}"#, "bad_frame"),
        (r#"{"op":"pub","req":1,"topic":"t"}"#, "bad_frame"),
        (r#"{"op":"sub","req":1,"topic":"t","group":"g","window":0}"#, "bad_frame"),
        (r#"{"op":"ack","topic":"none","group":"g","ids":[1]}"#, "no_such_topic"),
        (r#"{"op":"fetch","req":1,"topic":"none","from":1,"to":2}"#, "no_such_topic"),
    ];
    for (frame, code) in cases {
        h.send(P, frame);
        let errors = h.take_op(P, "error");
        assert_eq!(errors.len(), 1, "{frame}");
        assert_eq!(errors[0]["code"], code, "{frame}");
    }
    publish(&mut h, "t", None, json!(1));
    subscribe(&mut h, S, "t", "g", json!({}));
    msgs(&mut h, S);
    ack(&mut h, S, "t", "g", &[99]);
    assert_eq!(h.take_op(S, "error")[0]["code"], "bad_frame");
    h.send(P, r#"{"op":"ping","req":"x"}"#);
    assert_eq!(h.take_op(P, "pong")[0]["req"], "x");
    assert!(h.closed.is_empty());
    h.node.handle_input(h.now_ns, ferry_core::Input::Rejected { conn: P, why: ferry_core::Rejection::TooLarge });
    h.drain();
    assert_eq!(h.take_op(P, "error")[0]["code"], "too_large");
    h.node.handle_input(h.now_ns, ferry_core::Input::Rejected { conn: S, why: ferry_core::Rejection::BinaryFrame });
    h.drain();
    assert_eq!(h.closed, vec![(P, 1009), (S, 1003)]);
    assert_eq!(h.node.connection_count(), 0);
}

#[test]
fn tokens_are_required_when_configured() {
    let config = Config { tokens: vec!["s3cret".into()], ..Config::default() };
    let mut h = harness(config);
    h.send(P, r#"{"op":"ping","req":1}"#);
    assert_eq!(h.take_op(P, "error")[0]["code"], "unauthorized");
    h.send(P, r#"{"op":"pub","req":1,"topic":"t","body":1}"#);
    assert_eq!(h.take_op(P, "error")[0]["code"], "unauthorized");
    h.send(P, r#"{"op":"hello","token":"wrong"}"#);
    assert_eq!(h.take_op(P, "error")[0]["code"], "unauthorized");
    h.send(P, r#"{"op":"hello","token":"s3cret"}"#);
    publish(&mut h, "t", None, json!(1));
}

#[test]
fn pull_pushes_up_to_max_then_answers_pulled() {
    let mut h = harness(Config::default());
    h.send_json(S, json!({"op": "pull", "req": 1, "topic": "t", "group": "g", "max": 2, "wait_ms": 500}));
    assert!(msgs(&mut h, S).is_empty());
    for n in 0..3 {
        publish(&mut h, "t", None, json!(n));
    }
    assert_eq!(ids(&msgs(&mut h, S)), vec![1, 2]);
    assert_eq!(h.take_op(S, "pulled")[0]["count"], 2);
    h.send_json(S, json!({"op": "pull", "req": 2, "topic": "t", "group": "g", "max": 5, "wait_ms": 100}));
    assert_eq!(ids(&msgs(&mut h, S)), vec![3]);
    assert!(h.take_op(S, "pulled").is_empty());
    h.advance_ms(100);
    let pulled = h.take_op(S, "pulled");
    assert_eq!((pulled[0]["req"].clone(), pulled[0]["count"].clone()), (json!(2), json!(1)));
    ack(&mut h, S, "t", "g", &[1, 2, 3]);
    assert!(h.take_op(S, "error").is_empty());
}

#[test]
fn fetch_reads_ranges_from_cache_and_disk() {
    // topic_cache_bytes 1 forces disk reads for all but the newest message. Found by ferry-sim
    // seed 107001: a fetch wider than the read cache evicted its own reads and retried
    // forever. A one-message cache must still answer a four-message fetch.
    let config = Config { topic_cache_bytes: 1, read_cache_messages: 1, ..Config::default() };
    let mut h = harness(config);
    for n in 0..5 {
        publish(&mut h, "t", Some("k"), json!({"n": n}));
    }
    h.send_json(S, json!({"op": "fetch", "req": 4, "topic": "t", "from": 2, "to": 100}));
    let fetched = h.take_op(S, "fetched");
    assert_eq!(fetched.len(), 1);
    let got: Vec<_> = fetched[0]["messages"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(got, vec![2, 3, 4, 5]);
    assert_eq!(fetched[0]["messages"][0]["body"], json!({"n": 1}));
    assert_eq!(fetched[0]["messages"][0]["key"], "k");
}

#[test]
fn segments_roll_retention_deletes_and_restart_reads_them_all() {
    let config = Config { frame_bytes_max: 1024, segment_bytes_max: 4096, retention_bytes: 4096 * 1000, ..Config::default() };
    let mut h = harness(config);
    let body = json!("x".repeat(200));
    for _ in 0..100 {
        publish(&mut h, "t", None, body.clone());
    }
    assert!(h.disk.files.len() > 3, "segments rolled: {}", h.disk.files.len());
    subscribe(&mut h, S, "t", "g", json!({"window": 1000}));
    let got = msgs(&mut h, S);
    assert_eq!(got.len(), 100);
    ack(&mut h, S, "t", "g", &ids(&got)[..50]);
    h.advance_ms(10);
    h.restart(false);
    h.connect(S);
    subscribe(&mut h, S, "t", "g", json!({"window": 1000}));
    assert_eq!(ids(&msgs(&mut h, S)), (51..=100).collect::<Vec<_>>());
    // Retention by size: shrink the budget and let the check run.
    h.config.retention_bytes = 4096 * 2;
    h.restart(true);
    h.advance_ms(1_100);
    assert!(h.disk.files.len() <= 4, "retention left {} segments", h.disk.files.len());
    assert_eq!(h.node.topic_next_id("t"), Some(101), "ids never reused after retention");
}

#[test]
fn batch_policy_acks_after_the_interval_and_never_policy_writes_without_fsync() {
    let config = Config { fsync: FsyncPolicy::Batch, batch_interval_ms: 5, ..Config::default() };
    let mut h = harness(config);
    h.send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "body": 1}));
    assert!(h.take_op(P, "puback").is_empty(), "batch policy acked before its fsync");
    h.advance_ms(5);
    assert_eq!(h.take_op(P, "puback").len(), 1);

    let config = Config { fsync: FsyncPolicy::Never, ..Config::default() };
    let mut h = harness(config);
    publish(&mut h, "t", None, json!(1));
    assert_eq!(h.disk.unsynced_bytes(), h.disk.files.values().map(Vec::len).sum::<usize>(), "never policy must not fsync");
}

/// Found by ferry-sim seed 1746: a dead-letter write that failed on a full disk put the message
/// back to ready without pumping its group, so it (and its key) stayed stuck forever.
#[test]
fn regression_dead_letter_retried_after_its_write_fails() {
    let config = Config { ack_timeout_ms: 100, max_attempts: 1, ..Config::default() };
    let mut h = harness(config);
    publish(&mut h, "t", Some("k"), json!(1));
    subscribe(&mut h, S, "t", "g", json!({}));
    assert_eq!(msgs(&mut h, S).len(), 1);
    h.fail_next_write = Some(DiskError::NoSpace);
    h.advance_ms(101);
    assert_eq!(h.node.group_outstanding("t", "g"), Some(1), "dead-letter write failed: still outstanding");
    h.advance_ms(2_000);
    assert_eq!(h.node.group_outstanding("t", "g"), Some(0), "dead-letter retried once the disk had space");
    assert_eq!(h.node.topic_next_id("t.dlq"), Some(2));
}

#[test]
fn acks_cost_no_fsync_of_their_own_and_ride_along_with_publishes() {
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    subscribe(&mut h, S, "t", "g", json!({}));
    msgs(&mut h, S);
    let flushes = h.node.stats().flushes;
    ack(&mut h, S, "t", "g", &[1]);
    assert_eq!(h.node.stats().flushes, flushes, "an ack alone is not written at once");
    h.advance_ms(10);
    assert_eq!(h.node.stats().flushes, flushes + 1, "written after ack_persist_interval_ms");
    assert!(h.disk.unsynced_bytes() > 0, "not fsynced");
    publish(&mut h, "t", None, json!(2));
    assert_eq!(h.disk.unsynced_bytes(), 0, "the publish's fsync covers the group position");
    h.restart(true);
    h.connect(S);
    subscribe(&mut h, S, "t", "g", json!({}));
    assert_eq!(ids(&msgs(&mut h, S)), vec![2], "acked message 1 not delivered again");
}

/// Found by ferry-sim seed 13125: a pull on a group that existed in memory but whose record
/// had failed on a full disk was admitted at once; a crash then forgot the group, and its
/// re-creation restarted the `prev` chain under messages already delivered.
#[test]
fn regression_pull_waits_until_its_group_is_durable() {
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    h.fail_next_write = Some(DiskError::NoSpace);
    h.send_json(S, json!({"op": "sub", "req": 1, "topic": "t", "group": "g", "from": "earliest"}));
    assert!(h.take_op(S, "suback").is_empty(), "the group record did not reach the disk");
    h.connect(ConnId(3));
    h.send_json(ConnId(3), json!({"op": "pull", "req": 2, "topic": "t", "group": "g", "max": 5, "wait_ms": 60_000}));
    assert!(msgs(&mut h, ConnId(3)).is_empty(), "delivered from a group that is not durable");
    h.advance_ms(1_001);
    assert_eq!(h.take_op(S, "suback").len(), 1);
    let delivered = msgs(&mut h, ConnId(3)).len() + msgs(&mut h, S).len();
    assert_eq!(delivered, 1, "once durable, the group delivers");
}

/// `depth` nested arrays around `inner`.
fn nested(depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn frames_nested_deeper_than_json_depth_max_get_bad_frame_and_nothing_is_stored() {
    let mut h = harness(Config::default());
    let depth_max = Config::default().json_depth_max as usize;
    // The frame's own object is level 1: a body may nest `depth_max - 1` levels.
    h.send(P, &format!(r#"{{"op":"pub","req":1,"topic":"t","body":{}}}"#, nested(depth_max - 1, "1")));
    assert_eq!(h.take_op(P, "puback")[0]["id"], 1, "a body exactly at the limit is stored: {:?}", h.take(P));
    for depth in [depth_max, 10_000, 500_000] {
        h.send(P, &format!(r#"{{"op":"pub","req":2,"topic":"t","body":{}}}"#, nested(depth, "1")));
        let errors = h.take_op(P, "error");
        assert_eq!(errors.len(), 1, "body nested {depth}: {:?}", h.take(P));
        assert_eq!((errors[0]["code"].as_str(), errors[0]["req"].as_u64()), (Some("bad_frame"), Some(2)), "body nested {depth}");
        assert!(errors[0]["message"].as_str().unwrap().contains("json_depth_max"), "{}", errors[0]);
    }
    assert_eq!(h.node.topic_next_id("t"), Some(2), "refused bodies are not stored");
    // Objects count like arrays, and so do levels outside `body` (a filter).
    let deep_filter = format!(r#"{{"op":"sub","req":3,"topic":"t","group":"g","filter":{{"field":"a","equals":{}}}}}"#, nested(depth_max, "1"));
    h.send(S, &deep_filter);
    assert_eq!(h.take_op(S, "error")[0]["code"], "bad_frame");
    // Brackets inside strings, escaped quotes and backslashes are text, not nesting.
    let text = format!("\\\\\\\"{}\\\"", "[{".repeat(100));
    h.send(P, &format!(r#"{{"op":"pub","req":4,"topic":"t","body":{{"s":"{text}","t":"\\\\"}}}}"#));
    let acks = h.take_op(P, "puback");
    assert_eq!(acks.len(), 1, "brackets in strings: {:?}", h.take(P));
    assert!(h.closed.is_empty());
}

#[test]
fn only_json_objects_are_frames() {
    let mut h = harness(Config::default());
    // serde's derive would read a sequence by field position: this array used to be a `pub`.
    let positional = r#"["pub",1,null,"t",null,{"x":1},null,null,null,null,null,null,null,null,null,null,null]"#;
    for frame in [positional, r#""ping""#, "5", "null", "[]", r#"[{"op":"ping","req":1}]"#] {
        h.send(P, frame);
        let errors = h.take_op(P, "error");
        assert_eq!(errors.len(), 1, "{frame}: {:?}", h.take(P));
        assert_eq!(errors[0]["code"], "bad_frame", "{frame}");
        assert!(errors[0].get("req").is_none(), "{frame}");
    }
    assert_eq!(h.node.topic_next_id("t"), None, "nothing was published");
    h.send(P, " \r\n\t{\"op\":\"ping\",\"req\":7}");
    assert_eq!(h.take_op(P, "pong")[0]["req"], 7, "whitespace before the object is fine");
}

#[test]
fn req_is_a_short_string_or_number_and_a_bad_one_is_not_echoed() {
    let mut h = harness(Config::default());
    let long = format!("\"{}\"", "r".repeat(127)); // 129 bytes of JSON
    let deep = nested(10_000, "1");
    for req in ["{\"a\":1}", "[1]", "true", "false", "null", long.as_str(), deep.as_str()] {
        h.send(P, &format!(r#"{{"op":"ping","req":{req}}}"#));
        let errors = h.take_op(P, "error");
        assert_eq!(errors.len(), 1, "req {:.40}: {:?}", req, h.take(P));
        assert_eq!(errors[0]["code"], "bad_frame", "req {req:.40}");
        assert!(errors[0].get("req").is_none(), "req {req:.40} must not be echoed: {}", errors[0]);
        // Any op that carries a `req` refuses it the same way, publishing nothing.
        h.send(P, &format!(r#"{{"op":"pub","req":{req},"topic":"t","body":1}}"#));
        assert_eq!(h.take_op(P, "error")[0]["code"], "bad_frame", "pub with req {req:.40}");
    }
    assert_eq!(h.node.topic_next_id("t"), None, "nothing was published");
    let longest = format!("\"{}\"", "r".repeat(126)); // 128 bytes of JSON
    for req in ["0", "-12.5e3", "\"\"", "\"\\u00e9\"", longest.as_str()] {
        h.send(P, &format!(r#"{{"op":"ping","req":{req}}}"#));
        let pongs = h.take_op(P, "pong");
        assert_eq!(pongs.len(), 1, "req {req}: {:?}", h.take(P));
        assert_eq!(pongs[0]["req"], serde_json::from_str::<Value>(req).unwrap(), "req {req} echoed");
    }
}

#[test]
fn at_the_highest_json_depth_max_every_frame_sent_back_still_parses() {
    use ferry_core::protocol::JSON_DEPTH_MAX_LIMIT;
    let mut config = Config { json_depth_max: JSON_DEPTH_MAX_LIMIT, ..Config::default() };
    let mut h = harness(config.clone());
    // The harness parses every frame the node sends with serde_json (127 levels at most).
    let body = nested(JSON_DEPTH_MAX_LIMIT as usize - 1, "1");
    h.send(P, &format!(r#"{{"op":"pub","req":1,"topic":"t","body":{body}}}"#));
    assert_eq!(h.take_op(P, "puback").len(), 1, "{:?}", h.take(P));
    subscribe(&mut h, S, "t", "g", json!({}));
    assert_eq!(ids(&msgs(&mut h, S)), vec![1]);
    h.send_json(S, json!({"op": "fetch", "req": 2, "topic": "t", "from": 1, "to": 1}));
    assert_eq!(h.take_op(S, "fetched")[0]["messages"].as_array().unwrap().len(), 1);
    for bad in [0, 1, JSON_DEPTH_MAX_LIMIT + 1] {
        config.json_depth_max = bad;
        assert!(config.validate().unwrap_err().contains("json_depth_max"), "{bad}");
    }
}

/// Sends `fetch` from `from` to `to`, and again from the last id + 1 as PROTOCOL.md says,
/// until a reply is empty. Returns the ids of each non-empty reply and the largest frame.
fn fetch_until_empty(h: &mut Harness, from: u64, to: u64) -> (Vec<Vec<u64>>, usize) {
    let (mut replies, mut largest, mut from) = (Vec::new(), 0, from);
    loop {
        h.send_json(S, json!({"op": "fetch", "req": from, "topic": "t", "from": from, "to": to}));
        let fetched = h.take_op(S, "fetched");
        assert_eq!(fetched.len(), 1, "one fetched per fetch: {:?}", h.take(S));
        // Bodies are plain ASCII: the re-serialized frame is as long as the one sent.
        largest = largest.max(fetched[0].to_string().len());
        let got = ids(fetched[0]["messages"].as_array().unwrap());
        assert!(got.windows(2).all(|w| w[0] < w[1]) && got.iter().all(|id| (from..=to).contains(id)), "{got:?} from {from} to {to}");
        let Some(&last) = got.last() else { return (replies, largest) };
        replies.push(got);
        if last == to {
            return (replies, largest);
        }
        from = last + 1;
    }
}

#[test]
fn fetched_is_cut_at_frame_bytes_max_and_reads_only_what_fits() {
    let config = Config {
        frame_bytes_max: 1 << 20,
        // Every message but the newest is read from disk.
        topic_cache_bytes: 1,
        read_cache_messages: 1,
        ..Config::default()
    };
    let mut h = harness(config);
    let body = json!("x".repeat(400 << 10));
    for _ in 0..10 {
        publish(&mut h, "t", None, body.clone());
    }
    let reads = h.reads;
    h.send_json(S, json!({"op": "fetch", "req": 1, "topic": "t", "from": 1, "to": u64::MAX}));
    let fetched = h.take_op(S, "fetched");
    assert!(fetched[0].to_string().len() <= 1 << 20, "fetched frame of {} bytes", fetched[0].to_string().len());
    assert_eq!(ids(fetched[0]["messages"].as_array().unwrap()), vec![1, 2], "a prefix, as much as fits");
    assert_eq!(fetched[0]["messages"][1]["body"], body);
    assert_eq!(h.reads - reads, 2, "no reads for messages that cannot fit");
    let (replies, largest) = fetch_until_empty(&mut h, 1, u64::MAX);
    assert_eq!(replies, vec![vec![1, 2], vec![3, 4], vec![5, 6], vec![7, 8], vec![9, 10]]);
    assert!(largest <= 1 << 20, "largest fetched frame {largest} bytes");
    // A message alone larger than the frame limit still comes, alone: a client must progress.
    let pub_overhead = r#"{"op":"pub","req":1,"topic":"t","body":""}"#.len();
    publish(&mut h, "t", None, json!("y".repeat((1 << 20) - pub_overhead)));
    let (replies, largest) = fetch_until_empty(&mut h, 9, 11);
    assert_eq!(replies, vec![vec![9, 10], vec![11]]);
    assert!(largest > 1 << 20, "the lone message is over the limit by the frame's own overhead");
}

#[test]
fn fetched_is_also_cut_at_fetch_messages_max_and_skips_ids_that_are_gone() {
    let config = Config { frame_bytes_max: 1024, segment_bytes_max: 4096, retention_bytes: 4096 * 2, fetch_messages_max: 5, topic_cache_bytes: 1, ..Config::default() };
    let mut h = harness(config);
    for n in 0..100 {
        publish(&mut h, "t", None, json!(format!("{n:0>200}")));
    }
    h.advance_ms(1_100);
    // Retention deleted the oldest segments: ids 1.. are gone, but later ones are stored,
    // so the reply may not be empty.
    let (replies, _) = fetch_until_empty(&mut h, 1, 1_000);
    assert!(!replies.is_empty(), "an empty fetched means nothing is stored in the range");
    let first = replies[0][0];
    assert!(first > 1, "retention deleted the first segments");
    assert!(replies.iter().all(|r| r.len() <= 5), "at most fetch_messages_max per reply: {replies:?}");
    assert_eq!(replies.concat(), (first..=100).collect::<Vec<_>>());
    assert_eq!(fetch_until_empty(&mut h, 1, first - 1).0, Vec::<Vec<u64>>::new(), "empty: nothing stored there");
}

#[test]
fn fetched_goes_past_an_unreadable_record_instead_of_answering_empty() {
    let config = Config { frame_bytes_max: 1 << 20, topic_cache_bytes: 1, read_cache_messages: 1, ..Config::default() };
    let mut h = harness(config);
    let body = json!("x".repeat(600 << 10));
    for _ in 0..3 {
        publish(&mut h, "t", None, body.clone());
    }
    // Damage the record of id 1 on disk: its read fails the CRC and the id is gone.
    let (&segment, bytes) = h.disk.files.iter().find(|(_, f)| f.len() > 600 << 10).unwrap();
    let mut first = None;
    ferry_core::recovery::scan_segment(bytes, false, |offset, size, rec, _| {
        if matches!(rec, ferry_core::record::RecordRef::Message(m) if m.id == 1) {
            first = Some((offset as usize, size));
        }
    });
    let (offset, size) = first.expect("record of id 1");
    h.disk.files.get_mut(&segment).unwrap()[offset + size / 2] ^= 0x55;
    // Only id 1 fits the first frame, and it turns out unreadable: the reply goes on to id 2.
    let (replies, largest) = fetch_until_empty(&mut h, 1, 3);
    assert_eq!(replies, vec![vec![2], vec![3]]);
    assert!(largest <= 1 << 20);
    assert!(h.traces.iter().any(|t| matches!(t, ferry_core::Trace::UnreadableRecord { id: 1, .. })));
    assert_eq!(fetch_until_empty(&mut h, 1, 1).0, Vec::<Vec<u64>>::new());
}

#[test]
fn a_nack_from_a_connection_that_no_longer_holds_the_message_is_ignored() {
    // Found by ferry-sim seed 2557 once windows were checked from the clients' side: a member
    // unsubscribed and then nacked what it had; the message had meanwhile gone to another
    // member, whose delivery the stale nack cancelled, so that member got one message over its
    // window while it still held this one.
    let mut h = harness(Config::default());
    let (a, b) = (ConnId(3), ConnId(4));
    h.connect(a);
    h.connect(b);
    subscribe(&mut h, a, "t", "g", json!({"window": 1}));
    publish(&mut h, "t", None, json!(1));
    assert_eq!(ids(&msgs(&mut h, a)), vec![1]);
    subscribe(&mut h, b, "t", "g", json!({"window": 1}));
    h.send_json(a, json!({"op": "unsub", "req": "u", "topic": "t", "group": "g"}));
    assert_eq!(ids(&msgs(&mut h, b)), vec![1], "released by the unsub, id 1 goes to b");
    h.send_json(a, json!({"op": "nack", "topic": "t", "group": "g", "ids": [1], "delay_ms": 0}));
    publish(&mut h, "t", None, json!(2));
    assert!(msgs(&mut h, b).is_empty(), "b still holds id 1: its window of 1 is full");
    assert_eq!(h.node.in_flight_to(b, "t", "g"), Some(1));
    ack(&mut h, b, "t", "g", &[1]);
    assert_eq!(ids(&msgs(&mut h, b)), vec![2]);
}
