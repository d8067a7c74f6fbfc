//! Target `frame`: the protocol codec over arbitrary text. `protocol::decode` must never
//! panic and must answer as serde alone does (its hand-written `pub` reader included);
//! whatever it accepts the client-side encoder writes back to a frame that decodes to the same
//! op, it nests within `json_depth_max`, and every frame the server would answer with (errors
//! with their echoed `req` included) is JSON that the client-side decoder reads back.
//!
//! Input: one byte for `json_depth_max`, one for the mode, then either the frame's bytes as
//! they are (lossy UTF-8) or a description from which a near-valid frame is built, so that the
//! per-op field checks are reached without the fuzzer having to learn JSON first.

use arbitrary::{Arbitrary, Result, Unstructured};
use ferry_core::protocol::{self, ClientOp, Filter, ServerFrame, JSON_DEPTH_MAX_LIMIT, REQ_BYTES_MAX};
use serde_json::value::RawValue;

pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(depth_byte) = u8::arbitrary(&mut u) else { return };
    let depth_max = 2 + u32::from(depth_byte) % (JSON_DEPTH_MAX_LIMIT - 1);
    let Ok(mode) = u8::arbitrary(&mut u) else { return };
    let text = if mode & 1 == 0 {
        String::from_utf8_lossy(u.take_rest()).into_owned()
    } else {
        match build_frame(&mut u) {
            Ok(text) => text,
            Err(_) => return,
        }
    };
    check_frame(&text, depth_max);
}

/// Decodes `text` and checks what came out.
pub fn check_frame(text: &str, depth_max: u32) {
    let decoded = protocol::decode(text, depth_max);
    assert_eq!(decoded, protocol::decode_without_pub_reader(text, depth_max), "the pub reader and serde differ on {text:?}");
    match decoded {
        Ok(op) => {
            serde_json::from_str::<Box<RawValue>>(text).unwrap_or_else(|e| panic!("decode accepted invalid JSON {text:?}: {e}"));
            let depth = nesting(text);
            assert!(depth <= depth_max as usize, "accepted a frame nesting {depth} levels with json_depth_max {depth_max}: {text:?}");
            check_op(&op);
            let first = encode_op(&op);
            let again = protocol::decode(&first, JSON_DEPTH_MAX_LIMIT).unwrap_or_else(|e| panic!("re-encoded {first:?} (from {text:?}) does not decode: {e:?}"));
            assert_eq!(again, op, "the client encoder's {first:?} decodes to another op (from {text:?})");
            let second = encode_op(&again);
            assert_eq!(first, second, "re-encoding is not stable (from {text:?})");
        }
        Err(error) => {
            if let Some(req) = &error.req {
                assert!(req.len() <= REQ_BYTES_MAX, "echoed req too long: {req}");
            }
            let mut out = String::new();
            protocol::encode_error(&mut out, error.req.as_deref(), error.code, &error.message);
            #[derive(serde::Deserialize)]
            struct ErrorFrame<'a> {
                op: &'a str,
                code: &'a str,
                req: Option<&'a RawValue>,
            }
            // Checked as JSON text: a number beyond f64 (1e400) is valid JSON that serde_json's
            // `Value` refuses, and a `req` is echoed exactly as the client wrote it.
            let frame: ErrorFrame = serde_json::from_str(&out).unwrap_or_else(|e| panic!("error frame {out:?} is not JSON: {e}"));
            assert_eq!((frame.op, frame.code), ("error", error.code.as_str()));
            assert_eq!(frame.req.map(RawValue::get), error.req.as_deref(), "req not echoed as given");
            match protocol::decode_server_frame(&out) {
                Ok(ServerFrame::Error { req, code, .. }) => {
                    assert_eq!((req.map(|r| r.get()), code.as_ref()), (error.req.as_deref(), error.code.as_str()), "error read back from {out:?}")
                }
                other => panic!("error frame {out:?} read back as {other:?}"),
            }
        }
    }
}

/// Levels of `[`/`{` nesting of valid JSON text, its outermost value's being 1.
fn nesting(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    deepest
}

fn check_op(op: &ClientOp) {
    let req = match op {
        ClientOp::Pub { req, body, .. } => {
            serde_json::from_str::<Box<RawValue>>(body.get()).unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", body.get()));
            req
        }
        ClientOp::Sub { req, .. }
        | ClientOp::Pull { req, .. }
        | ClientOp::Fetch { req, .. }
        | ClientOp::Latest { req, .. }
        | ClientOp::Unsub { req, .. }
        | ClientOp::Ping { req } => req,
        ClientOp::Hello { .. } | ClientOp::Ack { .. } | ClientOp::Nack { .. } => &None,
    };
    if let Some(req) = req {
        let text = req.get();
        assert!(text.len() <= REQ_BYTES_MAX && matches!(text.as_bytes()[0], b'"' | b'-' | b'0'..=b'9'), "accepted req {text}");
    }
    // The server's own frames built from what was accepted are valid JSON.
    if let ClientOp::Pub { req, topic, body, key, .. } = op {
        let mut out = String::new();
        protocol::encode_puback(&mut out, req.as_ref().map(|r| r.get()), topic, 1);
        parse(&out);
        out.clear();
        let msg = protocol::MsgFrame { topic, group: "g", id: 2, prev: 1, key: key.as_deref(), body: body.get(), attempt: 1, ts_ms: 3 };
        protocol::encode_msg(&mut out, &msg);
        parse(&out);
        // A client reads back what the server wrote.
        match protocol::decode_server_frame(&out) {
            Ok(ServerFrame::Msg { topic: read_topic, key: read_key, body: read_body, .. }) => {
                assert_eq!((read_topic, read_key, read_body), (topic.clone(), key.clone(), *body), "msg read back from {out:?}")
            }
            other => panic!("msg {out:?} read back as {other:?}"),
        }
        out.clear();
        protocol::encode_fetched_start(&mut out, req.as_ref().map(|r| r.get()), topic);
        protocol::encode_fetched_message(&mut out, true, 2, key.as_deref(), body.get(), 3);
        protocol::encode_fetched_end(&mut out);
        parse(&out);
    }
    if let ClientOp::Sub { filter: Some(filter), .. } = op {
        assert_eq!(Filter::from_json(filter.to_json()).as_ref(), Some(filter), "filter does not round-trip");
        filter.matches(Some("k"), "{\"a\":{\"b\":1}}");
        filter.matches(None, "not json");
    }
}

/// Valid JSON text (numbers out of f64's range included, see above).
fn parse(text: &str) {
    serde_json::from_str::<Box<RawValue>>(text).unwrap_or_else(|e| panic!("ferry would send invalid JSON {text:?}: {e}"));
}

/// The op written back as a client frame, by the core's client-side encoder.
pub fn encode_op(op: &ClientOp) -> String {
    let mut out = String::new();
    protocol::encode_client_op(&mut out, op);
    out
}

// ---- building near-valid frames from the input

const NAMES: &[&str] = &[
    "op",
    "req",
    "token",
    "topic",
    "group",
    "body",
    "key",
    "producer",
    "seq",
    "from",
    "to",
    "window",
    "filter",
    "ids",
    "delay_ms",
    "max",
    "wait_ms",
    "key_prefix",
    "field",
    "equals",
];
const OPS: &[&str] = &["hello", "pub", "sub", "ack", "nack", "pull", "fetch", "unsub", "ping", "latest", "earliest", "puback"];

/// A frame: usually an object of mostly known fields, each value drawn from JSON's shapes;
/// sometimes with stray bytes spliced in.
fn build_frame(u: &mut Unstructured<'_>) -> Result<String> {
    let mut out = String::new();
    let spaced = bool::arbitrary(u)?;
    out.push('{');
    let fields = u.int_in_range(0..=8)?;
    for i in 0..fields {
        if i > 0 {
            out.push(',');
        }
        if spaced {
            out.push_str(" \n");
        }
        let name = if u.ratio(1, 12)? { String::arbitrary(u)? } else { (*u.choose(NAMES)?).to_string() };
        protocol::write_json_str(&mut out, &name);
        out.push(':');
        json_value(u, &mut out, 0)?;
    }
    out.push('}');
    if u.ratio(1, 16)? {
        // Splice arbitrary text somewhere (broken JSON, stray brackets, trailing data).
        let junk = String::arbitrary(u)?;
        let mut at = u.int_in_range(0..=out.len())?;
        while !out.is_char_boundary(at) {
            at -= 1;
        }
        out.insert_str(at, &junk);
    }
    Ok(out)
}

fn json_value(u: &mut Unstructured<'_>, out: &mut String, depth: u32) -> Result<()> {
    let kind = if depth >= 140 { u.int_in_range(0..=6)? } else { u.int_in_range(0..=10)? };
    match kind {
        0 => out.push_str("null"),
        1 => out.push_str(if bool::arbitrary(u)? { "true" } else { "false" }),
        2 => out.push_str(&u64::arbitrary(u)?.to_string()),
        3 => out.push_str(&u.int_in_range(0u64..=20)?.to_string()),
        4 => {
            let x = f64::arbitrary(u)?;
            // Non-finite floats are not JSON; serde_json writes them as null.
            out.push_str(&serde_json::to_string(&x).unwrap_or_else(|_| "null".into()));
        }
        5 => protocol::write_json_str(out, u.choose(OPS)?),
        6 => {
            let s = String::arbitrary(u)?;
            protocol::write_json_str(out, &s);
        }
        7 => {
            out.push_str(u.choose(&["-1", "1e400", "-0", "18446744073709551616", "4294967296", "1.5", "1E2", "0.0"])?);
        }
        8 => {
            // A deep run of brackets, to meet the depth limit.
            let levels = u.int_in_range(1..=200)?;
            let open = if bool::arbitrary(u)? { "[" } else { "{\"a\":" };
            let close = if open == "[" { "]" } else { "}" };
            out.push_str(&open.repeat(levels));
            out.push('1');
            out.push_str(&close.repeat(levels));
        }
        9 => {
            out.push('[');
            for i in 0..u.int_in_range(0..=4)? {
                if i > 0 {
                    out.push(',');
                }
                json_value(u, out, depth + 1)?;
            }
            out.push(']');
        }
        _ => {
            out.push('{');
            for i in 0..u.int_in_range(0..=4)? {
                if i > 0 {
                    out.push(',');
                }
                protocol::write_json_str(out, u.choose(NAMES)?);
                out.push(':');
                json_value(u, out, depth + 1)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// The frame text the target builds from an input, and its `json_depth_max` (to study a finding).
pub fn describe(data: &[u8]) -> String {
    let mut u = Unstructured::new(data);
    let depth = u8::arbitrary(&mut u).map(|b| 2 + u32::from(b) % (JSON_DEPTH_MAX_LIMIT - 1));
    let mode = u8::arbitrary(&mut u).unwrap_or(0);
    let text = if mode & 1 == 0 { Ok(String::from_utf8_lossy(u.take_rest()).into_owned()) } else { build_frame(&mut u) };
    format!("json_depth_max {depth:?}\n{text:?}")
}
