//! The authentication transcript.
//!
//! The device proves possession of its Ed25519 key by signing
//! `"herold/1 auth" || 0x00 || nonce || exporter || device_id` where `nonce`
//! is the relay's 32-byte challenge and `exporter` is 32 bytes of TLS keying
//! material exported with [`EXPORTER_LABEL`] and no context. The nonce makes
//! every challenge fresh; the exporter binds the signature to this TLS
//! session, so a signature observed on one connection is worthless on any
//! other, even with the same nonce.
//!
//! Browsers cannot read the exporter. Over the WebSocket transport a device
//! may bind to the relay's name instead ([`web_transcript`]): it signs the
//! `host[:port]` it connected to, and the relay accepts only its own names,
//! so a server that passes the relay's challenge on to a device gets a
//! signature the relay refuses.

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

/// Domain separation prefix of the relay-name transcript.
pub const WEB_TRANSCRIPT_PREFIX: &[u8] = b"herold/1 web auth\0";
/// Longest relay name a device may sign.
pub const MAX_RELAY_NAME_BYTES: usize = 253 + 6;

/// The bytes a device signs when it binds to the relay's name
/// (`host[:port]`, as the browser connected to it) instead of the TLS
/// exporter: `"herold/1 web auth" || 0x00 || nonce || relay_name || 0x00 ||
/// device_id`. A relay name never holds a zero byte ([`valid_relay_name`]).
pub fn web_transcript(nonce: &[u8], relay_name: &str, device_id: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(
        WEB_TRANSCRIPT_PREFIX.len() + nonce.len() + relay_name.len() + 1 + device_id.len(),
    );
    t.extend_from_slice(WEB_TRANSCRIPT_PREFIX);
    t.extend_from_slice(nonce);
    t.extend_from_slice(relay_name.as_bytes());
    t.push(0);
    t.extend_from_slice(device_id.as_bytes());
    t
}

/// Whether `name` is a relay name as a browser writes a URL's host:
/// lower-case letters, digits, `.`, `-`, `:` and brackets for IPv6, with an
/// optional port; nothing else, and at most [`MAX_RELAY_NAME_BYTES`].
pub fn valid_relay_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_RELAY_NAME_BYTES
        && name.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_transcripts_never_coincide() {
        let nonce = [7u8; NONCE_BYTES];
        let tls = transcript(&nonce, &[1u8; NONCE_BYTES], "bob.phone");
        let web = web_transcript(&nonce, "relay.example:7300", "bob.phone");
        assert_ne!(tls, web);
        assert!(web.starts_with(b"herold/1 web auth\0"));
        assert_eq!(
            web.len(),
            WEB_TRANSCRIPT_PREFIX.len() + NONCE_BYTES + "relay.example:7300".len() + 1 + 9
        );
        // The name and the device id are separated: moving bytes from one
        // to the other changes the transcript.
        assert_ne!(
            web_transcript(&nonce, "a.b", "c.d"),
            web_transcript(&nonce, "a.bc", ".d")
        );
    }

    #[test]
    fn relay_names_are_hosts_with_an_optional_port() {
        for ok in [
            "localhost:7300",
            "relay.city.example",
            "127.0.0.1:443",
            "[::1]:7300",
        ] {
            assert!(valid_relay_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Relay.example",
            "a b",
            "a\0b",
            "https://x",
            "x/y",
            &"a".repeat(300),
        ] {
            assert!(!valid_relay_name(bad), "{bad:?}");
        }
    }
}
