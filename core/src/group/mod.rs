//! One consumer group on one topic: which messages are outstanding, to whom, and in what order.
//!
//! The group walks the topic with a `cursor`. Every filter-passing id it has passed and that is
//! not yet acked has an entry in `outstanding`. The group's persisted position (`floor`) is
//! derived: everything filter-passing at or below it is acked. Entries hold the `prev` of their
//! message so redeliveries carry the same `prev` as the first delivery.
//!
//! Per-key order: at most one entry per key hash is deliverable (ready, delayed, in flight);
//! later ones of that key wait as `Blocked` until it is acked.

mod coalescing;
mod key_order;
mod spill;
mod terms;

pub use spill::{spilled_chunk_bytes, LetGo, SpillStub};
pub use terms::GroupTerms;

use crate::ack_deadlines::AckDeadlines;
use crate::config::TestBug;
use crate::outstanding::Outstanding;
use crate::protocol::Filter;
use crate::record::{GroupRecord, GroupRecordRef};
use key_order::KeyOrder;
use std::collections::{BTreeMap, BTreeSet};

use crate::ids::ConnId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    Blocked,
    Ready { attempts: u32 },
    Delayed { attempts: u32, until_ns: u64 },
    InFlight { conn: ConnId, attempts: u32, deadline_ns: u64 },
    DeadLettering { attempts: u32 },
    Acked,
}

/// One outstanding message: 40 bytes (with its id, 48 in `Outstanding`). Its `prev` is not
/// kept: it is the id kept before it (every filter-passing id from the floor up is kept, acked
/// or not), or for the first, `Group::first_prev`.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// `key_hash` of its key, `NO_KEY` without one.
    key: u64,
    state: EntryState,
    /// Bytes the message counts against the window of the connection it is in flight to.
    bytes: u32,
}

/// `Entry::key` of a message without a key (a key that hashes to it is taken as 1).
const NO_KEY: u64 = 0;

fn key_of(key_hash: Option<u64>) -> u64 {
    key_hash.map_or(NO_KEY, |hash| hash.max(1))
}

/// What an ack or nack took off a connection: the message was in flight to `conn`, counting
/// `bytes` against its byte window (its ack deadline needs no cancelling: `AckDeadlines`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    pub conn: ConnId,
    pub bytes: u32,
}

/// Where one message stands in a group (for traces).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdPosition {
    /// Below the id the group started at: never its to deliver.
    BeforeStart,
    /// The group has not reached it yet.
    NotReached,
    /// Held unacked: blocked behind its key, ready, delayed, in flight or being dead-lettered.
    Held(EntryState),
    /// Done with: acked, filtered out, or dead-lettered.
    Settled,
    /// In flight or acked, its state spilled to disk (`spill`).
    Spilled,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Candidate {
    /// A redelivery (or a message unblocked by its key), with its delivery count so far.
    Ready {
        id: u64,
        attempts: u32,
    },
    Fresh {
        id: u64,
    },
    Nothing,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Filtered,
    Blocked,
    Deliverable,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// It was in flight when `released` says so (its connection's window has room again).
    Acked { released: Option<Released> },
    /// Already acked, filtered out, or never deliverable: nothing to do.
    Ignored,
    /// Its entry is spilled (`serial`): the ack is noted, and done when the chunk is back.
    Spilled { serial: u64 },
    /// The id was never handed out by this group.
    Unknown,
}

/// Acked ids above the floor written per group record; past it the extra acks are dropped
/// (at-least-once: those messages may be redelivered after a restart).
pub const PERSISTED_ACKS_MAX: usize = 4096;

/// An entry of a B-tree set or map of small keys, with its share of the tree's nodes (an
/// estimate: nodes are 2/3 full on average).
const SET_ENTRY_BYTES: usize = 32;

pub fn key_hash(key: &str) -> u64 {
    // FNV-1a: fixed, so a replayed seed hashes the same; collisions only add ordering.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub terms: GroupTerms,
    pub start_id: u64,
    pub ack_timeout_ns: u64,
    pub max_attempts: u32,
    cursor: u64,
    last_passed: u64,
    outstanding: Outstanding<Entry, SpillStub>,
    /// Chunks brought back from disk (by first id) and when they may be spilled again: not
    /// within an ack timeout, so acks to one chunk do not send it back and forth.
    spill_cooldown: BTreeMap<u64, u64>,
    /// Spills something noted on needs back (`take_wanted_spills`).
    wanted_spills: Vec<u64>,
    /// The `prev` of the first outstanding entry: the filter-passing id before it.
    first_prev: u64,
    ready: BTreeSet<u64>,
    keys: KeyOrder,
    /// Coalescing groups: when each unacked message with a key was stored (ms).
    stored_ms: BTreeMap<u64, u64>,
    /// Messages coalesced since the node last took them (`take_coalesced`).
    coalesced: Vec<u64>,
    /// Entries in flight, and entries acked but kept (above the floor): counted as they change,
    /// so metrics and position records need not walk ten million entries.
    in_flight: usize,
    acked_held: usize,
    /// Connections that may receive: subscribed, or with a pull open. Order is join order.
    pub members: Vec<ConnId>,
    pub next_member: usize,
    /// A record of the group has been written durably: members may join without waiting
    /// for a write (a restart will not forget the group or move its start).
    pub durable: bool,
    /// Ids at or past the cursor that a replicated position says are acked: settled when the
    /// cursor reaches them instead of delivered (cluster mode).
    pre_acked: BTreeSet<u64>,
    /// Cluster mode, on a leader that took the group over: any id past the cursor may have
    /// been delivered by the leader before it, so an ack of one (of an id the topic has) is
    /// taken, settled when the cursor gets there, rather than refused as never delivered.
    taken_over: bool,
    /// What happened to its messages since the process started (for metrics).
    pub counters: GroupCounters,
    /// When what is in flight times out, earliest first.
    pub ack_deadlines: AckDeadlines,
    /// An operator dropped it: its slot stays (indexes of later groups keep their meaning),
    /// empty, out of its topic's index, never written again; a restart forgets it.
    pub dropped: bool,
    /// Operator resets so far (`GroupRecord::resets`).
    pub resets: u64,
    /// An operator paused its deliveries (until resumed, on this node, while it runs): what is
    /// in flight may still be acked; nothing more is handed out.
    pub paused: bool,
}

/// What `Group::dispatch` tells the node.
#[derive(Debug, PartialEq, Eq)]
pub struct Dispatched {
    pub attempt: u32,
    pub prev: u64,
    /// The group had no other deadline pending: its timer is to be set for this one.
    pub arm_timer: bool,
}

/// A group's counts since the process started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupCounters {
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub dead_lettered: u64,
    pub coalesced: u64,
}

impl Group {
    pub fn new(name: String, terms: GroupTerms, start_id: u64, ack_timeout_ns: u64, max_attempts: u32) -> Group {
        assert!(start_id >= 1, "ids start at 1");
        Group {
            name,
            terms,
            stored_ms: BTreeMap::new(),
            coalesced: Vec::new(),
            in_flight: 0,
            acked_held: 0,
            spill_cooldown: BTreeMap::new(),
            wanted_spills: Vec::new(),
            start_id,
            ack_timeout_ns,
            max_attempts,
            cursor: start_id,
            last_passed: 0,
            dropped: false,
            resets: 0,
            paused: false,
            outstanding: Outstanding::default(),
            first_prev: 0,
            ready: BTreeSet::new(),
            keys: KeyOrder::default(),
            members: Vec::new(),
            next_member: 0,
            durable: false,
            pre_acked: BTreeSet::new(),
            taken_over: false,
            counters: GroupCounters::default(),
            ack_deadlines: AckDeadlines::default(),
        }
    }

    /// Restores the persisted position; the caller then replays ids up to the highest acked one.
    pub fn restore(record: &GroupRecord, ack_timeout_ns: u64, max_attempts: u32) -> Group {
        let terms = GroupTerms { filter: record.filter.clone().and_then(Filter::from_json), coalesce_ms: record.coalesce_ms };
        let mut group = Group::new(record.group.clone(), terms, record.start_id.max(1), ack_timeout_ns, max_attempts);
        group.cursor = (record.floor + 1).max(group.start_id);
        group.last_passed = record.floor_prev;
        group.durable = true;
        group.resets = record.resets;
        group
    }

    /// The unacked ids a replicated position settles (at or below its floor, or in its acked
    /// list), in order: the caller acks each, so what is in flight is released.
    pub fn settled_by(&self, record: &GroupRecord) -> Vec<u64> {
        let acked: BTreeSet<u64> = record.acked.iter().copied().collect();
        self.outstanding.iter().filter(|(id, e)| e.state != EntryState::Acked && (*id <= record.floor || acked.contains(id))).map(|(id, _)| id).collect()
    }

    /// Takes a replicated position's ids not yet walked: the cursor moves past its floor, and
    /// its acked ids beyond are settled when the cursor reaches them. (Call after acking what
    /// `settled_by` listed.)
    pub fn take_position(&mut self, record: &GroupRecord) {
        if record.floor >= self.cursor {
            self.cursor = record.floor + 1;
            self.last_passed = record.floor_prev;
        }
        let cursor = self.cursor;
        self.pre_acked.extend(record.acked.iter().copied().filter(|id| *id >= cursor));
    }

    /// This node now leads the group's shard: ids past the cursor may have been delivered by
    /// an earlier leader (see `taken_over`; the caller refuses ids the topic does not have).
    pub fn take_over(&mut self) {
        self.taken_over = true;
    }

    /// True (once) if a replicated position (or an ack taken over) said `id` is acked.
    pub fn take_pre_acked(&mut self, id: u64) -> bool {
        !self.pre_acked.is_empty() && self.pre_acked.remove(&id)
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn outstanding_len(&self) -> usize {
        self.outstanding.len()
    }

    /// Heap bytes of what it tracks of its messages: entries and ack deadlines exactly, its
    /// sets and maps (ready ids, keys, coalescing times, ids settled ahead) at
    /// `SET_ENTRY_BYTES` an entry. What a budget of in-flight memory would bound.
    pub fn state_bytes(&self) -> usize {
        let set_entries = self.ready.len() + self.keys.keys_held() + self.stored_ms.len() + self.pre_acked.len() + self.spill_cooldown.len();
        self.outstanding.heap_bytes() + self.ack_deadlines.heap_bytes() + set_entries * SET_ENTRY_BYTES + self.stubs_bytes()
    }

    /// Messages of the topic (ids below `next_id`) not yet acked by the group: those it holds
    /// unacked and those it has not reached. (Ids its filter skips count until reached.)
    pub fn backlog(&self, next_id: u64) -> u64 {
        let unacked = (self.outstanding.len() - self.acked_held) as u64;
        unacked + next_id.saturating_sub(self.cursor)
    }

    /// The lowest id of the topic (below `next_id`) the group has not acked: held unacked, or
    /// the next it reaches.
    pub fn oldest_unacked(&self, next_id: u64) -> Option<u64> {
        let held = self.outstanding.iter().find(|(_, e)| e.state != EntryState::Acked).map(|(id, _)| id);
        // A spilled chunk has one in flight at least: its first id is near enough.
        let spilled = self.outstanding.stubs().next().map(|(first, _)| first);
        let oldest = match (held, spilled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        oldest.or((self.cursor < next_id).then_some(self.cursor))
    }

    /// Moves the group to `start_id` as if it began there (an operator's reset): everything it
    /// held is let go of, and what was in flight to whom returned, so the caller can free
    /// windows (and the spills' file space). The first delivery after it carries `prev` 0: the
    /// chain starts again.
    pub fn reset(&mut self, start_id: u64) -> LetGo {
        let (held, stubs) = self.outstanding.take_all();
        let mut let_go = LetGo::default();
        let mut add = |conn: ConnId, count: u32, bytes: u64| match let_go.in_flight.iter_mut().find(|(c, ..)| *c == conn) {
            Some((_, n, b)) => (*n, *b) = (*n + count, *b + bytes),
            None => let_go.in_flight.push((conn, count, bytes)),
        };
        for (_, entry) in held {
            if let EntryState::InFlight { conn, .. } = entry.state {
                add(conn, 1, u64::from(entry.bytes));
            }
        }
        for stub in &stubs {
            for (conn, count, bytes) in stub.in_flight_to() {
                add(conn, count, bytes);
            }
        }
        let_go.spills = stubs.iter().map(|stub| stub.serial).collect();
        (self.in_flight, self.acked_held) = (0, 0);
        self.spill_cooldown.clear();
        self.ready.clear();
        self.keys.clear();
        self.stored_ms.clear();
        self.pre_acked.clear();
        self.start_id = start_id.max(1);
        self.cursor = self.start_id;
        self.last_passed = 0;
        self.resets += 1;
        let_go
    }

    /// Where message `id` stands in this group.
    pub fn position_of(&self, id: u64) -> IdPosition {
        if id < self.start_id {
            return IdPosition::BeforeStart;
        }
        if id >= self.cursor {
            return IdPosition::NotReached;
        }
        if self.outstanding.is_spilled(id) {
            return IdPosition::Spilled;
        }
        match self.outstanding.get(id).map(|e| e.state) {
            None | Some(EntryState::Acked) => IdPosition::Settled,
            Some(state) => IdPosition::Held(state),
        }
    }

    /// Messages in flight to its members (delivered, waiting for an ack).
    pub fn in_flight_count(&self) -> usize {
        self.in_flight
    }

    /// (floor, prev at floor): everything filter-passing at or below `floor` is acked.
    pub fn floor(&self) -> (u64, u64) {
        match self.outstanding.first_id() {
            Some(id) => (id - 1, self.first_prev),
            None => (self.cursor - 1, self.last_passed),
        }
    }

    pub fn to_record(&self, topic: &str) -> GroupRecord {
        GroupRecord::from(self.record_ref(topic, self.acked_ids().collect()))
    }

    /// The group's position record, borrowed, with `acked` as its acked ids.
    fn record_ref<'a, A: serde::Serialize>(&'a self, topic: &'a str, acked: A) -> GroupRecordRef<'a, A> {
        let (floor, floor_prev) = self.floor();
        GroupRecordRef {
            topic,
            group: &self.name,
            filter: self.terms.filter.as_ref().map(Filter::to_json),
            start_id: self.start_id,
            floor,
            floor_prev,
            acked,
            resets: self.resets,
            coalesce_ms: self.terms.coalesce_ms,
        }
    }

    /// Acked ids above the floor (in spilled chunks too: acked when spilled, or since), as
    /// many as a record keeps.
    fn acked_ids(&self) -> impl Iterator<Item = u64> + '_ {
        // Taking no more than there are stops the walk at the last of them.
        let noted = if self.outstanding.spilled_chunks() > 0 { self.noted_acks() } else { 0 };
        let acked = self.outstanding.chunks().flat_map(|chunk| match chunk {
            Ok(held) => spill::OneOf::Held(held.iter().filter(|(_, e)| e.state == EntryState::Acked).map(|(id, _)| *id)),
            Err(stub) => spill::OneOf::Spilled(Group::stub_acked_ids(stub)),
        });
        acked.take((self.acked_held + noted).min(PERSISTED_ACKS_MAX))
    }

    /// Appends the group's position record to `out` (the bytes of `to_record`'s, without
    /// copying names or ids); returns its size.
    pub fn encode_record(&self, topic: &str, out: &mut Vec<u8>) -> usize {
        crate::record::encode_control(out, crate::record::KIND_GROUP, &self.record_ref(topic, AckedIds(self)))
    }

    pub fn passes(&self, key: Option<&str>, body: &str) -> bool {
        self.terms.filter.as_ref().is_none_or(|f| f.matches(key, body))
    }

    /// What to deliver next. Fresh ids stop at `durable_next_id` and when the group holds
    /// `outstanding_max` unacked entries.
    pub fn next_candidate(&self, durable_next_id: u64, outstanding_max: usize) -> Candidate {
        if let Some(&id) = self.ready.first() {
            if let Some(Entry { state: EntryState::Ready { attempts }, .. }) = self.outstanding.get(id) {
                return Candidate::Ready { id, attempts: *attempts };
            }
            unreachable!("ready set holds only Ready entries");
        }
        if self.cursor < durable_next_id && self.outstanding.len() < outstanding_max {
            return Candidate::Fresh { id: self.cursor };
        }
        Candidate::Nothing
    }

    /// The cursor's message no longer exists (retention): move past it.
    pub fn skip_missing(&mut self, first_existing_id: u64) {
        self.cursor = self.cursor.max(first_existing_id).max(self.cursor + 1);
    }

    /// Takes the cursor's message, stored at `stored_ms`, into the group. `Deliverable` leaves
    /// it Ready for `dispatch`. In a coalescing group it first settles the older messages of
    /// its key it coalesces (`take_coalesced` lists them).
    pub fn admit_fresh(&mut self, id: u64, passes: bool, key_hash: Option<u64>, stored_ms: u64, test_bug: Option<TestBug>) -> Admit {
        assert_eq!(id, self.cursor, "fresh ids are admitted in order");
        self.cursor += 1;
        if !passes {
            return Admit::Filtered;
        }
        let key = key_of(key_hash);
        let mut requeue = Vec::new();
        if let Some(window_ms) = self.terms.coalesce_ms.filter(|_| key != NO_KEY) {
            let since_ms = if test_bug == Some(TestBug::CoalesceIgnoresWindow) { 0 } else { stored_ms.saturating_sub(window_ms) };
            if test_bug == Some(TestBug::CoalesceKeepsOldest) && self.waits_within(key, since_ms) {
                return self.admit_settled(id, key);
            }
            requeue = self.coalesce_older(key, since_ms, test_bug);
            self.stored_ms.insert(id, stored_ms);
        }
        let admit = self.admit_passing(id, key);
        for older in requeue {
            // The planted bug: the older ones wait behind the newest instead of being settled.
            self.keys.admit(key, older);
        }
        admit
    }

    fn admit_passing(&mut self, id: u64, key: u64) -> Admit {
        if key == NO_KEY || self.keys.admit(key, id) {
            self.keep(id, Entry { key, state: EntryState::Ready { attempts: 0 }, bytes: 0 });
            self.ready.insert(id);
            Admit::Deliverable
        } else {
            self.keep(id, Entry { key, state: EntryState::Blocked, bytes: 0 });
            Admit::Blocked
        }
    }

    /// Keeps filter-passing `id` (the newest): its `prev` is the one kept before it.
    fn keep(&mut self, id: u64, entry: Entry) {
        let prev = self.last_passed;
        self.last_passed = id;
        if self.outstanding.is_empty() {
            self.first_prev = prev;
        }
        self.outstanding.push(id, entry);
    }

    /// Puts `id` in flight to `conn` until `deadline_ns`: its attempt and `prev`, and whether
    /// the deadline is the group's only one (its timer is to be set).
    pub fn dispatch(&mut self, id: u64, conn: ConnId, deadline_ns: u64, bytes: u32) -> Dispatched {
        let (entry, previous) = self.outstanding.get_mut_with_previous(id).expect("dispatch of an outstanding id");
        let prev = previous.unwrap_or(self.first_prev);
        let EntryState::Ready { attempts } = entry.state else { panic!("dispatch of a non-ready entry {:?}", entry.state) };
        entry.state = EntryState::InFlight { conn, attempts: attempts + 1, deadline_ns };
        self.in_flight += 1;
        entry.bytes = bytes;
        let attempt = attempts + 1;
        self.ready.remove(&id);
        let outstanding = &self.outstanding;
        // A spilled entry's deadline is kept: its chunk comes back for it.
        let in_flight = |id: u64, deadline_ns: u64| match outstanding.get(id).map(|e| e.state) {
            Some(EntryState::InFlight { deadline_ns: d, .. }) => d == deadline_ns,
            Some(_) => false,
            None => outstanding.is_spilled(id),
        };
        let arm_timer = self.ack_deadlines.push(deadline_ns, id, in_flight);
        Dispatched { attempt, prev, arm_timer }
    }

    pub fn ack(&mut self, id: u64) -> AckOutcome {
        let Some(entry) = self.outstanding.get_mut(id) else {
            if self.outstanding.is_spilled(id) {
                return self.ack_spilled(id);
            }
            if id < self.cursor || self.pre_acked.contains(&id) {
                return AckOutcome::Ignored;
            }
            if self.taken_over && self.pre_acked.len() < PERSISTED_ACKS_MAX {
                // Delivered, maybe, by the leader before this one: settled when reached.
                self.pre_acked.insert(id);
                return AckOutcome::Ignored;
            }
            return AckOutcome::Unknown;
        };
        let released = match entry.state {
            EntryState::Acked | EntryState::Blocked => return AckOutcome::Ignored,
            EntryState::InFlight { conn, .. } => {
                self.in_flight -= 1;
                Some(Released { conn, bytes: entry.bytes })
            }
            EntryState::Ready { .. } => {
                self.ready.remove(&id);
                None
            }
            // A nack delay's timer is not cancelled: it finds the message acked.
            EntryState::Delayed { .. } | EntryState::DeadLettering { .. } => None,
        };
        entry.state = EntryState::Acked;
        self.acked_held += 1;
        let key = entry.key;
        if !self.stored_ms.is_empty() {
            self.stored_ms.remove(&id);
        }
        self.release_key(key);
        self.advance_floor();
        AckOutcome::Acked { released }
    }

    /// Gives an in-flight message back: Ready now, or Delayed until `until_ns`.
    /// Returns what it was released from.
    /// Only the connection the message is in flight to can give it back: a nack from an
    /// earlier holder (whose delivery expired or was released) must not cancel the current one.
    pub fn nack(&mut self, id: u64, until_ns: Option<u64>, from: ConnId) -> Option<Released> {
        let entry = self.outstanding.get_mut(id)?;
        let EntryState::InFlight { conn, attempts, .. } = entry.state else { return None };
        if conn != from {
            return None;
        }
        self.in_flight -= 1;
        match until_ns {
            Some(until_ns) => entry.state = EntryState::Delayed { attempts, until_ns },
            None => {
                entry.state = EntryState::Ready { attempts };
                self.ready.insert(id);
            }
        }
        Some(Released { conn, bytes: entry.bytes })
    }

    /// The ack deadline `deadline_ns` of `id` passed: it becomes ready for redelivery. Returns
    /// the connection it was in flight to and its bytes.
    pub fn expire(&mut self, id: u64, deadline_ns: u64) -> Option<(ConnId, u32)> {
        let entry = self.outstanding.get_mut(id)?;
        match entry.state {
            EntryState::InFlight { conn, attempts, deadline_ns: d } if d == deadline_ns => {
                entry.state = EntryState::Ready { attempts };
                self.in_flight -= 1;
                self.ready.insert(id);
                Some((conn, entry.bytes))
            }
            _ => None,
        }
    }

    pub fn delay_over(&mut self, id: u64, until_ns: u64) -> bool {
        let Some(entry) = self.outstanding.get_mut(id) else { return false };
        match entry.state {
            EntryState::Delayed { attempts, until_ns: u } if u == until_ns => {
                entry.state = EntryState::Ready { attempts };
                self.ready.insert(id);
                true
            }
            _ => false,
        }
    }

    /// Everything in flight to `conn` becomes ready for other members (in spilled chunks, once
    /// they are back: their serials are returned, to be brought back).
    pub fn release_conn(&mut self, conn: ConnId) -> Vec<u64> {
        let mut released = Vec::new();
        for (id, entry) in self.outstanding.iter_mut() {
            if let EntryState::InFlight { conn: c, attempts, .. } = entry.state {
                if c == conn {
                    entry.state = EntryState::Ready { attempts };
                    released.push(id);
                }
            }
        }
        self.in_flight -= released.len();
        // Built in one go from ids in order (full nodes, no search per id), then merged: a
        // member holding 10 M took 0.6 s inserting them one by one.
        let mut ready: BTreeSet<u64> = released.into_iter().collect();
        self.ready.append(&mut ready);
        self.release_conn_spilled(conn)
    }

    pub fn start_dead_letter(&mut self, id: u64) {
        let entry = self.outstanding.get_mut(id).expect("dead-letter of an outstanding id");
        let EntryState::Ready { attempts } = entry.state else { panic!("dead-letter of a non-ready entry") };
        entry.state = EntryState::DeadLettering { attempts };
        self.ready.remove(&id);
    }

    /// The dead-letter copy is durable (`stored`), or its write failed and the entry goes back.
    pub fn finish_dead_letter(&mut self, id: u64, stored: bool) {
        let Some(entry) = self.outstanding.get_mut(id) else { return };
        let EntryState::DeadLettering { attempts } = entry.state else { return };
        if stored {
            self.ack(id);
        } else {
            entry.state = EntryState::Ready { attempts };
            self.ready.insert(id);
        }
    }

    fn release_key(&mut self, k: u64) {
        if k == NO_KEY {
            return;
        }
        if let Some(next) = self.keys.release(k) {
            self.make_ready_unblocked(next);
        }
    }

    /// The planted bug `KeyReleasedOnExpiry`: lets the next message of `id`'s key go while `id`
    /// still waits for its redelivery.
    pub fn unblock_next_of_key(&mut self, id: u64) {
        let Some(k) = self.outstanding.get(id).map(|e| e.key).filter(|k| *k != NO_KEY) else { return };
        if let Some(next) = self.keys.take_next_waiting(k) {
            self.make_ready_unblocked(next);
        }
    }

    fn make_ready_unblocked(&mut self, id: u64) {
        if self.unblock_spilled(id) {
            return;
        }
        let entry = self.outstanding.get_mut(id).expect("a waiting id is outstanding");
        debug_assert_eq!(entry.state, EntryState::Blocked);
        entry.state = EntryState::Ready { attempts: 0 };
        self.ready.insert(id);
    }

    fn advance_floor(&mut self) {
        while self.outstanding.first().is_some_and(|(_, entry)| entry.state == EntryState::Acked) {
            if let Some((id, _)) = self.outstanding.pop_first() {
                self.first_prev = id;
                self.acked_held -= 1;
            }
        }
    }

    /// The `prev` of an outstanding `id`: the filter-passing id before it.
    fn prev_of(&self, id: u64) -> u64 {
        match self.outstanding.get_with_previous(id) {
            Some((_, Some(previous))) => previous,
            _ => self.first_prev,
        }
    }

    /// Where `id` is in flight: (connection, attempt, prev).
    pub fn in_flight(&self, id: u64) -> Option<(ConnId, u32, u64)> {
        match self.outstanding.get_with_previous(id)? {
            (Entry { state: EntryState::InFlight { conn, attempts, .. }, .. }, previous) => Some((*conn, *attempts, previous.unwrap_or(self.first_prev))),
            _ => None,
        }
    }

    /// Number of entries in flight to `conn`, held or spilled (for checks; O(outstanding)).
    pub fn in_flight_to(&self, conn: ConnId) -> usize {
        let held = self.outstanding.values().filter(|e| matches!(e.state, EntryState::InFlight { conn: c, .. } if c == conn)).count();
        held + self.spilled_to(conn).0
    }

    /// Bytes in flight to `conn`, held or spilled (for checks; O(outstanding)).
    pub fn in_flight_bytes_to(&self, conn: ConnId) -> u64 {
        let held: u64 = self.outstanding.values().filter(|e| matches!(e.state, EntryState::InFlight { conn: c, .. } if c == conn)).map(|e| e.bytes as u64).sum();
        held + self.spilled_to(conn).1
    }

    /// Debug check of the structural invariants.
    pub fn check_invariants(&self) {
        let (spilled_in_flight, spilled_acked) = self.spilled_counts();
        let in_flight = self.outstanding.values().filter(|e| matches!(e.state, EntryState::InFlight { .. })).count() + spilled_in_flight;
        let acked = self.outstanding.values().filter(|e| e.state == EntryState::Acked).count() + spilled_acked;
        assert_eq!((self.in_flight, self.acked_held), (in_flight, acked), "counts of in flight and acked entries out of step");
        let mut deliverable_keys = BTreeSet::new();
        for (id, entry) in self.outstanding.iter() {
            assert!(id < self.cursor, "outstanding id {id} at or past cursor {}", self.cursor);
            assert!(self.prev_of(id) < id);
            let is_ready = matches!(entry.state, EntryState::Ready { .. });
            assert_eq!(is_ready, self.ready.contains(&id), "ready set out of step for {id}");
            if let (k, EntryState::Ready { .. } | EntryState::Delayed { .. } | EntryState::InFlight { .. }) = (entry.key, entry.state) {
                if k == NO_KEY {
                    continue;
                }
                assert!(deliverable_keys.insert(k), "two deliverable entries share a key (id {id})");
            }
        }
    }
}

/// A group's acked ids above its floor, serialized as a sequence as they are read.
struct AckedIds<'a>(&'a Group);

impl serde::Serialize for AckedIds<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.acked_ids())
    }
}

#[cfg(test)]
mod tests;
