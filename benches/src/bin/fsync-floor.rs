//! What the disk alone costs at a steady rate: pwrite + fdatasync of one 320-byte record at a
//! time into a file filled ahead (as ferry's segments are), paced like ferry-bench's `--rate`,
//! printing the percentiles of pwrite + fdatasync and the process's CPU time. The floor under ferry's server
//! CPU at a steady rate, which a broker that never fsyncs does not pay.
//!
//!   cargo run --release -p ferry-benches --bin fsync-floor -- [RATE] [COUNT] [PATH]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const RECORD_BYTES: usize = 320;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let count: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(25_000);
    let path = args.next().unwrap_or_else(|| std::env::temp_dir().join("ferry-fsync-floor").display().to_string());
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    // Filled ahead and made durable, so that each fdatasync overwrites allocated blocks.
    let zeros = vec![0u8; 1 << 20];
    let bytes = count * RECORD_BYTES as u64;
    let mut at = 0;
    while at < bytes {
        file.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    file.sync_all()?;
    let record = [b'x'; RECORD_BYTES];
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let cpu_before = cpu_time();
    let started = Instant::now();
    let mut took_us = Vec::with_capacity(count as usize);
    for i in 0..count {
        let began = Instant::now();
        file.write_all_at(&record, i * RECORD_BYTES as u64)?;
        file.sync_data()?;
        took_us.push(began.elapsed().as_micros() as u64);
        let due = started + interval * (i as u32 + 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let (user, system) = cpu_time() - cpu_before;
    let [p50, _, p99, p999, max] = ferry_benches::report::percentiles(took_us);
    println!(
        "{count} × pwrite({RECORD_BYTES} B) + fdatasync at {rate}/s: p50 {p50} µs, p99 {p99} µs, p99.9 {p999} µs, max {max} µs; CPU user {} ms, system {} ms",
        user.as_millis(),
        system.as_millis()
    );
    std::fs::remove_file(&path)
}

/// This process's user and system CPU time.
fn cpu_time() -> CpuTime {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid rusage.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let of = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    CpuTime(of(usage.ru_utime), of(usage.ru_stime))
}

#[derive(Clone, Copy)]
struct CpuTime(Duration, Duration);

impl std::ops::Sub for CpuTime {
    type Output = (Duration, Duration);
    fn sub(self, before: CpuTime) -> (Duration, Duration) {
        (self.0.saturating_sub(before.0), self.1.saturating_sub(before.1))
    }
}
