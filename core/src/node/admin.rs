//! An operator's actions (the admin API): reset a group's position, drop a group, redrive a
//! dead-letter topic into its topic. Each is an input like a client's op, on the node's clock;
//! its outcome is answered at once, its effects come out as outputs. In a cluster, resets and
//! drops are entries of the shard (proposed by its leader, applied by every replica alike).
//!
//! A redrive is a dead letter in reverse: an internal member of group `ferry-redrive` on
//! `<topic>.dlq` receives its messages and copies each into `<topic>` (producer
//! `ferry-redrive:<topic>`, seq = the dead letter's id, so a copy repeated after a crash is
//! recognised), acking it once the copy is durable; it leaves when the group has nothing left.
//! In a cluster the redrive runs on the shard's leader: the group is created by an entry (the
//! first redrive answers "ask again in a moment"), each copy is proposed like a publish and
//! settled once applied, and the group's position replicates like any group's; a leader that
//! loses the lead stops its redrive (the operator starts it again on the new leader, which
//! goes on from the replicated position).

use super::log::Waiter;
use super::replication::Proposal;
use super::state::NewMessage;
use super::Node;
use crate::cluster::command::{Command, CreateGroupCommand, DropGroupCommand, GroupStart, PublishCommand, ResetGroupCommand};
use crate::group::{GroupTerms, LetGo};
use crate::ids::{ConnId, GroupIdx, TopicIdx};
use crate::protocol::{ErrorCode, StartFrom};
use crate::record::{self, GroupDroppedRecord};
use crate::topic::StoredMessage;

/// The group of a dead-letter topic that redrives copy from (clients may not name it).
pub const REDRIVE_GROUP: &str = "ferry-redrive";
/// Redrives publish their copies as producer `ferry-redrive:<topic>` (clients may not).
pub const REDRIVE_PRODUCER_PREFIX: &str = "ferry-redrive:";
/// Copies a redrive has in flight at once.
const REDRIVE_WINDOW: u32 = 64;
/// Internal members' connection ids: above any client's, below remote ones (`ConnId::remote`).
const INTERNAL_CONN_BASE: u64 = 1 << 62;

/// A redrive under way: its internal member copies the dead letters of (`dlq`, `group`) with
/// ids below `end_id` (the dead-letter topic's next id when it was asked for), so copies that
/// fail again and come back as new dead letters wait for the next redrive instead of looping.
pub(super) struct Redrive {
    pub(super) dlq: TopicIdx,
    pub(super) group: GroupIdx,
    pub(super) end_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAction {
    ResetGroup {
        topic: String,
        group: String,
        to: StartFrom,
    },
    DropGroup {
        topic: String,
        group: String,
    },
    Redrive {
        topic: String,
    },
    /// Closes a client connection (code 1008); the host carries it out.
    Disconnect {
        conn: ConnId,
    },
    /// Pauses (or resumes) deliveries of a group, or of every group of a topic (`group` None).
    PauseDeliveries {
        topic: String,
        group: Option<String>,
        paused: bool,
    },
    /// Refuses (or accepts again) publishes to a topic.
    RefusePublishes {
        topic: String,
        refused: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRefusal {
    NotFound(String),
    /// Another node leads the shard (or none is known): ask it.
    NotLeader(String),
    Unavailable(String),
}

impl Node {
    /// Carries out `action`: what was done, or why not.
    pub fn admin(&mut self, now_ns: u64, action: &AdminAction) -> Result<String, AdminRefusal> {
        self.advance_clock(now_ns);
        if self.stopped {
            return Err(AdminRefusal::Unavailable("the node has stopped (see the log)".into()));
        }
        match action {
            AdminAction::ResetGroup { topic, group, to } => {
                self.state.group_of(topic, group).map_err(|(_, why)| AdminRefusal::NotFound(why))?;
                if self.replication.is_some() {
                    let command = Command::ResetGroup(ResetGroupCommand { topic: topic.clone(), group: group.clone(), to: (*to).into() });
                    return self.propose_admin(&command);
                }
                let start = self.apply_reset_group(topic, group, *to);
                Ok(format!("group '{group}' of topic '{topic}' starts again at id {start}"))
            }
            AdminAction::DropGroup { topic, group } => {
                self.state.group_of(topic, group).map_err(|(_, why)| AdminRefusal::NotFound(why))?;
                if self.replication.is_some() {
                    return self.propose_admin(&Command::DropGroup(DropGroupCommand { topic: topic.clone(), group: group.clone() }));
                }
                self.apply_drop_group(topic, group);
                Ok(format!("group '{group}' of topic '{topic}' dropped"))
            }
            AdminAction::Redrive { topic } => self.start_redrive(topic),
            AdminAction::PauseDeliveries { topic, group, paused } => self.pause_deliveries(topic, group.as_deref(), *paused),
            AdminAction::RefusePublishes { topic, refused } => {
                let Some(&t) = self.state.topic_index.get(topic) else { return Err(AdminRefusal::NotFound(format!("no topic '{topic}'"))) };
                self.state.topics[t].publishes_refused = *refused;
                Ok(format!("publishes to '{topic}' {}", if *refused { "refused" } else { "accepted again" }))
            }
            AdminAction::Disconnect { conn } => Err(AdminRefusal::NotFound(format!("connection {conn}: the host disconnects, not a shard"))),
        }
    }

    /// Pauses or resumes deliveries of `group` of `topic` (every group of it when `None`).
    fn pause_deliveries(&mut self, topic: &str, group: Option<&str>, paused: bool) -> Result<String, AdminRefusal> {
        let Some(&t) = self.state.topic_index.get(topic) else { return Err(AdminRefusal::NotFound(format!("no topic '{topic}'"))) };
        let groups: Vec<GroupIdx> = match group {
            Some(name) => vec![self.state.group_of(topic, name).map_err(|(_, why)| AdminRefusal::NotFound(why))?.1],
            None => self.state.topics[t].group_index.values().copied().collect(),
        };
        for &g in &groups {
            self.state.topics[t].groups[g].paused = paused;
            if !paused {
                self.pump(t, g);
            }
        }
        let what = if paused { "paused" } else { "resumed" };
        Ok(format!("deliveries of {} group(s) of '{topic}' {what}", groups.len()))
    }

    fn propose_admin(&mut self, command: &Command<'_>) -> Result<String, AdminRefusal> {
        match self.propose(command, Proposal::Admin) {
            Ok(()) => Ok("proposed to the shard: applied on every replica once committed".into()),
            Err((ErrorCode::Unavailable, why)) => Err(AdminRefusal::NotLeader(why)),
            Err((_, why)) => Err(AdminRefusal::Unavailable(why)),
        }
    }

    /// Moves group `group` of `topic` to `to` (decided against the topic as it stands now):
    /// what it held is let go of, and delivery starts again there. Returns the start id.
    pub(super) fn apply_reset_group(&mut self, topic: &str, group: &str, to: StartFrom) -> u64 {
        let Ok((t, g)) = self.state.group_of(topic, group) else { return 0 };
        let stored = &self.state.topics[t];
        let (first_id, next_id) = (stored.first_id(), stored.next_id);
        let start = match to {
            StartFrom::Latest => next_id,
            StartFrom::Earliest => first_id,
            StartFrom::Id(id) => id.max(first_id).min(next_id),
        };
        let held = self.state.topics[t].groups[g].reset(start);
        self.let_go_of(t, g, held);
        self.mark_group_dirty(t, g);
        self.maybe_flush();
        self.pump(t, g);
        start
    }

    /// Frees the windows what a group held in flight took (its timers need no cancelling: an
    /// ack deadline or nack delay that comes finds its message let go of).
    fn let_go_of(&mut self, t: TopicIdx, g: GroupIdx, held: LetGo) {
        for (conn, count, bytes) in held.in_flight {
            self.release_in_flight_n(conn, t, g, count, bytes);
        }
        for serial in held.spills {
            self.free_spill_slot(serial);
        }
    }

    /// Drops group `group` of `topic`: its members are told (`not_subscribed`) and leave it,
    /// it holds nothing, and it is out of its topic's index (a `sub` creates a new one).
    pub(super) fn apply_drop_group(&mut self, topic: &str, group: &str) {
        let Ok((t, g)) = self.state.group_of(topic, group) else { return };
        let next_id = self.state.topics[t].next_id;
        let held = self.state.topics[t].groups[g].reset(next_id);
        self.let_go_of(t, g, held);
        let why = format!("group '{group}' of topic '{topic}' was dropped by an operator");
        let holders: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.subs.contains_key(&(t, g))).map(|(conn, _)| *conn).collect();
        for conn in holders {
            let sub = self.conns.get_mut(&conn).and_then(|c| c.subs.remove(&(t, g)));
            let req = sub.and_then(|s| s.pull).and_then(|pull| pull.req);
            if !is_internal(conn) {
                self.send_error(conn, req.as_deref(), ErrorCode::NotSubscribed, &why);
            }
        }
        let dropped = &mut self.state.topics[t].groups[g];
        dropped.members.clear();
        dropped.dropped = true;
        self.state.topics[t].group_index.remove(group);
        self.dirty_groups.remove(&(t, g));
        self.redrives.retain(|_, redrive| (redrive.dlq, redrive.group) != (t, g));
        if self.replication.is_none() {
            self.write_group_dropped(GroupDroppedRecord { topic: topic.to_string(), group: group.to_string() });
        }
    }

    /// Writes the record of a dropped group into the open batch (again, after a failed write).
    pub(super) fn write_group_dropped(&mut self, record: GroupDroppedRecord) {
        self.open_batch_data();
        self.log.segment_len += record::encode_control(&mut self.log.open.data, record::KIND_GROUP_DROPPED, &record) as u64;
        self.log.open.waiters.push(Waiter::GroupDropped(record));
        self.maybe_flush();
    }

    /// Starts (or continues) copying `<topic>.dlq` back into `topic`.
    fn start_redrive(&mut self, topic: &str) -> Result<String, AdminRefusal> {
        if self.replication.is_some() && !self.is_shard_leader() {
            return Err(AdminRefusal::NotLeader(format!("this node does not lead the shard of '{topic}': redrive on its leader")));
        }
        if topic.ends_with(".dlq") {
            return Err(AdminRefusal::NotFound(format!("name the topic, not its dead-letter topic: '{}'", topic.trim_end_matches(".dlq"))));
        }
        let dlq_name = format!("{topic}.dlq");
        let Some(&dlq) = self.state.topic_index.get(&dlq_name) else { return Err(AdminRefusal::NotFound(format!("topic '{topic}' has no dead letters ('{dlq_name}')"))) };
        let g = match self.state.topics[dlq].group_index.get(REDRIVE_GROUP) {
            Some(&g) => g,
            None if self.replication.is_some() => {
                // The group is created by an entry like any group; the redrive can start once
                // it is applied here.
                let create = CreateGroupCommand { topic: dlq_name, group: REDRIVE_GROUP.into(), from: GroupStart::Earliest, filter: None, coalesce_ms: None };
                self.propose_admin(&Command::CreateGroup(create))?;
                return Err(AdminRefusal::Unavailable(format!("the redrive group of '{topic}' is being created: ask again in a moment")));
            }
            None => {
                let (ack_timeout_ns, max_attempts) = (self.config.ack_timeout_ms_for(REDRIVE_GROUP) * super::NS_PER_MS, self.config.max_attempts_for(REDRIVE_GROUP));
                let g = self.state.apply_create_group(dlq, REDRIVE_GROUP, StartFrom::Earliest, GroupTerms::default(), ack_timeout_ns, max_attempts);
                self.state.topics[dlq].groups[g].durable = true;
                self.mark_group_dirty(dlq, g);
                g
            }
        };
        let end_id = self.state.topics[dlq].next_id;
        let waiting = self.state.topics[dlq].groups[g].backlog(end_id);
        let conn = ConnId(INTERNAL_CONN_BASE + dlq.0 as u64);
        match self.redrives.entry(conn) {
            // Asked again: it goes on to the dead letters that arrived since.
            std::collections::btree_map::Entry::Occupied(mut redrive) => redrive.get_mut().end_id = end_id,
            std::collections::btree_map::Entry::Vacant(redrive) => {
                redrive.insert(Redrive { dlq, group: g, end_id });
                let state = self.conns.entry(conn).or_insert_with(super::session::Conn::new);
                let sub = state.subs.entry((dlq, g)).or_default();
                (sub.subscribed, sub.window) = (true, REDRIVE_WINDOW);
                self.state.topics[dlq].groups[g].members.push(conn);
            }
        }
        self.pump(dlq, g);
        self.finish_redrive_if_done(dlq, g);
        Ok(format!("redriving {waiting} dead letter(s) of '{topic}' into it"))
    }

    /// Whether `conn` is a redrive's member that must not be handed `id` (past its end).
    pub(super) fn redrive_ends_before(&self, conn: ConnId, id: u64) -> bool {
        self.redrives.get(&conn).is_some_and(|redrive| id >= redrive.end_id)
    }

    /// The redrive member `conn` was handed dead letter `id`: its copy joins the open batch
    /// (or it is settled at once if an earlier redrive copied it).
    pub(super) fn redrive_copy(&mut self, dlq: TopicIdx, g: GroupIdx, id: u64, message: &StoredMessage) {
        let topic = self.state.topics[dlq].name.trim_end_matches(".dlq").to_string();
        let producer = format!("{REDRIVE_PRODUCER_PREFIX}{topic}");
        match self.state.producers.get(&producer).and_then(|p| p.seqs.get(&id)) {
            // Copied and durable before (a redrive repeated after a crash): settled.
            Some(seen) if seen.durable => {
                self.ack_one(dlq, g, id);
                return;
            }
            // Its copy is still on its way to disk: its waiter settles it.
            Some(_) => return,
            None => {}
        }
        if self.replication.is_some() {
            // Proposed like a client's publish; if it is not applied (a lost lead) the dead
            // letter stays in flight and is copied again after its ack timeout.
            let copy = PublishCommand { ts_ms: self.now_ns / super::NS_PER_MS, topic: &topic, key: message.key.as_deref(), producer: Some((&producer, id)), body: &message.body };
            let _ = self.propose(&Command::Publish(copy), Proposal::Redriven { topic: dlq, group: g, id });
            return;
        }
        let Ok(t) = self.state.topic_for(&topic) else { return };
        self.append_message(NewMessage { topic: t, key: message.key.as_deref(), producer: Some((&producer, id)), body: &message.body });
        self.log.open.waiters.push(Waiter::Redriven { topic: dlq, group: g, id, producer });
        self.maybe_flush();
    }

    /// A redrive's copy of `id` is durable: the dead letter is settled for the redrive group.
    pub(super) fn settle_redriven(&mut self, dlq: TopicIdx, g: GroupIdx, id: u64) {
        self.ack_one(dlq, g, id);
        self.finish_redrive_if_done(dlq, g);
        self.pump(dlq, g);
    }

    /// The redrive member leaves once every dead letter below its end is settled.
    pub(super) fn finish_redrive_if_done(&mut self, dlq: TopicIdx, g: GroupIdx) {
        let Some((&conn, redrive)) = self.redrives.iter().find(|(_, r)| (r.dlq, r.group) == (dlq, g)) else { return };
        let end_id = redrive.end_id;
        if self.state.topics[dlq].groups[g].oldest_unacked(end_id).is_some_and(|id| id < end_id) {
            return;
        }
        self.redrives.remove(&conn);
        self.conns.remove(&conn);
        self.state.topics[dlq].groups[g].members.retain(|member| *member != conn);
    }
}

/// An internal member (a redrive), not a client.
fn is_internal(conn: ConnId) -> bool {
    conn.0 >= INTERNAL_CONN_BASE && conn.as_remote().is_none()
}
