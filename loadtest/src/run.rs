//! The engine: connect every simulated device, send on an open-loop
//! schedule, receive and verify every delivery, and measure.
//!
//! Latencies are measured from the *intended* send time of each message,
//! drawn in advance from a Poisson process, not from when the tester got
//! around to sending it: a relay that stalls cannot hide the stall by slowing
//! the tester down (no coordinated omission).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use herold_client::{Client, ClientConfig, Event};
use herold_proto::v1::ErrorCode;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::check::{Gap, OwedSeen, Received, recovery, verify};
use crate::files::{Files, attachment_of, download_for, upload_for};
use crate::report::{Latency, Report, Second, Verification};
use crate::scenario::{HEADER_BYTES, Scenario};
use crate::slice::Slice;
use crate::world::World;

const MAGIC: &[u8; 4] = b"HLT1";

/// Times a submit refused with UNAVAILABLE is sent again (same message id,
/// backoff from 250 ms doubling to 2 s: about half a minute in all).
const SUBMIT_RETRIES: usize = 18;
/// A slice has settled when its devices received nothing new for this long.
const SLICE_QUIET: Duration = Duration::from_secs(3);

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct Target {
    /// Relay QUIC addresses (one relay, or every relay of a cluster). Device
    /// `i` connects to `relays[i % n]` and gets the others, in order, as
    /// its fallbacks: when its relay dies or drains, the SDK reconnects to
    /// the next one.
    pub relays: Vec<SocketAddr>,
    /// Relay certificate fingerprint.
    pub fingerprint: [u8; 32],
    /// Admin API URL.
    pub admin: String,
    /// Admin bearer token, if the admin API requires one.
    pub admin_token: Option<String>,
    /// UDP sockets shared by the simulated devices.
    pub endpoints: usize,
    /// Concurrent admin calls and connection attempts.
    pub concurrency: usize,
    /// Show live progress bars.
    pub progress: bool,
    /// `/metrics` URLs of the relays under test, for their UDP counters
    /// (datagrams dropped by the kernel); empty: not measured.
    pub relay_metrics: Vec<String>,
    /// How long a device gives a silent relay before reconnecting elsewhere
    /// (`ClientConfig::idle_timeout`); `None`: the SDK's default.
    pub client_idle_timeout: Option<Duration>,
    /// A file to write the schedule's start (Unix milliseconds) into when
    /// the traffic begins, for scripts that inject faults during the run.
    pub started_file: Option<std::path::PathBuf>,
    /// A file to write the time (Unix milliseconds) into once the traffic
    /// has settled; the devices stay connected until the file is removed
    /// (at most 10 s): scripts that measure the relays over the traffic
    /// alone read their counters meanwhile.
    pub settled_file: Option<std::path::PathBuf>,
    /// This load generator's share of the population (`--slice`).
    pub slice: Slice,
    /// The run's id, shared by all its slices (ids of accounts, devices and
    /// conversations derive from it); `None`: a random one.
    pub run_id: Option<u32>,
    /// When the schedule starts (Unix milliseconds), so that the slices of
    /// a run start together; `None`: once every device is connected.
    pub start_at_unix_ms: Option<u64>,
}

impl Target {
    /// A target with one relay and the defaults of the command line
    /// (8 endpoints, 64 at once, no progress bars, no `/metrics`).
    pub fn new(relay: SocketAddr, fingerprint: [u8; 32], admin: impl Into<String>) -> Self {
        Self {
            relays: vec![relay],
            fingerprint,
            admin: admin.into(),
            admin_token: None,
            endpoints: 8,
            concurrency: 64,
            progress: false,
            relay_metrics: Vec::new(),
            client_idle_timeout: None,
            started_file: None,
            settled_file: None,
            slice: Slice::WHOLE,
            run_id: None,
            start_at_unix_ms: None,
        }
    }

    /// The relay device `i` connects to first, and its fallbacks.
    fn relays_for(&self, i: usize) -> (SocketAddr, Vec<SocketAddr>) {
        let n = self.relays.len();
        let first = self.relays[i % n];
        let rest = (1..n).map(|k| self.relays[(i + k) % n]).collect();
        (first, rest)
    }
}

enum Sample {
    Accepted { sec: usize, us: u64 },
    Delivered { sec: usize, us: u64, at_us: u64 },
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    delivered: AtomicU64,
    files: Files,
}

impl AsRef<Files> for Counters {
    fn as_ref(&self) -> &Files {
        &self.files
    }
}

fn header(run: u32, msg: u64, intended_us: u64, bytes: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(bytes.max(HEADER_BYTES));
    p.extend_from_slice(MAGIC);
    p.extend_from_slice(&run.to_be_bytes());
    p.extend_from_slice(&msg.to_be_bytes());
    p.extend_from_slice(&intended_us.to_be_bytes());
    p.resize(bytes.max(HEADER_BYTES), 0x5a);
    p
}

fn parse(run: u32, p: &[u8]) -> Option<(u64, u64)> {
    if p.len() < HEADER_BYTES || &p[..4] != MAGIC || p[4..8] != run.to_be_bytes() {
        return None;
    }
    let msg = u64::from_be_bytes(p[8..16].try_into().ok()?);
    let intended = u64::from_be_bytes(p[16..24].try_into().ok()?);
    Some((msg, intended))
}

pub(crate) fn new_hist() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).context("histogram bounds")
}

fn bar(enabled: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
    ) {
        b.set_style(style);
    }
    b.set_prefix(what.to_owned());
    b
}

/// Runs `scenario` against `target` and returns the verified report.
pub async fn run(scenario: Scenario, target: Target) -> anyhow::Result<Report> {
    scenario.validate()?;
    let run_tag = match target.run_id {
        Some(id) => id,
        None => {
            let mut tag = [0u8; 4];
            getrandom::fill(&mut tag).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            u32::from_be_bytes(tag)
        }
    };
    let slice = target.slice;
    let prefix = crate::slice::prefix(run_tag);
    let world = Arc::new(World::build(&scenario, &prefix)?);

    // Provision.
    let t0 = Instant::now();
    let admin = herold_client::admin::AdminClient::connect(target.admin.clone())
        .await
        .with_context(|| format!("cannot reach the admin API at {}", target.admin))?;
    let pb = bar(target.progress, 0, "provision");
    world
        .provision(
            admin,
            target.admin_token.clone(),
            target.concurrency,
            &pb,
            slice,
        )
        .await?;
    pb.finish();
    let provision_secs = t0.elapsed().as_secs_f64();

    // Connect every device.
    let t1 = Instant::now();
    let relay_udp_before = if target.relay_metrics.is_empty() {
        None
    } else {
        Some(crate::udp::scrape_all(&target.relay_metrics).await)
    };
    let host_before = crate::udp::host_rcvbuf_errors();
    let mut own = crate::udp::OwnSockets::default();
    anyhow::ensure!(!target.relays.is_empty(), "no relay to run against");
    let endpoints: Vec<quinn::Endpoint> = (0..target.endpoints.max(1))
        .map(|_| own.endpoint(target.relays[0]))
        .collect::<Result<_, _>>()?;
    if let Some(g) = own.granted_recv_buffer()
        && g < crate::udp::SOCKET_BUFFER_BYTES
    {
        eprintln!(
            "warning: the kernel granted the load tester's sockets {g} bytes of receive \
             buffer, not {}: bursts may be dropped (raise net.core.rmem_max)",
            crate::udp::SOCKET_BUFFER_BYTES
        );
    }
    let pb = bar(target.progress, world.devices.len() as u64, "connect");
    let limit = Arc::new(Semaphore::new(target.concurrency.max(1)));
    let refusals = Arc::new(AtomicU64::new(0));
    let mut connecting = JoinSet::new();
    let mine = |d: &crate::world::Device| slice.owns_account(d.account);
    for (i, d) in world.devices.iter().enumerate().filter(|(_, d)| mine(d)) {
        let (first, fallbacks) = target.relays_for(i);
        let mut config = ClientConfig::new(first, target.fingerprint, &d.id, d.key.clone());
        config.fallback_relays = fallbacks;
        config.endpoint = Some(endpoints[i % endpoints.len()].clone());
        // QUIC alone is measured: a slow handshake is not a blocked network.
        config.tcp_fallback = false;
        if let Some(t) = target.client_idle_timeout {
            config.idle_timeout = t;
        }
        let (limit, refusals) = (limit.clone(), refusals.clone());
        connecting.spawn(async move {
            let _p = limit.acquire().await?;
            let c = connect_patiently(config, &refusals)
                .await
                .with_context(|| format!("connecting device {i}"))?;
            anyhow::Ok((i, c))
        });
    }
    let mut clients: Vec<Option<Client>> = (0..world.devices.len()).map(|_| None).collect();
    while let Some(r) = connecting.join_next().await {
        let (i, c) = r??;
        clients[i] = Some(c);
        pb.inc(1);
    }
    pb.finish();
    let connect_secs = t1.elapsed().as_secs_f64();
    let refused = refusals.load(Ordering::Relaxed);
    if refused > 0 {
        eprintln!(
            "warning: the relay turned {refused} connection attempts away (its per-address or \
             per-account admission limits: every device here comes from one address); they \
             were tried again. To measure, lift them: --max-unauthenticated-per-address, \
             --handshake-rate-per-address, --auth-rate-per-account"
        );
    }

    // Receivers.
    let counters = Arc::new(Counters::default());
    if let Some(at) = target.start_at_unix_ms {
        // The slices of a run start their schedules together.
        let wait = at.saturating_sub(crate::slice::unix_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let (samples_tx, mut samples_rx) = mpsc::unbounded_channel::<Sample>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let started_at_unix_ms = crate::slice::unix_ms();
    if let Some(f) = &target.started_file {
        std::fs::write(f, format!("{started_at_unix_ms}\n"))
            .with_context(|| format!("writing {}", f.display()))?;
    }
    let mut senders = Vec::with_capacity(clients.len());
    let mut receivers = Vec::with_capacity(clients.len());
    // Each receiver's findings, also read while settling.
    let mut progress: Vec<Arc<Mutex<Received>>> = Vec::with_capacity(clients.len());
    for (i, c) in clients.into_iter().enumerate() {
        if !mine(&world.devices[i]) {
            // Another slice's device.
            senders.push(None);
            progress.push(Arc::default());
            continue;
        }
        let mut c = c.context("a device did not connect")?;
        senders.push(Some(c.sender()));
        let fetcher = c.sender();
        let (samples, counters, mut stop) = (samples_tx.clone(), counters.clone(), stop_rx.clone());
        let shared = Arc::new(Mutex::new(Received::default()));
        progress.push(shared.clone());
        receivers.push(tokio::spawn(async move {
            let got = Shared(shared);
            let mut last: HashMap<String, u64> = HashMap::new();
            loop {
                let ev = tokio::select! {
                    ev = c.next_event() => ev,
                    _ = stop.wait_for(|s| *s) => break,
                };
                let m = match ev {
                    None => break,
                    Some(Event::Message(m)) => m,
                    Some(Event::Disconnected { .. }) => {
                        let mut got = got.lock();
                        got.disconnects += 1;
                        // A chain of failed attempts counts from its first.
                        if got.waiting_since.is_none() {
                            got.waiting_since = Some(start.elapsed().as_secs_f64());
                        }
                        continue;
                    }
                    Some(Event::Reconnected) => {
                        got.lock().reconnects += 1;
                        continue;
                    }
                    Some(_) => continue,
                };
                let Some((msg, intended_us)) = parse(run_tag, &m.ciphertext) else {
                    continue;
                };
                if let Some((id, size)) = attachment_of(&m.ciphertext) {
                    counters
                        .files
                        .downloads_started
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(download_for(
                        fetcher.clone(),
                        m.conversation_id.clone(),
                        id,
                        size,
                        counters.clone(),
                    ));
                }
                let now = start.elapsed();
                let mut got = got.lock();
                if let Some(since) = got.waiting_since.take() {
                    got.recoveries.push((since, now.as_secs_f64()));
                }
                let us = (now.as_micros() as u64).saturating_sub(intended_us).max(1);
                let _ = samples.send(Sample::Delivered {
                    sec: now.as_secs() as usize,
                    us,
                    at_us: now.as_micros() as u64,
                });
                let l = last.entry(m.conversation_id).or_insert(0);
                if m.seq <= *l {
                    got.reordered += 1;
                }
                *l = m.seq;
                got.messages.push((msg, m.seq));
                counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let senders = Arc::new(senders);

    // Aggregator of latency samples.
    let duration = scenario.duration_secs;
    let seconds = (duration + scenario.settle_secs).ceil() as usize + 2;
    let schedule_end_us = (duration * 1e6) as u64;
    let aggregator = tokio::spawn(async move {
        let mut gap = Gap::default();
        let mut acc = new_hist()?;
        let mut del = new_hist()?;
        let mut per_sec: Vec<(u64, u64, Histogram<u64>)> = Vec::with_capacity(seconds);
        for _ in 0..seconds {
            per_sec.push((0, 0, new_hist()?));
        }
        while let Some(s) = samples_rx.recv().await {
            match s {
                Sample::Accepted { sec, us } => {
                    let _ = acc.record(us);
                    if let Some(p) = per_sec.get_mut(sec) {
                        p.0 += 1;
                    }
                }
                Sample::Delivered { sec, us, at_us } => {
                    gap.delivered(at_us, schedule_end_us);
                    let _ = del.record(us);
                    if let Some(p) = per_sec.get_mut(sec) {
                        p.1 += 1;
                        let _ = p.2.record(us);
                    }
                }
            }
        }
        anyhow::Ok((acc, del, per_sec, gap))
    });

    // Open-loop schedule, one task per traffic stream.
    let accepted: Arc<Mutex<Vec<(u64, usize, u64)>>> = Arc::default();
    let errors: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let scenario = Arc::new(scenario);
    let mut schedules = JoinSet::new();
    for (ti, traffic) in scenario.traffic.iter().enumerate() {
        let class_idx = scenario
            .conversations
            .iter()
            .position(|k| k.name == traffic.conversation)
            .context("traffic names an unknown class")?;
        let (scenario, world, senders) = (scenario.clone(), world.clone(), senders.clone());
        let (accepted, errors, counters, samples) = (
            accepted.clone(),
            errors.clone(),
            counters.clone(),
            samples_tx.clone(),
        );
        schedules.spawn(async move {
            let traffic = &scenario.traffic[ti];
            let class = &world.classes[class_idx];
            let mut rng = SmallRng::seed_from_u64(scenario.seed ^ ((ti as u64 + 1) * 0x9e37_79b9));
            let mut t = 0.0f64;
            // Message numbers are the stream and the place in it: the same
            // in every slice of the run.
            let mut in_stream = 0u64;
            let mut inflight = JoinSet::new();
            loop {
                let rate = scenario.rate_at(traffic, t);
                if rate <= 0.0 {
                    t += 0.01;
                    if t >= scenario.duration_secs {
                        break;
                    }
                    continue;
                }
                let u: f64 = rng.random();
                t += -(1.0 - u).ln() / rate;
                if t >= scenario.duration_secs {
                    break;
                }
                let conv_idx = class[rng.random_range(0..class.len())];
                let conv = &world.conversations[conv_idx];
                let account = conv.senders[rng.random_range(0..conv.senders.len())];
                let devs = &world.accounts[account].devices;
                let device = devs[rng.random_range(0..devs.len())];
                let msg = ((ti as u64) << 40) | in_stream;
                in_stream += 1;
                // Another slice's device sends this one.
                let Some(sender) = senders[device].clone() else {
                    continue;
                };
                let intended = Duration::from_secs_f64(t);
                tokio::time::sleep_until(start + intended).await;
                let mut payload = header(run_tag, msg, intended.as_micros() as u64, traffic.bytes);
                let attachment = traffic.attachment_bytes;
                let conv_id = conv.id.clone();
                let (accepted, errors, counters, samples) = (
                    accepted.clone(),
                    errors.clone(),
                    counters.clone(),
                    samples.clone(),
                );
                counters.sent.fetch_add(1, Ordering::Relaxed);
                inflight.spawn(async move {
                    // As an app does: a submit the relay could not store now
                    // (UNAVAILABLE) is sent again with the same message id,
                    // so it is stored at most once.
                    // A photo: uploaded first, then its reference sent.
                    if attachment > 0 {
                        match upload_for(&sender, &conv_id, attachment, &counters.files).await {
                            Ok(r) => {
                                payload[HEADER_BYTES..HEADER_BYTES + r.len()].copy_from_slice(&r)
                            }
                            Err(e) => {
                                counters.failed.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut m) = errors.lock() {
                                    *m.entry(format!("upload: {e}")).or_insert(0) += 1;
                                }
                                return;
                            }
                        }
                    }
                    let id = herold_client::new_message_id();
                    let mut r = match &id {
                        Ok(id) => sender.send_with_id(*id, &conv_id, payload.clone(), 0).await,
                        Err(e) => Err(e.clone()),
                    };
                    let mut backoff = Duration::from_millis(250);
                    for _ in 0..SUBMIT_RETRIES {
                        match (&r, &id) {
                            (Err(e), Ok(id)) if e.code() == Some(ErrorCode::Unavailable) => {
                                counters.retried.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(2));
                                r = sender.send_with_id(*id, &conv_id, payload.clone(), 0).await;
                            }
                            _ => break,
                        }
                    }
                    let now = start.elapsed();
                    match r {
                        Ok(a) => {
                            let us = (now.saturating_sub(intended).as_micros() as u64).max(1);
                            let _ = samples.send(Sample::Accepted {
                                sec: now.as_secs() as usize,
                                us,
                            });
                            counters.accepted.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut v) = accepted.lock() {
                                v.push((msg, conv_idx, a.seq));
                            }
                        }
                        Err(e) => {
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut m) = errors.lock() {
                                *m.entry(e.to_string()).or_insert(0) += 1;
                            }
                        }
                    }
                });
            }
            while inflight.join_next().await.is_some() {}
        });
    }
    drop(samples_tx);

    // Live progress while the schedule runs.
    let pb = bar(target.progress, duration.ceil() as u64, "traffic");
    let ticker = {
        let (pb, counters) = (pb.clone(), counters.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                pb.set_position(start.elapsed().as_secs());
                pb.set_message(format!(
                    "sent {} accepted {} failed {} delivered {}",
                    counters.sent.load(Ordering::Relaxed),
                    counters.accepted.load(Ordering::Relaxed),
                    counters.failed.load(Ordering::Relaxed),
                    counters.delivered.load(Ordering::Relaxed),
                ));
            }
        })
    };
    while let Some(r) = schedules.join_next().await {
        r?;
    }
    let schedule_secs = start.elapsed().as_secs_f64();

    // Settle: wait until every accepted message reached every member device.
    let expected_total: u64 = accepted
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|(_, c, _)| world.conversations[*c].devices as u64)
        .sum();
    let deadline = Instant::now() + Duration::from_secs_f64(scenario.settle_secs);
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    // Deliveries of messages whose submit failed (the relay may have stored
    // them) do not count: only deliveries of accepted messages settle a run.
    let accepted_ids: std::collections::HashSet<u64> = accepted
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|(m, _, _)| *m)
        .collect();
    let mut owed_seen = OwedSeen::new(progress.len());
    // A slice does not know what the others had accepted: it settles once
    // its devices received nothing new for a while.
    let mut quiet = (counters.delivered.load(Ordering::Relaxed), Instant::now());
    while Instant::now() < deadline {
        let delivered = counters.delivered.load(Ordering::Relaxed);
        if slice.is_whole() {
            if delivered >= expected_total
                && owed_seen.update(&progress, &accepted_ids) >= expected_total
            {
                break;
            }
        } else if delivered != quiet.0 {
            quiet = (delivered, Instant::now());
        } else if Instant::now().saturating_duration_since(quiet.1) >= SLICE_QUIET {
            break;
        }
        poll.tick().await;
    }
    // Downloads of delivered attachments finish too.
    let files = &counters.files;
    let downloads_deadline = Instant::now() + Duration::from_secs(60);
    while files.downloaded.load(Ordering::Relaxed) + files.download_failed.load(Ordering::Relaxed)
        < files.downloads_started.load(Ordering::Relaxed)
        && Instant::now() < downloads_deadline
    {
        poll.tick().await;
    }
    ticker.abort();
    pb.finish();
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(f) = &target.settled_file {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        std::fs::write(f, format!("{now_ms}\n"))
            .with_context(|| format!("writing {}", f.display()))?;
        // The devices stay until the script took its readings and removed
        // the file (at most 10 s).
        let until = Instant::now() + Duration::from_secs(10);
        while f.exists() && Instant::now() < until {
            poll.tick().await;
        }
    }
    let _ = stop_tx.send(true);
    for r in receivers {
        r.await?;
    }
    let received: Vec<Received> = progress
        .iter()
        .map(|p| p.lock().map(|mut g| std::mem::take(&mut *g)))
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    drop(senders);
    let (acc_h, del_h, per_sec, gap) = aggregator.await??;

    // Verify.
    let accepted = std::mem::take(&mut *accepted.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let recovery = recovery(&received, &gap)?;
    let (verification, slice_data) = if slice.is_whole() {
        (verify(&world, &accepted, &received), None)
    } else {
        let data = crate::slice::SliceData {
            slice,
            run_id: run_tag,
            accepted: accepted.clone(),
            received: received
                .iter()
                .enumerate()
                .filter(|(d, _)| mine(&world.devices[*d]))
                .map(|(d, r)| (d, r.clone()))
                .collect(),
        };
        (Verification::default(), Some(data))
    };
    let timeline = per_sec
        .iter()
        .enumerate()
        .take((elapsed.ceil() as usize).max(1))
        .map(|(sec, (a, d, h))| Second {
            second: sec as u64,
            accepted: *a,
            delivered: *d,
            p50_ms: if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(0.5) as f64 / 1000.0
            },
            p99_ms: if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(0.99) as f64 / 1000.0
            },
        })
        .collect::<Vec<_>>();
    let errors = std::mem::take(&mut *errors.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let mut udp = crate::udp::UdpReport {
        loadtest_drops: own.drops(),
        host_rcvbuf_errors: crate::udp::host_rcvbuf_errors()
            .zip(host_before)
            .map(|(after, before)| after.saturating_sub(before)),
        loadtest_recv_buffer_bytes: own.granted_recv_buffer().map(|g| g as u64),
        ..Default::default()
    };
    match relay_udp_before {
        None => udp.relay_error = Some("no --relay-metrics given".into()),
        Some(Err(e)) => udp.relay_error = Some(format!("{e:#}")),
        Some(Ok(before)) => match crate::udp::scrape_all(&target.relay_metrics).await {
            Ok(after) => udp.relay = Some(after.since(before)),
            Err(e) => udp.relay_error = Some(format!("{e:#}")),
        },
    }
    Ok(Report {
        scenario: scenario.name.clone(),
        scale: scenario.scale,
        rate_scale: scenario.rate_scale,
        accounts: world.accounts.len(),
        devices: world.devices.len(),
        conversations: world.conversations.len(),
        provision_secs,
        connect_secs,
        schedule_secs,
        elapsed_secs: elapsed,
        sent: counters.sent.load(Ordering::Relaxed),
        accepted: accepted.len() as u64,
        failed: counters.failed.load(Ordering::Relaxed),
        retried: counters.retried.load(Ordering::Relaxed),
        errors,
        accepted_per_sec: accepted.len() as f64 / schedule_secs.max(1e-9),
        delivered_per_sec: verification.delivered as f64 / elapsed.max(1e-9),
        peak_delivered_per_sec: timeline.iter().map(|s| s.delivered).max().unwrap_or(0),
        submit_to_accepted: Latency::from(&acc_h),
        submit_to_delivered: Latency::from(&del_h),
        verification,
        recovery,
        started_at_unix_ms,
        udp,
        attachments: scenario
            .traffic
            .iter()
            .any(|t| t.attachment_bytes > 0)
            .then(|| {
                let mut a = counters.files.report();
                // Started but never finished: failed.
                let started = counters.files.downloads_started.load(Ordering::Relaxed);
                a.download_failed = started.saturating_sub(a.downloaded);
                a
            }),
        timeline,
        slice: slice_data,
    })
}

/// A receiver's [`Received`], shared with the settling loop.
struct Shared(Arc<Mutex<Received>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        // A receiver never panics while holding it; recover the data anyway.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Connects, trying again with back-off while the relay's admission limits
/// turn the device away (a load generator plays thousands of devices from
/// one address); counts each refusal.
async fn connect_patiently(
    config: ClientConfig,
    refusals: &AtomicU64,
) -> Result<Client, herold_client::ClientError> {
    use herold_client::ClientError;
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut wait = Duration::from_millis(50);
    loop {
        match Client::connect(config.clone()).await {
            Err(
                ClientError::Refused
                | ClientError::Relay {
                    code: ErrorCode::RateLimited,
                    ..
                },
            ) if Instant::now() < give_up => {
                refusals.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let p = header(7, 42, 1234, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(parse(7, &p), Some((42, 1234)));
        assert_eq!(parse(8, &p), None);
        assert_eq!(parse(7, &p[..10]), None);
    }

    #[test]
    fn devices_spread_round_robin_with_the_others_as_fallbacks() {
        let a: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut t = Target::new(a[0], [0; 32], "http://127.0.0.1:7301");
        assert_eq!(t.relays_for(5), (a[0], vec![]));
        t.relays = a.clone();
        assert_eq!(t.relays_for(0), (a[0], vec![a[1], a[2]]));
        assert_eq!(t.relays_for(4), (a[1], vec![a[2], a[0]]));
        assert_eq!(t.relays_for(5), (a[2], vec![a[0], a[1]]));
    }
}
