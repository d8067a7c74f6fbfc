//! A client that misuses the protocol: malformed frames and ops that must be refused. Each
//! must get the error the protocol names, on a connection that stays usable (a `ping` after
//! each must get its `pong`), while every other client goes on unaffected.

use crate::clients::{Action, Ctx, MS};
use rand::Rng;
use serde_json::Value;

pub const INV_ERRORS: &str = "misuse-gets-its-error";
/// No client receives a message, or a `fetched`, of a topic outside its rights.
pub const INV_RIGHTS: &str = "rights-hold";

/// The limited user's token, and its rights: topics no other client uses.
pub const LIMITED_TOKEN: &str = "sim-limited";

pub fn limited_user() -> ferry_core::rights::UserConfig {
    ferry_core::rights::UserConfig { token: LIMITED_TOKEN.into(), publish: vec!["probe.*".into()], subscribe: vec!["probe.> watchers".into()], admin: false }
}

/// What a limited client may not do on the swarm's topics: each must get `forbidden`, and a
/// refused publish must never be stored (its body is no publisher's: `content` would fail).
const RIGHTS_PROBES: [&str; 4] = [
    r#"{"op":"pub","req":7,"topic":"t0","body":"rights-probe"}"#,
    r#"{"op":"sub","req":7,"topic":"t0","group":"g0"}"#,
    r#"{"op":"pull","req":7,"topic":"t0","group":"g0","max":1,"wait_ms":0}"#,
    r#"{"op":"fetch","req":7,"topic":"t0","from":1,"to":100}"#,
];

/// (frame, the error codes it may get). `unsub` of an unknown group may find its topic not yet
/// durable after a crash, hence two codes there.
const MISUSES: [(&str, &[&str]); 10] = [
    ("{", &["bad_frame"]),
    ("[1,2,3]", &["bad_frame"]),
    (r#"{"op":"nope","req":7}"#, &["unknown_op"]),
    (r#"{"op":"ping","req":{"a":1}}"#, &["bad_frame"]),
    (r#"{"op":"pub","req":7,"topic":"t0.dlq","body":1}"#, &["forbidden"]),
    (r#"{"op":"ack","topic":"never-created","group":"g","ids":[1]}"#, &["no_such_topic"]),
    (r#"{"op":"fetch","req":7,"topic":"never-created","from":1,"to":2}"#, &["no_such_topic"]),
    (r#"{"op":"sub","req":7,"topic":"t0","group":"g0","window":0}"#, &["bad_frame"]),
    (r#"{"op":"pull","req":7,"topic":"t0","group":"g0","max":0,"wait_ms":0}"#, &["bad_frame"]),
    (r#"{"op":"unsub","req":7,"topic":"t0","group":"never-joined"}"#, &["not_subscribed", "no_such_topic"]),
];

const WRONG_HELLO: (&str, &[&str]) = (r#"{"op":"hello","token":"wrong"}"#, &["unauthorized"]);

/// Misuse number `which`: its frame and the codes it may get. A limited client may get
/// `forbidden` for any op naming a topic (its rights are checked before the op's own errors).
fn misuse(which: usize, limited: bool) -> (&'static str, Vec<&'static str>) {
    if let Some(probe) = which.checked_sub(MISUSES.len() + 1).and_then(|at| RIGHTS_PROBES.get(at)) {
        return (probe, vec!["forbidden"]);
    }
    let (frame, codes) = MISUSES.get(which).copied().unwrap_or(WRONG_HELLO);
    let mut codes = codes.to_vec();
    if limited && frame.contains(r#""topic""#) {
        codes.push("forbidden");
    }
    (frame, codes)
}

/// What the misbehaver waits for.
enum Expect {
    /// An error with one of these codes for misuse number `which`.
    Error { which: usize },
    /// The pong that shows the connection is still usable.
    Pong,
}

pub struct Misbehaver {
    pub name: String,
    /// In a cluster, a node that does not lead may answer `fetch` with `unavailable` (it cannot
    /// know whether the topic exists): accepted there, and the misbehaver moves on.
    pub cluster: bool,
    /// The server requires tokens: a `hello` with a wrong one must get `unauthorized`.
    pub tokens_required: bool,
    /// It says hello as the limited user and probes topics outside its rights.
    pub limited: bool,
    /// Ops are rate limited: any op that counts against a rate may get `overloaded` instead.
    pub rate_limited: bool,
    link: Link,
    expect: Option<Expect>,
    sent: u64,
    total: u64,
}

impl Misbehaver {
    pub fn new(name: String, total: u64) -> Misbehaver {
        Misbehaver { name, cluster: false, tokens_required: false, limited: false, rate_limited: false, link: Link::Down, expect: None, sent: 0, total }
    }

    /// Waiting for a reply on a live connection.
    pub fn waiting(&self) -> bool {
        self.link == Link::Up && self.expect.is_some()
    }

    /// The end of the run: a misuse still unanswered on a live connection got no error at all.
    pub fn finish(&self, checker: &mut crate::checker::Checker) {
        if let (true, Some(Expect::Error { which })) = (self.link == Link::Up, &self.expect) {
            checker.violation(INV_ERRORS, format!("{} sent {} and never got an error", self.name, misuse(*which, self.limited).0));
        }
    }

    pub fn on_wake(&mut self, ctx: &mut Ctx<'_>) {
        if self.link.wake(ctx) && self.expect.is_none() {
            self.misuse(ctx);
        }
    }

    pub fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.link = Link::Up;
        self.expect = None;
        self.misuse(ctx);
    }

    pub fn on_disconnected(&mut self, ctx: &mut Ctx<'_>) {
        self.link = Link::Down;
        self.expect = None;
        ctx.actions.push(Action::WakeAt(ctx.now + ctx.rng.gen_range(10..300) * MS));
    }

    fn misuse(&mut self, ctx: &mut Ctx<'_>) {
        if self.sent >= self.total {
            return;
        }
        // One more misuse when tokens are required: a hello with a wrong one; and, for a
        // limited client, the rights probes after it.
        let choices = MISUSES.len() + usize::from(self.tokens_required) + if self.limited { RIGHTS_PROBES.len() } else { 0 };
        let which = ctx.rng.gen_range(0..choices);
        self.sent += 1;
        self.expect = Some(Expect::Error { which });
        ctx.actions.push(Action::Send(misuse(which, self.limited).0.to_string()));
    }

    pub fn on_frame(&mut self, frame: &Value, ctx: &mut Ctx<'_>) {
        match (frame["op"].as_str(), &self.expect) {
            (Some("welcome"), _) => {}
            (Some("error"), Some(Expect::Error { which })) => {
                let (misuse, codes) = misuse(*which, self.limited);
                let code = frame["code"].as_str().unwrap_or_default();
                let not_leading = self.cluster && code == "unavailable" && misuse.contains(r#""op":"fetch""#);
                // Rates are checked once an op has decoded and passed its rights check.
                let over_rate = self.rate_limited && code == "overloaded" && ["pub", "sub", "pull", "fetch", "unsub"].iter().any(|op| misuse.contains(&format!(r#""op":"{op}""#)));
                if !codes.contains(&code) && !not_leading && !over_rate {
                    ctx.checker.violation(INV_ERRORS, format!("{} sent {misuse} and got {frame}, not one of {codes:?}", self.name));
                }
                self.expect = Some(Expect::Pong);
                ctx.actions.push(Action::Send(format!(r#"{{"op":"ping","req":{}}}"#, self.sent)));
            }
            (Some("pong"), Some(Expect::Pong)) if frame["req"].as_u64() == Some(self.sent) => {
                self.expect = None;
                ctx.actions.push(Action::WakeAt(ctx.now + ctx.rng.gen_range(20..400) * MS));
            }
            (Some("msg" | "fetched" | "pulled"), _) if self.limited => {
                ctx.checker.violation(INV_RIGHTS, format!("{} (limited to probe.*) got {frame}", self.name));
            }
            _ => ctx.checker.violation(INV_ERRORS, format!("{} got an unexpected {frame}", self.name)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Link {
    Down,
    Connecting,
    Up,
}

impl Link {
    /// On a wake-up: a client without a connection asks for one; true when connected.
    fn wake(&mut self, ctx: &mut Ctx<'_>) -> bool {
        if *self == Link::Down {
            *self = Link::Connecting;
            ctx.actions.push(Action::Connect);
        }
        *self == Link::Up
    }
}
