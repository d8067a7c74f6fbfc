//! A publisher is the client library's state machine with an application that publishes
//! `total` bodies: every seed drives the library's connection handling, retries and
//! idempotent publishing. What crosses the wire is still checked here (each `pub` sent, each
//! `puback`, every answer on its own request), and every publish call must end `Stored`.

use super::runner::{Out, Runner};
use super::{library_config, Action, Ctx};
use crate::checker::body_for;
use ferry_core::client::{Client as Library, ClientEvent, PublishLimits, PublishOutcome};
use rand::Rng;
use serde_json::Value;
use std::collections::BTreeSet;

pub struct Publisher {
    pub producer: String,
    pub topic: String,
    keys: u64,
    total: u64,
    window: usize,
    runner: Runner,
    /// Publishes handed to the library so far (seq = how many were handed before + 1).
    handed: u64,
    /// Seqs sent at least once: a first send may be doubled (`duplicate_chance`).
    sent: BTreeSet<u64>,
    pub acked: u64,
    /// Chance that a fresh publish is sent twice at once (the same `producer` and `seq`).
    pub duplicate_chance: f64,
}

impl Publisher {
    pub fn new(producer: String, topic: String, keys: u64, total: u64, window: usize) -> Publisher {
        Publisher { runner: Runner::new(producer.clone()), producer, topic, keys, total, window, handed: 0, sent: BTreeSet::new(), acked: 0, duplicate_chance: 0.0 }
    }

    pub fn done(&self) -> bool {
        self.acked == self.total
    }

    pub fn on_wake(&mut self, ctx: &mut Ctx<'_>) {
        if !self.runner.started() {
            let mut config = library_config(ctx);
            config.producer = Some(self.producer.clone());
            config.publish = PublishLimits { in_flight_max: self.window, buffered_max: self.total as usize + 1, buffered_bytes_max: usize::MAX, answer_timeout_ms: 3_000 };
            self.runner.start(Library::new(config, ctx.now));
        }
        self.runner.on_wake(ctx);
        let now = ctx.now;
        while self.handed < self.total {
            let seq = self.handed + 1;
            // The first few keys are used once: their messages stay the newest of their keys
            // while retention deletes the segments they are in (`latest` must keep them).
            let key = (self.keys > 0).then(|| if seq <= 3 { format!("{}-once-{seq}", self.producer) } else { format!("k{}", seq % self.keys) });
            let body = body_for(&self.producer, seq).to_string();
            match self.runner.library().publish(now, &self.topic, key.as_deref(), &body) {
                Ok(id) => debug_assert_eq!(id.0, seq, "the library numbers publishes from 1"),
                Err(e) => ctx.checker.violation("protocol", format!("publisher {} could not publish: {e:?}", self.producer)),
            }
            self.handed += 1;
        }
        self.carry_out(ctx);
    }

    pub fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.runner.on_connected(ctx);
        self.carry_out(ctx);
    }

    pub fn on_disconnected(&mut self, ctx: &mut Ctx<'_>) {
        self.runner.on_disconnected(ctx);
        self.carry_out(ctx);
    }

    pub fn on_frame(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        if let (Some("puback"), Some(seq)) = (frame["op"].as_str(), frame["req"].as_u64()) {
            // Every puback on the wire, a second one for a doubled publish included.
            ctx.checker.pubacked(&self.producer, seq, &self.topic, frame["id"].as_u64().unwrap_or(0), ctx.now);
        }
        self.runner.on_frame(frame, ctx);
        self.carry_out(ctx);
    }

    /// Sends what the library asked to send, and counts its outcomes.
    fn carry_out(&mut self, ctx: &mut Ctx<'_>) {
        for out in self.runner.drain(ctx) {
            match out {
                Out::Sent { text, frame } => {
                    if frame["op"] == "pub" {
                        let seq = frame["seq"].as_u64().unwrap_or(0);
                        ctx.checker.publish_sent(&self.producer, seq, frame["key"].as_str(), ctx.now);
                        if self.sent.insert(seq) && self.duplicate_chance > 0.0 && ctx.rng.gen_bool(self.duplicate_chance) {
                            self.runner.sent_again(&frame);
                            ctx.actions.push(Action::Send(text.clone()));
                        }
                    }
                    ctx.actions.push(Action::Send(text));
                }
                Out::Event(ClientEvent::Published { outcome: PublishOutcome::Stored { .. }, .. }) => self.acked += 1,
                Out::Event(ClientEvent::Published { publish, outcome }) => {
                    ctx.checker.violation("protocol", format!("publisher {}: publish {} ended {outcome:?}", self.producer, publish.0));
                }
                Out::Event(_) => {}
            }
        }
        self.runner.schedule_wake(ctx);
    }
}
