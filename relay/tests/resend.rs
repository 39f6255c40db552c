//! A resend of a message the store already holds, as after a relay crash
//! between the write and the fan-out (or a store write whose outcome was
//! unknown and that did land): the store answers it as a duplicate, and the
//! relay fans the stored message out again, so that the recipients do not
//! wait for the next message of the conversation. A device that already had
//! it does not get it twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::sync::Arc;

use common::*;
use herold_client::raw::RawConnection;
use herold_proto::v1::{self, ConversationKind, client_frame, server_frame};
use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};
use herold_store::{NewMessage, Store};

/// The next Deliver on a raw connection (other frames are skipped).
async fn next_deliver(raw: &mut RawConnection) -> v1::Envelope {
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let server_frame::Kind::Deliver(d) = raw.expect_frame().await.unwrap() {
                return d.envelope.unwrap();
            }
        }
    })
    .await
    .expect("a delivery in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_the_store_already_holds_is_fanned_out_again_once() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(EmbeddedStore::open(dir.path().join("store"), EmbeddedConfig::default()).unwrap());
    let router = Arc::new(herold_router::memory::MemoryRouter::default());
    let relay =
        TestRelay::start_on(herold_relay::Config::dev(dir.path()), store.clone(), router).await;
    relay.account("alice").await;
    relay.account("bob").await;
    let ka = relay.device("alice", "alice.phone").await;
    let kb = relay.device("bob", "bob.phone").await;
    relay
        .conversation("g", ConversationKind::Group, &["alice", "bob"])
        .await;
    // Bob reads the raw stream: no client-side deduplication hides a copy.
    let mut bob = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    bob.authenticate("bob.phone", &kb).await.unwrap();
    bob.send_kind(client_frame::Kind::Sync(v1::Sync::default()))
        .await
        .unwrap();
    match bob.expect_frame().await.unwrap() {
        server_frame::Kind::SyncDone(d) => assert_eq!(d.delivered, 0),
        other => panic!("before any message: {other:?}"),
    }

    // The store took Alice's message, the relay never fanned it out.
    let id = [5u8; 16];
    let first = store
        .append(NewMessage {
            conversation_id: "g".into(),
            message_id: id.to_vec(),
            sender_account_id: "alice".into(),
            sender_device_id: "alice.phone".into(),
            server_time_ms: 1,
            expires_at_ms: None,
            ciphertext: b"polls open".to_vec(),
            mls: None,
        })
        .await
        .unwrap();
    assert!(!first.duplicate);

    // Alice's SDK resends it: a duplicate, and Bob gets it live.
    let alice = relay.client("alice.phone", &ka).await;
    let again = alice
        .send_with_id(id, "g", b"polls open".to_vec(), 0)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.seq, first.seq);
    let got = next_deliver(&mut bob).await;
    assert_eq!(
        (got.seq, got.ciphertext.as_slice()),
        (1, &b"polls open"[..])
    );

    // Another resend is fanned out too, but Bob's session sent it already:
    // the next thing he sees is the next message.
    let third = alice
        .send_with_id(id, "g", b"polls open".to_vec(), 0)
        .await
        .unwrap();
    assert!(third.duplicate);
    alice.send("g", b"fence".to_vec(), 0).await.unwrap();
    let next = next_deliver(&mut bob).await;
    assert_eq!((next.seq, next.ciphertext.as_slice()), (2, &b"fence"[..]));
    relay.stop().await;
}
