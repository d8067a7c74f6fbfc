//! Deliveries to members on other nodes go by reference: the leader decides who gets which
//! message, as for a local member, but sends the member's node only the decision (`deliver`:
//! connection, raft entry, id, prev, attempt); that node builds the `msg` frame from its own
//! replica, so a body crosses the mesh once (in raft's append), not twice.
//!
//! The member's node builds it only once it has applied that entry itself: before, its log
//! may hold another leader's entry at that index (never committed), or nothing. It waits for
//! the apply, then for a read from its disk if the message is no longer cached. When it does
//! not hold the message at all (its retention deleted it, or its state came from the leader
//! without it), or its waits pass `delivery_waits_bytes_max`, it asks the leader for the
//! frame in full (`deliver_full`), which the leader sends if the message is still in flight
//! to that connection.

use super::{Node, Output};
use crate::cluster::mesh::{self, DeliverRef, PeerFrame};
use crate::cluster::NodeId;
use crate::ids::{ConnId, ShardId, TopicIdx};
use crate::protocol::{self, MsgFrame};
use crate::topic::{Lookup, StoredMessage};
use std::collections::BTreeMap;

/// A delivery the leader decided that waits here for its message.
pub(super) struct WaitingDelivery {
    /// The member's connection: local on the member's node, remote on the leader.
    pub(super) conn: ConnId,
    /// On the member's node, the leader that sent it (the session must still be bound to
    /// it); `None` on the leader, sending it in full.
    pub(super) leader: Option<NodeId>,
    pub(super) topic: String,
    pub(super) group: String,
    pub(super) id: u64,
    pub(super) prev: u64,
    pub(super) attempt: u32,
    /// The raft entry that stored the message.
    pub(super) index: u64,
}

impl WaitingDelivery {
    fn bytes(&self) -> u64 {
        (96 + self.topic.len() + self.group.len()) as u64
    }
}

#[derive(Default)]
pub(super) struct DeliveryWaits {
    /// Deliveries waiting for their entry to be applied on this node, by raft index.
    by_index: BTreeMap<u64, Vec<WaitingDelivery>>,
    /// Deliveries waiting for their message to be read back from disk.
    by_read: BTreeMap<(TopicIdx, u64), Vec<WaitingDelivery>>,
    bytes: u64,
}

impl DeliveryWaits {
    fn take(&mut self, waits: Vec<WaitingDelivery>) -> Vec<WaitingDelivery> {
        self.bytes -= waits.iter().map(WaitingDelivery::bytes).sum::<u64>();
        waits
    }

    /// Debug check: the bytes counted are those of the deliveries kept.
    pub(super) fn check_invariants(&self) {
        let kept: u64 = self.by_index.values().chain(self.by_read.values()).flatten().map(WaitingDelivery::bytes).sum();
        assert_eq!(kept, self.bytes, "bytes of deliveries waiting");
    }

    /// The state was replaced (`install_state`): topic indexes name other topics now, and
    /// reads in flight are forgotten; the deliveries waiting for one are handed back.
    pub(super) fn take_read_waits(&mut self) -> Vec<WaitingDelivery> {
        let waits: Vec<WaitingDelivery> = std::mem::take(&mut self.by_read).into_values().flatten().collect();
        self.take(waits)
    }
}

/// Builds the `msg` frame of a delivery of `message`.
pub(super) fn msg_frame(topic: &str, group: &str, id: u64, prev: u64, attempt: u32, message: &StoredMessage) -> String {
    // Field names and numbers take about 110 bytes; what is escaped may need a little more.
    let key_len = message.key.as_deref().map_or(0, str::len);
    let mut frame = String::with_capacity(128 + topic.len() + group.len() + key_len + message.body.len());
    let msg = MsgFrame { topic, group, id, prev, key: message.key.as_deref(), body: &message.body, attempt, ts_ms: message.ts_ms };
    protocol::encode_msg(&mut frame, &msg);
    frame
}

/// What the leader sends for a delivery of `message` to `conn`: the `msg` frame, or for a
/// member on another node (`by_reference`: cluster mode) the reference its node builds it from.
#[allow(clippy::too_many_arguments)]
pub(super) fn delivery_output(shard: ShardId, conn: ConnId, by_reference: bool, topic: &str, group: &str, id: u64, prev: u64, attempt: u32, message: &StoredMessage) -> Output {
    match conn.as_remote() {
        Some((node, conn)) if by_reference && message.raft_index > 0 => {
            Output::PeerSend { to_node: node, payload: mesh::encode_deliver(shard, conn, message.raft_index, id, prev, attempt, topic, group) }
        }
        _ => Output::Send { conn, frame: msg_frame(topic, group, id, prev, attempt, message) },
    }
}

impl Node {
    /// Member's node: the leader's delivery to one of this node's clients.
    pub(super) fn on_deliver_ref(&mut self, from_node: u64, d: DeliverRef) {
        let leader = NodeId(from_node);
        let conn = ConnId(d.conn);
        if !self.still_bound(conn, Some(leader)) {
            // The session ended here (the client left or moved on): the leader hears of it.
            return;
        }
        let wait = WaitingDelivery { conn, leader: Some(leader), topic: d.topic, group: d.group, id: d.id, prev: d.prev, attempt: d.attempt, index: d.index };
        let applied = self.state.applied.map_or(0, |a| a.index);
        if applied >= wait.index {
            return self.resolve_delivery(wait);
        }
        self.park_delivery(wait, None);
    }

    /// Deliveries whose entries this node has now applied go on.
    pub(super) fn release_applied_deliveries(&mut self) {
        let applied = self.state.applied.map_or(0, |a| a.index);
        let Some(replication) = self.replication.as_mut() else { return };
        let waits = &mut replication.delivery_waits;
        let mut ready = Vec::new();
        while let Some(entry) = waits.by_index.first_entry().filter(|e| *e.key() <= applied) {
            ready.extend(entry.remove());
        }
        let ready = waits.take(ready);
        for wait in ready {
            self.resolve_delivery(wait);
        }
    }

    /// A delivery whose entry is applied here: sent from the cache, or after a read.
    fn resolve_delivery(&mut self, wait: WaitingDelivery) {
        let Some(&t) = self.state.topic_index.get(&wait.topic) else { return self.ask_in_full(wait) };
        match self.state.topics[t].lookup(wait.id, &self.read_cache, t) {
            Lookup::Found(message) => self.send_delivery(&wait, &message),
            Lookup::OnDisk(loc) => {
                let id = wait.id;
                self.park_delivery(wait, Some(t));
                self.request_read(t, id, loc);
            }
            Lookup::Gone => self.ask_in_full(wait),
        }
    }

    /// Keeps a delivery until its entry is applied (`read` None) or its message is read back;
    /// past `delivery_waits_bytes_max`, the leader is asked for it in full instead.
    fn park_delivery(&mut self, wait: WaitingDelivery, read: Option<TopicIdx>) {
        let max = self.config.delivery_waits_bytes_max;
        let waits = &mut self.replication.as_mut().expect("cluster mode").delivery_waits;
        if waits.bytes + wait.bytes() > max {
            return self.ask_in_full(wait);
        }
        waits.bytes += wait.bytes();
        match read {
            None => waits.by_index.entry(wait.index).or_default().push(wait),
            Some(t) => waits.by_read.entry((t, wait.id)).or_default().push(wait),
        }
    }

    /// A read of message `id` of topic `t` ended (`None`: it could not be read).
    pub(super) fn on_delivery_read(&mut self, t: TopicIdx, id: u64, message: Option<&std::rc::Rc<StoredMessage>>) {
        let Some(replication) = self.replication.as_mut() else { return };
        let waits = &mut replication.delivery_waits;
        let Some(found) = waits.by_read.remove(&(t, id)) else { return };
        for wait in waits.take(found) {
            match message {
                Some(message) => self.send_delivery(&wait, message),
                None => self.ask_in_full(wait),
            }
        }
    }

    pub(super) fn send_delivery(&mut self, wait: &WaitingDelivery, message: &StoredMessage) {
        if self.still_bound(wait.conn, wait.leader) {
            let frame = msg_frame(&wait.topic, &wait.group, wait.id, wait.prev, wait.attempt, message);
            self.send(wait.conn, frame);
        }
    }

    /// The state was replaced by the leader's: reads in flight name topics by index and are
    /// forgotten; the deliveries waiting for them go to the leader in full.
    pub(super) fn forget_reads(&mut self) {
        self.reads.clear();
        self.reading.clear();
        let Some(replication) = self.replication.as_mut() else { return };
        for wait in replication.delivery_waits.take_read_waits() {
            self.ask_in_full(wait);
        }
    }

    /// The member's session is still here: on its node, bound to the leader that sent the
    /// delivery (`leader`); on the leader (`None`), connected.
    fn still_bound(&self, conn: ConnId, leader: Option<NodeId>) -> bool {
        match leader {
            Some(leader) => self.conns.get(&conn).is_some_and(|c| c.forwarded_to == Some(leader)),
            None => self.conns.contains_key(&conn),
        }
    }

    /// This node cannot build the delivery: the leader is asked for it in full (on the
    /// leader itself, a message gone is left to its ack deadline, as for a local member).
    fn ask_in_full(&mut self, wait: WaitingDelivery) {
        if let Some(leader) = wait.leader {
            let frame = PeerFrame::DeliverFull { conn: wait.conn.0, id: wait.id, topic: wait.topic, group: wait.group };
            self.peer_send(leader.0, &frame);
        }
    }

    /// Leader: a member's node asks for a delivery in full; sent if `id` is still in flight
    /// to that connection (with the attempt and prev it was given).
    pub(super) fn on_deliver_full(&mut self, from_node: u64, conn: u64, id: u64, topic: String, group: String) {
        let Some(conn) = ConnId::remote(from_node, conn) else { return };
        let Ok((t, g)) = self.state.group_of(&topic, &group) else { return };
        let Some((holder, attempt, prev)) = self.state.topics[t].groups[g].in_flight(id) else { return };
        if holder != conn {
            return;
        }
        self.resolve_delivery(WaitingDelivery { conn, leader: None, topic, group, id, prev, attempt, index: 0 });
    }
}
