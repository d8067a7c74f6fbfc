//! The load tool's parts, as a library so tests can drive it against a real server.

pub mod ferry_adapter;
pub mod peak_sync;
#[cfg(feature = "peers")]
pub mod peers;
pub mod probe;
pub mod report;
pub mod stream;

use clap::ValueEnum;

impl Args {
    /// The nodes `--url` names (one, or a cluster's several).
    pub fn urls(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
    }

    /// Where the `i`th connection of a kind goes, `offset` nodes further for publishers.
    pub fn url_for(&self, i: usize, offset: usize) -> &str {
        let urls = self.urls();
        urls[(i + offset) % urls.len().max(1)]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum System {
    Ferry,
    Mosquitto,
    Nats,
}

#[derive(clap::Parser, Clone, Debug)]
#[command(name = "ferry-bench", about = "Load tool: publish, deliver, ack; report throughput, latency and server memory")]
pub struct Args {
    #[arg(long, value_enum, default_value = "ferry")]
    pub system: System,
    /// ferry: ws://HOST:PORT/ws, or several nodes of a cluster comma-separated (subscribers
    /// and publishers are spread over them, publisher i on the node after subscriber i's, so
    /// messages cross the mesh); mosquitto: HOST:PORT; nats: nats://HOST:PORT
    #[arg(long, default_value = "ws://127.0.0.1:7700/ws")]
    pub url: String,
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Messages in all (split across publishers); every subscriber receives all of them.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Target publish rate in msgs/s over all publishers; 0 = as fast as pubacks allow.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Publishes each publisher keeps unacknowledged.
    #[arg(long, default_value_t = 1_000)]
    pub publish_window: usize,
    /// Subscription window (in-flight messages per subscriber).
    #[arg(long, default_value_t = 1_024)]
    pub window: u32,
    /// Topic (a unique one per run by default, so runs do not see each other's messages).
    #[arg(long)]
    pub topic: Option<String>,
    /// PID of the server, to report its peak RSS (VmHWM).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// Scale scenario: hold this many idle subscribers, then publish one message to all.
    #[arg(long)]
    pub idle_subscribers: Option<usize>,
    /// Scale scenario: connect and subscribe, then wait for a message another process
    /// publishes (`--idle-subscribers 0` publishes it): one process per node of a cluster.
    #[arg(long)]
    pub await_publish: bool,
    /// Scale scenario: the subscribers' groups are this prefix and a number (give each
    /// process of a run its own).
    #[arg(long, default_value = "s")]
    pub group_prefix: String,
    /// Source addresses for the scale scenario's connections, e.g. 127.0.0.1,127.0.0.2.
    #[arg(long, value_delimiter = ',')]
    pub source_addrs: Vec<String>,
    #[arg(long)]
    pub json: bool,
    /// Write every delivery's latency (us, in arrival order per subscriber) to this file.
    #[arg(long)]
    pub dump_latencies: Option<std::path::PathBuf>,
    /// nats: copies of the stream JetStream keeps (3 for a 3-node cluster's R3 stream).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Failover probe: publish one message every this many ms (`--count` in all) through the
    /// `--url` nodes, moving to the next on an error, a lost connection or a second of
    /// silence, and report the longest time without a puback (kill a node meanwhile).
    #[arg(long)]
    pub probe_ms: Option<u64>,
    /// Peak sync scenario: `--count` changes of this many orders (one key each) from
    /// `--publishers` into a coalescing group (`--coalesce-ms`) consumed at `--consume-rate`;
    /// reports the deliveries coalescing saved and how far behind the consumer fell.
    #[arg(long)]
    pub peak_sync_keys: Option<u64>,
    /// Peak sync: acks per second of its consumer (default a tenth of `--rate`, or 1,000).
    #[arg(long)]
    pub consume_rate: Option<u64>,
    /// Peak sync: the group's coalescing window (0: a group that does not coalesce, to compare).
    #[arg(long, default_value_t = 60_000)]
    pub coalesce_ms: u64,
}
