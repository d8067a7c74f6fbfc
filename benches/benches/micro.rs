//! One hot path each, with 256 B bodies: `cargo bench -p ferry-benches`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferry_core::node::{Input, Output};
use ferry_core::pipeline::{self, Publish, PublishContext};
use ferry_core::protocol::{self, MsgFrame};
use ferry_core::record::{self, MessageRef};
use ferry_core::testkit::{Completion, MemDisk, EPOCH_NS};
use ferry_core::{Config, ConnId, DiskOp, Host};
use serde_json::json;
use std::hint::black_box;
use std::time::Instant;

fn body_256() -> String {
    let body = json!({"order": 12345, "pad": "x".repeat(229)}).to_string();
    assert!(body.len() >= 250 && body.len() <= 260);
    body
}

fn codec(c: &mut Criterion) {
    let body = body_256();
    let frame = format!(r#"{{"op":"pub","req":17,"topic":"orders","key":"customer-42","body":{body}}}"#);
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    let depth_max = Config::default().json_depth_max;
    group.bench_function("decode pub frame", |b| b.iter(|| black_box(protocol::decode(black_box(&frame), depth_max).is_ok())));
    let mut out = String::with_capacity(512);
    group.bench_function("encode msg frame", |b| {
        b.iter(|| {
            out.clear();
            let m = MsgFrame { topic: "orders", group: "billing", id: 123_456, prev: 123_455, key: Some("customer-42"), body: &body, attempt: 1, ts_ms: 1_700_000_000_000 };
            protocol::encode_msg(&mut out, black_box(&m));
            black_box(out.len())
        })
    });
    group.finish();
}

fn pipeline_stages(c: &mut Criterion) {
    let stages = pipeline::default_stages(false);
    let context = PublishContext { authenticated: true };
    c.bench_function("pipeline/validate..transform per message", |b| {
        b.iter(|| {
            let mut publish = Publish { topic: "orders".into(), key: Some("customer-42".into()), producer: None, seq: None };
            black_box(pipeline::run(&stages, &mut publish, &context).is_ok())
        })
    });
}

/// Runs a node's disk requests on the in-memory disk; frames it sends are dropped.
fn drive(node: &mut Host, disk: &mut MemDisk) -> usize {
    let mut frames = 0;
    while let Some(output) = node.poll_output() {
        match output {
            Output::Disk(op) => {
                if let Some(Completion::Write { token, result }) = disk.apply(&op) {
                    node.handle_input(EPOCH_NS, Input::WriteDone { token, result });
                }
            }
            Output::Send { frame, .. } => frames += frame.len(),
            _ => {}
        }
    }
    frames
}

/// As `drive`, on a disk that keeps nothing: writes succeed at once, so what is measured is
/// the node's own work, without the in-memory disk's copying and first-touch page faults.
fn drive_discarding(node: &mut Host) -> usize {
    let mut frames = 0;
    while let Some(output) = node.poll_output() {
        match output {
            Output::Disk(DiskOp::Write { token, .. }) => node.handle_input(EPOCH_NS, Input::WriteDone { token, result: Ok(()) }),
            Output::Disk(other) => panic!("a publish-only node asked for {other:?}"),
            Output::Send { frame, .. } => frames += frame.len(),
            _ => {}
        }
    }
    frames
}

fn node_with_connections(conns: &[ConnId]) -> (Host, MemDisk) {
    let config = Config { segment_bytes_max: 1 << 30, retention_bytes: 1 << 40, ..Config::default() };
    let mut node = Host::new(config, EPOCH_NS);
    let mut disk = MemDisk::default();
    for conn in conns {
        node.handle_input(EPOCH_NS, Input::Connected { conn: *conn });
    }
    drive(&mut node, &mut disk);
    (node, disk)
}

fn store_append(c: &mut Criterion) {
    let body = body_256();
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));
    let mut segment = Vec::with_capacity(64 << 20);
    let mut id = 0u64;
    group.bench_function("encode record into segment buffer", |b| {
        b.iter(|| {
            if segment.len() > 60 << 20 {
                segment.clear();
            }
            id += 1;
            let m = MessageRef { id, ts_ms: 1_700_000_000_000, topic: "orders", key: Some("customer-42"), producer: None, seq: 0, body: &body };
            black_box(record::encode_message(&mut segment, &m))
        })
    });
    // A publish through the node: pipeline, id, index, cache, batch, write on the in-memory disk.
    let frame = format!(r#"{{"op":"pub","req":1,"topic":"orders","body":{body}}}"#);
    group.bench_function("node publish + group commit (memdisk)", |b| {
        // A fresh node per sample bounds the in-memory disk.
        b.iter_custom(|iters| {
            let (mut node, mut disk) = node_with_connections(&[ConnId(1)]);
            let started = Instant::now();
            for _ in 0..iters {
                node.handle_input(EPOCH_NS, Input::Frame { conn: ConnId(1), text: black_box(&frame) });
                black_box(drive(&mut node, &mut disk));
            }
            started.elapsed()
        })
    });
    // The same, with the disk answering after every 64 publishes, as a busy loop turn does:
    // the group commit then covers many messages, and its cost is shared among them.
    for (name, keeps_bytes) in [("node publish, 64 per group commit (memdisk)", true), ("node publish, 64 per group commit (disk keeps nothing)", false)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (mut node, mut disk) = node_with_connections(&[ConnId(1)]);
                let mut answer_disk = |node: &mut Host| if keeps_bytes { drive(node, &mut disk) } else { drive_discarding(node) };
                let started = Instant::now();
                for i in 0..iters {
                    node.handle_input(EPOCH_NS, Input::Frame { conn: ConnId(1), text: black_box(&frame) });
                    if i % 64 == 63 {
                        black_box(answer_disk(&mut node));
                    }
                }
                black_box(answer_disk(&mut node));
                started.elapsed()
            })
        });
    }
    group.finish();
}

fn deliver_ack(c: &mut Criterion) {
    let body = body_256();
    let publish = format!(r#"{{"op":"pub","req":1,"topic":"orders","body":{body}}}"#);
    let mut ack = String::new();
    c.bench_function("group/publish, deliver and ack one message", |b| {
        b.iter_custom(|iters| {
            let (mut node, mut disk) = node_with_connections(&[ConnId(1), ConnId(2)]);
            node.handle_input(EPOCH_NS, Input::Frame { conn: ConnId(2), text: r#"{"op":"sub","req":1,"topic":"orders","group":"g","window":64}"# });
            drive(&mut node, &mut disk);
            let started = Instant::now();
            for id in 1..=iters {
                node.handle_input(EPOCH_NS, Input::Frame { conn: ConnId(1), text: &publish });
                let sent = drive(&mut node, &mut disk);
                ack.clear();
                ack.push_str(r#"{"op":"ack","topic":"orders","group":"g","ids":["#);
                ack.push_str(&id.to_string());
                ack.push_str("]}");
                node.handle_input(EPOCH_NS, Input::Frame { conn: ConnId(2), text: &ack });
                black_box(sent + drive(&mut node, &mut disk));
            }
            started.elapsed()
        })
    });
}

criterion_group!(benches, codec, pipeline_stages, store_append, deliver_ack);
criterion_main!(benches);
