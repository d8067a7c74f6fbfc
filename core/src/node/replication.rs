//! Cluster mode (`peers` set): publishes and group creations become raft entries of the
//! node's shard, and the node applies committed entries to its state in log order, so every
//! replica gives the same ids. Entries and raft's hard state are records of the node's own
//! log (one log, see docs/CLUSTER-DESIGN.md): a `Persist` joins the open batch and is reported
//! durable with it. A message's place is its entry's record; its `puback` goes out when the
//! entry is applied, which raft allows only once a majority has it durable.
//!
//! Built in steps: today one shard whose only voter is the node itself. Peers (raft messages
//! over the mesh), forwarding to the leader, replicated positions and recovery follow.

use super::log::Waiter;
use super::state::{NewMessage, SeenSeq};
use super::{Node, Output, Trace, NS_PER_MS};
use crate::cluster::command::{self, Command, CreateGroupCommand, PublishCommand};
use crate::cluster::mesh::{self, PeerFrame};
use crate::cluster::replica::{ProposeError, Replica, ReplicaConfig, ReplicaInput, ReplicaOutput, RestartLog};
use crate::cluster::storage::Wanted;
use crate::cluster::NodeId;
use crate::config::{Config, TestBug};
use crate::group::GroupTerms;
use crate::ids::{ConnId, GroupIdx, TopicIdx};
use crate::protocol::{self, ErrorCode, Filter};
use crate::record::{self, AppliedRecord, RaftEntryRef, RaftStateRecord};
use crate::topic::{Loc, StoredMessage};
use crate::trace_book::Happening;
use raft::eraftpb::{Entry, HardState};
use std::collections::BTreeMap;
use std::rc::Rc;

/// raft ticks a follower waits without a leader's word before it stands for election, and
/// between a leader's heartbeats (in `raft_tick_ms` units).
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;
/// RFC 6455 1013: the server cannot serve the client now; it may reconnect.
pub(super) const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// A member waiting to join a group (`sub`, or `pull` with its `max` and wait).
pub(super) struct PendingJoin {
    pub(super) conn: ConnId,
    pub(super) req: Option<String>,
    pub(super) window: u32,
    pub(super) pull: Option<(u32, u64)>,
}

/// What this node does when one of its proposals is applied.
pub(super) enum Proposal {
    Publish {
        conn: ConnId,
        req: Option<String>,
        /// The id the leader expects it to get: only with a deliberate bug (`cluster_bugs`).
        predicted_id: Option<u64>,
        /// When the publish arrived (for the publish → puback latency).
        received_ns: u64,
    },
    Join(PendingJoin),
    /// The copy of `id` of (`topic`, `group`) in the dead-letter topic.
    DeadLetter {
        topic: TopicIdx,
        group: GroupIdx,
        id: u64,
    },
    /// A group position of this node's: already in its state when it applies.
    Position,
    /// An operator's action: applied like anyone's entry.
    Admin,
    /// A redrive's copy of dead letter `id` of (`topic`, `group`): settled once applied.
    Redriven {
        topic: TopicIdx,
        group: GroupIdx,
        id: u64,
    },
}

/// What a restart found in the log for the replica.
pub(super) struct RecoveredLog {
    pub(super) hard_state: HardState,
    /// (index, term) of every entry after `applied` (the snapshot's), as raft last persisted them.
    pub(super) terms: Vec<(u64, u64)>,
    /// The entries after `applied_through`, in memory.
    pub(super) tail: Vec<Entry>,
    /// The entry the oldest snapshot's state is as of.
    pub(super) applied: AppliedRecord,
    /// The entry the state will hold once recovery has applied the committed ones again.
    pub(super) applied_through: u64,
    pub(super) entry_locs: BTreeMap<u64, Loc>,
}

pub(super) struct Replication {
    replica: Replica,
    node_id: NodeId,
    proposals: BTreeMap<u64, Proposal>,
    next_proposal: u64,
    /// Where each entry's record lies in the log, by raft index.
    entry_locs: BTreeMap<u64, Loc>,
    /// Outputs are being taken from the replica: what an apply proposes is taken by that loop.
    draining: bool,
    /// The replica led the shard when its outputs were last taken.
    leading: bool,
    /// The leader and term last reported (`Trace::LeaderChanged`).
    reported_leader: (Option<NodeId>, u64),
    /// Recovery is applying entries again before the log goes on: writes wait here until it does.
    deferred: Option<Vec<Persist>>,
    /// Deliberate bugs only (`cluster_bugs`).
    pub(super) bugs: super::cluster_bugs::BugState,
    /// Entries being read back from disk for followers (`raft_reads`).
    pub(super) entry_reads: super::raft_reads::EntryReads,
    /// What the other nodes last said of themselves (`cluster_status`).
    pub(super) status: super::cluster_status::ClusterStatus,
    /// Followers reported as behind the log's first entry: (node, entry the state sent is as of).
    pub(super) reported_behind: std::collections::BTreeSet<(u64, u64)>,
    /// The read of the state for followers in flight: (token, raft index it is as of).
    pub(super) snapshot_read: Option<(u64, u64)>,
    /// Deliveries by reference waiting for their message (`remote_delivery`).
    pub(super) delivery_waits: super::remote_delivery::DeliveryWaits,
    /// Nodes whose link's queue is filling up: their clients get no messages meanwhile.
    pub(super) congested_peers: std::collections::BTreeSet<u64>,
}

struct Persist {
    number: u64,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
}

impl Replication {
    /// The replica restarting from what the log holds: raft then hands the committed entries
    /// after `log.applied` over to be applied again.
    pub(super) fn recover(config: &Config, now_ns: u64, log: RecoveredLog) -> Result<Replication, String> {
        let voters: Vec<NodeId> = config.voters()?.into_iter().map(|v| v.id).collect();
        let node_id = NodeId(config.node_id);
        let replica_config = ReplicaConfig {
            id: node_id,
            voters: voters.clone(),
            tick_ns: config.raft_tick_ms * NS_PER_MS,
            election_ticks: ELECTION_TICKS,
            heartbeat_ticks: HEARTBEAT_TICKS,
            seed: config.rng_seed,
            // Shard k would rather be led by the k-th voter: the shards' leaders spread.
            preferred_leader: (config.shards > 1).then(|| voters[config.shard_index as usize % voters.len()]),
        };
        let restart = RestartLog { hard_state: log.hard_state, compacted: (log.applied.index, log.applied.term), terms: log.terms, tail: log.tail, applied: log.applied_through };
        let replica = Replica::restart(&replica_config, now_ns, restart)?;
        Ok(Replication {
            replica,
            node_id,
            proposals: BTreeMap::new(),
            next_proposal: 1,
            entry_locs: log.entry_locs,
            draining: false,
            leading: false,
            reported_leader: (None, 0),
            deferred: Some(Vec::new()),
            bugs: Default::default(),
            entry_reads: Default::default(),
            status: super::cluster_status::ClusterStatus::new(voters),
            reported_behind: std::collections::BTreeSet::new(),
            snapshot_read: None,
            delivery_waits: Default::default(),
            congested_peers: Default::default(),
        })
    }

    pub(super) fn is_leader(&self) -> bool {
        self.replica.is_leader()
    }

    /// The node this one's clients' frames go to: the leader, while another node leads;
    /// `None` while this node leads (caught up or not) or no leader is known.
    pub(super) fn forward_target(&self) -> Option<NodeId> {
        let replica = &self.replica;
        if replica.is_caught_up_leader() {
            return None;
        }
        replica.leader().filter(|leader| *leader != self.node_id)
    }

    pub(super) fn poll_timeout(&self) -> Option<u64> {
        self.replica.poll_timeout()
    }

    pub(super) fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub(super) fn replica(&self) -> &Replica {
        &self.replica
    }

    pub(super) fn replica_mut(&mut self) -> &mut Replica {
        &mut self.replica
    }

    /// A state installed from the leader replaces the log: no entry of it is indexed anymore.
    pub(super) fn forget_all_entries(&mut self) {
        self.entry_locs.clear();
    }

    pub(super) fn memory_bytes(&self) -> u64 {
        self.replica.memory_bytes()
    }

    pub(super) fn take_wanted(&mut self) -> Vec<Wanted> {
        self.replica.take_wanted()
    }

    pub(super) fn entry_loc(&self, index: u64) -> Option<Loc> {
        self.entry_locs.get(&index).copied()
    }

    pub(super) fn entries_fetched(&mut self, entries: Vec<Entry>, context: raft::GetEntriesContext) {
        self.replica.entries_fetched(entries, context);
    }

    /// Retention deleted `segment` and those before it: their entries' places go.
    pub(super) fn forget_segments_through(&mut self, segment: u64) {
        self.entry_locs.retain(|_, loc| loc.segment > segment);
    }

    /// The proposal of this node an entry's context names, taken out.
    fn take_own(&mut self, context: &[u8]) -> Option<Proposal> {
        self.own_number(context).and_then(|number| self.proposals.remove(&number))
    }

    /// The number of this node's proposal an entry's context names; `None` for another's.
    pub(super) fn own_number(&self, context: &[u8]) -> Option<u64> {
        let node = u64::from_le_bytes(context.get(..8)?.try_into().ok()?);
        let number = u64::from_le_bytes(context.get(8..16)?.try_into().ok()?);
        (node == self.node_id.0).then_some(number)
    }

    /// When the oldest publish this node proposed and is still waiting for arrived.
    pub(super) fn oldest_pending_publish_ns(&self) -> Option<u64> {
        self.proposals.values().find_map(|proposal| match proposal {
            Proposal::Publish { received_ns, .. } => Some(*received_ns),
            _ => None,
        })
    }

    pub(super) fn proposals_mut(&mut self) -> &mut BTreeMap<u64, Proposal> {
        &mut self.proposals
    }
}

impl Node {
    /// Proposes `command`; `proposal` is carried out when it is applied. The error answers
    /// the client at once (this node cannot propose now).
    pub(super) fn propose(&mut self, command: &Command<'_>, proposal: Proposal) -> Result<(), (ErrorCode, String)> {
        let replication = self.replication.as_mut().expect("proposals are made in cluster mode");
        let number = replication.next_proposal;
        let mut context = Vec::with_capacity(16);
        context.extend_from_slice(&replication.node_id.0.to_le_bytes());
        context.extend_from_slice(&number.to_le_bytes());
        let mut data = Vec::new();
        command::encode(&mut data, command);
        match replication.replica.propose_with_context(context, data) {
            Ok(()) => {
                replication.next_proposal += 1;
                replication.proposals.insert(number, proposal);
                self.drain_replica();
                Ok(())
            }
            Err(ProposeError::NotLeader { leader }) => Err(not_leading(leader)),
            Err(ProposeError::Refused(why)) => Err((ErrorCode::Unavailable, format!("the topic's shard refused the change ({why}); retry"))),
        }
    }

    pub(super) fn replica_timeout(&mut self) {
        if let Some(replication) = self.replication.as_mut() {
            replication.replica.handle_timeout(self.now_ns);
            self.drain_replica();
        }
    }

    /// A frame from another node of the cluster.
    pub(super) fn on_peer_frame(&mut self, from_node: u64, payload: &[u8]) {
        let shard = self.shard();
        let Some(replication) = self.replication.as_mut() else {
            return self.out.push_back(Output::Trace(Trace::PeerMessageIgnored { from_node, bytes: payload.len() }));
        };
        match mesh::decode(payload) {
            Ok((from_shard, _)) if from_shard != shard => {
                let why = format!("a frame of shard {from_shard} reached shard {shard}");
                self.out.push_back(Output::Trace(Trace::PeerFrameRefused { from_node, why }));
            }
            Ok((_, PeerFrame::Raft(message))) => {
                replication.replica.handle_input(self.now_ns, ReplicaInput::Message(message));
                self.drain_replica();
            }
            Ok((_, PeerFrame::NodeInfo(info))) => self.on_node_info(from_node, info),
            Ok((_, client_frame)) => self.on_client_peer_frame(from_node, client_frame),
            Err(why) => self.out.push_back(Output::Trace(Trace::PeerFrameRefused { from_node, why })),
        }
    }

    /// Bounds the entries the replica keeps in memory to `raft_log_memory_bytes`, and moves
    /// raft's first entry up to what retention has deleted: everything up to the applied
    /// index the oldest segment's snapshot records.
    pub(super) fn compact_raft_memory(&mut self) {
        let first_kept = self.log.segments.front().map_or(0, |s| s.snapshot_applied_index);
        let Some(replication) = self.replication.as_mut() else { return };
        replication.replica.trim_memory(self.config.raft_log_memory_bytes);
        if let Err(why) = replication.replica.compact_to(first_kept) {
            self.stop(format!("raft's log cannot follow retention: {why}"));
        }
    }

    /// The log made the `Persist` of this number durable.
    pub(super) fn on_raft_persisted(&mut self, number: u64) {
        self.send_early_pubacks(number);
        let replication = self.replication.as_mut().expect("raft writes are made in cluster mode");
        replication.replica.handle_input(self.now_ns, ReplicaInput::Persisted { number });
        self.drain_replica();
    }

    /// The log has started (after recovery): the writes raft asked for meanwhile go in it.
    pub(super) fn start_raft_writes(&mut self) {
        let deferred = self.replication.as_mut().and_then(|r| r.deferred.take()).unwrap_or_default();
        for persist in deferred {
            self.persist_raft(persist.number, &persist.entries, persist.hard_state.as_ref());
        }
        self.drain_replica();
    }

    /// Carries out what the replica asks, in order, until it asks nothing more.
    pub(super) fn drain_replica(&mut self) {
        let Some(replication) = self.replication.as_mut() else { return };
        if replication.draining {
            return;
        }
        replication.draining = true;
        while let Some(output) = self.replication.as_mut().and_then(|r| r.replica.poll_output()) {
            match output {
                ReplicaOutput::Send(message) => {
                    let to_node = message.to;
                    self.peer_send(to_node, &PeerFrame::Raft(message));
                }
                ReplicaOutput::Persist { number, entries, hard_state } => match self.replication.as_mut().and_then(|r| r.deferred.as_mut()) {
                    Some(deferred) => deferred.push(Persist { number, entries, hard_state }),
                    None => {
                        self.persist_raft(number, &entries, hard_state.as_ref());
                        self.apply_uncommitted(&entries);
                    }
                },
                ReplicaOutput::Apply { index, term, data, context } => self.apply_entry(index, term, &data, &context),
                ReplicaOutput::Install { index, term, data } => self.install_state(index, term, &data),
            }
        }
        let Some(replication) = self.replication.as_mut() else { return };
        replication.draining = false;
        let leading = replication.replica.is_leader();
        let was_leading = replication.leading;
        let leader = (replication.replica.leader(), replication.replica.term());
        let leader_changed = leader != replication.reported_leader;
        replication.reported_leader = leader;
        if leader_changed {
            self.out.push_back(Output::Trace(Trace::LeaderChanged { shard: self.config.shard_index, leader: leader.0.map(|node| node.0), term: leader.1 }));
            self.end_forwarding_except(leader.0);
        }
        if was_leading && !leading {
            self.on_lead_lost();
        }
        if leading && !was_leading {
            // Acks for what the previous leader delivered may come here now.
            for topic in &mut self.state.topics {
                topic.groups.iter_mut().for_each(crate::group::Group::take_over);
            }
        }
        self.read_wanted_entries();
        self.serve_state_requests();
        self.release_applied_deliveries();
        if let Some(replication) = self.replication.as_mut() {
            replication.leading = leading;
        }
    }

    /// Err(`unavailable`) unless this node leads the shard and has applied everything
    /// committed (so what it serves misses nothing acknowledged), naming the leader it knows.
    pub(super) fn check_leading(&self) -> Result<(), (ErrorCode, String)> {
        let replica = &self.replication.as_ref().expect("cluster mode").replica;
        if replica.is_caught_up_leader() {
            return Ok(());
        }
        Err(not_leading(replica.leader()))
    }

    /// Another node leads now: what this one proposed may or may not commit, so each waiting
    /// client is told to retry (a publish with `producer` and `seq` is then stored once), and
    /// the members of its groups are closed, to subscribe again where the leader is.
    fn on_lead_lost(&mut self) {
        let proposals = std::mem::take(&mut self.replication.as_mut().expect("cluster mode").proposals);
        let why = "this node stopped leading the topic's shard before the change was committed; it may or may not be stored: retry";
        for proposal in proposals.into_values() {
            if let Some(Proposal::DeadLetter { topic, group, id }) = self.refuse_client(proposal, ErrorCode::Unavailable, why) {
                self.state.topics[topic].groups[group].finish_dead_letter(id, false);
            }
        }
        let members: Vec<ConnId> = self.conns.iter().filter(|(_, c)| !c.subs.is_empty()).map(|(conn, _)| *conn).collect();
        for conn in members {
            if !self.redrives.contains_key(&conn) {
                self.out.push_back(Output::Close { conn, code: CLOSE_TRY_AGAIN_LATER, reason: "this node no longer leads the shard; subscribe again".into() });
            }
            self.on_disconnected(conn);
        }
        // A redrive stops with the lead; its position is replicated: the new leader's
        // operator redrives again from there.
        self.redrives.clear();
    }

    /// Writes a `Persist` into the open batch: its entries (each where the log is, rolling
    /// segments like messages do), then the hard state, then a waiter reporting it durable.
    fn persist_raft(&mut self, number: u64, entries: &[Entry], hard_state: Option<&HardState>) {
        if let Some(first) = entries.first() {
            // A write from index i on replaces the uncommitted entries from i on.
            self.replication.as_mut().expect("cluster mode").entry_locs.split_off(&first.index);
        }
        for entry in entries {
            let size = record::raft_entry_record_bytes(entry.data.len()) as u64;
            self.make_room_in_segment(size);
            self.open_batch_data();
            let loc = Loc { segment: self.log.segment, offset: self.log.segment_len, len: size as u32 };
            let record = RaftEntryRef { index: entry.index, term: entry.term, entry_type: entry.entry_type as u8, data: &entry.data };
            let written = record::encode_raft_entry(&mut self.log.open.data, &record) as u64;
            debug_assert_eq!(written, size);
            self.log.segment_len += written;
            self.replication.as_mut().expect("cluster mode").entry_locs.insert(entry.index, loc);
            let info = self.log.segments.back_mut().expect("the current segment is listed");
            info.last_entry_index = info.last_entry_index.max(entry.index);
        }
        if let Some(hs) = hard_state {
            let data = self.open_batch_data();
            let written = record::encode_raft_state(data, &RaftStateRecord { term: hs.term, vote: hs.vote, commit: hs.commit }) as u64;
            self.log.segment_len += written;
        }
        self.note_early_pubacks(number, entries);
        if self.config.test_bug == Some(TestBug::RaftPersistedEarly) {
            // The draining loop this runs in takes what raft does next.
            self.replication.as_mut().expect("cluster mode").replica.handle_input(self.now_ns, ReplicaInput::Persisted { number });
        } else {
            self.log.open.waiters.push(Waiter::RaftPersisted { number });
        }
        self.maybe_flush();
    }

    pub(super) fn apply_entry(&mut self, index: u64, term: u64, data: &[u8], context: &[u8]) {
        if self.applied_early(index) {
            return;
        }
        let proposal = self.replication.as_mut().and_then(|r| r.take_own(context));
        self.state.applied = Some(AppliedRecord { index, term, installed: false, shards: self.config.shards });
        if data.is_empty() {
            // A new leader's first entry: nothing to apply.
            return;
        }
        match command::decode(data) {
            Ok(Command::Publish(publish)) => self.apply_publish_entry(index, &publish, proposal),
            Ok(Command::CreateGroup(create)) => self.apply_create_group_entry(create, proposal),
            Ok(Command::Position(record)) => self.apply_position(&record, proposal),
            // Dead letters are publishes to `<topic>.dlq` with the group's position settling
            // the id; this command is not proposed.
            Ok(Command::DeadLetter(_)) => {}
            Ok(Command::ResetGroup(reset)) => {
                self.apply_reset_group(&reset.topic, &reset.group, reset.to.into());
            }
            Ok(Command::DropGroup(drop)) => self.apply_drop_group(&drop.topic, &drop.group),
            // Every replica holds the same bytes and would refuse them alike; going on would
            // skip what the others may have applied.
            Err(error) => self.stop(format!("raft entry {index} does not decode ({error}); its replicas cannot apply it")),
        }
    }

    fn apply_publish_entry(&mut self, index: u64, publish: &PublishCommand<'_>, proposal: Option<Proposal>) {
        let t = match self.state.topic_for(publish.topic) {
            Ok(t) => t,
            Err(message) => return self.answer_unapplied(proposal, ErrorCode::Overloaded, &message),
        };
        if let Some((producer, seq)) = publish.producer {
            if let Some(seen) = self.state.producers.get(producer).and_then(|p| p.seqs.get(&seq)) {
                // A retry committed after its original: it answers with the original's id.
                let (seen_topic, id) = (seen.topic, seen.id);
                self.stats.deduplicated += 1;
                return self.answer_applied(proposal, seen_topic, id);
            }
        }
        let loc = *self.replication.as_ref().and_then(|r| r.entry_locs.get(&index)).expect("an entry is written before it is applied");
        let message = NewMessage { topic: t, key: publish.key, producer: publish.producer, body: publish.body };
        let id = self.state.apply_publish(&message, loc, publish.ts_ms);
        if let Some(key) = publish.key {
            self.state.record_latest(t, id, key, publish.ts_ms, publish.body, loc.segment);
        }
        if let Some((producer, seq)) = publish.producer {
            // Committed: a retry from now on is answered at once.
            self.state.remember_seq(producer, seq, SeenSeq { topic: t, id, durable: true });
        }
        let stored = StoredMessage { id, ts_ms: publish.ts_ms, stored_ns: self.now_ns, key: publish.key.map(Into::into), body: publish.body.into(), raft_index: index };
        let (topic_max, total_max) = (self.config.topic_cache_bytes, self.config.cache_bytes_total);
        self.cache_budget.push(&mut self.state.topics, t, Rc::new(stored), topic_max, total_max);
        let topic = &mut self.state.topics[t];
        topic.durable_next_id = topic.durable_next_id.max(id + 1);
        self.trace_book.push(self.now_ns, t, id, Happening::Stored { segment: loc.segment });
        self.stats.published += 1;
        self.state.topics[t].published += 1;
        self.answer_applied(proposal, t, id);
        self.pump_topic(t);
    }

    fn apply_create_group_entry(&mut self, create: CreateGroupCommand, proposal: Option<Proposal>) {
        let t = match self.state.topic_for(&create.topic) {
            Ok(t) => t,
            Err(message) => return self.answer_unapplied(proposal, ErrorCode::Overloaded, &message),
        };
        let terms = GroupTerms { filter: create.filter.and_then(Filter::from_json), coalesce_ms: create.coalesce_ms };
        let g = match self.state.topics[t].group_index.get(&create.group) {
            // Created by an earlier entry (two first members at once): join it if it matches.
            Some(&g) => match self.state.topics[t].groups[g].terms.conflict(&create.group, &terms) {
                Some(conflict) => return self.answer_unapplied(proposal, ErrorCode::Conflict, &conflict),
                None => g,
            },
            None if self.state.topics[t].group_index.len() >= self.config.groups_per_topic_max as usize => {
                let message = format!("group limit reached (groups_per_topic_max = {})", self.config.groups_per_topic_max);
                return self.answer_unapplied(proposal, ErrorCode::Overloaded, &message);
            }
            None => {
                let ack_timeout_ns = self.config.ack_timeout_ms_for(&create.group) * NS_PER_MS;
                let max_attempts = self.config.max_attempts_for(&create.group);
                let g = self.state.apply_create_group(t, &create.group, create.from.into(), terms, ack_timeout_ns, max_attempts);
                self.state.topics[t].groups[g].durable = true;
                self.mark_group_dirty(t, g);
                g
            }
        };
        if let Some(Proposal::Join(join)) = proposal {
            self.admit_member(join.conn, join.req, t, g, join.window, join.pull);
        }
    }

    /// The shard leader's groups' positions, as entries (every `ack_persist_interval_ms` at
    /// most, like a single node's group records): followers take them, so a new leader does not
    /// deliver again what was acked.
    pub(super) fn propose_positions(&mut self) {
        let dirty = std::mem::take(&mut self.dirty_groups);
        if !self.replication.as_ref().is_some_and(|r| r.replica.is_leader()) {
            return;
        }
        for (t, g) in dirty {
            let topic = &self.state.topics[t];
            let record = topic.groups[g].to_record(&topic.name);
            // Refused only when this node no longer leads: the next leader proposes its own.
            let _ = self.propose(&Command::Position(record), Proposal::Position);
        }
    }

    /// A position another node proposed (or this one, before a restart): what it settles is
    /// acked here too. The proposer's own, applied on it, is already in its state.
    fn apply_position(&mut self, record: &record::GroupRecord, proposal: Option<Proposal>) {
        if matches!(proposal, Some(Proposal::Position)) {
            return;
        }
        let Ok((t, g)) = self.state.group_of(&record.topic, &record.group) else { return };
        if record.resets < self.state.topics[t].groups[g].resets {
            // Proposed before a reset that committed first: the group has moved since.
            return;
        }
        for id in self.state.topics[t].groups[g].settled_by(record) {
            self.ack_one(t, g, id);
        }
        self.state.topics[t].groups[g].take_position(record);
        self.pump(t, g);
    }

    /// The proposal's entry was applied and gave `id` of topic `t`.
    fn answer_applied(&mut self, proposal: Option<Proposal>, t: TopicIdx, id: u64) {
        match proposal {
            Some(Proposal::Publish { conn, req, predicted_id, received_ns }) => {
                self.pending_publishes -= 1;
                self.stats.publish_to_puback.record(self.now_ns.saturating_sub(received_ns));
                let id = if self.config.test_bug == Some(TestBug::IdsAssignedAtPropose) { predicted_id.unwrap_or(id) } else { id };
                if self.conns.contains_key(&conn) {
                    let mut frame = String::with_capacity(64);
                    protocol::encode_puback(&mut frame, req.as_deref(), &self.state.topics[t].name, id);
                    self.send(conn, frame);
                }
            }
            Some(Proposal::DeadLetter { topic, group, id: original }) => {
                self.trace_book.push(self.now_ns, topic, original, Happening::DeadLettered { group, copy_id: Some(id) });
                self.settle_dead_letter(topic, group, original)
            }
            Some(Proposal::Redriven { topic, group, id: original }) => self.settle_redriven(topic, group, original),
            Some(Proposal::Join(_) | Proposal::Position | Proposal::Admin) | None => {}
        }
    }

    /// The dead-letter copy of `id` was stored (or can never be): the id is settled.
    fn settle_dead_letter(&mut self, t: TopicIdx, g: GroupIdx, id: u64) {
        self.state.topics[t].groups[g].finish_dead_letter(id, true);
        self.mark_group_dirty(t, g);
        self.pump(t, g);
    }

    /// The proposal's entry could not be applied (the same on every replica).
    fn answer_unapplied(&mut self, proposal: Option<Proposal>, code: ErrorCode, message: &str) {
        if let Some(Proposal::DeadLetter { topic, group, id }) = proposal.and_then(|p| self.refuse_client(p, code, message)) {
            self.settle_dead_letter(topic, group, id);
        }
    }

    /// Answers the client a publish or a join waits for with an error; hands any other
    /// proposal back to the caller.
    fn refuse_client(&mut self, proposal: Proposal, code: ErrorCode, message: &str) -> Option<Proposal> {
        let (conn, req) = match proposal {
            Proposal::Publish { conn, req, .. } => {
                self.pending_publishes -= 1;
                (conn, req)
            }
            Proposal::Join(join) => (join.conn, join.req),
            other => return Some(other),
        };
        if self.conns.contains_key(&conn) {
            self.send_error(conn, req.as_deref(), code, message);
        }
        None
    }
}

fn not_leading(leader: Option<NodeId>) -> (ErrorCode, String) {
    let leader = leader.map_or("none known".to_string(), |l| format!("node {l}"));
    (ErrorCode::Unavailable, format!("this node does not lead the topic's shard (leader: {leader}); retry"))
}
