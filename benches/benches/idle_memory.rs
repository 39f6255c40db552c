//! Memory per idle connected device: heap bytes (counted by a wrapping
//! global allocator) and RSS of a server holding N idle connections, for
//!
//! - a plain quinn server with the same TLS and transport settings as the
//!   relay (`herold_relay::quic_server_config`) that accepts each connection
//!   and its one stream and keeps them: what the transport itself costs;
//! - the Herold relay on the embedded default with N authenticated devices:
//!   everything (QUIC, session task, registry entry, queues, buffers).
//!
//! The clients run in a child process (this program, re-executed), so only
//! the server's memory is counted. `HEROLD_IDLE_N` sets N (default 5,000).
//! Run: `cargo bench -p herold-benches --bench idle_memory`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cap::Cap;
use ed25519_dalek::SigningKey;
use herold_client::{Client, ClientConfig};
use herold_relay::{Config, Relay};
use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};
use herold_store::{Account, Device, Store};
use sha2::Digest;

#[global_allocator]
static ALLOC: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

const CLIENT_MODE: &str = "HEROLD_IDLE_CLIENT";

fn device_key(i: usize) -> SigningKey {
    let seed: [u8; 32] = sha2::Sha256::digest(format!("idle-device-{i}")).into();
    SigningKey::from_bytes(&seed)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Child: connects `n` clients of `kind` to `addr`, prints "ready", holds
/// them until stdin closes.
async fn clients(kind: &str, addr: SocketAddr, fp: [u8; 32], n: usize) {
    let endpoints: Vec<quinn::Endpoint> = (0..8)
        .map(|_| herold_client::raw::client_endpoint(addr).unwrap())
        .collect();
    let mut held_plain = Vec::new();
    let mut held_sdk = Vec::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (ep, kind, sem) = (endpoints[i % 8].clone(), kind.to_owned(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            if kind == "plain" {
                let cfg = herold_client::tls::client_config(fp).unwrap();
                let conn = ep
                    .connect_with(cfg, addr, "localhost")
                    .unwrap()
                    .await
                    .unwrap();
                let (mut send, recv) = conn.open_bi().await.unwrap();
                send.write_all(&0u32.to_be_bytes()).await.unwrap();
                (Some((conn, send, recv)), None)
            } else {
                let mut cfg = ClientConfig::new(addr, fp, &format!("d{i}"), device_key(i));
                cfg.endpoint = Some(ep);
                cfg.tcp_fallback = false;
                (None, Some(Client::connect(cfg).await.unwrap()))
            }
        }));
    }
    for t in tasks {
        let (p, s) = t.await.unwrap();
        held_plain.extend(p);
        held_sdk.extend(s);
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let _ = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        while std::io::stdin().read_line(&mut s).unwrap_or(0) > 0 {}
    })
    .await;
    drop((held_plain, held_sdk));
}

/// Starts the client child and waits for its "ready".
fn spawn_clients(kind: &str, addr: SocketAddr, fp: &str, n: usize) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CLIENT_MODE, format!("{kind} {addr} {fp} {n}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready", "clients connected");
    child
}

struct Sample {
    heap: i64,
    rss: i64,
}

fn snapshot() -> Sample {
    Sample {
        heap: ALLOC.allocated() as i64,
        rss: rss_bytes() as i64,
    }
}

async fn settle() {
    // Let handshakes' transient buffers be freed and timers fire once.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(spec) = std::env::var(CLIENT_MODE) {
        let v: Vec<&str> = spec.split(' ').collect();
        let fp = herold_client::tls::parse_fingerprint(v[2]).unwrap();
        clients(v[0], v[1].parse().unwrap(), fp, v[3].parse().unwrap()).await;
        return;
    }
    let n: usize = std::env::var("HEROLD_IDLE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let dir = tempfile::tempdir().unwrap();

    // 1. Plain quinn with the relay's TLS and transport settings.
    let config = Config::dev(dir.path().join("plain"));
    let (server_config, fp) = herold_relay::quic_server_config(&config).unwrap();
    let before = snapshot();
    let server = quinn::Endpoint::server(server_config, config.listen).unwrap();
    let addr = server.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let accept = {
        let (server, held) = (server.clone(), held.clone());
        tokio::spawn(async move {
            while let Some(inc) = server.accept().await {
                let held = held.clone();
                tokio::spawn(async move {
                    let Ok(conn) = inc.await else { return };
                    let Ok((send, recv)) = conn.accept_bi().await else {
                        return;
                    };
                    held.lock().unwrap().push((conn, send, recv));
                });
            }
        })
    };
    let mut child = spawn_clients("plain", addr, &fp, n);
    settle().await;
    let after = snapshot();
    assert_eq!(held.lock().unwrap().len(), n);
    let plain = (
        (after.heap - before.heap) / n as i64,
        (after.rss - before.rss) / n as i64,
    );
    drop(child.stdin.take());
    let _ = child.wait();
    accept.abort();
    held.lock().unwrap().clear();
    server.close(0u32.into(), b"done");
    server.wait_idle().await;
    drop(server);

    // 2. The relay with N authenticated devices.
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(dir.path().join("store"), EmbeddedConfig::default()).unwrap());
    for i in 0..n {
        let a = format!("a{i}");
        store
            .create_account(Account {
                id: a.clone(),
                display_name: String::new(),
                created_at_ms: 0,
            })
            .await
            .unwrap();
        store
            .add_device(
                Device {
                    id: format!("d{i}"),
                    account_id: a,
                    public_key: device_key(i).verifying_key().to_bytes().to_vec(),
                    revoked: false,
                    created_at_ms: 0,
                },
                10,
            )
            .await
            .unwrap();
    }
    settle().await;
    let before = snapshot();
    let relay = Relay::bind_with(
        Config::dev(dir.path().join("relay")),
        store,
        Arc::new(herold_router::memory::MemoryRouter::default()),
    )
    .await
    .unwrap();
    let addr = relay.local_addr().unwrap();
    let fp = relay.fingerprint().to_owned();
    tokio::spawn(relay.run(std::future::pending()));
    let mut child = spawn_clients("herold", addr, &fp, n);
    settle().await;
    let after = snapshot();
    let herold = (
        (after.heap - before.heap) / n as i64,
        (after.rss - before.rss) / n as i64,
    );
    drop(child.stdin.take());
    let _ = child.wait();

    let kib = |b: i64| b as f64 / 1024.0;
    println!("| server ({n} idle connections) | heap per connection | RSS per connection |");
    println!("|---|---|---|");
    println!(
        "| plain quinn, relay's TLS and transport settings | {:.1} KiB | {:.1} KiB |",
        kib(plain.0),
        kib(plain.1)
    );
    println!(
        "| Herold relay, authenticated devices | {:.1} KiB | {:.1} KiB |",
        kib(herold.0),
        kib(herold.1)
    );
    println!(
        "| Herold's own share (difference) | {:.1} KiB | {:.1} KiB |",
        kib(herold.0 - plain.0),
        kib(herold.1 - plain.1)
    );
}
