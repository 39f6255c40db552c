//! One node over loopback: the server's CPU time per delivery when each
//! delivery is its own packet, Herold against a plain quinn forwarder (the
//! transport's own cost), in group `cpu_per_delivery_500_devices_256B`:
//! one sender device and 500
//! receiving devices, 10 posts per second (5,000 deliveries per second,
//! every receiving device gets a message every 100 ms), 20 posts (10,000
//! deliveries) per iteration. The server (the quinn forwarder's tasks, or
//! `Relay::run`) has a tokio runtime of its own with one worker; the load
//! (the 501 clients and the pacing) runs on another. The time criterion
//! gets is the on-CPU time of the server's threads during the iteration
//! (`/proc/self/task/<tid>/schedstat`): its worker, its blocking pool and
//! the threads created while the server was set up (the embedded store's
//! writer, which does the fsyncs). So criterion's "time" is the server's
//! CPU time per iteration (divide by 10,000 for one delivery) and "thrpt"
//! is deliveries per CPU-second. After each server a line on stderr gives
//! the CPU per delivery, the server's datagrams per delivery and the UDP
//! drops. The plain quinn server has the relay's TLS and transport
//! settings and the same socket buffers. Linux only (it reads `/proc`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

#[path = "common/config.rs"]
mod bench;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use herold_relay::{Config, Relay};
use pin::this_tid;
use tokio::runtime::Runtime;

#[path = "common/fanout.rs"]
mod fanout;
#[path = "common/pin.rs"]
mod pin;

use fanout::{
    Counter, Forwarder, PAYLOAD, herold_clients, quinn_forwarder, relay_counter, submit_wire,
    udp_drops, udp_endpoint,
};

/// Receiving devices in the CPU-per-delivery group.
const CPU_RECEIVERS: usize = 500;
/// Posts per iteration of the CPU-per-delivery group.
const CPU_POSTS: u64 = 20;
/// Time between two posts: 10 per second.
const CPU_POST_INTERVAL: Duration = Duration::from_millis(100);
/// Client UDP sockets the receiving devices are spread over.
const CPU_CLIENT_SOCKETS: usize = 10;
/// After the last delivery of an iteration, time for the acks it causes
/// (QUIC's are delayed up to 25 ms, Herold's devices ack every 50 ms and
/// the relay writes cursors every 250 ms) to be counted in the iteration.
const CPU_SETTLE: Duration = Duration::from_millis(300);
/// An iteration whose deliveries have not all arrived by then fails.
const CPU_DEADLINE: Duration = Duration::from_secs(60);
/// Time thread `tid` of this process has spent on a CPU so far, ns (the
/// first field of its `schedstat`).
fn on_cpu_ns(tid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
/// The threads of this process now.
fn thread_ids() -> BTreeSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}
fn thread_name(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}
/// The server's threads and the CPU time they used.
#[derive(Default)]
struct ServerThreads(Mutex<ThreadTimes>);
#[derive(Default)]
struct ThreadTimes {
    /// Threads being counted, with their on-CPU time when last read (kept
    /// as it was if a thread ends without telling, e.g. the store writer).
    live: HashMap<u32, u64>,
    /// On-CPU time of the runtime's threads that ended.
    ended: u64,
}
impl ServerThreads {
    fn track(&self, tid: u32) {
        self.0.lock().unwrap().live.entry(tid).or_insert(0);
    }
    /// For the runtime's `on_thread_start`.
    fn started(&self) {
        if let Some(tid) = this_tid() {
            self.track(tid);
        }
    }
    /// For the runtime's `on_thread_stop` (blocking-pool threads end after
    /// 10 s idle).
    fn stopped(&self) {
        let Some(tid) = this_tid() else { return };
        let mut t = self.0.lock().unwrap();
        if let Some(last) = t.live.remove(&tid) {
            t.ended += on_cpu_ns(tid).unwrap_or(last);
        }
    }
    /// On-CPU time of all the server's threads so far, the ended included.
    fn on_cpu(&self) -> Duration {
        let mut t = self.0.lock().unwrap();
        let mut sum = t.ended;
        for (tid, last) in t.live.iter_mut() {
            if let Some(ns) = on_cpu_ns(*tid) {
                *last = ns;
            }
            sum += *last;
        }
        Duration::from_nanos(sum)
    }
    fn tids(&self) -> Vec<u32> {
        self.0.lock().unwrap().live.keys().copied().collect()
    }
}
enum Load {
    Quinn(Forwarder),
    Herold {
        sender: herold_client::Sender,
        _dir: tempfile::TempDir,
    },
}
/// What the server and the sockets counted so far.
#[derive(Clone, Copy, Default)]
struct Totals {
    delivered: u64,
    server_cpu: Duration,
    datagrams_out: u64,
    datagrams_in: u64,
    /// Packets the server declared lost (quinn only; the relay's are not
    /// reachable from here).
    lost: Option<u64>,
    server_drops: u64,
    client_drops: u64,
}
/// One server on a runtime of its own, its 501 clients on another.
struct CpuRig {
    name: &'static str,
    load: Load,
    counter: Arc<Counter>,
    threads: Arc<ServerThreads>,
    server_port: u16,
    client_ports: Vec<u16>,
    start: Totals,
    iterations: u64,
    wall: Duration,
    measured_cpu: Duration,
    client_rt: Option<Runtime>,
    server_rt: Option<Runtime>,
}
/// The server's runtime: one worker; its threads, the blocking pool's
/// included, are recorded in `threads`.
fn server_runtime(threads: &Arc<ServerThreads>) -> Runtime {
    let (start, stop) = (threads.clone(), threads.clone());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-server")
        .on_thread_start(move || start.started())
        .on_thread_stop(move || stop.stopped())
        .enable_all()
        .build()
        .unwrap()
}
fn client_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap()
}
/// Counts the threads that appeared since `before` (created by the
/// server's setup, e.g. the embedded store's writer) as the server's.
fn adopt_new_threads(threads: &ServerThreads, before: &BTreeSet<u32>) {
    let ours: BTreeSet<u32> = threads.tids().into_iter().collect();
    for tid in thread_ids().difference(before) {
        if !ours.contains(tid) {
            eprintln!(
                "cpu_per_delivery: counting thread {tid} ({}) as the server's",
                thread_name(*tid)
            );
        }
        threads.track(*tid);
    }
}
impl CpuRig {
    fn quinn() -> Self {
        let threads = Arc::new(ServerThreads::default());
        let server_rt = server_runtime(&threads);
        let before = thread_ids();
        let dir = tempfile::tempdir().unwrap();
        let (server_config, fp) =
            herold_relay::quic_server_config(&Config::dev(dir.path())).unwrap();
        let fp = herold_client::tls::parse_fingerprint(&fp).unwrap();
        let server = {
            let _on = server_rt.enter();
            udp_endpoint(Some(server_config))
        };
        adopt_new_threads(&threads, &before);
        let server_port = server.local_addr().unwrap().port();
        let client_rt = client_runtime();
        let handle = server_rt.handle().clone();
        let (fwd, client_ports) = client_rt.block_on(async {
            let endpoints: Vec<_> = (0..CPU_CLIENT_SOCKETS)
                .map(|_| udp_endpoint(None))
                .collect();
            let ports = endpoints
                .iter()
                .map(|e| e.local_addr().unwrap().port())
                .collect();
            let fwd = quinn_forwarder(server, &handle, fp, &endpoints, CPU_RECEIVERS).await;
            (fwd, ports)
        });
        let counter = fwd.counter.clone();
        Self::new(
            "quinn",
            Load::Quinn(fwd),
            counter,
            threads,
            server_port,
            client_ports,
            client_rt,
            server_rt,
        )
    }
    fn herold() -> Self {
        let threads = Arc::new(ServerThreads::default());
        let server_rt = server_runtime(&threads);
        let before = thread_ids();
        let dir = tempfile::tempdir().unwrap();
        // Bound on the server's runtime, so that its sockets, tasks and
        // blocking calls live there.
        let relay = server_rt
            .block_on(Relay::bind(bench::bench_config(dir.path())))
            .unwrap();
        adopt_new_threads(&threads, &before);
        let addr = relay.local_addr().unwrap();
        let fp = herold_client::tls::parse_fingerprint(relay.fingerprint()).unwrap();
        let admin_url = format!("http://{}", relay.admin_addr().unwrap());
        server_rt.spawn(relay.run(std::future::pending()));
        let client_rt = client_runtime();
        let (sender, counter, client_ports) = client_rt.block_on(async {
            let endpoints: Vec<_> = (0..CPU_CLIENT_SOCKETS)
                .map(|_| udp_endpoint(None))
                .collect();
            let ports = endpoints
                .iter()
                .map(|e| e.local_addr().unwrap().port())
                .collect();
            let (sender, counter) =
                herold_clients(addr, fp, admin_url, CPU_RECEIVERS, &endpoints).await;
            (sender, counter, ports)
        });
        Self::new(
            "herold",
            Load::Herold { sender, _dir: dir },
            counter,
            threads,
            addr.port(),
            client_ports,
            client_rt,
            server_rt,
        )
    }
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &'static str,
        load: Load,
        counter: Arc<Counter>,
        threads: Arc<ServerThreads>,
        server_port: u16,
        client_ports: Vec<u16>,
        client_rt: Runtime,
        server_rt: Runtime,
    ) -> Self {
        let mut rig = Self {
            name,
            load,
            counter,
            threads,
            server_port,
            client_ports,
            start: Totals::default(),
            iterations: 0,
            wall: Duration::ZERO,
            measured_cpu: Duration::ZERO,
            client_rt: Some(client_rt),
            server_rt: Some(server_rt),
        };
        rig.start = rig.totals();
        rig
    }
    fn totals(&self) -> Totals {
        let (datagrams_out, datagrams_in, lost) = match &self.load {
            Load::Quinn(f) => {
                let conns = f.server_conns.lock().unwrap();
                let stats: Vec<_> = conns.iter().map(|c| c.stats()).collect();
                (
                    stats.iter().map(|s| s.udp_tx.datagrams).sum(),
                    stats.iter().map(|s| s.udp_rx.datagrams).sum(),
                    Some(stats.iter().map(|s| s.path.lost_packets).sum()),
                )
            }
            Load::Herold { .. } => (
                relay_counter(herold_relay::metrics::UDP_SENT),
                relay_counter(herold_relay::metrics::UDP_RECEIVED),
                None,
            ),
        };
        Totals {
            delivered: self.counter.n.load(Ordering::Acquire),
            server_cpu: self.threads.on_cpu(),
            datagrams_out,
            datagrams_in,
            lost,
            server_drops: udp_drops(&[self.server_port]),
            client_drops: udp_drops(&self.client_ports),
        }
    }
    /// `iters` paced batches; the server's CPU time during them.
    fn run(&mut self, iters: u64, wire: &[u8]) -> Duration {
        let client_rt = self.client_rt.as_ref().unwrap();
        let mut cpu = Duration::ZERO;
        for _ in 0..iters {
            let target = self.counter.n.load(Ordering::Acquire) + CPU_POSTS * CPU_RECEIVERS as u64;
            let start = Instant::now();
            let before = self.threads.on_cpu();
            client_rt.block_on(async {
                let mut tick = tokio::time::interval(CPU_POST_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut sends = tokio::task::JoinSet::new();
                for _ in 0..CPU_POSTS {
                    tick.tick().await;
                    match &mut self.load {
                        Load::Quinn(f) => f.send.write_all(wire).await.unwrap(),
                        Load::Herold { sender, .. } => {
                            let s = sender.clone();
                            sends.spawn(async move { s.send("g", vec![0xab; PAYLOAD], 0).await });
                        }
                    }
                }
                while let Some(r) = sends.join_next().await {
                    r.unwrap().unwrap();
                }
                if tokio::time::timeout(CPU_DEADLINE, self.counter.wait_for(target))
                    .await
                    .is_err()
                {
                    panic!(
                        "{}: {} of {target} deliveries after {CPU_DEADLINE:?}",
                        self.name,
                        self.counter.n.load(Ordering::Acquire)
                    );
                }
                tokio::time::sleep(CPU_SETTLE).await;
            });
            let used = self.threads.on_cpu().saturating_sub(before);
            cpu += used;
            self.measured_cpu += used;
            self.wall += Instant::now().saturating_duration_since(start);
            self.iterations += 1;
        }
        cpu
    }
    /// Prints what happened besides the CPU time, then stops the clients
    /// and the server.
    fn finish(mut self) {
        let end = self.totals();
        let s = self.start;
        let delivered = end.delivered - s.delivered;
        let owed = self.iterations * CPU_POSTS * CPU_RECEIVERS as u64;
        let per = |n: u64| n as f64 / delivered.max(1) as f64;
        eprintln!(
            "cpu_per_delivery/{}: {} iterations, {delivered} deliveries counted ({owed} owed), \
             {:.0} deliveries/s of wall time; server CPU {:.2} µs per delivery in the \
             iterations, {:.2} µs over the whole run (server threads: {}); server datagrams \
             out {:.3} and in {:.3} per delivery; packets the server declared lost {}; UDP \
             drops at the server socket {}, at the client sockets {}",
            self.name,
            self.iterations,
            delivered as f64 / self.wall.as_secs_f64().max(1e-9),
            self.measured_cpu.as_secs_f64() * 1e6 / owed.max(1) as f64,
            (end.server_cpu - s.server_cpu).as_secs_f64() * 1e6 / delivered.max(1) as f64,
            self.threads.tids().len(),
            per(end.datagrams_out - s.datagrams_out),
            per(end.datagrams_in - s.datagrams_in),
            match (end.lost, s.lost) {
                (Some(e), Some(b)) => (e - b).to_string(),
                _ => "n/a".into(),
            },
            end.server_drops - s.server_drops,
            end.client_drops - s.client_drops,
        );
        if let Some(rt) = self.client_rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        if let Some(rt) = self.server_rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}
/// The server's CPU time per delivery, each delivery its own packet.
fn cpu_per_delivery(c: &mut Criterion) {
    if !std::path::Path::new("/proc/thread-self/schedstat").exists() {
        eprintln!("cpu_per_delivery: skipped, it reads the threads' CPU time from Linux's /proc");
        return;
    }
    let mut g = c.benchmark_group("cpu_per_delivery_500_devices_256B");
    g.throughput(Throughput::Elements(CPU_POSTS * CPU_RECEIVERS as u64));
    // Criterion's times here are the server's CPU seconds, while each
    // iteration takes ~2.2 s of wall time whatever they are: one iteration
    // per sample (flat sampling, a target time below 10 iterations' CPU,
    // hence criterion's "unable to complete 10 samples" note) and a single
    // warm-up iteration keep the group at about 25 s per server plus setup.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_millis(100));
    let wire = submit_wire();
    let quinn: fn() -> CpuRig = CpuRig::quinn;
    for (name, start) in [("quinn", quinn), ("herold", CpuRig::herold)] {
        let mut rig = None;
        g.bench_function(name, |b| {
            let rig = rig.get_or_insert_with(start);
            b.iter_custom(|iters| rig.run(iters, &wire))
        });
        // Each server is stopped before the next starts.
        if let Some(rig) = rig.take() {
            rig.finish();
        }
    }
    g.finish();
}
criterion_group!(benches, cpu_per_delivery);
criterion_main!(benches);
