//! The docs/PROTOCOL.md v1 JSON codec. The core owns it so the simulator and fuzzers exercise the
//! very decoder production runs; the shell only hands over each text frame's payload.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;

mod client_side;
mod pub_frame;
mod server_side;

pub use client_side::{decode_server_frame, encode_client_op, FetchedMessage, ServerFrame};
pub use server_side::*;

pub const PROTOCOL_VERSION: u32 = 1;

/// Longest `req` accepted, as JSON text (a string counts its quotes and escapes). A `req` is
/// echoed in every reply, so it is bounded like any other buffer.
pub const REQ_BYTES_MAX: usize = 128;

/// Highest `json_depth_max` a config may set. serde_json (ferry's own clients, and many
/// others) parses at most 127 levels; a `fetched` frame nests each body 3 levels deeper than
/// the frame's own object, so a body may nest at most 124 levels, i.e. a `pub` frame 125.
pub const JSON_DEPTH_MAX_LIMIT: u32 = 125;

/// Error codes of PROTOCOL.md, spelled exactly as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadFrame,
    UnknownOp,
    TooLarge,
    Unauthorized,
    Forbidden,
    NoSuchTopic,
    NotSubscribed,
    Overloaded,
    Conflict,
    Internal,
    /// This node cannot commit or serve the topic now (in a cluster: no leader reachable for
    /// it); retry, possibly on another node.
    Unavailable,
}

impl ErrorCode {
    /// Every code, in the order of their counts in `Stats::errors`.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadFrame,
        ErrorCode::UnknownOp,
        ErrorCode::TooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NoSuchTopic,
        ErrorCode::NotSubscribed,
        ErrorCode::Overloaded,
        ErrorCode::Conflict,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NoSuchTopic => "no_such_topic",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// JSON text checked valid when its frame was decoded (a `req`, a publish's `body`), borrowed
/// from the frame as the client wrote it, without surrounding whitespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawJson<'a>(&'a str);

impl<'a> RawJson<'a> {
    pub fn get(self) -> &'a str {
        self.0
    }
}

impl<'a> From<&'a RawValue> for RawJson<'a> {
    fn from(raw: &'a RawValue) -> Self {
        RawJson(raw.get())
    }
}

/// A request's `req` echoed back verbatim; clients may use numbers or strings. Borrowed from
/// the frame's text, like a publish's `body`: decoding copies neither.
pub type Req<'a> = Option<RawJson<'a>>;

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    KeyPrefix(String),
    FieldEquals { path: Vec<String>, equals: Value },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    Latest,
    Earliest,
    Id(u64),
}

/// A name from a frame: borrowed from its text unless it holds escapes.
pub type Name<'a> = std::borrow::Cow<'a, str>;

#[derive(Debug, PartialEq)]
pub enum ClientOp<'a> {
    Hello {
        token: Option<String>,
    },
    Pub {
        req: Req<'a>,
        topic: Name<'a>,
        body: RawJson<'a>,
        key: Option<Name<'a>>,
        producer: Option<Name<'a>>,
        seq: Option<u64>,
    },
    Sub {
        req: Req<'a>,
        topic: Name<'a>,
        group: Name<'a>,
        from: StartFrom,
        window: Option<u32>,
        filter: Option<Filter>,
        coalesce_ms: Option<u64>,
    },
    Ack {
        topic: Name<'a>,
        group: Name<'a>,
        ids: Vec<u64>,
    },
    Nack {
        topic: Name<'a>,
        group: Name<'a>,
        ids: Vec<u64>,
        delay_ms: u64,
    },
    Pull {
        req: Req<'a>,
        topic: Name<'a>,
        group: Name<'a>,
        max: u32,
        wait_ms: u64,
    },
    Fetch {
        req: Req<'a>,
        topic: Name<'a>,
        from: u64,
        to: u64,
    },
    /// The newest stored message of each key (of `keys`, or all) with an id above `since`.
    Latest {
        req: Req<'a>,
        topic: Name<'a>,
        keys: Option<Vec<String>>,
        since: u64,
    },
    Unsub {
        req: Req<'a>,
        topic: Name<'a>,
        group: Name<'a>,
    },
    Ping {
        req: Req<'a>,
    },
}

impl ClientOp<'_> {
    /// The topic the op names (`hello` and `ping` name none).
    pub fn topic(&self) -> Option<&str> {
        match self {
            ClientOp::Pub { topic, .. }
            | ClientOp::Sub { topic, .. }
            | ClientOp::Ack { topic, .. }
            | ClientOp::Nack { topic, .. }
            | ClientOp::Pull { topic, .. }
            | ClientOp::Fetch { topic, .. }
            | ClientOp::Latest { topic, .. }
            | ClientOp::Unsub { topic, .. } => Some(topic),
            ClientOp::Hello { .. } | ClientOp::Ping { .. } => None,
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct DecodeError {
    pub req: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Deserialize)]
struct WireFrame<'a> {
    /// Borrowed unless it holds escapes; required (see `decode_fields`).
    #[serde(default, borrow, deserialize_with = "borrowed_name")]
    op: Option<Name<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    req: Option<&'a RawValue>,
    token: Option<String>,
    #[serde(default, borrow, deserialize_with = "borrowed_name")]
    topic: Option<Name<'a>>,
    #[serde(default, borrow, deserialize_with = "borrowed_name")]
    group: Option<Name<'a>>,
    /// Any JSON, `null` included (docs/PROTOCOL.md).
    #[serde(default, borrow, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "borrowed_name")]
    key: Option<Name<'a>>,
    #[serde(default, borrow, deserialize_with = "borrowed_name")]
    producer: Option<Name<'a>>,
    seq: Option<u64>,
    from: Option<Value>,
    to: Option<u64>,
    window: Option<u32>,
    filter: Option<Value>,
    coalesce_ms: Option<u64>,
    ids: Option<Vec<u64>>,
    delay_ms: Option<u64>,
    max: Option<u32>,
    wait_ms: Option<u64>,
    keys: Option<Vec<String>>,
    since: Option<u64>,
}

/// An optional name, borrowed from the text when it holds no escapes (serde's own `Cow`
/// deserialization copies, and borrows only for a `Cow` field outside an `Option`).
fn borrowed_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Name<'de>>, D::Error> {
    struct NameVisitor;
    impl<'de> serde::de::Visitor<'de> for NameVisitor {
        type Value = Option<Name<'de>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Name::Borrowed(v)))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Name::Owned(v.to_owned())))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Name::Owned(v)))
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_str(self)
        }
    }
    deserializer.deserialize_option(NameVisitor)
}

/// A field that is present, even as `null`: `Option<&RawValue>` alone would read
/// `"req": null` as no `req`, and `null` is not a valid `req`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Decodes one text frame. Every failure carries the frame's `req` when it had a valid one.
/// `json_depth_max` bounds nesting over the whole frame; the frame's own object is level 1.
pub fn decode(text: &str, json_depth_max: u32) -> Result<ClientOp<'_>, DecodeError> {
    check_frame_shape(text, json_depth_max)?;
    match pub_frame::decode(text) {
        Some(op) => Ok(op),
        None => decode_with_serde(text),
    }
}

/// `decode` without the hand-written `pub` reader: what that reader is tested against.
#[doc(hidden)]
pub fn decode_without_pub_reader(text: &str, json_depth_max: u32) -> Result<ClientOp<'_>, DecodeError> {
    check_frame_shape(text, json_depth_max)?;
    decode_with_serde(text)
}

fn check_frame_shape(text: &str, json_depth_max: u32) -> Result<(), DecodeError> {
    match check_shape(text.as_bytes(), json_depth_max) {
        Ok(()) => {}
        Err(Shape::NotObject) => return Err(bad_frame(None, "a frame must be a JSON object".into())),
        Err(Shape::TooDeep) => {
            let message = format!("frame nests deeper than {json_depth_max} levels (json_depth_max)");
            return Err(bad_frame(req_of_unparsed(text), message));
        }
    }
    Ok(())
}

fn decode_with_serde(text: &str) -> Result<ClientOp<'_>, DecodeError> {
    let mut frame: WireFrame<'_> = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(e) => return Err(bad_frame(req_of_unparsed(text), e.to_string())),
    };
    let req = match frame.req.take() {
        None => Ok(None),
        Some(req) if valid_req(req.get()) => Ok(Some(RawJson::from(req))),
        Some(_) => Err((ErrorCode::BadFrame, format!("'req' must be a string or a number of at most {REQ_BYTES_MAX} bytes of JSON"))),
    };
    // Echoed in an error only: copied then, not before.
    let echo = req.as_ref().ok().copied().flatten();
    decode_fields(frame, req).map_err(|(code, message)| DecodeError { req: echo.map(|r| r.get().to_string()), code, message })
}

fn bad_frame(req: Option<String>, message: String) -> DecodeError {
    DecodeError { req, code: ErrorCode::BadFrame, message }
}

/// A string or a number, short enough to echo. `text` is valid JSON without surrounding
/// whitespace, so the first byte tells the type.
fn valid_req(text: &str) -> bool {
    text.len() <= REQ_BYTES_MAX && matches!(text.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

/// A frame that failed typed decoding may still be a JSON object with a usable `req`.
/// A `req` as the text to echo back.
pub fn req_text(req: &Req<'_>) -> Option<String> {
    req.as_ref().map(|r| r.get().to_string())
}

fn req_of_unparsed(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct OnlyReq<'a> {
        #[serde(default, borrow, deserialize_with = "present")]
        req: Option<&'a RawValue>,
    }
    serde_json::from_str::<OnlyReq>(text).ok().and_then(|o| o.req).map(RawValue::get).filter(|r| valid_req(r)).map(str::to_string)
}

/// `[` (0x5b) and `{` (0x7b) differ only in bit 0x20. Counted per chunk of at most 255 bytes
/// into a u8, the loop compiles to wide SIMD compares and adds.
fn count_opening_brackets(bytes: &[u8]) -> usize {
    bytes.chunks(255).map(|chunk| chunk.iter().fold(0u8, |n, b| n + u8::from(b | 0x20 == b'{')) as usize).sum()
}

#[derive(Debug, PartialEq)]
enum Shape {
    NotObject,
    TooDeep,
}

/// Checked before serde sees the frame: serde_json skips a `RawValue` (`body`, `req`) at any
/// depth without its recursion limit, and serde's derive would read a top-level array as the
/// frame's fields by position. Invalid JSON may be measured loosely here; serde refuses it next.
fn check_shape(bytes: &[u8], depth_max: u32) -> Result<(), Shape> {
    let Some(start) = bytes.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) else { return Err(Shape::NotObject) };
    if bytes[start] != b'{' {
        return Err(Shape::NotObject);
    }
    // Fast path, the common case: a frame with no more brackets in all (strings included)
    // than levels allowed cannot nest deeper. This count vectorizes; the exact walk does not.
    if count_opening_brackets(&bytes[start..]) <= depth_max as usize {
        return Ok(());
    }
    let mut depth = 0u32;
    let mut at = start;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                // Brackets inside a string are text; a backslash escapes the byte after it.
                at += 1;
                while at < bytes.len() && bytes[at] != b'"' {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > depth_max {
                    return Err(Shape::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    Ok(())
}

type FieldResult<T> = Result<T, (ErrorCode, String)>;

fn need<T>(value: Option<T>, op: &str, field: &str) -> FieldResult<T> {
    value.ok_or_else(|| (ErrorCode::BadFrame, format!("op '{op}' needs field '{field}'")))
}

/// `req` is checked here, per op: `hello`, `ack` and `nack` define no `req`, so for them it
/// is an unknown field and ignored (a bad one is only never echoed).
fn decode_fields<'a>(f: WireFrame<'a>, req: FieldResult<Req<'a>>) -> FieldResult<ClientOp<'a>> {
    let Some(op) = f.op.as_deref() else { return Err((ErrorCode::BadFrame, "missing field `op`".into())) };
    Ok(match op {
        "hello" => ClientOp::Hello { token: f.token },
        "pub" => ClientOp::Pub { req: req?, topic: need(f.topic, op, "topic")?, body: need(f.body, op, "body")?.into(), key: f.key, producer: f.producer, seq: f.seq },
        "sub" => ClientOp::Sub {
            req: req?,
            topic: need(f.topic, op, "topic")?,
            group: need(f.group, op, "group")?,
            from: decode_from(f.from)?,
            window: f.window,
            filter: f.filter.map(decode_filter).transpose()?,
            coalesce_ms: f.coalesce_ms,
        },
        "ack" => ClientOp::Ack { topic: need(f.topic, op, "topic")?, group: need(f.group, op, "group")?, ids: need(f.ids, op, "ids")? },
        "nack" => ClientOp::Nack { topic: need(f.topic, op, "topic")?, group: need(f.group, op, "group")?, ids: need(f.ids, op, "ids")?, delay_ms: f.delay_ms.unwrap_or(0) },
        "pull" => ClientOp::Pull {
            req: req?,
            topic: need(f.topic, op, "topic")?,
            group: need(f.group, op, "group")?,
            max: need(f.max, op, "max")?,
            wait_ms: need(f.wait_ms, op, "wait_ms")?,
        },
        "fetch" => {
            let req = req?;
            let from = match need(f.from, op, "from")? {
                Value::Number(n) if n.as_u64().is_some() => n.as_u64().unwrap_or(0),
                _ => return Err((ErrorCode::BadFrame, "fetch 'from' must be an id (u64)".into())),
            };
            ClientOp::Fetch { req, topic: need(f.topic, op, "topic")?, from, to: need(f.to, op, "to")? }
        }
        "latest" => ClientOp::Latest { req: req?, topic: need(f.topic, op, "topic")?, keys: f.keys, since: f.since.unwrap_or(0) },
        "unsub" => ClientOp::Unsub { req: req?, topic: need(f.topic, op, "topic")?, group: need(f.group, op, "group")? },
        "ping" => ClientOp::Ping { req: req? },
        other => return Err((ErrorCode::UnknownOp, format!("unknown op '{}'", truncate_for_message(other)))),
    })
}

fn truncate_for_message(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn decode_from(from: Option<Value>) -> FieldResult<StartFrom> {
    match from {
        None => Ok(StartFrom::Latest),
        Some(Value::String(s)) if s == "latest" => Ok(StartFrom::Latest),
        Some(Value::String(s)) if s == "earliest" => Ok(StartFrom::Earliest),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(StartFrom::Id(n.as_u64().unwrap_or(0))),
        Some(_) => Err((ErrorCode::BadFrame, "'from' must be \"latest\", \"earliest\" or an id".into())),
    }
}

fn decode_filter(filter: Value) -> FieldResult<Filter> {
    let bad = |m: &str| (ErrorCode::BadFrame, format!("bad filter: {m}"));
    let Value::Object(map) = filter else { return Err(bad("must be an object")) };
    if let Some(prefix) = map.get("key_prefix") {
        let Value::String(prefix) = prefix else { return Err(bad("'key_prefix' must be a string")) };
        return Ok(Filter::KeyPrefix(prefix.clone()));
    }
    if let Some(field) = map.get("field") {
        let Value::String(path) = field else { return Err(bad("'field' must be a string")) };
        let Some(equals) = map.get("equals") else { return Err(bad("'field' needs 'equals'")) };
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(bad("'field' must be a dot.separated.path of non-empty names"));
        }
        return Ok(Filter::FieldEquals { path: path.split('.').map(String::from).collect(), equals: equals.clone() });
    }
    Err(bad("v1 knows {\"key_prefix\"} and {\"field\",\"equals\"}"))
}

impl Filter {
    /// `body` is the message's raw JSON; a body that does not parse never matches a field filter.
    pub fn matches(&self, key: Option<&str>, body: &str) -> bool {
        match self {
            Filter::KeyPrefix(prefix) => key.is_some_and(|k| k.starts_with(prefix.as_str())),
            Filter::FieldEquals { path, equals } => {
                let Ok(value) = serde_json::from_str::<Value>(body) else { return false };
                let mut at = &value;
                for name in path {
                    match at.get(name) {
                        Some(next) => at = next,
                        None => return false,
                    }
                }
                at == equals
            }
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Filter::KeyPrefix(p) => serde_json::json!({ "key_prefix": p }),
            Filter::FieldEquals { path, equals } => serde_json::json!({ "field": path.join("."), "equals": equals }),
        }
    }

    pub fn from_json(value: Value) -> Option<Filter> {
        decode_filter(value).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn decode_default(text: &str) -> Result<ClientOp<'_>, DecodeError> {
        decode(text, Config::default().json_depth_max)
    }

    #[test]
    fn shape_counts_nesting_outside_strings_only() {
        // Brackets inside the strings push the quick count over the limit: the exact walk runs.
        assert_eq!(check_shape(br#"{"s":"[[[[\"[{","u":[1]}"#, 2), Ok(()));
        // An escaped backslash does not escape the quote after it.
        assert_eq!(check_shape(br#"{"s":"\\","t":"[[[","u":[[1]]}"#, 2), Err(Shape::TooDeep));
        assert_eq!(check_shape(br#"{"s":"\\\"[[[","u":[1]}"#, 2), Ok(()));
        assert_eq!(check_shape(b" \r\n\t{\"a\":[{}]}", 3), Ok(()));
        assert_eq!(check_shape(br#"{"a":[{}]}"#, 2), Err(Shape::TooDeep));
        for not_object in [&b"[{}]"[..], b"\"{\"", b"1", b"null", b"  ", b""] {
            assert_eq!(check_shape(not_object, 9), Err(Shape::NotObject), "{not_object:?}");
        }
        // Broken JSON ends the walk without a panic (serde refuses it next).
        assert_eq!(check_shape(br#"{"a":"[[[[\"#, 2), Ok(()));
        assert_eq!(check_shape(b"{]]]]]][[", 2), Ok(()));
        assert_eq!(check_shape(b"{]]]]]][[[", 2), Err(Shape::TooDeep));
    }

    #[test]
    fn serde_json_own_recursion_limit_is_a_bad_frame_and_raw_values_have_none() {
        // Without ferry's limit, `Value` fields stop at serde_json's 128 levels with an error
        // (never a panic) and the frame keeps its `req`...
        let deep = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let filter = format!(r#"{{"op":"sub","req":5,"topic":"t","group":"g","filter":{{"field":"a","equals":{}}}}}"#, deep(200));
        let e = decode(&filter, u32::MAX).unwrap_err();
        assert_eq!((e.code, e.req.as_deref()), (ErrorCode::BadFrame, Some("5")));
        assert!(e.message.contains("recursion limit"), "{}", e.message);
        // ...but a raw `body` is skipped at any depth: that is why `json_depth_max` exists.
        let body = format!(r#"{{"op":"pub","req":6,"topic":"t","body":{}}}"#, deep(10_000));
        assert!(decode(&body, u32::MAX).is_ok());
        let e = decode(&body, 64).unwrap_err();
        assert_eq!((e.code, e.req.as_deref()), (ErrorCode::BadFrame, Some("6")));
    }

    #[test]
    fn a_bad_req_is_refused_where_req_is_defined_and_never_echoed() {
        for frame in [r#"{"op":"ping","req":null}"#, r#"{"op":"fetch","req":true,"topic":"t","from":1,"to":2}"#, r#"{"op":"unsub","req":[],"topic":"t","group":"g"}"#] {
            let e = decode_default(frame).unwrap_err();
            assert_eq!((e.code, e.req), (ErrorCode::BadFrame, None), "{frame}");
        }
        // `ack`, `nack` and `hello` define no `req`: an odd one is an ignored unknown field.
        assert!(matches!(decode_default(r#"{"op":"ack","req":{"a":1},"topic":"t","group":"g","ids":[1]}"#), Ok(ClientOp::Ack { .. })));
        let e = decode_default(r#"{"op":"nack","req":{"a":1},"topic":"t"}"#).unwrap_err();
        assert_eq!((e.code, e.req), (ErrorCode::BadFrame, None));
        let e = decode_default(r#"{"op":"launch","req":[1]}"#).unwrap_err();
        assert_eq!((e.code, e.req), (ErrorCode::UnknownOp, None));
        let e = decode_default(r#"{"op":5,"req":{"big":1}}"#).unwrap_err();
        assert_eq!((e.code, e.req), (ErrorCode::BadFrame, None));
        let e = decode_default(r#"{"op":5,"req":"ok"}"#).unwrap_err();
        assert_eq!((e.code, e.req.as_deref()), (ErrorCode::BadFrame, Some("\"ok\"")));
    }

    #[test]
    fn decodes_pub_with_raw_body() {
        let op = decode_default(r#"{"op":"pub","req":7,"topic":"orders","body":{"a":[1,2]},"key":"k1","producer":"p","seq":3}"#).unwrap();
        match op {
            ClientOp::Pub { req, topic, body, key, producer, seq } => {
                assert_eq!(req.unwrap().get(), "7");
                assert_eq!(topic, "orders");
                assert_eq!(body.get(), r#"{"a":[1,2]}"#);
                assert_eq!(key.as_deref(), Some("k1"));
                assert_eq!(producer.as_deref(), Some("p"));
                assert_eq!(seq, Some(3));
            }
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn bad_frames_keep_req_and_code() {
        let e = decode_default(r#"{"op":"pub","req":"r1","topic":5,"body":1}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
        assert_eq!(e.req.as_deref(), Some("\"r1\""));
        let e = decode_default(r#"{"op":"pub","req":2,"topic":"t"}"#).unwrap_err();
        assert_eq!((e.code, e.req.as_deref()), (ErrorCode::BadFrame, Some("2")));
        assert!(e.message.contains("body"), "{}", e.message);
        let e = decode_default(r#"{"op":"launch","req":3}"#).unwrap_err();
        assert_eq!((e.code, e.req.as_deref()), (ErrorCode::UnknownOp, Some("3")));
        let e = decode_default("not json").unwrap_err();
        assert_eq!((e.code, e.req), (ErrorCode::BadFrame, None));
        let e = decode_default(r#"{"op":"sub","topic":"t","group":"g","filter":{"nope":1}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
    }

    #[test]
    fn filters_match_as_protocol_says() {
        let f = decode_filter(serde_json::json!({"key_prefix": "eu-"})).unwrap();
        assert!(f.matches(Some("eu-1"), "{}"));
        assert!(!f.matches(Some("us-1"), "{}"));
        assert!(!f.matches(None, "{}"));
        let f = decode_filter(serde_json::json!({"field": "a.b", "equals": 3})).unwrap();
        assert!(f.matches(None, r#"{"a":{"b":3}}"#));
        assert!(!f.matches(None, r#"{"a":{"b":4}}"#));
        assert!(!f.matches(None, r#"{"a":1}"#));
        assert_eq!(Filter::from_json(f.to_json()), Some(f));
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_does() {
        for s in ["plain", "quote\"", "back\\slash", "tab\tnew\nline", "\u{1}", "ünïcode ✓", ""] {
            let mut out = String::new();
            write_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn numbers_are_written_as_rust_formats_them() {
        let mut n = 1u64;
        let mut cases = vec![0, 9, 10, 99, 100, u64::MAX, u64::MAX - 1, u32::MAX as u64 + 1];
        while let Some(next) = n.checked_mul(7) {
            cases.extend([next - 1, next, next + 1]);
            n = next;
        }
        for n in cases {
            let mut out = String::from("x");
            push_u64(&mut out, n);
            assert_eq!(out, format!("x{n}"));
        }
    }

    #[test]
    fn encoded_frames_are_valid_json() {
        let mut out = String::new();
        encode_msg(&mut out, &MsgFrame { topic: "t\"x", group: "g", id: 5, prev: 4, key: Some("k"), body: "[1]", attempt: 2, ts_ms: 9 });
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["topic"], "t\"x");
        assert_eq!(v["prev"], 4);
        assert_eq!(v["body"], serde_json::json!([1]));
        for f in [
            |o: &mut String| encode_pong(o, None),
            |o: &mut String| encode_pong(o, Some("1")),
            |o: &mut String| encode_error(o, Some("\"a\""), ErrorCode::Conflict, "m\n"),
            |o: &mut String| encode_pulled(o, None, 3),
            |o: &mut String| {
                encode_fetched_start(o, Some("2"), "t");
                encode_fetched_message(o, true, 1, None, "{}", 5);
                encode_fetched_message(o, false, 2, Some("k"), "null", 6);
                encode_fetched_end(o);
            },
        ] {
            let mut out = String::new();
            f(&mut out);
            serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
        }
    }
}
