//! The load against ferry over its own protocol: blocking tungstenite connections, one thread
//! each, pipelined publishes, batched acks. Parsing is by substring to keep the tool's own CPU
//! use low: it shares the machine with the server.

use crate::report::{self, percentiles, timed_body, Progress, Report};
use crate::stream::Stream;
use crate::Args;
use serde_json::json;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

pub(crate) type Socket = WebSocket<Stream>;

/// Acks are sent in frames of up to this many ids, or when the socket goes quiet.
const ACK_BATCH: usize = 64;

pub(crate) fn tcp(ws: &Socket) -> &TcpStream {
    ws.get_ref().tcp()
}

pub(crate) fn connect(url: &str) -> Result<Socket, String> {
    let (mut ws, _) = tungstenite::client::client(url, Stream::connect(url)?).map_err(|e| format!("connect {url}: {e}"))?;
    tcp(&ws).set_nodelay(true).map_err(|e| e.to_string())?;
    let welcome = read_text(&mut ws)?;
    if !welcome.contains("\"welcome\"") {
        return Err(format!("expected welcome, got {welcome}"));
    }
    // A server with identities: say hello with FERRY_TOKEN (answered only if it is wrong).
    if let Ok(token) = std::env::var("FERRY_TOKEN") {
        ws.send(Message::text(serde_json::json!({"op": "hello", "token": token}).to_string())).map_err(|e| e.to_string())?;
    }
    Ok(ws)
}

/// A connection for the scale run: small buffers (it holds many), optionally from `source`.
fn connect_idle(url: &str, source: Option<&str>, wait_s: u64) -> Result<Socket, String> {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest).split('/').next().unwrap_or_default();
    let target: std::net::SocketAddr = authority.parse().map_err(|e| format!("{authority}: {e}"))?;
    let stream = match source {
        None => TcpStream::connect(target).map_err(|e| format!("connect {target}: {e}"))?,
        Some(source) => connect_from(source, target)?,
    };
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // A server out of descriptors leaves connections unanswered in its backlog: do not hang.
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let config = tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let stream = Stream::over(stream, url.starts_with("wss://").then_some(authority))?;
    let (mut ws, _) = tungstenite::client::client_with_config(url, stream, Some(config)).map_err(|e| format!("handshake: {e}"))?;
    let welcome = read_text(&mut ws)?;
    if !welcome.contains("\"welcome\"") {
        return Err(format!("expected welcome, got {welcome}"));
    }
    tcp(&ws).set_read_timeout(Some(Duration::from_secs(wait_s))).map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Binds the local end to `source` (any port) before connecting: each 127.0.0.x source address
/// brings its own ~28 000 ephemeral ports, which is how one machine holds 100 000 connections.
fn connect_from(source: &str, target: std::net::SocketAddr) -> Result<TcpStream, String> {
    use std::os::fd::FromRawFd;
    let source: std::net::Ipv4Addr = source.parse().map_err(|e| format!("source address {source}: {e}"))?;
    let std::net::SocketAddr::V4(target) = target else { return Err("source addresses need an IPv4 target".into()) };
    let v4 = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped below;
    // the sockaddr structs live on the stack for the duration of each call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = v4(source, 0);
        if libc::bind(fd, &local as *const libc::sockaddr_in as *const libc::sockaddr, len) != 0 {
            return Err(format!("bind {source}: {}", std::io::Error::last_os_error()));
        }
        let remote = v4(*target.ip(), target.port());
        if libc::connect(fd, &remote as *const libc::sockaddr_in as *const libc::sockaddr, len) != 0 {
            return Err(format!("connect {target} from {source}: {}", std::io::Error::last_os_error()));
        }
        Ok(stream)
    }
}

pub(crate) fn read_text(ws: &mut Socket) -> Result<String, String> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Ok(t.as_str().to_string()),
            Ok(Message::Close(f)) => return Err(format!("server closed: {f:?}")),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

pub(crate) fn number_after(text: &str, field: &str) -> Option<u64> {
    let start = text.find(field)? + field.len();
    let digits = &text[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

fn subscribe(url: &str, topic: &str, group: &str, window: u32) -> Result<Socket, String> {
    let mut ws = connect(url)?;
    let sub = json!({"op": "sub", "req": 1, "topic": topic, "group": group, "from": "latest", "window": window});
    ws.send(Message::text(sub.to_string())).map_err(|e| e.to_string())?;
    let reply = read_text(&mut ws)?;
    if !reply.contains("\"suback\"") {
        return Err(format!("sub refused: {reply}"));
    }
    Ok(ws)
}

struct SubscriberResult {
    latencies_ns: Vec<u64>,
    last_delivery: Instant,
}

fn run_subscriber(mut ws: Socket, topic: String, group: String, count: u64, epoch: Instant, deadline: Instant, progress: Arc<Progress>) -> Result<SubscriberResult, String> {
    tcp(&ws).set_read_timeout(Some(Duration::from_millis(2))).map_err(|e| e.to_string())?;
    let mut latencies_ns = Vec::with_capacity(count as usize);
    let mut pending: Vec<u64> = Vec::with_capacity(ACK_BATCH);
    let mut last_delivery = Instant::now();
    let ack_prefix = format!("{{\"op\":\"ack\",\"topic\":\"{topic}\",\"group\":\"{group}\",\"ids\":[");
    let send_acks = |ws: &mut Socket, pending: &mut Vec<u64>| -> Result<(), String> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut frame = ack_prefix.clone();
        for (i, id) in pending.iter().enumerate() {
            if i > 0 {
                frame.push(',');
            }
            frame.push_str(&id.to_string());
        }
        frame.push_str("]}");
        pending.clear();
        ws.send(Message::text(frame)).map_err(|e| e.to_string())
    };
    while (latencies_ns.len() as u64) < count {
        if Instant::now() > deadline {
            return Err(format!("subscriber {group} timed out with {} of {count}", latencies_ns.len()));
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                let text = text.as_str();
                if !text.starts_with("{\"op\":\"msg\"") {
                    if text.contains("\"error\"") {
                        return Err(format!("subscriber got {text}"));
                    }
                    continue;
                }
                let now = epoch.elapsed().as_nanos() as u64;
                let body_at = text.find("\"body\":").unwrap_or(0);
                if let (Some(id), Some(sent)) = (number_after(text, "\"id\":"), report::body_time(&text.as_bytes()[body_at..])) {
                    latencies_ns.push(now.saturating_sub(sent));
                    pending.push(id);
                }
                last_delivery = Instant::now();
                progress.delivered.fetch_add(1, Ordering::Relaxed);
                if pending.len() >= ACK_BATCH {
                    send_acks(&mut ws, &mut pending)?;
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => send_acks(&mut ws, &mut pending)?,
            Err(e) => return Err(format!("subscriber: {e}")),
        }
    }
    send_acks(&mut ws, &mut pending)?;
    let _ = ws.close(None);
    Ok(SubscriberResult { latencies_ns, last_delivery })
}

fn run_publisher(mut ws: Socket, topic: String, count: u64, args: Args, epoch: Instant, deadline: Instant, progress: Arc<Progress>) -> Result<Instant, String> {
    let window = args.publish_window.max(1) as u64;
    let interval_ns = if args.rate > 0 { 1e9 / (args.rate as f64 / args.publishers as f64) } else { 0.0 };
    let started = Instant::now();
    let (mut sent, mut acked) = (0u64, 0u64);
    // Publishes refused with `overloaded` (a server budget was full): sent again after a pause.
    let mut refused: Vec<u64> = Vec::new();
    let mut retry_at = Instant::now();
    if interval_ns > 0.0 {
        tcp(&ws).set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let frame_for = |seq: u64| format!("{{\"op\":\"pub\",\"req\":{seq},\"topic\":\"{topic}\",\"body\":{}}}", timed_body(epoch, args.size));
    while acked < count {
        if Instant::now() > deadline {
            return Err(format!("publisher timed out with {acked} of {count} acked"));
        }
        let mut wrote = false;
        if !refused.is_empty() && Instant::now() >= retry_at {
            for seq in refused.drain(..) {
                let _ = ws.write(Message::text(frame_for(seq)));
            }
            wrote = true;
        }
        if interval_ns == 0.0 {
            // Refill in bursts (half a window) so one flush carries many frames.
            if sent - acked <= window / 2 {
                while sent < count && sent - acked < window {
                    let _ = ws.write(Message::text(frame_for(sent)));
                    sent += 1;
                    wrote = true;
                }
            }
        } else {
            // Paced: socket timeouts are too coarse (jiffies), so poll without blocking and
            // sleep with the high-resolution timer until the next message is due.
            let due = started + Duration::from_nanos((sent as f64 * interval_ns) as u64);
            let now = Instant::now();
            if sent < count && now >= due && sent - acked < window {
                let _ = ws.write(Message::text(frame_for(sent)));
                sent += 1;
                wrote = true;
            } else if sent < count {
                std::thread::sleep(due.saturating_duration_since(now).min(Duration::from_micros(100)));
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        if wrote {
            match ws.flush() {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("publisher flush: {e}")),
            }
            progress.published.store(sent, Ordering::Relaxed);
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                let text = text.as_str();
                if text.starts_with("{\"op\":\"puback\"") {
                    acked += 1;
                    progress.acked.fetch_add(1, Ordering::Relaxed);
                } else if text.contains("\"overloaded\"") {
                    refused.extend(number_after(text, "\"req\":"));
                    retry_at = Instant::now() + Duration::from_millis(5);
                } else if text.contains("\"error\"") {
                    return Err(format!("publish refused: {text}"));
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("publisher: {e}")),
        }
    }
    let _ = ws.close(None);
    Ok(Instant::now())
}

pub fn run(args: &Args, progress: &Arc<Progress>) -> Result<Report, String> {
    let topic = args.topic.clone().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let connecting = Instant::now();
    let mut subscribers = Vec::new();
    for i in 0..args.subscribers {
        subscribers.push(subscribe(args.url_for(i, 0), &topic, &format!("g{i}"), args.window)?);
    }
    let mut publishers = Vec::new();
    for i in 0..args.publishers {
        publishers.push(connect(args.url_for(i, 1))?);
    }
    let connections_per_s = (args.subscribers + args.publishers) as f64 / connecting.elapsed().as_secs_f64();
    let printer = progress.spawn_printer(args.count * args.subscribers as u64);
    let epoch = Instant::now();
    let barrier = Arc::new(Barrier::new(args.publishers + 1));
    let sub_threads: Vec<_> = subscribers
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let (topic, progress, count) = (topic.clone(), progress.clone(), args.count);
            std::thread::spawn(move || run_subscriber(ws, topic, format!("g{i}"), count, epoch, deadline, progress))
        })
        .collect();
    let per_publisher = args.count / args.publishers as u64;
    let pub_threads: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let extra = if i == 0 { args.count % args.publishers as u64 } else { 0 };
            let (topic, progress, args, barrier) = (topic.clone(), progress.clone(), args.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                run_publisher(ws, topic, per_publisher + extra, args, epoch, deadline, progress)
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut last_ack = started;
    let mut errors = Vec::new();
    for t in pub_threads {
        match t.join().map_err(|_| "publisher panicked".to_string()).and_then(|r| r) {
            Ok(at) => last_ack = last_ack.max(at),
            Err(e) => errors.push(e),
        }
    }
    let mut latencies = Vec::new();
    let mut last_delivery = started;
    for t in sub_threads {
        match t.join().map_err(|_| "subscriber panicked".to_string()).and_then(|r| r) {
            Ok(r) => {
                latencies.extend(r.latencies_ns.into_iter().map(|ns| ns / 1_000));
                last_delivery = last_delivery.max(r.last_delivery);
            }
            Err(e) => errors.push(e),
        }
    }
    progress.done.store(true, Ordering::Relaxed);
    let _ = printer.join();
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    if let Some(path) = &args.dump_latencies {
        let text: String = latencies.iter().map(|us| format!("{us}\n")).collect();
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let notes = if args.rate > 0 { format!("target rate {} msgs/s", args.rate) } else { "max rate".into() };
    Ok(Report::from_run("ferry", args, started, last_ack, last_delivery, latencies, connections_per_s, notes))
}

/// Holds `idle` subscriber connections (each its own group), publishes one message (unless
/// `--await-publish`: then another process does), and measures the time until every subscriber
/// has it and the server's memory per connection. The message's body is the wall-clock time of
/// its publish, so processes on one machine (one per node of a cluster: each holds at most a
/// process's descriptors) measure from the same instant.
pub fn scale(args: &Args, idle: usize, _progress: &Arc<Progress>) -> Result<Report, String> {
    if idle == 0 && args.await_publish {
        return Err("--await-publish needs --idle-subscribers above 0".into());
    }
    raise_fd_limit(idle as u64 + 1024);
    let topic = args.topic.clone().unwrap_or_default();
    let rss_before = args.pid.and_then(report::current_rss_kib);
    let connecting = Instant::now();
    let mut sockets = Vec::with_capacity(idle);
    for i in 0..idle {
        let source = (!args.source_addrs.is_empty()).then(|| args.source_addrs[i % args.source_addrs.len()].as_str());
        let mut ws = connect_idle(args.url_for(i, 0), source, args.timeout_s)?;
        let group = format!("{}{i}", args.group_prefix);
        let sub = json!({"op": "sub", "req": i, "topic": topic, "group": group, "from": "latest", "window": 1});
        ws.send(Message::text(sub.to_string())).map_err(|e| e.to_string())?;
        sockets.push(ws);
        if (i + 1) % 1000 == 0 {
            eprint!("\r{} connections", i + 1);
        }
    }
    for ws in &mut sockets {
        let reply = read_text(ws)?;
        if !reply.contains("\"suback\"") {
            return Err(format!("sub refused: {reply}"));
        }
    }
    let connections_per_s = idle as f64 / connecting.elapsed().as_secs_f64().max(1e-9);
    let rss_after = args.pid.and_then(report::current_rss_kib);
    if args.await_publish {
        // The line a script waits for before it publishes.
        eprintln!("\r{idle} idle subscribers ready ({connections_per_s:.0} connections/s)");
    } else {
        eprintln!("\r{idle} idle subscribers connected ({connections_per_s:.0}/s)");
        publish_stamped(args.url_for(0, 1), &topic)?;
    }
    let mut latencies = Vec::with_capacity(idle);
    for ws in &mut sockets {
        let text = read_text(ws)?;
        let stamp_ns = number_after(&text, STAMP).ok_or_else(|| format!("expected the stamped message, got {text}"))?;
        latencies.push(unix_ns().saturating_sub(stamp_ns) / 1_000);
    }
    if let Some(path) = &args.dump_latencies {
        let text: String = latencies.iter().map(|us| format!("{us}\n")).collect();
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let latest_us = latencies.iter().copied().max().unwrap_or(0);
    let per_connection = match (rss_before, rss_after) {
        (Some(b), Some(a)) if idle > 0 => format!("{:.1} KiB server RSS per connection", (a.saturating_sub(b)) as f64 / idle as f64),
        _ => "pass --pid for RSS per connection".into(),
    };
    Ok(Report {
        system: "ferry (scale)".into(),
        messages: 1,
        size: 7,
        publishers: 1,
        subscribers: idle,
        acked_publishes_per_s: 0.0,
        deliveries_per_s: idle as f64 / (latest_us.max(1) as f64 / 1e6),
        latency_us: percentiles(latencies),
        connections_per_s,
        server_peak_rss_kib: None,
        server_cpu_ms: None,
        notes: format!("all {idle} subscribers had the message {:.1} ms after publish; {per_connection}", latest_us as f64 / 1e3),
    })
}

/// What the scale run's message body starts with; the wall-clock nanoseconds of its publish follow.
const STAMP: &str = "stamp:";

fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Publishes the scale run's one message, stamped with the wall-clock time, and waits for its puback.
fn publish_stamped(url: &str, topic: &str) -> Result<(), String> {
    let mut publisher = connect(url)?;
    let body = format!("{STAMP}{}", unix_ns());
    publisher.send(Message::text(json!({"op": "pub", "req": 1, "topic": topic, "body": body}).to_string())).map_err(|e| e.to_string())?;
    let reply = read_text(&mut publisher)?;
    if !reply.contains("\"puback\"") {
        return Err(format!("expected puback, got {reply}"));
    }
    eprintln!("published at {body}");
    Ok(())
}

fn raise_fd_limit(wanted: u64) {
    // The scale run holds one descriptor per connection. Root may raise the hard limit too.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let raised = libc::rlimit { rlim_cur: wanted.max(limit.rlim_cur), rlim_max: wanted.max(limit.rlim_max) };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}
