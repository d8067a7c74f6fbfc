//! The HTTP half of the WebSocket handshake (RFC 6455 §4.2): read the upgrade request, check
//! it, and answer 101 with the accept key, or an HTTP status that says what is wrong.
//! tungstenite's server handshake drops the socket on a bad request without an answer, so the
//! shell reads and checks the request itself and hands tungstenite the upgraded stream.
//!
//! Refusals, checked in this order:
//! - 400 Bad Request: not an HTTP request line, HTTP below 1.1 (RFC 6455 §4.1 needs 1.1),
//!   a request head over `REQUEST_HEAD_BYTES_MAX`, a folded header line.
//! - A request for a plain HTTP path (`is_plain_http`: the console at `/`, `/metrics`,
//!   `/healthz`, `/readyz`, the admin API under `/api/`) is plain HTTP (`Verdict::Http`): the
//!   server answers it (see `http`) and closes. GET, or POST for the admin API's actions;
//!   another method gets 405.
//! - 404 Not Found: a path other than those and `/ws`.
//! - 405 Method Not Allowed (with `Allow: GET`): any method but GET on `/ws`.
//! - 400 Bad Request: no `Host` (RFC 6455 §4.2.1 item 2, RFC 7230 §5.4).
//! - 426 Upgrade Required (with `Upgrade: websocket` and `Sec-WebSocket-Version: 13`): no
//!   `Upgrade: websocket` or no `Connection: Upgrade`, i.e. a plain HTTP request for the
//!   WebSocket resource (RFC 7231 §6.5.15); a `Sec-WebSocket-Version` other than 13, or none
//!   (RFC 6455 §4.2.2 point 4 and §4.4: answer with the versions the server speaks).
//! - 400 Bad Request: `Sec-WebSocket-Key` missing, repeated, or not 16 bytes in base64
//!   (RFC 6455 §4.2.1 item 5).

use std::io::{self, Read};

/// Longest request head read (browsers may send cookies; common servers allow 8 to 16 KiB).
pub const REQUEST_HEAD_BYTES_MAX: usize = 16 << 10;
const PATH: &str = "/ws";

/// What a request (as far as it has arrived) comes to.
pub enum Verdict {
    /// The request head is not complete yet.
    Incomplete,
    /// Send `answer` (101), then speak WebSocket; `tail` is what the client sent after its
    /// request head (the start of its first frames). `bearer` and `origin`: its
    /// `Authorization: Bearer` token and `Origin`, for the server to check first.
    Upgrade { answer: Vec<u8>, tail: Vec<u8>, bearer: Option<String>, origin: Option<String> },
    /// Send `answer`, then close; `why` is for the log.
    Refuse { answer: Vec<u8>, why: String },
    /// A plain HTTP request (one the server answers without an upgrade), then close:
    /// `method` GET or POST, `query` what followed `?` (undecoded), `bearer` the token of an
    /// `Authorization: Bearer` header, `host` and `origin` those headers (for the admin API's
    /// cross-site and DNS-rebinding checks).
    Http { method: String, path: String, query: String, bearer: Option<String>, host: Option<String>, origin: Option<String> },
}

/// Paths served as plain HTTP beside the WebSocket one.
const HTTP_PATHS: [&str; 4] = ["/", "/metrics", "/healthz", "/readyz"];
const API_PREFIX: &str = "/api/";

/// Whether `path` is served as plain HTTP rather than upgraded.
pub fn is_plain_http(path: &str) -> bool {
    HTTP_PATHS.contains(&path) || path.starts_with(API_PREFIX)
}

/// Collects the request head from a non-blocking stream.
#[derive(Default)]
pub struct RequestReader {
    received: Vec<u8>,
}

impl RequestReader {
    /// Reads what has arrived and judges the request once its head is complete. `Err` when the
    /// connection failed or closed before that.
    pub fn read(&mut self, stream: &mut impl Read) -> io::Result<Verdict> {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    // The blank line may straddle two reads.
                    let search_from = self.received.len().saturating_sub(3);
                    self.received.extend_from_slice(&chunk[..n]);
                    let head_end = self.received[search_from..].windows(4).position(|w| w == b"\r\n\r\n").map(|at| search_from + at + 4);
                    if head_end.unwrap_or(self.received.len()) > REQUEST_HEAD_BYTES_MAX {
                        return Ok(refuse(400, &[], &format!("request head over {REQUEST_HEAD_BYTES_MAX} bytes")));
                    }
                    if let Some(head_end) = head_end {
                        let tail = self.received.split_off(head_end);
                        return Ok(judge(&self.received, tail));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Verdict::Incomplete),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A complete HTTP answer with `body`, then the connection closes.
pub fn http_answer(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} {}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}", reason(status), body.len()).into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A complete answer refusing the upgrade: status line, `extra` headers, a one-line body.
pub fn refusal(status: u16, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut answer = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in extra {
        answer += &format!("{name}: {value}\r\n");
    }
    // A sender of Upgrade must list it in Connection (RFC 7230 §6.7); either way we close.
    let connection = if extra.iter().any(|(name, _)| name.eq_ignore_ascii_case("Upgrade")) { "Upgrade, close" } else { "close" };
    let body = format!("{body}\n");
    answer += &format!("Connection: {connection}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    answer.into_bytes()
}

fn refuse(status: u16, extra: &[(&str, &str)], why: &str) -> Verdict {
    Verdict::Refuse { answer: refusal(status, extra, why), why: format!("{status}: {why}") }
}

/// Judges a complete request head (through its blank line).
fn judge(head: &[u8], tail: Vec<u8>) -> Verdict {
    // Header values may carry any bytes; the ones checked here are ASCII when valid.
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else { return refuse(400, &[], "not an HTTP request line") };
    let Some(version) = http_version(version) else { return refuse(400, &[], "not an HTTP request line") };
    if method.is_empty() || target.is_empty() {
        return refuse(400, &[], "not an HTTP request line");
    }
    if version < (1, 1) {
        return refuse(400, &[], "WebSocket needs HTTP/1.1 or later");
    }
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return refuse(400, &[], "folded header lines are not accepted");
        }
        let Some((name, value)) = line.split_once(':') else { return refuse(400, &[], "a header line without a colon") };
        if name.is_empty() || name.contains([' ', '\t']) {
            return refuse(400, &[], "a malformed header name");
        }
        headers.push((name, value.trim_matches([' ', '\t'])));
    }
    let values = |wanted: &'static str| headers.iter().filter(move |(name, _)| name.eq_ignore_ascii_case(wanted)).map(|(_, value)| *value);
    let has_token = |header: &'static str, token: &str| values(header).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token));

    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if is_plain_http(path) {
        let post_allowed = path.starts_with(API_PREFIX);
        if method != "GET" && !(post_allowed && method == "POST") {
            return refuse(405, &[("Allow", if post_allowed { "GET, POST" } else { "GET" })], "plain HTTP paths answer GET (and the admin API's actions POST)");
        }
        let bearer = values("Authorization").find_map(|v| v.strip_prefix("Bearer ")).map(|token| token.trim().to_string());
        let (host, origin) = (values("Host").next().map(str::to_string), values("Origin").next().map(str::to_string));
        return Verdict::Http { method: method.to_string(), path: path.to_string(), query: query.to_string(), bearer, host, origin };
    }
    if path != PATH {
        return refuse(404, &[], "ferry serves WebSocket at /ws, its console at /, /metrics, /healthz, /readyz and the admin API under /api/");
    }
    if method != "GET" {
        return refuse(405, &[("Allow", "GET")], "a WebSocket upgrade is a GET request");
    }
    if values("Host").next().is_none() {
        return refuse(400, &[], "no Host header");
    }
    let upgrade_headers = [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")];
    if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
        return refuse(426, &upgrade_headers, "this resource speaks WebSocket: send Upgrade: websocket and Connection: Upgrade");
    }
    let versions: Vec<&str> = values("Sec-WebSocket-Version").collect();
    if versions != ["13"] {
        return refuse(426, &upgrade_headers, "ferry speaks WebSocket version 13");
    }
    let keys: Vec<&str> = values("Sec-WebSocket-Key").collect();
    let [key] = keys[..] else { return refuse(400, &[], "exactly one Sec-WebSocket-Key is required") };
    if !is_websocket_key(key) {
        return refuse(400, &[], "Sec-WebSocket-Key must be 16 bytes in base64");
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    let bearer = values("Authorization").find_map(|v| v.strip_prefix("Bearer ")).map(|token| token.trim().to_string());
    Verdict::Upgrade { answer: answer.into_bytes(), tail, bearer, origin: values("Origin").next().map(str::to_string) }
}

/// `HTTP/<major>.<minor>` as numbers.
fn http_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.strip_prefix("HTTP/")?.split_once('.')?;
    let digits = |s: &str| (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten();
    Some((digits(major)?, digits(minor)?))
}

/// 16 bytes in canonical base64: 22 characters, the last of which carries 2 bits (so it is
/// one of A, Q, g, w), then `==`.
fn is_websocket_key(key: &str) -> bool {
    let b = key.as_bytes();
    let base64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    b.len() == 24 && b[..22].iter().all(base64) && matches!(b[21], b'A' | b'Q' | b'g' | b'w') && &b[22..] == b"=="
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(request: &str) -> String {
        match RequestReader::default().read(&mut request.as_bytes()) {
            Ok(Verdict::Upgrade { answer, .. }) | Ok(Verdict::Refuse { answer, .. }) => String::from_utf8(answer).unwrap().lines().next().unwrap().to_string(),
            Ok(Verdict::Http { method, path, query, .. }) => format!("http {method} {path} {query}"),
            Ok(Verdict::Incomplete) => "incomplete".into(),
            Err(e) => format!("error {e}"),
        }
    }

    const GOOD: &str = "GET /ws?x=1 HTTP/1.1\r\nhost: a\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn a_good_request_is_upgraded_with_the_rfc_accept_key() {
        let Ok(Verdict::Upgrade { answer, tail, .. }) = RequestReader::default().read(&mut format!("{GOOD}\u{81}").as_bytes()) else { panic!("not upgraded") };
        let answer = String::from_utf8(answer).unwrap();
        // The example of RFC 6455 §1.3.
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{answer}");
        assert_eq!(tail, "\u{81}".as_bytes());
    }

    #[test]
    fn requests_are_judged_only_once_complete_and_bounded() {
        assert_eq!(status(&GOOD[..40]), "error unexpected end of file");
        let mut partial: &[u8] = &GOOD.as_bytes()[..40];
        let mut reader = RequestReader::default();
        let mut blocked = io::Read::chain(&mut partial, BlockingEnd);
        assert!(matches!(reader.read(&mut blocked), Ok(Verdict::Incomplete)));
        let endless = format!("GET /ws HTTP/1.1\r\nX: {}", "x".repeat(REQUEST_HEAD_BYTES_MAX));
        assert_eq!(status(&endless), "HTTP/1.1 400 Bad Request");
        let complete_but_long = GOOD.replace("\r\n\r\n", &format!("\r\nX: {}\r\n\r\n", "x".repeat(REQUEST_HEAD_BYTES_MAX)));
        assert_eq!(status(&complete_but_long), "HTTP/1.1 400 Bad Request");
    }

    /// A reader that would block, like a drained non-blocking socket.
    struct BlockingEnd;
    impl Read for BlockingEnd {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    #[test]
    fn plain_http_paths_are_told_apart_from_the_websocket() {
        assert_eq!(status("GET /metrics HTTP/1.1\r\n\r\n"), "http GET /metrics ");
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), "http GET / ");
        assert_eq!(status("GET /api/trace?topic=a%2Fb&id=3 HTTP/1.1\r\n\r\n"), "http GET /api/trace topic=a%2Fb&id=3");
        assert_eq!(status("POST /api/groups/reset?topic=t HTTP/1.1\r\n\r\n"), "http POST /api/groups/reset topic=t");
        assert_eq!(status("GET /apis HTTP/1.1\r\nHost: a\r\n\r\n"), "HTTP/1.1 404 Not Found");
    }

    #[test]
    fn odd_requests_get_a_status_and_never_a_panic() {
        for (request, want) in [
            ("\r\n\r\n", "400"),
            ("GET\r\n\r\n", "400"),
            ("GET /ws HTTP/x.y\r\n\r\n", "400"),
            ("GET  /ws HTTP/1.1\r\n\r\n", "400"),
            ("GET /ws HTTP/0.9\r\n\r\n", "400"),
            ("DELETE /other HTTP/1.1\r\nHost: a\r\n\r\n", "404"),
            ("POST /metrics HTTP/1.1\r\nHost: a\r\n\r\n", "405"),
            ("DELETE /api/topics HTTP/1.1\r\nHost: a\r\n\r\n", "405"),
            ("GET /ws HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "400"),
            ("GET /ws HTTP/1.1\r\nno colon\r\n\r\n", "400"),
            ("GET /ws HTTP/1.1\r\nHost: \u{fffd}\u{0}\r\n\r\n", "426"),
        ] {
            assert!(status(request).starts_with(&format!("HTTP/1.1 {want} ")), "{request:?}: {}", status(request));
        }
        let two_keys = GOOD.replace("\r\n\r\n", "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
        assert_eq!(status(&two_keys), "HTTP/1.1 400 Bad Request");
        let bad_tail_bits = GOOD.replace("jZQ==", "jZR==");
        assert_eq!(status(&bad_tail_bits), "HTTP/1.1 400 Bad Request");
    }
}
