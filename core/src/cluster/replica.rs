//! One replica of one shard's raft group, in the node's shape: `handle_input`,
//! `handle_timeout`, `poll_output`, `poll_timeout`, time passed in. Consensus is the tikv
//! `raft` crate's `RawNode`; this type only turns its `Ready`s into outputs (messages to send,
//! writes to make durable, committed entries to apply) and completions back into it.
//!
//! Persistence is asynchronous: each ready becomes one `Persist` output, which the caller makes
//! durable in order and reports with `Persisted`; messages raft may send only after that
//! (votes, append responses) wait for it. Entries are readable by raft from its storage as soon
//! as the ready is taken (`advance_append_async` requires it), durable or not.
//!
//! Determinism: raft-rs draws its randomized election timeout from `thread_rng`; the replica
//! pins that draw (`max_election_tick = election_ticks + 1`) and jitters its own tick interval
//! from a seeded ChaCha rng instead, so one seed gives one run.

use crate::cluster::storage::{LogStorage, Wanted};
use crate::cluster::NodeId;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message};
use raft::{RawNode, StateRole};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;

/// Entries read back from disk kept for sends to followers: two messages' worth.
const FETCHED_BYTES_MAX: u64 = 2 * super::RAFT_MESSAGE_BYTES as u64;

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub id: NodeId,
    /// Every voter of the group, this replica included.
    pub voters: Vec<NodeId>,
    /// Mean time between ticks; each interval is drawn from half to one and a half of it.
    pub tick_ns: u64,
    /// Ticks without a leader's word before a follower stands for election.
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Seeds the tick jitter (the caller's randomness, like time).
    pub seed: u64,
    /// The voter this group would rather have lead (so that the leaders of a process's
    /// shards spread over the nodes): another leader hands over to it once it has every
    /// entry. `None`: whoever wins an election leads.
    pub preferred_leader: Option<NodeId>,
}

/// Ticks between two attempts to hand leadership to the preferred voter (a transfer that
/// did not take holds proposals for an election timeout: never try again at once).
const TRANSFER_RETRY_TICKS: u64 = 40;

/// What a replica restarts from: the log as its earlier runs made it durable, its entries
/// known by term and only the newest of them in memory.
pub struct RestartLog {
    pub hard_state: HardState,
    /// The entry the state machine's snapshot is as of (index, term): the log starts after it.
    pub compacted: (u64, u64),
    /// (index, term) of every entry after `compacted`, in order.
    pub terms: Vec<(u64, u64)>,
    /// The newest entries (the last ones `terms` names), every one after `applied` among them.
    pub tail: Vec<Entry>,
    /// The state machine holds every entry up to here (the caller applied those after
    /// `compacted`); raft hands the committed ones after it over to be applied.
    pub applied: u64,
}

#[derive(Debug)]
pub enum ReplicaInput {
    /// A raft message from a peer.
    Message(Message),
    /// The `Persist` output of this number, and every earlier one, is durable.
    Persisted { number: u64 },
}

#[derive(Debug)]
pub enum ReplicaOutput {
    /// Send to the peer `msg.to`.
    Send(Message),
    /// Make these entries and this hard state durable, in the order of `number`, then report
    /// `Persisted { number }`. Entries may overwrite an uncommitted suffix from their first
    /// index on.
    Persist { number: u64, entries: Vec<Entry>, hard_state: Option<HardState> },
    /// The leader's state as of entry `index` (`data`: its snapshot records): replaces this
    /// replica's state and log; comes before the `Persist` of the same ready, which makes it
    /// durable with it.
    Install { index: u64, term: u64, data: Vec<u8> },
    /// A committed entry, in log order: apply it. Empty entries (a new leader's first) come too.
    /// `context` is what its proposer gave with it (how it finds its own proposals).
    Apply { index: u64, term: u64, data: Vec<u8>, context: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader takes proposals; `leader` is the one this replica knows of, if any.
    NotLeader { leader: Option<NodeId> },
    /// Raft refused it (e.g. a leader transfer is under way).
    Refused(String),
}

pub struct Replica {
    raw: RawNode<LogStorage>,
    out: VecDeque<ReplicaOutput>,
    /// Messages raft may send once the ready of that number is durable.
    after_persist: VecDeque<(u64, Vec<Message>)>,
    next_tick_ns: u64,
    tick_ns: u64,
    rng: ChaCha8Rng,
    /// (ready number, index) of installed snapshots, applied once that ready is durable.
    installed_at: VecDeque<(u64, u64)>,
    preferred_leader: Option<NodeId>,
    /// Ticks taken so far, and the tick before which no transfer is tried.
    ticks: u64,
    next_transfer_tick: u64,
}

impl Replica {
    /// A replica that has never run: an empty log, no vote.
    pub fn new(config: &ReplicaConfig, now_ns: u64) -> Result<Replica, String> {
        Replica::recover(config, now_ns, HardState::default(), &[], (0, 0))
    }

    /// A replica restarting from what its earlier runs made durable (every `Persist` it
    /// reported: the last hard state and the log's entries, later writes of an index winning),
    /// over a state machine that holds the entries up to `applied` (index, term): the committed
    /// entries after it come out to be applied again. Entries must follow on from `applied`
    /// without a gap (those up to it are dropped).
    pub fn recover(config: &ReplicaConfig, now_ns: u64, hard_state: HardState, entries: &[Entry], applied: (u64, u64)) -> Result<Replica, String> {
        let tail: Vec<Entry> = entries.iter().filter(|e| e.index > applied.0).cloned().collect();
        let terms = tail.iter().map(|e| (e.index, e.term)).collect();
        Replica::restart(config, now_ns, RestartLog { hard_state, compacted: applied, terms, tail, applied: applied.0 })
    }

    /// A replica restarting from `log` (see `RestartLog`): the entries up to `log.applied`
    /// stay on disk, read back when a follower needs them.
    pub fn restart(config: &ReplicaConfig, now_ns: u64, log: RestartLog) -> Result<Replica, String> {
        let RestartLog { mut hard_state, compacted, terms, tail, applied } = log;
        if !config.voters.contains(&config.id) {
            return Err(format!("node {} is not among the voters {:?}", config.id.0, config.voters));
        }
        let raft_config = raft::Config {
            id: config.id.0,
            applied,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            min_election_tick: config.election_ticks,
            max_election_tick: config.election_ticks + 1,
            max_size_per_msg: super::RAFT_MESSAGE_BYTES as u64,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        raft_config.validate().map_err(|e| format!("raft config: {e}"))?;
        let voters: Vec<u64> = config.voters.iter().map(|v| v.0).collect();
        let conf_state = ConfState::from((voters, Vec::<u64>::new()));
        for (expected, (index, _)) in (compacted.0 + 1..).zip(&terms) {
            if *index != expected {
                return Err(format!("the raft log lacks entry {expected} (it goes on at {index}): entries the state does not hold are missing"));
            }
        }
        let last_index = terms.last().map_or(compacted.0, |(index, _)| *index);
        if applied < compacted.0 || applied > last_index || tail.first().is_some_and(|e| e.index > applied + 1) {
            return Err(format!("entries {}..={last_index} are not all in memory or applied (applied: {applied})", compacted.0 + 1));
        }
        // Applied entries were committed, whatever the last hard state written says.
        hard_state.commit = hard_state.commit.max(applied);
        hard_state.term = hard_state.term.max(compacted.1);
        // The log before the compacted entry is in the state machine: raft's log starts after it.
        let mut storage = LogStorage::new(conf_state, hard_state, compacted, FETCHED_BYTES_MAX);
        storage.restore(&terms, tail).map_err(|e| format!("recovered entries do not follow one another: {e}"))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_config, storage, &logger).map_err(|e| format!("raft: {e}"))?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let first_tick = now_ns + rng.gen_range(config.tick_ns / 2..config.tick_ns * 3 / 2 + 1);
        let mut replica = Replica {
            raw,
            out: VecDeque::new(),
            after_persist: VecDeque::new(),
            next_tick_ns: first_tick,
            tick_ns: config.tick_ns,
            rng,
            installed_at: VecDeque::new(),
            preferred_leader: config.preferred_leader.filter(|preferred| config.voters.contains(preferred)),
            ticks: 0,
            next_transfer_tick: TRANSFER_RETRY_TICKS,
        };
        if config.voters == [config.id] {
            // Alone, it needs nobody's vote: lead at once rather than after an election timeout.
            replica.raw.campaign().map_err(|e| format!("raft: {e}"))?;
        }
        // The entries its log says are committed come out to be applied now, before the node
        // writes a snapshot of its state (a restart starts a segment): not at the first tick.
        replica.drain_ready();
        Ok(replica)
    }

    pub fn id(&self) -> NodeId {
        NodeId(self.raw.raft.id)
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<NodeId> {
        let leader = self.raw.raft.leader_id;
        (leader != raft::INVALID_ID).then_some(NodeId(leader))
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Leads, and has applied an entry of its own term, so everything earlier leaders
    /// committed (the entry it appended on election comes after all of it): reads from it miss
    /// nothing acknowledged. Entries of its own term committed but not applied yet (on its
    /// followers' disks before its own) do not count against it: it proposed them, and what
    /// they acknowledge is answered when they apply here.
    pub fn is_caught_up_leader(&self) -> bool {
        let log = &self.raw.raft.raft_log;
        self.is_leader() && log.term(log.applied).is_ok_and(|term| term == self.raw.raft.term)
    }

    /// The last entry applied.
    pub fn applied(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Proposes `data` as the next entry; it comes back as `Apply` once committed.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ProposeError> {
        self.propose_with_context(Vec::new(), data)
    }

    /// Proposes `data` with `context`, which comes back with its `Apply`.
    pub fn propose_with_context(&mut self, context: Vec<u8>, data: Vec<u8>) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { leader: self.leader() });
        }
        self.raw.propose(context, data).map_err(|e| ProposeError::Refused(e.to_string()))?;
        self.drain_ready();
        Ok(())
    }

    pub fn handle_input(&mut self, _now_ns: u64, input: ReplicaInput) {
        match input {
            // A message for another group member or from a stale incarnation is refused by
            // raft with an error that changes nothing: dropping it is what the network could do.
            ReplicaInput::Message(message) => {
                let _ = self.raw.step(message);
            }
            ReplicaInput::Persisted { number } => {
                while self.after_persist.front().is_some_and(|(n, _)| *n <= number) {
                    let (_, messages) = self.after_persist.pop_front().expect("checked above");
                    self.out.extend(messages.into_iter().map(ReplicaOutput::Send));
                }
                self.raw.on_persist_ready(number);
                // A state installed from the leader counts as applied once durable.
                while self.installed_at.front().is_some_and(|(n, _)| *n <= number) {
                    let (_, index) = self.installed_at.pop_front().expect("checked above");
                    if self.raw.raft.raft_log.applied < index {
                        self.raw.advance_apply_to(index);
                    }
                }
            }
        }
        self.drain_ready();
    }

    pub fn handle_timeout(&mut self, now_ns: u64) {
        if self.next_tick_ns <= now_ns {
            // One tick however late: like a Go ticker (etcd's), ticks missed while the loop
            // was busy are dropped. Taken all at once they would run out an election timeout
            // before the messages that came meanwhile (the leader's heartbeats) are read.
            self.raw.tick();
            self.ticks += 1;
            let interval = self.rng.gen_range(self.tick_ns / 2..self.tick_ns * 3 / 2 + 1);
            self.next_tick_ns = (self.next_tick_ns + interval).max(now_ns + interval / 2);
        }
        self.hand_over_to_preferred();
        self.drain_ready();
    }

    /// Leading, while the preferred voter is live and has every entry: leadership goes to it
    /// (raft's transfer: it stands for election at once and wins, its log being complete).
    fn hand_over_to_preferred(&mut self) {
        let Some(preferred) = self.preferred_leader else { return };
        if !self.is_leader() || preferred == self.id() || self.ticks < self.next_transfer_tick || self.raw.raft.lead_transferee.is_some() {
            return;
        }
        let last_index = self.raw.raft.raft_log.last_index();
        let caught_up = self.raw.raft.prs().get(preferred.0).is_some_and(|p| p.recent_active && p.matched == last_index);
        if caught_up {
            self.next_transfer_tick = self.ticks + TRANSFER_RETRY_TICKS;
            self.raw.transfer_leader(preferred.0);
        }
    }

    /// Keeps at most `budget_bytes` of applied entries in memory (the newest); the rest are
    /// read back from disk when a follower needs them (`take_wanted`, `entries_fetched`).
    pub fn trim_memory(&mut self, budget_bytes: u64) {
        let applied = self.raw.raft.raft_log.applied;
        self.raw.mut_store().trim_memory(applied, budget_bytes);
    }

    /// Bytes of entries the replica holds in memory.
    pub fn memory_bytes(&self) -> u64 {
        self.raw.store().memory_bytes()
    }

    /// Retention deleted every entry up to `index` (applied): the log starts after it.
    pub fn compact_to(&mut self, index: u64) -> Result<(), String> {
        let index = index.min(self.raw.raft.raft_log.applied);
        self.raw.mut_store().compact_to(index)
    }

    /// The state as of the log's compacted point, read back for followers (see `LogStorage`).
    pub fn set_snapshot_data(&mut self, index: u64, data: Vec<u8>) {
        self.raw.mut_store().set_snapshot_data(index, data);
    }

    /// The entry a snapshot would be as of: (index, term).
    pub fn compacted(&self) -> (u64, u64) {
        self.raw.store().compacted()
    }

    /// Followers behind the log's first entry that raft tried to catch up since the last call.
    pub fn take_snapshot_wanted(&mut self) -> Vec<u64> {
        self.raw.store().take_snapshot_wanted()
    }

    /// Ranges of entries raft waits to have read back from disk.
    pub fn take_wanted(&mut self) -> Vec<Wanted> {
        self.raw.store().take_wanted()
    }

    /// Entries read back for a wanted range: raft goes on with the send that waited.
    pub fn entries_fetched(&mut self, entries: Vec<Entry>, context: raft::GetEntriesContext) {
        self.raw.store().put_fetched(entries);
        self.raw.on_entries_fetched(context);
        self.drain_ready();
    }

    pub fn poll_output(&mut self) -> Option<ReplicaOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        Some(self.next_tick_ns)
    }

    /// Turns every ready raft has into outputs.
    fn drain_ready(&mut self) {
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            self.out.extend(ready.take_messages().into_iter().map(ReplicaOutput::Send));
            if !ready.snapshot().is_empty() {
                let snapshot = ready.snapshot();
                let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
                let data = snapshot.data.to_vec();
                self.raw.mut_store().install(index, term);
                self.out.push_back(ReplicaOutput::Install { index, term, data });
                self.installed_at.push_back((ready.number(), index));
            }
            let mut last_applied = None;
            for entry in ready.take_committed_entries() {
                last_applied = Some(entry.index);
                self.apply(entry);
            }
            let entries = ready.take_entries();
            let hard_state = ready.hs().cloned();
            let store = self.raw.mut_store();
            store.append(&entries).expect("raft hands out entries that follow the log");
            if let Some(hs) = &hard_state {
                store.set_hard_state(hs.clone());
            }
            let number = ready.number();
            let later = ready.take_persisted_messages();
            if !later.is_empty() {
                self.after_persist.push_back((number, later));
            }
            self.out.push_back(ReplicaOutput::Persist { number, entries, hard_state });
            self.raw.advance_append_async(ready);
            if let Some(index) = last_applied {
                self.raw.advance_apply_to(index);
            }
        }
    }

    fn apply(&mut self, entry: Entry) {
        match entry.entry_type {
            EntryType::EntryNormal => self.out.push_back(ReplicaOutput::Apply { index: entry.index, term: entry.term, data: entry.data.to_vec(), context: entry.context.to_vec() }),
            // Membership changes come with adding and removing nodes (not yet): the voters are
            // fixed at creation.
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {}
        }
    }
}
