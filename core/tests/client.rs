//! The client state machine against a real node (`testkit::Harness`: the server's core on an
//! in-memory disk), with the node killed and restarted from its disk under the client.

use ferry_core::client::{BackoffConfig, Client, ClientConfig, ClientEvent, ClientInput, ClientOutput, ConnState, PublishId, PublishLimits, PublishOutcome};
use ferry_core::testkit::Harness;
use ferry_core::{Config, ConnId};
use serde_json::{json, Value};
use std::collections::BTreeMap;

const MS: u64 = 1_000_000;

/// A client wired to a node: the test's transport.
struct Wire {
    client: Client,
    node: Harness,
    conn: Option<ConnId>,
    next_conn: u64,
    /// While false, connecting fails (the server is down).
    server_up: bool,
    events: Vec<ClientEvent>,
    connects: Vec<(u64, String)>,
}

impl Wire {
    fn new(config: Config, client: ClientConfig) -> Wire {
        let node = Harness::new(config);
        let client = Client::new(client, node.now_ns);
        Wire { client, node, conn: None, next_conn: 1, server_up: true, events: Vec::new(), connects: Vec::new() }
    }

    fn now(&self) -> u64 {
        self.node.now_ns
    }

    /// Carries out what the client asked, and hands it what the node answered, until quiet.
    fn settle(&mut self) {
        self.exchange(true);
    }

    /// Carries out what the client asked; with `deliver_answers` false the node's answers stay
    /// unread (a crash then takes them along).
    fn exchange(&mut self, deliver_answers: bool) {
        loop {
            let mut moved = false;
            while let Some(output) = self.client.poll_output() {
                moved = true;
                match output {
                    ClientOutput::Connect { url } => {
                        self.connects.push((self.now(), url));
                        if self.server_up {
                            let conn = ConnId(self.next_conn);
                            self.next_conn += 1;
                            self.conn = Some(conn);
                            let welcome = self.node.connect(conn);
                            self.client.handle_input(self.node.now_ns, ClientInput::Connected);
                            self.client.handle_input(self.node.now_ns, ClientInput::Frame(&welcome.to_string()));
                        } else {
                            self.client.handle_input(self.node.now_ns, ClientInput::ConnectFailed { why: "connection refused".into() });
                        }
                    }
                    ClientOutput::Send(text) => {
                        let conn = self.conn.expect("the client sends only while connected");
                        self.node.send(conn, &text);
                    }
                    ClientOutput::Close => {
                        if let Some(conn) = self.conn.take() {
                            self.node.disconnect(conn);
                        }
                    }
                    ClientOutput::Event(event) => self.events.push(event),
                }
            }
            if let Some(conn) = self.conn.filter(|_| deliver_answers) {
                for frame in self.node.take(conn) {
                    moved = true;
                    self.client.handle_input(self.node.now_ns, ClientInput::Frame(&frame.to_string()));
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Moves time forward by `ms`, firing the client's and the node's timers on the way.
    fn advance_ms(&mut self, ms: u64) {
        let target = self.now() + ms * MS;
        loop {
            self.settle();
            let next = self.client.poll_timeout().filter(|at| *at <= target);
            let step_to = next.unwrap_or(target).max(self.now());
            self.node.advance_ms((step_to - self.now()) / MS);
            self.node.now_ns = step_to;
            self.client.handle_timeout(step_to);
            self.settle();
            if next.is_none() {
                return;
            }
        }
    }

    /// kill -9 of the server, and the power with it: what was not fsynced is gone.
    fn crash_and_restart(&mut self) {
        self.node.restart(true);
        if self.conn.take().is_some() {
            self.client.handle_input(self.now(), ClientInput::Disconnected { code: None, reason: "connection reset".into() });
        }
        self.settle();
    }

    fn outcomes(&self) -> BTreeMap<PublishId, Vec<PublishOutcome>> {
        let mut outcomes: BTreeMap<PublishId, Vec<PublishOutcome>> = BTreeMap::new();
        for event in &self.events {
            if let ClientEvent::Published { publish, outcome } = event {
                outcomes.entry(*publish).or_default().push(outcome.clone());
            }
        }
        outcomes
    }

    /// Every message stored in `topic`, read back with `fetch` on a connection of the test's own.
    fn stored(&mut self, topic: &str) -> Vec<Value> {
        let conn = ConnId(1_000_000);
        self.node.connect(conn);
        let mut messages = Vec::new();
        let mut from = 1;
        loop {
            self.node.send_json(conn, json!({"op": "fetch", "req": 1, "topic": topic, "from": from, "to": u64::MAX}));
            let page = self.node.take_op(conn, "fetched").pop().expect("fetched");
            let page = page["messages"].as_array().cloned().unwrap_or_default();
            let Some(last) = page.last() else { break };
            from = last["id"].as_u64().unwrap() + 1;
            messages.extend(page);
        }
        self.node.disconnect(conn);
        messages
    }
}

fn client_config(seed: u64) -> ClientConfig {
    ClientConfig::new(vec!["ws://a/ws".into(), "ws://b/ws".into()], seed)
}

#[test]
fn every_publish_is_stored_once_and_answered_once_across_two_crashes() {
    let mut wire = Wire::new(Config::default(), client_config(1));
    wire.advance_ms(1);
    assert_eq!(wire.client.state(), ConnState::Connected);
    let mut ids = Vec::new();
    for i in 0..300u64 {
        let body = json!({"n": i}).to_string();
        ids.push(wire.client.publish(wire.now(), "orders", Some(&format!("k{}", i % 7)), &body).expect("room in the buffer"));
        // The server dies with publishes in every state: stored with their pubacks unread
        // (a resend must not store them again), written but not yet durable (held writes,
        // gone with the power: a resend must store them), and not yet sent.
        if i == 100 || i == 200 {
            wire.node.hold_writes = i == 200;
            wire.exchange(false);
            wire.crash_and_restart();
            // The restarted node's own first writes were held too: let them through.
            wire.node.hold_writes = false;
            wire.node.complete_writes();
        }
        if i % 10 == 0 {
            wire.advance_ms(1);
        }
    }
    wire.advance_ms(30_000);
    assert_eq!(wire.client.unanswered_publishes(), 0);
    let outcomes = wire.outcomes();
    assert_eq!(outcomes.len(), 300, "every publish has an outcome");
    let mut stored_ids = BTreeMap::new();
    for publish in &ids {
        match outcomes[publish].as_slice() {
            [PublishOutcome::Stored { topic, id }] => {
                assert_eq!(topic, "orders");
                assert!(stored_ids.insert(*id, *publish).is_none(), "id {id} given to two publishes");
            }
            other => panic!("{publish:?} ended {other:?}"),
        }
    }
    let stored = wire.stored("orders");
    let bodies: Vec<u64> = stored.iter().map(|m| m["body"]["n"].as_u64().unwrap()).collect();
    assert_eq!(bodies, (0..300).collect::<Vec<_>>(), "each body stored exactly once, in publish order");
    assert!(wire.events.iter().filter(|e| matches!(e, ClientEvent::State { state: ConnState::Connected, .. })).count() >= 3, "reconnected after each crash");
}

#[test]
fn publishes_wait_while_the_server_is_down_and_backoff_grows() {
    let mut config = client_config(2);
    config.backoff = BackoffConfig { initial_ms: 100, max_ms: 2_000, healthy_after_ms: 5_000 };
    let mut wire = Wire::new(Config::default(), config);
    wire.server_up = false;
    let id = wire.client.publish(wire.now(), "orders", None, "{\"a\":1}").unwrap();
    wire.advance_ms(20_000);
    assert!(wire.outcomes().is_empty(), "nothing answered while down");
    let attempts: Vec<u64> = wire.connects.iter().map(|(at, _)| *at).collect();
    assert!(attempts.len() >= 8, "kept trying: {} attempts", attempts.len());
    let gaps: Vec<u64> = attempts.windows(2).map(|w| (w[1] - w[0]) / MS).collect();
    assert!(gaps.iter().all(|&gap| gap <= 2_000), "no wait beyond max_ms: {gaps:?}");
    assert!(gaps[gaps.len() - 4..].iter().any(|&gap| gap > 200), "later waits grow past the first caps: {gaps:?}");
    let urls: Vec<&str> = wire.connects.iter().take(4).map(|(_, url)| url.as_str()).collect();
    assert_eq!(urls, ["ws://a/ws", "ws://b/ws", "ws://a/ws", "ws://b/ws"], "URLs in turn");
    wire.server_up = true;
    wire.advance_ms(3_000);
    assert!(matches!(wire.outcomes()[&id].as_slice(), [PublishOutcome::Stored { .. }]));
}

#[test]
fn the_buffer_is_bounded_and_bad_bodies_are_refused_on_the_call() {
    let mut config = client_config(3);
    config.publish = PublishLimits { in_flight_max: 2, buffered_max: 3, buffered_bytes_max: 1 << 20 };
    let mut wire = Wire::new(Config::default(), config);
    wire.server_up = false;
    for _ in 0..3 {
        wire.client.publish(wire.now(), "orders", None, "1").unwrap();
    }
    assert!(matches!(wire.client.publish(wire.now(), "orders", None, "1"), Err(ferry_core::client::ClientError::BufferFull(_))));
    assert!(matches!(wire.client.publish(wire.now(), "orders", None, "{nope"), Err(ferry_core::client::ClientError::BadBody(_))));
    let mut small = client_config(4);
    small.publish = PublishLimits { in_flight_max: 2, buffered_max: 100, buffered_bytes_max: 200 };
    let mut client = Client::new(small, 0);
    client.publish(0, "orders", None, &json!("x".repeat(50)).to_string()).unwrap();
    let refused = client.publish(0, "orders", None, &json!("x".repeat(150)).to_string());
    assert!(matches!(refused, Err(ferry_core::client::ClientError::BufferFull(_))), "{refused:?}");
    assert!(client.buffered_publish_bytes() <= 200);
}

#[test]
fn a_refused_publish_ends_refused_and_the_rest_go_on() {
    let mut wire = Wire::new(Config::default(), client_config(5));
    wire.advance_ms(1);
    let dlq = wire.client.publish(wire.now(), "orders.dlq", None, "1").unwrap();
    let fine = wire.client.publish(wire.now(), "orders", None, "2").unwrap();
    wire.advance_ms(100);
    let outcomes = wire.outcomes();
    assert!(matches!(outcomes[&dlq].as_slice(), [PublishOutcome::Refused { code, .. }] if code == "forbidden"), "{outcomes:?}");
    assert!(matches!(outcomes[&fine].as_slice(), [PublishOutcome::Stored { .. }]));
}

#[test]
fn a_refused_token_closes_for_good_and_abandons_what_waits() {
    let config = Config { tokens: vec!["right".into()], ..Config::default() };
    let mut client = client_config(6);
    client.token = Some("wrong".into());
    let mut wire = Wire::new(config, client);
    let waiting = wire.client.publish(wire.now(), "orders", None, "1").unwrap();
    wire.advance_ms(60_000);
    assert_eq!(wire.client.state(), ConnState::Closed);
    assert_eq!(wire.connects.len(), 1, "no reconnect with a refused token");
    assert!(matches!(wire.outcomes()[&waiting].as_slice(), [PublishOutcome::Abandoned { .. }]));
    assert!(matches!(wire.client.publish(wire.now(), "orders", None, "1"), Err(ferry_core::client::ClientError::Closed)));
}

#[test]
fn a_silent_server_is_pinged_then_left() {
    let mut config = client_config(7);
    config.ping_interval_ms = 1_000;
    config.pong_timeout_ms = 500;
    let mut client = Client::new(config, 0);
    client.handle_timeout(0);
    let outputs: Vec<ClientOutput> = std::iter::from_fn(|| client.poll_output()).collect();
    assert!(outputs.contains(&ClientOutput::Connect { url: "ws://a/ws".into() }));
    client.handle_input(0, ClientInput::Connected);
    client.handle_input(500 * MS, ClientInput::Frame(r#"{"op":"welcome","server":"n","version":1}"#));
    std::iter::from_fn(|| client.poll_output()).for_each(drop);
    assert_eq!(client.poll_timeout(), Some(1_500 * MS), "a ping is due a ping interval after the server was last heard");
    client.handle_timeout(1_500 * MS);
    let sent: Vec<ClientOutput> = std::iter::from_fn(|| client.poll_output()).collect();
    assert!(matches!(sent.as_slice(), [ClientOutput::Send(frame)] if frame.contains("\"op\":\"ping\"")), "{sent:?}");
    client.handle_timeout(2_000 * MS);
    let ended: Vec<ClientOutput> = std::iter::from_fn(|| client.poll_output()).collect();
    assert_eq!(ended.first(), Some(&ClientOutput::Close), "{ended:?}");
    assert_eq!(client.state(), ConnState::Disconnected);
}
