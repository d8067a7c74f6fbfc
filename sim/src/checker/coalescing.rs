//! Coalescing groups, judged from what clients saw: a message may go undelivered only when a
//! newer one of its key could have been stored within the group's window after it, and the
//! newest message of every key must be delivered.

use super::{Checker, TopicId};

/// The newest message of every key reaches a coalescing group.
pub const INV_NEWEST: &str = "newest-of-every-key-delivered";

const NS_PER_MS: u64 = 1_000_000;

impl Checker {
    /// Group `group` of `topic` coalesces messages of a key stored within `window_ms`.
    pub fn group_coalesces(&mut self, topic: &str, group: &str, window_ms: u64) {
        self.coalesce_ms.insert((topic.to_string(), group.to_string()), window_ms);
    }

    /// The group may have settled `id` unseen: it has a key, and a newer message of that key
    /// was sent before `id`'s puback came back plus the window. (The node coalesces by stored
    /// times in whole ms, `newer.ts_ms - id.ts_ms <= window`, so the two were stored less than
    /// the window and a ms apart; a message is stored after it is sent and before its puback
    /// returns.) An id never pubacked has no bound: any newer one of its key will do; one no
    /// client ever saw (its puback lost, and coalesced) may have had any key.
    pub(super) fn coalescable(&self, topic: &str, group: &str, id: u64) -> bool {
        let Some(window_ms) = self.coalesce_ms.get(&(topic.to_string(), group.to_string())) else { return false };
        let tid = (topic.to_string(), id);
        if !self.owner.contains_key(&tid) {
            return true;
        }
        let Some(key) = self.key_of_id(&tid) else { return false };
        let stored_by = self.pubacked_at.get(&tid).copied().unwrap_or(u64::MAX);
        let newer_sent_by = stored_by.saturating_add((window_ms + 1) * NS_PER_MS);
        let Some(ids) = self.ids_by_key.get(&(topic.to_string(), key)) else { return false };
        ids.range(id + 1..).any(|newer| self.sent_at(&(topic.to_string(), *newer)).is_some_and(|sent| sent < newer_sent_by))
    }

    /// `id` is one the group's filter lets through (or its key is not known).
    pub(super) fn passes_filter(&self, topic: &str, group: &str, id: u64) -> bool {
        let Some(prefix) = self.filters.get(&(topic.to_string(), group.to_string())) else { return true };
        let tid = (topic.to_string(), id);
        let known = self.key_of.contains_key(&tid) || self.owner.get(&tid).is_some_and(|ps| self.sent_key.contains_key(ps));
        !known || self.key_of_id(&tid).is_some_and(|key| key.starts_with(prefix.as_str()))
    }

    fn key_of_id(&self, tid: &TopicId) -> Option<String> {
        match self.key_of.get(tid) {
            Some(key) => key.clone(),
            None => self.owner.get(tid).and_then(|ps| self.sent_key.get(ps)).cloned().flatten(),
        }
    }

    fn sent_at(&self, tid: &TopicId) -> Option<u64> {
        self.owner.get(tid).and_then(|ps| self.first_sent.get(ps)).copied()
    }

    /// End of run: in every coalescing group of `groups`, the newest message of each key its
    /// filter passes was delivered (unless the node may no longer have it, or its copy was
    /// read from the dead-letter topic).
    pub(super) fn check_newest_delivered(&mut self, groups: &[(String, String)]) {
        let mut undelivered = Vec::new();
        for (topic, group) in groups.iter().filter(|tg| self.coalesce_ms.contains_key(*tg)) {
            let tg = (topic.clone(), group.clone());
            let prefix = self.filters.get(&tg);
            let delivered = self.delivered.get(&tg);
            for ((t, key), ids) in &self.ids_by_key {
                let Some(&newest) = ids.last() else { continue };
                let tid = (topic.clone(), newest);
                if t != topic || prefix.is_some_and(|p| !key.starts_with(p.as_str())) || self.excused(&tid) || self.dead_letter_seen(&tid) {
                    continue;
                }
                if !delivered.is_some_and(|d| d.contains(&newest)) {
                    undelivered.push(format!("{topic}/{group} key {key}: its newest message, id {newest}, was never delivered"));
                }
            }
        }
        for detail in undelivered.into_iter().take(5) {
            self.violation(INV_NEWEST, detail);
        }
    }
}
