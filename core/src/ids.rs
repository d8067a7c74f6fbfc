//! Identifiers that would otherwise be bare integers, so that one cannot stand for another.

use std::fmt;

/// A client connection, named by the shell (or the simulator) that holds its socket; unique
/// among the connections open at one time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Connection ids of clients held by another node (forwarded to this one, the leader) carry
/// that node's id above the connection id its node gave: `REMOTE | node << 40 | conn`. A
/// shell's own ids count up from 1 and never reach these.
const REMOTE_BIT: u64 = 1 << 63;
const REMOTE_CONN_BITS: u32 = 40;
/// The largest node id a remote connection id can carry (config refuses larger ones).
pub const NODE_ID_MAX: u64 = (1 << (63 - REMOTE_CONN_BITS)) - 1;

impl ConnId {
    /// The id, on this node, of connection `conn` of node `node`; `None` if `conn` is too
    /// large to carry (a peer's mistake, refused).
    pub fn remote(node: u64, conn: u64) -> Option<ConnId> {
        (conn < 1 << REMOTE_CONN_BITS && (1..=NODE_ID_MAX).contains(&node)).then_some(ConnId(REMOTE_BIT | node << REMOTE_CONN_BITS | conn))
    }

    /// (node, its connection id) for a remote connection; `None` for this node's own.
    pub fn as_remote(self) -> Option<(u64, u64)> {
        (self.0 & REMOTE_BIT != 0).then_some(((self.0 & !REMOTE_BIT) >> REMOTE_CONN_BITS, self.0 & ((1 << REMOTE_CONN_BITS) - 1)))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_remote() {
            Some((node, conn)) => write!(f, "{conn}@node{node}"),
            None => write!(f, "{}", self.0),
        }
    }
}

/// One shard of the topics (cluster mode: an independent raft group with its own leader);
/// a topic lives in one, and its dead-letter topic in the same. Each shard has its own series
/// of segment files and disk tokens: shard k's ids start at k × `SHARD_ID_SPACE` + 1, so a
/// segment's file names its shard (shard 0's are the single node's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

pub const SHARD_ID_SPACE: u64 = 1_000_000_000_000_000;
/// Shards a process may have (`Config::shards`).
pub const SHARDS_MAX: u32 = 256;

impl ShardId {
    /// The shard's first segment id (and first disk token).
    pub fn first_id(self) -> u64 {
        u64::from(self.0) * SHARD_ID_SPACE + 1
    }

    /// The shard a segment id or disk token belongs to.
    pub fn of_id(id: u64) -> ShardId {
        ShardId((id / SHARD_ID_SPACE) as u32)
    }

    /// The shard of `topic` among `shards`: `<t>.dlq` goes with `<t>`, whose dead letters it
    /// takes (they are entries of `<t>`'s shard).
    pub fn of_topic(topic: &str, shards: u32) -> ShardId {
        let base = topic.strip_suffix(".dlq").unwrap_or(topic);
        ShardId((crate::group::key_hash(base) % u64::from(shards.max(1))) as u32)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A topic's place in the node's table of topics (`Node::topics`); never reused while the
/// node runs (topics are not deleted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicIdx(pub usize);

/// A group's place in its topic's table of groups (`Topic::groups`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupIdx(pub usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_s_ids_name_it_and_a_dead_letter_topic_lives_with_its_topic() {
        assert_eq!(ShardId(0).first_id(), 1, "a single node's segments are shard 0's");
        assert_eq!(ShardId::of_id(ShardId(7).first_id() + 41), ShardId(7));
        assert_eq!(ShardId::of_id(SHARD_ID_SPACE - 1), ShardId(0));
        let shards: Vec<ShardId> = ["orders", "payments", "logistics", "a", "b", "c"].iter().map(|t| ShardId::of_topic(t, 3)).collect();
        assert!(shards.iter().all(|s| s.0 < 3));
        assert!(shards.iter().any(|s| *s != shards[0]), "topics spread: {shards:?}");
        for topic in ["orders", "payments", "x.y"] {
            assert_eq!(ShardId::of_topic(&format!("{topic}.dlq"), 5), ShardId::of_topic(topic, 5));
            assert_eq!(ShardId::of_topic(topic, 1), ShardId(0));
        }
    }

    #[test]
    fn a_remote_connection_id_carries_its_node_and_never_meets_a_local_one() {
        let id = ConnId::remote(NODE_ID_MAX, (1 << 40) - 1).unwrap();
        assert_eq!(id.as_remote(), Some((NODE_ID_MAX, (1 << 40) - 1)));
        assert_eq!(ConnId::remote(3, 7).unwrap().as_remote(), Some((3, 7)));
        assert_eq!(ConnId(7).as_remote(), None);
        assert_eq!(ConnId::remote(3, 1 << 40), None, "too large to carry");
        assert_eq!(ConnId::remote(0, 1), None);
        assert_eq!(ConnId::remote(NODE_ID_MAX + 1, 1), None);
        assert_eq!(ConnId::remote(2, 5).unwrap().to_string(), "5@node2");
    }
}
