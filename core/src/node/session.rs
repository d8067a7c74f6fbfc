//! Connections as the node sees them: client ops in (decoded by the host, or forwarded by
//! another node), replies out, congestion, departures.

use super::{Node, Output};
use crate::cluster::mesh::PeerFrame;
use crate::cluster::NodeId;
use crate::group::GroupTerms;
use crate::ids::{ConnId, GroupIdx, TopicIdx};
use crate::pipeline::Publish;
use crate::protocol::{self, ClientOp, ErrorCode};
use std::collections::BTreeMap;

pub(super) struct Pull {
    pub(super) req: Option<String>,
    pub(super) remaining: u32,
    pub(super) count: u32,
    pub(super) deadline_ns: u64,
}

#[derive(Default)]
pub(super) struct Sub {
    pub(super) subscribed: bool,
    pub(super) window: u32,
    pub(super) in_flight: u32,
    /// Bytes of the messages in flight (see `Config::window_bytes_max`).
    pub(super) in_flight_bytes: u64,
    pub(super) pull: Option<Pull>,
    /// More in flight than `window`, for a reason the client gave: a later `sub` with a smaller
    /// window, or a `pull` beside the subscription. Nothing is pushed until acks bring it under.
    pub(super) over_window: bool,
}

impl Sub {
    pub(super) fn capacity(&self, window_bytes_max: u64) -> u32 {
        // One message always fits, however large: below the byte window, another may go.
        if self.in_flight > 0 && self.in_flight_bytes >= window_bytes_max {
            return 0;
        }
        match &self.pull {
            Some(pull) => pull.remaining,
            None if self.subscribed => self.window.saturating_sub(self.in_flight),
            None => 0,
        }
    }
}

pub(super) struct Conn {
    /// The shell says its outgoing queue is full: no messages are pushed to it meanwhile.
    pub(super) congested: bool,
    pub(super) subs: BTreeMap<(TopicIdx, GroupIdx), Sub>,
    /// In a cluster: the leader this client's frames go to while another node leads
    /// (`forwarding`).
    pub(super) forwarded_to: Option<NodeId>,
}

impl Conn {
    pub(super) fn new() -> Conn {
        Conn { congested: false, subs: BTreeMap::new(), forwarded_to: None }
    }
}

impl Node {
    pub(super) fn send(&mut self, conn: ConnId, frame: String) {
        self.out.push_back(Output::Send { conn, frame });
    }

    pub(super) fn send_error(&mut self, conn: ConnId, req: Option<&str>, code: ErrorCode, message: &str) {
        self.send_error_retry(conn, req, code, message, None);
    }

    /// `send_error` with a `retry_after_ms` hint.
    pub(super) fn send_error_retry(&mut self, conn: ConnId, req: Option<&str>, code: ErrorCode, message: &str, retry_after_ms: Option<u64>) {
        let mut frame = String::with_capacity(64 + message.len());
        protocol::encode_error_retry(&mut frame, req, code, message, retry_after_ms);
        self.stats.errors[code as usize] += 1;
        self.send(conn, frame);
    }

    pub(super) fn on_connected(&mut self, conn: ConnId) {
        let previous = self.conns.insert(conn, Conn::new());
        assert!(previous.is_none(), "connection id {conn} reused while open");
    }

    /// A client op that names a topic, decoded by the host (`authenticated`: its connection
    /// has passed `hello`, or needs none). Sent on to the shard's leader when another node
    /// leads it; `text` is the frame as the client sent it.
    pub fn on_client_op(&mut self, now_ns: u64, conn: ConnId, text: &str, op: ClientOp, authenticated: bool) {
        self.advance_clock(now_ns);
        if self.stopped || !self.conns.contains_key(&conn) {
            return;
        }
        if self.forward_to_leader(conn, text) {
            return;
        }
        self.apply_client_op(conn, op, authenticated);
    }

    /// A client's frame forwarded here by its node, which checked its token.
    pub(super) fn on_forwarded_frame(&mut self, conn: ConnId, text: &str) {
        match protocol::decode(text, self.config.json_depth_max) {
            Ok(ClientOp::Ping { req }) => {
                let mut frame = String::new();
                protocol::encode_pong(&mut frame, protocol::req_text(&req).as_deref());
                self.send(conn, frame);
            }
            // Answered by the client's own node, never forwarded.
            Ok(ClientOp::Hello { .. }) => {}
            Ok(op) => self.apply_client_op(conn, op, true),
            Err(e) => self.send_error(conn, e.req.as_deref(), e.code, &e.message),
        }
    }

    fn apply_client_op(&mut self, conn: ConnId, op: ClientOp, authenticated: bool) {
        let req_of = protocol::req_text;
        if let Some((req, why)) = reserved_for_redrives(&op) {
            return self.send_error(conn, req.as_deref(), ErrorCode::Forbidden, &why);
        }
        match op {
            ClientOp::Pub { req, topic, body, key, producer, seq } => {
                let req = req_of(&req);
                let publish = Publish { topic, key, producer, seq };
                self.on_publish(conn, req, publish, body.get(), authenticated);
            }
            ClientOp::Sub { req, topic, group, from, window, filter, coalesce_ms } => {
                self.on_sub(conn, req_of(&req), &topic, &group, from, window, GroupTerms { filter, coalesce_ms })
            }
            ClientOp::Ack { topic, group, ids } => self.on_ack(conn, &topic, &group, &ids, None),
            ClientOp::Nack { topic, group, ids, delay_ms } => self.on_ack(conn, &topic, &group, &ids, Some(delay_ms)),
            ClientOp::Pull { req, topic, group, max, wait_ms } => self.on_pull(conn, req_of(&req), &topic, &group, max, wait_ms),
            ClientOp::Fetch { req, topic, from, to } => self.on_fetch(conn, req_of(&req), &topic, from, to),
            ClientOp::Latest { req, topic, keys, since } => self.on_latest(conn, req_of(&req), &topic, keys.as_deref(), since),
            ClientOp::Unsub { req, topic, group } => self.on_unsub(conn, req_of(&req), &topic, &group),
            ClientOp::Hello { .. } | ClientOp::Ping { .. } => unreachable!("the host answers hello and ping"),
        }
    }

    /// While congested a connection gets no messages; once it drains, its groups push again.
    pub(super) fn on_congested(&mut self, conn: ConnId, congested: bool) {
        let Some(state) = self.conns.get_mut(&conn) else { return };
        if state.congested == congested {
            return;
        }
        state.congested = congested;
        let forwarded_to = state.forwarded_to;
        self.tell_leader(conn, forwarded_to, PeerFrame::Congested { conn: conn.0, congested });
        if !congested {
            self.pump_subscriptions(conn);
        }
    }

    /// Pumps every group `conn` is a member of (it can take messages again).
    pub(super) fn pump_subscriptions(&mut self, conn: ConnId) {
        let Some(state) = self.conns.get(&conn) else { return };
        let groups: Vec<(TopicIdx, GroupIdx)> = state.subs.keys().copied().collect();
        for (t, g) in groups {
            self.pump(t, g);
        }
    }

    pub(super) fn on_disconnected(&mut self, conn: ConnId) {
        let Some(state) = self.conns.remove(&conn) else { return };
        self.tell_leader(conn, state.forwarded_to, PeerFrame::ClientGone { conn: conn.0 });
        for (t, g) in state.subs.keys().copied() {
            self.release_member(conn, t, g);
        }
        self.fetches.retain(|f| f.conn != conn);
    }
}

/// An op naming the redrives' group or producers (`admin`): a client taking or acking the
/// group's dead letters, or publishing as a redrive, would make a redrive skip copies.
fn reserved_for_redrives(op: &ClientOp) -> Option<(Option<String>, String)> {
    use super::admin::{REDRIVE_GROUP, REDRIVE_PRODUCER_PREFIX};
    let (req, group) = match op {
        ClientOp::Sub { req, group, .. } | ClientOp::Pull { req, group, .. } | ClientOp::Unsub { req, group, .. } => (protocol::req_text(req), group.as_ref()),
        ClientOp::Ack { group, .. } | ClientOp::Nack { group, .. } => (None, group.as_ref()),
        ClientOp::Pub { req, producer: Some(producer), .. } if producer.starts_with(REDRIVE_PRODUCER_PREFIX) => {
            return Some((protocol::req_text(req), format!("producer names starting with '{REDRIVE_PRODUCER_PREFIX}' are reserved for redrives")));
        }
        _ => return None,
    };
    (group == REDRIVE_GROUP).then(|| (req, format!("group '{REDRIVE_GROUP}' is reserved for redrives")))
}
