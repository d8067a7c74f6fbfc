//! Publishing: admission limits, producer dedupe (`producer`, `seq`), and ids assigned as
//! messages join the open batch.

use super::log::Waiter;
use super::replication::Proposal;
use super::state::NewMessage;
use super::{Node, NS_PER_MS};
use crate::cluster::command::{Command, PublishCommand};
use crate::config::TestBug;
use crate::ids::ConnId;
use crate::pipeline::{self, Publish, PublishContext};
use crate::protocol::{self, ErrorCode};
use crate::record::{self, MessageRef};
use crate::topic::{Loc, StoredMessage};
use crate::trace_book::Happening;
use std::rc::Rc;

/// A waiter addressed to nobody (its answer was already given).
const NO_CONN: ConnId = ConnId(u64::MAX);

impl Node {
    pub(super) fn on_publish(&mut self, conn: ConnId, req: Option<String>, mut publish: Publish, body: &str, authenticated: bool) {
        let context = PublishContext { authenticated };
        if let Err((code, message)) = pipeline::run(&self.stages, &mut publish, &context) {
            return self.send_error(conn, req.as_deref(), code, &message);
        }
        if let Some(until_ns) = self.disk_full_until_ns {
            if self.now_ns < until_ns {
                return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, "disk full: publishes resume when space returns");
            }
        }
        if self.pending_publishes >= self.config.pending_publishes_max {
            let message = format!("{} publishes wait for the disk (pending_publishes_max)", self.pending_publishes);
            return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, &message);
        }
        if let Some(waited_ns) = self.pending_publish_wait_ns().filter(|ns| *ns > self.config.shed_publishes_after_ms * NS_PER_MS && self.config.shed_publishes_after_ms > 0) {
            // Circuit breaking: the disk (or the quorum) is this slow now; queueing more would
            // only add seconds of latency to every publish behind.
            let waited_ms = waited_ns / NS_PER_MS;
            let message = format!("the oldest publish has waited {waited_ms} ms for the disk or a majority (shed_publishes_after_ms)");
            let retry_after_ms = self.config.shed_publishes_after_ms / 2;
            return self.send_error_retry(conn, req.as_deref(), ErrorCode::Overloaded, &message, Some(retry_after_ms.max(1)));
        }
        let pending_bytes = self.log_bytes_unwritten();
        if pending_bytes + body.len() as u64 > self.config.pending_publish_bytes_max {
            let message = format!("{pending_bytes} bytes wait for the disk (pending_publish_bytes_max)");
            return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, &message);
        }
        if let (Some(producer), Some(seq)) = (&publish.producer, publish.seq) {
            if self.answer_duplicate(conn, &req, producer, seq) {
                return;
            }
        }
        if self.replication.is_some() {
            // A topic is created when its first publish is applied: until then it has no limit.
            if let Some(&t) = self.state.topic_index.get(publish.topic.as_ref()) {
                if !self.admit_to_topic(conn, &req, t) {
                    return;
                }
            }
            return self.propose_publish(conn, req, &publish, body);
        }
        let t = match self.state.topic_for(&publish.topic) {
            Ok(t) => t,
            Err(message) => return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, &message),
        };
        if !self.admit_to_topic(conn, &req, t) {
            return;
        }
        // Kept with the waiter until the puback (idempotence), so owned.
        let producer = publish.producer.map(std::borrow::Cow::into_owned).zip(publish.seq);
        let message = NewMessage { topic: t, key: publish.key.as_deref(), producer: producer.as_ref().map(|(name, seq)| (name.as_str(), *seq)), body };
        let id = self.append_message(message);
        self.stats.published += 1;
        self.state.topics[t].published += 1;
        self.pending_publishes += 1;
        let conn = if self.config.test_bug == Some(TestBug::PubackBeforeDurable) {
            let mut frame = String::new();
            protocol::encode_puback(&mut frame, req.as_deref(), &self.state.topics[t].name, id);
            self.send(conn, frame);
            NO_CONN
        } else {
            conn
        };
        self.log.open.waiters.push(Waiter::Puback { conn, req, topic: t, id, producer, received_ns: self.now_ns });
        self.maybe_flush();
    }

    /// How long the oldest publish still waiting (for its write, or in a cluster its commit)
    /// has waited.
    fn pending_publish_wait_ns(&self) -> Option<u64> {
        let oldest = match &self.replication {
            Some(replication) => replication.oldest_pending_publish_ns(),
            None => {
                let batches = self.log.flushing.iter().chain(self.log.queued.iter()).chain(std::iter::once(&self.log.open));
                batches.flat_map(|batch| batch.waiters.iter()).find_map(|waiter| match waiter {
                    Waiter::Puback { received_ns, .. } => Some(*received_ns),
                    _ => None,
                })
            }
        };
        oldest.map(|received_ns| self.now_ns.saturating_sub(received_ns))
    }

    /// Whether topic `t` takes a publish now: an operator may refuse its publishes
    /// (`unavailable`), and its bucket (`publish_rate_per_topic`) must hold a token
    /// (`overloaded` with the wait). False once the refusal is answered.
    fn admit_to_topic(&mut self, conn: ConnId, req: &Option<String>, t: crate::ids::TopicIdx) -> bool {
        if self.state.topics[t].publishes_refused {
            let message = format!("publishes to '{}' are refused by an operator for now; retry later", self.state.topics[t].name);
            self.send_error(conn, req.as_deref(), ErrorCode::Unavailable, &message);
            return false;
        }
        let (now_ns, limit) = (self.now_ns, self.config.publish_limit_per_topic());
        let Err(wait_ns) = self.state.topics[t].publish_bucket.take(limit, now_ns) else { return true };
        let retry_after_ms = wait_ns.div_ceil(NS_PER_MS);
        let message = format!("over publish_rate_per_topic for '{}': retry in {retry_after_ms} ms", self.state.topics[t].name);
        self.send_error_retry(conn, req.as_deref(), ErrorCode::Overloaded, &message, Some(retry_after_ms));
        false
    }

    /// In cluster mode the publish becomes an entry of its shard: its id is given, and its
    /// `puback` sent, when the entry is applied (topics too are created only then).
    fn propose_publish(&mut self, conn: ConnId, req: Option<String>, publish: &Publish, body: &str) {
        let producer = publish.producer.as_deref().zip(publish.seq);
        let command = Command::Publish(PublishCommand { ts_ms: self.now_ns / NS_PER_MS, topic: &publish.topic, key: publish.key.as_deref(), producer, body });
        self.pending_publishes += 1;
        let predicted_id = self.predict_id(&publish.topic, producer);
        if let Err((code, message)) = self.propose(&command, Proposal::Publish { conn, req: req.clone(), predicted_id, received_ns: self.now_ns }) {
            self.pending_publishes -= 1;
            self.send_error(conn, req.as_deref(), code, &message);
        }
    }

    /// Answers a repeated (producer, seq); false when it is new.
    fn answer_duplicate(&mut self, conn: ConnId, req: &Option<String>, producer: &str, seq: u64) -> bool {
        if self.config.test_bug == Some(TestBug::IdempotenceForgotten) {
            return false;
        }
        let Some(seen) = self.state.producers.get(producer).and_then(|p| p.seqs.get(&seq)) else { return false };
        let (t, id, durable) = (seen.topic, seen.id, seen.durable);
        self.stats.deduplicated += 1;
        if durable || self.config.test_bug == Some(TestBug::DuplicateAnsweredEarly) {
            let mut frame = String::new();
            protocol::encode_puback(&mut frame, req.as_deref(), &self.state.topics[t].name, id);
            self.send(conn, frame);
        } else {
            // The original is still on its way to disk; answer when everything before is durable.
            self.pending_publishes += 1;
            self.log.open.waiters.push(Waiter::Puback { conn, req: req.clone(), topic: t, id, producer: None, received_ns: self.now_ns });
            self.maybe_flush();
        }
        true
    }

    /// Appends a new message to the open batch at the place the log gives it, and applies it
    /// to the state there, which gives it its id (the topic's next).
    pub(super) fn append_message(&mut self, message: NewMessage<'_>) -> u64 {
        let ts_ms = self.now_ns / NS_PER_MS;
        let (producer, seq) = message.producer.map_or((None, 0), |(name, seq)| (Some(name), seq));
        let topic = &self.state.topics[message.topic];
        let id = topic.next_id;
        let record = MessageRef { id, ts_ms, topic: &topic.name, key: message.key, producer, seq, body: message.body };
        let size = record::message_record_bytes(&record) as u64;
        self.make_room_in_segment(size);
        self.open_batch_data();
        let loc = Loc { segment: self.log.segment, offset: self.log.segment_len, len: size as u32 };
        let applied = self.state.apply_publish(&message, loc, ts_ms);
        debug_assert_eq!(applied, id, "the state gives the id the record was encoded with");
        let t = message.topic;
        let record = MessageRef { id, ts_ms, topic: &self.state.topics[t].name, key: message.key, producer, seq, body: message.body };
        let written = record::encode_message(&mut self.log.open.data, &record) as u64;
        debug_assert_eq!(written, size);
        self.log.segment_len += written;
        let stored = Rc::new(StoredMessage { id, ts_ms, stored_ns: self.now_ns, key: message.key.map(Into::into), body: message.body.into(), raft_index: 0 });
        if message.key.is_some() {
            self.log.open.keyed.push((t, stored.clone(), loc.segment));
        }
        let (topic_max, total_max) = (self.config.topic_cache_bytes, self.config.cache_bytes_total);
        self.cache_budget.push(&mut self.state.topics, t, stored, topic_max, total_max);
        self.log.open.marks.insert(t, id + 1);
        self.trace_book.push(self.now_ns, t, id, Happening::Stored { segment: loc.segment });
        id
    }
}
