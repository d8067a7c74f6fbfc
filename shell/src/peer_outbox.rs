//! What a peer link has queued for its socket, in two lanes: raft's messages (urgent) go
//! ahead of everything else (bulk: deliveries, forwarded client frames, the handshake).
//!
//! A fan-out to 20,000 members of another node is 20,000 delivery frames on one link; the
//! raft heartbeats queued behind them came late enough for a follower's election timer to run
//! out. Lanes switch only between whole items (a frame, or the handshake's bytes), and nothing
//! urgent goes before the handshake is out, so the byte stream is always a sequence of whole
//! frames. The order within each lane is kept; nothing on the mesh relies on order across
//! lanes (a delivery waits for its raft entry to be applied anyway).
//!
//! Socket-free, so its scheduling is tested with any pattern of partial writes.

use std::collections::VecDeque;

/// A write takes at most about this much of the bulk lane at once (whole items, at least
/// one), so that urgent items queued meanwhile wait for at most this much.
const BULK_CHUNK_BYTES: usize = 64 << 10;

#[derive(Default)]
pub struct PeerOutbox {
    bulk: Lane,
    urgent: Lane,
    /// Bulk items that must go before anything urgent (the handshake's).
    first_items: usize,
}

#[derive(Default)]
struct Lane {
    bytes: Vec<u8>,
    /// Where what the socket has not taken begins.
    from: usize,
    /// Where the item the socket is at begins.
    item_start: usize,
    /// Where each item not wholly taken ends, in order.
    ends: VecDeque<usize>,
}

impl Lane {
    fn queued(&self) -> usize {
        self.bytes.len() - self.from
    }

    fn push(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        self.ends.push_back(self.bytes.len());
    }

    /// The socket took part of an item, not all of it.
    fn mid_item(&self) -> bool {
        self.from > self.item_start
    }

    /// The rest of the current item, and of the items after it up to about `bytes_max`.
    fn chunk(&self, bytes_max: usize) -> &[u8] {
        let mut end = self.from;
        for &item_end in &self.ends {
            if end > self.from && item_end - self.from > bytes_max {
                break;
            }
            end = item_end;
        }
        &self.bytes[self.from..end]
    }

    /// Items wholly taken so far by this advance.
    fn advance(&mut self, n: usize) -> usize {
        self.from += n;
        let mut done = 0;
        while self.ends.front().is_some_and(|&end| end <= self.from) {
            self.item_start = self.ends.pop_front().expect("checked");
            done += 1;
        }
        if self.from == self.bytes.len() {
            self.bytes.clear();
            (self.from, self.item_start) = (0, 0);
        } else if self.from > BULK_CHUNK_BYTES && self.from * 2 > self.bytes.len() {
            let gone = self.item_start.min(self.from);
            self.bytes.drain(..gone);
            self.from -= gone;
            self.item_start -= gone;
            self.ends.iter_mut().for_each(|end| *end -= gone);
        }
        done
    }
}

/// Which lane the next bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pick {
    Bulk,
    Urgent,
}

impl PeerOutbox {
    /// Bytes queued in both lanes.
    pub fn queued(&self) -> usize {
        self.bulk.queued() + self.urgent.queued()
    }

    /// Queues the handshake's bytes: they go before anything, urgent or not.
    pub fn push_first(&mut self, bytes: &[u8]) {
        self.bulk.push(&[bytes]);
        self.first_items += 1;
    }

    /// Queues one length-prefixed frame in its lane.
    pub fn push_frame(&mut self, payload: &[u8], urgent: bool) {
        let prefix = (payload.len() as u32).to_be_bytes();
        let lane = if urgent { &mut self.urgent } else { &mut self.bulk };
        lane.push(&[&prefix, payload]);
    }

    fn pick(&self) -> Option<Pick> {
        if self.bulk.mid_item() || self.first_items > 0 {
            return (self.bulk.queued() > 0).then_some(Pick::Bulk);
        }
        if self.urgent.queued() > 0 {
            return Some(Pick::Urgent);
        }
        (self.bulk.queued() > 0).then_some(Pick::Bulk)
    }

    /// The bytes to write next (empty when nothing is queued).
    pub fn next_chunk(&self) -> &[u8] {
        match self.pick() {
            Some(Pick::Bulk) => self.bulk.chunk(if self.bulk.mid_item() { 0 } else { BULK_CHUNK_BYTES }),
            Some(Pick::Urgent) => self.urgent.chunk(usize::MAX),
            None => &[],
        }
    }

    /// The socket took `n` bytes of `next_chunk`.
    pub fn advance(&mut self, n: usize) {
        match self.pick() {
            Some(Pick::Bulk) => {
                let done = self.bulk.advance(n);
                self.first_items = self.first_items.saturating_sub(done);
            }
            Some(Pick::Urgent) => {
                self.urgent.advance(n);
            }
            None => debug_assert_eq!(n, 0, "nothing was queued"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: enough randomness for write patterns, no dependency.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as usize % n.max(1)
        }
        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
    }

    /// Splits a stream of length-prefixed frames into their payloads.
    fn frames(mut stream: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !stream.is_empty() {
            let (len, rest) = stream.split_at(4);
            let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
            out.push(rest[..len].to_vec());
            stream = &rest[len..];
        }
        out
    }

    #[test]
    fn any_partial_writes_give_whole_frames_each_lane_in_order_and_the_handshake_first() {
        for seed in 0..200u64 {
            let mut rng = Rng(seed * 2 + 1);
            let mut outbox = PeerOutbox::default();
            let hello = b"HELLO-HANDSHAKE".to_vec();
            outbox.push_first(&hello);
            let mut wire = Vec::new();
            let (mut bulk_sent, mut urgent_sent) = (0u32, 0u32);
            for _ in 0..400 {
                if rng.chance(60) {
                    // A payload names its lane and its number in the lane, padded to a random size.
                    let urgent = rng.chance(30);
                    let number = if urgent { &mut urgent_sent } else { &mut bulk_sent };
                    let mut payload = vec![u8::from(urgent)];
                    payload.extend_from_slice(&number.to_be_bytes());
                    payload.resize(5 + rng.below(3_000), 0xAB);
                    *number += 1;
                    outbox.push_frame(&payload, urgent);
                } else {
                    let chunk = outbox.next_chunk();
                    let n = rng.below(chunk.len() + 1);
                    wire.extend_from_slice(&chunk[..n]);
                    outbox.advance(n);
                }
            }
            while outbox.queued() > 0 {
                let chunk = outbox.next_chunk().to_vec();
                let n = 1 + rng.below(chunk.len());
                wire.extend_from_slice(&chunk[..n]);
                outbox.advance(n);
            }
            assert!(wire.starts_with(&hello), "seed {seed}: the handshake goes first");
            let payloads = frames(&wire[hello.len()..]);
            assert_eq!(payloads.len() as u32, bulk_sent + urgent_sent, "seed {seed}: every frame whole");
            for lane in [0u8, 1] {
                let numbers: Vec<u32> = payloads.iter().filter(|p| p[0] == lane).map(|p| u32::from_be_bytes(p[1..5].try_into().unwrap())).collect();
                assert!(numbers.iter().enumerate().all(|(at, n)| *n == at as u32), "seed {seed}: lane {lane} out of order");
            }
        }
    }

    #[test]
    fn an_urgent_frame_goes_ahead_of_a_bulk_backlog_once_the_frame_being_written_is_out() {
        let mut outbox = PeerOutbox::default();
        for i in 0..10_000u32 {
            outbox.push_frame(&i.to_be_bytes(), false);
        }
        // The socket takes 6 bytes: the first frame (8 bytes) is half written.
        outbox.advance(6);
        outbox.push_frame(b"heartbeat", true);
        let mut wire = Vec::new();
        while outbox.queued() > 0 {
            let n = outbox.next_chunk().len().min(1_000);
            wire.extend_from_slice(&outbox.next_chunk()[..n]);
            outbox.advance(n);
        }
        let payloads = frames(&[&[0, 0, 0, 4, 0, 0][..], &wire].concat());
        assert_eq!(payloads[0], 0u32.to_be_bytes(), "the frame begun is finished");
        assert_eq!(payloads[1], b"heartbeat", "then the urgent one, before 9,999 bulk frames");
        assert_eq!(payloads.len(), 10_001);
    }
}
