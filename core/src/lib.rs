//! ferry's sans-IO core: everything that decides, nothing that waits. No sockets, files,
//! clocks, threads or ambient randomness: the shell and the simulator drive the same code.

pub mod ack_deadlines;
pub mod admission;
pub mod batch;
pub mod bucket;
pub mod cache;
pub mod chunked;
pub mod client;
pub mod cluster;
pub mod config;
pub mod group;
pub mod host;
pub mod ids;
pub mod jwt;
pub mod latency;
pub mod latest;
pub mod node;
pub mod outstanding;
pub mod pipeline;
pub mod protocol;
pub mod record;
pub mod recovery;
pub mod rights;
pub mod testkit;
pub mod timeline;
pub mod timer_wheel;
pub mod topic;
pub mod trace_book;

pub use config::{Config, FsyncPolicy, TestBug};
pub use host::Host;
pub use ids::ConnId;
pub use node::{DiskError, DiskOp, Input, Node, Output, RecoveryReport, Rejection, Stats, Trace};
