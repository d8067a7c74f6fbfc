//! Server → client frames, written by hand into a reused String: this is the hot path.

use super::{ErrorCode, PROTOCOL_VERSION};
use std::fmt::Write as _;

/// Appends `n` in decimal. The hot frames (`msg`, `puback`) carry four numbers each:
/// `write!` through `fmt` took about 5 % of a 1 → 10 fan-out's server CPU.
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // SAFETY: only ASCII digits were written into `digits[at..]`, which is valid UTF-8 (checking
    // it took 2.5 % of a fan-out's server CPU).
    out.push_str(unsafe { std::str::from_utf8_unchecked(&digits[at..]) });
}

pub fn write_json_str(out: &mut String, s: &str) {
    // Names and keys rarely need escaping: copy them straight, without an allocation.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    // serde_json's escaper is the reference; writing into a String cannot fail.
    let escaped = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    out.push_str(&escaped);
}

fn write_req(out: &mut String, req: Option<&str>) {
    if let Some(req) = req {
        out.push_str("\"req\":");
        out.push_str(req);
        out.push(',');
    }
}

/// `welcome`, with `fields` (name, value) after the base ones (a cluster's view of itself).
pub fn encode_welcome(out: &mut String, server: &str, fields: &[(&str, serde_json::Value)]) {
    out.push_str("{\"op\":\"welcome\",\"server\":");
    write_json_str(out, server);
    let _ = write!(out, ",\"version\":{PROTOCOL_VERSION}");
    for (name, value) in fields {
        out.push(',');
        write_json_str(out, name);
        let _ = write!(out, ":{value}");
    }
    out.push('}');
}

pub fn encode_puback(out: &mut String, req: Option<&str>, topic: &str, id: u64) {
    out.push_str("{\"op\":\"puback\",");
    write_req(out, req);
    out.push_str("\"topic\":");
    write_json_str(out, topic);
    out.push_str(",\"id\":");
    push_u64(out, id);
    out.push('}');
}

pub fn encode_suback(out: &mut String, req: Option<&str>, topic: &str, group: &str) {
    out.push_str("{\"op\":\"suback\",");
    write_req(out, req);
    out.push_str("\"topic\":");
    write_json_str(out, topic);
    out.push_str(",\"group\":");
    write_json_str(out, group);
    out.push('}');
}

pub struct MsgFrame<'a> {
    pub topic: &'a str,
    pub group: &'a str,
    pub id: u64,
    pub prev: u64,
    pub key: Option<&'a str>,
    pub body: &'a str,
    pub attempt: u32,
    pub ts_ms: u64,
}

pub fn encode_msg(out: &mut String, m: &MsgFrame<'_>) {
    out.push_str("{\"op\":\"msg\",\"topic\":");
    write_json_str(out, m.topic);
    out.push_str(",\"group\":");
    write_json_str(out, m.group);
    out.push_str(",\"id\":");
    push_u64(out, m.id);
    out.push_str(",\"prev\":");
    push_u64(out, m.prev);
    if let Some(key) = m.key {
        out.push_str(",\"key\":");
        write_json_str(out, key);
    }
    out.push_str(",\"body\":");
    out.push_str(m.body);
    out.push_str(",\"attempt\":");
    push_u64(out, m.attempt.into());
    out.push_str(",\"ts\":");
    push_u64(out, m.ts_ms);
    out.push('}');
}

pub fn encode_pulled(out: &mut String, req: Option<&str>, count: u32) {
    out.push_str("{\"op\":\"pulled\",");
    write_req(out, req);
    let _ = write!(out, "\"count\":{count}}}");
}

pub fn encode_fetched_start(out: &mut String, req: Option<&str>, topic: &str) {
    encode_messages_start(out, "fetched", req, topic);
}

/// The start of a `latest` answer; its messages as `fetched`'s, then `encode_fetched_end`.
pub fn encode_latest_start(out: &mut String, req: Option<&str>, topic: &str) {
    encode_messages_start(out, "latest", req, topic);
}

fn encode_messages_start(out: &mut String, op: &str, req: Option<&str>, topic: &str) {
    out.push_str("{\"op\":\"");
    out.push_str(op);
    out.push_str("\",");
    write_req(out, req);
    out.push_str("\"topic\":");
    write_json_str(out, topic);
    out.push_str(",\"messages\":[");
}

pub fn encode_fetched_message(out: &mut String, first: bool, id: u64, key: Option<&str>, body: &str, ts_ms: u64) {
    if !first {
        out.push(',');
    }
    out.push_str("{\"id\":");
    push_u64(out, id);
    if let Some(key) = key {
        out.push_str(",\"key\":");
        write_json_str(out, key);
    }
    out.push_str(",\"body\":");
    out.push_str(body);
    out.push_str(",\"ts\":");
    push_u64(out, ts_ms);
    out.push('}');
}

/// What `encode_fetched_end` appends, for size checks before it.
pub const FETCHED_END: &str = "]}";

pub fn encode_fetched_end(out: &mut String) {
    out.push_str(FETCHED_END);
}

pub fn encode_pong(out: &mut String, req: Option<&str>) {
    out.push_str("{\"op\":\"pong\",");
    write_req(out, req);
    if out.ends_with(',') {
        out.pop();
    }
    out.push('}');
}

pub fn encode_error(out: &mut String, req: Option<&str>, code: ErrorCode, message: &str) {
    encode_error_retry(out, req, code, message, None);
}

/// An `error` with `retry_after_ms`, the earliest sensible retry (with `overloaded`).
pub fn encode_error_retry(out: &mut String, req: Option<&str>, code: ErrorCode, message: &str, retry_after_ms: Option<u64>) {
    out.push_str("{\"op\":\"error\",");
    write_req(out, req);
    out.push_str("\"code\":\"");
    out.push_str(code.as_str());
    out.push_str("\",\"message\":");
    write_json_str(out, message);
    if let Some(ms) = retry_after_ms {
        out.push_str(",\"retry_after_ms\":");
        out.push_str(&ms.to_string());
    }
    out.push('}');
}
