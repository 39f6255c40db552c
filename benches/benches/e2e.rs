//! End to end on one node over loopback, against the transport's ceiling.
//!
//! Group `fanout_50_devices_256B`, deliveries per second of wall time:
//! `herold`: one device sends to a group of 50 receiving devices through a
//! relay on the embedded default (auth, membership, durable append,
//! ordering, routing, delivery, acks). `quinn`: the same payloads between
//! the same numbers of endpoints through a plain quinn server that only
//! forwards frames, no storage, no checks: what the transport itself costs
//! on this machine. The server's CPU per delivery is in `cpu_per_delivery.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

#[path = "common/config.rs"]
mod bench;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herold_relay::Relay;
use tokio::runtime::Handle;

#[path = "common/fanout.rs"]
mod fanout;

use fanout::{Counter, Forwarder, PAYLOAD, herold_clients, quinn_forwarder, submit_wire};

const RECEIVERS: usize = 50;
const BATCH: u64 = 200;
struct HeroldSetup {
    sender: herold_client::Sender,
    counter: Arc<Counter>,
    _dir: tempfile::TempDir,
}
async fn herold_setup() -> HeroldSetup {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::bind(bench::bench_config(dir.path())).await.unwrap();
    let addr = relay.local_addr().unwrap();
    let fp = herold_client::tls::parse_fingerprint(relay.fingerprint()).unwrap();
    let admin_url = format!("http://{}", relay.admin_addr().unwrap());
    tokio::spawn(relay.run(std::future::pending()));
    let endpoint = herold_client::raw::client_endpoint(addr).unwrap();
    let (sender, counter) = herold_clients(addr, fp, admin_url, RECEIVERS, &[endpoint]).await;
    HeroldSetup {
        sender,
        counter,
        _dir: dir,
    }
}
async fn quinn_setup() -> Forwarder {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = rustls_pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let fp = herold_relay::fingerprint(&cert);
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tls.alpn_protocols = vec![herold_proto::ALPN.to_vec()];
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap(),
    ));
    let server =
        quinn::Endpoint::server(server_config, SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let fp = herold_client::tls::parse_fingerprint(&fp).unwrap();
    let client = herold_client::raw::client_endpoint(server.local_addr().unwrap()).unwrap();
    quinn_forwarder(server, &Handle::current(), fp, &[client], RECEIVERS).await
}
fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("fanout_50_devices_256B");
    g.throughput(Throughput::Elements(BATCH * RECEIVERS as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    let wire = submit_wire();
    // Set up on first use, so that a filter that skips a benchmark skips
    // its setup too.
    let mut quinn = None;
    g.bench_function("quinn", |b| {
        let q = quinn.get_or_insert_with(|| rt.block_on(quinn_setup()));
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = q.counter.n.load(Ordering::Acquire) + BATCH * RECEIVERS as u64;
                    for _ in 0..BATCH {
                        q.send.write_all(&wire).await.unwrap();
                    }
                    q.counter.wait_for(target).await;
                }
                Instant::now().saturating_duration_since(start)
            })
        })
    });
    let mut herold = None;
    g.bench_function("herold", |b| {
        let h = herold.get_or_insert_with(|| rt.block_on(herold_setup()));
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = h.counter.n.load(Ordering::Acquire) + BATCH * RECEIVERS as u64;
                    let mut sends = tokio::task::JoinSet::new();
                    for _ in 0..BATCH {
                        let s = h.sender.clone();
                        sends.spawn(async move { s.send("g", vec![0xab; PAYLOAD], 0).await });
                    }
                    while let Some(r) = sends.join_next().await {
                        r.unwrap().unwrap();
                    }
                    h.counter.wait_for(target).await;
                }
                Instant::now().saturating_duration_since(start)
            })
        })
    });
    g.finish();
}
criterion_group!(benches, fanout);
criterion_main!(benches);
