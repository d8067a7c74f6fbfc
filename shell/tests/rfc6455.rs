//! RFC 6455 at the edges, with hand-made bytes over plain sockets: a frame that breaks the
//! protocol is answered with a close frame carrying the right status code before the socket
//! closes, and a bad upgrade request is answered with an HTTP status.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};
use support::{ws_frame, RawWs, Server};

const PROTOCOL_ERROR: u16 = 1002;
const INVALID_UTF8: u16 = 1007;

/// Frames as (first byte, payload, masked).
type Frames = Vec<(u8, Vec<u8>, bool)>;

/// Frames sent after a good handshake, and the close code due.
fn bad_frames() -> Vec<(&'static str, Frames, u16)> {
    let close_1000 = |rest: &[u8]| [&[0x03, 0xe8][..], rest].concat();
    vec![
        ("unmasked text frame", vec![(0x81, br#"{"op":"ping","req":1}"#.to_vec(), false)], PROTOCOL_ERROR),
        ("unmasked ping", vec![(0x89, b"hi".to_vec(), false)], PROTOCOL_ERROR),
        ("RSV1 set", vec![(0xc1, br#"{"op":"ping"}"#.to_vec(), true)], PROTOCOL_ERROR),
        ("RSV2 set", vec![(0xa1, br#"{"op":"ping"}"#.to_vec(), true)], PROTOCOL_ERROR),
        ("RSV3 set", vec![(0x91, br#"{"op":"ping"}"#.to_vec(), true)], PROTOCOL_ERROR),
        ("RSV bit on a ping", vec![(0xc9, Vec::new(), true)], PROTOCOL_ERROR),
        ("reserved data opcode 0x3", vec![(0x83, b"x".to_vec(), true)], PROTOCOL_ERROR),
        ("reserved data opcode 0x7", vec![(0x87, b"x".to_vec(), true)], PROTOCOL_ERROR),
        ("reserved control opcode 0xB", vec![(0x8b, b"x".to_vec(), true)], PROTOCOL_ERROR),
        ("reserved control opcode 0xF", vec![(0x8f, Vec::new(), true)], PROTOCOL_ERROR),
        ("ping of 126 bytes", vec![(0x89, vec![b'p'; 126], true)], PROTOCOL_ERROR),
        ("pong of 126 bytes", vec![(0x8a, vec![b'p'; 126], true)], PROTOCOL_ERROR),
        ("close of 126 bytes", vec![(0x88, close_1000(&[b'r'; 124]), true)], PROTOCOL_ERROR),
        ("fragmented ping", vec![(0x09, b"a".to_vec(), true), (0x80, b"b".to_vec(), true)], PROTOCOL_ERROR),
        ("fragmented close", vec![(0x08, close_1000(b""), true)], PROTOCOL_ERROR),
        ("close with a 1-byte payload", vec![(0x88, vec![0x03], true)], PROTOCOL_ERROR),
        ("continuation without a start", vec![(0x80, b"x".to_vec(), true)], PROTOCOL_ERROR),
        ("unfinished continuation without a start", vec![(0x00, b"x".to_vec(), true)], PROTOCOL_ERROR),
        ("new text frame inside a fragmented message", vec![(0x01, br#"{"op":"#.to_vec(), true), (0x81, br#"{"op":"ping"}"#.to_vec(), true)], PROTOCOL_ERROR),
        ("binary frame inside a fragmented message", vec![(0x01, br#"{"op":"#.to_vec(), true), (0x82, b"x".to_vec(), true)], PROTOCOL_ERROR),
        ("invalid UTF-8 in a text frame", vec![(0x81, b"{\"op\":\"\xff\xfe\"}".to_vec(), true)], INVALID_UTF8),
        ("truncated UTF-8 sequence", vec![(0x81, b"{\"op\":\"\xe2\x82\"}".to_vec(), true)], INVALID_UTF8),
        ("UTF-8-encoded surrogate", vec![(0x81, b"\xed\xa0\x80".to_vec(), true)], INVALID_UTF8),
        ("invalid UTF-8 across fragments", vec![(0x01, b"{\"op\":\"\xe2".to_vec(), true), (0x80, b"\x28\xa1\"}".to_vec(), true)], INVALID_UTF8),
        ("invalid UTF-8 in a close reason", vec![(0x88, close_1000(b"bye \xff"), true)], INVALID_UTF8),
        ("close with reserved code 1005", vec![(0x88, vec![0x03, 0xed], true)], PROTOCOL_ERROR),
        ("close with code 999", vec![(0x88, vec![0x03, 0xe7], true)], PROTOCOL_ERROR),
    ]
}

#[test]
fn protocol_errors_are_answered_with_a_close_frame_then_the_socket_closes() {
    let dir = support::temp_dir("rfc6455-frames");
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let mut failures = Vec::new();
    for (name, frames, code) in bad_frames() {
        let mut ws = RawWs::connect(&server.addr);
        for (first, payload, masked) in &frames {
            // The server may close before the last frame is written; that is its right.
            let _ = ws.send(&ws_frame(*first, payload, *masked));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let answer = loop {
            match ws.read_frame(deadline) {
                Ok(frame) if frame.opcode() == 0x8 => break Ok(frame),
                Ok(_) => continue,
                Err(e) => break Err(e),
            }
        };
        match answer {
            Ok(frame) if frame.first == 0x88 && frame.close_code() == Some(code) => {
                if !ws.closed_by_server(Instant::now() + Duration::from_secs(5)) {
                    failures.push(format!("{name}: the socket stayed open after the close frame"));
                }
            }
            Ok(frame) => failures.push(format!("{name}: close frame {frame:?}, want code {code}")),
            Err(e) => failures.push(format!("{name}: no close frame ({e}), want code {code}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), bad_frames().len(), failures.join("\n"));
    // The server is still fine.
    let mut ws = RawWs::connect(&server.addr);
    ws.send(&ws_frame(0x81, br#"{"op":"ping","req":9}"#, true)).unwrap();
    let pong = ws.read_frame(Instant::now() + Duration::from_secs(5)).unwrap();
    assert!(String::from_utf8_lossy(&pong.payload).contains("pong"), "{pong:?}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_clean_close_is_echoed() {
    let dir = support::temp_dir("rfc6455-close");
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let mut ws = RawWs::connect(&server.addr);
    ws.send(&ws_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e'], true)).unwrap();
    let frame = ws.read_frame(Instant::now() + Duration::from_secs(5)).unwrap();
    assert_eq!(frame.close_code(), Some(1000), "{frame:?}");
    assert!(ws.closed_by_server(Instant::now() + Duration::from_secs(5)));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An upgrade request that must be refused, the status due, and a header the answer must carry.
type Refusal = (&'static str, String, &'static str, Option<&'static str>);

fn bad_handshakes() -> Vec<Refusal> {
    let key = support::WS_KEY;
    let good = |drop_line: &str, add: &str| -> String {
        let mut lines: Vec<String> =
            ["GET /ws HTTP/1.1", "Host: localhost", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13", &format!("Sec-WebSocket-Key: {key}")]
                .iter()
                .filter(|l| drop_line.is_empty() || !l.starts_with(drop_line))
                .map(|l| l.to_string())
                .collect();
        if !add.is_empty() {
            lines.push(add.to_string());
        }
        format!("{}\r\n\r\n", lines.join("\r\n"))
    };
    let replace_first = |line: &str| good("", "").replacen("GET /ws HTTP/1.1", line, 1);
    vec![
        ("no Sec-WebSocket-Key", good("Sec-WebSocket-Key", ""), "400", None),
        ("a Sec-WebSocket-Key that is not 16 bytes", good("Sec-WebSocket-Key", "Sec-WebSocket-Key: c2hvcnQ="), "400", None),
        ("no Host", good("Host", ""), "400", None),
        ("HTTP/1.0", replace_first("GET /ws HTTP/1.0"), "400", None),
        ("not HTTP at all", "HELLO THERE\r\n\r\n".to_string(), "400", None),
        ("a request head over 16 KiB", good("", &format!("X-Padding: {}", "p".repeat(20_000))), "400", None),
        ("POST", replace_first("POST /ws HTTP/1.1"), "405", Some("allow: get")),
        ("Sec-WebSocket-Version 8", good("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8"), "426", Some("sec-websocket-version: 13")),
        ("no Sec-WebSocket-Version", good("Sec-WebSocket-Version", ""), "426", Some("sec-websocket-version: 13")),
        ("no Upgrade header", good("Upgrade", ""), "426", Some("upgrade: websocket")),
        ("an upgrade to something else", good("Upgrade", "Upgrade: h2c"), "426", Some("upgrade: websocket")),
        ("no Connection: Upgrade", good("Connection", "Connection: keep-alive"), "426", Some("upgrade: websocket")),
        ("a wrong path", replace_first("GET /chat HTTP/1.1"), "404", None),
        ("POST to a wrong path", replace_first("POST /chat HTTP/1.1"), "404", None),
    ]
}

#[test]
fn bad_upgrade_requests_are_answered_with_an_http_status() {
    let dir = support::temp_dir("rfc6455-handshake");
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let mut failures = Vec::new();
    for (name, request, status, header) in bad_handshakes() {
        let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
        // A big request may be cut off by the answer; writing the rest may then fail.
        let _ = stream.write_all(request.as_bytes());
        match support::read_http_head(&mut stream, Instant::now() + Duration::from_secs(5)) {
            Ok(head) => {
                let status_line = head.lines().next().unwrap_or_default();
                if !status_line.starts_with(&format!("HTTP/1.1 {status} ")) {
                    failures.push(format!("{name}: got '{status_line}', want {status}"));
                } else if header.is_some_and(|h| !head.to_ascii_lowercase().contains(h)) {
                    failures.push(format!("{name}: the answer lacks '{}':\n{head}", header.unwrap()));
                }
            }
            Err(e) => failures.push(format!("{name}: no HTTP answer ({e}), want {status}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), bad_handshakes().len(), failures.join("\n"));
    // A good request after all that is upgraded.
    RawWs::connect(&server.addr);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn frames_sent_right_behind_the_upgrade_request_are_read() {
    let dir = support::temp_dir("rfc6455-pipelined");
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    let mut bytes = support::upgrade_request("/ws").into_bytes();
    bytes.extend(ws_frame(0x81, br#"{"op":"ping","req":7}"#, true));
    stream.write_all(&bytes).unwrap();
    let head = support::read_http_head(&mut stream, Instant::now() + Duration::from_secs(5)).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = RawWs { stream };
    let mut ops = Vec::new();
    for _ in 0..2 {
        let frame = ws.read_frame(Instant::now() + Duration::from_secs(5)).unwrap();
        ops.push(String::from_utf8_lossy(&frame.payload).into_owned());
    }
    assert!(ops[0].contains("welcome") && ops[1].contains("pong"), "{ops:?}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
