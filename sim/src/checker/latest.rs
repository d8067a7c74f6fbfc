//! `latest` answers, judged from what clients saw: each message returned is a stored message
//! of its key and no older than any message of its key pubacked before the read began; a
//! finished read (paged to an empty answer) names every key such a message was pubacked for.

use super::{Checker, TopicId};
use serde_json::Value;
use std::collections::BTreeSet;

/// `latest` agrees with what was published.
pub const INV_LATEST: &str = "latest-agrees-with-published";

impl Checker {
    /// One page of a `latest` read of `topic` that began at `started_at`.
    pub fn latest_page(&mut self, topic: &str, started_at: u64, messages: &[Value]) {
        for m in messages {
            let id = m["id"].as_u64().unwrap_or(0);
            let Some(key) = m["key"].as_str() else {
                self.violation(INV_LATEST, format!("latest of {topic} returned id {id} without a key"));
                continue;
            };
            self.fetched(topic, m);
            if let Some(newer) = self.newest_pubacked_before(topic, key, started_at).filter(|newer| *newer > id) {
                if !self.latest_excused(topic, key, id) {
                    self.violation(INV_LATEST, format!("latest of {topic} key {key} returned id {id}; id {newer} of the key was pubacked before the read began"));
                }
            }
        }
    }

    /// A read of `topic` that began at `started_at` has paged to its end, having returned `keys`.
    pub fn latest_read_done(&mut self, topic: &str, started_at: u64, keys: &BTreeSet<String>) {
        let missing: Vec<String> = self
            .ids_by_key
            .keys()
            .filter(|(t, key)| t == topic && !keys.contains(key))
            .filter(|(_, key)| self.newest_pubacked_before(topic, key, started_at).is_some() && !self.latest_excused(topic, key, 0))
            .map(|(_, key)| key.clone())
            .take(5)
            .collect();
        if !missing.is_empty() {
            self.violation(INV_LATEST, format!("a finished latest read of {topic} left out keys with pubacked messages: {missing:?}"));
        }
    }

    /// The newest id of `key` whose puback reached its publisher before `at`.
    fn newest_pubacked_before(&self, topic: &str, key: &str, at: u64) -> Option<u64> {
        let ids = self.ids_by_key.get(&(topic.to_string(), key.to_string()))?;
        ids.iter().rev().copied().find(|id| self.pubacked_at.get(&(topic.to_string(), *id)).is_some_and(|acked| *acked < at))
    }

    /// A message of `key` above `id` may be gone from the node: destroyed by a bit flip.
    fn latest_excused(&self, topic: &str, key: &str, id: u64) -> bool {
        let Some(ids) = self.ids_by_key.get(&(topic.to_string(), key.to_string())) else { return false };
        ids.range(id + 1..).any(|newer| {
            let tid: TopicId = (topic.to_string(), *newer);
            self.sacrificed.contains(&tid)
        })
    }
}
