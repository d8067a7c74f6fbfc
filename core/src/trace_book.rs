//! What happened to recent messages, for `ferry trace` and `/api/trace`: a ring of the node's
//! latest message events (stored, delivered, acked, nacked, timed out, dead-lettered), bounded
//! in bytes (`Config::trace_bytes_max`); the oldest events make room for new ones. A lookup
//! scans the ring, so it costs nothing per message beyond the push. What the ring no longer
//! holds is derived from the state (where a message is stored, each group's position).

use crate::ids::{ConnId, GroupIdx, TopicIdx};
use std::collections::VecDeque;

/// One thing that happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Happening {
    /// Stored in `segment` (ids are given as messages are stored).
    Stored {
        segment: u64,
    },
    Delivered {
        group: GroupIdx,
        conn: ConnId,
        attempt: u32,
    },
    Acked {
        group: GroupIdx,
    },
    Nacked {
        group: GroupIdx,
        conn: ConnId,
    },
    /// Its ack did not come within the group's ack timeout.
    TimedOut {
        group: GroupIdx,
        conn: ConnId,
    },
    /// Copied to the dead-letter topic as `copy_id` (known once stored; in a cluster, when the
    /// copy's entry is applied).
    DeadLettered {
        group: GroupIdx,
        copy_id: Option<u64>,
    },
    /// Settled unseen in a coalescing group: message `by`, newer, of its key came.
    Coalesced {
        group: GroupIdx,
        by: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEvent {
    pub at_ns: u64,
    pub topic: TopicIdx,
    pub id: u64,
    pub what: Happening,
}

/// The ring of recent events.
#[derive(Debug)]
pub struct TraceBook {
    events: VecDeque<TraceEvent>,
    events_max: usize,
    /// When the oldest event the ring let go of happened: events of a message before it may
    /// be missing.
    forgotten_until_ns: Option<u64>,
}

impl TraceBook {
    /// A ring of at most `bytes_max` bytes of events (0: none kept).
    pub fn new(bytes_max: u64) -> TraceBook {
        let events_max = (bytes_max / std::mem::size_of::<TraceEvent>() as u64) as usize;
        TraceBook { events: VecDeque::new(), events_max, forgotten_until_ns: None }
    }

    pub fn push(&mut self, at_ns: u64, topic: TopicIdx, id: u64, what: Happening) {
        if self.events_max == 0 {
            return;
        }
        if self.events.len() == self.events_max {
            let oldest = self.events.pop_front().expect("full");
            self.forgotten_until_ns = Some(oldest.at_ns);
        }
        self.events.push_back(TraceEvent { at_ns, topic, id, what });
    }

    /// The events of message `id` of `topic` the ring holds, oldest first.
    pub fn of(&self, topic: TopicIdx, id: u64) -> Vec<TraceEvent> {
        self.events.iter().filter(|e| e.topic == topic && e.id == id).copied().collect()
    }

    /// Events at or before this time may have been let go of (`None`: none ever were).
    pub fn forgotten_until_ns(&self) -> Option<u64> {
        self.forgotten_until_ns
    }

    /// Forgets every event (their topic and group indexes mean nothing after a state was
    /// installed in place of this one).
    pub fn clear(&mut self, now_ns: u64) {
        if !self.events.is_empty() {
            self.events.clear();
            self.forgotten_until_ns = Some(now_ns);
        }
    }

    /// Bytes the ring holds.
    pub fn bytes(&self) -> u64 {
        (self.events.len() * std::mem::size_of::<TraceEvent>()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_latest_events_within_its_bytes() {
        let event_bytes = std::mem::size_of::<TraceEvent>() as u64;
        assert_eq!(event_bytes, 56, "docs/OPERATIONS.md: about 75,000 events in the default 4 MiB");
        let mut book = TraceBook::new(3 * event_bytes);
        for id in 1..=5 {
            book.push(id * 10, TopicIdx(0), id, Happening::Stored { segment: 1 });
        }
        assert_eq!(book.bytes(), 3 * event_bytes);
        assert!(book.of(TopicIdx(0), 2).is_empty(), "let go of");
        assert_eq!(book.of(TopicIdx(0), 5)[0].at_ns, 50);
        assert_eq!(book.forgotten_until_ns(), Some(20));
        let mut none = TraceBook::new(0);
        none.push(1, TopicIdx(0), 1, Happening::Acked { group: GroupIdx(0) });
        assert_eq!(none.bytes(), 0);
    }
}
