//! The cluster: shards replicated by raft groups (see docs/CLUSTER-DESIGN.md). Built in steps;
//! today one shard, whose replica a node in cluster mode drives (`node/replication.rs`).

pub mod command;
pub mod mesh;
pub mod raft_log;
pub mod replica;
pub mod storage;

use std::fmt;

/// Entries' bytes raft puts in one message (its `max_size_per_msg`): a message past it holds
/// one entry only.
pub const RAFT_MESSAGE_BYTES: usize = 1 << 20;

/// A voter of the cluster, as `peers` names it (`1@127.0.0.1:7811`); never 0 (raft's "none").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
