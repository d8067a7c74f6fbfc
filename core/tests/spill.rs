//! Groups' in-flight state past `group_state_bytes_max`: chunks of it go to the spill file
//! and come back when an ack, an ack deadline or a member leaving needs them, with every
//! message delivered, acked, redelivered and ordered as if they had stayed in memory.

use ferry_core::testkit::Harness;
use ferry_core::{Config, ConnId};
use serde_json::{json, Value};
use std::collections::BTreeMap;

mod common;

use common::*;

const T: ConnId = ConnId(3);

/// A budget of one byte and chunks of 8: everything that can go, goes.
fn spilling() -> Config {
    Config { group_state_bytes_max: 1, group_state_chunk_entries: 8, ack_timeout_ms: 1_000, ..Config::default() }
}

fn spilled_bytes(h: &Harness) -> u64 {
    h.node.memory().group_state_spilled_bytes
}

/// 40 messages, three of key "a" (each waits for the one before it), the rest keyless,
/// delivered to S with a window for all: returns them by id with their `prev`.
fn deliver_and_spill(h: &mut Harness) -> BTreeMap<u64, Value> {
    subscribe(h, S, "t", "g", json!({"window": 100}));
    for n in 0..40 {
        publish(h, "t", [0, 17, 34].contains(&n).then_some("a"), json!(n));
    }
    let first: BTreeMap<u64, Value> = msgs(h, S).into_iter().map(|m| (m["id"].as_u64().unwrap(), m)).collect();
    assert_eq!(first.len(), 38, "the keyless ones and the first of 'a'");
    assert_eq!(spilled_bytes(h), 0);
    h.advance_ms(150);
    assert!(spilled_bytes(h) > 0, "nothing spilled past a budget of one byte");
    first
}

#[test]
fn acks_of_spilled_messages_settle_them_and_free_their_key_and_window() {
    let mut h = harness(spilling());
    let first = deliver_and_spill(&mut h);
    let mut seen: Vec<u64> = first.keys().copied().collect();
    let mut to_ack = seen.clone();
    // Acking brings the chunks back, which lets each next message of 'a' go.
    while !to_ack.is_empty() {
        ack(&mut h, S, "t", "g", &to_ack);
        to_ack = ids(&msgs(&mut h, S));
        seen.extend(&to_ack);
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=40).collect::<Vec<u64>>(), "every message once");
    assert_eq!(h.node.group_outstanding("t", "g"), Some(0));
    assert_eq!(h.node.in_flight_to(S, "t", "g"), Some(0));
    assert_eq!(spilled_bytes(&h), 0, "every slot freed");
}

#[test]
fn spilled_messages_are_redelivered_at_their_ack_deadline_with_the_same_prev() {
    let mut h = harness(spilling());
    let first = deliver_and_spill(&mut h);
    h.advance_ms(1_000);
    let again: BTreeMap<u64, Value> = msgs(&mut h, S).into_iter().map(|m| (m["id"].as_u64().unwrap(), m)).collect();
    assert_eq!(again.keys().collect::<Vec<_>>(), first.keys().collect::<Vec<_>>(), "every one came again");
    for (id, m) in &again {
        assert_eq!(m["prev"], first[id]["prev"], "prev of {id}");
        assert_eq!(m["attempt"], json!(2), "attempt of {id}");
    }
}

#[test]
fn what_was_in_flight_to_a_member_that_left_goes_to_another_once_back() {
    let mut h = harness(spilling());
    let first = deliver_and_spill(&mut h);
    h.disconnect(S);
    h.connect(T);
    subscribe(&mut h, T, "t", "g", json!({"window": 100}));
    let to_t = ids(&msgs(&mut h, T));
    assert_eq!(to_t, first.keys().copied().collect::<Vec<u64>>(), "the new member gets all of it, in id order");
}

/// The group's queue of ack deadlines is pruned of entries no longer in flight as it grows:
/// a spilled message's deadline must stay in it (its entry is not in memory to ask).
#[test]
fn spilled_deadlines_outlive_the_pruning_of_the_deadline_queue() {
    let mut h = harness(spilling());
    let first = deliver_and_spill(&mut h);
    for n in 0..200 {
        let id = publish(&mut h, "t", None, json!(n));
        assert_eq!(ids(&msgs(&mut h, S)), vec![id]);
        ack(&mut h, S, "t", "g", &[id]);
    }
    h.advance_ms(1_000);
    let again = ids(&msgs(&mut h, S));
    assert_eq!(again, first.keys().copied().collect::<Vec<u64>>(), "every spilled one came again at its deadline");
}

/// A key's messages wait for the one before it to be acked: chunks of waiting messages are
/// spilled too, and each is ready in its turn once its chunk is back.
#[test]
fn messages_waiting_for_their_key_are_spilled_and_delivered_in_their_turn() {
    let mut h = harness(spilling());
    subscribe(&mut h, S, "t", "g", json!({"window": 100}));
    let published: Vec<u64> = (0..40).map(|n| publish(&mut h, "t", Some("a"), json!(n))).collect();
    let mut handed = ids(&msgs(&mut h, S));
    assert_eq!(handed, vec![published[0]], "one at a time");
    h.advance_ms(150);
    assert!(spilled_bytes(&h) > 0, "the waiting ones were not spilled");
    while handed.len() < published.len() {
        ack(&mut h, S, "t", "g", &[*handed.last().unwrap()]);
        let next = ids(&msgs(&mut h, S));
        assert_eq!(next.len(), 1, "after {handed:?}");
        handed.extend(next);
        h.advance_ms(150);
    }
    assert_eq!(handed, published, "in key order");
    ack(&mut h, S, "t", "g", &[*handed.last().unwrap()]);
    assert_eq!(h.node.group_outstanding("t", "g"), Some(0));
    assert_eq!(spilled_bytes(&h), 0, "every slot freed");
}

/// A reset while a spilled chunk is being read for an expiry: the read finds nothing to bring
/// back, and the group's expiries must still go on (its timer was waiting for that read).
#[test]
fn a_reset_during_a_spill_read_leaves_the_group_s_expiries_going() {
    let mut h = harness(spilling());
    deliver_and_spill(&mut h);
    h.hold_reads = true;
    h.advance_ms(1_000);
    assert!(msgs(&mut h, S).is_empty(), "the expiry waits for the chunk");
    let reset = ferry_core::node::admin::AdminAction::ResetGroup { topic: "t".into(), group: "g".into(), to: ferry_core::protocol::StartFrom::Latest };
    h.node.admin(h.now_ns, &reset).unwrap();
    h.drain();
    h.hold_reads = false;
    h.complete_writes();
    let late = publish(&mut h, "t", None, json!("after the reset"));
    assert_eq!(ids(&msgs(&mut h, S)), vec![late]);
    h.advance_ms(1_500);
    assert_eq!(ids(&msgs(&mut h, S)), vec![late], "redelivered at its ack deadline");
}

/// A key's message is settled inside a pump (here a dead letter dropped: no room for the
/// `.dlq` topic): the next of its key, spilled while waiting, is brought back for its turn
/// then, not at the next unrelated event.
#[test]
fn a_key_s_next_message_spilled_comes_when_a_pump_settles_the_one_before() {
    let mut h = harness(Config { max_attempts: 1, topics_max: 1, ..spilling() });
    subscribe(&mut h, S, "t", "g", json!({"window": 100}));
    let published: Vec<u64> = (0..16).map(|n| publish(&mut h, "t", (n >= 7).then_some("a"), json!(n))).collect();
    let first = ids(&msgs(&mut h, S));
    assert_eq!(first, published[..8].to_vec(), "the keyless ones and the first of 'a'");
    h.advance_ms(150);
    assert!(spilled_bytes(&h) > 0);
    ack(&mut h, S, "t", "g", &first[..7]);
    // The first of 'a' times out on its only attempt and is dropped: the next of 'a' is due.
    h.advance_ms(1_000);
    assert_eq!(ids(&msgs(&mut h, S)), vec![published[8]]);
}

/// The group's position record keeps the acked ids of spilled chunks (acked before they were
/// spilled, or noted while they are out): a restart does not deliver them again.
#[test]
fn acks_in_spilled_chunks_are_kept_in_the_position_across_a_restart() {
    let mut h = harness(spilling());
    subscribe(&mut h, S, "t", "g", json!({"window": 100}));
    let published: Vec<u64> = (0..16).map(|n| publish(&mut h, "t", None, json!(n))).collect();
    assert_eq!(ids(&msgs(&mut h, S)), published);
    let acked: Vec<u64> = published.iter().copied().filter(|id| *id != published[0] && *id != published[8]).collect();
    ack(&mut h, S, "t", "g", &acked);
    h.advance_ms(150);
    assert!(spilled_bytes(&h) > 0);
    // An ack noted while its chunk is out (the read is held): the record is written meanwhile.
    h.hold_reads = true;
    ack(&mut h, S, "t", "g", &[published[8]]);
    h.advance_ms(50);
    h.hold_reads = false;
    h.restart(false);
    h.connect(S);
    subscribe(&mut h, S, "t", "g", json!({"window": 100}));
    assert_eq!(ids(&msgs(&mut h, S)), vec![published[0]], "only the unacked one comes again");
}
