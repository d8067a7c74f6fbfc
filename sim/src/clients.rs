//! Simulated clients that follow PROTOCOL.md: publishers that are the client library's state
//! machine (`ferry_core::client`: reconnects, retries with `producer` and `seq`), subscribers
//! that dedupe by id, repair `prev` gaps with `fetch` (asking again from the last id + 1 while
//! a reply ends before its range), ack late or never.

use crate::checker::{body_for, Checker};
use crate::misuse::Misbehaver;
use ferry_core::client::{BackoffConfig, Client as Library, ClientConfig, ClientEvent, ClientInput, ClientOutput, PublishLimits, PublishOutcome};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

pub const MS: u64 = 1_000_000;

/// Every answer names a request its client sent on that connection and has not had answered:
/// a refused op (`forbidden`, `unauthorized`, `overloaded`, …) gets its error on its own `req`.
pub const INV_OWN_REQ: &str = "answers-on-own-req";

/// Requests sent on the current connection and not yet answered, by `req`.
#[derive(Default)]
struct Requests(BTreeMap<String, u32>);

impl Requests {
    fn sent(&mut self, req: &Value) {
        *self.0.entry(req.to_string()).or_default() += 1;
    }

    /// Checks a frame from the node: an answer (one with a `req`, or any error) must name a
    /// request still unanswered, which it answers. Some ops (`unsub`) have no answer but an
    /// error: theirs stay counted until the connection ends.
    fn check(&mut self, who: &str, frame: &Value, checker: &mut Checker) {
        if frame.get("req").is_none() && frame["op"] != "error" {
            return;
        }
        let req = frame["req"].to_string();
        match self.0.get_mut(&req) {
            Some(count) => {
                *count -= 1;
                if *count == 0 {
                    self.0.remove(&req);
                }
            }
            None => checker.violation(INV_OWN_REQ, format!("{who} got {frame}, which answers no request of its own")),
        }
    }

    /// The connection ended: its answers died with it.
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// When to try again after `overloaded`: the node's `retry_after_ms`, else a short while.
fn retry_at(frame: &Value, ctx: &mut Ctx<'_>) -> u64 {
    let wait_ms = frame["retry_after_ms"].as_u64().unwrap_or_else(|| ctx.rng.gen_range(50..300));
    ctx.now + wait_ms * MS
}

pub enum Action {
    Connect,
    /// Close the client's connection (to connect again, possibly to another node).
    Disconnect,
    Send(String),
    WakeAt(u64),
}

pub struct Ctx<'a> {
    pub now: u64,
    pub rng: &'a mut ChaCha8Rng,
    pub checker: &'a mut Checker,
    pub actions: Vec<Action>,
}

impl Ctx<'_> {
    fn send(&mut self, frame: Value) {
        self.actions.push(Action::Send(frame.to_string()));
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Link {
    Down,
    Connecting,
    Up,
}

impl Link {
    /// On a wake-up: a client without a connection asks for one; true when connected.
    pub(crate) fn wake(&mut self, ctx: &mut Ctx<'_>) -> bool {
        if *self == Link::Down {
            *self = Link::Connecting;
            ctx.actions.push(Action::Connect);
        }
        *self == Link::Up
    }
}

/// A publisher is the client library's state machine (`ferry_core::client::Client`) with an
/// application that publishes `total` bodies: every seed drives the library's connection
/// handling, retries and idempotent publishing. What crosses the wire is still checked here
/// (each `pub` sent, each `puback`, every answer on its own request).
pub struct Publisher {
    pub producer: String,
    pub topic: String,
    keys: u64,
    total: u64,
    window: usize,
    /// Started at the first wake, seeded from the world's randomness.
    client: Option<Library>,
    /// Publishes handed to the library so far (seq = how many were handed before + 1).
    handed: u64,
    /// Seqs sent at least once: a first send may be doubled (`duplicate_chance`).
    sent: BTreeSet<u64>,
    /// The wake-up asked of the world for the library's timer.
    wake_at: Option<u64>,
    /// The library closed its connection and the world has not yet reported its end; a
    /// connection asked for meanwhile is asked of the world once it has.
    closing: bool,
    connect_deferred: bool,
    pub acked: u64,
    /// Chance that a fresh publish is sent twice at once (the same `producer` and `seq`).
    pub duplicate_chance: f64,
    requests: Requests,
}

impl Publisher {
    pub fn new(producer: String, topic: String, keys: u64, total: u64, window: usize) -> Publisher {
        Publisher {
            producer,
            topic,
            keys,
            total,
            window,
            client: None,
            handed: 0,
            sent: BTreeSet::new(),
            wake_at: None,
            closing: false,
            connect_deferred: false,
            acked: 0,
            duplicate_chance: 0.0,
            requests: Requests::default(),
        }
    }

    pub fn done(&self) -> bool {
        self.acked == self.total
    }

    fn client(&mut self, ctx: &mut Ctx<'_>) -> &mut Library {
        let (producer, window, total) = (self.producer.clone(), self.window, self.total);
        self.client.get_or_insert_with(|| {
            // The world picks the node of each connection; two names let the library move on
            // from a node that answers `unavailable`, as it would between real nodes.
            let mut config = ClientConfig::new(vec!["sim://a-node".into(), "sim://another-node".into()], ctx.rng.gen());
            config.producer = Some(producer);
            config.backoff = BackoffConfig { initial_ms: 10, max_ms: 1_000, healthy_after_ms: 5_000 };
            config.publish = PublishLimits { in_flight_max: window, buffered_max: total as usize + 1, buffered_bytes_max: usize::MAX, answer_timeout_ms: 3_000 };
            Library::new(config, ctx.now)
        })
    }

    pub fn on_wake(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        self.client(ctx).handle_timeout(now);
        while self.handed < self.total {
            let seq = self.handed + 1;
            let key = (self.keys > 0).then(|| format!("k{}", seq % self.keys));
            let body = body_for(&self.producer, seq).to_string();
            let topic = self.topic.clone();
            match self.client(ctx).publish(now, &topic, key.as_deref(), &body) {
                Ok(id) => debug_assert_eq!(id.0, seq, "the library numbers publishes from 1"),
                Err(e) => ctx.checker.violation("protocol", format!("publisher {} could not publish: {e:?}", self.producer)),
            }
            self.handed += 1;
        }
        self.carry_out(ctx);
    }

    pub fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        self.client(ctx).handle_input(now, ClientInput::Connected);
        self.carry_out(ctx);
    }

    pub fn on_disconnected(&mut self, ctx: &mut Ctx<'_>) {
        self.requests.clear();
        if std::mem::take(&mut self.closing) {
            // The end of the connection the library closed itself: it knows (the library's
            // contract); the connection it asked for meanwhile may open now.
            if std::mem::take(&mut self.connect_deferred) {
                ctx.actions.push(Action::Connect);
            }
            return;
        }
        let now = ctx.now;
        self.client(ctx).handle_input(now, ClientInput::Disconnected { code: None, reason: "the connection ended".into() });
        self.carry_out(ctx);
    }

    pub fn on_frame(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        self.requests.check(&self.producer, frame, ctx.checker);
        if let (Some("puback"), Some(seq)) = (frame["op"].as_str(), frame["req"].as_u64()) {
            // Every puback on the wire, a second one for a doubled publish included.
            ctx.checker.pubacked(&self.producer, seq, &self.topic, frame["id"].as_u64().unwrap_or(0), ctx.now);
        }
        let (now, text) = (ctx.now, frame.to_string());
        self.client(ctx).handle_input(now, ClientInput::Frame(&text));
        self.carry_out(ctx);
    }

    /// Turns what the library asked for into the world's actions, and its outcomes into counts.
    fn carry_out(&mut self, ctx: &mut Ctx<'_>) {
        let Some(client) = self.client.as_mut() else { return };
        while let Some(output) = client.poll_output() {
            match output {
                // The world reports a closed connection's end later: a new one waits for it.
                ClientOutput::Connect { .. } if self.closing => self.connect_deferred = true,
                ClientOutput::Connect { .. } => ctx.actions.push(Action::Connect),
                ClientOutput::Close => {
                    self.closing = true;
                    ctx.actions.push(Action::Disconnect);
                }
                ClientOutput::Send(text) => {
                    let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if let Some(req) = frame.get("req") {
                        self.requests.sent(req);
                    }
                    if frame["op"] == "pub" {
                        let seq = frame["seq"].as_u64().unwrap_or(0);
                        ctx.checker.publish_sent(&self.producer, seq, frame["key"].as_str(), ctx.now);
                        if self.sent.insert(seq) && self.duplicate_chance > 0.0 && ctx.rng.gen_bool(self.duplicate_chance) {
                            self.requests.sent(&frame["req"]);
                            ctx.actions.push(Action::Send(text.clone()));
                        }
                    }
                    ctx.actions.push(Action::Send(text));
                }
                ClientOutput::Event(ClientEvent::Published { outcome: PublishOutcome::Stored { .. }, .. }) => self.acked += 1,
                ClientOutput::Event(ClientEvent::Published { publish, outcome }) => {
                    ctx.checker.violation("protocol", format!("publisher {}: publish {} ended {outcome:?}", self.producer, publish.0));
                }
                ClientOutput::Event(_) => {}
            }
        }
        // One wake-up per timer: a wake asked for every frame would pile up in the world's
        // queue (each firing asks for the next), and a busy seed would crawl.
        if let Some(at) = client.poll_timeout() {
            if self.wake_at.is_none_or(|scheduled| scheduled <= ctx.now || at < scheduled) {
                self.wake_at = Some(at);
                ctx.actions.push(Action::WakeAt(at));
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum AckStyle {
    Prompt,
    /// Ack after a random delay up to this many ms (may exceed the ack timeout).
    Slow(u64),
    /// Never ack ids divisible by this: they go to the dead-letter topic.
    SkipEvery(u64),
    /// Give every first delivery back with `nack` and this delay in ms; ack redeliveries.
    NackFirst(u64),
}

pub struct Subscriber {
    pub name: String,
    pub topic: String,
    pub group: String,
    window: u32,
    pub style: AckStyle,
    /// The group has other members: `prev` gaps are expected, not repaired.
    shared_group: bool,
    /// The group's `key_prefix` filter, if any.
    pub filter: Option<String>,
    /// Receive by `pull` (max = window, this wait in ms) instead of `sub`.
    pub pull_wait_ms: Option<u64>,
    /// Leave the group with `unsub` after every this many messages, and join again later.
    pub unsub_every: Option<u64>,
    /// After every this many messages, read the last few ids back with `fetch` (an audit of
    /// what the topic holds, checked for coverage).
    pub audit_every: Option<u64>,
    /// Audits read from the topic's first id instead (retention seeds: what retention keeps is
    /// checked against its age promise).
    pub audit_from_start: bool,
    resub_at: Option<u64>,
    /// A `suback` came once: the group exists on disk from the earliest id.
    joined: bool,
    /// Messages this `sub` received and has not acked or nacked: when each came, and the time
    /// after which the node may have taken it back (ack deadline, less the largest delay).
    unacked: BTreeMap<u64, (u64, u64)>,
    /// The group's ack timeout less the largest one-way delay (0: no window check).
    pub window_hold_ns: u64,
    /// Ids this client has acked or nacked: an ack or nack already on its way releases a
    /// redelivery of the same id too, so such deliveries are not counted against the window.
    let_go: BTreeSet<u64>,
    link: Link,
    last_id: u64,
    processed: BTreeSet<u64>,
    due_acks: Vec<(u64, u64)>,
    fetches: u64,
    /// Gap repairs in flight by `req`: the range asked for, and when.
    fetching: BTreeMap<u64, (u64, u64, u64)>,
    /// Ranges whose fetch was refused as `overloaded`: asked again on the next wake-up.
    fetch_later: Vec<(u64, u64)>,
    requests: Requests,
}

impl Subscriber {
    pub fn new(name: String, topic: String, group: String, window: u32, style: AckStyle, shared_group: bool) -> Subscriber {
        Subscriber {
            name,
            topic,
            group,
            window,
            style,
            shared_group,
            filter: None,
            pull_wait_ms: None,
            unsub_every: None,
            audit_every: None,
            audit_from_start: false,
            resub_at: None,
            joined: false,
            unacked: BTreeMap::new(),
            window_hold_ns: 0,
            let_go: BTreeSet::new(),
            link: Link::Down,
            last_id: 0,
            processed: BTreeSet::new(),
            due_acks: Vec::new(),
            fetches: 0,
            fetching: BTreeMap::new(),
            fetch_later: Vec::new(),
            requests: Requests::default(),
        }
    }

    pub fn on_wake(&mut self, ctx: &mut Ctx<'_>) {
        if !self.link.wake(ctx) {
            return;
        }
        let now = ctx.now;
        let due: Vec<u64> = self.due_acks.iter().filter(|(at, _)| *at <= now).map(|(_, id)| *id).collect();
        self.due_acks.retain(|(at, _)| *at > now);
        if !due.is_empty() {
            for id in &due {
                self.unacked.remove(id);
                self.let_go.insert(*id);
            }
            ctx.send(json!({"op": "ack", "topic": self.topic, "group": self.group, "ids": due}));
        }
        for (from, to) in std::mem::take(&mut self.fetch_later) {
            self.fetch(from, to, ctx);
        }
        if self.resub_at.is_some_and(|at| at <= now) {
            self.resub_at = None;
            self.on_connected(ctx);
        }
    }

    /// Faults are over: the client behaves from now on (acks promptly).
    pub fn heal(&mut self) {
        self.style = AckStyle::Prompt;
    }

    pub fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.link = Link::Up;
        // A pulling member joins with `sub` first, so that its group starts at the earliest
        // id whichever member creates it (a `pull` would create it at "latest").
        if self.pull_wait_ms.is_some() && self.joined {
            return self.pull(ctx);
        }
        let mut sub = json!({"op": "sub", "req": "s", "topic": self.topic, "group": self.group, "from": "earliest", "window": self.window});
        if let Some(prefix) = &self.filter {
            sub["filter"] = json!({"key_prefix": prefix});
        }
        self.send(sub, ctx);
    }

    fn pull(&mut self, ctx: &mut Ctx<'_>) {
        let wait_ms = self.pull_wait_ms.unwrap_or(0);
        self.send(json!({"op": "pull", "req": "p", "topic": self.topic, "group": self.group, "max": self.window, "wait_ms": wait_ms}), ctx);
    }

    fn unsub(&mut self, ctx: &mut Ctx<'_>) {
        self.send(json!({"op": "unsub", "req": "u", "topic": self.topic, "group": self.group}), ctx);
    }

    fn send(&mut self, frame: Value, ctx: &mut Ctx<'_>) {
        if let Some(req) = frame.get("req") {
            self.requests.sent(req);
        }
        ctx.send(frame);
    }

    pub fn on_disconnected(&mut self, ctx: &mut Ctx<'_>) {
        self.link = Link::Down;
        self.due_acks.clear();
        self.unacked.clear();
        self.resub_at = None;
        // Replies to these died with the connection; like the acks, the repairs are given up.
        self.requests.clear();
        self.fetching.clear();
        self.fetch_later.clear();
        ctx.actions.push(Action::WakeAt(ctx.now + ctx.rng.gen_range(10..300) * MS));
    }

    pub fn on_frame(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        self.requests.check(&self.name, frame, ctx.checker);
        match frame["op"].as_str() {
            Some("welcome") => {}
            Some("suback") => {
                self.joined = true;
                // What came before the suback belongs to an earlier membership.
                self.unacked.clear();
                if self.pull_wait_ms.is_some() {
                    // From now on this member receives by pull only; in flight goes to others.
                    self.unsub(ctx);
                    self.pull(ctx);
                }
            }
            // In a cluster: this node cannot serve the group or the fetch; another one may.
            Some("error") if frame["code"] == "unavailable" => ctx.actions.push(Action::Disconnect),
            // An unsub can overtake the sub it follows (the sub waits for the disk): harmless.
            Some("error") if frame["req"] == "u" && frame["code"] == "not_subscribed" => {}
            // Over the op rate: join (or pull) again when the node says; an unsub refused
            // leaves the member in its group, which only means more deliveries.
            Some("error") if frame["code"] == "overloaded" && (frame["req"] == "s" || frame["req"] == "p") => {
                let at = retry_at(frame, ctx);
                self.resub_at = Some(self.resub_at.map_or(at, |earlier| earlier.min(at)));
                ctx.actions.push(Action::WakeAt(at));
            }
            Some("error") if frame["code"] == "overloaded" && frame["req"] == "u" => {}
            // Too many fetches wait for the disk on this connection: ask again a little later.
            Some("error") if frame["code"] == "overloaded" && frame["req"].as_u64().is_some_and(|req| self.fetching.contains_key(&req)) => {
                let (from, to, _) = self.fetching.remove(&frame["req"].as_u64().unwrap_or_default()).unwrap_or_default();
                self.fetch_later.push((from, to));
                ctx.actions.push(Action::WakeAt(ctx.now + ctx.rng.gen_range(5..50) * MS));
            }
            Some("pulled") => self.pull(ctx),
            Some("msg") => self.on_msg(frame, ctx),
            Some("fetched") => self.on_fetched(frame, ctx),
            _ => ctx.checker.violation("protocol", format!("subscriber {} got unexpected {frame}", self.name)),
        }
    }

    fn fetch(&mut self, from: u64, to: u64, ctx: &mut Ctx<'_>) {
        self.fetches += 1;
        self.fetching.insert(self.fetches, (from, to, ctx.now));
        self.send(json!({"op": "fetch", "req": self.fetches, "topic": self.topic, "from": from, "to": to}), ctx);
    }

    /// A `fetched` may end before `to` (cut at the frame size limit or `fetch_messages_max`):
    /// ask again from the last id + 1 until the range is done or a reply is empty.
    fn on_fetched(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        let Some((from, to, asked_at)) = frame["req"].as_u64().and_then(|req| self.fetching.remove(&req)) else {
            return ctx.checker.violation("protocol", format!("subscriber {} got a fetched it did not ask for: {frame}", self.name));
        };
        let messages = frame["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
        let mut last = None;
        for m in messages {
            let id = m["id"].as_u64().unwrap_or(0);
            if id < from || id > to || last.is_some_and(|last| id <= last) {
                ctx.checker.violation("protocol", format!("subscriber {} asked for {from}..={to} and got id {id} after {last:?}", self.name));
            }
            last = Some(id);
            ctx.checker.fetched(&self.topic, m);
        }
        let ids: Vec<u64> = messages.iter().filter_map(|m| m["id"].as_u64()).collect();
        ctx.checker.fetch_reply(&self.topic, from, to, asked_at, &ids);
        if let Some(last) = last.filter(|last| *last < to) {
            self.fetch(last + 1, to, ctx);
        }
    }

    fn on_msg(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        let id = frame["id"].as_u64().unwrap_or(0);
        let prev = frame["prev"].as_u64().unwrap_or(0);
        ctx.checker.delivered(&self.group, frame, ctx.now);
        self.check_window(id, ctx);
        if !self.shared_group && prev > self.last_id && self.last_id > 0 {
            self.fetch(self.last_id + 1, prev, ctx);
        }
        let first_time = self.processed.insert(id);
        self.last_id = self.last_id.max(id);
        if first_time && self.audit_every.is_some_and(|every| (self.processed.len() as u64).is_multiple_of(every)) {
            let from = if self.audit_from_start { 1 } else { id.saturating_sub(8).max(1) };
            self.fetch(from, id, ctx);
        }
        if let Some(every) = self.unsub_every {
            if first_time && self.resub_at.is_none() && (self.processed.len() as u64).is_multiple_of(every) {
                // Leave; what is still in flight goes to the other members. Acks may follow.
                self.unacked.clear();
                self.unsub(ctx);
                let at = ctx.now + ctx.rng.gen_range(10..500) * MS;
                self.resub_at = Some(at);
                ctx.actions.push(Action::WakeAt(at));
            }
        }
        match self.style {
            AckStyle::SkipEvery(n) if id.is_multiple_of(n) => {}
            AckStyle::NackFirst(delay_ms) if frame["attempt"].as_u64() == Some(1) => {
                self.unacked.remove(&id);
                self.let_go.insert(id);
                ctx.send(json!({"op": "nack", "topic": self.topic, "group": self.group, "ids": [id], "delay_ms": delay_ms}));
            }
            AckStyle::Slow(max_ms) => {
                let at = ctx.now + ctx.rng.gen_range(0..=max_ms) * MS;
                self.due_acks.push((at, id));
                ctx.actions.push(Action::WakeAt(at));
            }
            _ => {
                self.unacked.remove(&id);
                self.let_go.insert(id);
                ctx.send(json!({"op": "ack", "topic": self.topic, "group": self.group, "ids": [id]}));
            }
        }
    }

    /// A `sub` holds at most `window` messages unacked: count them as this client sees them
    /// (an ack counts from when it is sent; a message counts until its deadline could have
    /// passed at the node), which can only undercount what the node holds.
    fn check_window(&mut self, id: u64, ctx: &mut Ctx<'_>) {
        if self.pull_wait_ms.is_some() || self.window_hold_ns == 0 || self.let_go.contains(&id) {
            return;
        }
        let now = ctx.now;
        // An ack from another member of the group also takes a message off this window.
        let (topic, group) = (&self.topic, &self.group);
        // So does a nack from another member that reached the node after the message came.
        self.unacked
            .retain(|held, (came, until)| *until > now && !ctx.checker.is_completed(topic, group, *held) && ctx.checker.last_nack(topic, group, *held).is_none_or(|at| at < *came));
        self.unacked.insert(id, (now, now + self.window_hold_ns));
        if self.unacked.len() > self.window as usize {
            let held: Vec<u64> = self.unacked.keys().copied().collect();
            ctx.checker.violation(crate::checker::INV_BOUNDS, format!("{} holds {held:?} unacked, over its window {}", self.name, self.window));
        }
    }
}

// A world has a few dozen clients: their sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Client {
    Publisher(Publisher),
    Subscriber(Subscriber),
    Misbehaver(Misbehaver),
}

impl Client {
    pub fn on_wake(&mut self, ctx: &mut Ctx<'_>) {
        match self {
            Client::Publisher(p) => p.on_wake(ctx),
            Client::Subscriber(s) => s.on_wake(ctx),
            Client::Misbehaver(m) => m.on_wake(ctx),
        }
    }
    pub fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        match self {
            Client::Publisher(p) => p.on_connected(ctx),
            Client::Subscriber(s) => s.on_connected(ctx),
            Client::Misbehaver(m) => m.on_connected(ctx),
        }
    }
    pub fn on_disconnected(&mut self, ctx: &mut Ctx<'_>) {
        match self {
            Client::Publisher(p) => p.on_disconnected(ctx),
            Client::Subscriber(s) => s.on_disconnected(ctx),
            Client::Misbehaver(m) => m.on_disconnected(ctx),
        }
    }
    pub fn on_frame(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        match self {
            Client::Publisher(p) => p.on_frame(frame, ctx),
            Client::Subscriber(s) => s.on_frame(frame, ctx),
            Client::Misbehaver(m) => m.on_frame(frame, ctx),
        }
    }
}
