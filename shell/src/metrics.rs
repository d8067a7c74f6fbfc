//! `GET /metrics` (what the core counts, in the OpenMetrics text format Prometheus scrapes,
//! encoded by prometheus-client from a registry built at each scrape), `GET /healthz` (the
//! process answers) and `GET /readyz` (it takes work: recovered, no stop asked, in a cluster a
//! leader known for every shard). Open to whoever reaches the listener, like the WebSocket.

use crate::handshake::http_answer;
use ferry_core::latency::{LatencyHistogram, LATENCY_BOUNDS_NS};
use ferry_core::protocol::ErrorCode;
use ferry_core::Host;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// What Prometheus expects for the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The answer to `GET path`, if it is one of the metrics and health paths; `fsync_seconds`:
/// the store's fsync durations.
pub fn answer(path: &str, host: &Host, fsync_seconds: &Histogram, peer_links: &[(u64, bool)]) -> Option<Vec<u8>> {
    match path {
        "/metrics" => Some(http_answer(200, OPENMETRICS, &render(host, fsync_seconds, peer_links))),
        "/healthz" => Some(http_answer(200, "text/plain; charset=utf-8", "ok\n")),
        "/readyz" => Some(match not_ready(host) {
            None => http_answer(200, "text/plain; charset=utf-8", "ready\n"),
            Some(why) => http_answer(503, "text/plain; charset=utf-8", &format!("{why}\n")),
        }),
        _ => None,
    }
}

/// Why the process does not take work now, if it does not.
pub fn not_ready(host: &Host) -> Option<String> {
    if host.is_stopped() {
        return Some("stopped: a disk error the node cannot recover from (see the log)".into());
    }
    let leaderless: Vec<String> =
        host.shards().iter().filter(|shard| shard.cluster_view().is_some_and(|view| view.leader.is_none())).map(|shard| shard.shard().to_string()).collect();
    (!leaderless.is_empty()).then(|| format!("no leader known for shard(s) {}", leaderless.join(", ")))
}

type Labels = Vec<(String, String)>;

/// A histogram the core keeps (fixed bounds), exported as it stands.
#[derive(Debug)]
struct CoreHistogram(LatencyHistogram);

impl EncodeMetric for CoreHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = LATENCY_BOUNDS_NS.iter().map(|&ns| ns as f64 / 1e9).chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(self.0.counts).collect();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum_ns as f64 / 1e9, self.0.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Per topic and per group: what was published, delivered, acked, and each group's backlog.
fn register_topics(registry: &mut Registry, host: &Host) {
    let published: Family<Labels, Counter> = Family::default();
    let group_counters: [(&str, &str, Family<Labels, Counter>); 6] = [
        ("group_delivered", "msg frames handed to the group's members, redeliveries included", Family::default()),
        ("group_redelivered", "Deliveries to the group past a message's first attempt", Family::default()),
        ("group_acked", "Messages the group acked", Family::default()),
        ("group_nacked", "Messages the group's members gave back (nack)", Family::default()),
        ("group_dead_lettered", "Messages of the group copied to the dead-letter topic", Family::default()),
        ("group_coalesced", "Messages of the group settled unseen by a newer one of their key (coalescing)", Family::default()),
    ];
    let backlog: Family<Labels, Gauge> = Family::default();
    let members: Family<Labels, Gauge> = Family::default();
    let in_flight: Family<Labels, Gauge> = Family::default();
    let paused: Family<Labels, Gauge> = Family::default();
    let refused: Family<Labels, Gauge> = Family::default();
    let oldest_age: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
    for topic in host.topics_view() {
        published.get_or_create(&vec![("topic".to_string(), topic.name.clone())]).inc_by(topic.published);
        refused.get_or_create(&vec![("topic".to_string(), topic.name.clone())]).set(i64::from(topic.publishes_refused));
        for group in &topic.groups {
            let labels = vec![("topic".to_string(), topic.name.clone()), ("group".to_string(), group.name.clone())];
            let c = &group.counters;
            let counts = [c.delivered, c.redelivered, c.acked, c.nacked, c.dead_lettered, c.coalesced];
            for ((_, _, family), count) in group_counters.iter().zip(counts) {
                family.get_or_create(&labels).inc_by(count);
            }
            backlog.get_or_create(&labels).set(group.backlog as i64);
            members.get_or_create(&labels).set(group.members as i64);
            in_flight.get_or_create(&labels).set(group.in_flight as i64);
            paused.get_or_create(&labels).set(i64::from(group.paused));
            oldest_age.get_or_create(&labels).set(group.oldest_unacked_age_ms.map_or(0.0, |ms| ms as f64 / 1e3));
        }
    }
    registry.register("topic_published", "Messages stored in each topic", published);
    for (name, help, family) in group_counters {
        registry.register(name, help, family);
    }
    registry.register("group_backlog", "Messages of the topic each group has not acked (held unacked, or not yet reached)", backlog);
    registry.register("group_members", "Connections receiving for each group", members);
    registry.register("group_in_flight", "Messages delivered to each group and waiting for an ack", in_flight);
    registry.register("group_paused", "1 while an operator has paused the group's deliveries", paused);
    registry.register("topic_publishes_refused", "1 while an operator refuses publishes to the topic", refused);
    registry.register_with_unit(
        "group_oldest_unacked_age",
        "Age of the oldest message each group has not acked (0 when none; exact while cached, else to within the topic timeline's spacing)",
        Unit::Seconds,
        oldest_age,
    );
}

/// The metrics text: counters and gauges as the core keeps them now.
pub fn render(host: &Host, fsync_seconds: &Histogram, peer_links: &[(u64, bool)]) -> String {
    let mut registry = Registry::with_prefix("ferry");
    registry.register_with_unit("fsync", "How long each fsync of the log took", Unit::Seconds, fsync_seconds.clone());
    let stats = host.stats();
    let counters = [
        ("published", "Messages stored (each id once; a deduplicated retry is not counted)", stats.published),
        ("deduplicated", "Publishes answered with an earlier id: their (producer, seq) was seen", stats.deduplicated),
        ("delivered", "msg frames handed to members, redeliveries included", stats.delivered),
        ("redelivered", "Deliveries past a message's first attempt", stats.redelivered),
        ("acked", "Messages acked by a member", stats.acked),
        ("nacked", "Messages given back by a member (nack)", stats.nacked),
        ("dead_lettered", "Messages past their attempts, copied to their dead-letter topic", stats.dead_lettered),
        ("coalesced", "Messages settled unseen by a newer one of their key in a coalescing group", stats.coalesced),
        ("log_writes", "Writes of the log (each fsynced as the fsync policy says)", stats.flushes),
    ];
    for (name, help, value) in counters {
        registry.register(name, help, ConstCounter::new(value));
    }
    registry.register_with_unit("log_written", "Bytes written to the log", Unit::Bytes, ConstCounter::new(stats.flushed_bytes));
    registry.register("segments_deleted", "Log segments deleted by retention (or replaced by a state installed from the leader)", ConstCounter::new(stats.segments_deleted));
    let disk = host.disk_view();
    registry.register("log_segments", "Segment files of the log on disk", ConstGauge::new(disk.segments as i64));
    registry.register_with_unit("log_disk", "Bytes of the log's segment files on disk", Unit::Bytes, ConstGauge::new(disk.bytes as i64));
    registry.register_with_unit("publish_to_puback", "From a publish's arrival to its puback (durable as promised)", Unit::Seconds, CoreHistogram(stats.publish_to_puback));
    registry.register_with_unit("store_to_deliver", "From a message's storing to its first delivery to each group", Unit::Seconds, CoreHistogram(stats.store_to_deliver));
    let errors: Family<Labels, Counter> = Family::default();
    for (code, count) in ErrorCode::ALL.iter().zip(stats.errors) {
        errors.get_or_create(&vec![("code".to_string(), code.as_str().to_string())]).inc_by(count);
    }
    registry.register("errors", "error frames sent to clients, by code (refused frames and ops)", errors);
    registry.register("connections", "Open client connections", ConstGauge::new(host.connection_count() as i64));
    let memory = host.memory();
    let gauges = [
        ("topic_cache", "Bytes of recent messages cached per topic (topic_cache_bytes, cache_bytes_total)", memory.topic_cache_bytes),
        ("read_cache", "Bytes of messages read back from disk and cached (read_cache_bytes)", memory.read_cache_bytes),
        ("unwritten_log", "Bytes of the log not yet written", memory.unwritten_log_bytes),
        ("raft_log_memory", "Bytes of raft entries held in memory (raft_log_memory_bytes)", host.raft_memory_bytes()),
        ("trace_memory", "Bytes of recent message events kept for traces (trace_bytes_max)", memory.trace_bytes),
        ("latest_index", "Bytes of the newest message of every key, kept for latest (latest_index_bytes_max)", memory.latest_index_bytes),
        ("group_state", "Bytes the groups hold of their messages' state: outstanding entries, ack deadlines, sets", memory.group_state_bytes),
        ("group_state_spilled", "Bytes of the groups' in-flight state spilled to disk past group_state_bytes_max", memory.group_state_spilled_bytes),
        ("read_ahead", "Bytes read from sockets that connections have not taken yet (read_ahead_bytes_total_max)", crate::read_ahead::kept_total() as u64),
    ];
    for (name, help, value) in gauges {
        registry.register_with_unit(name, help, Unit::Bytes, ConstGauge::new(value as i64));
    }
    registry.register("pending_publishes", "Publishes waiting for the disk or for commit (pending_publishes_max)", ConstGauge::new(i64::from(memory.pending_publishes)));
    registry.register("latest_index_keys", "Keys whose newest message is kept for latest", ConstGauge::new(memory.latest_index_keys as i64));
    registry.register("pending_fetches", "Fetches waiting for disk reads (fetches_pending_max)", ConstGauge::new(memory.pending_fetches as i64));
    register_topics(&mut registry, host);
    if host.shards().iter().any(|shard| shard.cluster_view().is_some()) {
        let leader: Family<Labels, Gauge> = Family::default();
        let leading: Family<Labels, Gauge> = Family::default();
        let lag: Family<Labels, Gauge> = Family::default();
        for shard in host.shards() {
            let labels = vec![("shard".to_string(), shard.shard().to_string())];
            let view = shard.cluster_view();
            let known = view.as_ref().and_then(|view| view.leader).unwrap_or(0);
            leader.get_or_create(&labels).set(known as i64);
            leading.get_or_create(&labels).set(i64::from(shard.is_shard_leader()));
            let nodes = view.as_ref().and_then(|view| view.cluster["nodes"].as_array().cloned()).unwrap_or_default();
            for node in nodes.iter().filter(|node| !node["lag"].is_null()) {
                let labels = vec![("shard".to_string(), shard.shard().to_string()), ("node".to_string(), node["id"].to_string())];
                lag.get_or_create(&labels).set(node["lag"].as_i64().unwrap_or(0));
            }
        }
        registry.register("shard_leader", "The node this one knows to lead each shard (0: none known, an election is on)", leader);
        registry.register("shard_leading", "1 for each shard this node leads", leading);
        registry.register("replication_lag_entries", "Raft entries each node has applied fewer of than the furthest node, as last reported (every second)", lag);
        let links: Family<Labels, Gauge> = Family::default();
        for (node, up) in peer_links {
            links.get_or_create(&vec![("node".to_string(), node.to_string())]).set(i64::from(*up));
        }
        registry.register("peer_link_up", "1 while the link to each other voter is connected", links);
    }
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing into a String cannot fail");
    text
}
