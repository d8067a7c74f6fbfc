//! The log: batches (group commit), writes and their failures, segments, their snapshots and
//! retention.

use super::{DiskError, DiskOp, Node, Output, Timer, Trace, NS_PER_MS};
use crate::batch;
use crate::config::{FsyncPolicy, TestBug};
use crate::ids::{ConnId, GroupIdx, TopicIdx};
use crate::protocol::{self, ErrorCode};
use crate::topic::StoredMessage;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

pub(super) enum Waiter {
    Puback {
        conn: ConnId,
        req: Option<String>,
        topic: TopicIdx,
        id: u64,
        producer: Option<(String, u64)>,
        /// When the publish arrived (for the publish → puback latency).
        received_ns: u64,
    },
    /// The record of a group an operator dropped: written again if its write fails (or a
    /// restart would bring the group back from its older records).
    GroupDropped(crate::record::GroupDroppedRecord),
    /// A redrive's copy of dead letter `id` of (`topic`, `group`), made as `producer`.
    Redriven {
        topic: TopicIdx,
        group: GroupIdx,
        id: u64,
        producer: String,
    },
    Join {
        conn: ConnId,
        req: Option<String>,
        topic: TopicIdx,
        group: GroupIdx,
        window: u32,
        pull: Option<(u32, u64)>,
    },
    DeadLetter {
        topic: TopicIdx,
        group: GroupIdx,
        id: u64,
    },
    /// The replica's `Persist` of this number is in this batch or an earlier one.
    RaftPersisted {
        number: u64,
    },
}

pub(super) struct Batch {
    pub(super) segment: u64,
    pub(super) offset: u64,
    pub(super) data: Vec<u8>,
    pub(super) len: u64,
    pub(super) create: bool,
    pub(super) waiters: Vec<Waiter>,
    /// Per topic, the next id once this batch is durable.
    pub(super) marks: BTreeMap<TopicIdx, u64>,
    pub(super) started_at_ns: u64,
    pub(super) token: u64,
    /// Written with an fsync: once done, everything in its segment up to its end is durable.
    pub(super) sync: bool,
    /// Its messages with a key: once durable, each may be the newest of its key (`latest`).
    pub(super) keyed: Vec<(TopicIdx, Rc<StoredMessage>, u64)>,
    /// Retention's copies of the newest message of keys in it: (topic, id, the segment its
    /// record was in before), put back should the batch fail.
    pub(super) latest_copies: Vec<(TopicIdx, u64, u64)>,
}

impl Batch {
    pub(super) fn new(segment: u64, offset: u64, create: bool) -> Batch {
        Batch {
            segment,
            offset,
            data: Vec::new(),
            len: 0,
            create,
            waiters: Vec::new(),
            marks: BTreeMap::new(),
            started_at_ns: 0,
            token: 0,
            sync: false,
            keyed: Vec::new(),
            latest_copies: Vec::new(),
        }
    }
}

pub(super) struct SegmentInfo {
    pub(super) id: u64,
    pub(super) bytes: u64,
    pub(super) last_write_ms: u64,
    /// Its first batch (the snapshot of topics' next ids, groups and producers) is durable:
    /// only then may the segments before it be deleted (a power cut may undo a mere write).
    pub(super) snapshot_durable: bool,
    /// Cluster mode: the highest raft index written in it, and the applied index its first
    /// snapshot records (a restart starting from it applies the entries after that again).
    pub(super) last_entry_index: u64,
    pub(super) snapshot_applied_index: u64,
    /// Cluster mode: bytes of its first snapshot's records (after the batch header, up to
    /// and including `Applied`), which state transfer reads back and sends.
    pub(super) snapshot_len: u32,
}

impl SegmentInfo {
    pub(super) fn new(id: u64, bytes: u64, last_write_ms: u64, snapshot_durable: bool) -> SegmentInfo {
        SegmentInfo { id, bytes, last_write_ms, snapshot_durable, last_entry_index: 0, snapshot_applied_index: 0, snapshot_len: 0 }
    }
}

pub(super) struct Log {
    pub(super) segment: u64,
    pub(super) segment_len: u64,
    pub(super) open: Batch,
    pub(super) queued: VecDeque<Batch>,
    pub(super) flushing: Option<Batch>,
    pub(super) segments: VecDeque<SegmentInfo>,
    /// The current segment has bytes written without an fsync after them.
    pub(super) segment_unsynced: bool,
    /// Where the snapshot recording a torn tail's cut waits to be written (see
    /// `continue_segment_after`): until it is, it must begin the log's next write there.
    pub(super) cut_pending: Option<(u64, u64)>,
    /// Cluster mode: a state installed from the leader begins this segment; the segments
    /// before it go once its snapshot is durable (`state_transfer`).
    pub(super) superseded_before: Option<u64>,
    /// Bytes the next batch's buffer starts with: the last batch's size, so that a batch is
    /// one allocation rather than one per doubling (the buffer goes to the disk with its write).
    pub(super) batch_bytes_hint: usize,
}

/// Bounds of `Log::batch_bytes_hint`.
const BATCH_BYTES_HINT_MIN: usize = 1 << 10;
const BATCH_BYTES_HINT_MAX: usize = 256 << 10;

impl Node {
    /// Bytes of the log not yet written: the open batch, batches queued behind the write in
    /// flight, and that write.
    pub(super) fn log_bytes_unwritten(&self) -> u64 {
        let queued: u64 = self.log.queued.iter().map(|b| b.data.len() as u64).sum();
        self.log.open.data.len() as u64 + queued + self.log.flushing.as_ref().map_or(0, |b| b.len)
    }

    pub(super) fn mark_group_dirty(&mut self, t: TopicIdx, g: GroupIdx) {
        if self.state.topics[t].groups[g].dropped {
            return;
        }
        if self.dirty_groups.is_empty() {
            self.groups_dirty_since_ns = self.now_ns;
        }
        self.dirty_groups.insert((t, g));
    }

    fn write_dirty_groups(&mut self) {
        if self.replication.is_some() {
            return self.propose_positions();
        }
        // Popped one by one, not taken: the emptied set keeps its node for the next acks.
        while let Some((t, g)) = self.dirty_groups.pop_first() {
            self.open_batch_data();
            let topic = &self.state.topics[t];
            self.log.segment_len += topic.groups[g].encode_record(&topic.name, &mut self.log.open.data) as u64;
        }
    }

    /// Rolls to a new segment if a record of `size` bytes would not fit in this one.
    pub(super) fn make_room_in_segment(&mut self, size: u64) {
        let framed = size + batch::OVERHEAD_BYTES as u64;
        if self.log.segment_len > 0 && self.log.segment_len + framed > self.config.segment_bytes_max {
            self.roll_segment();
        }
    }

    /// The open batch's buffer, its header begun (and counted in the segment) on first use.
    pub(super) fn open_batch_data(&mut self) -> &mut Vec<u8> {
        let open = &mut self.log.open;
        if open.data.is_empty() {
            open.data.reserve(self.log.batch_bytes_hint.clamp(BATCH_BYTES_HINT_MIN, BATCH_BYTES_HINT_MAX));
            batch::begin(&mut open.data);
            open.started_at_ns = self.now_ns;
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
    pub(super) fn truncate(&mut self, segment: u64, len: u64) {
        let token = self.next_token;
        self.next_token += 1;
        self.truncating.insert(token);
        self.out.push_back(Output::Disk(DiskOp::Truncate { token, segment, len }));
    }

    pub(super) fn on_truncate_done(&mut self, token: u64, result: Result<(), DiskError>) {
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
    pub(super) fn stop(&mut self, why: String) {
        self.stopped = true;
        self.out.retain(|o| !matches!(o, Output::Disk(DiskOp::Write { .. } | DiskOp::Truncate { .. } | DiskOp::Delete { .. })));
        self.out.push_back(Output::Stop { why });
    }

    /// Starts the next write if none is in flight and the fsync policy says it is time.
    pub(super) fn maybe_flush(&mut self) {
        if self.log.flushing.is_some() || !self.truncating.is_empty() || self.stopped {
            return;
        }
        if let Some(until_ns) = self.disk_full_until_ns {
            if self.now_ns < until_ns {
                self.timers.insert((until_ns, Timer::DiskRetry));
                return;
            }
            self.disk_full_until_ns = None;
        }
        let batch = match self.log.queued.pop_front() {
            Some(batch) => batch,
            None => {
                let open = &self.log.open;
                let publishing = !open.data.is_empty() || !open.waiters.is_empty() || !open.marks.is_empty();
                if !self.dirty_groups.is_empty() {
                    // Group positions ride along with publishes; alone, they wait a little so
                    // a stream of acks costs one small write, not one write per ack.
                    let due = self.groups_dirty_since_ns + self.config.ack_persist_interval_ms * NS_PER_MS;
                    if publishing || self.now_ns >= due {
                        if !publishing {
                            self.log.open.started_at_ns = self.now_ns;
                        }
                        self.write_dirty_groups();
                        if self.log.flushing.is_some() || self.stopped {
                            // In cluster mode positions are proposed, and the replica's write
                            // for them may have started already.
                            return;
                        }
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
                    let due = open.started_at_ns + self.config.batch_interval_ms * NS_PER_MS;
                    if (open.data.len() as u64) < self.config.batch_bytes && self.now_ns < due {
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
        self.log.batch_bytes_hint = batch.data.len();
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
        // So are retention's copies of the newest messages of keys: the segment holding the
        // originals goes once they are written, and a power cut must not take both.
        let copies = !batch.latest_copies.is_empty();
        let sync = (self.config.fsync != FsyncPolicy::Never && promised) || last_of_segment || snapshot_pending || copies;
        batch.sync = sync;
        if !last_of_segment {
            self.log.segment_unsynced = !sync;
        }
        let op = DiskOp::Write { token, segment: batch.segment, offset: batch.offset, data, create: batch.create, sync };
        self.out.push_back(Output::Disk(op));
        self.log.flushing = Some(batch);
    }

    pub(super) fn on_write_done(&mut self, token: u64, result: Result<(), DiskError>) {
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
                    info.last_write_ms = self.now_ns / NS_PER_MS;
                    info.snapshot_durable |= batch.sync;
                }
                self.complete_batch(batch);
                self.delete_superseded();
            }
            Err(error) => self.fail_store(batch, error),
        }
        self.maybe_flush();
    }

    fn complete_batch(&mut self, batch: Batch) {
        for (t, next_id) in &batch.marks {
            let topic = &mut self.state.topics[*t];
            topic.durable_next_id = topic.durable_next_id.max(*next_id);
        }
        for (t, message, segment) in &batch.keyed {
            let key = message.key.as_deref().expect("only messages with a key are listed");
            self.state.record_latest(*t, message.id, key, message.ts_ms, &message.body, *segment);
        }
        for waiter in batch.waiters {
            match waiter {
                Waiter::Puback { conn, req, topic, id, producer, received_ns } => {
                    self.pending_publishes -= 1;
                    self.stats.publish_to_puback.record(self.now_ns.saturating_sub(received_ns));
                    if let Some((name, seq)) = producer {
                        if let Some(seen) = self.state.producers.get_mut(&name).and_then(|p| p.seqs.get_mut(&seq)) {
                            seen.durable = true;
                        }
                    }
                    if self.conns.contains_key(&conn) {
                        let mut frame = String::with_capacity(64);
                        protocol::encode_puback(&mut frame, req.as_deref(), &self.state.topics[topic].name, id);
                        self.send(conn, frame);
                    }
                }
                Waiter::Join { conn, req, topic, group, window, pull } => {
                    let joined = &mut self.state.topics[topic].groups[group];
                    if joined.dropped {
                        let why = format!("group '{}' was dropped by an operator", joined.name);
                        self.send_error(conn, req.as_deref(), crate::protocol::ErrorCode::NotSubscribed, &why);
                        continue;
                    }
                    joined.durable = true;
                    self.admit_member(conn, req, topic, group, window, pull);
                }
                Waiter::GroupDropped(_) => {}
                Waiter::Redriven { topic, group, id, producer } => {
                    if let Some(seen) = self.state.producers.get_mut(&producer).and_then(|p| p.seqs.get_mut(&id)) {
                        seen.durable = true;
                    }
                    self.settle_redriven(topic, group, id);
                }
                Waiter::DeadLetter { topic, group, id } => {
                    self.state.topics[topic].groups[group].finish_dead_letter(id, true);
                    self.mark_group_dirty(topic, group);
                    self.pump(topic, group);
                }
                Waiter::RaftPersisted { number } => self.on_raft_persisted(number),
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
        if self.replication.is_some() {
            // The replica already holds what the write was to make durable (raft reads it back
            // from memory), so it cannot be taken back like a single node's batch: stop, and
            // let the restart rebuild from what is durable here and on the peers.
            return self.stop(format!("a write of the raft log failed ({error:?}); restart to recover from the durable log"));
        }
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
        let mut dropped_again = Vec::new();
        let mut to_pump = BTreeSet::new();
        // Retention's copies are lost too: their keys' newest records are where they were, and
        // retention copies them again before it deletes that segment.
        for (t, id, segment) in lost.iter().flat_map(|b| &b.latest_copies) {
            self.state.topics[*t].latest.moved(*id, *segment);
        }
        for waiter in lost.into_iter().flat_map(|b| b.waiters) {
            match waiter {
                Waiter::Puback { conn, req, producer, .. } => {
                    self.pending_publishes -= 1;
                    publishes_failed += 1;
                    if let Some((name, seq)) = producer {
                        if let Some(p) = self.state.producers.get_mut(&name) {
                            p.seqs.remove(&seq);
                        }
                    }
                    if self.conns.contains_key(&conn) {
                        self.send_error(conn, req.as_deref(), code, &message);
                    }
                }
                Waiter::Join { .. } => rejoin.push(waiter),
                Waiter::DeadLetter { topic, group, id } => {
                    self.state.topics[topic].groups[group].finish_dead_letter(id, false);
                    to_pump.insert((topic, group));
                }
                // The copy is gone with the batch (and its seq with the non-durable ones below):
                // the dead letter stays in flight to the redrive and is copied again after its
                // ack timeout.
                Waiter::Redriven { .. } => {}
                Waiter::GroupDropped(record) => dropped_again.push(record),
                Waiter::RaftPersisted { .. } => unreachable!("cluster mode stops on a failed write"),
            }
        }
        for topic in &mut self.state.topics {
            let durable = topic.durable_next_id;
            topic.roll_back_to(durable);
        }
        self.cache_budget.recount(&self.state.topics);
        let topics = &self.state.topics;
        self.read_cache.retain(|(t, id)| *id < topics[*t].next_id);
        for p in self.state.producers.values_mut() {
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
                self.disk_full_until_ns = Some(self.now_ns + self.config.disk_full_retry_ms * NS_PER_MS);
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
        for record in dropped_again {
            self.write_group_dropped(record);
        }
        for (t, g) in to_pump {
            self.pump(t, g);
        }
    }

    fn mark_all_groups_dirty(&mut self) {
        let all: Vec<(TopicIdx, GroupIdx)> = self.state.topics.iter().enumerate().flat_map(|(t, topic)| (0..topic.groups.len()).map(move |g| (TopicIdx(t), GroupIdx(g)))).collect();
        for (t, g) in all {
            self.mark_group_dirty(t, g);
        }
    }

    /// Seals the open batch and starts segment `segment + 1` with a snapshot of the state, so
    /// that older segments can be deleted without losing topics, groups or producers.
    pub(super) fn roll_segment(&mut self) {
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

    pub(super) fn start_segment(&mut self, segment: u64) {
        self.log.segments.push_back(SegmentInfo::new(segment, 0, self.now_ns / NS_PER_MS, false));
        self.begin_with_snapshot(segment, 0, true);
    }

    /// Recovery found a torn tail in `segment` ending at `end`: the log goes on right after it
    /// with a snapshot that records the cut (see `load_segments`). The segment counts as having
    /// no snapshot until that one is durable, so retention keeps the older segments meanwhile.
    pub(super) fn continue_segment_after(&mut self, segment: u64, end: u64) {
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
        debug_assert!(self.log.open.keyed.is_empty() && self.log.open.latest_copies.is_empty(), "their records are in the data");
        self.log.segment = segment;
        self.log.segment_len = offset;
        self.log.segment_unsynced = false;
        self.log.open = Batch::new(segment, offset, create);
        self.log.open.waiters = waiters;
        self.log.open.marks = marks;
        self.log.open.started_at_ns = self.now_ns;
        let mut snapshot = Vec::new();
        batch::begin(&mut snapshot);
        let with_latest = self.config.test_bug != Some(TestBug::LatestLeftOutOfSnapshots);
        self.state.encode_snapshot(&mut snapshot, &self.salvaged_regions, with_latest);
        if let (Some(applied), 0) = (self.state.applied, offset) {
            let info = self.log.segments.back_mut().expect("the segment is listed");
            info.snapshot_applied_index = applied.index;
            info.snapshot_len = (snapshot.len() - batch::HEADER_BYTES) as u32;
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

    pub(super) fn enforce_retention(&mut self) {
        let now_ms = self.now_ns / NS_PER_MS;
        // A segment goes only once a newer one's snapshot is durable (until then it may hold
        // the only record of ids given out) and no write to it is in flight or queued. The
        // segment of the durable snapshot before that one stays too: should the newest
        // snapshot be the log's final batch and be damaged, the older one and what follows it
        // still tell recovery every id given out. (Not merely the segment just before: after a
        // failed write that segment may hold nothing at all.)
        let mut durable_snapshots = self.log.segments.iter().filter(|s| s.snapshot_durable).map(|s| s.id).rev();
        let before_snapshot = durable_snapshots.nth(1).unwrap_or(0);
        let writing = self.log.flushing.iter().chain(&self.log.queued).map(|b| b.segment).min().unwrap_or(u64::MAX);
        let oldest_in_use = before_snapshot.min(writing).min(self.log.segment);
        loop {
            let total: u64 = self.log.segments.iter().map(|s| s.bytes).sum();
            let unit = self.retention_unit();
            if unit >= self.log.segments.len() {
                return;
            }
            let newest_of_unit = &self.log.segments[unit - 1];
            if newest_of_unit.id >= oldest_in_use {
                return;
            }
            let too_big = total > self.config.retention_bytes;
            let age_ms = if self.config.test_bug == Some(TestBug::RetentionTooEarly) { self.config.retention_age_ms / 4 } else { self.config.retention_age_ms };
            let too_old = newest_of_unit.last_write_ms + age_ms < now_ms;
            if !too_big && !too_old {
                return;
            }
            if !self.latest_copied_before(newest_of_unit.id) {
                return;
            }
            for _ in 0..unit {
                let segment = self.log.segments.pop_front().expect("the unit is listed").id;
                for topic in &mut self.state.topics {
                    topic.forget_segments_through(segment);
                }
                self.salvaged_regions.retain(|r| r.segment > segment);
                if let Some(replication) = self.replication.as_mut() {
                    replication.forget_segments_through(segment);
                }
                self.delete_segment(segment);
            }
        }
    }

    /// How many of the oldest segments must go together. One on a single node; in cluster
    /// mode a restart starts from the oldest segment's snapshot and applies the entries after
    /// its applied index, so a segment holding entries above the next one's snapshot goes
    /// only with it (entries written before a roll may be applied after it).
    fn retention_unit(&self) -> usize {
        let segments = &self.log.segments;
        let mut needed = segments.front().map_or(0, |s| s.last_entry_index);
        let mut unit = 1;
        while unit < segments.len() && segments[unit].snapshot_applied_index < needed {
            needed = needed.max(segments[unit].last_entry_index);
            unit += 1;
        }
        unit
    }

    /// Deletes `segment`'s file (retention, or a state installed in its place).
    pub(super) fn delete_segment(&mut self, segment: u64) {
        self.stats.segments_deleted += 1;
        self.out.push_back(Output::Disk(DiskOp::Delete { segment }));
        self.out.push_back(Output::Trace(Trace::SegmentDeleted { segment }));
    }
}
