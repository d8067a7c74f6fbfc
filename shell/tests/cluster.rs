//! Three real `ferry serve` processes on loopback, linked as a cluster: the shard leader
//! pubacks once a majority has the message, `kill -9` of the leader loses nothing pubacked,
//! the survivors elect another, the killed node rejoins, and a node left alone answers
//! `unavailable` instead of hanging. Clients use any node: a follower forwards their frames
//! to the leader; a client whose node answers `unavailable` (no leader yet) tries the next.

mod support;

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::{Client, Server};

struct Cluster {
    dirs: Vec<PathBuf>,
    peers: String,
    peer_addrs: Vec<String>,
    /// Client addresses, kept across restarts so that clients can come back to a node.
    listens: Vec<String>,
    nodes: Vec<Option<Server>>,
    /// `--set` settings every node gets beyond its identity and peers.
    extra: Vec<String>,
}

/// Nodes are killed and restarted on their addresses: ports no client connection can take.
fn free_port() -> u16 {
    support::restartable_port()
}

impl Cluster {
    fn start(name: &str, size: usize) -> Cluster {
        Cluster::start_with(name, size, &[])
    }

    fn start_with(name: &str, size: usize, extra: &[&str]) -> Cluster {
        let peer_addrs: Vec<String> = (0..size).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let peers = peer_addrs.iter().enumerate().map(|(i, addr)| format!("{}@{addr}", i + 1)).collect::<Vec<_>>().join(",");
        let dirs = (0..size).map(|i| support::temp_dir(&format!("{name}-{}", i + 1))).collect();
        let listens = (0..size).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut cluster = Cluster { dirs, peers, peer_addrs, listens, nodes: (0..size).map(|_| None).collect(), extra };
        for i in 0..size {
            cluster.restart(i);
        }
        cluster
    }

    fn restart(&mut self, i: usize) {
        let mut settings = vec![format!("node_id={}", i + 1), format!("peer_listen={}", self.peer_addrs[i]), format!("peers={}", self.peers), "raft_tick_ms=50".into()];
        settings.extend(self.extra.iter().cloned());
        let mut args = Vec::new();
        for setting in &settings {
            args.extend(["--set", setting.as_str()]);
        }
        self.nodes[i] = Some(Server::start(&self.dirs[i], &self.listens[i], &args));
    }

    fn kill(&mut self, i: usize) {
        let mut server = self.nodes[i].take().expect("running");
        server.kill();
    }

    /// Stops node `i` (SIGSTOP: a hung process, its connections open and silent) or lets it
    /// go on (SIGCONT).
    fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].as_ref().expect("running").pid().to_string();
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success(), "kill {signal} {pid}");
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()).collect()
    }

    fn url(&self, i: usize) -> String {
        format!("ws://{}/ws", self.listens[i])
    }

    fn urls(&self) -> Vec<String> {
        (0..self.listens.len()).map(|i| self.url(i)).collect()
    }

    /// Sends `frame` to each running node in turn until one answers `answer_op` (the leader);
    /// returns that node and the answer. `unavailable`, a lost connection and silence move on.
    fn ask_leader(&self, frame: &Value, answer_op: &str) -> (usize, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut refusals = Vec::new();
        while Instant::now() < deadline {
            for i in self.running() {
                let Ok(mut client) = Client::connect(&self.url(i)) else { continue };
                if client.send(frame).is_err() {
                    continue;
                }
                let answer_by = Instant::now() + Duration::from_secs(3);
                while let Ok(Some(answer)) = client.recv_until(answer_by) {
                    if answer["op"] == answer_op {
                        return (i, answer);
                    }
                    if answer["op"] == "error" {
                        assert_eq!(answer["code"], "unavailable", "node {}: {answer}", i + 1);
                        refusals.push(answer["message"].to_string());
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no node answered {frame} with {answer_op} in 30 s; refusals: {:?}", refusals.iter().rev().take(3).collect::<Vec<_>>());
    }

    /// Publishes with `producer` and `seq` (so a retry after a lost answer is stored once)
    /// until a leader pubacks; returns the id.
    fn publish(&self, seq: u64) -> u64 {
        let frame = json!({"op": "pub", "req": seq, "topic": "orders", "key": format!("k{}", seq % 5), "producer": "p1", "seq": seq, "body": {"seq": seq}});
        self.ask_leader(&frame, "puback").1["id"].as_u64().unwrap()
    }

    /// The leader of `shard` the running nodes' logs name in the newest term, if any.
    fn named_leader(&self, shard: u32) -> Option<(u64, usize)> {
        let mut newest: Option<(u64, usize)> = None;
        let prefix = format!("shard {shard} leader: node ");
        for i in self.running() {
            for line in self.nodes[i].as_ref().unwrap().log_text().lines() {
                let Some(rest) = line.split(&prefix).nth(1) else { continue };
                let (node, term) = rest.split_once(" (term ").expect("leader line");
                let term: u64 = term.trim_end_matches(')').parse().unwrap();
                newest = newest.max(Some((term, node.parse::<usize>().unwrap() - 1)));
            }
        }
        newest
    }

    /// Waits until the logs name `node` the leader of `shard`; returns the term.
    fn await_leader(&self, shard: u32, node: usize) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.named_leader(shard) {
                Some((term, leader)) if leader == node => return term,
                named => assert!(Instant::now() < deadline, "shard {shard}: expected node {} to lead, the logs name {named:?}", node + 1),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The leader of shard 0 the running nodes' logs name in the newest term (once it is
    /// running).
    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((_, leader)) = self.named_leader(0).filter(|(_, leader)| self.nodes[*leader].is_some()) {
                return leader;
            }
            assert!(Instant::now() < deadline, "no running leader named in the logs");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Joins `group` at node `i` from the earliest message and takes `count` messages, acking
    /// each: id → body's seq.
    fn consume(&self, i: usize, group: &str, count: usize) -> BTreeMap<u64, u64> {
        let mut client = Client::connect(&self.url(i)).unwrap();
        client.send(&json!({"op": "sub", "req": "s", "topic": "orders", "group": group, "from": "earliest", "window": 32})).unwrap();
        client.expect_op("suback");
        let mut got = BTreeMap::new();
        while got.len() < count {
            let m = client.expect_op("msg");
            let id = m["id"].as_u64().unwrap();
            got.insert(id, m["body"]["seq"].as_u64().unwrap());
            client.send(&json!({"op": "ack", "topic": "orders", "group": group, "ids": [id]})).unwrap();
        }
        got
    }

    /// Every stored message of the topic, read from the leader: id → body's seq.
    fn stored(&self) -> BTreeMap<u64, u64> {
        let mut stored = BTreeMap::new();
        let mut from = 1;
        loop {
            let (_, fetched) = self.ask_leader(&json!({"op": "fetch", "req": from, "topic": "orders", "from": from, "to": u64::MAX}), "fetched");
            let messages = fetched["messages"].as_array().unwrap().clone();
            let Some(last) = messages.last() else { return stored };
            from = last["id"].as_u64().unwrap() + 1;
            for m in messages {
                stored.insert(m["id"].as_u64().unwrap(), m["body"]["seq"].as_u64().unwrap());
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn a_three_process_cluster_keeps_every_pubacked_message_through_kill_9_of_its_leader() {
    let mut cluster = Cluster::start("kill-leader", 3);
    let mut pubacked: BTreeMap<u64, u64> = BTreeMap::new();
    for seq in 1..=40 {
        pubacked.insert(seq, cluster.publish(seq));
    }

    // Mid-load: a publish is sent to the leader and the leader is killed before its answer
    // is read; the publisher retries it elsewhere with the same (producer, seq).
    let leader = cluster.leader();
    let mut doomed = Client::connect(&cluster.url(leader)).unwrap();
    doomed.send(&json!({"op": "pub", "req": 41, "topic": "orders", "producer": "p1", "seq": 41, "body": {"seq": 41}})).unwrap();
    cluster.kill(leader);
    for seq in 41..=80 {
        pubacked.insert(seq, cluster.publish(seq));
    }
    let second = cluster.leader();
    assert_ne!(second, leader, "a killed node does not lead");
    assert!(cluster.nodes[second].as_ref().unwrap().log_text().contains(&format!("shard 0 leader: node {}", second + 1)), "the new leader says so in its log");

    // The killed node comes back and catches up; then a follower dies: two of three still
    // make a majority.
    cluster.restart(leader);
    for seq in 81..=100 {
        pubacked.insert(seq, cluster.publish(seq));
    }
    let follower = cluster.running().into_iter().find(|i| *i != cluster.leader()).unwrap();
    cluster.kill(follower);
    for seq in 101..=120 {
        pubacked.insert(seq, cluster.publish(seq));
    }

    let stored = cluster.stored();
    for (seq, id) in &pubacked {
        assert_eq!(stored.get(id), Some(seq), "pubacked seq {seq} as id {id}; stored: {stored:?}");
    }
    let mut seqs: Vec<u64> = stored.values().copied().collect();
    seqs.sort_unstable();
    let before = seqs.len();
    seqs.dedup();
    assert_eq!(before, seqs.len(), "no body under two ids (a retried publish is stored once): {stored:?}");

    // A consumer on a follower is a member like one on the leader: it gets every message.
    let leader = cluster.leader();
    let follower = cluster.running().into_iter().find(|i| *i != leader).unwrap();
    assert_eq!(cluster.consume(follower, "billing", stored.len()), stored, "through a follower");
    assert_eq!(cluster.consume(leader, "audit", stored.len()), stored, "at the leader");

    // The last node alive is a minority: it answers `unavailable` rather than hanging.
    let other = cluster.running().into_iter().find(|i| *i != cluster.leader()).unwrap();
    let last = cluster.leader();
    cluster.kill(other);
    let mut alone = Client::connect(&cluster.url(last)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        alone.send(&json!({"op": "pub", "req": 1, "topic": "orders", "producer": "p1", "seq": 999, "body": {"seq": 999}})).unwrap();
        let answer = alone.expect_op_any(&["puback", "error"]);
        if answer["op"] == "error" {
            assert_eq!(answer["code"], "unavailable", "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "a node alone kept pubacking: {answer}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (producer, seq) → id, for every puback a publisher got.
type Pubacks = Arc<Mutex<BTreeMap<(String, u64), u64>>>;
/// What a group's consumer received, in order: (id, key, (producer, seq)).
type Received = Arc<Mutex<Vec<(u64, String, (String, u64))>>>;

/// Publishes `count` keyed messages as `producer`, one at a time, starting at node `first`:
/// on an error, a lost connection or silence it moves to the next node and sends the same
/// (producer, seq) again, so that each is stored once.
fn publisher(urls: Vec<String>, first: usize, producer: String, count: u64, pubacks: Pubacks) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut at = first;
        let mut client: Option<Client> = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut seq = 1;
        while seq <= count {
            assert!(Instant::now() < deadline, "{producer} stuck at seq {seq}");
            let Some(c) = client.as_mut() else {
                client = Client::connect(&urls[at % urls.len()]).ok();
                if client.is_none() {
                    at += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            };
            let frame = json!({"op": "pub", "req": seq, "topic": "orders", "key": format!("k{}", seq % 7), "producer": producer, "seq": seq, "body": {"p": producer, "seq": seq}});
            let mut answered = false;
            if c.send(&frame).is_ok() {
                let answer_by = Instant::now() + Duration::from_secs(3);
                while let Ok(Some(answer)) = c.recv_until(answer_by) {
                    if answer["op"] == "puback" && answer["req"] == json!(seq) {
                        pubacks.lock().unwrap().insert((producer.clone(), seq), answer["id"].as_u64().unwrap());
                        answered = true;
                        break;
                    }
                    if answer["op"] == "error" && answer["req"] == json!(seq) {
                        assert_eq!(answer["code"], "unavailable", "{answer}");
                        std::thread::sleep(Duration::from_millis(100));
                        break;
                    }
                }
            }
            if answered {
                seq += 1;
            } else {
                client = None;
                at += 1;
            }
        }
    })
}

/// Joins `group` from the earliest message at node `first` and acks everything it gets;
/// moves to the next node whenever its connection ends, and subscribes again.
fn consumer(urls: Vec<String>, first: usize, group: &'static str, received: Received, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut at = first;
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut c) = Client::connect(&urls[at % urls.len()]) else {
                at += 1;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let subscribed = c.send(&json!({"op": "sub", "req": "s", "topic": "orders", "group": group, "from": "earliest", "window": 16})).is_ok();
            while subscribed && !stop.load(Ordering::Relaxed) {
                match c.recv() {
                    Ok(Some(m)) if m["op"] == "msg" => {
                        let id = m["id"].as_u64().unwrap();
                        let body = (m["body"]["p"].as_str().unwrap().to_string(), m["body"]["seq"].as_u64().unwrap());
                        received.lock().unwrap().push((id, m["key"].as_str().unwrap_or_default().to_string(), body));
                        if c.send(&json!({"op": "ack", "topic": "orders", "group": group, "ids": [id]})).is_err() {
                            break;
                        }
                    }
                    Ok(Some(m)) if m["op"] == "error" => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            at += 1;
        }
    })
}

#[test]
fn keyed_publishers_and_two_groups_on_every_node_lose_nothing_when_the_leader_and_another_node_are_killed() {
    let mut cluster = Cluster::start("kill-under-load", 3);
    let urls = cluster.urls();
    let pubacks: Pubacks = Arc::default();
    let per_publisher = 120;
    let publishers: Vec<JoinHandle<()>> = (0..3).map(|i| publisher(urls.clone(), i, format!("p{i}"), per_publisher, pubacks.clone())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let groups = [("billing", 1), ("audit", 2)];
    let received: Vec<Received> = groups.iter().map(|_| Received::default()).collect();
    let consumers: Vec<JoinHandle<()>> = groups.iter().zip(&received).map(|((group, first), got)| consumer(urls.clone(), *first, group, got.clone(), stop.clone())).collect();
    let pubacked = || pubacks.lock().unwrap().len() as u64;
    let wait_for = |count: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while pubacked() < count {
            assert!(Instant::now() < deadline, "only {} pubacked", pubacked());
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    wait_for(60);
    let first_leader = cluster.leader();
    cluster.kill(first_leader);
    wait_for(150);
    cluster.restart(first_leader);
    wait_for(220);
    let other = cluster.running().into_iter().find(|i| *i != first_leader).unwrap();
    cluster.kill(other);
    for p in publishers {
        p.join().expect("a publisher failed");
    }
    let pubacks = pubacks.lock().unwrap().clone();
    assert_eq!(pubacks.len() as u64, 3 * per_publisher);

    // Every pubacked message reaches both groups.
    let expected: BTreeSet<u64> = pubacks.values().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for got in &received {
        loop {
            let have: BTreeSet<u64> = got.lock().unwrap().iter().map(|(id, _, _)| *id).collect();
            if expected.is_subset(&have) {
                break;
            }
            assert!(Instant::now() < deadline, "missing {:?}", expected.difference(&have).take(10).collect::<Vec<_>>());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in consumers {
        c.join().expect("a consumer failed");
    }
    for ((group, _), got) in groups.iter().zip(&received) {
        let got = got.lock().unwrap();
        let mut body_of: BTreeMap<u64, &(String, u64)> = BTreeMap::new();
        let mut id_of: BTreeMap<&(String, u64), u64> = BTreeMap::new();
        // Per key, the first delivery of each id comes in id order (redeliveries after a
        // failover repeat earlier ids, never jump ahead of them).
        let mut first_seen: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (id, key, body) in got.iter() {
            assert_eq!(*body_of.entry(*id).or_insert(body), body, "{group}: id {id} carried two bodies");
            assert_eq!(*id_of.entry(body).or_insert(*id), *id, "{group}: {body:?} stored under two ids");
            if seen.insert(*id) {
                first_seen.entry(key.as_str()).or_default().push(*id);
            }
        }
        for (key, ids) in first_seen {
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{group}: key {key} delivered out of order: {ids:?}");
        }
        for ((producer, seq), id) in &pubacks {
            assert_eq!(body_of.get(id), Some(&&(producer.clone(), *seq)), "{group}: pubacked ({producer}, {seq}) as {id}");
        }
    }
}

#[test]
fn the_cli_moves_to_another_node_when_its_node_dies_and_prints_each_message_once() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut cluster = Cluster::start("cli", 3);
    let leader = cluster.leader();
    // The subscriber starts at a follower, which is then killed.
    let doomed = (leader + 1) % 3;
    let order: Vec<String> = [doomed, (doomed + 1) % 3, (doomed + 2) % 3].iter().map(|i| cluster.url(*i)).collect();
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let mut subscriber = Command::new(ferry)
        .args(["subscribe", "--url", &order.join(","), "--topic", "cli", "--group", "g", "--from", "earliest", "--count", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (stdout, lines) = (subscriber.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                lines.lock().unwrap().push(line.unwrap());
            }
        })
    };
    let publish = |urls: &str, from: u64| {
        let bodies: Vec<String> = (from..from + 30).map(|n| format!("{{\"n\":{n}}}")).collect();
        let status = Command::new(ferry)
            .args(["publish", "--url", urls, "--topic", "cli", "--producer", "cli-p", "--seq", &from.to_string()])
            .args(&bodies)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "publish from {from} failed");
    };
    publish(&order.join(","), 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines.lock().unwrap().len() < 30 {
        assert!(Instant::now() < deadline, "the first 30 did not arrive");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.kill(doomed);
    // The publisher too starts at the dead node and moves on.
    publish(&order.join(","), 31);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = subscriber.try_wait().unwrap() {
            assert!(status.success(), "subscribe failed");
            break;
        }
        assert!(Instant::now() < deadline, "the subscriber did not get 60 messages: {:?}", lines.lock().unwrap().len());
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    let bodies: Vec<u64> = lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["body"]["n"].as_u64().unwrap()).collect();
    let unique: BTreeSet<u64> = bodies.iter().copied().collect();
    assert_eq!(bodies.len(), 60, "printed once each: {bodies:?}");
    assert_eq!(unique, (1..=60).collect::<BTreeSet<u64>>());
}

#[test]
fn three_shards_are_led_by_three_processes_and_a_shard_fails_over_and_comes_back() {
    use ferry_core::ids::ShardId;
    let mut cluster = Cluster::start_with("shards", 3, &["shards=3"]);
    // A topic in each shard; shard k goes to node k+1 once every node is up.
    let topics: Vec<String> = (0..3).map(|shard| (0..).map(|n| format!("topic{n}")).find(|t| ShardId::of_topic(t, 3) == ShardId(shard)).unwrap()).collect();
    let first_terms: Vec<u64> = (0..3).map(|shard| cluster.await_leader(shard, shard as usize)).collect();
    // Each node says which node leads each shard, and that it is ready.
    let (status, metrics) = support::http_get(&cluster.listens[0], "/metrics");
    assert_eq!(status, 200);
    for shard in 0..3 {
        assert!(metrics.contains(&format!("ferry_shard_leader{{shard=\"{shard}\"}} {}", shard + 1)), "{metrics}");
        assert!(metrics.contains(&format!("ferry_replication_lag_entries{{shard=\"{shard}\",node=\"1\"}} ")), "{metrics}");
    }
    // Node 1's links to the other two are up.
    for node in [2, 3] {
        assert!(metrics.contains(&format!("ferry_peer_link_up{{node=\"{node}\"}} 1")), "{metrics}");
    }
    assert_eq!(support::http_get(&cluster.listens[1], "/readyz").0, 200);
    // Through node 1, whichever node leads each topic's shard.
    let publish = |cluster: &Cluster, topic: &str, seq: u64| -> u64 {
        let frame = json!({"op": "pub", "req": seq, "topic": topic, "producer": "p", "seq": seq, "body": {"seq": seq}});
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut client = Client::connect_retry(&cluster.url(0), deadline);
            if client.send(&frame).is_ok() {
                if let Ok(Some(answer)) = client.recv_until(Instant::now() + Duration::from_secs(3)) {
                    if answer["op"] == "puback" {
                        return answer["id"].as_u64().unwrap();
                    }
                    assert_eq!(answer["code"], "unavailable", "{answer}");
                }
            }
            assert!(Instant::now() < deadline, "no puback for {topic} seq {seq}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for (n, topic) in topics.iter().enumerate() {
        assert_eq!(publish(&cluster, topic, n as u64 + 1), 1, "{topic}: ids are per topic");
    }
    // Shard 2's leader dies: the other two elect one of them and take its publishes; the
    // other shards' leaders are untouched.
    cluster.kill(2);
    assert_eq!(publish(&cluster, &topics[2], 10), 2);
    let (_, interim) = cluster.named_leader(2).unwrap();
    assert_ne!(interim, 2);
    // Back, caught up, it takes shard 2 again.
    cluster.restart(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.named_leader(2).is_none_or(|(term, leader)| leader != 2 || term <= first_terms[2]) {
        assert!(Instant::now() < deadline, "node 3 did not take shard 2 back: {:?}", cluster.named_leader(2));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(publish(&cluster, &topics[2], 11), 3);
    // A member on node 2 of each topic's group gets every message of it. A leader change
    // meanwhile (on a busy machine a heartbeat can come late) closes it with 1013: as the
    // protocol says, it connects and subscribes again; redeliveries are told apart by id.
    let join_all = |cluster: &Cluster| {
        let mut member = Client::connect_retry(&cluster.url(1), Instant::now() + Duration::from_secs(30));
        for topic in &topics {
            member.send(&json!({"op": "sub", "req": topic, "topic": topic, "group": "g", "from": "earliest"})).unwrap();
        }
        member
    };
    let mut member = join_all(&cluster);
    let mut got: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.values().map(BTreeSet::len).sum::<usize>() < 5 {
        assert!(Instant::now() < deadline, "the member got only {got:?}");
        match member.recv_until(Instant::now() + Duration::from_secs(1)) {
            Ok(Some(m)) if m["op"] == "msg" => {
                got.entry(m["topic"].as_str().unwrap().to_string()).or_default().insert(m["id"].as_u64().unwrap());
            }
            Ok(Some(m)) if m["op"] == "error" => {
                assert_eq!(m["code"], "unavailable", "{m}");
                std::thread::sleep(Duration::from_millis(100));
                member = join_all(&cluster);
            }
            Ok(_) => {}
            Err(_) => member = join_all(&cluster),
        }
    }
    let expected = BTreeMap::from([(topics[0].clone(), BTreeSet::from([1])), (topics[1].clone(), BTreeSet::from([1])), (topics[2].clone(), BTreeSet::from([1, 2, 3]))]);
    assert_eq!(got, expected);
}

#[test]
fn with_a_cluster_secret_the_nodes_join_and_a_node_without_it_cannot() {
    const SECRET: &str = "cluster_secret=the-right-secret-0123";
    let mut cluster = Cluster::start_with("secret", 3, &[SECRET]);
    let leader = cluster.leader();
    assert_eq!(cluster.publish(1), 1, "the nodes that know the secret form the cluster");
    // Node 3 comes back with another secret (a stranger claiming to be node 3): it cannot link.
    let stranger = (leader + 1..leader + 3).map(|i| i % 3).find(|i| *i != leader).unwrap();
    cluster.kill(stranger);
    cluster.extra = vec!["cluster_secret=a-wrong-secret-456789".into()];
    cluster.restart(stranger);
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused_by =
        |c: &Cluster| c.running().into_iter().filter(|i| *i != stranger).any(|i| c.nodes[i].as_ref().unwrap().log_text().contains("failed the cluster_secret challenge"));
    while !refused_by(&cluster) {
        assert!(Instant::now() < deadline, "no node logged the stranger's failed challenge");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = support::http_get(&cluster.listens[leader], "/metrics");
    assert!(metrics.contains(&format!("ferry_peer_link_up{{node=\"{}\"}} 0", stranger + 1)), "{metrics}");
    assert_eq!(cluster.publish(2), 2, "the two with the secret go on");
}

/// The client library on a cluster: its publisher's node hangs (SIGSTOP) for 1.5 s, its
/// subscriber's node dies and comes back, then the leader dies; a library publisher (40 in
/// flight) and subscriber run throughout. Every publish resolves stored once, the
/// application is handed every body once, each key in id order. (Without `producer` + `seq`
/// the hang stores publishes twice: 8 runs of 9 failed so.)
#[test]
fn library_clients_lose_nothing_when_a_node_hangs_a_node_and_then_the_leader_die() {
    use ferry_client::{ClientConfig, ClientEvent, FerryClient, PublishOutcome, StartFrom, SubscribeOptions};
    const MESSAGES: u64 = 240;
    let mut cluster = Cluster::start("library", 3);
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    // The publisher's node is neither: its frames go to the leader, and the leader's death
    // closes its connection (1013) with publishes whose entries may commit without an answer.
    let other = (leader + 2) % 3;
    let urls_from = |first: usize| (0..3).map(|k| cluster.url((first + k) % 3)).collect::<Vec<_>>();
    let config = |first: usize, seed: u64| {
        let mut config = ClientConfig::new(urls_from(first), seed);
        config.backoff.initial_ms = 20;
        config.backoff.max_ms = 500;
        // A node silent this long is left: 200 ms without a frame, then 300 ms after a ping.
        config.ping_interval_ms = 200;
        config.pong_timeout_ms = 300;
        config
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (subscriber, mut events) = runtime.block_on(async { FerryClient::start(config(follower, 1)) });
    let (publisher, _publisher_events) = runtime.block_on(async { FerryClient::start(config(other, 2)) });
    let subscribe = SubscribeOptions { from: StartFrom::Earliest, window: Some(32), ..SubscribeOptions::new("lib", "g") };
    runtime.block_on(subscriber.subscribe(subscribe)).unwrap();
    let handed: Arc<Mutex<Vec<(String, u64, u64)>>> = Arc::default();
    let (handed_by_app, acker) = (handed.clone(), subscriber.clone());
    runtime.spawn(async move {
        while let Some(event) = events.next().await {
            if let ClientEvent::Message(delivery) = event {
                let n = serde_json::from_str::<Value>(&delivery.body).unwrap()["n"].as_u64().unwrap();
                handed_by_app.lock().unwrap().push((delivery.key.clone().unwrap_or_default(), delivery.id, n));
                if !delivery.repaired {
                    let _ = acker.ack(&delivery).await;
                }
            }
        }
    });
    let outcomes: Arc<Mutex<BTreeMap<u64, Vec<PublishOutcome>>>> = Arc::default();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(40));
    for n in 0..MESSAGES {
        let (publisher, outcomes, in_flight) = (publisher.clone(), outcomes.clone(), in_flight.clone());
        runtime.spawn(async move {
            let _permit = in_flight.acquire().await.unwrap();
            let outcome = publisher.publish("lib", Some(&format!("k{}", n % 4)), &json!({"n": n}).to_string()).await.unwrap();
            outcomes.lock().unwrap().entry(n).or_default().push(outcome);
        });
    }
    let answered = |outcomes: &Arc<Mutex<BTreeMap<u64, Vec<PublishOutcome>>>>| outcomes.lock().unwrap().len() as u64;
    let wait_for = |count: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered(&outcomes) < count {
            assert!(Instant::now() < deadline, "publishes stalled at {}", answered(&outcomes));
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait_for(MESSAGES / 8);
    // The publisher's node hangs with publishes forwarded and committed but unanswered: the
    // library leaves it and sends them again elsewhere, where only `producer` + `seq` keep
    // them from being stored twice.
    cluster.signal(other, "-STOP");
    std::thread::sleep(Duration::from_millis(1_500));
    cluster.signal(other, "-CONT");
    wait_for(MESSAGES / 4);
    cluster.kill(follower);
    wait_for(MESSAGES / 2);
    cluster.restart(follower);
    std::thread::sleep(Duration::from_millis(500));
    wait_for(5 * MESSAGES / 8);
    cluster.kill(leader);
    wait_for(MESSAGES);
    let deadline = Instant::now() + Duration::from_secs(60);
    while handed.lock().unwrap().iter().map(|(_, _, n)| *n).collect::<BTreeSet<_>>().len() < MESSAGES as usize {
        assert!(Instant::now() < deadline, "the subscriber got {} distinct messages", handed.lock().unwrap().len());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let outcomes = outcomes.lock().unwrap().clone();
    let mut ids = BTreeSet::new();
    for (n, outcome) in &outcomes {
        match outcome.as_slice() {
            [PublishOutcome::Stored { id, .. }] => assert!(ids.insert(*id), "id {id} answered two publishes"),
            other => panic!("publish {n} ended {other:?}"),
        }
    }
    let handed = handed.lock().unwrap().clone();
    let mut bodies: Vec<u64> = handed.iter().map(|(_, _, n)| *n).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, (0..MESSAGES).collect::<Vec<_>>(), "each body handed over exactly once");
    for key in 0..4 {
        let of_key: Vec<u64> = handed.iter().filter(|(k, _, _)| *k == format!("k{key}")).map(|(_, id, _)| *id).collect();
        assert!(of_key.windows(2).all(|w| w[0] < w[1]), "key k{key} out of id order: {of_key:?}");
    }
    publisher.close();
    subscriber.close();
}
