//! Target `harness`: a node driven through the core's test harness by arbitrary client ops
//! (pub, sub, ack, nack, pull, fetch, unsub, ping, hello and garbage frames over a few
//! connections, on small topic, group, key and id domains), disk faults (ENOSPC and EIO on a
//! write, a failed truncate, writes and reads held and released later, a write torn by a
//! crash, a flipped byte at rest), crashes with and without power loss, and clock steps, under
//! a configuration drawn from the input (fsync policy, tiny segments, caches and limits).
//!
//! Checked after every op: no panic, `Node::check_invariants`, every frame the node sends is
//! JSON (the harness parses them), each publish answered at most once, no (topic, id)
//! pubacked for two different messages, every delivered or fetched message has the body that
//! was pubacked under its id. At every restart: a log that was never deliberately damaged
//! starts without salvage, and every pubacked message is on disk with its body, except those
//! retention deleted, those a power cut took under `fsync = never`, and those pubacked before
//! a byte was flipped (whose ids still must never be pubacked again).
//!
//! A third of the inputs run a cluster node that is its shard's only voter (with 1 or 3
//! shards): its publishes are raft entries, ids given when they are applied. There the check
//! at a restart reads every topic back with `fetch` (the log holds entries, not messages) and
//! every pubacked message must come back with its body under its id; a damaged log refuses
//! to start (never salvaged), which ends the input.

use arbitrary::{Arbitrary, Unstructured};
use ferry_core::protocol::{self, ClientOp};
use ferry_core::record::RecordRef;
use ferry_core::recovery::{self, Found};
use ferry_core::testkit::Harness;
use ferry_core::{Config, ConnId, DiskError, DiskOp, FsyncPolicy, Input, Rejection, Trace};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

const TOPICS: &[&str] = &["t0", "t1", "t2"];
/// Subscribable: the topics, their dead-letter topics, and an invalid name.
const SUB_TOPICS: &[&str] = &["t0", "t1", "t2", "t0.dlq", "t1.dlq", "no such!"];
const GROUPS: &[&str] = &["g0", "g1", "g2"];
const KEYS: &[&str] = &["a1", "a2", "b1"];
const PRODUCERS: &[&str] = &["p0", "p1", "p2"];
const CONNS: u64 = 4;
const TOKEN: &str = "tok";

#[derive(Arbitrary, Debug)]
struct Setup {
    fsync: u8,
    small_segments: bool,
    retention: bool,
    ack_timeout: u8,
    max_attempts: u8,
    window: u8,
    small_caches: bool,
    auth: bool,
    small_limits: bool,
    batch_interval: u8,
    /// 0: a single node; 1: a cluster node alone in its shard; 2: the same with 3 shards.
    cluster: u8,
}

impl Setup {
    fn config(&self) -> Config {
        let mut c = Config {
            fsync: [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never][self.fsync as usize % 3],
            batch_interval_ms: 1 + u64::from(self.batch_interval % 5),
            ack_timeout_ms: [100, 1_000, 30_000][self.ack_timeout as usize % 3],
            max_attempts: 1 + u32::from(self.max_attempts % 4),
            window_default: 1 + u32::from(self.window % 4),
            window_max: 8,
            nack_delay_ms_max: 2_000,
            coalesce_ms_max: 2_000,
            ..Config::default()
        };
        c.groups.insert("g2".into(), ferry_core::config::GroupOverrides { ack_timeout_ms: Some(50), max_attempts: Some(1) });
        if self.small_segments {
            c.frame_bytes_max = 2_048;
            c.segment_bytes_max = 4_096;
            c.batch_bytes = 512;
        }
        if self.retention {
            c.retention_bytes = c.segment_bytes_max * 3;
            c.retention_age_ms = 600_000;
        }
        if self.small_caches {
            c.topic_cache_bytes = 200;
            c.cache_bytes_total = 400;
            c.read_cache_messages = 2;
            c.read_cache_bytes = 300;
        }
        if self.auth {
            c.tokens = vec![TOKEN.into()];
        }
        if self.small_limits {
            c.topics_max = 3;
            c.groups_per_topic_max = 2;
            c.group_outstanding_max = 4;
            c.pending_publishes_max = 3;
            c.pending_publish_bytes_max = c.frame_bytes_max as u64;
            c.producers_max = 1;
            c.producer_seqs_max = 2;
            c.fetches_per_connection_max = 1;
            c.fetches_pending_max = 2;
            c.fetch_messages_max = 3;
            c.pull_max = 3;
        }
        if !self.cluster.is_multiple_of(3) {
            c.peers = "1@127.0.0.1:7811".into();
            c.peer_listen = "127.0.0.1:7811".into();
            c.shards = if self.cluster % 3 == 2 { 3 } else { 1 };
        }
        c.validate().expect("fuzz configs are valid");
        c
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect(u8),
    Disconnect(u8),
    Pub {
        conn: u8,
        topic: u8,
        key: Option<u8>,
        producer: Option<(u8, u8)>,
        body: BodySpec,
    },
    Sub {
        conn: u8,
        topic: u8,
        group: u8,
        from: FromSpec,
        window: Option<u8>,
        filter: u8,
    },
    /// Acks (or nacks) ids this connection or another was sent, as a client would.
    AckDelivered {
        conn: u8,
        picks: Vec<u8>,
        nack: Option<u16>,
    },
    Ack {
        conn: u8,
        topic: u8,
        group: u8,
        ids: Vec<IdSpec>,
    },
    Nack {
        conn: u8,
        topic: u8,
        group: u8,
        ids: Vec<IdSpec>,
        delay_ms: u16,
    },
    Pull {
        conn: u8,
        topic: u8,
        group: u8,
        max: u8,
        wait_ms: u16,
    },
    Fetch {
        conn: u8,
        topic: u8,
        from: IdSpec,
        to: IdSpec,
    },
    Unsub {
        conn: u8,
        topic: u8,
        group: u8,
    },
    Ping {
        conn: u8,
        req: Option<u8>,
    },
    Hello {
        conn: u8,
        token: u8,
    },
    Garbage {
        conn: u8,
        text: String,
    },
    Rejected {
        conn: u8,
        too_large: bool,
    },
    Advance(u16),
    AdvanceMinutes(u8),
    FailWrite {
        io: bool,
    },
    FailTruncate,
    HoldWrites(bool),
    HoldReads(bool),
    Release,
    Crash {
        power_loss: bool,
    },
    /// The held write reaches the disk only in part, then the process dies.
    TearAndCrash {
        keep: u16,
    },
    /// A byte of a segment rots at rest; the node restarts (with salvage if it must).
    Corrupt {
        segment: u8,
        at: u16,
        mask: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum BodySpec {
    Text,
    Colored(bool),
    Padded(u8),
    Nested(u8),
}

#[derive(Arbitrary, Debug)]
enum FromSpec {
    Latest,
    Earliest,
    Id(u8),
    Absent,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum IdSpec {
    Small(u8),
    Any(u64),
}

impl IdSpec {
    fn value(self) -> u64 {
        match self {
            IdSpec::Small(n) => u64::from(n),
            IdSpec::Any(n) => n,
        }
    }
}

/// What a pubacked (topic, id) must hold.
#[derive(Clone, Debug, PartialEq)]
enum Ident {
    /// A publish without producer: its body is unique to it.
    Unique { n: u64, body: Value },
    /// (producer, seq): a repeat is the same message, answered with the first one's id.
    Producer { producer: String, seq: u64 },
}

struct Pending {
    topic: String,
    ident: Ident,
}

struct Acked {
    ident: Ident,
    /// Pubacked before a byte was flipped on purpose: it may be lost, its id never reused.
    exempt: bool,
    /// Known to be gone from the disk (retention, or damage): not looked for again.
    gone: bool,
}

struct Driver {
    h: Harness,
    open: BTreeSet<ConnId>,
    next_n: u64,
    pending: BTreeMap<String, Pending>,
    acked: BTreeMap<(String, u64), Acked>,
    /// Every body published with a (producer, seq).
    producer_bodies: BTreeMap<(String, u64), Vec<Value>>,
    delivered: Vec<(String, String, u64)>,
    /// Print each op, frame and restart (`FERRY_FUZZ_TRACE` set), to study a finding.
    trace: bool,
    corrupted: bool,
    retention_deleted: bool,
    /// Restarts so far (see `RESTARTS_PER_INPUT_MAX`).
    restarts: u32,
    /// A cluster node whose damaged log refused to start: the input ends.
    refused: bool,
}

/// The connection the checks after a restart read through (never one of the driver's).
const CHECK_CONN: ConnId = ConnId(1_000);

/// Crashes and corruptions acted on per input; later ones are skipped.
const RESTARTS_PER_INPUT_MAX: u32 = 24;

pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else { return };
    let config = setup.config();
    let mut d = Driver {
        h: Harness::new(config),
        open: BTreeSet::new(),
        next_n: 0,
        pending: BTreeMap::new(),
        acked: BTreeMap::new(),
        producer_bodies: BTreeMap::new(),
        delivered: Vec::new(),
        trace: std::env::var_os("FERRY_FUZZ_TRACE").is_some(),
        corrupted: false,
        retention_deleted: false,
        restarts: 0,
        refused: false,
    };
    let mut steps = 0;
    while !u.is_empty() && steps < 400 {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        if d.trace {
            eprintln!("op {op:?}");
        }
        steps += 1;
        // A restart costs far more than any other op; past a few dozen an input explores
        // little more, and one such input would cost as much as hundreds of others.
        if matches!(op, Op::Crash { .. } | Op::TearAndCrash { .. } | Op::Corrupt { .. }) && d.restarts >= RESTARTS_PER_INPUT_MAX {
            continue;
        }
        d.apply(op);
        if d.refused {
            return;
        }
        d.after_op();
    }
    // Every run ends with a crash: what was pubacked must be there.
    d.h.hold_writes = false;
    d.h.hold_reads = false;
    d.restart(false);
    if !d.refused {
        d.restart(true);
    }
}

fn pick<'a>(names: &[&'a str], n: u8) -> &'a str {
    names[n as usize % names.len()]
}

fn conn_id(n: u8) -> ConnId {
    ConnId(1 + u64::from(n) % CONNS)
}

impl Driver {
    fn apply(&mut self, op: Op) {
        let h = &mut self.h;
        match op {
            Op::Connect(c) => {
                let conn = conn_id(c);
                if self.open.insert(conn) {
                    let welcome = h.connect(conn);
                    assert_eq!(welcome["op"], "welcome");
                }
            }
            Op::Disconnect(c) => {
                let conn = conn_id(c);
                self.open.remove(&conn);
                h.disconnect(conn);
            }
            Op::Pub { conn, topic, key, producer, body } => {
                self.next_n += 1;
                let n = self.next_n;
                let topic = pick(TOPICS, topic);
                let body = match body {
                    BodySpec::Text => json!(format!("m{n}")),
                    BodySpec::Colored(red) => json!({"n": n, "c": if red { "red" } else { "blue" }}),
                    BodySpec::Padded(len) => json!({"n": n, "pad": "x".repeat(len as usize * 4)}),
                    BodySpec::Nested(depth) => {
                        let mut v = json!(n);
                        for _ in 0..depth % 8 {
                            v = json!([v]);
                        }
                        v
                    }
                };
                let req = format!("p{n}");
                let mut frame = json!({"op": "pub", "req": req, "topic": topic, "body": body});
                if let Some(key) = key {
                    frame["key"] = json!(pick(KEYS, key));
                }
                let ident = match producer {
                    Some((p, seq)) => {
                        let (producer, seq) = (pick(PRODUCERS, p).to_string(), u64::from(seq % 8));
                        frame["producer"] = json!(producer);
                        frame["seq"] = json!(seq);
                        self.producer_bodies.entry((producer.clone(), seq)).or_default().push(body.clone());
                        Ident::Producer { producer, seq }
                    }
                    None => Ident::Unique { n, body },
                };
                self.pending.insert(format!("\"{req}\""), Pending { topic: topic.to_string(), ident });
                h.send_json(conn_id(conn), frame);
            }
            Op::Sub { conn, topic, group, from, window, filter } => {
                let (conn, topic, group) = (conn_id(conn), pick(SUB_TOPICS, topic), pick(GROUPS, group));
                let mut frame = json!({"op": "sub", "req": "s", "topic": topic, "group": group});
                match from {
                    FromSpec::Latest => frame["from"] = json!("latest"),
                    FromSpec::Earliest => frame["from"] = json!("earliest"),
                    FromSpec::Id(id) => frame["from"] = json!(id),
                    FromSpec::Absent => {}
                }
                if let Some(window) = window {
                    frame["window"] = json!(window % 10);
                }
                match filter % 4 {
                    1 => frame["filter"] = json!({"key_prefix": "a"}),
                    2 => frame["filter"] = json!({"field": "c", "equals": "red"}),
                    _ => {}
                }
                h.send_json(conn, frame);
            }
            Op::AckDelivered { conn, picks, nack } => {
                let Some(first) = picks.first() else { return };
                if self.delivered.is_empty() {
                    return;
                }
                let (topic, group, _) = self.delivered[*first as usize % self.delivered.len()].clone();
                let ids: Vec<u64> =
                    picks.iter().map(|p| &self.delivered[*p as usize % self.delivered.len()]).filter(|(t, g, _)| *t == topic && *g == group).map(|(_, _, id)| *id).collect();
                let frame = match nack {
                    None => json!({"op": "ack", "topic": topic, "group": group, "ids": ids}),
                    Some(delay) => json!({"op": "nack", "topic": topic, "group": group, "ids": ids, "delay_ms": delay % 3_000}),
                };
                h.send_json(conn_id(conn), frame);
            }
            Op::Ack { conn, topic, group, ids } => {
                let ids: Vec<u64> = ids.iter().take(8).map(|id| id.value()).collect();
                h.send_json(conn_id(conn), json!({"op": "ack", "topic": pick(SUB_TOPICS, topic), "group": pick(GROUPS, group), "ids": ids}));
            }
            Op::Nack { conn, topic, group, ids, delay_ms } => {
                let ids: Vec<u64> = ids.iter().take(8).map(|id| id.value()).collect();
                let frame = json!({"op": "nack", "topic": pick(SUB_TOPICS, topic), "group": pick(GROUPS, group), "ids": ids, "delay_ms": delay_ms});
                h.send_json(conn_id(conn), frame);
            }
            Op::Pull { conn, topic, group, max, wait_ms } => {
                let (conn, topic, group) = (conn_id(conn), pick(SUB_TOPICS, topic), pick(GROUPS, group));
                let frame = json!({"op": "pull", "req": "l", "topic": topic, "group": group, "max": max % 6, "wait_ms": wait_ms});
                h.send_json(conn, frame);
            }
            Op::Fetch { conn, topic, from, to } => {
                let frame = json!({"op": "fetch", "req": "f", "topic": pick(SUB_TOPICS, topic), "from": from.value(), "to": to.value()});
                h.send_json(conn_id(conn), frame);
            }
            Op::Unsub { conn, topic, group } => {
                h.send_json(conn_id(conn), json!({"op": "unsub", "req": "u", "topic": pick(SUB_TOPICS, topic), "group": pick(GROUPS, group)}));
            }
            Op::Ping { conn, req } => {
                let frame = match req {
                    Some(r) => json!({"op": "ping", "req": r}),
                    None => json!({"op": "ping"}),
                };
                h.send_json(conn_id(conn), frame);
            }
            Op::Hello { conn, token } => {
                let frame = match token % 3 {
                    0 => json!({"op": "hello", "token": TOKEN}),
                    1 => json!({"op": "hello", "token": "wrong"}),
                    _ => json!({"op": "hello"}),
                };
                h.send_json(conn_id(conn), frame);
            }
            Op::Garbage { conn, text } => {
                if text.len() < h.config.frame_bytes_max && garbage_is_safe(&text, h.config.json_depth_max) {
                    h.send(conn_id(conn), &text);
                }
            }
            Op::Rejected { conn, too_large } => {
                let why = if too_large { Rejection::TooLarge } else { Rejection::BinaryFrame };
                h.node.handle_input(h.now_ns, Input::Rejected { conn: conn_id(conn), why });
                h.drain();
            }
            Op::Advance(ms) => h.advance_ms(u64::from(ms)),
            Op::AdvanceMinutes(m) => h.advance_ms(u64::from(m % 16) * 60_000),
            Op::FailWrite { io } => h.fail_next_write = Some(if io { DiskError::Io("EIO (fuzz)".into()) } else { DiskError::NoSpace }),
            Op::FailTruncate => h.fail_next_truncate = Some(DiskError::Io("EIO (fuzz)".into())),
            Op::HoldWrites(on) => h.hold_writes = on,
            Op::HoldReads(on) => h.hold_reads = on,
            Op::Release => h.complete_writes(),
            Op::Crash { power_loss } => self.restart(power_loss),
            Op::TearAndCrash { keep } => {
                let held = h.held.iter().find_map(|op| match op {
                    DiskOp::Write { segment, offset, data, .. } => Some((*segment, *offset, data.clone())),
                    _ => None,
                });
                if let Some((segment, offset, data)) = held {
                    let keep = keep as usize % (data.len() + 1);
                    h.disk.write(segment, offset, &data[..keep]);
                }
                self.restart(false);
            }
            Op::Corrupt { segment, at, mask } => {
                let mut files: Vec<u64> = h.disk.files.iter().filter(|(_, f)| !f.is_empty()).map(|(id, _)| *id).collect();
                if !h.config.peers.is_empty() {
                    // A cluster node cannot tell its final write torn by a crash from one
                    // damaged at rest (it cuts it either way; its peers supply what it lacks,
                    // which a voter alone has not): only segments before the newest of their
                    // shard are damaged, as in the simulator.
                    let newest: BTreeSet<u64> = files.iter().map(|id| (ferry_core::ids::ShardId::of_id(*id), *id)).collect::<BTreeMap<_, _>>().into_values().collect();
                    files.retain(|id| !newest.contains(id));
                }
                if files.is_empty() {
                    return;
                }
                let file = h.disk.files.get_mut(&files[segment as usize % files.len()]).expect("listed");
                let at = at as usize % file.len();
                file[at] ^= mask.max(1);
                self.corrupted = true;
                for acked in self.acked.values_mut() {
                    acked.exempt = true;
                }
                self.restart(false);
            }
        }
    }

    /// Reads what the node sent, checks it, and restarts a node that asked to stop.
    fn after_op(&mut self) {
        if self.trace {
            eprintln!("  files: {:?}", self.h.disk.files.iter().map(|(id, f)| (*id, f.len(), self.h.disk.durable_len(*id))).collect::<Vec<_>>());
        }
        self.h.node.check_invariants();
        self.retention_deleted |= self.h.traces.iter().any(|t| matches!(t, Trace::SegmentDeleted { .. }));
        if self.trace && !self.h.traces.is_empty() {
            eprintln!("  traces {:?}", self.h.traces);
        }
        self.h.traces.clear();
        for (conn, _) in std::mem::take(&mut self.h.closed) {
            self.open.remove(&conn);
        }
        let sent: Vec<(ConnId, Vec<Value>)> = std::mem::take(&mut self.h.sent).into_iter().map(|(conn, frames)| (conn, frames.into())).collect();
        // Answers to publishes first: a message can be delivered to one connection before the
        // puback of its publisher is read.
        for (conn, frames) in &sent {
            for frame in frames {
                if self.trace {
                    eprintln!("  conn {conn} <- {}", frame.to_string().chars().take(200).collect::<String>());
                }
                self.on_answer(frame);
            }
        }
        for (_, frames) in &sent {
            for frame in frames {
                self.on_delivery(frame);
            }
        }
        if self.h.stopped.is_some() {
            self.restart(false);
        }
    }

    fn on_answer(&mut self, frame: &Value) {
        let op = frame["op"].as_str().unwrap_or_default();
        if op != "puback" && op != "error" {
            return;
        }
        let Some(req) = frame.get("req").map(Value::to_string) else { return };
        if !req.starts_with("\"p") {
            return;
        }
        let pending = self.pending.remove(&req).unwrap_or_else(|| panic!("a second answer, or one to no publish: {frame}"));
        if op == "error" {
            return;
        }
        let topic = frame["topic"].as_str().expect("puback names its topic").to_string();
        let id = frame["id"].as_u64().expect("puback has an id");
        if matches!(pending.ident, Ident::Unique { .. }) {
            assert_eq!(topic, pending.topic, "puback for another topic: {frame}");
        }
        match self.acked.get(&(topic.clone(), id)) {
            Some(earlier) => assert_eq!(earlier.ident, pending.ident, "{topic} id {id} pubacked for two different messages (the second: {frame})"),
            None => {
                self.acked.insert((topic, id), Acked { ident: pending.ident, exempt: false, gone: false });
            }
        }
    }

    fn on_delivery(&mut self, frame: &Value) {
        match frame["op"].as_str() {
            Some("msg") => {
                let (topic, group, id) = (frame["topic"].as_str().unwrap_or_default(), frame["group"].as_str().unwrap_or_default(), frame["id"].as_u64().unwrap_or(0));
                self.check_body(topic, id, &frame["body"]);
                if self.delivered.len() >= 32 {
                    self.delivered.remove(0);
                }
                self.delivered.push((topic.to_string(), group.to_string(), id));
            }
            Some("fetched") => {
                let topic = frame["topic"].as_str().unwrap_or_default();
                let mut last = 0;
                for m in frame["messages"].as_array().expect("fetched has messages") {
                    let id = m["id"].as_u64().unwrap_or(0);
                    assert!(id > last, "fetched ids not ascending: {frame}");
                    last = id;
                    self.check_body(topic, id, &m["body"]);
                }
            }
            _ => {}
        }
    }

    fn check_body(&self, topic: &str, id: u64, body: &Value) {
        let Some(acked) = self.acked.get(&(topic.to_string(), id)) else { return };
        match &acked.ident {
            Ident::Unique { body: expected, .. } => assert_eq!(body, expected, "{topic} id {id} delivered with another body"),
            Ident::Producer { producer, seq } => {
                let bodies = &self.producer_bodies[&(producer.clone(), *seq)];
                assert!(bodies.contains(body), "{topic} id {id} delivered with a body never published as {producer}/{seq}");
            }
        }
    }

    /// Restarts the node from its disk (after a power cut, only what was fsynced is there).
    fn restart(&mut self, power_loss: bool) {
        self.restarts += 1;
        let h = &mut self.h;
        if power_loss {
            h.disk.crash();
        }
        h.held.clear();
        h.sent.clear();
        h.closed.clear();
        self.open.clear();
        self.pending.clear();
        self.delivered.clear();
        if let Err(refused) = h.try_restart_from_disk() {
            assert!(self.corrupted, "a log nobody damaged was refused: {refused}");
            if !h.config.peers.is_empty() {
                // A cluster node's damaged log is rebuilt from its peers, never salvaged.
                self.refused = true;
                return;
            }
            h.config.salvage = true;
            let started = h.try_restart_from_disk();
            h.config.salvage = false;
            started.unwrap_or_else(|e| panic!("salvage refused to start: {e}"));
        }
        h.node.check_invariants();
        if self.trace {
            eprintln!("  restarted: {:?}", h.last_recovery);
            eprintln!("  disk: {:?}", h.disk.files.iter().map(|(id, f)| (*id, f.len())).collect::<Vec<_>>());
        }
        let lossy = power_loss && h.config.fsync == FsyncPolicy::Never;
        let on_disk = if h.config.peers.is_empty() { self.messages_on_disk() } else { self.messages_read_back() };
        self.check_disk(on_disk, lossy);
        self.after_op();
    }

    /// A single node's log: every message record on disk, (topic, id) → what it holds.
    fn messages_on_disk(&self) -> BTreeMap<(String, u64), Ident> {
        let mut on_disk = BTreeMap::new();
        let segments = self.h.disk.segments();
        let count = segments.len();
        for (position, (_, bytes)) in segments.iter().enumerate() {
            recovery::scan_segment(bytes, position + 1 == count, |_, _, rec, found| {
                let RecordRef::Message(m) = rec else { return };
                if found == Found::TornTail {
                    return;
                }
                let ident = match m.producer {
                    Some(p) => Ident::Producer { producer: p.to_string(), seq: m.seq },
                    None => Ident::Unique { n: 0, body: serde_json::from_str(m.body).unwrap_or(Value::Null) },
                };
                on_disk.insert((m.topic.to_string(), m.id), ident);
            });
        }
        on_disk
    }

    /// A cluster node's log holds raft entries whose ids are given when applied: every topic
    /// is read back with `fetch` (each body checked against what was pubacked under its id),
    /// and what came back is taken for what is on disk.
    fn messages_read_back(&mut self) -> BTreeMap<(String, u64), Ident> {
        let held = (self.h.hold_writes, self.h.hold_reads);
        (self.h.hold_writes, self.h.hold_reads) = (false, false);
        self.h.complete_writes();
        if self.h.stopped.is_some() {
            // A fault armed before the crash failed the restart's first write: the node
            // stopped, and starts again (the fault is spent).
            (self.h.fail_next_write, self.h.fail_next_truncate) = (None, None);
            self.h.try_restart_from_disk().unwrap_or_else(|e| panic!("a log nobody damaged was refused: {e}"));
            self.h.complete_writes();
        }
        self.h.connect(CHECK_CONN);
        if !self.h.config.tokens.is_empty() {
            self.h.send_json(CHECK_CONN, json!({"op": "hello", "token": TOKEN}));
        }
        let mut read = BTreeMap::new();
        for topic in TOPICS {
            let mut from = 1;
            let mut waits = 0;
            loop {
                self.h.send_json(CHECK_CONN, json!({"op": "fetch", "req": "check", "topic": topic, "from": from, "to": u64::MAX}));
                let answers = self.h.take(CHECK_CONN);
                if answers.iter().any(|a| a["code"] == "unavailable") && waits < 50 {
                    // Its new term's first entry is not yet durable (a batch waits for its
                    // timer): it serves reads once it is.
                    waits += 1;
                    self.h.advance_ms(10);
                    self.h.complete_writes();
                    continue;
                }
                let Some(fetched) = answers.iter().find(|a| a["op"] == "fetched") else {
                    // No such topic (nothing was published to it).
                    assert!(answers.iter().all(|a| a["code"] == "no_such_topic"), "{topic}: {answers:?}");
                    break;
                };
                self.on_delivery(fetched);
                let messages = fetched["messages"].as_array().expect("fetched has messages");
                let Some(last) = messages.last() else { break };
                from = last["id"].as_u64().expect("an id") + 1;
                for m in messages {
                    let id = m["id"].as_u64().expect("an id");
                    // The body was checked against the pubacked one; an id never pubacked
                    // (its publish's answer was lost to a crash) stands for itself.
                    let ident = self.acked.get(&(topic.to_string(), id)).map_or(Ident::Unique { n: 0, body: m["body"].clone() }, |a| a.ident.clone());
                    read.insert((topic.to_string(), id), ident);
                }
            }
        }
        self.h.disconnect(CHECK_CONN);
        (self.h.hold_writes, self.h.hold_reads) = held;
        read
    }

    /// Every pubacked message is on disk with its body (`on_disk`: what the log holds), or
    /// has a reason not to be.
    fn check_disk(&mut self, on_disk: BTreeMap<(String, u64), Ident>, lossy: bool) {
        let mut first_on_disk: BTreeMap<String, u64> = BTreeMap::new();
        for (topic, id) in on_disk.keys() {
            first_on_disk.entry(topic.clone()).or_insert(*id);
        }
        let mut lost = Vec::new();
        for ((topic, id), acked) in &mut self.acked {
            // Lost earlier; looked at again only when a power cut may have freed its id.
            if acked.gone && (!lossy || on_disk.contains_key(&(topic.clone(), *id))) {
                continue;
            }
            match on_disk.get(&(topic.clone(), *id)) {
                Some(found) => {
                    let same = match (&acked.ident, found) {
                        (Ident::Unique { body, .. }, Ident::Unique { body: stored, .. }) => body == stored,
                        (a, b) => a == b,
                    };
                    if lossy && !same {
                        // Lost to the power cut, and the id given to a later message in a
                        // write that did survive (possible only with fsync = never).
                        lost.push((topic.clone(), *id));
                        continue;
                    }
                    assert!(same, "{topic} id {id} pubacked as {:?} but stored as {found:?}", acked.ident);
                }
                None if lossy => lost.push((topic.clone(), *id)),
                None if acked.exempt => acked.gone = true,
                None if self.retention_deleted && first_on_disk.get(topic).is_none_or(|first| id < first) => acked.gone = true,
                None => panic!("{topic} id {id} was pubacked ({:?}) and is not on disk after a restart", acked.ident),
            }
        }
        for key in lost {
            self.acked.remove(&key);
        }
    }
}

/// A garbage frame must not pass for one of the driver's publishes (nor carry their `req`s),
/// nor be JSON that serde_json's `Value` refuses (a number beyond f64 such as `1e400`, valid
/// JSON all the same): ferry echoes a `req` verbatim, and the harness parses what it sends.
fn garbage_is_safe(text: &str, depth_max: u32) -> bool {
    if serde_json::from_str::<Box<serde_json::value::RawValue>>(text).is_ok() && serde_json::from_str::<Value>(text).is_err() {
        return false;
    }
    let ours = |req: Option<&str>| req.is_some_and(|r| r.starts_with("\"p"));
    match protocol::decode(text, depth_max) {
        // Publishes only from the driver (it tracks their answers).
        Ok(ClientOp::Pub { .. }) => false,
        Ok(
            ClientOp::Fetch { req, .. }
            | ClientOp::Latest { req, .. }
            | ClientOp::Unsub { req, .. }
            | ClientOp::Ping { req }
            | ClientOp::Sub { req, .. }
            | ClientOp::Pull { req, .. },
        ) => !ours(req.as_ref().map(|r| r.get())),
        Ok(_) => true,
        Err(e) => !ours(e.req.as_deref()),
    }
}

/// The input as the target reads it (to study a finding).
pub fn describe(data: &[u8]) -> String {
    let mut u = Unstructured::new(data);
    let setup = Setup::arbitrary(&mut u);
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < 400 {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        ops.push(op);
    }
    format!("{setup:#?}\n{:#?}\n{ops:#?}", setup.as_ref().map(Setup::config))
}
