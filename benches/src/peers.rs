//! The same workload against the peers: Mosquitto over MQTT (QoS 1 publish, QoS 1
//! subscription) and NATS JetStream (file-storage stream, explicit-ack pull consumer).

use crate::report::{body_time, timed_body, Progress, Report};
use crate::Args;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn pace(started: Instant, sent: u64, interval_ns: f64) {
    if interval_ns > 0.0 {
        let due = started + Duration::from_nanos((sent as f64 * interval_ns) as u64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

pub fn mqtt(args: &Args, progress: &Arc<Progress>) -> Result<Report, String> {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let (host, port) = args.url.rsplit_once(':').ok_or("mosquitto --url is HOST:PORT")?;
    let port: u16 = port.parse().map_err(|_| "bad port")?;
    let topic = args.topic.clone().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let epoch = Instant::now();
    let options = |id: String| {
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_inflight(args.publish_window.min(65_535) as u16);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o
    };
    let connecting = Instant::now();
    let mut sub_threads = Vec::new();
    let ready = Arc::new(Barrier::new(args.subscribers + 1));
    for i in 0..args.subscribers {
        let (client, mut connection) = Client::new(options(format!("bench-sub-{i}-{}", std::process::id())), 1024);
        client.subscribe(topic.clone(), QoS::AtLeastOnce).map_err(|e| e.to_string())?;
        let (progress, ready, count) = (progress.clone(), ready.clone(), args.count);
        sub_threads.push(std::thread::spawn(move || -> Result<(Vec<u64>, Instant), String> {
            let mut latencies = Vec::with_capacity(count as usize);
            let mut last = Instant::now();
            let mut subscribed = false;
            for event in connection.iter() {
                match event.map_err(|e| format!("mqtt subscriber: {e}"))? {
                    Event::Incoming(Packet::SubAck(_)) if !subscribed => {
                        subscribed = true;
                        ready.wait();
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let now = epoch.elapsed().as_nanos() as u64;
                        if let Some(sent) = body_time(&p.payload) {
                            latencies.push(now.saturating_sub(sent) / 1_000);
                        }
                        last = Instant::now();
                        progress.delivered.fetch_add(1, Ordering::Relaxed);
                        if latencies.len() as u64 >= count {
                            break;
                        }
                    }
                    _ => {}
                }
                if Instant::now() > deadline {
                    return Err("mqtt subscriber timed out".into());
                }
            }
            let _ = client.disconnect();
            Ok((latencies, last))
        }));
    }
    ready.wait();
    let connections_per_s = args.subscribers as f64 / connecting.elapsed().as_secs_f64();
    let printer = progress.spawn_printer(args.count * args.subscribers as u64);
    let started = Instant::now();
    let per_publisher = args.count / args.publishers as u64;
    let interval_ns = if args.rate > 0 { 1e9 / (args.rate as f64 / args.publishers as f64) } else { 0.0 };
    let mut pub_threads = Vec::new();
    for i in 0..args.publishers {
        let count = per_publisher + if i == 0 { args.count % args.publishers as u64 } else { 0 };
        let (client, mut connection) = Client::new(options(format!("bench-pub-{i}-{}", std::process::id())), args.publish_window.max(1));
        let (ack_progress, topic, size) = (progress.clone(), topic.clone(), args.size);
        let acks = std::thread::spawn(move || -> Result<Instant, String> {
            let progress = ack_progress;
            let mut acked = 0;
            for event in connection.iter() {
                if let Event::Incoming(Packet::PubAck(_)) = event.map_err(|e| format!("mqtt publisher: {e}"))? {
                    acked += 1;
                    progress.acked.fetch_add(1, Ordering::Relaxed);
                    if acked >= count {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    return Err("mqtt publisher timed out".into());
                }
            }
            Ok(Instant::now())
        });
        let progress = progress.clone();
        pub_threads.push(std::thread::spawn(move || -> Result<Instant, String> {
            for sent in 0..count {
                pace(started, sent, interval_ns);
                client.publish(topic.as_str(), QoS::AtLeastOnce, false, timed_body(epoch, size).into_bytes()).map_err(|e| e.to_string())?;
                progress.published.fetch_add(1, Ordering::Relaxed);
            }
            let done = acks.join().map_err(|_| "ack thread panicked".to_string())??;
            let _ = client.disconnect();
            Ok(done)
        }));
    }
    let mut last_ack = started;
    for t in pub_threads {
        last_ack = last_ack.max(t.join().map_err(|_| "publisher panicked".to_string())??);
    }
    let mut latencies = Vec::new();
    let mut last_delivery = started;
    for t in sub_threads {
        let (l, last) = t.join().map_err(|_| "subscriber panicked".to_string())??;
        latencies.extend(l);
        last_delivery = last_delivery.max(last);
    }
    progress.done.store(true, Ordering::Relaxed);
    let _ = printer.join();
    Ok(Report::from_run("mosquitto", args, started, last_ack, last_delivery, latencies, connections_per_s, "MQTT QoS 1 publish + QoS 1 subscription".into()))
}

pub fn nats(args: &Args, progress: &Arc<Progress>) -> Result<Report, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(nats_async(args.clone(), progress.clone()))
}

async fn nats_async(args: Args, progress: Arc<Progress>) -> Result<Report, String> {
    use async_nats::jetstream::{self, consumer, stream};
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let topic = args.topic.clone().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let epoch = Instant::now();
    let connecting = Instant::now();
    let client = async_nats::connect(args.url.as_str()).await.map_err(|e| format!("nats connect: {e}"))?;
    let js = jetstream::new(client);
    let stream_name = topic.replace(['.', '-'], "_");
    let stream = js
        .get_or_create_stream(stream::Config {
            name: stream_name,
            subjects: vec![topic.clone()],
            storage: stream::StorageType::File,
            num_replicas: args.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("nats stream: {e}"))?;
    let mut subscribers = Vec::new();
    for i in 0..args.subscribers {
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("g{i}")),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::New,
                max_ack_pending: args.window as i64,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("nats consumer: {e}"))?;
        let mut messages = consumer.messages().await.map_err(|e| format!("nats messages: {e}"))?;
        let (progress, count) = (progress.clone(), args.count);
        subscribers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count as usize);
            let mut last = Instant::now();
            while (latencies.len() as u64) < count {
                let Ok(next) = tokio::time::timeout_at(deadline.into(), messages.next()).await else {
                    return Err("nats subscriber timed out".to_string());
                };
                let message = next.ok_or("nats stream ended")?.map_err(|e| e.to_string())?;
                let now = epoch.elapsed().as_nanos() as u64;
                if let Some(sent) = body_time(&message.payload) {
                    latencies.push(now.saturating_sub(sent) / 1_000);
                }
                message.ack().await.map_err(|e| e.to_string())?;
                last = Instant::now();
                progress.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Ok((latencies, last))
        }));
    }
    let connections_per_s = (1 + args.subscribers) as f64 / connecting.elapsed().as_secs_f64();
    let printer = progress.spawn_printer(args.count * args.subscribers as u64);
    let started = Instant::now();
    let interval_ns = if args.rate > 0 { 1e9 / args.rate as f64 } else { 0.0 };
    let mut pending = FuturesUnordered::new();
    for sent in 0..args.count {
        if interval_ns > 0.0 {
            let due = started + Duration::from_nanos((sent as f64 * interval_ns) as u64);
            tokio::time::sleep_until(due.into()).await;
        }
        while pending.len() >= args.publish_window.max(1) {
            let ack: Result<_, _> = pending.next().await.ok_or("no pending acks")?;
            ack.map_err(|e| format!("nats puback: {e}"))?;
            progress.acked.fetch_add(1, Ordering::Relaxed);
        }
        let ack = js.publish(topic.clone(), timed_body(epoch, args.size).into()).await.map_err(|e| format!("nats publish: {e}"))?;
        pending.push(std::future::IntoFuture::into_future(ack));
        progress.published.fetch_add(1, Ordering::Relaxed);
    }
    while let Some(ack) = pending.next().await {
        let ack: Result<_, _> = ack;
        ack.map_err(|e| format!("nats puback: {e}"))?;
        progress.acked.fetch_add(1, Ordering::Relaxed);
    }
    let last_ack = Instant::now();
    let mut latencies = Vec::new();
    let mut last_delivery = started;
    for s in subscribers {
        let (l, last) = s.await.map_err(|e| e.to_string())??;
        latencies.extend(l);
        last_delivery = last_delivery.max(last);
    }
    progress.done.store(true, Ordering::Relaxed);
    let _ = printer.join();
    let notes = format!("JetStream file storage, R{}, explicit-ack pull consumer", args.replicas);
    Ok(Report::from_run("nats-jetstream", &args, started, last_ack, last_delivery, latencies, connections_per_s, notes))
}
