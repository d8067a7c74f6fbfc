//! Runs the client library's state machine (`ferry_core::client::Client`) in the simulated
//! world, as a real program's transport would: connections asked for and reported, frames
//! carried both ways, one wake-up per library timer. Every frame the library sends is
//! recorded, so that every answer can be checked against the requests of its connection.

use super::{Action, Ctx, INV_OWN_REQ};
use crate::checker::Checker;
use ferry_core::client::{Client as Library, ClientEvent, ClientInput, ClientOutput};
use serde_json::Value;
use std::collections::BTreeMap;

/// What the library wants its application (or the wire checks) to see: its frames, parsed,
/// on their way out, and its events.
pub enum Out {
    Sent { text: String, frame: Value },
    Event(ClientEvent),
}

pub struct Runner {
    pub name: String,
    /// Started at the first wake, seeded from the world's randomness.
    library: Option<Library>,
    /// The wake-up asked of the world for the library's timer.
    wake_at: Option<u64>,
    /// The library closed its connection and the world has not yet reported its end; a
    /// connection asked for meanwhile is asked of the world once it has.
    closing: bool,
    connect_deferred: bool,
    requests: Requests,
}

impl Runner {
    pub fn new(name: String) -> Runner {
        Runner { name, library: None, wake_at: None, closing: false, connect_deferred: false, requests: Requests::default() }
    }

    pub fn started(&self) -> bool {
        self.library.is_some()
    }

    pub fn start(&mut self, library: Library) {
        self.library = Some(library);
    }

    /// The library (started at the client's first wake, before anything else reaches it).
    pub fn library(&mut self) -> &mut Library {
        self.library.as_mut().expect("the library starts at the client's first wake")
    }

    pub fn on_wake(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        self.library().handle_timeout(now);
    }

    pub fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        self.library().handle_input(now, ClientInput::Connected);
    }

    pub fn on_disconnected(&mut self, ctx: &mut Ctx<'_>) {
        self.requests.clear();
        if std::mem::take(&mut self.closing) {
            // The end of the connection the library closed itself: it knows (the library's
            // contract); the connection it asked for meanwhile may open now.
            if std::mem::take(&mut self.connect_deferred) {
                ctx.actions.push(Action::Connect);
            }
            return;
        }
        let now = ctx.now;
        self.library().handle_input(now, ClientInput::Disconnected { code: None, reason: "the connection ended".into() });
    }

    /// A frame from the node: checked as an answer to this connection's requests, then given
    /// to the library.
    pub fn on_frame(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        self.requests.check(&self.name, frame, ctx.checker);
        let (now, text) = (ctx.now, frame.to_string());
        self.library().handle_input(now, ClientInput::Frame(&text));
    }

    /// A frame the application sends itself on the library's connection (as an application
    /// may for requests the library does not make), when there is one.
    pub fn send_own(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        if let Some(req) = frame.get("req") {
            self.requests.sent(req);
        }
        ctx.actions.push(Action::Send(frame.to_string()));
    }

    /// What the library asked for since the last call: connections and closes become the
    /// world's actions here; frames (to send, or not, by the caller) and events are returned.
    pub fn drain(&mut self, ctx: &mut Ctx<'_>) -> Vec<Out> {
        let mut outs = Vec::new();
        let Some(library) = self.library.as_mut() else { return outs };
        while let Some(output) = library.poll_output() {
            match output {
                // The world reports a closed connection's end later: a new one waits for it.
                ClientOutput::Connect { .. } if self.closing => self.connect_deferred = true,
                ClientOutput::Connect { .. } => ctx.actions.push(Action::Connect),
                ClientOutput::Close => {
                    self.closing = true;
                    ctx.actions.push(Action::Disconnect);
                }
                ClientOutput::Send(text) => {
                    let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    match frame.get("req") {
                        Some(req) => self.requests.sent(req),
                        // An ack or nack has no `req`: an error answering it has none either
                        // (one the node cannot take, e.g. of an id it no longer holds in flight
                        // after a restart: the library acks again what it is sent again).
                        None if frame["op"] == "ack" || frame["op"] == "nack" => self.requests.sent(&Value::Null),
                        None => {}
                    }
                    outs.push(Out::Sent { text, frame });
                }
                ClientOutput::Event(event) => outs.push(Out::Event(event)),
            }
        }
        outs
    }

    /// A request sent twice on purpose (a client retrying too eagerly): two answers are due.
    pub fn sent_again(&mut self, frame: &Value) {
        if let Some(req) = frame.get("req") {
            self.requests.sent(req);
        }
    }

    /// Asks the world for a wake-up at the library's next timer. One per timer: a wake asked
    /// for every frame would pile up in the world's queue (each firing asks for the next), and
    /// a busy seed would crawl.
    pub fn schedule_wake(&mut self, ctx: &mut Ctx<'_>) {
        let Some(at) = self.library.as_ref().and_then(Library::poll_timeout) else { return };
        if self.wake_at.is_none_or(|scheduled| scheduled <= ctx.now || at < scheduled) {
            self.wake_at = Some(at);
            ctx.actions.push(Action::WakeAt(at));
        }
    }
}

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
