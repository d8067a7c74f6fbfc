//! Flow control against the real binary: slow readers are paced instead of cut off, a reader
//! that stops entirely is cut off after `slow_consumer_timeout_ms` (logged once), and clients
//! that send requests without reading the replies are no longer read from, so the server's
//! memory stays bounded and newcomers are served.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{pub_frame, Client, RawWs, Server};

/// A body of about `bytes` bytes (a JSON string).
fn big_body(bytes: usize, n: u64) -> Value {
    let mut text = format!("{n}:");
    text.push_str(&"x".repeat(bytes - text.len() - 2));
    json!(text)
}

/// Publishes `count` bodies of `bytes` bytes, at most 8 ahead of their pubacks.
fn publish_big(url: &str, topic: &str, count: u64, bytes: usize) -> Duration {
    let started = Instant::now();
    let mut publisher = Client::connect(url).unwrap();
    let mut acked = 0;
    for n in 0..count {
        publisher.send(&pub_frame(n, topic, big_body(bytes, n))).unwrap();
        while acked + 8 <= n {
            let puback = publisher.expect_op("puback");
            assert!(puback["id"].is_u64(), "{puback}");
            acked += 1;
        }
    }
    while acked < count {
        publisher.expect_op("puback");
        acked += 1;
    }
    started.elapsed()
}

/// Item 10: a healthy consumer of 1,000 KiB messages that reads one message per 20 ms with
/// the default window (64) is paced, not disconnected, and acks every message. Before flow
/// control, the server pushed its whole window (64 MB) into the outbox, passed
/// `connection_outbox_bytes_max` (16 MiB) and dropped it, on every reconnect, until the
/// messages were dead-lettered.
#[test]
fn a_slow_reader_of_large_messages_is_paced_not_disconnected() {
    // A backlog, then as many again published while the consumer reads.
    const BACKLOG: u64 = 40;
    const COUNT: u64 = 2 * BACKLOG;
    const BYTES: usize = 1_000 << 10;
    let dir = support::temp_dir("slow-reader");
    let server = Server::start(&dir, "127.0.0.1:0", &["--fsync", "never"]);
    let url = server.url();
    publish_big(&url, "big", BACKLOG, BYTES);
    let subscribe = |c: &mut Client| {
        c.send(&json!({"op": "sub", "req": 1, "topic": "big", "group": "g", "from": "earliest"})).unwrap();
        c.expect_op("suback");
    };
    let mut consumer = Client::connect(&url).unwrap();
    subscribe(&mut consumer);
    let publisher = {
        let url = url.clone();
        std::thread::spawn(move || publish_big(&url, "big", COUNT - BACKLOG, BYTES))
    };

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut acked = BTreeSet::new();
    let (mut disconnects, mut redeliveries) = (0, 0);
    while (acked.len() as u64) < COUNT && Instant::now() < deadline && disconnects <= 20 {
        match consumer.recv() {
            Ok(Some(m)) if m["op"] == "msg" => {
                assert_eq!(m["body"].as_str().map(str::len), Some(BYTES - 2), "body intact");
                if m["attempt"] != 1 {
                    redeliveries += 1;
                }
                // A standard client that takes 20 ms per message.
                std::thread::sleep(Duration::from_millis(20));
                let id = m["id"].as_u64().unwrap();
                if consumer.send(&json!({"op": "ack", "topic": "big", "group": "g", "ids": [id]})).is_ok() {
                    acked.insert(id);
                }
            }
            Ok(_) => {}
            Err(e) => {
                disconnects += 1;
                eprintln!("slow reader disconnected ({e}) after {} acks", acked.len());
                consumer = Client::connect_retry(&url, deadline);
                subscribe(&mut consumer);
            }
        }
    }
    let publish_time = publisher.join().expect("the publisher got every puback");
    let peak = server.peak_rss_mib();
    let cutoffs = server.log_count("slow client");
    eprintln!(
        "slow reader of {COUNT} x 1000 KiB: {} acked, {disconnects} disconnects, {redeliveries} redeliveries, {cutoffs} cutoff lines; publisher done in {publish_time:?}; server peak RSS {peak} MiB",
        acked.len()
    );
    assert_eq!(disconnects, 0, "the slow reader was disconnected:\n{}", server.log_text());
    assert_eq!(acked.len() as u64, COUNT, "every message received and acked");
    assert_eq!(redeliveries, 0, "nothing had to be redelivered");
    assert_eq!(cutoffs, 0);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 10: a subscriber that stops reading entirely is cut off once nothing has drained from
/// its outbox for `slow_consumer_timeout_ms`, with one log line; the other member of its group
/// receives everything, and a publisher publishing meanwhile gets every puback. Before: the
/// stuck subscriber's window of a backlog went into its outbox at once, passed the outbox cap,
/// and the cutoff was logged once per frame queued after it.
#[test]
fn a_reader_that_stops_is_cut_off_after_the_timeout_and_logged_once() {
    const BACKLOG: u64 = 40;
    const COUNT: u64 = 60;
    const BYTES: usize = 500 << 10;
    let dir = support::temp_dir("stopped-reader");
    let settings = ["--fsync", "never", "--set", "connection_outbox_bytes_max=12582912", "--set", "connection_outbox_pause_bytes=262144", "--set", "slow_consumer_timeout_ms=2000"];
    let server = Server::start(&dir, "127.0.0.1:0", &settings);
    let url = server.url();
    publish_big(&url, "t", BACKLOG, BYTES);
    let mut stuck = RawWs::connect(&server.addr);
    stuck.shrink_receive_buffer(16 << 10);
    stuck.send_json(&json!({"op": "sub", "req": 1, "topic": "t", "group": "g", "from": "earliest"})).unwrap();
    let suback = stuck.read_frame(Instant::now() + Duration::from_secs(10)).unwrap();
    assert!(String::from_utf8_lossy(&suback.payload).contains("suback"));
    // From here `stuck` reads nothing.

    let healthy = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(&url).unwrap();
            c.send(&json!({"op": "sub", "req": 1, "topic": "t", "group": "g"})).unwrap();
            c.expect_op("suback");
            let mut got = BTreeSet::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while (got.len() as u64) < COUNT && Instant::now() < deadline {
                match c.recv() {
                    Ok(Some(m)) if m["op"] == "msg" => {
                        let id = m["id"].as_u64().unwrap();
                        c.send(&json!({"op": "ack", "topic": "t", "group": "g", "ids": [id]})).unwrap();
                        got.insert(id);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("the healthy member was disconnected: {e}");
                        break;
                    }
                }
            }
            got
        })
    };
    let publish_time = publish_big(&url, "t", COUNT - BACKLOG, BYTES);
    let got = healthy.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.log_count("slow client") == 0 {
        assert!(Instant::now() < deadline, "the stuck subscriber was never cut off:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stuck.closed_by_server(Instant::now() + Duration::from_secs(10)), "the stuck subscriber's socket is closed");
    // Time for repeats of the line to show up.
    std::thread::sleep(Duration::from_millis(500));
    let lines = server.log_count("slow client");
    eprintln!(
        "stopped reader: {lines} cutoff lines; healthy member received {} of {COUNT}; publisher of {} done in {publish_time:?}; server peak RSS {} MiB",
        got.len(),
        COUNT - BACKLOG,
        server.peak_rss_mib()
    );
    assert_eq!(lines, 1, "the cutoff is logged once:\n{}", server.log_text());
    assert!(server.log_text().contains("slow_consumer_timeout_ms"), "the cutoff names the timeout:\n{}", server.log_text());
    assert_eq!(got.len() as u64, COUNT, "the other member received every message");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 5: clients that pipeline `fetch` requests for large messages and never read the
/// replies are no longer read from once their outbox is full, so the server builds no more
/// replies for them: its memory stays bounded and a new client is served at once. Before, it
/// read 1,024 requests per turn and built every reply (20 clients × 12 × 700 KB drove it to
/// gigabytes).
#[test]
fn clients_that_fetch_without_reading_stop_being_read_and_memory_stays_bounded() {
    const CLIENTS: usize = 20;
    const REQUESTS: u64 = 1_000;
    const MESSAGES: u64 = 12;
    const BYTES: usize = 700_000;
    let dir = support::temp_dir("fetch-flood");
    let server = Server::start(&dir, "127.0.0.1:0", &["--fsync", "never"]);
    publish_big(&server.url(), "big", MESSAGES, BYTES);
    let rss_before = server.peak_rss_mib();

    // Every reply is one message (at most frame_bytes_max): fetch from=to.
    let mut flood = Vec::new();
    for c in 0..CLIENTS {
        let mut ws = RawWs::connect(&server.addr);
        ws.stream.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut sent = 0;
        for r in 0..REQUESTS {
            let id = 1 + (r + c as u64) % MESSAGES;
            if ws.send_json(&json!({"op": "fetch", "req": r, "topic": "big", "from": id, "to": id})).is_err() {
                break;
            }
            sent += 1;
        }
        flood.push((ws, sent));
    }
    let sent: u64 = flood.iter().map(|(_, n)| n).sum();
    // Give the server time to (not) build the replies.
    std::thread::sleep(Duration::from_secs(3));

    let asked = Instant::now();
    let mut newcomer = Client::connect(&server.url()).unwrap();
    newcomer.send(&json!({"op": "fetch", "req": "new", "topic": "big", "from": 1, "to": 1})).unwrap();
    let fetched = newcomer.expect_op("fetched");
    let served_after = asked.elapsed();
    assert_eq!(fetched["messages"].as_array().map(Vec::len), Some(1));
    let peak = server.peak_rss_mib();
    let pausing = server.log_count("slow client");
    eprintln!(
        "fetch flood: {CLIENTS} clients sent {sent} fetches of {BYTES}-byte messages and read nothing; server peak RSS {rss_before} MiB before, {peak} MiB during; newcomer served in {served_after:?}; {pausing} cutoff lines"
    );
    assert!(peak < 300, "server peak RSS {peak} MiB with {CLIENTS} clients not reading their fetches");

    // The flood leaves; the server goes on serving.
    drop(flood);
    newcomer.send(&json!({"op": "ping", "req": 2})).unwrap();
    assert_eq!(newcomer.expect_op("pong")["req"], 2);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Part of item 6: all outboxes together stay within `outbox_bytes_total_max`: past it, every
/// connection with more than a little queued is paused (no pushes, no reads) until the total
/// drains, while a client that reads what it asked for is still served.
#[test]
fn all_outboxes_together_are_bounded_and_a_reading_client_is_still_served() {
    const CLIENTS: usize = 12;
    const MESSAGES: u64 = 12;
    const BYTES: usize = 700_000;
    let dir = support::temp_dir("outbox-total");
    let server = Server::start(&dir, "127.0.0.1:0", &["--fsync", "never", "--set", "outbox_bytes_total_max=4194304"]);
    publish_big(&server.url(), "big", MESSAGES, BYTES);
    let mut flood = Vec::new();
    for c in 0..CLIENTS {
        let mut ws = RawWs::connect(&server.addr);
        ws.shrink_receive_buffer(16 << 10);
        ws.stream.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        for r in 0..50u64 {
            let id = 1 + (r + c as u64) % MESSAGES;
            if ws.send_json(&json!({"op": "fetch", "req": r, "topic": "big", "from": id, "to": id})).is_err() {
                break;
            }
        }
        flood.push(ws);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.log_count("outbox_bytes_total_max") == 0 {
        assert!(Instant::now() < deadline, "the total was never passed:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A client that reads its replies gets them, one paused turn after another.
    let asked = Instant::now();
    let mut reader = Client::connect(&server.url()).unwrap();
    for id in 1..=3u64 {
        reader.send(&json!({"op": "fetch", "req": id, "topic": "big", "from": id, "to": id})).unwrap();
        let fetched = reader.expect_op("fetched");
        assert_eq!(fetched["messages"][0]["id"], id);
    }
    reader.send(&json!({"op": "ping", "req": 9})).unwrap();
    assert_eq!(reader.expect_op("pong")["req"], 9);
    let served_after = asked.elapsed();
    let peak = server.peak_rss_mib();
    eprintln!("outbox total: {CLIENTS} clients not reading; a reading client served 3 fetches in {served_after:?}; server peak RSS {peak} MiB");
    assert!(peak < 300, "server peak RSS {peak} MiB");
    drop(flood);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
