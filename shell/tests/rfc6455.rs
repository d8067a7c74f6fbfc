//! RFC 6455 at the edges, with hand-made bytes over plain sockets: a frame that breaks the
//! protocol is answered with a close frame carrying the right status code before the socket
//! closes.

mod support;

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
