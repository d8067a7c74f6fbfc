//! The client state machine against a real node (`testkit::Harness`: the server's core on an
//! in-memory disk), with the node killed and restarted from its disk under the client.

use ferry_core::client::{
    BackoffConfig, Client, ClientConfig, ClientEvent, ClientInput, ClientOutput, ConnState, Delivery, PublishId, PublishLimits, PublishOutcome, SubscribeOptions,
};
use ferry_core::protocol::StartFrom;
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
    /// The application's answer to `TokenWanted`, if it answers.
    token_answer: Option<String>,
}

impl Wire {
    fn new(config: Config, client: ClientConfig) -> Wire {
        let node = Harness::new(config);
        let client = Client::new(client, node.now_ns);
        Wire { client, node, conn: None, next_conn: 1, server_up: true, events: Vec::new(), connects: Vec::new(), token_answer: None }
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
                    ClientOutput::Event(event) => {
                        if event == ClientEvent::TokenWanted {
                            if let Some(token) = self.token_answer.clone() {
                                self.client.set_token(self.node.now_ns, token);
                            }
                        }
                        self.events.push(event);
                    }
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
    config.publish = PublishLimits { in_flight_max: 2, buffered_max: 3, buffered_bytes_max: 1 << 20, ..PublishLimits::default() };
    let mut wire = Wire::new(Config::default(), config);
    wire.server_up = false;
    for _ in 0..3 {
        wire.client.publish(wire.now(), "orders", None, "1").unwrap();
    }
    assert!(matches!(wire.client.publish(wire.now(), "orders", None, "1"), Err(ferry_core::client::ClientError::BufferFull(_))));
    assert!(matches!(wire.client.publish(wire.now(), "orders", None, "{nope"), Err(ferry_core::client::ClientError::BadBody(_))));
    let mut small = client_config(4);
    small.publish = PublishLimits { in_flight_max: 2, buffered_max: 100, buffered_bytes_max: 200, ..PublishLimits::default() };
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

/// A second client on the same node: the subscriber, acking each message as its application
/// would (all of them, or only those `acks` lets through).
struct Subscriber {
    client: Client,
    conn: Option<ConnId>,
    deliveries: Vec<Delivery>,
    events: Vec<ClientEvent>,
    /// The op of every frame it sent.
    ops_sent: Vec<String>,
}

impl Subscriber {
    fn new(seed: u64, now_ns: u64, options: SubscribeOptions) -> Subscriber {
        let mut client = Client::new(client_config(seed), now_ns);
        client.subscribe(options).unwrap();
        Subscriber { client, conn: None, deliveries: Vec::new(), events: Vec::new(), ops_sent: Vec::new() }
    }

    /// One exchange with the node; true when anything moved.
    fn exchange(&mut self, node: &mut Harness, next_conn: &mut u64, acks: &dyn Fn(&Delivery) -> bool) -> bool {
        let mut moved = false;
        while let Some(output) = self.client.poll_output() {
            moved = true;
            match output {
                ClientOutput::Connect { .. } => {
                    let conn = ConnId(*next_conn);
                    *next_conn += 1;
                    self.conn = Some(conn);
                    let welcome = node.connect(conn);
                    self.client.handle_input(node.now_ns, ClientInput::Connected);
                    self.client.handle_input(node.now_ns, ClientInput::Frame(&welcome.to_string()));
                }
                ClientOutput::Send(text) => {
                    self.ops_sent.push(serde_json::from_str::<Value>(&text).unwrap()["op"].as_str().unwrap_or_default().to_string());
                    node.send(self.conn.expect("connected"), &text);
                }
                ClientOutput::Close => {
                    if let Some(conn) = self.conn.take() {
                        node.disconnect(conn);
                    }
                }
                ClientOutput::Event(ClientEvent::Message(delivery)) => {
                    if !delivery.repaired && acks(&delivery) {
                        self.client.ack(node.now_ns, &delivery.topic, &delivery.group, delivery.id).unwrap();
                    }
                    self.deliveries.push(delivery);
                }
                ClientOutput::Event(event) => self.events.push(event),
            }
        }
        if let Some(conn) = self.conn {
            for frame in node.take(conn) {
                moved = true;
                self.client.handle_input(node.now_ns, ClientInput::Frame(&frame.to_string()));
            }
        }
        if self.client.poll_timeout().is_some_and(|at| at <= node.now_ns) {
            self.client.handle_timeout(node.now_ns);
            moved = true;
        }
        moved
    }

    fn bodies(&self) -> Vec<u64> {
        self.deliveries.iter().map(|d| serde_json::from_str::<Value>(&d.body).unwrap()["n"].as_u64().unwrap()).collect()
    }
}

/// Runs a publisher (`wire`) and a subscriber on one node for `ms`, 1 ms at a time.
fn run_both(wire: &mut Wire, sub: &mut Subscriber, ms: u64, acks: &dyn Fn(&Delivery) -> bool) {
    for _ in 0..ms {
        loop {
            wire.settle();
            if !sub.exchange(&mut wire.node, &mut wire.next_conn, acks) {
                break;
            }
        }
        wire.advance_ms(1);
        sub.client.handle_timeout(wire.now());
    }
}

fn earliest(topic: &str, group: &str) -> SubscribeOptions {
    SubscribeOptions { from: StartFrom::Earliest, window: Some(16), ..SubscribeOptions::new(topic, group) }
}

/// A publisher wired to a node of `config`, and a subscriber of orders/billing on it.
fn publisher_and_subscriber(config: Config, seed: u64) -> (Wire, Subscriber) {
    let mut wire = Wire::new(config, client_config(seed));
    let sub = Subscriber::new(seed + 1, wire.now(), earliest("orders", "billing"));
    // The subscriber's connections are numbered apart from the publisher's.
    wire.next_conn = 100;
    (wire, sub)
}

#[test]
fn a_subscriber_gets_every_message_once_in_order_across_two_crashes() {
    let (mut wire, mut sub) = publisher_and_subscriber(Config::default(), 10);
    for i in 0..200u64 {
        wire.client.publish(wire.now(), "orders", Some(&format!("k{}", i % 5)), &json!({"n": i}).to_string()).unwrap();
        if i % 10 == 0 {
            run_both(&mut wire, &mut sub, 1, &|_| true);
        }
        if i == 70 || i == 140 {
            wire.crash_and_restart();
            if sub.conn.take().is_some() {
                sub.client.handle_input(wire.now(), ClientInput::Disconnected { code: None, reason: "connection reset".into() });
            }
        }
    }
    run_both(&mut wire, &mut sub, 30_000, &|_| true);
    assert_eq!(sub.bodies(), (0..200).collect::<Vec<_>>(), "each message once, in order");
    let ids: Vec<u64> = sub.deliveries.iter().map(|d| d.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let subscribed = sub.events.iter().filter(|e| matches!(e, ClientEvent::Subscribed { .. })).count();
    assert!(subscribed >= 2, "subscribed again after a crash ({subscribed} subacks)");
}

#[test]
fn a_pulling_member_starts_its_group_at_earliest_and_gets_every_message_once_across_a_crash() {
    let mut wire = Wire::new(Config::default(), client_config(80));
    for i in 0..30u64 {
        wire.client.publish(wire.now(), "orders", None, &json!({"n": i}).to_string()).unwrap();
    }
    wire.settle();
    let options = SubscribeOptions { pull: Some(ferry_core::client::PullOptions { max: 4, wait_ms: 200 }), ..earliest("orders", "billing") };
    let mut sub = Subscriber::new(81, wire.now(), options);
    wire.next_conn = 100;
    run_both(&mut wire, &mut sub, 300, &|_| true);
    wire.crash_and_restart();
    if sub.conn.take().is_some() {
        sub.client.handle_input(wire.now(), ClientInput::Disconnected { code: None, reason: "connection reset".into() });
    }
    for i in 30..60u64 {
        wire.client.publish(wire.now(), "orders", None, &json!({"n": i}).to_string()).unwrap();
    }
    run_both(&mut wire, &mut sub, 5_000, &|_| true);
    assert_eq!(sub.bodies(), (0..60).collect::<Vec<_>>(), "each message once, in order, from the earliest");
    let count = |op: &str| sub.ops_sent.iter().filter(|o| *o == op).count();
    // Joined once with sub (then unsub), pulling since, after the crash too: 60 messages, 4 a pull.
    assert_eq!((count("sub"), count("unsub")), (1, 1), "{:?}", sub.ops_sent);
    assert!(count("pull") >= 15, "{:?}", sub.ops_sent);
}

#[test]
fn a_redelivery_is_not_handed_over_twice() {
    let config = Config { ack_timeout_ms: 1_000, ..Config::default() };
    let (mut wire, mut sub) = publisher_and_subscriber(config, 12);
    for i in 0..10u64 {
        wire.client.publish(wire.now(), "orders", None, &json!({"n": i}).to_string()).unwrap();
    }
    // The application holds on to the even ones: the server redelivers them at the ack timeout.
    run_both(&mut wire, &mut sub, 3_500, &|d| d.id % 2 == 1);
    assert_eq!(sub.bodies(), (0..10).collect::<Vec<_>>(), "redeliveries of unacked ids are not handed over again");
    for d in sub.deliveries.clone().iter().filter(|d| d.id % 2 == 0) {
        sub.client.ack(wire.now(), &d.topic, &d.group, d.id).unwrap();
    }
    run_both(&mut wire, &mut sub, 3_000, &|_| true);
    assert_eq!(sub.deliveries.len(), 10, "acked at last: nothing more comes");
    let stats = wire.node.node.stats();
    assert!(stats.redelivered > 0, "the server did redeliver ({stats:?})");
}

/// A connected client subscribed to orders/billing, its outputs so far drained.
fn subscribed_client(options: SubscribeOptions) -> Client {
    let mut client = Client::new(client_config(20), 0);
    client.subscribe(options).unwrap();
    client.handle_timeout(0);
    client.handle_input(0, ClientInput::Connected);
    client.handle_input(0, ClientInput::Frame(r#"{"op":"suback","req":"s-1","topic":"orders","group":"billing"}"#));
    drain(&mut client);
    client
}

/// A subscribed client that handed over ids 1 and 2 (of these keys), unacked.
fn handed_one_and_two(keys: [&str; 2]) -> Client {
    let mut client = subscribed_client(SubscribeOptions::new("orders", "billing"));
    client.handle_input(1, ClientInput::Frame(&msg(1, 0, keys[0])));
    client.handle_input(1, ClientInput::Frame(&msg(2, 1, keys[1])));
    assert_eq!(handed(&drain(&mut client)), [(1, false), (2, false)]);
    client
}

fn drain(client: &mut Client) -> Vec<ClientOutput> {
    std::iter::from_fn(|| client.poll_output()).collect()
}

fn msg(id: u64, prev: u64, key: &str) -> String {
    json!({"op": "msg", "topic": "orders", "group": "billing", "id": id, "prev": prev, "key": key, "body": {"n": id}, "attempt": 1, "ts": 5}).to_string()
}

fn handed(outputs: &[ClientOutput]) -> Vec<(u64, bool)> {
    outputs.iter().filter_map(|o| if let ClientOutput::Event(ClientEvent::Message(d)) = o { Some((d.id, d.repaired)) } else { None }).collect()
}

fn sent(outputs: &[ClientOutput]) -> Vec<Value> {
    outputs.iter().filter_map(|o| if let ClientOutput::Send(text) = o { Some(serde_json::from_str(text).unwrap()) } else { None }).collect()
}

#[test]
fn without_repair_a_message_held_back_for_its_key_comes_in_its_turn() {
    let mut client = subscribed_client(SubscribeOptions::new("orders", "billing"));
    client.handle_input(1, ClientInput::Frame(&msg(1, 0, "a")));
    // 2 (key b) waits at the server for an earlier b's ack; 3 names it as its prev.
    client.handle_input(2, ClientInput::Frame(&msg(3, 2, "c")));
    let out = drain(&mut client);
    assert_eq!(handed(&out), [(1, false), (3, false)]);
    assert!(sent(&out).iter().all(|f| f["op"] != "fetch"), "no repair asked for: {out:?}");
    client.handle_input(3, ClientInput::Frame(&msg(2, 1, "b")));
    assert_eq!(handed(&drain(&mut client)), [(2, false)], "handed over when the server delivers it");
}

#[test]
fn a_gap_is_fetched_page_by_page_filtered_and_handed_over_before_what_waited() {
    let options = SubscribeOptions { filter: Some(ferry_core::protocol::Filter::KeyPrefix("a".into())), repair_gaps: true, ..SubscribeOptions::new("orders", "billing") };
    let mut client = subscribed_client(options);
    client.handle_input(1, ClientInput::Frame(&msg(5, 0, "a1")));
    assert_eq!(handed(&drain(&mut client)), [(5, false)]);
    // prev 9 > 5: ids 6..=9 were missed. 12 waits for them, and so does 13.
    client.handle_input(2, ClientInput::Frame(&msg(12, 9, "a2")));
    let out = drain(&mut client);
    assert_eq!(handed(&out), []);
    let fetch = sent(&out).into_iter().find(|f| f["op"] == "fetch").expect("a fetch for the gap");
    assert_eq!((fetch["from"].as_u64(), fetch["to"].as_u64()), (Some(6), Some(9)));
    let req = fetch["req"].clone();
    client.handle_input(3, ClientInput::Frame(&msg(13, 12, "a3")));
    assert_eq!(handed(&drain(&mut client)), []);
    // First page: 6 (another key prefix: the group's filter leaves it out) and 7.
    let page = json!({"op": "fetched", "req": req, "topic": "orders", "messages": [{"id": 6, "key": "b", "body": 1, "ts": 1}, {"id": 7, "key": "a7", "body": 2, "ts": 1}]});
    client.handle_input(4, ClientInput::Frame(&page.to_string()));
    let out = drain(&mut client);
    assert_eq!(handed(&out), [(7, true)]);
    let next = sent(&out).into_iter().find(|f| f["op"] == "fetch").expect("the next page");
    assert_eq!((next["from"].as_u64(), next["to"].as_u64()), (Some(8), Some(9)));
    // Nothing more is stored in the gap (retention took 8 and 9): the waiting messages go on.
    let empty = json!({"op": "fetched", "req": next["req"], "topic": "orders", "messages": []});
    client.handle_input(5, ClientInput::Frame(&empty.to_string()));
    assert_eq!(handed(&drain(&mut client)), [(12, false), (13, false)]);
}

#[test]
fn a_duplicate_of_an_acked_message_is_acked_again_and_acks_wait_for_a_connection() {
    let mut client = handed_one_and_two(["k", "k"]);
    client.ack(1, "orders", "billing", 1).unwrap();
    client.ack(1, "orders", "billing", 2).unwrap();
    assert_eq!(client.poll_timeout(), Some(1), "acks go out at the end of the turn");
    client.handle_timeout(1);
    let acks = sent(&drain(&mut client));
    assert_eq!(acks, [json!({"op": "ack", "topic": "orders", "group": "billing", "ids": [1, 2]})], "one frame for both");
    // The ack of 2 was lost with the connection: 2 comes again, is not handed over, and is acked again.
    client.handle_input(2, ClientInput::Frame(&msg(2, 1, "k")));
    let out = drain(&mut client);
    assert_eq!(handed(&out), []);
    client.handle_timeout(2);
    assert_eq!(sent(&drain(&mut client)), [json!({"op": "ack", "topic": "orders", "group": "billing", "ids": [2]})]);
    // An ack made while disconnected goes out on the next connection, after the sub.
    client.handle_input(3, ClientInput::Frame(&msg(3, 2, "k")));
    drain(&mut client);
    client.handle_input(4, ClientInput::Disconnected { code: Some(1013), reason: "leader changed".into() });
    client.ack(4, "orders", "billing", 3).unwrap();
    let retry_at = client.poll_timeout().unwrap();
    client.handle_timeout(retry_at);
    client.handle_input(retry_at, ClientInput::Connected);
    let frames = sent(&drain(&mut client));
    let ops: Vec<&str> = frames.iter().map(|f| f["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["sub", "ack"], "{frames:?}");
    assert_eq!(frames[1]["ids"], json!([3]));
    assert!(matches!(client.ack(5, "orders", "other", 3), Err(ferry_core::client::ClientError::NotSubscribed(_))));
}

#[test]
fn a_group_reset_backwards_is_not_handed_over_again_but_acked() {
    let mut client = handed_one_and_two(["k", "k"]);
    client.ack(1, "orders", "billing", 1).unwrap();
    client.ack(1, "orders", "billing", 2).unwrap();
    client.handle_timeout(1);
    drain(&mut client);
    // An operator reset the group to id 1: a new chain (prev 0) delivers 1 and 2 again. From
    // the frames alone that is a redelivery after a crash: the application has them already.
    client.handle_input(2, ClientInput::Frame(&msg(1, 0, "k")));
    client.handle_input(2, ClientInput::Frame(&msg(2, 1, "k")));
    client.handle_timeout(2);
    let out = drain(&mut client);
    assert_eq!(handed(&out), []);
    assert_eq!(sent(&out), [json!({"op": "ack", "topic": "orders", "group": "billing", "ids": [1, 2]})], "acked, so the group moves on");
}

#[test]
fn a_redelivery_of_the_first_message_of_the_chain_is_not_a_reset() {
    let mut client = handed_one_and_two(["a", "b"]);
    client.ack(1, "orders", "billing", 2).unwrap();
    // 1 is not acked in time: it comes again with its prev 0 (it heads the chain), attempt 2.
    let again = json!({"op": "msg", "topic": "orders", "group": "billing", "id": 1, "prev": 0, "key": "a", "body": {"n": 1}, "attempt": 2, "ts": 5});
    client.handle_input(2, ClientInput::Frame(&again.to_string()));
    client.handle_input(2, ClientInput::Frame(&msg(3, 2, "b")));
    assert_eq!(handed(&drain(&mut client)), [(3, false)], "1 is held by the application already, 2 was handed over");
}

/// Random frames (well-formed and not), transport events, timeouts and application calls:
/// the client never panics, never answers a publish twice, and never asks to be woken in the
/// past (a driver would spin on such a timer).
#[test]
fn random_inputs_never_panic_double_answer_or_spin() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    for round in 0..300 {
        let mut config = client_config(round);
        config.publish = PublishLimits { in_flight_max: 1 + rng.gen_range(0..4), buffered_max: 20, buffered_bytes_max: 1 << 16, answer_timeout_ms: rng.gen_range(1..3_000) };
        config.dedupe_window_ids = 1 + rng.gen_range(0..8);
        let mut client = Client::new(config, 0);
        let mut now = 0u64;
        let mut answered = std::collections::BTreeSet::new();
        let _ = client.subscribe(SubscribeOptions { repair_gaps: rng.gen_bool(0.7), ..SubscribeOptions::new("orders", "billing") });
        for _ in 0..300 {
            now += rng.gen_range(0..3) * rng.gen_range(0..200) * MS;
            let (id, prev) = (rng.gen_range(0..12u64), rng.gen_range(0..12u64));
            let req = match rng.gen_range(0..4) {
                0 => json!(rng.gen_range(0..25u64)),
                1 => json!("s-1"),
                2 => json!(format!("f-s-1-{}", rng.gen_range(0..12))),
                _ => json!("x"),
            };
            match rng.gen_range(0..14) {
                0 => client.handle_input(now, ClientInput::Connected),
                1 => client.handle_input(now, ClientInput::Disconnected { code: Some(1013), reason: String::new() }),
                2 => client.handle_input(now, ClientInput::ConnectFailed { why: "refused".into() }),
                3 => client.handle_input(now, ClientInput::Frame(&msg(id, prev, "k"))),
                4 => client.handle_input(now, ClientInput::Frame(&json!({"op": "puback", "req": req, "topic": "orders", "id": id}).to_string())),
                5 => {
                    let code = ["overloaded", "forbidden", "unavailable", "unauthorized", "not_subscribed"][rng.gen_range(0..5)];
                    let frame = json!({"op": "error", "req": req, "code": code, "message": "m", "retry_after_ms": rng.gen_range(0..50)});
                    client.handle_input(now, ClientInput::Frame(&frame.to_string()));
                }
                6 => {
                    let messages: Vec<Value> = (0..rng.gen_range(0..4)).map(|i| json!({"id": id + i, "key": "k", "body": i, "ts": 1})).collect();
                    client.handle_input(now, ClientInput::Frame(&json!({"op": "fetched", "req": req, "topic": "orders", "messages": messages}).to_string()));
                }
                7 => client.handle_input(
                    now,
                    ClientInput::Frame(["{", "[]", r#"{"op":"msg"}"#, r#"{"op":"suback","req":"s-1","topic":"orders","group":"billing"}"#][rng.gen_range(0..4)]),
                ),
                8 | 9 => {
                    let _ = client.publish(now, "orders", None, "1");
                }
                10 => {
                    let _ = client.ack(now, "orders", "billing", id);
                }
                11 => {
                    let _ = client.nack("orders", "billing", id, 5);
                }
                12 if rng.gen_bool(0.05) => client.close(),
                _ => {
                    if let Some(at) = client.poll_timeout() {
                        now = now.max(at);
                    }
                    client.handle_timeout(now);
                }
            }
            let mut drain_checked = |client: &mut Client| {
                let mut produced = 0;
                while let Some(output) = client.poll_output() {
                    produced += 1;
                    if let ClientOutput::Event(ClientEvent::Published { publish, .. }) = output {
                        assert!(answered.insert(publish), "round {round}: {publish:?} answered twice");
                    }
                }
                produced
            };
            drain_checked(&mut client);
            // A timer due now may fire once for nothing, but not stay due without doing
            // anything: its driver would spin.
            for _ in 0..3 {
                match client.poll_timeout() {
                    Some(at) if at <= now => {
                        client.handle_timeout(now);
                        let produced = drain_checked(&mut client);
                        let still_due = client.poll_timeout().is_some_and(|again| again <= now);
                        assert!(produced > 0 || !still_due, "round {round}: a timeout due at {at} (now {now}) stays due and does nothing");
                    }
                    _ => break,
                }
            }
        }
    }
}

#[test]
fn a_cluster_welcome_adds_its_nodes_to_the_urls_tried() {
    let mut client = Client::new(ClientConfig::new(vec!["ws://a/ws".into()], 30), 0);
    client.handle_timeout(0);
    client.handle_input(0, ClientInput::Connected);
    let welcome = json!({"op": "welcome", "server": "n1", "version": 1, "node": 1, "nodes": ["ws://a/ws", "ws://b/ws", "ws://c/ws"]});
    client.handle_input(0, ClientInput::Frame(&welcome.to_string()));
    let mut urls = Vec::new();
    for _ in 0..4 {
        client.handle_input(client.poll_timeout().unwrap(), ClientInput::ConnectFailed { why: "down".into() });
        drain(&mut client);
        let at = client.poll_timeout().unwrap();
        client.handle_timeout(at);
        urls.extend(drain(&mut client).into_iter().filter_map(|o| if let ClientOutput::Connect { url } = o { Some(url) } else { None }));
    }
    assert_eq!(urls, ["ws://b/ws", "ws://c/ws", "ws://a/ws", "ws://b/ws"]);
}

#[test]
fn a_token_from_the_application_is_asked_for_each_connection_and_nothing_goes_before_it() {
    let config = Config { tokens: vec!["fresh".into()], ..Config::default() };
    let mut client = client_config(40);
    client.token_from_application = true;
    let mut wire = Wire::new(config, client);
    // The application does not answer at first: the connection waits, sending nothing.
    let waiting = wire.client.publish(wire.now(), "orders", None, "1").unwrap();
    wire.advance_ms(5);
    assert_eq!(wire.client.state(), ConnState::Connected);
    assert!(wire.outcomes().is_empty());
    assert_eq!(wire.node.node.stats().published, 0, "nothing published before the token");
    wire.client.set_token(wire.now(), "fresh".into());
    wire.advance_ms(5);
    assert!(matches!(wire.outcomes()[&waiting].as_slice(), [PublishOutcome::Stored { .. }]), "{:?}", wire.outcomes());
    // After a crash the next connection asks again; this time the application answers at once.
    wire.token_answer = Some("fresh".into());
    wire.crash_and_restart();
    let again = wire.client.publish(wire.now(), "orders", None, "2").unwrap();
    wire.advance_ms(2_000);
    assert!(matches!(wire.outcomes()[&again].as_slice(), [PublishOutcome::Stored { .. }]));
    assert_eq!(wire.events.iter().filter(|e| **e == ClientEvent::TokenWanted).count(), 2, "one request per connection");
    assert!(!wire.events.iter().any(|e| matches!(e, ClientEvent::ServerError { .. } | ClientEvent::State { state: ConnState::Closed, .. })), "{:?}", wire.events);
}

#[test]
fn a_connection_without_a_token_in_time_is_given_up_and_tried_again() {
    let mut config = client_config(41);
    config.token_from_application = true;
    config.connect_timeout_ms = 1_000;
    let mut wire = Wire::new(Config::default(), config);
    wire.advance_ms(3_000);
    let asked = wire.events.iter().filter(|e| **e == ClientEvent::TokenWanted).count();
    assert!(asked >= 2, "asked again on the next connection ({asked} times)");
    assert!(wire.events.iter().any(|e| matches!(e, ClientEvent::State { why: Some(why), .. } if why.contains("no token"))), "{:?}", wire.events);
}

#[test]
fn a_publish_unanswered_on_a_live_connection_is_sent_again() {
    let mut config = client_config(50);
    config.publish.answer_timeout_ms = 1_000;
    let mut client = Client::new(config, 0);
    client.handle_timeout(0);
    client.handle_input(0, ClientInput::Connected);
    drain(&mut client);
    let id = client.publish(0, "orders", None, "1").unwrap();
    let first = sent(&drain(&mut client));
    assert_eq!(first.len(), 1);
    // The answer never comes (the connection stays up, and answers pings).
    client.handle_input(500 * MS, ClientInput::Frame(r#"{"op":"pong"}"#));
    assert_eq!(client.poll_timeout(), Some(1_000 * MS), "due when the answer is late");
    client.handle_timeout(1_000 * MS);
    let again = sent(&drain(&mut client));
    assert_eq!(again, first, "the very same frame again");
    client.handle_input(1_100 * MS, ClientInput::Frame(&json!({"op": "puback", "req": id.0, "topic": "orders", "id": 7}).to_string()));
    let answered = drain(&mut client);
    assert!(answered.contains(&ClientOutput::Event(ClientEvent::Published { publish: id, outcome: PublishOutcome::Stored { topic: "orders".into(), id: 7 } })));
}

/// A client with `urls`, connected, whose one publish was answered `unavailable`; what it
/// did about it.
fn answered_unavailable(urls: &[&str], seed: u64) -> (Client, Vec<ClientOutput>) {
    let mut client = Client::new(ClientConfig::new(urls.iter().map(|u| u.to_string()).collect(), seed), 0);
    client.handle_timeout(0);
    client.handle_input(0, ClientInput::Connected);
    let id = client.publish(0, "orders", None, "1").unwrap();
    drain(&mut client);
    let refusal = json!({"op": "error", "req": id.0, "code": "unavailable", "message": "no leader known"});
    client.handle_input(1, ClientInput::Frame(&refusal.to_string()));
    let out = drain(&mut client);
    (client, out)
}

#[test]
fn unavailable_moves_to_another_node_when_there_are_others() {
    let (mut client, out) = answered_unavailable(&["ws://a/ws", "ws://b/ws"], 60);
    assert_eq!(out.first(), Some(&ClientOutput::Close), "{out:?}");
    assert_eq!(client.state(), ConnState::Disconnected);
    let at = client.poll_timeout().unwrap();
    client.handle_timeout(at);
    assert!(drain(&mut client).contains(&ClientOutput::Connect { url: "ws://b/ws".into() }), "the next node");
    // With a single node there is nowhere to go: the publish waits and is sent again there.
    let (mut single, _) = answered_unavailable(&["ws://a/ws"], 61);
    assert_eq!(single.state(), ConnState::Connected);
    let at = single.poll_timeout().unwrap();
    single.handle_timeout(at);
    assert_eq!(sent(&drain(&mut single)).len(), 1, "sent again on the same connection");
}

#[test]
fn unsubscribe_stops_deliveries_and_a_later_subscribe_goes_on_from_the_group() {
    let (mut wire, mut sub) = publisher_and_subscriber(Config::default(), 70);
    for i in 0..5u64 {
        wire.client.publish(wire.now(), "orders", None, &json!({"n": i}).to_string()).unwrap();
    }
    run_both(&mut wire, &mut sub, 50, &|_| true);
    assert_eq!(sub.bodies(), (0..5).collect::<Vec<_>>());
    sub.client.unsubscribe("orders", "billing").unwrap();
    assert!(matches!(sub.client.unsubscribe("orders", "billing"), Err(ferry_core::client::ClientError::NotSubscribed(_))));
    for i in 5..10u64 {
        wire.client.publish(wire.now(), "orders", None, &json!({"n": i}).to_string()).unwrap();
    }
    run_both(&mut wire, &mut sub, 50, &|_| true);
    assert_eq!(sub.deliveries.len(), 5, "nothing handed over after unsubscribe");
    // The group kept the rest: subscribing again hands it over, and nothing twice.
    sub.client.subscribe(earliest("orders", "billing")).unwrap();
    run_both(&mut wire, &mut sub, 50, &|_| true);
    assert_eq!(sub.bodies(), (0..10).collect::<Vec<_>>());
    let subscribed = sub.events.iter().filter(|e| matches!(e, ClientEvent::Subscribed { .. })).count();
    assert_eq!(subscribed, 2, "each subscribe answered once (its req names one subscription)");
}

/// `read_latest` pages through the newest message of every key (a small page size), asks the
/// page lost with a crash again on the next connection, and ends with an empty page.
#[test]
fn read_latest_pages_through_the_newest_of_each_key_across_a_crash() {
    let config = Config { fetch_messages_max: 3, ..Config::default() };
    let mut wire = Wire::new(config, client_config(90));
    let mut newest = BTreeMap::new();
    for i in 0..40u64 {
        let key = format!("order-{}", i % 8);
        wire.client.publish(wire.now(), "orders", Some(&key), &json!({"n": i}).to_string()).unwrap();
        wire.advance_ms(1);
        newest.insert(key, i);
    }
    wire.advance_ms(100);
    let read = wire.client.read_latest(wire.now(), "orders", None).unwrap();
    // The first page's answer never reaches the client: the server dies with it.
    wire.exchange(false);
    wire.crash_and_restart();
    wire.advance_ms(5_000);
    let pages: Vec<(Vec<(String, u64)>, bool)> = wire
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Latest { read: r, messages, done } if *r == read => {
                Some((messages.iter().map(|m| (m.key.clone(), serde_json::from_str::<Value>(&m.body).unwrap()["n"].as_u64().unwrap())).collect(), *done))
            }
            _ => None,
        })
        .collect();
    assert!(pages.len() >= 4, "8 keys, 3 a page, then the empty one: {pages:?}");
    assert!(pages[..pages.len() - 1].iter().all(|(page, done)| !page.is_empty() && !done) && pages.last().is_some_and(|(page, done)| page.is_empty() && *done), "{pages:?}");
    let got: BTreeMap<String, u64> = pages.into_iter().flat_map(|(page, _)| page).collect();
    assert_eq!(got, newest);
}

#[test]
fn a_read_started_before_connecting_goes_out_as_the_connection_opens() {
    let mut client = Client::new(client_config(21), 0);
    client.read_latest(0, "orders", Some(vec!["order-1".into()])).unwrap();
    client.handle_timeout(0);
    client.handle_input(0, ClientInput::Connected);
    let frames = sent(&drain(&mut client));
    assert!(frames.iter().any(|f| f["op"] == "latest" && f["since"] == 0 && f["keys"] == json!(["order-1"])), "{frames:?}");
}
