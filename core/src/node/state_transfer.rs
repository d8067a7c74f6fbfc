//! State transfer: a follower behind the leader's first raft entry (retention deleted the
//! entries it lacks) gets the state as of that entry instead, as a raft snapshot. Its data
//! is the records of the leader's oldest segment's own snapshot (topics' next ids, groups,
//! producers, ending with `Applied`), read back from disk once and checked record by record;
//! message bodies below that entry are gone on the leader too, so the follower misses
//! nothing the leader still holds: the entries after it follow as appends.
//!
//! The follower replaces its state with the records, starts a new segment whose snapshot is
//! that state (its `Applied` marked installed, which recovery starts from), and deletes every
//! older segment once that snapshot is durable.

use super::replication::CLOSE_TRY_AGAIN_LATER;
use super::state::State;
use super::{DiskError, DiskOp, Node, Output, Trace};
use crate::batch;
use crate::cache::{CacheBudget, ReadCache};
use crate::ids::ConnId;
use crate::record::{self, AppliedRecord, GroupRecord, RecordRef};

/// Decodes snapshot records; the `Applied` record must come last and name `index`.
fn check_snapshot(data: &[u8], index: u64) -> Result<Vec<RecordRef<'_>>, String> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let (record, size) = record::decode_record(&data[at..]).map_err(|e| format!("record at byte {at}: {e}"))?;
        records.push(record);
        at += size;
    }
    match records.last() {
        Some(RecordRef::Applied(a)) if a.index == index => Ok(records),
        Some(RecordRef::Applied(a)) => Err(format!("it is as of entry {}, not {index}", a.index)),
        _ => Err("it does not end with the entry it is as of".into()),
    }
}

/// The state as a follower is sent it: the snapshot's own bytes, or, when they would not fit
/// in `bytes_max` (one peer frame carries them), without its copies of the newest message of
/// each key, the topics that had some marked `latest_incomplete` (their `latest` then answers
/// `overloaded` on the follower rather than leave keys out unsaid).
fn state_for_transfer(data: &[u8], records: &[RecordRef<'_>], bytes_max: usize) -> Vec<u8> {
    if data.len() <= bytes_max {
        return data.to_vec();
    }
    let trimmed: std::collections::BTreeSet<&str> = records.iter().filter_map(|r| if let RecordRef::LatestCopy(m) = r { Some(m.topic) } else { None }).collect();
    let mut out = Vec::new();
    let mut at = 0;
    for record in records {
        let size = record::decode_record(&data[at..]).map(|(_, size)| size).expect("checked by check_snapshot");
        match record {
            RecordRef::LatestCopy(_) => {}
            RecordRef::Topic(r) if trimmed.contains(r.topic.as_str()) => {
                record::encode_control(&mut out, record::KIND_TOPIC, &record::TopicRecord { latest_incomplete: true, ..r.clone() });
            }
            _ => out.extend_from_slice(&data[at..at + size]),
        }
        at += size;
    }
    out
}

impl Node {
    /// Leader: followers behind the log's first entry need the state as of the entry before
    /// it; reads it back (once) for raft to send, and says which followers get it.
    pub(super) fn serve_state_requests(&mut self) {
        let Some(replication) = self.replication.as_mut() else { return };
        let wanted = replication.replica_mut().take_snapshot_wanted();
        if wanted.is_empty() {
            return;
        }
        let (index, _) = replication.replica().compacted();
        for node in wanted {
            if replication.reported_behind.insert((node, index)) {
                self.out.push_back(Output::Trace(Trace::FollowerBehindLog { shard: self.config.shard_index, node, first_entry: index + 1 }));
            }
        }
        let replication = self.replication.as_mut().expect("cluster mode");
        if replication.snapshot_read.is_some() {
            return;
        }
        let Some(oldest) = self.log.segments.front().filter(|s| s.snapshot_applied_index == index && s.snapshot_len > 0) else { return };
        let (segment, len) = (oldest.id, oldest.snapshot_len);
        let token = self.next_token;
        self.next_token += 1;
        self.replication.as_mut().expect("cluster mode").snapshot_read = Some((token, index));
        self.out.push_back(Output::Disk(DiskOp::Read { token, segment, offset: batch::HEADER_BYTES as u64, len }));
    }

    /// True when `token` is the read of the state for followers (and it is handled).
    pub(super) fn on_state_read(&mut self, token: u64, result: &Result<&[u8], DiskError>) -> bool {
        let Some(replication) = self.replication.as_mut() else { return false };
        let Some((_, index)) = replication.snapshot_read.take_if(|(t, _)| *t == token) else { return false };
        let checked = match result {
            // Half a raft message: the frame carrying it has room for its own fields.
            Ok(bytes) => check_snapshot(bytes, index).map(|records| state_for_transfer(bytes, &records, crate::cluster::RAFT_MESSAGE_BYTES / 2)),
            Err(e) => Err(format!("{e:?}")),
        };
        match checked {
            Ok(data) => self.replication.as_mut().expect("cluster mode").replica_mut().set_snapshot_data(index, data),
            Err(why) => self.stop(format!(
                "the oldest segment's snapshot (the state as of raft entry {index}) cannot be read back ({why}): this node's log is damaged; another replica must lead"
            )),
        }
        true
    }

    /// Follower: the leader's state as of entry `index` replaces this node's.
    pub(super) fn install_state(&mut self, index: u64, term: u64, data: &[u8]) {
        let records = match check_snapshot(data, index) {
            Ok(records) => records,
            Err(why) => return self.stop(format!("the leader's state as of raft entry {index} does not decode ({why})")),
        };
        // Members and fetches are the leader's; a follower's own clients are forwarded. Any
        // left from when this node led end here.
        let members: Vec<ConnId> = self.conns.iter().filter(|(_, c)| !c.subs.is_empty()).map(|(conn, _)| *conn).collect();
        for conn in members {
            if !self.redrives.contains_key(&conn) {
                self.out.push_back(Output::Close { conn, code: CLOSE_TRY_AGAIN_LATER, reason: "this node took the leader's state; subscribe again".into() });
            }
            self.on_disconnected(conn);
        }
        self.redrives.clear();
        // Its events name topics and groups by index in the state being replaced.
        self.trace_book.clear(self.now_ns);
        self.fetches.clear();
        self.forget_reads();
        self.state = State::new(&self.config);
        self.nack_delays = crate::timer_wheel::TimerWheel::default();
        self.read_cache = ReadCache::default();
        self.cache_budget = CacheBudget::default();
        self.dirty_groups.clear();
        let mut groups: Vec<GroupRecord> = Vec::new();
        for record in records {
            match record {
                RecordRef::Group(r) => groups.push(r),
                other => self.take_snapshot_record(other),
            }
        }
        for group in &groups {
            self.restore_group(group);
        }
        self.state.applied = Some(AppliedRecord { index, term, installed: true, shards: self.config.shards });
        self.replication.as_mut().expect("cluster mode").forget_all_entries();
        // The new segment's snapshot is this state, marked installed: recovery starts there.
        self.roll_segment();
        self.state.applied = Some(AppliedRecord { index, term, installed: false, shards: self.config.shards });
        self.log.superseded_before = Some(self.log.segment);
        self.out.push_back(Output::Trace(Trace::StateInstalled { shard: self.config.shard_index, index }));
    }

    /// Once the segment holding an installed state has its snapshot durable, the segments
    /// before it are superseded: deleted.
    pub(super) fn delete_superseded(&mut self) {
        let Some(first_kept) = self.log.superseded_before else { return };
        if !self.log.segments.iter().any(|s| s.id == first_kept && s.snapshot_durable) {
            return;
        }
        self.log.superseded_before = None;
        while self.log.segments.front().is_some_and(|s| s.id < first_kept) {
            let segment = self.log.segments.pop_front().expect("checked above").id;
            self.delete_segment(segment);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{MessageRef, TopicRecord};

    fn snapshot() -> Vec<u8> {
        let mut data = Vec::new();
        for topic in ["orders", "payments"] {
            record::encode_control(&mut data, record::KIND_TOPIC, &TopicRecord { topic: topic.into(), next_id: 40, latest_incomplete: false });
        }
        for id in [3, 7] {
            let copy = MessageRef { id, ts_ms: 1, topic: "orders", key: Some("order-1"), producer: None, seq: 0, body: "{}" };
            record::encode_latest_copy(&mut data, &copy);
        }
        record::encode_control(&mut data, record::KIND_APPLIED, &AppliedRecord { index: 9, term: 2, installed: false, shards: 1 });
        data
    }

    #[test]
    fn a_state_too_large_for_a_frame_goes_without_its_latest_copies_and_says_so() {
        let data = snapshot();
        let records = check_snapshot(&data, 9).unwrap();
        assert_eq!(state_for_transfer(&data, &records, data.len()), data, "sent as it is when it fits");
        let trimmed = state_for_transfer(&data, &records, data.len() - 1);
        let records = check_snapshot(&trimmed, 9).expect("still a state as of entry 9");
        assert!(!records.iter().any(|r| matches!(r, RecordRef::LatestCopy(_))), "no copies");
        let incomplete: Vec<(&str, bool)> = records.iter().filter_map(|r| if let RecordRef::Topic(t) = r { Some((t.topic.as_str(), t.latest_incomplete)) } else { None }).collect();
        assert_eq!(incomplete, vec![("orders", true), ("payments", false)], "the topic whose copies were left out is marked");
    }
}
