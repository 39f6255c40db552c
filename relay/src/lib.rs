//! The Herold relay node.
//!
//! # Layout
//! - [`config`]: flags, `HEROLD_*` environment and TOML file, validated.
//! - `tls`: TLS 1.3 for QUIC, ALPN `herold/1`, the dev certificate.
//! - [`server`]: [`Relay`]: binds QUIC and the admin API, accepts
//!   connections, consumes the node inbox, fans out, drains on shutdown.
//! - `session`: one device connection: authentication, submits, acks, sync,
//!   in-order delivery with gap filling from the store.
//! - `registry`: connected devices of this node (dashmap) and their queues.
//! - `roster`: cached conversation rosters.
//! - `admin`: the gRPC admin API (services Admin and Enrollment, plus gRPC
//!   health and reflection), its authorisation and audit log.
//! - [`metrics`]: every metric's name, help and buckets; the Prometheus
//!   recorder.
//! - `health`: the operations listener (`/metrics`, `/healthz`,
//!   `/readyz`) and readiness, also published to gRPC health.
//! - `udp`: the QUIC socket, counting datagrams and reading its kernel
//!   drops.
//! - [`telemetry`]: logs (text or JSON) and OpenTelemetry traces, the
//!   trace context carried across relays.
//! - [`operators`]: operator identities and roles (the operators file).
//! - `policy`: effective policies (conversation over organisation over the
//!   relay's limits).
//!
//! # Life of a message
//! A device's Submit is validated (ids, size, membership, expiry), appended
//! to the store (durable, numbered), answered with Accepted, then fanned out:
//! the router tells which node holds each recipient device and gets one
//! delivery per node; each node pushes the one encoded frame to its local
//! sessions. `docs/architecture.md` has the whole picture.

#![warn(missing_docs)]

mod admin;
pub mod config;
mod cursors;
mod e2e;
mod grpc_metrics;
mod health;
pub mod metrics;
pub mod operators;
mod pacer;
mod policy;
mod registry;
mod roster;
pub mod server;
mod session;
pub mod telemetry;
mod tls;
mod udp;

pub use config::{Config, ConfigError};
pub use server::Relay;
pub use tls::fingerprint;

/// The QUIC server configuration the relay builds for `config` (its TLS
/// identity and transport limits) and the certificate's fingerprint: for
/// measuring plain quinn with exactly the relay's settings.
pub fn quic_server_config(config: &Config) -> anyhow::Result<(quinn::ServerConfig, String)> {
    let identity = tls::load_identity(config)?;
    let fingerprint = identity.fingerprint.clone();
    Ok((tls::server_config(identity, &config.limits)?, fingerprint))
}
