//! ferry's client library for Rust applications on tokio.
//!
//! The protocol's guarantees take client logic: reconnecting, subscribing again, dropping
//! redeliveries, resending unanswered publishes idempotently, repairing gaps with `fetch`
//! where asked to (`SubscribeOptions::repair_gaps`). All
//! of it lives in `ferry_core::client::Client`, a sans-IO state machine that the simulator
//! drives through thousands of faults; this crate only runs it over a WebSocket
//! (`tokio-tungstenite`) and a clock.
//!
//! ```no_run
//! # async fn run() -> Result<(), ferry_client::ClientError> {
//! use ferry_client::{ClientConfig, ClientEvent, FerryClient, SubscribeOptions};
//! let config = ClientConfig::new(vec!["ws://127.0.0.1:7700/ws".into()], 1);
//! let (client, mut events) = FerryClient::start(config);
//! client.subscribe(SubscribeOptions::new("orders", "billing")).await?;
//! let outcome = client.publish("orders", Some("customer-42"), r#"{"total": 12}"#).await?;
//! println!("{outcome:?}"); // Stored { topic: "orders", id: 1 }, once durable
//! while let Some(event) = events.next().await {
//!     if let ClientEvent::Message(delivery) = event {
//!         println!("{} {}", delivery.id, delivery.body); // each message once, in order
//!         client.ack(&delivery).await?;
//!     }
//! }
//! # Ok(()) }
//! ```

use ferry_core::client::Client;
pub use ferry_core::client::{
    BackoffConfig, ClientConfig, ClientError, ClientEvent, ConnState, Delivery, LatestMessage, PublishId, PublishLimits, PublishOutcome, PullOptions, ReadId, SubscribeOptions,
};
use ferry_core::client::{ClientInput, ClientOutput};
pub use ferry_core::protocol::{Filter, StartFrom};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Events not yet taken by the application, at most: past this the client stops reading from
/// the server (which then holds back deliveries) rather than buffer without bound.
pub const EVENTS_CAPACITY: usize = 1_024;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = Result<Socket, String>> + Send>>;
type Reply<T> = oneshot::Sender<Result<T, ClientError>>;
type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
type TokenSource = Box<dyn Fn() -> TokenFuture + Send>;

enum Command {
    Publish { topic: String, key: Option<String>, body: String, reply: Reply<PublishOutcome> },
    Subscribe { options: SubscribeOptions, reply: Reply<()> },
    Unsubscribe { topic: String, group: String, reply: Reply<()> },
    ReadLatest { topic: String, keys: Option<Vec<String>>, reply: Reply<ReadId> },
    Ack { topic: String, group: String, id: u64, reply: Reply<()> },
    Nack { topic: String, group: String, id: u64, delay_ms: u64, reply: Reply<()> },
    SetToken { token: String },
    Close,
}

/// A handle on a running client; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct FerryClient {
    commands: mpsc::UnboundedSender<Command>,
}

/// What the client tells the application: messages (`ClientEvent::Message`), connection
/// states, subscriptions taken or refused, server errors that answer no call.
pub struct Events {
    events: mpsc::Receiver<ClientEvent>,
}

impl Events {
    /// The next event; `None` once the client has closed.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }
}

impl FerryClient {
    /// Starts a client on the current tokio runtime; it connects at once.
    pub fn start(config: ClientConfig) -> (FerryClient, Events) {
        Self::spawn(config, None)
    }

    /// Starts a client that asks `source` for a token before each connection (tokens that
    /// expire: a JWT, say). Nothing is sent on a connection before its token; a token that
    /// arrives after a newer one was asked for is dropped, so a slow refresh cannot put an old
    /// token on a new connection. A source that fails is asked again on the next connection.
    pub fn start_with_token_source<F, Fut>(mut config: ClientConfig, source: F) -> (FerryClient, Events)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        config.token_from_application = true;
        Self::spawn(config, Some(Box::new(move || Box::pin(source()) as TokenFuture)))
    }

    fn spawn(config: ClientConfig, token_source: Option<TokenSource>) -> (FerryClient, Events) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::channel(EVENTS_CAPACITY);
        let epoch = Instant::now();
        let client = Client::new(config, 0);
        let driver = Driver { client, epoch, socket: None, connecting: None, token_source, token_request: None, waiters: HashMap::new(), events: event_tx };
        tokio::spawn(driver.run(command_rx));
        (FerryClient { commands }, Events { events })
    }

    /// A token for the connections from now on (and a hello with it on the open one). With
    /// `token_from_application` set and no token source, this answers `ClientEvent::TokenWanted`.
    pub fn set_token(&self, token: &str) {
        let _ = self.commands.send(Command::SetToken { token: token.to_string() });
    }

    /// Hands `command` over now (calls reach the client in the order they are made) and
    /// returns the wait for its answer.
    fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> impl Future<Output = Result<T, ClientError>> + Send + 'static
    where
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let handed_over = self.commands.send(command(reply)).map_err(|_| ClientError::Closed);
        async move {
            handed_over?;
            answer.await.unwrap_or(Err(ClientError::Closed))
        }
    }

    /// Publishes `body` (JSON text); the future resolves to its outcome: `Stored` once
    /// durable on the server, `Refused` for good, `Abandoned` if the client closes first.
    /// Reconnections in between are the client's business: the publish is stored once
    /// whatever happens. Publishes go out in the order of these calls (the call hands the
    /// publish over; awaiting only waits for the answer), so several may be awaited at once.
    pub fn publish(&self, topic: &str, key: Option<&str>, body: &str) -> impl Future<Output = Result<PublishOutcome, ClientError>> + Send + 'static {
        let (topic, key, body) = (topic.to_string(), key.map(str::to_string), body.to_string());
        self.call(|reply| Command::Publish { topic, key, body, reply })
    }

    /// Subscribes now and on every later connection.
    pub async fn subscribe(&self, options: SubscribeOptions) -> Result<(), ClientError> {
        self.call(|reply| Command::Subscribe { options, reply }).await
    }

    /// Leaves the group (acks still waiting go out first); nothing more is handed over from it.
    pub async fn unsubscribe(&self, topic: &str, group: &str) -> Result<(), ClientError> {
        let (topic, group) = (topic.to_string(), group.to_string());
        self.call(|reply| Command::Unsubscribe { topic, group, reply }).await
    }

    /// Starts reading the newest message of each key of `topic` (of `keys`, if given): its
    /// pages come as `ClientEvent::Latest` events with the returned id, the last one `done`.
    pub async fn read_latest(&self, topic: &str, keys: Option<Vec<String>>) -> Result<ReadId, ClientError> {
        let topic = topic.to_string();
        self.call(|reply| Command::ReadLatest { topic, keys, reply }).await
    }

    /// The application is done with `delivery`.
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), ClientError> {
        let (topic, group, id) = (delivery.topic.clone(), delivery.group.clone(), delivery.id);
        self.call(|reply| Command::Ack { topic, group, id, reply }).await
    }

    /// Gives `delivery` back, to come again after `delay_ms`.
    pub async fn nack(&self, delivery: &Delivery, delay_ms: u64) -> Result<(), ClientError> {
        let (topic, group, id) = (delivery.topic.clone(), delivery.group.clone(), delivery.id);
        self.call(|reply| Command::Nack { topic, group, id, delay_ms, reply }).await
    }

    /// Closes the client: publishes still unanswered end `Abandoned`, events end.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

struct Driver {
    client: Client,
    epoch: Instant,
    socket: Option<Socket>,
    connecting: Option<Connecting>,
    token_source: Option<TokenSource>,
    /// The newest token asked of the source; an older request is dropped with it.
    token_request: Option<TokenFuture>,
    waiters: HashMap<PublishId, Reply<PublishOutcome>>,
    events: mpsc::Sender<ClientEvent>,
}

impl Driver {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            self.carry_out().await;
            if self.client.state() == ConnState::Closed {
                return;
            }
            let deadline = self.client.poll_timeout().map(|ns| tokio::time::Instant::from_std(self.epoch + Duration::from_nanos(ns)));
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.apply(command),
                    // Every handle is gone: nobody can use the client any more.
                    None => self.client.close(),
                },
                opened = async { self.connecting.as_mut().expect("guarded").await }, if self.connecting.is_some() => {
                    self.connecting = None;
                    let now_ns = self.now_ns();
                    match opened {
                        Ok(socket) => {
                            self.socket = Some(socket);
                            self.client.handle_input(now_ns, ClientInput::Connected);
                        }
                        Err(why) => self.client.handle_input(now_ns, ClientInput::ConnectFailed { why }),
                    }
                },
                message = async { self.socket.as_mut().expect("guarded").next().await }, if self.socket.is_some() => self.on_message(message),
                token = async { self.token_request.as_mut().expect("guarded").await }, if self.token_request.is_some() => {
                    self.token_request = None;
                    // A failed source leaves the connection waiting: it times out and the
                    // next one asks again.
                    if let Ok(token) = token {
                        let now_ns = self.now_ns();
                        self.client.set_token(now_ns, token);
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    let now_ns = self.now_ns();
                    self.client.handle_timeout(now_ns);
                },
            }
        }
    }

    fn apply(&mut self, command: Command) {
        let now_ns = self.now_ns();
        match command {
            Command::Publish { topic, key, body, reply } => match self.client.publish(now_ns, &topic, key.as_deref(), &body) {
                Ok(id) => {
                    self.waiters.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Subscribe { options, reply } => {
                let _ = reply.send(self.client.subscribe(options));
            }
            Command::Unsubscribe { topic, group, reply } => {
                let _ = reply.send(self.client.unsubscribe(&topic, &group));
            }
            Command::ReadLatest { topic, keys, reply } => {
                let _ = reply.send(self.client.read_latest(now_ns, &topic, keys));
            }
            Command::Ack { topic, group, id, reply } => {
                let _ = reply.send(self.client.ack(now_ns, &topic, &group, id));
            }
            Command::Nack { topic, group, id, delay_ms, reply } => {
                let _ = reply.send(self.client.nack(&topic, &group, id, delay_ms));
            }
            Command::SetToken { token } => self.client.set_token(now_ns, token),
            Command::Close => self.client.close(),
        }
    }

    fn on_message(&mut self, message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
        let now_ns = self.now_ns();
        let ended = match message {
            Some(Ok(Message::Text(text))) => {
                self.client.handle_input(now_ns, ClientInput::Frame(text.as_str()));
                return;
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((None, String::new()), |f| (Some(u16::from(f.code)), f.reason.to_string()));
                ClientInput::Disconnected { code, reason }
            }
            // tungstenite answers pings itself; ferry sends no binary frames.
            Some(Ok(_)) => return,
            Some(Err(e)) => ClientInput::Disconnected { code: None, reason: e.to_string() },
            None => ClientInput::Disconnected { code: None, reason: "the connection ended".into() },
        };
        self.socket = None;
        self.client.handle_input(now_ns, ended);
    }

    /// Does what the state machine asked: connections, frames, answers to calls, events.
    async fn carry_out(&mut self) {
        while let Some(output) = self.client.poll_output() {
            match output {
                ClientOutput::Connect { url } => {
                    self.socket = None;
                    self.connecting = Some(Box::pin(async move { tokio_tungstenite::connect_async(url.as_str()).await.map(|(socket, _)| socket).map_err(|e| e.to_string()) }));
                }
                ClientOutput::Send(text) => {
                    let Some(socket) = self.socket.as_mut() else { continue };
                    if let Err(e) = socket.send(Message::text(text)).await {
                        self.socket = None;
                        let now_ns = self.now_ns();
                        self.client.handle_input(now_ns, ClientInput::Disconnected { code: None, reason: e.to_string() });
                    }
                }
                ClientOutput::Close => {
                    self.connecting = None;
                    if let Some(mut socket) = self.socket.take() {
                        let _ = socket.close(None).await;
                    }
                }
                ClientOutput::Event(ClientEvent::Published { publish, outcome }) => {
                    if let Some(reply) = self.waiters.remove(&publish) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                ClientOutput::Event(ClientEvent::TokenWanted) if self.token_source.is_some() => {
                    self.token_request = self.token_source.as_ref().map(|source| source());
                }
                // Back-pressure: a full queue waits here, and the socket is not read meanwhile.
                ClientOutput::Event(event) => {
                    let _ = self.events.send(event).await;
                }
            }
        }
    }
}
