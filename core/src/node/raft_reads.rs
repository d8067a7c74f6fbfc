//! Entries raft needs back from disk: a follower behind the newest entries kept in memory
//! (`raft_log_memory_bytes`) is sent older ones, which the replica asks for (`Wanted`) and
//! the node reads from their records in the log, one read per entry, at most a raft message's
//! worth per request. A record that cannot be read back stops the node: its log is damaged,
//! and another replica, whose copy is whole, must lead.

use super::{DiskError, DiskOp, Node, Output};
use crate::cluster::raft_log;
use crate::cluster::RAFT_MESSAGE_BYTES;
use crate::record::{self, RecordRef};
use raft::eraftpb::Entry;
use raft::GetEntriesContext;
use std::collections::BTreeMap;

/// One wanted range being read.
pub(super) struct EntryRead {
    low: u64,
    context: GetEntriesContext,
    waiting: usize,
    entries: Vec<Entry>,
}

#[derive(Default)]
pub(super) struct EntryReads {
    requests: BTreeMap<u64, EntryRead>,
    next_request: u64,
    /// Read token → (request, entry index).
    tokens: BTreeMap<u64, (u64, u64)>,
}

impl Node {
    /// Starts reading what the replica waits for (called after its outputs are taken).
    pub(super) fn read_wanted_entries(&mut self) {
        let Some(replication) = self.replication.as_mut() else { return };
        for wanted in replication.take_wanted() {
            let Some(replication) = self.replication.as_mut() else { return };
            if replication.entry_reads.requests.values().any(|r| r.low == wanted.low) {
                // Already on its way; raft asks again for the other follower once it is here.
                continue;
            }
            let mut reads = Vec::new();
            let mut bytes = 0u64;
            for index in wanted.low..wanted.high {
                let Some(loc) = replication.entry_loc(index) else { break };
                if !reads.is_empty() && bytes + loc.len as u64 > RAFT_MESSAGE_BYTES as u64 {
                    break;
                }
                bytes += loc.len as u64;
                reads.push((index, loc));
            }
            if reads.is_empty() {
                continue;
            }
            let request = replication.entry_reads.next_request;
            replication.entry_reads.next_request += 1;
            replication.entry_reads.requests.insert(request, EntryRead { low: wanted.low, context: wanted.context, waiting: reads.len(), entries: Vec::new() });
            for (index, loc) in reads {
                let token = self.next_token;
                self.next_token += 1;
                self.replication.as_mut().expect("cluster mode").entry_reads.tokens.insert(token, (request, index));
                self.out.push_back(Output::Disk(DiskOp::Read { token, segment: loc.segment, offset: loc.offset, len: loc.len }));
            }
        }
    }

    /// True when `token` is a read of a raft entry (and it is handled).
    pub(super) fn on_entry_read(&mut self, token: u64, result: &Result<&[u8], DiskError>) -> bool {
        let Some(replication) = self.replication.as_mut() else { return false };
        let Some((request, index)) = replication.entry_reads.tokens.remove(&token) else { return false };
        let entry = match result {
            Ok(bytes) => match record::decode_record(bytes) {
                Ok((RecordRef::RaftEntry(e), _)) if e.index == index => Ok(raft_log::to_entry(&e)),
                Ok(_) => Err("another record is at its place".to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(format!("{e:?}")),
        };
        let entry = match entry {
            Ok(entry) => entry,
            Err(why) => {
                self.stop(format!("raft entry {index} cannot be read back from the log ({why}): this node's log is damaged; another replica must lead"));
                return true;
            }
        };
        let replication = self.replication.as_mut().expect("cluster mode");
        let read = replication.entry_reads.requests.get_mut(&request).expect("a request outlives its reads");
        read.entries.push(entry);
        read.waiting -= 1;
        if read.waiting == 0 {
            let mut read = replication.entry_reads.requests.remove(&request).expect("just found");
            read.entries.sort_by_key(|e| e.index);
            replication.entries_fetched(read.entries, read.context);
            self.drain_replica();
        }
        true
    }
}
