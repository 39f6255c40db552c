//! Sender keys for large channels (docs/e2e.md, "Large channels"): a
//! publisher encrypts each post once with its current sender key and signs
//! it with its MLS signature key; the key reaches the members through the
//! channel's sub-groups, each an ordinary MLS group of a slice of the
//! members, as an application message there. Removing a member is a commit
//! in its sub-group plus a new sender key in every sub-group: bytes in the
//! thousands per member instead of a path through 7,000 leaves.
//!
//! A key message (the plaintext of an MLS application message in a
//! sub-group): `"HSK1" | channel (u16 length, UTF-8) | epoch (u64) | key`.
//! Its sender is the MLS sender; its signature key that sender's leaf's.
//!
//! A post: `"HSP1" | sender device (u16 length, UTF-8) | epoch (u64) |
//! counter (u64) | nonce (12) | ciphertext length (u32) | AES-128-GCM
//! ciphertext | Ed25519 signature (64)`. The counter grows with every post
//! of a sender key (the publisher's clock in milliseconds, or one more than
//! the last when that is higher) and a reader takes each only once: a post
//! delivered again, by a relay or anyone, is refused. The AEAD's associated data is the channel id, the
//! header and the caller's authenticated data (the expiry); the signature
//! covers a context string, the channel id, everything before it and the
//! caller's authenticated data. The key alone lets a member read posts, not
//! forge one: a member knows the key, not the publisher's signature key.

use openmls::prelude::*;
use openmls_traits::signatures::Signer as _;

use super::{MlsDevice, identity_text, unknown};
use crate::error::MlsError;
use crate::state::StateDb;

const KEY_MAGIC: &[u8; 4] = b"HSK1";
const POST_MAGIC: &[u8; 4] = b"HSP1";
const KEY_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const SIGNATURE_LEN: usize = 64;
const SIGNATURE_CONTEXT: &[u8] = b"herold channel post v1\0";
/// Sender key epochs kept per (channel, sender): the current one and the
/// one before, for posts still on their way when the key changed.
const KEPT_EPOCHS: usize = 2;
/// Settings key prefix of the stored sender keys.
const SETTING_PREFIX: &str = "sender_key/";

/// One sender key of one publisher device in one channel.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct SenderKey {
    epoch: u64,
    /// The publisher's own key: the last counter it used (not saved: the
    /// clock moves it past any earlier one). Another's: the highest counter
    /// read.
    counter: u64,
    key: Vec<u8>,
    /// The publisher's MLS signature key, as the sub-group's tree gave it.
    signature_key: Vec<u8>,
}

/// The sender keys of a device: (channel, sender device) -> newest last.
pub(super) type SenderKeys = std::collections::BTreeMap<(String, String), Vec<SenderKey>>;

/// A post decrypted by [`MlsDevice::decrypt_post`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// The publisher's device (signature checked).
    pub sender: String,
    /// The sender key epoch it was encrypted with.
    pub epoch: u64,
}

/// Whether `bytes` are a channel post ([`MlsDevice::encrypt_post`]) rather
/// than an MLS message: what a receiver checks before choosing how to read
/// an envelope of a large channel.
pub fn is_channel_post(bytes: &[u8]) -> bool {
    bytes.starts_with(POST_MAGIC)
}

impl MlsDevice {
    /// Makes a new sender key for this device in `channel` (after a
    /// membership change, or when the old one is due); returns its epoch.
    /// Distribute it with [`MlsDevice::sender_key_message`] in every
    /// sub-group before posting with it.
    pub fn rotate_sender_key(&mut self, channel: &str) -> Result<u64, MlsError> {
        let key = self
            .provider
            .rand()
            .random_vec(KEY_LEN)
            .map_err(|e| MlsError::openmls("making a sender key", e))?;
        let own = (channel.to_owned(), self.device_id.clone());
        let epoch = self.current_sender_key(&own).map_or(1, |k| k.epoch + 1);
        let entry = SenderKey {
            epoch,
            counter: 0,
            key,
            signature_key: self.signer.to_public_vec(),
        };
        self.keep_sender_key(own, entry)?;
        Ok(epoch)
    }

    /// This device's current sender key epoch in `channel`, if it has one.
    pub fn sender_key_epoch(&self, channel: &str) -> Option<u64> {
        self.current_sender_key(&(channel.to_owned(), self.device_id.clone()))
            .map(|k| k.epoch)
    }

    /// The newest sender key epoch this device holds of `sender` in
    /// `channel`: a post of an older epoch it has no key for never becomes
    /// readable here (keys only move forward).
    pub fn newest_sender_key(&self, channel: &str, sender: &str) -> Option<u64> {
        self.current_sender_key(&(channel.to_owned(), sender.to_owned()))
            .map(|k| k.epoch)
    }

    /// The key message that hands this device's current sender key for
    /// `channel` to the members of the sub-group `group_id`: an MLS
    /// application message there, with `aad` as its authenticated data
    /// (Herold's expiry, [`crate::encode_aad`]).
    pub fn sender_key_message(
        &mut self,
        channel: &str,
        group_id: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, MlsError> {
        let own = (channel.to_owned(), self.device_id.clone());
        let key = self
            .current_sender_key(&own)
            .ok_or_else(|| no_key(channel, &self.device_id, None))?;
        let mut payload = KEY_MAGIC.to_vec();
        put_text(&mut payload, channel)?;
        payload.extend_from_slice(&key.epoch.to_be_bytes());
        payload.extend_from_slice(&key.key);
        self.encrypt(group_id, &payload, aad)
    }

    /// Takes a key message a member `sender` sent in the sub-group
    /// `group_id` of `channel` (the plaintext of a processed application
    /// message); returns its epoch. The sender's signature key is taken from
    /// the sub-group's tree. A key message for another channel is refused.
    pub fn accept_sender_key(
        &mut self,
        group_id: &[u8],
        channel: &str,
        sender: &str,
        payload: &[u8],
    ) -> Result<u64, MlsError> {
        let bad = |why: &str| MlsError::BadSenderKey(why.to_owned());
        let mut r = Reader(payload);
        if r.take(4)? != KEY_MAGIC {
            return Err(bad("not a sender key message"));
        }
        let named = r.text()?;
        if named != channel {
            return Err(bad(&format!("for channel {named:?}, not {channel:?}")));
        }
        let epoch = r.u64()?;
        let key = r.take(KEY_LEN)?.to_vec();
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let group = self.groups.get(group_id).ok_or_else(|| unknown(group_id))?;
        let signature_key = group
            .mls
            .members()
            .find(|m| identity_text(&m.credential) == sender)
            .map(|m| m.signature_key)
            .ok_or_else(|| bad(&format!("{sender} is not a member of the sub-group")))?;
        let entry = SenderKey {
            epoch,
            counter: 0,
            key,
            signature_key,
        };
        self.keep_sender_key((channel.to_owned(), sender.to_owned()), entry)?;
        Ok(epoch)
    }

    /// Encrypts and signs a post for `channel` with this device's current
    /// sender key: one ciphertext for every member. `aad` is authenticated,
    /// not encrypted (Herold's expiry, [`crate::encode_aad`]).
    pub fn encrypt_post(
        &mut self,
        channel: &str,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, MlsError> {
        let own = (channel.to_owned(), self.device_id.clone());
        let key = self
            .current_sender_key(&own)
            .ok_or_else(|| no_key(channel, &self.device_id, None))?
            .clone();
        let nonce = self
            .provider
            .rand()
            .random_vec(NONCE_LEN)
            .map_err(|e| MlsError::openmls("making a nonce", e))?;
        let counter = key.counter.saturating_add(1).max(clock_ms());
        if let Some(k) = self.sender_keys.get_mut(&own).and_then(|v| v.last_mut()) {
            k.counter = counter;
        }
        let mut post = POST_MAGIC.to_vec();
        put_text(&mut post, &self.device_id)?;
        post.extend_from_slice(&key.epoch.to_be_bytes());
        post.extend_from_slice(&counter.to_be_bytes());
        post.extend_from_slice(&nonce);
        let associated = [channel.as_bytes(), &post, aad].concat();
        let ciphertext = self
            .provider
            .crypto()
            .aead_encrypt(
                AeadType::Aes128Gcm,
                &key.key,
                plaintext,
                &nonce,
                &associated,
            )
            .map_err(|e| MlsError::openmls("encrypting the post", e))?;
        let len = u32::try_from(ciphertext.len())
            .map_err(|_| MlsError::BadSenderKey("post too long".into()))?;
        post.extend_from_slice(&len.to_be_bytes());
        post.extend_from_slice(&ciphertext);
        let signature = self
            .signer
            .sign(&signed_bytes(channel, &post, aad))
            .map_err(|e| MlsError::openmls("signing the post", format!("{e:?}")))?;
        post.extend_from_slice(&signature);
        Ok(post)
    }

    /// Checks and decrypts a post in `channel`. Fails with
    /// [`MlsError::NoSenderKey`] while the key's message has not arrived
    /// (or never will: a device removed before the key was made), and with
    /// [`MlsError::BadSenderKey`] for a post that is malformed, not signed
    /// by the device it names, does not decrypt, or was read before (its
    /// counter is not above the highest read; the new highest is saved).
    pub fn decrypt_post(
        &mut self,
        channel: &str,
        post: &[u8],
        aad: &[u8],
    ) -> Result<Post, MlsError> {
        let bad = |why: &str| MlsError::BadSenderKey(why.to_owned());
        let mut r = Reader(post);
        if r.take(4)? != POST_MAGIC {
            return Err(bad("not a channel post"));
        }
        let sender = r.text()?.to_owned();
        let epoch = r.u64()?;
        let counter = r.u64()?;
        let nonce = r.take(NONCE_LEN)?;
        let header_len = post.len() - r.0.len();
        let len = r.u32()? as usize;
        let ciphertext = r.take(len)?;
        let body_len = post.len() - r.0.len();
        let signature = r.take(SIGNATURE_LEN)?;
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let id = (channel.to_owned(), sender.clone());
        let key = self
            .sender_keys
            .get(&id)
            .and_then(|keys| keys.iter().find(|k| k.epoch == epoch))
            .ok_or_else(|| no_key(channel, &sender, Some(epoch)))?;
        let crypto = self.provider.crypto();
        crypto
            .verify_signature(
                SignatureScheme::ED25519,
                &signed_bytes(channel, &post[..body_len], aad),
                &key.signature_key,
                signature,
            )
            .map_err(|_| bad(&format!("not signed by {sender}")))?;
        let associated = [channel.as_bytes(), &post[..header_len], aad].concat();
        let plaintext = crypto
            .aead_decrypt(
                AeadType::Aes128Gcm,
                &key.key,
                ciphertext,
                nonce,
                &associated,
            )
            .map_err(|_| bad("does not decrypt"))?;
        // This device's own posts: the counter is what it last sent.
        if sender != self.device_id {
            if counter <= key.counter {
                return Err(bad(&format!(
                    "a post read before (counter {counter}; read up to {})",
                    key.counter
                )));
            }
            let mut read = key.clone();
            read.counter = counter;
            self.keep_sender_key(id, read)?;
        }
        Ok(Post {
            plaintext,
            sender,
            epoch,
        })
    }

    fn current_sender_key(&self, id: &(String, String)) -> Option<&SenderKey> {
        self.sender_keys.get(id).and_then(|keys| keys.last())
    }

    /// Keeps `entry` (an epoch seen again replaces its key), the newest
    /// [`KEPT_EPOCHS`], in memory and in the state file.
    fn keep_sender_key(&mut self, id: (String, String), entry: SenderKey) -> Result<(), MlsError> {
        let mut keys = self.sender_keys.get(&id).cloned().unwrap_or_default();
        keys.retain(|k| k.epoch != entry.epoch);
        keys.push(entry);
        keys.sort_by_key(|k| k.epoch);
        let excess = keys.len().saturating_sub(KEPT_EPOCHS);
        keys.drain(..excess);
        if let (Some(db), Some(path)) = (&self.db, &self.path) {
            db.lock()
                .map_err(|_| MlsError::StoragePoisoned)?
                .set_setting(&setting_key(&id), Some(&encode_keys(&keys)))
                .map_err(|e| super::db_error(path, e))?;
        }
        self.sender_keys.insert(id, keys);
        Ok(())
    }
}

/// The sender keys kept in a state file.
pub(super) fn load(db: &StateDb) -> Result<SenderKeys, String> {
    let rows = db
        .settings_with_prefix(SETTING_PREFIX)
        .map_err(|e| format!("reading sender keys: {e:?}"))?;
    let mut out = SenderKeys::new();
    for (name, value) in rows {
        let id = name[SETTING_PREFIX.len()..]
            .split_once('\0')
            .map(|(c, s)| (c.to_owned(), s.to_owned()))
            .ok_or_else(|| format!("sender key row {name:?}"))?;
        let keys = decode_keys(&value).map_err(|e| format!("sender key row {name:?}: {e}"))?;
        out.insert(id, keys);
    }
    Ok(out)
}

/// The wall clock in unix milliseconds (0 before 1970).
fn clock_ms() -> u64 {
    u64::try_from(super::now_ms()).unwrap_or(0)
}

fn setting_key((channel, sender): &(String, String)) -> String {
    format!("{SETTING_PREFIX}{channel}\0{sender}")
}

fn encode_keys(keys: &[SenderKey]) -> Vec<u8> {
    let mut out = Vec::new();
    for k in keys {
        out.extend_from_slice(&k.epoch.to_be_bytes());
        out.extend_from_slice(&k.counter.to_be_bytes());
        out.extend_from_slice(&k.key);
        out.extend_from_slice(&(k.signature_key.len() as u16).to_be_bytes());
        out.extend_from_slice(&k.signature_key);
    }
    out
}

fn decode_keys(bytes: &[u8]) -> Result<Vec<SenderKey>, MlsError> {
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let epoch = r.u64()?;
        let counter = r.u64()?;
        let key = r.take(KEY_LEN)?.to_vec();
        let n = usize::from(u16::from_be_bytes(r.array()?));
        let signature_key = r.take(n)?.to_vec();
        out.push(SenderKey {
            epoch,
            counter,
            key,
            signature_key,
        });
    }
    Ok(out)
}

fn signed_bytes(channel: &str, body: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut out = SIGNATURE_CONTEXT.to_vec();
    out.extend_from_slice(&(channel.len() as u64).to_be_bytes());
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(aad);
    out
}

fn no_key(channel: &str, sender: &str, epoch: Option<u64>) -> MlsError {
    MlsError::NoSenderKey {
        channel: channel.to_owned(),
        sender: sender.to_owned(),
        epoch,
    }
}

fn put_text(out: &mut Vec<u8>, text: &str) -> Result<(), MlsError> {
    let len = u16::try_from(text.len())
        .map_err(|_| MlsError::BadSenderKey("an id over 65,535 bytes".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Reads the fields of a key message, a post or a stored key list.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MlsError> {
        if self.0.len() < n {
            return Err(MlsError::BadSenderKey("truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MlsError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u64(&mut self) -> Result<u64, MlsError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, MlsError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn text(&mut self) -> Result<&'a str, MlsError> {
        let n = usize::from(u16::from_be_bytes(self.array()?));
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| MlsError::BadSenderKey("an id is not UTF-8".into()))
    }
}

#[cfg(test)]
impl MlsDevice {
    /// A post that names `as_sender` and uses the key of `as_sender` this
    /// device holds, signed with this device's own key: what a member who
    /// knows a publisher's sender key could forge.
    pub(crate) fn forge_post_as(
        &mut self,
        channel: &str,
        as_sender: &str,
        plaintext: &[u8],
    ) -> Vec<u8> {
        let id = (channel.to_owned(), as_sender.to_owned());
        let kept = self.sender_keys.get(&id).cloned();
        let real = std::mem::replace(&mut self.device_id, as_sender.to_owned());
        let post = self.encrypt_post(channel, plaintext, &[]);
        self.device_id = real;
        if let Some(keys) = kept {
            self.sender_keys.insert(id, keys);
        }
        post.expect("the member holds the publisher's key")
    }
}
