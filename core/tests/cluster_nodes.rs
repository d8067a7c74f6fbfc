//! Three nodes in cluster mode on a test network: one leads the shard, publishes commit on a
//! majority, followers apply the same entries (same ids), and when the leader dies another
//! takes over with every acknowledged message and the groups' replicated positions. Clients
//! of any node are served: a follower forwards their frames to the leader.

use ferry_core::cluster::mesh::{self, PeerFrame};
use ferry_core::testkit::Harness;
use ferry_core::{Config, ConnId, Input};
use serde_json::{json, Value};
use std::collections::BTreeSet;

mod common;

use common::*;

const PEERS: &str = "1@127.0.0.1:7811,2@127.0.0.1:7812,3@127.0.0.1:7813";
const STEP_MS: u64 = 5;

struct Cluster {
    nodes: Vec<Harness>,
    /// Nodes that are down: they neither run nor get frames.
    down: BTreeSet<usize>,
    /// Every frame carried between nodes: (from node, to node, frame).
    carried: Vec<(u64, u64, PeerFrame)>,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::with(Config::default())
    }

    fn with(base: Config) -> Cluster {
        let nodes = (1..=3)
            .map(|id| {
                let config = Config {
                    node_id: id,
                    peers: PEERS.into(),
                    peer_listen: format!("127.0.0.1:781{id}"),
                    advertise_url: format!("ws://127.0.0.1:770{id}/ws"),
                    rng_seed: id,
                    ..base.clone()
                };
                let mut h = Harness::new(config);
                h.connect(P);
                h.connect(S);
                h
            })
            .collect();
        Cluster { nodes, down: BTreeSet::new(), carried: Vec::new() }
    }

    /// Runs every live node for `ms`, carrying their frames to each other at once.
    fn run_ms(&mut self, ms: u64) {
        for _ in 0..ms / STEP_MS {
            for (at, h) in self.nodes.iter_mut().enumerate() {
                if !self.down.contains(&at) {
                    h.advance_ms(STEP_MS);
                }
            }
            self.deliver();
        }
    }

    fn deliver(&mut self) {
        loop {
            let mut frames = Vec::new();
            for (at, h) in self.nodes.iter_mut().enumerate() {
                for (to, payload) in std::mem::take(&mut h.peer_out) {
                    frames.push((at as u64 + 1, to, payload));
                }
            }
            if frames.is_empty() {
                return;
            }
            for (from, to, payload) in frames {
                let (from_at, to_at) = (from as usize - 1, to as usize - 1);
                if self.down.contains(&from_at) || self.down.contains(&to_at) {
                    continue;
                }
                self.carried.push((from, to, mesh::decode(&payload).expect("nodes send frames that decode").1));
                let h = &mut self.nodes[to_at];
                h.node.handle_input(h.now_ns, Input::PeerMessage { from_node: from, payload: &payload });
                h.drain();
            }
        }
    }

    /// The link between two nodes breaks (both hear of it; frames in flight on it are lost,
    /// which `deliver` models by carrying everything at once).
    fn link_down(&mut self, a: usize, b: usize) {
        for (at, other) in [(a, b), (b, a)] {
            let h = &mut self.nodes[at];
            h.node.handle_input(h.now_ns, Input::PeerDown { node: other as u64 + 1 });
            h.drain();
        }
        self.deliver();
    }

    /// The node that leads, once exactly one live node says it does.
    fn leader(&mut self) -> usize {
        for _ in 0..200 {
            let leaders: Vec<usize> = (0..3).filter(|at| !self.down.contains(at) && self.nodes[*at].node.leads_shard_of("t")).collect();
            if let [leader] = leaders[..] {
                return leader;
            }
            self.run_ms(50);
        }
        panic!("no single leader within 10 s");
    }

    /// Subscribes connection S of node `at` to group g of t (from the earliest message).
    fn subscribe(&mut self, at: usize) {
        self.nodes[at].send_json(S, json!({"op": "sub", "req": "s", "topic": "t", "group": "g", "from": "earliest"}));
        self.run_ms(50);
        assert_eq!(self.nodes[at].take_op(S, "suback").len(), 1, "node {} admits the member", at + 1);
    }

    /// A member subscribed on the leader, `count` messages published there and delivered to
    /// it: (the leader, the ids delivered).
    fn leader_with_delivered(&mut self, count: u64) -> (usize, Vec<u64>) {
        let leader = self.leader();
        self.subscribe(leader);
        for n in 1..=count {
            self.publish(leader, json!(n));
        }
        (leader, ids(&msgs(&mut self.nodes[leader], S)))
    }

    /// Publishes through node `at`; the frames it answered.
    fn publish(&mut self, at: usize, body: Value) -> Value {
        self.nodes[at].send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "body": body}));
        self.run_ms(50);
        let mut answers = self.nodes[at].take(P);
        answers.pop_front().expect("an answer to the publish")
    }
}

#[test]
fn a_publish_commits_on_a_majority_and_every_node_gives_it_the_same_id() {
    let mut c = Cluster::new();
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    let forwarded = c.publish(follower, json!("to a follower"));
    assert_eq!((forwarded["op"].clone(), forwarded["id"].clone()), (json!("puback"), json!(1)), "a follower forwards to the leader: {forwarded}");
    for n in 2..=3 {
        assert_eq!(c.publish(leader, json!(n))["id"], json!(n));
    }
    for h in &c.nodes {
        assert_eq!(h.node.topic_next_id("t"), Some(4), "every replica applied the three publishes");
    }
    // With one follower down the other makes a majority; with both down nothing commits.
    c.down.insert(follower);
    assert_eq!(c.publish(leader, json!(4))["id"], json!(4));
    c.down.insert((leader + 2) % 3);
    c.nodes[leader].send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "body": 5}));
    c.run_ms(500);
    assert!(c.nodes[leader].take_op(P, "puback").is_empty(), "a puback without a majority");
}

#[test]
fn when_the_leader_dies_another_takes_over_with_every_acknowledged_message_and_the_positions() {
    let mut c = Cluster::new();
    let (first, delivered) = c.leader_with_delivered(5);
    assert_eq!(delivered, vec![1, 2, 3, 4, 5]);
    ack(&mut c.nodes[first], S, "t", "g", &[1, 2]);
    // The acks reach the followers as a position entry.
    c.run_ms(100);
    c.down.insert(first);
    let second = c.leader();
    assert_ne!(second, first);
    c.subscribe(second);
    assert_eq!(ids(&msgs(&mut c.nodes[second], S)), vec![3, 4, 5], "the unacked ones, not the acked ones");
    assert_eq!(c.publish(second, json!(6))["id"], json!(6), "ids go on");

    // The old leader comes back as a follower and catches up.
    c.down.remove(&first);
    c.run_ms(1_000);
    assert_eq!(c.leader(), second);
    assert_eq!(c.nodes[first].node.topic_next_id("t"), Some(7));
}

#[test]
fn a_leader_cut_off_tells_its_waiting_publishers_to_retry_and_closes_its_members() {
    let mut c = Cluster::new();
    let first = c.leader();
    c.subscribe(first);
    let others: BTreeSet<usize> = (0..3).filter(|at| *at != first).collect();
    // The leader alone on one side: the others elect a new one, which it learns of when the
    // partition heals.
    for at in &others {
        c.down.insert(*at);
    }
    c.nodes[first].send_json(P, json!({"op": "pub", "req": "lost?", "topic": "t", "body": "x"}));
    c.run_ms(20);
    let others_ran: Vec<usize> = others.iter().copied().collect();
    c.down.clear();
    c.down.insert(first);
    let second = c.leader();
    assert!(others_ran.contains(&second));
    c.down.clear();
    c.run_ms(1_000);
    let answer = c.nodes[first].take_op(P, "error");
    assert_eq!(answer.len(), 1, "the waiting publish is answered");
    assert_eq!(answer[0]["code"], json!("unavailable"));
    assert!(c.nodes[first].closed.contains(&(S, 1013)), "its member is closed: {:?}", c.nodes[first].closed);
}

/// A third connection, on any node.
const T: ConnId = ConnId(3);

#[test]
fn a_member_on_a_follower_gets_messages_from_publishes_on_another_and_its_acks_count() {
    let mut c = Cluster::new();
    let leader = c.leader();
    let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);
    c.subscribe(f1);
    for n in 1..=3 {
        assert_eq!(c.publish(f2, json!(n))["op"], json!("puback"));
    }
    let delivered = msgs(&mut c.nodes[f1], S);
    assert_eq!(ids(&delivered), vec![1, 2, 3], "pushed to the member on a follower");
    ack(&mut c.nodes[f1], S, "t", "g", &[1, 2, 3]);
    c.run_ms(100);
    // A second member, at the leader: the acked messages never come to it, not even after
    // the first member leaves.
    c.nodes[leader].connect(T);
    c.nodes[leader].send_json(T, json!({"op": "sub", "req": "s", "topic": "t", "group": "g"}));
    c.run_ms(50);
    c.nodes[f1].disconnect(S);
    c.run_ms(200);
    assert_eq!(c.publish(f2, json!(4))["id"], json!(4));
    assert_eq!(ids(&msgs(&mut c.nodes[leader], T)), vec![4], "acked through a follower, so settled");
}

/// Frames the leader sent `to` (a node id) since the test began, as (deliveries by
/// reference, `msg` frames in full).
fn deliveries_sent(c: &Cluster, leader: usize, to: usize) -> (usize, usize) {
    let (from, to) = (leader as u64 + 1, to as u64 + 1);
    let frames = c.carried.iter().filter(|(f, t, _)| (*f, *t) == (from, to)).map(|(_, _, frame)| frame);
    frames.fold((0, 0), |(refs, full), frame| match frame {
        PeerFrame::Deliver(_) => (refs + 1, full),
        PeerFrame::ToClient { text, .. } if text.contains(r#""op":"msg""#) => (refs, full + 1),
        _ => (refs, full),
    })
}

#[test]
fn a_member_on_a_follower_gets_bodies_from_its_own_replica_not_over_the_mesh() {
    // A cache of one message: most bodies are read back from the follower's own disk.
    let mut c = Cluster::with(Config { topic_cache_bytes: 1, cache_bytes_total: 1, ..Config::default() });
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    c.subscribe(follower);
    for n in 1..=5 {
        assert_eq!(c.publish(leader, json!({"n": n}))["op"], json!("puback"));
    }
    let delivered = msgs(&mut c.nodes[follower], S);
    assert_eq!(ids(&delivered), vec![1, 2, 3, 4, 5]);
    let bodies: Vec<Value> = delivered.iter().map(|m| m["body"]["n"].clone()).collect();
    assert_eq!(bodies, (1..=5).map(|n| json!(n)).collect::<Vec<_>>());
    assert_eq!(deliveries_sent(&c, leader, follower), (5, 0), "each delivery crossed the mesh as a reference");
}

#[test]
fn a_member_s_node_without_the_message_gets_the_delivery_in_full_from_the_leader() {
    let config = Config { segment_bytes_max: 8_192, frame_bytes_max: 4_096, ..Config::default() };
    let mut c = Cluster::with(config);
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    for n in 1..=60 {
        assert_eq!(c.publish(leader, json!({"n": n, "pad": "x".repeat(200)}))["op"], json!("puback"));
    }
    // The follower keeps less than the leader (and caches nothing): its retention deletes
    // the oldest messages.
    let keeps_less = Config { retention_bytes: 8_192, topic_cache_bytes: 1, cache_bytes_total: 1, ..c.nodes[follower].config.clone() };
    c.nodes[follower].config = keeps_less;
    c.nodes[follower].restart(false);
    c.run_ms(2_000);
    c.nodes[follower].connect(S);
    c.subscribe(follower);
    c.run_ms(200);
    let mut delivered = msgs(&mut c.nodes[follower], S);
    // Those sent in full come a round trip later: messages without a key have no order.
    delivered.sort_by_key(|m| m["id"].as_u64());
    assert_eq!(ids(&delivered), (1..=60).collect::<Vec<u64>>(), "every message, from wherever it was held");
    assert!(delivered.iter().enumerate().all(|(at, m)| m["body"]["n"] == json!(at + 1)));
    let (refs, full) = deliveries_sent(&c, leader, follower);
    assert!(full > 0 && refs == 60, "the messages the follower lacked came in full ({full} of {refs})");
}

#[test]
fn a_broken_link_to_the_leader_ends_forwarded_sessions_and_their_messages_go_to_other_members() {
    let mut c = Cluster::new();
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    c.subscribe(follower);
    c.nodes[leader].connect(T);
    c.nodes[leader].send_json(T, json!({"op": "sub", "req": "s", "topic": "t", "group": "g", "window": 1}));
    c.run_ms(50);
    for n in 1..=4 {
        c.publish(leader, json!(n));
    }
    let on_follower = ids(&msgs(&mut c.nodes[follower], S));
    let at_leader = ids(&msgs(&mut c.nodes[leader], T));
    assert!(!on_follower.is_empty() && at_leader.len() == 1, "{on_follower:?} {at_leader:?}");
    c.link_down(leader, follower);
    assert!(c.nodes[follower].closed.contains(&(S, 1013)), "the follower closes the forwarded client: {:?}", c.nodes[follower].closed);
    // The leader let go of what was in flight to it at once (no ack timeout): once the member
    // at the leader acks what it holds, the rest comes to it.
    ack(&mut c.nodes[leader], T, "t", "g", &at_leader);
    c.run_ms(50);
    let mut redelivered = Vec::new();
    for _ in 0..4 {
        let got = ids(&msgs(&mut c.nodes[leader], T));
        ack(&mut c.nodes[leader], T, "t", "g", &got);
        redelivered.extend(got);
        c.run_ms(50);
    }
    assert_eq!(redelivered, on_follower, "what the lost member held goes to the other at once");
}

#[test]
fn a_forwarded_client_is_closed_when_another_node_becomes_leader() {
    let mut c = Cluster::new();
    let first = c.leader();
    let follower = (first + 1) % 3;
    c.subscribe(follower);
    c.down.insert(first);
    let second = c.leader();
    assert_ne!(second, first);
    assert!(c.nodes[follower].closed.contains(&(S, 1013)), "bound to the old leader, it must connect again: {:?}", c.nodes[follower].closed);
    // Connecting again at the same node works through the new leader (or at it).
    c.nodes[follower].connect(T);
    c.nodes[follower].send_json(T, json!({"op": "pub", "req": 1, "topic": "t", "body": "after"}));
    c.run_ms(50);
    assert_eq!(c.nodes[follower].take_op(T, "puback").len(), 1);
}

#[test]
fn a_follower_behind_the_entries_kept_in_memory_catches_up_from_the_leader_s_disk() {
    let mut c = Cluster::with(Config { raft_log_memory_bytes: 512, ..Config::default() });
    let leader = c.leader();
    let behind = (leader + 1) % 3;
    c.down.insert(behind);
    for n in 1..=40 {
        assert_eq!(c.publish(leader, json!({"n": n, "pad": "x".repeat(100)}))["id"], json!(n));
    }
    // A retention check trims the leader's memory to the budget: the entries the follower
    // lacks are on disk only.
    c.run_ms(1_100);
    assert!(c.nodes[leader].node.raft_memory_bytes() < 2_048, "{} bytes of entries in memory", c.nodes[leader].node.raft_memory_bytes());
    c.down.remove(&behind);
    c.run_ms(1_000);
    assert_eq!(c.nodes[behind].node.topic_next_id("t"), Some(41), "the follower applied every entry");
    // And it can lead with them: the old leader goes, the caught-up follower and the third
    // node go on with every message.
    c.down.insert(leader);
    let next = c.leader();
    assert_eq!(c.publish(next, json!("after"))["id"], json!(41));
}

#[test]
fn welcome_names_the_node_the_cluster_s_urls_the_leader_and_each_node_s_lag() {
    let mut c = Cluster::new();
    let leader = c.leader();
    for n in 1..=3 {
        c.publish(leader, json!(n));
    }
    // Nodes tell each other about themselves every second.
    c.run_ms(1_100);
    let follower = (leader + 1) % 3;
    let welcome = c.nodes[follower].connect(T);
    assert_eq!(welcome["node"], json!(follower + 1));
    assert_eq!(welcome["nodes"], json!(["ws://127.0.0.1:7701/ws", "ws://127.0.0.1:7702/ws", "ws://127.0.0.1:7703/ws"]));
    let cluster = &welcome["cluster"];
    assert_eq!(cluster["leader"], json!(leader + 1));
    let nodes = cluster["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        assert_eq!(node["lag"], json!(0), "{node}");
        assert!(node["applied"].as_u64().unwrap() >= 4, "the three publishes and the leader's first entry: {node}");
    }
    // A node that stops reporting keeps its last word, its age growing.
    let third = (leader + 2) % 3;
    c.down.insert(third);
    c.run_ms(2_000);
    let welcome = c.nodes[follower].connect(ConnId(4));
    let silent = &welcome["cluster"]["nodes"][third];
    assert!(silent["heard_ms_ago"].as_u64().unwrap() >= 1_000, "{silent}");
    // A single node says none of it.
    let mut single = ferry_core::testkit::Harness::new(Config::default());
    let welcome = single.connect(T);
    assert!(welcome.get("cluster").is_none() && welcome.get("node").is_none(), "{welcome}");
}

#[test]
fn a_follower_behind_what_retention_deleted_takes_the_leader_s_state_and_can_lead_with_it() {
    use ferry_core::node::Trace;
    let config = Config { segment_bytes_max: 8_192, frame_bytes_max: 4_096, retention_age_ms: 300, raft_log_memory_bytes: 512, ..Config::default() };
    let mut c = Cluster::with(config);
    let leader = c.leader();
    let behind = (leader + 1) % 3;
    c.subscribe(leader);
    c.down.insert(behind);
    for n in 1..=120 {
        assert_eq!(c.publish(leader, json!({"n": n, "pad": "x".repeat(200)}))["op"], json!("puback"));
    }
    // The member acks the first 100: the state carries that position.
    let mut acked = 0;
    while acked < 100 {
        let got: Vec<u64> = ids(&msgs(&mut c.nodes[leader], S)).into_iter().filter(|id| *id <= 100).collect();
        ack(&mut c.nodes[leader], S, "t", "g", &got);
        acked += got.len();
        c.run_ms(20);
    }
    // Old segments age out: the entries the follower lacks are gone from the leader's log.
    c.run_ms(2_000);
    assert!(c.nodes[leader].traces.iter().any(|t| matches!(t, Trace::SegmentDeleted { .. })), "retention ran");
    let disk_before = c.nodes[behind].disk.clone();
    c.down.remove(&behind);
    c.run_ms(1_000);
    let behind_id = behind as u64 + 1;
    let reports = c.nodes[leader].traces.iter().filter(|t| matches!(t, Trace::FollowerBehindLog { node, .. } if *node == behind_id)).count();
    assert_eq!(reports, 1, "said once");
    assert!(c.nodes[behind].traces.iter().any(|t| matches!(t, Trace::StateInstalled { .. })), "the follower took the leader's state");
    assert!(c.nodes[behind].traces.iter().any(|t| matches!(t, Trace::SegmentDeleted { .. })), "and dropped its superseded segments");
    assert_eq!(c.nodes[behind].node.topic_next_id("t"), Some(121), "it has every id the leader gave");
    c.nodes[behind].node.check_invariants();
    // It restarts from that state, even had it crashed before deleting its older segments:
    // they are put back here, and recovery skips and deletes them...
    let kept: Vec<u64> = c.nodes[behind].disk.segments().iter().map(|(id, _)| *id).collect();
    let superseded: Vec<(u64, Vec<u8>)> = disk_before.segments().iter().filter(|(id, _)| !kept.contains(id)).map(|(id, bytes)| (*id, bytes.to_vec())).collect();
    assert!(!superseded.is_empty());
    for (id, bytes) in &superseded {
        c.nodes[behind].disk.write(*id, 0, bytes);
        c.nodes[behind].disk.mark_durable(*id, bytes.len());
    }
    c.nodes[behind].restart(false);
    c.run_ms(500);
    assert_eq!(c.nodes[behind].node.topic_next_id("t"), Some(121));
    let after: Vec<u64> = c.nodes[behind].disk.segments().iter().map(|(id, _)| *id).collect();
    assert!(superseded.iter().all(|(id, _)| !after.contains(id)), "superseded segments deleted at recovery: {after:?}");
    // ...and the cluster goes on without the old leader: what was acked never comes back
    // (what retention deleted is gone everywhere), and ids go on from 121.
    c.down.insert(leader);
    let next = c.leader();
    // A connection of its own (a restart ended the node's test connections).
    c.nodes[next].connect(T);
    c.nodes[next].send_json(T, json!({"op": "sub", "req": "s", "topic": "t", "group": "g"}));
    c.run_ms(100);
    assert_eq!(c.nodes[next].take_op(T, "suback").len(), 1);
    let redelivered = ids(&msgs(&mut c.nodes[next], T));
    assert!(!redelivered.is_empty(), "the unacked messages still stored come again");
    assert!(redelivered.iter().all(|id| (101..=120).contains(id)), "{redelivered:?}");
    c.nodes[next].send_json(T, json!({"op": "pub", "req": 1, "topic": "t", "body": "after"}));
    c.run_ms(50);
    assert_eq!(c.nodes[next].take_op(T, "puback")[0]["id"], json!(121));
}

/// The applied index the snapshot at the start of the node's newest segment records.
fn newest_snapshot_applied(h: &Harness) -> u64 {
    let segments = h.disk.segments();
    let (_, bytes) = segments.last().expect("the node has a segment");
    let mut applied = None;
    ferry_core::recovery::scan_segment(bytes, true, |_, _, record, _| {
        if let ferry_core::record::RecordRef::Applied(a) = record {
            applied.get_or_insert(a.index);
        }
    });
    applied.expect("the segment begins with a snapshot")
}

#[test]
fn a_restarted_follower_applies_its_committed_entries_before_its_log_goes_on() {
    let mut c = Cluster::new();
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    for n in 0..5 {
        assert_eq!(c.publish(leader, json!(n))["op"], json!("puback"));
    }
    c.run_ms(200);
    assert_eq!(c.nodes[follower].node.topic_next_id("t"), Some(6));
    // No time passes and no peer speaks: what the follower's log says is committed is in its
    // state at once, so the segment its restart starts records a snapshot that holds it
    // (retention may then delete the segments with those entries; see seed 228826).
    c.nodes[follower].restart(false);
    assert_eq!(c.nodes[follower].node.topic_next_id("t"), Some(6), "the committed publishes applied again at restart");
    let applied = newest_snapshot_applied(&c.nodes[follower]);
    assert!(applied >= 6, "the new segment's snapshot holds the committed entries (a leader's empty entry, 5 publishes): {applied}");
}

#[test]
fn topics_spread_over_shards_whose_leaders_spread_over_the_nodes() {
    use ferry_core::ids::{ShardId, SHARD_ID_SPACE};
    let mut c = Cluster::with(Config { shards: 3, ..Config::default() });
    // One topic in each shard.
    let topics: Vec<String> = (0..3).map(|shard| (0..).map(|n| format!("topic{n}")).find(|t| ShardId::of_topic(t, 3) == ShardId(shard)).unwrap()).collect();
    // Each shard settles on its preferred leader, the voter of its index.
    c.run_ms(6_000);
    for (shard, topic) in topics.iter().enumerate() {
        let leaders: Vec<usize> = (0..3).filter(|at| c.nodes[*at].node.leads_shard_of(topic)).collect();
        assert_eq!(leaders, vec![shard], "shard {shard} ({topic}) is led by node {}", shard + 1);
    }
    // A client of node 1 publishes to all three: each publish goes to its shard's leader,
    // and ids are per topic.
    for round in 1..=2 {
        for topic in &topics {
            c.nodes[0].send_json(P, json!({"op": "pub", "req": 1, "topic": topic, "body": round}));
            c.run_ms(50);
            let answer = c.nodes[0].take(P).pop_front().expect("an answer");
            assert_eq!((answer["op"].clone(), answer["id"].clone()), (json!("puback"), json!(round)), "{topic}: {answer}");
        }
    }
    // A member on node 3 of each topic's group gets its messages, whichever node leads.
    for topic in &topics {
        c.nodes[2].send_json(S, json!({"op": "sub", "req": "s", "topic": topic, "group": "g", "from": "earliest"}));
    }
    c.run_ms(100);
    let delivered = msgs(&mut c.nodes[2], S);
    for topic in &topics {
        let ids: Vec<u64> = delivered.iter().filter(|m| m["topic"] == json!(topic)).map(|m| m["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, vec![1, 2], "{topic}");
    }
    // Every node holds every shard's log, in that shard's own segments.
    for h in &c.nodes {
        let shards: BTreeSet<u32> = h.disk.segments().iter().map(|(segment, _)| ShardId::of_id(*segment).0).collect();
        assert_eq!(shards, BTreeSet::from([0, 1, 2]));
        assert!(h.disk.segments().iter().any(|(segment, _)| *segment == 2 * SHARD_ID_SPACE + 1));
    }
    // A restart finds every shard's messages again.
    c.nodes[1].restart(false);
    c.run_ms(1_000);
    for topic in &topics {
        assert_eq!(c.nodes[1].node.topic_next_id(topic), Some(3), "{topic}");
    }
}

#[test]
fn a_new_leader_takes_acks_for_what_the_previous_one_delivered() {
    let mut c = Cluster::new();
    let old = c.leader();
    c.subscribe(old);
    for n in 1..=3 {
        assert_eq!(c.publish(old, json!(n))["op"], json!("puback"));
    }
    assert_eq!(ids(&msgs(&mut c.nodes[old], S)), vec![1, 2, 3]);
    // Id 1 acked, its position replicated; 2 and 3 still in flight when the leader dies.
    ack(&mut c.nodes[old], S, "t", "g", &[1]);
    c.run_ms(200);
    c.down.insert(old);
    let new = c.leader();
    // The client acks 2 and 3 (and 1 again) through the new leader before any member joins
    // there: they were delivered, by the leader before.
    c.nodes[new].send_json(P, json!({"op": "ack", "topic": "t", "group": "g", "ids": [1, 2, 3]}));
    c.run_ms(50);
    let errors = c.nodes[new].take_op(P, "error");
    assert!(errors.is_empty(), "acks of delivered ids refused: {errors:?}");
    c.nodes[new].send_json(S, json!({"op": "sub", "req": "s", "topic": "t", "group": "g"}));
    c.run_ms(100);
    assert_eq!(c.nodes[new].take_op(S, "suback").len(), 1);
    assert!(msgs(&mut c.nodes[new], S).is_empty(), "acked ids are not delivered again");
    assert_eq!(c.publish(new, json!(4))["id"], json!(4));
    assert_eq!(ids(&msgs(&mut c.nodes[new], S)), vec![4]);
}

#[test]
fn a_congested_peer_link_holds_its_clients_messages_until_it_drains() {
    let mut c = Cluster::new();
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    c.subscribe(follower);
    // The leader's queue to the follower fills up: its members get nothing meanwhile (the
    // link is not reset, no session ends), while publishes go on.
    let h = &mut c.nodes[leader];
    h.node.handle_input(h.now_ns, Input::PeerCongested { node: follower as u64 + 1, congested: true });
    h.drain();
    for n in 1..=3 {
        assert_eq!(c.publish(leader, json!(n))["op"], json!("puback"));
    }
    assert!(msgs(&mut c.nodes[follower], S).is_empty(), "pushed through a congested link");
    let h = &mut c.nodes[leader];
    h.node.handle_input(h.now_ns, Input::PeerCongested { node: follower as u64 + 1, congested: false });
    h.drain();
    c.run_ms(50);
    assert_eq!(ids(&msgs(&mut c.nodes[follower], S)), vec![1, 2, 3], "once it drained");
}

#[test]
fn an_operator_s_reset_and_drop_are_entries_every_replica_applies() {
    use ferry_core::node::admin::{AdminAction, AdminRefusal};
    use ferry_core::protocol::StartFrom;
    let mut c = Cluster::new();
    let (first, delivered) = c.leader_with_delivered(3);
    ack(&mut c.nodes[first], S, "t", "g", &delivered);
    c.run_ms(100);
    // A follower is not the place: it names the leader.
    let follower = (first + 1) % 3;
    let now = c.nodes[follower].now_ns;
    let action = AdminAction::ResetGroup { topic: "t".into(), group: "g".into(), to: StartFrom::Earliest };
    assert!(matches!(c.nodes[follower].node.admin(now, &action), Err(AdminRefusal::NotLeader(_))));
    let now = c.nodes[first].now_ns;
    c.nodes[first].node.admin(now, &action).expect("the leader proposes it");
    c.run_ms(100);
    assert_eq!(ids(&msgs(&mut c.nodes[first], S)), vec![1, 2, 3], "delivered again from the start");
    // The leader dies: the next one has the reset too (nothing of it was acked since).
    c.down.insert(first);
    let second = c.leader();
    c.subscribe(second);
    assert_eq!(ids(&msgs(&mut c.nodes[second], S)), vec![1, 2, 3]);
    let now = c.nodes[second].now_ns;
    c.nodes[second].node.admin(now, &AdminAction::DropGroup { topic: "t".into(), group: "g".into() }).unwrap();
    c.run_ms(100);
    assert_eq!(c.nodes[second].take_op(S, "error")[0]["code"], json!("not_subscribed"));
    for (at, h) in c.nodes.iter().enumerate().filter(|(at, _)| *at != first) {
        assert!(h.node.topics_view().iter().all(|t| t.groups.is_empty()), "node {at} dropped the group");
    }
}

#[test]
fn a_redrive_runs_on_the_shard_leader_and_its_copies_are_entries() {
    use ferry_core::node::admin::{AdminAction, AdminRefusal};
    // The redrive's own ack timeout is long: its copies are settled when applied, not by a
    // retry that finds them already stored.
    let slow_redrive = ferry_core::config::GroupOverrides { ack_timeout_ms: Some(60_000), max_attempts: None };
    let groups = [("ferry-redrive".to_string(), slow_redrive)].into_iter().collect();
    let mut c = Cluster::with(Config { max_attempts: 1, ack_timeout_ms: 200, groups, ..Config::default() });
    let leader = c.leader();
    c.subscribe(leader);
    for n in 1..=3 {
        c.publish(leader, json!(n));
    }
    // Never acked: each goes to t.dlq after its one attempt.
    c.run_ms(2_000);
    assert_eq!(c.nodes[leader].node.stats().dead_lettered, 3);
    // The member leaves, so the copies wait in its group instead of failing again.
    c.nodes[leader].disconnect(S);
    let redrive = AdminAction::Redrive { topic: "t".into() };
    let follower = (leader + 1) % 3;
    let now = c.nodes[follower].now_ns;
    assert!(matches!(c.nodes[follower].node.admin(now, &redrive), Err(AdminRefusal::NotLeader(_))));
    let now = c.nodes[leader].now_ns;
    assert!(matches!(c.nodes[leader].node.admin(now, &redrive), Err(AdminRefusal::Unavailable(_))), "the redrive group is created first");
    c.run_ms(100);
    let now = c.nodes[leader].now_ns;
    let started = c.nodes[leader].node.admin(now, &redrive).expect("the group exists now");
    assert!(started.contains("redriving 3"), "{started}");
    c.run_ms(500);
    for h in &c.nodes {
        assert_eq!(h.node.topic_next_id("t"), Some(7), "every replica holds the three copies");
    }
    let now = c.nodes[leader].now_ns;
    assert!(c.nodes[leader].node.admin(now, &redrive).unwrap().contains("redriving 0"), "nothing left to copy");
}

#[test]
fn a_position_proposed_before_a_reset_applied_does_not_undo_it_on_the_followers() {
    use ferry_core::node::admin::AdminAction;
    use ferry_core::protocol::StartFrom;
    let mut c = Cluster::new();
    let (first, delivered) = c.leader_with_delivered(3);
    assert_eq!(delivered, vec![1, 2, 3]);
    // The reset is proposed; before it is applied anywhere, the member acks everything and
    // the leader proposes that position (from before the reset) behind it.
    let now = c.nodes[first].now_ns;
    c.nodes[first].node.admin(now, &AdminAction::ResetGroup { topic: "t".into(), group: "g".into(), to: StartFrom::Earliest }).unwrap();
    ack(&mut c.nodes[first], S, "t", "g", &delivered);
    // A publish now makes the leader write (and so propose) the acked position at once.
    c.nodes[first].send_json(P, json!({"op": "pub", "req": 9, "topic": "t", "body": 4}));
    c.run_ms(200);
    // The next leader must hold the reset: all three again.
    c.down.insert(first);
    let second = c.leader();
    c.subscribe(second);
    assert_eq!(ids(&msgs(&mut c.nodes[second], S)), vec![1, 2, 3, 4], "a stale position moved a follower past the reset");
}

/// A busy leader's own disk may be behind its followers: entries it proposed commit on them
/// first and apply here only once its write is done. Meanwhile it still leads with everything
/// of earlier terms applied, so a member joining then is admitted, not told to retry (100,000
/// subscribers joining a 5-node cluster were, in bursts).
#[test]
fn a_leader_whose_own_write_is_behind_its_followers_still_admits_members() {
    let mut c = Cluster::new();
    let leader = c.leader();
    c.nodes[leader].hold_writes = true;
    c.nodes[leader].send_json(P, json!({"op": "pub", "req": 1, "topic": "t", "body": 1}));
    c.run_ms(50);
    assert!(c.nodes[leader].take_op(P, "puback").is_empty(), "not applied on the leader while its write is held");
    c.nodes[leader].send_json(S, json!({"op": "sub", "req": "s", "topic": "t", "group": "g", "from": "earliest"}));
    c.run_ms(50);
    let errors = c.nodes[leader].take_op(S, "error");
    assert!(errors.is_empty(), "the member is not refused: {errors:?}");
    c.nodes[leader].hold_writes = false;
    c.nodes[leader].complete_writes();
    c.run_ms(50);
    assert_eq!(c.nodes[leader].take_op(S, "suback").len(), 1, "admitted once its group's creation applied");
    assert_eq!(c.nodes[leader].take_op(P, "puback").len(), 1);
    assert_eq!(ids(&msgs(&mut c.nodes[leader], S)), vec![1], "and given what was published before it");
}

/// A follower whose loop was busy for seconds (a fan-out to 20,000 clients, a slow disk) finds
/// every raft tick of that time due at once. Taken all at once they would end its patience with
/// the leader before it reads the heartbeats that came meanwhile: it would drop the leader and
/// close every client it forwards. Like a Go ticker (etcd's), ticks missed are dropped.
#[test]
fn a_follower_whose_loop_stalled_keeps_its_leader() {
    let mut c = Cluster::new();
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    c.run_ms(200);
    let traces_before = c.nodes[follower].traces.len();
    let h = &mut c.nodes[follower];
    h.now_ns += 2_000_000_000; // four election timeouts
    h.node.handle_timeout(h.now_ns);
    h.drain();
    c.run_ms(100);
    let lost: Vec<_> = c.nodes[follower].traces[traces_before..].iter().filter(|t| matches!(t, ferry_core::Trace::LeaderChanged { .. })).collect();
    assert!(lost.is_empty(), "the follower changed its mind about the leader: {lost:?}");
}

/// `latest` outlives retention in a cluster too: each segment's snapshot carries the newest
/// message of every key, so a restart of every node after retention deleted the entries that
/// stored them still answers with them.
#[test]
fn latest_keeps_the_newest_of_each_key_after_retention_and_a_restart_of_every_node() {
    use std::collections::BTreeMap;
    let config = Config { segment_bytes_max: 8_192, frame_bytes_max: 4_096, retention_age_ms: 300, raft_log_memory_bytes: 512, ..Config::default() };
    let mut c = Cluster::with(config);
    let leader = c.leader();
    let mut newest = BTreeMap::new();
    for n in 0..30 {
        let key = format!("order-{}", n % 10);
        c.nodes[leader].send_json(P, json!({"op": "pub", "req": n, "topic": "t", "key": key, "body": {"change": n}}));
        c.run_ms(20);
        let puback = c.nodes[leader].take_op(P, "puback");
        newest.insert(key, puback[0]["id"].as_u64().unwrap());
    }
    for n in 0..120 {
        assert_eq!(c.publish(leader, json!({"n": n, "pad": "x".repeat(200)}))["op"], json!("puback"));
    }
    // The keyed messages' entries age out of every node's log.
    c.run_ms(2_000);
    let fetch = json!({"op": "fetch", "req": "f", "topic": "t", "from": 1, "to": u64::MAX});
    c.nodes[leader].send_json(P, fetch.clone());
    c.run_ms(50);
    let first = c.nodes[leader].take_op(P, "fetched")[0]["messages"][0]["id"].as_u64().unwrap();
    assert!(first > 30, "retention deleted the keyed messages (first id {first})");
    for at in 0..3 {
        c.nodes[at].restart(false);
    }
    c.run_ms(1_000);
    let leader = c.leader();
    c.nodes[leader].connect(T);
    c.nodes[leader].send_json(T, json!({"op": "latest", "req": "l", "topic": "t"}));
    c.run_ms(50);
    let answer = c.nodes[leader].take_op(T, "latest");
    let got: BTreeMap<String, u64> = answer[0]["messages"].as_array().unwrap().iter().map(|m| (m["key"].as_str().unwrap().to_string(), m["id"].as_u64().unwrap())).collect();
    assert_eq!(got, newest, "the newest of every key, after retention and a restart");
}
