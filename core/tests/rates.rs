//! Rate limits on the core's clock: a connection past its publish or op rate, and a topic past
//! its publish rate, get `overloaded` with `retry_after_ms` on the op's `req`; others are not
//! slowed, and after the hinted wait the op goes through.

mod common;

use common::*;
use ferry_core::{Config, ConnId};
use serde_json::{json, Value};

fn send_pub(h: &mut ferry_core::testkit::Harness, conn: ConnId, req: u64, topic: &str) -> Value {
    h.send_json(conn, json!({"op": "pub", "req": req, "topic": topic, "body": req}));
    h.take(conn).into_iter().find(|f| f["op"] == "puback" || f["op"] == "error").expect("an answer")
}

#[test]
fn a_publisher_over_its_rate_waits_and_the_others_do_not() {
    let mut h = harness(Config { publish_rate_per_connection: 10, publish_burst_per_connection: 3, ..Config::default() });
    for req in 1..=3 {
        assert_eq!(send_pub(&mut h, P, req, "t")["op"], json!("puback"));
    }
    let refused = send_pub(&mut h, P, 4, "t");
    assert_eq!((refused["code"].clone(), refused["req"].clone(), refused["retry_after_ms"].clone()), (json!("overloaded"), json!(4), json!(100)), "{refused}");
    assert_eq!(send_pub(&mut h, S, 5, "t")["op"], json!("puback"), "another connection has its own bucket");
    h.advance_ms(100);
    assert_eq!(send_pub(&mut h, P, 6, "t")["op"], json!("puback"), "after the hinted wait");
    assert_eq!(h.node.topic_next_id("t"), Some(6), "the refused publish was not stored");
}

#[test]
fn other_ops_have_their_own_rate() {
    let mut h = harness(Config { op_rate_per_connection: 1, op_burst_per_connection: 2, ..Config::default() });
    publish(&mut h, "t", None, json!(1));
    let fetch = |req: u64| json!({"op": "fetch", "req": req, "topic": "t", "from": 1, "to": 1});
    for req in 1..=2 {
        h.send_json(S, fetch(req));
        assert_eq!(h.take_op(S, "fetched").len(), 1);
    }
    h.send_json(S, fetch(3));
    let refused = h.take_op(S, "error");
    assert_eq!((refused[0]["code"].clone(), refused[0]["retry_after_ms"].clone()), (json!("overloaded"), json!(1000)), "{refused:?}");
    h.send_json(S, json!({"op": "ping", "req": 9}));
    assert_eq!(h.take_op(S, "pong").len(), 1, "ping is not rate limited");
    // Settlements are free: a consumer over its op rate can still ack what it was sent.
    h.send_json(S, json!({"op": "sub", "req": 10, "topic": "t", "group": "g", "from": "earliest"}));
    assert_eq!(h.take_op(S, "error").len(), 1, "sub counts against the op rate");
    h.advance_ms(1_000);
    h.send_json(S, json!({"op": "sub", "req": 11, "topic": "t", "group": "g", "from": "earliest"}));
    let delivered = h.take_op(S, "msg");
    assert_eq!(delivered.len(), 1, "the one token went to sub");
    h.send_json(S, json!({"op": "nack", "topic": "t", "group": "g", "ids": [delivered[0]["id"]]}));
    let redelivered = h.take_op(S, "msg");
    assert_eq!(redelivered.len(), 1, "the nack took effect: {redelivered:?}");
    h.send_json(S, json!({"op": "ack", "topic": "t", "group": "g", "ids": [redelivered[0]["id"]]}));
    let refused = h.take_op(S, "error");
    assert!(refused.is_empty(), "ack and nack are not refused for rate: {refused:?}");
    let in_flight = h.node.topics_view().iter().find(|t| t.name == "t").and_then(|t| t.groups.iter().find(|g| g.name == "g").map(|g| g.in_flight));
    assert_eq!(in_flight, Some(0), "the ack settled it");
    assert_eq!(send_pub(&mut h, S, 4, "t")["op"], json!("puback"), "publishes are counted apart");
}

#[test]
fn a_topic_over_its_rate_refuses_every_publisher() {
    let mut h = harness(Config { publish_rate_per_topic: 2, publish_burst_per_topic: 2, ..Config::default() });
    assert_eq!(send_pub(&mut h, P, 1, "hot")["op"], json!("puback"));
    assert_eq!(send_pub(&mut h, S, 2, "hot")["op"], json!("puback"));
    assert_eq!(send_pub(&mut h, P, 3, "hot")["code"], json!("overloaded"));
    assert_eq!(send_pub(&mut h, S, 4, "hot")["code"], json!("overloaded"), "the limit is the topic's, whoever publishes");
    assert_eq!(send_pub(&mut h, S, 5, "cold")["op"], json!("puback"), "other topics are not slowed");
}

#[test]
fn a_disk_slower_than_the_bound_sheds_new_publishes_until_it_catches_up() {
    let mut h = harness(Config { shed_publishes_after_ms: 500, ..Config::default() });
    h.hold_writes = true;
    h.send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "body": 1}));
    h.advance_ms(400);
    h.send_json(P, json!({"op": "pub", "req": 2, "topic": "t", "body": 2}));
    assert!(h.take_op(P, "error").is_empty(), "within the bound: queued");
    h.advance_ms(200);
    let refused = send_pub(&mut h, S, 3, "t");
    assert_eq!((refused["code"].clone(), refused["retry_after_ms"].clone()), (json!("overloaded"), json!(250)), "{refused}");
    h.hold_writes = false;
    h.complete_writes();
    assert_eq!(h.take_op(P, "puback").len(), 2, "the waiting ones are answered");
    assert_eq!(send_pub(&mut h, S, 4, "t")["op"], json!("puback"), "the disk caught up: accepted again");
    assert_eq!(h.node.topic_next_id("t"), Some(4), "the shed publish was not stored");
}
