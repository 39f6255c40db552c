//! What the end-to-end benchmarks share: a delivery counter, the Herold
//! clients of one group, and a plain quinn forwarder with its clients.

#![allow(dead_code)] // each benchmark uses its own part of this

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use herold_client::admin::AdminClient;
use herold_client::{Client, ClientConfig};
use herold_proto::codec::{FrameDecoder, encode_frame};
use herold_proto::v1;
use prost::Message as _;
use tokio::runtime::Handle;
use tokio::sync::Notify;

/// Bytes of ciphertext per message.
pub(crate) const PAYLOAD: usize = 256;

pub(crate) struct Counter {
    pub(crate) n: AtomicU64,
    pub(crate) target: AtomicU64,
    pub(crate) done: Notify,
    /// When each message arrived, with the post number its payload starts
    /// with (see [`stamped`]).
    pub(crate) arrivals: Mutex<Vec<(u32, Instant)>>,
}
impl Counter {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            n: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
            arrivals: Mutex::new(Vec::new()),
        })
    }
    /// Counts a message with `payload` that arrived now.
    pub(crate) fn arrived(&self, payload: &[u8]) {
        let now = Instant::now();
        if let Some(post) = payload.first_chunk::<4>() {
            self.arrivals
                .lock()
                .unwrap()
                .push((u32::from_be_bytes(*post), now));
        }
        self.add();
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
/// A payload of `len` bytes that starts with post number `post`, for
/// [`Counter::arrived`].
pub(crate) fn stamped(post: u32, len: usize) -> Vec<u8> {
    let mut payload = vec![0xab; len.max(4)];
    payload[..4].copy_from_slice(&post.to_be_bytes());
    payload
}
/// The frame of one 256-byte submit to conversation `g`, on the wire.
pub(crate) fn submit_wire() -> BytesMut {
    submit_wire_with(stamped(0, PAYLOAD))
}
/// The frame of a submit of `ciphertext` to conversation `g`, on the wire.
pub(crate) fn submit_wire_with(ciphertext: Vec<u8>) -> BytesMut {
    let frame = v1::ClientFrame {
        kind: Some(v1::client_frame::Kind::Submit(v1::Submit {
            message_id: vec![1; 16],
            conversation_id: "g".into(),
            expires_at_ms: 0,
            ciphertext,
            ..Default::default()
        })),
    };
    let mut wire = BytesMut::new();
    encode_frame(&frame, usize::MAX, &mut wire).unwrap();
    wire
}
/// Provisions one sending and `receivers` receiving accounts of one device
/// each in group `<prefix>g` through the admin API at `admin_url`: the
/// devices' ids and keys, the sender's first. Ids start with `prefix`, so
/// runs on one store do not collide.
pub(crate) async fn provision(
    admin_url: String,
    prefix: &str,
    receivers: usize,
) -> Vec<(String, ed25519_dalek::SigningKey)> {
    let mut admin = AdminClient::connect(admin_url).await.unwrap();
    let mut members = Vec::new();
    let mut keys = Vec::new();
    for i in 0..=receivers {
        let account = format!("{prefix}a{i}");
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
            conversation_id: format!("{prefix}g"),
            kind: v1::ConversationKind::Group as i32,
            title: String::new(),
            members,
            default_ttl_seconds: 0,
            sub_groups: 0,
        })
        .await
        .unwrap();
    keys
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
    let keys = provision(admin_url, "", receivers).await;
    let counter = Counter::new();
    let mut keys = keys.into_iter();
    let (id, key) = keys.next().unwrap();
    let mut config = ClientConfig::new(addr, fp, &id, key);
    config.endpoint = Some(endpoints[0].clone());
    config.tcp_fallback = false;
    let mut c = Client::connect(config).await.unwrap();
    let sender = c.sender();
    // The sender's own echo is drained but not counted.
    tokio::spawn(async move { while c.next_message().await.is_some() {} });
    // The receivers connect 64 at a time.
    let mut connecting = tokio::task::JoinSet::new();
    for (i, (id, key)) in keys.enumerate() {
        if connecting.len() >= 64 {
            connecting.join_next().await.unwrap().unwrap();
        }
        let mut config = ClientConfig::new(addr, fp, &id, key);
        config.endpoint = Some(endpoints[(i + 1) % endpoints.len()].clone());
        config.tcp_fallback = false;
        let counter = counter.clone();
        connecting.spawn(async move {
            let mut c = Client::connect(config).await.unwrap();
            tokio::spawn(async move {
                while let Some(m) = c.next_message().await {
                    counter.arrived(&m.ciphertext);
                }
            });
        });
    }
    while let Some(r) = connecting.join_next().await {
        r.unwrap();
    }
    (sender, counter)
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
                while let Ok(Some(body)) = dec.next_frame() {
                    match v1::ClientFrame::decode(body) {
                        Ok(v1::ClientFrame {
                            kind: Some(v1::client_frame::Kind::Submit(s)),
                        }) => counter.arrived(&s.ciphertext),
                        _ => counter.add(),
                    }
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

/// Datagrams the kernel dropped at the UDP sockets bound to `ports`
/// (receive buffer full), from `/proc/net/udp` and `/proc/net/udp6`.
pub(crate) fn udp_drops(ports: &[u16]) -> u64 {
    let mut drops = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(d)) = (fields.get(1), fields.last()) else {
                continue;
            };
            let port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if port.is_some_and(|p| ports.contains(&p)) {
                drops += d.parse::<u64>().unwrap_or(0);
            }
        }
    }
    drops
}
/// A quinn endpoint on a loopback UDP socket with the relay's socket
/// buffers, on the current runtime.
pub(crate) fn udp_endpoint(server_config: Option<quinn::ServerConfig>) -> quinn::Endpoint {
    let limits = herold_relay::config::Limits::default();
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let state = quinn::udp::UdpSocketState::new((&socket).into()).unwrap();
    // The kernel caps these at net.core.{r,w}mem_max, as for the relay.
    let _ = state.set_recv_buffer_size((&socket).into(), limits.udp_recv_buffer_bytes as usize);
    let _ = state.set_send_buffer_size((&socket).into(), limits.udp_send_buffer_bytes as usize);
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server_config,
        socket,
        quinn::default_runtime().unwrap(),
    )
    .unwrap()
}
/// Sum of a counter in the relay's Prometheus exposition (process-wide).
pub(crate) fn relay_counter(name: &str) -> u64 {
    let text = herold_relay::metrics::install().unwrap().render();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
/// The `q`-quantile of `sorted` (ascending), in milliseconds.
pub(crate) fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}
