//! Fan-out planning: locating a conversation's devices and grouping them by
//! relay node, for a 1:1, a polling-station group, a 200-device group and a
//! 7,000-member channel, on the in-process router and, when
//! `HEROLD_TEST_REDIS` / `HEROLD_TEST_REDIS_CLUSTER` are set (scripts/redis.sh
//! env), on the Redis router against a single Redis and a Redis Cluster.
//! Also one publish of a 1 KiB delivery into a node inbox per backend.

#![allow(clippy::unwrap_used)] // benchmark setup: a panic is a failure

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herold_router::memory::MemoryRouter;
use herold_router::redis::{RedisConfig, RedisRouter, Topology};
use herold_router::{Delivery, Inbox, Router};

fn backends() -> Vec<(&'static str, Box<dyn Router>)> {
    let mut out: Vec<(&'static str, Box<dyn Router>)> =
        vec![("memory", Box::new(MemoryRouter::new(1 << 20)))];
    for (name, var) in [
        ("redis", "HEROLD_TEST_REDIS"),
        ("redis-cluster", "HEROLD_TEST_REDIS_CLUSTER"),
    ] {
        match std::env::var(var) {
            Ok(addr) if !addr.trim().is_empty() => {
                let mut cfg = RedisConfig::new(Topology::parse(&addr).unwrap());
                let mut salt = [0u8; 4];
                getrandom::fill(&mut salt).unwrap();
                cfg.prefix = format!("hbench-{:08x}", u32::from_le_bytes(salt));
                out.push((name, Box::new(RedisRouter::new(cfg).unwrap())));
            }
            _ => eprintln!(
                "router bench: {var} not set, {name} skipped (scripts/redis.sh start; eval $(scripts/redis.sh env))"
            ),
        }
    }
    out
}

fn locate(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let nodes = ["relay-1", "relay-2", "relay-3"];
    let devices: Vec<String> = (0..7_200).map(|i| format!("vol-{i}.phone")).collect();
    let mut g = c.benchmark_group("router_locate");
    for (name, router) in backends() {
        let router = &*router;
        let mut inboxes: Vec<Inbox> = nodes
            .iter()
            .map(|n| rt.block_on(router.register_node(n)).unwrap())
            .collect();
        for (i, chunk) in devices.chunks(2_400).enumerate() {
            rt.block_on(router.set_present(nodes[i], chunk)).unwrap();
        }
        for n in [2usize, 12, 200, 7_000] {
            let query = &devices[..n];
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(name, n), query, |b, q| {
                b.iter(|| {
                    let located = rt.block_on(router.locate(q)).unwrap();
                    assert!(!located.is_empty());
                })
            });
        }
        let d = Delivery {
            conversation_id: "station-42".into(),
            seq: 1,
            expires_at_ms: None,
            accepted_at_ms: None,
            traceparent: None,
            frame: Bytes::from(vec![7u8; 1024]),
            devices: devices[..12].to_vec(),
        };
        // Drain the inbox meanwhile so it does not fill up.
        let mut inbox = inboxes.remove(0);
        let drain = rt.spawn(async move { while inbox.recv().await.is_some() {} });
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new(format!("{name}/publish"), "1KiB"), |b| {
            b.iter(|| rt.block_on(router.publish(nodes[0], d.clone())).unwrap())
        });
        for n in nodes {
            rt.block_on(router.deregister_node(n)).unwrap();
        }
        drain.abort();
    }
    g.finish();
}

criterion_group!(benches, locate);
criterion_main!(benches);
