//! A ferry process as the shell and the simulator drive it: the client connections and the
//! shards behind them, with the same four doors as every state machine here
//! (`handle_input`, `handle_timeout`, `poll_output`, `poll_timeout`).
//!
//! What belongs to a connection as a whole lives here: the `welcome`, `hello` and its
//! token, `ping`, frames refused before decoding, frames that do not decode. Every other op
//! names a topic and goes to the topic's shard (`ShardId::of_topic`): a `Node`, which holds
//! subscriptions, deliveries and forwarding to the shard's leader. A single node has one
//! shard; a cluster node `shards` of them, each its own raft group with its own segments
//! (named by shard, see `ShardId`), disk tokens and mesh frames, all sharing the process's
//! connections: each shard knows every connection, and one a shard closes is gone for all.

use crate::bucket::Bucket;
use crate::cluster::mesh;
use crate::config::{Config, TestBug};
use crate::ids::{ConnId, ShardId};
use crate::jwt::JwtVerifier;
use crate::node::{Input, MemoryUse, Node, Output, RecoveryReport, Rejection, Stats, Trace, NS_PER_MS};
use crate::protocol::{self, ClientOp, ErrorCode};
use crate::recovery::{segment_file_name, RecoveryError};
use crate::rights::Rights;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

/// WebSocket close code "policy violation" (RFC 6455 §7.4.1): an operator closed it.
const CLOSE_POLICY: u16 = 1008;

/// A client connection as the host keeps it.
struct Session {
    /// `None` until it authenticates (a `hello` with a known token); full rights at once when
    /// no identities are configured.
    rights: Option<Rc<Rights>>,
    /// When its rights end (a JWT's `exp`): it is closed then unless a new `hello` came.
    expires_at_ns: Option<u64>,
    /// Its rate limits (`publish_rate_per_connection`, `op_rate_per_connection`).
    publishes: Bucket,
    ops: Bucket,
}

pub struct Host {
    config: Config,
    /// One node state machine per shard, in shard order.
    shards: Vec<Node>,
    /// Open client connections.
    conns: BTreeMap<ConnId, Session>,
    /// Every configured token and its rights (`tokens`: full; `users`: theirs).
    identities: BTreeMap<String, Rc<Rights>>,
    /// With identities configured: when each connection not yet authenticated is closed.
    hello_deadlines: BTreeSet<(u64, ConnId)>,
    /// JWT identities, when a key is configured.
    jwt: Option<JwtVerifier>,
    /// When connections authenticated by a JWT expire.
    expiries: BTreeSet<(u64, ConnId)>,
    out: VecDeque<Output>,
    now_ns: u64,
    /// `error` frames this host sent itself (undecodable frames, tokens), per code.
    errors: [u64; ErrorCode::ALL.len()],
}

impl Host {
    /// A process over an empty data directory.
    pub fn new(config: Config, now_ns: u64) -> Host {
        Host::recover(config, &[], now_ns).expect("an empty log has no damage").0
    }

    /// Rebuilds the process from its segments (see `Node::recover`).
    pub fn recover(config: Config, segments: &[(u64, &[u8])], now_ns: u64) -> Result<(Host, RecoveryReport), RecoveryError> {
        let count = config.shards.max(1);
        let mut by_shard: Vec<Vec<(u64, &[u8])>> = vec![Vec::new(); count as usize];
        for &(segment, bytes) in segments {
            let shard = ShardId::of_id(segment);
            let Some(own) = by_shard.get_mut(shard.0 as usize) else {
                return Err(RecoveryError::refused(format!(
                    "{} belongs to shard {shard}, and this node has shards = {count}: a data directory's shard count cannot change",
                    segment_file_name(segment)
                )));
            };
            own.push((segment, bytes));
        }
        let mut shards = Vec::with_capacity(by_shard.len());
        let mut report = RecoveryReport::default();
        for (index, own) in (0u32..).zip(&by_shard) {
            // Each shard's replica draws its own randomness (election jitter).
            let shard_config = Config { shard_index: index, rng_seed: config.rng_seed.wrapping_add(u64::from(index) * 0x9e37_79b9), ..config.clone() };
            let (node, shard_report) = Node::recover(shard_config, own, now_ns)?;
            report.take(shard_report);
            shards.push(node);
        }
        let mut identities: BTreeMap<String, Rc<Rights>> = config.tokens.iter().map(|token| (token.clone(), Rc::new(Rights::full()))).collect();
        for user in &config.users {
            // `Config::validate` refused a config with a bad entry before it got here.
            let rights = Rights::of_user(user).map_err(|why| RecoveryError::refused(format!("users: {why}")))?;
            identities.insert(user.token.clone(), Rc::new(rights));
        }
        let jwt = JwtVerifier::from_config(&config).map_err(RecoveryError::refused)?;
        let mut host = Host {
            config,
            shards,
            conns: BTreeMap::new(),
            identities,
            hello_deadlines: BTreeSet::new(),
            jwt,
            expiries: BTreeSet::new(),
            out: VecDeque::new(),
            now_ns,
            errors: [0; ErrorCode::ALL.len()],
        };
        host.take_shard_outputs();
        Ok((host, report))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The shards' node state machines (for tests and the simulator's checks).
    pub fn shards(&self) -> &[Node] {
        &self.shards
    }

    fn shard_of(&self, topic: &str) -> &Node {
        &self.shards[ShardId::of_topic(topic, self.config.shards).0 as usize]
    }

    pub fn stats(&self) -> Stats {
        let own = Stats { errors: self.errors, ..Stats::default() };
        self.shards.iter().fold(own, |sum, shard| sum.plus(&shard.stats))
    }

    pub fn memory(&self) -> MemoryUse {
        self.shards.iter().fold(MemoryUse::default(), |sum, shard| sum.plus(&shard.memory()))
    }

    /// True once the process has asked to stop (`Output::Stop`); it takes no more input.
    pub fn is_stopped(&self) -> bool {
        self.shards.iter().any(Node::is_stopped)
    }

    pub fn check_invariants(&self) {
        for shard in &self.shards {
            shard.check_invariants();
            assert!(self.conns.keys().all(|conn| shard.knows_connection(*conn)), "shard {} lacks a connection of the host", shard.shard());
        }
    }

    /// In cluster mode, whether this process leads the shard of `topic` now.
    pub fn leads_shard_of(&self, topic: &str) -> bool {
        self.shard_of(topic).is_shard_leader()
    }

    /// An operator's action (`Node::admin`), carried out by the shard of the topic it names;
    /// its effects come out of `poll_output` like any input's.
    pub fn admin(&mut self, now_ns: u64, action: &crate::node::admin::AdminAction) -> Result<String, crate::node::admin::AdminRefusal> {
        use crate::node::admin::{AdminAction, AdminRefusal};
        self.now_ns = self.now_ns.max(now_ns);
        let topic = match action {
            AdminAction::ResetGroup { topic, .. }
            | AdminAction::DropGroup { topic, .. }
            | AdminAction::Redrive { topic }
            | AdminAction::PauseDeliveries { topic, .. }
            | AdminAction::RefusePublishes { topic, .. } => topic,
            AdminAction::Disconnect { conn } => {
                if self.conns.remove(conn).is_none() {
                    return Err(AdminRefusal::NotFound(format!("no connection {conn}")));
                }
                self.tell_every_shard(now_ns, || Input::Disconnected { conn: *conn });
                self.out.push_back(Output::Close { conn: *conn, code: CLOSE_POLICY, reason: "disconnected by an operator".into() });
                self.take_shard_outputs();
                return Ok(format!("connection {conn} disconnected"));
            }
        };
        let shard = ShardId::of_topic(topic, self.config.shards).0 as usize;
        let result = self.shards[shard].admin(now_ns, action);
        self.take_shard_outputs();
        result
    }

    /// Where message `id` of `topic` is and was (`Node::trace_message`), from its shard; in a
    /// cluster its deliveries are in the shard leader's trace.
    pub fn trace_message(&self, topic: &str, id: u64) -> Option<crate::node::message_trace::MessageTrace> {
        self.shard_of(topic).trace_message(topic, id)
    }

    /// Every topic of every shard, with its groups (for metrics).
    pub fn topics_view(&self) -> Vec<crate::node::observe::TopicView> {
        self.shards.iter().flat_map(Node::topics_view).collect()
    }

    /// Every open connection: whether it has authenticated, and its subscriptions on every
    /// shard.
    pub fn connections_view(&self) -> Vec<crate::node::observe::ConnView> {
        self.conns
            .iter()
            .map(|(&conn, session)| crate::node::observe::ConnView {
                conn,
                authenticated: session.rights.is_some(),
                subs: self.shards.iter().flat_map(|shard| shard.subs_of(conn)).collect(),
            })
            .collect()
    }

    /// The log on disk, all shards together.
    pub fn disk_view(&self) -> crate::node::observe::DiskView {
        self.shards.iter().fold(Default::default(), |sum, shard| sum.plus(&shard.disk_view()))
    }

    /// Bytes of raft entries held in memory (cluster mode; 0 on a single node).
    pub fn raft_memory_bytes(&self) -> u64 {
        self.shards.iter().map(Node::raft_memory_bytes).sum()
    }

    /// Open client connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Next id `topic` will assign, if the topic exists.
    pub fn topic_next_id(&self, topic: &str) -> Option<u64> {
        self.shard_of(topic).topic_next_id(topic)
    }

    /// Messages of `group` handed out or held and not yet acked.
    pub fn group_outstanding(&self, topic: &str, group: &str) -> Option<usize> {
        self.shard_of(topic).group_outstanding(topic, group)
    }

    /// The first id a group considers (set when it was created).
    pub fn group_start_id(&self, topic: &str, group: &str) -> Option<u64> {
        self.shard_of(topic).group_start_id(topic, group)
    }

    /// Messages in flight to `conn` for (topic, group), counted from the group's own entries.
    pub fn in_flight_to(&self, conn: ConnId, topic: &str, group: &str) -> Option<usize> {
        self.shard_of(topic).in_flight_to(conn, topic, group)
    }

    pub fn handle_input(&mut self, now_ns: u64, input: Input<'_>) {
        if self.is_stopped() {
            return;
        }
        self.now_ns = self.now_ns.max(now_ns);
        match input {
            Input::Connected { conn } => self.on_connected(now_ns, conn),
            Input::Frame { conn, text } => self.on_frame(now_ns, conn, text),
            Input::Rejected { conn, why } => self.on_rejected(now_ns, conn, why),
            Input::Token { conn, token } => {
                if self.conns.contains_key(&conn) {
                    self.on_hello(conn, Some(token.to_string()));
                }
            }
            Input::Disconnected { conn } => {
                self.conns.remove(&conn);
                self.tell_every_shard(now_ns, || Input::Disconnected { conn });
            }
            Input::Congested { conn, congested } => self.tell_every_shard(now_ns, || Input::Congested { conn, congested }),
            Input::PeerDown { node } => self.tell_every_shard(now_ns, || Input::PeerDown { node }),
            Input::PeerCongested { node, congested } => self.tell_every_shard(now_ns, || Input::PeerCongested { node, congested }),
            Input::PeerMessage { from_node, payload } => match mesh::shard_of(payload).map(|shard| shard.0 as usize) {
                Ok(shard) if shard < self.shards.len() => self.shards[shard].handle_input(now_ns, input),
                Ok(shard) => {
                    let why = format!("a frame of shard {shard}, and this node has shards = {}", self.shards.len());
                    self.out.push_back(Output::Trace(Trace::PeerFrameRefused { from_node, why }));
                }
                Err(why) => self.out.push_back(Output::Trace(Trace::PeerFrameRefused { from_node, why })),
            },
            Input::WriteDone { token, .. } | Input::ReadDone { token, .. } | Input::TruncateDone { token, .. } => {
                // A token names the shard that asked (`ShardId`).
                if let Some(shard) = self.shards.get_mut(ShardId::of_id(token).0 as usize) {
                    shard.handle_input(now_ns, input);
                }
            }
        }
        self.take_shard_outputs();
    }

    pub fn handle_timeout(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        while let Some(&(at, conn)) = self.hello_deadlines.first() {
            if at > now_ns {
                break;
            }
            self.hello_deadlines.pop_first();
            if self.conns.get(&conn).is_some_and(|session| session.rights.is_none()) {
                let reason = format!("no hello with a known token within hello_timeout_ms ({} ms)", self.config.hello_timeout_ms);
                self.close_for_policy(now_ns, conn, reason);
            }
        }
        while let Some(&(at, conn)) = self.expiries.first() {
            if at > now_ns {
                break;
            }
            self.expiries.pop_first();
            // A later hello may have brought a token that lasts longer: only its own expiry counts.
            let ignored = self.config.test_bug == Some(TestBug::TokenExpiryIgnored);
            if !ignored && self.conns.get(&conn).is_some_and(|session| session.expires_at_ns == Some(at)) {
                self.close_for_policy(now_ns, conn, "the token expired: connect again with a fresh one, or send a hello with it before exp".into());
            }
        }
        for shard in &mut self.shards {
            shard.handle_timeout(now_ns);
        }
        self.take_shard_outputs();
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        let hello = self.hello_deadlines.first().map(|(at, _)| *at);
        let expiry = self.expiries.first().map(|(at, _)| *at);
        self.shards.iter().filter_map(Node::poll_timeout).chain(hello).chain(expiry).min()
    }

    /// Closes `conn` with 1008 (policy) for `reason`; its shards forget it.
    fn close_for_policy(&mut self, now_ns: u64, conn: ConnId, reason: String) {
        self.conns.remove(&conn);
        self.tell_every_shard(now_ns, || Input::Disconnected { conn });
        self.out.push_back(Output::Close { conn, code: CLOSE_POLICY, reason });
    }

    fn tell_every_shard(&mut self, now_ns: u64, input: impl Fn() -> Input<'static>) {
        for shard in &mut self.shards {
            shard.handle_input(now_ns, input());
        }
    }

    /// Moves what the shards asked for behind what this host asked for, in order. A client
    /// a shard closed is gone here and for the other shards too.
    fn take_shard_outputs(&mut self) {
        loop {
            let mut closed: Vec<(usize, ConnId)> = Vec::new();
            for (index, shard) in self.shards.iter_mut().enumerate() {
                while let Some(output) = shard.poll_output() {
                    if let Output::Close { conn, .. } = &output {
                        if self.conns.remove(conn).is_some() {
                            closed.push((index, *conn));
                        }
                    }
                    self.out.push_back(output);
                }
            }
            if closed.is_empty() || self.shards.len() == 1 {
                return;
            }
            for (by, conn) in closed {
                for (index, shard) in self.shards.iter_mut().enumerate() {
                    if index != by {
                        shard.handle_input(self.now_ns, Input::Disconnected { conn });
                    }
                }
            }
        }
    }

    fn send(&mut self, conn: ConnId, frame: String) {
        self.out.push_back(Output::Send { conn, frame });
    }

    fn send_error(&mut self, conn: ConnId, req: Option<&str>, code: ErrorCode, message: &str) {
        self.send_error_retry(conn, req, code, message, None);
    }

    fn send_error_retry(&mut self, conn: ConnId, req: Option<&str>, code: ErrorCode, message: &str, retry_after_ms: Option<u64>) {
        let mut frame = String::with_capacity(64 + message.len());
        protocol::encode_error_retry(&mut frame, req, code, message, retry_after_ms);
        self.errors[code as usize] += 1;
        self.send(conn, frame);
    }

    fn on_connected(&mut self, now_ns: u64, conn: ConnId) {
        let open = (!self.config.requires_identity()).then(|| Rc::new(Rights::full()));
        if open.is_none() {
            self.hello_deadlines.insert((now_ns + self.config.hello_timeout_ms * NS_PER_MS, conn));
        }
        let previous = self.conns.insert(conn, Session { rights: open, expires_at_ns: None, publishes: Bucket::default(), ops: Bucket::default() });
        assert!(previous.is_none(), "connection id {conn} reused while open");
        // The shards first: their clocks move to now, which the welcome's cluster view reads.
        self.tell_every_shard(now_ns, || Input::Connected { conn });
        let welcome = self.welcome();
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
        self.tell_every_shard(now_ns, || Input::Disconnected { conn });
    }

    fn on_frame(&mut self, now_ns: u64, conn: ConnId, text: &str) {
        let Some(rights) = self.conns.get(&conn).map(|session| session.rights.clone()) else { return };
        let authenticated = rights.is_some();
        let op = match protocol::decode(text, self.config.json_depth_max) {
            Ok(op) => op,
            Err(e) => {
                let code = if e.code == ErrorCode::UnknownOp && self.config.test_bug == Some(TestBug::UnknownOpAsBadFrame) { ErrorCode::BadFrame } else { e.code };
                return self.send_error(conn, e.req.as_deref(), code, &e.message);
            }
        };
        if !authenticated && !matches!(op, ClientOp::Hello { .. } | ClientOp::Pub { .. }) {
            return self.send_error(conn, req_of(&op).as_deref(), ErrorCode::Unauthorized, "send hello with a valid token first");
        }
        let unchecked = self.config.test_bug == Some(TestBug::ReadRightsCheckedAtSubOnly) && matches!(op, ClientOp::Pull { .. } | ClientOp::Fetch { .. });
        if let Some(why) = rights.as_deref().filter(|_| !unchecked).and_then(|rights| refused_by(rights, &op)) {
            return self.send_error(conn, req_of(&op).as_deref(), ErrorCode::Forbidden, &why);
        }
        if let Err((setting, wait_ns)) = self.take_rate(now_ns, conn, &op) {
            let retry_after_ms = wait_ns.div_ceil(NS_PER_MS);
            let message = format!("over {setting}: retry in {retry_after_ms} ms");
            let req = req_of(&op).filter(|_| self.config.test_bug != Some(TestBug::RefusalWithoutReq));
            return self.send_error_retry(conn, req.as_deref(), ErrorCode::Overloaded, &message, Some(retry_after_ms));
        }
        match op {
            ClientOp::Hello { token } => self.on_hello(conn, token),
            ClientOp::Ping { req } => {
                let mut frame = String::new();
                protocol::encode_pong(&mut frame, protocol::req_text(&req).as_deref());
                self.send(conn, frame);
            }
            op => {
                let shard = ShardId::of_topic(op.topic().expect("every other op names a topic"), self.config.shards);
                self.shards[shard.0 as usize].on_client_op(now_ns, conn, text, op, authenticated);
            }
        }
    }

    fn on_hello(&mut self, conn: ConnId, token: Option<String>) {
        if !self.config.requires_identity() {
            return;
        }
        let found = match token {
            Some(token) => self.identify(&token),
            None => Err("a hello without a token".to_string()),
        };
        let found = found.or_else(|why| if self.config.test_bug == Some(TestBug::WrongTokenAccepted) { Ok((Rc::new(Rights::full()), None)) } else { Err(why) });
        match found {
            Ok((rights, expires_at_ns)) => {
                if let Some(session) = self.conns.get_mut(&conn) {
                    session.rights = Some(rights);
                    session.expires_at_ns = expires_at_ns;
                }
                if let Some(at) = expires_at_ns {
                    self.expiries.insert((at, conn));
                }
            }
            Err(why) => self.send_error(conn, None, ErrorCode::Unauthorized, &why),
        }
    }

    /// The rights of `token` now, and when they expire (a JWT's `exp`), or why it is refused.
    fn identify(&self, token: &str) -> Result<(Rc<Rights>, Option<u64>), String> {
        if let Some(rights) = self.identities.get(token) {
            return Ok((rights.clone(), None));
        }
        let Some(jwt) = &self.jwt else { return Err("unknown token".into()) };
        let verified = jwt.verify(token, self.now_ns / 1_000_000_000)?;
        Ok((Rc::new(verified.rights), Some(verified.exp_s.saturating_mul(1_000_000_000))))
    }

    /// Takes `op`'s token from its connection's bucket (publishes and other ops apart; `hello`
    /// and `ping` are free, and so are `ack` and `nack`: they settle what the server sent, and
    /// refusing one would only bring redeliveries, more load): the setting and the ns until
    /// one is there, if it is empty.
    fn take_rate(&mut self, now_ns: u64, conn: ConnId, op: &ClientOp) -> Result<(), (&'static str, u64)> {
        let Some(session) = self.conns.get_mut(&conn) else { return Ok(()) };
        match op {
            ClientOp::Hello { .. } | ClientOp::Ping { .. } | ClientOp::Ack { .. } | ClientOp::Nack { .. } => Ok(()),
            ClientOp::Pub { .. } => session.publishes.take(self.config.publish_limit_per_connection(), now_ns).map_err(|wait| ("publish_rate_per_connection", wait)),
            _ => session.ops.take(self.config.op_limit_per_connection(), now_ns).map_err(|wait| ("op_rate_per_connection", wait)),
        }
    }

    /// The rights of `token` at `now_ns`, if it is a configured one or a valid JWT.
    pub fn rights_of(&self, token: &str, now_ns: u64) -> Option<Rc<Rights>> {
        if let Some(rights) = self.identities.get(token) {
            return Some(rights.clone());
        }
        self.jwt.as_ref()?.verify(token, now_ns / 1_000_000_000).ok().map(|verified| Rc::new(verified.rights))
    }

    /// `welcome`: in a cluster, this node, the nodes' URLs, shard 0's view of the cluster and,
    /// with several shards, each shard's leader and term.
    fn welcome(&self) -> String {
        let mut fields: Vec<(&str, Value)> = Vec::new();
        if let Some(view) = self.shards[0].cluster_view() {
            fields.extend([("node", json!(view.node)), ("nodes", json!(view.urls)), ("cluster", view.cluster)]);
            if self.shards.len() > 1 {
                let shards: Vec<Value> =
                    (0u32..).zip(&self.shards).filter_map(|(index, shard)| shard.cluster_view().map(|v| json!({"shard": index, "leader": v.leader, "term": v.term}))).collect();
                fields.push(("shards", json!(shards)));
            }
        }
        let mut frame = String::new();
        protocol::encode_welcome(&mut frame, &self.config.node_name, &fields);
        frame
    }
}

/// Why `rights` do not allow `op`; `None` when they do (or the op names no topic).
fn refused_by(rights: &Rights, op: &ClientOp) -> Option<String> {
    match op {
        ClientOp::Pub { topic, .. } => (!rights.may_publish(topic)).then(|| format!("no right to publish to '{topic}'")),
        ClientOp::Sub { topic, group, .. }
        | ClientOp::Pull { topic, group, .. }
        | ClientOp::Unsub { topic, group, .. }
        | ClientOp::Ack { topic, group, .. }
        | ClientOp::Nack { topic, group, .. } => (!rights.may_read(topic, Some(group))).then(|| format!("no right to read '{topic}' in group '{group}'")),
        ClientOp::Fetch { topic, .. } | ClientOp::Latest { topic, .. } => (!rights.may_read(topic, None)).then(|| format!("no right to read '{topic}'")),
        ClientOp::Hello { .. } | ClientOp::Ping { .. } => None,
    }
}

/// The `req` of an op that has one, as it is echoed.
fn req_of(op: &ClientOp) -> Option<String> {
    match op {
        ClientOp::Pub { req, .. }
        | ClientOp::Sub { req, .. }
        | ClientOp::Pull { req, .. }
        | ClientOp::Fetch { req, .. }
        | ClientOp::Latest { req, .. }
        | ClientOp::Unsub { req, .. }
        | ClientOp::Ping { req } => protocol::req_text(req),
        ClientOp::Ack { .. } | ClientOp::Nack { .. } | ClientOp::Hello { .. } => None,
    }
}
