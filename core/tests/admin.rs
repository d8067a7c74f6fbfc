//! An operator's actions on a single node: reset a group, drop a group, redrive dead letters,
//! disconnect a client; each survives a restart where it changes what is stored.

mod common;

use common::*;
use ferry_core::node::admin::{AdminAction, AdminRefusal};
use ferry_core::protocol::StartFrom;
use ferry_core::{Config, ConnId};
use serde_json::json;

fn act(h: &mut ferry_core::testkit::Harness, action: AdminAction) -> Result<String, AdminRefusal> {
    let result = h.node.admin(h.now_ns, &action);
    h.drain();
    result
}

fn reset(topic: &str, group: &str, to: StartFrom) -> AdminAction {
    AdminAction::ResetGroup { topic: topic.into(), group: group.into(), to }
}

#[test]
fn a_reset_group_starts_again_where_told_and_keeps_it_across_a_restart() {
    let mut h = harness(Config::default());
    for n in 1..=3 {
        publish(&mut h, "t", None, json!(n));
    }
    subscribe(&mut h, S, "t", "g", json!({"window": 2}));
    let first = msgs(&mut h, S);
    assert_eq!(ids(&first), vec![1, 2]);
    ack(&mut h, S, "t", "g", &[1, 2]);
    assert_eq!(ids(&msgs(&mut h, S)), vec![3], "3 in flight, unacked");
    // Back to the start: the unacked 3 is let go of (its window slot freed) and 1 comes again.
    act(&mut h, reset("t", "g", StartFrom::Earliest)).unwrap();
    let again = msgs(&mut h, S);
    assert_eq!(ids(&again), vec![1, 2], "the window holds two again: 3's slot was freed");
    assert_eq!(again[0]["prev"], json!(0), "the chain starts again");
    ack(&mut h, S, "t", "g", &[1]);
    h.advance_ms(Config::default().ack_persist_interval_ms + 1);
    h.restart(false);
    h.connect(P);
    h.connect(S);
    subscribe(&mut h, S, "t", "g", json!({"window": 10}));
    assert_eq!(ids(&msgs(&mut h, S)), vec![2, 3], "the reset position was stored");
    // To the end: nothing of the backlog is delivered, the next message is.
    act(&mut h, reset("t", "g", StartFrom::Latest)).unwrap();
    assert_eq!(h.node.topics_view()[0].groups[0].backlog, 0);
    publish(&mut h, "t", None, json!(4));
    assert_eq!(ids(&msgs(&mut h, S)), vec![4]);
    assert!(matches!(act(&mut h, reset("t", "nope", StartFrom::Latest)), Err(AdminRefusal::NotFound(_))));
    h.node.check_invariants();
}

#[test]
fn a_dropped_group_tells_its_members_and_stays_gone_after_a_restart() {
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    subscribe(&mut h, S, "t", "g", json!({}));
    assert_eq!(msgs(&mut h, S).len(), 1);
    act(&mut h, AdminAction::DropGroup { topic: "t".into(), group: "g".into() }).unwrap();
    let told = h.take_op(S, "error");
    assert_eq!(told[0]["code"], json!("not_subscribed"), "{told:?}");
    assert!(h.node.topics_view()[0].groups.is_empty());
    publish(&mut h, "t", None, json!(2));
    assert!(msgs(&mut h, S).is_empty(), "no longer a member");
    h.node.check_invariants();
    h.restart(false);
    assert!(h.node.topics_view()[0].groups.is_empty(), "the drop was stored");
    // The name is free: a new group of it starts where its first `sub` says.
    h.connect(P);
    h.connect(S);
    subscribe(&mut h, S, "t", "g", json!({"from": "latest"}));
    publish(&mut h, "t", None, json!(3));
    assert_eq!(ids(&msgs(&mut h, S)), vec![3]);
}

#[test]
fn a_redrive_copies_dead_letters_back_once() {
    let mut h = harness(Config { max_attempts: 1, ..Config::default() });
    for n in 1..=3 {
        publish(&mut h, "t", Some("k"), json!(n));
    }
    subscribe(&mut h, S, "t", "g", json!({"window": 10}));
    assert_eq!(msgs(&mut h, S).len(), 1, "one at a time: one key");
    for _ in 0..3 {
        h.advance_ms(Config::default().ack_timeout_ms + 1);
        msgs(&mut h, S);
    }
    assert_eq!(h.node.stats().dead_lettered, 3);
    assert!(matches!(act(&mut h, AdminAction::Redrive { topic: "other".into() }), Err(AdminRefusal::NotFound(_))));
    let done = act(&mut h, AdminAction::Redrive { topic: "t".into() }).unwrap();
    assert!(done.contains("redriving 3"), "{done}");
    let copies = msgs(&mut h, S);
    assert_eq!(copies.iter().map(|m| m["body"].clone()).collect::<Vec<_>>(), vec![json!(1)], "copies arrive in order, one key at a time");
    assert_eq!(h.node.topic_next_id("t"), Some(7), "three copies stored");
    let dlq = h.node.topics_view().into_iter().find(|t| t.name == "t.dlq").unwrap();
    assert_eq!((dlq.groups[0].name.as_str(), dlq.groups[0].backlog), ("ferry-redrive", 0));
    // Again: nothing left to copy; after a restart, still nothing (the position was stored).
    assert!(act(&mut h, AdminAction::Redrive { topic: "t".into() }).unwrap().contains("redriving 0"));
    h.advance_ms(Config::default().ack_persist_interval_ms + 1);
    h.restart(false);
    assert!(act(&mut h, AdminAction::Redrive { topic: "t".into() }).unwrap().contains("redriving 0"));
    assert_eq!(h.node.topic_next_id("t"), Some(7));
    h.node.check_invariants();
}

#[test]
fn an_operator_disconnects_a_client() {
    let mut h = harness(Config::default());
    subscribe(&mut h, S, "t", "g", json!({}));
    act(&mut h, AdminAction::Disconnect { conn: S }).unwrap();
    assert!(h.closed.iter().any(|(conn, code)| *conn == S && *code == 1008), "{:?}", h.closed);
    assert_eq!(h.node.topics_view()[0].groups[0].members, 0);
    assert!(matches!(act(&mut h, AdminAction::Disconnect { conn: ConnId(77) }), Err(AdminRefusal::NotFound(_))));
}

#[test]
fn a_drop_whose_write_fails_is_written_again() {
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    subscribe(&mut h, S, "t", "g", json!({}));
    h.advance_ms(Config::default().ack_persist_interval_ms + 1);
    h.fail_next_write = Some(ferry_core::DiskError::Io("injected".into()));
    act(&mut h, AdminAction::DropGroup { topic: "t".into(), group: "g".into() }).unwrap();
    h.advance_ms(Config::default().ack_persist_interval_ms + 1);
    assert!(h.fail_next_write.is_none(), "the drop's write failed");
    h.restart(false);
    assert!(h.node.topics_view()[0].groups.is_empty(), "the drop was written again after its write failed");
}

/// Config with a consumer that never succeeds (one attempt) and a redrive group whose own
/// ack timeout is `redrive_ack_timeout_ms`.
fn failing_consumer(redrive_ack_timeout_ms: u64) -> Config {
    let redrive = ferry_core::config::GroupOverrides { ack_timeout_ms: Some(redrive_ack_timeout_ms), max_attempts: None };
    Config { max_attempts: 1, ack_timeout_ms: 100, groups: [("ferry-redrive".to_string(), redrive)].into_iter().collect(), ..Config::default() }
}

#[test]
fn dead_letters_that_arrive_during_a_redrive_wait_for_the_next_one() {
    // Without this bound, copies that fail again would come back as new dead letters while
    // the redrive runs and be copied again, round and round.
    let mut h = harness(failing_consumer(30_000));
    publish(&mut h, "t", None, json!(1));
    subscribe(&mut h, S, "t", "g", json!({"window": 10}));
    h.advance_ms(150);
    assert_eq!(h.node.stats().dead_lettered, 1);
    msgs(&mut h, S);
    publish(&mut h, "t", None, json!(2));
    assert_eq!(msgs(&mut h, S).len(), 1, "message 2 is in flight and will fail too");
    // The redrive starts while the disk holds its copy; meanwhile message 2 fails.
    h.hold_writes = true;
    assert!(act(&mut h, AdminAction::Redrive { topic: "t".into() }).unwrap().contains("redriving 1"));
    h.advance_ms(150);
    h.hold_writes = false;
    h.complete_writes();
    h.advance_ms(10);
    assert_eq!(h.node.stats().dead_lettered, 2);
    assert_eq!(h.node.topic_next_id("t"), Some(4), "one copy: dead letter 2 arrived after the redrive began");
    assert!(act(&mut h, AdminAction::Redrive { topic: "t".into() }).unwrap().contains("redriving 1"));
    h.advance_ms(10);
    assert_eq!(h.node.topic_next_id("t"), Some(5));
}

#[test]
fn a_copy_still_on_its_way_to_disk_is_not_taken_for_done() {
    let mut h = harness(failing_consumer(100));
    publish(&mut h, "t", None, json!(1));
    subscribe(&mut h, S, "t", "g", json!({}));
    h.advance_ms(300);
    h.disconnect(S);
    assert_eq!(h.node.stats().dead_lettered, 1);
    // The copy's write is held past the redrive's ack timeout, then fails.
    h.hold_writes = true;
    act(&mut h, AdminAction::Redrive { topic: "t".into() }).unwrap();
    h.advance_ms(150);
    h.fail_next_write = Some(ferry_core::DiskError::Io("injected".into()));
    h.hold_writes = false;
    h.complete_writes();
    // The dead letter was not settled by the redelivery: it is copied again, and stored.
    h.advance_ms(500);
    assert_eq!(h.node.topic_next_id("t"), Some(3), "the copy is stored after all");
    let dlq = h.node.topics_view().into_iter().find(|t| t.name == "t.dlq").unwrap();
    assert_eq!(dlq.groups[0].backlog, 0);
}

#[test]
fn clients_may_not_use_the_redrives_group_or_producer() {
    let mut h = harness(Config::default());
    publish(&mut h, "t", None, json!(1));
    h.send_json(S, json!({"op": "sub", "req": "s", "topic": "t.dlq", "group": "ferry-redrive"}));
    h.send_json(S, json!({"op": "ack", "topic": "t.dlq", "group": "ferry-redrive", "ids": [1]}));
    h.send_json(P, json!({"op": "pub", "req": 7, "topic": "t", "body": 1, "producer": "ferry-redrive:t", "seq": 1}));
    let refused = h.take_op(S, "error");
    assert_eq!(refused.iter().map(|e| (e["code"].clone(), e["req"].clone())).collect::<Vec<_>>(), vec![(json!("forbidden"), json!("s")), (json!("forbidden"), json!(null))]);
    let refused = h.take_op(P, "error");
    assert_eq!((refused[0]["code"].clone(), refused[0]["req"].clone()), (json!("forbidden"), json!(7)), "{refused:?}");
    assert_eq!(h.node.topic_next_id("t"), Some(2), "the publish was not stored");
}

#[test]
fn an_operator_pauses_deliveries_and_refuses_publishes_until_switched_back() {
    let mut h = harness(Config::default());
    subscribe(&mut h, S, "t", "g", json!({}));
    act(&mut h, AdminAction::PauseDeliveries { topic: "t".into(), group: Some("g".into()), paused: true }).unwrap();
    publish(&mut h, "t", None, json!(1));
    assert!(msgs(&mut h, S).is_empty(), "paused: stored, not delivered");
    assert!(h.node.topics_view()[0].groups[0].paused);
    act(&mut h, AdminAction::PauseDeliveries { topic: "t".into(), group: None, paused: false }).unwrap();
    assert_eq!(msgs(&mut h, S).len(), 1, "resumed: delivered at once");
    act(&mut h, AdminAction::RefusePublishes { topic: "t".into(), refused: true }).unwrap();
    h.send_json(P, json!({"op": "pub", "req": 5, "topic": "t", "body": 2}));
    let refused = h.take_op(P, "error");
    assert_eq!((refused[0]["code"].clone(), refused[0]["req"].clone()), (json!("unavailable"), json!(5)), "{refused:?}");
    assert!(h.node.topics_view()[0].publishes_refused);
    act(&mut h, AdminAction::RefusePublishes { topic: "t".into(), refused: false }).unwrap();
    publish(&mut h, "t", None, json!(3));
    assert!(matches!(act(&mut h, AdminAction::RefusePublishes { topic: "nope".into(), refused: true }), Err(AdminRefusal::NotFound(_))));
}
