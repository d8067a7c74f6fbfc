//! Minimal leveled logging to stderr: `<unix seconds.millis> <LEVEL> <message>`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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
