//! A subscriber is the client library's state machine with an application behind it that
//! acks promptly, late, never, or gives messages back (`AckStyle`). The library dedupes,
//! repairs `prev` gaps and resubscribes; the checks run on both sides of it:
//! - on the wire, as before: every `msg` and `fetched` reported to the checker, a `sub`'s
//!   window counted, every answer on its own request;
//! - at the application: each message handed over once per subscription (again only after
//!   the application gave it back); over the group's members (checker.rs), first handings in
//!   key order and, at the end of the run, every pubacked message handed over.
//!
//! Audits are `fetch`es the application sends itself on the library's connection. Some
//! members receive by `pull` (the library joins with `sub` once, then pulls).

use super::latest_reads::LatestReads;
use super::runner::{Out, Runner};
use super::{library_config, AckStyle, Action, Ctx, MS};
use crate::checker::{INV_APP_ONCE, INV_BOUNDS};
use ferry_core::client::{Client as Library, ClientEvent, Delivery, PullOptions, SubscribeOptions};
use ferry_core::protocol::{Filter, StartFrom};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

pub struct Subscriber {
    pub name: String,
    pub topic: String,
    pub group: String,
    window: u32,
    pub style: AckStyle,
    /// The library repairs `prev` gaps (only where sound: a group of one member, messages
    /// without keys).
    pub repair_gaps: bool,
    /// The group's `key_prefix` filter, if any.
    pub filter: Option<String>,
    /// The group's coalescing window, if it coalesces.
    pub coalesce_ms: Option<u64>,
    /// Leave the group after every this many messages, and join again later.
    pub unsub_every: Option<u64>,
    /// Receive by `pull` instead of being pushed to.
    pub pull: Option<PullOptions>,
    /// After every this many messages, read the last few ids back with `fetch` (an audit of
    /// what the topic holds, checked for coverage).
    pub audit_every: Option<u64>,
    /// Audits read from the topic's first id instead (retention seeds: what retention keeps is
    /// checked against its age promise).
    pub audit_from_start: bool,
    /// The group's ack timeout less the largest one-way delay (0: no window check).
    pub window_hold_ns: u64,
    /// Reads of the newest message of every key (`latest`), checked.
    pub latest: LatestReads,
    runner: Runner,
    /// The world reports a connection open (audits go out only then).
    connected: bool,
    /// Left the group (`unsub_every`); subscribes again then.
    resubscribe_at: Option<u64>,
    app: Application,
    wire: WireChecks,
}

/// What the application saw of its current subscription, and what it still has to do.
#[derive(Default)]
struct Application {
    handed: BTreeSet<u64>,
    /// Ids it gave back (`nack`): each may be handed over once more.
    given_back: BTreeSet<u64>,
    /// Messages processed, over every subscription (what `audit_every` and `unsub_every` count).
    processed: u64,
    /// Acks the application will make then.
    due_acks: Vec<(u64, u64)>,
    /// Ids it never acks (`SkipEvery`) until the faults are over.
    skipped: Vec<u64>,
}

/// What the wire shows: the window a `sub` may hold, and fetches awaiting their answer.
#[derive(Default)]
struct WireChecks {
    /// Messages this `sub` received and that no ack or nack has left for: when each came, and
    /// the time after which the node may have taken it back (ack deadline, less the largest delay).
    unacked: BTreeMap<u64, (u64, u64)>,
    /// Ids acked or nacked on the wire: an ack or nack already on its way releases a
    /// redelivery of the same id too, so such deliveries are not counted against the window.
    let_go: BTreeSet<u64>,
    /// Fetches in flight, the library's and the audits', by `req` (as JSON text): the range
    /// asked for, when, and whether it is an audit (which asks again from the last id + 1).
    fetching: BTreeMap<String, (u64, u64, u64, bool)>,
    audits: u64,
    /// Audit ranges refused as `overloaded`: asked again on the next wake-up.
    audit_later: Vec<(u64, u64)>,
}

impl Subscriber {
    pub fn new(name: String, topic: String, group: String, window: u32, style: AckStyle) -> Subscriber {
        Subscriber {
            runner: Runner::new(name.clone()),
            name,
            topic,
            group,
            window,
            style,
            repair_gaps: false,
            filter: None,
            coalesce_ms: None,
            unsub_every: None,
            pull: None,
            audit_every: None,
            audit_from_start: false,
            window_hold_ns: 0,
            latest: LatestReads::default(),
            connected: false,
            resubscribe_at: None,
            app: Application::default(),
            wire: WireChecks::default(),
        }
    }

    fn options(&self) -> SubscribeOptions {
        let mut options = SubscribeOptions::new(&self.topic, &self.group);
        options.from = StartFrom::Earliest;
        options.window = Some(self.window);
        options.filter = self.filter.clone().map(Filter::KeyPrefix);
        options.coalesce_ms = self.coalesce_ms;
        options.repair_gaps = self.repair_gaps;
        options.pull = self.pull;
        options
    }

    fn subscribe(&mut self, ctx: &mut Ctx<'_>) {
        // A new subscription: the library's promises start over.
        self.app.handed.clear();
        self.app.given_back.clear();
        let options = self.options();
        if let Err(e) = self.runner.library().subscribe(options) {
            ctx.checker.violation("protocol", format!("subscriber {} could not subscribe: {e:?}", self.name));
        }
    }

    pub fn on_wake(&mut self, ctx: &mut Ctx<'_>) {
        if !self.runner.started() {
            self.runner.start(Library::new(library_config(ctx), ctx.now));
            self.subscribe(ctx);
        }
        self.runner.on_wake(ctx);
        let now = ctx.now;
        if self.resubscribe_at.is_some_and(|at| at <= now) {
            self.resubscribe_at = None;
            self.subscribe(ctx);
        }
        let due: Vec<u64> = self.app.due_acks.iter().filter(|(at, _)| *at <= now).map(|(_, id)| *id).collect();
        self.app.due_acks.retain(|(at, _)| *at > now);
        for id in due {
            // Refused only after leaving the group: the message went back to it.
            let _ = self.runner.library().ack(now, &self.topic, &self.group, id);
        }
        for (from, to) in std::mem::take(&mut self.wire.audit_later) {
            self.audit(from, to, ctx);
        }
        self.latest.on_wake(&self.topic, &mut self.runner, ctx);
        self.carry_out(ctx);
    }

    /// Faults are over: the application behaves from now on (acks promptly, and acks what it
    /// had skipped at its next wake-up).
    pub fn heal(&mut self) {
        self.style = AckStyle::Prompt;
        self.app.due_acks.extend(self.app.skipped.drain(..).map(|id| (0, id)));
    }

    pub fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.connected = true;
        self.runner.on_connected(ctx);
        self.carry_out(ctx);
    }

    pub fn on_disconnected(&mut self, ctx: &mut Ctx<'_>) {
        self.connected = false;
        // Answers died with the connection: the library asks its repairs again, audits are dropped.
        self.wire.fetching.clear();
        self.wire.audit_later.clear();
        self.wire.unacked.clear();
        self.runner.on_disconnected(ctx);
        self.carry_out(ctx);
    }

    pub fn on_frame(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        match frame["op"].as_str() {
            Some("msg") => {
                ctx.checker.delivered(&self.group, frame, ctx.now, ctx.sent_at);
                self.check_window(frame["id"].as_u64().unwrap_or(0), ctx);
            }
            // What came before the suback belongs to an earlier membership.
            Some("suback") => self.wire.unacked.clear(),
            Some("fetched") => self.on_fetched(frame, ctx),
            Some("latest") => {}
            Some("error") => {
                if let Some((from, to, _, audit)) = self.wire.fetching.remove(&frame["req"].to_string()) {
                    // Too many fetches wait for the disk on this connection: ask again a little later.
                    if audit && frame["code"] == "overloaded" {
                        self.wire.audit_later.push((from, to));
                        ctx.actions.push(Action::WakeAt(ctx.now + ctx.rng.gen_range(5..50) * MS));
                    }
                }
            }
            Some("welcome" | "pong" | "pulled") => {}
            _ => ctx.checker.violation("protocol", format!("subscriber {} got unexpected {frame}", self.name)),
        }
        self.runner.on_frame(frame, ctx);
        self.carry_out(ctx);
    }

    fn on_fetched(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        let Some((from, to, asked_at, audit)) = self.wire.fetching.remove(&frame["req"].to_string()) else {
            return ctx.checker.violation("protocol", format!("subscriber {} got a fetched it did not ask for: {frame}", self.name));
        };
        let last = check_fetched(&self.name, &self.topic, from, to, asked_at, frame, ctx);
        // The library pages its own repairs; an audit reads on until its range is done.
        if let Some(last) = last.filter(|last| audit && *last < to) {
            self.audit(last + 1, to, ctx);
        }
    }

    /// Reads `from..=to` back with a `fetch` of the application's own.
    fn audit(&mut self, from: u64, to: u64, ctx: &mut Ctx<'_>) {
        if !self.connected {
            return;
        }
        self.wire.audits += 1;
        let req = json!(format!("audit-{}", self.wire.audits));
        self.wire.fetching.insert(req.to_string(), (from, to, ctx.now, true));
        self.runner.send_own(&json!({"op": "fetch", "req": req, "topic": self.topic, "from": from, "to": to}), ctx);
    }

    /// Sends what the library asked to send (noting acks, nacks and fetches), and gives the
    /// application what the library handed over; until the library has nothing more.
    fn carry_out(&mut self, ctx: &mut Ctx<'_>) {
        loop {
            let outs = self.runner.drain(ctx);
            if outs.is_empty() {
                break;
            }
            for out in outs {
                match out {
                    Out::Sent { text, frame } => {
                        self.note_sent(&frame, ctx);
                        ctx.actions.push(Action::Send(text));
                    }
                    Out::Event(ClientEvent::Message(delivery)) => self.take(delivery, ctx),
                    Out::Event(ClientEvent::Latest { read, messages, done }) => self.latest.on_page(&self.topic, read, &messages, done, ctx),
                    Out::Event(ClientEvent::LatestFailed { read, .. }) => self.latest.on_failed(read),
                    Out::Event(ClientEvent::SubscribeFailed { code, message, .. }) => {
                        ctx.checker.violation("protocol", format!("subscriber {}: subscription refused, {code}: {message}", self.name));
                    }
                    Out::Event(_) => {}
                }
            }
        }
        self.runner.schedule_wake(ctx);
    }

    fn note_sent(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        match frame["op"].as_str() {
            Some("ack" | "nack") => {
                for id in frame["ids"].as_array().into_iter().flatten().filter_map(Value::as_u64) {
                    self.wire.unacked.remove(&id);
                    self.wire.let_go.insert(id);
                }
            }
            Some("fetch") => {
                let (from, to) = (frame["from"].as_u64().unwrap_or(0), frame["to"].as_u64().unwrap_or(0));
                self.wire.fetching.insert(frame["req"].to_string(), (from, to, ctx.now, false));
            }
            _ => {}
        }
    }

    /// The application gets a message from the library.
    fn take(&mut self, delivery: Delivery, ctx: &mut Ctx<'_>) {
        let id = delivery.id;
        let first = self.app.handed.insert(id);
        if !first && !self.app.given_back.remove(&id) {
            ctx.checker.violation(INV_APP_ONCE, format!("{} was handed id {id} twice by its subscription, not having given it back", self.name));
        }
        ctx.checker.handed_to_application(&self.topic, &self.group, id, delivery.key.as_deref());
        if first {
            self.app.processed += 1;
            self.after_processing(id, ctx);
        }
        if delivery.repaired {
            return;
        }
        let now = ctx.now;
        match self.style {
            AckStyle::SkipEvery(n) if id.is_multiple_of(n) => self.app.skipped.push(id),
            AckStyle::NackFirst(delay_ms) if delivery.attempt == 1 => {
                self.app.given_back.insert(id);
                let _ = self.runner.library().nack(&self.topic, &self.group, id, delay_ms);
            }
            AckStyle::Slow(max_ms) => {
                let at = now + ctx.rng.gen_range(0..=max_ms) * MS;
                self.app.due_acks.push((at, id));
                ctx.actions.push(Action::WakeAt(at));
            }
            _ => {
                let _ = self.runner.library().ack(now, &self.topic, &self.group, id);
            }
        }
    }

    /// Audits, and leaving the group now and then.
    fn after_processing(&mut self, id: u64, ctx: &mut Ctx<'_>) {
        if self.audit_every.is_some_and(|every| self.app.processed.is_multiple_of(every)) {
            let from = if self.audit_from_start { 1 } else { id.saturating_sub(8).max(1) };
            self.audit(from, id, ctx);
        }
        self.latest.after_processing(self.app.processed, &self.topic, &mut self.runner, ctx);
        if self.unsub_every.is_some_and(|every| self.resubscribe_at.is_none() && self.app.processed.is_multiple_of(every)) {
            // Leave; what is still in flight goes to the other members.
            let _ = self.runner.library().unsubscribe(&self.topic, &self.group);
            self.wire.unacked.clear();
            self.app.due_acks.clear();
            self.app.skipped.clear();
            let at = ctx.now + ctx.rng.gen_range(10..500) * MS;
            self.resubscribe_at = Some(at);
            ctx.actions.push(Action::WakeAt(at));
        }
    }

    /// A `sub` holds at most `window` messages unacked: count them as this client sees them
    /// (an ack counts from when it is sent; a message counts until its deadline could have
    /// passed at the node), which can only undercount what the node holds.
    fn check_window(&mut self, id: u64, ctx: &mut Ctx<'_>) {
        // A pull's `max` bounds each pull, not what is held unacked.
        if self.window_hold_ns == 0 || self.pull.is_some() || self.wire.let_go.contains(&id) || self.resubscribe_at.is_some() {
            return;
        }
        let now = ctx.now;
        // An ack from another member of the group also takes a message off this window.
        let (topic, group) = (&self.topic, &self.group);
        // So does a nack from another member that reached the node after the message came.
        self.wire
            .unacked
            .retain(|held, (came, until)| *until > now && !ctx.checker.is_completed(topic, group, *held) && ctx.checker.last_nack(topic, group, *held).is_none_or(|at| at < *came));
        self.wire.unacked.insert(id, (now, now + self.window_hold_ns));
        if self.wire.unacked.len() > self.window as usize {
            let held: Vec<u64> = self.wire.unacked.keys().copied().collect();
            ctx.checker.violation(INV_BOUNDS, format!("{} holds {held:?} unacked, over its window {}", self.name, self.window));
        }
    }
}

/// Checks a `fetched` answering `from..=to`, asked at `asked_at`: ids inside the range and
/// increasing, each body one that was published, nothing pubacked before the ask left out.
/// Returns the last id of the reply.
fn check_fetched(who: &str, topic: &str, from: u64, to: u64, asked_at: u64, frame: &Value, ctx: &mut Ctx<'_>) -> Option<u64> {
    let messages = frame["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut last = None;
    for m in messages {
        let id = m["id"].as_u64().unwrap_or(0);
        if id < from || id > to || last.is_some_and(|last| id <= last) {
            ctx.checker.violation("protocol", format!("{who} asked for {from}..={to} and got id {id} after {last:?}"));
        }
        last = Some(id);
        ctx.checker.fetched(topic, m);
    }
    let ids: Vec<u64> = messages.iter().filter_map(|m| m["id"].as_u64()).collect();
    ctx.checker.fetch_reply(topic, from, to, asked_at, &ids);
    last
}
