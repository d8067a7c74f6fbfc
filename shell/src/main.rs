//! `ferry`: the server (`serve`) and two protocol clients for demos and scripts.

mod accept;
mod admin;
mod admin_actions;
mod client;
mod connection;
mod disk_worker;
mod handshake;
mod http;
mod log;
mod metrics;
mod peer_outbox;
mod peers;
mod read_ahead;
mod server;
mod store;
mod tls;
mod transport;

use clap::{Parser, Subcommand};
use ferry_core::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
const DEFAULT_DATA_DIR: &str = "./ferry-data";
const DEFAULT_URL: &str = "ws://127.0.0.1:7700/ws";

#[derive(Parser)]
#[command(name = "ferry", version, about = "A reliable push message service: durable topics pushed over WebSocket")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Publish messages: each BODY argument, or each stdin line, is one message body (JSON, or
    /// else sent as a JSON string). Prints one puback per line.
    Publish(client::PublishArgs),
    /// Join a consumer group and print each message as one JSON line, acking it.
    Subscribe(client::SubscribeArgs),
    /// Where a message is and was: stored where, where it stands in each group, and its recent
    /// events (deliveries, acks, nacks, timeouts, dead letters). Asks the admin API.
    Trace(client::TraceArgs),
    /// A cluster's state as its nodes report it.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Print each node of the cluster: URL, role, applied entry, lag, when last heard of
    /// (asks the first node of --url that answers).
    Status(client::StatusArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; see README for every setting. Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (created if missing).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// always | batch | never
    #[arg(long)]
    fsync: Option<String>,
    /// error | warn | info | debug, or per-module directives: info,ferry::peers=debug
    #[arg(long)]
    log_level: Option<String>,
    /// text | json (one JSON object per line)
    #[arg(long)]
    log_format: Option<String>,
    /// Start even though the log is damaged where acknowledged data was written: serve every
    /// intact record and skip (and log) the damaged ones. Same as --set salvage=true.
    #[arg(long)]
    salvage: bool,
    /// Override any setting: --set ack_timeout_ms=5000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

struct ServeSettings {
    listen: SocketAddr,
    data_dir: PathBuf,
    log_level: String,
    log_format: String,
    config: Config,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

fn toml_value(text: &str) -> toml::Value {
    // A bare word that is not valid TOML (e.g. `always`) is meant as a string.
    match format!("v = {text}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.into()),
    }
}

fn take_string(table: &mut toml::Table, key: &str, default: &str) -> Result<String, String> {
    match table.remove(key) {
        None => Ok(default.to_string()),
        Some(toml::Value::String(s)) => Ok(s),
        Some(other) => Err(format!("setting '{key}' must be a string, got {other}")),
    }
}

fn load_settings(args: &ServeArgs) -> Result<ServeSettings, String> {
    let mut table = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
            text.parse::<toml::Table>().map_err(|e| format!("config {}: {e}", path.display()))?
        }
        None => toml::Table::new(),
    };
    for item in &args.set {
        let (key, value) = item.split_once('=').ok_or_else(|| format!("--set takes KEY=VALUE, got '{item}'"))?;
        table.insert(key.trim().to_string(), toml_value(value.trim()));
    }
    let flags = [
        ("listen", args.listen.clone()),
        ("data_dir", args.data_dir.as_ref().map(|p| p.display().to_string())),
        ("fsync", args.fsync.clone()),
        ("log_level", args.log_level.clone()),
        ("log_format", args.log_format.clone()),
    ];
    for (key, value) in flags {
        if let Some(value) = value {
            table.insert(key.to_string(), toml::Value::String(value));
        }
    }
    if args.salvage {
        table.insert("salvage".into(), toml::Value::Boolean(true));
    }
    let listen_text = take_string(&mut table, "listen", DEFAULT_LISTEN)?;
    let listen = listen_text.parse().map_err(|e| format!("listen '{listen_text}': {e} (want IP:PORT)"))?;
    let data_dir = PathBuf::from(take_string(&mut table, "data_dir", DEFAULT_DATA_DIR)?);
    let log_level = take_string(&mut table, "log_level", "info")?;
    let log_format = take_string(&mut table, "log_format", "text")?;
    let tls_files =
        tls::TlsFiles { cert: take_string(&mut table, "tls_cert", "")?, key: take_string(&mut table, "tls_key", "")?, client_ca: take_string(&mut table, "tls_client_ca", "")? };
    let mut config: Config = toml::Value::Table(table).try_into().map_err(|e| format!("config: {e}"))?;
    if !config.jwt_public_key_file.is_empty() {
        let path = &config.jwt_public_key_file;
        config.jwt_public_key_pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read jwt_public_key_file {path}: {e}"))?;
    }
    config.validate().map_err(|e| format!("config: {e}"))?;
    config.rng_seed = process_seed(config.node_id);
    let tls = tls_files.server_config()?;
    Ok(ServeSettings { listen, data_dir, log_level, log_format, config, tls })
}

/// The node's randomness (raft's tick jitter, reconnect backoff): different per process and
/// per node, so that nodes started together do not stand for election in step.
fn process_seed(node_id: u64) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    nanos ^ (std::process::id() as u64).rotate_left(32) ^ node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Publish(args) => client::publish(&args),
        Command::Subscribe(args) => client::subscribe(&args),
        Command::Trace(args) => client::trace(&args),
        Command::Cluster(ClusterCommand::Status(args)) => client::cluster_status(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ferry: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeArgs) -> Result<(), String> {
    let settings = load_settings(args)?;
    let _flushed_at_exit = log::init(&settings.log_level, &settings.log_format)?;
    let options = server::ServerOptions { listen: settings.listen, data_dir: settings.data_dir, config: settings.config, tls: settings.tls };
    server::run(options).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(set: &[&str]) -> ServeArgs {
        ServeArgs {
            config: None,
            listen: None,
            data_dir: None,
            fsync: Some("batch".into()),
            log_level: None,
            log_format: None,
            salvage: false,
            set: set.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn flags_and_set_override_defaults() {
        let s = load_settings(&args(&["ack_timeout_ms=5000", "node_name=edge-7", "listen=127.0.0.1:0"])).unwrap();
        assert_eq!(s.config.ack_timeout_ms, 5000);
        assert_eq!(s.config.node_name, "edge-7");
        assert_eq!(s.config.fsync, ferry_core::FsyncPolicy::Batch);
        assert_eq!(s.listen.port(), 0);
        assert_eq!(s.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn bad_settings_are_named() {
        let e = load_settings(&args(&["ack_timeot_ms=1"])).err().unwrap();
        assert!(e.contains("ack_timeot_ms"), "{e}");
        let e = load_settings(&args(&["window_default=0"])).err().unwrap();
        assert!(e.contains("window_default"), "{e}");
        let e = load_settings(&args(&["listen=nowhere"])).err().unwrap();
        assert!(e.contains("listen"), "{e}");
        let e = load_settings(&args(&["idle_timeout_ms=0"])).err().unwrap();
        assert!(e.contains("idle_timeout_ms"), "{e}");
        let e = load_settings(&args(&["slow_consumer_timeout_ms=0"])).err().unwrap();
        assert!(e.contains("slow_consumer_timeout_ms"), "{e}");
        // The cap must hold what one push of a window can add above the pause threshold.
        let e = load_settings(&args(&["connection_outbox_bytes_max=262144"])).err().unwrap();
        assert!(e.contains("connection_outbox_bytes_max") && e.contains("window_bytes_max"), "{e}");
        let s = load_settings(&args(&["connection_outbox_bytes_max=262144", "connection_outbox_pause_bytes=65536", "window_bytes_max=131072", "frame_bytes_max=65536"])).unwrap();
        assert_eq!(s.config.window_bytes_max, 131072);
    }
}
