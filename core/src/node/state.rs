//! The state every replica of a topic holds, with no connection in it: topics (next ids,
//! stored messages' places, groups and their positions) and the producers' remembered
//! (`producer`, `seq`)s. It is what a snapshot records and what a cluster replicates.

use crate::config::Config;
use crate::group::{Group, GroupTerms};
use crate::ids::{GroupIdx, TopicIdx};
use crate::latest::Recorded;
use crate::protocol::{ErrorCode, StartFrom};
use crate::record::{self, AppliedRecord, NewTopicsRecord, ProducerRecord, SalvagedRecord, TopicRecord};
use crate::topic::{Loc, Topic};
use std::collections::{BTreeMap, BTreeSet};

pub(super) struct SeenSeq {
    pub(super) topic: TopicIdx,
    pub(super) id: u64,
    pub(super) durable: bool,
}

pub(super) struct Producer {
    pub(super) seqs: BTreeMap<u64, SeenSeq>,
    pub(super) last_use: u64,
}

/// A message as published, before the state gives it an id.
pub(super) struct NewMessage<'a> {
    pub(super) topic: TopicIdx,
    pub(super) key: Option<&'a str>,
    pub(super) producer: Option<(&'a str, u64)>,
    pub(super) body: &'a str,
}

pub(super) struct State {
    pub(super) topics: Vec<Topic>,
    pub(super) topic_index: BTreeMap<String, TopicIdx>,
    pub(super) producers: BTreeMap<String, Producer>,
    pub(super) producers_by_use: BTreeSet<(u64, String)>,
    pub(super) use_counter: u64,
    /// First id of a topic created from now on: above any id a salvaged region may have held.
    pub(super) new_topic_first_id: u64,
    /// Cluster mode: the last raft entry applied to this state (each snapshot records it).
    pub(super) applied: Option<AppliedRecord>,
    topics_max: u32,
    producer_seqs_max: u32,
    producers_max: u32,
    /// Bytes of every topic's latest-per-key index, and their bound.
    pub(super) latest_bytes: u64,
    latest_bytes_max: u64,
    /// Entries per chunk of a group's in-flight state (`group_state_chunk_entries`).
    chunk_entries: usize,
}

impl State {
    pub(super) fn new(config: &Config) -> State {
        State {
            topics: Vec::new(),
            topic_index: BTreeMap::new(),
            producers: BTreeMap::new(),
            producers_by_use: BTreeSet::new(),
            use_counter: 0,
            new_topic_first_id: 1,
            applied: None,
            latest_bytes: 0,
            latest_bytes_max: config.latest_index_bytes_max,
            chunk_entries: config.group_state_chunk_entries as usize,
            topics_max: config.topics_max,
            producer_seqs_max: config.producer_seqs_max,
            producers_max: config.producers_max,
        }
    }

    /// The places of an existing topic and group; the error names which one is missing.
    pub(super) fn group_of(&self, topic: &str, group: &str) -> Result<(TopicIdx, GroupIdx), (ErrorCode, String)> {
        let Some(&t) = self.topic_index.get(topic) else { return Err((ErrorCode::NoSuchTopic, format!("no topic '{topic}'"))) };
        let Some(&g) = self.topics[t].group_index.get(group) else {
            return Err((ErrorCode::NotSubscribed, format!("no group '{group}' on topic '{topic}'")));
        };
        Ok((t, g))
    }

    /// Remembers the answer to (`producer`, `seq`), forgetting a producer's oldest seqs
    /// beyond `producer_seqs_max` and the least recently used producers beyond `producers_max`.
    pub(super) fn remember_seq(&mut self, producer: &str, seq: u64, seen: SeenSeq) {
        self.use_counter += 1;
        let use_now = self.use_counter;
        let entry = self.producers.entry(producer.to_string()).or_insert_with(|| Producer { seqs: BTreeMap::new(), last_use: 0 });
        self.producers_by_use.remove(&(entry.last_use, producer.to_string()));
        entry.last_use = use_now;
        entry.seqs.insert(seq, seen);
        while entry.seqs.len() > self.producer_seqs_max as usize {
            entry.seqs.pop_first();
        }
        self.producers_by_use.insert((use_now, producer.to_string()));
        while self.producers.len() > self.producers_max as usize {
            let Some((_, oldest)) = self.producers_by_use.pop_first() else { break };
            self.producers.remove(&oldest);
        }
    }

    /// Stores a new message found at `loc`: it takes its topic's next id, and its producer's
    /// seq is remembered with that id (durable once the message is). Every replica applying
    /// the same messages in the same order gives the same ids.
    pub(super) fn apply_publish(&mut self, message: &NewMessage<'_>, loc: Loc, ts_ms: u64) -> u64 {
        let topic = &mut self.topics[message.topic];
        let id = topic.next_id;
        topic.next_id += 1;
        topic.index_push(id, loc, ts_ms);
        if let Some((producer, seq)) = message.producer {
            self.remember_seq(producer, seq, SeenSeq { topic: message.topic, id, durable: false });
        }
        id
    }

    /// Message `id` of topic `t`, with `key`, is durable (its newest record in `segment`): the
    /// topic's latest-per-key index takes it. A key new to the index only while all of them
    /// stay within `latest_index_bytes_max`; past it the topic's index is incomplete.
    pub(super) fn record_latest(&mut self, t: TopicIdx, id: u64, key: &str, ts_ms: u64, body: &str, segment: u64) {
        let topic = &mut self.topics[t];
        match topic.latest.record(id, key, ts_ms, body, segment, self.latest_bytes_max.saturating_sub(self.latest_bytes)) {
            Recorded::Taken(grown) => self.latest_bytes = self.latest_bytes.saturating_add_signed(grown),
            Recorded::NoRoom => topic.latest_incomplete = true,
            Recorded::Older => {}
        }
    }

    /// Creates group `name` of topic `t`; where it starts is decided here, from the topic as
    /// it stands when the creation is applied.
    pub(super) fn apply_create_group(&mut self, t: TopicIdx, name: &str, from: StartFrom, terms: GroupTerms, ack_timeout_ns: u64, max_attempts: u32) -> GroupIdx {
        let topic = &mut self.topics[t];
        let start_id = match from {
            StartFrom::Latest => topic.next_id,
            StartFrom::Earliest => topic.first_id(),
            StartFrom::Id(id) => id.max(topic.first_id()).max(1),
        };
        let g = GroupIdx(topic.groups.len());
        let mut group = Group::new(name.to_string(), terms, start_id, ack_timeout_ns, max_attempts);
        group.use_chunk_entries(self.chunk_entries);
        topic.groups.push(group);
        topic.group_index.insert(name.to_string(), g);
        g
    }

    /// The topic named `name`, created on first use (up to `topics_max`).
    pub(super) fn topic_for(&mut self, name: &str) -> Result<TopicIdx, String> {
        if let Some(t) = self.topic_index.get(name) {
            return Ok(*t);
        }
        if self.topics.len() >= self.topics_max as usize {
            return Err(format!("topic limit reached (topics_max = {})", self.topics_max));
        }
        let t = TopicIdx(self.topics.len());
        self.topics.push(Topic::new(name.to_string(), self.new_topic_first_id));
        self.topic_index.insert(name.to_string(), t);
        Ok(t)
    }

    /// Appends the records a restart needs to rebuild this state without older segments:
    /// every topic's next id, every group's position, the durable seqs of every producer,
    /// the `salvaged` regions still on disk, the first id of new topics and, in cluster mode,
    /// the raft entry applied last.
    /// The state's records (a segment's snapshot); `with_latest` false only for the planted
    /// bug `LatestLeftOutOfSnapshots`.
    pub(super) fn encode_snapshot(&self, data: &mut Vec<u8>, salvaged: &[SalvagedRecord], with_latest: bool) {
        for topic in &self.topics {
            record::encode_control(data, record::KIND_TOPIC, &TopicRecord { topic: topic.name.clone(), next_id: topic.next_id, latest_incomplete: topic.latest_incomplete });
        }
        for topic in &self.topics {
            for group in topic.groups.iter().filter(|g| !g.dropped) {
                record::encode_control(data, record::KIND_GROUP, &group.to_record(&topic.name));
            }
        }
        for (name, producer) in &self.producers {
            let seqs = producer.seqs.iter().filter(|(_, s)| s.durable).map(|(seq, s)| (*seq, self.topics[s.topic].name.clone(), s.id)).collect();
            record::encode_control(data, record::KIND_PRODUCER, &ProducerRecord { producer: name.clone(), seqs });
        }
        for region in salvaged {
            record::encode_control(data, record::KIND_SALVAGED, region);
        }
        if self.new_topic_first_id > 1 {
            record::encode_control(data, record::KIND_NEW_TOPICS, &NewTopicsRecord { first_id: self.new_topic_first_id });
        }
        if self.applied.is_some() && with_latest {
            // A cluster node starts again from its oldest segment's snapshot (or a follower
            // from the leader's): the newest message of every key goes in it, as retention
            // deletes the entries that carried them (a single node copies them when it deletes).
            for topic in &self.topics {
                for (id, m) in topic.latest.since(0, None) {
                    let copy = record::MessageRef { id, ts_ms: m.ts_ms, topic: &topic.name, key: Some(&m.key), producer: None, seq: 0, body: &m.body };
                    record::encode_latest_copy(data, &copy);
                }
            }
        }
        if let Some(applied) = &self.applied {
            // Last: a cluster node's recovery reads its oldest segment's snapshot up to here.
            record::encode_control(data, record::KIND_APPLIED, applied);
        }
    }
}
