//! What one device can make the relay do, bounded: each limit with its
//! default, and the work beyond it refused or held back while the other
//! devices are served. In-process relays on the embedded store, with a
//! fault-injecting router where a slow router is the point.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use herold_client::{Client, ClientConfig};
use herold_proto::v1::ConversationKind;
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
