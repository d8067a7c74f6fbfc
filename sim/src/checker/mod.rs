//! Invariants over everything the clients observed. One canonical history: which (producer,
//! seq) each stored id carries; any observation that contradicts it is a violation.

mod coalescing;
mod latest;

pub use coalescing::INV_NEWEST;
pub use latest::INV_LATEST;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

pub const INV_LOST: &str = "no-acked-message-lost";
pub const INV_IDS: &str = "ids-unique-never-reused";
pub const INV_KEY_ORDER: &str = "per-key-order";
pub const INV_ONCE: &str = "producer-seq-stored-once";
pub const INV_BOUNDS: &str = "bounds";
pub const INV_LIVENESS: &str = "liveness";
pub const INV_PREV: &str = "prev-chain";
pub const INV_CONTENT: &str = "content";
pub const INV_UNTIL_ACKED: &str = "redelivered-until-acked";
pub const INV_ATTEMPTS: &str = "attempts-within-max";
pub const INV_FETCH: &str = "fetch-covers-range";
pub const INV_COUNTERS: &str = "counters-cover-what-clients-saw";
/// What the client library hands to its application: each message once per subscription
/// (again only after the application gave it back with a nack)...
pub const INV_APP_ONCE: &str = "once-to-the-application";
/// ...in key order (in each group, first handings)...
pub const INV_APP_KEY_ORDER: &str = "key-order-to-the-application";
/// ...and every pubacked message of a group reaches the application of one of its members.
pub const INV_APP_LOST: &str = "every-message-to-the-application";

fn checksum(producer: &str, seq: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in producer.as_bytes().iter().chain(seq.to_le_bytes().iter()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h >> 12
}

pub fn body_for(producer: &str, seq: u64) -> Value {
    json!({"p": producer, "s": seq, "c": checksum(producer, seq)})
}

type TopicId = (String, u64);
type ProducerSeq = (String, u64);

#[derive(Default)]
pub struct Checker {
    pub violations: Vec<(&'static str, String)>,
    first_sent: BTreeMap<ProducerSeq, u64>,
    pubacked: BTreeMap<ProducerSeq, TopicId>,
    owner: BTreeMap<TopicId, ProducerSeq>,
    key_of: BTreeMap<TopicId, Option<String>>,
    delivered: BTreeMap<(String, String), BTreeSet<u64>>,
    /// Ids a member's application was handed (by the client library, or read by a puller).
    handed_to_application: BTreeMap<(String, String), BTreeSet<u64>>,
    /// Highest id of each key first handed to an application of the group.
    last_first_handed: BTreeMap<(String, String, String), u64>,
    /// Ids the node received an ack for from a client of the group.
    completed: BTreeMap<(String, String), BTreeSet<u64>>,
    /// Copies read from `<topic>.dlq`, by the original's (topic, producer, seq): their ids there.
    dead_letter_copies: BTreeMap<(String, ProducerSeq), BTreeSet<u64>>,
    /// When each id's puback first reached its publisher.
    pubacked_at: BTreeMap<TopicId, u64>,
    /// Deliveries beyond this attempt break the dead-letter promise.
    max_attempts: u64,
    prev_of: BTreeMap<(String, String), BTreeMap<u64, u64>>,
    /// When each delivered id of a key first left the node for one of the group's members,
    /// by (topic, group, key): the group's order of first deliveries (a link may reorder them).
    first_sent_to_group: BTreeMap<(String, String, String), BTreeMap<u64, u64>>,
    sent_key: BTreeMap<ProducerSeq, Option<String>>,
    filters: BTreeMap<(String, String), String>,
    /// Coalescing groups' windows (ms).
    coalesce_ms: BTreeMap<(String, String), u64>,
    last_nack: BTreeMap<(String, String, u64), u64>,
    /// Highest attempt each group's clients saw per id: at `max_attempts` the node may move it
    /// to the dead-letter topic, which then frees its key.
    last_attempt: BTreeMap<(String, String, u64), u64>,
    /// Ids known to carry each key, by (topic, key).
    ids_by_key: BTreeMap<(String, String), BTreeSet<u64>>,
    /// (topic, group, earlier id, id) where `id` was delivered while the earlier one of its
    /// key was neither acked nor (as far as the clients saw) dead-lettered; settled at the end.
    key_order_suspects: Vec<(String, String, u64, u64)>,
    /// Ids whose records a bit flip destroyed: a single node cannot keep them.
    sacrificed: BTreeSet<TopicId>,
    /// `retention_age_ms` in force (README, Storage): a message may be deleted only once its
    /// segment was last written this long ago, so only one sent longer ago than that.
    retention_age_ns: Option<u64>,
    /// The simulated clock, for the checks that ask whether retention may have run.
    pub now: u64,
    pub latencies_ms: Vec<f64>,
    pub deliveries: u64,
    pub redeliveries: u64,
}

impl Checker {
    pub fn new(max_attempts: u64, retention_age_ns: Option<u64>) -> Checker {
        Checker { max_attempts, retention_age_ns, ..Checker::default() }
    }

    /// Retention may have deleted `tid` by now: it was first sent more than the retention age
    /// ago (its write, and so its segment's last write, came after that).
    fn retained_away(&self, tid: &TopicId) -> bool {
        let Some(age) = self.retention_age_ns else { return false };
        self.owner.get(tid).and_then(|ps| self.first_sent.get(ps)).is_some_and(|sent| sent + age < self.now)
    }

    /// A message the node may no longer have: destroyed by a bit flip or deleted by retention.
    fn excused(&self, tid: &TopicId) -> bool {
        self.sacrificed.contains(tid) || self.retained_away(tid)
    }

    /// The nodes' own counters (what `/metrics` exports, summed over every process) must
    /// count at least the deliveries and redeliveries the clients saw: a frame may be lost on
    /// its way, never seen without being counted.
    pub fn check_counters(&mut self, delivered: u64, redelivered: u64) {
        if delivered < self.deliveries || redelivered < self.redeliveries {
            let detail = format!("the nodes counted {delivered} deliveries ({redelivered} redeliveries), the clients saw {} ({})", self.deliveries, self.redeliveries);
            self.violation(INV_COUNTERS, detail);
        }
    }

    pub fn violation(&mut self, invariant: &'static str, detail: String) {
        if self.violations.len() < 20 {
            self.violations.push((invariant, detail));
        }
    }

    pub fn publish_sent(&mut self, producer: &str, seq: u64, key: Option<&str>, now: u64) {
        self.first_sent.entry((producer.to_string(), seq)).or_insert(now);
        self.sent_key.insert((producer.to_string(), seq), key.map(str::to_string));
    }

    /// The group only wants messages whose key starts with `prefix`.
    pub fn group_filter(&mut self, topic: &str, group: &str, prefix: &str) {
        self.filters.insert((topic.to_string(), group.to_string()), prefix.to_string());
    }

    pub fn sacrifice(&mut self, ids: Vec<(String, u64)>) {
        self.sacrificed.extend(ids);
    }

    fn claim(&mut self, topic: &str, id: u64, producer: &str, seq: u64) {
        let key = (topic.to_string(), id);
        let want = (producer.to_string(), seq);
        match self.owner.get(&key) {
            Some(have) if *have != want => {
                if !self.sacrificed.contains(&key) {
                    self.violation(INV_IDS, format!("{topic} id {id} carries {have:?} and {want:?}"));
                }
            }
            Some(_) => {}
            None => {
                self.owner.insert(key, want);
            }
        }
    }

    pub fn pubacked(&mut self, producer: &str, seq: u64, topic: &str, id: u64, now: u64) {
        let ps = (producer.to_string(), seq);
        let tid = (topic.to_string(), id);
        self.pubacked_at.entry(tid.clone()).or_insert(now);
        if let Some(previous) = self.pubacked.get(&ps) {
            if *previous != tid && !self.sacrificed.contains(previous) {
                self.violation(INV_ONCE, format!("{ps:?} pubacked as {previous:?} and as {tid:?}"));
            }
        }
        if let Some(Some(key)) = self.sent_key.get(&ps) {
            self.ids_by_key.entry((topic.to_string(), key.clone())).or_default().insert(id);
        }
        self.pubacked.insert(ps, tid);
        self.claim(topic, id, producer, seq);
    }

    /// Checks a message body against what its publisher sent; returns (producer, seq).
    fn parse_body(&mut self, topic: &str, id: u64, body: &Value) -> Option<(String, u64)> {
        let producer = body["p"].as_str()?.to_string();
        let seq = body["s"].as_u64()?;
        if body["c"].as_u64() != Some(checksum(&producer, seq)) {
            self.violation(INV_CONTENT, format!("{topic} id {id} served a damaged body {body}"));
            return None;
        }
        Some((producer, seq))
    }

    fn observe(&mut self, topic: &str, id: u64, key: Option<&str>, body: &Value) -> Option<(String, u64)> {
        let Some((producer, seq)) = self.parse_body(topic, id, body) else {
            self.violation(INV_CONTENT, format!("{topic} id {id} has a body no publisher sent: {body}"));
            return None;
        };
        self.claim(topic, id, &producer, seq);
        let tid = (topic.to_string(), id);
        let key = key.map(str::to_string);
        if let Some(key) = &key {
            self.ids_by_key.entry((topic.to_string(), key.clone())).or_default().insert(id);
        }
        match self.key_of.get(&tid) {
            Some(k) if *k != key => self.violation(INV_CONTENT, format!("{topic} id {id} served with keys {k:?} and {key:?}")),
            Some(_) => {}
            None => {
                self.key_of.insert(tid, key);
            }
        }
        Some((producer, seq))
    }

    pub fn fetched(&mut self, topic: &str, m: &Value) {
        let id = m["id"].as_u64().unwrap_or(0);
        self.observe(topic, id, m["key"].as_str(), &m["body"]);
    }

    /// A member of `group` received `frame` (a `msg`) at `now`; it left the node at `sent_at`.
    pub fn delivered(&mut self, group: &str, frame: &Value, now: u64, sent_at: u64) {
        let topic = frame["topic"].as_str().unwrap_or_default().to_string();
        let id = frame["id"].as_u64().unwrap_or(0);
        let prev = frame["prev"].as_u64().unwrap_or(0);
        let key = frame["key"].as_str();
        let Some(ps) = self.observe(&topic, id, key, &frame["body"]) else { return };
        self.deliveries += 1;
        let attempt = frame["attempt"].as_u64().unwrap_or(1);
        if attempt > 1 {
            self.redeliveries += 1;
        }
        let seen = self.last_attempt.entry((topic.clone(), group.to_string(), id)).or_default();
        *seen = (*seen).max(attempt);
        if attempt > self.max_attempts {
            self.violation(INV_ATTEMPTS, format!("{topic}/{group} id {id} delivered with attempt {attempt}, past max_attempts {}", self.max_attempts));
        }
        if let Some(origin) = topic.strip_suffix(".dlq") {
            self.dead_letter_copies.entry((origin.to_string(), ps.clone())).or_default().insert(id);
        }
        let tg = (topic.clone(), group.to_string());
        match self.prev_of.entry(tg.clone()).or_default().insert(id, prev) {
            Some(old) if old != prev && !self.sacrificed_between(&topic, old.min(prev), id) => {
                self.violation(INV_PREV, format!("{topic}/{group} id {id} delivered with prev {old} and {prev}"))
            }
            _ => {}
        }
        if prev >= id {
            self.violation(INV_PREV, format!("{topic}/{group} id {id} has prev {prev}"));
        }
        if let Some(prefix) = self.filters.get(&tg) {
            if !key.is_some_and(|k| k.starts_with(prefix.as_str())) {
                self.violation(INV_CONTENT, format!("{topic}/{group} got id {id} with key {key:?}, outside its filter {prefix:?}"));
            }
        }
        if let Some(key) = key {
            // Strict per-key order: no earlier message of the key may still be unacked.
            let earlier: Vec<u64> = self.ids_by_key.get(&(topic.clone(), key.to_string())).map(|ids| ids.range(..id).copied().collect()).unwrap_or_default();
            let completed = self.completed.get(&tg);
            for before in earlier {
                if !completed.is_some_and(|c| c.contains(&before)) && !self.sacrificed.contains(&(topic.clone(), before)) {
                    self.key_order_suspects.push((topic.clone(), group.to_string(), before, id));
                }
            }
        }
        if let Some(key) = key {
            let first_sent = self.first_sent_to_group.entry((topic.clone(), group.to_string(), key.to_string())).or_default().entry(id).or_insert(sent_at);
            *first_sent = (*first_sent).min(sent_at);
        }
        let first_time = self.delivered.entry(tg).or_default().insert(id);
        if let Some(sent) = self.first_sent.get(&ps).filter(|_| first_time) {
            self.latencies_ms.push((now.saturating_sub(*sent)) as f64 / 1e6);
        }
    }

    /// End of run: in each group, the first deliveries of a key left the node in id order
    /// (whatever order the links to different members brought them in).
    fn check_first_deliveries_in_key_order(&mut self) {
        let mut found = Vec::new();
        for ((topic, group, key), first_sent) in &self.first_sent_to_group {
            // The latest first delivery among the smaller ids of the key so far: (its id, when).
            let mut latest: Option<(u64, u64)> = None;
            for (&id, &sent) in first_sent {
                match latest {
                    // Retention may have settled `older` for the group (deleted while waiting for
                    // its key), letting later ones of its key go before a copy of it.
                    Some((older, older_sent)) if older_sent > sent => {
                        if !self.sacrificed.contains(&(topic.clone(), id)) && !self.retained_away(&(topic.clone(), older)) {
                            found.push(format!("{topic}/{group} key {key}: id {older} first delivered after id {id}"));
                        }
                    }
                    _ => latest = Some((id, sent)),
                }
            }
        }
        for detail in found.into_iter().take(5) {
            self.violation(INV_KEY_ORDER, detail);
        }
    }

    /// A `fetched` for `from..=to`, asked at `asked_at`, returned `ids`: every message pubacked
    /// before it was asked must be there, up to the last id returned (the reply may be cut),
    /// or through `to` when the reply is empty.
    pub fn fetch_reply(&mut self, topic: &str, from: u64, to: u64, asked_at: u64, ids: &[u64]) {
        let upper = ids.last().copied().unwrap_or(to);
        if from > upper {
            return;
        }
        let returned: BTreeSet<u64> = ids.iter().copied().collect();
        let left_out: Vec<u64> = self
            .pubacked_at
            .range((topic.to_string(), from)..=(topic.to_string(), upper))
            .filter(|((_, id), at)| **at < asked_at && !returned.contains(id))
            .filter(|(tid, _)| !self.excused(tid))
            .map(|((_, id), _)| *id)
            .take(10)
            .collect();
        if !left_out.is_empty() {
            self.violation(INV_FETCH, format!("fetch {topic} {from}..={to} answered {ids:?}, leaving out pubacked ids {left_out:?}"));
        }
    }

    /// An ack for `id` from one of the group's clients has reached the node.
    pub fn is_completed(&self, topic: &str, group: &str, id: u64) -> bool {
        self.completed.get(&(topic.to_string(), group.to_string())).is_some_and(|c| c.contains(&id))
    }

    /// A nack for `id` from one of the group's clients reached the node at `now`: whoever
    /// held it then no longer does.
    pub fn nacked(&mut self, topic: &str, group: &str, id: u64, now: u64) {
        self.last_nack.insert((topic.to_string(), group.to_string(), id), now);
    }

    /// When a nack for `id` last reached the node.
    pub fn last_nack(&self, topic: &str, group: &str, id: u64) -> Option<u64> {
        self.last_nack.get(&(topic.to_string(), group.to_string(), id)).copied()
    }

    /// The node received an ack from one of the group's clients.
    pub fn completed(&mut self, topic: &str, group: &str, id: u64) {
        self.completed.entry((topic.to_string(), group.to_string())).or_default().insert(id);
    }

    /// A bit flip or retention took some id in (from, to): `prev` may legitimately skip it.
    fn sacrificed_between(&self, topic: &str, from: u64, to: u64) -> bool {
        self.sacrificed.iter().any(|(t, id)| t == topic && *id > from && *id < to)
            || (self.retention_age_ns.is_some() && (from + 1..to).any(|id| self.retained_away(&(topic.to_string(), id))))
    }

    /// Pubacked messages of `topic` not yet delivered to `group`: bit-flip victims excepted,
    /// and messages whose copy a client read from `<topic>.dlq` (every delivery of such a
    /// message may have been lost on the way, each with its connection, before the node moved
    /// it there: the message is not lost, it is where dead letters go).
    pub fn missing(&self, topic: &str, group: &str) -> Vec<u64> {
        let mut missing = self.pubacked_not_in(topic, group, &self.delivered);
        missing.retain(|id| !self.dead_letter_seen(&(topic.to_string(), *id)));
        missing
    }

    /// Pubacked messages of `topic` that no application of `group` was handed, with the
    /// same exceptions as `missing`.
    pub fn missing_in_application(&self, topic: &str, group: &str) -> Vec<u64> {
        let mut missing = self.pubacked_not_in(topic, group, &self.handed_to_application);
        missing.retain(|id| !self.dead_letter_seen(&(topic.to_string(), *id)));
        missing
    }

    /// A member's application was handed `id`: the first handing of an id in its group must
    /// not come after a later id of its key was first handed (a copy of a message the node may
    /// have lost or deleted excepted). Only first handings count: a message processed already
    /// may come again to another member (its ack lost in a crash).
    pub fn handed_to_application(&mut self, topic: &str, group: &str, id: u64, key: Option<&str>) {
        let first = self.handed_to_application.entry((topic.to_string(), group.to_string())).or_default().insert(id);
        let Some(key) = key.filter(|_| first) else { return };
        let last = self.last_first_handed.entry((topic.to_string(), group.to_string(), key.to_string())).or_default();
        let before = *last;
        *last = before.max(id);
        if before > id && !self.excused(&(topic.to_string(), before)) && !self.excused(&(topic.to_string(), id)) {
            self.violation(INV_APP_KEY_ORDER, format!("{topic}/{group} key {key}: id {id} handed to an application first after id {before}"));
        }
    }

    /// A client read the copy of this message from `<topic>.dlq`.
    fn dead_letter_seen(&self, tid: &TopicId) -> bool {
        self.owner.get(tid).is_some_and(|ps| self.dead_letter_copies.contains_key(&(tid.0.clone(), ps.clone())))
    }

    /// Pubacked messages of `topic` that some of `groups` have not acked, and for which fewer
    /// copies were read from `<topic>.dlq` than groups left them unacked.
    pub fn not_completed(&self, topic: &str, groups: &[(String, String)]) -> Vec<u64> {
        let mut open: BTreeMap<u64, usize> = BTreeMap::new();
        for (t, group) in groups.iter().filter(|(t, _)| t == topic) {
            for id in self.pubacked_not_in(t, group, &self.completed) {
                *open.entry(id).or_default() += 1;
            }
        }
        open.into_iter()
            .filter(|(id, groups_open)| {
                let Some(ps) = self.owner.get(&(topic.to_string(), *id)) else { return true };
                self.dead_letter_copies.get(&(topic.to_string(), ps.clone())).map_or(0, BTreeSet::len) < *groups_open
            })
            .map(|(id, _)| id)
            .collect()
    }

    /// Pubacked messages of `topic` that pass the group's filter and are not in `seen`.
    fn pubacked_not_in(&self, topic: &str, group: &str, seen: &BTreeMap<(String, String), BTreeSet<u64>>) -> Vec<u64> {
        let tg = (topic.to_string(), group.to_string());
        let seen = seen.get(&tg);
        let prefix = self.filters.get(&tg);
        self.pubacked
            .iter()
            .filter(|(_, tid)| tid.0 == topic && !self.excused(tid))
            .filter(|(ps, _)| prefix.is_none_or(|p| self.sent_key.get(*ps).and_then(Option::as_deref).is_some_and(|k| k.starts_with(p.as_str()))))
            .filter(|(_, (_, id))| !seen.is_some_and(|d| d.contains(id)))
            .map(|(_, (_, id))| *id)
            .filter(|id| !self.coalescable(topic, group, *id))
            .collect()
    }

    /// The end-of-run checks; `groups` are the (topic, group) pairs that must have everything.
    pub fn finish(&mut self, groups: &[(String, String)]) {
        for (topic, group) in groups {
            let missing = self.missing(topic, group);
            if !missing.is_empty() {
                let shown: Vec<_> = missing.iter().take(10).collect();
                self.violation(INV_LOST, format!("{topic}/{group} never received {} pubacked ids, e.g. {shown:?}", missing.len()));
            }
            let unseen = self.missing_in_application(topic, group);
            if !unseen.is_empty() {
                let shown: Vec<_> = unseen.iter().take(10).collect();
                self.violation(INV_APP_LOST, format!("{topic}/{group}: no member's application was handed {} pubacked ids, e.g. {shown:?}", unseen.len()));
            }

            let Some(chain) = self.prev_of.get(&(topic.clone(), group.clone())) else { continue };
            let mut expected = 0;
            let mut broken = None;
            for (id, prev) in chain {
                // Dead letters a client of this group never saw (each delivery lost with its
                // connection) are skipped too: their copies were read from `<topic>.dlq`.
                let skipped_dead_letters = expected < *prev
                    && (expected + 1..=*prev)
                        .all(|skipped| self.dead_letter_seen(&(topic.clone(), skipped)) || self.coalescable(topic, group, skipped) || !self.passes_filter(topic, group, skipped));
                let skipped_sacrificed = self.sacrificed.contains(&(topic.clone(), *prev)) || self.sacrificed_between(topic, (*prev).min(expected), *id) || skipped_dead_letters;
                if *prev != expected && !skipped_sacrificed && broken.is_none() {
                    broken = Some(format!("{topic}/{group}: id {id} has prev {prev}, but the group's previous message is {expected}"));
                }
                expected = *id;
            }
            if let Some(detail) = broken {
                self.violation(INV_PREV, detail);
            }
        }
        self.check_newest_delivered(groups);
        self.check_first_deliveries_in_key_order();
        let suspects = std::mem::take(&mut self.key_order_suspects);
        for (topic, group, before, id) in suspects {
            let dead_lettered = self.owner.get(&(topic.clone(), before)).is_some_and(|ps| self.dead_letter_copies.contains_key(&(topic.clone(), ps.clone())))
                || self.last_attempt.get(&(topic.clone(), group.clone(), before)).is_some_and(|a| *a >= self.max_attempts);
            if !dead_lettered && !self.excused(&(topic.clone(), before)) && !self.coalescable(&topic, &group, before) {
                self.violation(INV_KEY_ORDER, format!("{topic}/{group}: id {id} delivered while id {before} of its key was not acked"));
                break;
            }
        }
        let topics: BTreeSet<&String> = groups.iter().map(|(t, _)| t).collect();
        for topic in topics {
            let open = self.not_completed(topic, groups);
            if !open.is_empty() {
                let shown: Vec<_> = open.iter().take(10).collect();
                self.violation(INV_UNTIL_ACKED, format!("{topic}: {} pubacked ids a group never acked and {topic}.dlq never got, e.g. {shown:?}", open.len()));
            }
        }
        let mut stored: BTreeMap<&ProducerSeq, BTreeSet<&TopicId>> = BTreeMap::new();
        for (tid, ps) in &self.owner {
            if !tid.0.ends_with(".dlq") && !self.sacrificed.contains(tid) {
                stored.entry(ps).or_default().insert(tid);
            }
        }
        let twice: Vec<String> = stored.iter().filter(|(_, ids)| ids.len() > 1).take(5).map(|(ps, ids)| format!("{ps:?} stored as {ids:?}")).collect();
        for detail in twice {
            self.violation(INV_ONCE, detail);
        }
    }

    pub fn pubacked_count(&self) -> usize {
        self.pubacked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(topic: &str, id: u64, prev: u64, seq: u64) -> Value {
        json!({"op": "msg", "topic": topic, "group": "g", "id": id, "prev": prev, "body": body_for("p", seq), "attempt": 1})
    }

    /// A message whose every delivery was lost on the way, then dead-lettered: not lost once
    /// its copy is read from the dead-letter topic, and the group's `prev` chain may skip it.
    #[test]
    fn a_dead_letter_no_member_saw_counts_as_delivered_once_its_copy_is_read() {
        let groups = [("t".to_string(), "g".to_string())];
        let run = |dlq_copy_read: bool| {
            let mut c = Checker::new(3, None);
            for seq in 1..=3 {
                c.publish_sent("p", seq, None, 0);
                c.pubacked("p", seq, "t", seq, 0);
            }
            c.delivered("g", &msg("t", 1, 0, 1), 0, 0);
            c.delivered("g", &msg("t", 3, 2, 3), 0, 0);
            c.handed_to_application("t", "g", 1, None);
            c.handed_to_application("t", "g", 3, None);
            c.completed("t", "g", 1);
            c.completed("t", "g", 3);
            if dlq_copy_read {
                c.delivered("audit", &msg("t.dlq", 1, 0, 2), 0, 0);
            }
            c.finish(&groups);
            c.violations.iter().map(|(invariant, _)| *invariant).collect::<Vec<_>>()
        };
        let without = run(false);
        assert!(without.contains(&INV_LOST) && without.contains(&INV_PREV), "{without:?}");
        assert_eq!(run(true), Vec::<&str>::new());
    }
}
