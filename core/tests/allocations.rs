//! Heap allocations on the hot paths, counted by a counting allocator on this thread only (the
//! test harness runs tests on several threads). Each budget is today's count: a change that
//! adds an allocation per message fails here and must either remove it or raise the budget
//! on purpose.

use ferry_core::node::{Input, Output};
use ferry_core::protocol::{self, MsgFrame};
use ferry_core::testkit::{Completion, MemDisk, EPOCH_NS};
use ferry_core::{Config, ConnId, Host};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    /// Allocations (and reallocations) made on this thread while `COUNTING` is set.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note_allocation() {
    // `try_with`: the thread-locals may already be gone while a thread exits.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is passed on to the system allocator unchanged; only a counter moves.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations_of(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCATIONS.with(Cell::get)
}

/// Carries out the node's disk work on the in-memory disk; drops its frames.
fn drive(node: &mut Host, disk: &mut MemDisk) {
    while let Some(output) = node.poll_output() {
        if let Output::Disk(op) = output {
            if let Some(Completion::Write { token, result }) = disk.apply(&op) {
                node.handle_input(EPOCH_NS, Input::WriteDone { token, result });
            }
        }
    }
}

const MESSAGES: u64 = 1_000;

fn body_256() -> String {
    format!(r#"{{"order":12345,"pad":"{}"}}"#, "x".repeat(229))
}

/// A node with a publisher (conn 1) and, with `subscribed`, a member of group `g` (conn 2);
/// warmed up with `MESSAGES` messages, so that its maps and buffers have grown.
fn warm_node(subscribed: bool) -> (Host, MemDisk, String) {
    let config = Config { segment_bytes_max: 1 << 30, retention_bytes: 1 << 40, ..Config::default() };
    let mut node = Host::new(config, EPOCH_NS);
    let mut disk = MemDisk::default();
    for conn in [1, 2] {
        node.handle_input(EPOCH_NS, Input::Connected { conn: ConnId(conn) });
    }
    if subscribed {
        node.handle_input(EPOCH_NS, Input::Frame { conn: ConnId(2), text: r#"{"op":"sub","req":1,"topic":"orders","group":"g","window":64}"# });
    }
    let publish = format!(r#"{{"op":"pub","req":1,"topic":"orders","body":{}}}"#, body_256());
    for id in 1..=MESSAGES {
        cycle(&mut node, &mut disk, &publish, subscribed.then_some(id));
    }
    (node, disk, publish)
}

/// One publish, its write, and with `ack` the delivery and the ack of that id.
fn cycle(node: &mut Host, disk: &mut MemDisk, publish: &str, ack: Option<u64>) {
    node.handle_input(EPOCH_NS, Input::Frame { conn: ConnId(1), text: publish });
    drive(node, disk);
    if let Some(id) = ack {
        let text = format!(r#"{{"op":"ack","topic":"orders","group":"g","ids":[{id}]}}"#);
        node.handle_input(EPOCH_NS, Input::Frame { conn: ConnId(2), text: &text });
        drive(node, disk);
    }
}

#[test]
fn a_msg_frame_is_encoded_without_allocating() {
    let body = body_256();
    let message = MsgFrame { topic: "orders", group: "billing", id: 123_456, prev: 123_455, key: Some("customer-42"), body: &body, attempt: 1, ts_ms: 1_700_000_000_000 };
    let mut out = String::with_capacity(1024);
    let allocations = allocations_of(|| {
        for _ in 0..100 {
            out.clear();
            protocol::encode_msg(&mut out, &message);
        }
    });
    assert_eq!(allocations, 0, "encoding into a buffer with room allocates nothing");
    assert!(out.contains(r#""id":123456"#));
}

#[test]
fn a_publish_and_its_commit_stay_within_their_allocation_budget() {
    let (mut node, mut disk, publish) = warm_node(false);
    let allocations = allocations_of(|| {
        for _ in 0..MESSAGES {
            cycle(&mut node, &mut disk, &publish, None);
        }
    });
    let per_message = allocations as f64 / MESSAGES as f64;
    assert!(per_message <= 7.1, "{per_message} allocations per publish + commit (budget 7, and a map grows now and then)");
}

#[test]
fn a_publish_delivery_and_ack_stay_within_their_allocation_budget() {
    let (mut node, mut disk, publish) = warm_node(true);
    let mut counted = 0;
    for id in MESSAGES + 1..=2 * MESSAGES {
        // The ack frame's own String is the test's, not the node's: built outside the count.
        counted += allocations_of(|| cycle(&mut node, &mut disk, &publish, None));
        let ack = format!(r#"{{"op":"ack","topic":"orders","group":"g","ids":[{id}]}}"#);
        counted += allocations_of(|| {
            node.handle_input(EPOCH_NS, Input::Frame { conn: ConnId(2), text: &ack });
            drive(&mut node, &mut disk);
        });
    }
    let per_message = counted as f64 / MESSAGES as f64;
    assert!(per_message <= 10.1, "{per_message} allocations per publish, delivery and ack (budget 10, and a map grows now and then)");
}
