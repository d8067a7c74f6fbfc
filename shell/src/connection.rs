//! One client connection: the states of its socket from the upgrade request to the last byte,
//! and the socket-level steps between them (writing the handshake answer, sorting read errors,
//! draining after our close, noticing silence, measuring what is queued to it). The server
//! loop decides when each runs.

use crate::handshake::RequestReader;
use crate::read_ahead::{self, ReadAhead};
use crate::transport::Transport;
use ferry_core::ConnId;
use mio::net::TcpStream;
use std::io;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::{Message, WebSocket};

/// How long a closing connection gets to take its last bytes (a close frame) and close its
/// side before it is dropped regardless.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Bytes read and thrown away per loop turn from a connection being drained.
const DRAIN_BYTES_PER_TURN_MAX: usize = 64 << 10;
/// A close frame's reason must fit in a control frame: 125 bytes less the 2-byte code.
const CLOSE_REASON_BYTES_MAX: usize = 123;

// Nearly every connection is `Open`: boxing that variant would cost an allocation and save nothing.
#[allow(clippy::large_enum_variant)]
pub enum Socket {
    /// Reading the upgrade request.
    Handshaking {
        stream: Transport,
        request: RequestReader,
    },
    /// Writing the answer to the upgrade request; then WebSocket starts on `upgrade`, the bytes
    /// the client sent after its request, or (a refusal, `None`) the connection closes.
    Answering {
        stream: Transport,
        answer: Vec<u8>,
        written: usize,
        upgrade: Option<Vec<u8>>,
    },
    Open(WebSocket<Metered>),
    /// Our last bytes are out and our side is shut down; what the peer still sends is read and
    /// thrown away until it closes too. Closing with unread bytes would send a reset, and a
    /// reset can destroy our last bytes (the close frame) before the peer reads them.
    Draining(Transport),
    /// Transient, while the socket changes state.
    Moving,
}

impl Socket {
    pub fn stream(&mut self) -> Option<&mut TcpStream> {
        match self {
            Socket::Handshaking { stream, .. } | Socket::Answering { stream, .. } | Socket::Draining(stream) => Some(stream.tcp()),
            Socket::Open(ws) => Some(ws.get_mut().stream.tcp()),
            Socket::Moving => None,
        }
    }

    /// Writes what is left of the answer to the upgrade request; `Ok(true)` once all of it is
    /// out, `Ok(false)` when the socket is full (it is registered for writability from the
    /// start, so the rest goes on the writable event).
    pub fn write_answer(&mut self) -> io::Result<bool> {
        use std::io::Write;
        let Socket::Answering { stream, answer, written, .. } = self else { return Ok(false) };
        while *written < answer.len() {
            match stream.write(&answer[*written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Under TLS, the last records may still wait for the socket.
        match stream.flush() {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The stream under an open WebSocket, counting the bytes it has taken: the kernel's, or under
/// TLS the plaintext rustls has taken (at most one record more than the kernel has).
pub struct Metered {
    pub stream: Transport,
    pub written: u64,
    /// A plain TCP read came back short: the socket was empty then, so the next read would only
    /// say `WouldBlock`; it says so without the system call. Data arriving later raises a new
    /// (edge-triggered) readable event, and every read turn starts with `may_have_more`. nginx
    /// reads sockets the same way (`ngx_unix_recv`).
    emptied: bool,
    /// Bytes one socket read brought beyond what the WebSocket asked for (it asks for a small
    /// buffer's worth: see `READ_SCRATCH_BYTES`), handed out before the socket is read again.
    unread: ReadAhead,
    /// Bytes for the socket it has not taken yet, in order: text frames written straight here
    /// (`Connection::write_text`: a frame is built once, with no copy through tungstenite's
    /// buffer) and whatever tungstenite writes (its control frames). Everything tungstenite
    /// writes is taken whole, so no frame of its can be cut by one of ours. `out_from` is where
    /// what the socket has not taken begins.
    out: Vec<u8>,
    out_from: usize,
}

/// The header of a whole unmasked (server to client) text frame; tungstenite formats it.
const TEXT_FRAME: FrameHeader = FrameHeader { is_final: true, rsv1: false, rsv2: false, rsv3: false, opcode: OpCode::Data(Data::Text), mask: None };

/// Queued bytes past which a frame written straight is followed by a write to the socket at
/// once, instead of at the end of the loop's turn (tungstenite's own `write_buffer_size`).
const EAGER_WRITE_BYTES: usize = 32 << 10;
/// An emptied outgoing buffer keeps at most this much memory for the next frames.
const OUT_KEPT_BYTES_MAX: usize = 64 << 10;

/// Socket reads go into one scratch buffer of this size shared by every connection, so that a
/// read takes many frames at once while each idle connection keeps only the WebSocket's small
/// read buffer (`read_buffer_size`); what a read brings beyond that waits in `Metered::unread`.
const READ_SCRATCH_BYTES: usize = 64 << 10;

thread_local! {
    static READ_SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; READ_SCRATCH_BYTES].into_boxed_slice());
}

impl Metered {
    pub fn new(stream: Transport) -> Metered {
        Metered { stream, written: 0, emptied: false, unread: ReadAhead::default(), out: Vec::new(), out_from: 0 }
    }

    /// Queues one whole unmasked (server to client) text frame carrying `payload`: its bytes.
    fn push_text_frame(&mut self, payload: &[u8]) -> u64 {
        if self.out_from > 0 && self.out_from >= self.out.len() / 2 {
            // Most of what is queued went out: move the rest to the front, once in a while.
            self.out.drain(..self.out_from);
            self.out_from = 0;
        }
        let start = self.out.len();
        self.out.reserve(payload.len() + 10);
        TEXT_FRAME.format(payload.len() as u64, &mut self.out).expect("writing into a Vec cannot fail");
        self.out.extend_from_slice(payload);
        let frame_bytes = (self.out.len() - start) as u64;
        if self.out.len() - self.out_from >= EAGER_WRITE_BYTES {
            // A full socket or a broken one shows again at the turn's flush.
            let _ = self.write_queued();
        }
        frame_bytes
    }

    /// Writes what is queued until all of it is out or the socket takes no more (Ok either
    /// way: `queued_bytes` tells which).
    fn write_queued(&mut self) -> io::Result<()> {
        while self.out_from < self.out.len() {
            match io::Write::write(&mut self.stream, &self.out[self.out_from..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out_from += n;
                    self.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.out_from = 0;
        if self.out.capacity() > OUT_KEPT_BYTES_MAX {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        Ok(())
    }

    fn queued_bytes(&self) -> usize {
        self.out.len() - self.out_from
    }

    /// A read turn starts: read from the socket again.
    pub fn may_have_more(&mut self) {
        self.emptied = false;
    }
}

impl io::Read for Metered {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.unread.is_empty() {
            return Ok(self.unread.take(buf));
        }
        if self.emptied {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let Transport::Plain(tcp) = &mut self.stream else {
            // rustls reads the socket into buffers of its own.
            return self.stream.read(buf);
        };
        READ_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            // What the WebSocket asked for, and as much more as the node-wide budget allows.
            let asked = buf.len().min(scratch.len());
            let wanted = asked + read_ahead::room().min(scratch.len() - asked);
            let n = tcp.read(&mut scratch[..wanted])?;
            self.emptied = n > 0 && n < wanted;
            let given = n.min(asked);
            buf[..given].copy_from_slice(&scratch[..given]);
            self.unread.keep(&scratch[given..n]);
            Ok(given)
        })
    }
}

impl io::Write for Metered {
    /// tungstenite's writes go to the socket when nothing is queued (its answer to a close must
    /// be out when it says the connection is done); the rest queues behind the frames written
    /// straight (see `out`). Always whole: a frame of tungstenite's is never cut by one of ours.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let nothing_queued = self.queued_bytes() == 0;
        self.out.extend_from_slice(buf);
        if nothing_queued {
            self.write_queued()?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.write_queued()?;
        if self.queued_bytes() > 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.stream.flush()
    }
}

pub struct Connection {
    pub id: ConnId,
    pub socket: Socket,
    pub accepted_at: Instant,
    /// The client's address, as accepted.
    pub peer: Option<std::net::SocketAddr>,
    /// The bearer token of its handshake, handed to the core once it is open.
    pub bearer: Option<String>,
    /// When closing began: the core has forgotten this connection; its queued bytes (ending
    /// with a close frame) are flushed, then it drains, and by `CLOSE_LINGER` after this it
    /// is dropped in any case.
    pub closing_since: Option<Instant>,
    pub wants_writable: bool,
    /// Being dropped (it failed, or was cut off): nothing more is written to it or logged.
    pub doomed: bool,
    /// The core was told this connection is congested: it is pushed no messages and its
    /// frames are not read until its outbox drains.
    pub congested: bool,
    /// While congested: since when none of its outbox has drained.
    pub stalled_since: Option<Instant>,
    /// Its outbox as counted in the server's node-wide total.
    pub counted: u64,
    /// Bytes of the frames handed to the WebSocket (after the last complete flush, the bytes
    /// written to the socket): the outbox is this less what the socket has taken.
    queued: u64,
    /// The socket's written count when drainage was last looked at.
    written_seen: u64,
    /// When the client last sent anything (bytes of any frame, a pong included).
    last_heard: Instant,
    /// When the client was pinged for being silent, if it has stayed silent since.
    pinged_at: Option<Instant>,
}

/// Where a connection stands on silence.
#[derive(Debug, PartialEq, Eq)]
pub enum Idle {
    /// Heard from recently enough, or already pinged and within its time to answer.
    Heard,
    /// Silent for the ping interval: ping it now.
    Ping,
    /// Pinged and silent since for the timeout: close it.
    Silent,
}

impl Connection {
    pub fn new(id: ConnId, socket: Socket, now: Instant) -> Connection {
        Connection {
            id,
            socket,
            accepted_at: now,
            peer: None,
            bearer: None,
            closing_since: None,
            wants_writable: true,
            doomed: false,
            congested: false,
            stalled_since: None,
            counted: 0,
            queued: 0,
            written_seen: 0,
            last_heard: now,
            pinged_at: None,
        }
    }

    /// Queues a text frame; the bytes count in the outbox until the socket takes them. A frame
    /// that would take the outbox past `max_write_buffer_size` (connection_outbox_bytes_max)
    /// is refused with `WriteBufferFull`, as tungstenite would.
    pub fn write_text(&mut self, text: String) -> Result<(), tungstenite::Error> {
        let outbox = self.outbox();
        let Socket::Open(ws) = &mut self.socket else { return Ok(()) };
        if !ws.can_write() {
            return Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::SendAfterClosing));
        }
        if outbox as usize + text.len() + 10 > ws.get_config().max_write_buffer_size {
            return Err(tungstenite::Error::WriteBufferFull(Box::new(Message::text(text))));
        }
        self.queued += ws.get_mut().push_text_frame(text.as_bytes());
        Ok(())
    }

    fn write_frame(&mut self, frame: Frame) -> Result<(), tungstenite::Error> {
        let Socket::Open(ws) = &mut self.socket else { return Ok(()) };
        let bytes = frame.len() as u64;
        let result = ws.write(Message::Frame(frame));
        // Queued unless refused before buffering (a full buffer, a closed socket).
        if matches!(&result, Ok(()) | Err(tungstenite::Error::Io(_))) {
            self.queued += bytes;
        }
        result
    }

    /// Bytes queued to the client that the socket has not taken yet. Frames tungstenite adds
    /// on its own (pongs, the close reply) are not counted until the next complete flush.
    pub fn outbox(&self) -> u64 {
        match &self.socket {
            Socket::Open(ws) => self.queued.saturating_sub(ws.get_ref().written),
            _ => 0,
        }
    }

    /// A flush wrote everything out: the outbox is empty.
    pub fn flushed(&mut self) {
        if let Socket::Open(ws) = &self.socket {
            self.queued = ws.get_ref().written;
        }
    }

    /// Whether the socket has taken bytes since the last call.
    pub fn drained(&mut self) -> bool {
        let Socket::Open(ws) = &self.socket else { return false };
        let written = ws.get_ref().written;
        let drained = written > self.written_seen;
        self.written_seen = written;
        drained
    }

    /// The client sent something (any bytes, a pong included).
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.pinged_at = None;
    }

    /// Where an open connection stands on silence at `now`; `Ping` counts as the ping sent.
    /// Handshakes and closings have deadlines of their own.
    pub fn idle(&mut self, now: Instant, ping_after: Duration, timeout: Duration) -> Idle {
        if !matches!(self.socket, Socket::Open(_)) || self.closing_since.is_some() {
            return Idle::Heard;
        }
        match self.pinged_at {
            Some(at) if now.saturating_duration_since(at) >= timeout => Idle::Silent,
            None if now.saturating_duration_since(self.last_heard) >= ping_after => {
                self.pinged_at = Some(now);
                Idle::Ping
            }
            _ => Idle::Heard,
        }
    }

    /// Writes what is queued as far as the socket takes it now, for a connection about to go.
    pub fn write_queued_once(&mut self) {
        if let Socket::Open(ws) = &mut self.socket {
            let _ = io::Write::flush(ws.get_mut());
        }
    }

    /// Queues a WebSocket ping. `Err` when the connection is broken.
    pub fn ping(&mut self) -> Result<(), ()> {
        match self.write_frame(Frame::ping(Vec::new())) {
            // A full outbox holds the ping back; the idle timeout runs all the same.
            Ok(()) | Err(tungstenite::Error::WriteBufferFull(_)) => Ok(()),
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(_) => Err(()),
        }
    }
}

/// What reading a connection came to.
pub enum ReadEnd {
    /// Nothing more to read now.
    Blocked,
    /// The turn's share is used up; read again next turn.
    MoreToRead,
    /// The peer broke the protocol: answer with this close frame, then close.
    Fail(CloseCode, String),
    /// The connection is gone or finished: drop it.
    Gone,
}

/// Sorts a read error: the peer left, or broke the protocol and gets a close frame saying how.
pub fn read_failure(error: tungstenite::Error) -> ReadEnd {
    use tungstenite::error::ProtocolError;
    match error {
        // EOF without a close frame: nobody is left to tell.
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ReadEnd::Gone,
        tungstenite::Error::Protocol(e) => ReadEnd::Fail(CloseCode::Protocol, close_reason(&e.to_string())),
        tungstenite::Error::Utf8(_) => ReadEnd::Fail(CloseCode::Invalid, "invalid UTF-8 in a text frame or close reason".into()),
        _ => ReadEnd::Gone,
    }
}

/// Cuts `text` to fit a close frame, on a character boundary.
fn close_reason(text: &str) -> String {
    let mut end = text.len().min(CLOSE_REASON_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Reads and throws away what a closing peer still sends (under TLS, the records unread).
pub fn drain(stream: &mut Transport) -> ReadEnd {
    use std::io::Read;
    let mut scratch = [0u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_BYTES_PER_TURN_MAX {
        match stream.tcp().read(&mut scratch) {
            Ok(0) => return ReadEnd::Gone,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return ReadEnd::Gone,
        }
    }
    ReadEnd::MoreToRead
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An open server-side connection over loopback with `config`, and the client's socket.
    fn open_pair(config: tungstenite::protocol::WebSocketConfig) -> (Connection, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        let ws = WebSocket::from_raw_socket(Metered::new(Transport::Plain(TcpStream::from_std(stream))), tungstenite::protocol::Role::Server, Some(config));
        (Connection::new(ConnId(1), Socket::Open(ws), Instant::now()), client)
    }

    /// Flushes until everything queued is on the socket (a reader thread takes it).
    fn flush_all(conn: &mut Connection) {
        let Socket::Open(ws) = &mut conn.socket else { unreachable!() };
        loop {
            match ws.flush() {
                Ok(()) => return,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn silence_leads_to_one_ping_then_to_closing_and_any_bytes_reset_it() {
        let (listener, addr) = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap();
            (l, a)
        };
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (stream, _) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        let ws = WebSocket::from_raw_socket(Metered::new(Transport::Plain(TcpStream::from_std(stream))), tungstenite::protocol::Role::Server, None);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut conn = Connection::new(ConnId(1), Socket::Open(ws), t0);
        let idle = |conn: &mut Connection, at: u64| conn.idle(t0 + ms(at), ms(100), ms(50));
        assert_eq!(idle(&mut conn, 99), Idle::Heard);
        assert_eq!(idle(&mut conn, 100), Idle::Ping);
        assert_eq!(idle(&mut conn, 120), Idle::Heard, "one ping per silence");
        conn.heard(t0 + ms(140));
        assert_eq!(idle(&mut conn, 200), Idle::Heard, "the answer resets the silence");
        assert_eq!(idle(&mut conn, 240), Idle::Ping);
        assert_eq!(idle(&mut conn, 289), Idle::Heard);
        assert_eq!(idle(&mut conn, 290), Idle::Silent);
        conn.closing_since = Some(t0 + ms(290));
        assert_eq!(idle(&mut conn, 400), Idle::Heard, "closing has its own deadline");
    }

    #[test]
    fn the_outbox_counts_every_byte_of_every_frame_until_the_socket_takes_it() {
        use std::io::Read;
        let (mut conn, mut client) = open_pair(tungstenite::protocol::WebSocketConfig::default().write_buffer_size(1 << 20));
        // Every length class of the frame header: 7-bit, 16-bit and 64-bit payload lengths.
        let sizes = [0usize, 125, 126, 65_535, 65_536, 200_000];
        for n in sizes {
            conn.write_text("x".repeat(n)).unwrap();
        }
        conn.ping().unwrap();
        let expected: u64 = sizes
            .iter()
            .map(|&n| {
                (n + if n < 126 {
                    2
                } else if n <= 65_535 {
                    4
                } else {
                    10
                }) as u64
            })
            .sum::<u64>()
            + 2;
        // Past 32 KiB queued, frames go to the socket at once: the outbox is what it has not taken.
        let Socket::Open(ws) = &conn.socket else { unreachable!() };
        let taken = ws.get_ref().written;
        assert!(taken > 0, "written eagerly");
        assert_eq!(conn.outbox(), expected - taken, "queued less what the socket took");
        assert!(conn.drained());
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 65_536];
            while (all.len() as u64) < expected {
                let n = client.read(&mut buf).unwrap();
                all.extend_from_slice(&buf[..n]);
            }
            all.len() as u64
        });
        flush_all(&mut conn);
        assert_eq!(conn.outbox(), 0, "the count matches the bytes on the wire");
        assert_eq!(reader.join().unwrap(), expected);
    }

    #[test]
    fn frames_written_straight_and_tungstenite_s_own_reach_a_client_whole_and_in_order() {
        let (mut conn, client) = open_pair(tungstenite::protocol::WebSocketConfig::default().write_buffer_size(32 << 10).max_write_buffer_size(100_000));
        let long = "b".repeat(70_000);
        conn.write_text("first".into()).unwrap();
        conn.ping().unwrap();
        conn.write_text(long.clone()).unwrap();
        conn.write_text("c".repeat(300)).unwrap();
        assert!(matches!(conn.write_text("d".repeat(100_000)), Err(tungstenite::Error::WriteBufferFull(_))), "over max_write_buffer_size");
        let reader = std::thread::spawn(move || {
            let mut ws = WebSocket::from_raw_socket(client, tungstenite::protocol::Role::Client, None);
            (0..4).map(|_| ws.read().unwrap()).collect::<Vec<_>>()
        });
        flush_all(&mut conn);
        let got = reader.join().unwrap();
        let expected = [Message::text("first"), Message::text(long), Message::text("c".repeat(300)), Message::Ping(Vec::new().into())];
        // The ping tungstenite wrote comes after the frames written straight before its flush.
        let summary = |ms: &[Message]| {
            ms.iter()
                .map(|m| format!("{}:{}:{}", if m.is_ping() { "ping" } else { "text" }, m.len(), m.to_text().map_or(' ', |t| t.chars().next().unwrap_or(' '))))
                .collect::<Vec<_>>()
        };
        assert_eq!(summary(&got), summary(&expected));
        assert!(got == expected, "payloads arrive intact");
    }

    #[test]
    fn one_socket_read_serves_many_small_reads_and_an_emptied_socket_is_not_read_again_until_told() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        let mut metered = Metered::new(Transport::Plain(TcpStream::from_std(stream)));
        let sent: Vec<u8> = (0..5_000u32).map(|i| i as u8).collect();
        client.write_all(&sent).unwrap();
        let read_some = |metered: &mut Metered| -> Option<Vec<u8>> {
            let mut buf = [0u8; 1024];
            match metered.read(&mut buf) {
                Ok(n) => Some(buf[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => panic!("{e}"),
            }
        };
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < sent.len() {
            assert!(Instant::now() < deadline, "{} of {} bytes read back", got.len(), sent.len());
            match read_some(&mut metered) {
                Some(bytes) => got.extend(bytes),
                None => {
                    // Not all of it had arrived: a new readable event would say so.
                    std::thread::sleep(Duration::from_millis(5));
                    metered.may_have_more();
                }
            }
        }
        assert_eq!(got, sent, "every byte, in order, 1 KiB at a time");
        assert_eq!(metered.unread.capacity(), 0, "nothing held once all is handed out");
        assert_eq!(read_ahead::kept_total(), 0);
        assert!(metered.emptied, "the last socket read came back short");
        client.write_all(b"more").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(read_some(&mut metered), None, "an emptied socket is not read until a new turn");
        metered.may_have_more();
        assert_eq!(read_some(&mut metered).as_deref(), Some(&b"more"[..]));
    }

    #[test]
    fn bytes_read_ahead_stay_within_the_node_wide_budget() {
        use std::io::{Read, Write};
        read_ahead::set_budget(3000);
        let (mut conn, mut client) = open_pair(tungstenite::protocol::WebSocketConfig::default());
        let Socket::Open(ws) = &mut conn.socket else { unreachable!() };
        let metered = ws.get_mut();
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).unwrap();
        let mut got = Vec::new();
        let mut kept_most = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < sent.len() {
            assert!(Instant::now() < deadline, "{} of {} bytes read back", got.len(), sent.len());
            let mut buf = [0u8; 1024];
            match metered.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    metered.may_have_more();
                }
                Err(e) => panic!("{e}"),
            }
            kept_most = kept_most.max(read_ahead::kept_total());
        }
        assert_eq!(got, sent, "every byte, in order");
        assert!(kept_most > 0, "it did read ahead");
        assert!(kept_most <= 3000, "{kept_most} bytes kept over a budget of 3000");
        read_ahead::set_budget(usize::MAX);
    }

    #[test]
    fn close_reasons_fit_a_control_frame_on_a_character_boundary() {
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= CLOSE_REASON_BYTES_MAX && cut.len() >= CLOSE_REASON_BYTES_MAX - 1);
        assert_eq!(close_reason("short"), "short");
    }
}
