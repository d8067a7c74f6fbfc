//! Identities against the real binary: users with rights on topic patterns from a TOML
//! config (`[[users]]`), each op refused with `forbidden` on its own `req` outside them, the
//! admin API for tokens with the admin right only, and a config that cannot be read or parsed
//! stopping the server with a message that names the problem.

mod support;

use serde_json::{json, Value};
use support::{http_get_with, Client, Server};

const CONFIG: &str = r#"
tokens = ["root-secret"]

[[users]]
token = "writer-secret"
publish = ["orders.*", "!orders.internal"]

[[users]]
token = "reader-secret"
subscribe = ["orders.> billing"]

[[users]]
token = "ops-secret"
admin = true
"#;

fn client(server: &Server, token: &str) -> Client {
    let mut client = Client::connect(&server.url()).unwrap();
    client.send(&json!({"op": "hello", "token": token})).unwrap();
    client
}

/// The answer to `frame`: its op, or its error code (checking the error carries the req).
fn answer(client: &mut Client, frame: Value) -> String {
    client.send(&frame).unwrap();
    let reply = client.expect_op_any(&["puback", "suback", "fetched", "error"]);
    if reply["op"] == "error" {
        assert_eq!(reply["req"], frame["req"], "{reply}");
        return reply["code"].as_str().unwrap().to_string();
    }
    reply["op"].as_str().unwrap().to_string()
}

#[test]
fn users_get_their_rights_and_nothing_more() {
    let dir = support::temp_dir("rights");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ferry.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let server = Server::start(&dir.join("data"), "127.0.0.1:0", &["--config", config.to_str().unwrap()]);
    let mut writer = client(&server, "writer-secret");
    let mut reader = client(&server, "reader-secret");
    let mut stranger = Client::connect(&server.url()).unwrap();
    let publish = |req: u64, topic: &str| json!({"op": "pub", "req": req, "topic": topic, "body": req});
    let sub = |req: u64, group: &str| json!({"op": "sub", "req": req, "topic": "orders.new", "group": group});
    assert_eq!(answer(&mut reader, sub(1, "billing")), "suback");
    assert_eq!(answer(&mut reader, sub(2, "shipping")), "forbidden");
    assert_eq!(answer(&mut writer, publish(3, "orders.new")), "puback");
    let m = reader.expect_op("msg");
    assert_eq!(m["body"], json!(3), "the reader got the writer's message");
    assert_eq!(answer(&mut writer, publish(4, "orders.internal")), "forbidden");
    assert_eq!(answer(&mut writer, publish(5, "payments.new")), "forbidden");
    assert_eq!(answer(&mut reader, publish(6, "orders.new")), "forbidden");
    assert_eq!(answer(&mut stranger, publish(7, "orders.new")), "unauthorized");
    assert_eq!(answer(&mut writer, json!({"op": "fetch", "req": 8, "topic": "orders.new", "from": 1, "to": 5})), "forbidden");
    // The admin API: tokens with the admin right only.
    let bearer = |token: &str| format!("Authorization: Bearer {token}");
    assert_eq!(http_get_with(&server.addr, "/api/topics", &[&bearer("ops-secret")]).0, 200);
    assert_eq!(http_get_with(&server.addr, "/api/topics", &[&bearer("root-secret")]).0, 200);
    assert_eq!(http_get_with(&server.addr, "/api/topics", &[&bearer("writer-secret")]).0, 403);
    assert_eq!(http_get_with(&server.addr, "/api/topics", &[&bearer("nobody")]).0, 401);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_config_that_cannot_be_read_or_parsed_stops_the_server_saying_why() {
    let dir = support::temp_dir("bad-config");
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.toml");
    let (code, said) = support::serve_expecting_exit(&dir.join("data"), &["--config", missing.to_str().unwrap()]);
    assert!(code.is_some_and(|c| c != 0) && said.contains("cannot read config"), "{code:?} {said}");
    let cases = [
        ("[[users]]\ntoken = \"t\"\npublish = [\"orders.>.x\"]\n", "users[0]"),
        ("[[users]]\ntoken = \"t\"\npubish = [\"orders\"]\n", "pubish"),
        ("tokens = [\"t\"]\n[[users]]\ntoken = \"t\"\n", "users[0]"),
        ("[[users]\ntoken = \"t\"\n", "config"),
    ];
    for (text, named) in cases {
        let path = dir.join("ferry.toml");
        std::fs::write(&path, text).unwrap();
        let (code, said) = support::serve_expecting_exit(&dir.join("data"), &["--config", path.to_str().unwrap()]);
        assert!(code.is_some_and(|c| c != 0) && said.contains(named), "{text:?}: {code:?} {said}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn handshakes_check_origins_and_bearer_tokens_and_silent_clients_are_closed() {
    let dir = support::temp_dir("handshake-rights");
    let set = ["--set", "tokens=[\"root-secret\"]", "--set", "allowed_origins=[\"https://app.example\"]", "--set", "hello_timeout_ms=300"];
    let server = Server::start(&dir, "127.0.0.1:0", &set);
    let url = server.url();
    // Origin: allowed, absent (an app), denied.
    assert!(Client::connect_with(&url, &[("Origin", "https://app.example")]).is_ok());
    let refused = Client::connect_with(&url, &[("Origin", "https://evil.example")]).err().unwrap_or_default();
    assert!(refused.contains("403"), "{refused}");
    // A bearer token at the handshake authenticates; an unknown one is refused at once.
    let mut by_header = Client::connect_with(&url, &[("Authorization", "Bearer root-secret")]).unwrap();
    assert_eq!(answer(&mut by_header, json!({"op": "pub", "req": 1, "topic": "t", "body": 1})), "puback");
    let refused = Client::connect_with(&url, &[("Authorization", "Bearer wrong")]).err().unwrap_or_default();
    assert!(refused.contains("401"), "{refused}");
    // A client that never says hello is closed after hello_timeout_ms; the others stay.
    let mut silent = Client::connect(&url).unwrap();
    assert!(silent.wait_closed(), "closed for saying no hello");
    assert_eq!(answer(&mut by_header, json!({"op": "pub", "req": 2, "topic": "t", "body": 2})), "puback");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
