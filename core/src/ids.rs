//! Identifiers that would otherwise be bare integers, so that one cannot stand for another.

use std::fmt;

/// A client connection, named by the shell (or the simulator) that holds its socket; unique
/// among the connections open at one time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
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
