//! The simulated nodes: one, or a cluster of 1, 3 or 5 voters, each with its own disk, crashing
//! and restarting from what its disk kept; their outputs become events (client frames, disk
//! completions, peer frames over the simulated network).

use super::{Event, World, MS};
use crate::disk::SimDisk;
use crate::identity::INV_EXPIRY;
use ferry_core::node::{DiskError, DiskOp, Input, Output};
use ferry_core::testkit::Completion;
use ferry_core::{Config, ConnId, FsyncPolicy, Host};
use rand::Rng;

/// Every fourth seed runs a cluster; its size is drawn from the seed too (not the rng, so
/// every seed keeps its draws).
pub fn voters_for(seed: u64) -> usize {
    if seed % 4 == 2 {
        [1, 3, 5][(seed / 4 % 3) as usize]
    } else {
        0
    }
}

/// The `peers` setting of a seed's nodes: empty for a single node.
pub fn peers_for(seed: u64) -> String {
    (1..=voters_for(seed)).map(|id| format!("{id}@127.0.0.1:{}", 7810 + id)).collect::<Vec<_>>().join(",")
}

/// The peer links of a cluster, modelled as TCP connections: frames on one link arrive in
/// the order sent, never duplicated; a link breaks as a whole (a lost frame, a partition, a
/// crashed end), losing what is in flight on it, and both ends hear of it
/// (`Input::PeerDown`); the next frame goes over a new connection (the next epoch).
#[derive(Default)]
pub struct PeerLinks {
    nodes: usize,
    /// Per unordered pair: the connection frames now travel on.
    epoch: Vec<u64>,
    /// Per ordered pair: when its last frame arrives (the next one comes after it).
    last_arrival: Vec<u64>,
    /// Per unordered pair: until when the network between the two is cut (a split).
    cut_until: Vec<u64>,
    /// Per ordered pair: until when frames that way are held (a one-way outage: TCP sends
    /// them again once the path is back, in order; shorter than the silence that resets a
    /// link, so the link stays up).
    stalled_until: Vec<u64>,
}

impl PeerLinks {
    pub fn new(nodes: usize) -> PeerLinks {
        PeerLinks { nodes, epoch: vec![0; nodes * nodes], last_arrival: vec![0; nodes * nodes], cut_until: vec![0; nodes * nodes], stalled_until: vec![0; nodes * nodes] }
    }

    /// The network is whole again.
    pub fn heal(&mut self) {
        self.cut_until.iter_mut().chain(&mut self.stalled_until).for_each(|until| *until = 0);
    }

    fn pair(&self, a: usize, b: usize) -> usize {
        a.min(b) * self.nodes + a.max(b)
    }
}

pub struct SimNode {
    pub config: Config,
    pub node: Option<Host>,
    /// Counts incarnations: completions of an earlier one are dropped.
    pub epoch: u64,
    pub disk: SimDisk,
    /// A cluster node whose log was damaged at rest: it refuses to start, and stays down (an
    /// operator rebuilds it; the others, a majority, go on without it).
    pub damaged: bool,
    /// A slow node: its fsyncs take this many times longer, and frames from its peers wait
    /// `SLOW_NODE_FRAME_DELAY_US` more before it takes them (a loaded machine). 1: normal.
    pub slowness: u64,
}

/// How much slower a slow node's fsyncs are, and how late it takes its peers' frames.
const SLOW_NODE_FSYNC_FACTOR: u64 = 20;
const SLOW_NODE_FRAME_DELAY_US: u64 = 3_000;

/// The slow node of a cluster seed, if any: one cluster seed of several nodes in five (from
/// the seed, not the rng, so every seed keeps its draws).
pub fn slow_node_for(seed: u64) -> Option<usize> {
    let voters = voters_for(seed);
    (voters > 1 && seed / 4 % 5 == 1).then(|| (seed / 20) as usize % voters)
}

impl SimNode {
    /// The seed's nodes, fresh: one, or every voter `config.peers` names.
    pub fn start_all(config: &Config, eio_chance: f64, slow: Option<usize>) -> Vec<SimNode> {
        let voters = config.voters().expect("the simulator writes valid peers");
        let ids: Vec<u64> = if voters.is_empty() { vec![config.node_id] } else { voters.iter().map(|v| v.id.0).collect() };
        ids.into_iter()
            .enumerate()
            .map(|(at, id)| {
                let config = Config { node_id: id, rng_seed: config.rng_seed.wrapping_add(id - 1), ..config.clone() };
                let node = Host::new(config.clone(), super::EPOCH);
                let mut disk = SimDisk::default();
                disk.eio_chance = eio_chance;
                let slowness = if slow == Some(at) { SLOW_NODE_FSYNC_FACTOR } else { 1 };
                SimNode { config, node: Some(node), epoch: 1, disk, damaged: false, slowness }
            })
            .collect()
    }

    pub fn is_up_in(&self, epoch: u64) -> bool {
        self.node.is_some() && self.epoch == epoch
    }
}

impl World {
    /// A node for a new connection or a fault: drawn only when there are several.
    pub(super) fn pick_node(&mut self) -> usize {
        if self.nodes.len() > 1 {
            self.rng.gen_range(0..self.nodes.len())
        } else {
            0
        }
    }

    /// The earliest timer of any running node: (when, which).
    pub(super) fn next_node_timeout(&self) -> Option<(u64, usize)> {
        self.nodes.iter().enumerate().filter_map(|(at, n)| n.node.as_ref().and_then(Host::poll_timeout).map(|t| (t, at))).min()
    }

    pub(super) fn node_input(&mut self, node: usize, input: Input<'_>) {
        let now = self.now;
        self.run_node(node, |running| running.handle_input(now, input));
        self.drain_node(node);
    }

    /// Runs `step` on node `node`'s process, if it runs. With a deliberate bug on, a panic
    /// in the core (raft-rs stops on a log that broke the promises it was given) is that
    /// process dying: the node crashes and restarts, and the clients' checkers alone must
    /// notice what the bug did. Without one, a panic is a bug of its own and fails the seed.
    pub(super) fn run_node(&mut self, node: usize, step: impl FnOnce(&mut Host)) {
        let Some(running) = self.nodes[node].node.as_mut() else { return };
        if self.options.bug.is_none() {
            return step(running);
        }
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(running))).is_err() {
            self.count_fault("node-panic");
            self.crash_node_as(node, false);
        }
    }

    /// Input for the node connection `conn` is to, if it is still open.
    pub(super) fn conn_input(&mut self, conn: ConnId, input: Input<'_>) {
        if let Some(node) = self.conns.get(&conn).map(|c| c.node) {
            self.node_input(node, input);
        }
    }

    pub(super) fn drain_node(&mut self, node: usize) {
        while let Some(output) = self.nodes[node].node.as_mut().and_then(Host::poll_output) {
            match output {
                Output::Send { conn, frame } => {
                    let delay = self.latency();
                    let Some(state) = self.conns.get_mut(&conn) else { continue };
                    if let Some(exp) = state.token_exp.filter(|exp| self.now > *exp) {
                        let late_ms = (self.now - exp) / MS;
                        self.checker.violation(INV_EXPIRY, format!("conn {conn} was sent {frame} {late_ms} ms after its token expired"));
                    }
                    let at = (self.now + delay).max(state.to_client_at + 1);
                    state.to_client_at = at;
                    self.schedule(at, Event::ToClient { conn, text: frame, sent_at: self.now });
                }
                Output::Close { conn, code, reason } => {
                    self.trace(|| format!("node closes conn {conn} with {code}"));
                    let token_exp = self.conns.get(&conn).and_then(|c| c.token_exp);
                    if let Some(exp) = token_exp.filter(|exp| reason.contains("token expired") && self.now < *exp) {
                        let early_ms = (exp - self.now) / MS;
                        self.checker.violation(INV_EXPIRY, format!("conn {conn} was closed for an expired token {early_ms} ms before its token expired"));
                    }
                    // One TCP stream: what the node sent before its close still arrives.
                    let Some(last_frame_at) = self.conns.get(&conn).map(|c| c.to_client_at) else { continue };
                    self.schedule(last_frame_at.max(self.now), Event::NodeClosed { conn });
                }
                Output::Disk(op) => self.disk_op(node, op),
                Output::Stop { why } => {
                    self.trace(|| format!("node {} stops: {why}", node + 1));
                    self.crash_node_as(node, false);
                    return;
                }
                Output::PeerSend { to_node, payload } => {
                    let to = to_node as usize - 1;
                    if to >= self.nodes.len() || to == node {
                        continue;
                    }
                    // Now and then a link breaks (a tenth as often as client frames are lost:
                    // every break ends the forwarded sessions on it).
                    let lost = self.swarm.drop_chance > 0.0 && !self.healing && self.rng.gen_bool(self.swarm.drop_chance / 10.0);
                    if lost {
                        self.break_peer_link(node, to);
                        continue;
                    }
                    let pair = self.peer_links.pair(node, to);
                    let epoch = self.peer_links.epoch[pair];
                    let ordered = node * self.nodes.len() + to;
                    let late = if self.nodes[to].slowness > 1 { SLOW_NODE_FRAME_DELAY_US * 1_000 } else { 0 };
                    let at = (self.now + self.latency() + late).max(self.peer_links.stalled_until[ordered]).max(self.peer_links.last_arrival[ordered] + 1);
                    self.peer_links.last_arrival[ordered] = at;
                    self.schedule(at, Event::PeerFrame { from: node, to, epoch, payload });
                }
                Output::Trace(trace) => {
                    self.hash.mix(format!("{trace:?}").as_bytes());
                    self.trace(|| format!("node trace {trace:?}"));
                }
            }
        }
        self.steps += 1;
        // With a deliberate bug on, the node's own assertions stay quiet: the clients' checkers
        // alone must catch it.
        let every = if cfg!(debug_assertions) { 16 } else { 256 };
        if self.options.bug.is_none() && self.steps.is_multiple_of(every) {
            if let Some(running) = &self.nodes[node].node {
                running.check_invariants();
            }
        }
    }

    fn disk_op(&mut self, node: usize, op: DiskOp) {
        let sync = matches!(op, DiskOp::Write { sync: true, .. });
        self.trace(|| match &op {
            DiskOp::Write { segment, offset, data, .. } => format!("disk write seg {segment} @{offset} {} bytes", data.len()),
            other => format!("disk {other:?}"),
        });
        let reply = self.nodes[node].disk.issue(&op, &mut self.rng);
        let epoch = self.nodes[node].epoch;
        match reply {
            Some(Completion::Write { token, result }) => {
                let write_us = self.rng.gen_range(5..100);
                let fsync_us = if sync { self.rng.gen_range(100..2_000) * self.nodes[node].slowness } else { 0 };
                if matches!(result, Err(DiskError::Io(_))) {
                    self.count_fault("eio");
                }
                self.schedule(self.now + (write_us + fsync_us) * 1_000, Event::DiskDone { node, epoch, token, result });
            }
            Some(Completion::Read { token, bytes }) => {
                let read_us = self.rng.gen_range(5..200);
                self.schedule(self.now + read_us * 1_000, Event::ReadDone { node, epoch, token, bytes });
            }
            Some(Completion::Truncate { token, result }) => {
                if result.is_err() {
                    self.count_fault("truncate-eio");
                }
                let truncate_us = self.rng.gen_range(50..1_000);
                self.schedule(self.now + truncate_us * 1_000, Event::TruncateDone { node, epoch, token, result });
            }
            None => {}
        }
    }

    /// Ends a connection: the node learns now, the client after a delay.
    pub(super) fn drop_conn(&mut self, conn: ConnId, tell_node: bool) {
        let Some(state) = self.conns.remove(&conn) else { return };
        self.congested.remove(&conn);
        if tell_node {
            self.node_input(state.node, Input::Disconnected { conn });
        }
        let delay = self.latency();
        self.schedule(self.now + delay, Event::ClientLost { client: state.client, conn });
    }

    /// A peer frame reaches the end of its link, unless the link broke meanwhile, or breaks
    /// now (a partition between the two, or a crashed receiver).
    pub(super) fn peer_frame_arrives(&mut self, from: usize, to: usize, epoch: u64, payload: &[u8]) {
        if epoch != self.peer_links.epoch[self.peer_links.pair(from, to)] {
            return;
        }
        let pair = self.peer_links.pair(from, to);
        let cut = self.peers_cut_until[from].max(self.peers_cut_until[to]).max(self.peer_links.cut_until[pair]) > self.now;
        if cut || self.nodes[to].node.is_none() {
            return self.break_peer_link(from, to);
        }
        self.trace(|| match ferry_core::cluster::mesh::decode(payload) {
            Ok((shard, ferry_core::cluster::mesh::PeerFrame::Raft(_))) => format!("peer frame {} -> {} (shard {shard} raft, {} bytes)", from + 1, to + 1, payload.len()),
            Ok((shard, frame)) => format!("peer frame {} -> {} shard {shard} {frame:?}", from + 1, to + 1),
            Err(why) => format!("peer frame {} -> {} that does not decode ({why})", from + 1, to + 1),
        });
        self.node_input(to, Input::PeerMessage { from_node: from as u64 + 1, payload });
    }

    /// The link between two nodes breaks: frames in flight on it are lost and each running
    /// end hears of it.
    pub(super) fn break_peer_link(&mut self, a: usize, b: usize) {
        let pair = self.peer_links.pair(a, b);
        self.peer_links.epoch[pair] += 1;
        self.trace(|| format!("peer link {} - {} broke", a + 1, b + 1));
        for (end, other) in [(a, b), (b, a)] {
            self.node_input(end, Input::PeerDown { node: other as u64 + 1 });
        }
    }

    /// The network splits the cluster in two for a while: a random side of at most half the
    /// nodes (one of 3, one or two of 5) against the rest, and now and then one node (a
    /// bridge) keeps its links to both sides.
    pub(super) fn split_the_cluster(&mut self) {
        let n = self.nodes.len();
        let side_len = self.rng.gen_range(1..=n / 2);
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, self.rng.gen_range(0..=i));
        }
        let side: Vec<usize> = order[..side_len].to_vec();
        let bridge = (n >= 3 && self.rng.gen_bool(0.5)).then(|| order[n - 1]);
        let until = self.now + self.rng.gen_range(100..3_000) * MS;
        for a in 0..n {
            for b in a + 1..n {
                let across = side.contains(&a) != side.contains(&b);
                if across && bridge != Some(a) && bridge != Some(b) {
                    let pair = self.peer_links.pair(a, b);
                    self.peer_links.cut_until[pair] = self.peer_links.cut_until[pair].max(until);
                }
            }
        }
        self.count_fault(if bridge.is_some() { "peer-split-bridged" } else { "peer-split" });
    }

    /// One way between two nodes goes dark for a while (the other way works): frames that
    /// way arrive, in order, once it is back.
    pub(super) fn stall_one_way(&mut self) {
        let n = self.nodes.len();
        let from = self.rng.gen_range(0..n);
        let to = (from + self.rng.gen_range(1..n)) % n;
        let until = self.now + self.rng.gen_range(100..4_000) * MS;
        let ordered = from * n + to;
        self.peer_links.stalled_until[ordered] = self.peer_links.stalled_until[ordered].max(until);
        self.count_fault("peer-one-way");
        self.trace(|| format!("frames from node {} to node {} held until {} ms", from + 1, to + 1, (until - super::EPOCH) / MS));
    }

    /// A bit rots in a cluster node's sealed segment; the node dies and its next start finds
    /// the damage. Only in clusters of three or more and once per run: a damaged node stays
    /// down, and the others must still be a majority.
    pub(super) fn damage_a_cluster_node(&mut self) {
        let node = self.pick_node();
        if self.nodes.len() < 3 || self.nodes[node].node.is_none() {
            return;
        }
        let Some(segment) = self.nodes[node].disk.flip_bit_in_raft_entry(&mut self.rng) else { return };
        self.bitflipped = true;
        self.nodes[node].damaged = true;
        self.count_fault("bit-flip");
        self.trace(|| format!("bit flip in node {}'s segment {segment}", node + 1));
        self.crash_node_as(node, false);
    }

    pub(super) fn crash_a_node(&mut self) {
        let power_loss = self.config.fsync != FsyncPolicy::Never && self.rng.gen_bool(0.5);
        let node = self.pick_node();
        self.crash_node_as(node, power_loss);
    }

    /// Every node's process dies at once (no power loss); each restarts within 6 s.
    pub(super) fn crash_every_node(&mut self) {
        for node in 0..self.nodes.len() {
            self.crash_node_as(node, false);
        }
    }

    /// The node's process dies (a crash, or a stop it asked for); with `power_loss` the
    /// machine loses what was not fsynced as well.
    fn crash_node_as(&mut self, node: usize, power_loss: bool) {
        if self.nodes[node].node.is_none() {
            return;
        }
        self.count_fault(if power_loss { "crash+power-loss" } else { "crash" });
        if let Some(dying) = self.nodes[node].node.take() {
            self.counted_before_crashes = self.counted_before_crashes.plus(&dying.stats());
        }
        self.nodes[node].epoch += 1;
        let lost = self.nodes[node].disk.crash(power_loss, &mut self.rng);
        self.trace(|| format!("node {} crashed; {lost} unsynced bytes lost", node + 1));
        let conns: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.node == node).map(|(conn, _)| *conn).collect();
        for conn in conns {
            self.drop_conn(conn, false);
        }
        for other in (0..self.nodes.len()).filter(|other| *other != node) {
            self.break_peer_link(node, other);
        }
        let mut down = self.rng.gen_range(10..2_000) * MS;
        if self.nodes.len() > 1 && self.config.retention_age_ms < u64::MAX / 4 {
            // Long enough, now and then, for retention to delete entries the node lacks: it
            // must then take the leader's state (state transfer).
            down *= 3;
        }
        self.schedule(self.now + down, Event::Restart { node });
    }

    pub(super) fn restart_node(&mut self, node: usize) {
        let config = self.nodes[node].config.clone();
        let segments = self.nodes[node].disk.segments();
        let recover = |config: Config| std::panic::catch_unwind(|| Host::recover(config, &segments, self.now));
        let attempt = match recover(config.clone()) {
            Ok(attempt) => attempt,
            // Only with a deliberate bug on (see `run_node`): the node stays down.
            Err(_) if self.options.bug.is_some() => return self.count_fault("node-panic"),
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let (recovered, refusal) = match attempt {
            Ok(recovered) => (recovered, None),
            Err(refusal) if self.nodes[node].damaged => {
                // Fail-stop: a damaged replica is not salvaged; it stays down.
                self.count_fault("damaged-node-stays-down");
                return self.trace(|| format!("node {} refused to restart and stays down: {refusal}", node + 1));
            }
            // Only a node whose disk was damaged may refuse: any other log always restarts.
            Err(refusal) if !config.peers.is_empty() => panic!("cluster node {} refused to restart: {refusal}", node + 1),
            Err(refusal) => {
                // What an operator does on a refused start: look, then start with salvage.
                let config = Config { salvage: true, ..config };
                (Host::recover(config, &segments, self.now).expect("salvage always starts"), Some(refusal))
            }
        };
        if let Some(refusal) = refusal {
            self.count_fault("salvage-restart");
            self.trace(|| format!("recovery refused: {refusal}"));
        }
        let (running, report) = recovered;
        if let Some(torn) = &report.torn_tail {
            self.trace(|| format!("recovery cut a torn tail: {torn}"));
        }
        self.nodes[node].node = Some(running);
        self.nodes[node].epoch += 1;
        self.trace(|| format!("node {} restarted: {} segments, {} messages", node + 1, report.segments, report.messages));
        self.drain_node(node);
    }
}
