//! Accepting connections, including when the process runs out of file descriptors.
//!
//! At the open-file limit accept(2) fails with EMFILE before it even looks at the queue, so
//! retrying at once never ends: the loop would spin, log every failure and serve nobody.
//! Instead the acceptor refuses what is queued (the spare descriptor makes room to accept each
//! one, answer 503 and close it, so clients do not hang in the backlog), then leaves the
//! listener alone for `ACCEPT_PAUSE` and tries again, sooner when a connection closes and gives
//! a descriptor back.

use crate::handshake;
use crate::log::Throttle;
use mio::net::{TcpListener, TcpStream};
use std::fs::File;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// How long accepting is put off after accept(2) failed for want of resources.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most one line per this interval about failing accepts or refused clients.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Connections accepted per loop turn, so a connection storm cannot starve open connections.
const ACCEPTS_PER_TURN_MAX: usize = 256;
/// Queued connections refused per failed accept, for the same reason.
const REFUSALS_PER_TURN_MAX: usize = 1_024;

/// Answers a connection that will not be served with 503 and closes it (when `stream` is
/// dropped). What the client has sent is read first, so that closing sends a FIN and not a
/// reset, which could destroy the answer before the client reads it.
pub fn refuse_busy(stream: &mut TcpStream) {
    let mut scratch = [0u8; 4096];
    let _ = stream.read(&mut scratch);
    let _ = stream.write(&handshake::refusal(503, &[("Retry-After", "1")], "ferry cannot take more connections now; retry later"));
}

/// Answers a connection its address may not open now (`connections_per_ip_max`,
/// `connection_rate_per_ip`) with 429 and when to retry, and closes it (as `refuse_busy`).
pub fn refuse_address(stream: &mut TcpStream, refusal: &ferry_core::admission::Refusal) {
    use ferry_core::admission::Refusal;
    let (retry_after_s, why) = match refusal {
        Refusal::TooMany { open } => (1, format!("this address has {open} connections open (connections_per_ip_max)")),
        Refusal::TooFast { retry_after_ms } => (retry_after_ms.div_ceil(1_000), "this address opens connections faster than connection_rate_per_ip".to_string()),
    };
    let mut scratch = [0u8; 4096];
    let _ = stream.read(&mut scratch);
    let _ = stream.write(&handshake::refusal(429, &[("Retry-After", &retry_after_s.to_string())], &why));
}

pub struct Acceptor {
    listener: TcpListener,
    /// Held so that running out of descriptors still lets us accept (and refuse) connections.
    spare_fd: Option<File>,
    /// Set while accepting is put off (listener events are ignored until then), or to `now`
    /// when more connections may be queued than one turn accepts.
    resume_at: Option<Instant>,
    throttle: Throttle,
    /// Clients refused since the last line that reported them.
    refused: u64,
    /// A failure line went out and no line has said yet that accepting works again.
    failing_logged: bool,
}

impl Acceptor {
    pub fn new(listener: TcpListener) -> Acceptor {
        Acceptor { listener, spare_fd: File::open("/dev/null").ok(), resume_at: None, throttle: Throttle::new(REFUSAL_LOG_INTERVAL), refused: 0, failing_logged: false }
    }

    /// When `accept_queued` is to run again without waiting for a listener event.
    pub fn resume_at(&self) -> Option<Instant> {
        self.resume_at
    }

    /// A connection closed and gave its descriptor back: if accepting is paused, try now.
    pub fn descriptor_freed(&mut self, now: Instant) {
        if let Some(at) = &mut self.resume_at {
            *at = (*at).min(now);
        }
    }

    /// Accepts queued connections and hands each to `take`; `open` (connections held before
    /// this call) is for the log. Does nothing while accepting is paused.
    pub fn accept_queued(&mut self, now: Instant, open: usize, mut take: impl FnMut(TcpStream)) {
        if self.resume_at.is_some_and(|at| now < at) {
            return;
        }
        self.resume_at = None;
        if self.spare_fd.is_none() {
            self.spare_fd = File::open("/dev/null").ok();
        }
        let mut handed = 0;
        for _ in 0..ACCEPTS_PER_TURN_MAX {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    self.accepting_again();
                    take(stream);
                    handed += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // accept(2) reserves a descriptor before it looks at the queue: getting as far
                    // as an empty queue means descriptors are available again.
                    self.accepting_again();
                    return;
                }
                // The client gave up while queued; the next one may be fine.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted) => {}
                Err(e) => {
                    self.back_off(now, open + handed, &e);
                    return;
                }
            }
        }
        // The listener is edge-triggered and more may be queued: come back next turn.
        self.resume_at = Some(now);
    }

    fn back_off(&mut self, now: Instant, open: usize, error: &io::Error) {
        let out_of_descriptors = matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        if out_of_descriptors {
            self.refused += self.refuse_queued();
        }
        self.resume_at = Some(now + ACCEPT_PAUSE);
        let Some(held_back) = self.throttle.allow(now) else { return };
        let mut line = format!("accept failed: {error}; {open} connections open; retrying every {} ms", ACCEPT_PAUSE.as_millis());
        if out_of_descriptors {
            line += &format!(", answering queued clients 503 meanwhile ({} so far)", std::mem::take(&mut self.refused));
        }
        if held_back > 0 {
            line += &format!(" ({held_back} more failures in the last {} s not logged)", REFUSAL_LOG_INTERVAL.as_secs());
        }
        tracing::warn!("{line}");
        self.failing_logged = true;
    }

    /// Refuses queued connections one at a time through the spare descriptor; returns how many.
    fn refuse_queued(&mut self) -> u64 {
        let mut refused = 0;
        while refused < REFUSALS_PER_TURN_MAX as u64 {
            let Some(spare) = self.spare_fd.take() else { break };
            drop(spare);
            let more = match self.listener.accept() {
                // `stream` closes at the end of this arm, before the spare is taken back.
                Ok((mut stream, _)) => {
                    refuse_busy(&mut stream);
                    refused += 1;
                    true
                }
                Err(_) => false,
            };
            self.spare_fd = File::open("/dev/null").ok();
            if !more {
                break;
            }
        }
        refused
    }

    fn accepting_again(&mut self) {
        if self.failing_logged {
            self.failing_logged = false;
            tracing::info!("accepting connections again ({} queued clients answered 503 since the last report)", std::mem::take(&mut self.refused));
        }
    }
}
