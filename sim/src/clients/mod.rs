//! Simulated clients that follow PROTOCOL.md. Publishers and subscribers (pushed to or
//! pulling) are the client library's state machine (`ferry_core::client`) with a simulated
//! application behind it (runner.rs carries its frames and timers); misbehavers (misuse.rs)
//! break the protocol on purpose.

mod publisher;
mod runner;
mod subscriber;

pub use publisher::Publisher;
pub use subscriber::Subscriber;

use crate::checker::Checker;
use crate::misuse::Misbehaver;
use ferry_core::client::{BackoffConfig, ClientConfig};
use ferry_core::config::TestBug;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::collections::BTreeMap;

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
    /// The run's deliberate bug: the client library's are planted in the clients.
    pub test_bug: Option<TestBug>,
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

/// The library's settings in the simulated world: fast reconnects, seeded from the world.
fn library_config(ctx: &mut Ctx<'_>) -> ClientConfig {
    // The world picks the node of each connection; two names let the library move on from a
    // node that answers `unavailable`, as it would between real nodes.
    let mut config = ClientConfig::new(vec!["sim://a-node".into(), "sim://another-node".into()], ctx.rng.gen());
    config.backoff = BackoffConfig { initial_ms: 10, max_ms: 1_000, healthy_after_ms: 5_000 };
    config.test_bug = ctx.test_bug;
    config
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
