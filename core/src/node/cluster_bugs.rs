//! Deliberate slips of cluster mode (`TestBug`), kept apart so that the real path stays plain:
//! each serves clients something raft has not committed, which the simulator's clients must
//! notice.
//!
//! - `PubackOnLeaderFsync`: `puback` once the leader's own write of the entry is durable,
//!   before a majority has it; a leader cut off or crashed then loses a pubacked message.
//! - `IdsAssignedAtPropose`: the `puback` carries the id the leader expected when proposing,
//!   which a leader change or a deduplicated retry makes another message's.
//! - `FollowerDeliversUncommitted`: a follower applies entries as soon as it writes them, so
//!   the deliveries by reference it builds come from them: an earlier leader's entry never
//!   committed gives its id (and every later one on that node) another message.

use super::replication::Proposal;
use super::Node;
use crate::cluster::command::{self, Command};
use crate::config::TestBug;
use crate::protocol;
use raft::eraftpb::{Entry, EntryType};
use std::collections::BTreeMap;

#[derive(Default)]
pub(in crate::node) struct BugState {
    /// Per topic name: the next id the leader expects to give.
    predicted_next: BTreeMap<String, u64>,
    /// The id expected for each (producer, seq) proposed: a retry expects its original's.
    predicted_seqs: BTreeMap<(String, u64), u64>,
    /// (write number, proposal number, topic) of this node's publishes in raft writes not
    /// yet durable.
    early_pubacks: Vec<(u64, u64, String)>,
}

impl Node {
    fn cluster_id_bug(&self) -> bool {
        matches!(self.config.test_bug, Some(TestBug::PubackOnLeaderFsync | TestBug::IdsAssignedAtPropose))
    }

    /// The id the leader expects a publish to `topic` to get (with one of the bugs on): the
    /// original's for a (producer, seq) seen before, else the next after those it expects.
    pub(super) fn predict_id(&mut self, topic: &str, producer: Option<(&str, u64)>) -> Option<u64> {
        if !self.cluster_id_bug() {
            return None;
        }
        if let Some((name, seq)) = producer {
            if let Some(seen) = self.state.producers.get(name).and_then(|p| p.seqs.get(&seq)) {
                return Some(seen.id);
            }
            if let Some(id) = self.replication.as_ref()?.bugs.predicted_seqs.get(&(name.to_string(), seq)) {
                return Some(*id);
            }
        }
        let applied_next = self.topic_next_id(topic).unwrap_or(1);
        let bugs = &mut self.replication.as_mut()?.bugs;
        let next = bugs.predicted_next.entry(topic.to_string()).or_insert(applied_next);
        *next = (*next).max(applied_next);
        let id = *next;
        *next += 1;
        if let Some((name, seq)) = producer {
            bugs.predicted_seqs.insert((name.to_string(), seq), id);
        }
        Some(id)
    }

    /// Notes which of this node's publishes the raft write `number` holds.
    pub(super) fn note_early_pubacks(&mut self, number: u64, entries: &[Entry]) {
        if self.config.test_bug != Some(TestBug::PubackOnLeaderFsync) {
            return;
        }
        let Some(replication) = self.replication.as_mut() else { return };
        for entry in entries {
            let Some(proposal) = replication.own_number(&entry.context) else { continue };
            if let Ok(Command::Publish(publish)) = command::decode(&entry.data) {
                replication.bugs.early_pubacks.push((number, proposal, publish.topic.to_string()));
            }
        }
    }

    /// The raft write `number` is durable here: its publishes are answered now.
    pub(super) fn send_early_pubacks(&mut self, number: u64) {
        let Some(replication) = self.replication.as_mut() else { return };
        let (due, later): (Vec<_>, Vec<_>) = replication.bugs.early_pubacks.drain(..).partition(|(write, _, _)| *write <= number);
        replication.bugs.early_pubacks = later;
        for (_, proposal, topic) in due {
            let Some(replication) = self.replication.as_mut() else { return };
            let Some(Proposal::Publish { conn, req, predicted_id: Some(id), .. }) = replication.proposals_mut().remove(&proposal) else { continue };
            self.pending_publishes -= 1;
            let mut frame = String::new();
            protocol::encode_puback(&mut frame, req.as_deref(), &topic, id);
            self.send(conn, frame);
        }
    }

    /// `FollowerDeliversUncommitted`: a follower applies the entries it writes at once, as
    /// if committed, so deliveries by reference are built from them (`apply_entry` then skips
    /// what raft hands over later, applied already or not).
    pub(super) fn apply_uncommitted(&mut self, entries: &[Entry]) {
        if self.config.test_bug != Some(TestBug::FollowerDeliversUncommitted) || self.replication.as_ref().is_none_or(|r| r.is_leader()) {
            return;
        }
        for entry in entries {
            if entry.index > self.state.applied.map_or(0, |a| a.index) && entry.entry_type == EntryType::EntryNormal {
                self.apply_entry(entry.index, entry.term, &entry.data, &entry.context);
            }
        }
    }

    /// With `FollowerDeliversUncommitted`, an entry at or below the applied index was taken
    /// already (or another one at its index was).
    pub(super) fn applied_early(&self, index: u64) -> bool {
        self.config.test_bug == Some(TestBug::FollowerDeliversUncommitted) && index <= self.state.applied.map_or(0, |a| a.index)
    }
}
