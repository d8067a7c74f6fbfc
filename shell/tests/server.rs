//! The real binary: bad input over real WebSockets, stalled handshakes and slow consumers.

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
    assert!(closed.as_deref().is_some_and(|e| e.contains("code: Size")), "an oversized frame closes with 1009: {closed:?}");

    let mut c = Client::connect(&server.url()).unwrap();
    c.send_raw(Message::binary(vec![1u8, 2, 3])).unwrap();
    let closed = (0..50).find_map(|_| c.recv().err());
    assert!(closed.as_deref().is_some_and(|e| e.contains("code: Unsupported")), "a binary frame closes with 1003: {closed:?}");
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
    let server = Server::start(&dir, "127.0.0.1:0", &["--set", "connection_outbox_pause_bytes=65536", "--set", "slow_consumer_timeout_ms=1000"]);
    let mut stuck = Client::connect(&server.url()).unwrap();
    stuck.send(&json!({"op": "sub", "req": 1, "topic": "t", "group": "stuck", "from": "latest", "window": 60000})).unwrap();
    assert_eq!(stuck.expect_op("suback")["group"], "stuck");
    // From here on `stuck` never reads: its kernel buffers fill, then the server's outbox.
    let mut publisher = Client::connect(&server.url()).unwrap();
    let body = json!("x".repeat(2000));
    // At most 200 publishes ahead of their pubacks; every one is acked, in order.
    let ids = support::publish_many(&mut publisher, "t", 6000, |_| body.clone());
    assert_eq!(ids, (1..=6000).collect::<Vec<u64>>(), "the publisher goes on while the subscriber is stuck");
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
fn out_of_descriptors_the_server_backs_off_keeps_serving_and_recovers() {
    use std::io::Write;
    use std::time::Instant;
    let dir = support::temp_dir("fd-exhaustion");
    let server = Server::start_with_nofile(&dir, "127.0.0.1:0", &["--fsync", "never"], 128);
    if server.nofile_limit() > 128 {
        // Only a process allowed to raise its hard limit gets here; exhaustion cannot be staged.
        eprintln!("SKIP: the server raised its open-file limit to {}", server.nofile_limit());
        return;
    }
    let mut veteran = Client::connect(&server.url()).unwrap();
    let lines_before = server.log_lines();
    let fds_before = server.open_fds();

    // 200 upgrade requests against ~120 free descriptors.
    let mut crowd: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
            s.write_all(support::upgrade_request("/ws").as_bytes()).unwrap();
            s
        })
        .collect();

    // The connection that was there first is still served.
    let asked = Instant::now();
    veteran.send(&json!({"op": "ping", "req": 1})).unwrap();
    assert_eq!(veteran.expect_op("pong")["req"], 1);
    let pong_after = asked.elapsed();

    // Every newcomer is answered: upgraded while descriptors last, refused with 503 after.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut upgraded, mut refused) = (0, 0);
    for s in &mut crowd {
        let head = support::read_http_head(s, deadline).unwrap_or_else(|e| panic!("a connection got no answer: {e}"));
        // Read what follows too (the welcome, or the refusal's body up to the server's close),
        // so that these clients leave with a FIN, not a reset that would hide a CLOSE-WAIT.
        match &head[..12] {
            "HTTP/1.1 101" => {
                upgraded += 1;
                let mut ws = support::RawWs { stream: s.try_clone().unwrap() };
                ws.read_frame(deadline).expect("welcome after the upgrade");
            }
            "HTTP/1.1 503" => {
                refused += 1;
                let mut ws = support::RawWs { stream: s.try_clone().unwrap() };
                assert!(ws.closed_by_server(deadline), "a refused connection is closed");
            }
            _ => panic!("unexpected answer {head}"),
        }
    }
    assert!(upgraded > 50 && refused > 0, "{upgraded} upgraded, {refused} refused");

    // Out of descriptors and idle: the loop sleeps instead of spinning on accept.
    let (cpu_before, wall) = (server.cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let cpu_share = (server.cpu_time() - cpu_before).as_secs_f64() / wall.elapsed().as_secs_f64();
    let new_lines: Vec<String> = server.log.lock().unwrap()[lines_before..].to_vec();
    eprintln!(
        "descriptor exhaustion: {upgraded} upgraded, {refused} refused, pong after {pong_after:?}, server CPU {:.1}%, {} log lines:\n{}",
        cpu_share * 100.0,
        new_lines.len(),
        new_lines.join("\n")
    );
    assert!(new_lines.len() <= 5, "the log must not repeat itself per failed accept: {} lines", new_lines.len());
    assert!(cpu_share < 0.5, "the server spins while out of descriptors: {:.0}% CPU", cpu_share * 100.0);

    // The crowd leaves: the server closes its side (no CLOSE-WAIT pile-up) and accepts again.
    drop(crowd);
    let left = Instant::now();
    let deadline = left + Duration::from_secs(10);
    while server.close_wait_sockets() > 0 || server.open_fds() > fds_before + 2 {
        assert!(Instant::now() < deadline, "{} sockets stuck in CLOSE-WAIT, {} descriptors open (before the crowd: {fds_before})", server.close_wait_sockets(), server.open_fds());
        std::thread::sleep(Duration::from_millis(20));
    }
    let closed_after = left.elapsed();
    let mut newcomer = support::RawWs::connect(&server.addr);
    let served_after = left.elapsed();
    eprintln!("after the crowd left: sockets closed within {closed_after:?}, a new connection served after {served_after:?}");
    newcomer.send(&support::ws_frame(0x81, br#"{"op":"ping","req":2}"#, true)).unwrap();
    let pong = newcomer.read_frame(Instant::now() + Duration::from_secs(10)).unwrap();
    assert!(String::from_utf8_lossy(&pong.payload).contains("pong"), "{pong:?}");
    veteran.send(&pub_frame(3, "t", json!("still here"))).unwrap();
    assert_eq!(veteran.expect_op("puback")["req"], 3);
    assert!(server.log_text().contains("accepting connections again"), "recovery is logged:\n{}", server.log_text());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_silent_connection_is_pinged_then_closed_and_its_messages_go_to_another_member() {
    use std::time::Instant;
    let dir = support::temp_dir("idle");
    // The ack timeout stays at its 30 s default: only the idle timeout can free the message.
    let server = Server::start(&dir, "127.0.0.1:0", &["--set", "idle_ping_ms=200", "--set", "idle_timeout_ms=200"]);
    let mut silent = Client::connect(&server.url()).unwrap();
    silent.send(&json!({"op": "sub", "req": 1, "topic": "t", "group": "g", "from": "earliest"})).unwrap();
    silent.expect_op("suback");
    let mut publisher = Client::connect(&server.url()).unwrap();
    publisher.send(&pub_frame(2, "t", json!("in flight"))).unwrap();
    let id = publisher.expect_op("puback")["id"].clone();
    let first = silent.expect_op("msg");
    assert_eq!((&first["id"], &first["attempt"]), (&id, &json!(1)));
    // From here `silent` reads nothing, so it never answers a ping: a half-open connection.

    let mut lively = Client::connect(&server.url()).unwrap();
    lively.send(&json!({"op": "sub", "req": 3, "topic": "t", "group": "g"})).unwrap();
    lively.expect_op("suback");
    let again = lively.expect_op("msg");
    assert_eq!((&again["id"], &again["attempt"]), (&id, &json!(2)), "the silent member's message goes to the other member");

    // The silent client was pinged, then closed with 1008.
    let closed = (0..50).find_map(|_| silent.recv().err());
    assert!(closed.as_deref().is_some_and(|e| e.contains("Policy")), "closed with 1008: {closed:?}");

    // A client that answers pings (its reads do) and sends nothing else outlives several idle
    // periods.
    let quiet_until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < quiet_until {
        assert_eq!(lively.recv(), Ok(None), "nothing but pings while quiet");
    }
    lively.send(&json!({"op": "ack", "topic": "t", "group": "g", "ids": [id]})).unwrap();
    lively.send(&json!({"op": "ping", "req": 4})).unwrap();
    assert_eq!(lively.expect_op("pong")["req"], 4);
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
