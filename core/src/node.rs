//! The node state machine: one door in (`handle_input`, `handle_timeout`), one door out
//! (`poll_output`, `poll_timeout`). It never reads a clock, a socket or a file: time is an
//! argument (nanoseconds since the Unix epoch, never going backwards), disk work is requested
//! as outputs and its completion comes back as inputs.

use crate::batch;
use crate::cache::{CacheBudget, ReadCache};
use crate::config::{Config, FsyncPolicy, TestBug};
use crate::group::{key_hash, AckOutcome, Admit, Candidate, ConnId, Group, Released};
use crate::pipeline::{self, check_name, Publish, PublishContext, Stage, GROUP_BYTES_MAX};
use crate::protocol::{self, ClientOp, ErrorCode, Filter, MsgFrame, StartFrom};
use crate::record::{self, MessageRef, NewTopicsRecord, ProducerRecord, RecordRef, SalvagedRecord, TopicRecord};
use crate::recovery::{Damage, RecoveryError};
use crate::topic::{Loc, Lookup, StoredMessage, Topic};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

mod load;

const NS_PER_MS: u64 = 1_000_000;
/// Messages one pump call may look at before it yields to other work.
const PUMP_STEPS_MAX: u32 = 4_096;
const RETENTION_CHECK_NS: u64 = 1_000 * NS_PER_MS;
/// A waiter addressed to nobody (its answer was already given).
const NO_CONN: ConnId = ConnId::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskError {
    /// ENOSPC: publishes get `overloaded` until space returns.
    NoSpace,
    /// Anything else (EIO…): the unsynced data is gone; never retried on the same data.
    Io(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    BinaryFrame,
    TooLarge,
}

#[derive(Debug)]
pub enum Input<'a> {
    Connected {
        conn: ConnId,
    },
    Frame {
        conn: ConnId,
        text: &'a str,
    },
    /// The shell refused a frame before decoding it.
    Rejected {
        conn: ConnId,
        why: Rejection,
    },
    Disconnected {
        conn: ConnId,
    },
    /// The connection's outgoing queue is full (`true`): push it no messages until it has
    /// drained (`false`). Its other members keep receiving; nothing in flight to it moves.
    Congested {
        conn: ConnId,
        congested: bool,
    },
    WriteDone {
        token: u64,
        result: Result<(), DiskError>,
    },
    ReadDone {
        token: u64,
        result: Result<&'a [u8], DiskError>,
    },
    TruncateDone {
        token: u64,
        result: Result<(), DiskError>,
    },
    /// A message from another node of the mesh (the mesh protocol comes with replication).
    PeerMessage {
        from_node: u64,
        payload: &'a [u8],
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOp {
    /// Append `data` at `offset` of `segment` (creating the file and syncing its directory
    /// first when `create`), then fsync it when `sync`. Exactly one is in flight at a time.
    Write {
        token: u64,
        segment: u64,
        offset: u64,
        data: Vec<u8>,
        create: bool,
        sync: bool,
    },
    /// Cut `segment` to `len` bytes and make that durable. Writes wait for it; if it fails,
    /// stale bytes could win over newer copies at recovery, so the node stops (`Output::Stop`).
    Truncate {
        token: u64,
        segment: u64,
        len: u64,
    },
    Delete {
        segment: u64,
    },
    Read {
        token: u64,
        segment: u64,
        offset: u64,
        len: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trace {
    DeadLettered { topic: String, group: String, id: u64 },
    DeadLetterDropped { topic: String, group: String, id: u64, why: &'static str },
    StoreFailed { error: DiskError, publishes_failed: u32 },
    SegmentRolled { segment: u64 },
    SegmentDeleted { segment: u64 },
    UnreadableRecord { topic: String, id: u64, why: String },
    PeerMessageIgnored { from_node: u64, bytes: usize },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Send {
        conn: ConnId,
        frame: String,
    },
    Close {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    Disk(DiskOp),
    Trace(Trace),
    /// A disk error the design cannot recover from: the process must stop now, loudly, and a
    /// restart recovers from what is on disk. The node takes no more input after it.
    Stop {
        why: String,
    },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub published: u64,
    pub deduplicated: u64,
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub dead_lettered: u64,
    pub flushes: u64,
    pub flushed_bytes: u64,
}

/// Memory the node's limits bound, as it stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    pub topic_cache_bytes: u64,
    pub read_cache_bytes: u64,
    pub unwritten_log_bytes: u64,
    pub pending_publishes: u32,
    pub pending_fetches: usize,
}

#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub messages: u64,
    /// The newest segment's torn final batch, cut; its ids are never given out again.
    pub torn_tail: Option<Damage>,
    /// Damaged regions skipped because salvage was asked for.
    pub salvaged: Vec<Damage>,
    /// Damaged regions an earlier start salvaged (recorded in the log): accepted again.
    pub previously_salvaged: Vec<Damage>,
    /// The newest segment cut back to its intact batches (its unused zero-filled space) and
    /// made durable before the log goes on in a new one; none when a torn tail was cut.
    pub truncated: Vec<(u64, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    AckDeadline { topic: usize, group: usize, id: u64 },
    NackDelay { topic: usize, group: usize, id: u64 },
    PullEnd { conn: ConnId, topic: usize, group: usize },
    Pump { topic: usize, group: usize },
    BatchFlush,
    DiskRetry,
    Retention,
}

struct Pull {
    req: Option<String>,
    remaining: u32,
    count: u32,
    deadline: u64,
}

#[derive(Default)]
struct Sub {
    subscribed: bool,
    window: u32,
    in_flight: u32,
    /// Bytes of the messages in flight (see `Config::window_bytes_max`).
    in_flight_bytes: u64,
    pull: Option<Pull>,
    /// More in flight than `window`, for a reason the client gave: a later `sub` with a smaller
    /// window, or a `pull` beside the subscription. Nothing is pushed until acks bring it under.
    over_window: bool,
}

impl Sub {
    fn capacity(&self, window_bytes_max: u64) -> u32 {
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

struct Conn {
    authenticated: bool,
    /// The shell says its outgoing queue is full: no messages are pushed to it meanwhile.
    congested: bool,
    subs: BTreeMap<(usize, usize), Sub>,
}

enum Waiter {
    Puback { conn: ConnId, req: Option<String>, topic: usize, id: u64, producer: Option<(String, u64)> },
    Join { conn: ConnId, req: Option<String>, topic: usize, group: usize, window: u32, pull: Option<(u32, u64)> },
    DeadLetter { topic: usize, group: usize, id: u64 },
}

struct Batch {
    segment: u64,
    offset: u64,
    data: Vec<u8>,
    len: u64,
    create: bool,
    waiters: Vec<Waiter>,
    /// Per topic, the next id once this batch is durable.
    marks: BTreeMap<usize, u64>,
    started_at: u64,
    token: u64,
    /// Written with an fsync: once done, everything in its segment up to its end is durable.
    sync: bool,
}

impl Batch {
    fn new(segment: u64, offset: u64, create: bool) -> Batch {
        Batch { segment, offset, data: Vec::new(), len: 0, create, waiters: Vec::new(), marks: BTreeMap::new(), started_at: 0, token: 0, sync: false }
    }
}

struct SegmentInfo {
    id: u64,
    bytes: u64,
    last_write_ms: u64,
    /// Its first batch (the snapshot of topics' next ids, groups and producers) is durable:
    /// only then may the segments before it be deleted (a power cut may undo a mere write).
    snapshot_durable: bool,
}

struct Log {
    segment: u64,
    segment_len: u64,
    open: Batch,
    queued: VecDeque<Batch>,
    flushing: Option<Batch>,
    segments: VecDeque<SegmentInfo>,
    /// The current segment has bytes written without an fsync after them.
    segment_unsynced: bool,
    /// Where the snapshot recording a torn tail's cut waits to be written (see
    /// `continue_segment_after`): until it is, it must begin the log's next write there.
    cut_pending: Option<(u64, u64)>,
}

struct SeenSeq {
    topic: usize,
    id: u64,
    durable: bool,
}

struct Producer {
    seqs: BTreeMap<u64, SeenSeq>,
    last_use: u64,
}

/// A fetch waiting for disk reads. It keeps the messages it has gathered itself: a range
/// larger than the read cache would otherwise evict its own earlier reads and never finish.
struct PendingFetch {
    conn: ConnId,
    req: Option<String>,
    topic: usize,
    /// The stored ids gathered, ascending, each with its message: `None` while its read is
    /// outstanding, `Some(None)` once the record turned out unreadable.
    slots: Vec<(u64, Option<Option<Rc<StoredMessage>>>)>,
    waiting: usize,
    /// The first id not gathered and the end of the range: when every gathered record turns
    /// out unreadable, the fetch goes on from `next` instead of answering empty.
    next: u64,
    to: u64,
}

pub struct Node {
    config: Config,
    stages: Vec<Box<dyn Stage>>,
    topics: Vec<Topic>,
    topic_index: BTreeMap<String, usize>,
    conns: BTreeMap<ConnId, Conn>,
    producers: BTreeMap<String, Producer>,
    producers_by_use: BTreeSet<(u64, String)>,
    use_counter: u64,
    log: Log,
    read_cache: ReadCache,
    cache_budget: CacheBudget,
    reads: BTreeMap<u64, (usize, u64)>,
    reading: BTreeSet<(usize, u64)>,
    fetches: Vec<PendingFetch>,
    timers: BTreeSet<(u64, Timer)>,
    dirty_groups: BTreeSet<(usize, usize)>,
    groups_dirty_since: u64,
    out: VecDeque<Output>,
    next_token: u64,
    pending_publishes: u32,
    disk_full_until: Option<u64>,
    /// Truncations not yet done: writes wait for them.
    truncating: BTreeSet<u64>,
    /// An unrecoverable disk error was reported: every input is ignored from then on.
    stopped: bool,
    /// First id of a topic created from now on: above any id a salvaged region may have held.
    new_topic_first_id: u64,
    /// Salvaged regions of segments still kept: every segment's snapshot repeats them.
    salvaged_regions: Vec<SalvagedRecord>,
    now: u64,
    pub stats: Stats,
}

impl Node {
    /// A node over an empty data directory.
    pub fn new(config: Config, now: u64) -> Node {
        Node::recover(config, &[], now).expect("an empty log has no damage").0
    }

    /// Rebuilds the node from its segments (ascending id, each the file's full bytes).
    /// Refuses damaged acknowledged data unless `config.salvage`. The first outputs cut the
    /// newest segment back to its intact batches; no write starts before they are done.
    pub fn recover(config: Config, segments: &[(u64, &[u8])], now: u64) -> Result<(Node, RecoveryReport), RecoveryError> {
        config.validate().unwrap_or_else(|e| panic!("invalid config reached the core: {e}"));
        let mut node = Node {
            stages: pipeline::default_stages(!config.tokens.is_empty()),
            config,
            topics: Vec::new(),
            topic_index: BTreeMap::new(),
            conns: BTreeMap::new(),
            producers: BTreeMap::new(),
            producers_by_use: BTreeSet::new(),
            use_counter: 0,
            log: Log {
                segment: 0,
                segment_len: 0,
                open: Batch::new(0, 0, true),
                queued: VecDeque::new(),
                flushing: None,
                segments: VecDeque::new(),
                segment_unsynced: false,
                cut_pending: None,
            },
            read_cache: ReadCache::default(),
            cache_budget: CacheBudget::default(),
            reads: BTreeMap::new(),
            reading: BTreeSet::new(),
            fetches: Vec::new(),
            timers: BTreeSet::new(),
            dirty_groups: BTreeSet::new(),
            groups_dirty_since: 0,
            out: VecDeque::new(),
            next_token: 1,
            pending_publishes: 0,
            disk_full_until: None,
            truncating: BTreeSet::new(),
            stopped: false,
            new_topic_first_id: 1,
            salvaged_regions: Vec::new(),
            now,
            stats: Stats::default(),
        };
        let report = node.load_segments(segments)?;
        for &(segment, len) in &report.truncated {
            node.truncate(segment, len);
        }
        match &report.torn_tail {
            Some(torn) => node.continue_segment_after(torn.segment, torn.region.end),
            None => node.start_segment(segments.last().map_or(1, |(id, _)| id + 1)),
        }
        node.timers.insert((now + RETENTION_CHECK_NS, Timer::Retention));
        node.maybe_flush();
        Ok((node, report))
    }

    // ---- getters

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Next id a topic will assign, if the topic exists.
    pub fn topic_next_id(&self, topic: &str) -> Option<u64> {
        self.topic_index.get(topic).map(|t| self.topics[*t].next_id)
    }

    /// Messages of `group` handed out or held and not yet acked.
    pub fn group_outstanding(&self, topic: &str, group: &str) -> Option<usize> {
        let t = *self.topic_index.get(topic)?;
        let g = *self.topics[t].group_index.get(group)?;
        Some(self.topics[t].groups[g].outstanding_len())
    }

    /// The first id a group considers (set when it was created).
    pub fn group_start_id(&self, topic: &str, group: &str) -> Option<u64> {
        let t = *self.topic_index.get(topic)?;
        let g = *self.topics[t].group_index.get(group)?;
        Some(self.topics[t].groups[g].start_id)
    }

    /// Messages in flight to `conn` for (topic, group), counted from the group's own entries.
    pub fn in_flight_to(&self, conn: ConnId, topic: &str, group: &str) -> Option<usize> {
        let t = *self.topic_index.get(topic)?;
        let g = *self.topics[t].group_index.get(group)?;
        Some(self.topics[t].groups[g].in_flight_to(conn))
    }

    /// What the node holds in memory that its limits bound.
    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            topic_cache_bytes: self.cache_budget.bytes(),
            read_cache_bytes: self.read_cache.bytes(),
            unwritten_log_bytes: self.log_bytes_unwritten(),
            pending_publishes: self.pending_publishes,
            pending_fetches: self.fetches.len(),
        }
    }

    /// Bytes of the log not yet written: the open batch, batches queued behind the write in
    /// flight, and that write.
    fn log_bytes_unwritten(&self) -> u64 {
        let queued: u64 = self.log.queued.iter().map(|b| b.data.len() as u64).sum();
        self.log.open.data.len() as u64 + queued + self.log.flushing.as_ref().map_or(0, |b| b.len)
    }

    /// Asserts the cross-structure invariants (tests and the simulator call it).
    pub fn check_invariants(&self) {
        for (t, topic) in self.topics.iter().enumerate() {
            assert!(topic.durable_next_id <= topic.next_id);
            for (g, group) in topic.groups.iter().enumerate() {
                group.check_invariants();
                for (conn_id, conn) in &self.conns {
                    if let Some(sub) = conn.subs.get(&(t, g)) {
                        assert_eq!(sub.in_flight as usize, group.in_flight_to(*conn_id), "in-flight count of conn {conn_id}");
                        assert_eq!(sub.in_flight_bytes, group.in_flight_bytes_to(*conn_id), "in-flight bytes of conn {conn_id}");
                        if sub.subscribed && sub.pull.is_none() {
                            assert!(sub.in_flight <= sub.window || sub.over_window, "window exceeded on conn {conn_id}");
                        }
                    }
                }
            }
        }
    }

    // ---- the two doors

    pub fn handle_input(&mut self, now: u64, input: Input<'_>) {
        self.advance_clock(now);
        if self.stopped {
            return;
        }
        match input {
            Input::Connected { conn } => self.on_connected(conn),
            Input::Frame { conn, text } => self.on_frame(conn, text),
            Input::Rejected { conn, why } => self.on_rejected(conn, why),
            Input::Disconnected { conn } => self.on_disconnected(conn),
            Input::Congested { conn, congested } => self.on_congested(conn, congested),
            Input::WriteDone { token, result } => self.on_write_done(token, result),
            Input::ReadDone { token, result } => self.on_read_done(token, result),
            Input::TruncateDone { token, result } => self.on_truncate_done(token, result),
            Input::PeerMessage { from_node, payload } => {
                self.out.push_back(Output::Trace(Trace::PeerMessageIgnored { from_node, bytes: payload.len() }));
            }
        }
    }

    pub fn handle_timeout(&mut self, now: u64) {
        self.advance_clock(now);
        if self.stopped {
            return;
        }
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.on_timer(at, timer);
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        if self.stopped {
            return None;
        }
        self.timers.first().map(|(at, _)| *at)
    }

    /// True once the node has asked to stop (`Output::Stop`); it takes no more input.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    fn advance_clock(&mut self, now: u64) {
        debug_assert!(now >= self.now, "time went backwards: {} -> {now}", self.now);
        self.now = self.now.max(now);
    }

    // ---- connections and frames

    fn send(&mut self, conn: ConnId, frame: String) {
        self.out.push_back(Output::Send { conn, frame });
    }

    fn send_error(&mut self, conn: ConnId, req: Option<&str>, code: ErrorCode, message: &str) {
        let mut frame = String::with_capacity(64 + message.len());
        protocol::encode_error(&mut frame, req, code, message);
        self.send(conn, frame);
    }

    fn on_connected(&mut self, conn: ConnId) {
        let authenticated = self.config.tokens.is_empty();
        let previous = self.conns.insert(conn, Conn { authenticated, congested: false, subs: BTreeMap::new() });
        assert!(previous.is_none(), "connection id {conn} reused while open");
        let mut frame = String::new();
        protocol::encode_welcome(&mut frame, &self.config.node_name);
        self.send(conn, frame);
    }

    fn on_rejected(&mut self, conn: ConnId, why: Rejection) {
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
        self.on_disconnected(conn);
    }

    fn on_frame(&mut self, conn: ConnId, text: &str) {
        let Some(state) = self.conns.get(&conn) else { return };
        let authenticated = state.authenticated;
        let op = match protocol::decode(text, self.config.json_depth_max) {
            Ok(op) => op,
            Err(e) => {
                let code = if e.code == ErrorCode::UnknownOp && self.config.test_bug == Some(TestBug::UnknownOpAsBadFrame) { ErrorCode::BadFrame } else { e.code };
                return self.send_error(conn, e.req.as_deref(), code, &e.message);
            }
        };
        let req_of = |req: &protocol::Req| req.as_ref().map(|r| r.get().to_string());
        if !authenticated && !matches!(op, ClientOp::Hello { .. } | ClientOp::Pub { .. }) {
            let req = match &op {
                ClientOp::Sub { req, .. } | ClientOp::Pull { req, .. } | ClientOp::Fetch { req, .. } | ClientOp::Unsub { req, .. } | ClientOp::Ping { req } => req_of(req),
                _ => None,
            };
            return self.send_error(conn, req.as_deref(), ErrorCode::Unauthorized, "send hello with a valid token first");
        }
        match op {
            ClientOp::Hello { token } => self.on_hello(conn, token),
            ClientOp::Pub { req, topic, body, key, producer, seq } => {
                let req = req_of(&req);
                let publish = Publish { topic, key, producer, seq };
                self.on_publish(conn, req, publish, body.get(), authenticated);
            }
            ClientOp::Sub { req, topic, group, from, window, filter } => self.on_sub(conn, req_of(&req), &topic, &group, from, window, filter),
            ClientOp::Ack { topic, group, ids } => self.on_ack(conn, &topic, &group, &ids, None),
            ClientOp::Nack { topic, group, ids, delay_ms } => self.on_ack(conn, &topic, &group, &ids, Some(delay_ms)),
            ClientOp::Pull { req, topic, group, max, wait_ms } => self.on_pull(conn, req_of(&req), &topic, &group, max, wait_ms),
            ClientOp::Fetch { req, topic, from, to } => self.on_fetch(conn, req_of(&req), &topic, from, to),
            ClientOp::Unsub { req, topic, group } => self.on_unsub(conn, req_of(&req), &topic, &group),
            ClientOp::Ping { req } => {
                let mut frame = String::new();
                protocol::encode_pong(&mut frame, req_of(&req).as_deref());
                self.send(conn, frame);
            }
        }
    }

    fn on_hello(&mut self, conn: ConnId, token: Option<String>) {
        if self.config.tokens.is_empty() {
            return;
        }
        let valid = token.is_some_and(|t| self.config.tokens.contains(&t)) || self.config.test_bug == Some(TestBug::WrongTokenAccepted);
        if valid {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.authenticated = true;
            }
        } else {
            self.send_error(conn, None, ErrorCode::Unauthorized, "unknown token");
        }
    }

    /// While congested a connection gets no messages; once it drains, its groups push again.
    fn on_congested(&mut self, conn: ConnId, congested: bool) {
        let Some(state) = self.conns.get_mut(&conn) else { return };
        if state.congested == congested {
            return;
        }
        state.congested = congested;
        if !congested {
            let groups: Vec<(usize, usize)> = state.subs.keys().copied().collect();
            for (t, g) in groups {
                self.pump(t, g);
            }
        }
    }

    fn on_disconnected(&mut self, conn: ConnId) {
        let Some(state) = self.conns.remove(&conn) else { return };
        for (t, g) in state.subs.keys().copied() {
            self.release_member(conn, t, g);
        }
        self.fetches.retain(|f| f.conn != conn);
    }

    /// Takes `conn` out of the group; what it had in flight goes to the other members.
    fn release_member(&mut self, conn: ConnId, t: usize, g: usize) {
        let group = &mut self.topics[t].groups[g];
        group.members.retain(|m| *m != conn);
        for (id, deadline) in group.release_conn(conn) {
            self.timers.remove(&(deadline, Timer::AckDeadline { topic: t, group: g, id }));
        }
        self.pump(t, g);
    }

    // ---- publish

    fn on_publish(&mut self, conn: ConnId, req: Option<String>, mut publish: Publish, body: &str, authenticated: bool) {
        let context = PublishContext { authenticated };
        if let Err((code, message)) = pipeline::run(&self.stages, &mut publish, &context) {
            return self.send_error(conn, req.as_deref(), code, &message);
        }
        if let Some(until) = self.disk_full_until {
            if self.now < until {
                return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, "disk full: publishes resume when space returns");
            }
        }
        if self.pending_publishes >= self.config.pending_publishes_max {
            let message = format!("{} publishes wait for the disk (pending_publishes_max)", self.pending_publishes);
            return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, &message);
        }
        let pending_bytes = self.log_bytes_unwritten();
        if pending_bytes + body.len() as u64 > self.config.pending_publish_bytes_max {
            let message = format!("{pending_bytes} bytes wait for the disk (pending_publish_bytes_max)");
            return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, &message);
        }
        if let (Some(producer), Some(seq)) = (&publish.producer, publish.seq) {
            if self.answer_duplicate(conn, &req, producer, seq) {
                return;
            }
        }
        let t = match self.topic_for(&publish.topic) {
            Ok(t) => t,
            Err(message) => return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, &message),
        };
        let id = self.append_message(t, publish.key.as_deref(), body, publish.producer.as_deref(), publish.seq.unwrap_or(0));
        let producer = publish.producer.zip(publish.seq);
        if let Some((name, seq)) = &producer {
            self.remember_seq(name, *seq, SeenSeq { topic: t, id, durable: false });
        }
        self.stats.published += 1;
        self.pending_publishes += 1;
        let conn = if self.config.test_bug == Some(TestBug::PubackBeforeDurable) {
            let mut frame = String::new();
            protocol::encode_puback(&mut frame, req.as_deref(), &self.topics[t].name, id);
            self.send(conn, frame);
            NO_CONN
        } else {
            conn
        };
        self.log.open.waiters.push(Waiter::Puback { conn, req, topic: t, id, producer });
        self.maybe_flush();
    }

    /// Answers a repeated (producer, seq); false when it is new.
    fn answer_duplicate(&mut self, conn: ConnId, req: &Option<String>, producer: &str, seq: u64) -> bool {
        if self.config.test_bug == Some(TestBug::IdempotenceForgotten) {
            return false;
        }
        let Some(seen) = self.producers.get(producer).and_then(|p| p.seqs.get(&seq)) else { return false };
        let (t, id, durable) = (seen.topic, seen.id, seen.durable);
        self.stats.deduplicated += 1;
        if durable || self.config.test_bug == Some(TestBug::DuplicateAnsweredEarly) {
            let mut frame = String::new();
            protocol::encode_puback(&mut frame, req.as_deref(), &self.topics[t].name, id);
            self.send(conn, frame);
        } else {
            // The original is still on its way to disk; answer when everything before is durable.
            self.pending_publishes += 1;
            self.log.open.waiters.push(Waiter::Puback { conn, req: req.clone(), topic: t, id, producer: None });
            self.maybe_flush();
        }
        true
    }

    fn remember_seq(&mut self, producer: &str, seq: u64, seen: SeenSeq) {
        self.use_counter += 1;
        let use_now = self.use_counter;
        let entry = self.producers.entry(producer.to_string()).or_insert_with(|| Producer { seqs: BTreeMap::new(), last_use: 0 });
        self.producers_by_use.remove(&(entry.last_use, producer.to_string()));
        entry.last_use = use_now;
        entry.seqs.insert(seq, seen);
        while entry.seqs.len() > self.config.producer_seqs_max as usize {
            entry.seqs.pop_first();
        }
        self.producers_by_use.insert((use_now, producer.to_string()));
        while self.producers.len() > self.config.producers_max as usize {
            let Some((_, oldest)) = self.producers_by_use.pop_first() else { break };
            self.producers.remove(&oldest);
        }
    }

    fn topic_for(&mut self, name: &str) -> Result<usize, String> {
        if let Some(t) = self.topic_index.get(name) {
            return Ok(*t);
        }
        if self.topics.len() >= self.config.topics_max as usize {
            return Err(format!("topic limit reached (topics_max = {})", self.config.topics_max));
        }
        let t = self.topics.len();
        self.topics.push(Topic::new(name.to_string(), self.new_topic_first_id));
        self.topic_index.insert(name.to_string(), t);
        Ok(t)
    }

    /// Assigns the next id of topic `t` and appends the message to the open batch.
    fn append_message(&mut self, t: usize, key: Option<&str>, body: &str, producer: Option<&str>, seq: u64) -> u64 {
        let ts_ms = self.now / NS_PER_MS;
        let topic = &self.topics[t];
        let id = topic.next_id;
        let message = MessageRef { id, ts_ms, topic: &topic.name, key, producer, seq, body };
        let size = record::message_record_bytes(&message) as u64;
        let framed = size + batch::OVERHEAD_BYTES as u64;
        if self.log.segment_len > 0 && self.log.segment_len + framed > self.config.segment_bytes_max {
            self.roll_segment();
        }
        self.open_batch_data();
        let topic = &mut self.topics[t];
        let message = MessageRef { id, ts_ms, topic: &topic.name, key, producer, seq, body };
        let offset = self.log.segment_len;
        let written = record::encode_message(&mut self.log.open.data, &message) as u64;
        debug_assert_eq!(written, size);
        self.log.segment_len += written;
        topic.next_id += 1;
        topic.index_push(id, Loc { segment: self.log.segment, offset, len: written as u32 });
        let stored = StoredMessage { id, ts_ms, key: key.map(Into::into), body: body.into() };
        let (topic_max, total_max) = (self.config.topic_cache_bytes, self.config.cache_bytes_total);
        self.cache_budget.push(&mut self.topics, t, Rc::new(stored), topic_max, total_max);
        self.log.open.marks.insert(t, id + 1);
        id
    }

    // ---- groups: sub, pull, ack, unsub

    fn group_of(&self, topic: &str, group: &str) -> Result<(usize, usize), (ErrorCode, String)> {
        let Some(&t) = self.topic_index.get(topic) else { return Err((ErrorCode::NoSuchTopic, format!("no topic '{topic}'"))) };
        let Some(&g) = self.topics[t].group_index.get(group) else {
            return Err((ErrorCode::NotSubscribed, format!("no group '{group}' on topic '{topic}'")));
        };
        Ok((t, g))
    }

    #[allow(clippy::too_many_arguments)]
    fn on_sub(&mut self, conn: ConnId, req: Option<String>, topic: &str, group: &str, from: StartFrom, window: Option<u32>, filter: Option<Filter>) {
        let window = window.unwrap_or(self.config.window_default);
        if window == 0 || window > self.config.window_max {
            let message = format!("window must be 1..={} (window_max)", self.config.window_max);
            return self.send_error(conn, req.as_deref(), ErrorCode::BadFrame, &message);
        }
        match self.join_group(topic, group, from, filter) {
            Ok((t, g)) => {
                self.join_when_durable(Waiter::Join { conn, req, topic: t, group: g, window, pull: None });
            }
            Err((code, message)) => self.send_error(conn, req.as_deref(), code, &message),
        }
    }

    /// Finds or creates the group. A new group's record joins the open batch, so members are
    /// admitted only once the group is durable (a restart must not move it to "latest").
    fn join_group(&mut self, topic: &str, group: &str, from: StartFrom, filter: Option<Filter>) -> Result<(usize, usize), (ErrorCode, String)> {
        check_name("topic", topic, pipeline::TOPIC_BYTES_MAX + 4).map_err(|m| (ErrorCode::BadFrame, m))?;
        check_name("group", group, GROUP_BYTES_MAX).map_err(|m| (ErrorCode::BadFrame, m))?;
        let t = self.topic_for(topic).map_err(|m| (ErrorCode::Overloaded, m))?;
        if let Some(&g) = self.topics[t].group_index.get(group) {
            if self.topics[t].groups[g].filter != filter {
                return Err((ErrorCode::Conflict, format!("group '{group}' exists with a different filter")));
            }
            return Ok((t, g));
        }
        let topic_state = &mut self.topics[t];
        if topic_state.groups.len() >= self.config.groups_per_topic_max as usize {
            return Err((ErrorCode::Overloaded, format!("group limit reached (groups_per_topic_max = {})", self.config.groups_per_topic_max)));
        }
        let start_id = match from {
            StartFrom::Latest => topic_state.next_id,
            StartFrom::Earliest => topic_state.first_id(),
            StartFrom::Id(id) => id.max(topic_state.first_id()).max(1),
        };
        let ack_timeout_ns = self.config.ack_timeout_ms_for(group) * NS_PER_MS;
        let g = topic_state.groups.len();
        topic_state.groups.push(Group::new(group.to_string(), filter, start_id, ack_timeout_ns, self.config.max_attempts_for(group)));
        topic_state.group_index.insert(group.to_string(), g);
        self.mark_group_dirty(t, g);
        Ok((t, g))
    }

    /// Admits a member at once into a group already on disk; a new group's members wait
    /// behind the open batch, which carries the group's first record.
    fn join_when_durable(&mut self, join: Waiter) {
        let Waiter::Join { conn, req, topic, group, window, pull } = join else { unreachable!("only joins wait for their group") };
        if self.topics[topic].groups[group].durable {
            return self.admit_member(conn, req, topic, group, window, pull);
        }
        self.log.open.waiters.push(Waiter::Join { conn, req, topic, group, window, pull });
        self.maybe_flush();
    }

    #[allow(clippy::too_many_arguments)]
    fn admit_member(&mut self, conn: ConnId, req: Option<String>, t: usize, g: usize, window: u32, pull: Option<(u32, u64)>) {
        let Some(state) = self.conns.get_mut(&conn) else { return };
        let sub = state.subs.entry((t, g)).or_default();
        let mut frame = String::new();
        match pull {
            None => {
                sub.subscribed = true;
                sub.window = window;
                sub.over_window = sub.in_flight > window;
                let topic = &self.topics[t];
                protocol::encode_suback(&mut frame, req.as_deref(), &topic.name, &topic.groups[g].name);
            }
            Some((max, wait_ns)) => {
                if let Some(old) = sub.pull.take() {
                    self.timers.remove(&(old.deadline, Timer::PullEnd { conn, topic: t, group: g }));
                    protocol::encode_pulled(&mut frame, old.req.as_deref(), old.count);
                }
                let deadline = self.now + wait_ns;
                sub.pull = Some(Pull { req, remaining: max, count: 0, deadline });
                self.timers.insert((deadline, Timer::PullEnd { conn, topic: t, group: g }));
            }
        }
        let group = &mut self.topics[t].groups[g];
        if !group.members.contains(&conn) {
            group.members.push(conn);
        }
        if !frame.is_empty() {
            self.send(conn, frame);
        }
        self.pump(t, g);
    }

    fn on_pull(&mut self, conn: ConnId, req: Option<String>, topic: &str, group: &str, max: u32, wait_ms: u64) {
        if max == 0 || max > self.config.pull_max || wait_ms > self.config.pull_wait_ms_max {
            let message = format!("pull needs 1 <= max <= {} and wait_ms <= {}", self.config.pull_max, self.config.pull_wait_ms_max);
            return self.send_error(conn, req.as_deref(), ErrorCode::BadFrame, &message);
        }
        let joined = match self.group_of(topic, group) {
            Ok(tg) => Ok(tg),
            Err(_) => self.join_group(topic, group, StartFrom::Latest, None),
        };
        match joined {
            Ok((t, g)) => {
                // Like `sub`, a pull is admitted only behind the open batch: a group that
                // exists in memory may not be durable yet (its record may have hit a full
                // disk), and a restart must not forget a group that has delivered.
                let pull = Some((max, wait_ms * NS_PER_MS));
                let window = self.config.window_default;
                self.join_when_durable(Waiter::Join { conn, req, topic: t, group: g, window, pull });
            }
            Err((code, message)) => self.send_error(conn, req.as_deref(), code, &message),
        }
    }

    fn finish_pull(&mut self, conn: ConnId, t: usize, g: usize) {
        let Some(sub) = self.conns.get_mut(&conn).and_then(|c| c.subs.get_mut(&(t, g))) else { return };
        let Some(pull) = sub.pull.take() else { return };
        self.timers.remove(&(pull.deadline, Timer::PullEnd { conn, topic: t, group: g }));
        if !sub.subscribed {
            self.topics[t].groups[g].members.retain(|m| *m != conn);
        }
        let mut frame = String::new();
        protocol::encode_pulled(&mut frame, pull.req.as_deref(), pull.count);
        self.send(conn, frame);
    }

    fn on_unsub(&mut self, conn: ConnId, req: Option<String>, topic: &str, group: &str) {
        let (t, g) = match self.group_of(topic, group) {
            Ok(tg) => tg,
            Err((code, message)) => return self.send_error(conn, req.as_deref(), code, &message),
        };
        let Some(sub) = self.conns.get_mut(&conn).and_then(|c| c.subs.remove(&(t, g))) else {
            return self.send_error(conn, req.as_deref(), ErrorCode::NotSubscribed, "this connection is not in that group");
        };
        if let Some(pull) = sub.pull {
            self.timers.remove(&(pull.deadline, Timer::PullEnd { conn, topic: t, group: g }));
        }
        self.release_member(conn, t, g);
    }

    /// ack (`nack_delay_ms` None) or nack.
    fn on_ack(&mut self, conn: ConnId, topic: &str, group: &str, ids: &[u64], nack_delay_ms: Option<u64>) {
        let (t, g) = match self.group_of(topic, group) {
            Ok(tg) => tg,
            Err((code, message)) => return self.send_error(conn, None, code, &message),
        };
        let mut unknown = Vec::new();
        for &id in ids {
            let known = match nack_delay_ms {
                None => self.ack_one(t, g, id),
                Some(delay_ms) => self.nack_one(conn, t, g, id, delay_ms.min(self.config.nack_delay_ms_max)),
            };
            if !known {
                unknown.push(id);
            }
        }
        if !unknown.is_empty() {
            unknown.truncate(16);
            let message = format!("ids never delivered to group '{group}': {unknown:?}");
            self.send_error(conn, None, ErrorCode::BadFrame, &message);
        }
        self.pump(t, g);
    }

    fn ack_one(&mut self, t: usize, g: usize, id: u64) -> bool {
        match self.topics[t].groups[g].ack(id) {
            AckOutcome::Acked { released, delay_until } => {
                if let Some(Released { conn, deadline, bytes }) = released {
                    self.timers.remove(&(deadline, Timer::AckDeadline { topic: t, group: g, id }));
                    self.release_in_flight(conn, t, g, bytes);
                }
                if let Some(until) = delay_until {
                    self.timers.remove(&(until, Timer::NackDelay { topic: t, group: g, id }));
                }
                self.stats.acked += 1;
                self.mark_group_dirty(t, g);
                self.maybe_flush();
                true
            }
            AckOutcome::Ignored => true,
            AckOutcome::Unknown => false,
        }
    }

    fn nack_one(&mut self, conn: ConnId, t: usize, g: usize, id: u64, delay_ms: u64) -> bool {
        let until = (delay_ms > 0).then(|| self.now + delay_ms * NS_PER_MS);
        let group = &mut self.topics[t].groups[g];
        if id >= group.cursor() {
            return false;
        }
        if let Some(Released { conn, deadline, bytes }) = group.nack(id, until, conn) {
            self.timers.remove(&(deadline, Timer::AckDeadline { topic: t, group: g, id }));
            self.release_in_flight(conn, t, g, bytes);
            if let Some(until) = until {
                self.timers.insert((until, Timer::NackDelay { topic: t, group: g, id }));
            }
        }
        true
    }

    /// One message (of `bytes`) in flight to `conn` is no longer: its window has room again.
    fn release_in_flight(&mut self, conn: ConnId, t: usize, g: usize, bytes: u32) {
        let Some(state) = self.conns.get_mut(&conn) else { return };
        let Some(sub) = state.subs.get_mut(&(t, g)) else { return };
        sub.in_flight -= 1;
        sub.in_flight_bytes -= bytes as u64;
        sub.over_window &= sub.in_flight > sub.window;
        if !sub.subscribed && sub.pull.is_none() && sub.in_flight == 0 {
            state.subs.remove(&(t, g));
        }
    }

    // ---- delivery

    fn pick_member(&mut self, t: usize, g: usize) -> Option<ConnId> {
        let group = &mut self.topics[t].groups[g];
        let count = group.members.len();
        for step in 0..count {
            let at = (group.next_member + step) % count;
            let conn = group.members[at];
            let window_bytes_max = self.config.window_bytes_max;
            let sub = self.conns.get(&conn).filter(|c| !c.congested).and_then(|c| c.subs.get(&(t, g)));
            let extra = sub.is_some_and(|s| s.subscribed && s.pull.is_none() && self.config.test_bug == Some(TestBug::WindowOneTooMany));
            let capacity = sub.map_or(0, |sub| sub.capacity(window_bytes_max)) + u32::from(extra);
            if capacity > 0 {
                group.next_member = (at + 1) % count;
                return Some(conn);
            }
        }
        None
    }

    /// Delivers what group `g` of topic `t` can deliver now.
    fn pump(&mut self, t: usize, g: usize) {
        for _ in 0..PUMP_STEPS_MAX {
            if self.topics[t].groups[g].members.is_empty() {
                return;
            }
            let topic = &self.topics[t];
            let group = &topic.groups[g];
            let candidate = group.next_candidate(topic.durable_next_id, self.config.group_outstanding_max as usize);
            let id = match candidate {
                Candidate::Nothing => return,
                Candidate::Ready { id, .. } | Candidate::Fresh { id } => id,
            };
            let Some(conn) = self.pick_member(t, g) else { return };
            let message = match self.topics[t].lookup(id, &self.read_cache, t) {
                Lookup::Found(message) => message,
                Lookup::OnDisk(loc) => return self.request_read(t, id, loc),
                Lookup::Gone => {
                    let first_id = self.topics[t].first_id();
                    match candidate {
                        Candidate::Fresh { .. } => self.topics[t].groups[g].skip_missing(first_id),
                        _ => {
                            self.ack_one(t, g, id);
                        }
                    }
                    continue;
                }
            };
            let group = &mut self.topics[t].groups[g];
            match candidate {
                Candidate::Fresh { id } => {
                    let passes = group.passes(message.key.as_deref(), &message.body) || self.config.test_bug == Some(TestBug::FilterIgnored);
                    if group.admit_fresh(id, passes, message.key.as_deref().map(key_hash)) != Admit::Deliverable {
                        continue;
                    }
                }
                Candidate::Ready { attempts, .. } if attempts >= group.max_attempts + u32::from(self.config.test_bug == Some(TestBug::DeadLetterOneAttemptLate)) => {
                    self.dead_letter(t, g, id, &message);
                    continue;
                }
                _ => {}
            }
            self.dispatch(t, g, id, conn, &message);
        }
        self.timers.insert((self.now, Timer::Pump { topic: t, group: g }));
    }

    fn dispatch(&mut self, t: usize, g: usize, id: u64, conn: ConnId, message: &StoredMessage) {
        let topic = &mut self.topics[t];
        let group = &mut topic.groups[g];
        let deadline = self.now + group.ack_timeout_ns;
        let bytes = (message.body.len() + message.key.as_deref().map_or(0, str::len)) as u32;
        let (attempt, prev) = group.dispatch(id, conn, deadline, bytes);
        let prev = if self.config.test_bug == Some(TestBug::PrevOffByOne) && id % 7 == 3 && prev > 0 { prev + 1 } else { prev };
        self.timers.insert((deadline, Timer::AckDeadline { topic: t, group: g, id }));
        let mut frame = String::with_capacity(96 + message.body.len());
        let msg = MsgFrame { topic: &topic.name, group: &group.name, id, prev, key: message.key.as_deref(), body: &message.body, attempt, ts_ms: message.ts_ms };
        protocol::encode_msg(&mut frame, &msg);
        self.send(conn, frame);
        self.stats.delivered += 1;
        if attempt > 1 {
            self.stats.redelivered += 1;
        }
        let sub = self.conns.get_mut(&conn).and_then(|c| c.subs.get_mut(&(t, g))).expect("picked member has a sub");
        sub.in_flight += 1;
        sub.in_flight_bytes += bytes as u64;
        sub.over_window |= sub.pull.is_some() && sub.subscribed && sub.in_flight > sub.window;
        let pull_done = match &mut sub.pull {
            Some(pull) => {
                pull.remaining -= 1;
                pull.count += 1;
                pull.remaining == 0
            }
            None => false,
        };
        if pull_done {
            self.finish_pull(conn, t, g);
        }
    }

    fn dead_letter(&mut self, t: usize, g: usize, id: u64, message: &StoredMessage) {
        self.topics[t].groups[g].start_dead_letter(id);
        let topic = &self.topics[t];
        let (topic_name, group_name) = (topic.name.clone(), topic.groups[g].name.clone());
        let dlq = if topic.is_dead_letter() {
            Err("dead-letter topics have no dead-letter topic")
        } else {
            self.topic_for(&format!("{topic_name}.dlq")).map_err(|_| "topic limit reached")
        };
        let dlq = match dlq {
            Ok(dlq) => dlq,
            Err(why) => {
                self.out.push_back(Output::Trace(Trace::DeadLetterDropped { topic: topic_name, group: group_name, id, why }));
                self.topics[t].groups[g].finish_dead_letter(id, true);
                self.mark_group_dirty(t, g);
                return;
            }
        };
        if self.config.test_bug == Some(TestBug::DeadLetterNotStored) {
            self.topics[t].groups[g].finish_dead_letter(id, true);
            self.mark_group_dirty(t, g);
            self.out.push_back(Output::Trace(Trace::DeadLettered { topic: topic_name, group: group_name, id }));
            return;
        }
        self.append_message(dlq, message.key.as_deref(), &message.body, None, 0);
        self.log.open.waiters.push(Waiter::DeadLetter { topic: t, group: g, id });
        self.out.push_back(Output::Trace(Trace::DeadLettered { topic: topic_name, group: group_name, id }));
        self.stats.dead_lettered += 1;
        self.maybe_flush();
    }

    fn pump_topic(&mut self, t: usize) {
        for g in 0..self.topics[t].groups.len() {
            self.pump(t, g);
        }
    }

    // ---- reads and fetch

    fn request_read(&mut self, t: usize, id: u64, loc: Loc) {
        if !self.reading.insert((t, id)) {
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.reads.insert(token, (t, id));
        self.out.push_back(Output::Disk(DiskOp::Read { token, segment: loc.segment, offset: loc.offset, len: loc.len }));
    }

    fn on_read_done(&mut self, token: u64, result: Result<&[u8], DiskError>) {
        let Some((t, id)) = self.reads.remove(&token) else { return };
        self.reading.remove(&(t, id));
        let name = &self.topics[t].name;
        let decoded = match result {
            Ok(bytes) => match record::decode_record(bytes) {
                Ok((RecordRef::Message(m), _)) if m.id == id && m.topic == name.as_str() => {
                    Ok(StoredMessage { id, ts_ms: m.ts_ms, key: m.key.map(Into::into), body: m.body.into() })
                }
                Ok(_) => Err("record at the indexed place is another record".to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(format!("{e:?}")),
        };
        let message = match decoded {
            Ok(message) => {
                let message = Rc::new(message);
                let (messages_max, bytes_max) = (self.config.read_cache_messages as usize, self.config.read_cache_bytes);
                self.read_cache.insert((t, id), message.clone(), messages_max, bytes_max);
                Some(message)
            }
            Err(why) => {
                // Never serve a record that fails its checks; the id is gone for readers.
                self.out.push_back(Output::Trace(Trace::UnreadableRecord { topic: name.clone(), id, why }));
                self.topics[t].forget(id);
                None
            }
        };
        self.feed_fetches(t, id, message.as_ref());
        self.pump_topic(t);
    }

    fn on_fetch(&mut self, conn: ConnId, req: Option<String>, topic: &str, from: u64, to: u64) {
        let Some(&t) = self.topic_index.get(topic) else {
            return self.send_error(conn, req.as_deref(), ErrorCode::NoSuchTopic, &format!("no topic '{topic}'"));
        };
        // Each pending fetch holds up to a frame of messages: bound them per connection and in all.
        let on_conn = self.fetches.iter().filter(|f| f.conn == conn).count();
        if on_conn >= self.config.fetches_per_connection_max as usize {
            let message = format!("{on_conn} fetches of this connection wait for the disk (fetches_per_connection_max)");
            return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, &message);
        }
        if self.fetches.len() >= self.config.fetches_pending_max as usize {
            let message = format!("{} fetches wait for the disk (fetches_pending_max)", self.fetches.len());
            return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, &message);
        }
        let to = to.min(self.topics[t].durable_next_id - 1);
        self.gather_fetch(conn, req, t, from, to);
    }

    /// Gathers the stored messages of `from..=to` that one `fetched` frame can hold: at most
    /// `fetch_messages_max`, and within `frame_bytes_max` by their estimated sizes, so no disk
    /// read is asked for a message that cannot fit. The first stored message always comes,
    /// even alone over the limit: a message may be as large as the frame that published it,
    /// and a client must be able to get past it. Ids that are gone are skipped, so a reply is
    /// empty only when nothing is stored in the range (PROTOCOL.md).
    fn gather_fetch(&mut self, conn: ConnId, req: Option<String>, t: usize, from: u64, to: u64) {
        let topic = &self.topics[t];
        let budget = self.config.frame_bytes_max;
        let count_max = self.config.fetch_messages_max as usize;
        // The frame's own fields, generously: `{"op":"fetched","req":…,"topic":…,"messages":[]}`.
        let mut estimate = 64 + req.as_ref().map_or(0, String::len) + topic.name.len();
        // Ids below the first stored one are gone (retention): no need to step through them.
        let mut id = from.max(topic.first_id());
        let mut slots = Vec::new();
        let mut reads = Vec::new();
        while id <= to && slots.len() < count_max {
            let (size, slot) = match topic.lookup(id, &self.read_cache, t) {
                Lookup::Gone => {
                    id += 1;
                    continue;
                }
                Lookup::Found(m) => (m.bytes() as usize, Some(Some(m))),
                // The record's size on disk: its body and key plus a header of about the size
                // of the entry's own fields. answer_fetch cuts exactly should it fall short.
                Lookup::OnDisk(loc) => {
                    reads.push((id, loc));
                    (loc.len as usize, None)
                }
            };
            if !slots.is_empty() && estimate + size > budget {
                if slot.is_none() {
                    reads.pop();
                }
                break;
            }
            estimate += size;
            slots.push((id, slot));
            id += 1;
        }
        let fetch = PendingFetch { conn, req, topic: t, waiting: reads.len(), slots, next: id, to };
        for (id, loc) in reads {
            self.request_read(t, id, loc);
        }
        if fetch.waiting == 0 {
            self.answer_fetch(fetch);
        } else {
            self.fetches.push(fetch);
        }
    }

    fn answer_fetch(&mut self, fetch: PendingFetch) {
        debug_assert_eq!(fetch.waiting, 0);
        let readable = |slot: &(u64, Option<Option<Rc<StoredMessage>>>)| slot.1.as_ref().and_then(Option::as_ref).cloned();
        if fetch.slots.iter().all(|slot| readable(slot).is_none()) && fetch.next <= fetch.to {
            // Everything gathered was unreadable, yet the range goes on: an empty reply would
            // tell the client nothing is stored there.
            return self.gather_fetch(fetch.conn, fetch.req, fetch.topic, fetch.next, fetch.to);
        }
        let limit = self.config.frame_bytes_max;
        let mut frame = String::new();
        protocol::encode_fetched_start(&mut frame, fetch.req.as_deref(), &self.topics[fetch.topic].name);
        let skip_second = self.config.test_bug == Some(TestBug::FetchSkipsMessage);
        let served = fetch.slots.iter().filter_map(readable).enumerate().filter(|(count, _)| !(skip_second && *count == 1)).map(|(_, m)| m);
        for (count, m) in served.enumerate() {
            let mark = frame.len();
            protocol::encode_fetched_message(&mut frame, count == 0, m.id, m.key.as_deref(), &m.body, m.ts_ms);
            // The estimates may fall short (escaped keys): the exact cut, never before the first.
            if count > 0 && frame.len() + protocol::FETCHED_END.len() > limit {
                frame.truncate(mark);
                break;
            }
        }
        protocol::encode_fetched_end(&mut frame);
        self.send(fetch.conn, frame);
    }

    /// A read for (t, id) finished with `message` (None: unreadable): fill the fetches waiting
    /// for it and answer those that are complete.
    fn feed_fetches(&mut self, t: usize, id: u64, message: Option<&Rc<StoredMessage>>) {
        let mut index = 0;
        while index < self.fetches.len() {
            let fetch = &mut self.fetches[index];
            if fetch.topic == t {
                if let Ok(at) = fetch.slots.binary_search_by_key(&id, |slot| slot.0) {
                    if fetch.slots[at].1.is_none() {
                        fetch.slots[at].1 = Some(message.cloned());
                        fetch.waiting -= 1;
                    }
                }
            }
            if fetch.waiting == 0 {
                let done = self.fetches.swap_remove(index);
                self.answer_fetch(done);
            } else {
                index += 1;
            }
        }
    }

    // ---- timers

    fn on_timer(&mut self, at: u64, timer: Timer) {
        match timer {
            Timer::AckDeadline { topic, group, id } => {
                if let Some((conn, bytes)) = self.topics[topic].groups[group].expire(id, at) {
                    self.release_in_flight(conn, topic, group, bytes);
                    if self.config.test_bug == Some(TestBug::ExpiryCountsAsAck) {
                        self.ack_one(topic, group, id);
                    }
                    if self.config.test_bug == Some(TestBug::KeyReleasedOnExpiry) {
                        self.topics[topic].groups[group].unblock_next_of_key(id);
                    }
                    self.pump(topic, group);
                }
            }
            Timer::NackDelay { topic, group, id } => {
                if self.topics[topic].groups[group].delay_over(id, at) {
                    self.pump(topic, group);
                }
            }
            Timer::PullEnd { conn, topic, group } => self.finish_pull(conn, topic, group),
            Timer::Pump { topic, group } => self.pump(topic, group),
            Timer::BatchFlush | Timer::DiskRetry => self.maybe_flush(),
            Timer::Retention => {
                self.enforce_retention();
                self.timers.insert((self.now + RETENTION_CHECK_NS, Timer::Retention));
            }
        }
    }

    // ---- the log: batches, group commit, segments, failures

    fn mark_group_dirty(&mut self, t: usize, g: usize) {
        if self.dirty_groups.is_empty() {
            self.groups_dirty_since = self.now;
        }
        self.dirty_groups.insert((t, g));
    }

    fn write_dirty_groups(&mut self) {
        for (t, g) in std::mem::take(&mut self.dirty_groups) {
            self.open_batch_data();
            let topic = &self.topics[t];
            let record = topic.groups[g].to_record(&topic.name);
            self.log.segment_len += record::encode_control(&mut self.log.open.data, record::KIND_GROUP, &record) as u64;
        }
    }

    /// The open batch's buffer, its header begun (and counted in the segment) on first use.
    fn open_batch_data(&mut self) -> &mut Vec<u8> {
        let open = &mut self.log.open;
        if open.data.is_empty() {
            batch::begin(&mut open.data);
            open.started_at = self.now;
            self.log.segment_len += batch::HEADER_BYTES as u64;
        }
        &mut self.log.open.data
    }

    /// Closes the open batch's frame (it is about to be taken out to be written).
    fn seal_open_batch(&mut self) {
        if !self.log.open.data.is_empty() {
            batch::seal(&mut self.log.open.data);
            self.log.segment_len += batch::TRAILER_BYTES as u64;
        }
    }

    /// Asks for `segment` to be cut to `len` bytes; writes wait until it is done.
    fn truncate(&mut self, segment: u64, len: u64) {
        let token = self.next_token;
        self.next_token += 1;
        self.truncating.insert(token);
        self.out.push_back(Output::Disk(DiskOp::Truncate { token, segment, len }));
    }

    fn on_truncate_done(&mut self, token: u64, result: Result<(), DiskError>) {
        assert!(self.truncating.remove(&token), "truncate completion for unknown token {token}");
        match result {
            Ok(()) => self.maybe_flush(),
            Err(error) => {
                let why = format!("cutting a segment back to its durable length failed ({error:?}); stale bytes could be read back as data");
                self.stop(why);
            }
        }
    }

    /// An error the design cannot recover from: ask the process to stop, take nothing more.
    fn stop(&mut self, why: String) {
        self.stopped = true;
        self.out.retain(|o| !matches!(o, Output::Disk(DiskOp::Write { .. } | DiskOp::Truncate { .. } | DiskOp::Delete { .. })));
        self.out.push_back(Output::Stop { why });
    }

    /// Starts the next write if none is in flight and the fsync policy says it is time.
    fn maybe_flush(&mut self) {
        if self.log.flushing.is_some() || !self.truncating.is_empty() || self.stopped {
            return;
        }
        if let Some(until) = self.disk_full_until {
            if self.now < until {
                self.timers.insert((until, Timer::DiskRetry));
                return;
            }
            self.disk_full_until = None;
        }
        let batch = match self.log.queued.pop_front() {
            Some(batch) => batch,
            None => {
                let open = &self.log.open;
                let publishing = !open.data.is_empty() || !open.waiters.is_empty() || !open.marks.is_empty();
                if !self.dirty_groups.is_empty() {
                    // Group positions ride along with publishes; alone, they wait a little so
                    // a stream of acks costs one small write, not one write per ack.
                    let due = self.groups_dirty_since + self.config.ack_persist_interval_ms * NS_PER_MS;
                    if publishing || self.now >= due {
                        if !publishing {
                            self.log.open.started_at = self.now;
                        }
                        self.write_dirty_groups();
                    } else {
                        self.timers.insert((due, Timer::BatchFlush));
                    }
                }
                let open = &self.log.open;
                if open.data.is_empty() {
                    if !open.waiters.is_empty() || !open.marks.is_empty() {
                        // Nothing to write: everything before these waiters is already durable.
                        let fresh = Batch::new(open.segment, open.offset, open.create);
                        let batch = std::mem::replace(&mut self.log.open, fresh);
                        self.complete_batch(batch);
                    }
                    return;
                }
                if self.config.fsync == FsyncPolicy::Batch {
                    let due = open.started_at + self.config.batch_interval_ms * NS_PER_MS;
                    if (open.data.len() as u64) < self.config.batch_bytes && self.now < due {
                        self.timers.insert((due, Timer::BatchFlush));
                        return;
                    }
                }
                self.seal_open_batch();
                let next = Batch::new(self.log.segment, self.log.segment_len, false);
                std::mem::replace(&mut self.log.open, next)
            }
        };
        self.start_write(batch);
    }

    fn start_write(&mut self, mut batch: Batch) {
        let token = self.next_token;
        self.next_token += 1;
        batch.token = token;
        batch.len = batch.data.len() as u64;
        let data = std::mem::take(&mut batch.data);
        // Only what someone waits for needs an fsync; group positions alone may be lost to a
        // power cut (their messages are then delivered again), and the next fsync covers them.
        let promised = !batch.waiters.is_empty() || !batch.marks.is_empty() || batch.create;
        // A segment the node has moved on from must end durable, whatever the policy: then a
        // power cut can tear only the newest segment, and damage anywhere else is real damage.
        let last_of_segment = batch.segment != self.log.segment;
        // A snapshot is fsynced whatever the policy (once per segment or restart): retention
        // waits for it, and under `never` nothing else would make it durable before the roll.
        let snapshot_pending = self.log.segments.iter().rev().find(|s| s.id == batch.segment).is_some_and(|s| !s.snapshot_durable);
        let sync = (self.config.fsync != FsyncPolicy::Never && promised) || last_of_segment || snapshot_pending;
        batch.sync = sync;
        if !last_of_segment {
            self.log.segment_unsynced = !sync;
        }
        let op = DiskOp::Write { token, segment: batch.segment, offset: batch.offset, data, create: batch.create, sync };
        self.out.push_back(Output::Disk(op));
        self.log.flushing = Some(batch);
    }

    fn on_write_done(&mut self, token: u64, result: Result<(), DiskError>) {
        let Some(batch) = self.log.flushing.take_if(|b| b.token == token) else {
            panic!("write completion for token {token}, which is not the write in flight");
        };
        match result {
            Ok(()) => {
                self.log.cut_pending = None;
                self.stats.flushes += 1;
                self.stats.flushed_bytes += batch.len;
                if let Some(info) = self.log.segments.iter_mut().rev().find(|s| s.id == batch.segment) {
                    info.bytes = info.bytes.max(batch.offset + batch.len);
                    info.last_write_ms = self.now / NS_PER_MS;
                    info.snapshot_durable |= batch.sync;
                }
                self.complete_batch(batch);
            }
            Err(error) => self.fail_store(batch, error),
        }
        self.maybe_flush();
    }

    fn complete_batch(&mut self, batch: Batch) {
        for (t, next_id) in &batch.marks {
            let topic = &mut self.topics[*t];
            topic.durable_next_id = topic.durable_next_id.max(*next_id);
        }
        for waiter in batch.waiters {
            match waiter {
                Waiter::Puback { conn, req, topic, id, producer } => {
                    self.pending_publishes -= 1;
                    if let Some((name, seq)) = producer {
                        if let Some(seen) = self.producers.get_mut(&name).and_then(|p| p.seqs.get_mut(&seq)) {
                            seen.durable = true;
                        }
                    }
                    if self.conns.contains_key(&conn) {
                        let mut frame = String::with_capacity(64);
                        protocol::encode_puback(&mut frame, req.as_deref(), &self.topics[topic].name, id);
                        self.send(conn, frame);
                    }
                }
                Waiter::Join { conn, req, topic, group, window, pull } => {
                    self.topics[topic].groups[group].durable = true;
                    self.admit_member(conn, req, topic, group, window, pull);
                }
                Waiter::DeadLetter { topic, group, id } => {
                    self.topics[topic].groups[group].finish_dead_letter(id, true);
                    self.mark_group_dirty(topic, group);
                    self.pump(topic, group);
                }
            }
        }
        for t in batch.marks.keys() {
            self.pump_topic(*t);
        }
    }

    /// A write or fsync failed. Its data and everything after it is treated as lost (never
    /// retried on the same data): publishes get an error, ids are rolled back, the file is cut
    /// back to its last durable length. EIO moves to a fresh segment; ENOSPC waits for space.
    fn fail_store(&mut self, failed: Batch, error: DiskError) {
        let code = if error == DiskError::NoSpace { ErrorCode::Overloaded } else { ErrorCode::Internal };
        let message = match &error {
            DiskError::NoSpace => "disk full: the publish was not stored; retry later".to_string(),
            DiskError::Io(e) => format!("storage failed ({e}); the publish was not stored"),
        };
        let mut lost = vec![failed];
        lost.extend(self.log.queued.drain(..));
        let (segment, offset, create) = (lost[0].segment, lost[0].offset, lost[0].create);
        lost.push(std::mem::replace(&mut self.log.open, Batch::new(segment, offset, create)));
        let mut publishes_failed = 0;
        let mut rejoin = Vec::new();
        let mut to_pump = BTreeSet::new();
        for waiter in lost.into_iter().flat_map(|b| b.waiters) {
            match waiter {
                Waiter::Puback { conn, req, producer, .. } => {
                    self.pending_publishes -= 1;
                    publishes_failed += 1;
                    if let Some((name, seq)) = producer {
                        if let Some(p) = self.producers.get_mut(&name) {
                            p.seqs.remove(&seq);
                        }
                    }
                    if self.conns.contains_key(&conn) {
                        self.send_error(conn, req.as_deref(), code, &message);
                    }
                }
                Waiter::Join { .. } => rejoin.push(waiter),
                Waiter::DeadLetter { topic, group, id } => {
                    self.topics[topic].groups[group].finish_dead_letter(id, false);
                    to_pump.insert((topic, group));
                }
            }
        }
        for topic in &mut self.topics {
            let durable = topic.durable_next_id;
            topic.roll_back_to(durable);
        }
        self.cache_budget.recount(&self.topics);
        let topics = &self.topics;
        self.read_cache.retain(|(t, id)| *id < topics[*t].next_id);
        for p in self.producers.values_mut() {
            p.seqs.retain(|_, seen| seen.durable);
        }
        self.truncate(segment, offset);
        self.out.push_back(Output::Trace(Trace::StoreFailed { error: error.clone(), publishes_failed }));
        self.log.segment = segment;
        self.log.segment_len = offset;
        self.log.segments.retain(|s| s.id <= segment);
        let cut_lost = self.log.cut_pending == Some((segment, offset));
        match error {
            // Moving on to a fresh segment would leave the torn tail unrecorded in the middle
            // of the log: stop, and let the restart find and cut it again.
            DiskError::Io(e) if cut_lost => self.stop(format!("writing the record of a torn tail's cut failed ({e}); restart to cut it again")),
            DiskError::NoSpace => {
                self.disk_full_until = Some(self.now + self.config.disk_full_retry_ms * NS_PER_MS);
                self.mark_all_groups_dirty();
                // A failed write that began with a snapshot (a segment's, or the record of a
                // torn tail's cut) must still begin the next one, or once retention deletes the
                // older segments a restart would know nothing of them and reuse ids.
                if cut_lost {
                    self.begin_with_snapshot(segment, offset, false);
                } else if offset == 0 {
                    self.log.segments.pop_back();
                    self.start_segment(segment);
                }
            }
            DiskError::Io(_) => self.start_segment(segment + 1),
        }
        self.log.open.waiters.extend(rejoin);
        for (t, g) in to_pump {
            self.pump(t, g);
        }
    }

    fn mark_all_groups_dirty(&mut self) {
        let all: Vec<(usize, usize)> = self.topics.iter().enumerate().flat_map(|(t, topic)| (0..topic.groups.len()).map(move |g| (t, g))).collect();
        for (t, g) in all {
            self.mark_group_dirty(t, g);
        }
    }

    /// Seals the open batch and starts segment `segment + 1` with a snapshot of the state, so
    /// that older segments can be deleted without losing topics, groups or producers.
    fn roll_segment(&mut self) {
        let next = self.log.segment + 1;
        self.seal_open_batch();
        let sealed = std::mem::replace(&mut self.log.open, Batch::new(next, 0, true));
        // Written even when empty if the segment has unsynced bytes: its write carries the fsync.
        if !sealed.data.is_empty() || !sealed.waiters.is_empty() || !sealed.marks.is_empty() || self.log.segment_unsynced {
            self.log.queued.push_back(sealed);
        }
        self.start_segment(next);
        self.out.push_back(Output::Trace(Trace::SegmentRolled { segment: next }));
    }

    fn start_segment(&mut self, segment: u64) {
        self.log.segments.push_back(SegmentInfo { id: segment, bytes: 0, last_write_ms: self.now / NS_PER_MS, snapshot_durable: false });
        self.begin_with_snapshot(segment, 0, true);
    }

    /// Recovery found a torn tail in `segment` ending at `end`: the log goes on right after it
    /// with a snapshot that records the cut (see `load_segments`). The segment counts as having
    /// no snapshot until that one is durable, so retention keeps the older segments meanwhile.
    fn continue_segment_after(&mut self, segment: u64, end: u64) {
        let info = self.log.segments.back_mut().expect("the torn segment was loaded");
        assert_eq!(info.id, segment, "a torn tail is in the newest segment");
        info.snapshot_durable = false;
        self.log.cut_pending = Some((segment, end));
        self.begin_with_snapshot(segment, end, false);
    }

    /// Opens the log's next batch at (`segment`, `offset`) with a snapshot of the state in it.
    fn begin_with_snapshot(&mut self, segment: u64, offset: u64, create: bool) {
        let waiters = std::mem::take(&mut self.log.open.waiters);
        let marks = std::mem::take(&mut self.log.open.marks);
        assert!(self.log.open.data.is_empty(), "open batch data would be written to the wrong segment");
        self.log.segment = segment;
        self.log.segment_len = offset;
        self.log.segment_unsynced = false;
        self.log.open = Batch::new(segment, offset, create);
        self.log.open.waiters = waiters;
        self.log.open.marks = marks;
        self.log.open.started_at = self.now;
        let mut snapshot = Vec::new();
        batch::begin(&mut snapshot);
        let data = &mut snapshot;
        for topic in &self.topics {
            record::encode_control(data, record::KIND_TOPIC, &TopicRecord { topic: topic.name.clone(), next_id: topic.next_id });
        }
        for topic in &self.topics {
            for group in &topic.groups {
                record::encode_control(data, record::KIND_GROUP, &group.to_record(&topic.name));
            }
        }
        for (name, producer) in &self.producers {
            let seqs = producer.seqs.iter().filter(|(_, s)| s.durable).map(|(seq, s)| (*seq, self.topics[s.topic].name.clone(), s.id)).collect();
            record::encode_control(data, record::KIND_PRODUCER, &ProducerRecord { producer: name.clone(), seqs });
        }
        for salvaged in &self.salvaged_regions {
            record::encode_control(data, record::KIND_SALVAGED, salvaged);
        }
        if self.new_topic_first_id > 1 {
            record::encode_control(data, record::KIND_NEW_TOPICS, &NewTopicsRecord { first_id: self.new_topic_first_id });
        }
        if snapshot.len() == batch::HEADER_BYTES {
            // Nothing to carry over: older segments hold nothing a restart would need.
            snapshot.clear();
            self.log.segments.back_mut().expect("the segment is listed").snapshot_durable = true;
        }
        self.log.segment_len = offset + snapshot.len() as u64;
        self.log.open.data = snapshot;
        self.dirty_groups.clear();
    }

    fn enforce_retention(&mut self) {
        let now_ms = self.now / NS_PER_MS;
        // A segment goes only once a newer one's snapshot is durable (until then it may hold
        // the only record of ids given out) and no write to it is in flight or queued. The
        // segment just before that one stays too: should that snapshot be the log's final
        // batch and be damaged, it still tells recovery every id given out before it.
        let newest_snapshot = self.log.segments.iter().rposition(|s| s.snapshot_durable);
        let before_snapshot = newest_snapshot.and_then(|at| at.checked_sub(1)).map_or(0, |before| self.log.segments[before].id);
        let writing = self.log.flushing.iter().chain(&self.log.queued).map(|b| b.segment).min().unwrap_or(u64::MAX);
        let oldest_in_use = before_snapshot.min(writing).min(self.log.segment);
        loop {
            let total: u64 = self.log.segments.iter().map(|s| s.bytes).sum();
            let Some(oldest) = self.log.segments.front() else { return };
            if oldest.id >= oldest_in_use || self.log.segments.len() <= 1 {
                return;
            }
            let too_big = total > self.config.retention_bytes;
            let age_ms = if self.config.test_bug == Some(TestBug::RetentionTooEarly) { self.config.retention_age_ms / 4 } else { self.config.retention_age_ms };
            let too_old = oldest.last_write_ms + age_ms < now_ms;
            if !too_big && !too_old {
                return;
            }
            let segment = oldest.id;
            self.log.segments.pop_front();
            for topic in &mut self.topics {
                topic.forget_segments_through(segment);
            }
            self.salvaged_regions.retain(|r| r.segment > segment);
            self.out.push_back(Output::Disk(DiskOp::Delete { segment }));
            self.out.push_back(Output::Trace(Trace::SegmentDeleted { segment }));
        }
    }
}
