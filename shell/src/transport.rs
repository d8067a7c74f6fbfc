//! A client connection's byte stream: plain TCP, or TLS (rustls) over it, both non-blocking
//! and driven by the mio loop. TLS never blocks the loop: its handshake advances inside `read`
//! and `flush` as the socket allows, and `WouldBlock` means what it means for plain TCP.

use mio::net::TcpStream;
use rustls::ServerConnection;
use std::io::{self, Read, Write};
use std::sync::Arc;

/// Plaintext taken per `write` while TLS records are still waiting for the socket: what the
/// outbox count cannot see (taken by TLS, not yet by the kernel) stays within one TLS record.
const TLS_PLAINTEXT_PER_WRITE_MAX: usize = 16 << 10;
/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// What reading a TLS connection fails with when the client speaks plain HTTP instead.
#[derive(Debug)]
struct PlainOnTls;

impl std::fmt::Display for PlainOnTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("plain HTTP on a TLS port")
    }
}

impl std::error::Error for PlainOnTls {}

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    tls: ServerConnection,
    tcp: TcpStream,
    /// Nothing has been read yet: the first bytes tell TLS from plain HTTP.
    fresh: bool,
}

impl Transport {
    /// A newly accepted connection: TLS when the listener serves it.
    pub fn accepted(tcp: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) -> io::Result<Transport> {
        match tls {
            None => Ok(Transport::Plain(tcp)),
            Some(config) => {
                let tls = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
                Ok(Transport::Tls(Box::new(TlsStream { tls, tcp, fresh: true })))
            }
        }
    }

    /// The socket underneath, for registering and addresses.
    pub fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => &mut tls.tcp,
        }
    }

    /// The socket alone, for answering in plain text a client that does not speak TLS.
    pub fn into_plain(self) -> Transport {
        match self {
            Transport::Plain(tcp) => Transport::Plain(tcp),
            Transport::Tls(tls) => Transport::Plain(tls.tcp),
        }
    }

    /// Ends our side after our last bytes: a TLS close_notify (best effort: the socket took all
    /// else), then a TCP half-close.
    pub fn shutdown_write(&mut self) {
        if let Transport::Tls(tls) = self {
            tls.tls.send_close_notify();
            let _ = tls.send_pending();
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write);
    }
}

/// Whether a read failed because a plain HTTP client (ws://, http://) reached a TLS port.
pub fn is_plain_on_tls(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|e| e.is::<PlainOnTls>())
}

impl TlsStream {
    /// Writes TLS records to the socket until none are left (`WouldBlock` when it is full).
    fn send_pending(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A client's first bytes are a TLS handshake record, or it is refused as plain HTTP.
    fn check_first_byte(&mut self) -> io::Result<()> {
        let mut first = [0u8; 1];
        match self.tcp.peek(&mut first)? {
            0 => Ok(()),
            _ if first[0] == TLS_HANDSHAKE_RECORD => {
                self.fresh = false;
                Ok(())
            }
            _ if first[0].is_ascii_alphabetic() => Err(io::Error::new(io::ErrorKind::InvalidData, PlainOnTls)),
            _ => {
                // Neither: rustls answers with an alert.
                self.fresh = false;
                Ok(())
            }
        }
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fresh {
            self.check_first_byte()?;
        }
        loop {
            match self.tls.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            // No plaintext buffered: take more records from the socket.
            let eof = match self.tls.read_tls(&mut self.tcp) {
                Ok(n) => n == 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if let Err(e) = self.tls.process_new_packets() {
                // The alert saying why goes out if the socket takes it.
                let _ = self.send_pending();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages, key updates: best effort now, the rest on `flush`.
            match self.send_pending() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
            if eof {
                // rustls says whether the peer closed cleanly (Ok(0)) or cut the stream.
                return self.tls.reader().read(buf);
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_pending()?;
        let taken = self.tls.writer().write(&buf[..buf.len().min(TLS_PLAINTEXT_PER_WRITE_MAX)])?;
        if taken == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // Records that do not fit the socket now go on the next write or flush.
        match self.send_pending() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending()
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.read(buf),
            Transport::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.write(buf),
            Transport::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.flush(),
            Transport::Tls(tls) => tls.flush(),
        }
    }
}
