//! What the end-to-end benchmarks share: a delivery counter, the Herold
//! clients of one group, and a plain quinn forwarder with its clients.

#![allow(dead_code)] // each benchmark uses its own part of this

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use herold_client::admin::AdminClient;
use herold_client::{Client, ClientConfig};
use herold_proto::codec::{FrameDecoder, encode_frame};
use herold_proto::v1;
use tokio::runtime::Handle;
use tokio::sync::Notify;

/// Bytes of ciphertext per message.
pub(crate) const PAYLOAD: usize = 256;

pub(crate) struct Counter {
    pub(crate) n: AtomicU64,
    pub(crate) target: AtomicU64,
    pub(crate) done: Notify,
}
impl Counter {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            n: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
        })
    }
    pub(crate) fn add(&self) {
        let n = self.n.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }
    pub(crate) async fn wait_for(&self, target: u64) {
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
/// The frame of one 256-byte submit to conversation `g`, on the wire.
pub(crate) fn submit_wire() -> BytesMut {
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
    wire
}
/// Provisions one sending and `receivers` receiving accounts of one device
/// each in group `g` through the admin API at `admin_url`, and connects
/// them (spread over the client `endpoints`), on the current runtime. Each
/// message a receiving device gets is counted.
pub(crate) async fn herold_clients(
    addr: SocketAddr,
    fp: [u8; 32],
    admin_url: String,
    receivers: usize,
    endpoints: &[quinn::Endpoint],
) -> (herold_client::Sender, Arc<Counter>) {
    let mut admin = AdminClient::connect(admin_url).await.unwrap();
    let mut members = Vec::new();
    let mut keys = Vec::new();
    for i in 0..=receivers {
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
            sub_groups: 0,
        })
        .await
        .unwrap();
    let counter = Counter::new();
    let mut sender = None;
    for (i, (id, key)) in keys.into_iter().enumerate() {
        let mut config = ClientConfig::new(addr, fp, &id, key);
        config.endpoint = Some(endpoints[i % endpoints.len()].clone());
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
    (sender.unwrap(), counter)
}
/// A forwarding server on plain quinn and its clients: frames from the
/// first connection are written to every other connection.
pub(crate) struct Forwarder {
    /// The sending client's stream.
    pub(crate) send: quinn::SendStream,
    /// Frames arrived at the receiving clients.
    pub(crate) counter: Arc<Counter>,
    /// The server's side of every connection (for its counters).
    pub(crate) server_conns: Arc<Mutex<Vec<quinn::Connection>>>,
    pub(crate) _server: quinn::Endpoint,
    pub(crate) _client_conns: Vec<quinn::Connection>,
    pub(crate) _client_streams: Vec<quinn::SendStream>,
}
/// Starts the forwarder on `server` (an endpoint created on the runtime of
/// `on`, where the server's tasks are spawned too) and connects one
/// sending and `receivers` receiving clients, spread over the client
/// `endpoints`, on the current runtime.
pub(crate) async fn quinn_forwarder(
    server: quinn::Endpoint,
    on: &Handle,
    fp: [u8; 32],
    endpoints: &[quinn::Endpoint],
    receivers: usize,
) -> Forwarder {
    let addr = server.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<quinn::SendStream>(receivers + 1);
    let (src_tx, src_rx) = tokio::sync::oneshot::channel::<quinn::RecvStream>();
    let server_conns = Arc::new(Mutex::new(Vec::new()));
    {
        let server = server.clone();
        let server_conns = server_conns.clone();
        on.spawn(async move {
            let mut src_tx = Some(src_tx);
            for _ in 0..=receivers {
                let conn = server.accept().await.unwrap().await.unwrap();
                let (send, recv) = conn.accept_bi().await.unwrap();
                if let Some(s) = src_tx.take() {
                    let _ = s.send(recv);
                    drop(send);
                } else {
                    tx.send(send).await.unwrap();
                }
                server_conns.lock().unwrap().push(conn);
            }
        });
    }
    let connect = |client: quinn::Endpoint| async move {
        let cfg = herold_client::tls::client_config(fp).unwrap();
        let conn = client
            .connect_with(cfg, addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        // Open the stream on the wire with a zero-length frame.
        send.write_all(&0u32.to_be_bytes()).await.unwrap();
        (conn, send, recv)
    };
    let (sender_conn, send, _) = connect(endpoints[0].clone()).await;
    let source = src_rx.await.unwrap();
    let counter = Counter::new();
    let mut client_conns = vec![sender_conn];
    let mut client_streams = Vec::new();
    for i in 0..receivers {
        let (conn, s, mut recv) = connect(endpoints[(i + 1) % endpoints.len()].clone()).await;
        client_conns.push(conn);
        client_streams.push(s);
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
    for _ in 0..receivers {
        outs.push(rx.recv().await.unwrap());
    }
    // The forwarder: decode frames from the source, write each to all.
    on.spawn(async move {
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
    Forwarder {
        send,
        counter,
        server_conns,
        _server: server,
        _client_conns: client_conns,
        _client_streams: client_streams,
    }
}
