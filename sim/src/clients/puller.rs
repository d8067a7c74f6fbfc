//! A group member that receives by `pull` (long-poll) instead of `sub`, speaking the protocol
//! itself: the client library offers no `pull`. It joins with `sub` once (so that its group
//! starts at the earliest id whichever member creates it), leaves the push side with `unsub`,
//! then pulls in a loop; it dedupes by id, repairs `prev` gaps with `fetch` (asking again from
//! the last id + 1 while a reply ends before its range), and acks late or never.

use super::{retry_at, AckStyle, Action, Ctx, Link, Requests, MS};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

pub struct Puller {
    pub name: String,
    pub topic: String,
    pub group: String,
    max: u32,
    pub style: AckStyle,
    /// The group has other members: `prev` gaps are expected, not repaired.
    shared_group: bool,
    wait_ms: u64,
    /// After every this many messages, read the last few ids back with `fetch` (an audit of
    /// what the topic holds, checked for coverage).
    pub audit_every: Option<u64>,
    /// Audits read from the topic's first id instead (retention seeds: what retention keeps is
    /// checked against its age promise).
    pub audit_from_start: bool,
    repull_at: Option<u64>,
    /// A `suback` came once: the group exists on disk from the earliest id.
    joined: bool,
    link: Link,
    last_id: u64,
    processed: BTreeSet<u64>,
    due_acks: Vec<(u64, u64)>,
    fetches: u64,
    /// Fetches in flight by `req`: the range asked for, and when.
    fetching: BTreeMap<u64, (u64, u64, u64)>,
    /// Ranges whose fetch was refused as `overloaded`: asked again on the next wake-up.
    fetch_later: Vec<(u64, u64)>,
    requests: Requests,
}

impl Puller {
    pub fn new(name: String, topic: String, group: String, max: u32, style: AckStyle, shared_group: bool, wait_ms: u64) -> Puller {
        Puller {
            name,
            topic,
            group,
            max,
            style,
            shared_group,
            wait_ms,
            audit_every: None,
            audit_from_start: false,
            repull_at: None,
            joined: false,
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
            ctx.send(json!({"op": "ack", "topic": self.topic, "group": self.group, "ids": due}));
        }
        for (from, to) in std::mem::take(&mut self.fetch_later) {
            self.fetch(from, to, ctx);
        }
        if self.repull_at.is_some_and(|at| at <= now) {
            self.repull_at = None;
            self.on_connected(ctx);
        }
    }

    /// Faults are over: the client behaves from now on (acks promptly).
    pub fn heal(&mut self) {
        self.style = AckStyle::Prompt;
    }

    pub fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.link = Link::Up;
        if self.joined {
            return self.pull(ctx);
        }
        self.send(json!({"op": "sub", "req": "s", "topic": self.topic, "group": self.group, "from": "earliest", "window": self.max}), ctx);
    }

    fn pull(&mut self, ctx: &mut Ctx<'_>) {
        self.send(json!({"op": "pull", "req": "p", "topic": self.topic, "group": self.group, "max": self.max, "wait_ms": self.wait_ms}), ctx);
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
        self.repull_at = None;
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
                // From now on this member receives by pull only; in flight goes to others.
                self.send(json!({"op": "unsub", "req": "u", "topic": self.topic, "group": self.group}), ctx);
                self.pull(ctx);
            }
            // In a cluster: this node cannot serve the group or the fetch; another one may.
            Some("error") if frame["code"] == "unavailable" => ctx.actions.push(Action::Disconnect),
            // An unsub can overtake the sub it follows (the sub waits for the disk): harmless.
            Some("error") if frame["req"] == "u" && frame["code"] == "not_subscribed" => {}
            // Over the op rate: join (or pull) again when the node says; an unsub refused
            // leaves the member in its group, which only means more deliveries.
            Some("error") if frame["code"] == "overloaded" && (frame["req"] == "s" || frame["req"] == "p") => {
                let at = retry_at(frame, ctx);
                self.repull_at = Some(self.repull_at.map_or(at, |earlier| earlier.min(at)));
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
            _ => ctx.checker.violation("protocol", format!("puller {} got unexpected {frame}", self.name)),
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
            return ctx.checker.violation("protocol", format!("puller {} got a fetched it did not ask for: {frame}", self.name));
        };
        if let Some(last) = super::check_fetched(&self.name, &self.topic, from, to, asked_at, frame, ctx).filter(|last| *last < to) {
            self.fetch(last + 1, to, ctx);
        }
    }

    fn on_msg(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        let id = frame["id"].as_u64().unwrap_or(0);
        let prev = frame["prev"].as_u64().unwrap_or(0);
        ctx.checker.delivered(&self.group, frame, ctx.now);
        if !self.shared_group && prev > self.last_id && self.last_id > 0 {
            self.fetch(self.last_id + 1, prev, ctx);
        }
        let first_time = self.processed.insert(id);
        if first_time {
            ctx.checker.handed_to_application(&self.topic, &self.group, id, frame["key"].as_str());
        }
        self.last_id = self.last_id.max(id);
        if first_time && self.audit_every.is_some_and(|every| (self.processed.len() as u64).is_multiple_of(every)) {
            let from = if self.audit_from_start { 1 } else { id.saturating_sub(8).max(1) };
            self.fetch(from, id, ctx);
        }
        match self.style {
            AckStyle::SkipEvery(n) if id.is_multiple_of(n) => {}
            AckStyle::NackFirst(delay_ms) if frame["attempt"].as_u64() == Some(1) => {
                ctx.send(json!({"op": "nack", "topic": self.topic, "group": self.group, "ids": [id], "delay_ms": delay_ms}));
            }
            AckStyle::Slow(max_ms) => {
                let at = ctx.now + ctx.rng.gen_range(0..=max_ms) * MS;
                self.due_acks.push((at, id));
                ctx.actions.push(Action::WakeAt(at));
            }
            _ => ctx.send(json!({"op": "ack", "topic": self.topic, "group": self.group, "ids": [id]})),
        }
    }
}
