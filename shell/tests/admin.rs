//! The admin API against a live server: groups, connections, a message's trace (also through
//! `ferry trace`), and its actions.

mod support;

use serde_json::{json, Value};
use support::{http_get as get, http_request, Client, Server};

fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

#[test]
fn groups_connections_and_a_trace_by_id() {
    let dir = support::temp_dir("admin");
    let server = Server::start(&dir, "127.0.0.1:0", &["--set", "ack_timeout_ms=300"]);
    let mut publisher = Client::connect(&server.url()).unwrap();
    let mut member = Client::connect(&server.url()).unwrap();
    member.send(&json!({"op": "sub", "req": "s", "topic": "orders", "group": "billing", "window": 4})).unwrap();
    member.expect_op("suback");
    publisher.send(&support::pub_frame(1, "orders", json!({"n": 1}))).unwrap();
    let id = publisher.expect_op("puback")["id"].as_u64().unwrap();
    let first = member.expect_op("msg");
    assert_eq!(first["id"].as_u64(), Some(id));
    // Not acked: redelivered after the ack timeout, then acked.
    let again = member.expect_op("msg");
    assert_eq!(again["attempt"].as_u64(), Some(2), "{again}");
    member.send(&json!({"op": "ack", "topic": "orders", "group": "billing", "ids": [id]})).unwrap();
    member.send(&json!({"op": "ping", "req": 1})).unwrap();
    member.expect_op("pong");

    let groups = get_json(&server.addr, "/api/groups");
    let billing = &groups["groups"][0];
    assert_eq!(
        (billing["topic"].as_str(), billing["group"].as_str(), billing["members"].as_u64(), billing["backlog"].as_u64()),
        (Some("orders"), Some("billing"), Some(1), Some(0)),
        "{groups}"
    );
    assert_eq!((billing["redelivered"].as_u64(), billing["ack_timeout_ms"].as_u64()), (Some(1), Some(300)), "{groups}");

    let connections = get_json(&server.addr, "/api/connections");
    assert_eq!(connections["total"].as_u64(), Some(2), "{connections}");
    let with_sub: Vec<&Value> = connections["connections"].as_array().unwrap().iter().filter(|c| !c["subs"].as_array().unwrap().is_empty()).collect();
    assert_eq!(with_sub.len(), 1, "{connections}");
    assert_eq!((with_sub[0]["subs"][0]["group"].as_str(), with_sub[0]["subs"][0]["window"].as_u64()), (Some("billing"), Some(4)), "{connections}");
    assert!(with_sub[0]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{connections}");
    let member_id = with_sub[0]["id"].as_u64().unwrap();

    let trace = get_json(&server.addr, &format!("/api/trace?topic=orders&id={id}"));
    let events: Vec<&str> = trace["events"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["stored", "delivered", "timed_out", "delivered", "acked"], "{trace}");
    assert_eq!(trace["events"][1]["conn"].as_u64(), Some(member_id), "{trace}");
    assert_eq!((trace["storage"]["state"].as_str(), trace["groups"][0]["now"]["state"].as_str()), (Some("stored"), Some("settled")), "{trace}");
    assert_eq!(get(&server.addr, "/api/trace?topic=orders&id=x").0, 400);
    assert_eq!(get(&server.addr, "/api/trace?topic=nothing&id=1").0, 404);

    // The CLI reads the same trace.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferry")).args(["trace", "--topic", "orders", "--id", &id.to_string(), "--url", &server.url()]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains(&format!("message {id} of \"orders\": stored in segment")) && text.contains("group billing: settled") && text.contains("timed_out"), "{text}");

    // Without tokens: no DNS rebinding (a Host that is a name, not loopback) and no
    // cross-site requests (an Origin that is not the Host); the console's own requests pass.
    assert_eq!(support::http_get_with(&server.addr, "/api/groups", &["Host: evil.example:7700"]).0, 403);
    let cross_site = ["Origin: http://evil.example"];
    assert_eq!(http_request(&server.addr, "POST", "/api/groups/reset?topic=orders&group=billing&to=earliest", &cross_site).0, 403);
    let same_site = [format!("Host: {}", server.addr), format!("Origin: http://{}", server.addr)];
    let same_site: Vec<&str> = same_site.iter().map(String::as_str).collect();
    assert_eq!(support::http_get_with(&server.addr, "/api/groups", &same_site).0, 200);

    // An operator rewinds the group: the member gets the message again, first in a new chain.
    let (status, body) = http_request(&server.addr, "POST", "/api/groups/reset?topic=orders&group=billing&to=earliest", &[]);
    assert_eq!(status, 200, "{body}");
    let replay = member.expect_op("msg");
    assert_eq!((replay["id"].as_u64(), replay["prev"].as_u64()), (Some(id), Some(0)), "{replay}");
    assert_eq!(http_request(&server.addr, "POST", "/api/groups/reset?topic=orders&group=billing&to=soon", &[]).0, 400);
    assert_eq!(http_request(&server.addr, "POST", "/api/groups/reset?topic=orders&group=nobody&to=latest", &[]).0, 404);
    assert_eq!(http_request(&server.addr, "POST", "/api/topics/redrive?topic=orders", &[]).0, 404, "no dead letters");

    // Degradation switches: pause the group's deliveries, refuse publishes to the topic.
    let (status, body) = http_request(&server.addr, "POST", "/api/groups/pause?topic=orders&group=billing&paused=true", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(get_json(&server.addr, "/api/groups")["groups"][0]["paused"], json!(true));
    assert!(get(&server.addr, "/metrics").1.contains("ferry_group_paused{topic=\"orders\",group=\"billing\"} 1"));
    assert_eq!(http_request(&server.addr, "POST", "/api/topics/publishes?topic=orders&refused=true", &[]).0, 200);
    publisher.send(&support::pub_frame(2, "orders", json!({"n": 2}))).unwrap();
    let refused = publisher.expect_op_any(&["puback", "error"]);
    assert_eq!(refused["code"], json!("unavailable"), "{refused}");
    assert_eq!(http_request(&server.addr, "POST", "/api/topics/publishes?topic=orders&refused=maybe", &[]).0, 400);

    // An operator disconnects the member: its connection closes, the group has no member.
    let (status, body) = http_request(&server.addr, "POST", &format!("/api/connections/disconnect?id={member_id}"), &[]);
    assert_eq!(status, 200, "{body}");
    assert!(member.wait_closed(), "the member's connection is closed");
    let groups = get_json(&server.addr, "/api/groups");
    assert_eq!(groups["groups"][0]["members"].as_u64(), Some(0), "{groups}");
    assert_eq!(http_request(&server.addr, "POST", "/api/connections/disconnect?id=999999", &[]).0, 404);
    assert_eq!(http_request(&server.addr, "POST", "/api/connections/disconnect", &[]).0, 400);
    // Dropping the group: gone from the list.
    let (status, body) = http_request(&server.addr, "POST", "/api/groups/drop?topic=orders&group=billing", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(get_json(&server.addr, "/api/groups")["groups"], json!([]));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
