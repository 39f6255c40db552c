//! A reconnect storm on a hot conversation: when every member device
//! comes back at once, the relay reads the conversation's log a few times
//! for all of them (`reads`), and each device still gets every message it
//! missed, once and in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::scrape::Scrape;
use common::{DEADLINE, TestRelay, create_account, create_conversation, enroll};
use herold_proto::v1;
use herold_relay::Config;
use herold_router::memory::MemoryRouter;
use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};
use herold_store::unreliable::Unreliable;

const DEVICES: usize = 200;
const MISSED: usize = 30;

/// Waits until the relay reports `n` open connections.
async fn connections_reach(relay: &TestRelay, n: f64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (s, _) = Scrape::take(relay.metrics_addr).await;
        let open = s.get("herold_relay_connections", &[]);
        if open == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} connections, waited for {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_of_a_storm_gets_what_it_missed_from_a_few_shared_reads() {
    let dir = tempfile::tempdir().unwrap();
    let embedded =
        Arc::new(EmbeddedStore::open(dir.path().join("store"), EmbeddedConfig::default()).unwrap());
    let store = Arc::new(Unreliable::new(embedded));
    let mut config = Config::dev(dir.path());
    // Every device comes from loopback.
    config.limits.max_unauthenticated_per_address = 10_000;
    config.limits.handshake_rate_per_address = 100_000;
    let relay = TestRelay::start_on(config, store.clone(), Arc::new(MemoryRouter::default())).await;

    let mut admin = relay.admin().await;
    let names: Vec<String> = (0..=DEVICES).map(|i| format!("m{i}")).collect();
    let mut keys = Vec::new();
    for name in &names {
        create_account(&mut admin, name).await;
        keys.push(enroll(&mut admin, name, &format!("{name}.phone")).await);
    }
    let members: Vec<&str> = names.iter().map(String::as_str).collect();
    create_conversation(&mut admin, "hot", v1::ConversationKind::Group, &members).await;

    // The devices were here once (the relay knows them), then all left.
    let sender = relay.client("m0.phone", &keys[0]).await;
    for (name, key) in names.iter().zip(&keys).skip(1) {
        let mut c = relay.client(&format!("{name}.phone"), key).await;
        assert!(common::receive_until_synced(&mut c).await.is_empty());
        c.close().await;
    }
    connections_reach(&relay, 1.0).await;
    for i in 0..MISSED {
        sender
            .send("hot", format!("missed {i}").into_bytes(), 0)
            .await
            .unwrap();
    }

    // Then they all come back at once, on a store that takes 20 ms a
    // call (so that their reads meet, as on a loaded CQL cluster).
    store.set_latency(Duration::from_millis(20));
    let reads_before = store.calls("read");
    let (before, _) = Scrape::take(relay.metrics_addr).await;
    let mut storm = tokio::task::JoinSet::new();
    for (name, key) in names.iter().zip(&keys).skip(1) {
        let (device, key, relay_addr, fp) = (
            format!("{name}.phone"),
            key.clone(),
            relay.addr,
            relay.fingerprint,
        );
        storm.spawn(async move {
            let config = herold_client::ClientConfig::new(relay_addr, fp, &device, key);
            let mut c = herold_client::Client::connect(config).await.unwrap();
            let got = common::receive_until_synced(&mut c).await;
            c.close().await;
            (device, got)
        });
    }
    let mut synced = 0;
    while let Some(r) = storm.join_next().await {
        let (device, got) = r.unwrap();
        let texts: Vec<String> = got
            .iter()
            .map(|m| String::from_utf8(m.ciphertext.clone()).unwrap())
            .collect();
        let want: Vec<String> = (0..MISSED).map(|i| format!("missed {i}")).collect();
        assert_eq!(texts, want, "{device}");
        synced += 1;
    }
    assert_eq!(synced, DEVICES);

    // One read per device without sharing; a handful with it.
    let reads = store.calls("read") - reads_before;
    assert!(
        reads <= (DEVICES / 4) as u64,
        "{DEVICES} devices took {reads} store reads"
    );
    let (after, _) = Scrape::take(relay.metrics_addr).await;
    let shared = after.get("herold_relay_log_reads_total", &[("source", "shared")])
        - before.get("herold_relay_log_reads_total", &[("source", "shared")]);
    let stored = after.get("herold_relay_log_reads_total", &[("source", "store")])
        - before.get("herold_relay_log_reads_total", &[("source", "store")]);
    assert_eq!(stored, reads as f64);
    assert!(
        shared + stored >= DEVICES as f64,
        "{shared} shared and {stored} own reads for {DEVICES} devices"
    );
    drop(sender);
    relay.stop().await;
}
