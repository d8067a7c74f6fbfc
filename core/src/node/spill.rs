//! The node's side of spilling groups' in-flight state (`group::spill`): when the groups'
//! state passes `group_state_bytes_max`, the oldest chunk that can go of the group holding
//! most is written to the shard's scratch spill file, one write at a time, until they are
//! under it again; chunks come back with a read when an ack, an ack deadline or a member
//! leaving needs them.
//!
//! The file is cut in slots of one chunk each, reused once their chunk is back (the file is as
//! large as the most chunks out at once). It holds nothing a restart needs: the shell empties
//! it at start. A failed write keeps the chunk in memory (spilling pauses a while); a failed or
//! damaged read stops the node loudly: what was in flight is rebuilt from the log at restart,
//! and redelivered (at-least-once).

use super::{DiskError, DiskOp, GroupIdx, Node, Output, Timer, TopicIdx, Trace};
use crate::group::{spilled_chunk_bytes, Released};
use std::collections::{BTreeMap, BTreeSet};

/// How often the node compares its groups' state with `group_state_bytes_max`.
pub(super) const SPILL_CHECK_NS: u64 = 100 * super::NS_PER_MS;

/// How long spilling pauses after a failed write.
const SPILL_PAUSE_NS: u64 = 1_000 * super::NS_PER_MS;

#[derive(Debug, Default)]
pub(super) struct Spills {
    /// The file slot of every spill written or being written, by serial.
    slots: BTreeMap<u64, u64>,
    free_slots: BTreeSet<u64>,
    next_slot: u64,
    next_serial: u64,
    /// Disk operations under way: token → (topic, group, serial).
    writes: BTreeMap<u64, (TopicIdx, GroupIdx, u64)>,
    reads: BTreeMap<u64, (TopicIdx, GroupIdx, u64)>,
    paused_until_ns: u64,
}

impl Node {
    /// Spilling is on: a budget is set and the node is not in a cluster (whose leaders change
    /// and install states; not spilled yet).
    pub(super) fn spilling(&self) -> bool {
        self.config.group_state_bytes_max > 0 && self.config.peers.is_empty()
    }

    fn slot_bytes(&self) -> usize {
        spilled_chunk_bytes(self.config.group_state_chunk_entries as usize)
    }

    /// Periodic check (`Timer::SpillCheck`).
    pub(super) fn on_spill_check(&mut self) {
        self.maybe_spill();
        self.timers.insert((self.now_ns + SPILL_CHECK_NS, Timer::SpillCheck));
    }

    /// Spills one chunk if the groups' state is over budget and no spill write is under way.
    fn maybe_spill(&mut self) {
        if !self.spilling() || self.stopped || !self.spills.writes.is_empty() || self.now_ns < self.spills.paused_until_ns {
            return;
        }
        let mut by_size: Vec<(usize, TopicIdx, GroupIdx)> = Vec::new();
        for (t, topic) in self.state.topics.iter().enumerate() {
            for (g, group) in topic.groups.iter().enumerate().filter(|(_, group)| !group.dropped) {
                by_size.push((group.state_bytes(), TopicIdx(t), GroupIdx(g)));
            }
        }
        let total: usize = by_size.iter().map(|(bytes, ..)| bytes).sum();
        if total as u64 <= self.config.group_state_bytes_max {
            return;
        }
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        let serial = self.spills.next_serial;
        for (_, t, g) in by_size {
            if let Some(data) = self.state.topics[t].groups[g].spill_one(serial, self.now_ns) {
                self.spills.next_serial += 1;
                let slot = self.spills.free_slots.pop_first().unwrap_or_else(|| {
                    self.spills.next_slot += 1;
                    self.spills.next_slot - 1
                });
                self.spills.slots.insert(serial, slot);
                let token = self.next_token;
                self.next_token += 1;
                self.spills.writes.insert(token, (t, g, serial));
                let offset = slot * self.slot_bytes() as u64;
                self.out.push_back(Output::Disk(DiskOp::SpillWrite { token, shard: self.config.shard_index, offset, data }));
                return;
            }
        }
    }

    /// A write done: true if it was a spill's.
    pub(super) fn on_spill_written(&mut self, token: u64, result: &Result<(), DiskError>) -> bool {
        let Some((t, g, serial)) = self.spills.writes.remove(&token) else { return false };
        match result {
            Ok(()) => {
                if !self.state.topics[t].groups[g].spill_written(serial) {
                    self.free_spill_slot(serial);
                }
                self.maybe_spill();
            }
            Err(error) => {
                self.spills.paused_until_ns = self.now_ns + SPILL_PAUSE_NS;
                self.out.push_back(Output::Trace(Trace::SpillFailed { error: error.clone() }));
                let copy = self.state.topics[t].groups[g].spill_stub_mut(serial).and_then(|stub| stub.unwritten.take());
                match copy {
                    Some(bytes) => self.finish_load(t, g, serial, &bytes),
                    None => self.free_spill_slot(serial),
                }
            }
        }
        true
    }

    /// Asks for spill `serial` of group `g` to be brought back; true if it is back already
    /// (its write had not finished: its copy was still in memory).
    pub(super) fn load_spill(&mut self, t: TopicIdx, g: GroupIdx, serial: u64) -> bool {
        let Some(stub) = self.state.topics[t].groups[g].spill_stub_mut(serial) else { return false };
        if let Some(bytes) = stub.unwritten.take() {
            self.finish_load(t, g, serial, &bytes);
            return true;
        }
        if stub.loading {
            return false;
        }
        stub.loading = true;
        let Some(&slot) = self.spills.slots.get(&serial) else { unreachable!("a spill written has a slot") };
        let token = self.next_token;
        self.next_token += 1;
        self.spills.reads.insert(token, (t, g, serial));
        let (offset, len) = (slot * self.slot_bytes() as u64, self.slot_bytes() as u32);
        self.out.push_back(Output::Disk(DiskOp::SpillRead { token, shard: self.config.shard_index, offset, len }));
        false
    }

    /// A read done: true if it was a spill's.
    pub(super) fn on_spill_read(&mut self, token: u64, result: &Result<&[u8], DiskError>) -> bool {
        let Some((t, g, serial)) = self.spills.reads.remove(&token) else { return false };
        match result {
            Ok(bytes) => self.finish_load(t, g, serial, bytes),
            Err(error) => {
                let slot = self.spills.slots.get(&serial).copied().unwrap_or_default();
                self.stop(format!("the in-flight spill file could not be read (slot {slot}): {error:?}; a restart rebuilds what was in flight from the log"));
            }
        }
        true
    }

    /// Spill `serial` of group `g` is read (or taken from its copy): its group takes it back,
    /// the windows its noted acks free open, and the group's expiries go on.
    fn finish_load(&mut self, t: TopicIdx, g: GroupIdx, serial: u64, bytes: &[u8]) {
        let outcome = self.state.topics[t].groups[g].load_spill(serial, bytes, self.now_ns, self.config.test_bug);
        let slot = self.spills.slots.get(&serial).copied().unwrap_or_default();
        self.free_spill_slot(serial);
        match outcome {
            Ok(Some(windows)) => {
                for Released { conn, bytes } in windows {
                    self.release_in_flight(conn, t, g, bytes);
                }
                self.mark_group_dirty(t, g);
            }
            // A reset or drop let go of it meanwhile: the expiries that waited for it go on.
            Ok(None) => {}
            Err(why) => {
                return self.stop(format!("the in-flight spill file is damaged (slot {slot}): {why}; a restart rebuilds what was in flight from the log"));
            }
        }
        if let Some(next_ns) = self.state.topics[t].groups[g].ack_deadlines.next_ns() {
            self.timers.insert((next_ns.max(self.now_ns), Timer::AckDeadline { topic: t, group: g }));
        }
        self.pump(t, g);
        self.maybe_flush();
    }

    /// Bytes of the spill file's slots in use.
    pub(super) fn spilled_bytes(&self) -> u64 {
        (self.spills.slots.len() * self.slot_bytes()) as u64
    }

    /// Spill `serial`'s slot may be written again, unless a write or read of it is under way.
    pub(super) fn free_spill_slot(&mut self, serial: u64) {
        let busy = self.spills.writes.values().chain(self.spills.reads.values()).any(|(_, _, s)| *s == serial);
        if !busy {
            if let Some(slot) = self.spills.slots.remove(&serial) {
                self.spills.free_slots.insert(slot);
            }
        }
    }
}
