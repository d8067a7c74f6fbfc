//! A ferry process as the shell and the simulator drive it: the client connections and the
//! node state machine behind them, with the same four doors as every state machine here
//! (`handle_input`, `handle_timeout`, `poll_output`, `poll_timeout`).
//!
//! What belongs to a connection as a whole lives here: the `welcome`, `hello` and its
//! token, `ping`, frames refused before decoding, frames that do not decode. Every other op
//! names a topic and goes to the node (`Node::on_client_op`), which holds subscriptions,
//! deliveries and forwarding to the shard's leader.

use crate::config::{Config, TestBug};
use crate::ids::ConnId;
use crate::node::{Input, MemoryUse, Node, Output, RecoveryReport, Rejection, Stats};
use crate::protocol::{self, ClientOp, ErrorCode};
use crate::recovery::RecoveryError;
use std::collections::{BTreeMap, VecDeque};

pub struct Host {
    config: Config,
    node: Node,
    /// Open client connections and whether each has authenticated (`hello` with a token,
    /// or no `tokens` configured).
    conns: BTreeMap<ConnId, bool>,
    out: VecDeque<Output>,
}

impl Host {
    /// A process over an empty data directory.
    pub fn new(config: Config, now_ns: u64) -> Host {
        Host::recover(config, &[], now_ns).expect("an empty log has no damage").0
    }

    /// Rebuilds the process from its segments (see `Node::recover`).
    pub fn recover(config: Config, segments: &[(u64, &[u8])], now_ns: u64) -> Result<(Host, RecoveryReport), RecoveryError> {
        let (node, report) = Node::recover(config.clone(), segments, now_ns)?;
        let mut host = Host { config, node, conns: BTreeMap::new(), out: VecDeque::new() };
        host.take_node_outputs();
        Ok((host, report))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The node behind the connections (for tests and the simulator's checks).
    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn stats(&self) -> Stats {
        self.node.stats
    }

    pub fn memory(&self) -> MemoryUse {
        self.node.memory()
    }

    /// True once the process has asked to stop (`Output::Stop`); it takes no more input.
    pub fn is_stopped(&self) -> bool {
        self.node.is_stopped()
    }

    pub fn check_invariants(&self) {
        self.node.check_invariants();
    }

    /// In cluster mode, whether this process leads the shard of `topic` now.
    pub fn leads_shard_of(&self, _topic: &str) -> bool {
        self.node.is_shard_leader()
    }

    /// Bytes of raft entries held in memory (cluster mode; 0 on a single node).
    pub fn raft_memory_bytes(&self) -> u64 {
        self.node.raft_memory_bytes()
    }

    /// Open client connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Next id `topic` will assign, if the topic exists.
    pub fn topic_next_id(&self, topic: &str) -> Option<u64> {
        self.node.topic_next_id(topic)
    }

    /// Messages of `group` handed out or held and not yet acked.
    pub fn group_outstanding(&self, topic: &str, group: &str) -> Option<usize> {
        self.node.group_outstanding(topic, group)
    }

    /// The first id a group considers (set when it was created).
    pub fn group_start_id(&self, topic: &str, group: &str) -> Option<u64> {
        self.node.group_start_id(topic, group)
    }

    /// Messages in flight to `conn` for (topic, group), counted from the group's own entries.
    pub fn in_flight_to(&self, conn: ConnId, topic: &str, group: &str) -> Option<usize> {
        self.node.in_flight_to(conn, topic, group)
    }

    pub fn handle_input(&mut self, now_ns: u64, input: Input<'_>) {
        if self.is_stopped() {
            return;
        }
        match input {
            Input::Connected { conn } => self.on_connected(now_ns, conn),
            Input::Frame { conn, text } => self.on_frame(now_ns, conn, text),
            Input::Rejected { conn, why } => self.on_rejected(now_ns, conn, why),
            Input::Disconnected { conn } => {
                self.conns.remove(&conn);
                self.node.handle_input(now_ns, input);
            }
            other => self.node.handle_input(now_ns, other),
        }
        self.take_node_outputs();
    }

    pub fn handle_timeout(&mut self, now_ns: u64) {
        self.node.handle_timeout(now_ns);
        self.take_node_outputs();
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        self.node.poll_timeout()
    }

    /// Moves what the node asked for behind what this host asked for, in order; a client
    /// the node closed is gone here too.
    fn take_node_outputs(&mut self) {
        while let Some(output) = self.node.poll_output() {
            if let Output::Close { conn, .. } = &output {
                self.conns.remove(conn);
            }
            self.out.push_back(output);
        }
    }

    fn send(&mut self, conn: ConnId, frame: String) {
        self.out.push_back(Output::Send { conn, frame });
    }

    fn send_error(&mut self, conn: ConnId, req: Option<&str>, code: ErrorCode, message: &str) {
        let mut frame = String::with_capacity(64 + message.len());
        protocol::encode_error(&mut frame, req, code, message);
        self.send(conn, frame);
    }

    fn on_connected(&mut self, now_ns: u64, conn: ConnId) {
        let previous = self.conns.insert(conn, self.config.tokens.is_empty());
        assert!(previous.is_none(), "connection id {conn} reused while open");
        // The node first: its clock moves to now, which the welcome's cluster status reads.
        self.node.handle_input(now_ns, Input::Connected { conn });
        let welcome = self.node.welcome();
        self.send(conn, welcome);
    }

    fn on_rejected(&mut self, now_ns: u64, conn: ConnId, why: Rejection) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        let (code, reason) = match why {
            Rejection::BinaryFrame => (1003, "ferry speaks JSON text frames only".to_string()),
            Rejection::TooLarge => {
                let message = format!("frame exceeds frame_bytes_max ({} bytes)", self.config.frame_bytes_max);
                self.send_error(conn, None, ErrorCode::TooLarge, &message);
                (1009, message)
            }
        };
        self.out.push_back(Output::Close { conn, code, reason });
        self.conns.remove(&conn);
        self.node.handle_input(now_ns, Input::Disconnected { conn });
    }

    fn on_frame(&mut self, now_ns: u64, conn: ConnId, text: &str) {
        let Some(&authenticated) = self.conns.get(&conn) else { return };
        let op = match protocol::decode(text, self.config.json_depth_max) {
            Ok(op) => op,
            Err(e) => {
                let code = if e.code == ErrorCode::UnknownOp && self.config.test_bug == Some(TestBug::UnknownOpAsBadFrame) { ErrorCode::BadFrame } else { e.code };
                return self.send_error(conn, e.req.as_deref(), code, &e.message);
            }
        };
        if !authenticated && !matches!(op, ClientOp::Hello { .. } | ClientOp::Pub { .. }) {
            let req = match &op {
                ClientOp::Sub { req, .. } | ClientOp::Pull { req, .. } | ClientOp::Fetch { req, .. } | ClientOp::Unsub { req, .. } | ClientOp::Ping { req } => {
                    protocol::req_text(req)
                }
                _ => None,
            };
            return self.send_error(conn, req.as_deref(), ErrorCode::Unauthorized, "send hello with a valid token first");
        }
        match op {
            ClientOp::Hello { token } => self.on_hello(conn, token),
            ClientOp::Ping { req } => {
                let mut frame = String::new();
                protocol::encode_pong(&mut frame, protocol::req_text(&req).as_deref());
                self.send(conn, frame);
            }
            op => self.node.on_client_op(now_ns, conn, text, op, authenticated),
        }
    }

    fn on_hello(&mut self, conn: ConnId, token: Option<String>) {
        if self.config.tokens.is_empty() {
            return;
        }
        let valid = token.is_some_and(|t| self.config.tokens.contains(&t)) || self.config.test_bug == Some(TestBug::WrongTokenAccepted);
        if valid {
            self.conns.insert(conn, true);
        } else {
            self.send_error(conn, None, ErrorCode::Unauthorized, "unknown token");
        }
    }
}
