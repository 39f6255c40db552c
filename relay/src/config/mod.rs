//! Relay configuration: flags, `HEROLD_*` environment variables and an
//! optional TOML file, in that order of precedence, validated before any port
//! is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod args;
mod backends;
mod limits;
#[cfg(test)]
mod tests;

pub use args::Args;
use args::FileConfig;
use backends::{CqlFlags, cql_config, default_node_id, redis_config};
pub use limits::{Limits, MAX_UDP_SOCKETS, MLS_RESTART_BURST};
use limits::{MAX_FAN_OUT_RATE, MIN_FAN_OUT_RATE};

use crate::operators::OperatorsFileError;

/// The longest reconnect spread a drain may ask for: the SDK waits at most
/// this long after a Draining.
pub const MAX_DRAIN_RECONNECT_SPREAD: Duration = Duration::from_secs(10);

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
    /// The TCP fallback (WebSocket over TLS): `None` when turned off;
    /// `Some(None)`: on the QUIC address's port, once bound.
    pub tcp_listen: Option<Option<SocketAddr>>,
    /// The web messenger's files, served on the TCP port.
    pub web_root: Option<PathBuf>,
    /// Names browsers reach the relay by (`host[:port]`); empty: the
    /// defaults (`--dev` only).
    pub web_names: Vec<String>,
    /// Origins of other pages that may connect.
    pub web_origins: Vec<String>,
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
    /// Weak CQL durability choices accepted with
    /// `--cql-accept-weak-durability`, warned about at every start.
    pub cql_weak_durability: Vec<String>,
    /// Only apply the CQL migrations, then exit.
    pub migrate_only: bool,
    /// The Redis router joining this relay to a cluster; `None` routes
    /// in-process.
    pub redis: Option<herold_router::redis::RedisConfig>,
    /// Push gateways the operator trusts (URL prefixes ending in `/`):
    /// when any is named, devices may register push endpoints under them
    /// only, and these may be internal addresses (docs/push.md).
    pub push_gateways: Vec<String>,
}

impl Config {
    /// A development configuration on the given data directory, with ports
    /// chosen by the OS: what tests use.
    pub fn dev(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            dev: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tcp_listen: Some(None),
            web_root: None,
            web_names: Vec::new(),
            web_origins: Vec::new(),
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
            cql_weak_durability: Vec::new(),
            migrate_only: false,
            redis: None,
            push_gateways: Vec::new(),
        }
    }

    /// Merges flags/environment over the TOML file over defaults, then validates.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let dev = args.dev || file.dev.unwrap_or(false);
        let limits = Limits::from_flags(&args, &file);
        let (cql, cql_weak_durability) = cql_config(
            CqlFlags {
                contact_points: args.cql_contact_points.or(file.cql_contact_points),
                keyspace: args.cql_keyspace.or(file.cql_keyspace),
                consistency: args.cql_consistency.or(file.cql_consistency),
                replication: args.cql_replication.or(file.cql_replication),
                accept_weak: args.cql_accept_weak_durability
                    || file.cql_accept_weak_durability.unwrap_or(false),
            },
            dev,
        )?;
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
            Some(path) => crate::operators::read_operators(&path).map_err(|e| match e {
                OperatorsFileError::File { path, reason } => ConfigError::File { path, reason },
                OperatorsFileError::Invalid(reason) => ConfigError::Invalid {
                    name: "admin-operators-file",
                    reason,
                },
            })?,
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
            tcp_listen: if args.no_tcp_fallback || file.tcp_fallback == Some(false) {
                None
            } else {
                Some(args.tcp_listen.or(file.tcp_listen))
            },
            web_root: args.web_root.or(file.web_root),
            web_names: list(args.web_names.or(file.web_names))
                .into_iter()
                .map(|n| web_name(&n))
                .collect::<Result<_, _>>()?,
            web_origins: list(args.web_origins.or(file.web_origins))
                .into_iter()
                .map(|o| web_origin(&o))
                .collect::<Result<_, _>>()?,
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
                .map_or(Duration::from_secs(10), Duration::from_secs),
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
            cql,
            cql_weak_durability,
            migrate_only: args.migrate_only,
            redis: redis_config(
                args.redis.or(file.redis),
                args.redis_prefix.or(file.redis_prefix),
                args.redis_lease_ms.or(file.redis_lease_ms),
            )?,
            push_gateways: crate::push::gateway_prefixes(
                &args
                    .push_gateways
                    .or(file.push_gateways)
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            )
            .map_err(|reason| ConfigError::Invalid {
                name: "push-gateways",
                reason,
            })?,
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
        if self.web_root.is_some() && self.tcp_listen.is_none() {
            return Err(ConfigError::Invalid {
                name: "web-root",
                reason: "the web messenger is served on the TCP port, which \
                         --no-tcp-fallback turns off"
                    .into(),
            });
        }
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
        for (name, v, max) in [
            ("submit-rate", self.limits.submit_rate, 100_000),
            (
                "conversation-submit-rate",
                self.limits.conversation_submit_rate,
                1_000_000,
            ),
            (
                "max-unauthenticated",
                self.limits.max_unauthenticated,
                10_000_000,
            ),
            (
                "max-unauthenticated-per-address",
                self.limits.max_unauthenticated_per_address,
                10_000_000,
            ),
            (
                "handshake-rate-per-address",
                self.limits.handshake_rate_per_address,
                1_000_000,
            ),
            (
                "auth-rate-per-account",
                self.limits.auth_rate_per_account,
                100_000,
            ),
            (
                "enroll-failure-rate",
                self.limits.enroll_failure_rate,
                100_000,
            ),
            (
                "mls-restarts-per-hour",
                self.limits.mls_restarts_per_hour,
                3_600,
            ),
            (
                "purge-interval-secs",
                self.limits.purge_interval_secs,
                3_600,
            ),
            (
                "max-pending-appends",
                self.limits.max_pending_appends,
                1_000_000,
            ),
            (
                "max-attachment-streams",
                self.limits.max_attachment_streams,
                100_000,
            ),
        ] {
            if !(1..=max).contains(&v) {
                return Err(ConfigError::Invalid {
                    name,
                    reason: format!("{v} is outside 1..={max}"),
                });
            }
        }
        if self.limits.write_timeout > Duration::from_secs(86_400) {
            return Err(ConfigError::Invalid {
                name: "write-timeout-secs",
                reason: format!("{} is above 86400", self.limits.write_timeout.as_secs()),
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
            ("max-attachment-bytes", l.max_attachment_bytes),
            ("max-handshake-bytes", u64::from(l.max_handshake_bytes)),
            ("max-key-packages", u64::from(l.max_key_packages)),
            ("max-connections", u64::from(l.max_connections)),
            ("max-in-flight", u64::from(l.max_in_flight)),
            ("device-queue", u64::from(l.device_queue)),
            ("auth-timeout-secs", l.auth_timeout.as_secs()),
            ("idle-timeout-secs", l.idle_timeout.as_secs()),
            ("write-timeout-secs", l.write_timeout.as_secs()),
            ("max-expiry-days", l.max_expiry.as_secs()),
            ("push-coalesce-secs", l.push_coalesce.as_secs()),
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
        if !authenticated && !self.dev && !self.migrate_only {
            return Err(ConfigError::Invalid {
                name: "admin-operators-file",
                reason: "outside --dev the admin API needs operators (admin-operators-file or \
                         admin-token-file), on loopback too: without them every local process \
                         could act as organisation admin"
                    .into(),
            });
        }
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

/// The items of a comma-separated setting.
fn list(setting: Option<String>) -> Vec<String> {
    setting
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A name browsers reach the relay by, as the browser writes it: lower
/// case, no port for 443.
fn web_name(name: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    let name = lower.strip_suffix(":443").unwrap_or(&lower).to_owned();
    if herold_proto::auth::valid_relay_name(&name) {
        Ok(name)
    } else {
        Err(ConfigError::Invalid {
            name: "web-names",
            reason: format!(
                "{name:?} is not a host[:port] (letters, digits, '.', '-', ':', brackets for IPv6)"
            ),
        })
    }
}

/// An origin of pages that may connect: a scheme and a host, no path.
fn web_origin(origin: &str) -> Result<String, ConfigError> {
    let lower = origin.to_ascii_lowercase();
    let host = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    match host {
        Some(h) if herold_proto::auth::valid_relay_name(h) => Ok(lower),
        _ => Err(ConfigError::Invalid {
            name: "web-origins",
            reason: format!("{origin:?} is not an origin: https://host[:port], without a path"),
        }),
    }
}
