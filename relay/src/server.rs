//! The relay node: binds the QUIC endpoint and the admin API, accepts
//! connections, consumes the node inbox, and drains on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use herold_router::{Delivery, Inbox, InboxEvent, Router, memory::MemoryRouter};
use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};
use herold_store::{Store, StoredMessage};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{info, warn};

use crate::config::{Config, Limits};
use crate::cursors::CursorSink;
use crate::health::Health;
use crate::metrics as m;
use crate::registry::{Kick, Push, Registry};
use crate::roster::Rosters;
use herold_proto::v1::{self, ErrorCode, cluster_event};
use prost::Message as _;

/// How often acknowledged cursors are written, all devices in one operation.
const CURSOR_FLUSH: Duration = Duration::from_millis(250);
/// The least time a drain gives running fan-outs, even after a grace
/// period spent on sessions.
const FAN_OUT_GRACE: Duration = Duration::from_secs(1);
/// How long the end of a drain waits for admin calls still running.
const ADMIN_STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the drain's progress gauge is updated.
const DRAIN_PROGRESS: Duration = Duration::from_millis(500);
/// How often expired messages are purged from the store.
const PURGE_INTERVAL: Duration = Duration::from_secs(30);

/// Wall clock in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// State shared by every task of the relay.
#[derive(Debug)]
pub(crate) struct Shared {
    pub node_id: String,
    pub store: Arc<dyn Store>,
    pub router: Arc<dyn Router>,
    pub registry: Registry,
    pub rosters: Rosters,
    pub cursors: CursorSink,
    pub limits: Limits,
    /// Whether logs may carry client IP addresses (off by default).
    pub log_client_addresses: bool,
    /// Fan-outs under way: a drain waits for them before the relay leaves
    /// the router, so what it accepted reaches the other relays live.
    pub fan_outs: tokio_util::task::TaskTracker,
    /// Spreads deliveries to this node's devices over time.
    pub pacer: crate::pacer::Pacer,
}

impl Shared {
    /// Membership or devices of these conversations changed (an empty
    /// slice: of any conversation): every node's roster cache forgets them.
    pub async fn rosters_changed(&self, conversations: &[String]) {
        self.rosters.invalidate_some(conversations);
        self.tell_cluster(cluster_event::Kind::RostersChanged(v1::RostersChanged {
            conversation_ids: conversations.to_vec(),
        }))
        .await;
    }

    /// Ends the sessions of these devices on every node, with `why`.
    pub async fn kick_devices(&self, devices: &[String], why: Kick) {
        for d in devices {
            self.registry.kick(d, why.clone());
        }
        self.tell_cluster(cluster_event::Kind::KickDevices(v1::KickDevices {
            device_ids: devices.to_vec(),
            code: why.code as i32,
            message: why.message,
        }))
        .await;
    }

    /// Broadcasts a change this node has applied already to the others. If
    /// the router is unreachable the others learn it when they resync
    /// (their inbox reports `Lagged`, which clears caches and re-checks
    /// every connected device).
    async fn tell_cluster(&self, kind: cluster_event::Kind) {
        let ev = v1::ClusterEvent {
            origin_node: self.node_id.clone(),
            kind: Some(kind),
        };
        if let Err(e) = self.router.broadcast(ev.encode_to_vec().into()).await {
            warn!(error = %e, "telling the other relays failed; they catch up when they resync");
        }
    }

    /// Applies another node's broadcast.
    fn apply_cluster_event(&self, payload: &[u8]) {
        let ev = match v1::ClusterEvent::decode(payload) {
            Ok(ev) => ev,
            Err(e) => {
                warn!(error = %e, "undecodable cluster event; clearing the roster cache");
                self.rosters.invalidate();
                return;
            }
        };
        if ev.origin_node == self.node_id {
            return;
        }
        match ev.kind {
            Some(cluster_event::Kind::RostersChanged(r)) => {
                self.rosters.invalidate_some(&r.conversation_ids);
            }
            Some(cluster_event::Kind::KickDevices(k)) => {
                let why = Kick {
                    code: ErrorCode::try_from(k.code).unwrap_or(ErrorCode::DeviceRevoked),
                    message: k.message,
                };
                for d in &k.device_ids {
                    self.registry.kick(d, why.clone());
                }
            }
            None => {}
        }
    }
}

/// After the router may have lost messages: every device resyncs from the
/// store, cached rosters are dropped, and every connected device is checked
/// against the directory (a revocation broadcast may be among the lost).
fn recover_from_lag(shared: &Arc<Shared>) {
    metrics::counter!(m::RESYNCS).increment(1);
    shared.rosters.invalidate();
    shared.registry.push_all(&Push::Resync);
    let shared = shared.clone();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let devices = shared.registry.device_ids();
        futures_util::stream::iter(devices)
            .for_each_concurrent(32, |d| {
                let shared = shared.clone();
                async move {
                    match shared.store.get_device(&d).await {
                        Ok(Some(dev)) if !dev.revoked => {}
                        Ok(_) => {
                            shared.registry.kick(
                                &d,
                                Kick {
                                    code: ErrorCode::DeviceRevoked,
                                    message: "this device was revoked".into(),
                                },
                            );
                        }
                        Err(e) => warn!(error = %e, "re-checking a device failed"),
                    }
                }
            })
            .await;
    });
}

/// A bound, not yet running relay node.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    /// One QUIC endpoint per UDP socket, all on the same port.
    endpoints: Vec<quinn::Endpoint>,
    /// The relay's UDP sockets in the kernel's tables (for their drop counter).
    socket: crate::udp::SocketStats,
    admin: tokio::net::TcpListener,
    /// The operations listener: `/metrics`, `/healthz`, `/readyz`.
    ops: tokio::net::TcpListener,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    /// TLS of the admin API, loaded at bind so a bad file fails early.
    admin_tls: Option<tonic::transport::ServerTlsConfig>,
    admin_auth: crate::operators::Auth,
    inbox: Inbox,
    fingerprint: String,
    config: Config,
}

impl Relay {
    /// Binds a relay on the embedded default: the embedded store in
    /// `<data_dir>/store` and the in-process router; or on the CQL store
    /// (migrated first) when `config.cql` is set.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        if let Some(cql) = &config.cql {
            let store = herold_store::cql::CqlStore::connect(cql.clone())
                .await
                .with_context(|| {
                    format!(
                        "opening the CQL store (keyspace {} at {})",
                        cql.keyspace,
                        cql.contact_points.join(",")
                    )
                })?;
            let router: Arc<dyn Router> = match &config.redis {
                Some(r) => Arc::new(
                    herold_router::redis::RedisRouter::new(r.clone())
                        .context("configuring the Redis router")?,
                ),
                None => Arc::new(MemoryRouter::default()),
            };
            return Self::bind_with(config, Arc::new(store), router).await;
        }
        let store_dir = config.data_dir.join("store");
        let store = EmbeddedStore::open(&store_dir, EmbeddedConfig::default())
            .with_context(|| format!("opening the embedded store in {}", store_dir.display()))?;
        Self::bind_with(config, Arc::new(store), Arc::new(MemoryRouter::default())).await
    }

    /// Binds a relay on the given backends.
    pub async fn bind_with(
        config: Config,
        store: Arc<dyn Store>,
        router: Arc<dyn Router>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let prometheus = crate::metrics::install().map_err(anyhow::Error::msg)?;
        let identity = crate::tls::load_identity(&config)?;
        let fingerprint = identity.fingerprint.clone();
        let server_config = crate::tls::server_config(identity, &config.limits)?;
        let (endpoints, socket) = crate::udp::bind(server_config, config.listen, &config.limits)
            .with_context(|| format!("binding QUIC on {}", config.listen))?;
        let admin_tls = admin_tls_config(&config)?;
        let admin_auth = admin_auth(&config);
        let admin = tokio::net::TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("binding the admin API on {}", config.admin_listen))?;
        let ops = tokio::net::TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "binding the metrics and health listener on {}",
                    config.metrics_listen
                )
            })?;
        // Every store and router operation is timed and its errors counted.
        let store: Arc<dyn Store> = Arc::new(herold_store::metered::Metered::new(store));
        let router: Arc<dyn Router> = Arc::new(herold_router::metered::Metered::new(router));
        let inbox = register(&*router, &config).await?;
        let shared = Arc::new(Shared {
            node_id: config.node_id.clone(),
            rosters: Rosters::new(store.clone(), config.limits.clone()),
            store,
            router,
            registry: Registry::default(),
            cursors: CursorSink::default(),
            limits: config.limits.clone(),
            log_client_addresses: config.log_client_addresses,
            fan_outs: tokio_util::task::TaskTracker::new(),
            pacer: crate::pacer::Pacer::new(config.limits.fan_out_rate),
        });
        Ok(Self {
            shared,
            endpoints,
            socket,
            admin,
            ops,
            prometheus,
            admin_tls,
            admin_auth,
            inbox,
            fingerprint,
            config,
        })
    }

    /// The QUIC address clients connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self.endpoints.first() {
            Some(e) => e.local_addr(),
            None => Err(std::io::Error::other("no QUIC endpoint is bound")),
        }
    }

    /// The admin API address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The operations listener's address (`/metrics`, `/healthz`, `/readyz`).
    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.ops.local_addr()
    }

    /// SHA-256 fingerprint (hex) of the TLS certificate, for pinning.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Serves until `shutdown` completes, then drains: connected devices are
    /// told to reconnect, in-flight submits finish, acks are flushed, all
    /// bounded by the drain grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Relay {
            shared,
            endpoints,
            socket,
            admin,
            ops,
            prometheus,
            admin_tls,
            admin_auth,
            inbox,
            config,
            ..
        } = self;
        let (drain_tx, drain_rx) = watch::channel(false);
        // The admin API and the operations listener outlive the drain, so
        // probes and operators see it happen; they stop at the very end.
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let (grpc_health, grpc_health_service) = tonic_health::server::health_reporter();
        let health = Arc::new(Health::new(
            shared.store.clone(),
            shared.router.clone(),
            grpc_health,
            prometheus,
            socket,
        ));
        metrics::gauge!(m::DRAINING).set(0.0);
        metrics::gauge!(m::DRAIN_STARTED).set(0.0);
        if let Err(why) = health.refresh().await {
            warn!(%why, "not ready at start");
        }
        let inbox_task = tokio::spawn(consume_inbox(shared.clone(), inbox));
        let purge_task = tokio::spawn(purge_expired(shared.clone()));
        let cursor_task = tokio::spawn(flush_cursors(shared.clone()));
        let health_task = tokio::spawn(crate::health::keep_checking(health.clone()));
        let ops_task = tokio::spawn(crate::health::serve(health.clone(), ops, stopped()));
        let admin_task = {
            let shared = shared.clone();
            let auth = admin_auth;
            let stop = stopped();
            tokio::spawn(async move {
                if let Err(e) =
                    crate::admin::serve(shared, auth, admin_tls, admin, grpc_health_service, stop)
                        .await
                {
                    warn!(error = %e, "admin API stopped with an error");
                }
            })
        };

        // Each endpoint accepts on its own task; the loop below sees one
        // stream of incoming connections.
        let (incoming_tx, mut incoming_rx) = mpsc::channel::<quinn::Incoming>(64);
        let acceptors: Vec<_> = endpoints
            .iter()
            .map(|e| {
                let (e, tx) = (e.clone(), incoming_tx.clone());
                tokio::spawn(async move {
                    while let Some(incoming) = e.accept().await {
                        if tx.send(incoming).await.is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        drop(incoming_tx);
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let conn_limit = Arc::new(Semaphore::new(config.limits.max_connections as usize));
        let next_conn = AtomicU64::new(1);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                incoming = incoming_rx.recv() => {
                    let Some(incoming) = incoming else { break };
                    let Ok(permit) = conn_limit.clone().try_acquire_owned() else {
                        metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
                        incoming.refuse();
                        continue;
                    };
                    let shared = shared.clone();
                    let done = done_tx.clone();
                    let drain = drain_rx.clone();
                    let id = next_conn.fetch_add(1, Ordering::Relaxed);
                    // Client addresses are personal data: in the logs only
                    // when the operator asked for them.
                    let span = tracing::info_span!(
                        "conn",
                        conn.id = id,
                        client.addr = tracing::field::Empty
                    );
                    if shared.log_client_addresses {
                        span.record("client.addr", tracing::field::display(incoming.remote_address()));
                    }
                    tokio::spawn(tracing::Instrument::instrument(async move {
                        crate::session::serve(shared, incoming, id, drain).await;
                        drop(permit);
                        drop(done);
                    }, span));
                }
            }
        }

        info!(sessions = shared.registry.len(), "draining");
        health.start_drain().await;
        metrics::gauge!(m::DRAINING).set(1.0);
        metrics::gauge!(m::DRAIN_STARTED).set(now_ms() as f64 / 1000.0);
        metrics::gauge!(m::DRAIN_REMAINING).set(shared.registry.len() as f64);
        for e in &endpoints {
            e.set_server_config(None);
        }
        for a in &acceptors {
            a.abort();
        }
        // Connections accepted by an endpoint but not yet served are refused.
        incoming_rx.close();
        while let Ok(incoming) = incoming_rx.try_recv() {
            incoming.refuse();
        }
        let _ = drain_tx.send(true);
        drop(done_tx);
        let grace_over = tokio::time::Instant::now() + config.drain_grace;
        let mut progress = tokio::time::interval(DRAIN_PROGRESS);
        loop {
            tokio::select! {
                _ = done_rx.recv() => break,
                _ = tokio::time::sleep_until(grace_over) => {
                    warn!(
                        remaining = shared.registry.len(),
                        "drain grace period over; closing the remaining connections"
                    );
                    break;
                }
                _ = progress.tick() => {
                    metrics::gauge!(m::DRAIN_REMAINING).set(shared.registry.len() as f64);
                }
            }
        }
        metrics::gauge!(m::DRAIN_REMAINING).set(shared.registry.len() as f64);
        // The sessions have ended (or the grace is over): let the fan-outs
        // already running reach the other relays before this one leaves.
        shared.fan_outs.close();
        let left = grace_over.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(left.max(FAN_OUT_GRACE), shared.fan_outs.wait())
            .await
            .is_err()
        {
            warn!(
                fan_outs = shared.fan_outs.len(),
                "fan-outs still running at the end of the grace period; their devices sync"
            );
        }
        for e in &endpoints {
            e.close(0u32.into(), b"relay shutting down");
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            futures_util::future::join_all(endpoints.iter().map(|e| e.wait_idle())),
        )
        .await;
        let _ = shared.router.deregister_node(&shared.node_id).await;
        inbox_task.abort();
        purge_task.abort();
        cursor_task.abort();
        if let Err(e) = shared.cursors.flush(&*shared.store).await {
            warn!(error = %e, "writing the last cursors failed");
        }
        let _ = stop_tx.send(true);
        health_task.abort();
        // An admin call still running (a long import) must not hold the
        // exit past its grace: it is cut off, and it is idempotent to redo.
        let admin_abort = admin_task.abort_handle();
        if tokio::time::timeout(ADMIN_STOP_GRACE, admin_task)
            .await
            .is_err()
        {
            warn!("admin calls still running at exit were cut off; repeat them");
            admin_abort.abort();
        }
        if let Ok(Err(e)) = ops_task.await {
            warn!(error = %e, "metrics and health listener stopped with an error");
        }
        if let Err(e) = shared.store.close().await {
            warn!(error = %e, "closing the store failed");
        }
        info!("stopped");
        Ok(())
    }
}

/// Registers the node. A relay restarted at once after a crash finds its
/// id still leased by its dead predecessor: it waits out the lease.
async fn register(router: &dyn Router, config: &Config) -> anyhow::Result<Inbox> {
    let lease = config.redis.as_ref().map_or(Duration::ZERO, |r| r.lease);
    let deadline = tokio::time::Instant::now() + lease + Duration::from_secs(2);
    let mut told = false;
    loop {
        match router.register_node(&config.node_id).await {
            Ok(inbox) => return Ok(inbox),
            Err(herold_router::RouterError::NodeExists(_))
                if tokio::time::Instant::now() < deadline =>
            {
                if !std::mem::replace(&mut told, true) {
                    info!(
                        node = %config.node_id,
                        "node id still leased (a crashed predecessor?); waiting for the lease to end"
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "registering node {:?} with the router (node ids must be unique in a cluster)",
                        config.node_id
                    )
                });
            }
        }
    }
}

/// The admin API's TLS configuration, read from the configured PEM files.
fn admin_tls_config(config: &Config) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    let Some(t) = &config.admin_tls else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("reading admin TLS file {}", p.display()))
    };
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(&t.cert)?, read(&t.key)?),
    );
    if let Some(ca) = &t.client_ca {
        // Optional: operators may authenticate with a token instead.
        tls = tls
            .client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(Some(tls))
}

/// Who may call the admin API: the operators file plus the single token;
/// nobody configured means open (loopback only, checked by the config).
fn admin_auth(config: &Config) -> crate::operators::Auth {
    let mut ops = config.admin_operators.clone();
    if let Some(token) = &config.admin_token {
        ops.push(crate::operators::OperatorEntry {
            name: "admin".into(),
            role: crate::operators::OperatorRole::OrgAdmin,
            token: Some(token.clone()),
            cert_sha256: None,
            groups: Vec::new(),
        });
    }
    if ops.is_empty() {
        crate::operators::Auth::Open
    } else {
        crate::operators::Auth::Operators(ops)
    }
}

/// Sends one stored message to every online recipient device: one delivery
/// per relay node holding any of them.
pub(crate) async fn fan_out(shared: &Arc<Shared>, devices: &[String], m: &StoredMessage) {
    m::hot().fanout_devices.record(devices.len() as f64);
    let frame = crate::session::deliver_frame(m);
    let located = match shared.router.locate(devices).await {
        Ok(l) => l,
        Err(e) => {
            // Without the router, this node still serves its own devices;
            // the others resync when their inboxes report the lag.
            warn!(error = %e, "router locate failed; delivering to local devices only");
            let d = Arc::new(Delivery {
                conversation_id: m.conversation_id.clone(),
                seq: m.seq,
                expires_at_ms: m.expires_at_ms,
                accepted_at_ms: Some(m.server_time_ms),
                traceparent: None,
                frame,
                devices: devices.to_vec(),
            });
            crate::pacer::Pacer::deliver(shared, d);
            return;
        }
    };
    m::hot().fanout_nodes.record(located.len() as f64);
    // The receiving relays' spans join this trace (when it is sampled).
    let traceparent = crate::telemetry::traceparent(&tracing::Span::current());
    let batch: Vec<(String, Delivery)> = located
        .into_iter()
        .map(|(node, devices)| {
            let d = Delivery {
                conversation_id: m.conversation_id.clone(),
                seq: m.seq,
                expires_at_ms: m.expires_at_ms,
                accepted_at_ms: Some(m.server_time_ms),
                traceparent: traceparent.clone(),
                frame: frame.clone(),
                devices,
            };
            (node, d)
        })
        .collect();
    for r in shared.router.publish_many(batch).await {
        if let Err(e) = r {
            // A node that just died: its devices reconnect elsewhere and sync.
            warn!(error = %e, "router publish failed");
        }
    }
}

async fn consume_inbox(shared: Arc<Shared>, mut inbox: Inbox) {
    while let Some(ev) = inbox.recv().await {
        match ev {
            InboxEvent::Delivery(mut d) => {
                let span = match &d.traceparent {
                    Some(tp) => {
                        let span = tracing::info_span!("deliver", devices = d.devices.len());
                        crate::telemetry::follow(&span, tp);
                        // The pushes to devices are children of this span.
                        d.traceparent = crate::telemetry::traceparent(&span);
                        span
                    }
                    None => tracing::Span::none(),
                };
                let _entered = span.enter();
                // One allocation per delivery, not per recipient device.
                crate::pacer::Pacer::deliver(&shared, Arc::new(d));
            }
            InboxEvent::Lagged => recover_from_lag(&shared),
            InboxEvent::Broadcast(payload) => shared.apply_cluster_event(&payload),
        }
    }
}

async fn flush_cursors(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(CURSOR_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match shared.cursors.flush(&*shared.store).await {
            Ok(0) => {}
            Ok(n) => metrics::histogram!(m::CURSOR_FLUSH_CURSORS).record(n as f64),
            Err(e) => {
                metrics::counter!(m::CURSOR_FLUSH_ERRORS).increment(1);
                warn!(error = %e, "writing cursors failed; retrying");
            }
        }
    }
}

async fn purge_expired(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tick.tick().await;
        match shared.store.purge_expired(now_ms()).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!(m::PURGED).increment(n);
                info!(purged = n, "expired messages deleted");
            }
            Err(e) => warn!(error = %e, "purging expired messages failed"),
        }
    }
}
