//! The page's connection to the relay, as a frame stream: the transport of
//! the SDK in a browser. WebTransport on the relay's QUIC port when it gets
//! through (`wt.rs`), else a WebSocket to its TCP port, where frames travel
//! in binary messages as on the native TCP fallback. A page cannot send
//! WebSocket pings, so a silent relay is asked with the protocol's own
//! `Ping` frame (on either).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herold_proto::codec::encode_frame;
use herold_proto::v1::{self, client_frame};
use tokio::sync::{mpsc, oneshot};
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

use super::{RawConnection, Wire};
use crate::ClientError;

/// How long the page's WebSocket is given to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) enum Heard {
    Bytes(Bytes),
    Closed,
    Failed(String),
}

/// An open WebSocket or WebTransport stream, and what feeds it into a
/// queue.
pub(crate) struct WebWire {
    io: Io,
    /// The URL of the relay's WebSocket (where transfers go).
    ws_url: String,
    heard: mpsc::UnboundedReceiver<Heard>,
    idle: Duration,
    /// Whether silence is answered with a `Ping` frame (a session's
    /// WebSocket; a transfer's carries raw bytes, where a frame would not
    /// belong).
    pings: bool,
}

/// What a [`WebWire`] runs on.
enum Io {
    Ws {
        ws: WebSocket,
        _on_message: Closure<dyn FnMut(MessageEvent)>,
        _on_close: Closure<dyn FnMut(CloseEvent)>,
        _on_error: Closure<dyn FnMut(Event)>,
        _on_open: Closure<dyn FnMut(Event)>,
    },
    Wt(super::wt::WtStream),
}

impl std::fmt::Debug for WebWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebWire")
            .field("url", &self.ws_url)
            .field("webtransport", &self.is_webtransport())
            .finish()
    }
}

type Opened = Rc<RefCell<Option<oneshot::Sender<Result<(), String>>>>>;

impl WebWire {
    async fn open(url: &str, idle: Duration, pings: bool) -> Result<Self, ClientError> {
        let ws = WebSocket::new(url)
            .map_err(|e| ClientError::Connect(format!("WebSocket to {url}: {e:?}")))?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        let (tx, heard) = mpsc::unbounded_channel();
        let (open_tx, open_rx) = oneshot::channel();
        let opened: Opened = Rc::new(RefCell::new(Some(open_tx)));
        let settle = |opened: &Opened, r: Result<(), String>| {
            if let Some(tx) = opened.borrow_mut().take() {
                let _ = tx.send(r);
            }
        };
        let on_open = {
            let opened = opened.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| settle(&opened, Ok(())))
        };
        let on_message = {
            let tx = tx.clone();
            Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
                let heard = match e.data().dyn_into::<js_sys::ArrayBuffer>() {
                    Ok(buf) => Heard::Bytes(Bytes::from(js_sys::Uint8Array::new(&buf).to_vec())),
                    Err(_) => Heard::Failed("the relay sent a text message".into()),
                };
                let _ = tx.send(heard);
            })
        };
        let on_close = {
            let (tx, opened) = (tx.clone(), opened.clone());
            let url = url.to_owned();
            Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
                settle(
                    &opened,
                    Err(format!("WebSocket to {url} closed (code {})", e.code())),
                );
                let _ = tx.send(Heard::Closed);
            })
        };
        let on_error = {
            let url = url.to_owned();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| {
                // The page is told no more than that (by design of the web
                // platform): the relay is unreachable or refused the page.
                settle(&opened, Err(format!("WebSocket to {url} failed")));
                let _ = tx.send(Heard::Failed("the WebSocket failed".into()));
            })
        };
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        ws.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        let wire = Self {
            io: Io::Ws {
                ws,
                _on_message: on_message,
                _on_close: on_close,
                _on_error: on_error,
                _on_open: on_open,
            },
            ws_url: url.to_owned(),
            heard,
            idle,
            pings,
        };
        match crate::rt::timeout(OPEN_TIMEOUT, open_rx).await {
            Ok(Ok(Ok(()))) => Ok(wire),
            Ok(Ok(Err(e))) => Err(ClientError::Connect(e)),
            Ok(Err(_)) => Err(ClientError::Connect("the WebSocket went away".into())),
            Err(_) => Err(ClientError::Connect(format!(
                "the WebSocket did not open within {} s",
                OPEN_TIMEOUT.as_secs()
            ))),
        }
    }

    /// A session's WebTransport stream to `url`, pinning `hashes` (none:
    /// the browser checks the certificate itself); `ws_url` is the
    /// relay's WebSocket, for transfers.
    async fn open_wt(
        url: &str,
        hashes: &[[u8; 32]],
        ws_url: &str,
        idle: Duration,
    ) -> Result<Self, ClientError> {
        let (tx, heard) = mpsc::unbounded_channel();
        let stream = super::wt::WtStream::open(url, hashes, tx).await?;
        Ok(Self {
            io: Io::Wt(stream),
            ws_url: ws_url.to_owned(),
            heard,
            idle,
            pings: true,
        })
    }

    pub(super) fn is_webtransport(&self) -> bool {
        matches!(self.io, Io::Wt(_))
    }

    pub(super) fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match &self.io {
            Io::Ws { ws, .. } => ws
                .send_with_u8_array(bytes)
                .map_err(|e| ClientError::Io(format!("WebSocket send: {e:?}"))),
            Io::Wt(s) => {
                s.send(bytes);
                Ok(())
            }
        }
    }

    pub(super) async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        let mut pinged = false;
        loop {
            match crate::rt::timeout(self.idle / 2, self.heard.recv()).await {
                Ok(Some(Heard::Bytes(b))) => return Ok(Some(b)),
                Ok(Some(Heard::Closed) | None) => return Ok(None),
                Ok(Some(Heard::Failed(e))) => return Err(ClientError::Closed(e)),
                Err(_) if !pinged && self.pings => {
                    // Silence: does the relay still answer? (Its Pong is a
                    // frame like any other.)
                    pinged = true;
                    let mut out = BytesMut::new();
                    let ping = v1::ClientFrame {
                        kind: Some(client_frame::Kind::Ping(v1::Ping { nonce: 0 })),
                    };
                    encode_frame(&ping, usize::MAX, &mut out)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    self.send(&out)?;
                }
                Err(_) => {
                    return Err(ClientError::Closed(format!(
                        "the relay was silent for {} s",
                        self.idle.as_secs()
                    )));
                }
            }
        }
    }

    /// The URL of a transfer's WebSocket on the same relay.
    pub(super) fn transfer_url(&self) -> String {
        let url = &self.ws_url;
        let origin_end = url
            .find("://")
            .and_then(|i| url[i + 3..].find('/').map(|j| i + 3 + j))
            .unwrap_or(url.len());
        format!("{}{}", &url[..origin_end], herold_proto::TRANSFER_PATH)
    }

    pub(super) fn idle(&self) -> Duration {
        self.idle
    }

    pub(super) fn close(self) {
        // Drop closes.
    }
}

impl Drop for WebWire {
    fn drop(&mut self) {
        // The handlers go with this value: the socket must not call them.
        // (A WebTransport stream closes itself when dropped.)
        if let Io::Ws { ws, .. } = &self.io {
            ws.set_onopen(None);
            ws.set_onmessage(None);
            ws.set_onclose(None);
            ws.set_onerror(None);
            let _ = ws.close();
        }
    }
}

impl RawConnection {
    /// Opens the page's WebSocket to `url` (`wss://relay.city.example/v1`);
    /// a relay silent for `idle` counts as lost.
    pub async fn connect_web(url: &str, idle: Duration) -> Result<Self, ClientError> {
        Ok(Self::on(Wire::Web(WebWire::open(url, idle, true).await?)))
    }

    /// Opens the page's connection: WebTransport at `wt` when given and
    /// it gets through within [`super::FALLBACK_AFTER`] (networks that
    /// block UDP never let it), else the WebSocket at `url`.
    pub async fn connect_browser(
        url: &str,
        wt: Option<&crate::WebTransportAt>,
        idle: Duration,
    ) -> Result<Self, ClientError> {
        if let Some(wt) = wt {
            let opening = WebWire::open_wt(&wt.url, &wt.certificate_hashes, url, idle);
            match crate::rt::timeout(super::FALLBACK_AFTER, opening).await {
                Ok(Ok(w)) => return Ok(Self::on(Wire::Web(w))),
                Ok(Err(e)) => super::wt::log(&format!("WebTransport: {e}; trying the WebSocket")),
                Err(_) => super::wt::log("WebTransport did not open in time; trying the WebSocket"),
            }
        }
        Self::connect_web(url, idle).await
    }

    /// Opens the WebSocket of one attachment transfer at `url`.
    pub(super) async fn connect_transfer_web(
        url: &str,
        idle: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Self::on(Wire::Web(WebWire::open(url, idle, false).await?)))
    }
}
