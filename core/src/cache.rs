//! Messages kept in memory, bounded in bytes as well as counts: the read cache (messages read
//! back from disk) and the node-wide budget over every topic's cache of recent messages.

use crate::ids::TopicIdx;
use crate::topic::{StoredMessage, Topic};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

/// (topic index, id)
pub type MessageKey = (TopicIdx, u64);

/// Messages read back from disk, oldest evicted first.
#[derive(Default)]
pub struct ReadCache {
    map: BTreeMap<MessageKey, Rc<StoredMessage>>,
    order: VecDeque<MessageKey>,
    bytes: u64,
}

impl ReadCache {
    pub fn get(&self, key: &MessageKey) -> Option<&Rc<StoredMessage>> {
        self.map.get(key)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds a message, then evicts the oldest until both limits hold (the newest always stays:
    /// its reader is about to use it).
    pub fn insert(&mut self, key: MessageKey, message: Rc<StoredMessage>, messages_max: usize, bytes_max: u64) {
        self.bytes += message.bytes();
        if let Some(old) = self.map.insert(key, message) {
            self.bytes -= old.bytes();
        } else {
            self.order.push_back(key);
        }
        while (self.map.len() > messages_max || self.bytes > bytes_max) && self.map.len() > 1 {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(old) = self.map.remove(&oldest) {
                self.bytes -= old.bytes();
            }
        }
    }

    pub fn retain(&mut self, keep: impl Fn(&MessageKey) -> bool) {
        self.map.retain(|key, _| keep(key));
        self.order.retain(|key| keep(key));
        self.bytes = self.map.values().map(|m| m.bytes()).sum();
    }
}

/// The node-wide bound over the topics' caches of recent messages: the oldest message cached
/// by any topic is evicted first.
pub struct CacheBudget {
    /// Every cached message in caching order; entries a topic evicted itself go stale and are
    /// skipped, and compacted away once the queue is four times what the last compaction kept
    /// (4/3 of a lookup per message; at twice, 2 lookups were 2.6 % of a publish in criterion).
    order: VecDeque<MessageKey>,
    bytes: u64,
    compact_at: usize,
}

const COMPACT_AT_MIN: usize = 1024;

impl Default for CacheBudget {
    fn default() -> Self {
        CacheBudget { order: VecDeque::new(), bytes: 0, compact_at: COMPACT_AT_MIN }
    }
}

impl CacheBudget {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Caches `message` in topic `t` (bounded by `topic_bytes_max`), then evicts the oldest
    /// cached messages node-wide until all caches hold at most `total_bytes_max`.
    pub fn push(&mut self, topics: &mut [Topic], t: TopicIdx, message: Rc<StoredMessage>, topic_bytes_max: u64, total_bytes_max: u64) {
        let id = message.id;
        let before = topics[t].cache_bytes();
        topics[t].cache_push(message, topic_bytes_max);
        self.bytes = self.bytes + topics[t].cache_bytes() - before;
        self.order.push_back((t, id));
        while self.bytes > total_bytes_max {
            let Some((oldest_t, oldest_id)) = self.order.pop_front() else { break };
            let topic = &mut topics[oldest_t];
            if topic.cache_first_id() == Some(oldest_id) {
                let before = topic.cache_bytes();
                topic.cache_evict_oldest();
                self.bytes -= before - topic.cache_bytes();
            }
        }
        if self.order.len() >= self.compact_at {
            self.order.retain(|(t, id)| topics[*t].cached(*id).is_some_and(|m| m.id == *id));
            self.compact_at = (4 * self.order.len()).max(COMPACT_AT_MIN);
        }
    }

    /// Counts again after topics dropped cached messages themselves (a failed write rolled
    /// their ids back).
    pub fn recount(&mut self, topics: &[Topic]) {
        self.bytes = topics.iter().map(Topic::cache_bytes).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64, body_bytes: usize) -> Rc<StoredMessage> {
        Rc::new(StoredMessage { id, ts_ms: 0, stored_ns: 0, key: None, body: "x".repeat(body_bytes).into(), raft_index: 0 })
    }

    #[test]
    fn the_read_cache_holds_its_byte_budget_and_keeps_the_newest() {
        let mut cache = ReadCache::default();
        for id in 1..=100 {
            cache.insert((TopicIdx(0), id), message(id, 1000), 1_000, 10_000);
        }
        assert!(cache.bytes() <= 10_000, "{}", cache.bytes());
        assert!(cache.get(&(TopicIdx(0), 100)).is_some());
        assert!(cache.get(&(TopicIdx(0), 1)).is_none());
        cache.insert((TopicIdx(0), 101), message(101, 50_000), 1_000, 10_000);
        assert_eq!(cache.len(), 1, "a message larger than the budget still stays alone for its reader");
    }

    #[test]
    fn all_topic_caches_together_stay_within_the_total() {
        let mut topics: Vec<Topic> = (0..30).map(|t| Topic::new(format!("t{t}"), 1)).collect();
        let mut budget = CacheBudget::default();
        for round in 1..=50u64 {
            for t in 0..topics.len() {
                budget.push(&mut topics, TopicIdx(t), message(round, 1000), 20_000, 100_000);
            }
        }
        let held: u64 = topics.iter().map(Topic::cache_bytes).sum();
        assert_eq!(held, budget.bytes());
        assert!(held <= 100_000, "{held}");
        assert!(topics.iter().all(|t| t.cached(50).is_some()), "the newest message of each topic is still cached");
    }
}
