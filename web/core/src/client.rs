//! The class the page uses: a connected device, its events as JSON.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use herold_client::ClientConfig;
use herold_client::e2e::{Checkpoint, E2eClient, E2eEvent};
use herold_mls::MlsDevice;
use tokio::sync::mpsc;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(s: &str);
}

/// Runs when the module loads: a panic (a bug) is written to the page's
/// console before the module traps, instead of a bare "unreachable".
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        console_error(&format!("herold-web: {info}"))
    }));
}

/// A key for a new device: `seed` stays on the device, `public` is
/// enrolled.
#[wasm_bindgen(getter_with_clone)]
#[derive(Debug)]
pub struct DeviceKey {
    /// The private seed, 64 hex digits.
    pub seed: String,
    /// The public key, 64 hex digits.
    pub public: String,
}

/// A fresh device key.
#[wasm_bindgen(js_name = newDeviceKey)]
pub fn new_device_key() -> Result<DeviceKey, JsError> {
    let (seed, public) = crate::new_device_key().map_err(|e| JsError::new(&e))?;
    Ok(DeviceKey { seed, public })
}

/// The relay name the page signs for `url`.
#[wasm_bindgen(js_name = relayNameOf)]
pub fn relay_name_of(url: &str) -> Result<String, JsError> {
    crate::relay_name_of(url).map_err(|e| JsError::new(&e))
}

struct Inner {
    client: E2eClient,
    events: RefCell<Option<mpsc::UnboundedReceiver<E2eEvent>>>,
    /// The files of the messages handed to the page, by (conversation,
    /// seq): their keys never leave the module.
    files: RefCell<crate::FileMap>,
    /// The last checkpoint handed to the page, not yet taken.
    checkpoint: RefCell<Option<Checkpoint>>,
    /// Checkpoints taken and being kept by the page, by id: acknowledged
    /// once kept.
    taken: RefCell<HashMap<u64, Checkpoint>>,
}

/// A checkpoint for the page to keep ([`WebClient::take_checkpoint`]).
#[wasm_bindgen(getter_with_clone)]
#[derive(Debug)]
pub struct TakenCheckpoint {
    /// What to hand to [`WebClient::checkpoint_kept`] once kept.
    pub id: f64,
    /// The MLS state.
    pub image: Vec<u8>,
    /// The positions it covers (JSON), to hand back to
    /// [`WebClient::connect`].
    pub positions: String,
}

/// A device of the web messenger, connected to its relay.
#[wasm_bindgen]
pub struct WebClient {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for WebClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebClient").finish_non_exhaustive()
    }
}

#[wasm_bindgen]
impl WebClient {
    /// Connects the device `device_id` to the relay whose WebSocket is at
    /// `url`, signing the relay's name; uploads its key packages so that
    /// members can add it. `mls_image` and `positions` are the last
    /// checkpoint the page kept ([`WebClient::take_checkpoint`]), or
    /// nothing for a new device; `files_image` the files' keys it kept
    /// ([`WebClient::files_image`]).
    ///
    /// `transports` is the relay's answer at `/v1/transports` (JSON), when
    /// the page could read it: the session then tries WebTransport first
    /// and the WebSocket where that does not get through.
    ///
    /// `key` is the device's key: a non-extractable WebCrypto Ed25519
    /// `CryptoKey` (the private half), or the seed (64 hex digits) where
    /// the browser has no Ed25519 in WebCrypto.
    pub async fn connect(
        url: String,
        device_id: String,
        key: JsValue,
        mls_image: Option<Vec<u8>>,
        transports: Option<String>,
        files_image: Option<Vec<u8>>,
        positions: Option<String>,
    ) -> Result<WebClient, JsError> {
        let name = crate::relay_name_of(&url).map_err(|e| JsError::new(&e))?;
        let (key, web_key) = match key.as_string() {
            Some(seed_hex) => (
                crate::device_key(&seed_hex).map_err(|e| JsError::new(&e))?,
                None,
            ),
            // The key never leaves WebCrypto; the Ed25519 key in the
            // configuration is a throwaway that signs nothing.
            None if key.is_object() => (
                herold_client::generate_key().map_err(|e| JsError::new(&e.to_string()))?,
                Some(herold_client::WebKey::new(key)),
            ),
            None => {
                return Err(JsError::new(
                    "the device key is neither a CryptoKey nor a seed",
                ));
            }
        };
        let mls = match mls_image {
            Some(image) => MlsDevice::from_image(image),
            None => MlsDevice::create_in_image(&device_id),
        }
        .map_err(|e| JsError::new(&format!("the MLS state: {e}")))?;
        let mut config = ClientConfig::web(&url, &name, &device_id, key);
        config.web_key = web_key;
        // Acknowledged once kept (checkpoints), from where the kept state
        // stands.
        config.app_acks = true;
        if let Some(p) = positions {
            config.cursors = crate::positions_from_json(&p).map_err(|e| JsError::new(&e))?;
        }
        if let Some(t) = transports {
            config.webtransport = crate::webtransport_at(&url, &t)
                .map_err(|e| JsError::new(&e))?
                .map(|(url, certificate_hashes)| herold_client::WebTransportAt {
                    url,
                    certificate_hashes,
                });
        }
        let mut client = E2eClient::connect(config, mls)
            .await
            .map_err(|e| JsError::new(&e.to_string()))?;
        let events = client.take_events();
        Ok(WebClient {
            inner: Rc::new(Inner {
                client,
                events: RefCell::new(Some(events)),
                files: RefCell::new(
                    files_image
                        .map(|i| crate::files_from_image(&i))
                        .unwrap_or_default(),
                ),
                checkpoint: RefCell::new(None),
                taken: RefCell::new(HashMap::new()),
            }),
        })
    }

    /// The transport of the moment: `"webtransport"`, `"websocket"`, or
    /// `null` while reconnecting.
    pub fn transport(&self) -> Option<String> {
        use herold_client::raw::Transport;
        self.inner.client.transport().map(|t| {
            match t {
                Transport::WebTransport => "webtransport",
                Transport::Tcp | Transport::Quic => "websocket",
            }
            .to_owned()
        })
    }

    /// The device's account.
    #[wasm_bindgen(js_name = accountId)]
    pub fn account_id(&self) -> String {
        self.inner.client.account_id().to_owned()
    }

    /// Sends `text` to a conversation, end-to-end encrypted; expires
    /// `expires_in_ms` from now (0: the conversation's retention). Resolves
    /// to the message's position.
    pub fn send(&self, conversation: String, text: String, expires_in_ms: f64) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let expires = if expires_in_ms > 0.0 {
                herold_client::rt::now_ms() + expires_in_ms as i64
            } else {
                0
            };
            let accepted = inner
                .client
                .send(&conversation, text.as_bytes(), expires)
                .await
                .map_err(|e| JsValue::from(JsError::new(&e.to_string())))?;
            Ok(JsValue::from_f64(accepted.seq as f64))
        })
    }

    /// The next event as JSON (see `event_json`); `null` once the client
    /// stopped. One caller at a time.
    #[wasm_bindgen(js_name = nextEvent)]
    pub fn next_event(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let Some(mut rx) = inner.events.borrow_mut().take() else {
                return Err(JsError::new("nextEvent is already waiting").into());
            };
            let event = rx.recv().await;
            *inner.events.borrow_mut() = Some(rx);
            if let Some(E2eEvent::Checkpoint(c)) = &event {
                // The newest supersedes the ones not taken yet.
                *inner.checkpoint.borrow_mut() = Some(c.clone());
            }
            if let Some(E2eEvent::Message(m)) = &event
                && let Some(f) = m.file()
            {
                inner
                    .files
                    .borrow_mut()
                    .insert((m.conversation_id.clone(), m.seq), f);
            }
            Ok(match event {
                Some(e) => JsValue::from_str(&crate::event_json(&e).to_string()),
                None => JsValue::NULL,
            })
        })
    }

    /// Sends a file (a photo, a document) to a conversation: encrypted
    /// here, uploaded on a WebSocket of its own, then its reference sent
    /// as a message. Resolves to the message's position.
    #[wasm_bindgen(js_name = sendFile)]
    pub fn send_file(
        &self,
        conversation: String,
        name: String,
        media_type: String,
        contents: Vec<u8>,
        expires_in_ms: f64,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let expires = if expires_in_ms > 0.0 {
                herold_client::rt::now_ms() + expires_in_ms as i64
            } else {
                0
            };
            let (accepted, file) = inner
                .client
                .send_file(&conversation, &contents, &name, &media_type, expires)
                .await
                .map_err(|e| JsValue::from(JsError::new(&e.to_string())))?;
            inner
                .files
                .borrow_mut()
                .insert((conversation, accepted.seq), file);
            Ok(JsValue::from_f64(accepted.seq as f64))
        })
    }

    /// The contents of the file of message `seq` in `conversation`, fetched
    /// and checked against the digest its sender signed.
    #[wasm_bindgen(js_name = fetchFile)]
    pub fn fetch_file(&self, conversation: String, seq: f64) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let file = inner
                .files
                .borrow()
                .get(&(conversation.clone(), seq as u64))
                .cloned()
                .ok_or_else(|| JsValue::from(JsError::new("no file in that message")))?;
            let contents = inner
                .client
                .fetch_file(&conversation, &file)
                .await
                .map_err(|e| JsValue::from(JsError::new(&e.to_string())))?;
            Ok(js_sys::Uint8Array::from(&contents[..]).into())
        })
    }

    /// The files of the messages the page still shows (`shown`, JSON
    /// `[[conversation, seq], ...]`) as an image to keep (IndexedDB, with
    /// the MLS image) and hand back to [`WebClient::connect`]; the module
    /// forgets the others.
    #[wasm_bindgen(js_name = filesImage)]
    pub fn files_image(&self, shown: String) -> Result<Vec<u8>, JsError> {
        crate::files_image(&mut self.inner.files.borrow_mut(), &shown).map_err(|e| JsError::new(&e))
    }

    /// The newest checkpoint handed out by [`WebClient::next_event`]
    /// (`{"type": "checkpoint"}`), unless taken already: the MLS state
    /// and the positions it covers, to keep (IndexedDB, in one
    /// transaction with the conversations shown) and then report with
    /// [`WebClient::checkpoint_kept`]. Until then the relay is not told
    /// that the deliveries it covers arrived, so a page closed before
    /// gets them again.
    #[wasm_bindgen(js_name = takeCheckpoint)]
    pub fn take_checkpoint(&self) -> Result<Option<TakenCheckpoint>, JsError> {
        let Some(c) = self.inner.checkpoint.borrow_mut().take() else {
            return Ok(None);
        };
        // The SDK's id (increasing; exact as a JavaScript number).
        let taken = TakenCheckpoint {
            id: c.id as f64,
            image: c.mls_image.clone(),
            positions: crate::positions_json(&c.positions),
        };
        self.inner.taken.borrow_mut().insert(c.id, c);
        Ok(Some(taken))
    }

    /// The checkpoint `id` is kept: the relay is told that the deliveries
    /// it covers arrived.
    #[wasm_bindgen(js_name = checkpointKept)]
    pub fn checkpoint_kept(&self, id: f64) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let Some(c) = inner.taken.borrow_mut().remove(&(id as u64)) else {
                return Err(JsError::new("no such checkpoint taken").into());
            };
            inner
                .client
                .ack_checkpoint(&c)
                .await
                .map_err(|e| JsValue::from(JsError::new(&e.to_string())))?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The title members gave the conversation, if any.
    pub fn title(&self, conversation: &str) -> Option<String> {
        self.inner.client.title(conversation)
    }
}
