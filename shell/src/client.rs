//! `ferry publish` and `ferry subscribe`: small blocking PROTOCOL.md clients.

use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::net::TcpStream;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// Publishes sent ahead of their pubacks.
const PUBLISH_AHEAD_MAX: usize = 1_000;

#[derive(clap::Args)]
pub struct PublishArgs {
    #[arg(long, default_value = crate::DEFAULT_URL)]
    url: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    key: Option<String>,
    /// Makes the publishes idempotent: seq counts up from --seq.
    #[arg(long)]
    producer: Option<String>,
    #[arg(long, default_value_t = 1)]
    seq: u64,
    #[arg(long)]
    token: Option<String>,
    /// Message bodies; without any, stdin is read line by line.
    bodies: Vec<String>,
}

#[derive(clap::Args)]
pub struct SubscribeArgs {
    #[arg(long, default_value = crate::DEFAULT_URL)]
    url: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    /// latest | earliest | an id (applies when the group is created)
    #[arg(long, default_value = "latest")]
    from: String,
    #[arg(long, default_value_t = 64)]
    window: u32,
    /// A PROTOCOL.md filter object, e.g. '{"key_prefix":"eu-"}'
    #[arg(long)]
    filter: Option<String>,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    #[arg(long)]
    token: Option<String>,
}

fn connect(url: &str, token: Option<&str>) -> Result<Socket, String> {
    let (mut ws, _) = tungstenite::connect(url).map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let welcome = read_json(&mut ws)?;
    if welcome["op"] != "welcome" {
        return Err(format!("expected welcome, got {welcome}"));
    }
    if let Some(token) = token {
        send_json(&mut ws, &json!({"op": "hello", "token": token}))?;
    }
    Ok(ws)
}

fn send_json(ws: &mut Socket, value: &Value) -> Result<(), String> {
    ws.send(Message::text(value.to_string())).map_err(|e| format!("send failed: {e}"))
}

fn read_json(ws: &mut Socket) -> Result<Value, String> {
    loop {
        match ws.read().map_err(|e| format!("connection lost: {e}"))? {
            Message::Text(text) => return serde_json::from_str(text.as_str()).map_err(|e| format!("server sent invalid JSON: {e}")),
            Message::Close(frame) => return Err(format!("server closed the connection: {frame:?}")),
            _ => {}
        }
    }
}

fn parse_body(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

pub fn publish(args: &PublishArgs) -> Result<(), String> {
    let mut ws = connect(&args.url, args.token.as_deref())?;
    let mut bodies: Box<dyn Iterator<Item = Result<String, String>>> = if args.bodies.is_empty() {
        Box::new(std::io::stdin().lock().lines().map(|l| l.map_err(|e| format!("stdin: {e}"))))
    } else {
        Box::new(args.bodies.clone().into_iter().map(Ok))
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let (mut sent, mut answered, mut failed) = (0u64, 0u64, 0u64);
    let mut input_done = false;
    while !input_done || answered < sent {
        if !input_done && ((sent - answered) as usize) < PUBLISH_AHEAD_MAX {
            match bodies.next() {
                Some(line) => {
                    let line = line?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let mut frame = json!({"op": "pub", "req": sent, "topic": args.topic, "body": parse_body(&line)});
                    if let Some(key) = &args.key {
                        frame["key"] = json!(key);
                    }
                    if let Some(producer) = &args.producer {
                        frame["producer"] = json!(producer);
                        frame["seq"] = json!(args.seq + sent);
                    }
                    send_json(&mut ws, &frame)?;
                    sent += 1;
                    continue;
                }
                None => input_done = true,
            }
        }
        if answered == sent {
            continue;
        }
        let reply = read_json(&mut ws)?;
        match reply["op"].as_str() {
            Some("puback") => answered += 1,
            Some("error") if !reply["req"].is_null() => {
                answered += 1;
                failed += 1;
            }
            _ => {}
        }
        writeln!(out, "{reply}").map_err(|e| format!("stdout: {e}"))?;
    }
    let _ = ws.close(None);
    if failed > 0 {
        return Err(format!("{failed} of {sent} publishes failed"));
    }
    Ok(())
}

pub fn subscribe(args: &SubscribeArgs) -> Result<(), String> {
    let mut ws = connect(&args.url, args.token.as_deref())?;
    let from = match args.from.parse::<u64>() {
        Ok(id) => json!(id),
        Err(_) => json!(args.from),
    };
    let mut sub = json!({"op": "sub", "req": "sub", "topic": args.topic, "group": args.group, "from": from, "window": args.window});
    if let Some(filter) = &args.filter {
        sub["filter"] = serde_json::from_str(filter).map_err(|e| format!("--filter is not JSON: {e}"))?;
    }
    send_json(&mut ws, &sub)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut received = 0u64;
    while args.count.is_none_or(|c| received < c) {
        let frame = read_json(&mut ws)?;
        match frame["op"].as_str() {
            Some("msg") => {
                writeln!(out, "{frame}").map_err(|e| format!("stdout: {e}"))?;
                out.flush().map_err(|e| format!("stdout: {e}"))?;
                send_json(&mut ws, &json!({"op": "ack", "topic": frame["topic"], "group": frame["group"], "ids": [frame["id"]]}))?;
                received += 1;
            }
            Some("error") => return Err(format!("server refused: {frame}")),
            _ => {}
        }
    }
    let _ = ws.close(None);
    Ok(())
}
