//! Reading a segment back batch by batch, and what recovery tells the operator.
//!
//! Writes are sequential with one in flight, and segments never take a write again once the
//! node moves on, so only the final batch of the newest segment can be torn by a crash; it was
//! never fsynced, hence never pubacked nor delivered, and is cut. Anything else that fails its
//! checks is damage to acknowledged data: recovery refuses to start and names it, unless the
//! operator asks for salvage, which resynchronises at the next intact batch.

use crate::batch::{self, BatchError};
use crate::record::{self, RecordError, RecordRef};

/// The smallest message record (one-byte topic and body, no key or producer): bounds how
/// many ids a damaged region can hide.
pub const MESSAGE_RECORD_BYTES_MIN: u64 = (record::HEADER_BYTES + 1 + 8 + 8 + 2 + 1 + 2 + 2 + 8 + 4 + 1) as u64;

/// File name of a segment in the data directory.
pub fn segment_file_name(segment: u64) -> String {
    format!("{segment:020}.seg")
}

/// Where a record was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// In an intact batch.
    Intact,
    /// In the newest segment's torn final batch: never acknowledged, cut at recovery.
    TornTail,
    /// In a damaged batch; the record itself passed its own checksum.
    Damaged,
}

/// A stretch of a segment that is not intact batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRegion {
    pub offset: u64,
    /// The next intact batch, or the end of the data.
    pub end: u64,
    pub error: BatchError,
    pub torn_tail: bool,
}

/// What a scan of one segment found besides the records it visited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// End of the last intact batch: the newest segment is cut here.
    pub valid_len: u64,
    pub bad: Vec<BadRegion>,
}

/// Visits every record of `bytes` in order, saying where it was found. Zero bytes through the
/// end are a clean end (segment files are pre-filled with zeros). `newest`: this is the
/// newest segment, whose final batch may be torn.
pub fn scan_segment<'a>(bytes: &'a [u8], newest: bool, mut visit: impl FnMut(u64, usize, RecordRef<'a>, Found)) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let mut at = 0usize;
    while at < bytes.len() {
        let base = at as u64;
        match batch::read_batch(&bytes[at..], |offset, size, rec| visit(base + offset, size, rec, Found::Intact)) {
            Ok(size) => {
                at += size;
                scan.valid_len = at as u64;
            }
            Err(_) if bytes[at..].iter().all(|b| *b == 0) => break,
            Err(error) => {
                let next = batch::find_next_intact(bytes, at + 1);
                // A region that runs to the end stops at its last written byte: the zeros
                // after it are the segment's unused space.
                let end = next.unwrap_or_else(|| bytes.iter().rposition(|b| *b != 0).map_or(bytes.len(), |last| last + 1));
                let torn_tail = newest && next.is_none();
                let found = if torn_tail { Found::TornTail } else { Found::Damaged };
                if !next.is_some_and(|next| cut_by(&bytes[next..], base, end as u64)) {
                    visit_surviving_records(&bytes[at..end], base, |offset, size, rec| visit(offset, size, rec, found));
                }
                scan.bad.push(BadRegion { offset: base, end: end as u64, error, torn_tail });
                match next {
                    Some(next) => at = next,
                    None => break,
                }
            }
        }
    }
    scan
}

/// Whether the batch at the start of `after` records that the region `offset..end` before it
/// was a torn tail a restart cut: its records were never read, and are not now.
fn cut_by(after: &[u8], offset: u64, end: u64) -> bool {
    let mut cut = false;
    let _ = batch::read_batch(after, |_, _, rec| {
        if let RecordRef::Salvaged(r) = rec {
            cut |= r.cut && r.offset == offset && r.end == end;
        }
    });
    cut
}

/// Walks the records of a bad region from where its batch's records would start, visiting
/// those that pass their own checksum and stepping over one whose length is still plausible.
fn visit_surviving_records<'a>(region: &'a [u8], base: u64, mut visit: impl FnMut(u64, usize, RecordRef<'a>)) {
    let mut at = batch::HEADER_BYTES;
    while at < region.len() {
        match record::decode_record(&region[at..]) {
            Ok((rec, size)) => {
                visit(base + at as u64, size, rec);
                at += size;
            }
            Err(RecordError::CrcMismatch { .. } | RecordError::Malformed(_)) => {
                let len = u32::from_le_bytes(region[at..at + 4].try_into().expect("header checked")) as usize;
                at += record::HEADER_BYTES + len;
            }
            Err(_) => return,
        }
    }
}

/// Ids of one topic that a bad region may have held: `first..=last` (`last` None: no later
/// record of the topic bounds it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub topic: String,
    pub first: u64,
    pub last: Option<u64>,
}

/// Topics named in one line about a damaged region; the rest are counted.
const DAMAGE_TOPICS_SHOWN: usize = 20;

/// One bad region of the log, as told to the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub segment: u64,
    pub region: BadRegion,
    /// Records inside the region that passed their own checksum.
    pub intact_records: u64,
    pub ids: Vec<IdRange>,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.region;
        write!(f, "{} bytes {}..{} ({} bytes): {}", segment_file_name(self.segment), r.offset, r.end, r.end - r.offset, r.error)?;
        write!(f, "; {} intact records inside", self.intact_records)?;
        if self.ids.is_empty() {
            return write!(f, "; no message ids known to be affected");
        }
        write!(f, "; ids affected:")?;
        for range in self.ids.iter().take(DAMAGE_TOPICS_SHOWN) {
            match range.last {
                Some(last) if last == range.first => write!(f, " {} {}", range.topic, range.first)?,
                Some(last) => write!(f, " {} {}..={last}", range.topic, range.first)?,
                None => write!(f, " {} {} and up", range.topic, range.first)?,
            }
        }
        if self.ids.len() > DAMAGE_TOPICS_SHOWN {
            write!(f, " and {} more topics", self.ids.len() - DAMAGE_TOPICS_SHOWN)?;
        }
        Ok(())
    }
}

/// Recovery found damage to acknowledged data and salvage was not asked for, or (`refused`)
/// a log it cannot start from whatever the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryError {
    pub damage: Vec<Damage>,
    /// Why the log cannot be started from at all (salvage would not help), naming where.
    pub refused: Option<String>,
}

impl RecoveryError {
    pub fn refused(why: String) -> RecoveryError {
        RecoveryError { damage: Vec::new(), refused: Some(why) }
    }
}

impl std::fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(why) = &self.refused {
            return write!(f, "refusing to start: {why}. Nothing on disk was changed.");
        }
        writeln!(f, "the log is damaged where acknowledged data was written; refusing to start:")?;
        for damage in &self.damage {
            writeln!(f, "  {damage}")?;
        }
        write!(
            f,
            "Nothing on disk was changed. To start anyway, serving every intact record and skipping the damaged \
             ones (each is logged), restart with --salvage (setting salvage = true)."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{encode_message, MessageRef};

    fn log_of(batches: &[std::ops::Range<u64>]) -> (Vec<u8>, Vec<usize>) {
        let mut log = Vec::new();
        let mut starts = Vec::new();
        for ids in batches {
            let mut out = Vec::new();
            batch::begin(&mut out);
            for id in ids.clone() {
                let m = MessageRef { id, ts_ms: 1, topic: "t", key: None, producer: None, seq: 0, body: "\"0123456789\"" };
                encode_message(&mut out, &m);
            }
            batch::seal(&mut out);
            starts.push(log.len());
            log.extend_from_slice(&out);
        }
        (log, starts)
    }

    fn scan(bytes: &[u8], newest: bool) -> (Vec<(u64, Found)>, SegmentScan) {
        let mut ids = Vec::new();
        let scan = scan_segment(bytes, newest, |_, _, r, found| {
            if let RecordRef::Message(m) = r {
                ids.push((m.id, found))
            }
        });
        (ids, scan)
    }

    #[test]
    fn a_torn_final_batch_is_cut_and_only_in_the_newest_segment() {
        let (mut log, starts) = log_of(&[1..4, 4..7]);
        log.truncate(log.len() - 5);
        log.extend_from_slice(&[0u8; 64]);
        let (ids, s) = scan(&log, true);
        assert_eq!(s.valid_len, starts[1] as u64);
        assert_eq!(s.bad.len(), 1);
        assert!(s.bad[0].torn_tail);
        assert_eq!(ids.iter().filter(|(_, f)| *f == Found::TornTail).count(), 3, "the torn batch's records are still recognised: {ids:?}");
        let (_, s) = scan(&log, false);
        assert!(!s.bad[0].torn_tail, "an older segment has no torn tail: its batches were all completed");
    }

    #[test]
    fn damage_in_the_middle_resynchronises_at_the_next_batch() {
        let (mut log, starts) = log_of(&[1..4, 4..7, 7..9]);
        // Inside the body of record 5 (second record of the second batch).
        let (second_start, third_start) = (starts[1], starts[2]);
        let mut offsets = Vec::new();
        scan_segment(&log, true, |offset, size, r, _| {
            if let RecordRef::Message(m) = r {
                offsets.push((m.id, offset as usize, size))
            }
        });
        let (_, offset, size) = offsets[4];
        log[offset + size - 3] ^= 0x20;
        let (ids, s) = scan(&log, true);
        assert_eq!(s.bad, vec![BadRegion { offset: second_start as u64, end: third_start as u64, error: BatchError::BadChecksum, torn_tail: false }]);
        let damaged: Vec<u64> = ids.iter().filter(|(_, f)| *f == Found::Damaged).map(|(id, _)| *id).collect();
        assert_eq!(damaged, vec![4, 6], "only the flipped record is lost from its batch");
        let intact: Vec<u64> = ids.iter().filter(|(_, f)| *f == Found::Intact).map(|(id, _)| *id).collect();
        assert_eq!(intact, vec![1, 2, 3, 7, 8]);
        assert_eq!(s.valid_len, log.len() as u64);
    }

    #[test]
    fn zeros_end_a_segment_cleanly_but_junk_after_them_does_not() {
        let (mut log, _) = log_of(&[1..2, 2..3]);
        let len = log.len() as u64;
        log.extend_from_slice(&[0u8; 100]);
        assert_eq!(scan(&log, false).1, SegmentScan { valid_len: len, bad: vec![] });
        log.push(7);
        assert_eq!(scan(&log, false).1.bad.len(), 1);
    }
}
