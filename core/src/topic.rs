//! A topic: its id counter, its index id → place on disk, and a cache of recent messages.

use crate::cache::ReadCache;
use crate::group::Group;
use crate::ids::{GroupIdx, TopicIdx};
use crate::timeline::Timeline;
use std::collections::{BTreeMap, VecDeque};
use std::ops::{Index, IndexMut};
use std::rc::Rc;

#[derive(Debug)]
pub struct StoredMessage {
    pub id: u64,
    pub ts_ms: u64,
    /// When this process stored it, on its clock (`ts_ms` in ns when read back from disk):
    /// for the store → delivery latency.
    pub stored_ns: u64,
    pub key: Option<Box<str>>,
    pub body: Box<str>,
    /// Cluster mode: the raft entry that stored it (0 on a single node), for deliveries by
    /// reference to members on other nodes.
    pub raft_index: u64,
}

impl StoredMessage {
    pub fn bytes(&self) -> u64 {
        (self.body.len() + self.key.as_ref().map_or(0, |k| k.len()) + 64) as u64
    }
}

/// Where a record lies; `len == 0` marks an id whose record is gone (a corrupt region).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

pub enum Lookup {
    Found(Rc<StoredMessage>),
    OnDisk(Loc),
    Gone,
}

pub struct Topic {
    pub name: String,
    /// Next id to assign; ids start at 1 so that `prev` 0 means "none".
    pub next_id: u64,
    /// Ids below it are durable per the fsync policy, and only those are delivered.
    pub durable_next_id: u64,
    first_id: u64,
    index: VecDeque<Loc>,
    /// Bytes of the records of the ids it indexes.
    stored_bytes: u64,
    /// When its stored messages were stored, sparsely (oldest unacked ages).
    timeline: Timeline,
    recent: VecDeque<Rc<StoredMessage>>,
    recent_bytes: u64,
    pub groups: Vec<Group>,
    pub group_index: BTreeMap<String, GroupIdx>,
    /// Messages stored in it since the process started (for metrics).
    pub published: u64,
    /// Its publish rate limit (`publish_rate_per_topic`).
    pub publish_bucket: crate::bucket::Bucket,
    /// An operator refuses publishes to it (until switched back, on this node, while it runs).
    pub publishes_refused: bool,
    /// The newest durable message of each key (`latest`).
    pub latest: crate::latest::LatestIndex,
    /// `latest` left keys out of it (`latest_index_bytes_max` reached): its answers would be
    /// incomplete.
    pub latest_incomplete: bool,
}

impl Topic {
    /// A topic whose first id is `first_id` (1, unless salvage skipped ids a damaged region
    /// may have held).
    pub fn new(name: String, first_id: u64) -> Topic {
        Topic {
            name,
            next_id: first_id,
            durable_next_id: first_id,
            first_id,
            index: VecDeque::new(),
            stored_bytes: 0,
            timeline: Timeline::default(),
            recent: VecDeque::new(),
            recent_bytes: 0,
            groups: Vec::new(),
            group_index: BTreeMap::new(),
            published: 0,
            publish_bucket: crate::bucket::Bucket::default(),
            publishes_refused: false,
            latest: crate::latest::LatestIndex::default(),
            latest_incomplete: false,
        }
    }

    pub fn is_dead_letter(&self) -> bool {
        self.name.ends_with(".dlq")
    }

    /// Lowest id still stored (== next_id when nothing is).
    pub fn first_id(&self) -> u64 {
        self.first_id
    }

    /// Records the place of id `id`, stored at `ts_ms`, which must be the next one (gaps
    /// become empty places).
    pub fn index_push(&mut self, id: u64, loc: Loc, ts_ms: u64) {
        self.timeline.push(id, ts_ms);
        if self.index.is_empty() && self.first_id < id {
            self.first_id = id;
        }
        let next = self.first_id + self.index.len() as u64;
        assert!(id >= next, "topic {}: id {id} indexed twice (next {next})", self.name);
        for _ in next..id {
            self.index.push_back(Loc { segment: 0, offset: 0, len: 0 });
        }
        self.stored_bytes += u64::from(loc.len);
        self.index.push_back(loc);
    }

    /// Bytes of the records of its stored messages.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// When message `id` was stored: exact while it is cached, else from the timeline (at
    /// most one of its spacings early); `None` when nothing dates it.
    pub fn stored_at_ms(&self, id: u64) -> Option<u64> {
        match self.cached(id) {
            Some(message) => Some(message.ts_ms),
            None => self.timeline.stored_at_ms(id),
        }
    }

    /// Every id that has a place, in order.
    pub fn indexed(&self) -> impl Iterator<Item = (u64, Loc)> + '_ {
        self.index.iter().enumerate().filter(|(_, loc)| loc.len > 0).map(|(at, loc)| (self.first_id + at as u64, *loc))
    }

    pub fn indexed_len(&self) -> u64 {
        self.index.len() as u64
    }

    /// The record of `id` failed its checks: readers must not see it again.
    pub fn forget(&mut self, id: u64) {
        if let Some(at) = id.checked_sub(self.first_id) {
            if let Some(loc) = self.index.get_mut(at as usize) {
                self.stored_bytes -= u64::from(loc.len);
                loc.len = 0;
            }
        }
    }

    pub fn loc(&self, id: u64) -> Option<Loc> {
        let at = id.checked_sub(self.first_id)?;
        self.index.get(at as usize).copied().filter(|l| l.len > 0)
    }

    pub fn cache_push(&mut self, message: Rc<StoredMessage>, cache_bytes_max: u64) {
        if let Some(last) = self.recent.back() {
            debug_assert_eq!(last.id + 1, message.id);
        }
        self.recent_bytes += message.bytes();
        self.recent.push_back(message);
        while self.recent_bytes > cache_bytes_max && self.recent.len() > 1 {
            let old = self.recent.pop_front().expect("non-empty");
            self.recent_bytes -= old.bytes();
        }
    }

    /// Bytes the cache holds (as counted by `StoredMessage::bytes`).
    pub fn cache_bytes(&self) -> u64 {
        self.recent_bytes
    }

    /// Id of the oldest cached message.
    pub fn cache_first_id(&self) -> Option<u64> {
        self.recent.front().map(|m| m.id)
    }

    /// Evicts the oldest cached message (the node-wide budget chose it).
    pub fn cache_evict_oldest(&mut self) {
        if let Some(old) = self.recent.pop_front() {
            self.recent_bytes -= old.bytes();
        }
    }

    pub fn cached(&self, id: u64) -> Option<&Rc<StoredMessage>> {
        let first = self.recent.front()?.id;
        self.recent.get(id.checked_sub(first)? as usize)
    }

    pub fn lookup(&self, id: u64, read_cache: &ReadCache, topic: TopicIdx) -> Lookup {
        if let Some(m) = self.cached(id) {
            return Lookup::Found(m.clone());
        }
        if let Some(m) = read_cache.get(&(topic, id)) {
            return Lookup::Found(m.clone());
        }
        match self.loc(id) {
            Some(loc) => Lookup::OnDisk(loc),
            None => Lookup::Gone,
        }
    }

    /// Forgets ids at or above `next_id` (their write failed); they will be assigned again.
    pub fn roll_back_to(&mut self, next_id: u64) {
        assert!(next_id >= self.durable_next_id.min(self.next_id));
        while self.first_id + (self.index.len() as u64) > next_id && !self.index.is_empty() {
            let loc = self.index.pop_back().expect("non-empty");
            self.stored_bytes -= u64::from(loc.len);
        }
        self.timeline.roll_back_to(next_id);
        while self.recent.back().is_some_and(|m| m.id >= next_id) {
            let m = self.recent.pop_back().expect("non-empty");
            self.recent_bytes -= m.bytes();
        }
        self.next_id = next_id;
    }

    /// Drops the places of every id stored in segments up to `segment` (retention).
    pub fn forget_segments_through(&mut self, segment: u64) {
        while self.index.front().is_some_and(|l| l.segment <= segment) {
            let loc = self.index.pop_front().expect("non-empty");
            self.stored_bytes -= u64::from(loc.len);
            self.first_id += 1;
        }
        if self.index.is_empty() {
            self.first_id = self.first_id.max(self.durable_next_id.min(self.next_id));
        }
        self.timeline.forget_before(self.first_id);
    }
}

/// Tables of topics and groups are indexed by their own index types, so a group's index can
/// never pick a topic. Both the `Vec` and its slice: indexing a `Vec` does not fall back to the
/// slice's impl.
macro_rules! index_by {
    ($idx:ty, $item:ty) => {
        impl Index<$idx> for [$item] {
            type Output = $item;
            fn index(&self, at: $idx) -> &$item {
                &self[at.0]
            }
        }
        impl IndexMut<$idx> for [$item] {
            fn index_mut(&mut self, at: $idx) -> &mut $item {
                &mut self[at.0]
            }
        }
        impl Index<$idx> for Vec<$item> {
            type Output = $item;
            fn index(&self, at: $idx) -> &$item {
                &self[at.0]
            }
        }
        impl IndexMut<$idx> for Vec<$item> {
            fn index_mut(&mut self, at: $idx) -> &mut $item {
                &mut self[at.0]
            }
        }
    };
}

index_by!(TopicIdx, Topic);
index_by!(GroupIdx, Group);
