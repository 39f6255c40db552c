//! The relay on the CQL backend (a real CQL server: Cassandra 5 standing in
//! for Scylla, started by scripts/test.sh): killed with SIGKILL mid-traffic
//! and restarted, it loses no accepted message; an expiring message is not
//! delivered after its expiry and its row is gone (TTL).
//!
//! Needs `HEROLD_TEST_CQL=host:port` (scripts/test.sh sets it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use herold_client::{Client, ClientConfig};
use herold_proto::v1::ConversationKind;
use herold_store::Store;
use herold_store::cql::{CqlConfig, CqlStore, Replication, parse_consistency};

fn contact_point() -> String {
    match std::env::var("HEROLD_TEST_CQL") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "HEROLD_TEST_CQL is not set: these tests need a real CQL server. Run \
             scripts/test.sh (it starts Cassandra and sets it), or \
             `scripts/cassandra.sh start` and HEROLD_TEST_CQL=127.0.0.1:9042"
        ),
    }
}

fn keyspace() -> String {
    std::env::var("HEROLD_TEST_CQL_KEYSPACE").unwrap_or_else(|_| "herold_test".into())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Ids unique to this run: the test keyspace is shared and persistent.
fn unique(name: &str) -> String {
    format!("{name}-{}-{:x}", std::process::id(), now_ms())
}

async fn store() -> CqlStore {
    CqlStore::connect(CqlConfig {
        contact_points: vec![contact_point()],
        keyspace: keyspace(),
        replication: Replication::Simple(1),
        consistency: parse_consistency("LOCAL_ONE").unwrap(),
        migrate: true,
        ..CqlConfig::default()
    })
    .await
    .expect("connect to the test CQL server")
}

/// The relay binary on the CQL backend.
async fn spawn_relay(dir: &Path) -> RelayProcess {
    let extra: Vec<String> = [
        "--cql-contact-points".to_owned(),
        contact_point(),
        "--cql-keyspace".to_owned(),
        keyspace(),
        "--cql-consistency".to_owned(),
        "LOCAL_ONE".to_owned(),
        "--cql-replication".to_owned(),
        "simple:1".to_owned(),
    ]
    .into();
    common::spawn_relay(dir, &extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_sigkill_mid_traffic_loses_no_accepted_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = spawn_relay(dir.path()).await;
    let mut admin = admin_at(relay.admin).await;
    let (alice_id, bob_id) = (unique("alice"), unique("bob"));
    let (alice_phone, bob_phone) = (format!("{alice_id}.phone"), format!("{bob_id}.phone"));
    let g = unique("g");
    create_account(&mut admin, &alice_id).await;
    create_account(&mut admin, &bob_id).await;
    let ka = enroll(&mut admin, &alice_id, &alice_phone).await;
    let kb = enroll(&mut admin, &bob_id, &bob_phone).await;
    create_conversation(
        &mut admin,
        &g,
        ConversationKind::Group,
        &[&alice_id, &bob_id],
    )
    .await;

    let alice = Client::connect(ClientConfig::new(
        relay.addr,
        relay.fingerprint,
        &alice_phone,
        ka,
    ))
    .await
    .unwrap();
    let acknowledged = send_until_killed(&mut relay, alice, &g, 150).await;

    // Restart on the same database: every accepted message is there.
    let relay2 = spawn_relay(dir.path()).await;
    let mut bob = Client::connect(ClientConfig::new(
        relay2.addr,
        relay2.fingerprint,
        &bob_phone,
        kb,
    ))
    .await
    .unwrap();
    assert_nothing_lost(&mut bob, &g, &acknowledged).await;
}

/// A message expiring 2 s after it was sent is not delivered to a device that
/// syncs after that, and its log row is gone from the database (TTL), not
/// just hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_expired_message_is_not_delivered_and_gone() {
    let dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(dir.path()).await;
    let mut admin = admin_at(relay.admin).await;
    let (alice_id, bob_id) = (unique("ealice"), unique("ebob"));
    let (alice_phone, bob_phone) = (format!("{alice_id}.phone"), format!("{bob_id}.phone"));
    let g = unique("eg");
    create_account(&mut admin, &alice_id).await;
    create_account(&mut admin, &bob_id).await;
    let ka = enroll(&mut admin, &alice_id, &alice_phone).await;
    let kb = enroll(&mut admin, &bob_id, &bob_phone).await;
    create_conversation(
        &mut admin,
        &g,
        ConversationKind::Group,
        &[&alice_id, &bob_id],
    )
    .await;
    let alice = Client::connect(ClientConfig::new(
        relay.addr,
        relay.fingerprint,
        &alice_phone,
        ka,
    ))
    .await
    .unwrap();
    let expires = now_ms() + 2_000;
    let short = alice
        .send(&g, b"self-destructs".to_vec(), expires)
        .await
        .unwrap();
    let kept = alice.send(&g, b"stays".to_vec(), 0).await.unwrap();
    assert_eq!((short.seq, kept.seq), (1, 2));

    // Before expiry the row is there; after it, Cassandra's TTL removes it:
    // a read with a clock at 0 (hiding nothing) stops finding it.
    let s = store().await;
    assert_eq!(s.read(&g, 0, 10, 0).await.unwrap().len(), 2);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let rows: Vec<u64> = s
            .read(&g, 0, 10, 0)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        if rows == vec![2] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired message's row must be gone, rows: {rows:?}"
        );
        // Polling interval while waiting for the server-side TTL.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Bob syncs after the expiry: only the message that stays.
    let mut bob = Client::connect(ClientConfig::new(
        relay.addr,
        relay.fingerprint,
        &bob_phone,
        kb,
    ))
    .await
    .unwrap();
    let got = receive_until_synced(&mut bob).await;
    assert_eq!(
        got.iter().map(|m| m.ciphertext.clone()).collect::<Vec<_>>(),
        vec![b"stays".to_vec()]
    );
}
