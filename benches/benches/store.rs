//! Store latency: `append` (one message, durable) and `read` (a page of 100)
//! on the embedded backend (redb in a temp dir) and, when `HEROLD_TEST_CQL`
//! is set (scripts/cassandra.sh start), on the CQL backend (Cassandra 5
//! standing in for Scylla, one local node, consistency LOCAL_ONE).
//!
//! `cargo bench -p herold-benches --bench store`; figures in
//! docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

#[path = "common/config.rs"]
mod bench;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herold_store::cql::CqlStore;
use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};
use herold_store::{Account, Conversation, ConversationKind, Member, NewMessage, Role, Store};
use tokio::runtime::Runtime;

const NOW: i64 = 1_900_000_000_000;
const PREFILL: u64 = 1_000;

fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("bench-{}-{nanos:x}", std::process::id())
}

fn message(conv: &str, n: u64) -> NewMessage {
    NewMessage {
        conversation_id: conv.into(),
        message_id: format!("m{n}").into_bytes(),
        sender_account_id: "volunteer-4711".into(),
        sender_device_id: "volunteer-4711.phone".into(),
        server_time_ms: NOW,
        expires_at_ms: None,
        // A typical MLS application message carrying a short text.
        ciphertext: vec![0xAB; 1024],
        mls: None,
    }
}

/// A group conversation with one member; returns its id.
async fn setup(store: &dyn Store, prefix: &str, name: &str) -> String {
    let account = format!("{prefix}-acc");
    if store.get_account(&account).await.unwrap().is_none() {
        store
            .create_account(Account {
                id: account.clone(),
                display_name: String::new(),
                created_at_ms: NOW,
            })
            .await
            .unwrap();
    }
    let conv = format!("{prefix}-{name}");
    store
        .create_conversation(
            Conversation {
                id: conv.clone(),
                kind: ConversationKind::Group,
                title: String::new(),
                default_ttl_seconds: 0,
                created_at_ms: NOW,
            },
            vec![Member {
                account_id: account,
                role: Role::Member,
            }],
        )
        .await
        .unwrap();
    conv
}

fn bench_backend(c: &mut Criterion, rt: &Runtime, name: &str, store: Arc<dyn Store>) {
    let prefix = run_id();
    let mut g = c.benchmark_group("store");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(1));

    let conv = rt.block_on(setup(&*store, &prefix, "append"));
    let counter = AtomicU64::new(0);
    g.bench_function(format!("append/{name}"), |b| {
        b.iter(|| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            rt.block_on(store.append(message(&conv, n))).unwrap()
        })
    });

    let conv = rt.block_on(async {
        let conv = setup(&*store, &prefix, "read").await;
        for n in 0..PREFILL {
            store.append(message(&conv, n)).await.unwrap();
        }
        conv
    });
    let offset = AtomicU64::new(0);
    g.bench_function(format!("read_100/{name}"), |b| {
        b.iter(|| {
            let after = offset.fetch_add(100, Ordering::Relaxed) % (PREFILL - 100);
            let page = rt.block_on(store.read(&conv, after, 100, NOW)).unwrap();
            assert_eq!(page.len(), 100);
        })
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(dir.path().join("store"), EmbeddedConfig::default())
        .expect("open the embedded store");
    bench_backend(c, &rt, "embedded", Arc::new(embedded));

    match bench::test_cql() {
        Some(config) => {
            let cql = rt.block_on(CqlStore::connect(config));
            bench_backend(c, &rt, "cql", Arc::new(cql.expect("connect to CQL")));
        }
        None => eprintln!(
            "store bench: HEROLD_TEST_CQL not set, CQL backend skipped \
             (scripts/cassandra.sh start; HEROLD_TEST_CQL=127.0.0.1:9042)"
        ),
    }
}

criterion_group!(benches, store);
criterion_main!(benches);
