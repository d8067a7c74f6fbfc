//! What the disk alone costs at a steady rate: pwrite + fdatasync of one 320-byte record at a
//! time into a file filled ahead (as ferry's segments are), paced like ferry-bench's `--rate`,
//! printing the percentiles of pwrite + fdatasync and the process's CPU time. The floor under ferry's server
//! CPU at a steady rate, which a broker that never fsyncs does not pay.
//!
//!   cargo run --release -p ferry-benches --bin fsync-floor -- [RATE] [COUNT] [PATH] [MODE]
//!
//! MODE is how a record is made durable: `fdatasync` (ferry's way: pwrite, then fdatasync),
//! `dsync` (the file opened O_DSYNC: each pwrite returns durable), or `direct` (O_DIRECT and
//! O_DSYNC: the record's 4 KiB block written from an aligned buffer, bypassing the page
//! cache, as a log that rewrites its partial last block would). A RATE of 0 writes back to
//! back. sync_file_range is not a mode: it neither flushes the disk's write cache nor the
//! metadata, so it promises no durability on its own.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

const RECORD_BYTES: usize = 320;
const BLOCK_BYTES: usize = 4096;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Fdatasync,
    Dsync,
    Direct,
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let count: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(25_000);
    let path = args.next().unwrap_or_else(|| std::env::temp_dir().join("ferry-fsync-floor").display().to_string());
    let mode = match args.next().as_deref() {
        None | Some("fdatasync") => Mode::Fdatasync,
        Some("dsync") => Mode::Dsync,
        Some("direct") => Mode::Direct,
        Some(other) => return Err(std::io::Error::other(format!("mode {other}: expected fdatasync, dsync or direct"))),
    };
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
    drop(file);
    let flags = match mode {
        Mode::Fdatasync => 0,
        Mode::Dsync => libc::O_DSYNC,
        Mode::Direct => libc::O_DSYNC | libc::O_DIRECT,
    };
    let file = OpenOptions::new().read(true).write(true).custom_flags(flags).open(&path)?;
    let record = [b'x'; RECORD_BYTES];
    // O_DIRECT needs block-aligned memory, offsets and lengths.
    let mut block = AlignedBlock([0; BLOCK_BYTES]);
    let interval = (rate > 0).then(|| Duration::from_nanos(1_000_000_000 / rate));
    let cpu_before = cpu_time();
    let started = Instant::now();
    let mut took_us = Vec::with_capacity(count as usize);
    for i in 0..count {
        let began = Instant::now();
        let offset = i * RECORD_BYTES as u64;
        match mode {
            Mode::Fdatasync => {
                file.write_all_at(&record, offset)?;
                file.sync_data()?;
            }
            Mode::Dsync => file.write_all_at(&record, offset)?,
            Mode::Direct => {
                let block_start = offset - offset % BLOCK_BYTES as u64;
                let within = (offset - block_start) as usize;
                // The record and the rest of its block (earlier records, then zeros).
                block.0[within..(within + RECORD_BYTES).min(BLOCK_BYTES)].copy_from_slice(&record[..RECORD_BYTES.min(BLOCK_BYTES - within)]);
                file.write_all_at(&block.0, block_start)?;
                if within + RECORD_BYTES >= BLOCK_BYTES {
                    block.0 = [0; BLOCK_BYTES];
                    let spill = within + RECORD_BYTES - BLOCK_BYTES;
                    block.0[..spill].copy_from_slice(&record[RECORD_BYTES - spill..]);
                    if spill > 0 {
                        file.write_all_at(&block.0, block_start + BLOCK_BYTES as u64)?;
                    }
                }
            }
        }
        took_us.push(began.elapsed().as_micros() as u64);
        if let Some(interval) = interval {
            let due = started + interval * (i as u32 + 1);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    let elapsed = started.elapsed();
    let (user, system) = cpu_time() - cpu_before;
    let [p50, _, p99, p999, max] = ferry_benches::report::percentiles(took_us);
    let how = match mode {
        Mode::Fdatasync => "pwrite + fdatasync",
        Mode::Dsync => "pwrite, O_DSYNC",
        Mode::Direct => "pwrite of the 4 KiB block, O_DIRECT | O_DSYNC",
    };
    let per_s = count as f64 / elapsed.as_secs_f64();
    println!(
        "{count} × {RECORD_BYTES} B, {how}, at {rate}/s (0: back to back): {per_s:.0} records/s; p50 {p50} µs, p99 {p99} µs, p99.9 {p999} µs, max {max} µs; CPU user {} ms, system {} ms",
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

#[repr(C, align(4096))]
struct AlignedBlock([u8; BLOCK_BYTES]);

#[derive(Clone, Copy)]
struct CpuTime(Duration, Duration);

impl std::ops::Sub for CpuTime {
    type Output = (Duration, Duration);
    fn sub(self, before: CpuTime) -> (Duration, Duration) {
        (self.0.saturating_sub(before.0), self.1.saturating_sub(before.1))
    }
}
