//! raft's view of the log (`raft::Storage`): the entries ferry's own segments hold, the newest
//! of them in memory up to a byte budget, older ones read back from disk when raft needs them
//! to catch a follower up. raft asks through `entries` with a context that allows waiting;
//! the storage then notes the range (`take_wanted`) and answers `LogTemporarilyUnavailable`,
//! the node reads the records, hands them over (`put_fetched`) and tells raft
//! (`on_entries_fetched`), which asks again and finds them.
//!
//! Entries not yet applied always stay in memory: raft reads them without leave to wait
//! (applying, elections), and they are few. The log's first entry moves only when retention
//! deletes segments (`compact_to`); a follower behind it needs the state itself (a raft
//! snapshot): the node reads it back from disk (the oldest segment's own snapshot records)
//! and hands it over (`set_snapshot_data`); until then `snapshot` answers "not yet" and notes
//! who asked (`take_snapshot_wanted`).

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};

/// Entries raft wants read back from disk: `low..high`, for the send that waits in `context`.
pub struct Wanted {
    pub low: u64,
    pub high: u64,
    pub context: GetEntriesContext,
}

pub struct LogStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// The last entry gone from the log (index, term): everything up to it is in the state.
    compacted: (u64, u64),
    last_index: u64,
    /// The term of every entry after `compacted`, as runs of (first index, term).
    terms: Vec<(u64, u64)>,
    /// The newest entries, up to `last_index`.
    tail: VecDeque<Entry>,
    tail_bytes: u64,
    /// Entries read back from disk for sends to followers (bounded by `fetched_bytes_max`).
    fetched: RefCell<BTreeMap<u64, Entry>>,
    fetched_bytes_max: u64,
    wanted: RefCell<Vec<Wanted>>,
    /// Followers raft wanted to send a snapshot to (behind the first entry), not yet reported.
    snapshot_wanted: RefCell<Vec<u64>>,
    /// The state as of the entry `compacted` names (its records), once read back.
    snapshot_data: Option<(u64, Vec<u8>)>,
}

/// What an entry costs in memory, roughly: its payload and the fields around it.
pub fn entry_bytes(entry: &Entry) -> u64 {
    (entry.data.len() + entry.context.len() + 48) as u64
}

fn store_error(error: StorageError) -> raft::Error {
    raft::Error::Store(error)
}

impl LogStorage {
    /// A log whose entries up to `compacted` (index, term) are in the state machine and gone.
    pub fn new(conf_state: ConfState, hard_state: HardState, compacted: (u64, u64), fetched_bytes_max: u64) -> LogStorage {
        LogStorage {
            hard_state,
            conf_state,
            compacted,
            last_index: compacted.0,
            terms: Vec::new(),
            tail: VecDeque::new(),
            tail_bytes: 0,
            fetched: RefCell::new(BTreeMap::new()),
            fetched_bytes_max,
            wanted: RefCell::new(Vec::new()),
            snapshot_wanted: RefCell::new(Vec::new()),
            snapshot_data: None,
        }
    }

    fn tail_first(&self) -> u64 {
        self.last_index + 1 - self.tail.len() as u64
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// A restarted log (empty until now): `terms` names every entry after the compacted one
    /// by (index, term), in order; `tail` holds the newest of them, ending with the last. The
    /// others stay on disk, read back when raft asks for them.
    pub fn restore(&mut self, terms: &[(u64, u64)], tail: Vec<Entry>) -> Result<(), String> {
        assert!(self.last_index == self.compacted.0 && self.tail.is_empty(), "restore is for a new log");
        let last = terms.last().map_or(self.compacted.0, |(index, _)| *index);
        if tail.last().is_some_and(|e| e.index != last) || tail.windows(2).any(|w| w[1].index != w[0].index + 1) {
            return Err(format!("the entries in memory are not the newest ones, in order, up to {last}"));
        }
        for &(index, term) in terms {
            if self.terms.last().is_none_or(|(_, run_term)| *run_term != term) {
                self.terms.push((index, term));
            }
        }
        self.last_index = last;
        self.tail_bytes = tail.iter().map(entry_bytes).sum();
        self.tail = tail.into();
        Ok(())
    }

    /// Appends entries raft handed out; from their first index on they replace what was there
    /// (an uncommitted suffix, which is always still in memory).
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), String> {
        let Some(first) = entries.first().map(|e| e.index) else { return Ok(()) };
        if first <= self.compacted.0 || first > self.last_index + 1 {
            return Err(format!("entries from {first} do not follow the log ({}..={})", self.compacted.0 + 1, self.last_index));
        }
        if first < self.tail_first() {
            return Err(format!("entries from {first} would replace entries no longer in memory (from {})", self.tail_first()));
        }
        while self.last_index >= first {
            let gone = self.tail.pop_back().expect("the suffix is in memory");
            self.tail_bytes -= entry_bytes(&gone);
            self.last_index -= 1;
        }
        self.fetched.borrow_mut().split_off(&first);
        while self.terms.last().is_some_and(|(start, _)| *start >= first) {
            self.terms.pop();
        }
        for (expected, entry) in (first..).zip(entries) {
            if entry.index != expected {
                return Err(format!("entry {} where {expected} should follow", entry.index));
            }
            if self.terms.last().is_none_or(|(_, term)| *term != entry.term) {
                self.terms.push((entry.index, entry.term));
            }
            self.tail_bytes += entry_bytes(entry);
            self.tail.push_back(entry.clone());
            self.last_index = entry.index;
        }
        Ok(())
    }

    /// Drops entries from memory, oldest first, while they take more than `budget_bytes`;
    /// never one after `applied` (raft reads those without leave to wait). They stay on disk.
    pub fn trim_memory(&mut self, applied: u64, budget_bytes: u64) {
        while self.tail_bytes > budget_bytes && self.tail.front().is_some_and(|e| e.index <= applied) {
            let gone = self.tail.pop_front().expect("checked above");
            self.tail_bytes -= entry_bytes(&gone);
        }
    }

    /// Retention deleted every entry up to `index` (applied, in the state): the log starts
    /// after it.
    pub fn compact_to(&mut self, index: u64) -> Result<(), String> {
        if index <= self.compacted.0 {
            return Ok(());
        }
        if index > self.last_index {
            return Err(format!("cannot compact to {index}, past the last entry {}", self.last_index));
        }
        let term = self.term(index).map_err(|e| format!("term of {index}: {e}"))?;
        while self.tail.front().is_some_and(|e| e.index <= index) {
            let gone = self.tail.pop_front().expect("checked above");
            self.tail_bytes -= entry_bytes(&gone);
        }
        let mut fetched = self.fetched.borrow_mut();
        *fetched = fetched.split_off(&(index + 1));
        drop(fetched);
        // The run holding `index + 1` starts there now.
        let keep_from = self.terms.partition_point(|(start, _)| *start <= index + 1).saturating_sub(1);
        self.terms.drain(..keep_from);
        if let Some(first) = self.terms.first_mut() {
            first.0 = first.0.max(index + 1);
        }
        self.compacted = (index, term);
        Ok(())
    }

    /// The ranges raft asked to read back since the last call.
    pub fn take_wanted(&self) -> Vec<Wanted> {
        std::mem::take(&mut *self.wanted.borrow_mut())
    }

    /// The state as of entry `index` (the log's compacted point), read back for followers.
    pub fn set_snapshot_data(&mut self, index: u64, data: Vec<u8>) {
        if index == self.compacted.0 {
            self.snapshot_data = Some((index, data));
        }
    }

    /// The compacted point: the entry the state a snapshot sends is as of, and its term.
    pub fn compacted(&self) -> (u64, u64) {
        self.compacted
    }

    /// This replica takes a leader's state as of `index` (term `term`): its log is replaced by
    /// nothing, starting after it.
    pub fn install(&mut self, index: u64, term: u64) {
        self.compacted = (index, term);
        self.last_index = index;
        self.terms.clear();
        self.tail.clear();
        self.tail_bytes = 0;
        self.fetched.borrow_mut().clear();
        self.snapshot_data = None;
        self.hard_state.commit = self.hard_state.commit.max(index);
    }

    /// Followers raft could not catch up since the last call: they are behind the log's first
    /// entry and need the state itself.
    pub fn take_snapshot_wanted(&self) -> Vec<u64> {
        std::mem::take(&mut *self.snapshot_wanted.borrow_mut())
    }

    /// Entries read back from disk; the oldest read ones go first past the budget.
    pub fn put_fetched(&self, entries: Vec<Entry>) {
        let mut fetched = self.fetched.borrow_mut();
        for entry in entries {
            if entry.index > self.compacted.0 && entry.index < self.tail_first() {
                fetched.insert(entry.index, entry);
            }
        }
        let mut bytes: u64 = fetched.values().map(entry_bytes).sum();
        while bytes > self.fetched_bytes_max && fetched.len() > 1 {
            let (_, gone) = fetched.pop_first().expect("more than one");
            bytes -= entry_bytes(&gone);
        }
    }

    /// Bytes of entries held in memory (the tail and those read back).
    pub fn memory_bytes(&self) -> u64 {
        self.tail_bytes + self.fetched.borrow().values().map(entry_bytes).sum::<u64>()
    }
}

impl Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(&self, low: u64, high: u64, max_size: impl Into<Option<u64>>, context: GetEntriesContext) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        if low <= self.compacted.0 {
            return Err(store_error(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(store_error(StorageError::Unavailable));
        }
        let tail_first = self.tail_first();
        let fetched = self.fetched.borrow();
        let mut out: Vec<Entry> = Vec::new();
        let mut size = 0;
        for index in low..high {
            let entry = if index >= tail_first {
                &self.tail[(index - tail_first) as usize]
            } else if let Some(entry) = fetched.get(&index) {
                entry
            } else if !out.is_empty() {
                // What is at hand now; raft asks again from where it ends.
                break;
            } else if context.can_async() {
                drop(fetched);
                self.wanted.borrow_mut().push(Wanted { low: index, high: high.min(tail_first), context });
                return Err(store_error(StorageError::LogTemporarilyUnavailable));
            } else {
                return Err(store_error(StorageError::Unavailable));
            };
            size += entry_bytes(entry);
            if !out.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.compacted.0 {
            return Ok(self.compacted.1);
        }
        if index < self.compacted.0 {
            return Err(store_error(StorageError::Compacted));
        }
        if index > self.last_index {
            return Err(store_error(StorageError::Unavailable));
        }
        let run = self.terms.partition_point(|(start, _)| *start <= index);
        Ok(self.terms[run - 1].1)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compacted.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match &self.snapshot_data {
            Some((index, data)) if *index == self.compacted.0 => {
                let mut snapshot = Snapshot { data: data.clone().into(), ..Snapshot::default() };
                let meta = snapshot.mut_metadata();
                (meta.index, meta.term, meta.conf_state) = (self.compacted.0, self.compacted.1, Some(self.conf_state.clone()).into());
                Ok(snapshot)
            }
            _ => {
                self.snapshot_wanted.borrow_mut().push(to);
                Err(store_error(StorageError::SnapshotTemporarilyUnavailable))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::GetEntriesContext;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![index as u8; 100].into(), ..Entry::default() }
    }

    fn storage() -> LogStorage {
        LogStorage::new(ConfState::default(), HardState::default(), (0, 0), 1 << 20)
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.index).collect()
    }

    #[test]
    fn entries_trimmed_from_memory_are_asked_for_and_served_once_read_back() {
        let mut s = storage();
        s.append(&(1..=10).map(|i| entry(i, 1 + i / 6)).collect::<Vec<_>>()).unwrap();
        assert_eq!(s.term(5), Ok(1));
        assert_eq!(s.term(6), Ok(2));
        s.trim_memory(4, 6 * entry_bytes(&entry(1, 1)));
        assert_eq!(s.tail_first(), 5, "only applied entries leave memory, and only past the budget");
        assert_eq!(indexes(&s.entries(5, 11, None, GetEntriesContext::empty(false)).unwrap()), (5..=10).collect::<Vec<_>>());
        // Older ones: wait (when raft may), or refuse (when it may not).
        assert_eq!(s.entries(2, 8, None, GetEntriesContext::empty(true)), Err(store_error(StorageError::LogTemporarilyUnavailable)));
        let wanted = s.take_wanted();
        assert_eq!((wanted[0].low, wanted[0].high), (2, 5));
        assert_eq!(s.entries(2, 8, None, GetEntriesContext::empty(false)), Err(store_error(StorageError::Unavailable)));
        s.put_fetched((2..5).map(|i| entry(i, 1)).collect());
        assert_eq!(indexes(&s.entries(2, 8, None, GetEntriesContext::empty(true)).unwrap()), (2..8).collect::<Vec<_>>());
        assert_eq!(indexes(&s.entries(1, 3, None, GetEntriesContext::empty(false)).unwrap_or_default()), Vec::<u64>::new());
        assert_eq!(s.term(3), Ok(1), "terms of every entry stay known");
        // A size limit still gives one entry.
        assert_eq!(s.entries(2, 8, Some(1), GetEntriesContext::empty(true)).unwrap().len(), 1);
    }

    #[test]
    fn a_new_leader_s_entries_replace_an_uncommitted_suffix() {
        let mut s = storage();
        s.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>()).unwrap();
        s.append(&[entry(4, 2), entry(5, 2), entry(6, 2)]).unwrap();
        assert_eq!((s.term(3), s.term(4), s.term(6), s.last_index()), (Ok(1), Ok(2), Ok(2), Ok(6)));
        assert!(s.append(&[entry(9, 2)]).is_err(), "a gap");
        s.trim_memory(6, 0);
        assert!(s.append(&[entry(3, 3)]).is_err(), "entries no longer in memory are committed: never replaced");
    }

    #[test]
    fn retention_moves_the_first_entry_and_keeps_the_term_before_it() {
        let mut s = storage();
        s.append(&(1..=10).map(|i| entry(i, i)).collect::<Vec<_>>()).unwrap();
        s.compact_to(4).unwrap();
        assert_eq!((s.first_index(), s.term(4), s.term(5), s.term(10)), (Ok(5), Ok(4), Ok(5), Ok(10)));
        assert_eq!(s.term(3), Err(store_error(StorageError::Compacted)));
        assert_eq!(s.entries(4, 6, None, GetEntriesContext::empty(true)), Err(store_error(StorageError::Compacted)));
        assert!(s.compact_to(11).is_err());
        assert_eq!(s.snapshot(0, 2).unwrap_err(), store_error(StorageError::SnapshotTemporarilyUnavailable));
        assert_eq!(s.take_snapshot_wanted(), vec![2], "the follower left behind is named");
        assert!(s.take_snapshot_wanted().is_empty());
    }
}
