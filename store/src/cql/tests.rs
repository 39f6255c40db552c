//! Tests of the CQL backend against a real CQL server (Cassandra 5 standing
//! in for Scylla): the conformance suite, plus TTL expiry and the gap-free
//! claim protocol. They need `HEROLD_TEST_CQL=host:port`; `scripts/test.sh`
//! starts the server with `scripts/cassandra.sh start` and sets it.

use std::sync::Arc;
use std::time::Duration;

use scylla::statement::Consistency;

use super::{CqlConfig, CqlStore, Replication};
use crate::{
    Account, Conversation, ConversationKind, Device, Member, MlsCheck, MlsState, NewMessage, Role,
    Store, StoreError, Welcome,
};

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

/// The tables that hold ciphertexts rewrite an SSTable whose expired share
/// passed a tenth (migration 9), so expired bytes do not wait for a
/// window's last message: docs/storage.md, "What gone means".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_holding_ciphertexts_compact_away_expired_cells() {
    let store = connect().await;
    let ks = store.keyspace().to_owned();
    for (table, class) in [
        ("conversation_log", "TimeWindowCompactionStrategy"),
        ("message_ids", "SizeTieredCompactionStrategy"),
    ] {
        let rows = store
            .driver_session()
            .query_unpaged(
                "SELECT compaction FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
                (&ks, table),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap();
        let (compaction,): (std::collections::HashMap<String, String>,) =
            rows.single_row().unwrap();
        assert!(
            compaction["class"].ends_with(class),
            "{table}: {compaction:?}"
        );
        assert_eq!(
            compaction["unchecked_tombstone_compaction"], "true",
            "{table}"
        );
        assert_eq!(compaction["tombstone_threshold"], "0.1", "{table}");
        assert_eq!(
            compaction["tombstone_compaction_interval"], "3600",
            "{table}"
        );
    }
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

fn mls_msg(conv: &str, id: &str, sender: &str, check: MlsCheck) -> NewMessage {
    NewMessage {
        mls: Some(check),
        ..msg(conv, id, sender, None)
    }
}

fn commit(epoch: u64, roster_version: u64, welcome: Option<(&[u8], &str)>) -> MlsCheck {
    MlsCheck::Commit {
        generation: 0,
        epoch,
        roster_version,
        welcome: welcome.map(|(bytes, device)| Welcome {
            bytes: bytes.to_vec(),
            device_ids: vec![device.to_owned()],
        }),
    }
}

/// Two relays committing on one epoch at once: the epoch condition is in
/// the seq-claim LWT, so exactly one commit wins and no application message
/// of the old epoch is accepted after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_one_commit_per_epoch() {
    let (s1, s2) = (Arc::new(connect().await), Arc::new(connect().await));
    let conv = unique("commits");
    let a = group(&s1, &conv).await;
    for epoch in 0..3u64 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            let is_commit = i % 4 < 2;
            let check = if is_commit {
                commit(epoch, 0, None)
            } else {
                MlsCheck::Application {
                    generation: 0,
                    epoch,
                }
            };
            let m = mls_msg(&conv, &format!("e{epoch}-{i}"), &a, check);
            tasks.spawn(async move { (is_commit, s.append(m).await) });
        }
        let (mut commits, mut apps) = (Vec::new(), Vec::new());
        while let Some(j) = tasks.join_next().await {
            match j.unwrap() {
                (true, Ok(x)) => commits.push(x.seq),
                (false, Ok(x)) => apps.push(x.seq),
                (_, Err(StoreError::WrongEpoch { current })) => assert_eq!(current, epoch + 1),
                (_, Err(e)) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(commits.len(), 1, "epoch {epoch}: {commits:?}");
        assert!(apps.iter().all(|s| *s < commits[0]), "{apps:?} {commits:?}");
        for s in [&s1, &s2] {
            assert_eq!(s.mls_state(&conv).await.unwrap().epoch, epoch + 1);
        }
    }
    let head = s1.head(&conv).await.unwrap();
    let read = s2.read(&conv, 0, 1000, 0).await.unwrap();
    assert_eq!(read.len() as u64, head, "no gaps");
}

/// Two relays claiming one device's key packages: each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_claim_each_key_package_once() {
    let (s1, s2) = (Arc::new(connect().await), Arc::new(connect().await));
    let conv = unique("claims");
    let a = group(&s1, &conv).await;
    let d = format!("{conv}-device");
    s1.add_device(
        Device {
            id: d.clone(),
            account_id: a.clone(),
            public_key: vec![1; 32],
            revoked: false,
            created_at_ms: 0,
        },
        5,
    )
    .await
    .unwrap();
    let packages: Vec<Vec<u8>> = (0..20).map(|i| format!("kp{i}").into_bytes()).collect();
    s2.upload_key_packages(&d, packages.clone(), Some(b"lr".to_vec()), 100)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..26 {
        let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
        let d = d.clone();
        tasks.spawn(async move { s.claim_key_package(&d).await.unwrap().unwrap() });
    }
    let mut got = Vec::new();
    while let Some(j) = tasks.join_next().await {
        got.push(j.unwrap());
    }
    got.sort();
    let lr = got.iter().filter(|p| p.as_slice() == b"lr").count();
    got.retain(|p| p.as_slice() != b"lr");
    let mut want = packages;
    want.sort();
    assert_eq!((got, lr), (want, 6));
}

/// Two relays bumping one conversation's roster version: none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_bump_without_losing() {
    let (s1, s2) = (Arc::new(connect().await), Arc::new(connect().await));
    let conv = unique("bumps");
    group(&s1, &conv).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
        let conv = conv.clone();
        tasks.spawn(async move {
            s.remove_members(&conv, vec![format!("nobody-{i}")])
                .await
                .unwrap()
        });
    }
    while let Some(j) = tasks.join_next().await {
        j.unwrap();
    }
    assert_eq!(s2.mls_state(&conv).await.unwrap().roster_version, 24);
}

/// A relay's cached conversation row may be stale: it never refuses on it,
/// and it never accepts against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_cache_decides_nothing() {
    let (s1, s2) = (connect().await, connect().await);
    let conv = unique("stale");
    let a = group(&s1, &conv).await;
    s1.append(mls_msg(&conv, "c0", &a, commit(0, 0, None)))
        .await
        .unwrap();
    // s1 caches epoch 1; s2 moves the group to epoch 2.
    s2.append(mls_msg(&conv, "c1", &a, commit(1, 0, None)))
        .await
        .unwrap();
    let ok = s1
        .append(mls_msg(
            &conv,
            "a2",
            &a,
            MlsCheck::Application {
                generation: 0,
                epoch: 2,
            },
        ))
        .await
        .unwrap();
    assert_eq!(ok.seq, 3);
    // s1 caches roster version 0; s2 bumps it.
    let b = format!("{conv}-bob");
    s2.create_account(Account {
        id: b.clone(),
        display_name: String::new(),
        created_at_ms: 0,
    })
    .await
    .unwrap();
    s2.put_members(
        &conv,
        vec![Member {
            account_id: b,
            role: Role::Member,
        }],
    )
    .await
    .unwrap();
    let refused = s1
        .append(mls_msg(
            &conv,
            "a3",
            &a,
            MlsCheck::Application {
                generation: 0,
                epoch: 2,
            },
        ))
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::MembershipPending { roster_version: 1 })
        ),
        "{refused:?}"
    );
    assert_eq!(s2.head(&conv).await.unwrap(), 3);
}

/// A restart through one relay is seen by another that cached the row: it
/// neither accepts a message of the old generation nor refuses one of the
/// new on its stale copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_cache_sees_a_restart() {
    let (s1, s2) = (connect().await, connect().await);
    let conv = unique("restart");
    let a = group(&s1, &conv).await;
    s1.append(mls_msg(&conv, "c0", &a, commit(0, 0, None)))
        .await
        .unwrap();
    let app = |generation, epoch| MlsCheck::Application { generation, epoch };
    // s1 caches generation 0 at epoch 1; s2 restarts the group.
    s1.append(mls_msg(&conv, "a1", &a, app(0, 1)))
        .await
        .unwrap();
    assert_eq!(s2.reset_mls_group(&conv, 0, 1).await.unwrap().generation, 1);
    let old = s1.append(mls_msg(&conv, "a1-late", &a, app(0, 1))).await;
    assert!(
        matches!(old, Err(StoreError::WrongGeneration { current: 1 })),
        "{old:?}"
    );
    // The new generation's first commit goes through s1.
    let first = MlsCheck::Commit {
        generation: 1,
        epoch: 0,
        roster_version: 0,
        welcome: None,
    };
    let c = s1.append(mls_msg(&conv, "g1-c0", &a, first)).await.unwrap();
    assert_eq!(c.seq, 3);
    // s2 restarts again; s1's cached row says generation 1, epoch 1.
    s2.reset_mls_group(&conv, 1, 1).await.unwrap();
    let second = MlsCheck::Commit {
        generation: 2,
        epoch: 0,
        roster_version: 0,
        welcome: None,
    };
    let c = s1
        .append(mls_msg(&conv, "g2-c0", &a, second))
        .await
        .unwrap();
    assert_eq!(c.seq, 4);
    assert_eq!(
        s2.mls_state(&conv).await.unwrap(),
        MlsState {
            generation: 2,
            epoch: 1,
            roster_version: 0,
            group_roster_version: 0
        }
    );
}

/// Conversation rows written before migration 3 have NULL MLS columns: they
/// read as 0, and every conditional write on them works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_before_migration_3_read_as_zero() {
    let store = connect().await;
    let conv = unique("old-row");
    let a = format!("{conv}-alice");
    store
        .create_account(Account {
            id: a.clone(),
            display_name: String::new(),
            created_at_ms: 0,
        })
        .await
        .unwrap();
    let ks = store.keyspace().to_owned();
    // What version 2 wrote at creation.
    store
        .driver_session()
        .query_unpaged(
            format!("INSERT INTO {ks}.conversations (id, kind, title, default_ttl_seconds, created_at_ms, head, head_message_id) VALUES (?, 1, '', 0, 0, 0, 0x) IF NOT EXISTS"),
            (&conv,),
        )
        .await
        .unwrap();
    let zero = MlsState::default();
    assert_eq!(store.mls_state(&conv).await.unwrap(), zero);
    assert_eq!(store.mark_reconciled(&conv, 0, 0, 0).await.unwrap(), zero);
    assert_eq!(
        store.append(msg(&conv, "old", &a, None)).await.unwrap().seq,
        1
    );
    let fresh = connect().await;
    fresh
        .put_members(
            &conv,
            vec![Member {
                account_id: a.clone(),
                role: Role::Owner,
            }],
        )
        .await
        .unwrap();
    assert_eq!(fresh.mls_state(&conv).await.unwrap().roster_version, 1);
    let c = fresh
        .append(mls_msg(&conv, "c0", &a, commit(0, 1, None)))
        .await
        .unwrap();
    assert_eq!(c.seq, 2);
    assert_eq!(
        store.mls_state(&conv).await.unwrap(),
        MlsState {
            generation: 0,
            epoch: 1,
            roster_version: 1,
            group_roster_version: 1
        }
    );
    // A roster bump on a conversation that does not exist creates no row.
    let ghost = unique("ghost");
    store
        .remove_members(&ghost, vec![a.clone()])
        .await
        .unwrap_err();
    fresh.bump_roster(&ghost).await.unwrap();
    assert!(store.get_conversation(&ghost).await.unwrap().is_none());
}

/// A commit whose relay died after claiming its seq (steps 1 and 2 by raw
/// CQL): whoever completes the claim also stores its Welcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_commit_claim_stores_its_welcome() {
    let store = connect().await;
    let conv = unique("crashed-commit");
    let a = group(&store, &conv).await;
    store.append(msg(&conv, "m1", &a, None)).await.unwrap();
    let ks = store.keyspace().to_owned();
    let s = store.driver_session();
    s.query_unpaged(
        format!("INSERT INTO {ks}.message_ids (conversation_id, message_id, sender_account_id, sender_device_id, server_time_ms, ciphertext, welcome, welcome_devices) VALUES (?, ?, ?, 'd', 5, 0x09, 0x5757, ['joiner']) IF NOT EXISTS"),
        (&conv, b"c0".to_vec(), &a),
    )
    .await
    .unwrap();
    s.query_unpaged(
        format!("UPDATE {ks}.conversations SET head = 2, head_message_id = ?, mls_epoch = 1, group_roster_version = 0 WHERE id = ? IF head = 1 AND head_message_id = ?"),
        (b"c0".to_vec(), &conv, b"m1".to_vec()),
    )
    .await
    .unwrap();
    let other = connect().await;
    assert_eq!(other.read(&conv, 0, 10, 0).await.unwrap().len(), 2);
    assert_eq!(
        other.welcome_for("joiner", &conv).await.unwrap(),
        Some((2, b"WW".to_vec()))
    );
    // The retry of the commit is the duplicate, not a WrongEpoch.
    let retry = other
        .append(mls_msg(&conv, "c0", &a, commit(0, 0, None)))
        .await
        .unwrap();
    assert_eq!((retry.seq, retry.duplicate), (2, true));
}

/// A migration interrupted after its ALTER TABLE statements (or run by two
/// relays at once) completes when run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_migration_completes() {
    let base = test_config();
    let config = CqlConfig {
        keyspace: format!("{}_mig{}", base.keyspace, std::process::id()),
        ..base
    };
    let session = CqlStore::session(&config).await.unwrap();
    let ks = config.keyspace.clone();
    let first = CqlStore::migrate(&config).await.unwrap();
    let every: Vec<i32> = super::migrate::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(first, every);
    assert_eq!(every.len(), every.last().copied().unwrap() as usize);
    session
        .query_unpaged(
            format!("DELETE FROM {ks}.schema_migrations WHERE version = 3"),
            (),
        )
        .await
        .unwrap();
    let (again, concurrently) =
        tokio::join!(CqlStore::migrate(&config), CqlStore::migrate(&config));
    let mut applied = again.unwrap();
    applied.extend(concurrently.unwrap());
    assert!(applied.iter().all(|v| *v == 3), "{applied:?}");
    let store = CqlStore::connect(CqlConfig {
        migrate: false,
        ..config
    })
    .await
    .unwrap();
    assert_eq!(
        store.mls_roster("nothing").await.unwrap(),
        Vec::<String>::new()
    );
    drop(store);
    session
        .query_unpaged(format!("DROP KEYSPACE {ks}"), ())
        .await
        .unwrap();
}

/// Roster bumps happen after their trigger's writes; a relay dying in
/// between leaves the bump to the retry: of the account deletion (its member
/// row already gone), or of the key package upload (the last-resort package
/// stored, the device not yet announced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_complete_interrupted_bumps() {
    let store = connect().await;
    let ks = store.keyspace().to_owned();
    let conv = unique("retry-bumps");
    let a = group(&store, &conv).await;
    let d = format!("{conv}-device");
    store
        .add_device(
            Device {
                id: d.clone(),
                account_id: a.clone(),
                public_key: vec![1; 32],
                revoked: false,
                created_at_ms: 0,
            },
            5,
        )
        .await
        .unwrap();
    let up = store
        .upload_key_packages(&d, Vec::new(), Some(b"lr".to_vec()), 10)
        .await
        .unwrap();
    assert!(up.became_ready);
    assert_eq!(store.mls_state(&conv).await.unwrap().roster_version, 1);
    // The upload "died" before it marked the device announced.
    store
        .driver_session()
        .query_unpaged(
            format!("UPDATE {ks}.key_packages SET announced = false WHERE device_id = ? IF EXISTS"),
            (&d,),
        )
        .await
        .unwrap();
    let retry = store
        .upload_key_packages(&d, vec![b"kp".to_vec()], None, 10)
        .await
        .unwrap();
    assert!(retry.became_ready);
    assert_eq!(store.mls_state(&conv).await.unwrap().roster_version, 2);
    let after = store
        .upload_key_packages(&d, vec![b"kp2".to_vec()], None, 10)
        .await
        .unwrap();
    assert!(!after.became_ready);
    assert_eq!(store.mls_state(&conv).await.unwrap().roster_version, 2);

    // The deletion "died" after deleting the member row.
    store
        .driver_session()
        .query_unpaged(
            format!("DELETE FROM {ks}.members WHERE conversation_id = ? AND account_id = ?"),
            (&conv, &a),
        )
        .await
        .unwrap();
    store.delete_account(&a).await.unwrap();
    assert_eq!(store.mls_state(&conv).await.unwrap().roster_version, 3);
}

/// An append that crashed after moving the audit chain's head, before
/// writing its row, leaves no gap: the next listing writes the row from the
/// head, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_audit_append_is_completed_by_the_next_listing() {
    let store = connect().await;
    let at_ms = 1_950_000_000_000 + i64::from(std::process::id());
    let mut entry = crate::AuditEntry {
        at_ms,
        id: unique("crashed-audit"),
        operator: "ops".into(),
        action: "DeleteAccount".into(),
        target: unique("someone"),
        outcome: "ok".into(),
        detail: String::new(),
        chain: unique("relay"),
        chain_seq: 0,
        hash: Vec::new(),
    };
    // Only the LWT step of an append (another test may move the head
    // meanwhile: then again).
    let mut head;
    loop {
        head = store.audit_head(&entry.chain).await.unwrap();
        if store
            .move_audit_head(head.as_ref(), &mut entry)
            .await
            .unwrap()
        {
            break;
        }
    }
    let listed = store.list_audit(at_ms + 1, "", 1).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0], entry);
    if let Some(h) = head {
        let prev: [u8; 32] = h.hash.as_slice().try_into().unwrap();
        assert_eq!(
            entry.hash,
            herold_proto::audit::entry_hash(&prev, &entry.chain_fields(entry.chain_seq)).to_vec()
        );
        assert_eq!(entry.chain_seq, h.chain_seq + 1);
    }
}
