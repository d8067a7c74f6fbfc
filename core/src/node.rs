//! The node state machine: one door in (`handle_input`, `handle_timeout`), one door out
//! (`poll_output`, `poll_timeout`). It never reads a clock, a socket or a file: time is an
//! argument (nanoseconds since the Unix epoch, never going backwards), disk work is requested
//! as outputs and its completion comes back as inputs.
//!
//! This file holds the vocabulary of the doors and the wiring. `state` is what a replica
//! holds with no connection in it (topics, groups, producers; what a snapshot records); the
//! rest of the work lives in submodules, each an `impl Node` over one concern: `session`
//! (client ops the host decoded or a peer forwarded, replies, congestion; `crate::host` owns
//! the connection as a whole), `publish`, `membership` (sub, pull, unsub), `delivery` (pump,
//! ack, nack, dead letters), `reads` (disk reads and fetch), `log` (batches, writes,
//! segments, retention) and `load` (recovery).

use crate::cache::{CacheBudget, ReadCache};
use crate::config::Config;
use crate::ids::{ConnId, GroupIdx, ShardId, TopicIdx};
use crate::latency::LatencyHistogram;
use crate::pipeline::{self, Stage};
use crate::protocol::ErrorCode;
use crate::record::SalvagedRecord;
use crate::recovery::{Damage, RecoveryError};
use crate::timer_wheel::TimerWheel;
use crate::trace_book::TraceBook;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub mod admin;
mod cluster_bugs;
mod cluster_load;
mod cluster_status;
mod delivery;
mod forwarding;
mod latest;
mod load;
mod log;
mod membership;
pub mod message_trace;
pub mod observe;
mod publish;
mod raft_reads;
mod reads;
mod remote_delivery;
mod replication;
mod session;
mod spill;
mod state;
mod state_transfer;

use log::{Batch, Log, SegmentInfo};
use reads::PendingFetch;
use replication::Replication;
use session::Conn;
use state::{SeenSeq, State};

pub(crate) const NS_PER_MS: u64 = 1_000_000;
const RETENTION_CHECK_NS: u64 = 1_000 * NS_PER_MS;

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
    /// The connection presented `token` outside the protocol (an `Authorization: Bearer`
    /// header of its WebSocket handshake): as a `hello` with it.
    Token {
        conn: ConnId,
        token: &'a str,
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
    /// A frame from another node of the cluster (`cluster::mesh`).
    PeerMessage {
        from_node: u64,
        payload: &'a [u8],
    },
    /// The link to the cluster node `node` broke: frames in flight on it, either way, are lost.
    PeerDown {
        node: u64,
    },
    /// The queue of frames to the cluster node `node` is filling up (`true`): push its
    /// clients no messages until it has drained (`false`); raft keeps its own pace.
    PeerCongested {
        node: u64,
        congested: bool,
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
    /// Writes `data` at `offset` of shard `shard`'s scratch spill file (`node/spill.rs`): no
    /// fsync, as nothing in it outlives the process. Completes as a `WriteDone`.
    SpillWrite {
        token: u64,
        shard: u32,
        offset: u64,
        data: Vec<u8>,
    },
    /// Reads `len` bytes at `offset` of shard `shard`'s spill file. Completes as a `ReadDone`.
    SpillRead {
        token: u64,
        shard: u32,
        offset: u64,
        len: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trace {
    DeadLettered {
        topic: String,
        group: String,
        id: u64,
    },
    DeadLetterDropped {
        topic: String,
        group: String,
        id: u64,
        why: &'static str,
    },
    StoreFailed {
        error: DiskError,
        publishes_failed: u32,
    },
    SegmentRolled {
        segment: u64,
    },
    SegmentDeleted {
        segment: u64,
    },
    UnreadableRecord {
        topic: String,
        id: u64,
        why: String,
    },
    PeerMessageIgnored {
        from_node: u64,
        bytes: usize,
    },
    PeerFrameRefused {
        from_node: u64,
        why: String,
    },
    /// The shard's leader as this node knows it changed (`None`: an election is on).
    LeaderChanged {
        shard: u32,
        leader: Option<u64>,
        term: u64,
    },
    /// Node `node` is behind this leader's first raft entry (retention deleted what it
    /// lacks): it is sent the state as of the entry before (state transfer).
    FollowerBehindLog {
        shard: u32,
        node: u64,
        first_entry: u64,
    },
    /// This node took the leader's state as of raft entry `index` in place of its own.
    StateInstalled {
        shard: u32,
        index: u64,
    },
    /// A write to the in-flight spill file failed: the chunk stays in memory, and spilling
    /// pauses a second.
    SpillFailed {
        error: DiskError,
    },
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
    /// A frame for the cluster node `to_node` (`cluster::mesh`); the mesh may lose it.
    PeerSend {
        to_node: u64,
        payload: Vec<u8>,
    },
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
    /// Messages given back by a member (`nack`).
    pub nacked: u64,
    pub dead_lettered: u64,
    /// Messages settled unseen by a newer one of their key (coalescing groups).
    pub coalesced: u64,
    pub flushes: u64,
    pub flushed_bytes: u64,
    /// `error` frames sent, per code (in the order of `ErrorCode::ALL`).
    pub errors: [u64; ErrorCode::ALL.len()],
    /// Segments deleted by retention (or replaced by an installed state).
    pub segments_deleted: u64,
    /// From a publish's arrival to its `puback`.
    pub publish_to_puback: LatencyHistogram,
    /// From a message's storing to its first delivery, per group.
    pub store_to_deliver: LatencyHistogram,
}

impl Stats {
    /// Both counts added (a process's shards).
    pub fn plus(&self, other: &Stats) -> Stats {
        Stats {
            published: self.published + other.published,
            deduplicated: self.deduplicated + other.deduplicated,
            delivered: self.delivered + other.delivered,
            redelivered: self.redelivered + other.redelivered,
            acked: self.acked + other.acked,
            nacked: self.nacked + other.nacked,
            dead_lettered: self.dead_lettered + other.dead_lettered,
            coalesced: self.coalesced + other.coalesced,
            flushes: self.flushes + other.flushes,
            flushed_bytes: self.flushed_bytes + other.flushed_bytes,
            errors: std::array::from_fn(|at| self.errors[at] + other.errors[at]),
            segments_deleted: self.segments_deleted + other.segments_deleted,
            publish_to_puback: self.publish_to_puback.plus(&other.publish_to_puback),
            store_to_deliver: self.store_to_deliver.plus(&other.store_to_deliver),
        }
    }
}

/// Memory the node's limits bound, as it stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    pub topic_cache_bytes: u64,
    pub read_cache_bytes: u64,
    pub unwritten_log_bytes: u64,
    pub pending_publishes: u32,
    pub pending_fetches: usize,
    /// Recent message events kept for traces (`trace_bytes_max`).
    pub trace_bytes: u64,
    /// The newest message of every key, for `latest` (`latest_index_bytes_max`), and the keys.
    pub latest_index_bytes: u64,
    /// What the groups track of their messages (outstanding entries, ack deadlines, sets).
    pub group_state_bytes: u64,
    /// Bytes of groups' in-flight state spilled to disk (`group_state_bytes_max`), in slots of
    /// the spill file in use.
    pub group_state_spilled_bytes: u64,
    pub latest_index_keys: u64,
}

impl MemoryUse {
    /// Both uses added (a process's shards).
    pub fn plus(&self, other: &MemoryUse) -> MemoryUse {
        MemoryUse {
            topic_cache_bytes: self.topic_cache_bytes + other.topic_cache_bytes,
            read_cache_bytes: self.read_cache_bytes + other.read_cache_bytes,
            unwritten_log_bytes: self.unwritten_log_bytes + other.unwritten_log_bytes,
            pending_publishes: self.pending_publishes + other.pending_publishes,
            pending_fetches: self.pending_fetches + other.pending_fetches,
            trace_bytes: self.trace_bytes + other.trace_bytes,
            latest_index_bytes: self.latest_index_bytes + other.latest_index_bytes,
            latest_index_keys: self.latest_index_keys + other.latest_index_keys,
            group_state_bytes: self.group_state_bytes + other.group_state_bytes,
            group_state_spilled_bytes: self.group_state_spilled_bytes + other.group_state_spilled_bytes,
        }
    }
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

impl RecoveryReport {
    /// Adds what a shard's recovery found (a process's report covers all its shards).
    pub fn take(&mut self, shard: RecoveryReport) {
        self.segments += shard.segments;
        self.messages += shard.messages;
        self.torn_tail = self.torn_tail.take().or(shard.torn_tail);
        self.salvaged.extend(shard.salvaged);
        self.previously_salvaged.extend(shard.previously_salvaged);
        self.truncated.extend(shard.truncated);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The group's earliest ack deadline (`Group::ack_deadlines`).
    AckDeadline {
        topic: TopicIdx,
        group: GroupIdx,
    },
    PullEnd {
        conn: ConnId,
        topic: TopicIdx,
        group: GroupIdx,
    },
    Pump {
        topic: TopicIdx,
        group: GroupIdx,
    },
    /// A topic's groups not yet pumped since its newest message (`Node::sweeps`).
    PumpGroups {
        topic: TopicIdx,
    },
    BatchFlush,
    DiskRetry,
    Retention,
    /// Groups' state against `group_state_bytes_max` (`node/spill.rs`).
    SpillCheck,
}

pub struct Node {
    config: Config,
    stages: Vec<Box<dyn Stage>>,
    state: State,
    conns: BTreeMap<ConnId, Conn>,
    log: Log,
    read_cache: ReadCache,
    /// Recent message events (`ferry trace`).
    trace_book: TraceBook,
    /// Redrives under way: each internal member and the dead-letter group it copies from.
    redrives: BTreeMap<ConnId, admin::Redrive>,
    cache_budget: CacheBudget,
    reads: BTreeMap<u64, (TopicIdx, u64)>,
    reading: BTreeSet<(TopicIdx, u64)>,
    fetches: Vec<PendingFetch>,
    timers: BTreeSet<(u64, Timer)>,
    /// Messages given back with a `nack` delay, one timer each (there may be millions): when
    /// each is ready again. Not cancelled: one that fires finds its message no longer delayed.
    nack_delays: TimerWheel<(TopicIdx, GroupIdx, u64)>,
    /// Topics with more groups than one turn pumps: the group each one's sweep goes on from.
    sweeps: BTreeMap<TopicIdx, usize>,
    dirty_groups: BTreeSet<(TopicIdx, GroupIdx)>,
    groups_dirty_since_ns: u64,
    out: VecDeque<Output>,
    next_token: u64,
    pending_publishes: u32,
    disk_full_until_ns: Option<u64>,
    /// Truncations not yet done: writes wait for them.
    truncating: BTreeSet<u64>,
    /// An unrecoverable disk error was reported: every input is ignored from then on.
    stopped: bool,
    /// Salvaged regions of segments still kept: every segment's snapshot repeats them.
    salvaged_regions: Vec<SalvagedRecord>,
    /// Cluster mode (`peers` set): the shard's replica and what this node proposed.
    replication: Option<Replication>,
    /// Chunks of groups' in-flight state out on disk (`node/spill.rs`).
    spills: spill::Spills,
    now_ns: u64,
    pub stats: Stats,
}

impl Node {
    /// A node over an empty data directory.
    pub fn new(config: Config, now_ns: u64) -> Node {
        Node::recover(config, &[], now_ns).expect("an empty log has no damage").0
    }

    /// Rebuilds the node from its segments (ascending id, each the file's full bytes).
    /// Refuses damaged acknowledged data unless `config.salvage`. The first outputs cut the
    /// newest segment back to its intact batches; no write starts before they are done.
    pub fn recover(config: Config, segments: &[(u64, &[u8])], now_ns: u64) -> Result<(Node, RecoveryReport), RecoveryError> {
        let trace_bytes_max = config.trace_bytes_max;
        config.validate().unwrap_or_else(|e| panic!("invalid config reached the core: {e}"));
        // Its segment ids and disk tokens are the shard's own (shard 0: from 1).
        let shard = ShardId(config.shard_index);
        let mut node = Node {
            stages: pipeline::default_stages(config.requires_identity()),
            state: State::new(&config),
            config,
            conns: BTreeMap::new(),
            log: Log {
                segment: 0,
                segment_len: 0,
                open: Batch::new(0, 0, true),
                queued: VecDeque::new(),
                flushing: None,
                segments: VecDeque::new(),
                segment_unsynced: false,
                cut_pending: None,
                superseded_before: None,
                batch_bytes_hint: 0,
            },
            read_cache: ReadCache::default(),
            trace_book: TraceBook::new(trace_bytes_max),
            redrives: BTreeMap::new(),
            cache_budget: CacheBudget::default(),
            reads: BTreeMap::new(),
            reading: BTreeSet::new(),
            fetches: Vec::new(),
            timers: BTreeSet::new(),
            nack_delays: TimerWheel::default(),
            sweeps: BTreeMap::new(),
            dirty_groups: BTreeSet::new(),
            groups_dirty_since_ns: 0,
            out: VecDeque::new(),
            next_token: shard.first_id(),
            pending_publishes: 0,
            disk_full_until_ns: None,
            truncating: BTreeSet::new(),
            stopped: false,
            salvaged_regions: Vec::new(),
            replication: None,
            spills: spill::Spills::default(),
            now_ns,
            stats: Stats::default(),
        };
        let next_segment = segments.last().map_or(shard.first_id(), |(id, _)| id + 1);
        let report = if node.config.peers.is_empty() {
            let report = node.load_segments(segments)?;
            for &(segment, len) in &report.truncated {
                node.truncate(segment, len);
            }
            match &report.torn_tail {
                Some(torn) => node.continue_segment_after(torn.segment, torn.region.end),
                None => node.start_segment(next_segment),
            }
            report
        } else {
            let report = node.recover_cluster(segments)?;
            for &(segment, len) in &report.truncated {
                node.truncate(segment, len);
            }
            node.start_segment(next_segment);
            node.start_raft_writes();
            report
        };
        node.timers.insert((now_ns + RETENTION_CHECK_NS, Timer::Retention));
        if node.spilling() {
            node.timers.insert((now_ns + spill::SPILL_CHECK_NS, Timer::SpillCheck));
        }
        node.drain_replica();
        node.maybe_flush();
        Ok((node, report))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The shard this node state machine serves.
    pub fn shard(&self) -> ShardId {
        ShardId(self.config.shard_index)
    }

    /// In cluster mode, whether this node leads its shard now.
    pub fn is_shard_leader(&self) -> bool {
        self.replication.as_ref().is_some_and(Replication::is_leader)
    }

    /// Bytes of raft entries held in memory (cluster mode; 0 on a single node).
    pub fn raft_memory_bytes(&self) -> u64 {
        self.replication.as_ref().map_or(0, Replication::memory_bytes)
    }

    /// Whether `conn` is a connection this node knows (a client's, or a remote one).
    pub fn knows_connection(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Next id a topic will assign, if the topic exists.
    pub fn topic_next_id(&self, topic: &str) -> Option<u64> {
        self.state.topic_index.get(topic).map(|t| self.state.topics[*t].next_id)
    }

    /// Messages of `group` handed out or held and not yet acked.
    pub fn group_outstanding(&self, topic: &str, group: &str) -> Option<usize> {
        let t = *self.state.topic_index.get(topic)?;
        let g = *self.state.topics[t].group_index.get(group)?;
        Some(self.state.topics[t].groups[g].outstanding_len())
    }

    /// The first id a group considers (set when it was created).
    pub fn group_start_id(&self, topic: &str, group: &str) -> Option<u64> {
        let t = *self.state.topic_index.get(topic)?;
        let g = *self.state.topics[t].group_index.get(group)?;
        Some(self.state.topics[t].groups[g].start_id)
    }

    /// Messages in flight to `conn` for (topic, group), counted from the group's own entries.
    pub fn in_flight_to(&self, conn: ConnId, topic: &str, group: &str) -> Option<usize> {
        let t = *self.state.topic_index.get(topic)?;
        let g = *self.state.topics[t].group_index.get(group)?;
        Some(self.state.topics[t].groups[g].in_flight_to(conn))
    }

    /// What the node holds in memory that its limits bound.
    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            topic_cache_bytes: self.cache_budget.bytes(),
            read_cache_bytes: self.read_cache.bytes(),
            unwritten_log_bytes: self.log_bytes_unwritten(),
            pending_publishes: self.pending_publishes,
            pending_fetches: self.fetches.len(),
            trace_bytes: self.trace_book.bytes(),
            latest_index_bytes: self.state.latest_bytes,
            latest_index_keys: self.state.topics.iter().map(|t| t.latest.keys() as u64).sum(),
            group_state_bytes: self.state.topics.iter().flat_map(|t| &t.groups).map(|g| g.state_bytes() as u64).sum(),
            group_state_spilled_bytes: self.spilled_bytes(),
        }
    }

    /// Asserts the cross-structure invariants (tests and the simulator call it).
    pub fn check_invariants(&self) {
        for (t, topic) in self.state.topics.iter().enumerate() {
            assert!(topic.durable_next_id <= topic.next_id);
            for (g, group) in topic.groups.iter().enumerate() {
                group.check_invariants();
                for (conn_id, conn) in &self.conns {
                    if let Some(sub) = conn.subs.get(&(TopicIdx(t), GroupIdx(g))) {
                        assert_eq!(sub.in_flight as usize, group.in_flight_to(*conn_id), "in-flight count of conn {conn_id}");
                        assert_eq!(sub.in_flight_bytes, group.in_flight_bytes_to(*conn_id), "in-flight bytes of conn {conn_id}");
                        if sub.subscribed && sub.pull.is_none() {
                            assert!(sub.in_flight <= sub.window || sub.over_window, "window exceeded on conn {conn_id}");
                        }
                    }
                }
            }
        }
        if let Some(replication) = &self.replication {
            replication.delivery_waits.check_invariants();
        }
    }

    pub fn handle_input(&mut self, now_ns: u64, input: Input<'_>) {
        self.advance_clock(now_ns);
        if self.stopped {
            return;
        }
        match input {
            Input::Connected { conn } => self.on_connected(conn),
            // The host decodes frames and answers what belongs to the connection as a whole.
            Input::Frame { .. } | Input::Rejected { .. } | Input::Token { .. } => unreachable!("the host takes client frames"),
            Input::Disconnected { conn } => self.on_disconnected(conn),
            Input::Congested { conn, congested } => self.on_congested(conn, congested),
            Input::WriteDone { token, result } => {
                if !self.on_spill_written(token, &result) {
                    self.on_write_done(token, result);
                }
            }
            Input::ReadDone { token, result } => {
                if !self.on_spill_read(token, &result) {
                    self.on_read_done(token, result);
                }
            }
            Input::TruncateDone { token, result } => self.on_truncate_done(token, result),
            Input::PeerMessage { from_node, payload } => self.on_peer_frame(from_node, payload),
            Input::PeerDown { node } => self.on_peer_down(node),
            Input::PeerCongested { node, congested } => self.on_peer_congested(node, congested),
        }
    }

    pub fn handle_timeout(&mut self, now_ns: u64) {
        self.advance_clock(now_ns);
        if self.stopped {
            return;
        }
        loop {
            let timer_at = self.timers.first().map(|(at, _)| *at).filter(|at| *at <= now_ns);
            let delay_at = self.nack_delays.next_due().filter(|at| *at <= now_ns);
            if delay_at.is_some_and(|delay| timer_at.is_none_or(|timer| delay < timer)) {
                let Some((until_ns, (t, g, id))) = self.nack_delays.pop_due(now_ns) else { break };
                self.nack_delay_over(until_ns, t, g, id);
                continue;
            }
            let Some((at, timer)) = timer_at.and_then(|_| self.timers.pop_first()) else { break };
            self.on_timer(at, timer);
        }
        self.replica_timeout();
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        let shard = self.shard();
        self.out.pop_front().map(|output| Node::route_to_peers(shard, output))
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        if self.stopped {
            return None;
        }
        let replica = self.replication.as_ref().and_then(Replication::poll_timeout);
        self.timers.first().map(|(at, _)| *at).into_iter().chain(self.nack_delays.next_due()).chain(replica).min()
    }

    /// True once the node has asked to stop (`Output::Stop`); it takes no more input.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    fn advance_clock(&mut self, now_ns: u64) {
        debug_assert!(now_ns >= self.now_ns, "time went backwards: {} -> {now_ns}", self.now_ns);
        self.now_ns = self.now_ns.max(now_ns);
    }

    /// A nack delay of message `id` ended at `until_ns`: it is ready again, unless it was
    /// settled, delayed anew, or its group replaced meanwhile (the timer was never cancelled).
    fn nack_delay_over(&mut self, until_ns: u64, t: TopicIdx, g: GroupIdx, id: u64) {
        let Some(group) = self.state.topics.get_mut(t.0).and_then(|topic| topic.groups.get_mut(g.0)) else { return };
        if group.delay_over(id, until_ns) {
            self.pump(t, g);
        }
    }

    fn on_timer(&mut self, at: u64, timer: Timer) {
        match timer {
            Timer::AckDeadline { topic, group } => self.on_ack_deadlines(at, topic, group),
            Timer::PullEnd { conn, topic, group } => self.finish_pull(conn, topic, group),
            Timer::SpillCheck => self.on_spill_check(),
            Timer::Pump { topic, group } => self.pump(topic, group),
            Timer::PumpGroups { topic } => self.go_on_sweeping(topic),
            Timer::BatchFlush | Timer::DiskRetry => self.maybe_flush(),
            Timer::Retention => {
                self.enforce_retention();
                self.compact_raft_memory();
                self.tell_peers_about_me();
                self.timers.insert((self.now_ns + RETENTION_CHECK_NS, Timer::Retention));
            }
        }
    }
}
