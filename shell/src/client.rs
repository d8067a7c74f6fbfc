//! `ferry publish` and `ferry subscribe`, built on the client library (`ferry-client`): they
//! reconnect across `--url`s, publish idempotently, and print each message once.

use ferry_client::{ClientConfig, ClientError, ClientEvent, ConnState, FerryClient, Filter, PublishOutcome, StartFrom, SubscribeOptions};
use ferry_core::protocol::{push_u64, write_json_str};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// Publishes handed to the client ahead of their answers.
const PUBLISH_AHEAD_MAX: usize = 1_000;

#[derive(clap::Args)]
pub struct PublishArgs {
    /// A node's URL; several (repeated or comma-separated) are tried in turn. Publishes not
    /// yet answered when a connection ends are sent again on the next one, and stored once.
    #[arg(long, default_value = crate::DEFAULT_URL, value_delimiter = ',')]
    url: Vec<String>,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    key: Option<String>,
    /// The publishes' producer name (idempotence); by default a new one for each run. A run
    /// that goes on from an earlier one under the same name starts --seq above its last seq.
    #[arg(long)]
    producer: Option<String>,
    #[arg(long, default_value_t = 1)]
    seq: u64,
    #[arg(long)]
    token: Option<String>,
    /// Publishes still unanswered after this long without progress are given up (and named:
    /// they may or may not be stored).
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Message bodies (JSON, or text sent as a JSON string); without any, stdin is read line
    /// by line.
    bodies: Vec<String>,
}

#[derive(clap::Args)]
pub struct SubscribeArgs {
    /// A node's URL; several (repeated or comma-separated) are tried in turn: when the
    /// connection ends, the next one is joined and the group subscribed again. Each message is
    /// printed once, as a line {"id","key","body"}, each key in order; gaps are fetched.
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

fn read_json(ws: &mut Socket) -> Result<Value, String> {
    loop {
        match ws.read().map_err(|e| format!("connection lost: {e}"))? {
            Message::Text(text) => return serde_json::from_str(text.as_str()).map_err(|e| format!("server sent invalid JSON: {e}")),
            Message::Close(frame) => return Err(format!("server closed the connection: {frame:?}")),
            _ => {}
        }
    }
}

/// A line of input as a body: JSON as it is, anything else as a JSON string.
fn body_json(line: &str) -> String {
    match serde_json::from_str::<&serde_json::value::RawValue>(line) {
        Ok(raw) => raw.get().to_string(),
        Err(_) => Value::String(line.to_string()).to_string(),
    }
}

/// One runtime thread for the client; the command's own thread may block on stdin meanwhile.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| format!("cannot start the client: {e}"))
}

fn client_config(urls: &[String], token: Option<&str>) -> ClientConfig {
    // Each run draws its own producer name and jitter from this seed.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut config = ClientConfig::new(urls.to_vec(), nanos ^ u64::from(std::process::id()));
    config.token = token.map(str::to_string);
    config
}

/// Connection trouble, told on stderr as it happens.
fn report(event: &ClientEvent) {
    match event {
        ClientEvent::State { state: ConnState::Disconnected, why: Some(why) } => eprintln!("ferry: {why}; connecting again"),
        ClientEvent::State { state: ConnState::Closed, why: Some(why) } => eprintln!("ferry: {why}"),
        ClientEvent::ServerError { code, message } => eprintln!("ferry: the server said {code}: {message}"),
        _ => {}
    }
}

type Answer = tokio::task::JoinHandle<Result<PublishOutcome, ClientError>>;

pub fn publish(args: &PublishArgs) -> Result<(), String> {
    let mut config = client_config(&args.url, args.token.as_deref());
    config.producer = args.producer.clone();
    config.first_seq = args.seq;
    config.publish.buffered_max = PUBLISH_AHEAD_MAX;
    let runtime = runtime()?;
    let _inside = runtime.enter();
    let (client, mut events) = FerryClient::start(config);
    runtime.spawn(async move {
        while let Some(event) = events.next().await {
            report(&event);
        }
    });
    let mut bodies: Box<dyn Iterator<Item = Result<String, String>>> = if args.bodies.is_empty() {
        Box::new(std::io::stdin().lock().lines().map(|l| l.map_err(|e| format!("stdin: {e}"))))
    } else {
        Box::new(args.bodies.clone().into_iter().map(Ok))
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Handed to the client and not yet answered, in order.
    let mut waiting: VecDeque<(String, Answer)> = VecDeque::new();
    let (mut total, mut failed) = (0usize, Vec::new());
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut input_done = false;
    while !input_done || !waiting.is_empty() {
        if !input_done && waiting.len() < PUBLISH_AHEAD_MAX {
            match bodies.next() {
                Some(line) => {
                    let line = line?;
                    if !line.trim().is_empty() {
                        total += 1;
                        let answer = runtime.spawn(client.publish(&args.topic, args.key.as_deref(), &body_json(&line)));
                        waiting.push_back((line, answer));
                    }
                    continue;
                }
                None => input_done = true,
            }
        }
        let Some((line, answer)) = waiting.pop_front() else { continue };
        let outcome = runtime.block_on(async {
            let abort = answer.abort_handle();
            match tokio::time::timeout(timeout, answer).await {
                Ok(joined) => joined.unwrap_or(Err(ClientError::Closed)),
                Err(_) => {
                    // No answer for that long: stop, and let every waiting publish end.
                    client.close();
                    abort.abort();
                    Ok(PublishOutcome::Abandoned { why: format!("no answer within {} ms (--timeout-ms)", args.timeout_ms) })
                }
            }
        });
        match outcome {
            Ok(PublishOutcome::Stored { topic, id }) => {
                let mut text = String::from("{\"topic\":");
                write_json_str(&mut text, &topic);
                text.push_str(",\"id\":");
                push_u64(&mut text, id);
                text.push('}');
                writeln!(out, "{text}").map_err(|e| format!("stdout: {e}"))?;
            }
            Ok(PublishOutcome::Refused { code, message }) => failed.push(format!("{line}: refused, {code}: {message}")),
            Ok(PublishOutcome::Abandoned { why }) => failed.push(format!("{line}: {why}; it may or may not be stored")),
            Err(e) => failed.push(format!("{line}: {e:?}; it may or may not be stored")),
        }
    }
    client.close();
    if failed.is_empty() {
        return Ok(());
    }
    Err(format!("{} of {total} publishes failed:\n  {}", failed.len(), failed.join("\n  ")))
}

fn start_from(text: &str) -> Result<StartFrom, String> {
    match text {
        "latest" => Ok(StartFrom::Latest),
        "earliest" => Ok(StartFrom::Earliest),
        id => id.parse().map(StartFrom::Id).map_err(|_| format!("--from must be latest, earliest or an id, not '{id}'")),
    }
}

/// A delivery as the line `subscribe` prints: {"id","key","body"}.
fn delivery_line(id: u64, key: Option<&str>, body: &str) -> String {
    let mut line = String::from("{\"id\":");
    push_u64(&mut line, id);
    line.push_str(",\"key\":");
    match key {
        Some(key) => write_json_str(&mut line, key),
        None => line.push_str("null"),
    }
    line.push_str(",\"body\":");
    line.push_str(body);
    line.push('}');
    line
}

pub fn subscribe(args: &SubscribeArgs) -> Result<(), String> {
    let filter = match &args.filter {
        Some(text) => {
            let value: Value = serde_json::from_str(text).map_err(|e| format!("--filter is not JSON: {e}"))?;
            Some(Filter::from_json(value).ok_or("--filter is no PROTOCOL.md filter: {\"key_prefix\"} or {\"field\",\"equals\"}")?)
        }
        None => None,
    };
    let options = SubscribeOptions { from: start_from(&args.from)?, window: Some(args.window), filter, ..SubscribeOptions::new(&args.topic, &args.group) };
    let config = client_config(&args.url, args.token.as_deref());
    let runtime = runtime()?;
    runtime.block_on(async {
        let (client, mut events) = FerryClient::start(config);
        client.subscribe(options).await.map_err(|e| format!("cannot subscribe: {e:?}"))?;
        let stdout = std::io::stdout();
        let mut printed = 0u64;
        while args.count.is_none_or(|count| printed < count) {
            match events.next().await {
                Some(ClientEvent::Message(delivery)) => {
                    let mut out = stdout.lock();
                    writeln!(out, "{}", delivery_line(delivery.id, delivery.key.as_deref(), &delivery.body)).and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))?;
                    if !delivery.repaired {
                        client.ack(&delivery).await.map_err(|e| format!("cannot ack: {e:?}"))?;
                    }
                    printed += 1;
                }
                Some(ClientEvent::SubscribeFailed { code, message, .. }) => return Err(format!("the server refused the subscription: {code}: {message}")),
                Some(event @ ClientEvent::State { state: ConnState::Closed, .. }) => {
                    report(&event);
                    return Err("the client stopped".into());
                }
                Some(event) => report(&event),
                None => return Err("the client stopped".into()),
            }
        }
        client.close();
        // The last acks go out before the connection closes (close flushes them); give the
        // driver its turn.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_and_bodies_are_json() {
        assert_eq!(body_json("{\"a\": 1}"), "{\"a\": 1}");
        assert_eq!(body_json("plain \"text\""), "\"plain \\\"text\\\"\"");
        let line = delivery_line(7, Some("k\"1"), "[1,2]");
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), json!({"id": 7, "key": "k\"1", "body": [1, 2]}));
        assert_eq!(serde_json::from_str::<Value>(&delivery_line(8, None, "null")).unwrap(), json!({"id": 8, "key": null, "body": null}));
        assert_eq!(start_from("earliest"), Ok(StartFrom::Earliest));
        assert_eq!(start_from("12"), Ok(StartFrom::Id(12)));
        assert!(start_from("soon").is_err());
    }

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
        let detail: Vec<String> = ["group", "conn", "attempt", "segment", "copy_id", "coalesced_by"]
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
