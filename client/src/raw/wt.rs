//! A page's WebTransport session to the relay's QUIC port and its one
//! bidirectional stream, which carries the frame stream exactly as a
//! native device's control stream does (docs/web.md). The browser's
//! `WebTransport` is declared here rather than taken from `web-sys`, where
//! it is behind an unstable flag.

use bytes::Bytes;
use js_sys::{Array, Object, Promise, Reflect, Uint8Array};
use tokio::sync::mpsc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use super::web::Heard;
use crate::ClientError;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = WebTransport)]
    type JsWebTransport;
    #[wasm_bindgen(constructor, js_class = "WebTransport", catch)]
    fn new(url: &str, options: &Object) -> Result<JsWebTransport, JsValue>;
    #[wasm_bindgen(method, getter)]
    fn ready(this: &JsWebTransport) -> Promise;
    #[wasm_bindgen(method, getter)]
    fn closed(this: &JsWebTransport) -> Promise;
    #[wasm_bindgen(method, js_name = createBidirectionalStream)]
    fn create_bidirectional_stream(this: &JsWebTransport) -> Promise;
    #[wasm_bindgen(method, catch)]
    fn close(this: &JsWebTransport) -> Result<(), JsValue>;

    type JsBidiStream;
    #[wasm_bindgen(method, getter)]
    fn readable(this: &JsBidiStream) -> JsStream;
    #[wasm_bindgen(method, getter)]
    fn writable(this: &JsBidiStream) -> JsStream;

    type JsStream;
    #[wasm_bindgen(method, js_name = getReader, catch)]
    fn get_reader(this: &JsStream) -> Result<JsReader, JsValue>;
    #[wasm_bindgen(method, js_name = getWriter, catch)]
    fn get_writer(this: &JsStream) -> Result<JsWriter, JsValue>;

    type JsReader;
    #[wasm_bindgen(method)]
    fn read(this: &JsReader) -> Promise;

    type JsWriter;
    #[wasm_bindgen(method)]
    fn write(this: &JsWriter, chunk: &Uint8Array) -> Promise;

    #[wasm_bindgen(js_namespace = console, js_name = info)]
    fn console_info(s: &str);
}

/// Writes `s` to the page's console (why WebTransport was not used).
pub(super) fn log(s: &str) {
    console_info(&format!("herold: {s}"));
}

/// Closes the session when dropped, also while it is still opening (a
/// connection attempt given up).
struct Closing(JsWebTransport);

impl Drop for Closing {
    fn drop(&mut self) {
        let _ = self.0.close();
    }
}

/// An open session and its stream's writer; what the relay sends goes to
/// the queue given at [`WtStream::open`].
pub(super) struct WtStream {
    /// Closes the session when the stream goes.
    _transport: Closing,
    writer: JsWriter,
    tx: mpsc::UnboundedSender<Heard>,
}

fn js_error(what: &str, e: &JsValue) -> ClientError {
    let why = e
        .as_string()
        .or_else(|| {
            Reflect::get(e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| format!("{e:?}"));
    ClientError::Connect(format!("{what}: {why}"))
}

impl WtStream {
    /// Opens a session to `url` (pinning the certificates of `hashes`,
    /// SHA-256, if any) and its stream; what the relay sends goes to `tx`.
    pub(super) async fn open(
        url: &str,
        hashes: &[[u8; 32]],
        tx: mpsc::UnboundedSender<Heard>,
    ) -> Result<Self, ClientError> {
        let options = Object::new();
        if !hashes.is_empty() {
            let pins = Array::new();
            for h in hashes {
                let pin = Object::new();
                Reflect::set(&pin, &"algorithm".into(), &"sha-256".into())
                    .map_err(|e| js_error("WebTransport options", &e))?;
                Reflect::set(&pin, &"value".into(), &Uint8Array::from(&h[..]))
                    .map_err(|e| js_error("WebTransport options", &e))?;
                pins.push(&pin);
            }
            Reflect::set(&options, &"serverCertificateHashes".into(), &pins)
                .map_err(|e| js_error("WebTransport options", &e))?;
        }
        let transport =
            Closing(JsWebTransport::new(url, &options).map_err(|e| js_error("WebTransport", &e))?);
        // Settled either way once the session ends; awaited so that a
        // failure is not reported as an unhandled rejection.
        let closed = transport.0.closed();
        let on_closed = tx.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let _ = JsFuture::from(closed).await;
            let _ = on_closed.send(Heard::Closed);
        });
        JsFuture::from(transport.0.ready())
            .await
            .map_err(|e| js_error(&format!("WebTransport to {url}"), &e))?;
        let stream: JsBidiStream = JsFuture::from(transport.0.create_bidirectional_stream())
            .await
            .map_err(|e| js_error("opening the WebTransport stream", &e))?
            .unchecked_into();
        let reader = stream
            .readable()
            .get_reader()
            .map_err(|e| js_error("reading the WebTransport stream", &e))?;
        let writer = stream
            .writable()
            .get_writer()
            .map_err(|e| js_error("writing the WebTransport stream", &e))?;
        let heard = tx.clone();
        wasm_bindgen_futures::spawn_local(async move {
            loop {
                let next = match JsFuture::from(reader.read()).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = heard.send(Heard::Failed(format!(
                            "the WebTransport stream failed: {e:?}"
                        )));
                        return;
                    }
                };
                let done = Reflect::get(&next, &"done".into())
                    .ok()
                    .and_then(|d| d.as_bool())
                    .unwrap_or(true);
                if done {
                    let _ = heard.send(Heard::Closed);
                    return;
                }
                if let Ok(value) = Reflect::get(&next, &"value".into()) {
                    let bytes = Uint8Array::new(&value).to_vec();
                    if heard.send(Heard::Bytes(Bytes::from(bytes))).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Self {
            _transport: transport,
            writer,
            tx,
        })
    }

    /// Queues `bytes` on the stream (the stream keeps the order); a
    /// failed write ends the connection.
    pub(super) fn send(&self, bytes: &[u8]) {
        let written = self.writer.write(&Uint8Array::from(bytes));
        let tx = self.tx.clone();
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(e) = JsFuture::from(written).await {
                let _ = tx.send(Heard::Failed(format!(
                    "writing to the WebTransport stream failed: {e:?}"
                )));
            }
        });
    }
}

impl std::fmt::Debug for WtStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WtStream")
    }
}
