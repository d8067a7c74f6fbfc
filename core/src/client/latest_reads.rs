//! Reads of the newest message of each key of a topic (`latest`), page by page: each page
//! asks from the last id of the one before, until one comes back empty. A page lost with its
//! connection is asked again on the next; one refused for now (`overloaded`, `unavailable`)
//! after a pause; one refused for good ends the read.

use super::api::LatestMessage;
use crate::protocol::{ClientOp, FetchedMessage, RawJson};
use std::borrow::Cow;

/// One read, as `Client::read_latest` numbered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadId(pub u64);

pub(super) struct LatestRead {
    pub(super) id: ReadId,
    topic: String,
    keys: Option<Vec<String>>,
    /// The page asked for starts above this id.
    since: u64,
    /// The page's `req` (a string), while it is asked on this connection.
    asked: Option<String>,
    /// Asked again no sooner than this (after a refusal for now).
    retry_at_ns: u64,
    pages: u64,
}

/// What an answer or an error did to a read.
pub(super) enum ReadOutcome {
    /// A page: its messages, and whether the read is over.
    Page { read: ReadId, messages: Vec<LatestMessage>, done: bool },
    /// Refused for good: the read is dropped.
    Failed { read: ReadId },
    /// Refused for now: asked again later.
    Later,
}

#[derive(Default)]
pub(super) struct LatestReads {
    reads: Vec<LatestRead>,
    next: u64,
}

impl LatestReads {
    pub(super) fn start(&mut self, topic: &str, keys: Option<Vec<String>>) -> ReadId {
        self.next += 1;
        let id = ReadId(self.next);
        self.reads.push(LatestRead { id, topic: topic.to_string(), keys, since: 0, asked: None, retry_at_ns: 0, pages: 0 });
        id
    }

    /// Frames for the pages not asked on this connection whose time has come.
    pub(super) fn frames_due(&mut self, now_ns: u64) -> Vec<String> {
        let mut frames = Vec::new();
        for read in self.reads.iter_mut().filter(|r| r.asked.is_none() && r.retry_at_ns <= now_ns) {
            read.pages += 1;
            let req = format!("latest-{}-{}", read.id.0, read.pages);
            let quoted = format!("\"{req}\"");
            let op = ClientOp::Latest { req: RawJson::parse(&quoted).ok(), topic: Cow::Borrowed(&read.topic), keys: read.keys.clone(), since: read.since };
            let mut frame = String::new();
            crate::protocol::encode_client_op(&mut frame, &op);
            read.asked = Some(req);
            frames.push(frame);
        }
        frames
    }

    /// When a page refused for now is to be asked again.
    pub(super) fn next_retry_ns(&self) -> Option<u64> {
        self.reads.iter().filter(|r| r.asked.is_none() && r.retry_at_ns > 0).map(|r| r.retry_at_ns).min()
    }

    /// The connection is gone: every page asked on it is asked again on the next.
    pub(super) fn connection_lost(&mut self) {
        for read in &mut self.reads {
            read.asked = None;
        }
    }

    /// A `latest` answer for `req`, if it is one of these reads' pages.
    pub(super) fn on_answer(&mut self, req: &str, messages: &[FetchedMessage<'_>]) -> Option<ReadOutcome> {
        let at = self.reads.iter().position(|r| r.asked.as_deref() == Some(req))?;
        let read = &mut self.reads[at];
        read.asked = None;
        let messages: Vec<LatestMessage> =
            messages.iter().map(|m| LatestMessage { id: m.id, key: m.key.as_deref().unwrap_or_default().to_string(), body: m.body.get().to_string(), ts_ms: m.ts_ms }).collect();
        let read_id = read.id;
        match messages.last() {
            Some(last) => read.since = last.id,
            None => {
                self.reads.remove(at);
            }
        }
        let done = messages.is_empty();
        Some(ReadOutcome::Page { read: read_id, messages, done })
    }

    /// An error for `req`, if it answers one of these reads' pages.
    pub(super) fn on_error(&mut self, req: &str, retryable: bool, retry_at_ns: u64) -> Option<ReadOutcome> {
        let at = self.reads.iter().position(|r| r.asked.as_deref() == Some(req))?;
        if !retryable {
            let read = self.reads.remove(at);
            return Some(ReadOutcome::Failed { read: read.id });
        }
        let read = &mut self.reads[at];
        (read.asked, read.retry_at_ns) = (None, retry_at_ns);
        Some(ReadOutcome::Later)
    }
}
