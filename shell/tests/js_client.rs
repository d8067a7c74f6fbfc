//! The JavaScript client library (shell/client-js) against the real server: its Node tests
//! (node's test runner), and a publisher and a subscriber of it, in Node and in chromium,
//! while the server is killed with SIGKILL twice: every publish call resolves with its own
//! id, every body is handed to the application exactly once, each key in id order.
//! Its TypeScript types compile against a usage of every call (tsc, from shell/tests/browser).
//! .ci/run installs node, chromium, playwright-core and typescript; elsewhere a test skips,
//! saying so.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{temp_dir, Server};

/// Messages the server stores between the kills (and after them, before the scenario is
/// told to stop).
const STORED_BETWEEN_KILLS: u64 = 150;

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("client-js")
}

#[test]
fn the_node_tests_of_the_javascript_client_pass() {
    let Some(node) = support::required_tool("node") else { return };
    let dir = temp_dir("js-client-node-tests");
    // Redeliveries within the tests' patience: an ack timeout of half a second.
    let server = Server::start(&dir, "127.0.0.1:0", &["--set", "ack_timeout_ms=500"]);
    let output = Command::new(node)
        .current_dir(client_dir())
        .args(["--experimental-websocket", "--test", "test/client.test.mjs"])
        .env("FERRY_URL", server.url())
        .output()
        .expect("node runs");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{said}");
    assert!(said.contains("# fail 0") && !said.contains("# pass 0"), "{said}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_typescript_types_of_the_javascript_client_compile() {
    let Some((node, _, browser_dir)) = support::browser_tools() else { return };
    let usage = client_dir().join("test/types.ts");
    let output = Command::new(node)
        .current_dir(&browser_dir)
        .args(["node_modules/typescript/bin/tsc", "--noEmit", "--strict", "--target", "es2022", "--module", "nodenext", "--moduleResolution", "nodenext"])
        .arg(usage)
        .output()
        .expect("node runs");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "tsc: {said}");
}

#[test]
fn the_javascript_client_in_node_keeps_its_promises_across_two_kill_9s() {
    let Some(node) = support::required_tool("node") else { return };
    let run = |url: &str| {
        let mut command = Command::new(&node);
        command.current_dir(client_dir()).args(["--experimental-websocket", "test/kill-run.mjs", url]);
        command
    };
    kills_twice_and_checks("js-client-node", &run);
}

#[test]
fn the_javascript_client_in_chromium_keeps_its_promises_across_two_kill_9s() {
    let Some((node, chromium, browser_dir)) = support::browser_tools() else { return };
    let run = |url: &str| {
        let page = url.replace("ws://", "http://").replace("/ws", "/healthz");
        let mut command = Command::new(&node);
        command
            .current_dir(&browser_dir)
            .arg("js-client.mjs")
            .args([&page, url])
            .arg(client_dir().join("ferry-client.js"))
            .arg(client_dir().join("test/kill-scenario.js"))
            .arg(&chromium);
        command
    };
    kills_twice_and_checks("js-client-chromium", &run);
}

/// Runs the kill scenario (shell/client-js/test/kill-scenario.js) under `runner`, killing the
/// server with SIGKILL twice while it publishes (see the thresholds below) and restarting it
/// on its address, then checks what the application saw.
fn kills_twice_and_checks(name: &str, runner: &dyn Fn(&str) -> Command) {
    let dir = temp_dir(name);
    let mut server = Server::start(&dir, &format!("127.0.0.1:{}", support::restartable_port()), &[]);
    let addr = server.addr.clone();
    let mut child = runner(&server.url()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("node runs");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // Killed by what the server counts, live (the runner's lines can lag behind the page):
    // each time `STORED_BETWEEN_KILLS` more were stored since it started, with the publisher
    // at full speed; as many more after the second kill, then the scenario is told to stop
    // (a message on topic `control`), so that a fast or slow browser meets both kills.
    let published = |addr: &str| {
        let (_, metrics) = support::http_get(addr, "/metrics");
        metrics.lines().find_map(|line| line.strip_prefix("ferry_published_total ")?.parse::<u64>().ok()).unwrap_or(0)
    };
    let mut kills = 0;
    let mut result = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while result.is_none() && Instant::now() < deadline {
        while let Ok(line) = lines.try_recv() {
            if let Some(json) = line.strip_prefix("result ") {
                result = Some(serde_json::from_str::<Value>(json).unwrap_or_else(|e| panic!("{e}: {json}")));
            }
        }
        if kills <= 2 && published(&addr) >= STORED_BETWEEN_KILLS {
            kills += 1;
            if kills <= 2 {
                server.kill();
                server = Server::start(&dir, &addr, &[]);
            } else {
                let mut control = support::Client::connect(&server.url()).unwrap();
                control.send(&serde_json::json!({"op": "pub", "req": 1, "topic": "control", "body": "stop"})).unwrap();
                control.expect_op("puback");
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let Some(result) = result else { panic!("no result within 120 s: {}", String::from_utf8_lossy(&output.stderr)) };
    assert_eq!(kills, 3, "the server was killed twice, then the scenario told to stop");
    let outcomes = result["outcomes"].as_object().expect("outcomes");
    let messages = outcomes.len() as u64;
    assert!(messages > 3 * STORED_BETWEEN_KILLS, "{messages} publishes");
    // Every call made resolved: the calls are numbered 0.. in the order they were made.
    assert!(outcomes.keys().all(|n| n.parse::<u64>().is_ok_and(|n| n < messages)), "every publish call resolved");
    let mut n_of_id = BTreeMap::new();
    for (n, outcome) in outcomes {
        let id = outcome["id"].as_u64().unwrap_or_else(|| panic!("publish {n} ended {outcome}"));
        assert!(n_of_id.insert(id, n.parse::<u64>().unwrap()).is_none(), "id {id} answered two publishes");
    }
    let handed: Vec<(String, u64)> = result["handed"].as_array().unwrap().iter().map(|h| (h[0].as_str().unwrap().to_string(), h[1].as_u64().unwrap())).collect();
    support::assert_each_once_in_key_order(&handed, &n_of_id, messages);
    assert!(result["drops"].as_u64().unwrap_or(0) >= 2, "the publisher lost its connection to each kill: {}", result["drops"]);
    server.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
