//! Every limit and policy of a node, with the defaults a fresh install runs on.

use crate::cluster::NodeId;
use crate::protocol::JSON_DEPTH_MAX_LIMIT;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Room in a peer frame for raft's message header and an entry's record fields.
const PEER_FRAME_OVERHEAD_BYTES: usize = 64 << 10;

/// A voter of the cluster and where its peers reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub id: NodeId,
    pub addr: String,
}

/// When a publish counts as durable and gets its `puback`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// puback after the batch holding it is fsynced; batches form while an fsync runs (group commit).
    Always,
    /// fsync at most every `batch_interval_ms` or once `batch_bytes` are pending; puback after that fsync.
    Batch,
    /// puback after write(2): survives a process crash, not a power loss.
    Never,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupOverrides {
    pub ack_timeout_ms: Option<u64>,
    pub max_attempts: Option<u32>,
}

/// Deliberately wrong behaviours that prove the simulator's checkers can fail: each is a
/// realistic slip in one place of the core. Settable only from code (never from a config file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestBug {
    /// Answer `puback` as soon as the message is appended, before its write is durable.
    PubackBeforeDurable,
    /// Treat an expired ack deadline as an ack instead of redelivering.
    ExpiryCountsAsAck,
    /// Move a message to the dead-letter topic one delivery after `max_attempts`.
    DeadLetterOneAttemptLate,
    /// Count a message as dead-lettered without storing its copy in `<topic>.dlq`.
    DeadLetterNotStored,
    /// Leave the second message of a `fetched` reply out.
    FetchSkipsMessage,
    /// Answer a repeated (`producer`, `seq`) with `puback` while the original still waits
    /// for the disk.
    DuplicateAnsweredEarly,
    /// Send `prev` one too high now and then.
    PrevOffByOne,
    /// Deliver messages to a filtered group without applying its filter.
    FilterIgnored,
    /// Recovery forgets the last message of each topic in the newest segment.
    RecoveryDropsLastRecord,
    /// Forget (`producer`, `seq`) pairs, so a retried publish is stored again.
    IdempotenceForgotten,
    /// Let the next message of a key go when an earlier one's ack deadline passes.
    KeyReleasedOnExpiry,
    /// Hand a subscription one message more than its window.
    WindowOneTooMany,
    /// Answer an unknown op with `bad_frame` instead of `unknown_op`.
    UnknownOpAsBadFrame,
    /// Accept a `hello` whatever its token.
    WrongTokenAccepted,
    /// Delete a segment by age a quarter of `retention_age_ms` after its last write.
    RetentionTooEarly,
    /// Cluster mode: tell raft its entries are durable as soon as they join the open batch.
    RaftPersistedEarly,
    /// Cluster mode: the leader answers `puback` once its own write of the entry is durable,
    /// before a majority has it (with the id it expects the entry to get).
    PubackOnLeaderFsync,
    /// Cluster mode: the leader gives a publish its id when it proposes it (the next id it
    /// expects), not when the entry is applied.
    IdsAssignedAtPropose,
    /// Cluster mode: a follower applies the entries it writes at once, before they are
    /// committed, and builds the deliveries it is sent by reference from them.
    FollowerDeliversUncommitted,
    /// Count a redelivery as a first delivery in the node's stats (what `/metrics` exports).
    RedeliveryUncounted,
    /// Check read rights at `sub` only, not at `pull` or `fetch`.
    ReadRightsCheckedAtSubOnly,
    /// Keep serving a connection past its token's `exp`.
    TokenExpiryIgnored,
    /// Answer an op over its rate with `overloaded` but without the op's `req`.
    RefusalWithoutReq,
    /// Client library: hand a redelivery of a message the application holds unacked over again.
    ClientRedeliveryHandedAgain,
    /// Client library: take every id at or below the highest handed over as a duplicate (a
    /// redelivery of an earlier id, after a later one came, is acked unseen).
    ClientDedupesByLastId,
    /// Client library: repair `prev` gaps even when `repair_gaps` is off, handing over messages
    /// the server holds back for their key.
    ClientRepairAlwaysOn,
    /// Coalescing: settle every older waiting message of the key, however long before the
    /// newer one it was stored.
    CoalesceIgnoresWindow,
    /// Coalescing: settle the newer message in place of the older ones waiting (keep the
    /// first change instead of the last).
    CoalesceKeepsOldest,
    /// Coalescing: the older waiting messages go back to wait behind the newer one instead of
    /// being settled.
    CoalescedDeliveredAfterNewer,
    /// Retention deletes a segment without copying the newest messages of keys in it: after
    /// a restart `latest` no longer knows those keys.
    LatestNotCopiedOnRetention,
    /// A spilled chunk brought back takes what it had in flight as acked.
    SpillLoadCountsAsAck,
    /// Cluster mode: segments' snapshots leave out the newest message of each key, so a
    /// restart after retention deleted its entry forgets it.
    LatestLeftOutOfSnapshots,
}

impl TestBug {
    pub const ALL: [TestBug; 32] = [
        TestBug::PubackBeforeDurable,
        TestBug::ExpiryCountsAsAck,
        TestBug::DeadLetterOneAttemptLate,
        TestBug::DeadLetterNotStored,
        TestBug::FetchSkipsMessage,
        TestBug::DuplicateAnsweredEarly,
        TestBug::PrevOffByOne,
        TestBug::FilterIgnored,
        TestBug::RecoveryDropsLastRecord,
        TestBug::IdempotenceForgotten,
        TestBug::KeyReleasedOnExpiry,
        TestBug::WindowOneTooMany,
        TestBug::UnknownOpAsBadFrame,
        TestBug::WrongTokenAccepted,
        TestBug::RetentionTooEarly,
        TestBug::RaftPersistedEarly,
        TestBug::PubackOnLeaderFsync,
        TestBug::IdsAssignedAtPropose,
        TestBug::FollowerDeliversUncommitted,
        TestBug::RedeliveryUncounted,
        TestBug::ReadRightsCheckedAtSubOnly,
        TestBug::TokenExpiryIgnored,
        TestBug::RefusalWithoutReq,
        TestBug::ClientRedeliveryHandedAgain,
        TestBug::ClientDedupesByLastId,
        TestBug::ClientRepairAlwaysOn,
        TestBug::CoalesceIgnoresWindow,
        TestBug::CoalesceKeepsOldest,
        TestBug::CoalescedDeliveredAfterNewer,
        TestBug::LatestNotCopiedOnRetention,
        TestBug::SpillLoadCountsAsAck,
        TestBug::LatestLeftOutOfSnapshots,
    ];

    pub fn name(self) -> String {
        format!("{self:?}")
    }

    pub fn parse(name: &str) -> Option<TestBug> {
        TestBug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    #[serde(skip)]
    pub test_bug: Option<TestBug>,
    /// Name sent in `welcome`.
    pub node_name: String,
    /// Identity in a cluster; unique per node, one of `peers`.
    pub node_id: u64,
    /// Every voter of the cluster, this node included: `1@127.0.0.1:7811,2@127.0.0.1:7812`.
    /// Empty: a single node, as without a cluster. Read through `Config::voters`.
    pub peers: String,
    /// Where this node listens for its peers (`IP:PORT`); needed with `peers`.
    pub peer_listen: String,
    /// The URL clients reach this node at, told to its peers for `welcome` (`nodes`) and
    /// `ferry cluster status`; the shell fills in `ws://<listen>/ws` when it is empty.
    pub advertise_url: String,
    /// Peer links authenticate each other with this shared secret (a challenge each way: an
    /// HMAC-SHA256 of the other side's random nonce), so a stranger cannot join the mesh or
    /// inject frames. Empty: links are not authenticated (keep the peer port private).
    pub cluster_secret: String,
    /// raft's clock: a follower stands for election after 10 ticks without a leader's word
    /// (each tick jittered by half), a leader sends heartbeats every 2.
    pub raft_tick_ms: u64,
    /// Bytes queued to one peer at most: past half, that peer's clients get no messages until
    /// the queue drains under an eighth (back-pressure); past all of it the link is reset,
    /// never the loop stalled.
    pub peer_outbox_bytes_max: u64,
    /// Bytes of applied raft entries kept in memory; older ones are read back from the log
    /// when a follower needs them. Entries not yet applied always stay.
    pub raft_log_memory_bytes: u64,
    /// Cluster mode: the topics are spread over this many shards, each an independent raft
    /// group whose leader takes its writes (leaders spread over the nodes). Fixed for a data
    /// directory and the same on every node.
    pub shards: u32,
    /// The shard a node state machine serves: set by the host for each, never configured.
    #[serde(skip)]
    pub shard_index: u32,
    /// Bytes of deliveries by reference a node keeps waiting for their entry to be applied
    /// (or their message read back); past it, it asks the leader for them in full.
    pub delivery_waits_bytes_max: u64,
    /// Seeds what the node draws at random (raft's tick jitter): the caller's randomness.
    #[serde(skip)]
    pub rng_seed: u64,
    pub fsync: FsyncPolicy,
    pub batch_interval_ms: u64,
    pub batch_bytes: u64,
    /// Longest wait before acked group positions are written when no publish carries them.
    pub ack_persist_interval_ms: u64,
    /// Largest accepted text frame; larger ones get `too_large` and the connection closes (1009).
    pub frame_bytes_max: usize,
    /// Deepest nesting of `[` and `{` accepted in a frame, counted over the whole frame (its
    /// own object is level 1, so a body may nest one level less); deeper frames get `bad_frame`.
    pub json_depth_max: u32,
    pub window_default: u32,
    pub window_max: u32,
    /// Bytes (bodies and keys) of the messages in flight to one subscription or pull: it
    /// receives while below this, so it holds at most this plus one message.
    pub window_bytes_max: u64,
    pub ack_timeout_ms: u64,
    pub max_attempts: u32,
    pub nack_delay_ms_max: u64,
    /// Longest coalescing window a `sub` may ask for (`coalesce_ms`).
    pub coalesce_ms_max: u64,
    /// Bytes (keys, bodies and bookkeeping) of the newest message of every key of every topic,
    /// kept for `latest`; past it new keys are left out and `latest` answers `overloaded` for
    /// their topics.
    pub latest_index_bytes_max: u64,
    /// Per-group settings by group name.
    pub groups: BTreeMap<String, GroupOverrides>,
    /// Unacked messages a group holds above its position before it stops taking new ones.
    pub group_outstanding_max: u32,
    /// Heap bytes of all groups' in-flight state (`ferry_group_state_bytes`) past which the
    /// oldest chunks of it are spilled to a scratch file until needed (0: never). A single
    /// node's; a cluster node does not spill.
    pub group_state_bytes_max: u64,
    /// Entries of a group's in-flight state per chunk (a power of two, 8 to 65,536): what is
    /// spilled and brought back at once.
    pub group_state_chunk_entries: u32,
    /// Groups of one topic a new message is offered to in one turn of the node; the rest go
    /// on in the next turns, so a fan-out to very many groups does not hold up other work.
    pub fan_out_groups_per_turn: u32,
    pub groups_per_topic_max: u32,
    pub topics_max: u32,
    pub segment_bytes_max: u64,
    pub retention_bytes: u64,
    pub retention_age_ms: u64,
    /// Recently published messages kept in memory per topic for delivery without a disk read.
    pub topic_cache_bytes: u64,
    /// All topics' caches together (node-wide); the oldest cached messages go first.
    pub cache_bytes_total: u64,
    /// Messages read back from disk kept in memory (node-wide count).
    pub read_cache_messages: u32,
    /// Bytes of messages read back from disk kept in memory (node-wide).
    pub read_cache_bytes: u64,
    /// Bytes of recent message events kept for `ferry trace` (node-wide per shard; 0: none).
    pub trace_bytes_max: u64,
    pub fetch_messages_max: u32,
    pub pull_max: u32,
    pub pull_wait_ms_max: u64,
    pub producers_max: u32,
    /// Sequence numbers remembered per producer for idempotence.
    pub producer_seqs_max: u32,
    /// Publishes waiting for durability node-wide; past it publishes get `overloaded`.
    pub pending_publishes_max: u32,
    /// Bytes waiting for the disk node-wide (the log not yet written); past it publishes get
    /// `overloaded`.
    pub pending_publish_bytes_max: u64,
    /// `fetch`es waiting for disk reads on one connection; more get `overloaded`.
    pub fetches_per_connection_max: u32,
    /// `fetch`es waiting for disk reads node-wide; more get `overloaded`.
    pub fetches_pending_max: u32,
    /// Open connections; more are refused by the shell.
    pub connections_max: u32,
    /// A connection that has not completed its WebSocket handshake by then is dropped.
    pub handshake_timeout_ms: u64,
    /// An open connection the client has sent nothing on for this long gets a WebSocket ping.
    pub idle_ping_ms: u64,
    /// A pinged connection that sends nothing (a pong counts) for this long after the ping is
    /// closed (1008) and what it had in flight goes to the other members of its groups.
    pub idle_timeout_ms: u64,
    /// Bytes queued to one connection past which the server pushes it no more messages and
    /// reads no more of its frames, until the queue drains below half of this.
    pub connection_outbox_pause_bytes: usize,
    /// A connection with a paused outbox that takes none of its bytes for this long is closed.
    pub slow_consumer_timeout_ms: u64,
    /// Bytes queued to one connection at which it is closed at once (a last resort).
    pub connection_outbox_bytes_max: usize,
    /// Bytes queued to all connections together past which every connection with more than a
    /// little queued is paused, until the total drains below half of this.
    pub outbox_bytes_total_max: u64,
    /// Bytes read from sockets beyond what connections' WebSockets have taken yet, all
    /// connections together (one read takes up to 64 KiB; a paused connection keeps what it
    /// had); past it, reads take only what is asked for.
    pub read_ahead_bytes_total_max: u64,
    /// Tokens with every right. With these or `users` set, every op before a `hello` with a
    /// known token gets `unauthorized`.
    pub tokens: Vec<String>,
    /// Identities with rights on topic patterns (`[[users]]`, see `rights`).
    pub users: Vec<crate::rights::UserConfig>,
    /// JWT identities: tokens signed with this HS256 secret carry their rights as claims.
    pub jwt_hs256_secret: String,
    /// JWT identities signed with the private key of this PEM public key (RS256 or EdDSA).
    pub jwt_public_key_file: String,
    /// The PEM text of `jwt_public_key_file`, read by the shell at start.
    #[serde(skip)]
    pub jwt_public_key_pem: String,
    /// With identities configured: a connection that has not authenticated (a `hello` with a
    /// known token, or a bearer token at its handshake) this long after it opened is closed.
    pub hello_timeout_ms: u64,
    /// Publishes per second one connection may make, on average and at once (0: no limit);
    /// past it a `pub` gets `overloaded` with `retry_after_ms`.
    pub publish_rate_per_connection: u64,
    pub publish_burst_per_connection: u64,
    /// Other ops (all but `pub`, `ping`, `hello`) per second per connection, and at once.
    pub op_rate_per_connection: u64,
    pub op_burst_per_connection: u64,
    /// Publishes per second to one topic, from all its publishers, and at once.
    pub publish_rate_per_topic: u64,
    pub publish_burst_per_topic: u64,
    /// Circuit breaking: while the oldest publish still waiting for its write (in a cluster,
    /// its commit) has waited longer than this, new publishes get `overloaded` at once
    /// instead of queueing behind it (0: never).
    pub shed_publishes_after_ms: u64,
    /// Connections one source address may hold open (0: no limit), and open per second on
    /// average and at once (rate 0: no limit); past either its handshake gets 429.
    pub connections_per_ip_max: u32,
    pub connection_rate_per_ip: u64,
    pub connection_burst_per_ip: u64,
    /// Browser handshakes (those with an `Origin` header) are admitted only from these
    /// origins (`https://app.example.com`); empty: from any. Clients that send no `Origin`
    /// (apps, servers) are always admitted.
    pub allowed_origins: Vec<String>,
    /// How long a full disk is left alone before a publish tries it again.
    pub disk_full_retry_ms: u64,
    /// Start even though the log is damaged where acknowledged data was written: serve every
    /// intact record, skip (and log) the damaged ones. Off: such damage stops the start.
    pub salvage: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            test_bug: None,
            node_name: "ferry-1".into(),
            node_id: 1,
            peers: String::new(),
            cluster_secret: String::new(),
            peer_listen: String::new(),
            advertise_url: String::new(),
            raft_tick_ms: 50,
            peer_outbox_bytes_max: 64 << 20,
            raft_log_memory_bytes: 64 << 20,
            delivery_waits_bytes_max: 4 << 20,
            shards: 1,
            shard_index: 0,
            rng_seed: 0,
            fsync: FsyncPolicy::Always,
            batch_interval_ms: 2,
            batch_bytes: 1 << 20,
            ack_persist_interval_ms: 10,
            frame_bytes_max: 1 << 20,
            json_depth_max: 64,
            window_default: 64,
            window_max: 65_536,
            window_bytes_max: 8 << 20,
            ack_timeout_ms: 30_000,
            max_attempts: 16,
            nack_delay_ms_max: 24 * 3600 * 1000,
            coalesce_ms_max: 24 * 3600 * 1000,
            latest_index_bytes_max: 64 << 20,
            groups: BTreeMap::new(),
            group_outstanding_max: 100_000,
            group_state_bytes_max: 1 << 30,
            group_state_chunk_entries: crate::outstanding::CHUNK_ENTRIES as u32,
            fan_out_groups_per_turn: 1_024,
            groups_per_topic_max: 1_000,
            topics_max: 10_000,
            segment_bytes_max: 64 << 20,
            retention_bytes: 10 << 30,
            retention_age_ms: 7 * 24 * 3600 * 1000,
            topic_cache_bytes: 16 << 20,
            cache_bytes_total: 64 << 20,
            read_cache_messages: 8_192,
            read_cache_bytes: 16 << 20,
            trace_bytes_max: 4 << 20,
            fetch_messages_max: 1_000,
            pull_max: 10_000,
            pull_wait_ms_max: 300_000,
            producers_max: 100_000,
            producer_seqs_max: 1_024,
            pending_publishes_max: 200_000,
            pending_publish_bytes_max: 64 << 20,
            fetches_per_connection_max: 4,
            fetches_pending_max: 64,
            connections_max: 100_000,
            handshake_timeout_ms: 10_000,
            idle_ping_ms: 30_000,
            idle_timeout_ms: 10_000,
            connection_outbox_pause_bytes: 1 << 20,
            slow_consumer_timeout_ms: 30_000,
            connection_outbox_bytes_max: 16 << 20,
            outbox_bytes_total_max: 256 << 20,
            read_ahead_bytes_total_max: 64 << 20,
            tokens: Vec::new(),
            users: Vec::new(),
            hello_timeout_ms: 10_000,
            jwt_hs256_secret: String::new(),
            jwt_public_key_file: String::new(),
            jwt_public_key_pem: String::new(),
            shed_publishes_after_ms: 5_000,
            connections_per_ip_max: 0,
            connection_rate_per_ip: 0,
            connection_burst_per_ip: 100,
            publish_rate_per_connection: 0,
            publish_burst_per_connection: 1_000,
            op_rate_per_connection: 0,
            op_burst_per_connection: 1_000,
            publish_rate_per_topic: 0,
            publish_burst_per_topic: 10_000,
            allowed_origins: Vec::new(),
            disk_full_retry_ms: 1_000,
            salvage: false,
        }
    }
}

impl Config {
    pub fn publish_limit_per_connection(&self) -> crate::bucket::Limit {
        crate::bucket::Limit { rate_per_s: self.publish_rate_per_connection, burst: self.publish_burst_per_connection }
    }

    pub fn op_limit_per_connection(&self) -> crate::bucket::Limit {
        crate::bucket::Limit { rate_per_s: self.op_rate_per_connection, burst: self.op_burst_per_connection }
    }

    pub fn publish_limit_per_topic(&self) -> crate::bucket::Limit {
        crate::bucket::Limit { rate_per_s: self.publish_rate_per_topic, burst: self.publish_burst_per_topic }
    }

    /// True when identities are configured (`tokens`, `users`, a JWT key): clients must say
    /// `hello` with a known (or validly signed) token, and each has the rights of its token.
    pub fn requires_identity(&self) -> bool {
        !self.tokens.is_empty() || !self.users.is_empty() || !self.jwt_hs256_secret.is_empty() || !self.jwt_public_key_file.is_empty()
    }

    /// Checks relations between settings; the message names the setting at fault.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen_tokens: std::collections::BTreeSet<&str> = self.tokens.iter().map(String::as_str).collect();
        if seen_tokens.len() != self.tokens.len() || seen_tokens.contains("") {
            return Err("tokens must be distinct and not empty".into());
        }
        for (at, user) in self.users.iter().enumerate() {
            if user.token.is_empty() || !seen_tokens.insert(&user.token) {
                return Err(format!("users[{at}]: every token must be set and differ from every other token"));
            }
            crate::rights::Rights::of_user(user).map_err(|why| format!("users[{at}]: {why}"))?;
        }
        if !self.cluster_secret.is_empty() && self.cluster_secret.len() < 16 {
            return Err("cluster_secret must be at least 16 bytes".into());
        }
        if !self.jwt_public_key_file.is_empty() && self.jwt_public_key_pem.is_empty() {
            return Err("jwt_public_key_file: the file was not read (or is empty)".into());
        }
        crate::jwt::JwtVerifier::from_config(self)?;
        let positive = [
            ("batch_interval_ms", self.batch_interval_ms),
            ("frame_bytes_max", self.frame_bytes_max as u64),
            ("window_default", self.window_default as u64),
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("coalesce_ms_max", self.coalesce_ms_max),
            ("max_attempts", self.max_attempts as u64),
            ("group_outstanding_max", self.group_outstanding_max as u64),
            ("fan_out_groups_per_turn", self.fan_out_groups_per_turn as u64),
            ("segment_bytes_max", self.segment_bytes_max),
            ("fetch_messages_max", self.fetch_messages_max as u64),
            ("producer_seqs_max", self.producer_seqs_max as u64),
            ("pending_publishes_max", self.pending_publishes_max as u64),
            ("fetches_per_connection_max", self.fetches_per_connection_max as u64),
            ("fetches_pending_max", self.fetches_pending_max as u64),
            ("idle_ping_ms", self.idle_ping_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("window_bytes_max", self.window_bytes_max),
            ("connection_outbox_pause_bytes", self.connection_outbox_pause_bytes as u64),
            ("slow_consumer_timeout_ms", self.slow_consumer_timeout_ms),
            ("outbox_bytes_total_max", self.outbox_bytes_total_max),
            ("raft_tick_ms", self.raft_tick_ms),
            ("peer_outbox_bytes_max", self.peer_outbox_bytes_max),
            ("hello_timeout_ms", self.hello_timeout_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        // At least 2 so that a `filter` or an object body fits; at most the limit that keeps
        // every frame ferry sends back parseable by common JSON parsers (see the constant).
        if !(2..=JSON_DEPTH_MAX_LIMIT).contains(&self.json_depth_max) {
            return Err(format!("json_depth_max must be 2 to {JSON_DEPTH_MAX_LIMIT}"));
        }
        if !(8..=65_536).contains(&self.group_state_chunk_entries) || !self.group_state_chunk_entries.is_power_of_two() {
            return Err("group_state_chunk_entries must be a power of two from 8 to 65536".into());
        }
        if self.window_default > self.window_max {
            return Err(format!("window_default ({}) exceeds window_max ({})", self.window_default, self.window_max));
        }
        if (self.segment_bytes_max as u128) < 2 * self.frame_bytes_max as u128 {
            return Err("segment_bytes_max must be at least twice frame_bytes_max".into());
        }
        if self.segment_bytes_max > u32::MAX as u64 {
            return Err("segment_bytes_max must fit in 32 bits".into());
        }
        // A connection's queue grows past the pause threshold by at most what one push of a
        // subscription's window adds (its byte window plus one message): that must fit below the cap.
        let burst = self.connection_outbox_pause_bytes as u128 + self.window_bytes_max as u128 + self.frame_bytes_max as u128;
        if (self.connection_outbox_bytes_max as u128) < burst {
            return Err(format!(
                "connection_outbox_bytes_max ({}) must be at least connection_outbox_pause_bytes + window_bytes_max + frame_bytes_max ({burst})",
                self.connection_outbox_bytes_max
            ));
        }
        if self.pending_publish_bytes_max < self.frame_bytes_max as u64 {
            return Err("pending_publish_bytes_max must be at least frame_bytes_max (one publish must fit)".into());
        }
        if self.retention_bytes < self.segment_bytes_max {
            return Err("retention_bytes must be at least segment_bytes_max".into());
        }
        let voters = self.voters()?;
        if !(1..=crate::ids::SHARDS_MAX).contains(&self.shards) {
            return Err(format!("shards must be 1 to {}", crate::ids::SHARDS_MAX));
        }
        if self.shards > 1 && voters.is_empty() {
            return Err("shards spread topics over the raft groups of a cluster: set peers too (a single node has one shard)".into());
        }
        if !voters.is_empty() {
            if !voters.iter().any(|v| v.id.0 == self.node_id) {
                return Err(format!("node_id {} is not among the peers ({})", self.node_id, self.peers));
            }
            if !self.advertise_url.is_empty() && !self.advertise_url.starts_with("ws://") && !self.advertise_url.starts_with("wss://") {
                return Err(format!("advertise_url '{}' must start with ws:// or wss://", self.advertise_url));
            }
            if self.peer_listen.is_empty() {
                return Err("peer_listen is needed with peers (the address this node's peers connect to)".into());
            }
            if self.salvage {
                return Err("salvage is for a single node's log; a damaged cluster node is rebuilt from its peers".into());
            }
        }
        Ok(())
    }

    /// The largest frame a peer may send: a raft message carries entries up to raft's size
    /// per message and always at least one, which holds at most one client frame.
    pub fn peer_frame_bytes_max(&self) -> usize {
        crate::cluster::RAFT_MESSAGE_BYTES + self.frame_bytes_max + PEER_FRAME_OVERHEAD_BYTES
    }

    /// The voters `peers` names, in the order given; empty for a single node.
    pub fn voters(&self) -> Result<Vec<Voter>, String> {
        let mut voters: Vec<Voter> = Vec::new();
        for item in self.peers.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let bad = |why: &str| format!("peers: '{item}' {why} (want ID@IP:PORT, e.g. 1@127.0.0.1:7811)");
            let (id, addr) = item.split_once('@').ok_or_else(|| bad("has no '@'"))?;
            let id: u64 = id.trim().parse().map_err(|_| bad("does not start with a node id"))?;
            if id == 0 {
                return Err(bad("has node id 0 (ids start at 1)"));
            }
            if id > crate::ids::NODE_ID_MAX {
                return Err(bad(&format!("has a node id over {}", crate::ids::NODE_ID_MAX)));
            }
            if addr.trim().is_empty() {
                return Err(bad("has no address"));
            }
            if voters.iter().any(|v| v.id.0 == id) {
                return Err(bad("repeats a node id"));
            }
            voters.push(Voter { id: NodeId(id), addr: addr.trim().to_string() });
        }
        Ok(voters)
    }

    pub fn ack_timeout_ms_for(&self, group: &str) -> u64 {
        self.groups.get(group).and_then(|g| g.ack_timeout_ms).unwrap_or(self.ack_timeout_ms)
    }

    pub fn max_attempts_for(&self, group: &str) -> u32 {
        if group == crate::node::admin::REDRIVE_GROUP {
            // A redrive's copy is retried until it is stored: a dead letter has no dead
            // letter of its own.
            return u32::MAX;
        }
        self.groups.get(group).and_then(|g| g.max_attempts).unwrap_or(self.max_attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_peers(peers: &str, node_id: u64) -> Config {
        Config { peers: peers.into(), peer_listen: "127.0.0.1:7811".into(), node_id, ..Config::default() }
    }

    #[test]
    fn peers_name_every_voter_with_its_address() {
        let config = with_peers("1@127.0.0.1:7811, 2@127.0.0.1:7812,3@host:7813", 2);
        assert_eq!(config.validate(), Ok(()));
        let voters = config.voters().unwrap();
        assert_eq!(voters.iter().map(|v| v.id.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(voters[2].addr, "host:7813");
        assert_eq!(Config::default().voters(), Ok(Vec::new()), "no peers: a single node");
    }

    #[test]
    fn bad_peers_are_refused_with_the_item_at_fault() {
        for (peers, node_id, says) in [
            ("1@a:1,2", 1, "'2' has no '@'"),
            ("x@a:1", 1, "'x@a:1' does not start with a node id"),
            ("0@a:1", 1, "node id 0"),
            ("1@", 1, "'1@' has no address"),
            ("1@a:1,1@a:2", 1, "'1@a:2' repeats a node id"),
            ("1@a:1,2@a:2", 3, "node_id 3 is not among the peers"),
        ] {
            let error = with_peers(peers, node_id).validate().unwrap_err();
            assert!(error.contains(says), "{peers}: {error}");
        }
        let no_listen = Config { peer_listen: String::new(), ..with_peers("1@a:1", 1) };
        assert!(no_listen.validate().unwrap_err().contains("peer_listen"));
        let salvage = Config { salvage: true, ..with_peers("1@a:1", 1) };
        assert!(salvage.validate().unwrap_err().contains("salvage"));
    }
}
