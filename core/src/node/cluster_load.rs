//! Rebuilding a cluster node from its segments. The oldest segment's snapshot gives the state
//! as of a raft index (its `Applied` record, written last); the replica restarts from the
//! entries and hard state written since, and raft hands the committed entries after that
//! index over to be applied again, in order, so they give the ids they gave before, and the
//! groups the positions they were given (positions are entries too). A torn final write was never reported durable
//! (raft never counted it) and is cut; any other damage stops the start, named: salvage is
//! not offered, a damaged replica is to be rebuilt from its peers.

use super::replication::{RecoveredLog, Replication};
use super::state::SeenSeq;
use super::{Node, RecoveryReport, SegmentInfo, NS_PER_MS};
use crate::batch;
use crate::cluster::command::{self, Command};
use crate::cluster::raft_log;
use crate::group::Group;
use crate::ids::GroupIdx;
use crate::record::{AppliedRecord, GroupRecord, RecordRef};
use crate::recovery::{segment_file_name, RecoveryError};
use crate::topic::Loc;
use raft::eraftpb::Entry;
use std::collections::BTreeMap;

impl Node {
    /// A topic's next id, a producer's seqs, the first id of new topics or the newest message
    /// of a key, as a snapshot records them (groups go last, through `restore_group`, once every topic is known).
    pub(super) fn take_snapshot_record(&mut self, record: RecordRef<'_>) {
        match record {
            RecordRef::Topic(r) => {
                if let Ok(t) = self.state.topic_for(&r.topic) {
                    let topic = &mut self.state.topics[t];
                    (topic.next_id, topic.durable_next_id) = (r.next_id, r.next_id);
                    topic.latest_incomplete |= r.latest_incomplete;
                    topic.forget_segments_through(0);
                }
            }
            RecordRef::Producer(r) => {
                for (seq, topic, id) in r.seqs {
                    if let Ok(t) = self.state.topic_for(&topic) {
                        self.state.remember_seq(&r.producer, seq, SeenSeq { topic: t, id, durable: true });
                    }
                }
            }
            RecordRef::NewTopics(r) => self.state.new_topic_first_id = r.first_id,
            RecordRef::LatestCopy(m) => {
                if let (Ok(t), Some(key)) = (self.state.topic_for(m.topic), m.key) {
                    // Segment 0: a cluster does not copy by segment (the snapshots carry them).
                    self.state.record_latest(t, m.id, key, m.ts_ms, m.body, 0);
                }
            }
            _ => {}
        }
    }

    /// A group as the snapshot records it: the acked ids above its floor are settled when
    /// delivery reaches them (positions applied again after it settle more).
    pub(super) fn restore_group(&mut self, record: &GroupRecord) {
        let Ok(t) = self.state.topic_for(&record.topic) else { return };
        let ack_timeout_ns = self.config.ack_timeout_ms_for(&record.group) * NS_PER_MS;
        let mut group = Group::restore(record, ack_timeout_ns, self.config.max_attempts_for(&record.group));
        group.take_position(record);
        let topic = &mut self.state.topics[t];
        if !topic.group_index.contains_key(&record.group) {
            topic.group_index.insert(record.group.clone(), GroupIdx(topic.groups.len()));
            topic.groups.push(group);
        }
    }

    pub(super) fn recover_cluster(&mut self, all_segments: &[(u64, &[u8])]) -> Result<RecoveryReport, RecoveryError> {
        // A state installed from the leader supersedes every segment before its own.
        let start = newest_installed(all_segments);
        let superseded: Vec<u64> = all_segments[..start].iter().map(|(segment, _)| *segment).collect();
        let segments = &all_segments[start..];
        let oldest = segments.first().map(|(segment, _)| *segment);
        let mut in_snapshot = true;
        let mut applied = None;
        let mut first_applied: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
        let mut snapshot_groups: Vec<GroupRecord> = Vec::new();
        let mut single_node_record = None;
        let read = raft_log::read(segments, |segment, offset, size, record| {
            let snapshot = in_snapshot && Some(segment) == oldest;
            match record {
                RecordRef::Applied(a) => {
                    // The segment's own snapshot ends with it: its records' bytes are those
                    // after the first batch's header, up to here.
                    let snapshot_len = (offset as usize + size).saturating_sub(batch::HEADER_BYTES) as u32;
                    first_applied.entry(segment).or_insert((a.index, snapshot_len));
                    if snapshot {
                        applied = Some(a);
                        in_snapshot = false;
                    }
                }
                RecordRef::Group(r) if snapshot => snapshot_groups.push(r),
                record @ (RecordRef::Topic(_) | RecordRef::Producer(_) | RecordRef::NewTopics(_) | RecordRef::LatestCopy(_)) if snapshot => self.take_snapshot_record(record),
                RecordRef::Message(_) => {
                    single_node_record.get_or_insert((segment, offset));
                }
                // Later snapshots say what applying the entries again rebuilds.
                _ => {}
            }
        });
        let read = read.map_err(|(segment, region)| {
            let file = segment_file_name(segment);
            RecoveryError::refused(format!("{file} bytes {}..{} are damaged ({}): the raft log written there is unreadable", region.offset, region.end, region.error))
        })?;
        if let Some((segment, offset)) = single_node_record {
            return Err(RecoveryError::refused(format!(
                "{} holds a single node's log (a message record at byte {offset}); a cluster node cannot take it over",
                segment_file_name(segment)
            )));
        }
        let first_segment = self.shard().first_id();
        let applied = match (applied, oldest) {
            (Some(applied), _) if applied.shards != self.config.shards => {
                return Err(RecoveryError::refused(format!(
                    "the data directory was written with shards = {}, and this node has shards = {}: a data directory's shard count cannot change (its topics would move to other shards)",
                    applied.shards, self.config.shards
                )))
            }
            (Some(applied), _) => applied,
            // The shard's first segment begins with the first snapshot; a torn one recorded
            // nothing yet.
            (None, None) => AppliedRecord::default(),
            (None, Some(segment)) if segment == first_segment => AppliedRecord::default(),
            (None, Some(segment)) => return Err(RecoveryError::refused(format!("{} has no snapshot to start from", segment_file_name(segment)))),
        };
        let entry_locs: BTreeMap<u64, Loc> = read.places.iter().map(|(index, place)| (*index, Loc { segment: place.segment, offset: place.offset, len: place.len })).collect();
        let mut last_write_ms: BTreeMap<u64, u64> = BTreeMap::new();
        let mut last_entry: BTreeMap<u64, u64> = BTreeMap::new();
        for (index, place) in &read.places {
            last_entry.insert(place.segment, *index);
            if let Some(Ok(Command::Publish(publish))) = raft_log::entry_at(segments, place).map(|record| command::decode(record.data)) {
                let ms = last_write_ms.entry(place.segment).or_default();
                *ms = (*ms).max(publish.ts_ms);
            }
        }
        for (position, (segment, bytes)) in segments.iter().enumerate() {
            let newest = position + 1 == segments.len();
            let len = if newest { read.newest_valid_len } else { bytes.len() as u64 };
            let written_ms = last_write_ms.get(segment).copied().unwrap_or(self.now_ns / NS_PER_MS);
            let mut info = SegmentInfo::new(*segment, len, written_ms, true);
            info.last_entry_index = last_entry.get(segment).copied().unwrap_or(0);
            (info.snapshot_applied_index, info.snapshot_len) = first_applied.get(segment).copied().unwrap_or((0, 0));
            self.log.segments.push_back(info);
        }
        for record in &snapshot_groups {
            self.restore_group(record);
        }
        let published_before = self.stats.published;
        self.state.applied = Some(AppliedRecord { installed: false, shards: self.config.shards, ..applied });
        for segment in superseded {
            self.delete_segment(segment);
        }
        // The committed entries after the snapshot are applied again here, read one at a time
        // from the segments; raft gets them by term and only those after the commit in memory
        // (a retained log may be larger than memory).
        let last = read.places.last_key_value().map_or(applied.index, |(index, _)| *index);
        let commit = read.hard_state.commit.max(applied.index).min(last);
        let terms: Vec<(u64, u64)> = read.places.range(applied.index + 1..).map(|(index, place)| (*index, place.term)).collect();
        let tail: Vec<Entry> = read.places.range(commit + 1..).filter_map(|(index, _)| read.entry(segments, *index)).collect();
        let log = RecoveredLog { hard_state: read.hard_state.clone(), terms, tail, applied, applied_through: commit, entry_locs };
        let replication = Replication::recover(&self.config, self.now_ns, log).map_err(|e| RecoveryError::refused(format!("the raft log cannot be restarted from: {e}")))?;
        self.replication = Some(replication);
        for index in applied.index + 1..=commit {
            let Some(record) = read.places.get(&index).and_then(|place| raft_log::entry_at(segments, place)) else {
                return Err(RecoveryError::refused(format!("raft entry {index} cannot be read back where the log's scan found it")));
            };
            if record.entry_type == 0 {
                // The proposer's context is not kept on disk: no proposal of this run waits.
                self.apply_entry(index, record.term, record.data, &[]);
            }
        }
        // What raft asks to write waits for the log to start below, after the state rebuilt.
        self.drain_replica();
        // raft's log starts where retention left it.
        self.compact_raft_memory();
        let mut report = RecoveryReport { segments: segments.len(), messages: self.stats.published - published_before, ..RecoveryReport::default() };
        if let Some((newest, _)) = segments.last() {
            // Its unused space, or a torn final write, goes before the log moves on.
            report.truncated.push((*newest, read.newest_valid_len));
        }
        Ok(report)
    }
}

/// The position of the newest segment whose own snapshot is a state installed from the
/// leader (0 when none is: recovery starts from the oldest).
fn newest_installed(segments: &[(u64, &[u8])]) -> usize {
    for (position, (_, bytes)) in segments.iter().enumerate().rev() {
        let mut installed = false;
        let _ = batch::read_batch(bytes, |_, _, record| installed |= matches!(record, RecordRef::Applied(a) if a.installed));
        if installed {
            return position;
        }
    }
    0
}
