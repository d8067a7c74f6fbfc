//! A group's outstanding entries by id, in id order. A group takes messages in id order (its
//! cursor only moves forward) and lets go of them from the front (its floor), so the entries
//! are kept in one deque sorted by id: taking one is a push at the back, letting go of the
//! oldest a pop at the front, and a lookup a binary search over contiguous memory, or a
//! single probe where ids are dense (no filter skipping some). Before, a `BTreeMap` spent
//! about 90 bytes of node space per entry (nodes about 70 % full) and a tree walk per lookup.
//!
//! The deque is a `ChunkedDeque` (no doubling slack at millions of entries).

use crate::chunked::ChunkedDeque;

#[derive(Debug)]
pub struct Outstanding<E> {
    /// (id, entry), ids strictly increasing.
    entries: ChunkedDeque<(u64, E)>,
}

impl<E> Default for Outstanding<E> {
    fn default() -> Self {
        Outstanding { entries: ChunkedDeque::default() }
    }
}

impl<E> Outstanding<E> {
    pub fn heap_bytes(&self) -> usize {
        self.entries.heap_bytes()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn at(&self, index: usize) -> Option<&(u64, E)> {
        self.entries.get(index)
    }

    /// Where `id` is, if it is kept.
    fn position(&self, id: u64) -> Option<usize> {
        let &(first, _) = self.entries.front()?;
        // Dense ids: the entry sits at its distance from the first.
        let guess = usize::try_from(id.checked_sub(first)?).ok()?;
        if self.at(guess).is_some_and(|(at, _)| *at == id) {
            return Some(guess);
        }
        // Else a binary search over the positions (ids increase with them).
        let (mut low, mut high) = (0, self.entries.len());
        while low < high {
            let mid = low + (high - low) / 2;
            if self.at(mid).is_some_and(|(kept, _)| *kept < id) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        (self.at(low).is_some_and(|(kept, _)| *kept == id)).then_some(low)
    }

    pub fn get(&self, id: u64) -> Option<&E> {
        let at = self.position(id)?;
        self.at(at).map(|(_, e)| e)
    }

    /// The id kept before the entry at `at` (`None` for the first).
    fn id_before(&self, at: usize) -> Option<u64> {
        at.checked_sub(1).and_then(|before| self.at(before)).map(|(id, _)| *id)
    }

    /// The entry kept under `id`, and the id kept before it (`None` for the first).
    pub fn get_with_previous(&self, id: u64) -> Option<(&E, Option<u64>)> {
        let at = self.position(id)?;
        let previous = self.id_before(at);
        self.at(at).map(|(_, e)| (e, previous))
    }

    /// `get_mut`, with the id kept before it (`None` for the first).
    pub fn get_mut_with_previous(&mut self, id: u64) -> Option<(&mut E, Option<u64>)> {
        let at = self.position(id)?;
        let previous = self.id_before(at);
        self.entries.get_mut(at).map(|(_, e)| (e, previous))
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut E> {
        let at = self.position(id)?;
        self.entries.get_mut(at).map(|(_, e)| e)
    }

    /// Keeps `entry` under `id`, above every id kept (the group's cursor only moves forward).
    pub fn push(&mut self, id: u64, entry: E) {
        assert!(self.entries.back().is_none_or(|(last, _)| *last < id), "outstanding ids are taken in increasing order");
        self.entries.push_back((id, entry));
    }

    pub fn first(&self) -> Option<(u64, &E)> {
        self.entries.front().map(|(id, e)| (*id, e))
    }

    pub fn pop_first(&mut self) -> Option<(u64, E)> {
        self.entries.pop_front()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &E)> {
        self.entries.iter().map(|(id, e)| (*id, e))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut E)> {
        self.entries.iter_mut().map(|(id, e)| (*id, e))
    }

    pub fn values(&self) -> impl Iterator<Item = &E> {
        self.iter().map(|(_, e)| e)
    }

    /// Every entry, in id order, leaving none.
    pub fn take_all(&mut self) -> impl Iterator<Item = (u64, E)> {
        self.entries.take_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    /// Random pushes (dense and sparse ids), pops from the front, lookups and updates: the
    /// same answers as a `BTreeMap` given the same calls.
    #[test]
    fn answers_as_an_ordered_map_would() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            let (mut kept, mut model) = (Outstanding::default(), BTreeMap::new());
            let mut next = rng.gen_range(1..100u64);
            // Past a chunk or two, so that lookups cross chunks and the first one empties.
            for _ in 0..20_000 {
                match rng.gen_range(0..10) {
                    0..=3 => {
                        kept.push(next, next * 10);
                        model.insert(next, next * 10);
                        // Mostly dense; now and then a filter skips some ids.
                        next += if rng.gen_bool(0.8) { 1 } else { rng.gen_range(2..50) };
                    }
                    4 => assert_eq!(kept.pop_first(), model.pop_first()),
                    5 => {
                        let id = rng.gen_range(0..next + 5);
                        let previous = model.range(..id).next_back().map(|(before, _)| *before);
                        if let (Some((a, before)), Some(b)) = (kept.get_mut_with_previous(id), model.get_mut(&id)) {
                            assert_eq!(before, previous, "id {id}");
                            *a += 1;
                            *b += 1;
                        }
                    }
                    _ => {
                        let id = rng.gen_range(0..next + 5);
                        assert_eq!(kept.get(id), model.get(&id), "id {id}");
                        let previous = model.range(..id).next_back().map(|(before, _)| *before);
                        assert_eq!(kept.get_with_previous(id), model.get(&id).map(|v| (v, previous)), "id {id}");
                    }
                }
                assert_eq!(kept.len(), model.len());
                assert_eq!(kept.first(), model.first_key_value().map(|(id, v)| (*id, v)));
            }
            assert!(kept.iter().map(|(id, v)| (id, *v)).eq(model.iter().map(|(id, v)| (*id, *v))));
        }
    }

    #[test]
    #[should_panic(expected = "increasing order")]
    fn an_id_below_the_last_is_refused() {
        let mut kept = Outstanding::default();
        kept.push(5, ());
        kept.push(4, ());
    }
}
