//! Identities and their rights: each op is checked against the rights of the connection's
//! token, refused with `forbidden` on its own `req`, and nothing outside the rights is stored
//! or delivered. A matrix of users × ops × topics (allowed, denied, dead-letter topics).

use ferry_core::rights::UserConfig;
use ferry_core::testkit::Harness;
use ferry_core::{Config, ConnId};
use serde_json::{json, Value};

const WRITER: &str = "orders-writer";
const READER: &str = "billing-reader";
const ADMIN: &str = "full";

fn config() -> Config {
    let user = |token: &str, publish: &[&str], subscribe: &[&str]| UserConfig {
        token: token.into(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        admin: false,
    };
    Config {
        tokens: vec![ADMIN.into()],
        users: vec![user(WRITER, &["orders.*", "!orders.internal"], &[]), user(READER, &[], &["orders.> billing", "!orders.secret.>"])],
        max_attempts: 1,
        ..Config::default()
    }
}

/// A connection `conn` that said hello with `token`.
fn login(h: &mut Harness, conn: ConnId, token: &str) {
    h.connect(conn);
    h.send_json(conn, json!({"op": "hello", "token": token}));
    assert!(h.take_op(conn, "error").is_empty(), "{token} is known");
}

/// Sends `frame` (with `req` 1 where the op has one) and returns the answer's op, or the
/// error code; "none" when nothing came back.
fn outcome(h: &mut Harness, conn: ConnId, frame: Value) -> String {
    h.send_json(conn, frame);
    let answers: Vec<Value> = h.take(conn).into_iter().filter(|f| f["op"] != "msg").collect();
    match answers.first() {
        Some(error) if error["op"] == "error" => {
            assert!(error["req"] == json!(1) || error["req"].is_null(), "the refusal carries the op's req: {error}");
            error["code"].as_str().unwrap().to_string()
        }
        Some(answer) => answer["op"].as_str().unwrap().to_string(),
        None => "none".into(),
    }
}

#[test]
fn every_op_is_checked_against_the_rights_of_its_token() {
    let mut h = Harness::new(config());
    let (writer, reader, admin, stranger) = (ConnId(1), ConnId(2), ConnId(3), ConnId(4));
    login(&mut h, writer, WRITER);
    login(&mut h, reader, READER);
    login(&mut h, admin, ADMIN);
    h.connect(stranger);
    let publish = |topic: &str| json!({"op": "pub", "req": 1, "topic": topic, "body": 1});
    let sub = |topic: &str, group: &str| json!({"op": "sub", "req": 1, "topic": topic, "group": group, "from": "earliest"});
    let fetch = |topic: &str| json!({"op": "fetch", "req": 1, "topic": topic, "from": 1, "to": 9});
    let pull = |topic: &str, group: &str| json!({"op": "pull", "req": 1, "topic": topic, "group": group, "max": 1, "wait_ms": 0});
    let cases: Vec<(ConnId, Value, &str)> = vec![
        (writer, publish("orders.new"), "puback"),
        (writer, publish("orders.internal"), "forbidden"),
        (writer, publish("orders"), "forbidden"),
        (writer, publish("orders.new.extra"), "forbidden"),
        (writer, publish("payments.new"), "forbidden"),
        (writer, sub("orders.new", "billing"), "forbidden"),
        (writer, fetch("orders.new"), "forbidden"),
        (reader, publish("orders.new"), "forbidden"),
        (reader, sub("orders.new", "billing"), "suback"),
        (reader, sub("orders.new", "shipping"), "forbidden"),
        (reader, pull("orders.new", "shipping"), "forbidden"),
        (reader, fetch("orders.new"), "fetched"),
        (reader, fetch("payments.new"), "forbidden"),
        (reader, sub("orders.secret.x", "billing"), "forbidden"),
        (reader, fetch("orders.secret.x"), "forbidden"),
        (reader, sub("orders.new.dlq", "billing"), "suback"),
        (reader, sub("payments.dlq", "billing"), "forbidden"),
        (admin, publish("payments.new"), "puback"),
        (admin, sub("payments.new", "any"), "suback"),
        (stranger, publish("orders.new"), "unauthorized"),
        (stranger, sub("orders.new", "billing"), "unauthorized"),
    ];
    let mut wrong = Vec::new();
    for (conn, frame, want) in &cases {
        let got = outcome(&mut h, *conn, frame.clone());
        if got != *want {
            wrong.push(format!("conn {conn}: {frame} → {got}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Acks and nacks name a group too: no acking of a group one may not read.
    h.send_json(writer, json!({"op": "ack", "topic": "orders.new", "group": "billing", "ids": [1]}));
    assert_eq!(h.take_op(writer, "error")[0]["code"], json!("forbidden"));
    // Nothing outside the rights was stored: one publish to orders.new, one to payments.new.
    assert_eq!((h.node.topic_next_id("orders.new"), h.node.topic_next_id("orders.internal")), (Some(2), None));
    assert_eq!(h.node.topic_next_id("payments.new"), Some(2));
}

#[test]
fn bad_user_entries_are_refused_by_name() {
    let user = UserConfig { token: "x".into(), publish: vec!["orders.>.x".into()], ..UserConfig::default() };
    let bad = Config { users: vec![user], ..Config::default() };
    assert!(bad.validate().unwrap_err().contains("users[0]"));
    let twice = Config { tokens: vec!["x".into()], users: vec![UserConfig { token: "x".into(), ..UserConfig::default() }], ..Config::default() };
    assert!(twice.validate().is_err(), "a token used twice is ambiguous");
}

#[test]
fn a_connection_that_does_not_authenticate_in_time_is_closed() {
    let mut h = Harness::new(config());
    let (silent, by_header, by_hello) = (ConnId(1), ConnId(2), ConnId(3));
    h.connect(silent);
    h.connect(by_header);
    h.connect(by_hello);
    // A bearer token at the handshake counts as a hello.
    h.node.handle_input(h.now_ns, ferry_core::Input::Token { conn: by_header, token: WRITER });
    h.drain();
    h.send_json(by_hello, json!({"op": "hello", "token": READER}));
    h.advance_ms(Config::default().hello_timeout_ms + 1);
    assert_eq!(h.closed, vec![(silent, 1008)], "only the silent one");
    assert_eq!(outcome(&mut h, by_header, json!({"op": "pub", "req": 1, "topic": "orders.new", "body": 1})), "puback");
}

fn jwt(secret: &str, exp_s: u64, publish: &[&str]) -> String {
    let claims = json!({"sub": "app", "exp": exp_s, "publish": publish});
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

#[test]
fn a_jwt_carries_its_rights_until_it_expires_unless_a_new_hello_refreshes_it() {
    let mut h = Harness::new(Config { jwt_hs256_secret: "jwt-secret".into(), ..Config::default() });
    let now_s = h.now_ns / 1_000_000_000;
    let (refreshed, expiring, forged) = (ConnId(1), ConnId(2), ConnId(3));
    for conn in [refreshed, expiring, forged] {
        h.connect(conn);
    }
    h.send_json(refreshed, json!({"op": "hello", "token": jwt("jwt-secret", now_s + 5, &["orders.*"])}));
    h.send_json(expiring, json!({"op": "hello", "token": jwt("jwt-secret", now_s + 5, &["orders.*"])}));
    h.send_json(forged, json!({"op": "hello", "token": jwt("guessed", now_s + 5, &[">"])}));
    assert_eq!(h.take_op(forged, "error")[0]["code"], json!("unauthorized"));
    assert_eq!(outcome(&mut h, expiring, json!({"op": "pub", "req": 1, "topic": "orders.new", "body": 1})), "puback");
    assert_eq!(outcome(&mut h, expiring, json!({"op": "pub", "req": 1, "topic": "payments", "body": 1})), "forbidden", "the claims' rights");
    h.advance_ms(3_000);
    h.send_json(refreshed, json!({"op": "hello", "token": jwt("jwt-secret", now_s + 60, &["orders.*"])}));
    h.advance_ms(3_000);
    assert!(h.closed.contains(&(expiring, 1008)), "closed at its exp: {:?}", h.closed);
    assert!(!h.closed.iter().any(|(conn, _)| *conn == refreshed), "a fresh hello moved its exp");
    assert_eq!(outcome(&mut h, refreshed, json!({"op": "pub", "req": 1, "topic": "orders.new", "body": 2})), "puback");
    h.send_json(refreshed, json!({"op": "hello", "token": jwt("jwt-secret", now_s + 1, &[])}));
    assert_eq!(h.take_op(refreshed, "error")[0]["code"], json!("unauthorized"), "an expired token is refused");
}
