//! Idempotent publishing: every publish gets the client's `producer` and the next `seq`, is
//! kept (bounded in count and bytes) until the server answers it, and is sent again,
//! unchanged, after a reconnect or a retryable error. The server stores a repeated
//! (`producer`, `seq`) once and answers it with the original id, so a publish lost with its
//! connection is neither lost nor stored twice.

use super::ClientError;
use crate::protocol::{encode_client_op, ClientOp, RawJson};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A publish, as the application knows it until it is answered: its `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishLimits {
    /// Publishes sent and not yet answered, at most.
    pub in_flight_max: usize,
    /// Publishes kept until answered (in flight or waiting), at most: `publish` refuses more.
    pub buffered_max: usize,
    /// Their frames' bytes, at most.
    pub buffered_bytes_max: usize,
    /// A publish unanswered this long on a live connection is sent again (the same frame:
    /// stored once). Answers come within a disk write; this covers an answer lost on the way,
    /// a forwarding cluster node that dropped it, say.
    pub answer_timeout_ms: u64,
}

impl Default for PublishLimits {
    fn default() -> Self {
        PublishLimits { in_flight_max: 64, buffered_max: 10_000, buffered_bytes_max: 16 << 20, answer_timeout_ms: 30_000 }
    }
}

/// How a publish ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Durable on the server (as its durability setting promises), with this id.
    Stored { topic: String, id: u64 },
    /// Refused for good: the server's `code` and `message` (forbidden, too_large, bad_frame…).
    Refused { code: String, message: String },
    /// The client closed for good before an answer came: the publish may or may not be stored.
    Abandoned { why: String },
}

struct Pending {
    /// The whole `pub` frame, written once: a retry sends the very same bytes.
    frame: String,
    /// Not sent again before this time (a server's `retry_after_ms`).
    not_before_ns: u64,
}

pub struct Publishing {
    producer: String,
    limits: PublishLimits,
    next_seq: u64,
    pending: BTreeMap<u64, Pending>,
    /// Sent on the current connection and not yet answered: seq → when sent.
    in_flight: BTreeMap<u64, u64>,
    bytes: usize,
}

impl Publishing {
    pub fn new(producer: String, first_seq: u64, limits: PublishLimits) -> Publishing {
        Publishing { producer, limits, next_seq: first_seq, pending: BTreeMap::new(), in_flight: BTreeMap::new(), bytes: 0 }
    }

    pub fn producer(&self) -> &str {
        &self.producer
    }

    /// Keeps a new publish; it goes out with the next `sendable`.
    pub fn add(&mut self, topic: &str, key: Option<&str>, body: &str) -> Result<PublishId, ClientError> {
        let body = RawJson::parse(body).map_err(ClientError::BadBody)?;
        if self.pending.len() >= self.limits.buffered_max {
            return Err(ClientError::BufferFull(format!("{} publishes wait for an answer (buffered_max)", self.pending.len())));
        }
        let seq = self.next_seq;
        // `req` is the seq: an answer names the publish it answers.
        let req = seq.to_string();
        let op = ClientOp::Pub {
            req: Some(RawJson::parse(&req).map_err(ClientError::BadBody)?),
            topic: Cow::Borrowed(topic),
            body,
            key: key.map(Cow::Borrowed),
            producer: Some(Cow::Borrowed(&self.producer)),
            seq: Some(seq),
        };
        let mut frame = String::with_capacity(96 + topic.len() + body.get().len());
        encode_client_op(&mut frame, &op);
        if self.bytes + frame.len() > self.limits.buffered_bytes_max {
            return Err(ClientError::BufferFull(format!("{} bytes of publishes wait for an answer (buffered_bytes_max)", self.bytes)));
        }
        self.next_seq += 1;
        self.bytes += frame.len();
        self.pending.insert(seq, Pending { frame, not_before_ns: 0 });
        Ok(PublishId(seq))
    }

    /// Frames to send now, oldest first, as far as the in-flight limit allows.
    pub fn sendable(&mut self, now_ns: u64) -> Vec<String> {
        let room = self.limits.in_flight_max.saturating_sub(self.in_flight.len());
        let due: Vec<u64> = self.pending.iter().filter(|(seq, p)| !self.in_flight.contains_key(seq) && p.not_before_ns <= now_ns).map(|(seq, _)| *seq).take(room).collect();
        due.into_iter()
            .map(|seq| {
                self.in_flight.insert(seq, now_ns);
                let pending = self.pending.get_mut(&seq).expect("chosen from pending");
                pending.not_before_ns = 0;
                pending.frame.clone()
            })
            .collect()
    }

    /// The connection is gone: what was in flight is sent again on the next one.
    pub fn connection_lost(&mut self) {
        self.in_flight.clear();
    }

    /// The next time something is due: a waiting publish may go out (if there is room to send
    /// it then: without room, an answer makes room and sends it), or one in flight has waited
    /// `answer_timeout_ms`.
    pub fn next_due_ns(&self) -> Option<u64> {
        let timeout_ns = self.limits.answer_timeout_ms.saturating_mul(1_000_000);
        let answer_due = self.in_flight.values().min().map(|sent| sent.saturating_add(timeout_ns));
        let has_room = self.in_flight.len() < self.limits.in_flight_max;
        let send_due = self.pending.iter().filter(|(seq, p)| has_room && !self.in_flight.contains_key(seq) && p.not_before_ns > 0).map(|(_, p)| p.not_before_ns).min();
        [answer_due, send_due].into_iter().flatten().min()
    }

    /// Publishes in flight past `answer_timeout_ms` go out again with the next `sendable`.
    pub fn expire(&mut self, now_ns: u64) {
        let timeout_ns = self.limits.answer_timeout_ms.saturating_mul(1_000_000);
        self.in_flight.retain(|_, sent| sent.saturating_add(timeout_ns) > now_ns);
    }

    /// The answer to the publish whose `req` was `seq`, if it is one of ours.
    pub fn answered(&mut self, seq: u64, outcome: PublishOutcome) -> Option<(PublishId, PublishOutcome)> {
        let pending = self.pending.remove(&seq)?;
        self.in_flight.remove(&seq);
        self.bytes -= pending.frame.len();
        Some((PublishId(seq), outcome))
    }

    /// A retryable error answered publish `seq`: it goes out again at `retry_at_ns`.
    pub fn retry_later(&mut self, seq: u64, retry_at_ns: u64) -> bool {
        let Some(pending) = self.pending.get_mut(&seq) else { return false };
        self.in_flight.remove(&seq);
        pending.not_before_ns = retry_at_ns;
        true
    }

    /// Every publish still unanswered, ended: the client will not send them again.
    pub fn abandon_all(&mut self, why: &str) -> Vec<(PublishId, PublishOutcome)> {
        self.in_flight.clear();
        self.bytes = 0;
        std::mem::take(&mut self.pending).into_keys().map(|seq| (PublishId(seq), PublishOutcome::Abandoned { why: why.to_string() })).collect()
    }

    pub fn unanswered(&self) -> usize {
        self.pending.len()
    }

    pub fn buffered_bytes(&self) -> usize {
        self.bytes
    }
}
