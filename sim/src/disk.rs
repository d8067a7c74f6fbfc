//! A node's disk: a page cache over durable bytes, with the faults real disks have.
//!
//! Segments are append-only, so each file's durable content is a prefix of what the page cache
//! holds: a length per file (`durable_len`) models fsync exactly. At most one write is in flight
//! per shard of a node (the core guarantees it), which is what a crash may tear.

use ferry_core::node::{DiskError, DiskOp};
use ferry_core::record::{self, RecordRef};
use ferry_core::recovery;
use ferry_core::testkit::{Completion, MemDisk};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

#[derive(Default)]
pub struct SimDisk {
    pub disk: MemDisk,
    /// The writes in flight (one per shard, each to its own segments): token → (segment,
    /// offset, len, sync).
    in_flight: std::collections::BTreeMap<u64, (u64, usize, usize, bool)>,
    pub full: bool,
    pub eio_chance: f64,
}

impl SimDisk {
    /// Starts `op`; a write's data reaches the page cache now and is durable at completion.
    pub fn issue(&mut self, op: &DiskOp, rng: &mut ChaCha8Rng) -> Option<Completion> {
        if let DiskOp::Truncate { token, .. } = op {
            if self.eio_chance > 0.0 && rng.gen_bool(self.eio_chance) {
                return Some(Completion::Truncate { token: *token, result: Err(DiskError::Io("simulated EIO on truncate".into())) });
            }
        }
        match op {
            DiskOp::SpillWrite { token, .. } if self.full || (self.eio_chance > 0.0 && rng.gen_bool(self.eio_chance)) => {
                let error = if self.full { DiskError::NoSpace } else { DiskError::Io("simulated EIO on a spill write".into()) };
                return Some(Completion::Write { token: *token, result: Err(error) });
            }
            DiskOp::SpillRead { token, .. } if self.eio_chance > 0.0 && rng.gen_bool(self.eio_chance) => {
                // The node stops (and restarts): what was in flight is rebuilt from the log.
                return Some(Completion::Read { token: *token, bytes: None });
            }
            _ => {}
        }
        let DiskOp::Write { token, segment, offset, data, sync, .. } = op else { return self.disk.apply(op) };
        if self.full {
            return Some(Completion::Write { token: *token, result: Err(DiskError::NoSpace) });
        }
        let len = self.disk.files.get(segment).map_or(0, Vec::len);
        assert!(*offset as usize <= len, "write at {offset} past the end ({len}) of segment {segment}");
        self.disk.write(*segment, *offset, data);
        if self.eio_chance > 0.0 && rng.gen_bool(self.eio_chance) {
            return Some(Completion::Write { token: *token, result: Err(DiskError::Io("simulated EIO".into())) });
        }
        self.in_flight.insert(*token, (*segment, *offset as usize, data.len(), *sync));
        Some(Completion::Write { token: *token, result: Ok(()) })
    }

    /// The write `token` completed successfully: with fsync, the file is durable up to its end.
    pub fn complete(&mut self, token: u64) {
        let Some((segment, offset, len, sync)) = self.in_flight.remove(&token) else { return };
        if sync {
            self.disk.mark_durable(segment, offset + len);
        }
    }

    /// Crash. With `power_loss` only durable bytes survive; either way a write in flight may
    /// be torn, leaving any prefix of it. Returns the number of bytes lost.
    pub fn crash(&mut self, power_loss: bool, rng: &mut ChaCha8Rng) -> usize {
        let in_flight = std::mem::take(&mut self.in_flight);
        let torn: std::collections::BTreeMap<u64, usize> = in_flight.into_values().map(|(segment, offset, len, _)| (segment, offset + rng.gen_range(0..=len))).collect();
        let mut lost = 0;
        let lens: Vec<(u64, usize)> = self.disk.files.iter().map(|(s, f)| (*s, f.len())).collect();
        for (segment, len) in lens {
            let durable = self.disk.durable_len(segment);
            let mut keep = if power_loss { durable } else { len };
            if let Some(&torn_end) = torn.get(&segment) {
                keep = if power_loss { durable.max(torn_end) } else { torn_end };
            }
            let keep = keep.min(len);
            lost += len - keep;
            self.disk.truncate_file(segment, keep);
        }
        self.disk.sync_all();
        lost
    }

    /// Flips one bit inside the body of a message record in a segment older than the newest.
    /// Returns that record's (topic, id): recovery refuses to start, and with salvage loses
    /// only that record (the others of its batch pass their own checksums).
    pub fn flip_bit(&mut self, rng: &mut ChaCha8Rng) -> Option<Vec<(String, u64)>> {
        let files = &mut self.disk.files;
        if files.len() < 2 {
            return None;
        }
        let sealed: Vec<u64> = files.keys().copied().take(files.len() - 1).collect();
        let segment = sealed[rng.gen_range(0..sealed.len())];
        let bytes = files.get(&segment)?;
        let mut messages = Vec::new();
        recovery::scan_segment(bytes, false, |offset, size, rec, _| {
            if let RecordRef::Message(m) = rec {
                messages.push((offset as usize, size, m.topic.to_string(), m.id));
            }
        });
        if messages.is_empty() {
            return None;
        }
        let at = rng.gen_range(0..messages.len());
        let (offset, size, _, _) = messages[at];
        let byte = offset + size - 1 - rng.gen_range(0..4.min(size - record::HEADER_BYTES));
        let file = files.get_mut(&segment)?;
        file[byte] ^= 1 << rng.gen_range(0..8);
        let (_, _, topic, id) = &messages[at];
        Some(vec![(topic.clone(), *id)])
    }

    /// Flips one bit inside a raft entry record of a cluster node's sealed segment (not the
    /// newest of its shard, whose damage could pass for a torn write). Returns the segment:
    /// the node's next start must refuse its log.
    pub fn flip_bit_in_raft_entry(&mut self, rng: &mut ChaCha8Rng) -> Option<u64> {
        let files = &mut self.disk.files;
        let newest_of_shard: std::collections::BTreeMap<u32, u64> = files.keys().map(|id| (ferry_core::ids::ShardId::of_id(*id).0, *id)).collect();
        let sealed: Vec<u64> = files.keys().copied().filter(|id| !newest_of_shard.values().any(|newest| newest == id)).collect();
        if sealed.is_empty() {
            return None;
        }
        let segment = sealed[rng.gen_range(0..sealed.len())];
        let mut entries = Vec::new();
        recovery::scan_segment(files.get(&segment)?, false, |offset, size, rec, _| {
            if matches!(rec, RecordRef::RaftEntry(_)) {
                entries.push((offset as usize, size));
            }
        });
        if entries.is_empty() {
            return None;
        }
        let (offset, size) = entries[rng.gen_range(0..entries.len())];
        let byte = offset + size - 1 - rng.gen_range(0..4.min(size - record::HEADER_BYTES));
        files.get_mut(&segment)?[byte] ^= 1 << rng.gen_range(0..8);
        Some(segment)
    }

    pub fn segments(&self) -> Vec<(u64, &[u8])> {
        self.disk.segments()
    }
}
