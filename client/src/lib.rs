//! The Herold client SDK.
//!
//! # Layout
//! - [`Client`]: a device's connection that survives network loss: it
//!   connects with certificate pinning, authenticates with the device key,
//!   syncs from its cursors, streams deliveries as [`Event`]s, acknowledges
//!   them, and reconnects with backoff, re-sending unacknowledged submits
//!   with their original message ids (the relay stores each id once).
//! - `driver`: the task behind a [`Client`] (reconnects, re-sends, acks).
//! - [`attachment`]: end-to-end encryption of files in chunks, and the
//!   [`attachment::FileRef`] that carries key and digest inside a message.
//! - [`raw::RawConnection`]: one connection, frame by frame.
//! - [`transfer`]: attachment transfers on WebSockets of their own, for a
//!   session on a WebSocket (the TCP fallback, a browser).
//! - [`tls`]: certificate pinning.
//! - [`admin`]: the gRPC admin and enrollment clients.
//! - [`roster`]: roster files for bulk provisioning (parse, generate, send
//!   in batches) and enrollment codes for printing (CSV, HTML, PNG, QR).
//! - [`rt`]: tasks, sleeps and clocks, from tokio natively and from the
//!   page in a browser.
//!
//! # In a browser
//! Built for `wasm32`, the SDK is the web messenger's (through
//! `herold-web`): [`Client`] and [`e2e::E2eClient`] run on the page's event
//! loop over its WebSocket ([`ClientConfig::web`]), signing the relay's
//! name instead of the TLS exporter, and transfers files on WebSockets of
//! their own ([`transfer`]). QUIC, the admin clients, rosters and the CLI
//! are native only.
//!
//! # Exactly once for the app
//! The relay delivers each conversation in seq order, at least once. The
//! client remembers the last seq it handed to the app per conversation and
//! drops anything at or below it, so the app sees every message exactly once
//! while the client lives. To keep that across restarts, persist
//! [`Client::cursors`] and pass them back in [`ClientConfig::cursors`].

#![warn(missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use herold_proto::v1::{self, ErrorCode};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

pub mod attachment;
mod driver;
pub mod e2e;
#[cfg(not(target_arch = "wasm32"))]
pub mod files;
#[cfg(not(target_arch = "wasm32"))]
pub mod home;
pub mod raw;
#[cfg(not(target_arch = "wasm32"))]
pub mod roster;
pub mod rt;
mod signer;
#[cfg(not(target_arch = "wasm32"))]
pub mod tls;
pub mod transfer;

/// How long a silent relay is given before the connection counts as lost
/// (keep-alives go out at half of it).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The gRPC admin and enrollment clients, generated from `admin.proto`.
#[cfg(not(target_arch = "wasm32"))]
pub mod admin {
    pub use herold_proto::v1::admin_client::AdminClient;
    pub use herold_proto::v1::enrollment_client::EnrollmentClient;

    use std::collections::BTreeMap;

    use herold_proto::audit::{Break, Head, Listed, verify};
    use herold_proto::v1;

    /// What [`verify_audit_log`] found.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AuditCheck {
        /// Per chain (the relay that wrote it): its first and last entries
        /// and the last hash.
        pub heads: BTreeMap<String, Head>,
        /// Entries in the chains.
        pub chained: usize,
        /// Entries from before the chains existed (not checked).
        pub unchained: usize,
    }

    /// A broken chain: which, and where.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("chain {chain:?}: {why}")]
    pub struct ChainBroken {
        /// The chain (a relay's node id).
        pub chain: String,
        /// Where and how.
        pub why: Break,
    }

    /// Checks the audit log's hash chains on the operator's side: `entries`
    /// is the whole log as `ListAuditLog` pages it, in any order; `expect`
    /// heads recorded from an earlier check, per chain (see
    /// [`herold_proto::audit::verify`]). A chain named in `expect` must be
    /// there.
    pub fn verify_audit_log(
        entries: &[v1::AuditEntry],
        expect: &BTreeMap<String, (u64, [u8; 32])>,
    ) -> Result<AuditCheck, ChainBroken> {
        let mut chains: BTreeMap<&str, Vec<Listed<'_>>> = BTreeMap::new();
        for chain in expect.keys() {
            chains.entry(chain.as_str()).or_default();
        }
        let mut chained = 0;
        for e in entries.iter().filter(|e| e.chain_seq > 0) {
            chained += 1;
            chains.entry(e.chain.as_str()).or_default().push(Listed {
                fields: herold_proto::audit::Fields {
                    chain: &e.chain,
                    seq: e.chain_seq,
                    at_ms: e.at_ms,
                    id: &e.id,
                    operator: &e.operator,
                    action: &e.action,
                    target: &e.target,
                    outcome: &e.outcome,
                    detail: &e.detail,
                },
                hash: &e.hash,
            });
        }
        let mut heads = BTreeMap::new();
        for (chain, listed) in chains {
            let head = verify(listed, expect.get(chain).copied()).map_err(|why| ChainBroken {
                chain: chain.to_owned(),
                why,
            })?;
            heads.insert(chain.to_owned(), head);
        }
        Ok(AuditCheck {
            heads,
            chained,
            unchained: entries.len() - chained,
        })
    }
}

pub use herold_proto::v1::{Accepted, Envelope};

/// Errors of the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be established.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The relay refused the connection before TLS: it is full, or this
    /// address has too many connections awaiting authentication or starts
    /// handshakes too fast. Trying again later (or another relay) helps.
    #[error(
        "the relay refused the connection (it is full, or too many connections come from \
         this address); try again later"
    )]
    Refused,
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// A local I/O error.
    #[error("I/O: {0}")]
    Io(String),
    /// The relay answered with an error frame.
    #[error("relay error {code:?}: {message}")]
    Relay {
        /// The stable error code.
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
        /// Whether the relay closed the connection after it.
        fatal: bool,
        /// With RATE_LIMITED or UNAVAILABLE: how long to wait before
        /// asking again, in milliseconds (0: not said).
        retry_after_ms: u32,
    },
    /// The relay sent something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection closed.
    #[error("connection closed: {0}")]
    Closed(String),
    /// The client was shut down.
    #[error("the client is shut down")]
    Shutdown,
    /// The ciphertext is larger than the relay accepts.
    #[error("the ciphertext has {len} bytes; the relay accepts at most {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The relay's limit (from AuthOk).
        max: usize,
    },
}

impl ClientError {
    /// From a relay Error frame.
    pub fn relay(e: &v1::Error) -> Self {
        ClientError::Relay {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            message: e.message.clone(),
            fatal: e.fatal,
            retry_after_ms: e.retry_after_ms,
        }
    }

    /// How long the relay asked to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::Relay { retry_after_ms, .. } if *retry_after_ms > 0 => {
                Some(std::time::Duration::from_millis(u64::from(*retry_after_ms)))
            }
            _ => None,
        }
    }

    /// The relay's error code, if this is a relay error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Relay { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether reconnecting cannot help (the device is not allowed in).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.code(),
            Some(
                ErrorCode::UnknownDevice
                    | ErrorCode::DeviceRevoked
                    | ErrorCode::AuthFailed
                    | ErrorCode::UnsupportedVersion
                    | ErrorCode::Replaced
            )
        )
    }
}

/// Reconnect backoff: exponential from `initial` to `max`, with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// How a [`Client`] connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Relay address.
    pub relay: SocketAddr,
    /// Further relays of the same cluster (same certificate). After a lost
    /// connection or a failed attempt the client moves on to the next
    /// address, so the devices of a dead relay land on the survivors.
    pub fallback_relays: Vec<SocketAddr>,
    /// SHA-256 of the relay's certificate.
    pub fingerprint: [u8; 32],
    /// This device's id.
    pub device_id: String,
    /// This device's key.
    pub key: SigningKey,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// Last seq the app has seen per conversation (from a previous run).
    pub cursors: HashMap<String, u64>,
    /// Submits awaiting acceptance at once (the relay's default limit is 64).
    pub max_in_flight: usize,
    /// A shared client endpoint (UDP socket); `None` opens one per client.
    #[cfg(not(target_arch = "wasm32"))]
    pub endpoint: Option<quinn::Endpoint>,
    /// The relay's name (`host[:port]`) to sign instead of the TLS exporter
    /// (docs/protocol.md, "Browsers"): what a browser does; natively, for a
    /// WebSocket through a proxy that ends TLS. `None`: the exporter.
    pub relay_name: Option<String>,
    /// In a browser: the relay's WebSocket URL
    /// (`wss://relay.city.example/v1`).
    #[cfg(target_arch = "wasm32")]
    pub url: String,
    /// In a browser: the relay's WebTransport, tried before the WebSocket.
    #[cfg(target_arch = "wasm32")]
    pub webtransport: Option<WebTransportAt>,
    /// In a browser: the device's non-extractable WebCrypto key, which
    /// then signs instead of `key`.
    #[cfg(target_arch = "wasm32")]
    pub web_key: Option<WebKey>,
    /// How long a silent relay is given before the client reconnects
    /// elsewhere (keep-alives go out at half of it).
    pub idle_timeout: Duration,
    /// Where to copy every byte of every connection (see [`raw::WireTap`]).
    pub wire_tap: Option<raw::WireTap>,
    /// Whether to try the relay's TCP fallback (a WebSocket over TLS on the
    /// same address) when QUIC does not get through within
    /// [`raw::FALLBACK_AFTER`]: on by default. Load generators turn it off
    /// to measure QUIC alone.
    pub tcp_fallback: bool,
    /// Whether the app acknowledges deliveries itself ([`Sender::ack`]),
    /// once it has kept what they changed: what the web messenger does,
    /// which keeps its state in the browser asynchronously. Off: the
    /// client acknowledges what it hands to the app. With it, `cursors`
    /// are the positions the app kept, acknowledged again when the relay
    /// repeats what lies below them.
    pub app_acks: bool,
}

impl ClientConfig {
    /// A configuration with defaults.
    pub fn new(relay: SocketAddr, fingerprint: [u8; 32], device_id: &str, key: SigningKey) -> Self {
        Self {
            relay,
            fallback_relays: Vec::new(),
            fingerprint,
            device_id: device_id.to_owned(),
            key,
            backoff: Backoff::default(),
            cursors: HashMap::new(),
            max_in_flight: 64,
            #[cfg(not(target_arch = "wasm32"))]
            endpoint: None,
            relay_name: None,
            #[cfg(target_arch = "wasm32")]
            url: String::new(),
            #[cfg(target_arch = "wasm32")]
            webtransport: None,
            #[cfg(target_arch = "wasm32")]
            web_key: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            wire_tap: None,
            tcp_fallback: true,
            app_acks: false,
        }
    }

    /// In a browser: the relay at `url` (its WebSocket), whose name the
    /// device signs (`relay_name`, the URL's `host[:port]`).
    #[cfg(target_arch = "wasm32")]
    pub fn web(url: &str, relay_name: &str, device_id: &str, key: SigningKey) -> Self {
        Self {
            url: url.to_owned(),
            relay_name: Some(relay_name.to_owned()),
            ..Self::new(SocketAddr::from(([0, 0, 0, 0], 0)), [0; 32], device_id, key)
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use signer::WebKey;

/// Where a page finds the relay's WebTransport (the relay says so at
/// `/v1/transports`, docs/web.md).
#[cfg(target_arch = "wasm32")]
#[derive(Debug, Clone)]
pub struct WebTransportAt {
    /// `https://host:port/v1`.
    pub url: String,
    /// SHA-256 of the certificate to pin (`serverCertificateHashes`);
    /// empty: the browser checks the relay's certificate as for the page.
    pub certificate_hashes: Vec<[u8; 32]>,
}

/// What the client reports to the app.
#[derive(Debug, Clone)]
pub enum Event {
    /// A new message, in conversation order, once.
    Message(Envelope),
    /// Everything stored up to now has been delivered (after each connect).
    Synced {
        /// Messages the relay sent during this sync (duplicates included).
        delivered: u64,
    },
    /// The connection was lost; the client is reconnecting.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// Reconnected and authenticated.
    Reconnected,
    /// The client stopped for good (revoked device, replaced connection...).
    Stopped(ClientError),
}

/// The longest a draining relay may make the client wait before it
/// reconnects (`Draining.reconnect_after_ms` is capped at this).
const MAX_DRAIN_WAIT_MS: u64 = 10_000;

/// Generates a fresh device key.
pub fn generate_key() -> Result<SigningKey, ClientError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| ClientError::Io(format!("no randomness: {e}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A fresh random message id.
pub fn new_message_id() -> Result<[u8; 16], ClientError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| ClientError::Io(format!("no randomness: {e}")))?;
    Ok(id)
}

enum Cmd {
    Submit {
        submit: v1::Submit,
        done: oneshot::Sender<Result<Accepted, ClientError>>,
    },
    Request {
        kind: v1::request::Kind,
        done: oneshot::Sender<Result<v1::response::Kind, ClientError>>,
    },
    Close(oneshot::Sender<()>),
    /// The app kept what the deliveries up to `seq` changed (app acks).
    Ack {
        conversation_id: String,
        seq: u64,
    },
}

/// A device's resilient connection to a relay. See the crate docs.
#[derive(Debug)]
pub struct Client {
    max_ciphertext: Arc<AtomicUsize>,
    conn: watch::Receiver<Option<raw::Carrier>>,
    tap: Option<raw::WireTap>,
    cmd: mpsc::Sender<Cmd>,
    events: mpsc::Receiver<Event>,
    cursors: Arc<Mutex<HashMap<String, u64>>>,
    in_flight: Arc<Semaphore>,
    account_id: String,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Submit { .. } => "Submit",
            Cmd::Request { .. } => "Request",
            Cmd::Close(_) => "Close",
            Cmd::Ack { .. } => "Ack",
        })
    }
}

impl Client {
    /// Connects and authenticates. Fails if the first attempt fails, so that
    /// a wrong key or address is reported at once; later losses reconnect.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let mut conn = driver::open(&config, config.relay).await?;
        let ok = conn
            .authenticate_signed(
                &config.device_id,
                config.relay_name.as_deref(),
                &signer::DeviceSigner::of(&config),
            )
            .await?;
        let cursors = Arc::new(Mutex::new(config.cursors.clone()));
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (ev_tx, ev_rx) = mpsc::channel(4096);
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        let max_ciphertext = Arc::new(AtomicUsize::new(ok.max_ciphertext_bytes as usize));
        let (conn_tx, conn_rx) = watch::channel(Some(raw::Carrier::of(&conn, &config)));
        let tap = config.wire_tap.clone();
        driver::spawn(
            config,
            conn,
            cmd_rx,
            driver::Shared {
                max_ciphertext: max_ciphertext.clone(),
                cursors: cursors.clone(),
                events: ev_tx,
                conn: conn_tx,
            },
        );
        Ok(Self {
            max_ciphertext,
            conn: conn_rx,
            tap,
            cmd: cmd_tx,
            events: ev_rx,
            cursors,
            in_flight,
            account_id: ok.account_id,
        })
    }

    /// A cloneable handle that sends through this client, for sending from
    /// other tasks while this one receives.
    pub fn sender(&self) -> Sender {
        Sender {
            max_ciphertext: self.max_ciphertext.clone(),
            conn: self.conn.clone(),
            tap: self.tap.clone(),
            cmd: self.cmd.clone(),
            in_flight: self.in_flight.clone(),
        }
    }

    /// Whether events are waiting to be taken ([`Client::next_event`]).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The device's account, as the relay reported it.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The transport of the connection of the moment; `None` while the
    /// client is reconnecting.
    pub fn transport(&self) -> Option<raw::Transport> {
        self.sender().transport()
    }

    /// Sends `ciphertext` to a conversation and waits until the relay has
    /// stored it. `expires_at_ms` 0 uses the conversation's retention.
    pub async fn send(
        &self,
        conversation_id: &str,
        ciphertext: Vec<u8>,
        expires_at_ms: i64,
    ) -> Result<Accepted, ClientError> {
        self.sender()
            .send(conversation_id, ciphertext, expires_at_ms)
            .await
    }

    /// Like [`Client::send`] with a chosen message id: sending the same id
    /// again returns the first acceptance (`duplicate: true`).
    pub async fn send_with_id(
        &self,
        message_id: [u8; 16],
        conversation_id: &str,
        ciphertext: Vec<u8>,
        expires_at_ms: i64,
    ) -> Result<Accepted, ClientError> {
        self.sender()
            .send_with_id(message_id, conversation_id, ciphertext, expires_at_ms)
            .await
    }

    /// The next event; `None` after the client stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next message, skipping other events; `None` after the client stopped.
    pub async fn next_message(&mut self) -> Option<Envelope> {
        loop {
            match self.events.recv().await? {
                Event::Message(m) => return Some(m),
                Event::Stopped(_) => return None,
                _ => {}
            }
        }
    }

    /// Last seq handed to the app, per conversation: persist it to keep
    /// exactly-once across restarts.
    pub fn cursors(&self) -> HashMap<String, u64> {
        self.cursors
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Flushes acknowledgements and closes the connection.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Sends through a [`Client`] from any task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sender {
    max_ciphertext: Arc<AtomicUsize>,
    /// The connection of the moment, for attachment streams (`files`).
    conn: watch::Receiver<Option<raw::Carrier>>,
    /// Copies the bytes of attachment streams, as the config asked.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    tap: Option<raw::WireTap>,
    cmd: mpsc::Sender<Cmd>,
    in_flight: Arc<Semaphore>,
}

impl Sender {
    /// The transport of the client's connection of the moment; `None`
    /// while it is reconnecting.
    pub fn transport(&self) -> Option<raw::Transport> {
        self.conn.borrow().as_ref()?.transport()
    }

    /// See [`Client::send`].
    pub async fn send(
        &self,
        conversation_id: &str,
        ciphertext: Vec<u8>,
        expires_at_ms: i64,
    ) -> Result<Accepted, ClientError> {
        self.send_with_id(
            new_message_id()?,
            conversation_id,
            ciphertext,
            expires_at_ms,
        )
        .await
    }

    /// See [`Client::send_with_id`].
    pub async fn send_with_id(
        &self,
        message_id: [u8; 16],
        conversation_id: &str,
        ciphertext: Vec<u8>,
        expires_at_ms: i64,
    ) -> Result<Accepted, ClientError> {
        let max = self.max_ciphertext.load(Ordering::Relaxed);
        if ciphertext.len() > max {
            // Refused here: the relay would close the connection over it.
            return Err(ClientError::TooLarge {
                len: ciphertext.len(),
                max,
            });
        }
        self.submit(v1::Submit {
            message_id: message_id.to_vec(),
            conversation_id: conversation_id.to_owned(),
            expires_at_ms,
            ciphertext,
            ..Default::default()
        })
        .await
    }

    /// Submits a complete Submit frame (an MLS commit with its Welcome, for
    /// instance) and waits for its acceptance. Re-sent after a reconnect
    /// like every submit.
    pub async fn submit(&self, submit: v1::Submit) -> Result<Accepted, ClientError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| ClientError::Shutdown)?;
        let (done, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Submit { submit, done })
            .await
            .map_err(|_| ClientError::Shutdown)?;
        rx.await.map_err(|_| ClientError::Shutdown)?
    }

    /// Sends a Request and waits for its Response; a relay error becomes
    /// [`ClientError::Relay`]. Unanswered requests are sent again after a
    /// reconnect.
    pub async fn request(
        &self,
        kind: v1::request::Kind,
    ) -> Result<v1::response::Kind, ClientError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| ClientError::Shutdown)?;
        let (done, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Request { kind, done })
            .await
            .map_err(|_| ClientError::Shutdown)?;
        rx.await.map_err(|_| ClientError::Shutdown)?
    }

    /// Registers where the relay wakes this device while it is connected
    /// nowhere (a Web Push endpoint, e.g. a UnifiedPush distributor's;
    /// docs/push.md); `""` clears it. The wake-up carries nothing: the app
    /// connects and syncs. Refused with `PUSH_ENDPOINT_REFUSED` unless the
    /// relay may call it. Returns the endpoint now registered.
    pub async fn register_push(&self, endpoint: &str) -> Result<String, ClientError> {
        match self
            .request(v1::request::Kind::RegisterPush(v1::RegisterPush {
                endpoint: endpoint.to_owned(),
            }))
            .await?
        {
            v1::response::Kind::PushRegistered(r) => Ok(r.endpoint),
            v1::response::Kind::Error(e) => Err(ClientError::relay(&e)),
            _ => Err(ClientError::Protocol(
                "the relay answered a push registration with something else".into(),
            )),
        }
    }

    /// With [`ClientConfig::app_acks`]: the app has kept what the
    /// deliveries of `conversation` up to `seq` changed; the relay is told
    /// (soon, with the other acknowledgements) and does not deliver them
    /// again.
    pub async fn ack(&self, conversation: &str, seq: u64) -> Result<(), ClientError> {
        self.cmd
            .send(Cmd::Ack {
                conversation_id: conversation.to_owned(),
                seq,
            })
            .await
            .map_err(|_| ClientError::Shutdown)
    }

    /// A one-time enrollment code for another device of this device's
    /// account (a browser, a new phone), to show it, e.g. as a QR code;
    /// valid for 10 minutes. Refused with `RATE_LIMITED` beyond 6 an hour.
    pub async fn issue_link_code(&self) -> Result<v1::LinkCode, ClientError> {
        match self
            .request(v1::request::Kind::IssueLinkCode(v1::IssueLinkCode {}))
            .await?
        {
            v1::response::Kind::LinkCode(c) => Ok(c),
            v1::response::Kind::Error(e) => Err(ClientError::relay(&e)),
            _ => Err(ClientError::Protocol(
                "the relay answered a link code request with something else".into(),
            )),
        }
    }
}
