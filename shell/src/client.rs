//! `ferry publish` and `ferry subscribe`: small blocking PROTOCOL.md clients.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// Publishes sent ahead of their pubacks.
const PUBLISH_AHEAD_MAX: usize = 1_000;

#[derive(clap::Args)]
pub struct PublishArgs {
    /// A node's URL; several (repeated or comma-separated) are tried in turn when one fails.
    /// With --producer, publishes not yet answered are sent again to the next node (stored
    /// once); without it they are reported as failed (they may or may not be stored).
    #[arg(long, default_value = crate::DEFAULT_URL, value_delimiter = ',')]
    url: Vec<String>,
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
    /// A node's URL; several (repeated or comma-separated) are tried in turn: when the
    /// connection ends, the next one is joined and the group subscribed again, and each
    /// message is printed once (redeliveries of the last ones printed are acked, not printed).
    #[arg(long, default_value = crate::DEFAULT_URL, value_delimiter = ',')]
    url: Vec<String>,
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

/// `ferry cluster status` calls a node silent past this (nodes report every second).
const SILENT_AFTER_MS: u64 = 3_000;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// A node's URL; repeat it to name several (the first that answers is asked).
    #[arg(long, default_value = crate::DEFAULT_URL)]
    url: Vec<String>,
}

/// Asks the first reachable node for what it knows of the cluster (its `welcome`) and prints
/// one line per node.
pub fn cluster_status(args: &StatusArgs) -> Result<(), String> {
    let mut errors = Vec::new();
    for url in &args.url {
        let welcome = match tungstenite::connect(url.as_str()) {
            Ok((mut ws, _)) => read_json(&mut ws),
            Err(e) => Err(format!("cannot connect to {url}: {e}")),
        };
        match welcome {
            Ok(welcome) => {
                print!("{}", status_table(url, &welcome));
                return Ok(());
            }
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

fn status_table(url: &str, welcome: &Value) -> String {
    let Some(cluster) = welcome.get("cluster") else {
        return format!("{url} ({}) is a single node, not a cluster member\n", welcome["server"].as_str().unwrap_or("?"));
    };
    let show = |v: &Value| if v.is_null() { "-".to_string() } else { v.to_string().trim_matches('"').to_string() };
    let mut out = format!("asked node {} at {url}: term {}, leader {}\n", welcome["node"], cluster["term"], show(&cluster["leader"]));
    out.push_str(&format!("{:<6}{:<32}{:<10}{:>10}{:>8}{:>14}\n", "node", "url", "role", "applied", "lag", "heard (ms)"));
    for node in cluster["nodes"].as_array().into_iter().flatten() {
        // Nodes report every second: one silent for a few seconds is likely down or cut off.
        let silent = node["heard_ms_ago"].as_u64().is_some_and(|ms| ms > SILENT_AFTER_MS);
        let role = if node["applied"].is_null() {
            "unheard"
        } else if silent {
            "silent"
        } else if node["id"] == cluster["leader"] {
            "leader"
        } else {
            "follower"
        };
        let heard = if node["id"] == welcome["node"] { "self".to_string() } else { show(&node["heard_ms_ago"]) };
        out.push_str(&format!("{:<6}{:<32}{:<10}{:>10}{:>8}{:>14}\n", show(&node["id"]), show(&node["url"]), role, show(&node["applied"]), show(&node["lag"]), heard));
    }
    // Several shards: the table is shard 0's; each shard's leader follows.
    if let Some(shards) = welcome["shards"].as_array() {
        let leaders: Vec<String> = shards
            .iter()
            .map(|s| match s["leader"].as_u64() {
                Some(leader) => format!("{}: node {leader} (term {})", show(&s["shard"]), show(&s["term"])),
                None => format!("{}: none (term {})", show(&s["shard"]), show(&s["term"])),
            })
            .collect();
        out.push_str(&format!("shard leaders: {}\n", leaders.join(", ")));
    }
    out
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

/// Longest wait between attempts to reach a node, and how many remembered message ids keep a
/// subscriber from printing a redelivery twice.
const RETRY_WAIT_MAX: Duration = Duration::from_secs(2);
const PRINTED_IDS_MAX: usize = 100_000;

/// Error codes that no other node or later attempt answers differently.
fn is_terminal(code: &Value) -> bool {
    !matches!(code.as_str(), Some("unavailable" | "overloaded" | "internal"))
}

/// Connects to the nodes of `urls` in turn, starting at `*at`, waiting longer after each
/// failed round (up to `RETRY_WAIT_MAX`); gives up after `rounds` rounds.
fn connect_any(urls: &[String], at: &mut usize, token: Option<&str>, rounds: u32) -> Result<Socket, String> {
    let mut wait = Duration::from_millis(100);
    let mut last = String::new();
    for attempt in 0..rounds as usize * urls.len() {
        let url = &urls[*at % urls.len()];
        match connect(url, token) {
            Ok(ws) => return Ok(ws),
            Err(e) => last = e,
        }
        *at += 1;
        if (attempt + 1) % urls.len() == 0 {
            std::thread::sleep(wait);
            wait = (wait * 2).min(RETRY_WAIT_MAX);
        }
    }
    Err(last)
}

/// The node in use failed (`why`): on to the next of `urls`, as `connect_any` finds one.
fn move_on(urls: &[String], at: &mut usize, token: Option<&str>, why: &str) -> Result<Socket, String> {
    *at += 1;
    eprintln!("ferry: {why}; moving to {}", urls[*at % urls.len()]);
    connect_any(urls, at, token, 10)
}

pub fn publish(args: &PublishArgs) -> Result<(), String> {
    let mut at = 0;
    let mut ws = connect_any(&args.url, &mut at, args.token.as_deref(), 1)?;
    let mut bodies: Box<dyn Iterator<Item = Result<String, String>>> = if args.bodies.is_empty() {
        Box::new(std::io::stdin().lock().lines().map(|l| l.map_err(|e| format!("stdin: {e}"))))
    } else {
        Box::new(args.bodies.clone().into_iter().map(Ok))
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Sent and not yet answered, by req: resent after a move when they are idempotent.
    let mut pending: BTreeMap<u64, Value> = BTreeMap::new();
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut input_done = false;
    while !input_done || !pending.is_empty() {
        if !input_done && pending.len() < PUBLISH_AHEAD_MAX {
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
                    // A failed send shows as a lost connection at the next read.
                    let _ = send_json(&mut ws, &frame);
                    pending.insert(sent, frame);
                    sent += 1;
                    continue;
                }
                None => input_done = true,
            }
        }
        if pending.is_empty() {
            continue;
        }
        let reply = match read_json(&mut ws) {
            Ok(reply) => reply,
            Err(e) if args.url.len() > 1 => {
                ws = move_on(&args.url, &mut at, args.token.as_deref(), &e)?;
                if args.producer.is_none() {
                    // Without producer and seq a resend could store a message twice.
                    for (req, _) in std::mem::take(&mut pending) {
                        failed += 1;
                        writeln!(out, "{}", json!({"op": "error", "req": req, "code": "unavailable", "message": "the connection ended before the answer: it may or may not be stored (use --producer to retry safely)"})).map_err(|e| format!("stdout: {e}"))?;
                    }
                }
                for frame in pending.values() {
                    let _ = send_json(&mut ws, frame);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(req) = reply["req"].as_u64() else { continue };
        if !pending.contains_key(&req) {
            continue;
        }
        if reply["op"] == "error" && !is_terminal(&reply["code"]) && args.producer.is_some() && args.url.len() > 1 {
            // Another node (or this one, later) may take it: the same seq is stored once.
            std::thread::sleep(Duration::from_millis(100));
            let _ = send_json(&mut ws, &pending[&req]);
            continue;
        }
        if reply["op"] == "error" {
            failed += 1;
        }
        pending.remove(&req);
        writeln!(out, "{reply}").map_err(|e| format!("stdout: {e}"))?;
    }
    let _ = ws.close(None);
    if failed > 0 {
        return Err(format!("{failed} of {sent} publishes failed"));
    }
    Ok(())
}

pub fn subscribe(args: &SubscribeArgs) -> Result<(), String> {
    let from = match args.from.parse::<u64>() {
        Ok(id) => json!(id),
        Err(_) => json!(args.from),
    };
    let mut sub = json!({"op": "sub", "req": "sub", "topic": args.topic, "group": args.group, "from": from, "window": args.window});
    if let Some(filter) = &args.filter {
        sub["filter"] = serde_json::from_str(filter).map_err(|e| format!("--filter is not JSON: {e}"))?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut received = 0u64;
    let mut printed: BTreeSet<u64> = BTreeSet::new();
    let mut at = 0;
    let mut ws = connect_any(&args.url, &mut at, args.token.as_deref(), 1)?;
    send_json(&mut ws, &sub)?;
    while args.count.is_none_or(|c| received < c) {
        let frame = match read_json(&mut ws) {
            Ok(frame) => frame,
            Err(e) if args.url.len() > 1 => {
                ws = move_on(&args.url, &mut at, args.token.as_deref(), &e)?;
                send_json(&mut ws, &sub)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        match frame["op"].as_str() {
            Some("msg") => {
                let id = frame["id"].as_u64().unwrap_or(0);
                // Acked before, but the ack was lost with a node: acked again, printed once.
                if printed.insert(id) {
                    if printed.len() > PRINTED_IDS_MAX {
                        printed.pop_first();
                    }
                    writeln!(out, "{frame}").map_err(|e| format!("stdout: {e}"))?;
                    out.flush().map_err(|e| format!("stdout: {e}"))?;
                    received += 1;
                }
                let _ = send_json(&mut ws, &json!({"op": "ack", "topic": frame["topic"], "group": frame["group"], "ids": [frame["id"]]}));
            }
            Some("error") if !is_terminal(&frame["code"]) && args.url.len() > 1 => {
                // No leader yet, say: the next node, after a pause.
                std::thread::sleep(Duration::from_millis(200));
                ws = move_on(&args.url, &mut at, args.token.as_deref(), &format!("the node answered {frame}"))?;
                send_json(&mut ws, &sub)?;
            }
            Some("error") => return Err(format!("server refused: {frame}")),
            _ => {}
        }
    }
    let _ = ws.close(None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_shows_each_node_with_its_role_and_lag() {
        let welcome = json!({"op": "welcome", "server": "ferry-1", "version": 1, "node": 2, "nodes": ["ws://a/ws", "ws://b/ws"],
            "cluster": {"leader": 1, "term": 3, "nodes": [
                {"id": 1, "url": "ws://a/ws", "applied": 10, "lag": 0, "heard_ms_ago": 120},
                {"id": 2, "url": "ws://b/ws", "applied": 8, "lag": 2, "heard_ms_ago": null},
                {"id": 3, "url": null, "applied": null, "lag": null, "heard_ms_ago": null},
                {"id": 4, "url": "ws://d/ws", "applied": 3, "lag": 7, "heard_ms_ago": 5000}]}});
        let table = status_table("ws://b/ws", &welcome);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "asked node 2 at ws://b/ws: term 3, leader 1");
        assert!(lines[2].starts_with("1     ws://a/ws") && lines[2].contains("leader") && lines[2].trim_end().ends_with("120"), "{table}");
        assert!(lines[3].contains("follower") && lines[3].contains(" 2 ") && lines[3].trim_end().ends_with("self"), "{table}");
        assert!(lines[4].contains("unheard"), "{table}");
        assert!(lines[5].contains("silent"), "{table}");
        assert!(status_table("ws://x/ws", &json!({"op": "welcome", "server": "solo"})).contains("single node"));
        let mut sharded = welcome.clone();
        sharded["shards"] = json!([{"shard": 0, "leader": 1, "term": 3}, {"shard": 1, "leader": null, "term": 4}]);
        let table = status_table("ws://b/ws", &sharded);
        assert_eq!(table.lines().last(), Some("shard leaders: 0: node 1 (term 3), 1: none (term 4)"), "{table}");
    }
}

#[derive(clap::Args)]
pub struct TraceArgs {
    /// The message's topic.
    #[arg(long)]
    topic: String,
    /// The message's id.
    #[arg(long)]
    id: u64,
    /// The server's address (host:port of its listener, or its ws:// URL).
    #[arg(long, default_value = crate::DEFAULT_URL)]
    url: String,
    /// An admin token, when the server has `tokens` configured (or FERRY_TOKEN).
    #[arg(long, env = "FERRY_TOKEN")]
    token: Option<String>,
    /// Print the server's JSON answer as it is.
    #[arg(long)]
    json: bool,
}

/// Asks the server's admin API where a message is and was (`GET /api/trace`) and prints it.
pub fn trace(args: &TraceArgs) -> Result<(), String> {
    let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("topic", &args.topic).append_pair("id", &args.id.to_string()).finish();
    let (status, body) = admin_get(&args.url, &format!("/api/trace?{query}"), args.token.as_deref())?;
    let answer: Value = serde_json::from_str(&body).map_err(|e| format!("the server answered {status} with no JSON ({e}): {body}"))?;
    if status != 200 {
        return Err(format!("the server answered {status}: {}", answer["error"].as_str().unwrap_or(&body)));
    }
    if args.json {
        println!("{answer}");
    } else {
        print!("{}", trace_text(&answer));
    }
    Ok(())
}

/// A trace as lines a person reads.
fn trace_text(trace: &Value) -> String {
    let storage = &trace["storage"];
    let mut out = match storage["state"].as_str() {
        Some("stored") => {
            format!("message {} of {}: stored in segment {} at offset {} ({} bytes)\n", trace["id"], trace["topic"], storage["segment"], storage["offset"], storage["bytes"])
        }
        _ => format!("message {} of {}: {}\n", trace["id"], trace["topic"], storage["why"].as_str().unwrap_or("?")),
    };
    for group in trace["groups"].as_array().into_iter().flatten() {
        let now = &group["now"];
        let detail: Vec<String> = now.as_object().into_iter().flatten().filter(|(k, _)| *k != "state").map(|(k, v)| format!("{k} {}", v.to_string().trim_matches('"'))).collect();
        out += &format!(
            "  group {}: {}{}\n",
            group["group"].as_str().unwrap_or("?"),
            now["state"].as_str().unwrap_or("?"),
            if detail.is_empty() { String::new() } else { format!(" ({})", detail.join(", ")) }
        );
    }
    let events = trace["events"].as_array().cloned().unwrap_or_default();
    let first_ms = events.first().and_then(|e| e["at_ms"].as_u64()).unwrap_or(0);
    out += if events.is_empty() { "no recent events on this node\n" } else { "recent events (this node; time after the first):\n" };
    for event in &events {
        let ms = event["at_ms"].as_u64().unwrap_or(0) - first_ms;
        let detail: Vec<String> = ["group", "conn", "attempt", "segment", "copy_id"]
            .iter()
            .filter(|k| !event[**k].is_null())
            .map(|k| format!("{k} {}", event[*k].to_string().trim_matches('"')))
            .collect();
        out += &format!("  +{ms:>8} ms  {:<14}{}\n", event["event"].as_str().unwrap_or("?"), detail.join("  "));
    }
    out
}

/// `GET path` on the server's admin API: (status, body).
fn admin_get(url: &str, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let authority = url.split("://").last().unwrap_or(url).split('/').next().unwrap_or_default();
    let mut stream = std::net::TcpStream::connect(authority).map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let bearer = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{bearer}Connection: close\r\n\r\n").map_err(|e| format!("cannot ask {authority}: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("no answer from {authority}: {e}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| format!("{authority} answered no HTTP"))?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("{authority} answered no HTTP status"))?;
    Ok((status, body.to_string()))
}
