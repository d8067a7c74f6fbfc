//! Reconciliation reads: a subscriber now and then reads the newest message of every key of
//! its topic with `latest`, page by page (each from the last id of the one before), and the
//! checker compares the answers with what was published.

use super::runner::Runner;
use super::{Action, Ctx, MS};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::BTreeSet;

#[derive(Default)]
pub struct LatestReads {
    /// Start a read after every this many messages processed.
    pub every: Option<u64>,
    reads: u64,
    current: Option<Read>,
    /// Read once more at the next wake-up (the faults are over).
    soon: bool,
}

struct Read {
    /// The `req` of the page asked for, and the id it asks from.
    req: Value,
    since: u64,
    /// A page refused as `overloaded` is asked for again then.
    again_at: Option<u64>,
    started_at: u64,
    keys: BTreeSet<String>,
}

impl LatestReads {
    /// `processed` messages so far: a read starts if it is time and none is under way.
    pub fn after_processing(&mut self, processed: u64, topic: &str, runner: &mut Runner, ctx: &mut Ctx<'_>) {
        if self.every.is_some_and(|every| processed.is_multiple_of(every)) {
            self.start(topic, runner, ctx);
        }
    }

    fn start(&mut self, topic: &str, runner: &mut Runner, ctx: &mut Ctx<'_>) {
        if self.current.is_some() {
            return;
        }
        self.current = Some(Read { req: Value::Null, since: 0, again_at: None, started_at: ctx.now, keys: BTreeSet::new() });
        self.ask(topic, 0, runner, ctx);
    }

    fn ask(&mut self, topic: &str, since: u64, runner: &mut Runner, ctx: &mut Ctx<'_>) {
        self.reads += 1;
        let req = json!(format!("latest-{}", self.reads));
        if let Some(read) = self.current.as_mut() {
            (read.req, read.since, read.again_at) = (req.clone(), since, None);
        }
        runner.send_own(&json!({"op": "latest", "req": req, "topic": topic, "since": since}), ctx);
    }

    /// A `latest` answer: checked, and the read goes on from its last id (or ends, when empty).
    pub fn on_answer(&mut self, topic: &str, frame: &Value, runner: &mut Runner, ctx: &mut Ctx<'_>) {
        let Some(read) = self.current.as_mut().filter(|r| r.req == frame["req"]) else {
            return ctx.checker.violation("protocol", format!("a latest answer no read asked for: {frame}"));
        };
        let messages = frame["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
        ctx.checker.latest_page(topic, read.started_at, messages);
        read.keys.extend(messages.iter().filter_map(|m| m["key"].as_str().map(str::to_string)));
        match messages.last().and_then(|m| m["id"].as_u64()) {
            Some(last) => self.ask(topic, last, runner, ctx),
            None => {
                let read = self.current.take().expect("a read under way");
                ctx.checker.latest_read_done(topic, read.started_at, &read.keys);
            }
        }
    }

    /// An `error` for `req`: true if it answered this read's page. A page refused as
    /// `overloaded` is asked for again a little after the server said; any other refusal ends
    /// the read.
    pub fn on_error(&mut self, frame: &Value, ctx: &mut Ctx<'_>) -> bool {
        let Some(read) = self.current.as_mut().filter(|r| r.req == frame["req"]) else { return false };
        if frame["code"] != "overloaded" {
            self.current = None;
            return true;
        }
        let after_ms = frame["retry_after_ms"].as_u64().unwrap_or(0).max(20) + ctx.rng.gen_range(0..100);
        let at = ctx.now + after_ms * MS;
        read.again_at = Some(at);
        ctx.actions.push(Action::WakeAt(at));
        true
    }

    /// Faults are over: a reader reads once more (after the last restart a node had).
    pub fn read_soon(&mut self) {
        self.soon = self.every.is_some();
    }

    /// The connection is gone, and the answers with it.
    pub fn drop_read(&mut self) {
        self.current = None;
    }

    /// Asks again for a page refused as `overloaded`, once it is time.
    pub fn due_again(&mut self, topic: &str, runner: &mut Runner, ctx: &mut Ctx<'_>) {
        if self.current.is_none() && std::mem::take(&mut self.soon) {
            return self.start(topic, runner, ctx);
        }
        let Some(since) = self.current.as_ref().filter(|r| r.again_at.is_some_and(|at| at <= ctx.now)).map(|r| r.since) else { return };
        self.ask(topic, since, runner, ctx);
    }
}
