//! Every node serves every client: a node that does not lead the shard forwards its clients'
//! frames to the leader over the peer link and passes the leader's frames back. On the leader
//! such a client is a connection like a local one, named `ConnId::remote(node, conn)`: it
//! publishes, joins groups as a member, acks and fetches there, and what the leader sends it
//! (a `Send` or `Close` for that id) leaves as a peer frame to the client's node.
//!
//! A forwarded session is bound to the leader it started with: when this node learns of
//! another leader, or loses the link to that one, it closes the client (1013, try again
//! later), which reconnects and subscribes again, and publishes with `producer` and `seq` are
//! retried and stored once. The leader drops a remote connection when its node says the
//! client is gone, or when the link to that node is lost, and its in-flight messages go to
//! other members at once.

use super::{Node, Output, Trace};
use crate::cluster::mesh::{self, PeerFrame};
use crate::cluster::NodeId;
use crate::ids::{ConnId, ShardId};
use crate::node::replication::CLOSE_TRY_AGAIN_LATER;
use crate::node::session::Conn;
use std::collections::BTreeMap;

const LEADER_CHANGED: &str = "the shard's leader changed; connect again";

impl Node {
    /// Sends a client's frame to the shard leader when another node leads; false when this
    /// node handles it (it leads, or no leader is known and it answers `unavailable`).
    pub(super) fn forward_to_leader(&mut self, conn: ConnId, text: &str) -> bool {
        let Some(replication) = self.replication.as_ref() else { return false };
        if conn.as_remote().is_some() {
            // A frame forwarded here is answered here, never sent on.
            return false;
        }
        let target = replication.forward_target();
        let Some(state) = self.conns.get_mut(&conn) else { return false };
        if state.forwarded_to.is_some_and(|bound| target != Some(bound)) {
            self.end_forwarded(conn, LEADER_CHANGED);
            return true;
        }
        let Some(leader) = target else { return false };
        state.forwarded_to = Some(leader);
        let frame = PeerFrame::ClientFrame { conn: conn.0, text: text.to_string() };
        self.peer_send(leader.0, &frame);
        true
    }

    /// Closes a client whose frames went to a leader that no longer is one (or cannot be
    /// reached), telling that node it is gone.
    fn end_forwarded(&mut self, conn: ConnId, reason: &str) {
        let Some(bound) = self.conns.get_mut(&conn).and_then(|c| c.forwarded_to.take()) else { return };
        self.peer_send(bound.0, &PeerFrame::ClientGone { conn: conn.0 });
        self.out.push_back(Output::Close { conn, code: CLOSE_TRY_AGAIN_LATER, reason: reason.into() });
        self.on_disconnected(conn);
    }

    /// Another leader is known (or none): sessions bound to an earlier one end.
    pub(super) fn end_forwarding_except(&mut self, leader: Option<NodeId>) {
        let stale: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.forwarded_to.is_some_and(|bound| Some(bound) != leader)).map(|(conn, _)| *conn).collect();
        for conn in stale {
            self.end_forwarded(conn, LEADER_CHANGED);
        }
    }

    /// A local client went away or filled its queue: the leader holding its session hears of it.
    pub(super) fn tell_leader(&mut self, conn: ConnId, forwarded_to: Option<NodeId>, frame: PeerFrame) {
        if let Some(leader) = forwarded_to {
            debug_assert!(conn.as_remote().is_none());
            self.peer_send(leader.0, &frame);
        }
    }

    /// The queue to `node` is filling up (or drained): its clients get no messages meanwhile,
    /// as a congested client does (back-pressure rather than a reset link).
    pub(super) fn on_peer_congested(&mut self, node: u64, congested: bool) {
        let Some(replication) = self.replication.as_mut() else { return };
        let changed = if congested { replication.congested_peers.insert(node) } else { replication.congested_peers.remove(&node) };
        if changed && !congested {
            let remote: Vec<ConnId> = self.conns.keys().copied().filter(|conn| conn.as_remote().is_some_and(|(n, _)| n == node)).collect();
            for conn in remote {
                self.pump_subscriptions(conn);
            }
        }
    }

    /// The link to `node` broke: frames in flight on it are lost, so what depended on them ends.
    pub(super) fn on_peer_down(&mut self, node: u64) {
        let Some(replication) = self.replication.as_mut() else { return };
        // A new link starts with an empty queue.
        replication.congested_peers.remove(&node);
        let bound: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.forwarded_to == Some(NodeId(node))).map(|(conn, _)| *conn).collect();
        for conn in bound {
            self.end_forwarded(conn, "lost the link to the shard's leader; connect again");
        }
        let remote: Vec<ConnId> = self.conns.keys().copied().filter(|conn| conn.as_remote().is_some_and(|(n, _)| n == node)).collect();
        for conn in remote {
            self.on_disconnected(conn);
        }
    }

    /// A peer frame about a client: forwarded to this node (the leader), or answered for one
    /// of this node's clients.
    pub(super) fn on_client_peer_frame(&mut self, from_node: u64, frame: PeerFrame) {
        let local = |conns: &BTreeMap<ConnId, Conn>, conn: u64| {
            let conn = ConnId(conn);
            conns.get(&conn).is_some_and(|c| c.forwarded_to == Some(NodeId(from_node))).then_some(conn)
        };
        match frame {
            PeerFrame::ClientFrame { conn, text } => {
                let Some(id) = ConnId::remote(from_node, conn) else {
                    return self.out.push_back(Output::Trace(Trace::PeerFrameRefused { from_node, why: format!("connection id {conn} too large") }));
                };
                self.conns.entry(id).or_insert_with(Conn::new);
                self.on_forwarded_frame(id, &text);
            }
            PeerFrame::ToClient { conn, text } => {
                // Frames of a session that ended here (the client left or moved on) are dropped.
                if let Some(conn) = local(&self.conns, conn) {
                    self.send(conn, text);
                }
            }
            PeerFrame::CloseClient { conn, code, reason } => {
                if let Some(conn) = local(&self.conns, conn) {
                    self.conns.get_mut(&conn).expect("just found").forwarded_to = None;
                    self.out.push_back(Output::Close { conn, code, reason });
                    self.on_disconnected(conn);
                }
            }
            PeerFrame::ClientGone { conn } => {
                if let Some(id) = ConnId::remote(from_node, conn) {
                    self.on_disconnected(id);
                }
            }
            PeerFrame::Congested { conn, congested } => {
                if let Some(id) = ConnId::remote(from_node, conn) {
                    self.on_congested(id, congested);
                }
            }
            PeerFrame::Deliver(reference) => self.on_deliver_ref(from_node, reference),
            PeerFrame::DeliverFull { conn, id, topic, group } => self.on_deliver_full(from_node, conn, id, topic, group),
            PeerFrame::Raft(_) | PeerFrame::NodeInfo(_) => unreachable!("handled by replication"),
        }
    }

    /// Sends `frame` to node `to_node` (as a frame of this node's shard).
    pub(super) fn peer_send(&mut self, to_node: u64, frame: &PeerFrame) {
        let payload = mesh::encode(self.shard(), frame);
        self.out.push_back(Output::PeerSend { to_node, payload });
    }

    /// What the node sends to or closes on a remote connection leaves as a peer frame to the
    /// node that holds the client.
    pub(super) fn route_to_peers(shard: ShardId, output: Output) -> Output {
        match output {
            Output::Send { conn, frame } => match conn.as_remote() {
                Some((node, conn)) => Output::PeerSend { to_node: node, payload: mesh::encode(shard, &PeerFrame::ToClient { conn, text: frame }) },
                None => Output::Send { conn, frame },
            },
            Output::Close { conn, code, reason } => match conn.as_remote() {
                Some((node, conn)) => Output::PeerSend { to_node: node, payload: mesh::encode(shard, &PeerFrame::CloseClient { conn, code, reason }) },
                None => Output::Close { conn, code, reason },
            },
            other => other,
        }
    }
}
