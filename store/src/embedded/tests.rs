//! Tests of the embedded backend: the conformance suite, plus what only this
//! backend promises (restart, group commit, shutdown).

use std::sync::Arc;
use std::sync::mpsc;

use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::{EmbeddedConfig, EmbeddedStore, Job, WriteTables};
use crate::conformance::NOW;
use crate::{
    Account, Conversation, ConversationKind, Device, Member, NewMessage, Role, Store, StoreError,
};

async fn make_store() -> (Arc<dyn Store>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("data"), EmbeddedConfig::default()).unwrap();
    (Arc::new(store), dir)
}

mod conformance {
    crate::conformance_tests!(super::make_store);
}

fn open(dir: &TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path(), EmbeddedConfig::default()).unwrap()
}

fn account(id: &str) -> Account {
    Account {
        id: id.into(),
        display_name: String::new(),
        created_at_ms: NOW,
    }
}

fn message(conv: &str, id: &str) -> NewMessage {
    NewMessage {
        conversation_id: conv.into(),
        message_id: id.as_bytes().to_vec(),
        sender_account_id: "alice".into(),
        sender_device_id: "phone".into(),
        server_time_ms: NOW,
        expires_at_ms: None,
        ciphertext: id.as_bytes().to_vec(),
        mls: None,
    }
}

/// An account "alice" with device "phone", in group conversation `conv`.
async fn setup(store: &EmbeddedStore, conv: &str) {
    if store.get_account("alice").await.unwrap().is_none() {
        store.create_account(account("alice")).await.unwrap();
        store
            .add_device(
                Device {
                    id: "phone".into(),
                    account_id: "alice".into(),
                    public_key: vec![1; 32],
                    revoked: false,
                    created_at_ms: NOW,
                },
                5,
            )
            .await
            .unwrap();
    }
    store
        .create_conversation(
            Conversation {
                id: conv.into(),
                kind: ConversationKind::Group,
                title: String::new(),
                default_ttl_seconds: 0,
                created_at_ms: NOW,
            },
            vec![Member {
                account_id: "alice".into(),
                role: Role::Owner,
            }],
        )
        .await
        .unwrap();
}

/// A job that blocks the writer until released.
struct Hold {
    started: Option<oneshot::Sender<()>>,
    release: mpsc::Receiver<()>,
}

impl Job for Hold {
    fn run(&mut self, _: &mut WriteTables<'_>) -> Result<(), StoreError> {
        if let Some(started) = self.started.take() {
            let _ = started.send(());
        }
        let _ = self.release.recv();
        Ok(())
    }

    fn finish(self: Box<Self>, _: Option<StoreError>) {}
}

/// Blocks the writer; returns once it is blocked. Operations submitted
/// until the returned sender is used (or dropped) all land in the next batch
/// (if there are at most `max_batch` of them).
async fn hold_writer(store: &EmbeddedStore) -> mpsc::Sender<()> {
    let (started, is_started) = oneshot::channel();
    let (release, released) = mpsc::channel();
    store
        .submit(Box::new(Hold {
            started: Some(started),
            release: released,
        }))
        .unwrap();
    is_started.await.unwrap();
    release
}

/// Waits (yielding) until `n` operations in all were handed to the writer.
async fn until_submitted(store: &EmbeddedStore, n: u64) {
    while store.stats().submitted < n {
        tokio::task::yield_now().await;
    }
}

/// Spawns `op` and waits until it was handed to the writer, so that
/// operations spawned this way queue in order.
async fn spawn_in_order<T: Send + 'static>(
    tasks: &mut JoinSet<T>,
    store: &EmbeddedStore,
    op: impl Future<Output = T> + Send + 'static,
) {
    let target = store.stats().submitted + 1;
    tasks.spawn(op);
    until_submitted(store, target).await;
}

#[test]
fn store_is_send_sync_debug_clone() {
    fn check<T: Send + Sync + std::fmt::Debug + Clone + 'static>() {}
    check::<EmbeddedStore>();
}

#[test]
fn config_is_validated() {
    assert!(EmbeddedConfig::default().validate().is_ok());
    for bad in [
        EmbeddedConfig {
            max_batch: 0,
            ..EmbeddedConfig::default()
        },
        EmbeddedConfig {
            purge_chunk: 0,
            ..EmbeddedConfig::default()
        },
    ] {
        assert!(matches!(bad.validate(), Err(StoreError::InvalidConfig(_))));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            EmbeddedStore::open(dir.path(), bad),
            Err(StoreError::InvalidConfig(_))
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopen_and_seq_continues() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested").join("data");
    {
        let store = EmbeddedStore::open(&data, EmbeddedConfig::default()).unwrap();
        assert!(data.join(super::DB_FILE_NAME).is_file());
        setup(&store, "conv").await;
        for i in 1..=3 {
            assert_eq!(
                store
                    .append(message("conv", &format!("m{i}")))
                    .await
                    .unwrap()
                    .seq,
                i
            );
        }
        store
            .advance_cursors("phone", vec![("conv".into(), 2)])
            .await
            .unwrap();
        // A clone outliving the first handle keeps the store open.
        let clone = store.clone();
        drop(store);
        assert_eq!(clone.head("conv").await.unwrap(), 3);
    }
    let store = EmbeddedStore::open(&data, EmbeddedConfig::default()).unwrap();
    assert_eq!(
        store.get_account("alice").await.unwrap(),
        Some(account("alice"))
    );
    assert!(store.get_device("phone").await.unwrap().is_some());
    assert_eq!(store.members("conv").await.unwrap().len(), 1);
    assert_eq!(
        store.cursors("phone").await.unwrap(),
        vec![("conv".to_string(), 2)]
    );
    assert_eq!(store.head("conv").await.unwrap(), 3);
    let again = store.append(message("conv", "m2")).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (2, true));
    assert_eq!(store.append(message("conv", "m4")).await.unwrap().seq, 4);
    let read = store.read("conv", 0, 10, NOW).await.unwrap();
    assert_eq!(read.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
}

#[tokio::test]
async fn second_open_of_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(matches!(
        EmbeddedStore::open(dir.path(), EmbeddedConfig::default()),
        Err(StoreError::Backend(_))
    ));
    store.close().await.unwrap();
    // Closed: the file is free again.
    let reopened = open(&dir);
    assert!(!reopened.is_closed());
}

#[tokio::test]
async fn closed_store_refuses_calls() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    setup(&store, "conv").await;
    let clone = store.clone();
    store.close().await.unwrap();
    assert!(clone.is_closed());
    assert!(matches!(
        clone.append(message("conv", "m")).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        clone.create_account(account("bob")).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        clone.get_account("alice").await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        clone.read("conv", 0, 10, NOW).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        clone.purge_expired(NOW).await,
        Err(StoreError::Closed)
    ));
    // Closing again is fine.
    clone.close().await.unwrap();
    store.close().await.unwrap();
}

/// Every append acknowledged before or during close is on disk, and the
/// acknowledged seqs are exactly 1..=n.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_applies_queued_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    setup(&store, "conv").await;
    let before = store.stats().submitted;
    let release = hold_writer(&store).await;
    let mut tasks = JoinSet::new();
    for i in 0..100 {
        let store = store.clone();
        tasks.spawn(async move { store.append(message("conv", &format!("m{i}"))).await });
    }
    // Half of them queued behind the held writer, then close.
    until_submitted(&store, before + 1 + 50).await;
    let closing = {
        let store = store.clone();
        tokio::spawn(async move { store.close().await })
    };
    // close() stops new work before waiting for the writer.
    while !store.is_closed() {
        tokio::task::yield_now().await;
    }
    release.send(()).unwrap();
    closing.await.unwrap().unwrap();
    let mut acked = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            Ok(appended) => acked.push(appended.seq),
            Err(StoreError::Closed) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    acked.sort_unstable();
    assert!(acked.len() >= 50, "only {} acknowledged", acked.len());
    assert_eq!(acked, (1..=acked.len() as u64).collect::<Vec<_>>());
    drop(store);
    let store = open(&dir);
    assert_eq!(store.head("conv").await.unwrap(), acked.len() as u64);
    assert_eq!(
        store.read("conv", 0, 1000, NOW).await.unwrap().len(),
        acked.len()
    );
}

/// Operations queued while the writer is busy share one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_share_one_commit() {
    const N: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    setup(&store, "conv").await;
    let before = store.stats();
    let release = hold_writer(&store).await;
    let mut tasks = JoinSet::new();
    for i in 0..N {
        let store = store.clone();
        tasks.spawn(async move { store.append(message("conv", &format!("m{i}"))).await });
    }
    until_submitted(&store, before.submitted + 1 + N).await;
    release.send(()).unwrap();
    let mut seqs = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        seqs.push(joined.unwrap().unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    let after = store.stats();
    // The held batch, then all 500 appends (<= max_batch) in one.
    assert_eq!(after.commits - before.commits, 2);
    assert_eq!(after.ops_committed - before.ops_committed, N + 1);
}

/// Without any help, concurrent appends still batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_batch() {
    const N: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    setup(&store, "conv").await;
    let before = store.stats().commits;
    let mut tasks = JoinSet::new();
    for i in 0..N {
        let store = store.clone();
        tasks.spawn(async move { store.append(message("conv", &format!("m{i}"))).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap().unwrap();
    }
    let commits = store.stats().commits - before;
    eprintln!("{commits} commits for {N} concurrent appends");
    assert!(commits < N, "{commits} commits for {N} appends");
    assert_eq!(store.head("conv").await.unwrap(), N);
}

/// In one batch: logical errors answer only their own operation, appends of
/// one conversation and repeats of a message id see each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_mixes_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    setup(&store, "conv").await;
    let before = store.stats();
    let release = hold_writer(&store).await;
    let mut tasks: JoinSet<(usize, String)> = JoinSet::new();
    let ops: Vec<std::pin::Pin<Box<dyn Future<Output = String> + Send>>> = {
        let s = || store.clone();
        vec![
            Box::pin({
                let s = s();
                async move { format!("{:?}", s.append(message("conv", "a")).await) }
            }),
            Box::pin({
                let s = s();
                async move { format!("{:?}", s.create_account(account("alice")).await) }
            }),
            Box::pin({
                let s = s();
                async move { format!("{:?}", s.append(message("conv", "b")).await) }
            }),
            Box::pin({
                let s = s();
                async move { format!("{:?}", s.append(message("nowhere", "x")).await) }
            }),
            Box::pin({
                let s = s();
                async move { format!("{:?}", s.append(message("conv", "a")).await) }
            }),
            Box::pin({
                let s = s();
                async move { format!("{:?}", s.create_account(account("bob")).await) }
            }),
            Box::pin({
                let s = s();
                async move { format!("{:?}", s.create_account(account("bob")).await) }
            }),
        ]
    };
    for (i, op) in ops.into_iter().enumerate() {
        spawn_in_order(&mut tasks, &store, async move { (i, op.await) }).await;
    }
    release.send(()).unwrap();
    let mut results = vec![String::new(); 7];
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.unwrap();
        results[i] = result;
    }
    assert_eq!(
        results,
        [
            format!("Ok(Appended {{ seq: 1, server_time_ms: {NOW}, duplicate: false }})"),
            r#"Err(AccountExists("alice"))"#.to_string(),
            format!("Ok(Appended {{ seq: 2, server_time_ms: {NOW}, duplicate: false }})"),
            r#"Err(NoSuchConversation("nowhere"))"#.to_string(),
            format!("Ok(Appended {{ seq: 1, server_time_ms: {NOW}, duplicate: true }})"),
            "Ok(())".to_string(),
            r#"Err(AccountExists("bob"))"#.to_string(),
        ]
    );
    assert_eq!(store.stats().commits - before.commits, 2);
    assert!(store.get_account("bob").await.unwrap().is_some());
    assert_eq!(store.head("conv").await.unwrap(), 2);
}

/// A corrupt record fails the operation that meets it; the rest of its
/// batch is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_record_fails_only_its_operation() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    setup(&store, "conv").await;
    // A device record that does not decode: field 1 says 5 bytes follow.
    store
        .write(|t| {
            t.devices
                .insert("broken", [0x0a_u8, 0x05].as_slice())
                .map(|_| ())
                .map_err(|e| StoreError::Backend(e.to_string()))
        })
        .await
        .unwrap();
    assert!(matches!(
        store.get_device("broken").await,
        Err(StoreError::Corrupt {
            table: "devices",
            ..
        })
    ));
    let before = store.stats();
    let release = hold_writer(&store).await;
    let mut tasks = JoinSet::new();
    {
        let s = store.clone();
        spawn_in_order(&mut tasks, &store, async move {
            format!(
                "{:?}",
                s.append(message("conv", "first")).await.map(|a| a.seq)
            )
        })
        .await;
        let s = store.clone();
        spawn_in_order(&mut tasks, &store, async move {
            match s.revoke_device("broken").await {
                Err(StoreError::Corrupt { table, .. }) => format!("corrupt {table}"),
                other => format!("{other:?}"),
            }
        })
        .await;
        let s = store.clone();
        spawn_in_order(&mut tasks, &store, async move {
            format!(
                "{:?}",
                s.append(message("conv", "second")).await.map(|a| a.seq)
            )
        })
        .await;
    }
    release.send(()).unwrap();
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.unwrap());
    }
    results.sort();
    assert_eq!(results, ["Ok(1)", "Ok(2)", "corrupt devices"]);
    let after = store.stats();
    // The held batch, then the retry without the corrupt operation.
    assert_eq!(after.commits - before.commits, 2);
    assert_eq!(after.failed_batches, before.failed_batches);
    let read = store.read("conv", 0, 10, NOW).await.unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].message_id, b"first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_runs_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(
        dir.path(),
        EmbeddedConfig {
            purge_chunk: 3,
            ..EmbeddedConfig::default()
        },
    )
    .unwrap();
    setup(&store, "conv").await;
    for i in 0..10 {
        let mut m = message("conv", &format!("m{i}"));
        m.expires_at_ms = Some(NOW + i);
        store.append(m).await.unwrap();
    }
    store.append(message("conv", "keep")).await.unwrap();
    let before = store.stats().commits;
    assert_eq!(store.purge_expired(NOW + 9).await.unwrap(), 10);
    // 3 + 3 + 3 + 1: four chunks, each its own operation.
    assert_eq!(store.stats().commits - before, 4);
    assert_eq!(store.purge_expired(NOW + 9).await.unwrap(), 0);
    let left = store.read("conv", 0, 100, 0).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].seq, 11);
    // The purged ids are free again; the seq continues.
    let again = store.append(message("conv", "m0")).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (12, false));
}

#[tokio::test]
async fn unknown_layout_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    open(&dir).close().await.unwrap();
    {
        let db = redb::Database::create(dir.path().join(super::DB_FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(super::META)
            .unwrap()
            .insert(super::SCHEMA_VERSION_KEY, 99)
            .unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(
        EmbeddedStore::open(dir.path(), EmbeddedConfig::default()),
        Err(StoreError::Corrupt { table: "meta", .. })
    ));
}
