//! The storage ceiling: redb's raw durable write rate on this disk, next to
//! the embedded store's append rate under concurrency (group commit), in the
//! same run.
//!
//! - `redb_raw/commit_per_write`: one insert, one fsynced commit: what a
//!   store without group commit could do at best.
//! - `redb_raw/commit_per_64`: 64 inserts in one fsynced commit.
//! - `embedded_store/append_x64_concurrent`: 64 concurrent appends of
//!   256-byte messages through `EmbeddedStore` (validation, idempotency
//!   index, seq assignment, group commit).

#![allow(clippy::unwrap_used)] // benchmark setup: a panic is a failure

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};
use herold_store::{Account, Conversation, ConversationKind, Member, NewMessage, Role, Store};
use redb::{Database, Durability, TableDefinition};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("bench");

fn raw(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("raw.redb")).unwrap();
    let payload = vec![0xabu8; 256];
    let mut key = 0u64;
    let mut g = c.benchmark_group("redb_raw");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    for batch in [1u64, 64] {
        g.throughput(Throughput::Elements(batch));
        let name = if batch == 1 {
            "commit_per_write"
        } else {
            "commit_per_64"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut txn = db.begin_write().unwrap();
                txn.set_durability(Durability::Immediate).unwrap();
                {
                    let mut t = txn.open_table(TABLE).unwrap();
                    for _ in 0..batch {
                        key += 1;
                        t.insert(key, payload.as_slice()).unwrap();
                    }
                }
                txn.commit().unwrap();
            })
        });
    }
    g.finish();
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), EmbeddedConfig::default()).unwrap());
    rt.block_on(async {
        store
            .create_account(Account {
                id: "a".into(),
                display_name: String::new(),
                created_at_ms: 0,
            })
            .await
            .unwrap();
        store
            .create_conversation(
                Conversation {
                    id: "c".into(),
                    kind: ConversationKind::Group,
                    title: String::new(),
                    default_ttl_seconds: 0,
                    created_at_ms: 0,
                },
                vec![Member {
                    account_id: "a".into(),
                    role: Role::Member,
                }],
            )
            .await
            .unwrap();
    });
    let mut next = 0u128;
    let mut g = c.benchmark_group("embedded_store");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(64));
    g.bench_function("append_x64_concurrent", |b| {
        b.iter_custom(|iters| {
            let mut ids = Vec::new();
            for _ in 0..iters * 64 {
                next += 1;
                ids.push(next.to_be_bytes().to_vec());
            }
            let store = store.clone();
            rt.block_on(async move {
                let start = Instant::now();
                for chunk in ids.chunks(64) {
                    let mut set = tokio::task::JoinSet::new();
                    for id in chunk {
                        let (store, id) = (store.clone(), id.clone());
                        set.spawn(async move {
                            store
                                .append(NewMessage {
                                    conversation_id: "c".into(),
                                    message_id: id,
                                    sender_account_id: "a".into(),
                                    sender_device_id: "a.d".into(),
                                    server_time_ms: 0,
                                    expires_at_ms: None,
                                    ciphertext: vec![0xab; 256],
                                    mls: None,
                                })
                                .await
                                .unwrap()
                        });
                    }
                    while set.join_next().await.is_some() {}
                }
                Instant::now().saturating_duration_since(start)
            })
        })
    });
    g.finish();
}

criterion_group!(benches, raw, store);
criterion_main!(benches);
