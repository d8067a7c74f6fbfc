//! Plain HTTP on the client listener beside `/ws`: `/metrics` in the OpenMetrics text format
//! with the core's counters moving as messages flow, `/healthz`, `/readyz`, and 404 elsewhere.

mod support;

use serde_json::json;
use support::{http_get as get, Client, Server};

/// The value of the sample `name` (no labels) in a metrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

#[test]
fn metrics_health_and_readiness_are_served_beside_the_websocket() {
    let dir = support::temp_dir("http");
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let (status, before) = get(&server.addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&before, "ferry_published_total"), Some(0.0), "{before}");

    let mut publisher = Client::connect(&server.url()).unwrap();
    let mut member = Client::connect(&server.url()).unwrap();
    member.send(&json!({"op": "sub", "req": "s", "topic": "orders", "group": "billing"})).unwrap();
    member.expect_op("suback");
    for n in 0..3 {
        publisher.send(&support::pub_frame(n, "orders", json!({"n": n}))).unwrap();
        publisher.expect_op("puback");
    }
    for _ in 0..3 {
        let m = member.expect_op("msg");
        member.send(&json!({"op": "ack", "topic": "orders", "group": "billing", "ids": [m["id"]]})).unwrap();
    }
    // The acks are in once a ping sent after them is answered.
    member.send(&json!({"op": "ping", "req": 1})).unwrap();
    member.expect_op("pong");

    let (_, after) = get(&server.addr, "/metrics");
    assert_eq!(sample(&after, "ferry_published_total"), Some(3.0), "{after}");
    assert_eq!(sample(&after, "ferry_delivered_total"), Some(3.0), "{after}");
    assert_eq!(sample(&after, "ferry_acked_total"), Some(3.0), "{after}");
    assert_eq!(sample(&after, "ferry_connections"), Some(2.0), "the scrape itself is no client: {after}");
    assert!(sample(&after, "ferry_log_written_bytes_total").is_some_and(|b| b > 0.0), "{after}");
    // Every publish was fsynced (fsync = always): at least one fsync observed.
    assert!(sample(&after, "ferry_fsync_seconds_count").is_some_and(|n| n >= 1.0), "{after}");
    let labelled = |name: &str| after.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {after}")).to_string();
    assert!(labelled("ferry_topic_published_total{topic=\"orders\"}").ends_with(" 3"), "{after}");
    assert!(labelled("ferry_group_acked_total{topic=\"orders\",group=\"billing\"}").ends_with(" 3"), "{after}");
    assert!(labelled("ferry_group_backlog{topic=\"orders\",group=\"billing\"}").ends_with(" 0"), "all acked: {after}");
    assert!(labelled("ferry_group_members{topic=\"orders\",group=\"billing\"}").ends_with(" 1"), "{after}");
    // The core's latency histograms: one publish → puback per puback, one store → delivery per
    // first delivery, the last bucket +Inf holding them all.
    assert_eq!(sample(&after, "ferry_publish_to_puback_seconds_count"), Some(3.0), "{after}");
    assert_eq!(sample(&after, "ferry_store_to_deliver_seconds_count"), Some(3.0), "{after}");
    assert!(after.contains("ferry_publish_to_puback_seconds_bucket{le=\"+Inf\"} 3"), "{after}");
    assert!(sample(&after, "ferry_log_segments").is_some_and(|n| n >= 1.0), "{after}");
    assert!(sample(&after, "ferry_log_disk_bytes").is_some_and(|n| n > 0.0), "{after}");
    // OpenMetrics: every family announced by TYPE and HELP, the text ends with # EOF.
    assert!(after.contains("# TYPE ferry_published counter") && after.contains("# HELP ferry_published "), "{after}");
    assert_eq!(after.lines().last(), Some("# EOF"));
    // A frame that is not JSON is refused with bad_frame, and counted.
    publisher.send_raw(tungstenite::Message::text("not json")).unwrap();
    publisher.expect_op("error");
    let (_, refused) = get(&server.addr, "/metrics");
    assert!(refused.contains("ferry_errors_total{code=\"bad_frame\"} 1"), "{refused}");
    // One more message, not acked: the backlog counts it.
    publisher.send(&support::pub_frame(9, "orders", json!("late"))).unwrap();
    publisher.expect_op("puback");
    member.expect_op("msg");
    let (_, later) = get(&server.addr, "/metrics");
    assert!(later.contains("ferry_group_backlog{topic=\"orders\",group=\"billing\"} 1"), "{later}");
    assert!(later.contains("ferry_group_in_flight{topic=\"orders\",group=\"billing\"} 1"), "{later}");
    assert!(later.contains("ferry_group_oldest_unacked_age_seconds{topic=\"orders\",group=\"billing\"} "), "{later}");
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample is `name value`: {line}"));
        assert!(name.starts_with("ferry_") && value.parse::<f64>().is_ok(), "{line}");
    }

    // The admin API, from loopback with no tokens configured.
    let (status, body) = get(&server.addr, "/api/topics");
    assert_eq!(status, 200, "{body}");
    let topics: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let orders = &topics["topics"][0];
    assert_eq!((orders["topic"].as_str(), orders["published"].as_u64()), (Some("orders"), Some(4)), "{topics}");
    assert_eq!((orders["groups"][0]["group"].as_str(), orders["groups"][0]["backlog"].as_u64()), (Some("billing"), Some(1)), "{topics}");

    assert_eq!(get(&server.addr, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(&server.addr, "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(get(&server.addr, "/nothing").0, 404);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prometheus's own checker reads a scrape taken with traffic flowing. promtool (2.42) reads the
/// text format 0.0.4, where a counter's HELP names its `_total` sample; in OpenMetrics (what
/// ferry serves, and Prometheus asks for first) HELP names the family. So the one complaint
/// allowed is "no help text" for a `_total` whose family has its HELP; any parse error or other
/// lint fails.
#[test]
fn a_scrape_passes_promtool() {
    let Some(promtool) = support::required_tool("promtool") else { return };
    let dir = support::temp_dir("promtool");
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let mut publisher = Client::connect(&server.url()).unwrap();
    let mut member = Client::connect(&server.url()).unwrap();
    member.send(&json!({"op": "sub", "req": "s", "topic": "orders", "group": "billing"})).unwrap();
    member.expect_op("suback");
    publisher.send(&support::pub_frame(1, "orders", json!({"n": 1}))).unwrap();
    publisher.expect_op("puback");
    member.expect_op("msg");
    publisher.send_raw(tungstenite::Message::text("not json")).unwrap();
    publisher.expect_op("error");
    let (_, text) = get(&server.addr, "/metrics");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let unexpected: Vec<&str> = report
        .lines()
        .filter(|line| {
            let counter_help = line.strip_suffix(" no help text").and_then(|name| name.strip_suffix("_total")).is_some_and(|family| text.contains(&format!("# HELP {family} ")));
            !counter_help
        })
        .collect();
    assert!(unexpected.is_empty(), "promtool: {unexpected:?}\n{text}");
    assert!(report.contains("ferry_published_total no help text"), "promtool read the counters: {report}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_tokens_configured_the_admin_api_wants_one_of_them() {
    let dir = support::temp_dir("http-admin");
    let server = Server::start(&dir, "127.0.0.1:0", &["--set", "tokens=[\"s3cret\"]"]);
    assert_eq!(get(&server.addr, "/api/topics").0, 401);
    assert_eq!(support::http_get_with(&server.addr, "/api/topics", &["Authorization: Bearer wrong"]).0, 401);
    let (status, body) = support::http_get_with(&server.addr, "/api/topics", &["Authorization: Bearer s3cret"]);
    assert_eq!((status, body.as_str()), (200, r#"{"topics":[]}"#));
    // The console page holds no data: a browser gets it without a token, then it asks for one.
    let (status, page) = get(&server.addr, "/");
    assert!(status == 200 && page.contains("<title>ferry console</title>"), "{status} {page}");
    // A page of another site cannot act, even with a token.
    let cross_site = ["Authorization: Bearer s3cret", "Origin: http://evil.example"];
    assert_eq!(support::http_request(&server.addr, "POST", "/api/connections/disconnect?id=1", &cross_site).0, 403);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
