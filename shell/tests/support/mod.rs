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

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    /// Starts `ferry serve` on `listen` (use port 0 for a free one) and waits until it listens.
    pub fn start(data_dir: &Path, listen: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferry");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ws://").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap_or_default().to_string());
                }
                log_writer.lock().unwrap().push(line);
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
        let (ws, _) = tungstenite::connect(url).map_err(|e| e.to_string())?;
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
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.recv_until(deadline).expect("connection alive").unwrap_or_else(|| panic!("no {op} frame in time"));
            if v["op"] == op {
                return v;
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
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
