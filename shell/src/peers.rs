//! Peer links of a cluster: one TCP connection per pair of nodes, dialled by the node with the
//! lower id (so two nodes never race to open two), carrying length-prefixed binary frames:
//!
//! ```text
//! hello  = "FERRYPR1" node_id:u64 cluster:u64     (each side, first; big-endian)
//!   or, with a `cluster_secret`:
//! hello  = "FERRYPR2" node_id:u64 cluster:u64 nonce[16]
//! proof  = HMAC-SHA256(secret, "ferry-peer" nonce_of_the_other from:u64 to:u64)[32]
//!          (each side, once it has the other's hello; frames count only once it checks)
//! frame  = len:u32 payload[len]                    (payload: a `cluster::mesh` frame)
//! beat   = len:u32 = 0                             (sent after a second of silence)
//! ```
//!
//! `cluster` fingerprints the voter list and the shard count, so a node started with another
//! `peers` list or `shards` is refused by name instead of joining. A link that hears nothing for `SILENCE_MAX` is reset
//! and dialled again with backoff. Each link queues at most `peer_outbox_bytes_max`: past half
//! of it the node hears the peer is congested (it pushes that peer's clients no messages until
//! the queue is under an eighth again: back-pressure), and a peer that still falls the whole
//! way behind has its link reset rather than frames silently dropped (client frames ride on
//! it too). Whenever a linked peer's connection ends, the node hears of it
//! (`Input::PeerDown`): what was in flight on it is lost.

use crate::peer_outbox::PeerOutbox;
use ferry_core::Config;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Tokens at and above this are peer sockets (`PEER_TOKEN_BASE + slab key`); below are clients.
pub const PEER_TOKEN_BASE: usize = 1 << 40;
pub const PEER_LISTENER: Token = Token(usize::MAX - 1);
const HELLO_MAGIC: &[u8; 8] = b"FERRYPR1";
const HELLO_BYTES: usize = 24;
const SECRET_HELLO_MAGIC: &[u8; 8] = b"FERRYPR2";
const NONCE_BYTES: usize = 16;
const PROOF_BYTES: usize = 32;
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A link silent this long (no frame, no heartbeat) is dead: reset and dialled again.
const SILENCE_MAX: Duration = Duration::from_secs(5);
/// An accepted socket that has not said who it is within this is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 64 << 10;

/// A peer socket: dialled to a known node, or accepted and not yet identified.
struct PeerSocket {
    stream: TcpStream,
    /// Known from the start when dialled; from its hello when accepted.
    node: Option<u64>,
    /// A dialled socket is connected once writable without error.
    connected: bool,
    hello_heard: bool,
    /// With a cluster secret: the nonce this side sent, and whether the other's proof of the
    /// secret has checked (only then do its frames count).
    nonce: [u8; NONCE_BYTES],
    proven: bool,
    inbuf: Vec<u8>,
    outbox: PeerOutbox,
    /// Over `peer_outbox_bytes_max`: reset at the next flush.
    overflowed: bool,
    opened_at: Instant,
    last_heard: Instant,
    last_sent: Instant,
}

impl PeerSocket {
    fn new(stream: TcpStream, node: Option<u64>, dialled: bool, now: Instant) -> PeerSocket {
        PeerSocket {
            stream,
            node,
            connected: !dialled,
            hello_heard: false,
            nonce: [0; NONCE_BYTES],
            proven: false,
            inbuf: Vec::new(),
            outbox: PeerOutbox::default(),
            overflowed: false,
            opened_at: now,
            last_heard: now,
            last_sent: now,
        }
    }

    fn queued(&self) -> usize {
        self.outbox.queued()
    }

    /// Queues a frame; raft's go ahead of the others (`PeerOutbox`).
    fn push_frame(&mut self, payload: &[u8]) {
        self.outbox.push_frame(payload, ferry_core::cluster::mesh::is_raft(payload));
    }

    /// Writes what is queued until the socket would block.
    fn flush(&mut self, now: Instant) -> io::Result<()> {
        loop {
            let chunk = self.outbox.next_chunk();
            if chunk.is_empty() {
                return Ok(());
            }
            match self.stream.write(chunk) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.outbox.advance(n);
                    self.last_sent = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// What the loop knows of one other voter.
struct Link {
    addr: String,
    /// The socket that carries frames to and from it, once both hellos are through.
    socket: Option<usize>,
    /// A dialled socket still connecting or waiting for the hello back.
    dialling: Option<usize>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Down since (for the log line when it comes back) and why, said once per outage.
    down_since: Option<Instant>,
    said_down: bool,
    /// Its queue passed half of `peer_outbox_bytes_max` and has not yet drained under an eighth.
    congested: bool,
}

pub struct Peers {
    me: u64,
    fingerprint: u64,
    /// The `cluster_secret` as an HMAC key, if one is set.
    secret: Option<ring::hmac::Key>,
    /// Refused peers (another peers list, a failed challenge) are logged at most every 10 s.
    refusals: crate::log::Throttle,
    random: ring::rand::SystemRandom,
    listener: TcpListener,
    links: BTreeMap<u64, Link>,
    sockets: Slab<PeerSocket>,
    outbox_max: usize,
    frame_max: usize,
    /// Peers whose link ended since the node last heard (`take_downs`).
    downs: Vec<u64>,
    /// (peer, congested) changes since the node last heard (`take_congestion`).
    congestion: Vec<(u64, bool)>,
    /// Jitter for the reconnect backoff (xorshift; no need for more).
    jitter: u64,
}

/// A peer's frame for the node: from which voter, and its payload.
pub struct Arrived {
    pub from_node: u64,
    pub payload: Vec<u8>,
}

fn fingerprint(config: &Config) -> Result<u64, String> {
    let mut voters = config.voters()?;
    voters.sort_by_key(|v| v.id.0);
    let text: Vec<String> = voters.iter().map(|v| format!("{}@{}", v.id.0, v.addr)).collect();
    // One shard hashes as before shards existed.
    let shards = if config.shards > 1 { format!(" shards={}", config.shards) } else { String::new() };
    let crc = crc32fast::hash(format!("{}{shards}", text.join(",")).as_bytes());
    Ok(crc as u64 | ((voters.len() as u64) << 32))
}

impl Peers {
    /// Listens on `peer_listen` and starts dialling the voters with higher ids. `None` without
    /// `peers` (a single node).
    pub fn open(config: &Config, registry: &Registry, seed: u64) -> io::Result<Option<Peers>> {
        let voters = config.voters().map_err(io::Error::other)?;
        if voters.is_empty() {
            return Ok(None);
        }
        let listen: SocketAddr = config.peer_listen.parse().map_err(|e| io::Error::other(format!("peer_listen '{}': {e} (want IP:PORT)", config.peer_listen)))?;
        let mut listener = TcpListener::bind(listen).map_err(|e| io::Error::other(format!("cannot listen for peers on {listen}: {e}")))?;
        registry.register(&mut listener, PEER_LISTENER, Interest::READABLE)?;
        let now = Instant::now();
        let links = voters
            .iter()
            .filter(|v| v.id.0 != config.node_id)
            .map(|v| {
                // The lower id dials; the other side waits to be dialled.
                let retry_at = (v.id.0 > config.node_id).then_some(now);
                let link = Link { addr: v.addr.clone(), socket: None, dialling: None, retry_at, backoff: BACKOFF_MIN, down_since: None, said_down: false, congested: false };
                (v.id.0, link)
            })
            .collect();
        tracing::info!("node {} listening for peers on {} (voters: {})", config.node_id, listener.local_addr()?, config.peers);
        let frame_max = config.peer_frame_bytes_max();
        Ok(Some(Peers {
            me: config.node_id,
            fingerprint: fingerprint(config).map_err(io::Error::other)?,
            secret: (!config.cluster_secret.is_empty()).then(|| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, config.cluster_secret.as_bytes())),
            random: ring::rand::SystemRandom::new(),
            refusals: crate::log::Throttle::new(Duration::from_secs(10)),
            listener,
            links,
            sockets: Slab::new(),
            outbox_max: config.peer_outbox_bytes_max as usize,
            frame_max,
            downs: Vec::new(),
            congestion: Vec::new(),
            jitter: seed | 1,
        }))
    }

    /// This side's hello for a new socket, and the nonce it carries (with a cluster secret).
    fn hello(&self) -> (Vec<u8>, [u8; NONCE_BYTES]) {
        let mut nonce = [0u8; NONCE_BYTES];
        let mut hello = Vec::with_capacity(HELLO_BYTES + NONCE_BYTES);
        hello.extend_from_slice(if self.secret.is_some() { SECRET_HELLO_MAGIC } else { HELLO_MAGIC });
        hello.extend_from_slice(&self.me.to_be_bytes());
        hello.extend_from_slice(&self.fingerprint.to_be_bytes());
        if self.secret.is_some() {
            // A system random nonce: a recorded proof is never asked for again.
            ring::rand::SecureRandom::fill(&self.random, &mut nonce).expect("the system's random source works");
            hello.extend_from_slice(&nonce);
        }
        (hello, nonce)
    }

    /// What `from` signs to prove it knows the secret, answering `nonce` (sent by `to`).
    fn proof_message(nonce: &[u8], from: u64, to: u64) -> Vec<u8> {
        [b"ferry-peer".as_slice(), nonce, &from.to_be_bytes(), &to.to_be_bytes()].concat()
    }

    /// Queues a frame for `to_node`; dropped while the link is down (the node heard it go
    /// down, or will at the next `take_downs`).
    pub fn send(&mut self, to_node: u64, payload: &[u8]) {
        let Some(link) = self.links.get_mut(&to_node) else {
            return tracing::warn!("a frame for node {to_node} dropped: not a voter");
        };
        let Some(key) = link.socket else { return };
        let socket = &mut self.sockets[key];
        if socket.overflowed {
            return;
        }
        if socket.queued() + payload.len() + 4 > self.outbox_max {
            socket.overflowed = true;
            return;
        }
        socket.push_frame(payload);
    }

    /// Peers whose link ended since the last call: the node must hear of each.
    pub fn take_downs(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.downs)
    }

    /// Peers whose queue passed half of `peer_outbox_bytes_max` (true) or drained under an
    /// eighth (false) since the last call.
    pub fn take_congestion(&mut self) -> Vec<(u64, bool)> {
        for (node, link) in &mut self.links {
            let queued = link.socket.map_or(0, |key| self.sockets[key].queued());
            let congested = if link.congested { queued > self.outbox_max / 8 } else { queued > self.outbox_max / 2 };
            if congested != link.congested {
                link.congested = congested;
                self.congestion.push((*node, congested));
            }
        }
        std::mem::take(&mut self.congestion)
    }

    /// Writes every link's queued frames.
    pub fn flush(&mut self, registry: &Registry) {
        let now = Instant::now();
        let mut failed = Vec::new();
        for (key, socket) in self.sockets.iter_mut() {
            if socket.overflowed {
                failed.push((key, format!("{} bytes queued to it (peer_outbox_bytes_max); resetting the link", socket.queued())));
            } else if socket.connected && socket.queued() > 0 {
                if let Err(e) = socket.flush(now) {
                    failed.push((key, format!("write failed: {e}")));
                }
            }
        }
        for (key, why) in failed {
            self.reset(registry, key, &why);
        }
    }

    pub fn accept_all(&mut self, registry: &Registry) {
        loop {
            let (hello, nonce) = self.hello();
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let entry = self.sockets.vacant_entry();
                    if let Err(e) = registry.register(&mut stream, Token(PEER_TOKEN_BASE + entry.key()), Interest::READABLE | Interest::WRITABLE) {
                        tracing::warn!("peer socket register failed: {e}");
                        continue;
                    }
                    let mut socket = PeerSocket::new(stream, None, false, Instant::now());
                    socket.outbox.push_first(&hello);
                    socket.nonce = nonce;
                    entry.insert(socket);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, say: the next readiness event tries again.
                    return tracing::warn!("accepting a peer connection failed: {e}");
                }
            }
        }
    }

    /// A readiness event for a peer socket: connects, reads, and hands over complete frames.
    pub fn ready(&mut self, registry: &Registry, token: Token, arrived: &mut Vec<Arrived>) {
        let key = token.0 - PEER_TOKEN_BASE;
        let now = Instant::now();
        let Some(socket) = self.sockets.get_mut(key) else { return };
        if !socket.connected {
            match socket.stream.take_error() {
                Ok(None) if socket.stream.peer_addr().is_ok() => {
                    socket.connected = true;
                    socket.last_heard = now;
                }
                Ok(Some(e)) | Err(e) => return self.reset(registry, key, &format!("cannot connect: {e}")),
                Ok(None) => return, // still connecting
            }
        }
        if let Err(why) = self.read(key, now, arrived) {
            return self.reset(registry, key, &why);
        }
        if let Some(socket) = self.sockets.get_mut(key) {
            if let Err(e) = socket.flush(now) {
                self.reset(registry, key, &format!("write failed: {e}"));
            }
        }
    }

    fn read(&mut self, key: usize, now: Instant, arrived: &mut Vec<Arrived>) -> Result<(), String> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let socket = &mut self.sockets[key];
            match socket.stream.read(&mut chunk) {
                Ok(0) => return Err("closed by the peer".into()),
                Ok(n) => {
                    socket.inbuf.extend_from_slice(&chunk[..n]);
                    socket.last_heard = now;
                    self.take_frames(key, arrived)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }

    fn take_frames(&mut self, key: usize, arrived: &mut Vec<Arrived>) -> Result<(), String> {
        let socket = &mut self.sockets[key];
        let mut at = 0;
        if !socket.hello_heard {
            let hello_bytes = if self.secret.is_some() { HELLO_BYTES + NONCE_BYTES } else { HELLO_BYTES };
            if socket.inbuf.len() < 8 {
                return Ok(());
            }
            match (&socket.inbuf[..8], self.secret.is_some()) {
                (magic, true) if magic == HELLO_MAGIC => return Err("the peer has no cluster_secret, and this node requires one".into()),
                (magic, false) if magic == SECRET_HELLO_MAGIC => return Err("the peer requires a cluster_secret, and this node has none".into()),
                (magic, true) if magic != SECRET_HELLO_MAGIC => return Err("not a ferry peer (bad hello)".into()),
                (magic, false) if magic != HELLO_MAGIC => return Err("not a ferry peer (bad hello)".into()),
                _ => {}
            }
            if socket.inbuf.len() < hello_bytes {
                return Ok(());
            }
            let hello = &socket.inbuf[..hello_bytes];
            let node = u64::from_be_bytes(hello[8..16].try_into().expect("8 bytes"));
            let fingerprint = u64::from_be_bytes(hello[16..24].try_into().expect("8 bytes"));
            if fingerprint != self.fingerprint {
                return Err(format!("node {node} runs with another peers list or shards count; every node must be given the same peers and shards"));
            }
            match socket.node {
                Some(expected) if expected != node => return Err(format!("expected node {expected}, reached node {node}: check peers")),
                Some(_) => {}
                None if !self.links.contains_key(&node) => return Err(format!("node {node} is not a voter")),
                None if node > self.me => return Err(format!("node {node} dialled node {}: the lower id dials", self.me)),
                None => socket.node = Some(node),
            }
            socket.hello_heard = true;
            at = hello_bytes;
            match &self.secret {
                Some(secret) => {
                    // Answer its challenge; the link is established once its answer to ours checks.
                    let proof = ring::hmac::sign(secret, &Peers::proof_message(&hello[HELLO_BYTES..], self.me, node));
                    socket.outbox.push_first(proof.as_ref());
                }
                None => {
                    socket.proven = true;
                    self.established(key, node);
                }
            }
        }
        let socket = &mut self.sockets[key];
        let node = socket.node.expect("identified by its hello");
        if !socket.proven {
            let Some(answer) = socket.inbuf.get(at..at + PROOF_BYTES) else {
                socket.inbuf.drain(..at);
                return Ok(());
            };
            let secret = self.secret.as_ref().expect("a proof is awaited only with a secret");
            if ring::hmac::verify(secret, &Peers::proof_message(&socket.nonce, node, self.me), answer).is_err() {
                let why = format!("node {node} failed the cluster_secret challenge: a different secret, or not a peer");
                if let Some(held_back) = self.refusals.allow(Instant::now()) {
                    let also = crate::log::held_back_note(held_back, "refusals");
                    tracing::warn!("refusing a peer connection: {why}{also}");
                }
                return Err(why);
            }
            socket.proven = true;
            at += PROOF_BYTES;
            self.established(key, node);
        }
        let socket = &mut self.sockets[key];
        while let Some(len_bytes) = socket.inbuf.get(at..at + 4) {
            let len = u32::from_be_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
            if len > self.frame_max {
                return Err(format!("a frame of {len} bytes, over the limit of {} (peer_frame_bytes_max)", self.frame_max));
            }
            let Some(payload) = socket.inbuf.get(at + 4..at + 4 + len) else { break };
            if len > 0 {
                arrived.push(Arrived { from_node: node, payload: payload.to_vec() });
            }
            at += 4 + len;
        }
        socket.inbuf.drain(..at);
        Ok(())
    }

    /// Both hellos are through: this socket is the link to `node` (replacing an older one,
    /// left from before the peer restarted).
    fn established(&mut self, key: usize, node: u64) {
        let link = self.links.get_mut(&node).expect("a voter");
        let old = link.socket.replace(key);
        if link.dialling == Some(key) {
            link.dialling = None;
        }
        link.backoff = BACKOFF_MIN;
        link.retry_at = None;
        let down_for = link.down_since.take().map(|since| format!(" (down for {} ms)", since.elapsed().as_millis())).unwrap_or_default();
        link.said_down = false;
        tracing::info!("peer {node} ({}) linked{down_for}", link.addr);
        if let Some(old) = old.filter(|old| *old != key) {
            // Closing the descriptor takes it out of the poll as well. What was in flight on
            // the old connection is lost: the node hears of it like of any other reset.
            self.sockets.remove(old);
            self.downs.push(node);
        }
    }

    /// Drops a socket; a link that loses its socket is dialled again after a backoff (by the
    /// lower id) or waits to be dialled.
    fn reset(&mut self, registry: &Registry, key: usize, why: &str) {
        let Some(mut socket) = self.sockets.try_remove(key) else { return };
        let _ = registry.deregister(&mut socket.stream);
        let Some(node) = socket.node else {
            return tracing::debug!("an unidentified peer connection dropped: {why}");
        };
        let me = self.me;
        let jitter = self.next_jitter();
        let Some(link) = self.links.get_mut(&node) else { return };
        let was_link = link.socket == Some(key);
        if was_link {
            link.socket = None;
            link.down_since = Some(Instant::now());
            self.downs.push(node);
        }
        if link.dialling == Some(key) {
            link.dialling = None;
        }
        if was_link || !link.said_down {
            tracing::warn!("peer {node} ({}): {why}{}", link.addr, if node > me { "; dialling it again" } else { "; waiting for it to dial" });
            link.said_down = true;
        }
        if node > me && link.socket.is_none() && link.dialling.is_none() {
            let wait = link.backoff.mul_f64(0.5 + (jitter % 1000) as f64 / 1000.0);
            link.retry_at = Some(Instant::now() + wait);
            link.backoff = (link.backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn next_jitter(&mut self) -> u64 {
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        self.jitter
    }

    /// Dials links due for it, sends heartbeats, and resets links silent for too long.
    pub fn tick(&mut self, registry: &Registry) {
        let now = Instant::now();
        let due: Vec<u64> = self.links.iter().filter(|(_, l)| l.retry_at.is_some_and(|at| at <= now)).map(|(node, _)| *node).collect();
        for node in due {
            self.dial(registry, node, now);
        }
        let mut dead = Vec::new();
        for (key, socket) in self.sockets.iter_mut() {
            let waited = now.saturating_duration_since(socket.last_heard);
            if !socket.proven && now.saturating_duration_since(socket.opened_at) > HELLO_TIMEOUT {
                dead.push((key, format!("no hello (or no proof of the cluster_secret) within {} ms", HELLO_TIMEOUT.as_millis())));
            } else if socket.hello_heard && waited > SILENCE_MAX {
                dead.push((key, format!("silent for {} ms", waited.as_millis())));
            } else if socket.hello_heard && socket.queued() == 0 && now.saturating_duration_since(socket.last_sent) >= HEARTBEAT {
                socket.push_frame(&[]);
            }
        }
        for (key, why) in dead {
            self.reset(registry, key, &why);
        }
        self.flush(registry);
    }

    fn dial(&mut self, registry: &Registry, node: u64, now: Instant) {
        let (hello, nonce) = self.hello();
        let link = self.links.get_mut(&node).expect("a voter");
        link.retry_at = None;
        let addr = match link.addr.to_socket_addrs().map(|mut addrs| addrs.next()) {
            Ok(Some(addr)) => addr,
            Ok(None) | Err(_) => {
                if !link.said_down {
                    tracing::warn!("peer {node}: cannot resolve '{}'; trying again", link.addr);
                    link.said_down = true;
                }
                link.retry_at = Some(now + BACKOFF_MAX);
                return;
            }
        };
        let mut stream = match TcpStream::connect(addr) {
            Ok(stream) => stream,
            Err(e) => {
                link.retry_at = Some(now + link.backoff);
                link.backoff = (link.backoff * 2).min(BACKOFF_MAX);
                return tracing::warn!("peer {node} ({addr}): cannot connect: {e}");
            }
        };
        let _ = stream.set_nodelay(true);
        let entry = self.sockets.vacant_entry();
        if let Err(e) = registry.register(&mut stream, Token(PEER_TOKEN_BASE + entry.key()), Interest::READABLE | Interest::WRITABLE) {
            link.retry_at = Some(now + link.backoff);
            return tracing::warn!("peer socket register failed: {e}");
        }
        link.dialling = Some(entry.key());
        let mut socket = PeerSocket::new(stream, Some(node), true, now);
        socket.outbox.push_first(&hello);
        socket.nonce = nonce;
        entry.insert(socket);
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Instant {
        let retry = self.links.values().filter_map(|l| l.retry_at).min();
        let beat = Instant::now() + HEARTBEAT / 4;
        retry.map_or(beat, |at| at.min(beat))
    }

    /// Each other voter and whether its link is up (for metrics).
    pub fn link_states(&self) -> Vec<(u64, bool)> {
        self.links.iter().map(|(node, link)| (*node, link.socket.is_some())).collect()
    }

    /// `node: up|down` for each other voter, for the status line.
    pub fn describe(&self) -> String {
        let links: Vec<String> = self.links.iter().map(|(node, l)| format!("{node} {}", if l.socket.is_some() { "up" } else { "down" })).collect();
        links.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_tells_peers_lists_apart_but_not_their_order() {
        let config = |peers: &str| Config { peers: peers.into(), peer_listen: "127.0.0.1:1".into(), ..Config::default() };
        let a = fingerprint(&config("1@127.0.0.1:7811,2@127.0.0.1:7812")).unwrap();
        assert_eq!(a, fingerprint(&config("2@127.0.0.1:7812, 1@127.0.0.1:7811")).unwrap());
        assert_ne!(a, fingerprint(&config("1@127.0.0.1:7811,2@127.0.0.1:7813")).unwrap());
        assert_ne!(a, fingerprint(&config("1@127.0.0.1:7811,2@127.0.0.1:7812,3@127.0.0.1:7813")).unwrap());
        let sharded = Config { shards: 3, ..config("1@127.0.0.1:7811,2@127.0.0.1:7812") };
        assert_ne!(a, fingerprint(&sharded).unwrap(), "another shard count");
    }
}
