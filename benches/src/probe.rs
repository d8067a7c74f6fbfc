//! The failover probe: one idempotent publish every few milliseconds through a cluster's
//! nodes, moving on to the next node whenever the one in use fails it; the longest time
//! between two pubacks, while a node is killed meanwhile, is what a publisher saw of the
//! failover (kill -9 of a leader → first puback again), give or take one probe interval.

use crate::Args;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// How long a publish may go unanswered before the probe tries the next node.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

fn connect(url: &str) -> Option<Socket> {
    let (ws, _) = tungstenite::connect(url).ok()?;
    if let MaybeTlsStream::Plain(stream) = ws.get_ref() {
        stream.set_read_timeout(Some(Duration::from_millis(50))).ok()?;
        stream.set_nodelay(true).ok()?;
    }
    Some(ws)
}

/// Sends `frame` and waits for its puback: `Some(id)`, or `None` when the node failed it.
fn publish(ws: &mut Socket, frame: &Value, req: u64) -> Option<u64> {
    ws.send(Message::text(frame.to_string())).ok()?;
    let deadline = Instant::now() + ANSWER_WAIT;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let answer: Value = serde_json::from_str(text.as_str()).ok()?;
                if answer["req"] == json!(req) {
                    return answer["id"].as_u64().filter(|_| answer["op"] == "puback");
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
    None
}

pub fn run(args: &Args, every_ms: u64) -> Result<String, String> {
    let urls = args.urls();
    let topic = args.topic.clone().unwrap_or_default();
    let producer = format!("probe-{}", std::process::id());
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let (mut at, mut socket) = (0, None);
    let mut last_puback: Option<Instant> = None;
    let mut longest = (Duration::ZERO, 0u64);
    let mut moves = 0;
    for seq in 1..=args.count {
        let frame = json!({"op": "pub", "req": seq, "topic": topic, "producer": producer, "seq": seq, "body": {"probe": seq}});
        loop {
            if Instant::now() > deadline {
                return Err(format!("no puback for seq {seq} within --timeout-s"));
            }
            let ws = match socket.as_mut() {
                Some(ws) => ws,
                None => match connect(urls[at % urls.len()]) {
                    Some(ws) => socket.insert(ws),
                    None => {
                        at += 1;
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                },
            };
            if publish(ws, &frame, seq).is_some() {
                let now = Instant::now();
                if let Some(previous) = last_puback {
                    if now - previous > longest.0 {
                        longest = (now - previous, seq);
                    }
                }
                last_puback = Some(now);
                break;
            }
            socket = None;
            at += 1;
            moves += 1;
        }
        std::thread::sleep(Duration::from_millis(every_ms));
    }
    Ok(format!(
        "probe       {} publishes every {every_ms} ms over {} node(s)\nlongest gap {} ms between pubacks (before seq {}), {moves} moves to another node",
        args.count,
        urls.len(),
        longest.0.as_millis(),
        longest.1
    ))
}
