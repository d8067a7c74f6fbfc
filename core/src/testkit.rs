//! A manual clock and an in-memory disk that drive a `Host` without any I/O: the core's own
//! tests use it, and the simulator builds its fault-injecting disk on the same model.

use crate::config::Config;
use crate::host::Host;
use crate::ids::ConnId;
use crate::node::{DiskError, DiskOp, Input, Output, RecoveryReport, Trace};
use crate::recovery::RecoveryError;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};

pub const NS_PER_MS: u64 = 1_000_000;
/// 2023-11-14T22:13:20Z: a plausible wall clock so `ts` looks like a real timestamp.
pub const EPOCH_NS: u64 = 1_700_000_000_000 * NS_PER_MS;

/// Files as the page cache sees them, and how much of each would survive a crash. Segments
/// are append-only, so the durable part of a file is a prefix: a length models fsync exactly.
#[derive(Default, Clone)]
pub struct MemDisk {
    pub files: BTreeMap<u64, Vec<u8>>,
    durable_len: BTreeMap<u64, usize>,
    /// Each shard's scratch spill file (nothing in it outlives a process).
    pub spill: BTreeMap<u32, Vec<u8>>,
}

pub enum Completion {
    Write { token: u64, result: Result<(), DiskError> },
    Read { token: u64, bytes: Option<Vec<u8>> },
    Truncate { token: u64, result: Result<(), DiskError> },
}

impl MemDisk {
    /// Applies one request as a healthy disk would.
    pub fn apply(&mut self, op: &DiskOp) -> Option<Completion> {
        match op {
            DiskOp::Write { token, segment, offset, data, create: _, sync } => {
                self.write(*segment, *offset, data);
                if *sync {
                    self.mark_durable(*segment, (*offset as usize) + data.len());
                }
                Some(Completion::Write { token: *token, result: Ok(()) })
            }
            DiskOp::Truncate { token, segment, len } => {
                self.truncate_file(*segment, *len as usize);
                Some(Completion::Truncate { token: *token, result: Ok(()) })
            }
            DiskOp::Delete { segment } => {
                self.files.remove(segment);
                self.durable_len.remove(segment);
                None
            }
            DiskOp::Read { token, segment, offset, len } => {
                let bytes = self.files.get(segment).and_then(|f| f.get(*offset as usize..(*offset + *len as u64) as usize)).map(<[u8]>::to_vec);
                Some(Completion::Read { token: *token, bytes })
            }
            DiskOp::SpillWrite { token, shard, offset, data } => {
                let file = self.spill.entry(*shard).or_default();
                let end = *offset as usize + data.len();
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[*offset as usize..end].copy_from_slice(data);
                Some(Completion::Write { token: *token, result: Ok(()) })
            }
            DiskOp::SpillRead { token, shard, offset, len } => {
                let bytes = self.spill.get(shard).and_then(|f| f.get(*offset as usize..(*offset + *len as u64) as usize)).map(<[u8]>::to_vec);
                Some(Completion::Read { token: *token, bytes })
            }
        }
    }

    /// Puts `data` at `offset` in the page cache (not yet durable).
    pub fn write(&mut self, segment: u64, offset: u64, data: &[u8]) {
        let file = self.files.entry(segment).or_default();
        file.truncate(offset as usize);
        file.resize(offset as usize, 0);
        file.extend_from_slice(data);
    }

    /// An fsync of `segment` that covered its first `len` bytes.
    pub fn mark_durable(&mut self, segment: u64, len: usize) {
        let durable = self.durable_len.entry(segment).or_default();
        *durable = (*durable).max(len);
    }

    pub fn durable_len(&self, segment: u64) -> usize {
        self.durable_len.get(&segment).copied().unwrap_or(0)
    }

    /// `DiskOp::Truncate`: cut the file and make what is left durable (the shell syncs it).
    pub fn truncate_file(&mut self, segment: u64, len: usize) {
        if let Some(file) = self.files.get_mut(&segment) {
            file.truncate(len);
            self.durable_len.insert(segment, file.len());
        }
    }

    /// A process crash with power loss: everything not fsynced is gone.
    pub fn crash(&mut self) {
        for (segment, file) in self.files.iter_mut() {
            file.truncate(self.durable_len.get(segment).copied().unwrap_or(0));
        }
    }

    /// Everything written so far becomes durable (as after a sync of every file).
    pub fn sync_all(&mut self) {
        for (segment, file) in &self.files {
            self.durable_len.insert(*segment, file.len());
        }
    }

    /// Bytes written but not yet fsynced, over all files.
    pub fn unsynced_bytes(&self) -> usize {
        self.files.iter().map(|(segment, file)| file.len() - self.durable_len.get(segment).copied().unwrap_or(0).min(file.len())).sum()
    }

    /// Forgets all files (benchmarks bound their memory with it).
    pub fn clear(&mut self) {
        self.files.clear();
        self.durable_len.clear();
    }

    pub fn segments(&self) -> Vec<(u64, &[u8])> {
        self.files.iter().map(|(id, bytes)| (*id, bytes.as_slice())).collect()
    }
}

/// Drives one node: feeds inputs, applies its disk requests, collects what it sends.
pub struct Harness {
    pub config: Config,
    pub node: Host,
    pub disk: MemDisk,
    pub now_ns: u64,
    pub sent: BTreeMap<ConnId, VecDeque<Value>>,
    pub closed: Vec<(ConnId, u16)>,
    pub traces: Vec<Trace>,
    /// When set, writes wait in `held` until `complete_writes` (to test group commit and faults).
    pub hold_writes: bool,
    /// When set, reads wait in `held` too (to test requests waiting for the disk).
    pub hold_reads: bool,
    pub held: VecDeque<DiskOp>,
    /// Fails the next write with this error instead of applying it.
    pub fail_next_write: Option<DiskError>,
    /// Fails the next truncate with this error instead of applying it.
    pub fail_next_truncate: Option<DiskError>,
    /// Why the node asked to stop, once it has.
    pub stopped: Option<String>,
    pub last_recovery: Option<RecoveryReport>,
    /// Disk reads the node has asked for.
    pub reads: u64,
    /// Frames the node sent to other cluster nodes: (to node, payload), for a test to deliver.
    pub peer_out: Vec<(u64, Vec<u8>)>,
}

impl Harness {
    pub fn new(config: Config) -> Harness {
        let node = Host::new(config.clone(), EPOCH_NS);
        let mut h = Harness {
            config,
            node,
            disk: MemDisk::default(),
            now_ns: EPOCH_NS,
            sent: BTreeMap::new(),
            closed: Vec::new(),
            traces: Vec::new(),
            hold_writes: false,
            hold_reads: false,
            held: VecDeque::new(),
            fail_next_write: None,
            fail_next_truncate: None,
            stopped: None,
            last_recovery: None,
            reads: 0,
            peer_out: Vec::new(),
        };
        h.drain();
        h
    }

    pub fn drain(&mut self) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Send { conn, frame } => {
                    let value: Value = serde_json::from_str(&frame).unwrap_or_else(|e| panic!("node sent invalid JSON {frame}: {e}"));
                    self.sent.entry(conn).or_default().push_back(value);
                }
                Output::Close { conn, code, .. } => self.closed.push((conn, code)),
                Output::Trace(trace) => self.traces.push(trace),
                Output::PeerSend { to_node, payload } => self.peer_out.push((to_node, payload)),
                Output::Stop { why } => self.stopped = Some(why),
                Output::Disk(op) => {
                    let hold = match op {
                        DiskOp::Write { .. } => self.hold_writes,
                        DiskOp::Read { .. } | DiskOp::SpillRead { .. } => self.hold_reads,
                        _ => false,
                    };
                    if hold {
                        self.held.push_back(op);
                    } else {
                        self.apply(op);
                    }
                }
            }
        }
        if cfg!(debug_assertions) {
            self.node.check_invariants();
        }
    }

    fn apply(&mut self, op: DiskOp) {
        if matches!(op, DiskOp::Read { .. }) {
            self.reads += 1;
        }
        if let (DiskOp::Write { token, .. }, Some(error)) = (&op, self.fail_next_write.take()) {
            self.node.handle_input(self.now_ns, Input::WriteDone { token: *token, result: Err(error) });
            return;
        }
        if let (DiskOp::Truncate { token, .. }, Some(error)) = (&op, self.fail_next_truncate.take()) {
            self.node.handle_input(self.now_ns, Input::TruncateDone { token: *token, result: Err(error) });
            return;
        }
        match self.disk.apply(&op) {
            Some(Completion::Write { token, result }) => self.node.handle_input(self.now_ns, Input::WriteDone { token, result }),
            Some(Completion::Read { token, bytes }) => {
                let result = bytes.as_deref().ok_or(DiskError::Io("no such range".into()));
                self.node.handle_input(self.now_ns, Input::ReadDone { token, result });
            }
            Some(Completion::Truncate { token, result }) => self.node.handle_input(self.now_ns, Input::TruncateDone { token, result }),
            None => {}
        }
    }

    /// Completes the writes held so far (and any they lead to, while `hold_writes` is off).
    pub fn complete_writes(&mut self) {
        while let Some(op) = self.held.pop_front() {
            self.apply(op);
            self.drain();
        }
    }

    pub fn connect(&mut self, conn: ConnId) -> Value {
        self.node.handle_input(self.now_ns, Input::Connected { conn });
        self.drain();
        self.take(conn).pop_front().expect("welcome")
    }

    pub fn send(&mut self, conn: ConnId, frame: &str) {
        self.node.handle_input(self.now_ns, Input::Frame { conn, text: frame });
        self.drain();
    }

    pub fn send_json(&mut self, conn: ConnId, frame: Value) {
        self.send(conn, &frame.to_string());
    }

    pub fn disconnect(&mut self, conn: ConnId) {
        self.node.handle_input(self.now_ns, Input::Disconnected { conn });
        self.drain();
    }

    /// Moves the clock forward, firing every timer in order on the way.
    pub fn advance_ms(&mut self, ms: u64) {
        let target = self.now_ns + ms * NS_PER_MS;
        while let Some(at) = self.node.poll_timeout() {
            if at > target {
                break;
            }
            self.now_ns = self.now_ns.max(at);
            self.node.handle_timeout(self.now_ns);
            self.drain();
        }
        self.now_ns = target;
    }

    pub fn take(&mut self, conn: ConnId) -> VecDeque<Value> {
        self.sent.remove(&conn).unwrap_or_default()
    }

    /// Frames of `op` sent to `conn` so far (others stay queued).
    pub fn take_op(&mut self, conn: ConnId, op: &str) -> Vec<Value> {
        let queue = self.sent.entry(conn).or_default();
        let (matching, rest): (Vec<_>, Vec<_>) = queue.drain(..).partition(|v| v["op"] == op);
        queue.extend(rest);
        matching
    }

    /// Restarts the node from the disk; `power_loss` drops everything not fsynced first.
    pub fn restart(&mut self, power_loss: bool) {
        if power_loss {
            self.disk.crash();
        }
        self.held.clear();
        self.sent.clear();
        self.try_restart_from_disk().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Restarts the node from the disk as it is; a refused recovery leaves the old node.
    pub fn try_restart_from_disk(&mut self) -> Result<(), RecoveryError> {
        let segments = self.disk.segments();
        let (node, report) = Host::recover(self.config.clone(), &segments, self.now_ns)?;
        self.node = node;
        self.stopped = None;
        self.last_recovery = Some(report);
        self.drain();
        Ok(())
    }
}
