//! The client's vocabulary: its settings, what its runner feeds it and carries out, what
//! it tells the application, and the errors of its calls.

use super::backoff::BackoffConfig;
use super::latest_reads::ReadId;
use super::publishing::{PublishId, PublishLimits, PublishOutcome};
use super::subscriptions::Delivery;
use crate::config::TestBug;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Servers to connect to (`ws://host:port/ws`), tried in turn; a cluster node's
    /// `welcome` adds the nodes it names.
    pub urls: Vec<String>,
    /// Sent in a `hello` on every connection.
    pub token: Option<String>,
    /// Ask the application for a token before each connection (`ClientEvent::TokenWanted`,
    /// answered with `Client::set_token`) instead of using `token` as it is: for tokens
    /// that expire. Nothing is sent on a connection before its token.
    pub token_from_application: bool,
    /// The `producer` of this client's publishes; by default drawn from `rng_seed`. Two
    /// clients must never share one while both publish.
    pub producer: Option<String>,
    /// The `seq` of the first publish. A program that publishes again under the same
    /// `producer` must start above the seqs it used before: the server answers a seq it
    /// remembers with the message stored under it, and stores nothing.
    pub first_seq: u64,
    pub rng_seed: u64,
    pub backoff: BackoffConfig,
    /// A connection silent this long gets a `ping`.
    pub ping_interval_ms: u64,
    /// A `ping` unanswered this long (no frame at all) ends the connection.
    pub pong_timeout_ms: u64,
    /// A connection not open after this long is given up.
    pub connect_timeout_ms: u64,
    pub publish: PublishLimits,
    /// Ids per group remembered as handed over, so that a redelivery is not handed again.
    pub dedupe_window_ids: usize,
    /// Acks waiting go out in one frame once this many wait (else at the end of the turn).
    pub ack_batch_max: usize,
    /// A deliberate bug, for the simulator's checkers to catch (never set it otherwise).
    pub test_bug: Option<TestBug>,
}

impl ClientConfig {
    pub fn new(urls: Vec<String>, rng_seed: u64) -> ClientConfig {
        ClientConfig {
            urls,
            token: None,
            token_from_application: false,
            producer: None,
            first_seq: 1,
            rng_seed,
            backoff: BackoffConfig::default(),
            ping_interval_ms: 15_000,
            pong_timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            publish: PublishLimits::default(),
            dedupe_window_ids: 100_000,
            ack_batch_max: 64,
            test_bug: None,
        }
    }
}

/// What the transport reports.
#[derive(Debug)]
pub enum ClientInput<'a> {
    /// The connection asked for with `ClientOutput::Connect` is open.
    Connected,
    /// A text frame from the server.
    Frame(&'a str),
    /// The connection ended (close code and reason when the server sent them).
    Disconnected { code: Option<u16>, reason: String },
    /// The connection asked for could not be opened.
    ConnectFailed { why: String },
}

/// What the client asks of its transport, and tells its application.
#[derive(Debug, PartialEq)]
pub enum ClientOutput {
    /// Open a connection to `url` (after closing any other).
    Connect {
        url: String,
    },
    /// Send one text frame on the open connection.
    Send(String),
    /// Close the connection (the client reports no `Disconnected` for it: it knows).
    Close,
    Event(ClientEvent),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Disconnected,
    Connecting,
    Connected,
    /// For good: `close` was called or the server refused the client's identity.
    Closed,
}

#[derive(Debug, PartialEq)]
pub enum ClientEvent {
    /// The connection's state changed; `why` tells what ended a connection.
    State { state: ConnState, why: Option<String> },
    /// A publish ended: each publish call gets exactly one of these.
    Published { publish: PublishId, outcome: PublishOutcome },
    /// An error the server sent that answers no request of this client (an ack's, a
    /// group dropped by an operator), or that ended a gap's repair.
    ServerError { code: String, message: String },
    /// The server took the subscription (on every connection).
    Subscribed { topic: String, group: String },
    /// The server refused the subscription for good (forbidden, conflict, bad_frame): it is dropped.
    SubscribeFailed { topic: String, group: String, code: String, message: String },
    /// A token is needed for the connection being opened: answer with `Client::set_token`
    /// (only with `token_from_application`).
    TokenWanted,
    /// A message for the application, once per group. Ack it with `Client::ack` unless it is
    /// `repaired`.
    Message(Delivery),
    /// A page of a `Client::read_latest`: the newest message of keys, in id order (a key that
    /// changed while the read went on may come again, newer). `done`: the read is over (this
    /// page is empty).
    Latest { read: ReadId, messages: Vec<LatestMessage>, done: bool },
    /// The server refused a read for good (`forbidden`, `no_such_topic`, …): it is dropped.
    LatestFailed { read: ReadId, code: String, message: String },
}

/// The newest message of a key, as `latest` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatestMessage {
    pub id: u64,
    pub key: String,
    /// The body's JSON text.
    pub body: String,
    pub ts_ms: u64,
}

/// Why a call was refused on the spot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    BadBody(String),
    /// The publish buffer is full (`PublishLimits`): wait for answers, then publish again.
    BufferFull(String),
    Closed,
    /// `ack`/`nack` for a group this client has not subscribed to, or a second `subscribe`.
    NotSubscribed(String),
    AlreadySubscribed(String),
}
