//! Tests of the CQL backend against a real CQL server (Cassandra 5 standing
//! in for Scylla): the conformance suite, plus TTL expiry and the gap-free
//! claim protocol. They need `HEROLD_TEST_CQL=host:port`; `scripts/test.sh`
//! starts the server with `scripts/cassandra.sh start` and sets it.

use std::sync::Arc;
use std::time::Duration;

use scylla::statement::Consistency;

use super::{CqlConfig, CqlStore, Replication};
use crate::{Account, Conversation, ConversationKind, Member, NewMessage, Role, Store};

/// The test server's address; panics with what to do when it is not set.
pub(crate) fn test_contact_point() -> String {
    match std::env::var("HEROLD_TEST_CQL") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "HEROLD_TEST_CQL is not set: the CQL backend's tests need a real CQL server. \
             Run scripts/test.sh (it starts Cassandra and sets it), or \
             `scripts/cassandra.sh start` and HEROLD_TEST_CQL=127.0.0.1:9042"
        ),
    }
}

fn test_config() -> CqlConfig {
    CqlConfig {
        contact_points: vec![test_contact_point()],
        keyspace: std::env::var("HEROLD_TEST_CQL_KEYSPACE")
            .unwrap_or_else(|_| "herold_test".into()),
        replication: Replication::Simple(1),
        // One node: LOCAL_ONE is what a single replica gives anyway.
        consistency: Consistency::LocalOne,
        ..CqlConfig::default()
    }
}

/// Migrates once per test process (the cases run on several runtimes; the
/// OnceCell is runtime-agnostic).
async fn make_store() -> (Arc<dyn Store>, Shared) {
    let store = connect().await;
    let keyspace = store.keyspace().to_owned();
    (
        Arc::new(store),
        Shared {
            _keyspace: keyspace,
        },
    )
}

/// The conformance guard: nothing to clean up, the cases use unique ids in
/// the shared test keyspace.
#[derive(Debug)]
struct Shared {
    _keyspace: String,
}

async fn connect() -> CqlStore {
    static MIGRATED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let config = test_config();
    MIGRATED
        .get_or_init(|| async {
            CqlStore::migrate(&config)
                .await
                .expect("migrate the test keyspace");
        })
        .await;
    CqlStore::connect(config)
        .await
        .expect("connect to the test CQL server")
}

mod conformance {
    crate::conformance_tests!(super::make_store);
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("cqltest-{name}-{}-{nanos:x}", std::process::id())
}

async fn group(store: &CqlStore, conv: &str) -> String {
    let a = format!("{conv}-alice");
    store
        .create_account(Account {
            id: a.clone(),
            display_name: String::new(),
            created_at_ms: 0,
        })
        .await
        .unwrap();
    store
        .create_conversation(
            Conversation {
                id: conv.into(),
                kind: ConversationKind::Group,
                title: String::new(),
                default_ttl_seconds: 0,
                created_at_ms: 0,
            },
            vec![Member {
                account_id: a.clone(),
                role: Role::Owner,
            }],
        )
        .await
        .unwrap();
    a
}

fn msg(conv: &str, id: &str, sender: &str, expires: Option<i64>) -> NewMessage {
    NewMessage {
        conversation_id: conv.into(),
        message_id: id.as_bytes().to_vec(),
        sender_account_id: sender.into(),
        sender_device_id: "d".into(),
        server_time_ms: super::wall_ms(),
        expires_at_ms: expires,
        ciphertext: vec![1, 2, 3],
        mls: None,
    }
}

/// A message with a 2 s expiry is readable before, hidden at its expiry, and
/// its rows are gone from the tables afterwards (TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_removes_expired_rows() {
    let store = connect().await;
    let conv = unique("ttl");
    let a = group(&store, &conv).await;
    let expires = super::wall_ms() + 2_000;
    store
        .append(msg(&conv, "short", &a, Some(expires)))
        .await
        .unwrap();
    store.append(msg(&conv, "keep", &a, None)).await.unwrap();
    let now = super::wall_ms();
    assert_eq!(store.read(&conv, 0, 10, now).await.unwrap().len(), 2);
    assert_eq!(store.read(&conv, 0, 10, expires).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    // Even a reader whose clock is early no longer gets it: the row is gone.
    let early = store.read(&conv, 0, 10, 0).await.unwrap();
    assert_eq!(early.len(), 1, "{early:?}");
    assert_eq!(early[0].message_id, b"keep");
    let ks = store.keyspace().to_owned();
    let rows = store
        .driver_session()
        .query_unpaged(
            format!(
                "SELECT seq FROM {ks}.conversation_log WHERE conversation_id = ? AND bucket = 0"
            ),
            (&conv,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let seqs: Vec<i64> = rows
        .rows::<(i64,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(seqs, vec![2], "the expired row (seq 1) must be gone by TTL");
    let ids = store
        .driver_session()
        .query_unpaged(
            format!("SELECT message_id FROM {ks}.message_ids WHERE conversation_id = ? AND message_id = ?"),
            (&conv, b"short".to_vec()),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    assert_eq!(ids.rows_num(), 0, "the expired payload must be gone by TTL");
}

/// A claim whose writer died before writing the log row (simulated by
/// claiming with a raw LWT) is completed by the next read and the next
/// append: no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_claim_is_completed() {
    let store = connect().await;
    let conv = unique("claim");
    let a = group(&store, &conv).await;
    store.append(msg(&conv, "m1", &a, None)).await.unwrap();
    let ks = store.keyspace().to_owned();
    let s = store.driver_session();
    // Steps 1 and 2 of append for "m2", then "crash".
    s.query_unpaged(
        format!("INSERT INTO {ks}.message_ids (conversation_id, message_id, sender_account_id, sender_device_id, server_time_ms, ciphertext) VALUES (?, ?, ?, 'd', 5, 0x09) IF NOT EXISTS"),
        (&conv, b"m2".to_vec(), &a),
    )
    .await
    .unwrap();
    s.query_unpaged(
        format!("UPDATE {ks}.conversations SET head = 2, head_message_id = ? WHERE id = ? IF head = 1 AND head_message_id = ?"),
        (b"m2".to_vec(), &conv, b"m1".to_vec()),
    )
    .await
    .unwrap();
    // Another process's store (fresh cache) reads: it completes seq 2.
    let other = connect().await;
    let read = other.read(&conv, 0, 10, 0).await.unwrap();
    let seqs: Vec<u64> = read.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(read[1].message_id, b"m2");
    // The retry of m2 is a duplicate of seq 2; the next message gets 3.
    let retry = other.append(msg(&conv, "m2", &a, None)).await.unwrap();
    assert_eq!(
        (retry.seq, retry.duplicate, retry.server_time_ms),
        (2, true, 5)
    );
    // The first store's cache is stale (head 1): its LWT corrects it.
    let next = store.append(msg(&conv, "m3", &a, None)).await.unwrap();
    assert_eq!((next.seq, next.duplicate), (3, false));
}

/// Two stores (two relay processes) appending to one conversation at once:
/// dense, unique seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_conversation() {
    let (s1, s2) = (Arc::new(connect().await), Arc::new(connect().await));
    let conv = unique("two");
    let a = group(&s1, &conv).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
        let m = msg(&conv, &format!("m{i}"), &a, None);
        tasks.spawn(async move { s.append(m).await.unwrap().seq });
    }
    let mut seqs = Vec::new();
    while let Some(j) = tasks.join_next().await {
        seqs.push(j.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    let read = s2.read(&conv, 0, 100, 0).await.unwrap();
    assert_eq!(read.len(), 40);
}
