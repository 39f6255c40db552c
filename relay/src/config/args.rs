//! The command line and the TOML file: the same settings, read before
//! they are checked.

use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// TCP address of the fallback for devices whose network blocks UDP:
    /// a WebSocket over TLS carrying the same frames [default: the QUIC
    /// address, on TCP].
    #[arg(long, env = "HEROLD_TCP_LISTEN")]
    pub tcp_listen: Option<SocketAddr>,
    /// Serve QUIC only: no TCP fallback.
    #[arg(long, env = "HEROLD_NO_TCP_FALLBACK")]
    pub no_tcp_fallback: bool,
    /// Directory of the web messenger's built files, served on the TCP
    /// port (docs/web.md) [default: none].
    #[arg(long, env = "HEROLD_WEB_ROOT")]
    pub web_root: Option<PathBuf>,
    /// Names browsers reach the relay by, comma-separated, as a URL writes
    /// them (`host[:port]`, no port for 443); a browser's device signs the
    /// name [default: with --dev, localhost, 127.0.0.1 and [::1] at the
    /// TCP port; otherwise none].
    #[arg(long, env = "HEROLD_WEB_NAMES")]
    pub web_names: Option<String>,
    /// Origins of other pages that may connect, comma-separated (the web
    /// messenger served elsewhere: `https://messenger.city.example`); the
    /// relay's own names are always allowed [default: none].
    #[arg(long, env = "HEROLD_WEB_ORIGINS")]
    pub web_origins: Option<String>,
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
    /// Submits a second one device may send, sustained, with a burst of 4 s
    /// of it; beyond, RATE_LIMITED with the time to wait (the SDK waits and
    /// resends by itself); 1..=100000 [default: 50].
    #[arg(long, env = "HEROLD_SUBMIT_RATE")]
    pub submit_rate: Option<u32>,
    /// Submits a second into one conversation through this relay, all its
    /// devices together, with a burst of 4 s of it; 1..=1000000
    /// [default: 500].
    #[arg(long, env = "HEROLD_CONVERSATION_SUBMIT_RATE")]
    pub conversation_submit_rate: Option<u32>,
    /// Connections awaiting authentication (TLS handshake, Hello, key
    /// proof), all addresses together; beyond, new ones are refused before
    /// TLS; 1..=10000000 [default: 10000].
    #[arg(long, env = "HEROLD_MAX_UNAUTHENTICATED")]
    pub max_unauthenticated: Option<u32>,
    /// Connections awaiting authentication from one address (IPv6: one
    /// /64); 1..=10000000 [default: 256].
    #[arg(long, env = "HEROLD_MAX_UNAUTHENTICATED_PER_ADDRESS")]
    pub max_unauthenticated_per_address: Option<u32>,
    /// Handshakes a second one address (IPv6: /64) may start, with a burst
    /// of 4 s of it; beyond, refused before TLS; 1..=1000000 [default: 200].
    #[arg(long, env = "HEROLD_HANDSHAKE_RATE_PER_ADDRESS")]
    pub handshake_rate_per_address: Option<u32>,
    /// Connections awaiting authentication above which a new connection
    /// must first prove its address with a QUIC Retry (one more round
    /// trip); 0: always [default: 1000].
    #[arg(long, env = "HEROLD_RETRY_ABOVE")]
    pub retry_above: Option<u32>,
    /// Authentications a second of one account's devices, with a burst of
    /// 4 s of it; beyond, RATE_LIMITED with the time to wait;
    /// 1..=100000 [default: 5].
    #[arg(long, env = "HEROLD_AUTH_RATE_PER_ACCOUNT")]
    pub auth_rate_per_account: Option<u32>,
    /// Failed enrollments (Enroll with a wrong or used code) a second from
    /// one address, with a burst of 4 s of it; beyond, Enroll answers
    /// RESOURCE_EXHAUSTED without looking at the code; 1..=100000
    /// [default: 2].
    #[arg(long, env = "HEROLD_ENROLL_FAILURE_RATE")]
    pub enroll_failure_rate: Option<u32>,
    /// Restarts of one conversation's MLS group an hour through this relay
    /// (a member that cannot process a commit asks for one), after a burst
    /// of 2; beyond, RATE_LIMITED with the time to wait; 1..=3600
    /// [default: 6].
    #[arg(long, env = "HEROLD_MLS_RESTARTS_PER_HOUR")]
    pub mls_restarts_per_hour: Option<u32>,
    /// Seconds between two runs of the purge that deletes expired messages
    /// from the store: an expired message is unreadable at once and gone
    /// from the store at most this long after its expiry; 1..=3600
    /// [default: 30].
    #[arg(long, env = "HEROLD_PURGE_INTERVAL_SECS")]
    pub purge_interval_secs: Option<u32>,
    /// Submits waiting for the store on this relay; beyond, new submits are
    /// refused UNAVAILABLE with a retry-after (the SDK resends), so a slow
    /// store costs time, not memory; 1..=1000000 [default: 1024].
    #[arg(long, env = "HEROLD_MAX_PENDING_APPENDS")]
    pub max_pending_appends: Option<u32>,
    /// Seconds a write to a device may block (it reads nothing) before the
    /// device is disconnected as a slow consumer; also how long an
    /// attachment stream may make no progress [default: 30].
    #[arg(long, env = "HEROLD_WRITE_TIMEOUT_SECS")]
    pub write_timeout_secs: Option<u64>,
    /// Largest attachment (its ciphertext), bytes: the ceiling of every
    /// policy's max_attachment_bytes [default: 104857600, 100 MiB].
    #[arg(long, env = "HEROLD_MAX_ATTACHMENT_BYTES")]
    pub max_attachment_bytes: Option<u64>,
    /// Push gateways (comma-separated URL prefixes) the relay may wake
    /// devices through; with none, any https:// endpoint on a public address
    /// [default: none].
    #[arg(long, env = "HEROLD_PUSH_GATEWAYS")]
    pub push_gateways: Option<String>,
    /// Seconds within which a device that stays away is woken once, however
    /// many messages arrive [default: 60].
    #[arg(long, env = "HEROLD_PUSH_COALESCE_SECS")]
    pub push_coalesce_secs: Option<u64>,
    /// Attachment uploads and downloads served at once, all devices
    /// together; more wait (in QUIC flow control) for their turn
    /// [default: 256].
    #[arg(long, env = "HEROLD_MAX_ATTACHMENT_STREAMS")]
    pub max_attachment_streams: Option<u32>,
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
    /// `nts:DC=RF[,DC=RF...]`. Required outside --dev [--dev default:
    /// simple:1; production: nts:<dc>=3].
    #[arg(long, env = "HEROLD_CQL_REPLICATION")]
    pub cql_replication: Option<String>,
    /// Run outside --dev with fewer than 3 copies of every row or with
    /// consistency ONE / LOCAL_ONE, where losing one node can lose
    /// acknowledged messages. Without it the relay refuses to start so; with
    /// it, it says so in a warning at every start.
    #[arg(long, env = "HEROLD_CQL_ACCEPT_WEAK_DURABILITY")]
    pub cql_accept_weak_durability: bool,
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
pub(super) struct FileConfig {
    pub(super) dev: Option<bool>,
    pub(super) listen: Option<SocketAddr>,
    pub(super) tcp_listen: Option<SocketAddr>,
    pub(super) tcp_fallback: Option<bool>,
    pub(super) web_root: Option<PathBuf>,
    pub(super) web_names: Option<String>,
    pub(super) web_origins: Option<String>,
    pub(super) admin_listen: Option<SocketAddr>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) node_id: Option<String>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) admin_token_file: Option<PathBuf>,
    pub(super) admin_operators_file: Option<PathBuf>,
    pub(super) admin_tls_cert: Option<PathBuf>,
    pub(super) admin_tls_key: Option<PathBuf>,
    pub(super) admin_client_ca: Option<PathBuf>,
    pub(super) max_devices_per_account: Option<u32>,
    pub(super) max_frame_bytes: Option<u32>,
    pub(super) max_ciphertext_bytes: Option<u32>,
    pub(super) max_handshake_bytes: Option<u32>,
    pub(super) max_key_packages: Option<u32>,
    pub(super) max_connections: Option<u32>,
    pub(super) max_in_flight: Option<u32>,
    pub(super) device_queue: Option<u32>,
    pub(super) auth_timeout_secs: Option<u64>,
    pub(super) idle_timeout_secs: Option<u64>,
    pub(super) max_expiry_days: Option<u32>,
    pub(super) drain_grace_secs: Option<u64>,
    pub(super) udp_recv_buffer_bytes: Option<u32>,
    pub(super) udp_send_buffer_bytes: Option<u32>,
    pub(super) udp_sockets: Option<u32>,
    pub(super) fan_out_rate: Option<u32>,
    pub(super) submit_rate: Option<u32>,
    pub(super) conversation_submit_rate: Option<u32>,
    pub(super) max_unauthenticated: Option<u32>,
    pub(super) max_unauthenticated_per_address: Option<u32>,
    pub(super) handshake_rate_per_address: Option<u32>,
    pub(super) retry_above: Option<u32>,
    pub(super) auth_rate_per_account: Option<u32>,
    pub(super) enroll_failure_rate: Option<u32>,
    pub(super) mls_restarts_per_hour: Option<u32>,
    pub(super) purge_interval_secs: Option<u32>,
    pub(super) write_timeout_secs: Option<u64>,
    pub(super) max_attachment_bytes: Option<u64>,
    pub(super) max_attachment_streams: Option<u32>,
    pub(super) push_gateways: Option<String>,
    pub(super) push_coalesce_secs: Option<u64>,
    pub(super) max_pending_appends: Option<u32>,
    pub(super) drain_reconnect_spread_ms: Option<u64>,
    pub(super) log: Option<String>,
    pub(super) log_format: Option<String>,
    pub(super) log_client_addresses: Option<bool>,
    pub(super) metrics_listen: Option<SocketAddr>,
    pub(super) otlp_endpoint: Option<String>,
    pub(super) trace_sample_ratio: Option<f64>,
    pub(super) cql_contact_points: Option<String>,
    pub(super) cql_keyspace: Option<String>,
    pub(super) cql_consistency: Option<String>,
    pub(super) cql_replication: Option<String>,
    pub(super) cql_accept_weak_durability: Option<bool>,
    pub(super) redis: Option<String>,
    pub(super) redis_prefix: Option<String>,
    pub(super) redis_lease_ms: Option<u64>,
}
