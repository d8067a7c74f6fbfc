//! Counters shared by the load threads, the progress line, and the final report.

use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Progress {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub done: AtomicBool,
}

impl Progress {
    /// Prints a progress line to stderr every second until `done`.
    pub fn spawn_printer(self: &Arc<Self>, expected_deliveries: u64) -> std::thread::JoinHandle<()> {
        let progress = self.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !progress.done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if started.elapsed().as_millis() % 1000 < 200 {
                    eprint!(
                        "\r{:>5.1}s published {} acked {} delivered {}/{}   ",
                        started.elapsed().as_secs_f64(),
                        progress.published.load(Ordering::Relaxed),
                        progress.acked.load(Ordering::Relaxed),
                        progress.delivered.load(Ordering::Relaxed),
                        expected_deliveries
                    );
                }
            }
            eprintln!();
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub system: String,
    pub messages: u64,
    pub size: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub acked_publishes_per_s: f64,
    pub deliveries_per_s: f64,
    /// Latency publish → delivery in microseconds: p50, p90, p99, p99.9, max.
    pub latency_us: [f64; 5],
    pub connections_per_s: f64,
    pub server_peak_rss_kib: Option<u64>,
    /// CPU time (user and system, all threads) the server spent during the run, with `--pid`.
    pub server_cpu_ms: Option<CpuMs>,
    pub notes: String,
}

pub fn percentiles(mut samples: Vec<u64>) -> [f64; 5] {
    if samples.is_empty() {
        return [0.0; 5];
    }
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize] as f64;
    [at(0.5), at(0.9), at(0.99), at(0.999), *samples.last().unwrap_or(&0) as f64]
}

/// Peak resident set of a process (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time a process has used so far (every thread), in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct CpuMs {
    pub user: u64,
    /// In the kernel on the process's behalf: system calls (socket reads and writes, fsync),
    /// page faults.
    pub system: u64,
}

impl CpuMs {
    pub fn since(self, before: CpuMs) -> CpuMs {
        CpuMs { user: self.user.saturating_sub(before.user), system: self.system.saturating_sub(before.system) }
    }
}

pub fn cpu_ms(pid: u32) -> Option<CpuMs> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (user_ticks, system_ticks) = (fields.get(11)?.parse::<u64>().ok()?, fields.get(12)?.parse::<u64>().ok()?);
    // SAFETY: sysconf only reads a system constant.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(CpuMs { user: user_ticks * 1_000 / per_s, system: system_ticks * 1_000 / per_s })
}

pub fn current_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Report {
    /// The figures of one load run: publishes counted from `started` to the last puback,
    /// deliveries to the last delivery.
    #[allow(clippy::too_many_arguments)]
    pub fn from_run(
        system: &str,
        args: &crate::Args,
        started: Instant,
        last_ack: Instant,
        last_delivery: Instant,
        latencies_us: Vec<u64>,
        connections_per_s: f64,
        notes: String,
    ) -> Report {
        let deliveries = latencies_us.len() as f64;
        Report {
            system: system.into(),
            messages: args.count,
            size: args.size,
            publishers: args.publishers,
            subscribers: args.subscribers,
            acked_publishes_per_s: args.count as f64 / last_ack.duration_since(started).as_secs_f64(),
            deliveries_per_s: deliveries / last_delivery.duration_since(started).as_secs_f64(),
            latency_us: percentiles(latencies_us),
            connections_per_s,
            server_peak_rss_kib: None,
            server_cpu_ms: None,
            notes,
        }
    }

    pub fn table(&self) -> String {
        let [p50, p90, p99, p999, max] = self.latency_us;
        let rss = self.server_peak_rss_kib.map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let cpu = self.server_cpu_ms.map_or("-".to_string(), |ms| format!("{} ms ({} ms of it in the kernel)", ms.user + ms.system, ms.system));
        let mut out = format!(
            "system      {}\nworkload    {} msgs x {} B, {} publisher(s), {} subscriber(s)\nacked pub/s {:.0}\ndeliveries/s {:.0}\nlatency us  p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}\nconnect/s   {:.0}\nserver RSS  {rss} (peak)\nserver CPU  {cpu}, during the run",
            self.system, self.messages, self.size, self.publishers, self.subscribers, self.acked_publishes_per_s, self.deliveries_per_s, p50, p90, p99, p999, max, self.connections_per_s
        );
        if !self.notes.is_empty() {
            out.push_str(&format!("\nnotes       {}", self.notes));
        }
        out
    }

    pub fn to_json(&self) -> String {
        let [p50, p90, p99, p999, max] = self.latency_us;
        json!({
            "system": self.system, "messages": self.messages, "size": self.size,
            "publishers": self.publishers, "subscribers": self.subscribers,
            "acked_publishes_per_s": self.acked_publishes_per_s, "deliveries_per_s": self.deliveries_per_s,
            "latency_us": {"p50": p50, "p90": p90, "p99": p99, "p99_9": p999, "max": max},
            "connections_per_s": self.connections_per_s, "server_peak_rss_kib": self.server_peak_rss_kib, "server_cpu_ms": self.server_cpu_ms.map(|ms| ms.user + ms.system),
            "server_cpu_system_ms": self.server_cpu_ms.map(|ms| ms.system), "notes": self.notes,
        })
        .to_string()
    }
}

/// Pads a body carrying the send time (ns since `epoch`) to exactly `size` bytes of JSON.
pub fn timed_body(epoch: Instant, size: usize) -> String {
    let t = epoch.elapsed().as_nanos() as u64;
    let head = format!("{{\"t\":{t},\"p\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut body = String::with_capacity(size);
    body.push_str(&head);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str("\"}");
    body
}

/// The send time stamped by `timed_body`, from a raw body.
pub fn body_time(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"t\":")? + 4;
    let end = start + text[start..].find(|c: char| !c.is_ascii_digit())?;
    text[start..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_size_and_time_asked_for() {
        let epoch = Instant::now();
        let body = timed_body(epoch, 256);
        assert_eq!(body.len(), 256);
        serde_json::from_str::<serde_json::Value>(&body).unwrap();
        assert!(body_time(body.as_bytes()).is_some());
        assert_eq!(percentiles(vec![5, 1, 3, 2, 4])[0], 3.0);
        assert_eq!(percentiles(vec![5, 1, 3, 2, 4])[4], 5.0);
    }
}
