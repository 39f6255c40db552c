//! The relay's TCP port (docs/web.md): TLS 1.3 with the relay's
//! certificate, then HTTP/1.1. A WebSocket upgrade becomes a device's
//! session: the TCP fallback of native clients and the web messenger's
//! connection. Other requests get the web messenger's files (`files`,
//! with a strict Content-Security-Policy) or redeem an enrollment code
//! (`enroll`). A connection that does not upgrade ends at the
//! authentication deadline, as an unauthenticated one does.
//!
//! Browsers cannot read the TLS exporter, so a browser's device signs one
//! of the relay's names instead (docs/protocol.md, "Browsers"): the names
//! the relay answers to (`--web-name`; with `--dev`, localhost and the
//! loopback addresses at the TCP port). An upgrade from a page (it carries
//! `Origin`) is refused unless the page is the relay's own or one the
//! operator named (`--web-origin`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use herold_proto::auth;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming as Body;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::admin::EnrollmentService;
use crate::link::{DoorError, Link, Opened, TcpDoor};

mod enroll;
mod files;
mod transport;

pub(crate) use files::{Files, content_security_policy};
pub(crate) use transport::WebTransportOffer;

/// How long a client may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head (hyper's smallest buffer).
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// The door of the TCP port.
pub(crate) struct Web {
    pub tls: tokio_rustls::TlsAcceptor,
    /// The web messenger's files; `None`: the relay serves none.
    pub files: Option<Files>,
    /// The names browsers reach the relay by (`host[:port]`).
    pub names: Arc<[String]>,
    /// The pages that may open a WebSocket: `https://<name>` for each name
    /// and those the operator added.
    pub origins: Vec<String>,
    pub enrollment: EnrollmentService,
    /// The largest WebSocket message: a frame and its length prefix.
    pub max_message: usize,
    /// A WebSocket that sends nothing for this long is gone.
    pub idle: Duration,
    /// Where browsers find WebTransport (the QUIC port).
    pub webtransport: WebTransportOffer,
    /// The Content-Security-Policy of every answer
    /// ([`content_security_policy`]).
    pub csp: HeaderValue,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("names", &self.names)
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

use herold_proto::TRANSFER_PATH;

/// The upgrade a connection asked for (and whether for a transfer), taken
/// once its 101 is written.
type Slot = Mutex<Option<(OnUpgrade, bool)>>;

#[async_trait::async_trait]
impl TcpDoor for Web {
    async fn open(
        &self,
        tcp: tokio::net::TcpStream,
        from: SocketAddr,
        deadline: tokio::time::Instant,
    ) -> Result<Opened, DoorError> {
        let tls = match tokio::time::timeout_at(deadline, self.tls.accept(tcp)).await {
            Err(_) => return Err(DoorError::TimedOut),
            Ok(Err(e)) => return Err(DoorError::Failed(format!("TLS: {e}"))),
            Ok(Ok(tls)) => tls,
        };
        let exporter = tls
            .get_ref()
            .1
            .export_keying_material([0u8; auth::NONCE_BYTES], auth::EXPORTER_LABEL, Some(b""))
            .ok();
        let slot = Slot::default();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_REQUEST_HEAD);
        let served = http
            .serve_connection(
                TokioIo::new(tls),
                hyper::service::service_fn(|req| self.handle(req, from, &slot)),
            )
            .with_upgrades();
        let ended = tokio::time::timeout_at(deadline, served).await;
        let upgrade = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some((upgrade, transfer)) = upgrade else {
            // Plain HTTP, served (or a client that stopped asking).
            return Ok(Opened::Served);
        };
        match ended {
            Err(_) => return Err(DoorError::TimedOut),
            Ok(Err(e)) => return Err(DoorError::Failed(format!("HTTP: {e}"))),
            Ok(Ok(())) => {}
        }
        let upgraded = match tokio::time::timeout_at(deadline, upgrade).await {
            Err(_) => return Err(DoorError::TimedOut),
            Ok(Err(e)) => return Err(DoorError::Failed(format!("WebSocket upgrade: {e}"))),
            Ok(Ok(u)) => u,
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (link, send, recv) = Link::ws(ws, exporter, self.names.clone(), self.idle);
        Ok(if transfer {
            Opened::Transfer(link, send, recv)
        } else {
            Opened::Session(link, send, recv)
        })
    }
}

impl Web {
    async fn handle(
        &self,
        req: Request<Body>,
        from: SocketAddr,
        slot: &Slot,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let response = if wants_websocket(&req) {
            self.upgrade(req, slot)
        } else {
            match (req.method(), req.uri().path()) {
                (&Method::POST, enroll::PATH) => enroll::redeem(&self.enrollment, req, from).await,
                (&Method::GET, transport::TRANSPORTS_PATH) => self.webtransport.answer(),
                (&Method::GET | &Method::HEAD, path) => match &self.files {
                    Some(files) => files.get(path, req.method() == Method::HEAD),
                    None => text(
                        StatusCode::NOT_FOUND,
                        "this relay serves no web messenger (--web-root)",
                    ),
                },
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            }
        };
        Ok(files::secured(response, &self.csp))
    }

    /// Answers a WebSocket upgrade (RFC 6455 section 4.2.2) and keeps it
    /// for the session, unless the page that asks is not allowed.
    fn upgrade(&self, mut req: Request<Body>, slot: &Slot) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade is a GET",
            );
        }
        let version = req.headers().get(header::SEC_WEBSOCKET_VERSION);
        if version.is_none_or(|v| v.as_bytes() != b"13") {
            let mut r = text(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only");
            r.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return r;
        }
        let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
            return text(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
        };
        let accept = derive_accept_key(key.as_bytes());
        // Pages send their origin; native clients send none.
        if let Some(origin) = req.headers().get(header::ORIGIN)
            && !self
                .origins
                .iter()
                .any(|o| o.as_bytes() == origin.as_bytes())
        {
            return text(
                StatusCode::FORBIDDEN,
                "this page's origin may not connect to this relay (--web-origin)",
            );
        }
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return text(StatusCode::BAD_REQUEST, "one upgrade per connection");
        }
        let transfer = req.uri().path() == TRANSFER_PATH;
        *slot = Some((hyper::upgrade::on(&mut req), transfer));
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        r
    }
}

/// Whether `req` asks for a WebSocket.
fn wants_websocket(req: &Request<Body>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The names a relay answers to when the operator named none: in
/// development, localhost and the loopback addresses at `port`; otherwise
/// none (browsers cannot sign in until `--web-name` is set).
pub(crate) fn default_names(dev: bool, port: u16) -> Vec<String> {
    if dev {
        ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .map(|h| format!("{h}:{port}"))
            .collect()
    } else {
        Vec::new()
    }
}

/// The origins of pages that may connect: the relay's own (`https://` and
/// each name) and `extra`.
pub(crate) fn origins(names: &[String], extra: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| format!("https://{}", n.strip_suffix(":443").unwrap_or(n)))
        .chain(extra.iter().cloned())
        .collect()
}
