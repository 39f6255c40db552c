//! The relay-name binding of browsers (docs/protocol.md, "Browsers"): a
//! device on a connection that offers it may sign the relay's name instead
//! of the TLS exporter; only this relay's names pass, only where offered,
//! and neither transcript passes for the other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use herold_proto::v1::{self, ErrorCode, client_frame, server_frame};
use herold_store::AccountState;

use super::core::Answer;
use super::testkit::*;

fn challenged(names: &[&str]) -> Harness {
    let mut h = Harness::with_names(config(), names);
    h.feed(frame(client_frame::Kind::Hello(v1::Hello {
        version: herold_proto::PROTOCOL_VERSION,
        device_id: DEVICE.into(),
        client: "web".into(),
    })));
    h.answer(Answer::Device(Some(device(&h.key))));
    h.answer(Answer::AccountState(Some(AccountState::default())));
    h
}

fn refusal(h: &mut Harness) -> (ErrorCode, String) {
    let f = h.closed().expect("closed").expect("with an error");
    (f.code, f.message)
}

#[test]
fn a_browser_signing_one_of_the_relays_names_is_admitted() {
    let mut h = challenged(&["localhost:7300", WEB_NAME]);
    let key = h.key.clone();
    h.respond_named(&key, WEB_NAME, WEB_NAME);
    h.answer(Answer::Cursors {
        stored: Vec::new(),
        pending: Vec::new(),
    });
    assert!(
        matches!(h.take_written().last(), Some(server_frame::Kind::AuthOk(_))),
        "admitted"
    );
    assert!(!h.core.is_closed());
}

#[test]
fn a_signature_for_another_relays_name_is_refused() {
    // A server at evil.example passed this relay's challenge on to a
    // browser that connected to it: the browser signed evil.example.
    let mut h = challenged(&[WEB_NAME]);
    let key = h.key.clone();
    h.respond_named(&key, "evil.example", "evil.example");
    let (code, message) = refusal(&mut h);
    assert_eq!(code, ErrorCode::AuthFailed);
    assert!(message.contains("\"evil.example\""), "{message}");
    assert!(h.query.is_none(), "nothing more is asked");
}

#[test]
fn a_name_that_was_not_signed_is_refused() {
    // The response names this relay, the signature is over another name.
    let mut h = challenged(&[WEB_NAME]);
    let key = h.key.clone();
    h.respond_named(&key, "evil.example", WEB_NAME);
    assert_eq!(
        refusal(&mut h),
        (
            ErrorCode::AuthFailed,
            "the signature does not verify for this device and connection".into()
        )
    );
}

#[test]
fn quic_connections_offer_no_name_binding() {
    let mut h = challenged(&[]);
    let key = h.key.clone();
    h.respond_named(&key, WEB_NAME, WEB_NAME);
    let (code, message) = refusal(&mut h);
    assert_eq!(code, ErrorCode::AuthFailed);
    assert!(message.contains("sign the TLS exporter"), "{message}");
}

#[test]
fn an_exporter_signature_does_not_pass_as_a_name_signature() {
    let mut h = challenged(&[WEB_NAME]);
    let nonce = match h.take_written().last() {
        Some(server_frame::Kind::AuthChallenge(c)) => c.nonce.clone(),
        other => panic!("{other:?}"),
    };
    use ed25519_dalek::Signer as _;
    let sig = h
        .key
        .sign(&herold_proto::auth::transcript(&nonce, &EXPORTER, DEVICE));
    h.feed(frame(client_frame::Kind::AuthResponse(v1::AuthResponse {
        signature: sig.to_bytes().to_vec(),
        relay_name: WEB_NAME.into(),
    })));
    assert_eq!(refusal(&mut h).0, ErrorCode::AuthFailed);
}
