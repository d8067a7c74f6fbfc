//! Rebuilding a node from its segments: the batch scan of `recovery`, the node's state from
//! the records, and the operator's view of any damage.

use super::reads::stored_message;
use super::{Node, RecoveryReport, SeenSeq, SegmentInfo, NS_PER_MS};
use crate::batch;
use crate::config::TestBug;
use crate::group::{key_hash, Admit, Group};
use crate::ids::{GroupIdx, TopicIdx};
use crate::record::{GroupRecord, MessageRef, RecordRef, SalvagedRecord};
use crate::recovery::{self, BadRegion, Damage, Found, IdRange, RecoveryError, MESSAGE_RECORD_BYTES_MIN};
use crate::topic::Loc;
use std::collections::{BTreeMap, BTreeSet};

/// A place in the log: (segment, offset).
type Place = (u64, u64);

impl Node {
    pub(super) fn load_segments(&mut self, segments: &[(u64, &[u8])]) -> Result<RecoveryReport, RecoveryError> {
        let mut report = RecoveryReport { segments: segments.len(), ..RecoveryReport::default() };
        let mut group_records: BTreeMap<(String, String), GroupRecord> = BTreeMap::new();
        let mut bad: Vec<(u64, BadRegion)> = Vec::new();
        // Where each topic was last named by a snapshot, and the next id it gave.
        let mut last_topic_record: BTreeMap<TopicIdx, (Place, u64)> = BTreeMap::new();
        let mut torn_ids: Vec<(String, u64)> = Vec::new();
        let mut torn_decoded_bytes = 0u64;
        let mut torn_new_topic_first_id = 0u64;
        let mut torn_undecoded_bytes = 0u64;
        let mut acknowledged: BTreeMap<Place, SalvagedRecord> = BTreeMap::new();
        // The next id of each topic as the oldest segment's own snapshot names it: the ids
        // below it were in segments retention deleted (none when segment 1 is still there, or
        // for a topic that snapshot does not name: it was created after the segment began).
        let mut retained_from: BTreeMap<TopicIdx, u64> = BTreeMap::new();
        let mut cluster_record: Option<Place> = None;
        for (position, (segment, bytes)) in segments.iter().enumerate() {
            assert!(position == 0 || segments[position - 1].0 < *segment, "segments must come in ascending order");
            let newest = position + 1 == segments.len();
            let mut last_write_ms = 0;
            // The segment's own snapshot is its first batch; a later one (recording a cut) may
            // name topics created after the segment began.
            let snapshot_end = batch::first_batch_end(bytes).unwrap_or(0);
            let scan = recovery::scan_segment(bytes, newest, |offset, size, rec, found| {
                if found == Found::TornTail {
                    // Never fsynced, so never acknowledged in the promised modes; but a final
                    // batch damaged after its fsync looks the same, so its ids are skipped.
                    // So are the ids a snapshot in it says were given out: it may carry the
                    // only durable trace of ids an earlier recovery skipped.
                    torn_decoded_bytes += size as u64;
                    match rec {
                        RecordRef::Message(m) => torn_ids.push((m.topic.to_string(), m.id)),
                        RecordRef::Topic(r) if r.next_id > 0 => torn_ids.push((r.topic, r.next_id - 1)),
                        // The first id of new topics it records may be the only durable trace
                        // of it (the older segments may predate the salvage that raised it).
                        RecordRef::NewTopics(r) => torn_new_topic_first_id = torn_new_topic_first_id.max(r.first_id),
                        RecordRef::Salvaged(r) => torn_new_topic_first_id = torn_new_topic_first_id.max(r.new_topic_first_id),
                        _ => {}
                    }
                    return;
                }
                match rec {
                    RecordRef::Message(m) => {
                        report.messages += 1;
                        last_write_ms = last_write_ms.max(m.ts_ms);
                        self.recover_message(*segment, offset, size, &m);
                    }
                    RecordRef::Topic(r) => {
                        if let Ok(t) = self.state.topic_for(&r.topic) {
                            let topic = &mut self.state.topics[t];
                            topic.next_id = topic.next_id.max(r.next_id);
                            topic.latest_incomplete |= r.latest_incomplete;
                            last_topic_record.insert(t, ((*segment, offset), r.next_id));
                            if position == 0 && *segment > 1 && offset < snapshot_end && found == Found::Intact {
                                retained_from.entry(t).or_insert(r.next_id);
                            }
                        }
                    }
                    RecordRef::Group(r) => {
                        group_records.insert((r.topic.clone(), r.group.clone()), r);
                    }
                    RecordRef::GroupDropped(r) => {
                        group_records.remove(&(r.topic, r.group));
                    }
                    RecordRef::LatestCopy(m) => {
                        if let (Ok(t), Some(key)) = (self.state.topic_for(m.topic), m.key) {
                            self.state.record_latest(t, m.id, key, m.ts_ms, m.body, *segment);
                        }
                    }
                    RecordRef::Producer(r) => {
                        for (seq, topic, id) in r.seqs {
                            if let Ok(t) = self.state.topic_for(&topic) {
                                self.state.remember_seq(&r.producer, seq, SeenSeq { topic: t, id, durable: true });
                            }
                        }
                    }
                    RecordRef::Salvaged(r) => {
                        acknowledged.insert((r.segment, r.offset), r);
                    }
                    RecordRef::NewTopics(r) => self.state.new_topic_first_id = self.state.new_topic_first_id.max(r.first_id),
                    // A cluster node's log: a single node must not take it for its own.
                    RecordRef::RaftEntry(_) | RecordRef::RaftState(_) | RecordRef::Applied(_) => {
                        if found == Found::Intact {
                            cluster_record.get_or_insert((*segment, offset));
                        }
                    }
                }
            });
            let last_write_ms = if last_write_ms == 0 { self.now_ns / NS_PER_MS } else { last_write_ms };
            self.log.segments.push_back(SegmentInfo::new(*segment, scan.valid_len, last_write_ms, scan.valid_len > 0));
            match scan.bad.last().filter(|r| r.torn_tail) {
                Some(torn) => torn_undecoded_bytes = (torn.end - torn.offset).saturating_sub(torn_decoded_bytes + batch::OVERHEAD_BYTES as u64),
                // The log goes on in a new segment: this one loses its unused zero-filled space
                // and is made durable first (the process that wrote it may have died before its
                // fsync, and the new segment's snapshot will name what it holds).
                None if newest => report.truncated.push((*segment, scan.valid_len)),
                None => {}
            }
            bad.extend(scan.bad.into_iter().map(|region| (*segment, region)));
        }
        if let Some((segment, offset)) = cluster_record {
            let why = format!("{} holds a cluster node's raft log (a record at byte {offset}); start it with its cluster's peers", recovery::segment_file_name(segment));
            return Err(RecoveryError::refused(why));
        }
        self.state.new_topic_first_id = self.state.new_topic_first_id.max(torn_new_topic_first_id);
        for (topic, id) in &torn_ids {
            if let Ok(t) = self.state.topic_for(topic) {
                self.state.topics[t].next_id = self.state.topics[t].next_id.max(id + 1);
            }
        }
        if torn_undecoded_bytes > 0 {
            // Records of the torn batch that no longer decode: their topics and ids are
            // unknown, so every topic skips as many ids as those bytes could hold.
            self.skip_ids(torn_undecoded_bytes / MESSAGE_RECORD_BYTES_MIN + 1, |_| true);
        }
        let mut damage = Vec::new();
        for (segment, region) in bad {
            let described = self.describe_damage(segment, region, &last_topic_record);
            if described.region.torn_tail {
                // Not cut from the file: the log goes on right after it, its first batch a
                // snapshot that records the cut (so later starts neither refuse the region nor
                // read it) with the next ids skipped above, all in one durable write.
                let (offset, end) = (described.region.offset, described.region.end);
                self.salvaged_regions.push(SalvagedRecord { segment, offset, end, new_topic_first_id: self.state.new_topic_first_id, cut: true });
                report.torn_tail = Some(described);
            } else if let Some(earlier) = acknowledged.get(&(segment, described.region.offset)) {
                // Salvaged by an earlier start, whose snapshot already kept its ids out of use:
                // it named every topic that start knew, and the others start above the ids
                // the region may hold. A topic not named after the region was unknown to it,
                // whatever older records name it now (damage may read differently today).
                self.state.new_topic_first_id = self.state.new_topic_first_id.max(earlier.new_topic_first_id);
                for (t, topic) in self.state.topics.iter_mut().enumerate() {
                    let named_after = last_topic_record.get(&TopicIdx(t)).is_some_and(|(place, _)| *place >= (segment, described.region.end));
                    if !named_after {
                        topic.next_id = topic.next_id.max(earlier.new_topic_first_id);
                    }
                }
                self.salvaged_regions.push(earlier.clone());
                report.previously_salvaged.push(described);
            } else {
                damage.push(described);
            }
        }
        if !damage.is_empty() && !self.config.salvage {
            return Err(RecoveryError { damage, refused: None });
        }
        for d in &damage {
            self.skip_ids_a_damaged_region_may_hold(d);
        }
        for d in &damage {
            let (segment, offset, end) = (d.segment, d.region.offset, d.region.end);
            self.salvaged_regions.push(SalvagedRecord { segment, offset, end, new_topic_first_id: self.state.new_topic_first_id, cut: false });
        }
        report.salvaged = damage;
        if self.config.test_bug == Some(TestBug::RecoveryDropsLastRecord) {
            let newest = segments.last().map_or(0, |(segment, _)| *segment);
            for topic in &mut self.state.topics {
                let last = topic.next_id.saturating_sub(1);
                if topic.loc(last).is_some_and(|loc| loc.segment == newest) {
                    topic.roll_back_to(last);
                }
            }
        }
        for topic in &mut self.state.topics {
            topic.durable_next_id = topic.next_id;
            topic.forget_segments_through(0);
        }
        // A remembered (producer, seq) whose message is not on disk (a power cut under
        // `fsync = never` took it while a later snapshot naming it survived; damage) must not
        // answer a retry with that id: the retry is stored anew. Ids retention deleted keep
        // their answer.
        let topics = &self.state.topics;
        for producer in self.state.producers.values_mut() {
            producer.seqs.retain(|_, seen| seen.id < retained_from.get(&seen.topic).copied().unwrap_or(0) || topics[seen.topic].loc(seen.id).is_some());
        }
        for record in group_records.into_values() {
            self.recover_group(&record, segments);
        }
        Ok(report)
    }

    /// Which ids of which topics a bad region may have held: those missing between the last
    /// intact record of the topic before it and the first after it (a later snapshot's next
    /// id bounds it too), less the intact records found inside it.
    fn describe_damage(&self, segment: u64, region: BadRegion, last_topic_record: &BTreeMap<TopicIdx, (Place, u64)>) -> Damage {
        let (start, end) = ((segment, region.offset), (segment, region.end));
        let mut intact_records = 0;
        let mut ids = Vec::new();
        for (t, topic) in self.state.topics.iter().enumerate() {
            // The last id known to be outside the region's reach, then the ids found inside.
            let mut known = 0;
            let mut after = None;
            for (id, loc) in topic.indexed() {
                let place = (loc.segment, loc.offset);
                if place < start {
                    known = id;
                    continue;
                }
                if place >= end {
                    after = Some(id);
                    break;
                }
                intact_records += 1;
                if id > known + 1 {
                    ids.push(IdRange { topic: topic.name.clone(), first: known + 1, last: Some(id - 1) });
                }
                known = id;
            }
            if after.is_none() {
                after = last_topic_record.get(&TopicIdx(t)).filter(|(place, _)| *place >= end).map(|(_, next_id)| *next_id);
            }
            match after {
                Some(after) if after > known + 1 => ids.push(IdRange { topic: topic.name.clone(), first: known + 1, last: Some(after - 1) }),
                Some(_) => {}
                None => ids.push(IdRange { topic: topic.name.clone(), first: known + 1, last: None }),
            }
        }
        Damage { segment, region, intact_records, ids }
    }

    /// Salvage never hands out an id a damaged region may have held: a topic with no intact
    /// record after the region skips as many ids as the region could hold, and so does any
    /// topic created from now on (its name may have been in the region).
    fn skip_ids_a_damaged_region_may_hold(&mut self, damage: &Damage) {
        let bound = (damage.region.end - damage.region.offset) / MESSAGE_RECORD_BYTES_MIN + 1;
        let unbounded: BTreeSet<&str> = damage.ids.iter().filter(|r| r.last.is_none()).map(|r| r.topic.as_str()).collect();
        let unbounded: BTreeSet<String> = unbounded.into_iter().map(str::to_string).collect();
        self.skip_ids(bound, |name| unbounded.contains(name));
    }

    /// Moves the next id of each topic `which` selects, and the first id of topics created
    /// from now on, `count` ids further. A topic known only from the damaged bytes started at
    /// the first id in force when it was created, which may be above 1 after an earlier
    /// salvage: so that first id moves on by `count` too, past every id such a topic held.
    fn skip_ids(&mut self, count: u64, which: impl Fn(&str) -> bool) {
        for topic in self.state.topics.iter_mut().filter(|t| which(&t.name)) {
            topic.next_id += count;
        }
        self.state.new_topic_first_id += count;
    }

    fn recover_message(&mut self, segment: u64, offset: u64, size: usize, m: &MessageRef<'_>) {
        let Ok(t) = self.state.topic_for(m.topic) else { return };
        let topic = &mut self.state.topics[t];
        if m.id < topic.first_id() + topic.indexed_len() {
            // Ids are appended in order; a repeat can only come from a damaged region.
            return;
        }
        topic.index_push(m.id, Loc { segment, offset, len: size as u32 }, m.ts_ms);
        topic.next_id = topic.next_id.max(m.id + 1);
        if let Some(key) = m.key {
            self.state.record_latest(t, m.id, key, m.ts_ms, m.body, segment);
        }
        if let Some(producer) = m.producer {
            self.state.remember_seq(producer, m.seq, SeenSeq { topic: t, id: m.id, durable: true });
        }
    }

    /// Rebuilds a group from its last record: ids above its floor up to the highest acked one
    /// are walked again (filter, key order, prev), so only unacked ones are delivered again.
    fn recover_group(&mut self, record: &GroupRecord, segments: &[(u64, &[u8])]) {
        let Ok(t) = self.state.topic_for(&record.topic) else { return };
        let ack_timeout_ns = self.config.ack_timeout_ms_for(&record.group) * NS_PER_MS;
        let mut group = Group::restore(record, ack_timeout_ns, self.config.max_attempts_for(&record.group));
        group.use_chunk_entries(self.config.group_state_chunk_entries as usize);
        let acked: BTreeSet<u64> = record.acked.iter().copied().filter(|id| *id > record.floor).collect();
        let last_acked = acked.last().copied().unwrap_or(0);
        let topic = &self.state.topics[t];
        while group.cursor() <= last_acked && group.cursor() < topic.next_id {
            let id = group.cursor();
            let message = topic.loc(id).and_then(|loc| {
                let bytes = segments.iter().find(|(s, _)| *s == loc.segment)?.1;
                let start = loc.offset as usize;
                stored_message(bytes.get(start..start + loc.len as usize)?, &topic.name, id).ok().map(|m| (m.key, m.body, m.ts_ms))
            });
            let Some((key, body, stored_ms)) = message else {
                group.skip_missing(topic.first_id());
                continue;
            };
            let passes = group.passes(key, body);
            if group.admit_fresh(id, passes, key.map(key_hash), stored_ms, self.config.test_bug) == Admit::Deliverable && acked.contains(&id) {
                group.ack(id);
            }
        }
        // Coalesced again as before the restart (no timers to cancel yet, not counted again).
        group.take_coalesced();
        let topic = &mut self.state.topics[t];
        let g = GroupIdx(topic.groups.len());
        topic.group_index.insert(record.group.clone(), g);
        topic.groups.push(group);
    }
}
