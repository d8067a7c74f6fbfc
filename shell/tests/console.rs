//! The web console in a real browser: Debian's chromium, driven by playwright-core under node
//! (shell/tests/browser/console.mjs), loads http://<server>/ while a publisher and a consumer
//! run, checks that the numbers move and that a trace lookup finds a message just published,
//! and saves a screenshot (target/tmp/console.png). .ci/run installs chromium, node and the
//! script's npm packages; elsewhere the test skips, saying so, when they are missing.

mod support;

use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{Client, Server};

#[test]
fn the_console_shows_a_live_server_and_finds_a_message_by_id() {
    let Some((node, chromium, browser_dir)) = support::browser_tools() else { return };
    let dir = support::temp_dir("console");
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let mut member = Client::connect(&server.url()).unwrap();
    member.send(&json!({"op": "sub", "req": "s", "topic": "console-topic", "group": "console-group"})).unwrap();
    member.expect_op("suback");
    let mut publisher = Client::connect(&server.url()).unwrap();
    publisher.send(&support::pub_frame(0, "console-topic", json!({"n": 0}))).unwrap();
    let id = publisher.expect_op("puback")["id"].as_u64().unwrap();

    // Traffic while the browser looks: a publish every 20 ms, each acked by the member.
    let running = Arc::new(AtomicBool::new(true));
    let traffic = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut n = 1;
            while running.load(Ordering::Relaxed) {
                publisher.send(&support::pub_frame(n, "console-topic", json!({"n": n}))).unwrap();
                publisher.expect_op("puback");
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let consumer = {
        let running = running.clone();
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                if let Ok(Some(m)) = member.recv() {
                    if m["op"] == "msg" {
                        let _ = member.send(&json!({"op": "ack", "topic": "console-topic", "group": "console-group", "ids": [m["id"]]}));
                    }
                }
            }
        })
    };

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("http://{}/", server.addr);
    let output = std::process::Command::new(node)
        .current_dir(&browser_dir)
        .args(["console.mjs", &url, "console-topic", &id.to_string(), screenshot.to_str().unwrap(), chromium.to_str().unwrap()])
        .output()
        .expect("node runs");
    running.store(false, Ordering::Relaxed);
    traffic.join().unwrap();
    consumer.join().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{said}");
    let seen: serde_json::Value = serde_json::from_str(said.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {said}"));
    assert!(seen["after"].as_f64() > seen["before"].as_f64(), "the published count moved: {seen}");
    assert!(std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000), "a screenshot at {}", screenshot.display());
    eprintln!("console screenshot: {}", screenshot.display());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
