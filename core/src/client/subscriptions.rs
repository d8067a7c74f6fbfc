//! Subscriptions: each message of a group handed to the application once, in the group's
//! order. A subscription is sent again on every connection. Ids already handed over are not
//! handed again (a bounded window of them per group), and acks go out in batches.
//!
//! Gap repair is opt-in (`repair_gaps`). A `msg` whose `prev` is above the last id handed
//! over says that the group has an earlier message this client did not get: the repair
//! fetches the gap (page by page, the group's filter applied here, as `fetch` reads the whole
//! topic) and hands it over first, while later messages wait. ferry needs no repair to lose
//! nothing: a message stays with its group until acked (redelivered, or moved to
//! `<topic>.dlq`). And `prev` names the group's previous message in id order, which the
//! server may still hold back: its key waits for an earlier message's ack (strict key order),
//! or its delivery was lost with a connection and awaits redelivery. Handed over from a fetch,
//! such a message overtakes the earlier one of its key. Repair suits groups whose messages
//! have no keys, or whose application does not need key order.

use crate::config::TestBug;
use crate::protocol::{encode_client_op, ClientOp, FetchedMessage, Filter, RawJson, StartFrom};
use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};

#[derive(Clone, Debug, PartialEq)]
pub struct SubscribeOptions {
    pub topic: String,
    pub group: String,
    /// Where a new group starts (the server honours it only when it creates the group).
    pub from: StartFrom,
    pub window: Option<u32>,
    pub filter: Option<Filter>,
    /// Ask the group, when this creates it, to coalesce (see the protocol's `sub`).
    pub coalesce_ms: Option<u64>,
    /// Fetch and hand over what a `prev` says this client has not got (see the module's
    /// notes: it can break key order). Off by default; never for a group shared by several
    /// members (the messages the others get are gaps too).
    pub repair_gaps: bool,
    /// Receive by `pull` (long-poll) instead of being pushed to.
    pub pull: Option<PullOptions>,
}

/// A pulling member: the first time, it joins with `sub` (so that a new group starts where
/// `from` says and with its `filter`; a `pull` would create it at the latest id, unfiltered)
/// and leaves the push side with `unsub`; from then on it asks for up to `max` messages at a
/// time, each `pull` waiting up to `wait_ms` for them, the next one sent when it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullOptions {
    pub max: u32,
    pub wait_ms: u64,
}

impl SubscribeOptions {
    pub fn new(topic: &str, group: &str) -> SubscribeOptions {
        SubscribeOptions { topic: topic.into(), group: group.into(), from: StartFrom::Latest, window: None, filter: None, coalesce_ms: None, repair_gaps: false, pull: None }
    }
}

/// A message handed to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub group: String,
    pub id: u64,
    pub key: Option<String>,
    /// JSON text.
    pub body: String,
    pub attempt: u32,
    pub ts_ms: u64,
    /// Fetched to fill a gap rather than delivered by the group: there is nothing to ack.
    pub repaired: bool,
}

/// A `msg` waiting for a repair to finish.
struct Held {
    id: u64,
    prev: u64,
    delivery: Delivery,
}

struct Repair {
    /// Next id to fetch, and the last the gap covers.
    from: u64,
    to: u64,
    req: String,
    /// Asked on the current connection (false: to ask on the next).
    asked: bool,
}

pub struct Subscription {
    pub options: SubscribeOptions,
    pub req: String,
    /// A pulling member joined with `sub` once (its group exists): it pulls from now on.
    pull_joined: bool,
    /// The last `sub` met a retryable error: send it again.
    sub_refused: bool,
    /// Highest id handed over (0: none yet).
    last_id: u64,
    /// Ids handed over, the newest `dedupe_window` of them; ids at or below `forgotten_up_to`
    /// count as handed over too.
    handed: BTreeSet<u64>,
    forgotten_up_to: u64,
    /// Handed over by the group and not yet acked by the application.
    unacked: BTreeSet<u64>,
    pending_acks: Vec<u64>,
    repair: Option<Repair>,
    held: VecDeque<Held>,
    test_bug: Option<TestBug>,
}

/// What a subscription wants done after taking a frame.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    pub deliveries: Vec<Delivery>,
    pub frames: Vec<String>,
}

impl Subscription {
    pub fn new(options: SubscribeOptions, req: String, test_bug: Option<TestBug>) -> Subscription {
        Subscription {
            options,
            req,
            pull_joined: false,
            sub_refused: false,
            last_id: 0,
            handed: BTreeSet::new(),
            forgotten_up_to: 0,
            unacked: BTreeSet::new(),
            pending_acks: Vec::new(),
            repair: None,
            held: VecDeque::new(),
            test_bug,
        }
    }

    fn frame(op: &ClientOp<'_>) -> String {
        let mut frame = String::new();
        encode_client_op(&mut frame, op);
        frame
    }

    fn sub_frame(&self) -> String {
        let req = format!("\"{}\"", self.req);
        let o = &self.options;
        let sub = ClientOp::Sub {
            req: RawJson::parse(&req).ok(),
            topic: Cow::Borrowed(&o.topic),
            group: Cow::Borrowed(&o.group),
            from: o.from,
            window: o.window,
            filter: o.filter.clone(),
            coalesce_ms: o.coalesce_ms,
        };
        Self::frame(&sub)
    }

    /// The `pull`'s `req`.
    pub fn pull_req(&self) -> String {
        format!("p-{}", self.req)
    }

    fn pull_frame(&self) -> Option<String> {
        let pull = self.options.pull?;
        let req = format!("\"{}\"", self.pull_req());
        let o = &self.options;
        Some(Self::frame(&ClientOp::Pull { req: RawJson::parse(&req).ok(), topic: Cow::Borrowed(&o.topic), group: Cow::Borrowed(&o.group), max: pull.max, wait_ms: pull.wait_ms }))
    }

    /// How this member asks for messages on a connection: `sub`, or once its group exists and
    /// it pulls, `pull`.
    fn join_frame(&self) -> String {
        match self.pull_frame() {
            Some(pull) if self.pull_joined => pull,
            _ => self.sub_frame(),
        }
    }

    /// The `sub` was answered: a pulling member leaves the push side (what came in flight
    /// goes back to the group) and pulls.
    pub fn on_suback(&mut self) -> Vec<String> {
        if self.options.pull.is_none() {
            return Vec::new();
        }
        self.pull_joined = true;
        vec![self.unsub_frame()].into_iter().chain(self.pull_frame()).collect()
    }

    /// The `unsub` leaving the group (its req names no subscription: an error answering it,
    /// `not_subscribed` when the server had dropped the group already, changes nothing).
    pub fn unsub_frame(&self) -> String {
        let req = format!("\"u-{}\"", self.req);
        let o = &self.options;
        Self::frame(&ClientOp::Unsub { req: RawJson::parse(&req).ok(), topic: Cow::Borrowed(&o.topic), group: Cow::Borrowed(&o.group) })
    }

    /// A `pull` was answered: the next one.
    pub fn on_pulled(&mut self) -> Option<String> {
        self.pull_frame()
    }

    /// The `sub` frame (or `pull`), acks that waited, and a repair's fetch again: what a new
    /// connection needs.
    pub fn on_connected(&mut self) -> Vec<String> {
        self.sub_refused = false;
        let mut frames = vec![self.join_frame()];
        frames.extend(self.pending_ack_frame());
        if let Some(repair) = &mut self.repair {
            repair.asked = false;
        }
        frames.extend(self.ask_repair());
        frames
    }

    pub fn on_disconnected(&mut self) {
        if let Some(repair) = &mut self.repair {
            repair.asked = false;
        }
    }

    /// A `msg` of this group.
    pub fn on_msg(&mut self, id: u64, prev: u64, delivery: Delivery, dedupe_window: usize) -> Effects {
        let mut effects = Effects::default();
        // A `prev` of 0 on an id at or below the last one handed over is no sign of a reset:
        // after a crash or a leader change a redelivery of the chain's first message looks
        // just like that (attempt 1 included). Ids decide, whatever the chain says.
        if self.repair.is_some() {
            self.held.push_back(Held { id, prev, delivery });
            return effects;
        }
        self.take_msg(id, prev, delivery, dedupe_window, &mut effects);
        effects
    }

    fn take_msg(&mut self, id: u64, prev: u64, delivery: Delivery, dedupe_window: usize, effects: &mut Effects) {
        let handed_again = self.test_bug == Some(TestBug::ClientRedeliveryHandedAgain) && self.unacked.contains(&id);
        if self.was_handed(id) && !handed_again {
            // A redelivery: the application has it. If it acked it already, that ack was lost
            // with a connection: ack again.
            if !self.unacked.contains(&id) {
                self.pending_acks.push(id);
            }
            return;
        }
        let repair_gaps = self.options.repair_gaps || self.test_bug == Some(TestBug::ClientRepairAlwaysOn);
        if repair_gaps && self.last_id > 0 && prev > self.last_id {
            let req = format!("f-{}-{}", self.req, id);
            self.repair = Some(Repair { from: self.last_id + 1, to: prev, req, asked: false });
            self.held.push_back(Held { id, prev, delivery });
            effects.frames.extend(self.ask_repair());
            return;
        }
        self.unacked.insert(id);
        self.hand(delivery, dedupe_window, effects);
    }

    fn hand(&mut self, delivery: Delivery, dedupe_window: usize, effects: &mut Effects) {
        let id = delivery.id;
        self.last_id = self.last_id.max(id);
        self.handed.insert(id);
        while self.handed.len() > dedupe_window.max(1) {
            if let Some(oldest) = self.handed.pop_first() {
                self.forgotten_up_to = self.forgotten_up_to.max(oldest);
            }
        }
        effects.deliveries.push(delivery);
    }

    fn was_handed(&self, id: u64) -> bool {
        id <= self.forgotten_up_to || self.handed.contains(&id) || (self.test_bug == Some(TestBug::ClientDedupesByLastId) && id <= self.last_id)
    }

    fn ask_repair(&mut self) -> Option<String> {
        let repair = self.repair.as_mut().filter(|r| !r.asked)?;
        repair.asked = true;
        let req = format!("\"{}\"", repair.req);
        Some(Self::frame(&ClientOp::Fetch { req: RawJson::parse(&req).ok(), topic: Cow::Borrowed(&self.options.topic), from: repair.from, to: repair.to }))
    }

    pub fn repair_req(&self) -> Option<&str> {
        self.repair.as_ref().map(|r| r.req.as_str())
    }

    /// A page of the repair's fetch.
    pub fn on_fetched(&mut self, messages: &[FetchedMessage<'_>], dedupe_window: usize) -> Effects {
        let mut effects = Effects::default();
        let Some((from, to)) = self.repair.as_ref().map(|r| (r.from, r.to)) else { return effects };
        let mut last_in_page = None;
        for m in messages.iter().filter(|m| m.id >= from && m.id <= to) {
            last_in_page = Some(m.id);
            let matches = self.options.filter.as_ref().is_none_or(|filter| filter.matches(m.key.as_deref(), m.body.get()));
            if matches && !self.was_handed(m.id) {
                let delivery = Delivery {
                    topic: self.options.topic.clone(),
                    group: self.options.group.clone(),
                    id: m.id,
                    key: m.key.as_deref().map(str::to_string),
                    body: m.body.get().to_string(),
                    attempt: 1,
                    ts_ms: m.ts_ms,
                    repaired: true,
                };
                self.hand(delivery, dedupe_window, &mut effects);
            }
        }
        match (last_in_page, self.repair.as_mut()) {
            (Some(last), Some(repair)) if last < to => {
                repair.from = last + 1;
                repair.asked = false;
                effects.frames.extend(self.ask_repair());
            }
            // An empty page: nothing more is stored in the gap (retention, or not stored yet).
            _ => self.end_repair(dedupe_window, &mut effects),
        }
        effects
    }

    /// The repair ends (filled, or given up): the messages that waited are taken in order.
    pub fn end_repair(&mut self, dedupe_window: usize, effects: &mut Effects) {
        let Some(repair) = self.repair.take() else { return };
        // Whatever the gap held is dealt with now (handed over, filtered out, or no longer
        // stored): the messages after it must not ask for it again.
        self.last_id = self.last_id.max(repair.to);
        while self.repair.is_none() {
            let Some(held) = self.held.pop_front() else { break };
            self.take_msg(held.id, held.prev, held.delivery, dedupe_window, effects);
        }
    }

    /// The application acked `id`; false when it is not one waiting for an ack.
    pub fn ack(&mut self, id: u64) -> bool {
        if self.unacked.remove(&id) {
            self.pending_acks.push(id);
            return true;
        }
        false
    }

    /// The application gave `id` back: it will come again, and be handed over again.
    pub fn nack(&mut self, id: u64, delay_ms: u64) -> Option<String> {
        if !self.unacked.remove(&id) {
            return None;
        }
        self.handed.remove(&id);
        Some(Self::frame(&ClientOp::Nack { topic: Cow::Borrowed(&self.options.topic), group: Cow::Borrowed(&self.options.group), ids: vec![id], delay_ms }))
    }

    pub fn has_pending_acks(&self) -> bool {
        !self.pending_acks.is_empty()
    }

    pub fn pending_acks(&self) -> usize {
        self.pending_acks.len()
    }

    /// A retryable error answered the `sub`: it goes out again with `retry_frames`.
    pub fn retry_sub_later(&mut self) {
        self.sub_refused = true;
    }

    /// A retryable error answered the repair's `fetch`: asked again with `retry_frames`.
    pub fn retry_repair_later(&mut self) {
        if let Some(repair) = &mut self.repair {
            repair.asked = false;
        }
    }

    /// What a retryable refusal held back: the `sub` again, the repair's `fetch` again.
    pub fn retry_frames(&mut self) -> Vec<String> {
        let mut frames = Vec::new();
        if std::mem::take(&mut self.sub_refused) {
            frames.push(self.join_frame());
        }
        frames.extend(self.ask_repair());
        frames
    }

    /// One `ack` frame for every ack waiting.
    pub fn pending_ack_frame(&mut self) -> Option<String> {
        if self.pending_acks.is_empty() {
            return None;
        }
        let ids = std::mem::take(&mut self.pending_acks);
        Some(Self::frame(&ClientOp::Ack { topic: Cow::Borrowed(&self.options.topic), group: Cow::Borrowed(&self.options.group), ids }))
    }
}
