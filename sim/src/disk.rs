//! A node's disk: a page cache over durable bytes, with the faults real disks have.
//!
//! Segments are append-only, so each file's durable content is a prefix of what the page cache
//! holds: a length per file (`durable_len`) models fsync exactly. At most one write is in flight
//! per node (the core guarantees it), which is what a crash may tear.

use ferry_core::node::{DiskError, DiskOp};
use ferry_core::record::{self, RecordRef};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

#[derive(Default)]
pub struct SimDisk {
    pub files: BTreeMap<u64, Vec<u8>>,
    durable_len: BTreeMap<u64, usize>,
    /// (token, segment, offset, len, sync) of the write in flight.
    in_flight: Option<(u64, u64, usize, usize, bool)>,
    pub full: bool,
    pub eio_chance: f64,
}

pub enum DiskReply {
    Write { token: u64, result: Result<(), DiskError> },
    Read { token: u64, bytes: Option<Vec<u8>> },
}

impl SimDisk {
    /// Starts `op`; a write's data reaches the page cache now and is durable at completion.
    pub fn issue(&mut self, op: &DiskOp, rng: &mut ChaCha8Rng) -> Option<DiskReply> {
        match op {
            DiskOp::Write { token, segment, offset, data, sync, .. } => {
                if self.full {
                    return Some(DiskReply::Write { token: *token, result: Err(DiskError::NoSpace) });
                }
                let file = self.files.entry(*segment).or_default();
                assert!(*offset as usize <= file.len(), "write at {offset} past the end ({}) of segment {segment}", file.len());
                file.truncate(*offset as usize);
                file.extend_from_slice(data);
                if self.eio_chance > 0.0 && rng.gen_bool(self.eio_chance) {
                    return Some(DiskReply::Write { token: *token, result: Err(DiskError::Io("simulated EIO".into())) });
                }
                self.in_flight = Some((*token, *segment, *offset as usize, data.len(), *sync));
                Some(DiskReply::Write { token: *token, result: Ok(()) })
            }
            DiskOp::Truncate { segment, len } => {
                if let Some(file) = self.files.get_mut(segment) {
                    file.truncate(*len as usize);
                }
                let durable = self.durable_len.entry(*segment).or_default();
                *durable = (*durable).min(*len as usize);
                None
            }
            DiskOp::Delete { segment } => {
                self.files.remove(segment);
                self.durable_len.remove(segment);
                None
            }
            DiskOp::Read { token, segment, offset, len } => {
                let bytes = self.files.get(segment).and_then(|f| f.get(*offset as usize..*offset as usize + *len as usize)).map(<[u8]>::to_vec);
                Some(DiskReply::Read { token: *token, bytes })
            }
        }
    }

    /// The write `token` completed successfully: with fsync, its bytes are now durable.
    pub fn complete(&mut self, token: u64) {
        let Some((t, segment, offset, len, sync)) = self.in_flight.take() else { return };
        assert_eq!(t, token, "completion of a write that is not in flight");
        if sync {
            self.durable_len.insert(segment, offset + len);
            // fsync of one file makes all of its earlier writes durable too.
        }
    }

    /// Crash. With `power_loss` only durable bytes survive; either way a write in flight may
    /// be torn, leaving any prefix of it. Returns the number of bytes lost.
    pub fn crash(&mut self, power_loss: bool, rng: &mut ChaCha8Rng) -> usize {
        let torn = self.in_flight.take().map(|(_, segment, offset, len, _)| (segment, offset + rng.gen_range(0..=len)));
        let mut lost = 0;
        for (segment, file) in self.files.iter_mut() {
            let durable = self.durable_len.get(segment).copied().unwrap_or(0);
            let mut keep = if power_loss { durable } else { file.len() };
            if let Some((torn_segment, torn_end)) = torn {
                if torn_segment == *segment {
                    keep = if power_loss { durable.max(torn_end) } else { torn_end };
                }
            }
            let keep = keep.min(file.len());
            lost += file.len() - keep;
            file.truncate(keep);
        }
        for (segment, file) in &self.files {
            self.durable_len.insert(*segment, file.len());
        }
        lost
    }

    /// Flips one bit inside the body of a message record in a segment older than the newest.
    /// Returns the ids of that record and of every message record after it in the segment
    /// (recovery stops reading that segment at the flipped record), as (topic, id) pairs.
    pub fn flip_bit(&mut self, rng: &mut ChaCha8Rng) -> Option<Vec<(String, u64)>> {
        if self.files.len() < 2 {
            return None;
        }
        let sealed: Vec<u64> = self.files.keys().copied().take(self.files.len() - 1).collect();
        let segment = sealed[rng.gen_range(0..sealed.len())];
        let bytes = self.files.get(&segment)?;
        let mut messages = Vec::new();
        record::scan_segment(bytes, |offset, size, rec| {
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
        let file = self.files.get_mut(&segment)?;
        file[byte] ^= 1 << rng.gen_range(0..8);
        Some(messages[at..].iter().map(|(_, _, topic, id)| (topic.clone(), *id)).collect())
    }

    pub fn segments(&self) -> Vec<(u64, &[u8])> {
        self.files.iter().map(|(id, b)| (*id, b.as_slice())).collect()
    }
}
