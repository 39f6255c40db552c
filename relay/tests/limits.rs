//! What one device can make the relay do, bounded: each limit with its
//! default, and the work beyond it refused or held back while the other
//! devices are served: fan-outs under way per connection, submits a second
//! per device and per conversation. In-process relays on the embedded
//! store, with a fault-injecting router where a slow router is the point.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use herold_client::raw::RawConnection;
use herold_client::{Client, ClientConfig};
use herold_proto::v1::{self, ConversationKind, ErrorCode, client_frame, server_frame};
use herold_relay::Config;
use herold_router::faults::Faulty;
use herold_router::memory::MemoryRouter;
use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};

/// A device's submits are answered before their fan-out is done. With a
/// slow router, a device sending as fast as it is answered must not pile up
/// fan-outs: at most `max_in_flight` are under way for it at once, and the
/// others wait for theirs before being stored and answered. Everything sent
/// is accepted and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_pile_up_fan_outs_on_a_slow_router() {
    const LIMIT: u32 = 4;
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(EmbeddedStore::open(dir.path().join("store"), EmbeddedConfig::default()).unwrap());
    let router = Arc::new(Faulty::new(Arc::new(MemoryRouter::default())));
    let mut config = Config::dev(dir.path());
    config.limits.max_in_flight = LIMIT;
    let relay = TestRelay::start_on(config, store, router.clone()).await;
    relay.account("alice").await;
    relay.account("bob").await;
    let ka = relay.device("alice", "alice.phone").await;
    let kb = relay.device("bob", "bob.phone").await;
    relay
        .conversation("g", ConversationKind::Group, &["alice", "bob"])
        .await;
    // The SDK keeps to the relay's limit, as an app does.
    let mut cfg = ClientConfig::new(relay.addr, relay.fingerprint, "alice.phone", ka);
    cfg.max_in_flight = LIMIT as usize;
    let alice = Client::connect(cfg).await.unwrap();
    let mut bob = relay.client("bob.phone", &kb).await;

    router.set_latency(Duration::from_millis(100));
    let sender = alice.sender();
    let sends: Vec<_> = (0..LIMIT as usize * 6)
        .map(|i| {
            let sender = sender.clone();
            tokio::spawn(async move {
                let a = sender.send("g", format!("m{i}").into_bytes(), 0).await;
                a.unwrap_or_else(|e| panic!("send {i}: {e}")).seq
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for s in sends {
        seqs.push(tokio::time::timeout(DEADLINE, s).await.unwrap().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=LIMIT as u64 * 6).collect::<Vec<_>>());
    // Every router call under way belongs to alice's fan-outs (locate, then
    // publish) or to bob's presence: never more than her limit at once.
    assert!(
        router.most_under_way() <= u64::from(LIMIT) + 1,
        "{} router calls were under way at once",
        router.most_under_way()
    );
    let got = receive(&mut bob, LIMIT as usize * 6).await;
    assert_eq!(got.len(), LIMIT as usize * 6);
    relay.stop().await;
}

/// Sends `n` submits into `conversation` at once over a raw connection and
/// reads their answers: (accepted, the waits of those refused RATE_LIMITED).
async fn burst(raw: &mut RawConnection, conversation: &str, tag: u8, n: u8) -> (usize, Vec<u32>) {
    for i in 0..n {
        raw.send_kind(client_frame::Kind::Submit(v1::Submit {
            conversation_id: conversation.into(),
            message_id: [[tag; 8], [i; 8]].concat(),
            ciphertext: vec![i + 1],
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    let (mut accepted, mut waits) = (0, Vec::new());
    while accepted + waits.len() < usize::from(n) {
        let frame = tokio::time::timeout(DEADLINE, raw.recv())
            .await
            .expect("an answer within the deadline")
            .unwrap()
            .expect("the stream stays open");
        match frame.kind {
            Some(server_frame::Kind::Accepted(_)) => accepted += 1,
            Some(server_frame::Kind::Error(e)) => {
                assert_eq!(e.code, ErrorCode::RateLimited as i32, "{e:?}");
                assert!(!e.fatal);
                waits.push(e.retry_after_ms);
            }
            _ => {}
        }
    }
    (accepted, waits)
}

async fn raw_device(
    relay: &TestRelay,
    device: &str,
    key: &ed25519_dalek::SigningKey,
) -> RawConnection {
    let mut raw = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    raw.authenticate(device, key).await.unwrap();
    raw
}

/// A device beyond its submit rate (default 50 a second, a burst of 4 s)
/// is refused with RATE_LIMITED and the time to wait. The SDK waits and
/// resends by itself, so an app's sends all succeed, only slower; the other
/// devices of the conversation are not slowed at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_submit_rate_is_slowed_down_alone() {
    const RATE: u32 = 5;
    let burst_size = (RATE * herold_relay_burst_seconds()) as u8;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.limits.submit_rate = RATE;
    let relay = TestRelay::start_with(config).await;
    let [kf, kc, kr] = relay.group_of("g", ["flood", "calm", "reader"]).await;
    let mut reader = relay.client("reader.phone", &kr).await;

    let mut raw = raw_device(&relay, "flood.phone", &kf).await;
    let (accepted, waits) = burst(&mut raw, "g", 1, burst_size + 3).await;
    assert_eq!(accepted, usize::from(burst_size));
    assert_eq!(waits.len(), 3);
    // One token every 200 ms at 5 a second.
    assert!(waits.iter().all(|w| (1..=200).contains(w)), "{waits:?}");
    raw.close().await;

    // Meanwhile, and after, the calm device is never refused.
    let mut calm = raw_device(&relay, "calm.phone", &kc).await;
    assert_eq!(burst(&mut calm, "g", 2, 10).await, (10, Vec::new()));

    // Through the SDK: everything is accepted, once, in the end.
    let flood = relay.client("flood.phone", &kf).await;
    let sends: Vec<_> = (0..usize::from(burst_size) + 10)
        .map(|i| {
            let s = flood.sender();
            tokio::spawn(async move { s.send("g", format!("sdk{i}").into_bytes(), 0).await })
        })
        .collect();
    for s in sends {
        tokio::time::timeout(DEADLINE, s)
            .await
            .expect("the SDK resends within the deadline")
            .unwrap()
            .expect("accepted after waiting");
    }
    let total = usize::from(burst_size) + 10 + usize::from(burst_size) + 10;
    let got = receive(&mut reader, total).await;
    let mut seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    seqs.dedup();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    relay.stop().await;
}

/// A conversation beyond its rate through a relay (all its senders
/// together) is refused RATE_LIMITED; the senders of another conversation
/// are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_over_its_submit_rate_slows_its_senders_only() {
    const RATE: u32 = 5;
    let burst_size = (RATE * herold_relay_burst_seconds()) as u8;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.limits.conversation_submit_rate = RATE;
    let relay = TestRelay::start_with(config).await;
    for a in ["a1", "a2", "b"] {
        relay.account(a).await;
    }
    let k1 = relay.device("a1", "a1.phone").await;
    let k2 = relay.device("a2", "a2.phone").await;
    let kb = relay.device("b", "b.phone").await;
    relay
        .conversation("busy", ConversationKind::Group, &["a1", "a2"])
        .await;
    relay
        .conversation("quiet", ConversationKind::Group, &["b", "a1"])
        .await;
    let mut a1 = raw_device(&relay, "a1.phone", &k1).await;
    let mut a2 = raw_device(&relay, "a2.phone", &k2).await;
    let mut b = raw_device(&relay, "b.phone", &kb).await;
    let half = burst_size / 2 + 2;
    let (ok1, w1) = burst(&mut a1, "busy", 1, half).await;
    let (ok2, w2) = burst(&mut a2, "busy", 2, half).await;
    assert_eq!(
        ok1 + ok2,
        usize::from(burst_size),
        "the conversation's burst, shared"
    );
    assert_eq!(w1.len() + w2.len(), 4);
    assert_eq!(
        burst(&mut b, "quiet", 3, half).await,
        (usize::from(half), Vec::new())
    );
    relay.stop().await;
}

/// The relay's burst, in seconds of the rate (`rate::BURST_SECONDS`).
fn herold_relay_burst_seconds() -> u32 {
    4
}

/// A device that stops reading cannot make the relay hold its frames for
/// ever: once a write to it has blocked for `write_timeout` it is
/// disconnected as a slow consumer (it syncs when it comes back), even
/// when too little comes for its delivery queue to fill. Its conversation's
/// other readers get everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_reads_nothing_is_cut_off_after_the_write_timeout() {
    const MESSAGES: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.limits.write_timeout = Duration::from_secs(1);
    let relay = TestRelay::start_with(config).await;
    let [ka, kb, kc] = relay.group_of("g", ["alice", "bob", "carol"]).await;
    let mut bob = relay.client("bob.phone", &kb).await;
    // Authenticated, then never read again.
    let carol = raw_device(&relay, "carol.phone", &kc).await;
    let alice = relay.client("alice.phone", &ka).await;
    // 16 × 240 KiB: more than QUIC lets wait for one device (its 1.25 MB
    // stream window and the relay's 2 MiB send window).
    for i in 0..MESSAGES {
        alice
            .send("g", vec![u8::try_from(i).unwrap(); 240 * 1024], 0)
            .await
            .unwrap();
    }
    let closed = tokio::time::timeout(DEADLINE, carol.connection().unwrap().closed())
        .await
        .expect("the relay cuts carol off");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code,
                quinn::VarInt::from_u32(ErrorCode::SlowConsumer as u32)
            );
            let reason = String::from_utf8_lossy(&c.reason);
            assert!(reason.contains("read nothing for 1 s"), "{reason}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(receive(&mut bob, MESSAGES).await.len(), MESSAGES);
    relay.stop().await;
}

/// Overload: with the store slowed down under traffic, the relay holds at
/// most `max_pending_appends` submits waiting for it and refuses the rest
/// UNAVAILABLE with a retry-after, instead of queueing them in memory. The
/// SDK resends them by itself: every message is accepted once, in the end,
/// and delivered in order; nothing accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_makes_the_relay_shed_submits_not_hoard_them() {
    const PENDING: u32 = 4;
    const SENDERS: usize = 3;
    const EACH: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let embedded =
        Arc::new(EmbeddedStore::open(dir.path().join("store"), EmbeddedConfig::default()).unwrap());
    let store = Arc::new(herold_store::unreliable::Unreliable::new(embedded));
    let mut config = Config::dev(dir.path());
    config.limits.max_pending_appends = PENDING;
    let relay = TestRelay::start_on(config, store.clone(), Arc::new(MemoryRouter::default())).await;
    let [k0, k1, k2, kr] = relay.group_of("g", ["s0", "s1", "s2", "reader"]).await;
    let keys = [k0, k1, k2];
    let mut reader = relay.client("reader.phone", &kr).await;

    store.set_latency(Duration::from_millis(50));
    // Raw: a burst from one device gets refusals with the time to wait.
    let mut raw = raw_device(&relay, "s0.phone", &keys[0]).await;
    for i in 0..16u8 {
        raw.send_kind(client_frame::Kind::Submit(v1::Submit {
            conversation_id: "g".into(),
            message_id: [[9; 8], [i; 8]].concat(),
            ciphertext: vec![i],
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    let (mut accepted, mut shed) = (0, 0);
    while accepted + shed < 16 {
        let frame = tokio::time::timeout(DEADLINE, raw.recv())
            .await
            .expect("an answer within the deadline")
            .unwrap()
            .expect("the stream stays open");
        match frame.kind {
            Some(server_frame::Kind::Accepted(_)) => accepted += 1,
            Some(server_frame::Kind::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Unavailable as i32, "{e:?}");
                assert!(!e.fatal);
                assert!(e.retry_after_ms > 0);
                assert!(e.message.contains("overloaded"), "{}", e.message);
                shed += 1;
            }
            _ => {}
        }
    }
    assert!(shed > 0, "nothing was shed");
    raw.close().await;

    // Through the SDK, from several devices at once: all accepted.
    let (mut sends, mut clients) = (Vec::new(), Vec::new());
    for (i, k) in keys.iter().enumerate() {
        let client = relay.client(&format!("s{i}.phone"), k).await;
        for j in 0..EACH {
            let s = client.sender();
            sends.push(tokio::spawn(async move {
                s.send("g", format!("{i}-{j}").into_bytes(), 0).await
            }));
        }
        clients.push(client);
    }
    for s in sends {
        tokio::time::timeout(DEADLINE, s)
            .await
            .expect("the SDK resends within the deadline")
            .unwrap()
            .expect("accepted after waiting");
    }
    // Never more waiting for the store than the bound.
    assert!(
        store.most_under_way("append") <= u64::from(PENDING),
        "{} appends were under way at once",
        store.most_under_way("append")
    );
    let total = accepted + SENDERS * EACH;
    let got = receive(&mut reader, total).await;
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    relay.stop().await;
}
