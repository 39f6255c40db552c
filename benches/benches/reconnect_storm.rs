//! A reconnect storm on one node: the devices of a 2,000-member group
//! (`HEROLD_BENCH_STORM_DEVICES`) were away while 20 messages were posted,
//! and all come back at once (polls open, a network returns). Measured:
//! the log reads the relay made in its store for the storm (the
//! `read` operations of `herold_store_operation_seconds`), all its store
//! operations, how long until each device had every missed message (a
//! connect that fails is tried again, and counted), and the UDP datagrams
//! the kernel dropped on both sides.
//!
//! The store is the embedded default, and also CQL when `HEROLD_TEST_CQL`
//! is set (`scripts/cassandra.sh start`; keyspace `HEROLD_TEST_CQL_KEYSPACE`,
//! default `herold_test`; ids carry a per-run prefix). The relay has a
//! runtime with one worker pinned to CPU 0, the devices one pinned to CPU
//! 1 (`HEROLD_BENCH_PIN=0`: unpinned).
//!
//! `cargo bench -p herold-benches --bench reconnect_storm`. Linux only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

#[path = "common/config.rs"]
mod bench;
#[path = "common/fanout.rs"]
mod fanout;
#[path = "common/pin.rs"]
mod pin;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herold_client::{Client, ClientConfig};
use herold_relay::Relay;
use herold_store::cql::CqlConfig;
use pin::{env_count, pin_this_thread, pin_unless_told_not_to, runtime};

/// Devices that come back at once, unless the environment says otherwise.
const DEVICES: usize = 2_000;
/// Messages posted while they were away.
const MISSED: usize = 20;
/// The storm must be over by then.
const DEADLINE: Duration = Duration::from_secs(120);
/// Client UDP sockets the devices are spread over (as the load tester).
const CLIENT_SOCKETS: usize = 8;
/// Failed connects tried again in one storm before the run fails.
const MAX_RETRIES: u64 = 100;

/// Sum of the relay's series `name` whose labels include `label`
/// (process-wide exposition).
fn relay_series(name: &str, label: &str) -> u64 {
    let text = herold_relay::metrics::install().unwrap().render();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
fn store_ops(label: &str) -> u64 {
    relay_series("herold_store_operation_seconds_count{", label)
}

fn storm(backend: &str, cql: Option<CqlConfig>, devices: usize, pinned: bool) {
    if pinned {
        pin_this_thread(0);
    }
    let server_rt = runtime("bench-server");
    let dir = tempfile::tempdir().unwrap();
    let mut config = bench::bench_config(dir.path());
    config.cql = cql;
    let relay = server_rt.block_on(Relay::bind(config)).unwrap();
    let addr = relay.local_addr().unwrap();
    let fp = herold_client::tls::parse_fingerprint(relay.fingerprint()).unwrap();
    let admin_url = format!("http://{}", relay.admin_addr().unwrap());
    server_rt.spawn(relay.run(std::future::pending()));
    if pinned {
        pin_this_thread(1);
    }
    let client_rt = runtime("bench-client");
    let mut run = [0u8; 4];
    getrandom::fill(&mut run).unwrap();
    let prefix = format!("st{:08x}-", u32::from_be_bytes(run));
    client_rt.block_on(async {
        let endpoints: Vec<_> = (0..CLIENT_SOCKETS)
            .map(|_| fanout::udp_endpoint(None))
            .collect();
        let client_ports: Vec<u16> = endpoints
            .iter()
            .map(|e| e.local_addr().unwrap().port())
            .collect();
        let mut keys = fanout::provision(admin_url, &prefix, devices).await;
        let (id, key) = keys.remove(0);
        let mut config = ClientConfig::new(addr, fp, &id, key);
        config.endpoint = Some(endpoints[0].clone());
        config.tcp_fallback = false;
        let sender = Client::connect(config).await.unwrap();
        let conversation = format!("{prefix}g");
        for i in 0..MISSED {
            let payload = fanout::stamped(i as u32, 600);
            sender
                .sender()
                .send(&conversation, payload, 0)
                .await
                .unwrap();
        }
        let (reads, ops) = (store_ops("op=\"read\""), store_ops(""));
        let drops = (
            fanout::udp_drops(&[addr.port()]),
            fanout::udp_drops(&client_ports),
        );
        let start = Instant::now();
        let retried = Arc::new(AtomicU64::new(0));
        let mut storm = tokio::task::JoinSet::new();
        for (i, (id, key)) in keys.into_iter().enumerate() {
            let mut config = ClientConfig::new(addr, fp, &id, key);
            config.endpoint = Some(endpoints[i % endpoints.len()].clone());
            config.tcp_fallback = false;
            let retried = retried.clone();
            storm.spawn(async move {
                // As an app would: a connect that fails is tried again.
                let mut c = loop {
                    match Client::connect(config.clone()).await {
                        Ok(c) => break c,
                        Err(e) if retried.fetch_add(1, Ordering::Relaxed) < MAX_RETRIES => {
                            eprintln!("reconnect_storm: a connect failed ({e}), trying again");
                        }
                        Err(e) => panic!("connects failed more than {MAX_RETRIES} times: {e}"),
                    }
                };
                for _ in 0..MISSED {
                    c.next_message().await.unwrap();
                }
                let took = Instant::now().saturating_duration_since(start);
                (took, c)
            });
        }
        let mut waits = Vec::new();
        let mut back = Vec::new();
        while let Some(r) = tokio::time::timeout(DEADLINE, storm.join_next())
            .await
            .expect("the storm ends in time")
        {
            let (took, c) = r.unwrap();
            waits.push(took);
            back.push(c);
        }
        let (reads, ops) = (store_ops("op=\"read\"") - reads, store_ops("") - ops);
        let drops = (
            fanout::udp_drops(&[addr.port()]) - drops.0,
            fanout::udp_drops(&client_ports) - drops.1,
        );
        waits.sort_unstable();
        println!(
            "reconnect_storm/{backend}: {devices} devices, {MISSED} missed messages each: \
             {reads} log reads in the store ({:.3} per device), {ops} store operations in all \
             ({:.1} per device); every missed message at the device after p50 {:.0} ms, \
             p99 {:.0} ms, max {:.0} ms; connects tried again {}; UDP drops at the relay {}, \
             at the devices {}",
            reads as f64 / devices as f64,
            ops as f64 / devices as f64,
            fanout::quantile_ms(&waits, 0.5),
            fanout::quantile_ms(&waits, 0.99),
            fanout::quantile_ms(&waits, 1.0),
            retried.load(Ordering::Relaxed),
            drops.0,
            drops.1,
        );
        for c in back {
            c.close().await;
        }
        sender.close().await;
    });
    client_rt.shutdown_timeout(Duration::from_secs(5));
    server_rt.shutdown_timeout(Duration::from_secs(5));
}

fn main() {
    let devices = env_count("HEROLD_BENCH_STORM_DEVICES", DEVICES);
    let pinned = pin_unless_told_not_to();
    eprintln!(
        "reconnect_storm: {}",
        if pinned {
            "relay on CPU 0, devices on CPU 1"
        } else {
            "not pinned"
        }
    );
    storm("embedded", None, devices, pinned);
    match bench::test_cql() {
        Some(cql) => storm("cql", Some(cql), devices, pinned),
        None => eprintln!("reconnect_storm: HEROLD_TEST_CQL not set, CQL skipped"),
    }
}
