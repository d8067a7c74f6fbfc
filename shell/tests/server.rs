//! The real binary: bad input over real WebSockets, and recovery of a torn segment tail.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{pub_frame, Client, Server};
use tungstenite::Message;

#[test]
fn bad_frames_get_errors_binary_and_oversized_frames_close() {
    let dir = support::temp_dir("bad-input");
    let server = Server::start(&dir, "127.0.0.1:0", &["--set", "frame_bytes_max=4096"]);
    let mut c = Client::connect(&server.url()).unwrap();
    for (frame, code) in [("{", "bad_frame"), (r#"{"op":"nope","req":3}"#, "unknown_op"), (r#"{"op":"pub","req":4,"topic":"x.dlq","body":1}"#, "forbidden")] {
        c.send_raw(Message::text(frame)).unwrap();
        let e = c.expect_op("error");
        assert_eq!(e["code"], code, "{frame}");
    }
    c.send(&pub_frame(5, "t", json!({"ok": true}))).unwrap();
    assert_eq!(c.expect_op("puback")["id"], 1, "connection still usable after bad frames");

    c.send(&pub_frame(6, "t", json!("x".repeat(5000)))).unwrap();
    assert_eq!(c.expect_op("error")["code"], "too_large");
    let closed = (0..50).find_map(|_| c.recv().err());
    assert!(closed.is_some_and(|e| e.contains("1009") || e.contains("Size") || e.contains("closed")), "oversized frame must close");

    let mut c = Client::connect(&server.url()).unwrap();
    c.send_raw(Message::binary(vec![1u8, 2, 3])).unwrap();
    let closed = (0..50).find_map(|_| c.recv().err());
    assert!(closed.is_some_and(|e| e.contains("Unsupported") || e.contains("1003")), "binary frame must close with 1003");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn torn_tail_is_cut_logged_and_earlier_records_survive() {
    let dir = support::temp_dir("torn-tail");
    let mut server = Server::start(&dir, "127.0.0.1:0", &[]);
    let mut c = Client::connect(&server.url()).unwrap();
    for n in 0..100u64 {
        c.send(&pub_frame(n, "t", json!({"n": n}))).unwrap();
    }
    for _ in 0..100 {
        c.expect_op("puback");
    }
    server.kill();

    let newest = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "seg")).max().expect("a segment");
    let mut bytes = std::fs::read(&newest).unwrap();
    let mut last = (0, 0);
    let (valid, stop) = ferry_core::record::scan_segment(&bytes, |offset, size, _| last = (offset as usize, size));
    assert_eq!(stop, None, "a clean segment before the damage");
    assert!(valid as usize <= bytes.len(), "segment files may carry a zero-filled tail");
    // A torn append: the last record is cut short and its tail is garbage.
    let (offset, size) = last;
    bytes[offset + size - 3] ^= 0x5a;
    bytes.truncate(offset + size - 2);
    std::fs::write(&newest, &bytes).unwrap();

    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    std::thread::sleep(Duration::from_millis(100));
    assert!(server.log_text().contains("dropping a torn tail"), "recovery must log what it dropped:\n{}", server.log_text());
    let mut c = Client::connect(&server.url()).unwrap();
    c.send(&json!({"op": "fetch", "req": 1, "topic": "t", "from": 1, "to": 1000})).unwrap();
    let fetched = c.expect_op("fetched");
    let bodies: Vec<u64> = fetched["messages"].as_array().unwrap().iter().map(|m| m["body"]["n"].as_u64().unwrap()).collect();
    assert_eq!(bodies, (0..99).collect::<Vec<_>>(), "every record before the torn one survives");
    c.send(&pub_frame(7, "t", json!("next"))).unwrap();
    assert_eq!(c.expect_op("puback")["id"], 100, "the lost record's id is assigned again (it was never delivered)");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stalled_handshake_is_dropped() {
    use std::io::Read;
    let dir = support::temp_dir("handshake");
    let server = Server::start(&dir, "127.0.0.1:0", &["--set", "handshake_timeout_ms=200"]);
    let mut raw = std::net::TcpStream::connect(&server.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let started = std::time::Instant::now();
    let n = raw.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server closes a connection that never sends its handshake");
    assert!(started.elapsed() < Duration::from_secs(4), "closed by the handshake timeout, not the read timeout");
    // A proper client still gets in.
    Client::connect(&server.url()).unwrap();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_subscriber_that_stops_reading_is_cut_off_and_publishers_go_on() {
    let dir = support::temp_dir("slow-consumer");
    let server = Server::start(&dir, "127.0.0.1:0", &["--set", "connection_outbox_bytes_max=262144"]);
    let mut stuck = Client::connect(&server.url()).unwrap();
    stuck.send(&json!({"op": "sub", "req": 1, "topic": "t", "group": "stuck", "from": "latest", "window": 60000})).unwrap();
    assert_eq!(stuck.expect_op("suback")["group"], "stuck");
    // From here on `stuck` never reads: its kernel buffers fill, then the server's outbox.
    let mut publisher = Client::connect(&server.url()).unwrap();
    let body = json!("x".repeat(2000));
    let total = 6000u64;
    let mut acked = 0;
    for n in 0..total {
        publisher.send(&pub_frame(n, "t", body.clone())).unwrap();
        // Keep at most 200 publishes ahead of their pubacks.
        while acked + 200 <= n {
            assert_eq!(publisher.expect_op("puback")["op"], "puback");
            acked += 1;
        }
    }
    while acked < total {
        assert_eq!(publisher.expect_op("puback")["op"], "puback");
        acked += 1;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("slow client") {
        assert!(std::time::Instant::now() < deadline, "the stuck subscriber was never cut off:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stuck);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn deep_frames_non_objects_and_bad_reqs_get_bad_frame() {
    let dir = support::temp_dir("json-limits");
    let server = Server::start(&dir, "127.0.0.1:0", &["--set", "json_depth_max=32"]);
    let mut c = Client::connect(&server.url()).unwrap();
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let deep_req = format!(r#"{{"op":"ping","req":{}}}"#, nested(10_000));
    let positional_pub = r#"["pub",1,null,"t",null,{"x":1},null,null,null,null,null,null,null,null,null,null,null]"#;
    let cases = [
        (format!(r#"{{"op":"pub","req":1,"topic":"t","body":{}}}"#, nested(32)), Some(1)),
        (format!(r#"{{"op":"pub","req":2,"topic":"t","body":{}}}"#, nested(10_000)), Some(2)),
        (deep_req, None),
        (r#"{"op":"ping","req":{"a":1}}"#.to_string(), None),
        (format!(r#"{{"op":"ping","req":"{}"}}"#, "r".repeat(200)), None),
        (positional_pub.to_string(), None),
    ];
    for (frame, req) in cases {
        c.send_raw(Message::text(frame.clone())).unwrap();
        let reply = c.recv_until(std::time::Instant::now() + Duration::from_secs(10)).expect("connection alive").expect("a reply");
        assert_eq!(reply["op"], "error", "{frame:.60}: {reply}");
        assert_eq!(reply["code"], "bad_frame", "{frame:.60}");
        assert_eq!(reply["req"].as_u64(), req, "{frame:.60}: {reply}");
    }
    // At the limit (the frame's object is level 1) it is accepted, and it is the first message
    // stored: none of the refused frames published anything.
    c.send_raw(Message::text(format!(r#"{{"op":"pub","req":3,"topic":"t","body":{}}}"#, nested(31)))).unwrap();
    assert_eq!(c.expect_op("puback")["id"], 1);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
