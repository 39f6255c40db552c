//! What signs a device's authentication (docs/protocol.md section 4): its
//! Ed25519 key, or in a browser a non-extractable WebCrypto Ed25519 key,
//! whose private half the page's script can use but never read
//! ([`WebKey`]).

use std::sync::Arc;

use ed25519_dalek::{Signer as _, SigningKey};

use crate::{ClientConfig, ClientError};

/// A device's authentication key.
#[derive(Debug, Clone)]
pub(crate) enum DeviceSigner {
    Key(Arc<SigningKey>),
    #[cfg(target_arch = "wasm32")]
    Web(WebKey),
}

impl DeviceSigner {
    /// The key `config` authenticates with: the WebCrypto key when a
    /// browser gave one, else the Ed25519 key.
    pub(crate) fn of(config: &ClientConfig) -> Self {
        #[cfg(target_arch = "wasm32")]
        if let Some(k) = &config.web_key {
            return Self::Web(k.clone());
        }
        Self::Key(Arc::new(config.key.clone()))
    }

    /// The Ed25519 signature of `message`.
    pub(crate) async fn sign(&self, message: &[u8]) -> Result<[u8; 64], ClientError> {
        match self {
            Self::Key(k) => Ok(k.sign(message).to_bytes()),
            #[cfg(target_arch = "wasm32")]
            Self::Web(k) => k.sign(message).await,
        }
    }
}

#[cfg(target_arch = "wasm32")]
pub use web::WebKey;

#[cfg(target_arch = "wasm32")]
mod web {
    use js_sys::{Promise, Uint8Array};
    use wasm_bindgen::prelude::*;
    use wasm_bindgen_futures::JsFuture;

    use crate::ClientError;

    #[wasm_bindgen]
    extern "C" {
        #[wasm_bindgen(js_namespace = ["crypto", "subtle"], js_name = sign, catch)]
        fn subtle_sign(
            algorithm: &str,
            key: &JsValue,
            data: &Uint8Array,
        ) -> Result<Promise, JsValue>;
    }

    /// The private half of a WebCrypto Ed25519 key pair (a `CryptoKey`,
    /// made non-extractable by the page and kept in IndexedDB as the
    /// browser keeps such keys).
    #[derive(Clone)]
    pub struct WebKey(JsValue);

    impl std::fmt::Debug for WebKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("WebKey")
        }
    }

    impl WebKey {
        /// The key `key` (a `CryptoKey` for Ed25519 that may sign).
        pub fn new(key: JsValue) -> Self {
            Self(key)
        }

        pub(crate) async fn sign(&self, message: &[u8]) -> Result<[u8; 64], ClientError> {
            let failed = |e: JsValue| ClientError::Tls(format!("WebCrypto could not sign: {e:?}"));
            let promise =
                subtle_sign("Ed25519", &self.0, &Uint8Array::from(message)).map_err(failed)?;
            let signature = JsFuture::from(promise).await.map_err(failed)?;
            Uint8Array::new(&signature)
                .to_vec()
                .try_into()
                .map_err(|_| ClientError::Tls("WebCrypto gave no Ed25519 signature".into()))
        }
    }
}
