//! The event loop: one mio `Poll`, WebSockets by tungstenite over non-blocking sockets, the
//! segment store, and the core `Host`. It turns socket, disk and timer events into core inputs
//! and core outputs into I/O; every decision is the core's.

use crate::accept::{self, Acceptor};
use crate::connection::{drain, read_failure, Connection, Idle, Metered, ReadEnd, Socket, CLOSE_LINGER};
use crate::disk_worker::DiskWorker;
use crate::handshake::{self, RequestReader, Verdict};
use crate::http;
use crate::log::Throttle;
use crate::peers::{Arrived, Peers, PEER_LISTENER, PEER_TOKEN_BASE};
use crate::store::{Completion, Store};
use crate::transport::{self, Transport};
use ferry_core::admission::Admission;
use ferry_core::node::{Input, Output, Rejection, Trace};
use ferry_core::{Config, ConnId, Host};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

const LISTENER: Token = Token(usize::MAX);
/// The disk thread has finished operations (see `DiskWorker`).
const DISK_DONE: Token = Token(usize::MAX - 2);
/// A turn with at most this many connections to read is light: its disk ops are carried out
/// by the loop itself when the disk thread has nothing queued (no wake-ups to pay for).
const LIGHT_TURN_CONNECTIONS_MAX: usize = 2;
/// A turn of the loop this long is worth a log line: a raft election times out after 10 ticks.
const LONG_TURN: Duration = Duration::from_millis(200);
/// Frames read from one connection per loop turn, so one busy client cannot starve the rest.
const READS_PER_TURN_MAX: usize = 1_024;
const EVENTS_CAPACITY: usize = 1_024;
const STATS_INTERVAL: Duration = Duration::from_secs(60);
/// Exit status after a disk error the server cannot recover from (see `Output::Stop`).
pub const STOP_EXIT_CODE: i32 = 3;
/// While all outboxes together are over `outbox_bytes_total_max`, connections with more than
/// this queued are paused.
const OUTBOX_TRIVIAL_BYTES: u64 = 64 << 10;

pub struct ServerOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub config: Config,
    /// TLS for the client listener (`tls_cert`, `tls_key`), loaded at start.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// Time for the core: nanoseconds since the Unix epoch, but monotonic (wall clock read once).
struct Clock {
    start: Instant,
    wall_start_ns: u64,
}

impl Clock {
    fn new() -> Clock {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Clock { start: Instant::now(), wall_start_ns: wall.as_nanos() as u64 }
    }
    fn now(&self) -> u64 {
        self.wall_start_ns + self.start.elapsed().as_nanos() as u64
    }
}

struct Server {
    poll: Poll,
    acceptor: Acceptor,
    node: Host,
    /// The store, on its own thread.
    disk: DiskWorker,
    /// How long each fsync took (`/metrics`), filled in by the disk thread.
    fsync_seconds: prometheus_client::metrics::histogram::Histogram,
    /// This loop turn has little to do (see `LIGHT_TURN_CONNECTIONS_MAX`).
    light_turn: bool,
    /// Links to the other voters of a cluster; `None` on a single node.
    peers: Option<Peers>,
    clock: Clock,
    conns: Slab<Connection>,
    by_id: HashMap<ConnId, usize>,
    next_conn_id: ConnId,
    ws_config: WebSocketConfig,
    /// Set when the client listener speaks TLS.
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    connections_max: usize,
    /// Per source address: connections open and their rate.
    ip_admission: Admission<std::net::IpAddr>,
    handshake_timeout: Duration,
    idle_ping: Duration,
    idle_timeout: Duration,
    /// How often deadlines (handshake, closing, idle) are checked, and when they last were.
    sweep_interval: Duration,
    last_sweep: Instant,
    to_flush: Vec<usize>,
    to_drop: Vec<usize>,
    more_to_read: Vec<usize>,
    /// For the line about clients refused at `connections_max`, which can come at any rate.
    full_log: Throttle,
    /// Turns of the loop longer than `LONG_TURN` are logged at most every 10 s.
    long_turn_log: Throttle,
    /// Flow control: a connection with more than `pause_bytes` queued is congested until it
    /// drains to half of that; one that drains nothing for `slow_consumer_timeout` meanwhile
    /// is cut off.
    pause_bytes: u64,
    slow_consumer_timeout: Duration,
    /// Bytes queued to all connections, and the budget past which every connection with more
    /// than a little queued is paused (`all_paused`) until the total is back to half of it.
    outbox_total: u64,
    outbox_total_max: u64,
    all_paused: bool,
    total_log: Throttle,
    /// Node outputs other than sends and closes, taken out while reading frames one by one
    /// (their sends must reach the outboxes before the next frame is read) and carried out,
    /// in order, by the next `drain_outputs`: disk work after a whole turn of frames, so that
    /// publishes read in one turn share one write.
    deferred: VecDeque<Output>,
}

/// Every connection holds a descriptor: raise the limit to fit `connections_max`, and say so
/// when it cannot.
fn raise_fd_limit(connections_max: u32) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    let wanted = connections_max as u64 + 1024;
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            // Root may raise the hard limit as well; others get the soft limit up to the hard one.
            let both = libc::rlimit { rlim_cur: wanted.max(limit.rlim_cur), rlim_max: wanted.max(limit.rlim_max) };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &both) == 0 {
                limit = both;
                true
            } else {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
            }
        }
    };
    if !raised || limit.rlim_cur < connections_max as u64 + 64 {
        tracing::warn!("open-file limit {} is below connections_max ({connections_max}); accepts will fail past it", limit.rlim_cur);
    }
}

pub fn run(options: ServerOptions) -> io::Result<()> {
    raise_fd_limit(options.config.connections_max);
    let clock = Clock::new();
    let mut config = options.config;
    // Bound before recovery, so that the node can be told the address it serves at (clients
    // connecting meanwhile wait in the backlog until the loop starts).
    let mut listener = TcpListener::bind(options.listen).map_err(|e| io::Error::other(format!("cannot listen on {}: {e}", options.listen)))?;
    let local = listener.local_addr()?;
    let (ws_scheme, http_scheme) = if options.tls.is_some() { ("wss", "https") } else { ("ws", "http") };
    if config.advertise_url.is_empty() {
        config.advertise_url = format!("{ws_scheme}://{local}/ws");
    }
    let started = Instant::now();
    let (store, node, report) = Store::open(&options.data_dir, config.clone(), clock.now()).map_err(|e| io::Error::other(format!("cannot start: {e}")))?;
    tracing::info!("recovered {} segments, {} messages from {} in {} ms", report.segments, report.messages, options.data_dir.display(), started.elapsed().as_millis());
    let poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let fsync_seconds = store.fsync_seconds.clone();
    // Room for everything the core can have in flight at once: a write and a truncate per
    // shard, every waiting fetch's reads, and deletes.
    let disk_queue_max = config.shards as usize * 4 + config.fetches_pending_max as usize + 64;
    let disk = DiskWorker::start(store, mio::Waker::new(poll.registry(), DISK_DONE)?, disk_queue_max)?;
    let peers = Peers::open(&config, poll.registry(), config.rng_seed)?;
    tracing::info!("listening on {ws_scheme}://{local}/ws (fsync {:?}); console at {http_scheme}://{local}/", config.fsync);
    crate::read_ahead::set_budget(usize::try_from(config.read_ahead_bytes_total_max).unwrap_or(usize::MAX));
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(1 << 10)
        .write_buffer_size(32 << 10)
        .max_write_buffer_size(config.connection_outbox_bytes_max)
        .max_message_size(Some(config.frame_bytes_max))
        .max_frame_size(Some(config.frame_bytes_max));
    let mut server = Server {
        poll,
        acceptor: Acceptor::new(listener),
        node,
        disk,
        fsync_seconds,
        light_turn: true,
        peers,
        clock,
        conns: Slab::new(),
        by_id: HashMap::new(),
        next_conn_id: ConnId(1),
        ws_config,
        tls: options.tls,
        connections_max: config.connections_max as usize,
        ip_admission: Admission::new(config.connections_per_ip_max, ferry_core::bucket::Limit { rate_per_s: config.connection_rate_per_ip, burst: config.connection_burst_per_ip }),
        handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
        idle_ping: Duration::from_millis(config.idle_ping_ms),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        // A deadline is noticed within a quarter of the shortest one (and within a second).
        sweep_interval: [config.handshake_timeout_ms, config.idle_ping_ms, config.idle_timeout_ms, config.slow_consumer_timeout_ms, CLOSE_LINGER.as_millis() as u64, 4_000]
            .into_iter()
            .min()
            .map_or(Duration::from_secs(1), |ms| Duration::from_millis(ms.max(4) / 4)),
        last_sweep: Instant::now(),
        to_flush: Vec::new(),
        to_drop: Vec::new(),
        more_to_read: Vec::new(),
        full_log: Throttle::new(Duration::from_secs(10)),
        long_turn_log: Throttle::new(Duration::from_secs(10)),
        pause_bytes: config.connection_outbox_pause_bytes as u64,
        slow_consumer_timeout: Duration::from_millis(config.slow_consumer_timeout_ms),
        outbox_total: 0,
        outbox_total_max: config.outbox_bytes_total_max,
        all_paused: false,
        total_log: Throttle::new(Duration::from_secs(10)),
        deferred: VecDeque::new(),
    };
    server.serve()
}

impl Server {
    fn serve(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut last_stats = Instant::now();
        let mut last_logged = self.node.stats();
        self.drain_outputs();
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let turn_began = Instant::now();
            let mut readable = std::mem::take(&mut self.more_to_read);
            let mut arrived = Vec::new();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    // Completions are taken every turn, below.
                    DISK_DONE => {}
                    PEER_LISTENER => self.peers.as_mut().expect("a cluster node").accept_all(self.poll.registry()),
                    token if token.0 >= PEER_TOKEN_BASE => self.peers.as_mut().expect("a cluster node").ready(self.poll.registry(), token, &mut arrived),
                    Token(key) => {
                        if event.is_writable() {
                            self.to_flush.push(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            readable.push(key);
                        }
                    }
                }
            }
            if self.acceptor.resume_at().is_some_and(|at| at <= Instant::now()) {
                self.accept_all();
            }
            readable.sort_unstable();
            readable.dedup();
            self.light_turn = readable.len() <= LIGHT_TURN_CONNECTIONS_MAX && arrived.is_empty();
            let (connections_read, peer_frames) = (readable.len(), arrived.len());
            self.take_completions();
            self.take_peer_frames(arrived);
            for key in readable {
                self.read_from(key);
                self.drain_outputs();
            }
            self.node.handle_timeout(self.clock.now());
            self.drain_outputs();
            self.flush_and_drop();
            let took = turn_began.elapsed();
            if took >= LONG_TURN {
                if let Some(held_back) = self.long_turn_log.allow(Instant::now()) {
                    let also = crate::log::held_back_note(held_back, "such turns");
                    tracing::warn!(
                        "one turn of the event loop took {} ms ({connections_read} connections read, {peer_frames} peer frames): everything else waited meanwhile, raft's heartbeats included{also}",
                        took.as_millis()
                    );
                }
            }
            if let Some(peers) = self.peers.as_mut() {
                peers.tick(self.poll.registry());
                self.take_peer_changes();
            }
            if self.last_sweep.elapsed() >= self.sweep_interval {
                self.last_sweep = Instant::now();
                self.check_deadlines();
            }
            if last_stats.elapsed() >= STATS_INTERVAL && self.node.stats() != last_logged {
                last_logged = self.node.stats();
                last_stats = Instant::now();
                let peers = self.peers.as_ref().map(|p| format!(", peers: {}", p.describe())).unwrap_or_default();
                tracing::info!("connections {}, queued {} bytes, {:?}{peers}", self.conns.len(), self.outbox_total, last_logged);
            }
        }
    }

    /// Drops connections that did not finish their handshake, or their closing, in time;
    /// pings silent connections and closes those that stay silent.
    fn check_deadlines(&mut self) {
        let handshaking = |c: &Connection| matches!(c.socket, Socket::Handshaking { .. } | Socket::Answering { upgrade: Some(_), .. });
        let stalled: Vec<usize> = self.conns.iter().filter(|(_, c)| handshaking(c) && c.accepted_at.elapsed() > self.handshake_timeout).map(|(key, _)| key).collect();
        if !stalled.is_empty() {
            tracing::debug!("dropping {} connections that did not finish the handshake", stalled.len());
            self.to_drop.extend(stalled);
        }
        let lingering = self.conns.iter().filter(|(_, c)| c.closing_since.is_some_and(|t| t.elapsed() > CLOSE_LINGER)).map(|(key, _)| key);
        self.to_drop.extend(lingering);
        self.check_idle();
        if !self.to_drop.is_empty() || !self.to_flush.is_empty() {
            self.drain_outputs();
            self.flush_and_drop();
        }
    }

    /// A half-open connection (the client vanished without a FIN) would otherwise keep its
    /// in-flight messages until their ack timeout: ping what has been silent for
    /// `idle_ping`, and close what stays silent for `idle_timeout` after the ping.
    fn check_idle(&mut self) {
        let now = Instant::now();
        let mut silent = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            if let Some(since) = conn.stalled_since.filter(|since| now.saturating_duration_since(*since) >= self.slow_consumer_timeout) {
                if !conn.doomed {
                    tracing::warn!(
                        "connection {}: {} bytes queued and none taken for {} ms (slow_consumer_timeout_ms); closing the slow client",
                        conn.id,
                        conn.outbox(),
                        now.saturating_duration_since(since).as_millis()
                    );
                    conn.doomed = true;
                    self.to_drop.push(key);
                }
                continue;
            }
            match conn.idle(now, self.idle_ping, self.idle_timeout) {
                Idle::Heard => {}
                Idle::Ping => match conn.ping() {
                    Ok(()) => self.to_flush.push(key),
                    Err(()) => self.to_drop.push(key),
                },
                Idle::Silent => silent.push(key),
            }
        }
        for key in silent {
            let id = self.conns[key].id;
            tracing::debug!("connection {id}: silent for {} ms after a ping; closing it", self.idle_timeout.as_millis());
            self.close(key, CloseFrame { code: CloseCode::Policy, reason: "no frame or pong within idle_timeout_ms of a ping".into() });
        }
    }

    fn poll_timeout(&self) -> Duration {
        if !self.more_to_read.is_empty() {
            return Duration::ZERO;
        }
        let mut timeout = self.sweep_interval.saturating_sub(self.last_sweep.elapsed());
        if let Some(at) = self.node.poll_timeout() {
            timeout = timeout.min(Duration::from_nanos(at.saturating_sub(self.clock.now())));
        }
        if let Some(at) = self.acceptor.resume_at() {
            timeout = timeout.min(at.saturating_duration_since(Instant::now()));
        }
        if let Some(peers) = &self.peers {
            timeout = timeout.min(peers.next_deadline().saturating_duration_since(Instant::now()));
        }
        timeout
    }

    /// Hands the frames peers sent to the node, one by one, then carries out what they caused:
    /// the raft writes of a whole turn's frames share one write and fsync (group commit, as
    /// for clients' publishes), instead of one each. Then tells it of links that ended.
    fn take_peer_frames(&mut self, arrived: Vec<Arrived>) {
        for Arrived { from_node, payload } in arrived {
            self.node.handle_input(self.clock.now(), Input::PeerMessage { from_node, payload: &payload });
            self.pass_sends();
        }
        self.drain_outputs();
        self.take_peer_changes();
    }

    fn take_peer_changes(&mut self) {
        let downs = self.peers.as_mut().map(Peers::take_downs).unwrap_or_default();
        for node in downs {
            self.node.handle_input(self.clock.now(), Input::PeerDown { node });
            self.drain_outputs();
        }
        let congestion = self.peers.as_mut().map(Peers::take_congestion).unwrap_or_default();
        for (node, congested) in congestion {
            if congested {
                tracing::warn!("peer {node}: its queue is over half of peer_outbox_bytes_max; its clients get no messages until it drains");
            }
            self.node.handle_input(self.clock.now(), Input::PeerCongested { node, congested });
            self.drain_outputs();
        }
    }

    fn accept_all(&mut self) {
        let mut accepted = Vec::new();
        self.acceptor.accept_queued(Instant::now(), self.conns.len(), |stream| accepted.push(stream));
        for stream in accepted {
            self.accept(stream);
        }
    }

    fn accept(&mut self, mut stream: TcpStream) {
        if self.conns.len() >= self.connections_max {
            accept::refuse_busy(&mut stream);
            if let Some(held_back) = self.full_log.allow(Instant::now()) {
                let also = crate::log::held_back_note(held_back, "refused");
                tracing::warn!("refusing a connection with 503: connections_max ({}) reached{also}", self.connections_max);
            }
            return;
        }
        let peer = stream.peer_addr().ok();
        if let Some(ip) = peer.map(|addr| addr.ip()) {
            if let Err(refusal) = self.ip_admission.admit(self.clock.now(), ip) {
                accept::refuse_address(&mut stream, &refusal);
                if self.full_log.allow(Instant::now()).is_some() {
                    tracing::warn!("refusing a connection from {ip} with 429: {refusal:?}");
                }
                return;
            }
        }
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE) {
            tracing::warn!("register failed: {e}");
            if let Some(addr) = peer {
                self.ip_admission.release(self.clock.now(), addr.ip());
            }
            return;
        }
        let stream = match Transport::accepted(stream, self.tls.as_ref()) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("cannot start TLS for a connection: {e}");
                if let Some(addr) = peer {
                    self.ip_admission.release(self.clock.now(), addr.ip());
                }
                return;
            }
        };
        let id = self.next_conn_id;
        self.next_conn_id.0 += 1;
        // The request is read on the readable event, which comes at once if it is already here
        // (under TLS, the handshake advances on those events first).
        let socket = Socket::Handshaking { stream, request: RequestReader::default() };
        entry.insert(Connection::new(id, socket, Instant::now())).peer = peer;
        self.by_id.insert(id, key);
    }

    fn read_from(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if let Socket::Handshaking { stream, request } = &mut conn.socket {
            // A client speaking plain HTTP to the TLS port is answered in plain HTTP.
            let mut plain_on_tls = false;
            let (answer, upgrade) = match request.read(stream) {
                Ok(Verdict::Incomplete) => return,
                Ok(Verdict::Upgrade { answer, tail, bearer, origin }) => match admission(&self.node, self.clock.now(), origin.as_deref(), bearer.as_deref()) {
                    Ok(()) => {
                        conn.bearer = bearer;
                        (answer, Some(tail))
                    }
                    Err((status, why)) => {
                        tracing::debug!("connection {}: upgrade refused with {status}: {why}", conn.id);
                        conn.closing_since = Some(Instant::now());
                        (handshake::refusal(status, &[], why), None)
                    }
                },
                Ok(Verdict::Refuse { answer, why }) => {
                    tracing::debug!("connection {}: upgrade refused with {why}", conn.id);
                    conn.closing_since = Some(Instant::now());
                    (answer, None)
                }
                Ok(Verdict::Http { method, path, query, bearer, host, origin }) => {
                    conn.closing_since = Some(Instant::now());
                    let from_loopback = stream.tcp().peer_addr().is_ok_and(|addr| addr.ip().is_loopback());
                    let request = http::Request::new(method, path, &query, http::Access { from_loopback, bearer, host, origin });
                    (self.answer_http(&request), None)
                }
                Err(e) if transport::is_plain_on_tls(&e) => {
                    tracing::debug!("connection {}: plain HTTP on the TLS port; answering 400", conn.id);
                    conn.closing_since = Some(Instant::now());
                    plain_on_tls = true;
                    (handshake::refusal(400, &[], "this port speaks TLS: use wss:// or https://"), None)
                }
                Err(e) => {
                    if e.kind() == io::ErrorKind::InvalidData {
                        tracing::debug!("connection {}: TLS failed: {e}", conn.id);
                    }
                    self.to_drop.push(key);
                    return;
                }
            };
            let Some(conn) = self.conns.get_mut(key) else { return };
            let Socket::Handshaking { stream, .. } = std::mem::replace(&mut conn.socket, Socket::Moving) else { unreachable!() };
            let stream = if plain_on_tls { stream.into_plain() } else { stream };
            conn.socket = Socket::Answering { stream, answer, written: 0, upgrade };
            self.to_flush.push(key);
            return;
        }
        if conn.closing_since.is_some() {
            // Only our last bytes matter now; reading resumes (to drain) once they are out.
            if let Socket::Draining(stream) = &mut conn.socket {
                match drain(stream) {
                    ReadEnd::MoreToRead => self.more_to_read.push(key),
                    ReadEnd::Blocked => {}
                    _ => self.to_drop.push(key),
                }
            }
            return;
        }
        // Reading follows a readable event (or a turn cut short with bytes left): the client
        // has sent something, if only part of a frame.
        conn.heard(Instant::now());
        if let Socket::Open(ws) = &mut conn.socket {
            ws.get_mut().may_have_more();
        }
        let id = conn.id;
        let mut end = ReadEnd::MoreToRead;
        for _ in 0..READS_PER_TURN_MAX {
            let Some(conn) = self.conns.get_mut(key) else { return };
            // A client that does not read what it is sent gets none of its frames read until
            // its outbox drains (then `set_congested` reads on): its requests wait in the
            // kernel and TCP pushes back on it. Checked after every frame, as each reply counts.
            if conn.congested || conn.doomed || conn.closing_since.is_some() {
                end = ReadEnd::Blocked;
                break;
            }
            let Socket::Open(ws) = &mut conn.socket else { return };
            let now = self.clock.now();
            match ws.read() {
                Ok(Message::Text(text)) => {
                    self.node.handle_input(now, Input::Frame { conn: id, text: text.as_str() });
                    self.pass_sends();
                }
                Ok(Message::Binary(_)) => {
                    self.node.handle_input(now, Input::Rejected { conn: id, why: Rejection::BinaryFrame });
                    self.pass_sends();
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(_)) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    end = ReadEnd::Blocked;
                    break;
                }
                Err(tungstenite::Error::Capacity(_)) => {
                    self.node.handle_input(self.clock.now(), Input::Rejected { conn: id, why: Rejection::TooLarge });
                    end = ReadEnd::Blocked;
                    break;
                }
                Err(e) => {
                    let closed_cleanly = matches!(e, tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed);
                    if !closed_cleanly {
                        tracing::debug!("connection {id}: {e}");
                    }
                    end = read_failure(e);
                    break;
                }
            }
        }
        match end {
            ReadEnd::Blocked => self.to_flush.push(key),
            ReadEnd::MoreToRead => self.more_to_read.push(key),
            ReadEnd::Fail(code, reason) => {
                tracing::debug!("connection {id}: closing with {}", u16::from(code));
                self.close(key, CloseFrame { code, reason: reason.into() });
            }
            ReadEnd::Gone => self.to_drop.push(key),
        }
    }

    /// Starts closing `key`: queues `frame`, tells the core the connection is gone (so what
    /// it had in flight goes to other members), and flushes; draining and dropping follow.
    fn close(&mut self, key: usize, frame: CloseFrame) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.closing_since.is_some() {
            return;
        }
        conn.closing_since = Some(Instant::now());
        let id = conn.id;
        if let Socket::Open(ws) = &mut conn.socket {
            match ws.close(Some(frame)) {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => self.to_drop.push(key),
            }
        }
        self.by_id.remove(&id);
        self.node.handle_input(self.clock.now(), Input::Disconnected { conn: id });
        self.to_flush.push(key);
    }

    /// Writes what is left of the answer to the upgrade request; once it is out, WebSocket
    /// starts (and the core learns of the connection) or, after a refusal, draining does.
    fn write_answer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        match conn.socket.write_answer() {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => return self.to_drop.push(key),
        }
        let Socket::Answering { stream, upgrade, .. } = std::mem::replace(&mut conn.socket, Socket::Moving) else { unreachable!() };
        match upgrade {
            Some(tail) => {
                conn.socket = Socket::Open(WebSocket::from_partially_read(Metered::new(stream), tail, Role::Server, Some(self.ws_config)));
                self.node.handle_input(self.clock.now(), Input::Connected { conn: conn.id });
                if let Some(token) = conn.bearer.take() {
                    self.node.handle_input(self.clock.now(), Input::Token { conn: conn.id, token: &token });
                }
                // The welcome goes out before anything the first frames may cause.
                self.drain_outputs();
                // Frames that came behind the request were not read while the answer went out.
                self.more_to_read.push(key);
            }
            None => self.start_draining(key, stream),
        }
    }

    /// Our last bytes are out: shut our side, and drain until the peer closes its own.
    fn start_draining(&mut self, key: usize, mut stream: Transport) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        self.outbox_total -= std::mem::take(&mut conn.counted);
        stream.shutdown_write();
        let _ = self.poll.registry().reregister(stream.tcp(), Token(key), Interest::READABLE);
        conn.wants_writable = false;
        conn.socket = Socket::Draining(stream);
        // Readable events were ignored while the close frame was flushed.
        self.more_to_read.push(key);
        self.check_outbox_total();
    }

    /// The answer to a plain HTTP request (an admin action's outputs are carried out with
    /// the core's others).
    fn answer_http(&mut self, request: &http::Request) -> Vec<u8> {
        let (conns, by_id) = (&self.conns, &self.by_id);
        let connection_info = |conn: ConnId| {
            let connection = &conns[*by_id.get(&conn)?];
            let peer = connection.peer.map_or_else(|| "unknown".to_string(), |addr| addr.to_string());
            Some(http::ConnectionInfo { peer, connected_ms: connection.accepted_at.elapsed().as_millis() as u64, outbox_bytes: connection.outbox() })
        };
        let peer_links = self.peers.as_ref().map(Peers::link_states).unwrap_or_default();
        let mut context = http::Context { host: &mut self.node, now_ns: self.clock.now(), fsync_seconds: &self.fsync_seconds, connection_info: &connection_info, peer_links };
        http::answer(request, &mut context)
    }

    /// Carries out the node's outputs (those deferred while reading first) until it has none.
    fn drain_outputs(&mut self) {
        while let Some(output) = self.deferred.pop_front().or_else(|| self.node.poll_output()) {
            match output {
                Output::Send { conn, frame } => self.send(conn, frame),
                Output::Close { conn, code, reason } => self.close_conn(conn, code, reason),
                Output::Disk(op) => {
                    if let Some(completion) = self.disk.submit(op, self.light_turn) {
                        self.complete(completion);
                    }
                }
                Output::Trace(trace) => log_trace(&trace),
                Output::PeerSend { to_node, payload } => match self.peers.as_mut() {
                    Some(peers) => peers.send(to_node, &payload),
                    None => tracing::warn!("a frame for node {to_node} dropped: a single node has no peers"),
                },
                Output::Stop { why } => {
                    // Fail-stop: nothing more may reach the disk; a restart recovers from it.
                    tracing::error!("stopping: {why}");
                    std::process::exit(STOP_EXIT_CODE);
                }
            }
        }
    }

    /// Hands the node what the disk thread has finished, in order, and carries out what
    /// follows (pubacks, deliveries, the next write).
    fn take_completions(&mut self) {
        for completion in self.disk.completions() {
            self.complete(completion);
            self.pass_sends();
        }
        self.drain_outputs();
    }

    fn complete(&mut self, completion: Completion) {
        let now = self.clock.now();
        match completion {
            Completion::Write { token, result } => self.node.handle_input(now, Input::WriteDone { token, result }),
            Completion::Read { token, result } => {
                let result = result.as_deref().map_err(Clone::clone);
                self.node.handle_input(now, Input::ReadDone { token, result });
            }
            Completion::Truncate { token, result } => self.node.handle_input(now, Input::TruncateDone { token, result }),
        }
    }

    /// Carries out the node's sends and closes now and keeps its other outputs, in order, for
    /// the next `drain_outputs`: used between frames read from one connection, so that what a
    /// frame caused is in the outboxes (and counted) before the next frame is read.
    fn pass_sends(&mut self) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Send { conn, frame } => self.send(conn, frame),
                Output::Close { conn, code, reason } => self.close_conn(conn, code, reason),
                other => self.deferred.push_back(other),
            }
        }
    }

    fn close_conn(&mut self, conn: ConnId, code: u16, reason: String) {
        if let Some(&key) = self.by_id.get(&conn) {
            self.close(key, CloseFrame { code: CloseCode::from(code), reason: reason.into() });
        }
    }

    fn send(&mut self, conn: ConnId, frame: String) {
        let Some(&key) = self.by_id.get(&conn) else { return };
        let connection = &mut self.conns[key];
        if connection.doomed {
            return;
        }
        match connection.write_text(frame) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(tungstenite::Error::WriteBufferFull(_)) => {
                // Flow control keeps outboxes far below this; only the last resort is left.
                tracing::warn!("connection {conn}: {} bytes queued, over connection_outbox_bytes_max; closing the slow client", connection.outbox());
                connection.doomed = true;
                self.to_drop.push(key);
                return;
            }
            Err(e) => {
                tracing::debug!("connection {conn}: write failed: {e}");
                connection.doomed = true;
                self.to_drop.push(key);
                return;
            }
        }
        self.update_flow(key);
        self.to_flush.push(key);
    }

    /// Looks at `key`'s outbox after a write or a flush: keeps the node-wide total, notes
    /// whether anything drained, and congests or relieves the connection (see `Config`:
    /// `connection_outbox_pause_bytes`, `outbox_bytes_total_max`).
    fn update_flow(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let outbox = conn.outbox();
        self.outbox_total = self.outbox_total - conn.counted + outbox;
        conn.counted = outbox;
        if conn.drained() && conn.stalled_since.is_some() {
            conn.stalled_since = Some(Instant::now());
        }
        // A closing connection is forgotten by the core; only its bytes still count.
        if conn.closing_since.is_none() && !conn.doomed {
            let own = if conn.congested { outbox > self.pause_bytes / 2 } else { outbox > self.pause_bytes };
            let congested = own || (self.all_paused && outbox > OUTBOX_TRIVIAL_BYTES);
            if congested != conn.congested {
                self.set_congested(key, congested);
            }
        }
        self.check_outbox_total();
    }

    /// Tells the core, and stops or restarts reading the connection's frames.
    fn set_congested(&mut self, key: usize, congested: bool) {
        let conn = &mut self.conns[key];
        conn.congested = congested;
        conn.stalled_since = congested.then(Instant::now);
        let id = conn.id;
        self.node.handle_input(self.clock.now(), Input::Congested { conn: id, congested });
        if !congested {
            // Its frames were left unread: no readable event will say they are there.
            self.more_to_read.push(key);
        }
    }

    /// Pauses every connection with more than a little queued while all outboxes together
    /// are over `outbox_bytes_total_max`, and lets them go once the total is half of it.
    fn check_outbox_total(&mut self) {
        let pause_all = if self.all_paused { self.outbox_total > self.outbox_total_max / 2 } else { self.outbox_total > self.outbox_total_max };
        if pause_all == self.all_paused {
            return;
        }
        self.all_paused = pause_all;
        if pause_all {
            if let Some(held_back) = self.total_log.allow(Instant::now()) {
                let also = crate::log::held_back_note(held_back, "times");
                tracing::warn!(
                    "{} bytes queued to clients, over outbox_bytes_total_max ({}): connections with more than {OUTBOX_TRIVIAL_BYTES} bytes queued are paused{also}",
                    self.outbox_total,
                    self.outbox_total_max
                );
            }
        }
        let keys: Vec<usize> = self.conns.iter().filter(|(_, c)| c.closing_since.is_none() && !c.doomed && matches!(c.socket, Socket::Open(_))).map(|(key, _)| key).collect();
        for key in keys {
            let conn = &self.conns[key];
            let outbox = conn.outbox();
            let congested = if pause_all { conn.congested || outbox > OUTBOX_TRIVIAL_BYTES } else { conn.congested && outbox > self.pause_bytes / 2 };
            if congested != conn.congested {
                self.set_congested(key, congested);
            }
        }
    }

    /// Flushes written connections and drops dead ones; a drop can make the core redeliver
    /// to other connections, so repeat until quiet (bounded: each round follows from the last).
    /// A flush can relieve a congested connection, so the core pushes to it again: the same.
    fn flush_and_drop(&mut self) {
        for _ in 0..16 {
            self.flush_pending();
            let dropped = self.drop_pending();
            self.drain_outputs();
            if !dropped && self.to_flush.is_empty() {
                return;
            }
        }
    }

    fn flush_pending(&mut self) {
        let mut keys = std::mem::take(&mut self.to_flush);
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            match &mut conn.socket {
                Socket::Answering { .. } => {
                    self.write_answer(key);
                    continue;
                }
                // A TLS handshake's records the socket did not take while reading.
                Socket::Handshaking { stream, .. } => {
                    match io::Write::flush(stream) {
                        Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                            tracing::debug!("connection {}: {e}", conn.id);
                            self.to_drop.push(key);
                        }
                        _ => {}
                    }
                    continue;
                }
                _ => {}
            }
            let Socket::Open(ws) = &mut conn.socket else { continue };
            match ws.flush() {
                Ok(()) => {
                    if conn.closing_since.is_some() {
                        let Socket::Open(ws) = std::mem::replace(&mut conn.socket, Socket::Moving) else { unreachable!() };
                        self.start_draining(key, ws.into_inner().stream);
                        continue;
                    }
                    if conn.wants_writable {
                        conn.wants_writable = false;
                        let _ = self.poll.registry().reregister(ws.get_mut().stream.tcp(), Token(key), Interest::READABLE);
                    }
                    conn.flushed();
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !conn.wants_writable {
                        conn.wants_writable = true;
                        let _ = self.poll.registry().reregister(ws.get_mut().stream.tcp(), Token(key), Interest::READABLE | Interest::WRITABLE);
                    }
                }
                Err(_) => {
                    self.to_drop.push(key);
                    continue;
                }
            }
            self.update_flow(key);
        }
    }

    fn drop_pending(&mut self) -> bool {
        let mut drops = std::mem::take(&mut self.to_drop);
        drops.sort_unstable();
        drops.dedup();
        let mut any = false;
        for key in drops {
            let Some(mut conn) = self.conns.try_remove(key) else { continue };
            any = true;
            // What is still queued (an answer to the client's close behind our last frames)
            // gets one try: the socket is not waited for.
            conn.write_queued_once();
            self.outbox_total -= conn.counted;
            self.by_id.remove(&conn.id);
            self.more_to_read.retain(|k| *k != key);
            if let Some(stream) = conn.socket.stream() {
                let _ = self.poll.registry().deregister(stream);
            }
            self.node.handle_input(self.clock.now(), Input::Disconnected { conn: conn.id });
            if let Some(addr) = conn.peer {
                self.ip_admission.release(self.clock.now(), addr.ip());
            }
        }
        if any {
            self.acceptor.descriptor_freed(Instant::now());
            self.check_outbox_total();
        }
        any
    }
}

/// Whether a WebSocket handshake is admitted: an `Origin` (a browser's page) must be one of
/// `allowed_origins` when that is set; a bearer token must be a configured one (a client with
/// a token that can never work learns it at once, with 401, instead of retrying).
fn admission(host: &Host, now_ns: u64, origin: Option<&str>, bearer: Option<&str>) -> Result<(), (u16, &'static str)> {
    let allowed = &host.config().allowed_origins;
    if let Some(origin) = origin {
        if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
            return Err((403, "this Origin is not in allowed_origins"));
        }
    }
    match bearer {
        Some(token) if host.config().requires_identity() && host.rights_of(token, now_ns).is_none() => Err((401, "unknown, expired or badly signed bearer token")),
        _ => Ok(()),
    }
}

fn log_trace(trace: &Trace) {
    match trace {
        Trace::StoreFailed { .. } | Trace::UnreadableRecord { .. } => tracing::error!("{trace:?}"),
        Trace::SpillFailed { error } => tracing::error!("a write of in-flight state to the spill file failed ({error:?}): it stays in memory; spilling pauses 1 s"),
        Trace::DeadLettered { .. } | Trace::DeadLetterDropped { .. } | Trace::PeerMessageIgnored { .. } | Trace::PeerFrameRefused { .. } => tracing::warn!("{trace:?}"),
        Trace::SegmentRolled { .. } | Trace::SegmentDeleted { .. } => tracing::debug!("{trace:?}"),
        Trace::LeaderChanged { shard, leader: Some(leader), term } => tracing::info!("shard {shard} leader: node {leader} (term {term})"),
        Trace::LeaderChanged { shard, leader: None, term } => tracing::info!("shard {shard} has no leader: an election is on (term {term})"),
        Trace::FollowerBehindLog { shard, node, first_entry } => tracing::warn!(
            "shard {shard}: node {node} lacks raft entries retention has deleted here (the log starts at entry {first_entry}): sending it the state as of entry {}",
            first_entry - 1
        ),
        Trace::StateInstalled { shard, index } => {
            tracing::warn!("shard {shard}: took the leader's state as of raft entry {index} (this node was behind what the leader keeps); older segments go once it is durable")
        }
    }
}
