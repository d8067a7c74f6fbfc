//! A deque kept in chunks of `CHUNK` items, each allocated at its size: what holds millions of
//! items (a group's outstanding entries, its ack deadlines) holds them without the slack of
//! one buffer whose capacity doubles (a deque of 10 M items sits in a buffer of 16.7 M, 68 %
//! more than it holds). The first chunk grows from nothing, so a deque of a few items holds
//! little, and a lone chunk emptied is kept, so one that holds an item or two does not
//! allocate and free a chunk for each.

use std::collections::VecDeque;

/// Items per chunk: 4,096 of 48 bytes (a group's entry and its id) are 192 KiB.
const CHUNK: usize = 4_096;

#[derive(Debug)]
pub struct ChunkedDeque<T> {
    /// Every chunk but the first and the last is full; only a lone chunk is ever empty.
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for ChunkedDeque<T> {
    fn default() -> Self {
        ChunkedDeque { chunks: VecDeque::new(), len: 0 }
    }
}

impl<T> ChunkedDeque<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes it holds: its chunks at their capacity, and the list of them.
    pub fn heap_bytes(&self) -> usize {
        let items: usize = self.chunks.iter().map(VecDeque::capacity).sum();
        items * std::mem::size_of::<T>() + self.chunks.capacity() * std::mem::size_of::<VecDeque<T>>()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The item at `index` from the front.
    pub fn get(&self, index: usize) -> Option<&T> {
        let first = self.chunks.front()?;
        if index < first.len() {
            return first.get(index);
        }
        let rest = index - first.len();
        self.chunks.get(1 + rest / CHUNK)?.get(rest % CHUNK)
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        let first_len = self.chunks.front()?.len();
        if index < first_len {
            return self.chunks[0].get_mut(index);
        }
        let rest = index - first_len;
        self.chunks.get_mut(1 + rest / CHUNK)?.get_mut(rest % CHUNK)
    }

    pub fn front(&self) -> Option<&T> {
        // Only a lone chunk is ever empty: the first chunk's front is the deque's.
        self.chunks.front()?.front()
    }

    pub fn back(&self) -> Option<&T> {
        self.chunks.back()?.back()
    }

    pub fn push_back(&mut self, item: T) {
        if self.chunks.back().is_none_or(|chunk| chunk.len() == CHUNK) {
            // The first chunk grows as needed; later ones are allocated whole.
            let chunk = if self.chunks.is_empty() { VecDeque::new() } else { VecDeque::with_capacity(CHUNK) };
            self.chunks.push_back(chunk);
        }
        self.chunks.back_mut().expect("a chunk with room").push_back(item);
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        let popped = first.pop_front();
        if first.is_empty() && self.chunks.len() > 1 {
            self.chunks.pop_front();
        }
        self.len -= usize::from(popped.is_some());
        popped
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten()
    }

    /// Every item, in order, leaving none.
    pub fn take_all(&mut self) -> impl Iterator<Item = T> {
        self.len = 0;
        std::mem::take(&mut self.chunks).into_iter().flatten()
    }

    /// Keeps the items `keep` says to, in order: moved forward in place, the chunks left empty
    /// at the back freed.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool)
    where
        T: Copy,
    {
        // The write position (chunk, offset) never passes the read position.
        let (mut kept, mut to_chunk, mut to_offset) = (0, 0, 0);
        for from_chunk in 0..self.chunks.len() {
            for from_offset in 0..self.chunks[from_chunk].len() {
                let item = self.chunks[from_chunk][from_offset];
                if keep(&item) {
                    self.chunks[to_chunk][to_offset] = item;
                    kept += 1;
                    to_offset += 1;
                    if to_offset == self.chunks[to_chunk].len() {
                        (to_chunk, to_offset) = (to_chunk + 1, 0);
                    }
                }
            }
        }
        while self.len > kept {
            let last = self.chunks.back_mut().expect("a chunk while len > 0");
            last.pop_back();
            self.len -= 1;
            if last.is_empty() && self.chunks.len() > 1 {
                self.chunks.pop_back();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random pushes, pops, lookups, updates and retains: the same answers as a `VecDeque`.
    #[test]
    fn answers_as_a_deque_would() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for _ in 0..20 {
            let (mut chunked, mut model) = (ChunkedDeque::default(), VecDeque::new());
            // Past a few chunks, so that lookups cross chunks and the first one empties.
            for n in 0..30_000u64 {
                match rng.gen_range(0..20) {
                    0..=9 => {
                        chunked.push_back(n);
                        model.push_back(n);
                    }
                    10..=13 => assert_eq!(chunked.pop_front(), model.pop_front()),
                    14 if rng.gen_bool(0.01) => {
                        let modulus = rng.gen_range(2..5);
                        chunked.retain(|item| item % modulus != 0);
                        model.retain(|item| item % modulus != 0);
                    }
                    15 => {
                        let index = rng.gen_range(0..model.len() + 2);
                        if let (Some(a), Some(b)) = (chunked.get_mut(index), model.get_mut(index)) {
                            *a += 7;
                            *b += 7;
                        }
                    }
                    _ => {
                        let index = rng.gen_range(0..model.len() + 2);
                        assert_eq!(chunked.get(index), model.get(index), "index {index}");
                    }
                }
                assert_eq!(chunked.len(), model.len());
                assert_eq!((chunked.front(), chunked.back()), (model.front(), model.back()));
            }
            assert!(chunked.iter().eq(model.iter()));
        }
    }
}
