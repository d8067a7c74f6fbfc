//! The newest durable message of each key of a topic, for `latest` (reconciliation reads).
//!
//! Kept whole in memory (key, id, body, stored time), so `latest` never waits for the disk,
//! and bounded in bytes over all topics by the node (`latest_index_bytes_max`). Rebuilt at a
//! restart from the log: message records, and the copies retention writes of what is still the
//! newest of its key in a segment it deletes (`segment` says where each one's record is).

use std::collections::BTreeMap;
use std::rc::Rc;

/// Bytes an entry costs besides its key and body: its two map entries and fields.
pub const ENTRY_OVERHEAD_BYTES: u64 = 112;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatestMessage {
    pub key: Rc<str>,
    pub ts_ms: u64,
    pub body: Rc<str>,
    /// The segment holding its newest record (the message's own, or retention's copy).
    pub segment: u64,
}

impl LatestMessage {
    fn bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.key.len() as u64 + self.body.len() as u64
    }
}

#[derive(Debug, Default)]
pub struct LatestIndex {
    by_id: BTreeMap<u64, LatestMessage>,
    by_key: BTreeMap<Rc<str>, u64>,
    bytes: u64,
}

/// What `LatestIndex::record` did to the index's size.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The key's entry now is `id` (or already was, and moved to a newer segment); its bytes
    /// grew by this much (negative: shrank).
    Taken(i64),
    /// The key already has a newer message: nothing changed.
    Older,
    /// The key is new and its entry would not fit in the room given: nothing changed.
    NoRoom,
}

impl LatestIndex {
    /// Message `id` of `key` is durable in `segment`: it becomes the key's entry unless the key
    /// has a newer one, or is new and its entry needs more than `room_bytes`. (The same id
    /// again, from retention's copy, moves it to `segment`.)
    pub fn record(&mut self, id: u64, key: &str, ts_ms: u64, body: &str, segment: u64, room_bytes: u64) -> Recorded {
        match self.by_key.get(key) {
            Some(&current) if current > id => return Recorded::Older,
            None if ENTRY_OVERHEAD_BYTES + (key.len() + body.len()) as u64 > room_bytes => return Recorded::NoRoom,
            _ => {}
        }
        // An id names one message: recorded under another key (only a damaged or crafted log
        // says so), the other key's entry goes.
        let mut freed = 0;
        if let Some(other) = self.by_id.get(&id).filter(|m| &*m.key != key) {
            let other = other.key.clone();
            self.by_key.remove(&other);
            freed = self.by_id.remove(&id).map_or(0, |m| m.bytes());
            self.bytes -= freed;
        }
        let before = match self.by_key.get(key) {
            Some(&current) => {
                let old = self.by_id.remove(&current).expect("by_key and by_id agree");
                if current == id {
                    let moved = LatestMessage { segment: segment.max(old.segment), ..old };
                    self.by_id.insert(id, moved);
                    return Recorded::Taken(-(freed as i64));
                }
                old.bytes()
            }
            None => 0,
        };
        let key: Rc<str> = self.by_key.get_key_value(key).map_or_else(|| Rc::from(key), |(k, _)| k.clone());
        let message = LatestMessage { key: key.clone(), ts_ms, body: Rc::from(body), segment };
        let after = message.bytes();
        self.by_id.insert(id, message);
        self.by_key.insert(key, id);
        self.bytes = self.bytes + after - before;
        Recorded::Taken(after as i64 - before as i64 - freed as i64)
    }

    /// Entries with ids above `since`, in id order; only those of `keys` when given.
    pub fn since<'a>(&'a self, since: u64, keys: Option<&'a [String]>) -> Box<dyn Iterator<Item = (u64, &'a LatestMessage)> + 'a> {
        match keys {
            None => Box::new(self.by_id.range(since.saturating_add(1)..).map(|(id, m)| (*id, m))),
            Some(keys) => {
                let mut ids: Vec<u64> = keys.iter().filter_map(|key| self.by_key.get(key.as_str()).copied()).filter(|id| *id > since).collect();
                ids.sort_unstable();
                ids.dedup();
                Box::new(ids.into_iter().map(|id| (id, &self.by_id[&id])))
            }
        }
    }

    /// The ids whose newest record is in `segment` or an older one (retention is about to
    /// delete those segments: they need a copy first).
    pub fn in_segments_through(&self, segment: u64) -> Vec<u64> {
        self.by_id.iter().filter(|(_, m)| m.segment <= segment).map(|(id, _)| *id).collect()
    }

    pub fn get(&self, id: u64) -> Option<&LatestMessage> {
        self.by_id.get(&id)
    }

    /// Its entry's record was copied into `segment`.
    pub fn moved(&mut self, id: u64, segment: u64) {
        if let Some(message) = self.by_id.get_mut(&id) {
            message.segment = segment;
        }
    }

    pub fn keys(&self) -> usize {
        self.by_key.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_keeps_its_newest_message_and_pages_by_id() {
        let mut index = LatestIndex::default();
        assert!(matches!(index.record(1, "a", 10, "\"a1\"", 1, u64::MAX), Recorded::Taken(_)));
        index.record(2, "b", 11, "\"b2\"", 1, u64::MAX);
        index.record(4, "a", 12, "\"a4\"", 2, u64::MAX);
        assert_eq!(index.record(3, "a", 13, "\"a3\"", 3, u64::MAX), Recorded::Older, "an older message of a key is not its latest");
        assert_eq!(index.record(5, "c", 14, "1", 3, ENTRY_OVERHEAD_BYTES + 1), Recorded::NoRoom, "a new key that does not fit");
        assert!(matches!(index.record(6, "b", 14, "\"b6\"", 3, 0), Recorded::Taken(0)), "a key held takes its newer message, room or not");
        let all: Vec<(u64, &str)> = index.since(0, None).map(|(id, m)| (id, &*m.body)).collect();
        assert_eq!(all, vec![(4, "\"a4\""), (6, "\"b6\"")]);
        assert_eq!(index.since(4, None).map(|(id, _)| id).collect::<Vec<_>>(), vec![6]);
        let keys = ["a".to_string(), "zz".to_string()];
        assert_eq!(index.since(0, Some(&keys)).map(|(id, _)| id).collect::<Vec<_>>(), vec![4]);
        assert_eq!(index.keys(), 2);
        assert_eq!(index.bytes(), 2 * ENTRY_OVERHEAD_BYTES + 2 + 8, "keys a and b, bodies of 4 bytes");
    }

    #[test]
    fn a_copy_moves_an_entry_to_its_segment_and_retention_finds_what_needs_one() {
        let mut index = LatestIndex::default();
        index.record(1, "a", 10, "1", 1, u64::MAX);
        index.record(2, "b", 10, "2", 2, u64::MAX);
        index.record(3, "c", 10, "3", 3, u64::MAX);
        assert_eq!(index.in_segments_through(2), vec![1, 2]);
        assert_eq!(index.record(1, "a", 10, "1", 5, u64::MAX), Recorded::Taken(0));
        index.moved(2, 5);
        assert_eq!(index.in_segments_through(2), Vec::<u64>::new());
        assert_eq!(index.get(1).map(|m| m.segment), Some(5));
    }

    /// A damaged or crafted log may name one id under two keys: the index stays whole.
    #[test]
    fn an_id_recorded_under_another_key_replaces_that_keys_entry() {
        let mut index = LatestIndex::default();
        index.record(5, "a", 10, "1", 1, u64::MAX);
        let Recorded::Taken(grown) = index.record(5, "b", 10, "22", 1, u64::MAX) else { panic!("taken") };
        assert_eq!(grown, 1, "one byte more of body; the same key length");
        assert_eq!(index.since(0, None).map(|(id, m)| (id, m.key.to_string())).collect::<Vec<_>>(), vec![(5, "b".to_string())]);
        assert_eq!(index.since(0, Some(&["a".to_string()])).count(), 0, "key a is gone");
        assert_eq!(index.bytes(), ENTRY_OVERHEAD_BYTES + 1 + 2);
        index.record(6, "a", 10, "3", 1, u64::MAX);
        assert_eq!(index.keys(), 2);
    }
}
