//! A post to a 7,000-device group on one node over loopback: how long each
//! device waits for it, Herold against a plain quinn forwarder measured in
//! the same run (issue 14's goal 3 asks a p99 under 100 ms).
//!
//! The quinn forwarder writes every frame from its sending connection to
//! every receiving connection on an open stream, unpaced: no
//! authentication, storage, ordering, routing or acknowledgement. What it
//! takes is the floor this machine sets for such a post, whatever a relay
//! does. Herold is a relay on the embedded default (`bench_config`), so
//! each post is checked, appended with fsync, numbered, routed, paced and
//! acknowledged by every device.
//!
//! The server (the forwarder's tasks, or `Relay::run`) has a tokio runtime
//! of its own with one worker, pinned to CPU 0; the 7,001 clients (the
//! sender and the receivers, spread over 8 UDP sockets, as the load
//! tester's) have another runtime with one worker, pinned to CPU 1, like
//! `loadtest/sweep.sh`. With `HEROLD_BENCH_PIN=0`, on a machine with one
//! CPU, or without `taskset`, both run unpinned and the output says so.
//!
//! Each run sends 11 posts of 600 bytes (the size in
//! `loadtest/scenarios/channel-7000.toml`), 2 s apart; each post's payload
//! carries its number, and each device's arrival time is recorded. The
//! first post is reported on its own (the connections' round-trip
//! estimates still come from the handshakes), the other ten together.
//! Also: the UDP datagrams the kernel dropped at the server's and at the
//! clients' sockets, and the server's datagrams per delivery.
//!
//! `cargo bench -p herold-benches --bench channel_post`; the number of
//! devices is `HEROLD_BENCH_CHANNEL_DEVICES` (default 7,000). Linux only
//! (it reads `/proc/net/udp` and pins with `taskset`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

#[path = "common/config.rs"]
mod bench;
#[path = "common/fanout.rs"]
mod fanout;
#[path = "common/pin.rs"]
mod pin;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fanout::{
    Counter, herold_clients, quantile_ms, quinn_forwarder, relay_counter, stamped,
    submit_wire_with, udp_drops, udp_endpoint,
};
use herold_relay::{Config, Relay};
use pin::{env_count, pin_this_thread, pin_unless_told_not_to, runtime};
use tokio::runtime::Runtime;

/// Receiving devices, unless `HEROLD_BENCH_CHANNEL_DEVICES` says otherwise.
const DEVICES: usize = 7_000;
/// Posts per run; the first is reported on its own.
const POSTS: u32 = 11;
/// Time between two posts.
const INTERVAL: Duration = Duration::from_secs(2);
/// Bytes of each post's payload.
const BODY: usize = 600;
/// Client UDP sockets the receivers are spread over (as the load tester).
const CLIENT_SOCKETS: usize = 8;
/// A post not delivered to every device by then fails the run.
const DEADLINE: Duration = Duration::from_secs(60);
/// After the last delivery, time for the acknowledgements it causes.
const SETTLE: Duration = Duration::from_millis(500);

enum Server {
    Quinn(fanout::Forwarder),
    Herold {
        sender: herold_client::Sender,
        _dir: tempfile::TempDir,
    },
}
/// Datagrams counted so far: dropped at the server's and the clients'
/// sockets, and sent by the server.
#[derive(Clone, Copy)]
struct Udp {
    server_drops: u64,
    client_drops: u64,
    server_out: u64,
}
struct Rig {
    name: &'static str,
    server: Server,
    counter: Arc<Counter>,
    server_port: u16,
    client_ports: Vec<u16>,
    // Dropped last: the clients before the server.
    client_rt: Runtime,
    _server_rt: Runtime,
}
impl Rig {
    fn start(name: &'static str, devices: usize, pinned: bool) -> Self {
        if pinned {
            pin_this_thread(0);
        }
        let server_rt = runtime("bench-server");
        let dir = tempfile::tempdir().unwrap();
        let (server, quinn) = match name {
            "quinn" => {
                let (config, fp) =
                    herold_relay::quic_server_config(&Config::dev(dir.path())).unwrap();
                let fp = herold_client::tls::parse_fingerprint(&fp).unwrap();
                let endpoint = {
                    let _on = server_rt.enter();
                    udp_endpoint(Some(config))
                };
                (None, Some((endpoint, fp)))
            }
            _ => {
                let relay = server_rt
                    .block_on(Relay::bind(bench::bench_config(dir.path())))
                    .unwrap();
                (Some(relay), None)
            }
        };
        if pinned {
            pin_this_thread(1);
        }
        let client_rt = runtime("bench-client");
        let endpoints: Vec<_> = {
            let _on = client_rt.enter();
            (0..CLIENT_SOCKETS).map(|_| udp_endpoint(None)).collect()
        };
        let client_ports = endpoints
            .iter()
            .map(|e| e.local_addr().unwrap().port())
            .collect();
        let begun = Instant::now();
        let (server, counter, server_port) = match (server, quinn) {
            (None, Some((endpoint, fp))) => {
                let port = endpoint.local_addr().unwrap().port();
                let handle = server_rt.handle().clone();
                let fwd =
                    client_rt.block_on(quinn_forwarder(endpoint, &handle, fp, &endpoints, devices));
                let counter = fwd.counter.clone();
                (Server::Quinn(fwd), counter, port)
            }
            (Some(relay), _) => {
                let addr = relay.local_addr().unwrap();
                let fp = herold_client::tls::parse_fingerprint(relay.fingerprint()).unwrap();
                let admin_url = format!("http://{}", relay.admin_addr().unwrap());
                server_rt.spawn(relay.run(std::future::pending()));
                let (sender, counter) =
                    client_rt.block_on(herold_clients(addr, fp, admin_url, devices, &endpoints));
                (Server::Herold { sender, _dir: dir }, counter, addr.port())
            }
            _ => unreachable!("one server or the other"),
        };
        eprintln!(
            "channel_post/{name}: {devices} devices connected in {:.1} s",
            Instant::now()
                .saturating_duration_since(begun)
                .as_secs_f64()
        );
        Self {
            name,
            server,
            counter,
            server_port,
            client_ports,
            client_rt,
            _server_rt: server_rt,
        }
    }
    fn udp(&self) -> Udp {
        let server_out = match &self.server {
            Server::Quinn(f) => {
                let conns = f.server_conns.lock().unwrap();
                conns.iter().map(|c| c.stats().udp_tx.datagrams).sum()
            }
            Server::Herold { .. } => relay_counter(herold_relay::metrics::UDP_SENT),
        };
        Udp {
            server_drops: udp_drops(&[self.server_port]),
            client_drops: udp_drops(&self.client_ports),
            server_out,
        }
    }
    /// Sends the posts; returns when each was sent, and the datagram
    /// counts before the first post, after it, and at the end.
    fn run(&mut self, devices: usize) -> (Vec<Instant>, [Udp; 3]) {
        let before = self.udp();
        let mut sent = Vec::new();
        let mut after_first = before;
        for post in 0..POSTS {
            let target = (u64::from(post) + 1) * devices as u64;
            let payload = stamped(post, BODY);
            let at = Instant::now();
            self.client_rt.block_on(async {
                match &mut self.server {
                    Server::Quinn(f) => f.send.write_all(&submit_wire_with(payload)).await.unwrap(),
                    Server::Herold { sender, .. } => {
                        sender.send("g", payload, 0).await.unwrap();
                    }
                }
                let delivered = tokio::time::timeout(DEADLINE, self.counter.wait_for(target));
                if delivered.await.is_err() {
                    panic!(
                        "{}: post {post}: {} of {target} deliveries after {DEADLINE:?}",
                        self.name,
                        self.counter.n.load(Ordering::Acquire)
                    );
                }
                tokio::time::sleep_until((at + INTERVAL.max(SETTLE)).into()).await;
            });
            sent.push(at);
            if post == 0 {
                after_first = self.udp();
            }
        }
        (sent, [before, after_first, self.udp()])
    }
}
fn summary(v: &mut [Duration]) -> String {
    v.sort_unstable();
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        quantile_ms(v, 0.5),
        quantile_ms(v, 0.99),
        quantile_ms(v, 1.0)
    )
}
fn main() {
    // `cargo bench` passes `--bench`; a name filter selects servers.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let devices = env_count("HEROLD_BENCH_CHANNEL_DEVICES", DEVICES);
    let pinned = pin_unless_told_not_to();
    eprintln!(
        "channel_post: {devices} devices, {POSTS} posts of {BODY} B {INTERVAL:?} apart; {}",
        if pinned {
            "server on CPU 0, clients on CPU 1"
        } else {
            "not pinned (HEROLD_BENCH_PIN=0, or fewer than 2 CPUs, or no taskset)"
        }
    );
    for name in ["quinn", "herold"] {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let mut rig = Rig::start(name, devices, pinned);
        let (sent, [before, first, end]) = rig.run(devices);
        let mut first_post = Vec::new();
        let mut later = Vec::new();
        let mut per_post_p99 = Vec::new();
        {
            let arrivals = rig.counter.arrivals.lock().unwrap();
            for (post, at) in sent.iter().enumerate() {
                let mut waits: Vec<Duration> = arrivals
                    .iter()
                    .filter(|(p, _)| *p as usize == post)
                    .map(|(_, t)| t.saturating_duration_since(*at))
                    .collect();
                assert_eq!(
                    waits.len(),
                    devices,
                    "{name}: post {post} reached every device once"
                );
                waits.sort_unstable();
                if post == 0 {
                    first_post = waits;
                } else {
                    per_post_p99.push(quantile_ms(&waits, 0.99));
                    later.extend(waits);
                }
            }
        }
        per_post_p99.sort_by(f64::total_cmp);
        let deliveries = (devices as u64 * u64::from(POSTS)).max(1);
        println!(
            "channel_post/{name}: first post {}; posts 2-{POSTS} {}, median of their p99s {:.1} ms; \
             UDP drops at the server socket {} (first post) + {} (later), at the client sockets \
             {} + {}; server datagrams out per delivery {:.2}",
            summary(&mut first_post),
            summary(&mut later),
            per_post_p99
                .get(per_post_p99.len() / 2)
                .copied()
                .unwrap_or(f64::NAN),
            first.server_drops - before.server_drops,
            end.server_drops - first.server_drops,
            first.client_drops - before.client_drops,
            end.client_drops - first.client_drops,
            (end.server_out - before.server_out) as f64 / deliveries as f64,
        );
    }
}
