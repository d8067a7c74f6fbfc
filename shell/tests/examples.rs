//! The client examples of docs/CLIENTS.md run against a live server: the Python one
//! (docs/clients/orders.py, with websocket-client) and the browser one
//! (shell/client-js/ferry-client.js, in chromium through playwright-core). .ci/run installs
//! what they need; elsewhere a test skips, saying so, when it is missing.

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use support::Server;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_python_example_publishes_and_processes_each_order_once() {
    let Some(python) = support::required_tool("python3") else { return };
    let has_module = std::process::Command::new(&python).args(["-c", "import websocket"]).status().is_ok_and(|s| s.success());
    if !has_module {
        assert!(std::env::var_os("CI").is_none(), "websocket-client is not installed: .ci/run installs it with pip");
        eprintln!("SKIPPED: pip install websocket-client to run the Python example");
        return;
    }
    let dir = support::temp_dir("example-py");
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let output = std::process::Command::new(python).arg(repo_file("docs/clients/orders.py")).args([&server.url(), "5"]).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{said}");
    assert!(said.contains("published [1, 2, 3, 4, 5]"), "{said}");
    for id in 1..=5 {
        assert_eq!(said.matches(&format!("processed {id}:")).count(), 1, "order {id} processed once: {said}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_browser_example_publishes_and_consumes_each_message_once() {
    let Some((node, chromium, browser_dir)) = support::browser_tools() else { return };
    let dir = support::temp_dir("example-js");
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let module = repo_file("shell/client-js/ferry-client.js");
    let output = std::process::Command::new(node)
        .current_dir(&browser_dir)
        .args(["examples.mjs", &format!("http://{}/healthz", server.addr), &server.url(), module.to_str().unwrap(), chromium.to_str().unwrap()])
        .output()
        .expect("node runs");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{said}");
    let result: Value = serde_json::from_str(said.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {said}"));
    assert_eq!(result["ids"], json!([1, 2, 3]), "{result}");
    assert_eq!(result["seen"], json!([1, 2, 3]), "each once, in order: {result}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
