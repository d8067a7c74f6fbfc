//! Minimal leveled logging to stderr: `<unix seconds.millis> <LEVEL> <message>`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static LEVEL: AtomicU8 = AtomicU8::new(2);

/// 0 error, 1 warn, 2 info, 3 debug.
pub fn set_level(name: &str) -> Result<(), String> {
    let level = match name {
        "error" => 0,
        "warn" => 1,
        "info" => 2,
        "debug" => 3,
        other => return Err(format!("unknown log level '{other}' (error, warn, info, debug)")),
    };
    LEVEL.store(level, Ordering::Relaxed);
    Ok(())
}

fn emit(level: u8, tag: &str, message: &str) {
    if level > LEVEL.load(Ordering::Relaxed) {
        return;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    eprintln!("{}.{:03} {tag} {message}", now.as_secs(), now.subsec_millis());
}

pub fn error(message: &str) {
    emit(0, "ERROR", message);
}
pub fn warn(message: &str) {
    emit(1, "WARN", message);
}
pub fn info(message: &str) {
    emit(2, "INFO", message);
}
pub fn debug(message: &str) {
    emit(3, "DEBUG", message);
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
