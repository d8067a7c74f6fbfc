//! The admin API (JSON under `/api/`) and the web console at `/` that reads it. The API answers
//! an admin only: with identities configured, a request carrying `Authorization: Bearer <token>`
//! of a token with the admin right (every `tokens` entry; a user with `admin = true`)
//! (the console page, which holds no data, is served to anyone and asks for the token); without
//! tokens, a request from a loopback address to a loopback name (`Host: localhost` or a
//! loopback IP), so a web page cannot reach it through DNS rebinding. A browser request from
//! another site (an `Origin` that is not the `Host`) is refused either way, so no page can
//! trigger an action cross-site. Never open to the world by default.
//!
//! Reads (GET): `/api/overview` (counters, latency histograms, memory, disk, readiness),
//! `/api/topics`, `/api/groups`, `/api/connections` (`?limit=`, 1,000 by default), and
//! `/api/trace?topic=&id=`. Actions (POST) are in `admin_actions`.

use crate::handshake::http_answer;
use crate::http::{Access, Context, Request};
use ferry_core::group::{EntryState, IdPosition};
use ferry_core::latency::{LatencyHistogram, LATENCY_BOUNDS_NS};
use ferry_core::node::message_trace::Storage;
use ferry_core::node::observe::{GroupView, TopicView};
use ferry_core::protocol::ErrorCode;
use ferry_core::Host;
use serde_json::{json, Value};

/// The console: one page, its script and style inline, embedded in the binary.
const CONSOLE_HTML: &str = include_str!("console.html");
/// Connections listed by `/api/connections` unless `limit` says otherwise.
const CONNECTIONS_LISTED_DEFAULT: usize = 1_000;

/// The answer to `request` if it is the console's or the admin API's; `None` for other paths.
pub fn answer(request: &Request, context: &mut Context<'_>) -> Option<Vec<u8>> {
    if request.path != "/" && !request.path.starts_with("/api/") {
        return None;
    }
    let page = request.path == "/";
    if let Some((status, why)) = refusal(context.host, &request.access, page, context.now_ns) {
        return Some(error(status, why));
    }
    if page {
        return Some(http_answer(200, "text/html; charset=utf-8", CONSOLE_HTML));
    }
    let result = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/api/overview") => Ok(overview(context)),
        ("GET", "/api/topics") => Ok(json!({ "topics": context.host.topics_view().iter().map(topic_json).collect::<Vec<_>>() })),
        ("GET", "/api/groups") => Ok(groups_json(context.host)),
        ("GET", "/api/connections") => connections_json(request, context),
        ("GET", "/api/trace") => trace_json(request, context.host),
        ("POST", _) => crate::admin_actions::run(request, context),
        (_, _) => Err((404, format!("no admin API at {} {}", request.method, request.path))),
    };
    Some(match result {
        Ok(value) => http_answer(200, "application/json", &value.to_string()),
        Err((status, why)) => error(status, &why),
    })
}

/// An error answer: `{"error": why}`.
pub fn error(status: u16, why: &str) -> Vec<u8> {
    http_answer(status, "application/json", &json!({ "error": why }).to_string())
}

/// Why `access` may not have the console `page` or the admin API: (status, reason); `None`
/// when it may.
fn refusal(host: &Host, access: &Access, page: bool, now_ns: u64) -> Option<(u16, &'static str)> {
    let cross_site = access.origin.as_deref().is_some_and(|origin| {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        !access.host.as_deref().is_some_and(|host| host.eq_ignore_ascii_case(authority))
    });
    if cross_site {
        return Some((403, "a request from another site's page (its Origin is not this Host) is refused"));
    }
    if !host.config().requires_identity() {
        if !access.from_loopback {
            return Some((403, "the admin API and console answer loopback addresses only while no tokens are configured"));
        }
        let loopback_name = access.host.as_deref().is_none_or(is_loopback_host);
        return (!loopback_name).then_some((403, "while no tokens are configured, the admin API answers requests to localhost or a loopback IP only (Host header)"));
    }
    if page {
        return None;
    }
    match access.bearer.as_deref().and_then(|bearer| host.rights_of(bearer, now_ns)) {
        None => Some((401, "send Authorization: Bearer <token> with a configured token that has the admin right")),
        Some(rights) if !rights.admin => Some((403, "this token has no admin right")),
        Some(_) => None,
    }
}

/// Whether a `Host` header names this machine's loopback: `localhost`, `127.x.x.x`, `[::1]`,
/// with or without a port. (A DNS name pointed at 127.0.0.1 by someone else does not count.)
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn group_json(group: &GroupView) -> Value {
    let c = &group.counters;
    json!({
        "group": group.name, "members": group.members, "backlog": group.backlog, "in_flight": group.in_flight,
        "oldest_unacked_id": group.oldest_unacked_id, "oldest_unacked_age_ms": group.oldest_unacked_age_ms,
        "filter": group.filter.as_deref().and_then(|f| serde_json::from_str::<Value>(f).ok()), "coalesce_ms": group.coalesce_ms,
        "ack_timeout_ms": group.ack_timeout_ms, "max_attempts": group.max_attempts, "paused": group.paused,
        "delivered": c.delivered, "redelivered": c.redelivered, "acked": c.acked, "dead_lettered": c.dead_lettered,
        "coalesced": c.coalesced,
    })
}

fn topic_json(topic: &TopicView) -> Value {
    json!({
        "topic": topic.name, "published": topic.published, "first_id": topic.first_id, "next_id": topic.next_id,
        "stored": topic.next_id - topic.first_id, "stored_bytes": topic.stored_bytes, "cached_bytes": topic.cached_bytes, "publishes_refused": topic.publishes_refused,
        "groups": topic.groups.iter().map(group_json).collect::<Vec<_>>(),
    })
}

/// Every group of every topic, flat, its topic named in each.
fn groups_json(host: &Host) -> Value {
    let groups: Vec<Value> = host
        .topics_view()
        .iter()
        .flat_map(|topic| {
            topic.groups.iter().map(|group| {
                let mut value = group_json(group);
                value["topic"] = json!(topic.name);
                value
            })
        })
        .collect();
    json!({ "groups": groups })
}

fn connections_json(request: &Request, context: &Context<'_>) -> Result<Value, (u16, String)> {
    let limit = match request.param("limit") {
        None => CONNECTIONS_LISTED_DEFAULT,
        Some(text) => text.parse().map_err(|_| (400, format!("limit must be a count, not '{text}'")))?,
    };
    let all = context.host.connections_view();
    let listed: Vec<Value> = all
        .iter()
        .take(limit)
        .map(|conn| {
            let info = (context.connection_info)(conn.conn);
            json!({
                "id": conn.conn.0, "authenticated": conn.authenticated,
                "peer": info.as_ref().map(|i| i.peer.clone()), "connected_ms": info.as_ref().map(|i| i.connected_ms), "outbox_bytes": info.as_ref().map(|i| i.outbox_bytes),
                "subs": conn.subs.iter().map(|s| json!({"topic": s.topic, "group": s.group, "subscribed": s.subscribed, "pulling": s.pulling, "window": s.window, "in_flight": s.in_flight, "in_flight_bytes": s.in_flight_bytes})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({ "total": all.len(), "truncated": all.len() > listed.len(), "connections": listed }))
}

/// A histogram as the console reads it: bucket bounds (ms, the last `null` for +Inf), counts
/// per bucket, their count and sum.
fn latency_json(histogram: &LatencyHistogram) -> Value {
    let bounds: Vec<Value> = LATENCY_BOUNDS_NS.iter().map(|&ns| json!(ns as f64 / 1e6)).chain([Value::Null]).collect();
    json!({ "bounds_ms": bounds, "counts": histogram.counts.to_vec(), "count": histogram.count(), "sum_ms": histogram.sum_ns as f64 / 1e6 })
}

fn overview(context: &Context<'_>) -> Value {
    let host = &*context.host;
    let stats = host.stats();
    let memory = host.memory();
    let disk = host.disk_view();
    let errors: serde_json::Map<String, Value> = ErrorCode::ALL.iter().zip(stats.errors).filter(|(_, n)| *n > 0).map(|(code, n)| (code.as_str().to_string(), json!(n))).collect();
    let leaders: Vec<Value> = host
        .shards()
        .iter()
        .filter_map(|shard| shard.cluster_view().map(|view| json!({"shard": shard.shard().to_string(), "leader": view.leader, "leading": shard.is_shard_leader()})))
        .collect();
    json!({
        "now_ms": context.now_ns / 1_000_000,
        "version": env!("CARGO_PKG_VERSION"),
        "ready": crate::metrics::not_ready(host).map_or(json!(true), |why| json!(why)),
        "shards": host.shards().len(),
        "cluster": leaders,
        "counters": {
            "published": stats.published, "deduplicated": stats.deduplicated, "delivered": stats.delivered, "redelivered": stats.redelivered,
            "acked": stats.acked, "dead_lettered": stats.dead_lettered, "coalesced": stats.coalesced, "log_writes": stats.flushes, "log_written_bytes": stats.flushed_bytes,
            "segments_deleted": stats.segments_deleted,
        },
        "errors": errors,
        "latency": { "publish_to_puback": latency_json(&stats.publish_to_puback), "store_to_deliver": latency_json(&stats.store_to_deliver) },
        "connections": host.connection_count(),
        "memory": {
            "topic_cache_bytes": memory.topic_cache_bytes, "read_cache_bytes": memory.read_cache_bytes, "unwritten_log_bytes": memory.unwritten_log_bytes,
            "raft_log_memory_bytes": host.raft_memory_bytes(), "pending_publishes": memory.pending_publishes, "pending_fetches": memory.pending_fetches, "trace_bytes": memory.trace_bytes,
            "latest_index_bytes": memory.latest_index_bytes, "latest_index_keys": memory.latest_index_keys,
            "group_state_bytes": memory.group_state_bytes, "group_state_spilled_bytes": memory.group_state_spilled_bytes,
        },
        "disk": { "segments": disk.segments, "bytes": disk.bytes },
    })
}

/// `/api/trace?topic=T&id=N`: where message N of T is and was.
fn trace_json(request: &Request, host: &Host) -> Result<Value, (u16, String)> {
    let topic = request.param("topic").ok_or_else(|| (400, "parameter 'topic' is required".to_string()))?;
    let id_text = request.param("id").ok_or_else(|| (400, "parameter 'id' is required".to_string()))?;
    let id: u64 = id_text.parse().map_err(|_| (400, format!("parameter 'id' must be a message id, not '{id_text}'")))?;
    let trace = host.trace_message(topic, id).ok_or_else(|| (404, format!("no topic '{topic}'")))?;
    let storage = match trace.storage {
        Storage::Stored(loc) => json!({"state": "stored", "segment": loc.segment, "offset": loc.offset, "bytes": loc.len}),
        Storage::Deleted => json!({"state": "deleted", "why": "below the topic's first stored id: deleted by retention (or lost to damage)"}),
        Storage::NotYetStored => json!({"state": "not_yet_stored", "why": "no message of the topic has this id yet"}),
    };
    let groups: Vec<Value> = trace.groups.iter().map(|(group, position)| json!({"group": group, "now": position_json(position)})).collect();
    let events: Vec<Value> = trace
        .events
        .iter()
        .map(|line| {
            let mut event = json!({"at_ms": line.at_ms, "event": line.event});
            let fields = [
                ("group", line.group.as_ref().map(|g| json!(g))),
                ("conn", line.conn.map(|c| json!(c))),
                ("attempt", line.attempt.map(|a| json!(a))),
                ("segment", line.segment.map(|s| json!(s))),
                ("copy_id", line.copy_id.map(|c| json!(c))),
                ("coalesced_by", line.coalesced_by.map(|c| json!(c))),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    event[name] = value;
                }
            }
            event
        })
        .collect();
    Ok(json!({
        "topic": trace.topic, "id": trace.id, "storage": storage, "stored_ms": trace.stored_ms, "groups": groups, "events": events,
        "events_forgotten_until_ms": trace.events_forgotten_until_ms,
        "note": "events: the recent ones this node's ring holds (trace_bytes_max; in a cluster, deliveries are in the shard leader's); storage and groups: the state now, for messages of any age",
    }))
}

fn position_json(position: &IdPosition) -> Value {
    match position {
        IdPosition::BeforeStart => json!({"state": "before_start"}),
        IdPosition::NotReached => json!({"state": "not_reached"}),
        IdPosition::Settled => json!({"state": "settled", "why": "acked, filtered out, or dead-lettered"}),
        IdPosition::Spilled => json!({"state": "spilled", "why": "in flight or acked; its state is in the spill file until needed (group_state_bytes_max)"}),
        IdPosition::Held(state) => match *state {
            EntryState::Blocked => json!({"state": "blocked", "why": "an earlier message of its key is unacked"}),
            EntryState::Ready { attempts } => json!({"state": "ready", "attempts": attempts}),
            EntryState::Delayed { attempts, until_ns } => json!({"state": "delayed", "attempts": attempts, "until_ms": until_ns / 1_000_000}),
            EntryState::InFlight { conn, attempts, deadline_ns } => json!({"state": "in_flight", "conn": conn.0, "attempts": attempts, "ack_due_ms": deadline_ns / 1_000_000}),
            EntryState::DeadLettering { attempts } => json!({"state": "dead_lettering", "attempts": attempts}),
            EntryState::Acked => json!({"state": "settled", "why": "acked"}),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts_are_told_from_names_that_merely_resolve_there() {
        for host in ["localhost", "LOCALHOST:7700", "127.0.0.1", "127.0.0.1:7700", "127.9.9.9:1", "[::1]:7700", "[::1]"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["evil.example", "evil.example:7700", "10.0.0.1:7700", "localhost.evil.example", "[::2]:1", ""] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
