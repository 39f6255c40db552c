//! The authentication transcript.
//!
//! The device proves possession of its Ed25519 key by signing
//! `"herold/1 auth" || 0x00 || nonce || exporter || device_id` where `nonce`
//! is the relay's 32-byte challenge and `exporter` is 32 bytes of TLS keying
//! material exported with [`EXPORTER_LABEL`] and no context. The nonce makes
//! every challenge fresh; the exporter binds the signature to this TLS
//! session, so a signature observed on one connection is worthless on any
//! other, even with the same nonce.

/// Domain separation prefix of the transcript.
pub const TRANSCRIPT_PREFIX: &[u8] = b"herold/1 auth\0";
/// TLS exporter label (RFC 8446 section 7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-herold-auth";
/// Length of the nonce and of the exported keying material.
pub const NONCE_BYTES: usize = 32;

/// The bytes the device signs.
pub fn transcript(nonce: &[u8], exporter: &[u8], device_id: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(
        TRANSCRIPT_PREFIX.len() + nonce.len() + exporter.len() + device_id.len(),
    );
    t.extend_from_slice(TRANSCRIPT_PREFIX);
    t.extend_from_slice(nonce);
    t.extend_from_slice(exporter);
    t.extend_from_slice(device_id.as_bytes());
    t
}
