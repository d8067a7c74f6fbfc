//! Per-key order within a group: of the unacked messages of one key, only the oldest may be
//! deliverable (ready, delayed, in flight); the later ones wait, in id order, until it is
//! settled. Keys are hashes (`group::key_hash`); messages without a key never wait.

use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Default)]
pub struct KeyOrder {
    keys: BTreeMap<u64, KeyQueue>,
}

#[derive(Debug)]
struct KeyQueue {
    /// Unacked messages of the key: the deliverable one and those waiting.
    unacked: u32,
    /// The one that may be delivered.
    deliverable: u64,
    /// Those behind it, oldest first.
    waiting: VecDeque<u64>,
}

impl KeyOrder {
    /// Takes message `id` of `key` (ids come in increasing order): true if it is deliverable
    /// now, false if it waits behind an earlier one of its key.
    pub fn admit(&mut self, key: u64, id: u64) -> bool {
        match self.keys.get_mut(&key) {
            Some(queue) => {
                queue.unacked += 1;
                queue.waiting.push_back(id);
                false
            }
            None => {
                self.keys.insert(key, KeyQueue { unacked: 1, deliverable: id, waiting: VecDeque::new() });
                true
            }
        }
    }

    /// An unacked message of `key` was settled: the next waiting one, if any, is deliverable
    /// now (returned).
    pub fn release(&mut self, key: u64) -> Option<u64> {
        let queue = self.keys.get_mut(&key).expect("key of an unacked message is held");
        queue.unacked -= 1;
        if queue.unacked == 0 {
            self.keys.remove(&key);
            return None;
        }
        let next = queue.waiting.pop_front()?;
        queue.deliverable = next;
        Some(next)
    }

    /// The planted bug `KeyReleasedOnExpiry`: the next waiting one is let go while the key's
    /// deliverable one is still unacked (its count stays, so nothing else breaks).
    pub fn take_next_waiting(&mut self, key: u64) -> Option<u64> {
        let queue = self.keys.get_mut(&key)?;
        let next = queue.waiting.pop_front()?;
        queue.deliverable = next;
        Some(next)
    }

    /// The newest message of `key` waiting behind its deliverable one.
    pub fn newest_waiting(&self, key: u64) -> Option<u64> {
        self.keys.get(&key)?.waiting.back().copied()
    }

    /// Coalescing: the newest waiting message of `key` is settled without being delivered.
    pub fn drop_newest_waiting(&mut self, key: u64) {
        let queue = self.keys.get_mut(&key).expect("a key with waiting messages is held");
        queue.waiting.pop_back().expect("a waiting message to drop");
        queue.unacked -= 1;
    }

    /// The message of `key` that may be delivered, when none waits behind it.
    pub fn deliverable_alone(&self, key: u64) -> Option<u64> {
        self.keys.get(&key).filter(|queue| queue.waiting.is_empty()).map(|queue| queue.deliverable)
    }

    /// Keys with unacked messages.
    pub fn keys_held(&self) -> usize {
        self.keys.len()
    }

    pub fn clear(&mut self) {
        self.keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_messages_of_a_key_wait_in_order_and_other_keys_do_not() {
        let mut order = KeyOrder::default();
        assert!(order.admit(7, 1));
        assert!(!order.admit(7, 2));
        assert!(order.admit(8, 3));
        assert!(!order.admit(7, 4));
        assert_eq!(order.release(7), Some(2));
        assert_eq!(order.release(7), Some(4));
        assert_eq!(order.release(7), None);
        assert!(order.admit(7, 5), "a key with nothing unacked is free again");
        assert_eq!(order.release(8), None);
    }

    #[test]
    fn dropping_the_newest_waiting_leaves_the_rest_in_order() {
        let mut order = KeyOrder::default();
        for id in 1..=4 {
            order.admit(7, id);
        }
        assert_eq!(order.deliverable_alone(7), None, "3 wait behind 1");
        assert_eq!(order.newest_waiting(7), Some(4));
        order.drop_newest_waiting(7);
        order.drop_newest_waiting(7);
        assert_eq!(order.newest_waiting(7), Some(2));
        assert_eq!(order.release(7), Some(2));
        assert_eq!(order.deliverable_alone(7), Some(2));
        assert_eq!(order.release(7), None, "3 and 4 were dropped: the key is free");
        assert!(order.admit(7, 5));
    }
}
