//! Reconciliation reads: a subscriber now and then reads the newest message of every key of
//! its topic with the client library's `read_latest` (page by page; the library asks a page
//! again after a reconnect or an `overloaded`), and the checker compares the pages with what
//! was published.

use super::runner::Runner;
use super::Ctx;
use ferry_core::client::{LatestMessage, ReadId};
use serde_json::{json, Value};
use std::collections::BTreeSet;

#[derive(Default)]
pub struct LatestReads {
    /// Start a read after every this many messages processed.
    pub every: Option<u64>,
    current: Option<Read>,
    /// Read once more at the next wake-up (the faults are over).
    soon: bool,
}

struct Read {
    id: ReadId,
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

    /// Faults are over: a reader reads once more (after the last restart a node had).
    pub fn read_soon(&mut self) {
        self.soon = self.every.is_some();
    }

    /// Starts the read asked for by `read_soon`.
    pub fn on_wake(&mut self, topic: &str, runner: &mut Runner, ctx: &mut Ctx<'_>) {
        if std::mem::take(&mut self.soon) {
            self.start(topic, runner, ctx);
        }
    }

    fn start(&mut self, topic: &str, runner: &mut Runner, ctx: &mut Ctx<'_>) {
        if self.current.is_some() {
            return;
        }
        match runner.library().read_latest(ctx.now, topic, None) {
            Ok(id) => self.current = Some(Read { id, started_at: ctx.now, keys: BTreeSet::new() }),
            Err(e) => ctx.checker.violation("protocol", format!("read_latest of {topic} refused: {e:?}")),
        }
    }

    /// A page of a read: checked; the last (empty) one ends the read.
    pub fn on_page(&mut self, topic: &str, read: ReadId, messages: &[LatestMessage], done: bool, ctx: &mut Ctx<'_>) {
        let Some(current) = self.current.as_mut().filter(|r| r.id == read) else {
            return ctx.checker.violation("protocol", format!("a latest page of a read not under way ({read:?})"));
        };
        let frames: Vec<Value> =
            messages.iter().map(|m| json!({"id": m.id, "key": m.key, "body": serde_json::from_str::<Value>(&m.body).unwrap_or(Value::Null), "ts": m.ts_ms})).collect();
        ctx.checker.latest_page(topic, current.started_at, &frames);
        current.keys.extend(messages.iter().map(|m| m.key.clone()));
        if done {
            let read = self.current.take().expect("a read under way");
            ctx.checker.latest_read_done(topic, read.started_at, &read.keys);
        }
    }

    /// The server refused the read for good: it is over (unchecked).
    pub fn on_failed(&mut self, read: ReadId) {
        if self.current.as_ref().is_some_and(|r| r.id == read) {
            self.current = None;
        }
    }
}
