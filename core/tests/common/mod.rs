//! Helpers shared by the node's integration tests.
#![allow(dead_code)]

use ferry_core::testkit::Harness;
use ferry_core::{Config, ConnId};
use serde_json::{json, Value};

pub const P: ConnId = ConnId(1); // publisher connection
pub const S: ConnId = ConnId(2); // subscriber connection

pub fn harness(config: Config) -> Harness {
    let mut h = Harness::new(config);
    h.connect(P);
    h.connect(S);
    h
}

pub fn publish(h: &mut Harness, topic: &str, key: Option<&str>, body: Value) -> u64 {
    let mut frame = json!({"op": "pub", "req": 1, "topic": topic, "body": body});
    if let Some(key) = key {
        frame["key"] = json!(key);
    }
    h.send_json(P, frame);
    let acks = h.take_op(P, "puback");
    assert_eq!(acks.len(), 1, "expected one puback, got {acks:?} (errors: {:?})", h.take_op(P, "error"));
    acks[0]["id"].as_u64().unwrap()
}

pub fn subscribe(h: &mut Harness, conn: ConnId, topic: &str, group: &str, extra: Value) {
    let mut frame = json!({"op": "sub", "req": "s", "topic": topic, "group": group, "from": "earliest"});
    for (k, v) in extra.as_object().unwrap() {
        frame[k] = v.clone();
    }
    h.send_json(conn, frame);
    let acks = h.take_op(conn, "suback");
    assert_eq!(acks.len(), 1, "no suback: {:?}", h.take(conn));
}

pub fn msgs(h: &mut Harness, conn: ConnId) -> Vec<Value> {
    h.take_op(conn, "msg")
}

pub fn ids(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

pub fn ack(h: &mut Harness, conn: ConnId, topic: &str, group: &str, ids: &[u64]) {
    h.send_json(conn, json!({"op": "ack", "topic": topic, "group": group, "ids": ids}));
}
