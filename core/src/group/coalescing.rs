//! Coalescing groups: a message of a key settles the older ones of its key that wait to be
//! delivered (blocked behind their key, ready, or delayed by a nack; never one in flight)
//! and were stored at most `coalesce_ms` before it. They count as settled for the group (its
//! floor passes them; they are never redelivered nor dead-lettered) and are traced as
//! coalesced. Only what waits is merged, so key order holds for what is delivered, and the
//! newest message of a key is never settled by this.

use super::{Admit, Entry, EntryState, Group};
use crate::config::TestBug;

impl Group {
    /// The planted bug `CoalesceKeepsOldest`: `id` is settled as coalesced in place of the
    /// older ones of its key.
    pub(super) fn admit_settled(&mut self, id: u64, key: u64) -> Admit {
        self.keep(id, Entry { key, state: EntryState::Acked, bytes: 0 });
        self.acked_held += 1;
        self.coalesced.push(id);
        self.counters.coalesced += 1;
        Admit::Filtered
    }

    /// A message of `key` waits to be delivered (not in flight) that was stored at or after
    /// `since_ms`.
    pub(super) fn waits_within(&self, key: u64, since_ms: u64) -> bool {
        let waiting = self.keys.newest_waiting(key).or_else(|| self.keys.deliverable_alone(key).filter(|id| self.is_waiting(*id)));
        waiting.is_some_and(|id| self.stored_ms.get(&id).is_some_and(|ms| *ms >= since_ms))
    }

    fn is_waiting(&self, id: u64) -> bool {
        matches!(self.outstanding.get(id).map(|e| e.state), Some(EntryState::Ready { .. } | EntryState::Delayed { .. }))
    }

    /// Coalescing: settles the messages of `key` waiting to be delivered that were stored at or
    /// after `since_ms`, newest first (stopping at the first older one), the key's deliverable
    /// one last and only if it is not in flight. Returns what the planted bug
    /// `CoalescedDeliveredAfterNewer` keeps to queue again.
    pub(super) fn coalesce_older(&mut self, key: u64, since_ms: u64, test_bug: Option<TestBug>) -> Vec<u64> {
        let within = |group: &Group, id: u64| group.stored_ms.get(&id).is_some_and(|ms| *ms >= since_ms);
        let mut requeue = Vec::new();
        while let Some(newest) = self.keys.newest_waiting(key).filter(|id| within(self, *id)) {
            self.keys.drop_newest_waiting(key);
            if test_bug == Some(TestBug::CoalescedDeliveredAfterNewer) {
                requeue.insert(0, newest);
                continue;
            }
            self.settle_coalesced(newest);
        }
        if !requeue.is_empty() {
            return requeue;
        }
        let Some(deliverable) = self.keys.deliverable_alone(key).filter(|id| within(self, *id)) else { return requeue };
        if !self.is_waiting(deliverable) {
            return requeue;
        }
        self.ready.remove(&deliverable);
        self.settle_coalesced(deliverable);
        self.release_key(key);
        requeue
    }

    /// A nack delay it had is not cancelled: its timer finds it settled.
    fn settle_coalesced(&mut self, id: u64) {
        let entry = self.outstanding.get_mut(id).expect("a coalesced id is outstanding");
        entry.state = EntryState::Acked;
        self.acked_held += 1;
        self.stored_ms.remove(&id);
        self.coalesced.push(id);
        self.counters.coalesced += 1;
        self.advance_floor();
    }

    /// The messages coalesced since the last call (for traces and timers).
    pub fn take_coalesced(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.coalesced)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{key_hash, AckOutcome, Candidate, GroupTerms};
    use super::*;
    use crate::ids::ConnId;

    const WINDOW_MS: u64 = 1_000;

    fn coalescing() -> Group {
        Group::new("g".into(), GroupTerms { filter: None, coalesce_ms: Some(WINDOW_MS) }, 1, 1_000, 3)
    }

    /// Admits the cursor's message, stored at `stored_ms`.
    fn admit(g: &mut Group, key: Option<&str>, stored_ms: u64) -> Admit {
        g.admit_fresh(g.cursor(), true, key.map(key_hash), stored_ms, None)
    }

    fn coalesced_ids(g: &mut Group) -> Vec<u64> {
        g.take_coalesced()
    }

    #[test]
    fn a_newer_message_settles_the_waiting_ones_of_its_key_but_not_the_one_in_flight() {
        let mut g = coalescing();
        assert_eq!(admit(&mut g, Some("a"), 0), Admit::Deliverable);
        g.dispatch(1, ConnId(1), 100, 10);
        assert_eq!(admit(&mut g, Some("a"), 10), Admit::Blocked);
        assert_eq!(admit(&mut g, Some("b"), 20), Admit::Deliverable);
        assert_eq!(admit(&mut g, None, 30), Admit::Deliverable);
        assert_eq!(admit(&mut g, Some("a"), 40), Admit::Blocked);
        assert_eq!(admit(&mut g, None, 50), Admit::Deliverable);
        assert_eq!(coalesced_ids(&mut g), vec![2], "2 waited; 1 is in flight; 4 and 6 have no key");
        assert_eq!(admit(&mut g, Some("a"), 60), Admit::Blocked);
        assert_eq!(coalesced_ids(&mut g), vec![5]);
        assert_eq!(g.ack(1), AckOutcome::Acked { released: Some(super::super::Released { conn: ConnId(1), bytes: 10 }) });
        assert_eq!(g.next_candidate(8, 100), Candidate::Ready { id: 3, attempts: 0 });
        assert_eq!(g.position_of(7), super::super::IdPosition::Held(EntryState::Ready { attempts: 0 }), "the newest of 'a' is next");
        assert_eq!(g.position_of(2), super::super::IdPosition::Settled);
        assert_eq!(g.counters.coalesced, 2);
        g.check_invariants();
    }

    #[test]
    fn only_messages_stored_within_the_window_before_the_newer_one_are_settled() {
        let mut g = coalescing();
        admit(&mut g, Some("a"), 0);
        g.dispatch(1, ConnId(1), 100, 10);
        admit(&mut g, Some("a"), 100);
        admit(&mut g, Some("a"), 1_200);
        assert_eq!(coalesced_ids(&mut g), Vec::<u64>::new(), "2 was stored 1,100 ms before 3");
        admit(&mut g, Some("a"), 1_250);
        assert_eq!(coalesced_ids(&mut g), vec![3], "3 is within the window before 4; 2 is not");
        admit(&mut g, Some("a"), 1_250 + WINDOW_MS);
        assert_eq!(coalesced_ids(&mut g), vec![4], "exactly the window apart is within it");
        g.ack(1);
        assert_eq!(g.next_candidate(6, 100), Candidate::Ready { id: 2, attempts: 0 }, "the old one is delivered, in key order");
        g.check_invariants();
    }

    #[test]
    fn a_ready_or_nack_delayed_message_alone_on_its_key_is_settled_too() {
        let mut g = coalescing();
        admit(&mut g, Some("a"), 0);
        admit(&mut g, Some("a"), 5);
        assert_eq!(g.take_coalesced(), vec![1]);
        assert_eq!(g.next_candidate(3, 100), Candidate::Ready { id: 2, attempts: 0 }, "the newer one takes its key at once");
        g.dispatch(2, ConnId(1), 100, 10);
        g.nack(2, Some(700), ConnId(1));
        admit(&mut g, Some("a"), 10);
        assert_eq!(g.take_coalesced(), vec![2], "delayed by a nack, it waits too");
        assert_eq!(g.floor(), (2, 2));
        assert_eq!(g.next_candidate(4, 100), Candidate::Ready { id: 3, attempts: 0 });
        g.check_invariants();
    }

    #[test]
    fn a_group_without_a_window_coalesces_nothing() {
        let mut g = Group::new("g".into(), GroupTerms::default(), 1, 1_000, 3);
        admit(&mut g, Some("a"), 0);
        admit(&mut g, Some("a"), 1);
        assert_eq!(coalesced_ids(&mut g), Vec::<u64>::new());
        assert_eq!(g.next_candidate(3, 100), Candidate::Ready { id: 1, attempts: 0 });
    }

    #[test]
    fn coalesced_ids_are_in_the_position_record_and_a_restored_group_keeps_the_window() {
        let mut g = coalescing();
        admit(&mut g, Some("a"), 0);
        g.dispatch(1, ConnId(1), 100, 10);
        admit(&mut g, Some("a"), 1);
        admit(&mut g, Some("a"), 2);
        g.ack(3);
        let record = g.to_record("t");
        assert_eq!((record.floor, record.acked.clone(), record.coalesce_ms), (0, vec![2], Some(WINDOW_MS)));
        let restored = Group::restore(&record, 1_000, 3);
        assert_eq!(restored.terms, g.terms);
    }
}
