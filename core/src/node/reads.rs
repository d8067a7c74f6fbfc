//! Reads from disk for delivery and `fetch`, and the fetches that wait for them.

use super::{DiskError, DiskOp, Node, Output, Trace, NS_PER_MS};
use crate::cluster::command::{self, Command};
use crate::config::TestBug;
use crate::ids::{ConnId, TopicIdx};
use crate::protocol::{self, ErrorCode};
use crate::record::{self, RecordRef};
use crate::topic::{Loc, Lookup, StoredMessage};
use std::rc::Rc;

/// A fetch waiting for disk reads. It keeps the messages it has gathered itself: a range
/// larger than the read cache would otherwise evict its own earlier reads and never finish.
pub(super) struct PendingFetch {
    pub(super) conn: ConnId,
    pub(super) req: Option<String>,
    pub(super) topic: TopicIdx,
    /// The stored ids gathered, ascending, each with its message: `None` while its read is
    /// outstanding, `Some(None)` once the record turned out unreadable.
    pub(super) slots: Vec<(u64, Option<Option<Rc<StoredMessage>>>)>,
    pub(super) waiting: usize,
    /// The first id not gathered and the end of the range: when every gathered record turns
    /// out unreadable, the fetch goes on from `next` instead of answering empty.
    pub(super) next: u64,
    pub(super) to: u64,
}

impl Node {
    pub(super) fn request_read(&mut self, t: TopicIdx, id: u64, loc: Loc) {
        if !self.reading.insert((t, id)) {
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.reads.insert(token, (t, id));
        self.out.push_back(Output::Disk(DiskOp::Read { token, segment: loc.segment, offset: loc.offset, len: loc.len }));
    }

    pub(super) fn on_read_done(&mut self, token: u64, result: Result<&[u8], DiskError>) {
        if self.on_entry_read(token, &result) || self.on_state_read(token, &result) {
            return;
        }
        let Some((t, id)) = self.reads.remove(&token) else { return };
        self.reading.remove(&(t, id));
        let name = &self.state.topics[t].name;
        let decoded = match result {
            Ok(bytes) => stored_message(bytes, name, id).map(|m| StoredMessage {
                id,
                ts_ms: m.ts_ms,
                stored_ns: m.ts_ms.saturating_mul(NS_PER_MS),
                key: m.key.map(Into::into),
                body: m.body.into(),
                raft_index: m.raft_index,
            }),
            Err(e) => Err(format!("{e:?}")),
        };
        let message = match decoded {
            Ok(message) => {
                let message = Rc::new(message);
                let (messages_max, bytes_max) = (self.config.read_cache_messages as usize, self.config.read_cache_bytes);
                self.read_cache.insert((t, id), message.clone(), messages_max, bytes_max);
                Some(message)
            }
            Err(why) => {
                // Never serve a record that fails its checks; the id is gone for readers.
                self.out.push_back(Output::Trace(Trace::UnreadableRecord { topic: name.clone(), id, why }));
                self.state.topics[t].forget(id);
                None
            }
        };
        self.feed_fetches(t, id, message.as_ref());
        self.on_delivery_read(t, id, message.as_ref());
        self.pump_topic(t);
    }

    pub(super) fn on_fetch(&mut self, conn: ConnId, req: Option<String>, topic: &str, from: u64, to: u64) {
        if self.replication.is_some() {
            // Another replica may not have applied what was acknowledged yet.
            if let Err((code, message)) = self.check_leading() {
                return self.send_error(conn, req.as_deref(), code, &message);
            }
        }
        let Some(&t) = self.state.topic_index.get(topic) else {
            return self.send_error(conn, req.as_deref(), ErrorCode::NoSuchTopic, &format!("no topic '{topic}'"));
        };
        // Each pending fetch holds up to a frame of messages: bound them per connection and in all.
        let on_conn = self.fetches.iter().filter(|f| f.conn == conn).count();
        if on_conn >= self.config.fetches_per_connection_max as usize {
            let message = format!("{on_conn} fetches of this connection wait for the disk (fetches_per_connection_max)");
            return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, &message);
        }
        if self.fetches.len() >= self.config.fetches_pending_max as usize {
            let message = format!("{} fetches wait for the disk (fetches_pending_max)", self.fetches.len());
            return self.send_error(conn, req.as_deref(), ErrorCode::Overloaded, &message);
        }
        let to = to.min(self.state.topics[t].durable_next_id - 1);
        self.gather_fetch(conn, req, t, from, to);
    }

    /// Gathers the stored messages of `from..=to` that one `fetched` frame can hold: at most
    /// `fetch_messages_max`, and within `frame_bytes_max` by their estimated sizes, so no disk
    /// read is asked for a message that cannot fit. The first stored message always comes,
    /// even alone over the limit: a message may be as large as the frame that published it,
    /// and a client must be able to get past it. Ids that are gone are skipped, so a reply is
    /// empty only when nothing is stored in the range (PROTOCOL.md).
    fn gather_fetch(&mut self, conn: ConnId, req: Option<String>, t: TopicIdx, from: u64, to: u64) {
        let topic = &self.state.topics[t];
        let budget = self.config.frame_bytes_max;
        let count_max = self.config.fetch_messages_max as usize;
        // The frame's own fields, generously: `{"op":"fetched","req":…,"topic":…,"messages":[]}`.
        let mut estimate = 64 + req.as_ref().map_or(0, String::len) + topic.name.len();
        // Ids below the first stored one are gone (retention): no need to step through them.
        let mut id = from.max(topic.first_id());
        let mut slots = Vec::new();
        let mut reads = Vec::new();
        while id <= to && slots.len() < count_max {
            let (size, slot) = match topic.lookup(id, &self.read_cache, t) {
                Lookup::Gone => {
                    id += 1;
                    continue;
                }
                Lookup::Found(m) => (m.bytes() as usize, Some(Some(m))),
                // The record's size on disk: its body and key plus a header of about the size
                // of the entry's own fields. answer_fetch cuts exactly should it fall short.
                Lookup::OnDisk(loc) => {
                    reads.push((id, loc));
                    (loc.len as usize, None)
                }
            };
            if !slots.is_empty() && estimate + size > budget {
                if slot.is_none() {
                    reads.pop();
                }
                break;
            }
            estimate += size;
            slots.push((id, slot));
            id += 1;
        }
        let fetch = PendingFetch { conn, req, topic: t, waiting: reads.len(), slots, next: id, to };
        for (id, loc) in reads {
            self.request_read(t, id, loc);
        }
        if fetch.waiting == 0 {
            self.answer_fetch(fetch);
        } else {
            self.fetches.push(fetch);
        }
    }

    fn answer_fetch(&mut self, fetch: PendingFetch) {
        debug_assert_eq!(fetch.waiting, 0);
        let readable = |slot: &(u64, Option<Option<Rc<StoredMessage>>>)| slot.1.as_ref().and_then(Option::as_ref).cloned();
        if fetch.slots.iter().all(|slot| readable(slot).is_none()) && fetch.next <= fetch.to {
            // Everything gathered was unreadable, yet the range goes on: an empty reply would
            // tell the client nothing is stored there.
            return self.gather_fetch(fetch.conn, fetch.req, fetch.topic, fetch.next, fetch.to);
        }
        let limit = self.config.frame_bytes_max;
        let mut frame = String::new();
        protocol::encode_fetched_start(&mut frame, fetch.req.as_deref(), &self.state.topics[fetch.topic].name);
        let skip_second = self.config.test_bug == Some(TestBug::FetchSkipsMessage);
        let served = fetch.slots.iter().filter_map(readable).enumerate().filter(|(count, _)| !(skip_second && *count == 1)).map(|(_, m)| m);
        for (count, m) in served.enumerate() {
            let mark = frame.len();
            protocol::encode_fetched_message(&mut frame, count == 0, m.id, m.key.as_deref(), &m.body, m.ts_ms);
            // The estimates may fall short (escaped keys): the exact cut, never before the first.
            if count > 0 && frame.len() + protocol::FETCHED_END.len() > limit {
                frame.truncate(mark);
                break;
            }
        }
        protocol::encode_fetched_end(&mut frame);
        self.send(fetch.conn, frame);
    }

    /// A read for (t, id) finished with `message` (None: unreadable): fill the fetches waiting
    /// for it and answer those that are complete.
    fn feed_fetches(&mut self, t: TopicIdx, id: u64, message: Option<&Rc<StoredMessage>>) {
        let mut index = 0;
        while index < self.fetches.len() {
            let fetch = &mut self.fetches[index];
            if fetch.topic == t {
                if let Ok(at) = fetch.slots.binary_search_by_key(&id, |slot| slot.0) {
                    if fetch.slots[at].1.is_none() {
                        fetch.slots[at].1 = Some(message.cloned());
                        fetch.waiting -= 1;
                    }
                }
            }
            if fetch.waiting == 0 {
                let done = self.fetches.swap_remove(index);
                self.answer_fetch(done);
            } else {
                index += 1;
            }
        }
    }
}

/// The fields of message `id` of `topic` that a reader finds at its indexed place: a message
/// record, or in cluster mode the raft entry whose publish was given that id when applied.
pub(super) struct FoundMessage<'a> {
    pub(super) ts_ms: u64,
    pub(super) key: Option<&'a str>,
    pub(super) body: &'a str,
    /// The raft entry (0 for a single node's message record).
    pub(super) raft_index: u64,
}

pub(super) fn stored_message<'a>(bytes: &'a [u8], topic: &str, id: u64) -> Result<FoundMessage<'a>, String> {
    match record::decode_record(bytes).map_err(|e| e.to_string())?.0 {
        RecordRef::Message(m) if m.id == id && m.topic == topic => Ok(FoundMessage { ts_ms: m.ts_ms, key: m.key, body: m.body, raft_index: 0 }),
        RecordRef::RaftEntry(e) => match command::decode(e.data) {
            Ok(Command::Publish(p)) if p.topic == topic => Ok(FoundMessage { ts_ms: p.ts_ms, key: p.key, body: p.body, raft_index: e.index }),
            Ok(_) => Err(format!("raft entry {} at the indexed place is not a publish to the topic", e.index)),
            Err(error) => Err(format!("raft entry {} at the indexed place: {error}", e.index)),
        },
        _ => Err("record at the indexed place is another record".to_string()),
    }
}
