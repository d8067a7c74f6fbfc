//! A timing wheel: timers armed, cancelled and expired in O(1) each, whatever their number.
//!
//! Slots of `TICK_NS` cover the next `SLOTS` ticks; a bitmap of occupied slots (and a summary
//! word over it) finds the next due one in a few word scans. Timers further out wait in a
//! sorted map until they come within the wheel's span (long delays are rare and cheap to keep).
//! Cancelling is lazy: the owner ignores a timer that no longer means anything when it fires
//! (the node checks a nack delay against the message's state).

use std::collections::{BTreeMap, VecDeque};

/// One slot per millisecond, 65,536 of them: a minute ahead (2 MiB of empty slots).
pub const TICK_NS: u64 = 1_000_000;
const SLOTS: usize = 65_536;
const WORDS: usize = SLOTS / 64;
const SUMMARY_WORDS: usize = WORDS / 64;

#[derive(Debug)]
pub struct TimerWheel<T> {
    /// Each a queue in arming order: a tick wholly past is taken from its front.
    slots: Vec<VecDeque<(u64, T)>>,
    /// Bit `s` set: slot `s` holds timers.
    occupied: [u64; WORDS],
    /// Bit `w` set: word `w` of `occupied` is not zero.
    summary: [u64; SUMMARY_WORDS],
    /// The tick the wheel stands at: slot `now_tick % SLOTS` holds the timers due in it, and
    /// the others the ticks up to `SLOTS - 1` after it.
    now_tick: u64,
    /// Timers due beyond the wheel's span, by tick.
    far: BTreeMap<u64, Vec<(u64, T)>>,
    len: usize,
}

impl<T: Copy> Default for TimerWheel<T> {
    fn default() -> Self {
        TimerWheel { slots: (0..SLOTS).map(|_| VecDeque::new()).collect(), occupied: [0; WORDS], summary: [0; SUMMARY_WORDS], now_tick: 0, far: BTreeMap::new(), len: 0 }
    }
}

impl<T: Copy> TimerWheel<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Arms `item` to fire at `due_ns` (at once if that has passed).
    pub fn insert(&mut self, due_ns: u64, item: T) {
        self.len += 1;
        let tick = (due_ns / TICK_NS).max(self.now_tick);
        if tick - self.now_tick < SLOTS as u64 {
            self.put(tick, due_ns, item);
        } else {
            self.far.entry(tick).or_default().push((due_ns, item));
        }
    }

    fn put(&mut self, tick: u64, due_ns: u64, item: T) {
        let slot = (tick % SLOTS as u64) as usize;
        self.slots[slot].push_back((due_ns, item));
        let word = slot / 64;
        self.occupied[word] |= 1 << (slot % 64);
        self.summary[word / 64] |= 1 << (word % 64);
    }

    /// When the next timer is due.
    pub fn next_due(&self) -> Option<u64> {
        let near = self.first_occupied_tick().and_then(|tick| self.slots[(tick % SLOTS as u64) as usize].iter().map(|(due, _)| *due).min());
        let far = self.far.values().next().and_then(|timers| timers.iter().map(|(due, _)| *due).min());
        near.into_iter().chain(far).min()
    }

    /// A timer due at or before `now_ns`, with when it was due; timers of one tick come in the
    /// order they were armed.
    pub fn pop_due(&mut self, now_ns: u64) -> Option<(u64, T)> {
        self.bring_near(now_ns);
        let tick = self.first_occupied_tick()?;
        if tick * TICK_NS > now_ns {
            return None;
        }
        self.now_tick = tick;
        let slot = (tick % SLOTS as u64) as usize;
        let at = self.slots[slot].iter().position(|(due, _)| *due <= now_ns)?;
        let timer = self.slots[slot].remove(at).expect("found above");
        if self.slots[slot].is_empty() {
            let word = slot / 64;
            self.occupied[word] &= !(1 << (slot % 64));
            if self.occupied[word] == 0 {
                self.summary[word / 64] &= !(1 << (word % 64));
            }
        }
        self.len -= 1;
        Some(timer)
    }

    /// Moves the far timers that the wheel's span reaches into it (the span starting at the
    /// wheel's tick, or at `now_ns` when nothing is on the wheel).
    fn bring_near(&mut self, now_ns: u64) {
        if self.on_wheel_empty() {
            self.now_tick = self.now_tick.max(now_ns / TICK_NS);
            if let Some(&first) = self.far.keys().next() {
                // Nothing nearer: the wheel may jump to the first far timer's tick.
                self.now_tick = self.now_tick.max(first.min(now_ns / TICK_NS + SLOTS as u64 - 1).saturating_sub(SLOTS as u64 - 1));
            }
        }
        while let Some(entry) = self.far.first_entry().filter(|e| e.key().saturating_sub(self.now_tick) < SLOTS as u64) {
            let tick = (*entry.key()).max(self.now_tick);
            for (due, item) in entry.remove() {
                self.put(tick, due, item);
            }
        }
    }

    /// The first tick at or after the wheel's with timers, within the span.
    fn on_wheel_empty(&self) -> bool {
        self.summary.iter().all(|word| *word == 0)
    }

    fn first_occupied_tick(&self) -> Option<u64> {
        if self.on_wheel_empty() {
            return None;
        }
        let start = (self.now_tick % SLOTS as u64) as usize;
        let offset = |slot: usize| ((slot + SLOTS - start) % SLOTS) as u64;
        // From the wheel's slot to the end, then from the start around to it.
        let found = self.next_set(start, SLOTS).or_else(|| self.next_set(0, start))?;
        Some(self.now_tick + offset(found))
    }

    /// The first occupied slot in `from..to`.
    fn next_set(&self, from: usize, to: usize) -> Option<usize> {
        if from >= to {
            return None;
        }
        let first_word = from / 64;
        let head = self.occupied[first_word] & (!0u64 << (from % 64));
        let slot = if head != 0 {
            first_word * 64 + head.trailing_zeros() as usize
        } else {
            let word = self.next_word(first_word + 1)?;
            word * 64 + self.occupied[word].trailing_zeros() as usize
        };
        (slot < to).then_some(slot)
    }

    /// The first non-empty word of `occupied` at or after `from`.
    fn next_word(&self, from: usize) -> Option<usize> {
        if from >= WORDS {
            return None;
        }
        let head = self.summary[from / 64] & (!0u64 << (from % 64));
        if head != 0 {
            return Some(from / 64 * 64 + head.trailing_zeros() as usize);
        }
        (from / 64 + 1..SUMMARY_WORDS).find(|s| self.summary[*s] != 0).map(|s| s * 64 + self.summary[s].trailing_zeros() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    /// Against a sorted set: every timer fires once, never early, never later than the first
    /// `pop_due` at or after its time, whatever the mix of near and far delays.
    #[test]
    fn timers_fire_once_in_time_like_a_sorted_set() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut wheel = TimerWheel::default();
        let mut model: BTreeSet<(u64, u32)> = BTreeSet::new();
        let mut now = 5 * TICK_NS;
        for n in 0..20_000u32 {
            if rng.gen_bool(0.5) {
                let delay = match rng.gen_range(0..10) {
                    0 => rng.gen_range(0..20 * SLOTS as u64 * TICK_NS),
                    1 => 0,
                    _ => rng.gen_range(0..3 * TICK_NS),
                };
                wheel.insert(now + delay, n);
                model.insert((now + delay, n));
            } else {
                let ticks = if rng.gen_bool(0.01) { 30 * SLOTS as u64 } else { 2 };
                now += rng.gen_range(0..ticks * TICK_NS);
                let mut fired = BTreeSet::new();
                while let Some((due, n)) = wheel.pop_due(now) {
                    assert!(due <= now, "timer {n} fired at {now} before it was due at {due}");
                    assert!(fired.insert((due, n)), "timer {n} fired twice");
                }
                let due_now: BTreeSet<(u64, u32)> = model.range(..(now + 1, 0)).copied().collect();
                assert_eq!(fired, due_now, "at {now}");
                model.retain(|t| t.0 > now);
            }
            assert_eq!(wheel.len(), model.len());
            let next = wheel.next_due();
            assert_eq!(next.is_some(), !model.is_empty());
            if let (Some(next), Some(&(first, _))) = (next, model.first()) {
                // Within a tick the wheel does not order by the nanosecond.
                assert!(next / TICK_NS == first / TICK_NS || next == first, "next due {next}, first {first}");
            }
        }
    }
}
