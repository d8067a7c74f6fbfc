//! A group's outstanding entries by id, in id order. A group takes messages in id order (its
//! cursor only moves forward) and lets go of them from the front (its floor), so the entries
//! are kept in one deque sorted by id: taking one is a push at the back, letting go of the
//! oldest a pop at the front, and a lookup a binary search over contiguous memory, or a
//! single probe where ids are dense (no filter skipping some). Before, a `BTreeMap` spent
//! about 90 bytes of node space per entry (nodes about 70 % full) and a tree walk per lookup.
//!
//! The deque is kept in chunks of a fixed length (a power of two; no doubling slack at
//! millions of entries). A full chunk may be **spilled**: its entries leave memory (the group
//! writes them to disk) and a stub `S` takes its place, keeping the chunk's id range, so
//! positions, lookups and the `prev` of the entry after it still hold. `get` does not see
//! spilled entries; `is_spilled` says where an id went, and `unspill` puts the entries back.

use std::collections::VecDeque;

/// Entries per chunk by default: 4,096 of 48 bytes (a group's entry and its id) are 192 KiB.
pub const CHUNK_ENTRIES: usize = 4_096;

#[derive(Debug)]
enum Chunk<E, S> {
    Held(VecDeque<(u64, E)>),
    /// `len` entries with ids `first..=last` (every id of that range when `len` covers it).
    /// The stub is boxed: a chunk in the list stays as small as a held one's deque header, so
    /// lookups walking the list touch little memory.
    Spilled {
        first: u64,
        last: u64,
        len: usize,
        stub: Box<S>,
    },
}

impl<E, S> Chunk<E, S> {
    fn len(&self) -> usize {
        match self {
            Chunk::Held(items) => items.len(),
            Chunk::Spilled { len, .. } => *len,
        }
    }

    fn first_id(&self) -> Option<u64> {
        match self {
            Chunk::Held(items) => items.front().map(|(id, _)| *id),
            Chunk::Spilled { first, .. } => Some(*first),
        }
    }

    fn last_id(&self) -> Option<u64> {
        match self {
            Chunk::Held(items) => items.back().map(|(id, _)| *id),
            Chunk::Spilled { last, .. } => Some(*last),
        }
    }
}

/// Where an id is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Held {
        chunk: usize,
        offset: usize,
    },
    /// In the range of a spilled chunk (in a sparse one, maybe an id it does not have).
    Spilled {
        chunk: usize,
    },
}

#[derive(Debug)]
pub struct Outstanding<E, S = ()> {
    /// Every chunk but the first and the last holds exactly `1 << chunk_shift` entries (held
    /// or spilled); only a lone chunk is ever empty; ids strictly increase through them all.
    chunks: VecDeque<Chunk<E, S>>,
    len: usize,
    chunk_shift: u32,
    /// Chunks spilled: while none is, lookups never ask whether an id was.
    spilled: usize,
}

impl<E, S> Default for Outstanding<E, S> {
    fn default() -> Self {
        Outstanding::with_chunk_entries(CHUNK_ENTRIES)
    }
}

impl<E, S> Outstanding<E, S> {
    /// Chunks of `chunk_entries` (rounded up to a power of two).
    pub fn with_chunk_entries(chunk_entries: usize) -> Self {
        Outstanding { chunks: VecDeque::new(), len: 0, chunk_shift: chunk_entries.max(1).next_power_of_two().trailing_zeros(), spilled: 0 }
    }

    pub fn chunk_entries(&self) -> usize {
        1 << self.chunk_shift
    }

    /// Heap bytes of its held chunks at their capacity, and of the list of chunks (a spilled
    /// chunk's stub is in that list; what a stub holds on the heap is its owner's to count).
    pub fn heap_bytes(&self) -> usize {
        let items: usize = self.chunks.iter().map(|chunk| if let Chunk::Held(items) = chunk { items.capacity() } else { 0 }).sum();
        items * std::mem::size_of::<(u64, E)>() + self.chunks.capacity() * std::mem::size_of::<Chunk<E, S>>()
    }

    /// Entries kept, held or spilled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// (chunk, offset) of the entry at `index` from the front.
    fn split(&self, index: usize) -> Option<(usize, usize)> {
        let first_len = self.chunks.front()?.len();
        if index < first_len {
            return Some((0, index));
        }
        let rest = index - first_len;
        let chunk = 1 + (rest >> self.chunk_shift);
        (chunk < self.chunks.len() && index < self.len).then_some((chunk, rest & ((1 << self.chunk_shift) - 1)))
    }

    fn held_id(&self, chunk: usize, offset: usize) -> Option<u64> {
        match self.chunks.get(chunk)? {
            Chunk::Held(items) => items.get(offset).map(|(id, _)| *id),
            Chunk::Spilled { .. } => None,
        }
    }

    /// Where `id` is, if it is kept.
    fn place(&self, id: u64) -> Option<Place> {
        let first = self.chunks.front()?.first_id()?;
        // Dense ids: the entry sits at its distance from the first.
        let guess = usize::try_from(id.checked_sub(first)?).ok()?;
        if let Some((chunk, offset)) = self.split(guess) {
            match &self.chunks[chunk] {
                Chunk::Held(items) if items.get(offset).is_some_and(|(at, _)| *at == id) => return Some(Place::Held { chunk, offset }),
                Chunk::Spilled { first, last, len, .. } if (*first..=*last).contains(&id) && last - first + 1 == *len as u64 => return Some(Place::Spilled { chunk }),
                _ => {}
            }
        }
        // Else the last chunk starting at or below `id`, and a binary search inside it.
        let chunk = self.chunks.partition_point(|c| c.first_id().is_some_and(|f| f <= id)).checked_sub(1)?;
        match &self.chunks[chunk] {
            Chunk::Spilled { last, .. } => (id <= *last).then_some(Place::Spilled { chunk }),
            Chunk::Held(items) => {
                let offset = items.partition_point(|(at, _)| *at < id);
                items.get(offset).is_some_and(|(at, _)| *at == id).then_some(Place::Held { chunk, offset })
            }
        }
    }

    /// Chunks spilled now.
    pub fn spilled_chunks(&self) -> usize {
        self.spilled
    }

    /// The spilled chunk `id` falls in, if it does.
    fn spilled_place(&self, id: u64) -> Option<usize> {
        if self.spilled == 0 {
            return None;
        }
        let Some(Place::Spilled { chunk }) = self.place(id) else { return None };
        Some(chunk)
    }

    /// True if `id` falls in a spilled chunk (its entry, if it has one, is not in memory).
    pub fn is_spilled(&self, id: u64) -> bool {
        self.spilled_place(id).is_some()
    }

    /// The stub of the spilled chunk `id` falls in.
    pub fn spilled_stub(&self, id: u64) -> Option<&S> {
        match &self.chunks[self.spilled_place(id)?] {
            Chunk::Spilled { stub, .. } => Some(stub),
            Chunk::Held(_) => None,
        }
    }

    /// `spilled_stub`, to change.
    pub fn spilled_stub_mut(&mut self, id: u64) -> Option<&mut S> {
        let chunk = self.spilled_place(id)?;
        match &mut self.chunks[chunk] {
            Chunk::Spilled { stub, .. } => Some(stub),
            Chunk::Held(_) => None,
        }
    }

    pub fn get(&self, id: u64) -> Option<&E> {
        let Place::Held { chunk, offset } = self.place(id)? else { return None };
        match &self.chunks[chunk] {
            Chunk::Held(items) => items.get(offset).map(|(_, e)| e),
            Chunk::Spilled { .. } => None,
        }
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut E> {
        let Place::Held { chunk, offset } = self.place(id)? else { return None };
        match &mut self.chunks[chunk] {
            Chunk::Held(items) => items.get_mut(offset).map(|(_, e)| e),
            Chunk::Spilled { .. } => None,
        }
    }

    /// The id kept before the entry at (chunk, offset) (`None` for the first).
    fn id_before(&self, chunk: usize, offset: usize) -> Option<u64> {
        match offset.checked_sub(1) {
            Some(before) => self.held_id(chunk, before),
            None => self.chunks.get(chunk.checked_sub(1)?)?.last_id(),
        }
    }

    /// The entry kept under `id`, and the id kept before it (`None` for the first).
    pub fn get_with_previous(&self, id: u64) -> Option<(&E, Option<u64>)> {
        let Place::Held { chunk, offset } = self.place(id)? else { return None };
        let previous = self.id_before(chunk, offset);
        match &self.chunks[chunk] {
            Chunk::Held(items) => items.get(offset).map(|(_, e)| (e, previous)),
            Chunk::Spilled { .. } => None,
        }
    }

    /// `get_mut`, with the id kept before it (`None` for the first).
    pub fn get_mut_with_previous(&mut self, id: u64) -> Option<(&mut E, Option<u64>)> {
        let Place::Held { chunk, offset } = self.place(id)? else { return None };
        let previous = self.id_before(chunk, offset);
        match &mut self.chunks[chunk] {
            Chunk::Held(items) => items.get_mut(offset).map(|(_, e)| (e, previous)),
            Chunk::Spilled { .. } => None,
        }
    }

    /// Keeps `entry` under `id`, above every id kept (the group's cursor only moves forward).
    pub fn push(&mut self, id: u64, entry: E) {
        assert!(self.chunks.back().and_then(Chunk::last_id).is_none_or(|last| last < id), "outstanding ids are taken in increasing order");
        let full = self.chunk_entries();
        let room = matches!(self.chunks.back(), Some(Chunk::Held(items)) if items.len() < full);
        if !room {
            // The first chunk grows as needed; later ones are allocated whole.
            let items = if self.chunks.is_empty() { VecDeque::new() } else { VecDeque::with_capacity(full) };
            self.chunks.push_back(Chunk::Held(items));
        }
        let Some(Chunk::Held(items)) = self.chunks.back_mut() else { unreachable!("a held chunk with room") };
        items.push_back((id, entry));
        self.len += 1;
    }

    /// The first id kept, held or spilled.
    pub fn first_id(&self) -> Option<u64> {
        self.chunks.front()?.first_id()
    }

    /// The first entry, unless the first chunk is spilled.
    pub fn first(&self) -> Option<(u64, &E)> {
        match self.chunks.front()? {
            Chunk::Held(items) => items.front().map(|(id, e)| (*id, e)),
            Chunk::Spilled { .. } => None,
        }
    }

    /// Takes the first entry, unless the first chunk is spilled.
    pub fn pop_first(&mut self) -> Option<(u64, E)> {
        let Chunk::Held(first) = self.chunks.front_mut()? else { return None };
        let popped = first.pop_front();
        if first.is_empty() && self.chunks.len() > 1 {
            self.chunks.pop_front();
        }
        self.len -= usize::from(popped.is_some());
        popped
    }

    /// The held entries, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &E)> {
        self.chunks
            .iter()
            .flat_map(|chunk| match chunk {
                Chunk::Held(items) => Some(items.iter().map(|(id, e)| (*id, e))),
                Chunk::Spilled { .. } => None,
            })
            .flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut E)> {
        self.chunks
            .iter_mut()
            .flat_map(|chunk| match chunk {
                Chunk::Held(items) => Some(items.iter_mut().map(|(id, e)| (*id, e))),
                Chunk::Spilled { .. } => None,
            })
            .flatten()
    }

    pub fn values(&self) -> impl Iterator<Item = &E> {
        self.iter().map(|(_, e)| e)
    }

    /// Every chunk in id order: its held entries, or its stub.
    pub fn chunks(&self) -> impl Iterator<Item = Result<&VecDeque<(u64, E)>, &S>> {
        self.chunks.iter().map(|chunk| match chunk {
            Chunk::Held(items) => Ok(items),
            Chunk::Spilled { stub, .. } => Err(&**stub),
        })
    }

    /// The stubs of the spilled chunks, oldest first, with each chunk's first id.
    pub fn stubs(&self) -> impl Iterator<Item = (u64, &S)> {
        self.chunks.iter().filter_map(|chunk| match chunk {
            Chunk::Spilled { first, stub, .. } => Some((*first, &**stub)),
            Chunk::Held(_) => None,
        })
    }

    pub fn stubs_mut(&mut self) -> impl Iterator<Item = &mut S> {
        self.chunks.iter_mut().filter_map(|chunk| match chunk {
            Chunk::Spilled { stub, .. } => Some(&mut **stub),
            Chunk::Held(_) => None,
        })
    }

    /// Every held entry in id order and every stub, leaving none.
    pub fn take_all(&mut self) -> (Vec<(u64, E)>, Vec<S>) {
        (self.len, self.spilled) = (0, 0);
        let (mut held, mut stubs) = (Vec::new(), Vec::new());
        for chunk in std::mem::take(&mut self.chunks) {
            match chunk {
                Chunk::Held(items) => held.extend(items),
                Chunk::Spilled { stub, .. } => stubs.push(*stub),
            }
        }
        (held, stubs)
    }

    /// The full held chunks, oldest first: (chunk number, its entries), for choosing one to
    /// spill. Chunk numbers hold until the next push, pop or spill.
    pub fn full_held_chunks(&self) -> impl Iterator<Item = (usize, &VecDeque<(u64, E)>)> {
        let full = self.chunk_entries();
        self.chunks.iter().enumerate().filter_map(move |(at, chunk)| match chunk {
            Chunk::Held(items) if items.len() == full => Some((at, items)),
            _ => None,
        })
    }

    /// Spills full held chunk `chunk` (numbered as by `full_held_chunks`): its entries are
    /// returned, in id order, and `stub` takes their place.
    pub fn spill(&mut self, chunk: usize, stub: S) -> Vec<(u64, E)> {
        let full = self.chunk_entries();
        let slot = &mut self.chunks[chunk];
        assert!(matches!(slot, Chunk::Held(items) if items.len() == full), "only a full held chunk is spilled");
        let (first, last) = (slot.first_id().expect("a full chunk"), slot.last_id().expect("a full chunk"));
        let Chunk::Held(items) = std::mem::replace(slot, Chunk::Spilled { first, last, len: full, stub: Box::new(stub) }) else { unreachable!() };
        self.spilled += 1;
        items.into()
    }

    /// Puts back the entries of the spilled chunk whose stub `is_it` picks: returns its stub,
    /// or `None` (and drops `entries`) if no spilled chunk has that stub, or `entries` are not
    /// the chunk's (ids out of order or outside its range, or another count).
    pub fn unspill(&mut self, is_it: impl Fn(&S) -> bool, entries: Vec<(u64, E)>) -> Result<Option<S>, String> {
        let Some(at) = self.chunks.iter().position(|chunk| matches!(chunk, Chunk::Spilled { stub, .. } if is_it(stub))) else { return Ok(None) };
        let Chunk::Spilled { first, last, len, .. } = &self.chunks[at] else { unreachable!() };
        let ids_in_order = entries.windows(2).all(|pair| pair[0].0 < pair[1].0);
        if entries.len() != *len || entries.first().map(|(id, _)| *id) != Some(*first) || entries.last().map(|(id, _)| *id) != Some(*last) || !ids_in_order {
            return Err(format!("a spilled chunk of ids {first}..={last} ({len} entries) read back as {} entries", entries.len()));
        }
        let Chunk::Spilled { stub, .. } = std::mem::replace(&mut self.chunks[at], Chunk::Held(entries.into())) else { unreachable!() };
        self.spilled -= 1;
        Ok(Some(*stub))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeMap, BTreeSet};

    /// Random pushes (dense and sparse ids), pops from the front, lookups, updates, spills and
    /// unspills: the same answers as a `BTreeMap` given the same calls, with a spilled entry
    /// not found (and `is_spilled`) until it is put back.
    #[test]
    fn answers_as_an_ordered_map_would() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..50 {
            // Small chunks in some rounds, so spills and lookups across them are many.
            let chunk_entries = if round % 2 == 0 { 8 } else { CHUNK_ENTRIES };
            let (mut kept, mut model) = (Outstanding::<u64, u64>::with_chunk_entries(chunk_entries), BTreeMap::new());
            let (mut spilled, mut out) = (BTreeSet::new(), BTreeMap::<u64, Vec<(u64, u64)>>::new());
            let mut next = rng.gen_range(1..100u64);
            // Past a chunk or two, so that lookups cross chunks and the first one empties.
            for step in 0..20_000 {
                match rng.gen_range(0..12) {
                    0..=3 => {
                        kept.push(next, next * 10);
                        model.insert(next, next * 10);
                        // Mostly dense; now and then a filter skips some ids.
                        next += if rng.gen_bool(0.8) { 1 } else { rng.gen_range(2..50) };
                    }
                    4 => {
                        let expected = match model.first_key_value() {
                            Some((id, _)) if spilled.contains(id) => None,
                            _ => model.pop_first(),
                        };
                        assert_eq!(kept.pop_first(), expected);
                    }
                    5 => {
                        let id = rng.gen_range(0..next + 5);
                        let previous = model.range(..id).next_back().map(|(before, _)| *before);
                        let expected = model.get_mut(&id).filter(|_| !spilled.contains(&id));
                        if let (Some((a, before)), Some(b)) = (kept.get_mut_with_previous(id), expected) {
                            assert_eq!(before, previous, "id {id}");
                            *a += 1;
                            *b += 1;
                        }
                    }
                    6 => {
                        let full: Vec<usize> = kept.full_held_chunks().map(|(at, _)| at).collect();
                        if !full.is_empty() {
                            let at = full[rng.gen_range(0..full.len())];
                            let entries = kept.spill(at, step);
                            spilled.extend(entries.iter().map(|(id, _)| *id));
                            out.insert(step, entries);
                        }
                    }
                    7 => {
                        if let Some(&stub) = out.keys().nth(rng.gen_range(0..out.len().max(1))) {
                            let entries = out.remove(&stub).unwrap();
                            for (id, _) in &entries {
                                spilled.remove(id);
                            }
                            assert_eq!(kept.unspill(|s| *s == stub, entries), Ok(Some(stub)));
                        }
                    }
                    _ => {
                        let id = rng.gen_range(0..next + 5);
                        let expected = model.get(&id).filter(|_| !spilled.contains(&id));
                        assert_eq!(kept.get(id), expected, "id {id}");
                        let previous = model.range(..id).next_back().map(|(before, _)| *before);
                        assert_eq!(kept.get_with_previous(id), expected.map(|v| (v, previous)), "id {id}");
                        if model.contains_key(&id) {
                            assert_eq!(kept.is_spilled(id), spilled.contains(&id), "id {id}");
                        }
                    }
                }
                assert_eq!(kept.len(), model.len());
                assert_eq!(kept.first_id(), model.first_key_value().map(|(id, _)| *id));
            }
            let held = model.iter().filter(|(id, _)| !spilled.contains(id)).map(|(id, v)| (*id, *v));
            assert!(kept.iter().map(|(id, v)| (id, *v)).eq(held));
            assert_eq!(kept.stubs().count(), out.len());
        }
    }

    #[test]
    fn entries_that_are_not_the_chunks_are_refused_back() {
        let mut kept = Outstanding::<(), u8>::with_chunk_entries(4);
        for id in 1..=9 {
            kept.push(id, ());
        }
        let entries = kept.spill(0, 1);
        assert_eq!(entries.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(kept.first(), None, "the first chunk is out");
        assert_eq!(kept.pop_first(), None);
        assert!(kept.unspill(|s| *s == 1, entries[1..].to_vec()).is_err());
        assert_eq!(kept.unspill(|s| *s == 2, entries.clone()), Ok(None));
        assert_eq!(kept.unspill(|s| *s == 1, entries), Ok(Some(1)));
        assert_eq!(kept.pop_first(), Some((1, ())));
    }

    #[test]
    #[should_panic(expected = "increasing order")]
    fn an_id_below_the_last_is_refused() {
        let mut kept = Outstanding::<()>::default();
        kept.push(5, ());
        kept.push(4, ());
    }
}
