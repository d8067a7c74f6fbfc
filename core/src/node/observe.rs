//! What the node shows operators of its topics, groups and log (metrics, the admin API and
//! the console): plain data taken from its state, which the shell formats.

use super::{Node, NS_PER_MS};
use crate::group::GroupCounters;

/// A topic as metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicView {
    pub name: String,
    /// Messages stored since the process started.
    pub published: u64,
    /// The lowest id still stored (== `next_id` when none is).
    pub first_id: u64,
    /// The id its next message gets.
    pub next_id: u64,
    /// Bytes of the records of its stored messages (on disk).
    pub stored_bytes: u64,
    /// Bytes of its recent messages held in memory.
    pub cached_bytes: u64,
    /// An operator refuses publishes to it.
    pub publishes_refused: bool,
    pub groups: Vec<GroupView>,
}

/// A consumer group as metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub name: String,
    pub members: usize,
    /// Messages of the topic the group has not acked (held unacked, or not yet reached).
    pub backlog: u64,
    /// Messages delivered and waiting for an ack.
    pub in_flight: usize,
    /// The oldest message it has not acked, and how long ago it was stored (`Topic::stored_at_ms`:
    /// exact while cached, else to within the topic timeline's spacing).
    pub oldest_unacked_id: Option<u64>,
    pub oldest_unacked_age_ms: Option<u64>,
    /// Its filter as the client gave it (JSON), if any.
    pub filter: Option<String>,
    /// Its coalescing window, if it coalesces.
    pub coalesce_ms: Option<u64>,
    pub ack_timeout_ms: u64,
    pub max_attempts: u32,
    /// An operator paused its deliveries.
    pub paused: bool,
    pub counters: GroupCounters,
}

/// The node's log on disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiskView {
    pub segments: usize,
    pub bytes: u64,
}

impl DiskView {
    /// Both added (a process's shards).
    pub fn plus(&self, other: &DiskView) -> DiskView {
        DiskView { segments: self.segments + other.segments, bytes: self.bytes + other.bytes }
    }
}

impl Node {
    /// Every topic of this node's shard and its groups, in the order they were created.
    pub fn topics_view(&self) -> Vec<TopicView> {
        let now_ms = self.now_ns / NS_PER_MS;
        self.state
            .topics
            .iter()
            .map(|topic| TopicView {
                name: topic.name.clone(),
                published: topic.published,
                first_id: topic.first_id(),
                next_id: topic.next_id,
                stored_bytes: topic.stored_bytes(),
                cached_bytes: topic.cache_bytes(),
                publishes_refused: topic.publishes_refused,
                groups: topic
                    .groups
                    .iter()
                    .filter(|group| !group.dropped)
                    .map(|group| {
                        let oldest_unacked_id = group.oldest_unacked(topic.next_id);
                        GroupView {
                            name: group.name.clone(),
                            members: group.members.len(),
                            backlog: group.backlog(topic.next_id),
                            in_flight: group.in_flight_count(),
                            oldest_unacked_id,
                            oldest_unacked_age_ms: oldest_unacked_id.and_then(|id| topic.stored_at_ms(id)).map(|stored_ms| now_ms.saturating_sub(stored_ms)),
                            filter: group.terms.filter.as_ref().map(|f| f.to_json().to_string()),
                            coalesce_ms: group.terms.coalesce_ms,
                            ack_timeout_ms: group.ack_timeout_ns / NS_PER_MS,
                            max_attempts: group.max_attempts,
                            paused: group.paused,
                            counters: group.counters,
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// The segments of its log on disk and their bytes.
    pub fn disk_view(&self) -> DiskView {
        DiskView { segments: self.log.segments.len(), bytes: self.log.segments.iter().map(|s| s.bytes).sum() }
    }
}

/// A client connection as the core knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnView {
    pub conn: crate::ids::ConnId,
    pub authenticated: bool,
    pub subs: Vec<SubView>,
}

/// A connection's subscriptions (and pulls) on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubView {
    pub topic: String,
    pub group: String,
    pub subscribed: bool,
    pub pulling: bool,
    pub window: u32,
    pub in_flight: u32,
    pub in_flight_bytes: u64,
}

impl Node {
    /// The subscriptions of connection `conn` on this shard.
    pub fn subs_of(&self, conn: crate::ids::ConnId) -> Vec<SubView> {
        let Some(state) = self.conns.get(&conn) else { return Vec::new() };
        state
            .subs
            .iter()
            .map(|(&(t, g), sub)| {
                let topic = &self.state.topics[t];
                SubView {
                    topic: topic.name.clone(),
                    group: topic.groups[g].name.clone(),
                    subscribed: sub.subscribed,
                    pulling: sub.pull.is_some(),
                    window: sub.window,
                    in_flight: sub.in_flight,
                    in_flight_bytes: sub.in_flight_bytes,
                }
            })
            .collect()
    }
}
