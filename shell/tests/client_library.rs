//! The Rust client library (shell/client) against the real server, killed with SIGKILL twice
//! while a library publisher and a library subscriber run: the application sees every
//! published body exactly once, in key order, and every publish call resolves.

mod support;

use ferry_client::{ClientConfig, ClientEvent, ConnState, FerryClient, PublishOutcome, StartFrom, SubscribeOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{temp_dir, Server};

const MESSAGES: u64 = 300;
const KEYS: u64 = 5;

#[test]
fn library_clients_keep_their_promises_across_two_kill_9s() {
    let dir = temp_dir("client-library");
    let mut server = Server::start(&dir, &format!("127.0.0.1:{}", support::restartable_port()), &[]);
    let addr = server.addr.clone();
    let url = server.url();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let outcomes: Arc<Mutex<BTreeMap<u64, Vec<PublishOutcome>>>> = Arc::default();
    // What the subscribing application was handed: (key, n) in the order it came.
    let handed: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();

    let fast_reconnects = |seed| {
        let mut config = ClientConfig::new(vec![url.clone()], seed);
        config.backoff.initial_ms = 20;
        config.backoff.max_ms = 500;
        config
    };
    let (subscriber, mut events) = runtime.block_on(async { FerryClient::start(fast_reconnects(2)) });
    let (publisher, mut publisher_events) = runtime.block_on(async { FerryClient::start(fast_reconnects(1)) });
    let publisher_drops: Arc<Mutex<u32>> = Arc::default();
    let drops = publisher_drops.clone();
    runtime.spawn(async move {
        while let Some(event) = publisher_events.next().await {
            if matches!(event, ClientEvent::State { state: ConnState::Disconnected, .. }) {
                *drops.lock().unwrap() += 1;
            }
        }
    });
    runtime.block_on(subscriber.subscribe(SubscribeOptions { from: StartFrom::Earliest, window: Some(32), ..SubscribeOptions::new("orders", "billing") })).unwrap();

    let handed_by_app = handed.clone();
    let acker = subscriber.clone();
    runtime.spawn(async move {
        while let Some(event) = events.next().await {
            if let ClientEvent::Message(delivery) = event {
                let body: Value = serde_json::from_str(&delivery.body).unwrap();
                handed_by_app.lock().unwrap().push((delivery.key.clone().unwrap_or_default(), body["n"].as_u64().unwrap()));
                if !delivery.repaired {
                    acker.ack(&delivery).await.unwrap();
                }
            }
        }
    });
    // Twenty publishes in flight at a time, as an application with concurrent requests would;
    // the server is killed when a third and two thirds are answered, with the next in flight.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(20));
    for n in 0..MESSAGES {
        let (publisher, outcomes, in_flight) = (publisher.clone(), outcomes.clone(), in_flight.clone());
        runtime.spawn(async move {
            let _permit = in_flight.acquire().await.unwrap();
            let outcome = publisher.publish("orders", Some(&format!("k{}", n % KEYS)), &json!({"n": n}).to_string()).await.unwrap();
            outcomes.lock().unwrap().entry(n).or_default().push(outcome);
        });
    }
    for kill_at in [MESSAGES / 3, 2 * MESSAGES / 3] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while (outcomes.lock().unwrap().len() as u64) < kill_at {
            assert!(Instant::now() < deadline, "publishes stalled at {} answers", outcomes.lock().unwrap().len());
            std::thread::yield_now();
        }
        server.kill();
        server = Server::start(&dir, &addr, &[]);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (handed.lock().unwrap().len() < MESSAGES as usize || (outcomes.lock().unwrap().len() as u64) < MESSAGES) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let outcomes = outcomes.lock().unwrap().clone();
    assert_eq!(outcomes.len() as u64, MESSAGES, "every publish call resolved");
    let mut ids = BTreeMap::new();
    for (n, outcome) in &outcomes {
        match outcome.as_slice() {
            [PublishOutcome::Stored { id, .. }] => assert!(ids.insert(*id, *n).is_none(), "id {id} answered two publishes"),
            other => panic!("publish {n} ended {other:?}"),
        }
    }
    support::assert_each_once_in_key_order(&handed.lock().unwrap(), &ids, MESSAGES);
    assert!(*publisher_drops.lock().unwrap() >= 2, "the publisher lost its connection to each kill");
    publisher.close();
    subscriber.close();
    server.kill();
}

#[test]
fn a_token_source_is_asked_before_each_connection() {
    let dir = temp_dir("client-library-token");
    let mut server = Server::start(&dir, &format!("127.0.0.1:{}", support::restartable_port()), &["--set", "tokens=[\"t-1\",\"t-2\"]"]);
    let addr = server.addr.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let asked = Arc::new(Mutex::new(0u32));
    let counter = asked.clone();
    let mut config = ClientConfig::new(vec![server.url()], 3);
    config.backoff.initial_ms = 20;
    // Each connection gets the next token; the first answer comes late, and nothing may go
    // out before it (an op before the hello would be refused unauthorized).
    let (client, _events) = runtime.block_on(async {
        FerryClient::start_with_token_source(config, move || {
            let n = {
                let mut asked = counter.lock().unwrap();
                *asked += 1;
                *asked
            };
            async move {
                if n == 1 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(format!("t-{}", 1 + (n - 1) % 2))
            }
        })
    });
    let within = |call| runtime.block_on(async { tokio::time::timeout(Duration::from_secs(20), call).await.expect("no outcome within 20 s") });
    let first = within(client.publish("orders", None, "1")).unwrap();
    assert!(matches!(first, PublishOutcome::Stored { .. }), "{first:?}");
    server.kill();
    server = Server::start(&dir, &addr, &["--set", "tokens=[\"t-1\",\"t-2\"]"]);
    let second = within(client.publish("orders", None, "2")).unwrap();
    assert!(matches!(second, PublishOutcome::Stored { .. }), "{second:?}");
    assert!(*asked.lock().unwrap() >= 2, "asked again for the new connection");
    client.close();
    server.kill();
}
