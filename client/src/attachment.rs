//! End-to-end encryption of attachments (photos, documents): the first step
//! of docs/attachments.md. A file is encrypted on the sending device with a
//! fresh key, in chunks, so that a 100 MB video never sits in memory whole
//! and an upload can resume at a chunk boundary. The key and the digest of
//! the ciphertext travel inside the MLS message ([`FileRef`]); the relay
//! stores and serves ciphertext it cannot read, and a recipient checks the
//! digest of what it fetched before it trusts a byte.
//!
//! Each chunk is AES-256-GCM under the file's key with the nonce
//! `chunk index (u64, big-endian) | 0 0 0 | last (0 or 1)` (the STREAM
//! construction): chunks cannot be reordered, dropped from the end or
//! appended to without the decryption failing. A key is used for one file
//! only, so counter nonces never repeat.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

/// Plaintext bytes in every chunk but the last.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Bytes the encryption adds to each chunk (the GCM tag).
pub const TAG_BYTES: usize = 16;
/// Ciphertext bytes of every chunk but the last.
pub const SEALED_CHUNK_BYTES: usize = CHUNK_BYTES + TAG_BYTES;
// The relay stores attachments in chunks of this size: a resumed upload
// starts at a chunk of the encryption.
const _: () = assert!(SEALED_CHUNK_BYTES == herold_proto::ATTACHMENT_CHUNK_BYTES as usize);
/// Bytes of a file key.
pub const KEY_BYTES: usize = 32;

/// What went wrong with an attachment's encryption.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachmentError {
    /// The ciphertext was changed, cut short, reordered or made with
    /// another key.
    #[error("chunk {index} of the attachment does not decrypt: changed, cut or another key")]
    Tampered {
        /// The chunk.
        index: u64,
    },
    /// What was fetched is not what the sender encrypted.
    #[error("the attachment's digest does not match the one in its message")]
    DigestMismatch,
    /// A chunk of the wrong size, or a chunk after the last.
    #[error("{0}")]
    Framing(String),
    /// A file reference that does not parse.
    #[error("malformed file reference: {0}")]
    Malformed(String),
    /// No randomness for a key.
    #[error("no randomness for the file key: {0}")]
    Random(String),
}

/// The nonce of chunk `index`.
fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Ciphertext bytes of a file of `plaintext` bytes.
pub fn sealed_len(plaintext: u64) -> u64 {
    let chunk = CHUNK_BYTES as u64;
    let chunks = plaintext / chunk + 1;
    plaintext + chunks * TAG_BYTES as u64
}

/// Encrypts a file chunk by chunk with a fresh key.
pub struct Encryptor {
    cipher: Aes256Gcm,
    key: [u8; KEY_BYTES],
    index: u64,
    digest: Sha256,
    done: bool,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// A new file key from the system's randomness.
    pub fn new() -> Result<Self, AttachmentError> {
        let mut key = [0u8; KEY_BYTES];
        getrandom::fill(&mut key).map_err(|e| AttachmentError::Random(e.to_string()))?;
        Ok(Self {
            cipher: Aes256Gcm::new(&key.into()),
            key,
            index: 0,
            digest: Sha256::new(),
            done: false,
        })
    }

    /// The file key (for the [`FileRef`]).
    pub fn key(&self) -> [u8; KEY_BYTES] {
        self.key
    }

    /// Encrypts the next chunk: exactly [`CHUNK_BYTES`] of plaintext, or
    /// at most that for the `last` one (which may be empty).
    pub fn chunk(&mut self, plaintext: &[u8], last: bool) -> Result<Vec<u8>, AttachmentError> {
        if self.done {
            return Err(AttachmentError::Framing("a chunk after the last".into()));
        }
        if plaintext.len() > CHUNK_BYTES || (!last && plaintext.len() != CHUNK_BYTES) {
            return Err(AttachmentError::Framing(format!(
                "a chunk of {} bytes: every chunk but the last has {CHUNK_BYTES}",
                plaintext.len()
            )));
        }
        let sealed = self
            .cipher
            .encrypt(&Nonce::from(nonce(self.index, last)), plaintext)
            .map_err(|_| AttachmentError::Framing("encryption failed".into()))?;
        self.digest.update(&sealed);
        self.index += 1;
        self.done = last;
        Ok(sealed)
    }

    /// The SHA-256 of the whole ciphertext, once the last chunk is out.
    pub fn finish(self) -> Result<[u8; 32], AttachmentError> {
        if !self.done {
            return Err(AttachmentError::Framing("the last chunk is missing".into()));
        }
        Ok(self.digest.finalize().into())
    }
}

/// Decrypts a file chunk by chunk and checks its digest at the end.
pub struct Decryptor {
    cipher: Aes256Gcm,
    index: u64,
    digest: Sha256,
    done: bool,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Decryptor {
    /// For the file encrypted with `key`.
    pub fn new(key: &[u8; KEY_BYTES]) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
            index: 0,
            digest: Sha256::new(),
            done: false,
        }
    }

    /// Decrypts the next chunk ([`SEALED_CHUNK_BYTES`], or at most that
    /// for the `last` one). A caller that does not know whether a chunk is
    /// the last can tell by the ciphertext's total length
    /// ([`FileRef::sealed_size`]).
    pub fn chunk(&mut self, sealed: &[u8], last: bool) -> Result<Vec<u8>, AttachmentError> {
        if self.done {
            return Err(AttachmentError::Framing("a chunk after the last".into()));
        }
        if sealed.len() < TAG_BYTES
            || sealed.len() > SEALED_CHUNK_BYTES
            || (!last && sealed.len() != SEALED_CHUNK_BYTES)
        {
            return Err(AttachmentError::Framing(format!(
                "a sealed chunk of {} bytes: every chunk but the last has {SEALED_CHUNK_BYTES}",
                sealed.len()
            )));
        }
        let index = self.index;
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce(index, last)), sealed)
            .map_err(|_| AttachmentError::Tampered { index })?;
        self.digest.update(sealed);
        self.index += 1;
        self.done = last;
        Ok(plain)
    }

    /// Checks the ciphertext's digest against the one the sender put in
    /// its message; the file is whole and as sent when this is Ok.
    pub fn finish(self, expected: &[u8; 32]) -> Result<(), AttachmentError> {
        if !self.done {
            return Err(AttachmentError::Framing(
                "the attachment ends before its last chunk".into(),
            ));
        }
        let got: [u8; 32] = self.digest.finalize().into();
        if &got != expected {
            return Err(AttachmentError::DigestMismatch);
        }
        Ok(())
    }
}

/// Encrypts a whole file in memory: (ciphertext, its [`FileRef`] without
/// id, name or media type).
pub fn seal(plaintext: &[u8]) -> Result<(Vec<u8>, FileRef), AttachmentError> {
    let mut enc = Encryptor::new()?;
    let mut out =
        Vec::with_capacity(usize::try_from(sealed_len(plaintext.len() as u64)).unwrap_or(0));
    let mut chunks = plaintext.chunks(CHUNK_BYTES).peekable();
    if chunks.peek().is_none() || plaintext.len().is_multiple_of(CHUNK_BYTES) {
        // Whole chunks only (or none): an empty last chunk marks the end.
        for c in chunks {
            out.extend(enc.chunk(c, false)?);
        }
        out.extend(enc.chunk(&[], true)?);
    } else {
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            out.extend(enc.chunk(c, last)?);
        }
    }
    let key = enc.key();
    let sha256 = enc.finish()?;
    Ok((
        out,
        FileRef {
            id: Vec::new(),
            key,
            sha256,
            size: plaintext.len() as u64,
            name: String::new(),
            media_type: String::new(),
        },
    ))
}

/// Decrypts a whole file fetched for `file` and checks its digest.
pub fn open(sealed: &[u8], file: &FileRef) -> Result<Vec<u8>, AttachmentError> {
    if sealed.len() as u64 != file.sealed_size() {
        return Err(AttachmentError::Framing(format!(
            "{} bytes fetched; the file has {}",
            sealed.len(),
            file.sealed_size()
        )));
    }
    // A sealed file never ends on a chunk boundary (its last chunk is
    // shorter, an empty one if need be), so the last piece is the last.
    let mut dec = Decryptor::new(&file.key);
    let mut out = Vec::with_capacity(usize::try_from(file.size).unwrap_or(0));
    let mut chunks = sealed.chunks(SEALED_CHUNK_BYTES).peekable();
    while let Some(c) = chunks.next() {
        out.extend(dec.chunk(c, chunks.peek().is_none())?);
    }
    dec.finish(&file.sha256)?;
    Ok(out)
}

/// A sender's file name made safe as one path component on the
/// recipient's disk: no directories, no leading dots, no control
/// characters, at most 200 characters; "file" if nothing is left.
pub fn safe_file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').trim();
    if cleaned.is_empty() {
        "file".to_owned()
    } else {
        cleaned.chars().take(200).collect()
    }
}

/// What a recipient needs to fetch and read an attachment: it travels
/// inside the MLS message, so only members see key, digest and name.
#[derive(Clone, PartialEq, Eq)]
pub struct FileRef {
    /// The relay's unguessable id of the ciphertext.
    pub id: Vec<u8>,
    /// The file key.
    pub key: [u8; KEY_BYTES],
    /// SHA-256 of the whole ciphertext.
    pub sha256: [u8; 32],
    /// Plaintext bytes.
    pub size: u64,
    /// The file's name, as the sender's app gave it (may be empty).
    pub name: String,
    /// Its media type, e.g. `image/jpeg` (may be empty).
    pub media_type: String,
}

impl std::fmt::Debug for FileRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("FileRef")
            .field("id", &hex::encode(&self.id))
            .field("sha256", &hex::encode(self.sha256))
            .field("size", &self.size)
            .field("name", &self.name)
            .field("media_type", &self.media_type)
            .finish_non_exhaustive()
    }
}

const REF_MAGIC: &[u8; 4] = b"HFR1";
/// Longest id, name and media type in a [`FileRef`].
const MAX_ID_BYTES: usize = 64;
const MAX_NAME_BYTES: usize = 255;
const MAX_MEDIA_TYPE_BYTES: usize = 127;

impl FileRef {
    /// Ciphertext bytes the relay holds for it.
    pub fn sealed_size(&self) -> u64 {
        sealed_len(self.size)
    }

    /// `"HFR1" | id (u8 length) | key | sha256 | size (u64) | name (u8
    /// length) | media type (u8 length)`, all lengths checked.
    pub fn encode(&self) -> Result<Vec<u8>, AttachmentError> {
        let mut out = REF_MAGIC.to_vec();
        put(&mut out, &self.id, MAX_ID_BYTES, "id")?;
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.sha256);
        out.extend_from_slice(&self.size.to_be_bytes());
        put(&mut out, self.name.as_bytes(), MAX_NAME_BYTES, "name")?;
        put(
            &mut out,
            self.media_type.as_bytes(),
            MAX_MEDIA_TYPE_BYTES,
            "media type",
        )?;
        Ok(out)
    }

    /// Parses [`FileRef::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, AttachmentError> {
        let bad = |why: &str| AttachmentError::Malformed(why.to_owned());
        let rest = bytes
            .strip_prefix(REF_MAGIC)
            .ok_or_else(|| bad("not a file reference"))?;
        let (id, rest) = take_short(rest, MAX_ID_BYTES, "id")?;
        let (key, rest) = rest
            .split_first_chunk::<KEY_BYTES>()
            .ok_or_else(|| bad("no key"))?;
        let (sha256, rest) = rest
            .split_first_chunk::<32>()
            .ok_or_else(|| bad("no digest"))?;
        let (size, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| bad("no size"))?;
        let (name, rest) = take_short(rest, MAX_NAME_BYTES, "name")?;
        let (media_type, rest) = take_short(rest, MAX_MEDIA_TYPE_BYTES, "media type")?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let text = |b: &[u8], what: &str| {
            String::from_utf8(b.to_vec()).map_err(|_| bad(&format!("the {what} is not UTF-8")))
        };
        Ok(Self {
            id: id.to_vec(),
            key: *key,
            sha256: *sha256,
            size: u64::from_be_bytes(*size),
            name: text(name, "name")?,
            media_type: text(media_type, "media type")?,
        })
    }
}

fn put(out: &mut Vec<u8>, b: &[u8], max: usize, what: &str) -> Result<(), AttachmentError> {
    if b.len() > max {
        return Err(AttachmentError::Malformed(format!(
            "the {what} has {} bytes; at most {max}",
            b.len()
        )));
    }
    out.push(u8::try_from(b.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(b);
    Ok(())
}

fn take_short<'a>(
    b: &'a [u8],
    max: usize,
    what: &str,
) -> Result<(&'a [u8], &'a [u8]), AttachmentError> {
    let bad = |why: String| AttachmentError::Malformed(why);
    let (&len, rest) = b.split_first().ok_or_else(|| bad(format!("no {what}")))?;
    let len = usize::from(len);
    if len > max {
        return Err(bad(format!("the {what} has {len} bytes; at most {max}")));
    }
    if rest.len() < len {
        return Err(bad(format!("the {what} is cut short")));
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn file(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn files_of_every_shape_come_back_intact() {
        for n in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES,
            5 * 1024 * 1024 + 17,
        ] {
            let plain = file(n);
            let (sealed, r) = seal(&plain).unwrap();
            assert_eq!(sealed.len() as u64, sealed_len(n as u64), "{n}");
            assert_eq!(sealed.len() as u64, r.sealed_size(), "{n}");
            assert_eq!(r.sha256, <[u8; 32]>::from(Sha256::digest(&sealed)), "{n}");
            assert_eq!(open(&sealed, &r).unwrap(), plain, "{n}");
        }
    }

    #[test]
    fn two_files_never_share_a_key() {
        let (a, ra) = seal(b"same").unwrap();
        let (b, rb) = seal(b"same").unwrap();
        assert_ne!(ra.key, rb.key);
        assert_ne!(a, b, "the same photo twice looks different to the relay");
    }

    #[test]
    fn a_changed_cut_or_reordered_file_is_refused() {
        let plain = file(3 * CHUNK_BYTES + 100);
        let (sealed, r) = seal(&plain).unwrap();

        let mut flipped = sealed.clone();
        flipped[SEALED_CHUNK_BYTES + 5] ^= 1;
        assert_eq!(
            open(&flipped, &r).unwrap_err(),
            AttachmentError::Tampered { index: 1 }
        );

        // Cut short and declared shorter: the chunk that is now last was
        // not sealed as the last.
        let cut = &sealed[..SEALED_CHUNK_BYTES + 100];
        let mut short = r.clone();
        short.size = (CHUNK_BYTES + 100 - TAG_BYTES) as u64;
        assert_eq!(short.sealed_size(), cut.len() as u64);
        assert_eq!(
            open(cut, &short).unwrap_err(),
            AttachmentError::Tampered { index: 1 }
        );
        assert!(matches!(
            open(cut, &r).unwrap_err(),
            AttachmentError::Framing(_)
        ));

        let mut swapped = sealed.clone();
        let (first, rest) = swapped.split_at_mut(SEALED_CHUNK_BYTES);
        first.swap_with_slice(&mut rest[..SEALED_CHUNK_BYTES]);
        assert_eq!(
            open(&swapped, &r).unwrap_err(),
            AttachmentError::Tampered { index: 0 }
        );

        let mut other = r.clone();
        other.key[0] ^= 1;
        assert_eq!(
            open(&sealed, &other).unwrap_err(),
            AttachmentError::Tampered { index: 0 }
        );

        // Another sender's intact file under this reference.
        let (theirs, mut their_ref) = seal(&plain).unwrap();
        their_ref.sha256 = r.sha256;
        assert_eq!(
            open(&theirs, &their_ref).unwrap_err(),
            AttachmentError::DigestMismatch
        );
    }

    #[test]
    fn chunks_out_of_shape_are_refused() {
        let mut enc = Encryptor::new().unwrap();
        assert!(matches!(
            enc.chunk(&[0; 10], false),
            Err(AttachmentError::Framing(_))
        ));
        assert!(matches!(
            enc.chunk(&vec![0; CHUNK_BYTES + 1], true),
            Err(AttachmentError::Framing(_))
        ));
        enc.chunk(b"end", true).unwrap();
        assert!(enc.chunk(b"more", true).is_err(), "nothing after the last");
        enc.finish().unwrap();
        let unfinished = Encryptor::new().unwrap();
        assert!(unfinished.finish().is_err());
    }

    #[test]
    fn a_file_reference_round_trips_and_bad_ones_are_refused() {
        let (_, mut r) = seal(b"sick note").unwrap();
        r.id = vec![7; 16];
        r.name = "Krankmeldung.jpg".into();
        r.media_type = "image/jpeg".into();
        let bytes = r.encode().unwrap();
        assert_eq!(FileRef::decode(&bytes).unwrap(), r);
        assert!(
            !format!("{r:?}").contains(&hex::encode(r.key)),
            "no key in logs"
        );
        for cut in 0..bytes.len() {
            assert!(FileRef::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(FileRef::decode(&long).is_err());
        r.name = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(r.encode(), Err(AttachmentError::Malformed(_))));
    }
}
