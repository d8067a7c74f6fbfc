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
