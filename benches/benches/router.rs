//! Fan-out planning: locating a conversation's devices and grouping them by
//! relay node, on the in-process router, for a 1:1, a polling-station group,
//! a 200-device group and a 7,000-member channel.

#![allow(clippy::unwrap_used)] // benchmark setup: a panic is a failure

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herold_router::Router;
use herold_router::memory::MemoryRouter;

fn locate(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let router = MemoryRouter::default();
    let nodes = ["relay-1", "relay-2", "relay-3"];
    let _inboxes: Vec<_> = nodes
        .iter()
        .map(|n| rt.block_on(router.register_node(n)).unwrap())
        .collect();
    let devices: Vec<String> = (0..7_200).map(|i| format!("vol-{i}.phone")).collect();
    for (i, chunk) in devices.chunks(2_400).enumerate() {
        rt.block_on(router.set_present(nodes[i], chunk)).unwrap();
    }
    let mut g = c.benchmark_group("router_locate");
    for n in [2usize, 12, 200, 7_000] {
        let query = &devices[..n];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("memory", n), query, |b, q| {
            b.iter(|| {
                let located = rt.block_on(router.locate(q)).unwrap();
                assert!(!located.is_empty());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, locate);
criterion_main!(benches);
