//! Runs the real `ferry` binary and talks PROTOCOL.md to it.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub struct Server {
    child: Child,
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// A port free now, for a server that a test restarts on the same address: taken below the
/// kernel's ephemeral range, so that no client connection of the test (whose local ports come
/// from that range) can hold it while the server is down.
pub fn restartable_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    let ephemeral_low: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok().and_then(|range| range.split_whitespace().next()?.parse().ok()).unwrap_or(32_768);
    // Spread by process, then walked: parallel tests and test binaries rarely meet.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = ephemeral_low.saturating_sub(10_000).max(1);
    let start = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let port = 10_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed) % span) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {ephemeral_low}");
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    /// Starts `ferry serve` on `listen` (use port 0 for a free one) and waits until it listens.
    pub fn start(data_dir: &Path, listen: &str, extra: &[&str]) -> Server {
        Server::spawn(Server::command(data_dir, listen, extra))
    }

    /// Like `start`, under an open-file limit of `nofile` (soft and hard), as `prlimit` would set.
    pub fn start_with_nofile(data_dir: &Path, listen: &str, extra: &[&str], nofile: u64) -> Server {
        use std::os::unix::process::CommandExt;
        let mut command = Server::command(data_dir, listen, extra);
        // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Server::spawn(command)
    }

    fn command(data_dir: &Path, listen: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command.args(["serve", "--listen", listen, "--data-dir"]).arg(data_dir).args(extra).stdout(Stdio::null()).stderr(Stdio::piped());
        command
    }

    fn spawn(mut command: Command) -> Server {
        let mut child = command.spawn().expect("spawn ferry");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let listening = line.split("listening on ").nth(1).and_then(|rest| rest.split("://").nth(1)).map(|rest| rest.split('/').next().unwrap_or_default().to_string());
                // Logged before it is announced: a test that started the server finds the line.
                log_writer.lock().unwrap().push(line);
                if let Some(addr) = listening {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("ferry did not start: {:?}", log.lock().unwrap()));
        Server { child, addr, log }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn log_lines(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the server has used so far, from /proc/<pid>/stat.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("server stat");
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a system constant.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Descriptors the server holds open, from /proc/<pid>/fd.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }

    /// The server's soft open-file limit, from /proc/<pid>/limits.
    pub fn nofile_limit(&self) -> u64 {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).expect("server limits");
        let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("open files line");
        line.split_whitespace().nth(3).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
    }

    /// A line of /proc/<pid>/status in KiB (`VmHWM`, the peak resident set, or `VmRSS`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("server status");
        let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in status"));
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number of kB")
    }

    /// The server's peak resident set so far, in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        self.status_kib("VmHWM:") / 1024
    }

    /// Log lines containing `text`.
    pub fn log_count(&self, text: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(text)).count()
    }

    /// Server-side sockets on our port waiting in CLOSE-WAIT (the peer left, the server did not close).
    pub fn close_wait_sockets(&self) -> usize {
        let port = self.addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("port");
        let local = format!(":{port:04X}");
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .flat_map(|table| table.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
            .filter(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&local) && cols[3] == "08"
            })
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Client {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub fn connect(url: &str) -> Result<Client, String> {
        Client::connect_with(url, &[])
    }

    /// `connect` with extra handshake headers (name, value); the error of a refused handshake
    /// names its HTTP status.
    pub fn connect_with(url: &str, headers: &[(&'static str, &str)]) -> Result<Client, String> {
        use tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().map_err(|_| format!("bad header value {value}"))?);
        }
        let (ws, _) = tungstenite::connect(request).map_err(|e| e.to_string())?;
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
        }
        let mut client = Client { ws };
        let welcome = client.recv_until(Instant::now() + Duration::from_secs(10))?.ok_or("no welcome")?;
        assert_eq!(welcome["op"], "welcome");
        assert_eq!(welcome["version"], 1);
        Ok(client)
    }

    pub fn connect_retry(url: &str, deadline: Instant) -> Client {
        loop {
            match Client::connect(url) {
                Ok(c) => return c,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("cannot connect to {url}: {e}"),
            }
        }
    }

    pub fn send(&mut self, value: &Value) -> Result<(), String> {
        self.ws.send(Message::text(value.to_string())).map_err(|e| e.to_string())
    }

    pub fn send_raw(&mut self, message: Message) -> Result<(), String> {
        self.ws.send(message).map_err(|e| e.to_string())
    }

    /// The next JSON frame, `None` on a read timeout, `Err` when the connection is gone.
    pub fn recv(&mut self) -> Result<Option<Value>, String> {
        match self.ws.read() {
            Ok(Message::Text(t)) => Ok(Some(serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?)),
            Ok(Message::Close(f)) => Err(format!("closed: {f:?}")),
            Ok(_) => Ok(None),
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn recv_until(&mut self, deadline: Instant) -> Result<Option<Value>, String> {
        while Instant::now() < deadline {
            if let Some(v) = self.recv()? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Waits for a frame with `op`, skipping others.
    pub fn expect_op(&mut self, op: &str) -> Value {
        self.expect_op_any(&[op])
    }

    /// Waits for a frame whose op is one of `ops`, skipping others.
    pub fn expect_op_any(&mut self, ops: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.recv_until(deadline).expect("connection alive").unwrap_or_else(|| panic!("no {ops:?} frame in time"));
            if ops.iter().any(|op| v["op"] == *op) {
                return v;
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
    }

    /// Reads until the server closes the connection (true), or 10 s pass (false).
    pub fn wait_closed(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.recv().is_err() {
                return true;
            }
        }
        false
    }
}

pub fn pub_frame(req: u64, topic: &str, body: Value) -> Value {
    json!({"op": "pub", "req": req, "topic": topic, "body": body})
}

/// Runs `ferry serve` expecting it to refuse to start; returns its exit code and stderr.
pub fn serve_expecting_exit(data_dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait for ferry") {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry kept running although it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Segment files of `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "seg")).collect();
    files.sort();
    files
}

/// Flips a bit in the body of the stored record of `topic`/`id`, as bit rot would; returns
/// the file it was in.
pub fn rot_record(dir: &Path, topic: &str, id: u64) -> PathBuf {
    for path in segment_files(dir) {
        let mut bytes = std::fs::read(&path).unwrap();
        let mut place = None;
        ferry_core::recovery::scan_segment(&bytes, false, |offset, size, rec, _| {
            if let ferry_core::record::RecordRef::Message(m) = rec {
                if m.topic == topic && m.id == id {
                    place = Some(offset as usize + size - 2);
                }
            }
        });
        if let Some(at) = place {
            bytes[at] ^= 0x08;
            std::fs::write(&path, &bytes).unwrap();
            return path;
        }
    }
    panic!("no record of {topic} {id} in {}", dir.display());
}

/// Publishes `count` bodies made by `body`, at most 200 ahead of their pubacks; returns the ids.
pub fn publish_many(c: &mut Client, topic: &str, count: u64, body: impl Fn(u64) -> Value) -> Vec<u64> {
    let mut ids = Vec::new();
    for n in 0..count {
        c.send(&pub_frame(n, topic, body(n))).unwrap();
        while ids.len() as u64 + 200 <= n {
            ids.push(c.expect_op("puback")["id"].as_u64().unwrap());
        }
    }
    while (ids.len() as u64) < count {
        ids.push(c.expect_op("puback")["id"].as_u64().unwrap());
    }
    ids
}

/// Every id `fetch` returns for `topic`, asking again from the last id + 1 until a reply is empty.
pub fn fetch_all_ids(c: &mut Client, topic: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut from = 1;
    loop {
        c.send(&json!({"op": "fetch", "req": from, "topic": topic, "from": from, "to": u64::MAX})).unwrap();
        let fetched = c.expect_op("fetched");
        let batch: Vec<u64> = fetched["messages"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
        let Some(&last) = batch.last() else { return ids };
        ids.extend(batch);
        from = last + 1;
    }
}

/// A key for hand-made upgrade requests (the RFC 6455 example key).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A well-formed WebSocket upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n")
}

/// Reads an HTTP response head (through the blank line) byte by byte, so nothing after it is
/// consumed. `Err` names what happened instead (EOF, reset, timeout).
pub fn read_http_head(stream: &mut TcpStream, deadline: Instant) -> Result<String, String> {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if Instant::now() >= deadline {
            return Err(format!("no complete response head in time, got {:?}", String::from_utf8_lossy(&head)));
        }
        stream.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
        match stream.read(&mut byte) {
            Ok(0) => return Err(format!("EOF after {:?}", String::from_utf8_lossy(&head))),
            Ok(_) => head.push(byte[0]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("{e} after {:?}", String::from_utf8_lossy(&head))),
        }
        if head.len() > 16 << 10 {
            return Err("response head too long".into());
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// One frame as the client sends it: `first` is the whole first byte (FIN, RSV bits, opcode),
/// the payload is masked when `masked` (clients must mask; tests break that on purpose).
pub fn ws_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A WebSocket spoken by hand over a plain socket, for frames no library would send.
pub struct RawWs {
    pub stream: TcpStream,
}

/// A frame from the server: its first byte and its payload.
#[derive(Debug)]
pub struct ServerFrame {
    pub first: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    pub fn opcode(&self) -> u8 {
        self.first & 0x0f
    }
    /// The status code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode() == 0x8 && self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

impl RawWs {
    /// Connects, upgrades and reads the `welcome` frame.
    pub fn connect(addr: &str) -> RawWs {
        use std::io::Write;
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.write_all(upgrade_request("/ws").as_bytes()).unwrap();
        let head = read_http_head(&mut stream, Instant::now() + Duration::from_secs(10)).expect("upgrade response");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut ws = RawWs { stream };
        let welcome = ws.read_frame(Instant::now() + Duration::from_secs(10)).expect("welcome frame");
        assert!(String::from_utf8_lossy(&welcome.payload).contains("welcome"), "{welcome:?}");
        ws
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.stream.write_all(bytes)
    }

    /// Shrinks the socket's receive buffer (and turns off its autotuning), so that what the
    /// client does not read piles up at the server rather than in this kernel.
    pub fn shrink_receive_buffer(&mut self, bytes: i32) {
        use std::os::unix::io::AsRawFd;
        // SAFETY: setsockopt reads the int we pass, for the descriptor we own.
        let rc =
            unsafe { libc::setsockopt(self.stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, (&bytes as *const i32).cast(), std::mem::size_of::<i32>() as libc::socklen_t) };
        assert_eq!(rc, 0, "setsockopt SO_RCVBUF");
    }

    /// Sends one masked text frame holding `value`.
    pub fn send_json(&mut self, value: &Value) -> std::io::Result<()> {
        self.send(&ws_frame(0x81, value.to_string().as_bytes(), true))
    }

    /// The next frame; `Err` says why there is none (EOF, reset, timeout).
    pub fn read_frame(&mut self, deadline: Instant) -> Result<ServerFrame, String> {
        let mut head = [0u8; 2];
        self.read_exact(&mut head, deadline)?;
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.read_exact(&mut b, deadline)?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                self.read_exact(&mut b, deadline)?;
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        self.read_exact(&mut payload, deadline)?;
        Ok(ServerFrame { first: head[0], payload })
    }

    fn read_exact(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), String> {
        use std::io::Read;
        let mut filled = 0;
        while filled < buf.len() {
            if Instant::now() >= deadline {
                return Err("timeout".into());
            }
            self.stream.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => return Err("EOF".into()),
                Ok(n) => filled += n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Whether the server has closed the socket: EOF or reset, not a timeout.
    pub fn closed_by_server(&mut self, deadline: Instant) -> bool {
        use std::io::Read;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            self.stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// Sends `GET path` to `addr` over plain HTTP and returns (status code, body); the server
/// closes after answering.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_get_with(addr, path, &[])
}

/// `http_get` with extra header lines (`Name: value`).
pub fn http_get_with(addr: &str, path: &str, headers: &[&str]) -> (u16, String) {
    http_request(addr, "GET", path, headers)
}

/// Sends `method path` with extra header lines and no body: (status code, body).
pub fn http_request(addr: &str, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let length = if method == "POST" { "Content-Length: 0\r\n" } else { "" };
    let host = if headers.iter().any(|h| h.to_ascii_lowercase().starts_with("host:")) { "" } else { "Host: localhost\r\n" };
    write!(stream, "{method} {path} HTTP/1.1\r\n{host}{length}{extra}\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer, then the connection closes");
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

/// The path of an outside tool a test drives (promtool, node, chromium), found on `PATH`.
/// Missing, the test cannot run: under CI (`CI` set, where .ci/run installs every such tool)
/// that fails it; elsewhere the test says it skips and why, and returns `None`.
pub fn required_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|path| path.is_file()));
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "`{name}` is not installed: .ci/run installs it (see README, Testing)");
        eprintln!("SKIPPED: `{name}` is not installed here (.ci/run installs it; see README, Testing)");
    }
    found
}

/// What a browser test needs: `node`, Debian's `chromium`, and playwright-core installed in
/// shell/tests/browser (its directory is returned). Missing, like `required_tool`: a failure
/// under CI, a notice and `None` elsewhere.
pub fn browser_tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let (node, chromium) = (required_tool("node")?, required_tool("chromium")?);
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        assert!(std::env::var_os("CI").is_none(), "playwright-core is not installed: .ci/run runs npm ci in shell/tests/browser");
        eprintln!("SKIPPED: run `npm ci` in shell/tests/browser to install playwright-core");
        return None;
    }
    Some((node, chromium, browser_dir))
}

/// What an application was handed, as (key, body number) in the order it came, against the
/// id each body was stored under (`n_of_id`, from the publish answers): every body of
/// `0..messages` exactly once, and each key's bodies in id order (calls are stored in the
/// order they reached the client, so key order is the order of their ids).
pub fn assert_each_once_in_key_order(handed: &[(String, u64)], n_of_id: &std::collections::BTreeMap<u64, u64>, messages: u64) {
    let mut bodies: Vec<u64> = handed.iter().map(|(_, n)| *n).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, (0..messages).collect::<Vec<_>>(), "each body handed over exactly once");
    let id_of: std::collections::BTreeMap<u64, u64> = n_of_id.iter().map(|(id, n)| (*n, *id)).collect();
    let keys: std::collections::BTreeSet<&String> = handed.iter().map(|(k, _)| k).collect();
    for key in keys {
        let of_key: Vec<u64> = handed.iter().filter(|(k, _)| k == key).map(|(_, n)| id_of[n]).collect();
        assert!(of_key.windows(2).all(|w| w[0] < w[1]), "key {key} handed over out of id order: {of_key:?}");
    }
}
