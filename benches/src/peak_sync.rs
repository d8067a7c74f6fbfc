//! The "peak sync" scenario: many publishers' changes of orders (one key per order) go to a
//! coalescing group whose consumer takes them at a tenth of the rate they come; it reports how
//! many deliveries coalescing saved and how far behind the consumer fell and for how long.

use crate::ferry_adapter::{connect, number_after, read_text, tcp, Socket};
use crate::report::Progress;
use crate::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::Message;

/// What a run measured.
pub struct PeakSync {
    pub keys: u64,
    pub published: u64,
    pub publish_s: f64,
    pub consume_rate: u64,
    pub delivered: u64,
    /// Keys whose newest change had not been delivered when publishing ended.
    pub keys_behind_at_publish_end: u64,
    /// From the end of publishing until the newest change of every key was delivered.
    pub catch_up_s: f64,
    /// Keys whose newest change was not the last delivered of the key (must be 0).
    pub out_of_order_keys: u64,
}

impl PeakSync {
    pub fn table(&self) -> String {
        let saved = self.published.saturating_sub(self.delivered);
        format!(
            "peak sync: {} changes of {} keys from the publishers in {:.2} s ({:.0}/s); consumer at {}/s\n\
             delivered {} ({} saved by coalescing, {:.1} %)\n\
             when publishing ended {} keys were behind; all caught up {:.2} s later; keys whose newest came last: {} of {}",
            self.published,
            self.keys,
            self.publish_s,
            self.published as f64 / self.publish_s.max(1e-9),
            self.consume_rate,
            self.delivered,
            saved,
            100.0 * saved as f64 / self.published.max(1) as f64,
            self.keys_behind_at_publish_end,
            self.catch_up_s,
            self.keys - self.out_of_order_keys,
            self.keys,
        )
    }

    pub fn to_json(&self) -> String {
        json!({
            "scenario": "peak-sync", "keys": self.keys, "published": self.published, "publish_s": self.publish_s,
            "consume_rate": self.consume_rate, "delivered": self.delivered, "saved": self.published.saturating_sub(self.delivered),
            "keys_behind_at_publish_end": self.keys_behind_at_publish_end, "catch_up_s": self.catch_up_s, "out_of_order_keys": self.out_of_order_keys,
        })
        .to_string()
    }
}

fn key_of(publisher: usize, seq: u64, keys: u64) -> u64 {
    (seq.wrapping_mul(7_919) + publisher as u64 * 104_729) % keys
}

/// Runs the scenario: `keys` orders, `args.count` changes over `args.publishers`.
pub fn run(args: &Args, keys: u64, progress: &Arc<Progress>) -> Result<PeakSync, String> {
    let topic = args.topic.clone().unwrap_or_default();
    let consume_rate = args.consume_rate.unwrap_or(if args.rate > 0 { (args.rate / 10).max(1) } else { 1_000 });
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let mut consumer = connect(args.url_for(0, 0))?;
    let mut sub = json!({"op": "sub", "req": 1, "topic": topic, "group": "sync", "from": "latest", "window": args.window});
    if args.coalesce_ms > 0 {
        sub["coalesce_ms"] = json!(args.coalesce_ms);
    }
    consumer.send(Message::text(sub.to_string())).map_err(|e| e.to_string())?;
    let reply = read_text(&mut consumer)?;
    if !reply.contains("\"suback\"") {
        return Err(format!("sub refused: {reply}"));
    }
    // Newest id of each key, from the pubacks (filled by the publishers).
    let newest: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let started = Instant::now();
    let publishers: Vec<_> = (0..args.publishers)
        .map(|p| {
            let (args, topic, newest, progress) = (args.clone(), topic.clone(), newest.clone(), progress.clone());
            let count = args.count / args.publishers as u64 + u64::from((p as u64) < args.count % args.publishers as u64);
            std::thread::spawn(move || publish(p, &args, &topic, count, keys, deadline, &newest, &progress))
        })
        .collect();
    let publish_end: Arc<Mutex<Option<Instant>>> = Arc::default();
    let waiter = {
        let publish_end = publish_end.clone();
        std::thread::spawn(move || {
            let results: Vec<Result<(), String>> = publishers.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a publisher panicked".into()))).collect();
            *publish_end.lock().unwrap() = Some(Instant::now());
            results.into_iter().collect::<Result<(), String>>()
        })
    };
    tcp(&consumer).set_read_timeout(Some(Duration::from_millis(1))).map_err(|e| e.to_string())?;
    let ack_interval = Duration::from_secs_f64(1.0 / consume_rate as f64);
    let mut to_ack: std::collections::VecDeque<u64> = Default::default();
    let mut next_ack = Instant::now();
    let mut last_of_key: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out_of_order: std::collections::BTreeSet<u64> = Default::default();
    let mut delivered = 0u64;
    let mut behind_at_end: Option<u64> = None;
    loop {
        if Instant::now() > deadline {
            return Err(format!("timed out: {delivered} delivered, {} keys seen", last_of_key.len()));
        }
        let ended = *publish_end.lock().unwrap();
        if let Some(ended_at) = ended {
            let newest = newest.lock().unwrap();
            let behind = newest.iter().filter(|(k, id)| last_of_key.get(k) != Some(id)).count() as u64;
            behind_at_end.get_or_insert(behind);
            if behind == 0 {
                waiter.join().map_err(|_| "publishers' waiter panicked")??;
                let publish_s = ended_at.duration_since(started).as_secs_f64();
                let catch_up_s = Instant::now().duration_since(ended_at).as_secs_f64();
                let out_of_order_keys = out_of_order.iter().filter(|k| newest.contains_key(k)).count() as u64;
                let published = args.count;
                return Ok(PeakSync { keys, published, publish_s, consume_rate, delivered, keys_behind_at_publish_end: behind_at_end.unwrap_or(0), catch_up_s, out_of_order_keys });
            }
        }
        if let Some(&id) = to_ack.front().filter(|_| Instant::now() >= next_ack) {
            to_ack.pop_front();
            next_ack += ack_interval;
            let ack = format!("{{\"op\":\"ack\",\"topic\":\"{topic}\",\"group\":\"sync\",\"ids\":[{id}]}}");
            consumer.send(Message::text(ack)).map_err(|e| e.to_string())?;
        } else if to_ack.is_empty() {
            next_ack = next_ack.max(Instant::now());
        }
        match consumer.read() {
            Ok(Message::Text(text)) if text.starts_with("{\"op\":\"msg\"") => {
                let (Some(id), Some(key)) = (number_after(&text, "\"id\":"), number_after(&text, "\"key\":\"order-")) else { continue };
                delivered += 1;
                progress.delivered.fetch_add(1, Ordering::Relaxed);
                let last = last_of_key.entry(key).or_insert(0);
                if id <= *last {
                    out_of_order.insert(key);
                }
                *last = id.max(*last);
                to_ack.push_back(id);
            }
            Ok(Message::Text(text)) if text.contains("\"error\"") => return Err(format!("consumer got {text}")),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("consumer: {e}")),
        }
    }
}

/// One publisher: `count` changes of keys spread over `keys`, up to `publish_window` ahead.
#[allow(clippy::too_many_arguments)]
fn publish(p: usize, args: &Args, topic: &str, count: u64, keys: u64, deadline: Instant, newest: &Mutex<BTreeMap<u64, u64>>, progress: &Progress) -> Result<(), String> {
    let mut ws: Socket = connect(args.url_for(p, 1))?;
    tcp(&ws).set_read_timeout(Some(Duration::from_millis(1))).map_err(|e| e.to_string())?;
    let window = args.publish_window.max(1) as u64;
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(args.publishers as f64 / args.rate as f64));
    let started = Instant::now();
    let body = "x".repeat(args.size.saturating_sub(40));
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut mine = BTreeMap::new();
    while acked < count {
        if Instant::now() > deadline {
            return Err(format!("publisher {p} timed out with {acked} of {count} acked"));
        }
        let due = interval.is_none_or(|every| Instant::now() >= started + every.mul_f64(sent as f64));
        if sent < count && sent - acked < window && due {
            let key = key_of(p, sent, keys);
            let frame = format!("{{\"op\":\"pub\",\"req\":{sent},\"topic\":\"{topic}\",\"key\":\"order-{key}\",\"body\":{{\"order\":{key},\"pad\":\"{body}\"}}}}");
            ws.send(Message::text(frame)).map_err(|e| e.to_string())?;
            sent += 1;
            continue;
        }
        match ws.read() {
            Ok(Message::Text(text)) if text.starts_with("{\"op\":\"puback\"") => {
                let (Some(seq), Some(id)) = (number_after(&text, "\"req\":"), number_after(&text, "\"id\":")) else { continue };
                let slot = mine.entry(key_of(p, seq, keys)).or_insert(0);
                *slot = id.max(*slot);
                acked += 1;
                progress.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Message::Text(text)) if text.contains("\"error\"") => return Err(format!("publisher {p} got {text}")),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("publisher {p}: {e}")),
        }
    }
    let mut newest = newest.lock().unwrap();
    for (key, id) in mine {
        let slot = newest.entry(key).or_insert(0);
        *slot = id.max(*slot);
    }
    Ok(())
}
