//! Target `frame`: the protocol codec over arbitrary text. `protocol::decode` must never
//! panic and must answer as serde alone does (its hand-written `pub` reader included);
//! whatever it accepts re-encodes to a frame that decodes to the same op (checked by encoding
//! twice), nests within `json_depth_max`, and every error it gives encodes, with its echoed
//! `req`, to valid JSON.
//!
//! Input: one byte for `json_depth_max`, one for the mode, then either the frame's bytes as
//! they are (lossy UTF-8) or a description from which a near-valid frame is built, so that the
//! per-op field checks are reached without the fuzzer having to learn JSON first.

use arbitrary::{Arbitrary, Result, Unstructured};
use ferry_core::protocol::{self, ClientOp, Filter, StartFrom, JSON_DEPTH_MAX_LIMIT, REQ_BYTES_MAX};
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
        ClientOp::Sub { req, .. } | ClientOp::Pull { req, .. } | ClientOp::Fetch { req, .. } | ClientOp::Unsub { req, .. } | ClientOp::Ping { req } => req,
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

/// Writes the op back as a client frame, fields in a fixed order.
pub fn encode_op(op: &ClientOp) -> String {
    let mut f = Fields(String::from("{"));
    let raw = |r: &protocol::Req| r.as_ref().map(|r| r.get().to_string());
    match op {
        ClientOp::Hello { token } => {
            f.str("op", "hello");
            if let Some(token) = token {
                f.str("token", token);
            }
        }
        ClientOp::Pub { req, topic, body, key, producer, seq } => {
            f.str("op", "pub");
            f.raw_opt("req", raw(req));
            f.str("topic", topic);
            f.raw("body", body.get());
            if let Some(key) = key {
                f.str("key", key);
            }
            if let Some(producer) = producer {
                f.str("producer", producer);
            }
            f.raw_opt("seq", seq.map(|s| s.to_string()));
        }
        ClientOp::Sub { req, topic, group, from, window, filter } => {
            f.str("op", "sub");
            f.raw_opt("req", raw(req));
            f.str("topic", topic);
            f.str("group", group);
            match from {
                StartFrom::Latest => f.str("from", "latest"),
                StartFrom::Earliest => f.str("from", "earliest"),
                StartFrom::Id(id) => f.raw("from", &id.to_string()),
            }
            f.raw_opt("window", window.map(|w| w.to_string()));
            f.raw_opt("filter", filter.as_ref().map(|filter| filter.to_json().to_string()));
        }
        ClientOp::Ack { topic, group, ids } | ClientOp::Nack { topic, group, ids, .. } => {
            f.str("op", if matches!(op, ClientOp::Ack { .. }) { "ack" } else { "nack" });
            f.str("topic", topic);
            f.str("group", group);
            f.raw("ids", &serde_json::to_string(ids).expect("ids serialize"));
            if let ClientOp::Nack { delay_ms, .. } = op {
                f.raw("delay_ms", &delay_ms.to_string());
            }
        }
        ClientOp::Pull { req, topic, group, max, wait_ms } => {
            f.str("op", "pull");
            f.raw_opt("req", raw(req));
            f.str("topic", topic);
            f.str("group", group);
            f.raw("max", &max.to_string());
            f.raw("wait_ms", &wait_ms.to_string());
        }
        ClientOp::Fetch { req, topic, from, to } => {
            f.str("op", "fetch");
            f.raw_opt("req", raw(req));
            f.str("topic", topic);
            f.raw("from", &from.to_string());
            f.raw("to", &to.to_string());
        }
        ClientOp::Unsub { req, topic, group } => {
            f.str("op", "unsub");
            f.raw_opt("req", raw(req));
            f.str("topic", topic);
            f.str("group", group);
        }
        ClientOp::Ping { req } => {
            f.str("op", "ping");
            f.raw_opt("req", raw(req));
        }
    }
    f.0.push('}');
    f.0
}

struct Fields(String);

impl Fields {
    fn raw(&mut self, name: &str, json: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        protocol::write_json_str(&mut self.0, name);
        self.0.push(':');
        self.0.push_str(json);
    }
    fn raw_opt(&mut self, name: &str, json: Option<String>) {
        if let Some(json) = json {
            self.raw(name, &json);
        }
    }
    fn str(&mut self, name: &str, value: &str) {
        let mut json = String::new();
        protocol::write_json_str(&mut json, value);
        self.raw(name, &json);
    }
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
