//! When a topic's messages were stored, sparsely: marks (id, ts_ms) at least a spacing apart,
//! at most `MARKS_MAX` of them (4 KiB a topic), thinned to every other mark with the spacing
//! doubled when full. It answers "how old is message N" for messages no cache holds (the
//! oldest unacked age of a group far behind) to within one spacing: a second while the
//! topic holds minutes of messages, coarser as its stored history grows.

use std::collections::VecDeque;

/// Marks a topic keeps at most (16 bytes each).
pub const MARKS_MAX: usize = 256;
/// Stored time between two marks at first.
const SPACING_MS_MIN: u64 = 1_000;

#[derive(Debug)]
pub struct Timeline {
    marks: VecDeque<(u64, u64)>,
    spacing_ms: u64,
}

impl Default for Timeline {
    fn default() -> Timeline {
        Timeline { marks: VecDeque::new(), spacing_ms: SPACING_MS_MIN }
    }
}

impl Timeline {
    /// Message `id` was stored at `ts_ms` (ids in increasing order).
    pub fn push(&mut self, id: u64, ts_ms: u64) {
        if self.marks.back().is_some_and(|&(_, last_ms)| ts_ms < last_ms.saturating_add(self.spacing_ms)) {
            return;
        }
        self.marks.push_back((id, ts_ms));
        if self.marks.len() > MARKS_MAX {
            let mut at = 0;
            self.marks.retain(|_| {
                at += 1;
                at % 2 == 1
            });
            self.spacing_ms *= 2;
        }
    }

    /// When message `id` was stored, or at most one spacing earlier; `None` before the first
    /// mark.
    pub fn stored_at_ms(&self, id: u64) -> Option<u64> {
        let after = self.marks.partition_point(|&(mark, _)| mark <= id);
        after.checked_sub(1).map(|at| self.marks[at].1)
    }

    /// Ids below `first_id` are gone (retention): their marks are not needed, except the one
    /// that still dates `first_id`.
    pub fn forget_before(&mut self, first_id: u64) {
        while self.marks.get(1).is_some_and(|&(mark, _)| mark <= first_id) {
            self.marks.pop_front();
        }
    }

    /// Ids at or above `next_id` were rolled back.
    pub fn roll_back_to(&mut self, next_id: u64) {
        while self.marks.back().is_some_and(|&(mark, _)| mark >= next_id) {
            self.marks.pop_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_dated_within_one_spacing_and_the_marks_stay_bounded() {
        let mut timeline = Timeline::default();
        // One message every 100 ms for 10 hours.
        for id in 1..=360_000u64 {
            timeline.push(id, id * 100);
        }
        assert!(timeline.marks.len() <= MARKS_MAX);
        let spacing_ms = timeline.spacing_ms;
        assert!(spacing_ms > SPACING_MS_MIN, "the marks were thinned");
        for id in [1u64, 5_000, 123_456, 360_000] {
            let dated = timeline.stored_at_ms(id).expect("dated");
            assert!(dated <= id * 100 && id * 100 - dated < spacing_ms, "id {id}: {dated} against {}", id * 100);
        }
        timeline.forget_before(200_000);
        assert!(timeline.stored_at_ms(200_000).is_some_and(|ms| ms <= 20_000_000));
        timeline.roll_back_to(300_000);
        assert!(timeline.marks.back().is_some_and(|&(mark, _)| mark < 300_000));
        assert_eq!(Timeline::default().stored_at_ms(5), None);
    }
}
