//! Ack tracking at scale (issue 14): one group holding 1 M and 10 M messages in flight.
//! Reported: the heap bytes each in-flight message costs (live bytes counted by this bench's
//! allocator, over the messages put in flight), and the time of the operations at that size:
//! a fresh message dispatched and the oldest one acked (in flight stays at N), and an ack
//! deadline expiring with the message dispatched again.
//!
//!     cargo bench -p ferry-benches --bench inflight
//!
//! Also the node's nack-delay timers at 1 M and 10 M armed (delays of up to a minute): bytes
//! per timer and the time to arm one and expire the earliest, in the timing wheel and, for
//! comparison, in a sorted set (what the node used before).
//!
//! Setting up 10 M in flight takes about 1.5 GiB and a few seconds; `-- "in flight 1M"` times
//! only the smaller size (both are set up, for their bytes per message).

use criterion::{criterion_group, criterion_main, Criterion};
use ferry_core::group::{Candidate, Group, GroupTerms};
use ferry_core::timer_wheel::TimerWheel;
use ferry_core::ConnId;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

/// Live heap bytes of the whole process.
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; only a counter moves.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ACK_TIMEOUT_NS: u64 = 30_000_000_000;
const CONN: ConnId = ConnId(1);
const BODY_BYTES: u32 = 256;

/// A group with `n` messages in flight (ids 1..=n, no keys), the clock at `n` ns.
struct Loaded {
    group: Group,
    now_ns: u64,
    /// The oldest id in flight, and the next fresh one.
    oldest: u64,
    next: u64,
}

impl Loaded {
    fn new(n: u64) -> Loaded {
        let mut loaded = Loaded { group: Group::new("g".into(), GroupTerms::default(), 1, ACK_TIMEOUT_NS, 16), now_ns: 0, oldest: 1, next: 1 };
        for _ in 0..n {
            loaded.dispatch_fresh();
        }
        loaded
    }

    fn dispatch_fresh(&mut self) {
        let id = self.next;
        self.next += 1;
        self.now_ns += 1;
        self.group.admit_fresh(id, true, None, 0, None);
        black_box(self.group.dispatch(id, CONN, self.now_ns + ACK_TIMEOUT_NS, BODY_BYTES));
    }

    /// A fresh message in flight, the oldest acked.
    fn dispatch_and_ack(&mut self) {
        self.dispatch_fresh();
        black_box(self.group.ack(self.oldest));
        self.oldest += 1;
    }

    /// The earliest ack deadline passes: the message is ready again and dispatched again.
    fn expire_and_redispatch(&mut self) {
        let due_ns = self.group.ack_deadlines.next_ns().expect("a deadline");
        self.now_ns = self.now_ns.max(due_ns);
        let (deadline_ns, id) = self.group.ack_deadlines.take_due(self.now_ns).expect("due");
        if self.group.expire(id, deadline_ns).is_none() {
            return; // acked meanwhile: nothing to redeliver
        }
        let Candidate::Ready { id, .. } = self.group.next_candidate(0, usize::MAX) else { panic!("the expired message is ready") };
        black_box(self.group.dispatch(id, CONN, self.now_ns + ACK_TIMEOUT_NS, BODY_BYTES));
    }
}

fn in_flight(c: &mut Criterion) {
    for (name, n) in [("1M", 1_000_000u64), ("10M", 10_000_000)] {
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let started = Instant::now();
        let mut loaded = Loaded::new(n);
        let bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
        let counted_by_group = loaded.group.state_bytes() as f64 / n as f64;
        println!(
            "in flight {name}: {:.1} bytes per message ({bytes} bytes for {n}; the group's own count {counted_by_group:.1}), set up in {:.1} s",
            bytes as f64 / n as f64,
            started.elapsed().as_secs_f64()
        );
        let mut group = c.benchmark_group(format!("in flight {name}"));
        group.bench_function("dispatch a fresh message + ack the oldest", |b| b.iter(|| loaded.dispatch_and_ack()));
        group.bench_function("ack deadline expires + dispatch again", |b| b.iter(|| loaded.expire_and_redispatch()));
        group.finish();
        assert_eq!(loaded.group.in_flight_count() as u64, n, "in flight stays at {n}");
        spill_and_load(name, n, &mut loaded);
        // Last (it leaves nothing in flight): the member holding all of them leaves.
        let started = Instant::now();
        black_box(loaded.group.release_conn(CONN));
        println!("in flight {name}: the member holding them all leaves: {:.1} ms to make them ready for the others", started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(loaded.group.in_flight_count(), 0);
    }
}

/// Past `group_state_bytes_max` the node spills every chunk that can go: what stays in memory
/// per message, and the time to spill (encode) and load (decode, put back) a chunk, its write
/// and read left out (a `Vec` stands for the file).
fn spill_and_load(name: &str, n: u64, loaded: &mut Loaded) {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut file: Vec<(u64, Vec<u8>)> = Vec::new();
    while let Some(data) = loaded.group.spill_one(file.len() as u64, loaded.now_ns) {
        loaded.group.spill_written(file.len() as u64);
        file.push((file.len() as u64, data));
    }
    let spill_ns = started.elapsed().as_nanos() as f64 / file.len() as f64;
    let file_bytes: usize = file.iter().map(|(_, data)| data.capacity()).sum();
    let freed = before - (LIVE_BYTES.load(Ordering::Relaxed) - file_bytes as i64);
    let resident = loaded.group.state_bytes() as f64 / n as f64;
    let started = Instant::now();
    let chunks = file.len();
    for (serial, data) in file.drain(..) {
        black_box(loaded.group.load_spill(serial, &data, loaded.now_ns, None).expect("read back"));
    }
    let load_ns = started.elapsed().as_nanos() as f64 / chunks as f64;
    println!(
        "in flight {name}, spilled: {chunks} chunks out, {resident:.1} bytes per message left in memory (the group's count; {:.1} freed by the allocator's), {:.1} bytes per message on disk; spill {:.0} us a chunk, load {:.0} us a chunk",
        freed as f64 / n as f64,
        file_bytes as f64 / n as f64,
        spill_ns / 1e3,
        load_ns / 1e3
    );
    assert_eq!(loaded.group.in_flight_count() as u64, n, "in flight stays at {n}");
}

/// What a nack-delay timer names: (topic, group, id).
type Delayed = (u32, u32, u64);

/// Delays of up to a minute, spread by a fixed sequence.
fn delay_ns(n: u64) -> u64 {
    n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407) % 60_000_000_000
}

trait Timers {
    fn arm(&mut self, due_ns: u64, what: Delayed);
    /// Moves the clock to the earliest timer and takes it.
    fn expire_earliest(&mut self, now_ns: &mut u64);
}

impl Timers for TimerWheel<Delayed> {
    fn arm(&mut self, due_ns: u64, what: Delayed) {
        self.insert(due_ns, what);
    }
    fn expire_earliest(&mut self, now_ns: &mut u64) {
        *now_ns = (*now_ns).max(self.next_due().expect("armed"));
        black_box(self.pop_due(*now_ns).expect("due"));
    }
}

impl Timers for BTreeSet<(u64, Delayed)> {
    fn arm(&mut self, due_ns: u64, what: Delayed) {
        self.insert((due_ns, what));
    }
    fn expire_earliest(&mut self, now_ns: &mut u64) {
        let (due, what) = self.pop_first().expect("armed");
        *now_ns = (*now_ns).max(due);
        black_box(what);
    }
}

fn nack_delays(c: &mut Criterion) {
    fn bench<T: Timers>(c: &mut Criterion, name: &str, kind: &str, n: u64, mut timers: T) {
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let mut now_ns = 0;
        for id in 0..n {
            timers.arm(now_ns + delay_ns(id), (1, 2, id));
        }
        let bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
        println!("nack delays {name} in {kind}: {:.1} bytes per timer", bytes as f64 / n as f64);
        let mut id = n;
        c.bench_function(&format!("nack delays {name}/{kind}: arm one + expire the earliest"), |b| {
            b.iter(|| {
                id += 1;
                timers.arm(now_ns + delay_ns(id), (1, 2, id));
                timers.expire_earliest(&mut now_ns);
            })
        });
    }
    for (name, n) in [("1M", 1_000_000u64), ("10M", 10_000_000)] {
        bench(c, name, "timing wheel", n, TimerWheel::<Delayed>::default());
        bench(c, name, "sorted set", n, BTreeSet::<(u64, Delayed)>::new());
    }
}

criterion_group!(benches, in_flight, nack_delays);
criterion_main!(benches);
