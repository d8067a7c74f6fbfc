//! `latest` against the real binary: the newest message of each key, right after publishing,
//! after a restart, and after retention deleted the segments those messages were stored in.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{Client, Server};

/// The Rust library's `read_latest`: its pages (until the `done` one) as (key, (id, body)).
fn read_with_library(url: &str) -> BTreeMap<String, (u64, Value)> {
    use ferry_client::{ClientConfig, ClientEvent, FerryClient};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (client, mut events) = FerryClient::start(ClientConfig::new(vec![url.to_string()], 7));
        let read = client.read_latest("orders", None).await.unwrap();
        let mut got = BTreeMap::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(20), events.next()).await.expect("a page within 20 s").expect("events go on");
            if let ClientEvent::Latest { read: r, messages, done } = event {
                assert_eq!(r, read);
                got.extend(messages.into_iter().map(|m| (m.key, (m.id, serde_json::from_str(&m.body).unwrap()))));
                if done {
                    client.close();
                    return got;
                }
            }
        }
    })
}

/// Every message `latest` returns for `topic` (of `keys`, if given), asking again from the last
/// id until an answer is empty; checks the ids ascend.
fn latest_all(c: &mut Client, topic: &str, keys: Option<&[&str]>) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut since = 0;
    loop {
        let mut ask = json!({"op": "latest", "req": since, "topic": topic, "since": since});
        if let Some(keys) = keys {
            ask["keys"] = json!(keys);
        }
        c.send(&ask).unwrap();
        let answer = c.expect_op_any(&["latest", "error"]);
        assert_eq!((answer["op"].as_str(), answer["req"].as_u64()), (Some("latest"), Some(since)), "{answer}");
        let page = answer["messages"].as_array().unwrap().clone();
        let Some(last) = page.last() else { return all };
        since = last["id"].as_u64().unwrap();
        all.extend(page);
        assert!(all.windows(2).all(|w| w[0]["id"].as_u64() < w[1]["id"].as_u64()), "ids must ascend: {all:?}");
    }
}

/// Publishes `count` changes of `keys` orders (key `order-{n % keys}`) and, every fifth, one
/// without a key; returns the newest (id, body) of each key.
fn publish_changes(c: &mut Client, topic: &str, count: u64, keys: u64) -> BTreeMap<String, (u64, Value)> {
    let mut newest = BTreeMap::new();
    for n in 0..count {
        let key = format!("order-{}", n % keys);
        let body = json!({"order": key, "change": n});
        c.send(&json!({"op": "pub", "req": n, "topic": topic, "key": key, "body": body})).unwrap();
        let id = c.expect_op("puback")["id"].as_u64().unwrap();
        newest.insert(key, (id, body));
        if n % 5 == 0 {
            c.send(&json!({"op": "pub", "req": "keyless", "topic": topic, "body": {"change": n}})).unwrap();
            c.expect_op("puback");
        }
    }
    newest
}

fn by_key(messages: &[Value]) -> BTreeMap<String, (u64, Value)> {
    messages.iter().map(|m| (m["key"].as_str().unwrap().to_string(), (m["id"].as_u64().unwrap(), m["body"].clone()))).collect()
}

#[test]
fn latest_answers_the_newest_message_of_each_key_after_publishing_and_after_a_restart() {
    let dir = support::temp_dir("latest-restart");
    let port = support::restartable_port();
    let listen = format!("127.0.0.1:{port}");
    // A small frame limit: the 40 newest messages take several answers.
    let settings = ["--set", "fetch_messages_max=16"];
    let mut server = Server::start(&dir, &listen, &settings);
    let mut c = Client::connect(&server.url()).unwrap();
    let newest = publish_changes(&mut c, "orders", 400, 40);
    let all = latest_all(&mut c, "orders", None);
    assert_eq!(all.len(), 40, "one message per key, none without a key");
    assert_eq!(by_key(&all), newest);
    assert_eq!(read_with_library(&server.url()), newest, "the Rust library reads the same, page by page");
    assert!(all.iter().all(|m| m["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000)), "{all:?}");
    let some = latest_all(&mut c, "orders", Some(&["order-3", "order-17", "no-such-order"]));
    assert_eq!(by_key(&some), newest.iter().filter(|(k, _)| *k == "order-3" || *k == "order-17").map(|(k, v)| (k.clone(), v.clone())).collect());
    c.send(&json!({"op": "latest", "req": "x", "topic": "nope"})).unwrap();
    assert_eq!(c.expect_op("error")["code"], "no_such_topic");
    c.close();
    server.kill();

    let server = Server::start(&dir, &listen, &settings);
    let mut c = Client::connect(&server.url()).unwrap();
    assert_eq!(by_key(&latest_all(&mut c, "orders", None)), newest, "the same after a restart");
}

#[test]
fn latest_keeps_the_newest_message_of_each_key_after_retention_deletes_its_segment() {
    let dir = support::temp_dir("latest-retention");
    let port = support::restartable_port();
    let listen = format!("127.0.0.1:{port}");
    let settings = ["--set", "frame_bytes_max=65536", "--set", "segment_bytes_max=131072", "--set", "retention_bytes=262144"];
    let mut server = Server::start(&dir, &listen, &settings);
    let mut c = Client::connect(&server.url()).unwrap();
    let newest = publish_changes(&mut c, "orders", 60, 20);
    // A megabyte more without keys: the first segments go.
    let filler = "x".repeat(1_000);
    support::publish_many(&mut c, "orders", 1_000, |n| json!({"n": n, "filler": filler}));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.send(&json!({"op": "fetch", "req": "first", "topic": "orders", "from": 1, "to": u64::MAX})).unwrap();
        let first = c.expect_op("fetched")["messages"][0]["id"].as_u64().unwrap();
        if first > newest.values().map(|(id, _)| *id).max().unwrap() {
            break;
        }
        assert!(Instant::now() < deadline, "retention never deleted the keyed messages' segments (first id {first})");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(by_key(&latest_all(&mut c, "orders", None)), newest, "deleted from the topic, still the newest of their keys");
    c.close();
    server.kill();

    let mut server = Server::start(&dir, &listen, &settings);
    let mut c = Client::connect(&server.url()).unwrap();
    assert_eq!(by_key(&latest_all(&mut c, "orders", None)), newest, "their copies are read back at a restart");
    // Retention goes on past the copies' own segment: they are copied again.
    support::publish_many(&mut c, "orders", 1_000, |n| json!({"n": n, "filler": filler}));
    std::thread::sleep(Duration::from_secs(3));
    c.close();
    server.kill();
    let server = Server::start(&dir, &listen, &settings);
    let mut c = Client::connect(&server.url()).unwrap();
    assert_eq!(by_key(&latest_all(&mut c, "orders", None)), newest, "copied again when their copies' segment went");
}
