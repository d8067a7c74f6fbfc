//! A group's ack deadlines, in the order they were set. A group's ack timeout is fixed and
//! time only moves forward, so deadlines are set in deadline order: the earliest is always at
//! the front, setting one is a push, and cancelling one (an ack, a nack, a member leaving) is
//! nothing at all: its entry stays until it is due, when `Group::expire` finds the message no
//! longer in flight with that deadline. The node keeps one timer per group, at the front.
//!
//! Before, every delivery inserted into and every ack removed from one ordered set of all
//! timers: 15 % of a 1 → 10 fan-out's server CPU went to searching it.
//!
//! Bounded: when the queue has grown to four times what it kept when it was last pruned,
//! entries no longer in flight are dropped, so it holds at most about four times what the
//! group has in flight (plus a few), 16 bytes each, at an amortized cost of 4/3 of a lookup
//! per deadline (a factor of two cost 2 lookups: 4 % of a fan-out's server CPU).

use crate::chunked::ChunkedDeque;

/// Entries a queue may hold before it is first pruned.
const PRUNE_FLOOR: usize = 64;

/// How much a queue grows past what it kept before it is pruned again.
const PRUNE_GROWTH: usize = 4;

#[derive(Debug, Default)]
pub struct AckDeadlines {
    /// (deadline in ns, message id), deadlines never decreasing; chunked, as a group may have
    /// millions in flight.
    queue: ChunkedDeque<(u64, u64)>,
    /// The length past which the queue is pruned next.
    prune_at: usize,
}

impl AckDeadlines {
    /// Sets a deadline no earlier than any set before. True when it is the only one (the
    /// group's timer must be armed for it); otherwise an earlier one's timer comes first.
    /// `in_flight(id, deadline_ns)` says whether an entry is still live, for pruning.
    pub fn push(&mut self, deadline_ns: u64, id: u64, in_flight: impl Fn(u64, u64) -> bool) -> bool {
        debug_assert!(self.queue.back().is_none_or(|(last, _)| *last <= deadline_ns), "ack deadlines set out of order");
        if self.queue.len() >= self.prune_at.max(PRUNE_FLOOR) {
            self.queue.retain(|&(deadline_ns, id)| in_flight(id, deadline_ns));
            self.prune_at = PRUNE_GROWTH * self.queue.len();
        }
        self.queue.push_back((deadline_ns, id));
        self.queue.len() == 1
    }

    /// The earliest deadline set and not yet taken.
    pub fn heap_bytes(&self) -> usize {
        self.queue.heap_bytes()
    }

    pub fn next_ns(&self) -> Option<u64> {
        self.queue.front().map(|(deadline_ns, _)| *deadline_ns)
    }

    /// The id of the earliest entry, if it is due at `now_ns`.
    pub fn due_id(&self, now_ns: u64) -> Option<u64> {
        self.queue.front().filter(|(deadline_ns, _)| *deadline_ns <= now_ns).map(|(_, id)| *id)
    }

    /// Takes the earliest entry if it is due at `now_ns`: (deadline, id).
    pub fn take_due(&mut self, now_ns: u64) -> Option<(u64, u64)> {
        let &(deadline_ns, _) = self.queue.front()?;
        if deadline_ns > now_ns {
            return None;
        }
        self.queue.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_in_order_and_later_ones_wait() {
        let mut deadlines = AckDeadlines::default();
        assert!(deadlines.push(10, 1, |_, _| true), "the first one arms the timer");
        assert!(!deadlines.push(10, 2, |_, _| true));
        assert!(!deadlines.push(20, 3, |_, _| true));
        assert_eq!(deadlines.next_ns(), Some(10));
        assert_eq!(deadlines.take_due(10), Some((10, 1)));
        assert_eq!(deadlines.take_due(10), Some((10, 2)));
        assert_eq!(deadlines.take_due(10), None, "not due yet");
        assert_eq!(deadlines.next_ns(), Some(20));
    }

    #[test]
    fn settled_entries_are_pruned_so_the_queue_stays_near_what_is_in_flight() {
        let mut deadlines = AckDeadlines::default();
        // Ten in flight at any time: each new delivery settles the one ten before it.
        let in_flight = |newest: u64| move |id: u64, _deadline: u64| id + 10 > newest;
        let mut longest = 0;
        for id in 0..100_000u64 {
            deadlines.push(id, id, in_flight(id));
            longest = longest.max(deadlines.queue.len());
        }
        assert!(longest <= PRUNE_GROWTH * PRUNE_FLOOR, "the queue grew to {longest} with ten in flight");
        // Everything still in flight is kept.
        let mut kept = Vec::new();
        while let Some((_, id)) = deadlines.take_due(u64::MAX) {
            kept.push(id);
        }
        assert!(kept.ends_with(&(99_990..100_000).collect::<Vec<_>>()), "{kept:?}");
    }
}
