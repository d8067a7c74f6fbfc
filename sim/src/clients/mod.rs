//! Simulated clients that follow PROTOCOL.md. Publishers and subscribers (pushed to or
//! pulling) are the client library's state machine (`ferry_core::client`) with a simulated
//! application behind it (runner.rs carries its frames and timers); misbehavers (misuse.rs)
//! break the protocol on purpose.

mod latest_reads;
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

pub const MS: u64 = 1_000_000;

/// Every answer names a request its client sent on that connection and has not had answered:
/// a refused op (`forbidden`, `unauthorized`, `overloaded`, …) gets its error on its own `req`.
pub const INV_OWN_REQ: &str = "answers-on-own-req";

pub enum Action {
    Connect,
    /// Close the client's connection (to connect again, possibly to another node).
    Disconnect,
    Send(String),
    WakeAt(u64),
}

pub struct Ctx<'a> {
    pub now: u64,
    /// When the frame being handled left the node (`now` outside `on_frame`): the node's
    /// order of deliveries, which the links between it and different clients may change.
    pub sent_at: u64,
    pub rng: &'a mut ChaCha8Rng,
    pub checker: &'a mut Checker,
    pub actions: Vec<Action>,
    /// The run's deliberate bug: the client library's are planted in the clients.
    pub test_bug: Option<TestBug>,
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
