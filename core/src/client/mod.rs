//! A ferry client as a sans-IO state machine, the same four doors as the server's
//! (`handle_input`, `handle_timeout`, `poll_output`, `poll_timeout`), time passed in and
//! randomness drawn from a seed the caller gives. It keeps the protocol's promises for the
//! application: it connects and reconnects (exponential backoff with full jitter, across the
//! configured URLs), says hello with its token, pings a silent server and gives up on one that
//! does not answer, and publishes idempotently, so that every publish call ends in exactly one
//! outcome however often the connection drops. Whoever runs it (the simulator, the command
//! line, the client library) only moves bytes and time.
//!
//! Subscriptions hand each message of a group to the application once, in order, with
//! gaps repaired by `fetch` (subscriptions.rs).

mod api;
mod backoff;
mod latest_reads;
mod publishing;
mod subscriptions;

pub use api::{ClientConfig, ClientError, ClientEvent, ClientInput, ClientOutput, ConnState, LatestMessage};
pub use backoff::{Backoff, BackoffConfig};
pub use latest_reads::ReadId;
pub use publishing::{PublishId, PublishLimits, PublishOutcome};
pub use subscriptions::{Delivery, PullOptions, SubscribeOptions};

use crate::protocol::{decode_server_frame, encode_client_op, ClientOp, ErrorCode, RawJson, Req, ServerFrame};
use latest_reads::{LatestReads, ReadOutcome};
use publishing::Publishing;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::borrow::Cow;
use std::collections::VecDeque;
use subscriptions::{Effects, Subscription};

const NS_PER_MS: u64 = 1_000_000;

/// URLs kept, those configured and those cluster nodes named, at most.
const URLS_MAX: usize = 64;

enum State {
    Disconnected {
        retry_at_ns: u64,
    },
    Connecting {
        since_ns: u64,
    },
    /// `ready` once this connection's hello (if any) and subscriptions went out.
    Connected {
        since_ns: u64,
        ping: Ping,
        ready: bool,
    },
    Closed,
}

#[derive(Clone, Copy)]
enum Ping {
    /// Nothing outstanding; the server was last heard then.
    Heard {
        at_ns: u64,
    },
    Sent {
        at_ns: u64,
    },
}

pub struct Client {
    config: ClientConfig,
    rng: ChaCha8Rng,
    state: State,
    backoff: Backoff,
    next_url: usize,
    publishing: Publishing,
    subscriptions: Vec<Subscription>,
    subscriptions_made: u64,
    latest_reads: LatestReads,
    /// When waiting acks go out (the end of the turn that made them).
    acks_due_ns: Option<u64>,
    /// When subscriptions and repairs refused with a retryable error are asked again.
    retry_subscriptions_ns: Option<u64>,
    pings: u64,
    /// The application gave a token since the current connection was asked for.
    token_fresh: bool,
    outputs: VecDeque<ClientOutput>,
}

impl Client {
    /// A client that connects at once (the first `handle_timeout` asks for the connection).
    pub fn new(config: ClientConfig, now_ns: u64) -> Client {
        let mut rng = ChaCha8Rng::seed_from_u64(config.rng_seed);
        let producer = config.producer.clone().unwrap_or_else(|| format!("client-{:016x}", rng.gen::<u64>()));
        let publishing = Publishing::new(producer, config.first_seq, config.publish);
        Client {
            backoff: Backoff::new(config.backoff),
            config,
            rng,
            state: State::Disconnected { retry_at_ns: now_ns },
            next_url: 0,
            publishing,
            subscriptions: Vec::new(),
            subscriptions_made: 0,
            latest_reads: LatestReads::default(),
            acks_due_ns: None,
            retry_subscriptions_ns: None,
            pings: 0,
            token_fresh: false,
            outputs: VecDeque::new(),
        }
    }

    pub fn state(&self) -> ConnState {
        match self.state {
            State::Disconnected { .. } => ConnState::Disconnected,
            State::Connecting { .. } => ConnState::Connecting,
            State::Connected { .. } => ConnState::Connected,
            State::Closed => ConnState::Closed,
        }
    }

    pub fn producer(&self) -> &str {
        self.publishing.producer()
    }

    /// Publishes waiting for their outcome.
    pub fn unanswered_publishes(&self) -> usize {
        self.publishing.unanswered()
    }

    fn is_ready(&self) -> bool {
        matches!(self.state, State::Connected { ready: true, .. })
    }

    /// The connection is usable: hello, subscriptions, waiting acks and publishes go out.
    fn start_session(&mut self, now_ns: u64) {
        if let State::Connected { ready, .. } = &mut self.state {
            *ready = true;
        }
        if let Some(token) = self.config.token.clone() {
            self.send_op(&ClientOp::Hello { token: Some(token) });
        }
        for s in &mut self.subscriptions {
            self.outputs.extend(s.on_connected().into_iter().map(ClientOutput::Send));
        }
        self.outputs.extend(self.latest_reads.frames_due(now_ns).into_iter().map(ClientOutput::Send));
        self.pump(now_ns);
    }

    /// Reads the newest message of each key of `topic` (only of `keys`, when given) with
    /// `latest`, page by page, each page an event `ClientEvent::Latest`, the last one empty and
    /// `done`. A page lost with its connection is asked again on the next.
    pub fn read_latest(&mut self, now_ns: u64, topic: &str, keys: Option<Vec<String>>) -> Result<ReadId, ClientError> {
        if matches!(self.state, State::Closed) {
            return Err(ClientError::Closed);
        }
        let read = self.latest_reads.start(topic, keys);
        if self.is_ready() {
            self.outputs.extend(self.latest_reads.frames_due(now_ns).into_iter().map(ClientOutput::Send));
        }
        Ok(read)
    }

    /// The application's answer to `ClientEvent::TokenWanted` (or a newer token at any time):
    /// used from now on; a connection waiting for it goes on, an open one says hello again.
    pub fn set_token(&mut self, now_ns: u64, token: String) {
        self.config.token = Some(token.clone());
        self.token_fresh = true;
        match self.state {
            State::Connected { ready: false, .. } => self.start_session(now_ns),
            State::Connected { ready: true, .. } => self.send_op(&ClientOp::Hello { token: Some(token) }),
            _ => {}
        }
    }

    /// Bytes of the publishes waiting for their outcome (bounded by `PublishLimits`).
    pub fn buffered_publish_bytes(&self) -> usize {
        self.publishing.buffered_bytes()
    }

    /// Publishes `body` (JSON text) to `topic`. Its outcome comes as `ClientEvent::Published`
    /// with the returned id, once, whatever happens to connections meanwhile.
    pub fn publish(&mut self, now_ns: u64, topic: &str, key: Option<&str>, body: &str) -> Result<PublishId, ClientError> {
        if matches!(self.state, State::Closed) {
            return Err(ClientError::Closed);
        }
        let id = self.publishing.add(topic, key, body)?;
        self.pump(now_ns);
        Ok(id)
    }

    /// Subscribes, now and on every connection to come. Messages come as `ClientEvent::Message`.
    pub fn subscribe(&mut self, options: SubscribeOptions) -> Result<(), ClientError> {
        if matches!(self.state, State::Closed) {
            return Err(ClientError::Closed);
        }
        if self.subscription(&options.topic, &options.group).is_some() {
            return Err(ClientError::AlreadySubscribed(format!("already subscribed to '{}' as '{}'", options.topic, options.group)));
        }
        // Numbered for the client's life: a req never names two subscriptions.
        self.subscriptions_made += 1;
        let req = format!("s-{}", self.subscriptions_made);
        let mut subscription = Subscription::new(options, req, self.config.test_bug);
        if self.is_ready() {
            for frame in subscription.on_connected() {
                self.outputs.push_back(ClientOutput::Send(frame));
            }
        }
        self.subscriptions.push(subscription);
        Ok(())
    }

    /// The application is done with message `id`: acks go out in batches, at the end of the
    /// turn or once `ack_batch_max` wait. Acking a repaired or already acked id does nothing.
    pub fn ack(&mut self, now_ns: u64, topic: &str, group: &str, id: u64) -> Result<(), ClientError> {
        let batch_max = self.config.ack_batch_max.max(1);
        let connected = self.is_ready();
        let Some(s) = self.subscription_mut(topic, group) else { return Err(not_subscribed(topic, group)) };
        if s.ack(id) {
            if connected && s.pending_acks() >= batch_max {
                let frame = s.pending_ack_frame();
                self.outputs.extend(frame.map(ClientOutput::Send));
            } else {
                due_by(&mut self.acks_due_ns, now_ns);
            }
        }
        Ok(())
    }

    /// Gives message `id` back to the group, to come again after `delay_ms` (and be handed
    /// over again).
    pub fn nack(&mut self, topic: &str, group: &str, id: u64, delay_ms: u64) -> Result<(), ClientError> {
        let connected = self.is_ready();
        let Some(s) = self.subscription_mut(topic, group) else { return Err(not_subscribed(topic, group)) };
        // Not connected: the server redelivers it once its ack timeout passes anyway.
        if let Some(frame) = s.nack(id, delay_ms).filter(|_| connected) {
            self.outputs.push_back(ClientOutput::Send(frame));
        }
        Ok(())
    }

    /// Leaves the group: nothing more is handed over from it. Acks still waiting go out
    /// first; what the group has not delivered stays with it (for its other members, or a
    /// later `subscribe`), and what was in flight to this client goes back to it.
    pub fn unsubscribe(&mut self, topic: &str, group: &str) -> Result<(), ClientError> {
        let Some(at) = self.subscriptions.iter().position(|s| s.options.topic == topic && s.options.group == group) else { return Err(not_subscribed(topic, group)) };
        let mut subscription = self.subscriptions.remove(at);
        if self.is_ready() {
            self.outputs.extend(subscription.pending_ack_frame().map(ClientOutput::Send));
            self.outputs.push_back(ClientOutput::Send(subscription.unsub_frame()));
        }
        Ok(())
    }

    fn subscription(&self, topic: &str, group: &str) -> Option<&Subscription> {
        self.subscriptions.iter().find(|s| s.options.topic == topic && s.options.group == group)
    }

    fn subscription_mut(&mut self, topic: &str, group: &str) -> Option<&mut Subscription> {
        self.subscriptions.iter_mut().find(|s| s.options.topic == topic && s.options.group == group)
    }

    /// Closes the connection for good, after sending the acks still waiting.
    pub fn close(&mut self) {
        if self.is_ready() {
            for s in &mut self.subscriptions {
                self.outputs.extend(s.pending_ack_frame().map(ClientOutput::Send));
            }
        }
        if !matches!(self.state, State::Closed) {
            self.end_for_good("closed by the application".into());
        }
    }

    pub fn handle_input(&mut self, now_ns: u64, input: ClientInput<'_>) {
        match input {
            ClientInput::Connected => {
                if !matches!(self.state, State::Connecting { .. }) {
                    return;
                }
                self.state = State::Connected { since_ns: now_ns, ping: Ping::Heard { at_ns: now_ns }, ready: false };
                self.event(ClientEvent::State { state: ConnState::Connected, why: None });
                // With tokens from the application, nothing goes out before this connection's
                // token: ops before a hello would be refused `unauthorized`.
                if !self.config.token_from_application || self.token_fresh {
                    self.start_session(now_ns);
                }
            }
            ClientInput::Frame(text) => {
                let State::Connected { ping, .. } = &mut self.state else { return };
                *ping = Ping::Heard { at_ns: now_ns };
                match decode_server_frame(text) {
                    Ok(frame) => self.on_frame(now_ns, frame),
                    Err(why) => {
                        self.outputs.push_back(ClientOutput::Close);
                        self.connection_lost(now_ns, format!("the server broke the protocol: {why}"));
                    }
                }
            }
            ClientInput::Disconnected { code, reason } => {
                let why = match code {
                    Some(code) => format!("closed by the server ({code}{}{reason})", if reason.is_empty() { "" } else { ": " }),
                    None => format!("connection lost ({reason})"),
                };
                self.connection_lost(now_ns, why);
            }
            ClientInput::ConnectFailed { why } => self.connection_lost(now_ns, format!("could not connect: {why}")),
        }
    }

    pub fn handle_timeout(&mut self, now_ns: u64) {
        match self.state {
            State::Disconnected { retry_at_ns } if now_ns >= retry_at_ns => {
                let url = self.config.urls[self.next_url % self.config.urls.len().max(1)].clone();
                self.next_url = self.next_url.wrapping_add(1);
                self.state = State::Connecting { since_ns: now_ns };
                self.event(ClientEvent::State { state: ConnState::Connecting, why: None });
                if self.config.token_from_application {
                    // Each connection gets a fresh token: the one before may have expired.
                    self.token_fresh = false;
                    self.event(ClientEvent::TokenWanted);
                }
                self.outputs.push_back(ClientOutput::Connect { url });
            }
            State::Connecting { since_ns } if now_ns >= since_ns + self.config.connect_timeout_ms * NS_PER_MS => {
                self.outputs.push_back(ClientOutput::Close);
                self.connection_lost(now_ns, format!("not connected within {} ms (connect_timeout_ms)", self.config.connect_timeout_ms));
            }
            State::Connected { ready: false, since_ns, .. } if now_ns >= since_ns + self.config.connect_timeout_ms * NS_PER_MS => {
                self.outputs.push_back(ClientOutput::Close);
                self.connection_lost(now_ns, format!("no token from the application within {} ms (connect_timeout_ms)", self.config.connect_timeout_ms));
            }
            State::Connected { ping: Ping::Heard { at_ns }, since_ns, ready } if now_ns >= at_ns + self.config.ping_interval_ms * NS_PER_MS => {
                self.state = State::Connected { since_ns, ping: Ping::Sent { at_ns: now_ns }, ready };
                self.pings += 1;
                let req = format!("\"ping-{}\"", self.pings);
                self.send_op(&ClientOp::Ping { req: RawJson::parse(&req).ok() });
            }
            State::Connected { ping: Ping::Sent { at_ns }, .. } if now_ns >= at_ns + self.config.pong_timeout_ms * NS_PER_MS => {
                self.outputs.push_back(ClientOutput::Close);
                self.connection_lost(now_ns, format!("no answer to a ping within {} ms (pong_timeout_ms)", self.config.pong_timeout_ms));
            }
            _ => {}
        }
        if self.is_ready() {
            if self.acks_due_ns.is_some_and(|due| due <= now_ns) {
                self.acks_due_ns = None;
                for s in &mut self.subscriptions {
                    self.outputs.extend(s.pending_ack_frame().map(ClientOutput::Send));
                }
            }
            self.publishing.expire(now_ns);
            self.outputs.extend(self.latest_reads.frames_due(now_ns).into_iter().map(ClientOutput::Send));
            if self.retry_subscriptions_ns.is_some_and(|due| due <= now_ns) {
                self.retry_subscriptions_ns = None;
                for s in &mut self.subscriptions {
                    self.outputs.extend(s.retry_frames().into_iter().map(ClientOutput::Send));
                }
            }
            self.pump(now_ns);
        }
    }

    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::Disconnected { retry_at_ns } => Some(retry_at_ns),
            State::Connecting { since_ns } => Some(since_ns + self.config.connect_timeout_ms * NS_PER_MS),
            State::Connected { ping, ready, since_ns } => {
                let ping_due = match ping {
                    Ping::Heard { at_ns } => at_ns + self.config.ping_interval_ms * NS_PER_MS,
                    Ping::Sent { at_ns } => at_ns + self.config.pong_timeout_ms * NS_PER_MS,
                };
                let token_due = (!ready).then_some(since_ns + self.config.connect_timeout_ms * NS_PER_MS);
                let sending = [self.publishing.next_due_ns(), self.acks_due_ns, self.retry_subscriptions_ns, self.latest_reads.next_retry_ns()].map(|due| due.filter(|_| ready));
                let due = [Some(ping_due), token_due, sending[0], sending[1], sending[2], sending[3]];
                due.into_iter().flatten().min()
            }
            State::Closed => None,
        }
    }

    fn on_frame(&mut self, now_ns: u64, frame: ServerFrame<'_>) {
        match frame {
            ServerFrame::Puback { req, topic, id } => {
                if let Some(seq) = req.and_then(|r| r.get().parse::<u64>().ok()) {
                    if let Some((publish, outcome)) = self.publishing.answered(seq, PublishOutcome::Stored { topic: topic.into_owned(), id }) {
                        self.event(ClientEvent::Published { publish, outcome });
                    }
                }
                self.pump(now_ns);
            }
            ServerFrame::Error { req, code, message, retry_after_ms } => {
                if let Some(text) = req_string(&req) {
                    return self.on_request_error(now_ns, &text, &code, &message, retry_after_ms);
                }
                let seq = req.and_then(|r| r.get().parse::<u64>().ok());
                if ErrorCode::from_wire(&code) == Some(ErrorCode::Unauthorized) && seq.is_none() {
                    // The token was refused: trying again with it cannot help.
                    return self.end_for_good(format!("the server refused the token: {message}"));
                }
                match seq {
                    Some(seq) if is_retryable(&code) => {
                        let wait_ms = retry_after_ms.unwrap_or_else(|| self.rng.gen_range(50..=300));
                        self.publishing.retry_later(seq, now_ns + wait_ms * NS_PER_MS);
                        if ErrorCode::from_wire(&code) == Some(ErrorCode::Unavailable) && self.config.urls.len() > 1 {
                            // This node has no leader for the topic (cut off, or an election):
                            // another node may have one. Everything unanswered goes there.
                            self.outputs.push_back(ClientOutput::Close);
                            self.connection_lost(now_ns, format!("the node cannot serve now ({message}): trying another"));
                        }
                    }
                    Some(seq) => {
                        let outcome = PublishOutcome::Refused { code: code.into_owned(), message: message.into_owned() };
                        if let Some((publish, outcome)) = self.publishing.answered(seq, outcome) {
                            self.event(ClientEvent::Published { publish, outcome });
                        }
                        self.pump(now_ns);
                    }
                    None => self.event(ClientEvent::ServerError { code: code.into_owned(), message: message.into_owned() }),
                }
            }
            ServerFrame::Suback { req, topic, group } => {
                let Some(text) = req_string(&req) else { return };
                if let Some(s) = self.subscriptions.iter_mut().find(|s| s.req == text) {
                    let frames = s.on_suback();
                    self.outputs.extend(frames.into_iter().map(ClientOutput::Send));
                    self.event(ClientEvent::Subscribed { topic: topic.into_owned(), group: group.into_owned() });
                }
            }
            ServerFrame::Pulled { req, .. } => {
                let Some(text) = req_string(&req) else { return };
                if let Some(s) = self.subscriptions.iter_mut().find(|s| s.pull_req() == text) {
                    let frame = s.on_pulled();
                    self.outputs.extend(frame.map(ClientOutput::Send));
                }
            }
            ServerFrame::Msg { topic, group, id, prev, key, body, attempt, ts_ms } => {
                let window = self.config.dedupe_window_ids;
                let Some(s) = self.subscription_mut(&topic, &group) else { return };
                let delivery = Delivery {
                    topic: topic.into_owned(),
                    group: group.into_owned(),
                    id,
                    key: key.map(Cow::into_owned),
                    body: body.get().to_string(),
                    attempt,
                    ts_ms,
                    repaired: false,
                };
                let effects = s.on_msg(id, prev, delivery, window);
                self.apply(now_ns, effects);
            }
            ServerFrame::Fetched { req, messages, .. } => {
                let window = self.config.dedupe_window_ids;
                let Some(text) = req_string(&req) else { return };
                let Some(s) = self.subscriptions.iter_mut().find(|s| s.repair_req() == Some(text.as_str())) else { return };
                let effects = s.on_fetched(&messages, window);
                self.apply(now_ns, effects);
            }
            ServerFrame::Latest { req, messages, .. } => {
                let Some(text) = req_string(&req) else { return };
                let Some(outcome) = self.latest_reads.on_answer(&text, &messages) else { return };
                if let ReadOutcome::Page { read, messages, done } = outcome {
                    self.event(ClientEvent::Latest { read, messages, done });
                }
                self.outputs.extend(self.latest_reads.frames_due(now_ns).into_iter().map(ClientOutput::Send));
            }
            ServerFrame::Welcome { nodes, .. } => {
                // A cluster node names the others: when this one goes, any of them will do.
                for url in nodes {
                    if self.config.urls.len() < URLS_MAX && !self.config.urls.contains(&url) {
                        self.config.urls.push(url);
                    }
                }
            }
            ServerFrame::Pong { .. } | ServerFrame::Other { .. } => {}
        }
    }

    /// An error answering a subscription's `sub` or a repair's `fetch`.
    fn on_request_error(&mut self, now_ns: u64, req: &str, code: &str, message: &str, retry_after_ms: Option<u64>) {
        let window = self.config.dedupe_window_ids;
        let retry_at_ns = now_ns + retry_after_ms.unwrap_or_else(|| self.rng.gen_range(50..=300)) * NS_PER_MS;
        match self.latest_reads.on_error(req, is_retryable(code), retry_at_ns) {
            Some(ReadOutcome::Failed { read }) => return self.event(ClientEvent::LatestFailed { read, code: code.into(), message: message.into() }),
            Some(_) => return,
            None => {}
        }
        if let Some(at) = self.subscriptions.iter().position(|s| s.req == req || s.pull_req() == req) {
            if is_retryable(code) {
                self.subscriptions[at].retry_sub_later();
                due_by(&mut self.retry_subscriptions_ns, retry_at_ns);
            } else {
                let s = self.subscriptions.remove(at);
                self.event(ClientEvent::SubscribeFailed { topic: s.options.topic, group: s.options.group, code: code.into(), message: message.into() });
            }
        } else if let Some(s) = self.subscriptions.iter_mut().find(|s| s.repair_req() == Some(req)) {
            if is_retryable(code) {
                s.retry_repair_later();
                due_by(&mut self.retry_subscriptions_ns, retry_at_ns);
            } else {
                // The gap cannot be read: what waited behind it goes on; the application hears why.
                let mut effects = Effects::default();
                s.end_repair(window, &mut effects);
                self.event(ClientEvent::ServerError { code: code.into(), message: format!("a gap's repair failed: {message}") });
                self.apply(now_ns, effects);
            }
        }
    }

    /// Hands deliveries to the application and sends what a subscription asked for.
    fn apply(&mut self, now_ns: u64, effects: Effects) {
        for frame in effects.frames {
            self.outputs.push_back(ClientOutput::Send(frame));
        }
        for delivery in effects.deliveries {
            self.event(ClientEvent::Message(delivery));
        }
        if self.subscriptions.iter().any(Subscription::has_pending_acks) {
            due_by(&mut self.acks_due_ns, now_ns);
        }
    }

    /// Sends what publishing has ready, while connected.
    fn pump(&mut self, now_ns: u64) {
        if self.is_ready() {
            for frame in self.publishing.sendable(now_ns) {
                self.outputs.push_back(ClientOutput::Send(frame));
            }
        }
    }

    fn connection_lost(&mut self, now_ns: u64, why: String) {
        let lasted_ns = match self.state {
            State::Connected { since_ns, .. } => now_ns.saturating_sub(since_ns),
            State::Connecting { .. } | State::Disconnected { .. } => 0,
            State::Closed => return,
        };
        self.publishing.connection_lost();
        self.latest_reads.connection_lost();
        for s in &mut self.subscriptions {
            s.on_disconnected();
        }
        let delay_ms = self.backoff.next_delay_ms(lasted_ns / NS_PER_MS, &mut self.rng);
        self.state = State::Disconnected { retry_at_ns: now_ns + delay_ms * NS_PER_MS };
        self.event(ClientEvent::State { state: ConnState::Disconnected, why: Some(why) });
    }

    fn end_for_good(&mut self, why: String) {
        if matches!(self.state, State::Connecting { .. } | State::Connected { .. }) {
            self.outputs.push_back(ClientOutput::Close);
        }
        self.state = State::Closed;
        for (publish, outcome) in self.publishing.abandon_all(&why) {
            self.event(ClientEvent::Published { publish, outcome });
        }
        self.event(ClientEvent::State { state: ConnState::Closed, why: Some(why) });
    }

    fn send_op(&mut self, op: &ClientOp<'_>) {
        let mut frame = String::new();
        encode_client_op(&mut frame, op);
        self.outputs.push_back(ClientOutput::Send(frame));
    }

    fn event(&mut self, event: ClientEvent) {
        self.outputs.push_back(ClientOutput::Event(event));
    }
}

/// A timer made due at `at_ns`, or earlier if it already was.
fn due_by(timer: &mut Option<u64>, at_ns: u64) {
    *timer = Some(timer.map_or(at_ns, |due| due.min(at_ns)));
}

/// Whether an error answering a request is worth retrying (the same request, later or elsewhere).
fn is_retryable(code: &str) -> bool {
    matches!(ErrorCode::from_wire(code), Some(ErrorCode::Overloaded | ErrorCode::Internal | ErrorCode::Unavailable))
}

fn not_subscribed(topic: &str, group: &str) -> ClientError {
    ClientError::NotSubscribed(format!("not subscribed to '{topic}' as '{group}'"))
}

/// A `req` this client wrote as a string (subscriptions', repairs', pings').
fn req_string(req: &Req<'_>) -> Option<String> {
    req.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
}
