//! One connection to a relay, frame by frame: what [`crate::Client`] is built
//! on, and what protocol tests use to send exactly the bytes they want.

use std::net::SocketAddr;

use bytes::BytesMut;
use ed25519_dalek::{Signer, SigningKey};
use herold_proto::codec::{FrameDecoder, encode_frame};
use herold_proto::v1::{self, client_frame, server_frame};
use herold_proto::{PROTOCOL_VERSION, auth};

use crate::ClientError;

/// Largest frame the client accepts from a relay.
pub const CLIENT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// A client endpoint (one UDP socket) of the address family of `relay`.
pub fn client_endpoint(relay: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
    let bind: SocketAddr = if relay.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    };
    quinn::Endpoint::client(bind).map_err(|e| ClientError::Io(e.to_string()))
}

/// How long `close` waits for the relay to take the last frames.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// An open QUIC connection with its control stream.
#[derive(Debug)]
pub struct RawConnection {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    out: BytesMut,
    tap: Option<WireTap>,
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
    /// Connects to `relay`, pinning the certificate `fingerprint`, and opens
    /// the control stream, on an endpoint (UDP socket) of its own.
    pub async fn connect(relay: SocketAddr, fingerprint: [u8; 32]) -> Result<Self, ClientError> {
        let endpoint = client_endpoint(relay)?;
        Self::connect_via(&endpoint, relay, fingerprint).await
    }

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
        Ok(Self {
            endpoint: endpoint.clone(),
            conn,
            send,
            recv,
            decoder: FrameDecoder::new(CLIENT_MAX_FRAME_BYTES),
            out: BytesMut::new(),
            tap: None,
        })
    }

    /// Copies everything this connection sends and receives from now on
    /// into `tap`.
    pub fn set_tap(&mut self, tap: WireTap) {
        self.tap = Some(tap);
    }

    /// The underlying QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// The TLS exporter value the auth transcript binds to.
    pub fn exporter(&self) -> Result<[u8; 32], ClientError> {
        let mut out = [0u8; auth::NONCE_BYTES];
        self.conn
            .export_keying_material(&mut out, auth::EXPORTER_LABEL, b"")
            .map_err(|_| ClientError::Tls("TLS exporter unavailable".into()))?;
        Ok(out)
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &v1::ClientFrame) -> Result<(), ClientError> {
        self.out.clear();
        encode_frame(frame, usize::MAX, &mut self.out)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tap_bytes(&self.tap, &self.out);
        self.send
            .write_all(&self.out)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))
    }

    /// Sends raw bytes on the control stream (tests of malformed input).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))
    }

    /// Sends one client frame kind.
    pub async fn send_kind(&mut self, kind: client_frame::Kind) -> Result<(), ClientError> {
        self.send(&v1::ClientFrame { kind: Some(kind) }).await
    }

    /// The next frame from the relay; `Ok(None)` when the relay finished the
    /// stream. Cancel-safe: a cancelled call loses no data.
    pub async fn recv(&mut self) -> Result<Option<v1::ServerFrame>, ClientError> {
        loop {
            if let Some(f) = self
                .decoder
                .next_message::<v1::ServerFrame>()
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                return Ok(Some(f));
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => {
                    tap_bytes(&self.tap, &chunk.bytes);
                    self.decoder.extend(&chunk.bytes)
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(ClientError::Closed(e.to_string())),
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
        let sig = key.sign(&auth::transcript(&nonce, &self.exporter()?, device_id));
        self.send_kind(client_frame::Kind::AuthResponse(v1::AuthResponse {
            signature: sig.to_bytes().to_vec(),
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

    /// Finishes the sending side of the stream: no more frames from us.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Finishes the stream, waits (briefly) until the relay has read all of
    /// it, and closes the connection politely.
    pub async fn close(mut self) {
        if self.send.finish().is_ok() {
            let _ = tokio::time::timeout(CLOSE_GRACE, self.send.stopped()).await;
        }
        self.conn.close(0u32.into(), b"bye");
        // On a shared endpoint other connections stay open: only wait when
        // this was the last one.
        if self.endpoint.open_connections() == 0 {
            let _ = tokio::time::timeout(CLOSE_GRACE, self.endpoint.wait_idle()).await;
        }
    }
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
