//! Plain HTTP on the client listener (no second port to open): the request as the handshake
//! read it, who sent it, and which module answers it — `metrics` for `/metrics`, `/healthz`
//! and `/readyz`, `admin` for the console at `/` and the admin API under `/api/`.

use crate::admin;
use crate::handshake::http_answer;
use crate::metrics;
use ferry_core::ids::ConnId;
use ferry_core::Host;
use prometheus_client::metrics::histogram::Histogram;

/// A plain HTTP request: `query` decoded into (name, value) pairs.
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub access: Access,
}

impl Request {
    pub fn new(method: String, path: String, raw_query: &str, access: Access) -> Request {
        let query = form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect();
        Request { method, path, query, access }
    }

    /// The value of query parameter `name`, if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// Who asks, for the admin API and console.
pub struct Access {
    pub from_loopback: bool,
    pub bearer: Option<String>,
    /// The `Host` and `Origin` headers, if sent.
    pub host: Option<String>,
    pub origin: Option<String>,
}

/// What the shell knows of a client connection that the core does not.
pub struct ConnectionInfo {
    pub peer: String,
    pub connected_ms: u64,
    pub outbox_bytes: u64,
}

/// What an answer may read or change beside the request.
pub struct Context<'a> {
    pub host: &'a mut Host,
    pub now_ns: u64,
    /// The store's fsync durations.
    pub fsync_seconds: &'a Histogram,
    pub connection_info: &'a dyn Fn(ConnId) -> Option<ConnectionInfo>,
    /// In a cluster: each other voter and whether its link is up.
    pub peer_links: Vec<(u64, bool)>,
}

/// The complete answer to `request` (the connection closes after it).
pub fn answer(request: &Request, context: &mut Context<'_>) -> Vec<u8> {
    if let Some(answer) = metrics::answer(&request.path, context.host, context.fsync_seconds, &context.peer_links) {
        return answer;
    }
    admin::answer(request, context).unwrap_or_else(|| http_answer(404, "text/plain; charset=utf-8", "not served\n"))
}
