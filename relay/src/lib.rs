//! The Herold relay node.
//!
//! # Layout
//! Each module uses only those listed above it (`tests/layout.rs` checks
//! that no two modules import each other, directly or in a circle).
//! - [`metrics`]: every metric's name, help and buckets; the Prometheus
//!   recorder.
//! - `push`: content-free push: endpoint checks (no internal addresses)
//!   and the wake-ups of devices connected nowhere, once per burst.
//! - [`operators`]: operator identities and roles (the operators file).
//! - [`config`]: flags, `HEROLD_*` environment and TOML file, validated.
//! - `policy`: effective policies (conversation over organisation over the
//!   relay's limits).
//! - [`telemetry`]: logs (text or JSON) and OpenTelemetry traces, the
//!   trace context carried across relays.
//! - `tls`: TLS 1.3 for QUIC (ALPN `herold/1`, and `h3` for browsers) and
//!   for the TCP fallback, the dev certificate and the one browsers pin.
//! - `udp`: the QUIC sockets, counting datagrams and reading their kernel
//!   drops.
//! - `link`: a device's connection, QUIC, the TCP fallback (a WebSocket
//!   over TLS) or a browser's WebTransport, as one frame stream to the
//!   session.
//! - `health`: the operations listener (`/metrics`, `/healthz`,
//!   `/readyz`) and readiness, also published to gRPC health.
//! - `grpc_metrics`: the admin API's per-call metrics.
//! - `frames`: the server's frames as bytes.
//! - `rate`: token buckets (sans-IO) for the rate limits.
//! - `codes`: one-time enrollment codes and their hashes.
//! - `admission`: who may start a QUIC handshake: connections awaiting
//!   authentication bounded in total and per address, QUIC Retry under
//!   load.
//! - `registry`: connected devices of this node and their queues.
//! - `roster`: cached conversation rosters.
//! - `reads`: sessions' log reads of one conversation made together (a
//!   reconnect storm reads a hot conversation once per batch).
//! - `cursors`: acknowledged cursors, written in batches.
//! - `pacer`: deliveries to this node's devices spread over time.
//! - `interest`: the conversations this node holds devices of, registered
//!   with the router, and the local members of a delivery by interest.
//! - `cluster`: directory changes told to and heard from the other relays,
//!   and recovery when the node's inbox lagged.
//! - `node`: the state every task shares, and the clock.
//! - `delivery`: a stored message fanned out to the nodes of its
//!   recipients; the node's inbox handed to its devices.
//! - `session`: one device connection: a sans-IO core (authentication,
//!   submits, acks, sync, in-order delivery with gap filling) driven by an
//!   async loop; its MLS requests and checks (`session::e2e`); attachment
//!   uploads and downloads on streams of their own
//!   (`session::attachments`); link codes a device issues for its own
//!   account (`session::link`).
//! - `admin`: the gRPC admin API (services Admin and Enrollment, plus gRPC
//!   health and reflection), its authorisation and audit log.
//! - `web`: the TCP port's HTTP: the WebSocket upgrade into a session
//!   (native fallback and browsers, with the relay names a browser signs),
//!   the web messenger's files under a strict Content-Security-Policy,
//!   enrollment from a browser; on the QUIC port, HTTP/3 and WebTransport
//!   sessions for browsers.
//! - [`server`]: [`Relay`]: binds QUIC, the TCP fallback and the admin API, accepts
//!   connections, runs the node's tasks, drains on shutdown.
//!
//! # Life of a message
//! A device's Submit is validated (ids, size, membership, expiry), appended
//! to the store (durable, numbered), answered with Accepted, then fanned out:
//! the router tells which node holds each recipient device (or, in a
//! conversation of [`interest::INTEREST_MIN_DEVICES`] devices or more,
//! which nodes hold any of them) and gets one delivery per node; each node
//! pushes the one encoded frame to its local sessions. `docs/architecture.md` has the whole picture.

#![warn(missing_docs)]

mod admin;
mod admission;
mod cluster;
mod codes;
pub mod config;
mod cursors;
mod delivery;
mod frames;
mod grpc_metrics;
mod health;
mod interest;
mod link;
pub mod metrics;
mod node;
pub mod operators;
mod pacer;
mod policy;
mod push;
mod rate;
mod reads;
mod registry;
mod roster;
pub mod server;
mod session;
pub mod telemetry;
mod tls;
mod udp;
mod web;

pub use config::{Config, ConfigError};
pub use server::Relay;
pub use tls::fingerprint;

/// The QUIC server configuration the relay builds for `config` (its TLS
/// identity and transport limits) and the certificate's fingerprint: for
/// measuring plain quinn with exactly the relay's settings.
pub fn quic_server_config(config: &Config) -> anyhow::Result<(quinn::ServerConfig, String)> {
    let identity = tls::load_identity(config)?;
    let fingerprint = identity.fingerprint.clone();
    Ok((
        tls::server_config(identity, &config.limits, &tls::WebTransport::Off)?,
        fingerprint,
    ))
}
