//! A device's connection, whichever way it came: QUIC, the native
//! transport, or a WebSocket over TLS on TCP, the fallback for networks
//! that block UDP (docs/protocol.md, "TCP fallback"). Both carry the same byte stream of
//! length-prefixed frames, so the session above sees no difference. QUIC
//! also carries attachment streams; over the fallback a device has its
//! control stream only.
//!
//! A fallback connection is a TLS 1.3 stream (the relay's certificate,
//! ALPN `http/1.1`) upgraded to a WebSocket at any path; every binary
//! message is a piece of the frame stream (the relay writes each batch of
//! frames as one message). The TLS exporter that binds authentication to
//! the connection is the TLS stream's, as on QUIC; a browser, which cannot
//! read it, signs one of the relay's names instead ([`Link::names`]).
//! The same TCP port serves plain HTTP too (the web messenger's files,
//! enrollment), behind the [`TcpDoor`].
//!
//! A browser on QUIC speaks HTTP/3 (ALPN `h3`) and opens a WebTransport
//! session, whose first bidirectional stream carries the frame stream as
//! a native device's control stream does; the [`H3Door`] takes it there.
//! It signs a relay name, as on a WebSocket.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use herold_proto::auth;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

/// The WebSocket of a fallback connection: the TLS stream, upgraded by the
/// relay's HTTP server (`web`).
pub(crate) type Ws = WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// WebSocket close codes for the session's error codes: 4000 + the code
/// (4000–4999 is the range for applications).
const WS_CODE_BASE: u16 = 4000;

/// A connection that arrived: on QUIC, or on TCP with the door that turns
/// it into a session (or serves it as plain HTTP).
// Unboxed: QUIC is the common case, and it was passed by value before.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Incoming {
    /// A QUIC connection, and the way to WebTransport for a browser's.
    Quic(quinn::Incoming, Option<Arc<dyn H3Door>>),
    Tcp(
        tokio::net::TcpStream,
        std::net::SocketAddr,
        Arc<dyn TcpDoor>,
    ),
}

impl Incoming {
    pub(crate) fn remote_address(&self) -> std::net::SocketAddr {
        match self {
            Self::Quic(i, _) => i.remote_address(),
            Self::Tcp(_, a, _) => *a,
        }
    }
}

/// What a TCP connection became at the door.
#[derive(Debug)]
pub(crate) enum Opened {
    /// A WebSocket upgrade: the session's frame stream.
    Session(Link, Sender, Receiver),
    /// A WebSocket upgrade at the transfer path: one attachment transfer,
    /// opened by a ticket (`crate::tickets`).
    Transfer(Link, Sender, Receiver),
    /// Plain HTTP (the web messenger's files, an enrollment), served and
    /// ended.
    Served,
}

/// Why a TCP connection did not get through its door.
#[derive(Debug)]
pub(crate) enum DoorError {
    /// The handshake failed (TLS, HTTP, the upgrade).
    Failed(String),
    /// It did not finish by the deadline.
    TimedOut,
}

/// The way in on TCP (TLS, then HTTP with the WebSocket upgrade; `web`),
/// given here so that the session need not know the web server.
#[async_trait::async_trait]
pub(crate) trait TcpDoor: Send + Sync {
    /// Takes `tcp` from `from` through TLS and HTTP by `deadline`.
    async fn open(
        &self,
        tcp: tokio::net::TcpStream,
        from: std::net::SocketAddr,
        deadline: tokio::time::Instant,
    ) -> Result<Opened, DoorError>;
}

/// The way in for a browser on QUIC (HTTP/3, then a WebTransport
/// session; `web`), given here so that the session need not know HTTP/3.
#[async_trait::async_trait]
pub(crate) trait H3Door: Send + Sync {
    /// Takes `conn` (ALPN `h3`) through HTTP/3 to a WebTransport session
    /// and its first stream by `deadline`.
    async fn open_h3(
        &self,
        conn: quinn::Connection,
        deadline: tokio::time::Instant,
    ) -> Result<Opened, DoorError>;
}

/// A WebTransport session on an HTTP/3 connection.
pub(crate) type WtSession =
    h3_webtransport::server::WebTransportSession<h3_quinn::Connection, Bytes>;
/// A stream of a WebTransport session.
pub(crate) type WtStream = h3_webtransport::stream::BidiStream<h3_quinn::BidiStream<Bytes>, Bytes>;
type WtSend = h3_webtransport::stream::SendStream<h3_quinn::SendStream<Bytes>, Bytes>;
/// The receiving half of a WebTransport stream.
pub(crate) struct WtRecv(h3_webtransport::stream::RecvStream<h3_quinn::RecvStream, Bytes>);

impl std::fmt::Debug for WtRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WtRecv")
    }
}

/// The connection itself: what may close it from anywhere (a kick, a slow
/// consumer) and what authentication binds to.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    Quic(quinn::Connection),
    Ws(Arc<WsLink>),
    Wt(Arc<WtLink>),
}

/// A browser's WebTransport session: the QUIC connection under it, and
/// the session, kept as long as the link (its HTTP/3 control stream ends
/// with it).
pub(crate) struct WtLink {
    conn: quinn::Connection,
    _session: Arc<WtSession>,
    /// Ends the task that answers the session's other requests.
    _serving: tokio_util::sync::DropGuard,
    names: Arc<[String]>,
}

impl std::fmt::Debug for WtLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WtLink")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

/// The shared state of a fallback connection.
#[derive(Debug)]
pub(crate) struct WsLink {
    /// Cancelled once the connection ends, from either side.
    ended: CancellationToken,
    /// The code and reason to close with, once closed by the relay.
    close: Mutex<Option<(u32, String)>>,
    exporter: Option<[u8; auth::NONCE_BYTES]>,
    /// The relay names a browser may sign instead of the exporter.
    names: Arc<[String]>,
}

impl Link {
    /// A fallback connection over `ws`, whose TLS stream was `exporter`'s
    /// and where a browser may sign one of `names` instead: the link and
    /// its two halves.
    pub(crate) fn ws(
        ws: Ws,
        exporter: Option<[u8; auth::NONCE_BYTES]>,
        names: Arc<[String]>,
        idle: Duration,
    ) -> (Self, Sender, Receiver) {
        let link = Arc::new(WsLink {
            ended: CancellationToken::new(),
            close: Mutex::new(None),
            exporter,
            names,
        });
        let (sink, stream) = ws.split();
        (
            Self::Ws(link.clone()),
            Sender::Ws {
                sink,
                link: link.clone(),
            },
            Receiver::Ws { stream, link, idle },
        )
    }

    /// A WebTransport session on `conn` whose first stream is `stream`;
    /// `serving` answers the session's other requests until dropped.
    pub(crate) fn wt(
        conn: quinn::Connection,
        session: Arc<WtSession>,
        stream: WtStream,
        serving: CancellationToken,
        names: Arc<[String]>,
    ) -> (Self, Sender, Receiver) {
        use h3::quic::BidiStream as _;
        let (send, recv) = stream.split();
        let link = Arc::new(WtLink {
            conn,
            _session: session,
            _serving: serving.drop_guard(),
            names,
        });
        (
            Self::Wt(link),
            Sender::Wt(Box::new(send)),
            Receiver::Wt(WtRecv(recv)),
        )
    }

    /// The TLS exporter value the authentication transcript binds to
    /// (none on WebTransport: the browser signs a name).
    pub(crate) fn exporter(&self) -> Option<[u8; auth::NONCE_BYTES]> {
        match self {
            Self::Wt(_) => None,
            Self::Quic(conn) => {
                let mut out = [0u8; auth::NONCE_BYTES];
                conn.export_keying_material(&mut out, auth::EXPORTER_LABEL, b"")
                    .ok()
                    .map(|()| out)
            }
            Self::Ws(l) => l.exporter,
        }
    }

    /// The relay names a device may sign instead of the exporter: none on
    /// QUIC, where every client reads the exporter.
    pub(crate) fn names(&self) -> Arc<[String]> {
        match self {
            Self::Quic(_) => Arc::from(Vec::new()),
            Self::Ws(l) => l.names.clone(),
            Self::Wt(l) => l.names.clone(),
        }
    }

    /// Ends the connection at once with `code`: what the peer has not read
    /// yet is lost.
    pub(crate) fn close(&self, code: u32, reason: &str) {
        match self {
            Self::Quic(conn) => conn.close(quinn::VarInt::from_u32(code), reason.as_bytes()),
            Self::Wt(l) => l
                .conn
                .close(quinn::VarInt::from_u32(code), reason.as_bytes()),
            Self::Ws(l) => {
                l.close
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert_with(|| (code, reason.to_owned()));
                l.ended.cancel();
            }
        }
    }

    /// Waits until the connection has ended.
    pub(crate) async fn closed(&self) {
        match self {
            Self::Quic(conn) => {
                conn.closed().await;
            }
            Self::Wt(l) => {
                l.conn.closed().await;
            }
            Self::Ws(l) => l.ended.cancelled().await,
        }
    }

    /// Why the connection ended, for the metrics, when the relay did not
    /// end it itself.
    pub(crate) fn end_label(&self) -> &'static str {
        let quic = |conn: &quinn::Connection| match conn.close_reason() {
            Some(quinn::ConnectionError::TimedOut) => "timeout",
            Some(quinn::ConnectionError::Reset) => "reset",
            _ => "closed",
        };
        match self {
            Self::Quic(conn) => quic(conn),
            Self::Wt(l) => quic(&l.conn),
            Self::Ws(_) => "closed",
        }
    }

    /// Which transport, for the metrics.
    pub(crate) fn transport(&self) -> &'static str {
        match self {
            Self::Quic(_) => "quic",
            Self::Ws(_) => "websocket",
            Self::Wt(_) => "webtransport",
        }
    }
}

/// Why a write did not go through: the connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("the connection is closed: {0}")]
pub(crate) struct WriteError(String);

/// The relay's side of the frame stream.
#[derive(Debug)]
pub(crate) enum Sender {
    Quic(quinn::SendStream),
    Wt(Box<WtSend>),
    Ws {
        sink: SplitSink<Ws, Message>,
        link: Arc<WsLink>,
    },
}

impl Sender {
    /// Writes `chunks` in one go (over the fallback: one message).
    pub(crate) async fn write_all_chunks(
        &mut self,
        chunks: &mut [Bytes],
    ) -> Result<(), WriteError> {
        match self {
            Self::Quic(s) => s
                .write_all_chunks(chunks)
                .await
                .map_err(|e| WriteError(e.to_string())),
            Self::Wt(s) => {
                for c in chunks.iter_mut() {
                    s.write_all(&std::mem::take(c))
                        .await
                        .map_err(|e| WriteError(e.to_string()))?;
                }
                Ok(())
            }
            Self::Ws { sink, link } => {
                let len = chunks.iter().map(Bytes::len).sum();
                let mut message = Vec::with_capacity(len);
                for c in chunks.iter_mut() {
                    message.extend_from_slice(&std::mem::take(c));
                }
                let link = link.clone();
                tokio::select! {
                    r = sink.send(Message::Binary(message.into())) => r.map_err(|e| WriteError(e.to_string())),
                    () = link.ended.cancelled() => Err(WriteError("closed by the relay".into())),
                }
            }
        }
    }

    /// Ends the stream normally (over the fallback: a WebSocket close
    /// with code 1000), waiting up to `grace` for the peer to take it.
    pub(crate) async fn close_normally(&mut self, grace: Duration) {
        match self {
            Self::Quic(s) => {
                if s.finish().is_ok() {
                    let _ = tokio::time::timeout(grace, s.stopped()).await;
                }
            }
            Self::Wt(s) => {
                let _ = tokio::time::timeout(grace, s.shutdown()).await;
            }
            Self::Ws { sink, .. } => {
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                };
                let _ = tokio::time::timeout(grace, sink.send(Message::Close(Some(close)))).await;
            }
        }
    }

    /// Writes `frame`, ends the stream and waits up to `grace` for the peer
    /// to have read it all (over the fallback: a close message with the
    /// session's code).
    pub(crate) async fn finish_with(&mut self, frame: Bytes, code: u32, grace: Duration) {
        match self {
            Self::Quic(s) => {
                if s.write_all(&frame).await.is_ok() && s.finish().is_ok() {
                    let _ = tokio::time::timeout(grace, s.stopped()).await;
                }
            }
            Self::Wt(s) => {
                let _ = tokio::time::timeout(grace, async {
                    s.write_all(&frame).await?;
                    s.shutdown().await
                })
                .await;
            }
            Self::Ws { sink, .. } => {
                let close = CloseFrame {
                    code: CloseCode::from(
                        WS_CODE_BASE.saturating_add(u16::try_from(code).unwrap_or(999)),
                    ),
                    reason: "".into(),
                };
                let _ = tokio::time::timeout(grace, async {
                    if !frame.is_empty() {
                        sink.send(Message::Binary(frame)).await?;
                    }
                    sink.send(Message::Close(Some(close))).await
                })
                .await;
            }
        }
    }
}

/// The device's side of the frame stream.
#[derive(Debug)]
pub(crate) enum Receiver {
    Quic(quinn::RecvStream),
    Wt(WtRecv),
    Ws {
        stream: SplitStream<Ws>,
        link: Arc<WsLink>,
        /// Nothing heard for this long (not even a ping): the device is gone.
        idle: Duration,
    },
}

/// Why reading stopped other than at the stream's end.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The connection broke, timed out or was closed by the relay.
    Gone,
    /// The device sent something that is not part of the protocol.
    Protocol(&'static str),
}

impl Receiver {
    /// The next bytes of the stream; `Ok(None)` once the device ended it.
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, ReadError> {
        match self {
            Self::Quic(r) => match r.read_chunk(64 * 1024, true).await {
                Ok(c) => Ok(c.map(|c| c.bytes)),
                Err(_) => Err(ReadError::Gone),
            },
            Self::Wt(r) => {
                use h3::quic::RecvStream as _;
                std::future::poll_fn(|cx| r.0.poll_data(cx))
                    .await
                    .map_err(|_| ReadError::Gone)
            }
            Self::Ws { stream, link, idle } => loop {
                let next = tokio::select! {
                    n = tokio::time::timeout(*idle, stream.next()) => n,
                    () = link.ended.cancelled() => return Err(ReadError::Gone),
                };
                let ended = |r| {
                    link.ended.cancel();
                    r
                };
                match next {
                    Ok(Some(Ok(Message::Binary(b)))) => return Ok(Some(b)),
                    Ok(Some(Ok(Message::Close(_))) | None) => return ended(Ok(None)),
                    Ok(Some(Ok(Message::Text(_)))) => {
                        return ended(Err(ReadError::Protocol(
                            "text messages are not part of the protocol: frames go in binary messages",
                        )));
                    }
                    // Pings (answered by the WebSocket layer) and pongs.
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(_))) | Err(_) => return ended(Err(ReadError::Gone)),
                }
            },
        }
    }
}
