//! End to end on one node over loopback, against the transport's ceiling.
//!
//! `herold/fanout`: one device sends to a group of 50 receiving devices
//! through a relay on the embedded default (auth, membership, durable
//! append, ordering, routing, delivery, acks). `quinn/fanout`: the same
//! payloads between the same numbers of endpoints through a plain quinn
//! server that only forwards frames, no storage, no checks: what the
//! transport itself costs on this machine. Both count deliveries per second.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herold_client::admin::AdminClient;
use herold_client::{Client, ClientConfig};
use herold_proto::codec::{FrameDecoder, encode_frame};
use herold_proto::v1;
use herold_relay::{Config, Relay};
use tokio::sync::Notify;

const RECEIVERS: usize = 50;
const BATCH: u64 = 200;
const PAYLOAD: usize = 256;

struct Counter {
    n: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            n: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
        })
    }
    fn add(&self) {
        let n = self.n.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }
    async fn wait_for(&self, target: u64) {
        self.target.store(target, Ordering::Release);
        while self.n.load(Ordering::Acquire) < target {
            let notified = self.done.notified();
            if self.n.load(Ordering::Acquire) >= target {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
}

struct HeroldSetup {
    sender: herold_client::Sender,
    counter: Arc<Counter>,
    _dir: tempfile::TempDir,
}

async fn herold_setup() -> HeroldSetup {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::bind(Config::dev(dir.path())).await.unwrap();
    let addr = relay.local_addr().unwrap();
    let fp = herold_client::tls::parse_fingerprint(relay.fingerprint()).unwrap();
    let admin_url = format!("http://{}", relay.admin_addr().unwrap());
    tokio::spawn(relay.run(std::future::pending()));
    let mut admin = AdminClient::connect(admin_url).await.unwrap();
    let mut members = Vec::new();
    let mut keys = Vec::new();
    for i in 0..=RECEIVERS {
        let account = format!("a{i}");
        admin
            .create_account(v1::CreateAccountRequest {
                account_id: account.clone(),
                display_name: String::new(),
                tags: Vec::new(),
            })
            .await
            .unwrap();
        let key = herold_client::generate_key().unwrap();
        admin
            .register_device(v1::RegisterDeviceRequest {
                account_id: account.clone(),
                device_id: format!("{account}.d"),
                public_key: key.verifying_key().to_bytes().to_vec(),
            })
            .await
            .unwrap();
        members.push(v1::Member {
            account_id: account.clone(),
            role: v1::Role::Member as i32,
        });
        keys.push((format!("{account}.d"), key));
    }
    admin
        .create_conversation(v1::CreateConversationRequest {
            conversation_id: "g".into(),
            kind: v1::ConversationKind::Group as i32,
            title: String::new(),
            members,
            default_ttl_seconds: 0,
        })
        .await
        .unwrap();
    let counter = Counter::new();
    let endpoint = herold_client::raw::client_endpoint(addr).unwrap();
    let mut sender = None;
    for (i, (id, key)) in keys.into_iter().enumerate() {
        let mut config = ClientConfig::new(addr, fp, &id, key);
        config.endpoint = Some(endpoint.clone());
        let mut c = Client::connect(config).await.unwrap();
        if i == 0 {
            sender = Some(c.sender());
            // The sender's own echo is drained but not counted.
            tokio::spawn(async move { while c.next_message().await.is_some() {} });
        } else {
            let counter = counter.clone();
            tokio::spawn(async move {
                while c.next_message().await.is_some() {
                    counter.add();
                }
            });
        }
    }
    HeroldSetup {
        sender: sender.unwrap(),
        counter,
        _dir: dir,
    }
}

/// A forwarding server on plain quinn: frames from the first connection are
/// written to every other connection.
async fn quinn_setup() -> (quinn::SendStream, Arc<Counter>) {
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
    let addr = server.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<quinn::SendStream>(RECEIVERS + 1);
    let (src_tx, src_rx) = tokio::sync::oneshot::channel::<quinn::RecvStream>();
    tokio::spawn(async move {
        let mut src_tx = Some(src_tx);
        for _ in 0..=RECEIVERS {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (send, recv) = conn.accept_bi().await.unwrap();
            if let Some(s) = src_tx.take() {
                let _ = s.send(recv);
                drop(send);
            } else {
                tx.send(send).await.unwrap();
            }
            std::mem::forget(conn);
        }
        std::mem::forget(server);
    });
    let fp = herold_client::tls::parse_fingerprint(&fp).unwrap();
    let client = herold_client::raw::client_endpoint(addr).unwrap();
    let connect = |client: quinn::Endpoint| async move {
        let cfg = herold_client::tls::client_config(fp).unwrap();
        let conn = client
            .connect_with(cfg, addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&[]).await.unwrap();
        // Open the stream on the wire with a zero-length frame.
        send.write_all(&0u32.to_be_bytes()).await.unwrap();
        std::mem::forget(conn);
        (send, recv)
    };
    let (sender_send, _sender_recv) = connect(client.clone()).await;
    let source = src_rx.await.unwrap();
    let counter = Counter::new();
    for _ in 0..RECEIVERS {
        let (s, mut recv) = connect(client.clone()).await;
        std::mem::forget(s);
        let counter = counter.clone();
        tokio::spawn(async move {
            let mut dec = FrameDecoder::new(1 << 20);
            while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
                dec.extend(&chunk.bytes);
                while let Ok(Some(_)) = dec.next_frame() {
                    counter.add();
                }
            }
        });
    }
    let mut outs = Vec::new();
    for _ in 0..RECEIVERS {
        outs.push(rx.recv().await.unwrap());
    }
    // The forwarder: decode frames from the source, write each to all.
    tokio::spawn(async move {
        let mut source = source;
        let mut dec = FrameDecoder::new(1 << 20);
        while let Ok(Some(chunk)) = source.read_chunk(64 * 1024, true).await {
            dec.extend(&chunk.bytes);
            while let Ok(Some(body)) = dec.next_frame() {
                if body.is_empty() {
                    continue;
                }
                let mut framed = BytesMut::with_capacity(body.len() + 4);
                framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
                framed.extend_from_slice(&body);
                let framed = framed.freeze();
                for o in outs.iter_mut() {
                    o.write_all(&framed).await.unwrap();
                }
            }
        }
    });
    (sender_send, counter)
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

    let (mut qsend, qcounter) = rt.block_on(quinn_setup());
    let frame = v1::ClientFrame {
        kind: Some(v1::client_frame::Kind::Submit(v1::Submit {
            message_id: vec![1; 16],
            conversation_id: "g".into(),
            expires_at_ms: 0,
            ciphertext: vec![0xab; PAYLOAD],
            ..Default::default()
        })),
    };
    let mut wire = BytesMut::new();
    encode_frame(&frame, usize::MAX, &mut wire).unwrap();
    g.bench_function("quinn", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = qcounter.n.load(Ordering::Acquire) + BATCH * RECEIVERS as u64;
                    for _ in 0..BATCH {
                        qsend.write_all(&wire).await.unwrap();
                    }
                    qcounter.wait_for(target).await;
                }
                Instant::now().saturating_duration_since(start)
            })
        })
    });

    let h = rt.block_on(herold_setup());
    g.bench_function("herold", |b| {
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
