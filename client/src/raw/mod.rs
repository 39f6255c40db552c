//! One connection to a relay, frame by frame: what [`crate::Client`] is built
//! on, and what protocol tests use to send exactly the bytes they want.
//!
//! A connection is QUIC, or, where a network blocks UDP, the relay's TCP
//! fallback: a WebSocket over TLS on the same address and port, carrying
//! the same frames (docs/protocol.md, "TCP fallback"). [`RawConnection::connect_any`] tries QUIC
//! first and the fallback when QUIC has not got through within
//! [`FALLBACK_AFTER`], and takes whichever connects first.
//!
//! In a browser (`wasm32`) a connection is the page's WebSocket to the
//! relay's TCP port ([`RawConnection::connect_web`], `web.rs`), and the
//! device signs the relay's name instead of the TLS exporter, which a page
//! cannot read (docs/protocol.md, "Browsers").

#[cfg(not(target_arch = "wasm32"))]
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use ed25519_dalek::SigningKey;
#[cfg(not(target_arch = "wasm32"))]
use futures_util::{SinkExt, StreamExt};
use herold_proto::codec::{FrameDecoder, encode_frame};
use herold_proto::v1::{self, client_frame, server_frame};
use herold_proto::{PROTOCOL_VERSION, auth};
#[cfg(not(target_arch = "wasm32"))]
use tokio_tungstenite::WebSocketStream;
#[cfg(not(target_arch = "wasm32"))]
use tokio_tungstenite::tungstenite::Message;
#[cfg(not(target_arch = "wasm32"))]
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[cfg(target_arch = "wasm32")]
mod web;
#[cfg(target_arch = "wasm32")]
mod wt;

use crate::ClientError;

/// Largest frame the client accepts from a relay.
pub const CLIENT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

#[cfg(not(target_arch = "wasm32"))]
/// A client endpoint (one UDP socket) of the address family of `relay`.
pub fn client_endpoint(relay: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
    let bind: SocketAddr = if relay.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    };
    quinn::Endpoint::client(bind).map_err(|e| ClientError::Io(e.to_string()))
}

#[cfg(not(target_arch = "wasm32"))]
/// How long `close` waits for the relay to take the last frames.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long QUIC is given to connect before the TCP fallback is tried
/// alongside it.
pub const FALLBACK_AFTER: std::time::Duration = std::time::Duration::from_millis(1500);

#[cfg(not(target_arch = "wasm32"))]
/// The WebSocket of a fallback connection.
type Ws = WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// An open connection with its control stream.
#[derive(Debug)]
pub struct RawConnection {
    wire: Wire,
    decoder: FrameDecoder,
    out: BytesMut,
    tap: Option<WireTap>,
}

/// The transport under a connection.
#[derive(Debug)]
enum Wire {
    #[cfg(not(target_arch = "wasm32"))]
    Quic {
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
    #[cfg(not(target_arch = "wasm32"))]
    Ws {
        ws: Box<Ws>,
        exporter: [u8; auth::NONCE_BYTES],
        /// Silence after which a ping goes out; as long again without an
        /// answer and the relay counts as lost.
        idle: std::time::Duration,
        /// Where it goes, for the WebSockets of attachment transfers.
        relay: SocketAddr,
        fingerprint: [u8; 32],
    },
    /// The page's WebSocket, in a browser.
    #[cfg(target_arch = "wasm32")]
    Web(web::WebWire),
}

/// The transport a connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC over UDP, the native transport.
    Quic,
    /// The TCP fallback: a WebSocket over TLS (in a browser, where
    /// WebTransport does not get through).
    Tcp,
    /// WebTransport over HTTP/3 on the QUIC port: a browser's first
    /// choice.
    WebTransport,
}

/// The connection of the moment as attachment transfers need it: QUIC
/// (streams of their own) or a WebSocket (none).
#[derive(Debug, Clone)]
pub(crate) enum Carrier {
    #[cfg(not(target_arch = "wasm32"))]
    Quic(quinn::Connection),
    /// A WebSocket: transfers open WebSockets of their own, here.
    Tcp(TransferTo),
}

/// Where the WebSocket of an attachment transfer goes (the relay address of
/// the session's WebSocket), and how it authenticates (as the session).
#[derive(Debug, Clone)]
pub(crate) struct TransferTo {
    pub(crate) at: TransferAt,
    pub(crate) device_id: String,
    pub(crate) signer: crate::signer::DeviceSigner,
    pub(crate) relay_name: Option<String>,
}

/// The address of a transfer's WebSocket.
#[derive(Debug, Clone)]
pub(crate) enum TransferAt {
    #[cfg(not(target_arch = "wasm32"))]
    Native {
        relay: SocketAddr,
        fingerprint: [u8; 32],
        idle: std::time::Duration,
    },
    #[cfg(target_arch = "wasm32")]
    Web {
        url: String,
        idle: std::time::Duration,
        /// Whether the session itself is on WebTransport.
        webtransport: bool,
    },
}

impl Carrier {
    /// The carrier of `c`, a connection of the device in `config`.
    pub(crate) fn of(c: &RawConnection, config: &crate::ClientConfig) -> Self {
        let to = |at| TransferTo {
            at,
            device_id: config.device_id.clone(),
            signer: crate::signer::DeviceSigner::of(config),
            relay_name: config.relay_name.clone(),
        };
        match &c.wire {
            #[cfg(not(target_arch = "wasm32"))]
            Wire::Quic { conn, .. } => Self::Quic(conn.clone()),
            #[cfg(not(target_arch = "wasm32"))]
            Wire::Ws {
                relay,
                fingerprint,
                idle,
                ..
            } => Self::Tcp(to(TransferAt::Native {
                relay: *relay,
                fingerprint: *fingerprint,
                idle: *idle,
            })),
            #[cfg(target_arch = "wasm32")]
            Wire::Web(w) => Self::Tcp(to(TransferAt::Web {
                url: w.transfer_url(),
                idle: w.idle(),
                webtransport: w.is_webtransport(),
            })),
        }
    }

    /// The transport, unless the connection is gone.
    pub(crate) fn transport(&self) -> Option<Transport> {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Self::Quic(c) if c.close_reason().is_none() => Some(Transport::Quic),
            #[cfg(not(target_arch = "wasm32"))]
            Self::Quic(_) => None,
            #[cfg(target_arch = "wasm32")]
            Self::Tcp(TransferTo {
                at: TransferAt::Web {
                    webtransport: true, ..
                },
                ..
            }) => Some(Transport::WebTransport),
            Self::Tcp(_) => Some(Transport::Tcp),
        }
    }
}

/// A copy of every byte a connection's control stream carried, both ways,
/// after TLS: what the relay saw and sent. For audits and tests that check
/// what crosses the wire (e.g. that no plaintext does).
pub type WireTap = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

pub(crate) fn tap_bytes(tap: &Option<WireTap>, bytes: &[u8]) {
    if let Some(t) = tap {
        t.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
    }
}

impl RawConnection {
    #[cfg(not(target_arch = "wasm32"))]
    /// Connects to `relay`, pinning the certificate `fingerprint`, and opens
    /// the control stream, on an endpoint (UDP socket) of its own.
    pub async fn connect(relay: SocketAddr, fingerprint: [u8; 32]) -> Result<Self, ClientError> {
        let endpoint = client_endpoint(relay)?;
        Self::connect_via(&endpoint, relay, fingerprint).await
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// Like [`RawConnection::connect`] on a shared endpoint: many connections
    /// (a load generator's thousands of devices) can share one UDP socket.
    pub async fn connect_via(
        endpoint: &quinn::Endpoint,
        relay: SocketAddr,
        fingerprint: [u8; 32],
    ) -> Result<Self, ClientError> {
        Self::connect_via_idle(
            endpoint,
            relay,
            fingerprint,
            crate::tls::DEFAULT_IDLE_TIMEOUT,
        )
        .await
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// Like [`RawConnection::connect_via`], with the idle timeout after which
    /// a silent relay counts as lost.
    pub async fn connect_via_idle(
        endpoint: &quinn::Endpoint,
        relay: SocketAddr,
        fingerprint: [u8; 32],
        idle: std::time::Duration,
    ) -> Result<Self, ClientError> {
        let config =
            crate::tls::client_config_with_idle(fingerprint, idle).map_err(ClientError::Tls)?;
        let conn = endpoint
            .connect_with(config, relay, "localhost")
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .await
            .map_err(|e| match e {
                quinn::ConnectionError::ConnectionClosed(c)
                    if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                {
                    ClientError::Refused
                }
                e => ClientError::Connect(e.to_string()),
            })?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        Ok(Self::on(Wire::Quic {
            endpoint: endpoint.clone(),
            conn,
            send,
            recv,
        }))
    }

    fn on(wire: Wire) -> Self {
        Self {
            wire,
            decoder: FrameDecoder::new(CLIENT_MAX_FRAME_BYTES),
            out: BytesMut::new(),
            tap: None,
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// Connects over the relay's TCP fallback at `relay` (TCP, the same
    /// address and port as QUIC): TLS pinning `fingerprint`, then a
    /// WebSocket.
    pub async fn connect_tcp(
        relay: SocketAddr,
        fingerprint: [u8; 32],
        idle: std::time::Duration,
    ) -> Result<Self, ClientError> {
        Self::connect_tcp_at(relay, fingerprint, idle, "/v1").await
    }

    /// [`RawConnection::connect_tcp`] to the WebSocket at `path` (the
    /// session's `/v1`, or a transfer's, [`herold_proto::TRANSFER_PATH`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn connect_tcp_at(
        relay: SocketAddr,
        fingerprint: [u8; 32],
        idle: std::time::Duration,
        path: &str,
    ) -> Result<Self, ClientError> {
        let connect = |e: std::io::Error| ClientError::Connect(format!("TCP to {relay}: {e}"));
        let tcp = tokio::net::TcpStream::connect(relay)
            .await
            .map_err(connect)?;
        let _ = tcp.set_nodelay(true);
        let tls = crate::tls::fallback_connector(fingerprint)
            .map_err(ClientError::Tls)?
            .connect(
                rustls_pki_types::ServerName::try_from("localhost")
                    .map_err(|e| ClientError::Tls(e.to_string()))?,
                tcp,
            )
            .await
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let exporter = tls
            .get_ref()
            .1
            .export_keying_material([0u8; auth::NONCE_BYTES], auth::EXPORTER_LABEL, Some(b""))
            .map_err(|_| ClientError::Tls("TLS exporter unavailable".into()))?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(CLIENT_MAX_FRAME_BYTES + 16))
            .max_frame_size(Some(CLIENT_MAX_FRAME_BYTES + 16));
        let url = format!("wss://{relay}{path}");
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(config))
            .await
            .map_err(|e| ClientError::Connect(format!("WebSocket to {relay}: {e}")))?;
        Ok(Self::on(Wire::Ws {
            ws: Box::new(ws),
            exporter,
            idle,
            relay,
            fingerprint,
        }))
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// Connects over QUIC and, when that has not got through within
    /// [`FALLBACK_AFTER`] (or failed), over the TCP fallback as well; the
    /// first to connect wins. A relay that refused the connection is not
    /// asked again over TCP.
    pub async fn connect_any(
        endpoint: &quinn::Endpoint,
        relay: SocketAddr,
        fingerprint: [u8; 32],
        idle: std::time::Duration,
    ) -> Result<Self, ClientError> {
        let quic = Self::connect_via_idle(endpoint, relay, fingerprint, idle);
        tokio::pin!(quic);
        let quic_error = tokio::select! {
            r = &mut quic => match r {
                Ok(c) => return Ok(c),
                Err(ClientError::Refused) => return Err(ClientError::Refused),
                Err(e) => Some(e),
            },
            () = tokio::time::sleep(FALLBACK_AFTER) => None,
        };
        let tcp = Self::connect_tcp(relay, fingerprint, idle);
        match quic_error {
            Some(quic_error) => tcp.await.map_err(|e| both_failed(&quic_error, &e)),
            None => {
                tokio::pin!(tcp);
                tokio::select! {
                    r = &mut quic => match r {
                        Ok(c) => Ok(c),
                        Err(ClientError::Refused) => Err(ClientError::Refused),
                        Err(q) => tcp.await.map_err(|e| both_failed(&q, &e)),
                    },
                    r = &mut tcp => match r {
                        Ok(c) => Ok(c),
                        Err(t) => quic.await.map_err(|q| both_failed(&q, &t)),
                    },
                }
            }
        }
    }

    /// The transport this connection runs on.
    pub fn transport(&self) -> Transport {
        match self.wire {
            #[cfg(not(target_arch = "wasm32"))]
            Wire::Quic { .. } => Transport::Quic,
            #[allow(unreachable_patterns)]
            _ => Transport::Tcp,
        }
    }

    /// Copies everything this connection sends and receives from now on
    /// into `tap`.
    pub fn set_tap(&mut self, tap: WireTap) {
        self.tap = Some(tap);
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// The underlying QUIC connection; `None` over the TCP fallback.
    pub fn connection(&self) -> Option<&quinn::Connection> {
        match &self.wire {
            Wire::Quic { conn, .. } => Some(conn),
            Wire::Ws { .. } => None,
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// The TLS exporter value the auth transcript binds to.
    pub fn exporter(&self) -> Result<[u8; 32], ClientError> {
        match &self.wire {
            Wire::Quic { conn, .. } => {
                let mut out = [0u8; auth::NONCE_BYTES];
                conn.export_keying_material(&mut out, auth::EXPORTER_LABEL, b"")
                    .map_err(|_| ClientError::Tls("TLS exporter unavailable".into()))?;
                Ok(out)
            }
            Wire::Ws { exporter, .. } => Ok(*exporter),
        }
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &v1::ClientFrame) -> Result<(), ClientError> {
        self.out.clear();
        encode_frame(frame, usize::MAX, &mut self.out)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tap_bytes(&self.tap, &self.out);
        let bytes = self.out.split().freeze();
        self.write(bytes).await
    }

    /// Sends raw bytes on the control stream (tests of malformed input).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.write(Bytes::copy_from_slice(bytes)).await
    }

    async fn write(&mut self, bytes: Bytes) -> Result<(), ClientError> {
        match &mut self.wire {
            #[cfg(target_arch = "wasm32")]
            Wire::Web(w) => w.send(&bytes),
            #[cfg(not(target_arch = "wasm32"))]
            Wire::Quic { send, .. } => send
                .write_all(&bytes)
                .await
                .map_err(|e| ClientError::Io(e.to_string())),
            #[cfg(not(target_arch = "wasm32"))]
            Wire::Ws { ws, .. } => ws
                .send(Message::Binary(bytes))
                .await
                .map_err(|e| ClientError::Io(e.to_string())),
        }
    }

    /// Opens the WebSocket of one attachment transfer at `at`.
    pub(crate) async fn open_transfer(at: &TransferAt) -> Result<Self, ClientError> {
        match at {
            #[cfg(not(target_arch = "wasm32"))]
            TransferAt::Native {
                relay,
                fingerprint,
                idle,
            } => {
                Self::connect_tcp_at(*relay, *fingerprint, *idle, herold_proto::TRANSFER_PATH).await
            }
            #[cfg(target_arch = "wasm32")]
            TransferAt::Web { url, idle, .. } => Self::connect_transfer_web(url, *idle).await,
        }
    }

    /// The next raw bytes from the relay, past the frame decoder (an
    /// attachment transfer's, after its authentication); `None` at the
    /// stream's end.
    pub async fn read_raw(&mut self) -> Result<Option<Bytes>, ClientError> {
        let held = self.decoder.take_buffered();
        if !held.is_empty() {
            return Ok(Some(held.freeze()));
        }
        let chunk = self.chunk().await?;
        if let Some(c) = &chunk {
            tap_bytes(&self.tap, c);
        }
        Ok(chunk)
    }

    /// Sends one client frame kind.
    pub async fn send_kind(&mut self, kind: client_frame::Kind) -> Result<(), ClientError> {
        self.send(&v1::ClientFrame { kind: Some(kind) }).await
    }

    /// The next frame from the relay; `Ok(None)` when the relay finished the
    /// stream. Cancel-safe: a cancelled call loses no data. Over the TCP
    /// fallback the keep-alive pings go out from here: a caller that stops
    /// reading for longer than the relay's idle timeout loses the
    /// connection ([`crate::Client`] always reads).
    pub async fn recv(&mut self) -> Result<Option<v1::ServerFrame>, ClientError> {
        loop {
            if let Some(f) = self
                .decoder
                .next_message::<v1::ServerFrame>()
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                return Ok(Some(f));
            }
            match self.chunk().await? {
                Some(chunk) => {
                    tap_bytes(&self.tap, &chunk);
                    self.decoder.extend(&chunk)
                }
                None => return Ok(None),
            }
        }
    }

    /// The next bytes from the relay; `None` at the stream's end.
    /// Cancel-safe.
    async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        match &mut self.wire {
            #[cfg(target_arch = "wasm32")]
            Wire::Web(w) => w.chunk().await,
            #[cfg(not(target_arch = "wasm32"))]
            Wire::Quic { recv, .. } => match recv.read_chunk(64 * 1024, true).await {
                Ok(c) => Ok(c.map(|c| c.bytes)),
                Err(e) => Err(ClientError::Closed(e.to_string())),
            },
            #[cfg(not(target_arch = "wasm32"))]
            Wire::Ws { ws, idle, .. } => {
                let mut pinged = false;
                loop {
                    let next = match tokio::time::timeout(*idle / 2, ws.next()).await {
                        Ok(n) => n,
                        Err(_) if !pinged => {
                            // Silence: does the relay still answer?
                            pinged = true;
                            ws.send(Message::Ping(Bytes::new()))
                                .await
                                .map_err(|e| ClientError::Closed(e.to_string()))?;
                            continue;
                        }
                        Err(_) => {
                            return Err(ClientError::Closed(format!(
                                "the relay was silent for {} s",
                                idle.as_secs()
                            )));
                        }
                    };
                    match next {
                        Some(Ok(Message::Binary(b))) => return Ok(Some(b)),
                        Some(Ok(Message::Close(_))) | None => return Ok(None),
                        Some(Ok(Message::Text(_))) => {
                            return Err(ClientError::Protocol(
                                "the relay sent a text message".into(),
                            ));
                        }
                        Some(Ok(_)) => pinged = false,
                        Some(Err(e)) => return Err(ClientError::Closed(e.to_string())),
                    }
                }
            }
        }
    }

    /// Hello, challenge, signed response; returns the relay's AuthOk or the
    /// relay's error.
    pub async fn authenticate(
        &mut self,
        device_id: &str,
        key: &SigningKey,
    ) -> Result<v1::AuthOk, ClientError> {
        self.authenticate_as(device_id, key, None).await
    }

    /// [`authenticate`](Self::authenticate), binding the signature to
    /// `relay_name` (the relay's `host[:port]`) instead of the TLS
    /// exporter when one is given, as browsers do (docs/protocol.md,
    /// "Browsers"); the relay accepts that over WebSocket only.
    pub async fn authenticate_as(
        &mut self,
        device_id: &str,
        key: &SigningKey,
        relay_name: Option<&str>,
    ) -> Result<v1::AuthOk, ClientError> {
        let signer = crate::signer::DeviceSigner::Key(std::sync::Arc::new(key.clone()));
        self.authenticate_signed(device_id, relay_name, &signer)
            .await
    }

    /// [`authenticate_as`](Self::authenticate_as) with `signer`, which may
    /// be a browser's WebCrypto key.
    pub(crate) async fn authenticate_signed(
        &mut self,
        device_id: &str,
        relay_name: Option<&str>,
        signer: &crate::signer::DeviceSigner,
    ) -> Result<v1::AuthOk, ClientError> {
        self.send_kind(client_frame::Kind::Hello(v1::Hello {
            version: PROTOCOL_VERSION,
            device_id: device_id.to_owned(),
            client: concat!("herold-client/", env!("CARGO_PKG_VERSION")).to_owned(),
        }))
        .await?;
        let nonce = match self.expect_frame().await? {
            server_frame::Kind::AuthChallenge(c) => c.nonce,
            other => return Err(unexpected(other)),
        };
        let transcript = match relay_name {
            Some(name) => auth::web_transcript(&nonce, name, device_id),
            #[cfg(not(target_arch = "wasm32"))]
            None => auth::transcript(&nonce, &self.exporter()?, device_id),
            #[cfg(target_arch = "wasm32")]
            None => {
                return Err(ClientError::Tls(
                    "a page cannot read the TLS exporter: sign the relay's name".into(),
                ));
            }
        };
        let signature = signer.sign(&transcript).await?;
        self.send_kind(client_frame::Kind::AuthResponse(v1::AuthResponse {
            signature: signature.to_vec(),
            relay_name: relay_name.unwrap_or_default().to_owned(),
        }))
        .await?;
        match self.expect_frame().await? {
            server_frame::Kind::AuthOk(ok) => Ok(ok),
            other => Err(unexpected(other)),
        }
    }

    /// The next frame's kind; a relay Error frame becomes [`ClientError::Relay`].
    pub async fn expect_frame(&mut self) -> Result<server_frame::Kind, ClientError> {
        match self.recv().await? {
            Some(v1::ServerFrame {
                kind: Some(server_frame::Kind::Error(e)),
            }) => Err(ClientError::relay(&e)),
            Some(v1::ServerFrame { kind: Some(k) }) => Ok(k),
            Some(v1::ServerFrame { kind: None }) => Err(ClientError::Protocol(
                "the relay sent a frame of unknown kind".into(),
            )),
            None => Err(ClientError::Closed("the relay closed the stream".into())),
        }
    }

    /// Finishes the sending side of the stream: no more frames from us
    /// (over the TCP fallback, [`RawConnection::close`] does that).
    pub fn finish(&mut self) {
        #[cfg(not(target_arch = "wasm32"))]
        if let Wire::Quic { send, .. } = &mut self.wire {
            let _ = send.finish();
        }
    }

    /// Finishes the stream, waits (briefly) until the relay has read all of
    /// it, and closes the connection politely.
    pub async fn close(self) {
        match self.wire {
            #[cfg(target_arch = "wasm32")]
            Wire::Web(w) => w.close(),
            #[cfg(not(target_arch = "wasm32"))]
            Wire::Quic {
                endpoint,
                conn,
                mut send,
                ..
            } => {
                if send.finish().is_ok() {
                    let _ = tokio::time::timeout(CLOSE_GRACE, send.stopped()).await;
                }
                conn.close(0u32.into(), b"bye");
                // On a shared endpoint other connections stay open: only
                // wait when this was the last one.
                if endpoint.open_connections() == 0 {
                    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
                }
            }
            #[cfg(not(target_arch = "wasm32"))]
            Wire::Ws { mut ws, .. } => {
                let _ = tokio::time::timeout(CLOSE_GRACE, ws.close()).await;
            }
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// Neither QUIC nor the TCP fallback connected.
fn both_failed(quic: &ClientError, tcp: &ClientError) -> ClientError {
    ClientError::Connect(format!(
        "neither QUIC ({quic}) nor the TCP fallback ({tcp}) got through"
    ))
}

fn unexpected(k: server_frame::Kind) -> ClientError {
    let name = match k {
        server_frame::Kind::AuthChallenge(_) => "AuthChallenge",
        server_frame::Kind::AuthOk(_) => "AuthOk",
        server_frame::Kind::Accepted(_) => "Accepted",
        server_frame::Kind::Deliver(_) => "Deliver",
        server_frame::Kind::SyncDone(_) => "SyncDone",
        server_frame::Kind::Error(_) => "Error",
        server_frame::Kind::Pong(_) => "Pong",
        server_frame::Kind::Draining(_) => "Draining",
        server_frame::Kind::Response(_) => "Response",
    };
    ClientError::Protocol(format!("unexpected {name} frame"))
}
