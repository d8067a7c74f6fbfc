//! Flow control in the core: congested connections get no messages while the other members of
//! their groups do, and windows count bytes as well as messages.

use ferry_core::testkit::Harness;
use ferry_core::{Config, Input};
use serde_json::json;

mod common;

use common::*;
use ferry_core::ConnId;

/// A second subscriber connection.
const T: ConnId = ConnId(3);

fn congest(h: &mut Harness, conn: ConnId, congested: bool) {
    h.node.handle_input(h.now_ns, Input::Congested { conn, congested });
    h.drain();
}

#[test]
fn a_congested_member_gets_nothing_while_the_others_do_and_resumes_when_it_drains() {
    let mut h = harness(Config::default());
    h.connect(T);
    subscribe(&mut h, S, "t", "g", json!({"window": 4}));
    subscribe(&mut h, T, "t", "g", json!({"window": 4}));
    congest(&mut h, S, true);
    let published: Vec<u64> = (0..6).map(|n| publish(&mut h, "t", None, json!(n))).collect();
    assert!(msgs(&mut h, S).is_empty(), "a congested connection was pushed a message");
    let to_t = ids(&msgs(&mut h, T));
    assert_eq!(to_t, published[..4].to_vec(), "the other member receives up to its window");
    // Repeating the state changes nothing.
    congest(&mut h, S, true);
    assert!(msgs(&mut h, S).is_empty());

    congest(&mut h, S, false);
    assert_eq!(ids(&msgs(&mut h, S)), published[4..].to_vec(), "its group pushes again once it drains");

    // Congestion holds back new messages only: what is in flight stays in flight, and acks
    // from a congested connection count.
    congest(&mut h, S, true);
    ack(&mut h, S, "t", "g", &published[4..]);
    assert_eq!(h.node.in_flight_to(S, "t", "g"), Some(0));
    let late = publish(&mut h, "t", None, json!("late"));
    assert!(msgs(&mut h, S).is_empty());
    ack(&mut h, T, "t", "g", &to_t);
    assert_eq!(ids(&msgs(&mut h, T)), vec![late]);
    assert_eq!(h.node.group_outstanding("t", "g"), Some(1));
}

#[test]
fn a_congested_sole_member_holds_its_group_until_it_drains_or_leaves() {
    let mut h = harness(Config::default());
    subscribe(&mut h, S, "t", "g", json!({}));
    congest(&mut h, S, true);
    let id = publish(&mut h, "t", None, json!(1));
    assert!(msgs(&mut h, S).is_empty());
    // A new member takes it while the congested one waits.
    h.connect(T);
    subscribe(&mut h, T, "t", "g", json!({}));
    assert_eq!(ids(&msgs(&mut h, T)), vec![id]);
    // Congestion of an unknown or closed connection is ignored.
    congest(&mut h, ConnId(99), true);
    h.disconnect(S);
    congest(&mut h, S, false);
    assert!(msgs(&mut h, S).is_empty());
}

#[test]
fn a_pull_on_a_congested_connection_waits_and_ends_at_its_deadline() {
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    h.send_json(S, json!({"op": "pull", "req": 1, "topic": "t", "group": "g", "max": 5, "wait_ms": 100}));
    congest(&mut h, S, true);
    let id = publish(&mut h, "t", None, json!(2));
    assert!(msgs(&mut h, S).is_empty());
    h.advance_ms(100);
    assert_eq!(h.take_op(S, "pulled")[0]["count"], 0);
    congest(&mut h, S, false);
    assert!(msgs(&mut h, S).is_empty(), "a finished pull takes nothing more");
    h.send_json(S, json!({"op": "pull", "req": 2, "topic": "t", "group": "g", "max": 5, "wait_ms": 100}));
    assert_eq!(ids(&msgs(&mut h, S)), vec![id]);
}

#[test]
fn windows_count_bytes_and_one_message_always_fits() {
    let config = Config { window_bytes_max: 1_000, ..Config::default() };
    let mut h = harness(config);
    // Bodies of 402 bytes (a JSON string of 400 characters): two are below the byte window,
    // the third takes it past, and no fourth goes until an ack.
    let body = json!("b".repeat(400));
    let published: Vec<u64> = (0..6).map(|_| publish(&mut h, "t", None, body.clone())).collect();
    subscribe(&mut h, S, "t", "g", json!({"window": 64}));
    let first = ids(&msgs(&mut h, S));
    assert_eq!(first, published[..3].to_vec());
    ack(&mut h, S, "t", "g", &first[..1]);
    assert_eq!(ids(&msgs(&mut h, S)), published[3..4].to_vec(), "an ack frees the bytes of one message");
    // A nack and an expiry free their bytes as well (the harness checks the counts).
    h.send_json(S, json!({"op": "nack", "topic": "t", "group": "g", "ids": [first[1]], "delay_ms": 10_000}));
    assert_eq!(ids(&msgs(&mut h, S)), published[4..5].to_vec());
    ack(&mut h, S, "t", "g", &[first[2], published[3], published[4]]);
    assert_eq!(ids(&msgs(&mut h, S)), published[5..].to_vec());

    // A message larger than the whole byte window still flows, one at a time.
    let huge = json!("h".repeat(3_000));
    let big: Vec<u64> = (0..2).map(|_| publish(&mut h, "u", None, huge.clone())).collect();
    subscribe(&mut h, S, "u", "g", json!({}));
    assert_eq!(ids(&msgs(&mut h, S)), vec![big[0]]);
    ack(&mut h, S, "u", "g", &big[..1]);
    assert_eq!(ids(&msgs(&mut h, S)), vec![big[1]]);
    // A disconnect frees them too: the next member gets the message.
    h.connect(T);
    subscribe(&mut h, T, "u", "g", json!({}));
    h.disconnect(S);
    assert_eq!(ids(&msgs(&mut h, T)), vec![big[1]]);
}

#[test]
fn a_pull_is_bounded_by_the_byte_window_too() {
    let config = Config { window_bytes_max: 1_000, ack_timeout_ms: 50, ..Config::default() };
    let mut h = harness(config);
    let body = json!("p".repeat(600));
    let published: Vec<u64> = (0..4).map(|_| publish(&mut h, "t", None, body.clone())).collect();
    h.send_json(S, json!({"op": "pull", "req": 1, "topic": "t", "group": "g", "max": 4, "wait_ms": 1_000}));
    // The pull created its group at "latest": publish after it.
    assert!(msgs(&mut h, S).is_empty());
    let fresh: Vec<u64> = (0..4).map(|_| publish(&mut h, "t", None, body.clone())).collect();
    assert!(fresh[0] > published[3]);
    assert_eq!(ids(&msgs(&mut h, S)), fresh[..2].to_vec(), "the pull stops at the byte window");
    // Expired deadlines free the bytes; the pull takes the next ones (redeliveries first).
    h.advance_ms(50);
    assert_eq!(ids(&msgs(&mut h, S)), fresh[..2].to_vec());
    assert_eq!(h.take_op(S, "pulled")[0]["count"], 4);
}

/// A message for more groups than one turn pumps reaches the first ones at once and the rest
/// in the next turns, due at once, so the node takes other input in between (in a cluster:
/// raft's heartbeats) instead of holding its loop for the whole fan-out.
#[test]
fn a_message_for_more_groups_than_a_turn_takes_goes_out_over_several_turns() {
    let members = 40u64;
    let mut h = harness(Config { fan_out_groups_per_turn: 16, ..Config::default() });
    let conns: Vec<ConnId> = (0..members).map(|i| ConnId(100 + i)).collect();
    for (i, conn) in conns.iter().enumerate() {
        h.connect(*conn);
        subscribe(&mut h, *conn, "t", &format!("g{i}"), json!({}));
    }
    let mut got: Vec<Vec<u64>> = vec![Vec::new(); conns.len()];
    let mut take_all = |h: &mut Harness| {
        for (at, conn) in conns.iter().enumerate() {
            got[at].extend(ids(&msgs(h, *conn)));
        }
        got.iter().filter(|ids| !ids.is_empty()).count()
    };
    let first = publish(&mut h, "t", None, json!("fan-out"));
    let at_once = take_all(&mut h);
    assert_eq!(at_once, 16, "of {members} groups, the first turn's had it at once");
    let due = h.node.poll_timeout().expect("the other groups are due");
    assert!(due <= h.now_ns + 1_000, "the other groups are due at once, not {} ns later", due - h.now_ns);
    // The next turn takes the next 16, not the rest: a timer set while timers run waits for
    // the next turn.
    h.now_ns = due;
    h.node.handle_timeout(h.now_ns);
    h.drain();
    assert_eq!(take_all(&mut h), 32, "one more turn's worth");
    // Between turns the node serves other input.
    let second = publish(&mut h, "t", None, json!("next"));
    h.advance_ms(1);
    take_all(&mut h);
    for (at, ids) in got.iter().enumerate() {
        assert_eq!(ids, &vec![first, second], "group g{at}");
    }
}
