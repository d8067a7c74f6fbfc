//! A shard's raft log in ferry's own segment format: each `Persist` a replica asks for is one
//! batch (framed and checksummed like every log write) of raft entry records followed by the
//! hard state, and a restart reads them back with the same scan and the same rules: a torn
//! final batch was never reported durable, so it is dropped; damage anywhere else stops the
//! start, naming where.
//!
//! raft may overwrite an uncommitted suffix: a write whose first entry has index `i` replaces
//! every entry from `i` on, so reading the writes in order gives the log raft last persisted.

use crate::batch;
use crate::record::{self, RaftEntryRef, RaftStateRecord, RecordRef};
use crate::recovery::{self, BadRegion, Found};
use raft::eraftpb::{Entry, EntryType, HardState};
use std::collections::BTreeMap;

/// Appends to `out` one batch holding what a replica's `Persist` output asks to make durable.
pub fn encode_persist(out: &mut Vec<u8>, entries: &[Entry], hard_state: Option<&HardState>) {
    let mut batch_bytes = Vec::new();
    batch::begin(&mut batch_bytes);
    for entry in entries {
        let entry_type = entry.entry_type as u8;
        record::encode_raft_entry(&mut batch_bytes, &RaftEntryRef { index: entry.index, term: entry.term, entry_type, data: &entry.data });
    }
    if let Some(hs) = hard_state {
        record::encode_raft_state(&mut batch_bytes, &RaftStateRecord { term: hs.term, vote: hs.vote, commit: hs.commit });
    }
    batch::seal(&mut batch_bytes);
    out.extend_from_slice(&batch_bytes);
}

/// What a replica made durable, read back from its segments: where each entry lies, not the
/// entries themselves (a retained log may be far larger than memory; `entry` reads one).
#[derive(Debug)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The log as raft last persisted it, by index.
    pub places: BTreeMap<u64, Place>,
    /// Where the newest segment's intact writes end: cut it there before writing on (a torn
    /// final write was never reported durable, and later writes must not follow its bytes).
    pub newest_valid_len: u64,
}

/// Where an entry's record lies, and the entry's term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
    pub term: u64,
}

impl Recovered {
    /// Entry `index` read from its record in `segments` (those `read` was given).
    pub fn entry(&self, segments: &[(u64, &[u8])], index: u64) -> Option<Entry> {
        entry_at(segments, self.places.get(&index)?).map(|record| to_entry(&record))
    }

    /// Every entry, in order (for small logs: tests, the fuzz target).
    pub fn entries(&self, segments: &[(u64, &[u8])]) -> Vec<Entry> {
        self.places.keys().filter_map(|index| self.entry(segments, *index)).collect()
    }
}

/// The raft entry record at `place` in `segments`, borrowed from their bytes.
pub fn entry_at<'a>(segments: &[(u64, &'a [u8])], place: &Place) -> Option<RaftEntryRef<'a>> {
    let at = segments.binary_search_by_key(&place.segment, |(segment, _)| *segment).ok()?;
    let bytes = segments[at].1.get(place.offset as usize..place.offset as usize + place.len as usize)?;
    match record::decode_record(bytes).ok()?.0 {
        RecordRef::RaftEntry(entry) => Some(entry),
        _ => None,
    }
}

/// Reads a replica's segments (ascending id, each the file's bytes) back.
pub fn recover(segments: &[(u64, &[u8])]) -> Result<Recovered, String> {
    read(segments, |_, _, _, _| {})
        .map_err(|(segment, region)| format!("segment {segment}: bytes {}..{} are damaged ({:?}): raft state written there is unreadable", region.offset, region.end, region.error))
}

/// Reads the raft records of `segments` back, handing every other intact record to `other`
/// (segment, offset, size, record); damage other than a torn final write is the error, with
/// its segment.
pub fn read(segments: &[(u64, &[u8])], mut other: impl FnMut(u64, u64, usize, RecordRef<'_>)) -> Result<Recovered, (u64, BadRegion)> {
    let mut newest_valid_len = 0;
    let mut hard_state = HardState::default();
    let mut places: BTreeMap<u64, Place> = BTreeMap::new();
    // A write replaces the entries from its first index on; the batch's records come in order,
    // so an index at or below the last one read starts such a replacement.
    for (position, (segment, bytes)) in segments.iter().enumerate() {
        let newest = position + 1 == segments.len();
        let scan = recovery::scan_segment(bytes, newest, |offset, size, rec, found| {
            if found != Found::Intact {
                return;
            }
            match rec {
                RecordRef::RaftEntry(e) => {
                    places.split_off(&e.index);
                    places.insert(e.index, Place { segment: *segment, offset, len: size as u32, term: e.term });
                }
                RecordRef::RaftState(s) => {
                    hard_state = HardState { term: s.term, vote: s.vote, commit: s.commit, ..HardState::default() };
                }
                other_record => other(*segment, offset, size, other_record),
            }
        });
        newest_valid_len = scan.valid_len;
        if let Some(region) = scan.bad.into_iter().find(|r| !(newest && r.torn_tail)) {
            return Err((*segment, region));
        }
    }
    Ok(Recovered { hard_state, places, newest_valid_len })
}

/// The raft entry a record holds (its proposer's context is not kept on disk).
pub fn to_entry(record: &RaftEntryRef<'_>) -> Entry {
    let mut entry = Entry { index: record.index, term: record.term, data: record.data.to_vec().into(), ..Entry::default() };
    entry.entry_type = entry_type(record.entry_type);
    entry
}

fn entry_type(n: u8) -> EntryType {
    match n {
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => EntryType::EntryNormal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &str) -> Entry {
        Entry { index, term, data: data.as_bytes().to_vec().into(), ..Entry::default() }
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState { term, vote, commit, ..HardState::default() }
    }

    #[test]
    fn writes_read_back_with_later_writes_replacing_an_uncommitted_suffix() {
        let mut bytes = Vec::new();
        encode_persist(&mut bytes, &[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")], Some(&hs(1, 1, 1)));
        encode_persist(&mut bytes, &[entry(2, 2, "B")], Some(&hs(2, 2, 2)));
        let recovered = recover(&[(1, &bytes)]).unwrap();
        assert_eq!(recovered.hard_state, hs(2, 2, 2));
        assert_eq!(recovered.newest_valid_len, bytes.len() as u64);
        let read: Vec<(u64, u64, Vec<u8>)> = recovered.entries(&[(1, &bytes)]).iter().map(|e| (e.index, e.term, e.data.to_vec())).collect();
        assert_eq!(read, vec![(1, 1, b"a".to_vec()), (2, 2, b"B".to_vec())], "entry 3 went with the entry 2 it followed");
    }

    #[test]
    fn a_torn_final_write_is_dropped_and_other_damage_is_named() {
        let mut bytes = Vec::new();
        encode_persist(&mut bytes, &[entry(1, 1, "a")], Some(&hs(1, 1, 0)));
        let first_len = bytes.len();
        encode_persist(&mut bytes, &[entry(2, 1, "b")], Some(&hs(1, 1, 1)));
        let torn = &bytes[..bytes.len() - 3];
        let recovered = recover(&[(1, torn)]).unwrap();
        assert_eq!((recovered.hard_state, recovered.places.len()), (hs(1, 1, 0), 1), "the torn write was never reported durable");
        assert_eq!(recovered.newest_valid_len, first_len as u64, "cut where the intact writes end");
        let mut damaged = bytes.clone();
        damaged[first_len / 2] ^= 0x40;
        let error = recover(&[(1, &damaged)]).unwrap_err();
        assert!(error.contains("segment 1"), "{error}");
    }
}
