//! Spilling a group's in-flight state to disk past a memory budget (`group_state_bytes_max`).
//!
//! The unit is a full chunk of outstanding entries (`Outstanding`), the oldest first, whose
//! entries are all in flight, acked, or (but in coalescing groups, which settle them) waiting
//! behind an earlier message of their key: nothing but an ack, a nack, an expiry, a member
//! leaving, their key's turn or a reset touches those, so the chunk can leave memory and a
//! stub (`SpillStub`) stand in for it. The stub answers what must be known at once (how many are in flight and to whom,
//! for windows and checks); what needs the entries waits until they are back:
//! - an ack of a spilled id is noted on the stub and asks for the chunk (the window it frees
//!   opens when the chunk is back: one disk read later);
//! - an ack deadline of a spilled id asks for the chunk, and the group's expiries wait for it;
//! - a member leaving is noted (its entries become ready when the chunk is back);
//! - a waiting message whose key's turn comes is noted, and ready when the chunk is back;
//! - a nack of a spilled id is ignored: the message comes again at its ack deadline;
//! - a reset drops the stub, freeing what its connections had in flight.
//!
//! The node writes the encoded chunk to a scratch file (in-flight state is not durable: a
//! restart rebuilds it from the log) and reads it back (`node/spill.rs`). The encoding is
//! fixed-size entries and a CRC32, checked when read: damage is an error that names it.

use super::{AckOutcome, Entry, EntryState, Group, Released};
use crate::config::TestBug;
use crate::ids::ConnId;
use std::collections::BTreeSet;

/// A spilled chunk, as its group keeps it in memory.
#[derive(Debug)]
pub struct SpillStub {
    /// Names this spill (unique within the node): its disk operations carry it.
    pub serial: u64,
    /// Entries in flight when it was spilled (unchanged until it is back).
    in_flight: u32,
    /// The ids acked when it was spilled, in order: the group's position record keeps them,
    /// a repeated ack of one is known for what it is, and the group's count of acked entries
    /// holds them.
    acked_ids: Vec<u64>,
    /// What is in flight to each connection (entries, bytes); a connection released while the
    /// chunk is out is taken off (and listed in `released`).
    conns: Vec<(ConnId, u32, u64)>,
    /// Connections released while it was out: their entries become ready when it is back.
    released: Vec<ConnId>,
    /// Ids acked while it was out (at most a chunk's worth), applied when it is back.
    acks: BTreeSet<u64>,
    /// Waiting ids whose key's turn came while it was out: ready when it is back.
    unblocked: Vec<u64>,
    /// The encoded entries until their write is done: a load meanwhile takes them from here,
    /// and a failed write puts them back.
    pub unwritten: Option<Vec<u8>>,
    /// A read of it is under way.
    pub loading: bool,
}

/// The stub of `entries` (a full held chunk) if they can be spilled: every one in flight,
/// acked, or waiting for its key's turn (when `waiting_may_go`), and not all acked.
fn stub_for(entries: &std::collections::VecDeque<(u64, Entry)>, serial: u64, waiting_may_go: bool) -> Option<SpillStub> {
    let mut stub = SpillStub {
        serial,
        in_flight: 0,
        acked_ids: Vec::new(),
        conns: Vec::new(),
        released: Vec::new(),
        acks: BTreeSet::new(),
        unblocked: Vec::new(),
        unwritten: None,
        loading: false,
    };
    for (id, entry) in entries {
        match entry.state {
            EntryState::InFlight { conn, .. } => {
                stub.in_flight += 1;
                match stub.conns.iter_mut().find(|(c, ..)| *c == conn) {
                    Some((_, count, bytes)) => (*count, *bytes) = (*count + 1, *bytes + u64::from(entry.bytes)),
                    None => stub.conns.push((conn, 1, u64::from(entry.bytes))),
                }
            }
            EntryState::Acked => {
                stub.acked_ids.push(*id);
            }
            EntryState::Blocked if waiting_may_go => {}
            _ => return None,
        }
    }
    // An all-acked chunk goes when the floor passes it: not worth a write.
    (stub.acked_ids.len() < entries.len()).then_some(stub)
}

impl SpillStub {
    /// (connection, entries, bytes) in flight, but for connections released meanwhile.
    pub(super) fn in_flight_to(&self) -> impl Iterator<Item = (ConnId, u32, u64)> + '_ {
        self.conns.iter().copied()
    }

    fn heap_bytes(&self) -> usize {
        self.conns.capacity() * std::mem::size_of::<(ConnId, u32, u64)>()
            + self.released.capacity() * std::mem::size_of::<ConnId>()
            + self.acks.len() * super::SET_ENTRY_BYTES
            + self.acked_ids.capacity() * std::mem::size_of::<u64>()
            + self.unblocked.capacity() * std::mem::size_of::<u64>()
            + self.unwritten.as_ref().map_or(0, Vec::capacity)
    }
}

/// What a group lets go of in a reset: per connection, entries and bytes that were in flight
/// to it, and the serials of its spills (whose file space the node frees).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LetGo {
    pub in_flight: Vec<(ConnId, u32, u64)>,
    pub spills: Vec<u64>,
}

/// Bytes of one spilled entry: id, key hash, state tag, connection, attempts, deadline, bytes.
pub const SPILLED_ENTRY_BYTES: usize = 8 + 8 + 1 + 8 + 4 + 8 + 4;

const TAG_ACKED: u8 = 0;
const TAG_IN_FLIGHT: u8 = 1;
const TAG_BLOCKED: u8 = 2;

/// Bytes of a spilled chunk of `chunk_entries` entries on disk (its entries and a CRC32).
pub fn spilled_chunk_bytes(chunk_entries: usize) -> usize {
    chunk_entries * SPILLED_ENTRY_BYTES + 4
}

fn encode(entries: &[(u64, Entry)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spilled_chunk_bytes(entries.len()));
    for (id, entry) in entries {
        let (tag, conn, attempts, deadline_ns) = match entry.state {
            EntryState::InFlight { conn, attempts, deadline_ns } => (TAG_IN_FLIGHT, conn.0, attempts, deadline_ns),
            EntryState::Acked => (TAG_ACKED, 0, 0, 0),
            EntryState::Blocked => (TAG_BLOCKED, 0, 0, 0),
            other => unreachable!("a spilled entry is in flight or acked, not {other:?}"),
        };
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&entry.key.to_le_bytes());
        out.push(tag);
        out.extend_from_slice(&conn.to_le_bytes());
        out.extend_from_slice(&attempts.to_le_bytes());
        out.extend_from_slice(&deadline_ns.to_le_bytes());
        out.extend_from_slice(&entry.bytes.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<Vec<(u64, Entry)>, String> {
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else { return Err(format!("{} bytes: too short for a spilled chunk", bytes.len())) };
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) || !body.len().is_multiple_of(SPILLED_ENTRY_BYTES) {
        return Err(format!("{} bytes that fail their checksum", bytes.len()));
    }
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    body.chunks_exact(SPILLED_ENTRY_BYTES)
        .map(|b| {
            let state = match b[16] {
                TAG_IN_FLIGHT => EntryState::InFlight { conn: ConnId(u64_at(b, 17)), attempts: u32_at(b, 25), deadline_ns: u64_at(b, 29) },
                TAG_ACKED => EntryState::Acked,
                TAG_BLOCKED => EntryState::Blocked,
                tag => return Err(format!("an entry of state tag {tag}")),
            };
            Ok((u64_at(b, 0), Entry { key: u64_at(b, 8), state, bytes: u32_at(b, 37) }))
        })
        .collect()
}

/// One of two iterators of ids, for a chunk held or spilled (without boxing either).
pub(super) enum OneOf<H, S> {
    Held(H),
    Spilled(S),
}

impl<H: Iterator<Item = u64>, S: Iterator<Item = u64>> Iterator for OneOf<H, S> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        match self {
            OneOf::Held(ids) => ids.next(),
            OneOf::Spilled(ids) => ids.next(),
        }
    }
}

impl Group {
    /// Chunks of `chunk_entries` entries (spilled whole); only while it holds none.
    pub fn use_chunk_entries(&mut self, chunk_entries: usize) {
        assert!(self.outstanding.is_empty(), "the chunk length is chosen before any entry");
        self.outstanding = crate::outstanding::Outstanding::with_chunk_entries(chunk_entries);
    }

    /// Spills its oldest chunk that can go (full, every entry in flight, acked or waiting for
    /// its key's turn, not all acked, not brought back within an ack timeout of `now_ns`):
    /// returns its encoding, to be written under `serial` (the stub keeps a copy until
    /// `spill_written`).
    pub fn spill_one(&mut self, serial: u64, now_ns: u64) -> Option<Vec<u8>> {
        self.spill_cooldown.retain(|_, until_ns| *until_ns > now_ns);
        let cooldown = &self.spill_cooldown;
        // A coalescing group settles waiting messages when a newer one of their key comes.
        let waiting_may_go = self.terms.coalesce_ms.is_none();
        let (chunk, stub) = self.outstanding.full_held_chunks().find_map(|(at, entries)| {
            let first = entries.front().map(|(id, _)| *id)?;
            let stub = (!cooldown.contains_key(&first)).then(|| stub_for(entries, serial, waiting_may_go))??;
            Some((at, stub))
        })?;
        let entries = self.outstanding.spill(chunk, stub);
        let encoded = encode(&entries);
        self.outstanding.spilled_stub_mut(entries[0].0).expect("the chunk just spilled").unwritten = Some(encoded.clone());
        Some(encoded)
    }

    /// The stub of spill `serial`, if the group still has it.
    pub fn spill_stub_mut(&mut self, serial: u64) -> Option<&mut SpillStub> {
        self.outstanding.stubs_mut().find(|stub| stub.serial == serial)
    }

    /// The serial of the spill `id` is in (its ack deadline waits for the chunk to be back).
    pub fn spill_of(&self, id: u64) -> Option<u64> {
        self.outstanding.spilled_stub(id).map(|stub| stub.serial)
    }

    /// Waiting `id`'s key's turn came: if it is spilled, that is noted (it is ready once its
    /// chunk is back, which is wanted) and true returned.
    pub(super) fn unblock_spilled(&mut self, id: u64) -> bool {
        let Some(stub) = self.outstanding.spilled_stub_mut(id) else { return false };
        stub.unblocked.push(id);
        self.wanted_spills.push(stub.serial);
        true
    }

    /// Spills that something noted on them needs back (a waiting message's turn came).
    pub fn take_wanted_spills(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.wanted_spills)
    }

    /// An ack of `id`, which is spilled: noted until the chunk is back.
    pub(super) fn ack_spilled(&mut self, id: u64) -> AckOutcome {
        let chunk_entries = self.outstanding.chunk_entries();
        let Some(stub) = self.outstanding.spilled_stub_mut(id) else { return AckOutcome::Unknown };
        // A chunk has at most `chunk_entries` ids: past that, the acks are repeats or of ids
        // a sparse chunk does not have.
        if stub.acked_ids.binary_search(&id).is_ok() || stub.acks.len() >= chunk_entries || !stub.acks.insert(id) {
            return AckOutcome::Ignored;
        }
        AckOutcome::Spilled { serial: stub.serial }
    }

    /// `conn` left: its spilled entries become ready once their chunks are back. Returns the
    /// spills to bring back.
    pub(super) fn release_conn_spilled(&mut self, conn: ConnId) -> Vec<u64> {
        let mut to_load = Vec::new();
        for stub in self.outstanding.stubs_mut() {
            if let Some(at) = stub.conns.iter().position(|(c, ..)| *c == conn) {
                stub.conns.swap_remove(at);
                stub.released.push(conn);
                to_load.push(stub.serial);
            }
        }
        to_load
    }

    /// Brings back spill `serial` from `bytes` (read from disk, or the stub's own copy): its
    /// entries are in memory again and what was noted while it was out is done; returns the
    /// windows its noted acks free. `Ok(None)`: the group no longer has it (a reset). An
    /// error names the damage.
    pub fn load_spill(&mut self, serial: u64, bytes: &[u8], now_ns: u64, test_bug: Option<TestBug>) -> Result<Option<Vec<Released>>, String> {
        let Some(stub) = self.spill_stub_mut(serial) else { return Ok(None) };
        let mut entries = decode(bytes)?;
        let (released, acks, mut unblocked) = (std::mem::take(&mut stub.released), std::mem::take(&mut stub.acks), std::mem::take(&mut stub.unblocked));
        unblocked.sort_unstable();
        // Releases first: an ack noted after its connection left frees no window of a later
        // subscription of that connection.
        let mut made_ready = Vec::new();
        let mut in_flight_released = 0;
        if !released.is_empty() || !unblocked.is_empty() {
            for (id, entry) in &mut entries {
                match entry.state {
                    EntryState::InFlight { conn, attempts, .. } if released.contains(&conn) => {
                        entry.state = EntryState::Ready { attempts };
                        made_ready.push(*id);
                        in_flight_released += 1;
                    }
                    EntryState::Blocked if unblocked.binary_search(id).is_ok() => {
                        entry.state = EntryState::Ready { attempts: 0 };
                        made_ready.push(*id);
                    }
                    _ => {}
                }
            }
        }
        if test_bug == Some(TestBug::SpillLoadCountsAsAck) {
            for (_, entry) in entries.iter_mut().filter(|(_, e)| matches!(e.state, EntryState::InFlight { .. })) {
                entry.state = EntryState::Acked;
                (self.in_flight, self.acked_held) = (self.in_flight - 1, self.acked_held + 1);
            }
        }
        let first = entries[0].0;
        self.outstanding.unspill(|stub| stub.serial == serial, entries)?.expect("the stub found above");
        self.in_flight -= in_flight_released;
        self.ready.extend(made_ready);
        self.spill_cooldown.insert(first, now_ns + self.ack_timeout_ns);
        let windows = acks.into_iter().filter_map(|id| match self.ack(id) {
            AckOutcome::Acked { released } => released,
            _ => None,
        });
        Ok(Some(windows.collect()))
    }

    /// The write of spill `serial` is done: its copy in memory goes. False if the group no
    /// longer has it (brought back from that copy, or let go of by a reset, meanwhile).
    pub fn spill_written(&mut self, serial: u64) -> bool {
        self.spill_stub_mut(serial).map(|stub| stub.unwritten = None).is_some()
    }

    /// Heap bytes of its stubs' own data (their place in the chunk list is the list's).
    pub(super) fn stubs_bytes(&self) -> usize {
        self.outstanding.stubs().map(|(_, stub)| stub.heap_bytes()).sum()
    }

    /// The ids acked in spilled chunk `stub`, when spilled or since, in order.
    pub(super) fn stub_acked_ids(stub: &SpillStub) -> impl Iterator<Item = u64> + '_ {
        let (mut at_spill, mut noted) = (stub.acked_ids.iter().copied().peekable(), stub.acks.iter().copied().peekable());
        std::iter::from_fn(move || match (at_spill.peek(), noted.peek()) {
            (Some(a), Some(b)) if a <= b => at_spill.next(),
            (Some(_), None) => at_spill.next(),
            (_, Some(_)) => noted.next(),
            (None, None) => None,
        })
    }

    /// Acks noted on stubs, not yet done.
    pub(super) fn noted_acks(&self) -> usize {
        self.outstanding.stubs().map(|(_, stub)| stub.acks.len()).sum()
    }

    /// (in flight, acked) over its stubs, as when they were spilled.
    pub(super) fn spilled_counts(&self) -> (usize, usize) {
        self.outstanding.stubs().fold((0, 0), |(f, a), (_, stub)| (f + stub.in_flight as usize, a + stub.acked_ids.len()))
    }

    /// (entries, bytes) its stubs have in flight to `conn`.
    pub(super) fn spilled_to(&self, conn: ConnId) -> (usize, u64) {
        let per_stub = self.outstanding.stubs().filter_map(|(_, stub)| stub.conns.iter().find(|(c, ..)| *c == conn));
        per_stub.fold((0, 0), |(n, b), (_, count, bytes)| (n + *count as usize, b + bytes))
    }
}
