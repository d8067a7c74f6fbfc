//! The real binary end to end: 10 000 publishes, two consumer groups, a SIGKILL mid-stream and
//! a restart on the same data directory. Nothing pubacked may be lost.

mod support;

use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Client, Server};

const TOPIC: &str = "orders";
const TOTAL: u64 = 10_000;
const PUBLISH_AHEAD: usize = 256;
const KILL_AFTER: usize = 3_000;

#[derive(Clone, Debug)]
struct Delivery {
    group: &'static str,
    id: u64,
    prev: u64,
    attempt: u64,
    seq: u64,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    pubacked: Mutex<BTreeMap<u64, u64>>,
    deliveries: Mutex<Vec<Delivery>>,
}

fn publisher(url: String, shared: Arc<Shared>, deadline: Instant) {
    let mut next_seq = 0u64;
    loop {
        assert!(Instant::now() < deadline, "publisher ran out of time");
        let mut client = Client::connect_retry(&url, deadline);
        let mut in_flight = BTreeSet::new();
        let unacked: Vec<u64> = {
            let acked = shared.pubacked.lock().unwrap();
            (0..next_seq).filter(|s| !acked.contains_key(s)).collect()
        };
        let send = |client: &mut Client, seq: u64| {
            let frame = json!({"op": "pub", "req": seq, "topic": TOPIC, "key": format!("k{}", seq % 1000), "producer": "e2e", "seq": seq, "body": {"seq": seq}});
            client.send(&frame)
        };
        if unacked.iter().try_for_each(|s| send(&mut client, *s).map(|_| in_flight.insert(*s)).map(|_| ())).is_err() {
            continue;
        }
        loop {
            while in_flight.len() < PUBLISH_AHEAD && next_seq < TOTAL {
                if send(&mut client, next_seq).is_err() {
                    break;
                }
                in_flight.insert(next_seq);
                next_seq += 1;
            }
            if in_flight.is_empty() && next_seq == TOTAL {
                return;
            }
            match client.recv() {
                Ok(Some(frame)) if frame["op"] == "puback" => {
                    let seq = frame["req"].as_u64().unwrap();
                    let id = frame["id"].as_u64().unwrap();
                    in_flight.remove(&seq);
                    let previous = shared.pubacked.lock().unwrap().insert(seq, id);
                    assert!(previous.is_none_or(|p| p == id), "seq {seq} acked with two ids: {previous:?} and {id}");
                }
                Ok(Some(frame)) => panic!("publisher got {frame}"),
                Ok(None) => assert!(Instant::now() < deadline, "publisher ran out of time"),
                Err(_) => break,
            }
        }
    }
}

/// `skip_first_ack_every`: leave the first delivery of ids divisible by it unacked.
fn subscriber(url: String, group: &'static str, skip_first_ack_every: Option<u64>, shared: Arc<Shared>, deadline: Instant) {
    while !shared.stop.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "subscriber ran out of time");
        let Ok(mut client) = Client::connect(&url) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let sub = json!({"op": "sub", "req": 1, "topic": TOPIC, "group": group, "from": "earliest", "window": 512});
        if client.send(&sub).is_err() {
            continue;
        }
        while !shared.stop.load(Ordering::Relaxed) {
            let frame = match client.recv() {
                Ok(Some(frame)) => frame,
                Ok(None) => continue,
                Err(_) => break,
            };
            match frame["op"].as_str() {
                Some("msg") => {}
                Some("suback") => continue,
                _ => panic!("subscriber got {frame}"),
            }
            let delivery = Delivery {
                group,
                id: frame["id"].as_u64().unwrap(),
                prev: frame["prev"].as_u64().unwrap(),
                attempt: frame["attempt"].as_u64().unwrap(),
                seq: frame["body"]["seq"].as_u64().unwrap(),
            };
            let skip = skip_first_ack_every.is_some_and(|n| delivery.id.is_multiple_of(n) && delivery.attempt == 1);
            let id = delivery.id;
            shared.deliveries.lock().unwrap().push(delivery);
            if !skip && client.send(&json!({"op": "ack", "topic": TOPIC, "group": group, "ids": [id]})).is_err() {
                break;
            }
        }
    }
}

fn group_ids(shared: &Shared, group: &str) -> BTreeSet<u64> {
    shared.deliveries.lock().unwrap().iter().filter(|d| d.group == group).map(|d| d.id).collect()
}

#[test]
fn sigkill_mid_stream_loses_no_pubacked_message() {
    let dir = support::temp_dir("e2e");
    let options = ["--set", "ack_timeout_ms=500", "--fsync", "always"];
    let mut server = Server::start(&dir, "127.0.0.1:0", &options);
    let url = server.url();
    let addr = server.addr.clone();
    let deadline = Instant::now() + Duration::from_secs(240);
    let shared = Arc::new(Shared::default());

    let mut subscribers = Vec::new();
    for (group, skip) in [("audit", None), ("audit", None), ("audit", None), ("billing", Some(10))] {
        let (url, shared) = (url.clone(), shared.clone());
        subscribers.push(std::thread::spawn(move || subscriber(url, group, skip, shared, deadline)));
    }
    let publisher_thread = {
        let (url, shared) = (url.clone(), shared.clone());
        std::thread::spawn(move || publisher(url, shared, deadline))
    };

    while shared.pubacked.lock().unwrap().len() < KILL_AFTER {
        assert!(Instant::now() < deadline, "publishing too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    let acked_before_kill = shared.pubacked.lock().unwrap().len();
    let server = Server::start(&dir, &addr, &options);
    let started = Instant::now();
    publisher_thread.join().expect("publisher");
    eprintln!("e2e: publishing finished {:?} after the restart", started.elapsed());

    let pubacked = shared.pubacked.lock().unwrap().clone();
    assert_eq!(pubacked.len() as u64, TOTAL);
    let wanted: BTreeSet<u64> = pubacked.values().copied().collect();
    for group in ["audit", "billing"] {
        while !wanted.is_subset(&group_ids(&shared, group)) {
            let missing = wanted.difference(&group_ids(&shared, group)).count();
            assert!(Instant::now() < deadline, "group {group} still misses {missing} pubacked messages");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!("e2e: both groups complete {:?} after the restart", started.elapsed());
    shared.stop.store(true, Ordering::Relaxed);
    for s in subscribers {
        s.join().expect("subscriber");
    }

    // Ids: one per seq, never reused, increasing in publish order.
    assert_eq!(wanted.len() as u64, TOTAL, "two seqs share an id");
    let ids_in_seq_order: Vec<u64> = pubacked.values().copied().collect();
    assert!(ids_in_seq_order.windows(2).all(|w| w[0] < w[1]), "ids do not increase with publish order");

    let deliveries = shared.deliveries.lock().unwrap().clone();
    for group in ["audit", "billing"] {
        let mut prev_of: BTreeMap<u64, u64> = BTreeMap::new();
        for d in deliveries.iter().filter(|d| d.group == group) {
            assert_eq!(pubacked.get(&d.seq).copied().unwrap_or(d.id), d.id, "{group}: id {} carries the body of seq {}", d.id, d.seq);
            let first = *prev_of.entry(d.id).or_insert(d.prev);
            assert_eq!(first, d.prev, "{group}: id {} delivered with prev {} and {}", d.id, first, d.prev);
        }
        // The chain: each delivered id's prev is the id delivered before it in the sequence.
        let mut expected_prev = 0;
        for (id, prev) in &prev_of {
            assert_eq!(*prev, expected_prev, "{group}: broken prev chain at id {id}");
            expected_prev = *id;
        }
    }
    let billing_redeliveries = deliveries.iter().filter(|d| d.group == "billing" && d.attempt > 1).count();
    assert!(billing_redeliveries >= (TOTAL / 10) as usize / 2, "skipped acks were not redelivered ({billing_redeliveries})");
    eprintln!("e2e: {TOTAL} pubacked ({acked_before_kill} before SIGKILL), {} deliveries, {billing_redeliveries} billing redeliveries", deliveries.len());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
