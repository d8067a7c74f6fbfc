//! The client's half of the codec: client ops written as frames, server frames read back.
//! ferry's own clients (the simulator's, the command line's, the client library) speak
//! through it, so they and the server agree by construction; the tests hold each half to
//! the other (what a client writes the server decodes to the same op, what the server
//! writes a client reads back field for field).
//!
//! Reading is lenient where the protocol may grow (docs/PROTOCOL.md: "extend, never
//! break"): unknown fields are ignored, an unknown `op` is `ServerFrame::Other`, an unknown
//! error code is kept as text.

use super::{push_u64, write_json_str, ClientOp, ErrorCode, Name, RawJson, Req, StartFrom};
use serde::Deserialize;
use serde_json::value::RawValue;

impl<'a> RawJson<'a> {
    /// `text` if it is exactly one JSON value (whitespace around it allowed, and left out).
    pub fn parse(text: &'a str) -> Result<RawJson<'a>, String> {
        serde_json::from_str::<&RawValue>(text).map(RawJson::from).map_err(|e| format!("not one JSON value: {e}"))
    }
}

impl ErrorCode {
    /// The code spelled `text` on the wire, if this version knows it.
    pub fn from_wire(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|code| code.as_str() == text)
    }
}

fn write_req(out: &mut String, req: &Req<'_>) {
    if let Some(req) = req {
        out.push_str(",\"req\":");
        out.push_str(req.get());
    }
}

fn write_name(out: &mut String, field: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(field);
    out.push_str("\":");
    write_json_str(out, value);
}

fn write_u64(out: &mut String, field: &str, value: u64) {
    out.push_str(",\"");
    out.push_str(field);
    out.push_str("\":");
    push_u64(out, value);
}

/// Appends `op` as a frame: `op` first, then its fields in the order docs/PROTOCOL.md lists them.
pub fn encode_client_op(out: &mut String, op: &ClientOp<'_>) {
    let name = match op {
        ClientOp::Hello { .. } => "hello",
        ClientOp::Pub { .. } => "pub",
        ClientOp::Sub { .. } => "sub",
        ClientOp::Ack { .. } => "ack",
        ClientOp::Nack { .. } => "nack",
        ClientOp::Pull { .. } => "pull",
        ClientOp::Fetch { .. } => "fetch",
        ClientOp::Latest { .. } => "latest",
        ClientOp::Unsub { .. } => "unsub",
        ClientOp::Ping { .. } => "ping",
    };
    out.push_str("{\"op\":\"");
    out.push_str(name);
    out.push('"');
    match op {
        ClientOp::Hello { token } => {
            if let Some(token) = token {
                write_name(out, "token", token);
            }
        }
        ClientOp::Pub { req, topic, body, key, producer, seq } => {
            write_req(out, req);
            write_name(out, "topic", topic);
            if let Some(key) = key {
                write_name(out, "key", key);
            }
            if let Some(producer) = producer {
                write_name(out, "producer", producer);
            }
            if let Some(seq) = seq {
                write_u64(out, "seq", *seq);
            }
            out.push_str(",\"body\":");
            out.push_str(body.get());
        }
        ClientOp::Sub { req, topic, group, from, window, filter, coalesce_ms } => {
            write_req(out, req);
            write_name(out, "topic", topic);
            write_name(out, "group", group);
            match from {
                StartFrom::Latest => write_name(out, "from", "latest"),
                StartFrom::Earliest => write_name(out, "from", "earliest"),
                StartFrom::Id(id) => write_u64(out, "from", *id),
            }
            if let Some(window) = window {
                write_u64(out, "window", u64::from(*window));
            }
            if let Some(filter) = filter {
                out.push_str(",\"filter\":");
                out.push_str(&filter.to_json().to_string());
            }
            if let Some(coalesce_ms) = coalesce_ms {
                write_u64(out, "coalesce_ms", *coalesce_ms);
            }
        }
        ClientOp::Ack { topic, group, ids } | ClientOp::Nack { topic, group, ids, .. } => {
            write_name(out, "topic", topic);
            write_name(out, "group", group);
            out.push_str(",\"ids\":[");
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_u64(out, *id);
            }
            out.push(']');
            if let ClientOp::Nack { delay_ms, .. } = op {
                write_u64(out, "delay_ms", *delay_ms);
            }
        }
        ClientOp::Pull { req, topic, group, max, wait_ms } => {
            write_req(out, req);
            write_name(out, "topic", topic);
            write_name(out, "group", group);
            write_u64(out, "max", u64::from(*max));
            write_u64(out, "wait_ms", *wait_ms);
        }
        ClientOp::Fetch { req, topic, from, to } => {
            write_req(out, req);
            write_name(out, "topic", topic);
            write_u64(out, "from", *from);
            write_u64(out, "to", *to);
        }
        ClientOp::Latest { req, topic, keys, since } => {
            write_req(out, req);
            write_name(out, "topic", topic);
            if let Some(keys) = keys {
                out.push_str(",\"keys\":");
                out.push_str(&serde_json::to_string(keys).expect("strings serialize"));
            }
            write_u64(out, "since", *since);
        }
        ClientOp::Unsub { req, topic, group } => {
            write_req(out, req);
            write_name(out, "topic", topic);
            write_name(out, "group", group);
        }
        ClientOp::Ping { req } => write_req(out, req),
    }
    out.push('}');
}

/// One stored message in a `fetched` page.
#[derive(Debug, PartialEq)]
pub struct FetchedMessage<'a> {
    pub id: u64,
    pub key: Option<Name<'a>>,
    pub body: RawJson<'a>,
    pub ts_ms: u64,
}

/// A frame from the server, as a client reads it.
#[derive(Debug, PartialEq)]
pub enum ServerFrame<'a> {
    /// `node` and `nodes` (the client URLs of the nodes it knows) come from a cluster node only.
    Welcome {
        server: Name<'a>,
        version: u32,
        node: Option<u64>,
        nodes: Vec<String>,
    },
    Puback {
        req: Req<'a>,
        topic: Name<'a>,
        id: u64,
    },
    Suback {
        req: Req<'a>,
        topic: Name<'a>,
        group: Name<'a>,
    },
    Msg {
        topic: Name<'a>,
        group: Name<'a>,
        id: u64,
        prev: u64,
        key: Option<Name<'a>>,
        body: RawJson<'a>,
        attempt: u32,
        ts_ms: u64,
    },
    Pulled {
        req: Req<'a>,
        count: u32,
    },
    Fetched {
        req: Req<'a>,
        topic: Name<'a>,
        messages: Vec<FetchedMessage<'a>>,
    },
    /// The answer to `latest`: its messages as `fetched`'s.
    Latest {
        req: Req<'a>,
        topic: Name<'a>,
        messages: Vec<FetchedMessage<'a>>,
    },
    Pong {
        req: Req<'a>,
    },
    /// `code` as written: `ErrorCode::from_wire` reads the ones this version knows.
    Error {
        req: Req<'a>,
        code: Name<'a>,
        message: Name<'a>,
        retry_after_ms: Option<u64>,
    },
    /// An op this version does not know (a newer server's): ignore it.
    Other {
        op: Name<'a>,
    },
}

#[derive(Deserialize)]
struct WireServerFrame<'a> {
    #[serde(borrow)]
    op: Name<'a>,
    #[serde(borrow)]
    req: Option<&'a RawValue>,
    #[serde(borrow)]
    server: Option<Name<'a>>,
    version: Option<u32>,
    node: Option<u64>,
    nodes: Option<Vec<String>>,
    #[serde(borrow)]
    topic: Option<Name<'a>>,
    #[serde(borrow)]
    group: Option<Name<'a>>,
    id: Option<u64>,
    prev: Option<u64>,
    #[serde(borrow)]
    key: Option<Name<'a>>,
    /// Any JSON, `null` included.
    #[serde(default, borrow, deserialize_with = "super::present")]
    body: Option<&'a RawValue>,
    attempt: Option<u32>,
    ts: Option<u64>,
    count: Option<u32>,
    #[serde(borrow)]
    messages: Option<Vec<WireFetched<'a>>>,
    #[serde(borrow)]
    code: Option<Name<'a>>,
    #[serde(borrow)]
    message: Option<Name<'a>>,
    retry_after_ms: Option<u64>,
}

#[derive(Deserialize)]
struct WireFetched<'a> {
    id: u64,
    #[serde(borrow)]
    key: Option<Name<'a>>,
    #[serde(borrow)]
    body: &'a RawValue,
    ts: u64,
}

fn field<T>(value: Option<T>, op: &str, name: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("a '{op}' frame without '{name}'"))
}

/// Reads one text frame from the server. An error means the server broke the protocol.
pub fn decode_server_frame(text: &str) -> Result<ServerFrame<'_>, String> {
    let f: WireServerFrame<'_> = serde_json::from_str(text).map_err(|e| format!("not a server frame: {e}"))?;
    let req = f.req.map(RawJson::from);
    let op = f.op.as_ref();
    Ok(match op {
        "welcome" => ServerFrame::Welcome { server: field(f.server, op, "server")?, version: field(f.version, op, "version")?, node: f.node, nodes: f.nodes.unwrap_or_default() },
        "puback" => ServerFrame::Puback { req, topic: field(f.topic, op, "topic")?, id: field(f.id, op, "id")? },
        "suback" => ServerFrame::Suback { req, topic: field(f.topic, op, "topic")?, group: field(f.group, op, "group")? },
        "msg" => ServerFrame::Msg {
            topic: field(f.topic, op, "topic")?,
            group: field(f.group, op, "group")?,
            id: field(f.id, op, "id")?,
            prev: field(f.prev, op, "prev")?,
            key: f.key,
            body: field(f.body, op, "body")?.into(),
            attempt: field(f.attempt, op, "attempt")?,
            ts_ms: field(f.ts, op, "ts")?,
        },
        "pulled" => ServerFrame::Pulled { req, count: field(f.count, op, "count")? },
        "fetched" | "latest" => {
            let topic = field(f.topic, op, "topic")?;
            let messages = field(f.messages, op, "messages")?.into_iter().map(|m| FetchedMessage { id: m.id, key: m.key, body: m.body.into(), ts_ms: m.ts }).collect();
            match op {
                "fetched" => ServerFrame::Fetched { req, topic, messages },
                _ => ServerFrame::Latest { req, topic, messages },
            }
        }
        "pong" => ServerFrame::Pong { req },
        "error" => ServerFrame::Error { req, code: field(f.code, op, "code")?, message: field(f.message, op, "message")?, retry_after_ms: f.retry_after_ms },
        _ => ServerFrame::Other { op: f.op },
    })
}

#[cfg(test)]
mod tests {
    use super::super::{
        decode, encode_error_retry, encode_fetched_end, encode_fetched_message, encode_fetched_start, encode_msg, encode_pong, encode_puback, encode_pulled, encode_suback,
        encode_welcome, Filter, MsgFrame, JSON_DEPTH_MAX_LIMIT,
    };
    use super::*;
    use serde_json::json;
    use std::borrow::Cow;

    fn name(text: &str) -> Name<'_> {
        Cow::Borrowed(text)
    }

    fn req(text: &str) -> Req<'_> {
        Some(RawJson::parse(text).unwrap())
    }

    /// Every op, with every optional field given and left out, with names that need escapes.
    fn ops() -> Vec<ClientOp<'static>> {
        let body = RawJson::parse(r#" {"a":[1,"x\"y"]} "#).unwrap();
        let filter = Filter::FieldEquals { path: vec!["a".into(), "b".into()], equals: json!({"c": [1, null]}) };
        vec![
            ClientOp::Hello { token: None },
            ClientOp::Hello { token: Some("t\"ok\\en".into()) },
            ClientOp::Pub { req: req("7"), topic: name("orders"), body, key: Some(name("k\n1")), producer: Some(name("p")), seq: Some(u64::MAX) },
            ClientOp::Pub { req: None, topic: name("orders"), body: RawJson::parse("null").unwrap(), key: None, producer: None, seq: None },
            ClientOp::Sub { req: req("\"s\""), topic: name("t"), group: name("g"), from: StartFrom::Earliest, window: Some(64), filter: Some(filter), coalesce_ms: Some(250) },
            ClientOp::Sub { req: None, topic: name("t"), group: name("g"), from: StartFrom::Id(12), window: None, filter: Some(Filter::KeyPrefix("k-".into())), coalesce_ms: None },
            ClientOp::Sub { req: req("-1.5e3"), topic: name("t"), group: name("g"), from: StartFrom::Latest, window: None, filter: None, coalesce_ms: None },
            ClientOp::Ack { topic: name("t"), group: name("g"), ids: vec![1, 2, u64::MAX] },
            ClientOp::Ack { topic: name("t"), group: name("g"), ids: vec![] },
            ClientOp::Nack { topic: name("t"), group: name("g"), ids: vec![3], delay_ms: 250 },
            ClientOp::Pull { req: req("1"), topic: name("t"), group: name("g"), max: 10, wait_ms: 5_000 },
            ClientOp::Fetch { req: req("2"), topic: name("t"), from: 1, to: 99 },
            ClientOp::Latest { req: req("3"), topic: name("t"), keys: Some(vec!["a\"b".into(), "c".into()]), since: 7 },
            ClientOp::Latest { req: req("4"), topic: name("t"), keys: None, since: 0 },
            ClientOp::Unsub { req: req("3"), topic: name("t"), group: name("g") },
            ClientOp::Ping { req: req("4") },
            ClientOp::Ping { req: None },
        ]
    }

    #[test]
    fn the_server_decodes_what_a_client_encodes() {
        for op in ops() {
            let mut text = String::new();
            encode_client_op(&mut text, &op);
            let decoded = decode(&text, JSON_DEPTH_MAX_LIMIT).unwrap_or_else(|e| panic!("{text} does not decode: {e:?}"));
            assert_eq!(decoded, op, "{text}");
        }
    }

    #[test]
    fn a_client_reads_what_the_server_encodes() {
        let mut text = String::new();
        encode_welcome(&mut text, "node-1", &[("node", json!(2)), ("nodes", json!(["ws://a/ws", "ws://b/ws"])), ("cluster", json!({"leader": 2}))]);
        let expected = ServerFrame::Welcome { server: name("node-1"), version: 1, node: Some(2), nodes: vec!["ws://a/ws".into(), "ws://b/ws".into()] };
        assert_eq!(decode_server_frame(&text), Ok(expected));

        text.clear();
        encode_puback(&mut text, Some("\"r\""), "orders", 42);
        assert_eq!(decode_server_frame(&text), Ok(ServerFrame::Puback { req: req("\"r\""), topic: name("orders"), id: 42 }));

        text.clear();
        encode_suback(&mut text, None, "t", "g\"q");
        assert_eq!(decode_server_frame(&text), Ok(ServerFrame::Suback { req: None, topic: name("t"), group: Cow::Owned("g\"q".into()) }));

        text.clear();
        encode_msg(&mut text, &MsgFrame { topic: "t", group: "g", id: 9, prev: 7, key: Some("k"), body: "{\"a\":1}", attempt: 2, ts_ms: 1_700_000_000_000 });
        let expected =
            ServerFrame::Msg { topic: name("t"), group: name("g"), id: 9, prev: 7, key: Some(name("k")), body: req("{\"a\":1}").unwrap(), attempt: 2, ts_ms: 1_700_000_000_000 };
        assert_eq!(decode_server_frame(&text), Ok(expected));

        text.clear();
        encode_msg(&mut text, &MsgFrame { topic: "t", group: "g", id: 10, prev: 9, key: None, body: "null", attempt: 1, ts_ms: 1 });
        let expected = ServerFrame::Msg { topic: name("t"), group: name("g"), id: 10, prev: 9, key: None, body: req("null").unwrap(), attempt: 1, ts_ms: 1 };
        assert_eq!(decode_server_frame(&text), Ok(expected));

        text.clear();
        encode_pulled(&mut text, Some("5"), 3);
        assert_eq!(decode_server_frame(&text), Ok(ServerFrame::Pulled { req: req("5"), count: 3 }));

        text.clear();
        encode_fetched_start(&mut text, Some("6"), "t");
        encode_fetched_message(&mut text, true, 4, None, "[1]", 10);
        encode_fetched_message(&mut text, false, 5, Some("k"), "\"s\"", 11);
        encode_fetched_end(&mut text);
        let messages =
            vec![FetchedMessage { id: 4, key: None, body: req("[1]").unwrap(), ts_ms: 10 }, FetchedMessage { id: 5, key: Some(name("k")), body: req("\"s\"").unwrap(), ts_ms: 11 }];
        assert_eq!(decode_server_frame(&text), Ok(ServerFrame::Fetched { req: req("6"), topic: name("t"), messages }));

        text.clear();
        encode_pong(&mut text, None);
        assert_eq!(decode_server_frame(&text), Ok(ServerFrame::Pong { req: None }));

        text.clear();
        encode_error_retry(&mut text, Some("8"), ErrorCode::Overloaded, "slow down", Some(250));
        let expected = ServerFrame::Error { req: req("8"), code: name("overloaded"), message: name("slow down"), retry_after_ms: Some(250) };
        assert_eq!(decode_server_frame(&text), Ok(expected));
    }

    #[test]
    fn frames_of_a_newer_server_still_read() {
        let frame = decode_server_frame(r#"{"op":"puback","req":1,"topic":"t","id":3,"shard":2}"#);
        assert_eq!(frame, Ok(ServerFrame::Puback { req: req("1"), topic: name("t"), id: 3 }));
        assert_eq!(decode_server_frame(r#"{"op":"gossip","x":1}"#), Ok(ServerFrame::Other { op: name("gossip") }));
        let Ok(ServerFrame::Error { code, .. }) = decode_server_frame(r#"{"op":"error","code":"too_soon","message":"m"}"#) else { panic!("not an error frame") };
        assert_eq!((code.as_ref(), ErrorCode::from_wire(&code)), ("too_soon", None));
        assert_eq!(ErrorCode::from_wire("overloaded"), Some(ErrorCode::Overloaded));
    }

    #[test]
    fn broken_server_frames_are_errors() {
        for text in [
            "",
            "[]",
            r#"{"id":1}"#,
            r#"{"op":"puback","req":1,"topic":"t"}"#,
            r#"{"op":"msg","topic":"t","group":"g","id":1,"prev":0,"attempt":1,"ts":1}"#,
            r#"{"op":"pong","req":1"#,
        ] {
            assert!(decode_server_frame(text).is_err(), "{text:?} read as a frame");
        }
    }

    #[test]
    fn raw_json_takes_one_value_only() {
        assert_eq!(RawJson::parse(" [1, 2] ").map(RawJson::get), Ok("[1, 2]"));
        for text in ["", "1 2", "{", "nul", "'x'"] {
            assert!(RawJson::parse(text).is_err(), "{text:?} taken as JSON");
        }
    }
}
