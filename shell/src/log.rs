//! Logging through the `tracing` crate: RFC 3339 timestamps, `text` or `json` lines on
//! stderr, levels per module (`log_level` takes `info` or directives such as
//! `info,ferry::peers=debug`). The writer is non-blocking: lines go to a background thread, and
//! if stderr stalls (a full pipe) lines are dropped rather than the event loop blocked.

use std::time::{Duration, Instant};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Starts logging; keep the guard for the process's life (dropping it flushes what is queued).
pub fn init(level: &str, format: &str) -> Result<WorkerGuard, String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("log_level '{level}': {e} (error, warn, info, debug, or directives like info,ferry::peers=debug)"))?;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(false);
    let installed = match format {
        "text" => builder.try_init(),
        "json" => builder.json().try_init(),
        other => return Err(format!("unknown log format '{other}' (text, json)")),
    };
    installed.map_err(|e| format!("logging: {e}"))?;
    Ok(guard)
}

/// Lets a message that can recur at any rate (one per failed accept, one per refused client)
/// through at most once per `interval`, and counts what it held back so the next line can say so.
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Throttle {
        Throttle { interval, last: None, held_back: 0 }
    }

    /// `Some(n)` when the message may be logged now, `n` being how many were held back since the
    /// last one that was; `None` when it is to be held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now.duration_since(last) < self.interval) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// The end of a throttled line: how many like it were held back (`what` names them), or nothing.
pub fn held_back_note(held_back: u64, what: &str) -> String {
    if held_back > 0 {
        format!(" ({held_back} more {what} since the last such line)")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_interval_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.allow(start), Some(0));
        for n in 1..=5 {
            assert_eq!(t.allow(start + Duration::from_secs(n)), None);
        }
        assert_eq!(t.allow(start + Duration::from_secs(10)), Some(5));
        assert_eq!(t.allow(start + Duration::from_secs(11)), None);
    }
}
