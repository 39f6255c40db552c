//! The SDK of the web messenger: `herold-client` (connection, resync,
//! acknowledgements, reconnects) and its end-to-end layer (`E2eClient`,
//! MLS with openmls) compiled to WebAssembly, behind a small class for the
//! page's TypeScript (`WebClient`, wasm32 only). One implementation for
//! the CLI, the SDK and the browser: the page adds views, not protocol.
//!
//! What the page gets is JSON ([`event_json`]), so the TypeScript side
//! needs no generated bindings beyond the class. The helpers here build
//! natively as well, where `cargo test` checks them.

use herold_client::e2e::E2eEvent;
use serde_json::{Value, json};

#[cfg(target_arch = "wasm32")]
mod client;

/// The relay name a page signs for the WebSocket URL it connects to: the
/// URL's `host[:port]` in lower case, without the port when it is 443
/// (as `location.host` writes it). Only `wss://` URLs: the relay's port
/// is TLS.
pub fn relay_name_of(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("wss://")
        .ok_or_else(|| format!("{url:?} is not a wss:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_suffix(":443").unwrap_or(&lower);
    if herold_proto::auth::valid_relay_name(name) {
        Ok(name.to_owned())
    } else {
        Err(format!("{url:?} has no host the relay could be named by"))
    }
}

/// A WebTransport URL and the SHA-256 of the certificates it pins.
pub type WebTransportUrl = (String, Vec<[u8; 32]>);

/// Where the page finds the relay's WebTransport, from the relay's answer
/// at `/v1/transports` (`transports`, JSON) for the WebSocket at `url`:
/// the URL (`https://`, the WebSocket's host at the QUIC port) and the
/// SHA-256 of the certificates to pin; `None` when the relay offers none.
pub fn webtransport_at(url: &str, transports: &str) -> Result<Option<WebTransportUrl>, String> {
    let v: Value = serde_json::from_str(transports)
        .map_err(|e| format!("the relay's transports are not JSON: {e}"))?;
    let Some(wt) = v.get("webtransport") else {
        return Ok(None);
    };
    let port = wt
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or("the relay's WebTransport has no port")?;
    let path = wt.get("path").and_then(Value::as_str).unwrap_or("/v1");
    if !path.starts_with('/') {
        return Err(format!(
            "the relay's WebTransport path {path:?} is not absolute"
        ));
    }
    let name = relay_name_of(url)?;
    // `host[:port]`, the host perhaps an IPv6 address in brackets.
    let host = match name.strip_prefix('[') {
        Some(rest) => format!("[{}]", rest.split(']').next().unwrap_or_default()),
        None => name.split(':').next().unwrap_or_default().to_owned(),
    };
    let mut hashes = Vec::new();
    for h in wt
        .get("certificate_hashes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let hash = h
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or("a certificate hash of the relay's WebTransport is not 64 hex digits")?;
        hashes.push(hash);
    }
    Ok(Some((format!("https://{host}:{port}{path}"), hashes)))
}

/// The files of the messages a page still shows (`shown`, JSON
/// `[[conversation, seq], ...]`) out of `files`, as an image to keep across
/// a reload ([`files_from_image`]); `files` keeps those only. The image
/// holds the files' keys, as the MLS image holds the device's: it goes
/// where that goes (IndexedDB), nowhere else.
pub fn files_image(files: &mut FileMap, shown: &str) -> Result<Vec<u8>, String> {
    let shown: Vec<(String, u64)> =
        serde_json::from_str(shown).map_err(|e| format!("the shown messages: {e}"))?;
    let shown: std::collections::HashSet<(String, u64)> = shown.into_iter().collect();
    files.retain(|k, _| shown.contains(k));
    let mut entries = Vec::with_capacity(files.len());
    for ((conversation, seq), file) in files.iter() {
        let encoded = file.encode().map_err(|e| e.to_string())?;
        entries.push(json!({ "c": conversation, "s": seq, "r": hex::encode(encoded) }));
    }
    serde_json::to_vec(&entries).map_err(|e| e.to_string())
}

/// The files of a [`files_image`]; entries that do not read are left out.
pub fn files_from_image(image: &[u8]) -> FileMap {
    let entries: Vec<Value> = serde_json::from_slice(image).unwrap_or_default();
    entries
        .iter()
        .filter_map(|e| {
            let conversation = e.get("c")?.as_str()?.to_owned();
            let seq = e.get("s")?.as_u64()?;
            let bytes = hex::decode(e.get("r")?.as_str()?).ok()?;
            let file = herold_client::attachment::FileRef::decode(&bytes).ok()?;
            Some(((conversation, seq), file))
        })
        .collect()
}

/// A checkpoint's positions as the page keeps them (JSON).
pub fn positions_json(positions: &std::collections::HashMap<String, u64>) -> String {
    serde_json::to_string(positions).unwrap_or_else(|_| "{}".into())
}

/// The positions the page kept ([`positions_json`]).
pub fn positions_from_json(json: &str) -> Result<std::collections::HashMap<String, u64>, String> {
    serde_json::from_str(json).map_err(|e| format!("the kept positions: {e}"))
}

/// The files of the messages handed to the page, by (conversation, seq).
pub type FileMap = std::collections::HashMap<(String, u64), herold_client::attachment::FileRef>;

/// A new device key: the seed to keep (hex) and the public key to enroll
/// (hex), from the platform's randomness.
pub fn new_device_key() -> Result<(String, String), String> {
    let key = herold_client::generate_key().map_err(|e| e.to_string())?;
    Ok((
        hex::encode(key.to_bytes()),
        hex::encode(key.verifying_key().to_bytes()),
    ))
}

/// The device key from its seed (64 hex digits).
pub fn device_key(seed_hex: &str) -> Result<ed25519_dalek::SigningKey, String> {
    let seed: [u8; 32] = hex::decode(seed_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the device key must be 64 hex digits")?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// An event as the page reads it: `{"type": ..., ...}`. A message's
/// plaintext is UTF-8 text (what `herold send` sends); other bytes are
/// shown with replacement characters.
pub fn event_json(event: &E2eEvent) -> Value {
    match event {
        E2eEvent::Message(m) => {
            let mut v = json!({
                "type": "message",
                "conversation": m.conversation_id,
                "seq": m.seq,
                "sender_account": m.sender_account_id,
                "sender_device": m.sender_device_id,
                "sent_at_ms": m.server_time_ms,
                "expires_at_ms": m.expires_at_ms,
            });
            // A file: what the page shows of it; its key stays in the
            // WebAssembly module (`WebClient::fetch_file`).
            match m.file() {
                Some(f) => {
                    v["file"] = json!({
                        "name": f.name,
                        "media_type": f.media_type,
                        "size": f.size,
                    });
                    v["text"] = json!("");
                }
                None => v["text"] = json!(String::from_utf8_lossy(&m.plaintext)),
            }
            v
        }
        E2eEvent::GroupChanged {
            conversation_id,
            added,
            removed,
            title,
            ..
        } => json!({
            "type": "group_changed",
            "conversation": conversation_id,
            "added": added,
            "removed": removed,
            "title": title,
        }),
        E2eEvent::Joined {
            conversation_id, ..
        } => json!({ "type": "joined", "conversation": conversation_id }),
        E2eEvent::Removed {
            conversation_id, ..
        } => json!({ "type": "removed", "conversation": conversation_id }),
        E2eEvent::KeyReceived {
            conversation_id, ..
        } => json!({ "type": "key_received", "conversation": conversation_id }),
        E2eEvent::Restarted {
            conversation_id, ..
        } => json!({ "type": "restarted", "conversation": conversation_id }),
        E2eEvent::Unreadable {
            conversation_id,
            seq,
            reason,
        } => json!({
            "type": "unreadable",
            "conversation": conversation_id,
            "seq": seq,
            "reason": reason,
        }),
        E2eEvent::Synced => json!({ "type": "synced" }),
        // Its state stays in the module (`WebClient::take_checkpoint`).
        E2eEvent::Checkpoint(_) => json!({ "type": "checkpoint" }),
        E2eEvent::Disconnected { reason } => json!({ "type": "disconnected", "reason": reason }),
        E2eEvent::Stopped(e) => json!({ "type": "stopped", "reason": e.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn file(n: u8) -> herold_client::attachment::FileRef {
        let (_, mut f) = herold_client::attachment::seal(&[n; 100]).unwrap();
        f.name = format!("photo-{n}.png");
        f
    }

    #[test]
    fn the_files_of_shown_messages_outlive_a_reload_and_no_others_are_kept() {
        let mut files = FileMap::new();
        files.insert(("station-42".into(), 3), file(1));
        files.insert(("station-42".into(), 9), file(2));
        files.insert(("station-43".into(), 1), file(3));
        let image = files_image(
            &mut files,
            r#"[["station-42", 9], ["station-43", 1], ["gone", 5]]"#,
        )
        .unwrap();
        assert_eq!(files.len(), 2, "an expired message's file is forgotten");
        let back = files_from_image(&image);
        assert_eq!(back.len(), 2);
        let f = &back[&("station-42".to_owned(), 9)];
        assert_eq!(f.name, "photo-2.png");
        assert_eq!(
            f.encode().unwrap(),
            files[&("station-42".to_owned(), 9)].encode().unwrap()
        );
        assert!(files_image(&mut files, "not json").is_err());
        assert!(files_from_image(b"garbage").is_empty());
    }

    #[test]
    fn kept_positions_read_back() {
        let p: std::collections::HashMap<String, u64> =
            [("station-42".to_owned(), 7), ("news~3".to_owned(), 120)].into();
        assert_eq!(positions_from_json(&positions_json(&p)).unwrap(), p);
        assert!(positions_from_json("[1]").is_err());
    }

    #[test]
    fn webtransport_goes_to_the_websockets_host_at_the_quic_port() {
        let hash = "ab".repeat(32);
        let offer = format!(
            r#"{{"webtransport":{{"port":7301,"path":"/v1","certificate_hashes":["{hash}"]}}}}"#
        );
        let (url, hashes) = webtransport_at("wss://localhost:7300/v1", &offer)
            .unwrap()
            .unwrap();
        assert_eq!(url, "https://localhost:7301/v1");
        assert_eq!(hashes, vec![[0xab; 32]]);
        let (url, _) = webtransport_at("wss://[::1]:7300/v1", &offer)
            .unwrap()
            .unwrap();
        assert_eq!(url, "https://[::1]:7301/v1");
        let (url, hashes) = webtransport_at(
            "wss://relay.city.example/v1",
            r#"{"webtransport":{"port":443,"path":"/v1","certificate_hashes":[]}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(url, "https://relay.city.example:443/v1");
        assert!(hashes.is_empty());
    }

    #[test]
    fn a_relay_without_webtransport_or_with_a_bad_offer() {
        assert_eq!(
            webtransport_at("wss://localhost:7300/v1", r#"{"websocket":{}}"#).unwrap(),
            None
        );
        let bad = webtransport_at(
            "wss://localhost:7300/v1",
            r#"{"webtransport":{"port":7300,"certificate_hashes":["zz"]}}"#,
        )
        .unwrap_err();
        assert!(bad.contains("64 hex digits"), "{bad}");
        let bad = webtransport_at("wss://localhost:7300/v1", r#"{"webtransport":{}}"#).unwrap_err();
        assert!(bad.contains("no port"), "{bad}");
        assert!(webtransport_at("wss://localhost:7300/v1", "<html>").is_err());
    }

    #[test]
    fn the_relay_name_is_the_urls_host_as_a_browser_writes_it() {
        assert_eq!(
            relay_name_of("wss://Relay.City.Example:443/v1").unwrap(),
            "relay.city.example"
        );
        assert_eq!(
            relay_name_of("wss://localhost:7300/v1").unwrap(),
            "localhost:7300"
        );
        assert_eq!(relay_name_of("wss://[::1]:7300").unwrap(), "[::1]:7300");
        assert!(relay_name_of("ws://localhost:7300/v1").is_err(), "TLS only");
        assert!(relay_name_of("wss:///v1").is_err());
        assert!(relay_name_of("wss://user@host/v1").is_err());
    }

    #[test]
    fn a_device_key_round_trips_through_its_seed() {
        let (seed, public) = new_device_key().unwrap();
        let key = device_key(&seed).unwrap();
        assert_eq!(hex::encode(key.verifying_key().to_bytes()), public);
        assert!(device_key("abcd").is_err());
    }

    #[test]
    fn events_reach_the_page_as_json_with_their_text() {
        let m = herold_client::e2e::Message {
            conversation_id: "station-42".into(),
            seq: 7,
            sender_account_id: "bob".into(),
            sender_device_id: "bob.phone".into(),
            server_time_ms: 1_800_000_000_000,
            expires_at_ms: 0,
            plaintext: "Grüße".as_bytes().to_vec(),
        };
        let v = event_json(&E2eEvent::Message(m));
        assert_eq!(v["type"], "message");
        assert_eq!(v["conversation"], "station-42");
        assert_eq!(v["text"], "Grüße");
        assert_eq!(v["seq"], 7);
        assert!(v.get("file").is_none());
        let (_, mut f) = herold_client::attachment::seal(b"a photo").unwrap();
        f.id = vec![1; 16];
        f.name = "pothole.jpg".into();
        f.media_type = "image/jpeg".into();
        let photo = herold_client::e2e::Message {
            plaintext: f.encode().unwrap(),
            conversation_id: "station-42".into(),
            seq: 8,
            sender_account_id: "bob".into(),
            sender_device_id: "bob.phone".into(),
            server_time_ms: 0,
            expires_at_ms: 0,
        };
        let v = event_json(&E2eEvent::Message(photo));
        assert_eq!(
            v["file"],
            json!({"name": "pothole.jpg", "media_type": "image/jpeg", "size": 7})
        );
        assert_eq!(v["text"], "");
        assert!(!v.to_string().contains(&hex::encode(f.key)), "no key");
        let d = event_json(&E2eEvent::Disconnected {
            reason: "gone".into(),
        });
        assert_eq!(d, json!({"type": "disconnected", "reason": "gone"}));
    }
}
