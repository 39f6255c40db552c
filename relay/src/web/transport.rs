//! WebTransport (docs/web.md): a browser on the relay's QUIC port speaks
//! HTTP/3 (ALPN `h3`) and asks for a WebTransport session at
//! [`SESSION_PATH`] with an extended CONNECT. The session's first
//! bidirectional stream is then the device's frame stream, as a native
//! device's control stream is; the page signs one of the relay's names, as
//! on a WebSocket. One session per connection; any other request gets 404.
//!
//! Pages learn where WebTransport is, and which certificate to pin when
//! the relay runs on the development certificate, from [`TRANSPORTS_PATH`]
//! on the TCP port: JSON, served with the page itself, so it is as
//! trustworthy as the page.

use std::sync::Arc;

use bytes::Bytes;
use h3::ext::Protocol;
use h3_webtransport::server::{AcceptedBi, WebTransportSession};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Web;
use crate::link::{DoorError, H3Door, Link, Opened, WtSession};

/// Where a page opens its WebTransport session.
pub(crate) const SESSION_PATH: &str = "/v1";
/// Where a page reads how to reach the relay.
pub(crate) const TRANSPORTS_PATH: &str = "/v1/transports";

/// What the relay tells pages about WebTransport.
#[derive(Debug, Clone)]
pub(crate) struct WebTransportOffer {
    /// The QUIC port (on the host the page came from).
    pub port: u16,
    /// The SHA-256 of the certificate to pin (`serverCertificateHashes`);
    /// empty when browsers trust the relay's own.
    pub pinned: Vec<[u8; 32]>,
}

impl WebTransportOffer {
    /// The answer at [`TRANSPORTS_PATH`].
    pub(super) fn answer(&self) -> Response<Full<Bytes>> {
        let body = json!({
            "webtransport": {
                "port": self.port,
                "path": SESSION_PATH,
                "certificate_hashes": self.pinned.iter().map(hex::encode).collect::<Vec<_>>(),
            },
            "websocket": { "path": SESSION_PATH },
        });
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        // A new certificate comes with every start of the relay.
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        r
    }
}

/// Why a CONNECT is refused, with its status.
fn refusal(web: &Web, req: &Request<()>) -> Option<(StatusCode, &'static str)> {
    let webtransport = req.method() == Method::CONNECT
        && req.extensions().get::<Protocol>() == Some(&Protocol::WEB_TRANSPORT);
    if !webtransport {
        return Some((
            StatusCode::NOT_FOUND,
            "this port speaks WebTransport only; the web messenger is on TCP",
        ));
    }
    if req.uri().path() != SESSION_PATH {
        return Some((StatusCode::NOT_FOUND, "no WebTransport session here"));
    }
    // Browsers always send the page's origin.
    let allowed = req
        .headers()
        .get(header::ORIGIN)
        .is_some_and(|o| web.origins.iter().any(|a| a.as_bytes() == o.as_bytes()));
    if !allowed {
        return Some((
            StatusCode::FORBIDDEN,
            "this page's origin may not connect to this relay (--web-origin)",
        ));
    }
    None
}

/// Answers a request that is not ours with `status` and ends its stream.
async fn refuse<S>(mut stream: h3::server::RequestStream<S, Bytes>, status: StatusCode)
where
    S: h3::quic::BidiStream<Bytes>,
{
    let mut r = Response::new(());
    *r.status_mut() = status;
    if stream.send_response(r).await.is_ok() {
        let _ = stream.finish().await;
    }
}

fn failed(what: &str) -> impl FnOnce(String) -> DoorError + '_ {
    move |e| DoorError::Failed(format!("{what}: {e}"))
}

#[async_trait::async_trait]
impl H3Door for Web {
    async fn open_h3(
        &self,
        conn: quinn::Connection,
        deadline: tokio::time::Instant,
    ) -> Result<Opened, DoorError> {
        let opened = async {
            let mut h3 = h3::server::builder()
                .enable_webtransport(true)
                .enable_extended_connect(true)
                .enable_datagram(true)
                .max_webtransport_sessions(1)
                .send_grease(true)
                .build(h3_quinn::Connection::new(conn.clone()))
                .await
                .map_err(|e| failed("HTTP/3")(e.to_string()))?;
            // Requests until the WebTransport CONNECT (a browser may ask
            // for something else first, e.g. a favicon).
            let (req, stream) = loop {
                let resolver = h3
                    .accept()
                    .await
                    .map_err(|e| failed("HTTP/3")(e.to_string()))?
                    .ok_or_else(|| {
                        DoorError::Failed("HTTP/3 ended before a WebTransport session".into())
                    })?;
                let (req, stream) = resolver
                    .resolve_request()
                    .await
                    .map_err(|e| failed("HTTP/3 request")(e.to_string()))?;
                match refusal(self, &req) {
                    None => break (req, stream),
                    Some((status, why)) => {
                        tracing::debug!(%status, why, "HTTP/3 request refused");
                        refuse(stream, status).await;
                    }
                }
            };
            let session: Arc<WtSession> = Arc::new(
                WebTransportSession::accept(req, stream, h3)
                    .await
                    .map_err(|e| failed("WebTransport")(e.to_string()))?,
            );
            let first = loop {
                match session.accept_bi().await {
                    Ok(Some(AcceptedBi::BidiStream(_, s))) => break s,
                    Ok(Some(AcceptedBi::Request(_, stream))) => {
                        refuse(stream, StatusCode::NOT_FOUND).await;
                    }
                    Ok(None) => {
                        return Err(DoorError::Failed(
                            "the session ended before its first stream".into(),
                        ));
                    }
                    Err(e) => return Err(failed("WebTransport")(e.to_string())),
                }
            };
            Ok((session, first))
        };
        let (session, first) = tokio::time::timeout_at(deadline, opened)
            .await
            .map_err(|_| DoorError::TimedOut)??;
        // The session's other streams and requests: a page opens none, so
        // each is refused as it comes (which also reads the HTTP/3 control
        // stream).
        let serving = CancellationToken::new();
        tokio::spawn({
            let (session, stop) = (session.clone(), serving.clone());
            async move {
                loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        n = session.accept_bi() => n,
                    };
                    match next {
                        Ok(Some(AcceptedBi::BidiStream(_, s))) => drop(s),
                        Ok(Some(AcceptedBi::Request(_, stream))) => {
                            refuse(stream, StatusCode::NOT_FOUND).await;
                        }
                        Ok(None) | Err(_) => return,
                    }
                }
            }
        });
        let (link, send, recv) = Link::wt(conn, session, first, serving, self.names.clone());
        Ok(Opened::Session(link, send, recv))
    }
}
