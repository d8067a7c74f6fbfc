//! `latest`: the newest stored message of each key, answered from the topics' latest-per-key
//! indexes; and the copies retention makes so those messages outlive their segments.

use super::Node;
use crate::config::TestBug;
use crate::ids::{ConnId, TopicIdx};
use crate::protocol::{self, ErrorCode};
use crate::record::{self, MessageRef};

impl Node {
    /// Answers `latest` with the newest message of each key (of `keys`, or every key) whose id
    /// is above `since`, in id order, as many as a frame holds (`fetch_messages_max`,
    /// `frame_bytes_max`, the first always): the client asks again from the last id.
    pub(super) fn on_latest(&mut self, conn: ConnId, req: Option<String>, topic: &str, keys: Option<&[String]>, since: u64) {
        if self.replication.is_some() {
            // Another replica may not have applied what was acknowledged yet.
            if let Err((code, message)) = self.check_leading() {
                return self.send_error(conn, req.as_deref(), code, &message);
            }
        }
        let Some(&t) = self.state.topic_index.get(topic) else {
            return self.send_error(conn, req.as_deref(), ErrorCode::NoSuchTopic, &format!("no topic '{topic}'"));
        };
        let topic = &self.state.topics[t];
        if topic.latest_incomplete {
            let message = format!(
                "the latest-per-key index of '{}' left keys out: it reached latest_index_bytes_max ({} bytes; raise it and restart the server), or, in a cluster, this node took the leader's state without it (it did not fit in one peer frame)",
                topic.name, self.config.latest_index_bytes_max
            );
            return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, &message);
        }
        let limit = self.config.frame_bytes_max;
        let mut frame = String::new();
        protocol::encode_latest_start(&mut frame, req.as_deref(), &topic.name);
        let newest = topic.latest.since(since, keys).take(self.config.fetch_messages_max as usize);
        for (count, (id, message)) in newest.enumerate() {
            let mark = frame.len();
            protocol::encode_fetched_message(&mut frame, count == 0, id, Some(&message.key), &message.body, message.ts_ms);
            if count > 0 && frame.len() + protocol::FETCHED_END.len() > limit {
                frame.truncate(mark);
                break;
            }
        }
        protocol::encode_fetched_end(&mut frame);
        self.send(conn, frame);
    }

    /// Retention is about to delete the segments through `through`: the newest message of
    /// each key whose record is in them is copied into the log first. True when there is
    /// nothing (left) to copy; false while copies wait to be durable (retention waits with it,
    /// and a failed write puts the keys back where they were, to be copied again).
    pub(super) fn latest_copied_before(&mut self, through: u64) -> bool {
        let log = &self.log;
        let pending = std::iter::once(&log.open).chain(&log.queued).chain(&log.flushing).any(|b| !b.latest_copies.is_empty());
        if pending {
            return false;
        }
        if self.replication.is_some() || self.config.test_bug == Some(TestBug::LatestNotCopiedOnRetention) {
            // A cluster's copies are in every segment's snapshot (`State::encode_snapshot`).
            return true;
        }
        let mut copied = false;
        for t in (0..self.state.topics.len()).map(TopicIdx) {
            let name = self.state.topics[t].name.clone();
            for id in self.state.topics[t].latest.in_segments_through(through) {
                let message = self.state.topics[t].latest.get(id).expect("listed").clone();
                let copy = MessageRef { id, ts_ms: message.ts_ms, topic: &name, key: Some(&message.key), producer: None, seq: 0, body: &message.body };
                let size = record::message_record_bytes(&copy) as u64;
                self.make_room_in_segment(size);
                self.open_batch_data();
                self.log.segment_len += record::encode_latest_copy(&mut self.log.open.data, &copy) as u64;
                self.log.open.latest_copies.push((t, id, message.segment));
                self.state.topics[t].latest.moved(id, self.log.segment);
                copied = true;
            }
        }
        if copied {
            self.maybe_flush();
        }
        !copied
    }
}
