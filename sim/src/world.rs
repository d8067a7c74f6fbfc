//! The simulated world: a virtual clock, one seeded rng, nodes running the real core, their
//! disks, connections with delays, and the clients. Everything happens through one event queue
//! ordered by (time, sequence number), so a seed replays bit for bit.

use crate::checker::{self, Checker};
use crate::clients::{AckStyle, Action, Client, Ctx, Publisher, Subscriber, MS};
use crate::identity::Identities;
use crate::misuse::Misbehaver;
use crate::{FaultKind, Options, SeedReport};
use ferry_core::client::PullOptions;
use ferry_core::node::{DiskError, Input};
use ferry_core::{Config, ConnId, FsyncPolicy};
use nodes::SimNode;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

mod nodes;

const SEC: u64 = 1_000 * MS;
/// 2023-11-14T22:13:20Z, so `ts` values look real.
const EPOCH: u64 = 1_700_000_000 * SEC;
const FAULT_TICK: u64 = 100 * MS;
const HEAL_BUDGET: u64 = 120 * SEC;
/// More heal time per message published: a large workload with a window of 1 over slow links
/// takes a while to drain, and that is not a liveness failure.
const HEAL_PER_MESSAGE: u64 = 250 * MS;

/// The fault mix of one seed, itself drawn from the seed (swarm testing).
#[derive(Debug, Clone)]
pub struct Swarm {
    pub publishers: usize,
    pub messages_per_publisher: u64,
    pub topics: usize,
    pub groups_per_topic: usize,
    pub members_per_group: usize,
    pub keys: u64,
    pub latency_min_us: u64,
    pub latency_max_us: u64,
    pub drop_chance: f64,
    pub crash_chance: f64,
    pub partition_chance: f64,
    pub disk_full_chance: f64,
    pub eio_chance: f64,
    pub bitflip_chance: f64,
    /// Per fault tick: a connection's outbox fills up in the shell (`Input::Congested`).
    pub congestion_chance: f64,
    pub safety_ms: u64,
    pub fsync: FsyncPolicy,
}

impl Swarm {
    fn draw(rng: &mut ChaCha8Rng, faults: &[FaultKind]) -> Swarm {
        let on = |k: FaultKind| faults.contains(&k);
        let quiet = rng.gen_bool(0.1);
        let pick = |rng: &mut ChaCha8Rng, kind: FaultKind, max: f64| if on(kind) && !quiet && rng.gen_bool(0.7) { rng.gen_range(0.0..max) } else { 0.0 };
        let drop_chance = pick(rng, FaultKind::Drop, 0.05);
        let crash_chance = pick(rng, FaultKind::Crash, 0.03);
        let partition_chance = pick(rng, FaultKind::Partition, 0.02);
        let disk_full_chance = pick(rng, FaultKind::DiskFull, 0.02);
        let eio_chance = pick(rng, FaultKind::Eio, 0.01);
        let bitflip_chance = pick(rng, FaultKind::BitFlip, 0.01);
        let congestion_chance = pick(rng, FaultKind::Delay, 0.2);
        let (latency_min_us, latency_max_us) = if on(FaultKind::Delay) && rng.gen_bool(0.5) { (50, rng.gen_range(1_000..200_000)) } else { (20, 500) };
        Swarm {
            publishers: rng.gen_range(1..=3),
            // Now and then a larger workload: thousands of messages over many segments.
            messages_per_publisher: if rng.gen_bool(0.03) { rng.gen_range(300..=1_000) } else { rng.gen_range(10..=120) },
            topics: rng.gen_range(1..=2),
            groups_per_topic: rng.gen_range(1..=2),
            members_per_group: rng.gen_range(1..=3),
            keys: if rng.gen_bool(0.7) { rng.gen_range(1..=6) } else { 0 },
            latency_min_us,
            latency_max_us,
            drop_chance,
            crash_chance,
            partition_chance,
            disk_full_chance,
            eio_chance,
            bitflip_chance,
            congestion_chance,
            safety_ms: rng.gen_range(3_000..15_000),
            // `never` promises only against process crashes, so its seeds have no power loss.
            fsync: match rng.gen_range(0..20) {
                0..=12 => FsyncPolicy::Always,
                13..=17 => FsyncPolicy::Batch,
                _ => FsyncPolicy::Never,
            },
        }
    }
}

#[derive(Debug)]
enum Event {
    Wake {
        client: usize,
    },
    ConnOpen {
        client: usize,
        conn: ConnId,
        node: usize,
        node_epoch: u64,
    },
    ConnFail {
        client: usize,
    },
    ToNode {
        conn: ConnId,
        text: String,
    },
    ToClient {
        conn: ConnId,
        text: String,
        /// When it left the node.
        sent_at: u64,
    },
    /// The node closed the connection; the frames it sent before have arrived.
    NodeClosed {
        conn: ConnId,
    },
    ClientLost {
        client: usize,
        conn: ConnId,
    },
    DiskDone {
        node: usize,
        epoch: u64,
        token: u64,
        result: Result<(), DiskError>,
    },
    ReadDone {
        node: usize,
        epoch: u64,
        token: u64,
        bytes: Option<Vec<u8>>,
    },
    TruncateDone {
        node: usize,
        epoch: u64,
        token: u64,
        result: Result<(), DiskError>,
    },
    Restart {
        node: usize,
    },
    /// Every reconciling subscriber reads `latest` once more.
    Reconcile,
    /// A frame between cluster nodes (indexes), over the peer link in its `epoch`.
    PeerFrame {
        from: usize,
        to: usize,
        epoch: u64,
        payload: Vec<u8>,
    },
    FaultTick,
    PartitionEnd {
        client: usize,
    },
    DiskFullEnd {
        node: usize,
    },
    CongestionEnd {
        conn: ConnId,
    },
    /// Node `node`'s queue to peer `peer` has drained.
    PeerCongestionEnd {
        node: usize,
        peer: usize,
    },
    /// Time to send a `hello` with a fresh token on this connection, before its token expires.
    TokenRefresh {
        conn: ConnId,
    },
}

struct Conn {
    client: usize,
    /// The node (index) the connection is to.
    node: usize,
    to_node_at: u64,
    to_client_at: u64,
    /// The `exp` (ns) of the JWT in force on it at the node: of the last `hello` that arrived.
    token_exp: Option<u64>,
}

/// FNV-1a over everything that happens: equal hashes mean equal runs.
struct TraceHash(u64);

impl TraceHash {
    fn mix(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn mix_u64(&mut self, v: u64) {
        self.mix(&v.to_le_bytes());
    }
}

pub struct World {
    options: Options,
    swarm: Swarm,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: BTreeMap<usize, Event>,
    next_event_key: usize,
    config: Config,
    nodes: Vec<SimNode>,
    conns: BTreeMap<ConnId, Conn>,
    client_conn: Vec<Option<ConnId>>,
    partitioned_until: Vec<u64>,
    /// Per node: until when it is cut off from its peers (a cluster's network partition).
    peers_cut_until: Vec<u64>,
    peer_links: nodes::PeerLinks,
    next_conn: ConnId,
    clients: Vec<Client>,
    checker: Checker,
    groups: Vec<(String, String)>,
    healing: bool,
    hash: TraceHash,
    faults: BTreeMap<&'static str, u64>,
    steps: u64,
    bitflipped: bool,
    /// Connections the node was told are congested.
    congested: BTreeSet<ConnId>,
    /// What the nodes' processes counted (their `Stats`, as `/metrics` exports them) before
    /// they died: a process's counters start again at 0.
    counted_before_crashes: ferry_core::Stats,
    identities: Identities,
}

/// Rate limits on every ninth seed (from the seed, so every seed keeps its draws): publishes
/// and other ops per connection, publishes per topic, low enough that clients hit them.
fn rate_limits_for_seed(seed: u64, config: &mut Config) {
    if seed % 9 != 4 {
        return;
    }
    let step = seed / 9;
    config.publish_rate_per_connection = 200 + step % 8 * 100;
    config.publish_burst_per_connection = 5 + step % 5 * 5;
    config.op_rate_per_connection = 20 + step % 4 * 20;
    config.op_burst_per_connection = 5 + step % 3 * 5;
    config.publish_rate_per_topic = 2 * config.publish_rate_per_connection;
    config.publish_burst_per_topic = 4 * config.publish_burst_per_connection;
}

impl World {
    pub fn new(options: Options) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let swarm = Swarm::draw(&mut rng, &options.faults);
        // Fields are evaluated in the order written, so the rng draws keep their order.
        let mut config = Config {
            fsync: swarm.fsync,
            batch_interval_ms: rng.gen_range(1..10),
            ack_timeout_ms: rng.gen_range(200..2_000),
            max_attempts: rng.gen_range(3..8),
            frame_bytes_max: 4096,
            segment_bytes_max: rng.gen_range(8_192..65_536),
            retention_bytes: u64::MAX / 2,
            // Every seventh seed deletes old segments by age, soon enough to happen during the
            // run (taken from the seed, not the rng, so every seed keeps its draws).
            retention_age_ms: if options.seed % 7 == 3 { 500 + (options.seed / 7 % 8) * 500 } else { u64::MAX / 4 },
            topic_cache_bytes: rng.gen_range(256..32_768),
            read_cache_messages: rng.gen_range(1..64),
            disk_full_retry_ms: rng.gen_range(50..1_000),
            // Bodies and keys are about 50 bytes: a byte window of 1 to 80 of them binds as often as `window`.
            window_bytes_max: rng.gen_range(64..4_096),
            test_bug: options.bug,
            // Small, so that gap repairs are cut and subscribers must ask again from the last
            // id + 1 (taken from the seed, not the rng, so every seed keeps its draws).
            fetch_messages_max: 1 + (options.seed % 3) as u32,
            // Every fifth seed offers a new message to one group per turn, so fan-outs spread
            // over turns meet members leaving, groups dropped and crashes half-way (from the seed too).
            fan_out_groups_per_turn: if options.seed % 5 == 2 { 1 } else { Config::default().fan_out_groups_per_turn },
            // Every fourth seed runs a cluster of 1, 3 or 5 nodes: publishes and group creations
            // go through raft and its log (from the seed too).
            peers: nodes::peers_for(options.seed),
            peer_listen: if nodes::peers_for(options.seed).is_empty() { String::new() } else { "127.0.0.1:7811".into() },
            rng_seed: options.seed,
            // Half the clusters keep almost no applied raft entries in memory, so catching a
            // follower up reads them back from the log (from the seed too).
            raft_log_memory_bytes: if (options.seed / 12).is_multiple_of(2) { 1_024 } else { 64 << 20 },
            // Clusters spread their topics over 1, 2 or 3 shards, each its own raft group
            // with its own leader (from the seed too).
            shards: if nodes::peers_for(options.seed).is_empty() { 1 } else { 1 + (options.seed / 12 % 3) as u32 },
            ..Config::default()
        };
        let identities = Identities::for_seed(options.seed, &mut config);
        rate_limits_for_seed(options.seed, &mut config);
        if config.peers.is_empty() && options.seed % 6 == 4 {
            // Every sixth seed's single node spills all the in-flight state it can, a chunk of
            // 8 entries at a time (from the seed, after every draw).
            config.group_state_bytes_max = 1;
            config.group_state_chunk_entries = 8;
        }
        if !config.peers.is_empty() && options.seed % 7 == 3 {
            // Clusters deleting by age roll small segments, so that retention deletes entries
            // a node down meanwhile lacks and it must take the leader's state (from the seed,
            // after every draw, so the draws keep their order).
            config.segment_bytes_max = 8_192;
        }
        let mut clients = Vec::new();
        let mut groups = Vec::new();
        for t in 0..swarm.topics {
            let topic = format!("t{t}");
            for g in 0..swarm.groups_per_topic {
                let group = format!("g{g}");
                groups.push((topic.clone(), group.clone()));
                let filter = (swarm.keys > 1 && rng.gen_bool(0.25)).then(|| format!("k{}", rng.gen_range(0..swarm.keys)));
                // Every third group with keys coalesces, its window from the seed (so the draws
                // keep their order): from a few ms, below the publishers' spacing, to a second.
                let (tg, seed) = ((t + g) as u64, options.seed);
                let coalesce_ms = (swarm.keys > 0 && (seed + tg) % 3 == 0).then(|| [3, 20, 100, 1_000][((seed / 3 + tg) % 4) as usize]);
                for m in 0..swarm.members_per_group {
                    let style = match rng.gen_range(0..12) {
                        0..=5 => AckStyle::Prompt,
                        6..=8 => AckStyle::Slow(rng.gen_range(10..3_000)),
                        9..=10 => AckStyle::SkipEvery(rng.gen_range(5..30)),
                        _ => AckStyle::NackFirst(rng.gen_range(0..500)),
                    };
                    let window = rng.gen_range(1..=16);
                    let name = format!("{topic}/{group}/m{m}");
                    let shared = swarm.members_per_group > 1;
                    // Pull creates a group without a filter, so filtered groups subscribe.
                    let pull_wait_ms = (filter.is_none() && rng.gen_bool(0.2)).then(|| rng.gen_range(0..2_000));
                    let unsub_every = (pull_wait_ms.is_none() && rng.gen_bool(0.15)).then(|| rng.gen_range(5..40));
                    let mut audit_every = rng.gen_bool(0.3).then(|| rng.gen_range(3..20));
                    // Retention seeds audit from the topic's start what retention keeps.
                    let audit_from_start = config.retention_age_ms < u64::MAX / 4;
                    if audit_from_start {
                        audit_every.get_or_insert(10);
                    }
                    let mut subscriber = Subscriber::new(name, topic.clone(), group.clone(), window, style);
                    // Gap repair hands over what the group may still hold back for its key.
                    subscriber.repair_gaps = !shared && swarm.keys == 0;
                    subscriber.unsub_every = unsub_every;
                    subscriber.pull = pull_wait_ms.map(|wait_ms| PullOptions { max: window, wait_ms });
                    subscriber.filter = filter.clone();
                    subscriber.coalesce_ms = coalesce_ms;
                    // Some members reconcile with `latest` now and then (from the seed: the draws
                    // keep their order).
                    let m_seed = seed + tg + m as u64;
                    subscriber.latest.every = (swarm.keys > 0 && m_seed % 3 == 1).then_some(4 + m_seed % 9);
                    // In a cluster a message may cross a peer link before the client's own link
                    // (its member's node is not the leader): two hops.
                    let hops = if nodes::voters_for(options.seed) > 1 { 2 } else { 1 };
                    let largest_delay_ns = hops * swarm.latency_max_us * 1_000 + MS;
                    subscriber.window_hold_ns = (config.ack_timeout_ms * MS).saturating_sub(largest_delay_ns);
                    (subscriber.audit_every, subscriber.audit_from_start) = (audit_every, audit_from_start);
                    clients.push(Client::Subscriber(subscriber));
                }
            }
        }
        // Every topic's dead-letter topic is read: a message counts as dead-lettered only once
        // its copy is seen there, never on the node's word.
        for t in 0..swarm.topics {
            let dlq = format!("t{t}.dlq");
            clients.push(Client::Subscriber(Subscriber::new(format!("{dlq}/audit"), dlq, "audit".into(), 16, AckStyle::Prompt)));
        }
        // Now and then a client that misuses the protocol alongside the others.
        if rng.gen_bool(0.3) {
            let mut misbehaver = Misbehaver::new("misuse".into(), rng.gen_range(5..40));
            misbehaver.tokens_required = !config.tokens.is_empty();
            misbehaver.limited = !config.users.is_empty();
            misbehaver.cluster = !config.peers.is_empty();
            misbehaver.rate_limited = config.op_rate_per_connection > 0 || config.publish_rate_per_connection > 0;
            clients.push(Client::Misbehaver(misbehaver));
        }
        for p in 0..swarm.publishers {
            let topic = format!("t{}", p % swarm.topics);
            let window = rng.gen_range(1..=16);
            let mut publisher = Publisher::new(format!("p{p}"), topic, swarm.keys, swarm.messages_per_publisher, window);
            // Some publishers send a publish twice at once, as a client retrying too eagerly.
            publisher.duplicate_chance = if rng.gen_bool(0.3) { rng.gen_range(0.05..0.3) } else { 0.0 };
            clients.push(Client::Publisher(publisher));
        }
        // Every fourth seed, a second client publishes the same (`producer`, `seq`)s with the
        // same bodies over its own connection, racing the first: each must be stored once and
        // both answered with its one id, never before it is durable. Kept within the seqs the
        // node remembers (`producer_seqs_max`), past which a repeat is stored again by design.
        // (Taken from the seed, not the rng, so every seed keeps its draws.)
        if options.seed % 4 == 2 && swarm.messages_per_publisher < config.producer_seqs_max as u64 {
            let window = 1 + (options.seed / 4 % 16) as usize;
            clients.push(Client::Publisher(Publisher::new("p0".into(), "t0".into(), swarm.keys, swarm.messages_per_publisher, window)));
        }
        let n = clients.len();
        let retention_age_ns = (config.retention_age_ms < u64::MAX / 4).then(|| config.retention_age_ms * MS);
        let mut checker = Checker::new(config.max_attempts as u64, retention_age_ns);
        for client in &clients {
            if let Client::Subscriber(s) = client {
                if let Some(prefix) = &s.filter {
                    checker.group_filter(&s.topic, &s.group, prefix);
                }
                if let Some(window_ms) = s.coalesce_ms {
                    checker.group_coalesces(&s.topic, &s.group, window_ms);
                }
            }
        }
        let slow = nodes::slow_node_for(options.seed);
        let nodes = SimNode::start_all(&config, swarm.eio_chance, slow);
        let mut world = World {
            options,
            swarm,
            rng,
            now: EPOCH,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event_key: 0,
            config,
            nodes,
            conns: BTreeMap::new(),
            client_conn: vec![None; n],
            partitioned_until: vec![0; n],
            peers_cut_until: Vec::new(),
            peer_links: nodes::PeerLinks::default(),
            next_conn: ConnId(1),
            clients,
            checker,
            groups,
            healing: false,
            hash: TraceHash(0xcbf2_9ce4_8422_2325),
            faults: BTreeMap::new(),
            counted_before_crashes: ferry_core::Stats::default(),
            identities,
            steps: 0,
            bitflipped: false,
            congested: BTreeSet::new(),
        };
        world.peers_cut_until = vec![0; world.nodes.len()];
        world.peer_links = nodes::PeerLinks::new(world.nodes.len());
        if slow.is_some() {
            world.count_fault("slow-node");
        }
        for node in 0..world.nodes.len() {
            world.drain_node(node);
        }
        for client in 0..n {
            // Subscribers first, so groups exist from the start.
            let at = EPOCH + if matches!(world.clients[client], Client::Publisher(_)) { 50 * MS } else { 0 };
            world.schedule(at, Event::Wake { client });
        }
        world.schedule(EPOCH + FAULT_TICK, Event::FaultTick);
        world
    }

    fn schedule(&mut self, at: u64, event: Event) {
        let key = self.next_event_key;
        self.next_event_key += 1;
        self.seq += 1;
        self.events.insert(key, event);
        self.queue.push(Reverse((at, self.seq, key)));
    }

    fn latency(&mut self) -> u64 {
        let (lo, hi) = (self.swarm.latency_min_us, self.swarm.latency_max_us);
        // Mostly near the minimum, with a tail up to the maximum.
        let r: f64 = self.rng.gen::<f64>();
        (lo + ((hi - lo) as f64 * r * r * r) as u64) * 1_000
    }

    fn trace(&mut self, what: impl FnOnce() -> String) {
        if self.options.trace {
            println!("{:>12.3} ms  {}", (self.now - EPOCH) as f64 / 1e6, what());
        }
    }

    fn count_fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
        self.hash.mix(kind.as_bytes());
        self.trace(|| format!("FAULT {kind}"));
    }

    pub fn run(mut self) -> SeedReport {
        let safety_end = EPOCH + self.swarm.safety_ms * MS;
        let end = safety_end + self.heal_budget();
        let mut last_convergence_check = 0;
        loop {
            let next_node_timeout = self.next_node_timeout();
            let node_at = next_node_timeout.map(|(at, _)| at);
            let event_at = self.queue.peek().map(|Reverse((at, _, _))| *at);
            let at = match (node_at, event_at) {
                (Some(n), Some(e)) => n.min(e),
                (Some(n), None) => n,
                (None, Some(e)) => e,
                (None, None) => break,
            };
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.checker.now = self.now;
            if !self.healing && self.now >= safety_end {
                self.start_heal();
            }
            if let Some((_, node)) = next_node_timeout.filter(|(n, _)| *n == at && event_at.is_none_or(|e| e >= at)) {
                self.hash.mix_u64(self.now);
                let now = self.now;
                self.run_node(node, |running| running.handle_timeout(now));
                self.drain_node(node);
            } else {
                let Some(Reverse((_, _, key))) = self.queue.pop() else { break };
                let event = self.events.remove(&key).expect("queued event");
                self.hash.mix_u64(self.now);
                self.handle(event);
            }
            if self.healing && self.now >= last_convergence_check + 20 * MS {
                last_convergence_check = self.now;
                if self.converged() {
                    break;
                }
            }
        }
        self.finish(safety_end)
    }

    fn heal_budget(&self) -> u64 {
        let messages = self.swarm.publishers as u64 * self.swarm.messages_per_publisher;
        // In a cluster a member on a follower gets each message and acks it over two hops
        // each way; with one key, messages go one at a time, each taking that round.
        let per_message = if self.nodes.len() > 1 { HEAL_PER_MESSAGE.max(4 * self.swarm.latency_max_us * 1_000) } else { HEAL_PER_MESSAGE };
        HEAL_BUDGET.max(messages * per_message)
    }

    fn converged(&self) -> bool {
        let publishers_done = self.clients.iter().all(|c| match c {
            Client::Publisher(p) => p.done(),
            Client::Subscriber(_) => true,
            Client::Misbehaver(m) => !m.waiting(),
        });
        publishers_done
            && self.groups.iter().all(|(t, g)| self.checker.missing(t, g).is_empty() && self.checker.missing_in_application(t, g).is_empty())
            && self.groups.iter().all(|(t, _)| self.checker.not_completed(t, &self.groups).is_empty())
    }

    fn start_heal(&mut self) {
        self.healing = true;
        self.trace(|| "HEAL: faults off".into());
        for node in &mut self.nodes {
            node.disk.full = false;
            node.disk.eio_chance = 0.0;
        }
        for until in self.partitioned_until.iter_mut().chain(&mut self.peers_cut_until) {
            *until = 0;
        }
        self.peer_links.heal();
        for conn in std::mem::take(&mut self.congested) {
            self.conn_input(conn, Input::Congested { conn, congested: false });
        }
        for client in &mut self.clients {
            if let Client::Subscriber(s) = client {
                s.heal();
            }
        }
        let mut restarted_within = 0;
        if self.config.retention_age_ms < u64::MAX / 4 {
            // A node deleting by age restarts once more (every node of a cluster), after
            // retention has deleted what it would: `latest` must know the newest message of
            // every key from its log (a cluster: from its segments' snapshots).
            if self.nodes.len() == 1 {
                self.crash_a_node();
                restarted_within = 2;
            } else {
                self.crash_every_node();
                restarted_within = 6;
            }
        }
        // Reconcilers read once more after that restart (and, in a cluster, an election).
        self.schedule(self.now + (restarted_within + 1) * SEC, Event::Reconcile);
    }

    fn finish(mut self, safety_end: u64) -> SeedReport {
        if self.options.bug.is_none() {
            for node in self.nodes.iter().filter_map(|n| n.node.as_ref()) {
                node.check_invariants();
            }
        }
        let converged = self.converged();
        let groups = self.groups.clone();
        self.checker.finish(&groups);
        let counted = self.nodes.iter().filter_map(|n| n.node.as_ref()).fold(self.counted_before_crashes, |sum, node| sum.plus(&node.stats()));
        self.checker.check_counters(counted.delivered, counted.redelivered);
        for client in &self.clients {
            if let Client::Misbehaver(m) = client {
                m.finish(&mut self.checker);
            }
        }
        if !converged {
            let pending: Vec<String> = self
                .clients
                .iter()
                .filter_map(|c| match c {
                    Client::Publisher(p) if !p.done() => Some(format!("{} acked {}", p.producer, p.acked)),
                    _ => None,
                })
                .collect();
            let budget_s = self.heal_budget() / SEC;
            self.checker.violation(checker::INV_LIVENESS, format!("not converged {budget_s} s after faults stopped; publishers pending: {pending:?}"));
        }
        let mut latencies = std::mem::take(&mut self.checker.latencies_ms);
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0.0);
        SeedReport {
            seed: self.options.seed,
            virtual_ms: (self.now - EPOCH) / MS,
            heal_ms: self.now.saturating_sub(safety_end) / MS,
            pubacked: self.checker.pubacked_count() as u64,
            deliveries: self.checker.deliveries,
            redeliveries: self.checker.redeliveries,
            coalesced: counted.coalesced,
            latency_p50_ms: pct(0.5),
            latency_p99_ms: pct(0.99),
            latency_max_ms: latencies.last().copied().unwrap_or(0.0),
            faults: self.faults.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            violations: self.checker.violations.clone(),
            trace_hash: self.hash.0,
            swarm: format!("{:?}, ack_timeout_ms {}, max_attempts {}", self.swarm, self.config.ack_timeout_ms, self.config.max_attempts),
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Wake { client } => self.with_client(client, |c, ctx| c.on_wake(ctx)),
            Event::ConnOpen { client, conn, node, node_epoch } => {
                let alive = self.nodes[node].node.is_some() && node_epoch == self.nodes[node].epoch && self.partitioned_until[client] <= self.now;
                if !alive {
                    return self.with_client(client, |c, ctx| c.on_disconnected(ctx));
                }
                self.conns.insert(conn, Conn { client, node, to_node_at: 0, to_client_at: 0, token_exp: None });
                self.client_conn[client] = Some(conn);
                self.trace(|| format!("conn {conn} open for client {client}"));
                self.node_input(node, Input::Connected { conn });
                // With identities configured, every client says hello first (frames keep their
                // order); a limited misbehaver with its user's token.
                let hello = self.hello_on(conn);
                self.with_client(client, |c, ctx| {
                    if let Some(hello) = hello {
                        ctx.actions.push(Action::Send(hello));
                    }
                    c.on_connected(ctx)
                });
            }
            Event::ConnFail { client } => self.with_client(client, |c, ctx| c.on_disconnected(ctx)),
            Event::ToNode { conn, text } => {
                if let Some(state) = self.conns.get_mut(&conn) {
                    if let Some(exp) = self.identities.arrived(&text) {
                        state.token_exp = Some(exp);
                    }
                    self.hash.mix(text.as_bytes());
                    self.trace(|| format!("conn {conn} -> node {text}"));
                    self.observe_ack(&text);
                    self.conn_input(conn, Input::Frame { conn, text: &text });
                }
            }
            Event::ToClient { conn, text, sent_at } => {
                let Some(client) = self.conns.get(&conn).map(|c| c.client) else { return };
                self.hash.mix(text.as_bytes());
                self.trace(|| format!("conn {conn} -> client {client} {text}"));
                let frame: serde_json::Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(e) => return self.checker.violation("protocol", format!("node sent invalid JSON ({e}): {text}")),
                };
                self.with_client_at(client, sent_at, |c, ctx| c.on_frame(&frame, ctx));
            }
            Event::NodeClosed { conn } => self.drop_conn(conn, false),
            Event::ClientLost { client, conn } => {
                if self.client_conn[client] == Some(conn) {
                    self.client_conn[client] = None;
                    self.with_client(client, |c, ctx| c.on_disconnected(ctx));
                }
            }
            Event::DiskDone { node, epoch, token, result } => {
                if !self.nodes[node].is_up_in(epoch) {
                    return;
                }
                if result.is_ok() {
                    self.nodes[node].disk.complete(token);
                }
                self.node_input(node, Input::WriteDone { token, result });
            }
            Event::ReadDone { node, epoch, token, bytes } => {
                if !self.nodes[node].is_up_in(epoch) {
                    return;
                }
                let result = bytes.as_deref().ok_or(DiskError::Io("read past the end".into()));
                self.node_input(node, Input::ReadDone { token, result });
            }
            Event::TruncateDone { node, epoch, token, result } => {
                if !self.nodes[node].is_up_in(epoch) {
                    return;
                }
                self.node_input(node, Input::TruncateDone { token, result });
            }
            Event::Restart { node } => self.restart_node(node),
            Event::Reconcile => {
                for client in 0..self.clients.len() {
                    if let Client::Subscriber(s) = &mut self.clients[client] {
                        s.latest.read_soon();
                        self.schedule(self.now, Event::Wake { client });
                    }
                }
            }
            Event::PeerFrame { from, to, epoch, payload } => self.peer_frame_arrives(from, to, epoch, &payload),
            Event::FaultTick => self.fault_tick(),
            Event::PartitionEnd { client } => {
                self.partitioned_until[client] = 0;
            }
            Event::DiskFullEnd { node } => self.nodes[node].disk.full = false,
            Event::CongestionEnd { conn } => {
                if self.congested.remove(&conn) {
                    self.trace(|| format!("conn {conn} drained"));
                    self.conn_input(conn, Input::Congested { conn, congested: false });
                }
            }
            Event::PeerCongestionEnd { node, peer } => self.node_input(node, Input::PeerCongested { node: peer as u64 + 1, congested: false }),
            Event::TokenRefresh { conn } => {
                let Some(client) = self.conns.get(&conn).map(|c| c.client) else { return };
                if let Some(hello) = self.hello_on(conn) {
                    self.trace(|| format!("conn {conn}: refreshing its token"));
                    self.with_client(client, |_, ctx| ctx.actions.push(Action::Send(hello)));
                }
            }
        }
    }

    /// The `hello` client `conn` says (on opening, or to refresh its token). A JWT is refreshed
    /// a little before it expires on three connections in four; on the others it runs out and
    /// the node must close the connection at its `exp`.
    fn hello_on(&mut self, conn: ConnId) -> Option<String> {
        let client = self.conns.get(&conn)?.client;
        let limited = matches!(&self.clients[client], Client::Misbehaver(m) if m.limited);
        let (hello, exp) = self.identities.hello(limited, self.now)?;
        if let Some(exp) = exp.filter(|_| self.rng.gen_bool(0.75)) {
            let early = self.rng.gen_range(100..800) * MS;
            self.schedule(exp.saturating_sub(early).max(self.now), Event::TokenRefresh { conn });
        }
        Some(hello)
    }

    fn with_client(&mut self, client: usize, f: impl FnOnce(&mut Client, &mut Ctx<'_>)) {
        self.with_client_at(client, self.now, f);
    }

    /// `with_client` for a frame that left the node at `sent_at`.
    fn with_client_at(&mut self, client: usize, sent_at: u64, f: impl FnOnce(&mut Client, &mut Ctx<'_>)) {
        let mut ctx = Ctx { now: self.now, sent_at, rng: &mut self.rng, checker: &mut self.checker, actions: Vec::new(), test_bug: self.options.bug };
        f(&mut self.clients[client], &mut ctx);
        for action in ctx.actions {
            match action {
                Action::WakeAt(at) => self.schedule(at.max(self.now), Event::Wake { client }),
                Action::Connect => {
                    let delay = self.latency();
                    let conn = self.next_conn;
                    self.next_conn.0 += 1;
                    // Any node: one that cannot serve the client answers `unavailable`.
                    let node = self.pick_node();
                    let reachable = self.nodes[node].node.is_some() && self.partitioned_until[client] <= self.now;
                    if reachable {
                        let node_epoch = self.nodes[node].epoch;
                        self.schedule(self.now + 2 * delay, Event::ConnOpen { client, conn, node, node_epoch });
                    } else {
                        self.schedule(self.now + 2 * delay + 50 * MS, Event::ConnFail { client });
                    }
                }
                Action::Disconnect => {
                    if let Some(conn) = self.client_conn[client] {
                        self.drop_conn(conn, true);
                    }
                }
                Action::Send(text) => {
                    let Some(conn) = self.client_conn[client] else { continue };
                    let delay = self.latency();
                    let Some(state) = self.conns.get_mut(&conn) else { continue };
                    // One TCP stream: frames arrive in order, each after its own delay.
                    let at = (self.now + delay).max(state.to_node_at + 1);
                    state.to_node_at = at;
                    self.schedule(at, Event::ToNode { conn, text });
                }
            }
        }
    }

    /// Acks as the node receives them: what the group has really finished.
    fn observe_ack(&mut self, text: &str) {
        if !text.contains("ack\"") {
            return;
        }
        let Ok(frame) = serde_json::from_str::<serde_json::Value>(text) else { return };
        let (topic, group) = (frame["topic"].as_str().unwrap_or_default(), frame["group"].as_str().unwrap_or_default());
        for id in frame["ids"].as_array().into_iter().flatten().filter_map(|v| v.as_u64()) {
            match frame["op"].as_str() {
                Some("ack") => self.checker.completed(topic, group, id),
                Some("nack") => self.checker.nacked(topic, group, id, self.now),
                _ => {}
            }
        }
    }

    fn fault_tick(&mut self) {
        if self.healing {
            return;
        }
        self.schedule(self.now + FAULT_TICK, Event::FaultTick);
        let s = self.swarm.clone();
        if s.drop_chance > 0.0 && self.rng.gen_bool(s.drop_chance.min(1.0)) && !self.conns.is_empty() {
            let keys: Vec<ConnId> = self.conns.keys().copied().collect();
            let conn = keys[self.rng.gen_range(0..keys.len())];
            self.count_fault("connection-drop");
            self.drop_conn(conn, true);
        }
        if s.crash_chance > 0.0 && self.rng.gen_bool(s.crash_chance) {
            self.crash_a_node();
        }
        if s.partition_chance > 0.0 && self.rng.gen_bool(s.partition_chance) {
            let client = self.rng.gen_range(0..self.clients.len());
            let until = self.now + self.rng.gen_range(100..3_000) * MS;
            self.partitioned_until[client] = until;
            self.count_fault("partition");
            if let Some(conn) = self.client_conn[client] {
                self.drop_conn(conn, true);
            }
            self.schedule(until, Event::PartitionEnd { client });
        }
        // A cluster node cut off from its peers for a while (clients still reach it): a leader
        // on the minority side must stop serving, the majority elects another.
        if self.nodes.len() > 1 && s.partition_chance > 0.0 && self.rng.gen_bool(s.partition_chance) {
            let node = self.pick_node();
            let until = self.now + self.rng.gen_range(100..3_000) * MS;
            self.peers_cut_until[node] = self.peers_cut_until[node].max(until);
            self.count_fault("peer-partition");
        }
        // Or split in two (a minority side, sometimes with a bridge node linked to both).
        if self.nodes.len() > 1 && s.partition_chance > 0.0 && self.rng.gen_bool(s.partition_chance) {
            self.split_the_cluster();
        }
        // Or one way between two nodes only.
        if self.nodes.len() > 1 && s.partition_chance > 0.0 && self.rng.gen_bool(s.partition_chance) {
            self.stall_one_way();
        }
        if s.congestion_chance > 0.0 && self.rng.gen_bool(s.congestion_chance) && !self.conns.is_empty() {
            let keys: Vec<ConnId> = self.conns.keys().copied().collect();
            let conn = keys[self.rng.gen_range(0..keys.len())];
            if self.congested.insert(conn) {
                self.count_fault("congestion");
                self.conn_input(conn, Input::Congested { conn, congested: true });
                let until = self.now + self.rng.gen_range(10..1_500) * MS;
                self.schedule(until, Event::CongestionEnd { conn });
            }
        }
        // A node's queue to a peer fills up (the shell's back-pressure signal): that peer's
        // clients get no messages from it until it drains.
        if self.nodes.len() > 1 && s.congestion_chance > 0.0 && self.rng.gen_bool(s.congestion_chance / 4.0) {
            let node = self.pick_node();
            let peer = (node + self.rng.gen_range(1..self.nodes.len())) % self.nodes.len();
            self.count_fault("peer-congested");
            self.node_input(node, Input::PeerCongested { node: peer as u64 + 1, congested: true });
            let until = self.now + self.rng.gen_range(10..1_500) * MS;
            self.schedule(until, Event::PeerCongestionEnd { node, peer });
        }
        if s.disk_full_chance > 0.0 && !self.nodes.iter().any(|n| n.disk.full) && self.rng.gen_bool(s.disk_full_chance) {
            let node = self.pick_node();
            self.nodes[node].disk.full = true;
            self.count_fault("disk-full");
            let until = self.now + self.rng.gen_range(100..3_000) * MS;
            self.schedule(until, Event::DiskFullEnd { node });
        }
        // A single node's damaged log is salvaged; a cluster node's refuses to start and the
        // node stays down (see `damage_a_cluster_node`).
        let salvageable = self.config.peers.is_empty();
        if !salvageable && s.bitflip_chance > 0.0 && !self.bitflipped && self.rng.gen_bool(s.bitflip_chance) {
            self.damage_a_cluster_node();
        }
        if salvageable && s.bitflip_chance > 0.0 && !self.bitflipped && self.rng.gen_bool(s.bitflip_chance) {
            if let Some(victims) = self.nodes[0].disk.flip_bit(&mut self.rng) {
                self.bitflipped = true;
                self.count_fault("bit-flip");
                self.trace(|| format!("bit flip destroys {victims:?}"));
                self.checker.sacrifice(victims);
            }
        }
    }
}
