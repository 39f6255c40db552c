//! Relay configuration: flags, `HEROLD_*` environment variables and an
//! optional TOML file, in that order of precedence, validated before any port
//! is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Command line of `herold-relay`. Every flag can also be set with the
/// environment variable named in its help, or in the TOML file given with
/// `--config` (same names, `-` written as `_`).
#[derive(Debug, Default, Parser)]
#[command(name = "herold-relay", version, about = "Herold message relay node")]
pub struct Args {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "HEROLD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Development mode: self-signed TLS certificate kept in the data
    /// directory, admin API without a token on loopback.
    #[arg(long, env = "HEROLD_DEV")]
    pub dev: bool,
    /// UDP address for QUIC client connections [default: 127.0.0.1:7300].
    #[arg(long, env = "HEROLD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TCP address of the gRPC admin API [default: 127.0.0.1:7301].
    #[arg(long, env = "HEROLD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Directory of the embedded store and the dev certificate [default: herold-data].
    #[arg(long, env = "HEROLD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// This relay's node id, unique in the cluster [default: relay-1].
    #[arg(long, env = "HEROLD_NODE_ID")]
    pub node_id: Option<String>,
    /// TLS certificate chain (PEM) for production.
    #[arg(long, env = "HEROLD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for production.
    #[arg(long, env = "HEROLD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// File holding the admin API bearer token (a mounted secret).
    #[arg(long, env = "HEROLD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Operators of the admin API with their roles and tokens or client
    /// certificates (TOML, a mounted secret; see docs/admin.md).
    #[arg(long, env = "HEROLD_ADMIN_OPERATORS_FILE")]
    pub admin_operators_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) of the admin API. Required when the
    /// admin API listens off loopback.
    #[arg(long, env = "HEROLD_ADMIN_TLS_CERT")]
    pub admin_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the admin API.
    #[arg(long, env = "HEROLD_ADMIN_TLS_KEY")]
    pub admin_tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates may authenticate operators (mTLS).
    #[arg(long, env = "HEROLD_ADMIN_CLIENT_CA")]
    pub admin_client_ca: Option<PathBuf>,
    /// Devices one account may enroll [default: 10].
    #[arg(long, env = "HEROLD_MAX_DEVICES_PER_ACCOUNT")]
    pub max_devices_per_account: Option<u32>,
    /// Largest client frame in bytes, once authenticated [default: 8454144].
    #[arg(long, env = "HEROLD_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<u32>,
    /// Largest ciphertext of one message in bytes [default: 262144].
    #[arg(long, env = "HEROLD_MAX_CIPHERTEXT_BYTES")]
    pub max_ciphertext_bytes: Option<u32>,
    /// Largest MLS commit plus its Welcome in bytes [default: 8388608].
    #[arg(long, env = "HEROLD_MAX_HANDSHAKE_BYTES")]
    pub max_handshake_bytes: Option<u32>,
    /// One-time MLS key packages kept per device [default: 100].
    #[arg(long, env = "HEROLD_MAX_KEY_PACKAGES")]
    pub max_key_packages: Option<u32>,
    /// Concurrent client connections [default: 100000].
    #[arg(long, env = "HEROLD_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Submits awaiting acceptance per connection [default: 64].
    #[arg(long, env = "HEROLD_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<u32>,
    /// Deliveries queued per device before it counts as a slow consumer and
    /// is disconnected to resync from storage [default: 1024].
    #[arg(long, env = "HEROLD_DEVICE_QUEUE")]
    pub device_queue: Option<u32>,
    /// Seconds a connection has to authenticate [default: 10].
    #[arg(long, env = "HEROLD_AUTH_TIMEOUT_SECS")]
    pub auth_timeout_secs: Option<u64>,
    /// Seconds of silence after which a connection is closed [default: 60].
    #[arg(long, env = "HEROLD_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Longest expiry a message may ask for, in days [default: 365].
    #[arg(long, env = "HEROLD_MAX_EXPIRY_DAYS")]
    pub max_expiry_days: Option<u32>,
    /// Receive buffer to ask the kernel for on the QUIC socket, bytes; the
    /// kernel grants at most `net.core.rmem_max` (docs/operations.md)
    /// [default: 8388608].
    #[arg(long, env = "HEROLD_UDP_RECV_BUFFER_BYTES")]
    pub udp_recv_buffer_bytes: Option<u32>,
    /// Send buffer to ask the kernel for on the QUIC socket, bytes; at most
    /// `net.core.wmem_max` [default: 8388608].
    #[arg(long, env = "HEROLD_UDP_SEND_BUFFER_BYTES")]
    pub udp_send_buffer_bytes: Option<u32>,
    /// UDP sockets on the QUIC port (`SO_REUSEPORT`), each drained by its
    /// own task, so that a burst of acks is read on every core and is not
    /// starved by thousands of busy sessions; 1..=64 [default: the number
    /// of cores the relay may use, at least 4].
    #[arg(long, env = "HEROLD_UDP_SOCKETS")]
    pub udp_sockets: Option<u32>,
    /// Devices per second this relay hands deliveries to, all conversations
    /// together: a post to a big channel is spread at this rate, so the
    /// acknowledgements coming back are read before the socket overflows;
    /// 1000..=10000000 [default: 32000 per core the relay may use].
    #[arg(long, env = "HEROLD_FAN_OUT_RATE")]
    pub fan_out_rate: Option<u32>,
    /// Seconds SIGTERM waits for sessions to drain [default: 10].
    #[arg(long, env = "HEROLD_DRAIN_GRACE_SECS")]
    pub drain_grace_secs: Option<u64>,
    /// Milliseconds over which a draining relay's devices spread their
    /// reconnects (each waits a random part of it), so the relays taking
    /// over are not stampeded; at most 10000 [default: 2000].
    #[arg(long, env = "HEROLD_DRAIN_RECONNECT_SPREAD_MS")]
    pub drain_reconnect_spread_ms: Option<u64>,
    /// Log filter, e.g. `info` or `herold_relay=debug` [default: info].
    #[arg(long, env = "HEROLD_LOG")]
    pub log: Option<String>,
    /// Log format: `text` or `json` (one object per line) [default: text].
    #[arg(long, env = "HEROLD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log client IP addresses (off by default: they are personal data and
    /// the relay keeps metadata to the minimum).
    #[arg(long, env = "HEROLD_LOG_CLIENT_ADDRESSES")]
    pub log_client_addresses: bool,
    /// TCP address of the operations listener: `/metrics`, `/healthz`,
    /// `/readyz` over plain HTTP [default: 127.0.0.1:7302].
    #[arg(long, env = "HEROLD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// OpenTelemetry collector (OTLP over gRPC) to send traces to, e.g.
    /// `http://otel-collector:4317`. Without it the relay traces nothing.
    #[arg(long, env = "HEROLD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded, 0.0 to 1.0; a trace started by another
    /// relay follows that relay's decision [default: 0.01].
    #[arg(long, env = "HEROLD_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
    /// CQL (Scylla) contact points, `host:port[,host:port...]`. When set, the
    /// relay stores everything there (migrating the schema at start) instead
    /// of the embedded store.
    #[arg(long, env = "HEROLD_CQL_CONTACT_POINTS")]
    pub cql_contact_points: Option<String>,
    /// CQL keyspace [default: herold].
    #[arg(long, env = "HEROLD_CQL_KEYSPACE")]
    pub cql_keyspace: Option<String>,
    /// CQL consistency level [default: LOCAL_QUORUM].
    #[arg(long, env = "HEROLD_CQL_CONSISTENCY")]
    pub cql_consistency: Option<String>,
    /// Replication of a keyspace the relay creates: `simple:RF` or
    /// `nts:DC=RF[,DC=RF...]` [default: simple:1; production: nts:<dc>=3].
    #[arg(long, env = "HEROLD_CQL_REPLICATION")]
    pub cql_replication: Option<String>,
    /// Apply the CQL schema migrations, print what was applied and exit
    /// (`herold-relay --cql-contact-points ... --migrate-only`).
    #[arg(long, env = "HEROLD_MIGRATE_ONLY")]
    pub migrate_only: bool,
    /// Redis that joins this relay to a cluster of relays:
    /// `redis://host:port`, `sentinel://<master>@host:port[,host:port...]`
    /// or `cluster://host:port[,host:port...]`. Needs the CQL store, which
    /// the relays share. Without it the relay routes in-process (one node).
    #[arg(long, env = "HEROLD_REDIS")]
    pub redis: Option<String>,
    /// Prefix of the relay's Redis keys, so clusters can share a Redis
    /// [default: herold].
    #[arg(long, env = "HEROLD_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Milliseconds a crashed relay's devices keep counting as connected
    /// (its lease in Redis) [default: 5000].
    #[arg(long, env = "HEROLD_REDIS_LEASE_MS")]
    pub redis_lease_ms: Option<u64>,
}

/// The optional TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    dev: Option<bool>,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    node_id: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    admin_operators_file: Option<PathBuf>,
    admin_tls_cert: Option<PathBuf>,
    admin_tls_key: Option<PathBuf>,
    admin_client_ca: Option<PathBuf>,
    max_devices_per_account: Option<u32>,
    max_frame_bytes: Option<u32>,
    max_ciphertext_bytes: Option<u32>,
    max_handshake_bytes: Option<u32>,
    max_key_packages: Option<u32>,
    max_connections: Option<u32>,
    max_in_flight: Option<u32>,
    device_queue: Option<u32>,
    auth_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_expiry_days: Option<u32>,
    drain_grace_secs: Option<u64>,
    udp_recv_buffer_bytes: Option<u32>,
    udp_send_buffer_bytes: Option<u32>,
    udp_sockets: Option<u32>,
    fan_out_rate: Option<u32>,
    drain_reconnect_spread_ms: Option<u64>,
    log: Option<String>,
    log_format: Option<String>,
    log_client_addresses: Option<bool>,
    metrics_listen: Option<SocketAddr>,
    otlp_endpoint: Option<String>,
    trace_sample_ratio: Option<f64>,
    cql_contact_points: Option<String>,
    cql_keyspace: Option<String>,
    cql_consistency: Option<String>,
    cql_replication: Option<String>,
    redis: Option<String>,
    redis_prefix: Option<String>,
    redis_lease_ms: Option<u64>,
}

/// The Redis router configuration; `None` without an address.
fn redis_config(
    address: Option<String>,
    prefix: Option<String>,
    lease_ms: Option<u64>,
) -> Result<Option<herold_router::redis::RedisConfig>, ConfigError> {
    use herold_router::redis::{RedisConfig, Topology};
    let Some(address) = address else {
        if prefix.is_some() || lease_ms.is_some() {
            return Err(ConfigError::Invalid {
                name: "redis",
                reason: "other --redis-* settings are given but no Redis address".into(),
            });
        }
        return Ok(None);
    };
    let topology = Topology::parse(&address).map_err(|reason| ConfigError::Invalid {
        name: "redis",
        reason,
    })?;
    let mut cfg = RedisConfig::new(topology);
    if let Some(p) = prefix {
        if p.is_empty()
            || p.len() > 64
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ConfigError::Invalid {
                name: "redis-prefix",
                reason: format!("{p:?} must be 1-64 ASCII letters, digits, - _ ."),
            });
        }
        cfg.prefix = p;
    }
    if let Some(ms) = lease_ms {
        if !(500..=60_000).contains(&ms) {
            return Err(ConfigError::Invalid {
                name: "redis-lease-ms",
                reason: format!("{ms} is outside 500..=60000"),
            });
        }
        cfg.lease = Duration::from_millis(ms);
    }
    Ok(Some(cfg))
}

/// A node id unique per host and port: `<hostname>-<port>`.
fn default_node_id(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(50)
        .collect();
    let host = if host.is_empty() {
        "relay".to_owned()
    } else {
        host
    };
    format!("{host}-{}", listen.port())
}

/// The CQL store configuration from the flags; `None` without contact
/// points. The relay migrates at start.
fn cql_config(
    contact_points: Option<String>,
    keyspace: Option<String>,
    consistency: Option<String>,
    replication: Option<String>,
) -> Result<Option<herold_store::cql::CqlConfig>, ConfigError> {
    use herold_store::cql::{CqlConfig, parse_consistency};
    let invalid = |name: &'static str| {
        move |e: herold_store::StoreError| ConfigError::Invalid {
            name,
            reason: e.to_string(),
        }
    };
    let Some(points) = contact_points.filter(|p| !p.trim().is_empty()) else {
        if keyspace.is_some() || consistency.is_some() || replication.is_some() {
            return Err(ConfigError::Invalid {
                name: "cql-contact-points",
                reason: "other --cql-* settings are given but no contact points".into(),
            });
        }
        return Ok(None);
    };
    let defaults = CqlConfig::default();
    let config = CqlConfig {
        contact_points: points.split(',').map(|p| p.trim().to_owned()).collect(),
        keyspace: keyspace.unwrap_or(defaults.keyspace.clone()),
        replication: match replication {
            Some(r) => r.parse().map_err(invalid("cql-replication"))?,
            None => defaults.replication.clone(),
        },
        consistency: match consistency {
            Some(c) => parse_consistency(&c).map_err(invalid("cql-consistency"))?,
            None => defaults.consistency,
        },
        migrate: true,
        ..defaults
    };
    config
        .validate()
        .map_err(invalid("cql-contact-points/cql-keyspace"))?;
    Ok(Some(config))
}

/// The longest reconnect spread a drain may ask for: the SDK waits at most
/// this long after a Draining.
pub const MAX_DRAIN_RECONNECT_SPREAD: Duration = Duration::from_secs(10);
/// Most UDP sockets the relay opens on its QUIC port.
pub const MAX_UDP_SOCKETS: u32 = 64;
/// Fewest UDP sockets the relay opens by default, whatever its cores.
const MIN_DEFAULT_UDP_SOCKETS: u32 = 4;
/// Devices per second handed a delivery, per core, by default.
const FAN_OUT_RATE_PER_CORE: u32 = 32_000;
/// Bounds of `fan-out-rate`.
const MIN_FAN_OUT_RATE: u32 = 1_000;
const MAX_FAN_OUT_RATE: u32 = 10_000_000;

/// Share of new traces sampled when none is configured: one in a hundred,
/// enough to see where time goes without tracing every election post.
pub const DEFAULT_TRACE_SAMPLE_RATIO: f64 = 0.01;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?} is neither text nor json")),
        }
    }
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// Self-signed, generated once and kept in `<data_dir>/tls/`.
    DevSelfSigned,
    /// PEM files.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
}

/// Limits protecting the relay and its other users from one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Devices one account may enroll.
    pub max_devices_per_account: u32,
    /// Largest client frame body, bytes.
    pub max_frame_bytes: u32,
    /// Largest ciphertext of one message, bytes.
    pub max_ciphertext_bytes: u32,
    /// Largest MLS commit plus Welcome, bytes (a commit adding many members
    /// to a large group is big: 2 MB for 7,000; docs/BENCHMARKS.md).
    pub max_handshake_bytes: u32,
    /// One-time MLS key packages kept per device.
    pub max_key_packages: u32,
    /// Concurrent client connections.
    pub max_connections: u32,
    /// Submits awaiting acceptance per connection.
    pub max_in_flight: u32,
    /// Deliveries queued per device before it is disconnected as slow.
    pub device_queue: u32,
    /// Time a connection has to authenticate.
    pub auth_timeout: Duration,
    /// Silence after which a connection is closed.
    pub idle_timeout: Duration,
    /// Longest expiry a message may ask for.
    pub max_expiry: Duration,
    /// Window over which a draining relay's devices spread their reconnects.
    pub drain_reconnect_spread: Duration,
    /// Receive buffer asked for on the QUIC socket.
    pub udp_recv_buffer_bytes: u32,
    /// Send buffer asked for on the QUIC socket.
    pub udp_send_buffer_bytes: u32,
    /// UDP sockets sharing the QUIC port.
    pub udp_sockets: u32,
    /// Devices per second handed a delivery.
    pub fan_out_rate: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_devices_per_account: 10,
            max_frame_bytes: 8 * 1024 * 1024 + 64 * 1024,
            max_ciphertext_bytes: 256 * 1024,
            max_handshake_bytes: 8 * 1024 * 1024,
            max_key_packages: 100,
            max_connections: 100_000,
            max_in_flight: 64,
            device_queue: 1024,
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_expiry: Duration::from_secs(365 * 24 * 3600),
            drain_reconnect_spread: Duration::from_millis(2000),
            // A fan-out to thousands of devices answers with thousands of
            // acks at once: the kernel's default (208 KiB) drops them.
            udp_recv_buffer_bytes: 8 * 1024 * 1024,
            udp_send_buffer_bytes: 8 * 1024 * 1024,
            // At least 4 even on one core: quinn reads a socket for at
            // most 50 µs before it yields to the other tasks, so during a
            // fan-out to thousands of sessions each socket gets a small
            // share of the core; more sockets, more shares.
            udp_sockets: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
                .clamp(MIN_DEFAULT_UDP_SOCKETS, MAX_UDP_SOCKETS),
            // About what one core serves (docs/BENCHMARKS.md, "Delivery
            // path"): faster, the acks of a channel post overflow the socket.
            fan_out_rate: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
                .saturating_mul(FAN_OUT_RATE_PER_CORE)
                .min(MAX_FAN_OUT_RATE),
        }
    }
}

/// TLS of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA of operators' client certificates (PEM), for mTLS.
    pub client_ca: Option<PathBuf>,
}

/// The relay's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Development mode (see [`Args::dev`]).
    pub dev: bool,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Admin API listen address.
    pub admin_listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Node id.
    pub node_id: String,
    /// TLS certificate source.
    pub tls: TlsSource,
    /// Admin bearer token, if any: an org admin named `admin`.
    pub admin_token: Option<String>,
    /// Operators of the admin API (from the operators file).
    pub admin_operators: Vec<crate::operators::OperatorEntry>,
    /// TLS of the admin API; `None` serves plain HTTP/2 (loopback only).
    pub admin_tls: Option<AdminTls>,
    /// Limits.
    pub limits: Limits,
    /// Drain grace period on shutdown.
    pub drain_grace: Duration,
    /// Log filter.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether client IP addresses may appear in logs.
    pub log_client_addresses: bool,
    /// The operations listener (`/metrics`, `/healthz`, `/readyz`).
    pub metrics_listen: SocketAddr,
    /// OTLP gRPC endpoint of the trace collector; `None`: no tracing.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled.
    pub trace_sample_ratio: f64,
    /// The CQL store, when contact points are configured; `None` runs the
    /// embedded store in `data_dir`.
    pub cql: Option<herold_store::cql::CqlConfig>,
    /// Only apply the CQL migrations, then exit.
    pub migrate_only: bool,
    /// The Redis router joining this relay to a cluster; `None` routes
    /// in-process.
    pub redis: Option<herold_router::redis::RedisConfig>,
}

impl Config {
    /// A development configuration on the given data directory, with ports
    /// chosen by the OS: what tests use.
    pub fn dev(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            dev: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            node_id: "relay-1".into(),
            tls: TlsSource::DevSelfSigned,
            admin_token: None,
            admin_operators: Vec::new(),
            admin_tls: None,
            limits: Limits::default(),
            drain_grace: Duration::from_secs(10),
            log: "info".into(),
            log_format: LogFormat::Text,
            log_client_addresses: false,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            otlp_endpoint: None,
            trace_sample_ratio: DEFAULT_TRACE_SAMPLE_RATIO,
            cql: None,
            migrate_only: false,
            redis: None,
        }
    }

    /// Merges flags/environment over the TOML file over defaults, then validates.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let dev = args.dev || file.dev.unwrap_or(false);
        let defaults = Limits::default();
        let secs = Duration::from_secs;
        let limits = Limits {
            max_devices_per_account: args
                .max_devices_per_account
                .or(file.max_devices_per_account)
                .unwrap_or(defaults.max_devices_per_account),
            max_frame_bytes: args
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(defaults.max_frame_bytes),
            max_ciphertext_bytes: args
                .max_ciphertext_bytes
                .or(file.max_ciphertext_bytes)
                .unwrap_or(defaults.max_ciphertext_bytes),
            max_handshake_bytes: args
                .max_handshake_bytes
                .or(file.max_handshake_bytes)
                .unwrap_or(defaults.max_handshake_bytes),
            max_key_packages: args
                .max_key_packages
                .or(file.max_key_packages)
                .unwrap_or(defaults.max_key_packages),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
            max_in_flight: args
                .max_in_flight
                .or(file.max_in_flight)
                .unwrap_or(defaults.max_in_flight),
            device_queue: args
                .device_queue
                .or(file.device_queue)
                .unwrap_or(defaults.device_queue),
            auth_timeout: args
                .auth_timeout_secs
                .or(file.auth_timeout_secs)
                .map_or(defaults.auth_timeout, secs),
            idle_timeout: args
                .idle_timeout_secs
                .or(file.idle_timeout_secs)
                .map_or(defaults.idle_timeout, secs),
            max_expiry: args
                .max_expiry_days
                .or(file.max_expiry_days)
                .map_or(defaults.max_expiry, |d| secs(u64::from(d) * 24 * 3600)),
            drain_reconnect_spread: args
                .drain_reconnect_spread_ms
                .or(file.drain_reconnect_spread_ms)
                .map_or(defaults.drain_reconnect_spread, Duration::from_millis),
            udp_recv_buffer_bytes: args
                .udp_recv_buffer_bytes
                .or(file.udp_recv_buffer_bytes)
                .unwrap_or(defaults.udp_recv_buffer_bytes),
            udp_send_buffer_bytes: args
                .udp_send_buffer_bytes
                .or(file.udp_send_buffer_bytes)
                .unwrap_or(defaults.udp_send_buffer_bytes),
            udp_sockets: args
                .udp_sockets
                .or(file.udp_sockets)
                .unwrap_or(defaults.udp_sockets),
            fan_out_rate: args
                .fan_out_rate
                .or(file.fan_out_rate)
                .unwrap_or(defaults.fan_out_rate),
        };
        let tls_cert = args.tls_cert.or(file.tls_cert);
        let tls_key = args.tls_key.or(file.tls_key);
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => TlsSource::Files { cert, key },
            (None, None) if dev => TlsSource::DevSelfSigned,
            // Migrating binds nothing: no certificate needed.
            (None, None) if args.migrate_only => TlsSource::DevSelfSigned,
            (None, None) => return Err(ConfigError::NoCertificate),
            (Some(_), None) => return Err(ConfigError::HalfTls("tls-cert", "tls-key")),
            (None, Some(_)) => return Err(ConfigError::HalfTls("tls-key", "tls-cert")),
        };
        let admin_token = match args.admin_token_file.or(file.admin_token_file) {
            Some(path) => Some(read_token(&path)?),
            None => None,
        };
        let admin_operators = match args.admin_operators_file.or(file.admin_operators_file) {
            Some(path) => crate::operators::read_operators(&path)?,
            None => Vec::new(),
        };
        let admin_tls = match (
            args.admin_tls_cert.or(file.admin_tls_cert),
            args.admin_tls_key.or(file.admin_tls_key),
            args.admin_client_ca.or(file.admin_client_ca),
        ) {
            (Some(cert), Some(key), client_ca) => Some(AdminTls {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            (Some(_), None, _) => {
                return Err(ConfigError::HalfTls("admin-tls-cert", "admin-tls-key"));
            }
            (None, Some(_), _) => {
                return Err(ConfigError::HalfTls("admin-tls-key", "admin-tls-cert"));
            }
            (None, None, Some(_)) => {
                return Err(ConfigError::HalfTls("admin-client-ca", "admin-tls-cert"));
            }
        };
        let mut config = Config {
            dev,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7300))),
            admin_listen: args
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7301))),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("herold-data")),
            node_id: String::new(),
            tls,
            admin_token,
            admin_operators,
            admin_tls,
            limits,
            drain_grace: args
                .drain_grace_secs
                .or(file.drain_grace_secs)
                .map_or(Duration::from_secs(10), secs),
            log: args.log.or(file.log).unwrap_or_else(|| "info".into()),
            log_format: match args.log_format.or(file.log_format) {
                Some(f) => f.parse().map_err(|reason| ConfigError::Invalid {
                    name: "log-format",
                    reason,
                })?,
                None => LogFormat::Text,
            },
            log_client_addresses: args.log_client_addresses
                || file.log_client_addresses.unwrap_or(false),
            metrics_listen: args
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7302))),
            otlp_endpoint: args
                .otlp_endpoint
                .or(file.otlp_endpoint)
                .filter(|e| !e.trim().is_empty()),
            trace_sample_ratio: args
                .trace_sample_ratio
                .or(file.trace_sample_ratio)
                .unwrap_or(DEFAULT_TRACE_SAMPLE_RATIO),
            cql: cql_config(
                args.cql_contact_points.or(file.cql_contact_points),
                args.cql_keyspace.or(file.cql_keyspace),
                args.cql_consistency.or(file.cql_consistency),
                args.cql_replication.or(file.cql_replication),
            )?,
            migrate_only: args.migrate_only,
            redis: redis_config(
                args.redis.or(file.redis),
                args.redis_prefix.or(file.redis_prefix),
                args.redis_lease_ms.or(file.redis_lease_ms),
            )?,
        };
        // One node alone may keep the short default; in a cluster every
        // node needs its own id.
        config.node_id = match args.node_id.or(file.node_id) {
            Some(id) => id,
            None if config.redis.is_some() => default_node_id(config.listen),
            None => "relay-1".into(),
        };
        if config.redis.is_some() && config.cql.is_none() {
            return Err(ConfigError::Invalid {
                name: "redis",
                reason: "the relays of a cluster share one store: --redis needs \
                         --cql-contact-points (the embedded store belongs to one process)"
                    .into(),
            });
        }
        if config.migrate_only && config.cql.is_none() {
            return Err(ConfigError::Invalid {
                name: "migrate-only",
                reason: "needs --cql-contact-points (the embedded store has no migrations)".into(),
            });
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the first bad one is reported with its name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("udp-recv-buffer-bytes", self.limits.udp_recv_buffer_bytes),
            ("udp-send-buffer-bytes", self.limits.udp_send_buffer_bytes),
        ] {
            if !(64 * 1024..=1024 * 1024 * 1024).contains(&v) {
                return Err(ConfigError::Invalid {
                    name,
                    reason: format!("{v} is outside 65536..=1073741824"),
                });
            }
        }
        if !(1..=MAX_UDP_SOCKETS).contains(&self.limits.udp_sockets) {
            return Err(ConfigError::Invalid {
                name: "udp-sockets",
                reason: format!(
                    "{} is outside 1..={MAX_UDP_SOCKETS}",
                    self.limits.udp_sockets
                ),
            });
        }
        if !(MIN_FAN_OUT_RATE..=MAX_FAN_OUT_RATE).contains(&self.limits.fan_out_rate) {
            return Err(ConfigError::Invalid {
                name: "fan-out-rate",
                reason: format!(
                    "{} is outside {MIN_FAN_OUT_RATE}..={MAX_FAN_OUT_RATE}",
                    self.limits.fan_out_rate
                ),
            });
        }
        if self.limits.drain_reconnect_spread > MAX_DRAIN_RECONNECT_SPREAD {
            return Err(ConfigError::Invalid {
                name: "drain-reconnect-spread-ms",
                reason: format!(
                    "{} is above {} (clients wait at most that long)",
                    self.limits.drain_reconnect_spread.as_millis(),
                    MAX_DRAIN_RECONNECT_SPREAD.as_millis()
                ),
            });
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(ConfigError::Invalid {
                name: "trace-sample-ratio",
                reason: format!("{} is outside 0.0..=1.0", self.trace_sample_ratio),
            });
        }
        if let Some(e) = &self.otlp_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                name: "otlp-endpoint",
                reason: format!("{e:?} must be an http:// or https:// URL"),
            });
        }
        if self.metrics_listen == self.admin_listen && self.metrics_listen.port() != 0 {
            return Err(ConfigError::Invalid {
                name: "metrics-listen",
                reason: "must differ from admin-listen".into(),
            });
        }
        let l = &self.limits;
        let positive = [
            (
                "max-devices-per-account",
                u64::from(l.max_devices_per_account),
            ),
            ("max-frame-bytes", u64::from(l.max_frame_bytes)),
            ("max-ciphertext-bytes", u64::from(l.max_ciphertext_bytes)),
            ("max-handshake-bytes", u64::from(l.max_handshake_bytes)),
            ("max-key-packages", u64::from(l.max_key_packages)),
            ("max-connections", u64::from(l.max_connections)),
            ("max-in-flight", u64::from(l.max_in_flight)),
            ("device-queue", u64::from(l.device_queue)),
            ("auth-timeout-secs", l.auth_timeout.as_secs()),
            ("idle-timeout-secs", l.idle_timeout.as_secs()),
            ("max-expiry-days", l.max_expiry.as_secs()),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        if l.max_devices_per_account > 100 {
            return Err(ConfigError::Invalid {
                name: "max-devices-per-account",
                reason: format!(
                    "{} is above the hard ceiling of 100",
                    l.max_devices_per_account
                ),
            });
        }
        if l.max_frame_bytes > 16 * 1024 * 1024 {
            return Err(ConfigError::Invalid {
                name: "max-frame-bytes",
                reason: format!("{} is above the hard ceiling of 16 MiB", l.max_frame_bytes),
            });
        }
        if u64::from(l.max_ciphertext_bytes) + 1024 > u64::from(l.max_frame_bytes) {
            return Err(ConfigError::Invalid {
                name: "max-ciphertext-bytes",
                reason: format!(
                    "{} leaves no room for the envelope in max-frame-bytes {} (need 1024 bytes more)",
                    l.max_ciphertext_bytes, l.max_frame_bytes
                ),
            });
        }
        if u64::from(l.max_handshake_bytes) + 64 * 1024 > u64::from(l.max_frame_bytes) {
            return Err(ConfigError::Invalid {
                name: "max-handshake-bytes",
                reason: format!(
                    "{} leaves no room for the envelope in max-frame-bytes {} (need 65536 bytes more)",
                    l.max_handshake_bytes, l.max_frame_bytes
                ),
            });
        }
        if l.max_key_packages > 10_000 {
            return Err(ConfigError::Invalid {
                name: "max-key-packages",
                reason: format!("{} is above the hard ceiling of 10000", l.max_key_packages),
            });
        }
        if herold_proto::ids::validate_id("node", &self.node_id).is_err() {
            return Err(ConfigError::Invalid {
                name: "node-id",
                reason: format!(
                    "{:?} is not a valid id (1-64 ASCII letters, digits, . _ - : @)",
                    self.node_id
                ),
            });
        }
        if self.listen.port() != 0 && self.listen.port() == self.admin_listen.port() {
            return Err(ConfigError::Invalid {
                name: "admin-listen",
                reason: "must use a different port than listen".into(),
            });
        }
        let authenticated = self.admin_token.is_some() || !self.admin_operators.is_empty();
        if !self.admin_listen.ip().is_loopback() {
            if !authenticated {
                return Err(ConfigError::Invalid {
                    name: "admin-listen",
                    reason: format!(
                        "{} is not a loopback address and neither admin-token-file nor \
                         admin-operators-file is set: refusing to serve the admin API \
                         without authentication",
                        self.admin_listen
                    ),
                });
            }
            if self.admin_tls.is_none() {
                return Err(ConfigError::Invalid {
                    name: "admin-listen",
                    reason: format!(
                        "{} is not a loopback address and admin-tls-cert is not set: \
                         refusing to send operator tokens in the clear",
                        self.admin_listen
                    ),
                });
            }
        }
        if self.admin_operators.iter().any(|o| o.cert_sha256.is_some())
            && self
                .admin_tls
                .as_ref()
                .is_none_or(|t| t.client_ca.is_none())
        {
            return Err(ConfigError::Invalid {
                name: "admin-client-ca",
                reason: "operators with cert_sha256 need admin-tls-cert, admin-tls-key and \
                         admin-client-ca (mTLS)"
                    .into(),
            });
        }
        if self.log.trim().is_empty() {
            return Err(ConfigError::Invalid {
                name: "log",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn read_token(path: &Path) -> Result<String, ConfigError> {
    let token = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let token = token.trim().to_owned();
    if token.len() < 16 {
        return Err(ConfigError::Invalid {
            name: "admin-token-file",
            reason: format!(
                "the token in {} is shorter than 16 characters",
                path.display()
            ),
        });
    }
    Ok(token)
}

/// Why the configuration was refused. The relay exits with code 64 on any.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read or parsed.
    #[error("config file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Neither a certificate nor dev mode.
    #[error(
        "no TLS certificate: set --tls-cert and --tls-key (HEROLD_TLS_CERT, HEROLD_TLS_KEY), \
         or --dev for a self-signed development certificate"
    )]
    NoCertificate,
    /// One of the two TLS settings without the other.
    #[error("--{0} is set but --{1} is not; set both")]
    HalfTls(&'static str, &'static str),
    /// A value out of range.
    #[error("invalid {name}: {reason}")]
    Invalid {
        /// The setting's flag name.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["herold-relay"];
        v.extend_from_slice(args);
        Config::from_args(Args::try_parse_from(v).unwrap())
    }

    #[test]
    fn dev_defaults_are_valid() {
        let c = parse(&["--dev"]).unwrap();
        assert_eq!(c.listen.port(), 7300);
        assert_eq!(c.admin_listen.port(), 7301);
        assert_eq!(c.limits.max_devices_per_account, 10);
        assert_eq!(c.tls, TlsSource::DevSelfSigned);
    }

    #[test]
    fn production_needs_a_certificate() {
        assert!(matches!(parse(&[]), Err(ConfigError::NoCertificate)));
        assert!(matches!(
            parse(&["--tls-cert", "c.pem"]),
            Err(ConfigError::HalfTls("tls-cert", "tls-key"))
        ));
    }

    #[test]
    fn cql_settings_are_validated() {
        let c = parse(&["--dev"]).unwrap();
        assert!(c.cql.is_none());
        let c = parse(&[
            "--dev",
            "--cql-contact-points",
            "10.0.0.1:9042, 10.0.0.2:9042",
            "--cql-replication",
            "nts:muc1=3",
        ])
        .unwrap();
        let cql = c.cql.unwrap();
        assert_eq!(cql.contact_points, ["10.0.0.1:9042", "10.0.0.2:9042"]);
        assert_eq!(cql.keyspace, "herold");
        assert_eq!(
            cql.consistency,
            herold_store::cql::parse_consistency("LOCAL_QUORUM").unwrap()
        );
        assert_eq!(cql.replication.to_string(), "nts:muc1=3");
        assert!(cql.migrate);
        for (args, name) in [
            (&["--cql-consistency", "MOST"][..], "cql-consistency"),
            (&["--cql-replication", "simple:0"][..], "cql-replication"),
            (&["--cql-keyspace", "a-b"][..], "cql-keyspace"),
        ] {
            let mut v = vec!["--dev", "--cql-contact-points", "127.0.0.1:9042"];
            v.extend_from_slice(args);
            let e = parse(&v).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
        let e = parse(&["--dev", "--cql-keyspace", "x"]).unwrap_err();
        assert!(e.to_string().contains("cql-contact-points"), "{e}");
        let e = parse(&["--dev", "--migrate-only"]).unwrap_err();
        assert!(e.to_string().contains("migrate-only"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse(&["--dev", "--max-in-flight", "0"]).unwrap_err();
        assert!(e.to_string().contains("max-in-flight"), "{e}");
        let e = parse(&[
            "--dev",
            "--max-ciphertext-bytes",
            "300000",
            "--max-frame-bytes",
            "300000",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("max-ciphertext-bytes"), "{e}");
        let e = parse(&["--dev", "--node-id", "a b"]).unwrap_err();
        assert!(e.to_string().contains("node-id"), "{e}");
        let e = parse(&["--dev", "--admin-listen", "0.0.0.0:7301"]).unwrap_err();
        assert!(e.to_string().contains("refusing"), "{e}");
        // A token alone is not enough off loopback: it would travel in the clear.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "0123456789abcdef0123").unwrap();
        let token = f.path().to_str().unwrap();
        let e = parse(&[
            "--dev",
            "--admin-listen",
            "0.0.0.0:7301",
            "--admin-token-file",
            token,
        ])
        .unwrap_err();
        assert!(e.to_string().contains("admin-tls-cert"), "{e}");
        let c = parse(&[
            "--dev",
            "--admin-listen",
            "0.0.0.0:7301",
            "--admin-token-file",
            token,
            "--admin-tls-cert",
            "c.pem",
            "--admin-tls-key",
            "k.pem",
        ])
        .unwrap();
        assert!(c.admin_tls.is_some());
    }

    #[test]
    fn telemetry_settings_have_defaults_and_are_validated() {
        let c = parse(&["--dev"]).unwrap();
        assert_eq!(c.metrics_listen, SocketAddr::from(([127, 0, 0, 1], 7302)));
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(
            !c.log_client_addresses,
            "client addresses stay out of logs by default"
        );
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!(c.trace_sample_ratio, DEFAULT_TRACE_SAMPLE_RATIO);
        let c = parse(&[
            "--dev",
            "--log-format",
            "JSON",
            "--otlp-endpoint",
            "http://collector:4317",
            "--trace-sample-ratio",
            "1",
            "--metrics-listen",
            "0.0.0.0:9100",
            "--log-client-addresses",
        ])
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(c.trace_sample_ratio, 1.0);
        assert_eq!(c.metrics_listen.port(), 9100);
        assert!(c.log_client_addresses);
        for (args, name) in [
            (&["--log-format", "xml"][..], "log-format"),
            (&["--trace-sample-ratio", "1.5"][..], "trace-sample-ratio"),
            (&["--trace-sample-ratio=-0.1"][..], "trace-sample-ratio"),
            (&["--otlp-endpoint", "collector:4317"][..], "otlp-endpoint"),
            (
                &["--drain-reconnect-spread-ms", "10001"][..],
                "drain-reconnect-spread-ms",
            ),
            (
                &["--udp-recv-buffer-bytes", "1000"][..],
                "udp-recv-buffer-bytes",
            ),
            (&["--udp-sockets", "0"][..], "udp-sockets"),
            (&["--udp-sockets", "65"][..], "udp-sockets"),
            (&["--fan-out-rate", "999"][..], "fan-out-rate"),
            (
                &["--metrics-listen", "127.0.0.1:7301"][..],
                "metrics-listen",
            ),
        ] {
            let mut v = vec!["--dev"];
            v.extend_from_slice(args);
            let e = parse(&v).unwrap_err();
            assert!(e.to_string().contains(name), "{args:?}: {e}");
        }
    }

    #[test]
    fn file_is_overridden_by_flags() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "dev = true\nnode_id = \"from-file\"\nmax_in_flight = 7").unwrap();
        let path = f.path().to_str().unwrap();
        let c = parse(&["--config", path, "--node-id", "from-flag"]).unwrap();
        assert_eq!(c.node_id, "from-flag");
        assert_eq!(c.limits.max_in_flight, 7);
        assert!(c.dev);
    }

    #[test]
    fn operators_file_is_checked() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[[operator]]\nname = \"ops\"\nrole = \"org-admin\"\ntoken = \"0123456789abcdef\"\n\
             [[operator]]\nname = \"lead\"\nrole = \"group-admin\"\ngroups = [\"g1\"]\ntoken = \"fedcba9876543210\""
        )
        .unwrap();
        let c = parse(&[
            "--dev",
            "--admin-operators-file",
            f.path().to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(c.admin_operators.len(), 2);
        assert_eq!(c.admin_operators[1].groups, ["g1"]);
        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            bad,
            "[[operator]]\nname = \"lead\"\nrole = \"group-admin\"\ntoken = \"fedcba9876543210\""
        )
        .unwrap();
        let e = parse(&[
            "--dev",
            "--admin-operators-file",
            bad.path().to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("no groups"), "{e}");
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "dev = true\nmax_in_fligth = 7").unwrap();
        let e = parse(&["--config", f.path().to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("max_in_fligth"), "{e}");
    }
}
