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
