//! Bytes a socket read brought beyond what a connection's WebSocket asked for, kept for it
//! until asked, and the node-wide budget they count against.
//!
//! One read of up to `READ_SCRATCH_BYTES` takes many frames at once; a connection keeps what
//! its WebSocket (a small read buffer) has not asked for yet. A congested connection is not read
//! again until it drains, so without a bound every connection could hold a whole scratch
//! buffer's worth: `read_ahead_bytes_total_max` bounds them all together. Past it, a read asks
//! the socket only for what the WebSocket wants (smaller reads, nothing kept).

use std::cell::Cell;

thread_local! {
    /// (bytes kept by all connections, the most they may keep): one event loop per thread.
    static BUDGET: Cell<(usize, usize)> = const { Cell::new((0, usize::MAX)) };
}

/// Sets the node-wide bound (`read_ahead_bytes_total_max`) for this thread's connections.
pub fn set_budget(bytes_max: usize) {
    BUDGET.with(|b| b.set((b.get().0, bytes_max)));
}

/// Bytes kept by this thread's connections now.
pub fn kept_total() -> usize {
    BUDGET.with(|b| b.get().0)
}

/// How many more bytes may be kept now.
pub fn room() -> usize {
    BUDGET.with(|b| {
        let (kept, max) = b.get();
        max.saturating_sub(kept)
    })
}

fn count(added: usize, removed: usize) {
    BUDGET.with(|b| {
        let (kept, max) = b.get();
        b.set((kept + added - removed, max));
    });
}

/// One connection's kept bytes. Empty, it holds no memory; dropped, its bytes leave the budget.
#[derive(Default)]
pub struct ReadAhead {
    bytes: Vec<u8>,
    /// Where what is not handed out yet begins.
    from: usize,
}

impl ReadAhead {
    pub fn is_empty(&self) -> bool {
        self.from == self.bytes.len()
    }

    pub fn keep(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        count(bytes.len(), 0);
    }

    /// Hands out as much as fits in `buf`; the number of bytes.
    pub fn take(&mut self, buf: &mut [u8]) -> usize {
        let left = &self.bytes[self.from..];
        let n = buf.len().min(left.len());
        buf[..n].copy_from_slice(&left[..n]);
        self.from += n;
        count(0, n);
        if self.is_empty() {
            // An idle connection holds no read memory beyond the WebSocket's own.
            self.bytes = Vec::new();
            self.from = 0;
        }
        n
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        count(0, self.bytes.len() - self.from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_bytes_count_against_the_budget_until_handed_out_or_dropped() {
        set_budget(100);
        let before = kept_total();
        let mut a = ReadAhead::default();
        let mut b = ReadAhead::default();
        a.keep(&[1; 30]);
        b.keep(&[2; 50]);
        assert_eq!(kept_total(), before + 80);
        assert_eq!(room(), 100 - (before + 80));
        let mut buf = [0u8; 20];
        assert_eq!(a.take(&mut buf), 20);
        assert_eq!(buf, [1; 20]);
        assert_eq!(kept_total(), before + 60);
        drop(b);
        assert_eq!(kept_total(), before + 10, "a dropped connection's bytes leave the budget");
        assert_eq!(a.take(&mut buf), 10);
        assert!(a.is_empty());
        assert_eq!(a.capacity(), 0, "nothing held once all is handed out");
        assert_eq!(kept_total(), before);
        set_budget(usize::MAX);
    }
}
