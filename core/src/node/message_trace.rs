//! Where a message is and was (`ferry trace`, `/api/trace`): what the trace book's ring still
//! holds of its events, and what the state says now — where it is stored and where it stands
//! in every group of its topic (derived, so it is known for messages of any age).

use super::{Node, NS_PER_MS};
use crate::group::IdPosition;
use crate::ids::{GroupIdx, TopicIdx};
use crate::topic::Loc;
use crate::trace_book::{Happening, TraceEvent};

/// Where the message's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Stored(Loc),
    /// Below the topic's first stored id: deleted by retention (or lost to damage).
    Deleted,
    /// Its id has not been given yet.
    NotYetStored,
}

/// One event, with names resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLine {
    pub at_ms: u64,
    /// stored, delivered, acked, nacked, timed_out, dead_lettered, coalesced.
    pub event: &'static str,
    pub group: Option<String>,
    pub conn: Option<u64>,
    pub attempt: Option<u32>,
    pub segment: Option<u64>,
    pub copy_id: Option<u64>,
    /// The newer message of its key that coalesced it.
    pub coalesced_by: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageTrace {
    pub topic: String,
    pub id: u64,
    pub storage: Storage,
    /// When it was stored (exact while cached; else to within the topic's timeline spacing).
    pub stored_ms: Option<u64>,
    /// Every group of the topic and where the message stands in it now.
    pub groups: Vec<(String, IdPosition)>,
    pub events: Vec<TraceLine>,
    /// The ring has let go of events up to this time: older events of the message may be
    /// missing from `events` (the state above still holds).
    pub events_forgotten_until_ms: Option<u64>,
}

impl Node {
    /// The trace of message `id` of `topic`; `None` when this shard has no such topic.
    pub fn trace_message(&self, topic: &str, id: u64) -> Option<MessageTrace> {
        let &t = self.state.topic_index.get(topic)?;
        let stored = &self.state.topics[t];
        let storage = match stored.loc(id) {
            Some(loc) => Storage::Stored(loc),
            None if id >= stored.next_id => Storage::NotYetStored,
            None => Storage::Deleted,
        };
        let groups = stored.groups.iter().filter(|group| !group.dropped).map(|group| (group.name.clone(), group.position_of(id))).collect();
        let events = self.trace_book.of(t, id).into_iter().map(|event| self.trace_line(t, &event)).collect();
        Some(MessageTrace {
            topic: topic.to_string(),
            id,
            storage,
            stored_ms: stored.stored_at_ms(id).filter(|_| id < stored.next_id),
            groups,
            events,
            events_forgotten_until_ms: self.trace_book.forgotten_until_ns().map(|ns| ns / NS_PER_MS),
        })
    }

    fn trace_line(&self, t: TopicIdx, event: &TraceEvent) -> TraceLine {
        // A group index the ring kept may be gone (a state installed since is cleared with
        // the ring, but be safe): the event is shown without its group's name.
        let group_name = |g: GroupIdx| self.state.topics.get(t.0).and_then(|topic| topic.groups.get(g.0)).map(|group| group.name.clone());
        let mut line = TraceLine { at_ms: event.at_ns / NS_PER_MS, event: "", group: None, conn: None, attempt: None, segment: None, copy_id: None, coalesced_by: None };
        match event.what {
            Happening::Stored { segment } => (line.event, line.segment) = ("stored", Some(segment)),
            Happening::Delivered { group, conn, attempt } => (line.event, line.group, line.conn, line.attempt) = ("delivered", group_name(group), Some(conn.0), Some(attempt)),
            Happening::Acked { group } => (line.event, line.group) = ("acked", group_name(group)),
            Happening::Nacked { group, conn } => (line.event, line.group, line.conn) = ("nacked", group_name(group), Some(conn.0)),
            Happening::TimedOut { group, conn } => (line.event, line.group, line.conn) = ("timed_out", group_name(group), Some(conn.0)),
            Happening::DeadLettered { group, copy_id } => (line.event, line.group, line.copy_id) = ("dead_lettered", group_name(group), copy_id),
            Happening::Coalesced { group, by } => (line.event, line.group, line.coalesced_by) = ("coalesced", group_name(group), Some(by)),
        }
        line
    }
}
