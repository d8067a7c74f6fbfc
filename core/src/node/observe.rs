//! What the node shows operators of its topics and groups (metrics, and later the admin API
//! and console): plain data taken from its state, which the shell formats.

use super::Node;
use crate::group::GroupCounters;

/// A topic as metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicView {
    pub name: String,
    /// Messages stored since the process started.
    pub published: u64,
    /// The id its next message gets.
    pub next_id: u64,
    pub groups: Vec<GroupView>,
}

/// A consumer group as metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub name: String,
    pub members: usize,
    /// Messages of the topic the group has not acked (held unacked, or not yet reached).
    pub backlog: u64,
    pub counters: GroupCounters,
}

impl Node {
    /// Every topic of this node's shard and its groups, in the order they were created.
    pub fn topics_view(&self) -> Vec<TopicView> {
        self.state
            .topics
            .iter()
            .map(|topic| TopicView {
                name: topic.name.clone(),
                published: topic.published,
                next_id: topic.next_id,
                groups: topic
                    .groups
                    .iter()
                    .map(|group| GroupView { name: group.name.clone(), members: group.members.len(), backlog: group.backlog(topic.next_id), counters: group.counters })
                    .collect(),
            })
            .collect()
    }
}
