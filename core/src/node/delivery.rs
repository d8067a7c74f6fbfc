//! Delivery: the pump picks members with room in their windows, dispatches, and settles
//! acks, nacks and dead letters.

use super::log::Waiter;
use super::remote_delivery::delivery_output;
use super::replication::Proposal;
use super::state::NewMessage;
use super::{Node, Output, Timer, Trace, NS_PER_MS};
use crate::cluster::command::{Command, PublishCommand};
use crate::config::TestBug;
use crate::group::{key_hash, AckOutcome, Admit, Candidate, Dispatched, Released};
use crate::ids::{ConnId, GroupIdx, TopicIdx};
use crate::protocol::ErrorCode;
use crate::topic::{Lookup, StoredMessage};
use crate::trace_book::Happening;

const NO_DLQ_OF_A_DLQ: &str = "dead-letter topics have no dead-letter topic";

/// Messages one pump call may look at before it yields to other work.
const PUMP_STEPS_MAX: u32 = 4_096;

/// Work left for the next turn is due this much later: a timer due `now` would run in the
/// same `handle_timeout` that set it (it runs every timer due), and nothing would yield.
const NEXT_TURN_NS: u64 = 1;

impl Node {
    /// ack (`nack_delay_ms` None) or nack.
    pub(super) fn on_ack(&mut self, conn: ConnId, topic: &str, group: &str, ids: &[u64], nack_delay_ms: Option<u64>) {
        let (t, g) = match self.state.group_of(topic, group) {
            Ok(tg) => tg,
            Err((code, message)) => return self.send_error(conn, None, code, &message),
        };
        let mut unknown = Vec::new();
        for &id in ids {
            let known = match nack_delay_ms {
                None => self.ack_one(t, g, id),
                Some(delay_ms) => self.nack_one(conn, t, g, id, delay_ms.min(self.config.nack_delay_ms_max)),
            };
            if !known {
                unknown.push(id);
            }
        }
        if !unknown.is_empty() {
            unknown.truncate(16);
            let message = format!("ids never delivered to group '{group}': {unknown:?}");
            self.send_error(conn, None, ErrorCode::BadFrame, &message);
        }
        self.pump(t, g);
    }

    pub(super) fn ack_one(&mut self, t: TopicIdx, g: GroupIdx, id: u64) -> bool {
        if id >= self.state.topics[t].next_id {
            // Never stored: never delivered.
            return false;
        }
        let (released, spilled) = match self.state.topics[t].groups[g].ack(id) {
            AckOutcome::Acked { released } => (released, None),
            // Noted on its spilled chunk (the position record keeps it); the window it frees
            // opens when the chunk is back.
            AckOutcome::Spilled { serial } => (None, Some(serial)),
            AckOutcome::Ignored => return true,
            AckOutcome::Unknown => return false,
        };
        if let Some(Released { conn, bytes }) = released {
            self.release_in_flight(conn, t, g, bytes);
        }
        self.trace_book.push(self.now_ns, t, id, Happening::Acked { group: g });
        self.stats.acked += 1;
        self.state.topics[t].groups[g].counters.acked += 1;
        self.mark_group_dirty(t, g);
        if let Some(serial) = spilled {
            self.load_spill(t, g, serial);
        }
        self.maybe_flush();
        true
    }

    fn nack_one(&mut self, conn: ConnId, t: TopicIdx, g: GroupIdx, id: u64, delay_ms: u64) -> bool {
        let until_ns = (delay_ms > 0).then(|| self.now_ns + delay_ms * NS_PER_MS);
        let group = &mut self.state.topics[t].groups[g];
        if id >= group.cursor() {
            return false;
        }
        if let Some(Released { conn, bytes }) = group.nack(id, until_ns, conn) {
            group.counters.nacked += 1;
            self.stats.nacked += 1;
            self.trace_book.push(self.now_ns, t, id, Happening::Nacked { group: g, conn });
            self.release_in_flight(conn, t, g, bytes);
            if let Some(until_ns) = until_ns {
                self.nack_delays.insert(until_ns, (t, g, id));
            }
        }
        true
    }

    /// One message (of `bytes`) in flight to `conn` is no longer: its window has room again.
    pub(super) fn release_in_flight(&mut self, conn: ConnId, t: TopicIdx, g: GroupIdx, bytes: u32) {
        self.release_in_flight_n(conn, t, g, 1, u64::from(bytes));
    }

    /// `count` messages of `bytes` in all, in flight to `conn`, are no longer.
    pub(super) fn release_in_flight_n(&mut self, conn: ConnId, t: TopicIdx, g: GroupIdx, count: u32, bytes: u64) {
        let Some(state) = self.conns.get_mut(&conn) else { return };
        let Some(sub) = state.subs.get_mut(&(t, g)) else { return };
        sub.in_flight -= count;
        sub.in_flight_bytes -= bytes;
        sub.over_window &= sub.in_flight > sub.window;
        if !sub.subscribed && sub.pull.is_none() && sub.in_flight == 0 {
            state.subs.remove(&(t, g));
        }
    }

    fn pick_member(&mut self, t: TopicIdx, g: GroupIdx) -> Option<ConnId> {
        let congested_peers = self.replication.as_ref().map(|r| &r.congested_peers);
        let behind_congested_peer = |conn: ConnId| conn.as_remote().is_some_and(|(node, _)| congested_peers.is_some_and(|peers| peers.contains(&node)));
        let group = &mut self.state.topics[t].groups[g];
        let count = group.members.len();
        for step in 0..count {
            let at = (group.next_member + step) % count;
            let conn = group.members[at];
            let window_bytes_max = self.config.window_bytes_max;
            let sub = self.conns.get(&conn).filter(|c| !c.congested && !behind_congested_peer(conn)).and_then(|c| c.subs.get(&(t, g)));
            let extra = sub.is_some_and(|s| s.subscribed && s.pull.is_none() && self.config.test_bug == Some(TestBug::WindowOneTooMany));
            let capacity = sub.map_or(0, |sub| sub.capacity(window_bytes_max)) + u32::from(extra);
            if capacity > 0 {
                group.next_member = (at + 1) % count;
                return Some(conn);
            }
        }
        None
    }

    /// Delivers what group `g` of topic `t` can deliver now.
    pub(super) fn pump(&mut self, t: TopicIdx, g: GroupIdx) {
        self.load_wanted_spills(t, g);
        self.pump_steps(t, g);
        // What the steps settled (a message gone, a dead letter dropped) may have given a
        // spilled message its key's turn.
        self.load_wanted_spills(t, g);
    }

    /// A waiting message whose key's turn came is ready once its spilled chunk is back (which
    /// pumps the group again).
    fn load_wanted_spills(&mut self, t: TopicIdx, g: GroupIdx) {
        for serial in self.state.topics[t].groups[g].take_wanted_spills() {
            self.load_spill(t, g, serial);
        }
    }

    fn pump_steps(&mut self, t: TopicIdx, g: GroupIdx) {
        let group = &self.state.topics[t].groups[g];
        if group.terms.coalesce_ms.is_some() && !group.members.is_empty() && !group.paused && !self.admit_ahead(t, g) {
            return;
        }
        for _ in 0..PUMP_STEPS_MAX {
            let group = &self.state.topics[t].groups[g];
            if group.members.is_empty() || group.paused {
                return;
            }
            let topic = &self.state.topics[t];
            let group = &topic.groups[g];
            let candidate = group.next_candidate(topic.durable_next_id, self.config.group_outstanding_max as usize);
            let id = match candidate {
                Candidate::Nothing => return,
                Candidate::Ready { id, .. } | Candidate::Fresh { id } => id,
            };
            if matches!(candidate, Candidate::Ready { .. }) && self.state.topics[t].groups[g].take_pre_acked(id) {
                self.ack_one(t, g, id);
                continue;
            }
            let Some(conn) = self.pick_member(t, g) else { return };
            if self.redrive_ends_before(conn, id) {
                // Newer dead letters wait for the next redrive.
                return self.finish_redrive_if_done(t, g);
            }
            let message = match self.state.topics[t].lookup(id, &self.read_cache, t) {
                Lookup::Found(message) => message,
                Lookup::OnDisk(loc) => return self.request_read(t, id, loc),
                Lookup::Gone => {
                    let first_id = self.state.topics[t].first_id();
                    match candidate {
                        Candidate::Fresh { .. } => self.state.topics[t].groups[g].skip_missing(first_id),
                        _ => {
                            self.ack_one(t, g, id);
                        }
                    }
                    continue;
                }
            };
            if matches!(candidate, Candidate::Fresh { .. }) && !self.admit(t, g, &message) {
                continue;
            }
            let max_attempts = self.state.topics[t].groups[g].max_attempts;
            match candidate {
                Candidate::Ready { attempts, .. } if attempts >= max_attempts + u32::from(self.config.test_bug == Some(TestBug::DeadLetterOneAttemptLate)) => {
                    if self.replication.is_none() {
                        self.dead_letter(t, g, id, &message);
                    } else if !self.propose_dead_letter(t, g, id, &message) {
                        // Not the shard's leader (any more): pumping would only find it again.
                        return;
                    }
                    continue;
                }
                _ => {}
            }
            self.dispatch(t, g, id, conn, &message);
        }
        self.timers.insert((self.now_ns + NEXT_TURN_NS, Timer::Pump { topic: t, group: g }));
    }

    /// Takes the group's next message in: true if it is to be delivered now (not filtered out,
    /// waiting for its key, coalesced or settled by a replicated position).
    fn admit(&mut self, t: TopicIdx, g: GroupIdx, message: &StoredMessage) -> bool {
        let group = &mut self.state.topics[t].groups[g];
        let passes = group.passes(message.key.as_deref(), &message.body) || self.config.test_bug == Some(TestBug::FilterIgnored);
        let admit = group.admit_fresh(message.id, passes, message.key.as_deref().map(key_hash), message.ts_ms, self.config.test_bug);
        for id in group.take_coalesced() {
            self.trace_book.push(self.now_ns, t, id, Happening::Coalesced { group: g, by: message.id });
            self.stats.coalesced += 1;
            self.mark_group_dirty(t, g);
        }
        if admit != Admit::Deliverable {
            return false;
        }
        if self.state.topics[t].groups[g].take_pre_acked(message.id) {
            self.ack_one(t, g, message.id);
            return false;
        }
        true
    }

    /// A coalescing group takes in everything stored (up to `group_outstanding_max`) before
    /// it delivers, so that newer messages of a key settle the older ones while they wait: a
    /// lagging member is handed the latest of each key, not every change, and after a restart
    /// (in flight is waiting again) nothing older is delivered before the newer one that had
    /// coalesced it. False while it has not caught up (a read or the next turn continues it).
    fn admit_ahead(&mut self, t: TopicIdx, g: GroupIdx) -> bool {
        for _ in 0..PUMP_STEPS_MAX {
            let topic = &self.state.topics[t];
            let group = &topic.groups[g];
            let id = group.cursor();
            if id >= topic.durable_next_id || group.outstanding_len() >= self.config.group_outstanding_max as usize {
                return true;
            }
            match topic.lookup(id, &self.read_cache, t) {
                Lookup::Found(message) => {
                    self.admit(t, g, &message);
                }
                Lookup::OnDisk(loc) => {
                    self.request_read(t, id, loc);
                    return false;
                }
                Lookup::Gone => {
                    let first_id = topic.first_id();
                    self.state.topics[t].groups[g].skip_missing(first_id);
                }
            }
        }
        self.timers.insert((self.now_ns + NEXT_TURN_NS, Timer::Pump { topic: t, group: g }));
        false
    }

    fn dispatch(&mut self, t: TopicIdx, g: GroupIdx, id: u64, conn: ConnId, message: &StoredMessage) {
        let shard = self.shard();
        let topic = &mut self.state.topics[t];
        let group = &mut topic.groups[g];
        let deadline_ns = self.now_ns + group.ack_timeout_ns;
        let bytes = (message.body.len() + message.key.as_deref().map_or(0, str::len)) as u32;
        let Dispatched { attempt, prev, arm_timer } = group.dispatch(id, conn, deadline_ns, bytes);
        let prev = if self.config.test_bug == Some(TestBug::PrevOffByOne) && id % 7 == 3 && prev > 0 { prev + 1 } else { prev };
        if arm_timer {
            self.timers.insert((deadline_ns, Timer::AckDeadline { topic: t, group: g }));
        }
        let by_reference = self.replication.is_some();
        let redrive = self.redrives.contains_key(&conn);
        if !redrive {
            self.out.push_back(delivery_output(shard, conn, by_reference, &topic.name, &group.name, id, prev, attempt, message));
        }
        self.trace_book.push(self.now_ns, t, id, Happening::Delivered { group: g, conn, attempt });
        self.stats.delivered += 1;
        group.counters.delivered += 1;
        if attempt == 1 {
            self.stats.store_to_deliver.record(self.now_ns.saturating_sub(message.stored_ns));
        }
        if attempt > 1 && self.config.test_bug != Some(TestBug::RedeliveryUncounted) {
            self.stats.redelivered += 1;
            group.counters.redelivered += 1;
        }
        let sub = self.conns.get_mut(&conn).and_then(|c| c.subs.get_mut(&(t, g))).expect("picked member has a sub");
        sub.in_flight += 1;
        sub.in_flight_bytes += bytes as u64;
        sub.over_window |= sub.pull.is_some() && sub.subscribed && sub.in_flight > sub.window;
        let pull_done = match &mut sub.pull {
            Some(pull) => {
                pull.remaining -= 1;
                pull.count += 1;
                pull.remaining == 0
            }
            None => false,
        };
        if pull_done {
            self.finish_pull(conn, t, g);
        }
        if redrive {
            self.redrive_copy(t, g, id, message);
        }
    }

    fn dead_letter(&mut self, t: TopicIdx, g: GroupIdx, id: u64, message: &StoredMessage) {
        self.state.topics[t].groups[g].start_dead_letter(id);
        let topic = &self.state.topics[t];
        let (topic_name, group_name) = (topic.name.clone(), topic.groups[g].name.clone());
        let dlq = if topic.is_dead_letter() { Err(NO_DLQ_OF_A_DLQ) } else { self.state.topic_for(&format!("{topic_name}.dlq")).map_err(|_| "topic limit reached") };
        let dlq = match dlq {
            Ok(dlq) => dlq,
            Err(why) => return self.drop_dead_letter(t, g, id, why),
        };
        if self.config.test_bug == Some(TestBug::DeadLetterNotStored) {
            self.state.topics[t].groups[g].finish_dead_letter(id, true);
            self.mark_group_dirty(t, g);
            self.out.push_back(Output::Trace(Trace::DeadLettered { topic: topic_name, group: group_name, id }));
            return;
        }
        let copy_id = self.append_message(NewMessage { topic: dlq, key: message.key.as_deref(), producer: None, body: &message.body });
        self.trace_book.push(self.now_ns, t, id, Happening::DeadLettered { group: g, copy_id: Some(copy_id) });
        self.log.open.waiters.push(Waiter::DeadLetter { topic: t, group: g, id });
        self.out.push_back(Output::Trace(Trace::DeadLettered { topic: topic_name, group: group_name, id }));
        self.stats.dead_lettered += 1;
        self.state.topics[t].groups[g].counters.dead_lettered += 1;
        self.maybe_flush();
    }

    /// Cluster mode: the copy is an entry of the shard (the dead-letter topic is created when
    /// it applies, like any topic); the id is settled for the group once it is applied. False
    /// when it cannot be proposed: the message stays ready.
    fn propose_dead_letter(&mut self, t: TopicIdx, g: GroupIdx, id: u64, message: &StoredMessage) -> bool {
        let topic = &self.state.topics[t];
        let (topic_name, group_name, is_dlq) = (topic.name.clone(), topic.groups[g].name.clone(), topic.is_dead_letter());
        self.state.topics[t].groups[g].start_dead_letter(id);
        if is_dlq {
            self.drop_dead_letter(t, g, id, NO_DLQ_OF_A_DLQ);
            return true;
        }
        let dlq_name = format!("{topic_name}.dlq");
        let copy = PublishCommand { ts_ms: self.now_ns / NS_PER_MS, topic: &dlq_name, key: message.key.as_deref(), producer: None, body: &message.body };
        match self.propose(&Command::Publish(copy), Proposal::DeadLetter { topic: t, group: g, id }) {
            Ok(()) => {
                self.out.push_back(Output::Trace(Trace::DeadLettered { topic: topic_name, group: group_name, id }));
                self.stats.dead_lettered += 1;
                self.state.topics[t].groups[g].counters.dead_lettered += 1;
                true
            }
            Err(_) => {
                self.state.topics[t].groups[g].finish_dead_letter(id, false);
                false
            }
        }
    }

    /// A message past its attempts that has nowhere to go: settled, and traced as dropped.
    fn drop_dead_letter(&mut self, t: TopicIdx, g: GroupIdx, id: u64, why: &'static str) {
        let topic = &self.state.topics[t];
        let (topic_name, group_name) = (topic.name.clone(), topic.groups[g].name.clone());
        self.out.push_back(Output::Trace(Trace::DeadLetterDropped { topic: topic_name, group: group_name, id, why }));
        self.state.topics[t].groups[g].finish_dead_letter(id, true);
        self.mark_group_dirty(t, g);
    }

    /// Pumps every group of topic `t`, the first `fan_out_groups_per_turn` at once and the rest
    /// in later turns: a message for 100,000 groups would otherwise hold the loop for a second,
    /// while raft's heartbeats wait and followers give up on their leader. A sweep still under
    /// way starts over: the groups it passed may have more to deliver now.
    pub(super) fn pump_topic(&mut self, t: TopicIdx) {
        self.sweeps.remove(&t);
        self.sweep_from(t, 0);
    }

    pub(super) fn go_on_sweeping(&mut self, t: TopicIdx) {
        if let Some(first) = self.sweeps.remove(&t) {
            self.sweep_from(t, first);
        }
    }

    fn sweep_from(&mut self, t: TopicIdx, first: usize) {
        let end = self.state.topics[t].groups.len().min(first + self.config.fan_out_groups_per_turn as usize);
        for g in first..end {
            self.pump(t, GroupIdx(g));
        }
        if end < self.state.topics[t].groups.len() {
            self.sweeps.insert(t, end);
            self.timers.insert((self.now_ns + NEXT_TURN_NS, Timer::PumpGroups { topic: t }));
        }
    }

    /// The ack deadlines of group `group` due at `at` expire; a spilled message's deadline
    /// waits for its chunk, and so do the later ones (the timer is set again when it is back).
    pub(super) fn on_ack_deadlines(&mut self, at: u64, topic: TopicIdx, group: GroupIdx) {
        let mut due: Vec<(u64, u64)> = Vec::new();
        while let Some(id) = self.state.topics[topic].groups[group].ack_deadlines.due_id(at) {
            let serial = self.state.topics[topic].groups[group].spill_of(id);
            if serial.is_some_and(|serial| !self.load_spill(topic, group, serial)) {
                return self.expire_all(topic, group, due, false);
            }
            due.extend(self.state.topics[topic].groups[group].ack_deadlines.take_due(at));
        }
        self.expire_all(topic, group, due, true);
    }

    /// Expires the deadlines `due` of group `group`, and sets its timer for the next one unless
    /// it waits for a spilled chunk (`rearm` false).
    fn expire_all(&mut self, topic: TopicIdx, group: GroupIdx, mut due: Vec<(u64, u64)>, rearm: bool) {
        // Deadlines are queued in delivery order; they expire in id order, as they always
        // have (a redelivery may have gone out after a higher id at one instant).
        due.sort_unstable_by_key(|&(deadline_ns, id)| (deadline_ns, id));
        for (deadline_ns, id) in due {
            self.expire_delivery(topic, group, id, deadline_ns);
        }
        if let Some(next_ns) = self.state.topics[topic].groups[group].ack_deadlines.next_ns().filter(|_| rearm) {
            self.timers.insert((next_ns, Timer::AckDeadline { topic, group }));
        }
    }

    /// A message's ack deadline came: unless it was settled or sent again meanwhile, it is
    /// ready for another delivery.
    fn expire_delivery(&mut self, topic: TopicIdx, group: GroupIdx, id: u64, deadline_ns: u64) {
        let Some((conn, bytes)) = self.state.topics[topic].groups[group].expire(id, deadline_ns) else { return };
        self.trace_book.push(self.now_ns, topic, id, Happening::TimedOut { group, conn });
        self.release_in_flight(conn, topic, group, bytes);
        if self.config.test_bug == Some(TestBug::ExpiryCountsAsAck) {
            self.ack_one(topic, group, id);
        }
        if self.config.test_bug == Some(TestBug::KeyReleasedOnExpiry) {
            self.state.topics[topic].groups[group].unblock_next_of_key(id);
        }
        self.pump(topic, group);
    }
}
