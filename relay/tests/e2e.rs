//! End-to-end tests of one relay on the embedded default, over real QUIC on
//! loopback, with the SDK as the client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use herold_client::raw::RawConnection;
use herold_client::{Client, ClientConfig, ClientError};
use herold_proto::v1::{self, ConversationKind, ErrorCode, client_frame, server_frame};

fn payload(tag: &str, i: usize) -> Vec<u8> {
    format!("{tag}-{i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("alice").await;
    relay.account("bob").await;
    let ka = relay.device("alice", "alice.phone").await;
    let kb = relay.device("bob", "bob.phone").await;
    relay
        .conversation("dm:alice:bob", ConversationKind::Direct, &["alice", "bob"])
        .await;
    let alice = relay.client("alice.phone", &ka).await;
    let mut bob = relay.client("bob.phone", &kb).await;
    assert_eq!(bob.account_id(), "bob");

    for i in 0..20 {
        let a = alice
            .send("dm:alice:bob", payload("m", i), 0)
            .await
            .unwrap();
        assert_eq!(a.seq, i as u64 + 1, "seqs are dense and start at 1");
        assert!(!a.duplicate);
    }
    let got = receive(&mut bob, 20).await;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1);
        assert_eq!(m.ciphertext, payload("m", i));
        assert_eq!(m.sender_account_id, "alice");
        assert_eq!(m.sender_device_id, "alice.phone");
    }
    // Bob answers; Alice receives it.
    let mut alice = alice;
    bob.send("dm:alice:bob", b"reply".to_vec(), 0)
        .await
        .unwrap();
    let mine_and_reply = receive(&mut alice, 21).await;
    assert_eq!(mine_and_reply.last().unwrap().ciphertext, b"reply");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_of_50_devices_same_order_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let accounts: Vec<String> = (0..25).map(|i| format!("vol{i:02}")).collect();
    let mut keys = Vec::new();
    for a in &accounts {
        relay.account(a).await;
        for d in ["phone", "tablet"] {
            let id = format!("{a}.{d}");
            keys.push((id.clone(), relay.device(a, &id).await));
        }
    }
    let refs: Vec<&str> = accounts.iter().map(String::as_str).collect();
    relay
        .conversation("station-1", ConversationKind::Group, &refs)
        .await;
    let mut clients = Vec::new();
    for (id, k) in &keys {
        clients.push(relay.client(id, k).await);
    }
    assert_eq!(clients.len(), 50);

    // Five of the devices send ten messages each, concurrently.
    let mut sends = Vec::new();
    for s in 0..5 {
        let c = clients[s * 7].sender();
        sends.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..10 {
                let a = c
                    .send("station-1", payload(&format!("s{s}"), i), 0)
                    .await
                    .unwrap();
                seqs.push(a.seq);
            }
            seqs
        }));
    }
    let mut all_seqs = Vec::new();
    for s in sends {
        all_seqs.extend(s.await.unwrap());
    }
    all_seqs.sort_unstable();
    assert_eq!(all_seqs, (1..=50).collect::<Vec<u64>>());

    let mut orders = Vec::new();
    for c in clients.iter_mut() {
        let got = receive(c, 50).await;
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=50).collect::<Vec<u64>>(),
            "in order, no gaps, no duplicates"
        );
        orders.push(got.into_iter().map(|m| m.message_id).collect::<Vec<_>>());
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every device sees the same order"
    );
    // A fence proves no device got an extra copy.
    clients[0]
        .send("station-1", b"fence".to_vec(), 0)
        .await
        .unwrap();
    for c in clients.iter_mut() {
        assert!(receive_until_fence(c, b"fence").await.is_empty());
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_catches_up_in_order_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("alice").await;
    relay.account("bob").await;
    let ka = relay.device("alice", "alice.phone").await;
    let kb = relay.device("bob", "bob.laptop").await;
    relay
        .conversation("g", ConversationKind::Group, &["alice", "bob"])
        .await;
    let alice = relay.client("alice.phone", &ka).await;
    // Bob was online once and read the first 5.
    let mut bob = relay.client("bob.laptop", &kb).await;
    for i in 0..5 {
        alice.send("g", payload("m", i), 0).await.unwrap();
    }
    assert_eq!(receive(&mut bob, 5).await.len(), 5);
    let cursors = bob.cursors();
    bob.close().await;

    // While Bob is offline, 30 more arrive.
    for i in 5..35 {
        alice.send("g", payload("m", i), 0).await.unwrap();
    }
    let mut config = ClientConfig::new(relay.addr, relay.fingerprint, "bob.laptop", kb.clone());
    config.cursors = cursors;
    let mut bob = Client::connect(config).await.unwrap();
    let got = receive_until_synced(&mut bob).await;
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (6..=35).collect::<Vec<u64>>());
    for m in &got {
        assert_eq!(m.ciphertext, payload("m", m.seq as usize - 1));
    }
    // Live delivery continues after the sync.
    alice.send("g", b"live".to_vec(), 0).await.unwrap();
    assert_eq!(receive(&mut bob, 1).await[0].seq, 36);
    bob.close().await;

    // A fresh install without local cursors resumes from the cursors the
    // relay stored from the acks: nothing is delivered twice.
    let mut bob = relay.client("bob.laptop", &kb).await;
    assert!(receive_until_synced(&mut bob).await.is_empty());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_message_id_is_stored_and_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("alice").await;
    relay.account("bob").await;
    let ka = relay.device("alice", "alice.phone").await;
    let kb = relay.device("bob", "bob.phone").await;
    relay
        .conversation("dm", ConversationKind::Direct, &["alice", "bob"])
        .await;
    let alice = relay.client("alice.phone", &ka).await;
    let id = [42u8; 16];
    let first = alice
        .send_with_id(id, "dm", b"once".to_vec(), 0)
        .await
        .unwrap();
    let again = alice
        .send_with_id(id, "dm", b"once".to_vec(), 0)
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.seq, again.seq);
    assert_eq!(first.server_time_ms, again.server_time_ms);
    let next = alice.send("dm", b"next".to_vec(), 0).await.unwrap();
    assert_eq!(
        next.seq,
        first.seq + 1,
        "the duplicate took no place in the log"
    );

    // Bob, connecting afterwards, reads the log: the message is there once.
    // He uses a raw connection, so no client-side deduplication can hide a
    // second copy.
    let mut raw = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    raw.authenticate("bob.phone", &kb).await.unwrap();
    raw.send_kind(client_frame::Kind::Sync(v1::Sync::default()))
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        match raw.expect_frame().await.unwrap() {
            server_frame::Kind::Deliver(d) => seen.push(d.envelope.unwrap().ciphertext),
            server_frame::Kind::SyncDone(_) => break,
            _ => {}
        }
    }
    assert_eq!(seen, vec![b"once".to_vec(), b"next".to_vec()]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_unauthenticated_devices_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("alice").await;
    let ka = relay.device("alice", "alice.phone").await;

    // Unknown device: answered exactly as a known device with a wrong key,
    // so that probing ids tells nothing.
    let mut raw = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    let unknown = raw.authenticate("mallory.phone", &ka).await.unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::AuthFailed), "{unknown}");

    // Known device, wrong key.
    let other = herold_client::generate_key().unwrap();
    let mut raw = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    let err = raw.authenticate("alice.phone", &other).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AuthFailed), "{err}");
    assert_eq!(err.to_string(), unknown.to_string());

    // Submit without authenticating.
    let mut raw = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    raw.send_kind(client_frame::Kind::Submit(v1::Submit {
        message_id: vec![1; 16],
        conversation_id: "x".into(),
        expires_at_ms: 0,
        ciphertext: b"x".to_vec(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let err = raw.expect_frame().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AuthRequired), "{err}");

    // Wrong protocol version.
    let mut raw = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    raw.send_kind(client_frame::Kind::Hello(v1::Hello {
        version: 99,
        device_id: "alice.phone".into(),
        client: String::new(),
    }))
    .await
    .unwrap();
    let err = raw.expect_frame().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnsupportedVersion), "{err}");

    // The SDK reports a permanent failure at connect.
    let err = Client::connect(ClientConfig::new(
        relay.addr,
        relay.fingerprint,
        "nobody.phone",
        ka.clone(),
    ))
    .await
    .unwrap_err();
    assert!(err.is_permanent(), "{err}");

    // A wrong pinned fingerprint fails the TLS handshake.
    let err = RawConnection::connect(relay.addr, [0u8; 32])
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect(_)), "{err}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_auth_response_is_rejected() {
    use ed25519_dalek::Signer;
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("alice").await;
    let ka = relay.device("alice", "alice.phone").await;
    let hello = client_frame::Kind::Hello(v1::Hello {
        version: 1,
        device_id: "alice.phone".into(),
        client: String::new(),
    });

    // An eavesdropper records a genuine exchange.
    let mut genuine = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    genuine.send_kind(hello.clone()).await.unwrap();
    let server_frame::Kind::AuthChallenge(ch) = genuine.expect_frame().await.unwrap() else {
        panic!("expected a challenge");
    };
    let transcript =
        herold_proto::auth::transcript(&ch.nonce, &genuine.exporter().unwrap(), "alice.phone");
    let recorded = ka.sign(&transcript).to_bytes().to_vec();
    genuine
        .send_kind(client_frame::Kind::AuthResponse(v1::AuthResponse {
            signature: recorded.clone(),
            relay_name: String::new(),
        }))
        .await
        .unwrap();
    assert!(matches!(
        genuine.expect_frame().await.unwrap(),
        server_frame::Kind::AuthOk(_)
    ));

    // ...and replays the response on a new connection.
    let mut replay = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    replay.send_kind(hello).await.unwrap();
    let server_frame::Kind::AuthChallenge(ch2) = replay.expect_frame().await.unwrap() else {
        panic!("expected a challenge");
    };
    assert_ne!(ch.nonce, ch2.nonce, "every challenge is fresh");
    replay
        .send_kind(client_frame::Kind::AuthResponse(v1::AuthResponse {
            signature: recorded,
            relay_name: String::new(),
        }))
        .await
        .unwrap();
    let err = replay.expect_frame().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AuthFailed), "{err}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_gets_an_error_and_harms_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    for a in ["alice", "bob", "mallory"] {
        relay.account(a).await;
    }
    let ka = relay.device("alice", "alice.phone").await;
    let kb = relay.device("bob", "bob.phone").await;
    let km = relay.device("mallory", "mallory.phone").await;
    relay
        .conversation("g", ConversationKind::Group, &["alice", "bob", "mallory"])
        .await;
    let alice = relay.client("alice.phone", &ka).await;
    let mut bob = relay.client("bob.phone", &kb).await;
    alice.send("g", b"before".to_vec(), 0).await.unwrap();
    assert_eq!(receive(&mut bob, 1).await[0].ciphertext, b"before");

    let mut m = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    let ok = m.authenticate("mallory.phone", &km).await.unwrap();
    let too_big = ok.max_frame_bytes + 1;
    // Prefix and some body in one write: the relay refuses at the prefix
    // and may stop the stream before the rest arrives, so a failing send
    // is no failure; the error frame is what must come back.
    let mut bytes = too_big.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 4096]);
    let _ = m.send_bytes(&bytes).await;
    let err = loop {
        match m.expect_frame().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "{err}");
    assert!(matches!(err, ClientError::Relay { fatal: true, .. }));

    // Before authentication frames are small: a 20 KiB frame is refused
    // although it is far below max_frame_bytes.
    let mut pre = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    let mut bytes = (20u32 * 1024).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 20 * 1024]);
    let _ = pre.send_bytes(&bytes).await;
    let err = loop {
        match pre.expect_frame().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "{err}");

    // A ciphertext above the limit in a frame within it: a non-fatal error.
    let mut m2 = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    let ok = m2.authenticate("mallory.phone", &km).await.unwrap();
    m2.send_kind(client_frame::Kind::Submit(v1::Submit {
        message_id: vec![9; 16],
        conversation_id: "g".into(),
        expires_at_ms: 0,
        ciphertext: vec![1; ok.max_ciphertext_bytes as usize + 1],
        ..Default::default()
    }))
    .await
    .unwrap();
    let err = m2.expect_frame().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidEnvelope), "{err}");

    // Alice and Bob carry on undisturbed.
    alice.send("g", b"after".to_vec(), 0).await.unwrap();
    let got = receive(&mut bob, 1).await;
    assert_eq!(got[0].ciphertext, b"after");
    assert_eq!(got[0].seq, 2, "mallory's attempts stored nothing");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_devices_of_one_account_all_receive_and_see_their_own_sends() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("alice").await;
    relay.account("bob").await;
    let mut admin = relay.admin().await;
    let mut keys = Vec::new();
    for i in 0..10 {
        let id = format!("alice.d{i}");
        keys.push((id.clone(), enroll(&mut admin, "alice", &id).await));
    }
    // The eleventh device is refused by the default limit.
    let k11 = herold_client::generate_key().unwrap();
    let err = admin
        .register_device(v1::RegisterDeviceRequest {
            account_id: "alice".into(),
            device_id: "alice.d10".into(),
            public_key: k11.verifying_key().to_bytes().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("10"), "{}", err.message());

    let kb = relay.device("bob", "bob.phone").await;
    relay
        .conversation("dm", ConversationKind::Direct, &["alice", "bob"])
        .await;
    let mut alices = Vec::new();
    for (id, k) in &keys {
        alices.push(relay.client(id, k).await);
    }
    let bob = relay.client("bob.phone", &kb).await;
    bob.send("dm", b"hello alice".to_vec(), 0).await.unwrap();
    for a in alices.iter_mut() {
        assert_eq!(receive(a, 1).await[0].ciphertext, b"hello alice");
    }
    // Alice writes from d0: all her other devices see what she sent.
    alices[0].send("dm", b"from d0".to_vec(), 0).await.unwrap();
    for a in alices.iter_mut() {
        let m = receive(a, 1).await.remove(0);
        assert_eq!(m.ciphertext, b"from d0");
        assert_eq!(m.sender_device_id, "alice.d0");
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_roles_and_expiry_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    for a in ["ops", "vol", "outsider"] {
        relay.account(a).await;
    }
    let ko = relay.device("ops", "ops.desk").await;
    let kv = relay.device("vol", "vol.phone").await;
    let kx = relay.device("outsider", "outsider.phone").await;
    let mut admin = relay.admin().await;
    admin
        .create_conversation(v1::CreateConversationRequest {
            conversation_id: "info".into(),
            kind: ConversationKind::Channel as i32,
            title: "Information".into(),
            members: vec![
                v1::Member {
                    account_id: "ops".into(),
                    role: v1::Role::Publisher as i32,
                },
                v1::Member {
                    account_id: "vol".into(),
                    role: v1::Role::Member as i32,
                },
            ],
            default_ttl_seconds: 0,
            sub_groups: 0,
        })
        .await
        .unwrap();
    let ops = relay.client("ops.desk", &ko).await;
    let mut vol = relay.client("vol.phone", &kv).await;
    let outsider = relay.client("outsider.phone", &kx).await;
    ops.send("info", b"polls open".to_vec(), 0).await.unwrap();
    assert_eq!(receive(&mut vol, 1).await[0].ciphertext, b"polls open");
    let e = vol.send("info", b"me too".to_vec(), 0).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotPublisher), "{e}");
    let e = outsider.send("info", b"hi".to_vec(), 0).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotMember), "{e}");
    let e = outsider.send("nope", b"hi".to_vec(), 0).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownConversation), "{e}");
    let e = ops.send("info", b"old".to_vec(), 1).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidExpiry), "{e}");
    let e = ops
        .send("info", b"far".to_vec(), i64::MAX)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidExpiry), "{e}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_is_cut_off_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("alice").await;
    let ka = relay.device("alice", "alice.phone").await;
    let mut alice = relay.client("alice.phone", &ka).await;
    let mut admin = relay.admin().await;
    admin
        .revoke_device(v1::RevokeDeviceRequest {
            device_id: "alice.phone".into(),
        })
        .await
        .unwrap();
    let stopped = next_stop(&mut alice, Duration::from_secs(2)).await;
    assert_eq!(stopped.code(), Some(ErrorCode::DeviceRevoked), "{stopped}");
    let mut raw = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    let err = raw.authenticate("alice.phone", &ka).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DeviceRevoked), "{err}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_clients_reconnect_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("alice").await;
    relay.account("bob").await;
    let ka = relay.device("alice", "alice.phone").await;
    let kb = relay.device("bob", "bob.phone").await;
    relay
        .conversation("g", ConversationKind::Group, &["alice", "bob"])
        .await;
    let alice = relay.client("alice.phone", &ka).await;
    let mut accepted = HashSet::new();
    for i in 0..10 {
        accepted.insert(alice.send("g", payload("m", i), 0).await.unwrap().seq);
    }
    alice.close().await;
    // Bob is connected while the relay drains: he is told so, not timed out.
    let mut bob = relay.client("bob.phone", &kb).await;
    assert_eq!(receive_until_synced(&mut bob).await.len(), 10);
    relay.stop().await;
    let reason = next_disconnect(&mut bob).await;
    assert!(reason.contains("draining"), "{reason}");
    drop(bob);

    // Same data directory, new process state: everything accepted is there.
    let relay = TestRelay::start(dir.path()).await;
    let mut bob = relay.client("bob.phone", &kb).await;
    // Bob's acks were flushed during the drain: nothing is delivered again.
    let again: Vec<u64> = receive_until_synced(&mut bob)
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    assert!(again.is_empty(), "delivered again: {again:?}");
    // A second device of Bob's, new after the restart, reads everything.
    let kb2 = relay.device("bob", "bob.laptop").await;
    let mut laptop = relay.client("bob.laptop", &kb2).await;
    let got: HashMap<u64, Vec<u8>> = receive_until_synced(&mut laptop)
        .await
        .into_iter()
        .map(|m| (m.seq, m.ciphertext))
        .collect();
    assert_eq!(got.keys().copied().collect::<HashSet<_>>(), accepted);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replaces_the_old_connection_and_keeps_live_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("alice").await;
    relay.account("bob").await;
    let ka = relay.device("alice", "alice.phone").await;
    let kb = relay.device("bob", "bob.phone").await;
    relay
        .conversation("g", ConversationKind::Group, &["alice", "bob"])
        .await;
    let alice = relay.client("alice.phone", &ka).await;
    // Bob's phone changes network: the new connection arrives while the old
    // one is still open.
    let mut old = relay.client("bob.phone", &kb).await;
    let mut new = relay.client("bob.phone", &kb).await;
    let stopped = next_stop(&mut old, DEADLINE).await;
    assert_eq!(stopped.code(), Some(ErrorCode::Replaced), "{stopped}");
    // The old session's cleanup must not remove the new one's presence.
    alice
        .send("g", b"live after reconnect".to_vec(), 0)
        .await
        .unwrap();
    assert_eq!(
        receive(&mut new, 1).await[0].ciphertext,
        b"live after reconnect"
    );
    relay.stop().await;
}

/// An expired message is neither delivered nor synced, and the purge
/// deletes it from the store within `purge_interval_secs` (read from the
/// store itself, with a reader clock that hides nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_is_not_delivered_and_gone_from_the_store() {
    use herold_store::Store as _;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        herold_store::embedded::EmbeddedStore::open(
            dir.path().join("store"),
            herold_store::embedded::EmbeddedConfig::default(),
        )
        .unwrap(),
    );
    let mut config = herold_relay::Config::dev(dir.path());
    config.limits.purge_interval_secs = 1;
    let relay = TestRelay::start_on(
        config,
        store.clone(),
        std::sync::Arc::new(herold_router::memory::MemoryRouter::default()),
    )
    .await;
    relay.account("alice").await;
    relay.account("bob").await;
    let ka = relay.device("alice", "alice.phone").await;
    let kb = relay.device("bob", "bob.phone").await;
    relay
        .conversation("g", ConversationKind::Group, &["alice", "bob"])
        .await;
    let alice = relay.client("alice.phone", &ka).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let expiry = now + 300;
    alice
        .send("g", b"self-destructs".to_vec(), expiry)
        .await
        .unwrap();
    alice.send("g", b"stays".to_vec(), 0).await.unwrap();
    // The subject of this test is the passage of wall-clock time: wait, once,
    // until the expiry lies in the past.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis((expiry - now + 1).max(0) as u64)).await;
    let mut bob = relay.client("bob.phone", &kb).await;
    let got = receive_until_synced(&mut bob).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].ciphertext, b"stays");
    // The purge runs every second here: the row goes from the store.
    let texts = |rows: &[herold_store::StoredMessage]| -> Vec<Vec<u8>> {
        rows.iter().map(|m| m.ciphertext.clone()).collect()
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let rows = store.read("g", 0, 10, 0).await.unwrap();
        if texts(&rows) == vec![b"stays".to_vec()] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired message is still stored: {:?}",
            texts(&rows)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_refuses_oversized_ciphertext_and_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("alice").await;
    let ka = relay.device("alice", "alice.phone").await;
    relay
        .conversation("solo", ConversationKind::Group, &["alice"])
        .await;
    let alice = relay.client("alice.phone", &ka).await;
    let err = alice
        .send("solo", vec![0; 256 * 1024 + 1], 0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::TooLarge { max: 262_144, .. }),
        "{err}"
    );
    let ok = alice.send("solo", vec![0; 256 * 1024], 0).await.unwrap();
    assert_eq!(ok.seq, 1);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_account_is_cut_off_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("vol").await;
    let k1 = relay.device("vol", "vol.phone").await;
    let k2 = relay.device("vol", "vol.tablet").await;
    let mut c1 = relay.client("vol.phone", &k1).await;
    let mut c2 = relay.client("vol.tablet", &k2).await;
    let mut admin = relay.admin().await;
    let r = admin
        .delete_account(v1::DeleteAccountRequest {
            account_id: "vol".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.devices_removed, 2);
    for c in [&mut c1, &mut c2] {
        let e = next_stop(c, Duration::from_secs(2)).await;
        assert!(e.is_permanent(), "{e}");
    }
    let mut raw = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    // Its devices are gone with the account: refused as unknown.
    let err = raw.authenticate("vol.phone", &k1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AuthFailed), "{err}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_without_blocking_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = herold_relay::Config::dev(dir.path());
    config.limits.device_queue = 4;
    let relay = TestRelay::start_with(config).await;
    for a in ["alice", "bob", "slow"] {
        relay.account(a).await;
    }
    let ka = relay.device("alice", "alice.phone").await;
    let kb = relay.device("bob", "bob.phone").await;
    let ks = relay.device("slow", "slow.phone").await;
    relay
        .conversation("g", ConversationKind::Group, &["alice", "bob", "slow"])
        .await;
    let alice = relay.client("alice.phone", &ka).await;
    let mut bob = relay.client("bob.phone", &kb).await;
    // A device that authenticates and then never reads.
    let mut slow = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    slow.authenticate("slow.phone", &ks).await.unwrap();
    let big = vec![7u8; 200 * 1024];
    let tx = alice.sender();
    let sender = tokio::spawn(async move {
        for _ in 0..40 {
            tx.send("g", big.clone(), 0).await.unwrap();
        }
    });
    // Bob, reading, gets everything while the slow device is cut off.
    assert_eq!(receive(&mut bob, 40).await.len(), 40);
    sender.await.unwrap();
    let closed = tokio::time::timeout(DEADLINE, slow.connection().unwrap().closed())
        .await
        .expect("slow consumer disconnected");
    let text = closed.to_string();
    assert!(text.contains("slow consumer"), "{text}");
    // The metrics say why it went (other tests of this binary share the
    // process's counters: none of them has a slow consumer).
    common::scrape::wait_for_metrics(relay.metrics_addr, "the slow consumer", |s| {
        s.get("herold_relay_slow_consumer_disconnects_total", &[]) >= 1.0
            && s.get(
                "herold_relay_connections_closed_total",
                &[("reason", "slow_consumer")],
            ) >= 1.0
    })
    .await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_requires_the_bearer_token_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = herold_relay::Config::dev(dir.path());
    config.admin_token = Some("s3cret-token-0123456789".into());
    let relay = TestRelay::start_with(config).await;
    let mut admin = relay.admin().await;
    let req = || v1::CreateAccountRequest {
        account_id: "alice".into(),
        display_name: String::new(),
        tags: Vec::new(),
    };
    let err = admin.create_account(req()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let mut wrong = tonic::Request::new(req());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    let err = admin.create_account(wrong).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let mut right = tonic::Request::new(req());
    right.metadata_mut().insert(
        "authorization",
        "Bearer s3cret-token-0123456789".parse().unwrap(),
    );
    admin.create_account(right).await.unwrap();
    relay.stop().await;
}
