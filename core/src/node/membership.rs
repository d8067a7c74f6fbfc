//! Group membership: `sub`, `pull` and `unsub`; a new group admits members only once its
//! record is durable.

use super::log::Waiter;
use super::replication::{PendingJoin, Proposal};
use super::session::Pull;
use super::{Node, Timer, NS_PER_MS};
use crate::cluster::command::{Command, CreateGroupCommand};
use crate::group::GroupTerms;
use crate::ids::{ConnId, GroupIdx, TopicIdx};
use crate::pipeline::{self, check_name, GROUP_BYTES_MAX};
use crate::protocol::{self, ErrorCode, Filter, StartFrom};

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_sub(&mut self, conn: ConnId, req: Option<String>, topic: &str, group: &str, from: StartFrom, window: Option<u32>, terms: GroupTerms) {
        let window = window.unwrap_or(self.config.window_default);
        if window == 0 || window > self.config.window_max {
            let message = format!("window must be 1..={} (window_max)", self.config.window_max);
            return self.send_error(conn, req.as_deref(), ErrorCode::BadFrame, &message);
        }
        if terms.coalesce_ms.is_some_and(|ms| ms == 0 || ms > self.config.coalesce_ms_max) {
            let message = format!("coalesce_ms must be 1..={} (coalesce_ms_max)", self.config.coalesce_ms_max);
            return self.send_error(conn, req.as_deref(), ErrorCode::BadFrame, &message);
        }
        self.join_group(topic, group, from, terms, PendingJoin { conn, req, window, pull: None });
    }

    /// Joins `join` to the group, found or created. A new group's record joins the open
    /// batch, so members are admitted only once the group is durable (a restart must not move
    /// it to "latest"); in cluster mode its creation is an entry, and they join once it applies.
    fn join_group(&mut self, topic: &str, group: &str, from: StartFrom, terms: GroupTerms, join: PendingJoin) {
        let (conn, req) = (join.conn, join.req.clone());
        let joined = if self.replication.is_some() {
            self.join_replicated_group(topic, group, from, terms, join)
        } else {
            self.find_or_create_group(topic, group, from, terms).map(|(t, g)| {
                let PendingJoin { conn, req, window, pull } = join;
                self.join_when_durable(Waiter::Join { conn, req, topic: t, group: g, window, pull });
            })
        };
        if let Err((code, message)) = joined {
            self.send_error(conn, req.as_deref(), code, &message);
        }
    }

    /// Cluster mode: an existing group is joined at once (it exists because its creation was
    /// applied); a new one is proposed, and created (with its topic) when that applies.
    fn join_replicated_group(&mut self, topic: &str, group: &str, from: StartFrom, terms: GroupTerms, join: PendingJoin) -> Result<(), (ErrorCode, String)> {
        check_names(topic, group)?;
        // Delivery runs on the shard's leader (members on other nodes come with the mesh).
        self.check_leading()?;
        if let Ok((t, g)) = self.state.group_of(topic, group) {
            if let Some(conflict) = self.state.topics[t].groups[g].terms.conflict(group, &terms) {
                return Err((ErrorCode::Conflict, conflict));
            }
            self.admit_member(join.conn, join.req, t, g, join.window, join.pull);
            return Ok(());
        }
        let create = CreateGroupCommand {
            topic: topic.to_string(),
            group: group.to_string(),
            from: from.into(),
            filter: terms.filter.as_ref().map(Filter::to_json),
            coalesce_ms: terms.coalesce_ms,
        };
        self.propose(&Command::CreateGroup(create), Proposal::Join(join))
    }

    /// Finds or creates the group.
    fn find_or_create_group(&mut self, topic: &str, group: &str, from: StartFrom, terms: GroupTerms) -> Result<(TopicIdx, GroupIdx), (ErrorCode, String)> {
        check_names(topic, group)?;
        let t = self.state.topic_for(topic).map_err(|m| (ErrorCode::Overloaded, m))?;
        if let Some(&g) = self.state.topics[t].group_index.get(group) {
            if let Some(conflict) = self.state.topics[t].groups[g].terms.conflict(group, &terms) {
                return Err((ErrorCode::Conflict, conflict));
            }
            return Ok((t, g));
        }
        if self.state.topics[t].group_index.len() >= self.config.groups_per_topic_max as usize {
            return Err((ErrorCode::Overloaded, format!("group limit reached (groups_per_topic_max = {})", self.config.groups_per_topic_max)));
        }
        let ack_timeout_ns = self.config.ack_timeout_ms_for(group) * NS_PER_MS;
        let g = self.state.apply_create_group(t, group, from, terms, ack_timeout_ns, self.config.max_attempts_for(group));
        self.mark_group_dirty(t, g);
        Ok((t, g))
    }

    /// Admits a member at once into a group already on disk; a new group's members wait
    /// behind the open batch, which carries the group's first record.
    fn join_when_durable(&mut self, join: Waiter) {
        let Waiter::Join { conn, req, topic, group, window, pull } = join else { unreachable!("only joins wait for their group") };
        if self.state.topics[topic].groups[group].durable {
            return self.admit_member(conn, req, topic, group, window, pull);
        }
        self.log.open.waiters.push(Waiter::Join { conn, req, topic, group, window, pull });
        self.maybe_flush();
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn admit_member(&mut self, conn: ConnId, req: Option<String>, t: TopicIdx, g: GroupIdx, window: u32, pull: Option<(u32, u64)>) {
        let Some(state) = self.conns.get_mut(&conn) else { return };
        let sub = state.subs.entry((t, g)).or_default();
        let mut frame = String::new();
        match pull {
            None => {
                sub.subscribed = true;
                sub.window = window;
                sub.over_window = sub.in_flight > window;
                let topic = &self.state.topics[t];
                protocol::encode_suback(&mut frame, req.as_deref(), &topic.name, &topic.groups[g].name);
            }
            Some((max, wait_ns)) => {
                if let Some(old) = sub.pull.take() {
                    self.timers.remove(&(old.deadline_ns, Timer::PullEnd { conn, topic: t, group: g }));
                    protocol::encode_pulled(&mut frame, old.req.as_deref(), old.count);
                }
                let deadline_ns = self.now_ns + wait_ns;
                sub.pull = Some(Pull { req, remaining: max, count: 0, deadline_ns });
                self.timers.insert((deadline_ns, Timer::PullEnd { conn, topic: t, group: g }));
            }
        }
        let group = &mut self.state.topics[t].groups[g];
        if !group.members.contains(&conn) {
            group.members.push(conn);
        }
        if !frame.is_empty() {
            self.send(conn, frame);
        }
        self.pump(t, g);
    }

    pub(super) fn on_pull(&mut self, conn: ConnId, req: Option<String>, topic: &str, group: &str, max: u32, wait_ms: u64) {
        if max == 0 || max > self.config.pull_max || wait_ms > self.config.pull_wait_ms_max {
            let message = format!("pull needs 1 <= max <= {} and wait_ms <= {}", self.config.pull_max, self.config.pull_wait_ms_max);
            return self.send_error(conn, req.as_deref(), ErrorCode::BadFrame, &message);
        }
        let pull = Some((max, wait_ms * NS_PER_MS));
        let window = self.config.window_default;
        if self.replication.is_some() {
            // Delivery runs on the shard's leader, as for `sub`.
            if let Err((code, message)) = self.check_leading() {
                return self.send_error(conn, req.as_deref(), code, &message);
            }
        }
        match self.state.group_of(topic, group) {
            // Like `sub`, a pull is admitted only behind the open batch: a group that exists
            // in memory may not be durable yet (its record may have hit a full disk), and a
            // restart must not forget a group that has delivered.
            Ok((t, g)) => self.join_when_durable(Waiter::Join { conn, req, topic: t, group: g, window, pull }),
            Err(_) => self.join_group(topic, group, StartFrom::Latest, GroupTerms::default(), PendingJoin { conn, req, window, pull }),
        }
    }

    pub(super) fn finish_pull(&mut self, conn: ConnId, t: TopicIdx, g: GroupIdx) {
        let Some(sub) = self.conns.get_mut(&conn).and_then(|c| c.subs.get_mut(&(t, g))) else { return };
        let Some(pull) = sub.pull.take() else { return };
        self.timers.remove(&(pull.deadline_ns, Timer::PullEnd { conn, topic: t, group: g }));
        if !sub.subscribed {
            self.state.topics[t].groups[g].members.retain(|m| *m != conn);
        }
        let mut frame = String::new();
        protocol::encode_pulled(&mut frame, pull.req.as_deref(), pull.count);
        self.send(conn, frame);
    }

    pub(super) fn on_unsub(&mut self, conn: ConnId, req: Option<String>, topic: &str, group: &str) {
        let (t, g) = match self.state.group_of(topic, group) {
            Ok(tg) => tg,
            Err((code, message)) => return self.send_error(conn, req.as_deref(), code, &message),
        };
        let Some(sub) = self.conns.get_mut(&conn).and_then(|c| c.subs.remove(&(t, g))) else {
            return self.send_error(conn, req.as_deref(), ErrorCode::NotSubscribed, "this connection is not in that group");
        };
        if let Some(pull) = sub.pull {
            self.timers.remove(&(pull.deadline_ns, Timer::PullEnd { conn, topic: t, group: g }));
        }
        self.release_member(conn, t, g);
    }

    /// Takes `conn` out of the group; what it had in flight goes to the other members.
    pub(super) fn release_member(&mut self, conn: ConnId, t: TopicIdx, g: GroupIdx) {
        let group = &mut self.state.topics[t].groups[g];
        group.members.retain(|m| *m != conn);
        for serial in group.release_conn(conn) {
            self.load_spill(t, g, serial);
        }
        self.pump(t, g);
    }
}

fn check_names(topic: &str, group: &str) -> Result<(), (ErrorCode, String)> {
    check_name("topic", topic, pipeline::TOPIC_BYTES_MAX + 4).map_err(|m| (ErrorCode::BadFrame, m))?;
    check_name("group", group, GROUP_BYTES_MAX).map_err(|m| (ErrorCode::BadFrame, m))
}
