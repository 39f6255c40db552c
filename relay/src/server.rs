//! The relay node: binds the QUIC endpoint and the admin API, accepts
//! connections, consumes the node inbox, and drains on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use herold_router::{Inbox, Router, memory::MemoryRouter};
use herold_store::Store;
use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{info, warn};

use crate::admission::{Ticket, Verdict};
use crate::config::Config;
use crate::health::Health;
use crate::link::Incoming;
use crate::metrics as m;
use crate::node::{Shared, now_ms};

/// How often acknowledged cursors are written, all devices in one operation.
const CURSOR_FLUSH: Duration = Duration::from_millis(250);
/// The least time a drain gives running fan-outs, even after a grace
/// period spent on sessions.
const FAN_OUT_GRACE: Duration = Duration::from_secs(1);
/// How long the end of a drain waits for admin calls still running.
const ADMIN_STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the drain's progress gauge is updated.
const DRAIN_PROGRESS: Duration = Duration::from_millis(500);

/// A bound, not yet running relay node.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    /// One QUIC endpoint per UDP socket, all on the same port.
    endpoints: Vec<quinn::Endpoint>,
    /// The relay's UDP sockets in the kernel's tables (for their drop counter).
    socket: crate::udp::SocketStats,
    /// The TCP fallback's listener and TLS, unless turned off.
    tcp: Option<TcpFallback>,
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
    /// Sends the push wake-ups (started by `run`).
    push_worker: crate::push::Worker,
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
        let tcp_tls = crate::tls::tcp_acceptor(&identity)?;
        // Browsers' WebTransport shares the QUIC port; it needs the TCP
        // port, where their pages and the WebSocket fallback are.
        let web = match (&config.tcp_listen, &config.tls) {
            (None, _) => crate::tls::WebTransport::Off,
            (Some(_), crate::config::TlsSource::DevSelfSigned) => crate::tls::WebTransport::Pinned(
                crate::tls::PinnedCert::in_dir(&config.data_dir.join("tls"))?,
            ),
            (Some(_), crate::config::TlsSource::Files { .. }) => crate::tls::WebTransport::Own,
        };
        let pinned = match &web {
            crate::tls::WebTransport::Pinned(p) => vec![p.hash],
            _ => Vec::new(),
        };
        let server_config = crate::tls::server_config(identity, &config.limits, &web)?;
        let (endpoints, socket) = crate::udp::bind(server_config, config.listen, &config.limits)
            .with_context(|| format!("binding QUIC on {}", config.listen))?;
        let tcp = match config.tcp_listen {
            None => None,
            Some(at) => Some(TcpFallback {
                listener: bind_tcp(at, config.listen, &endpoints).await?,
                tls: tcp_tls,
                files: match &config.web_root {
                    Some(root) => Some(crate::web::Files::load(root)?),
                    None => None,
                },
                pinned,
            }),
        };
        let admin_tls = crate::admin::tls_config(&config)?;
        let admin_auth = crate::admin::auth(&config);
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
        let (push, push_worker) = crate::push::Pusher::new(
            store.clone(),
            config.push_gateways.clone(),
            config.limits.push_coalesce,
        );
        let shared = Arc::new(Shared::new(
            config.node_id.clone(),
            store,
            router,
            &config.limits,
            config.log_client_addresses,
            push,
        ));
        Ok(Self {
            shared,
            endpoints,
            socket,
            tcp,
            admin,
            ops,
            prometheus,
            admin_tls,
            admin_auth,
            inbox,
            fingerprint,
            config,
            push_worker,
        })
    }

    /// The QUIC address clients connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self.endpoints.first() {
            Some(e) => e.local_addr(),
            None => Err(std::io::Error::other("no QUIC endpoint is bound")),
        }
    }

    /// The TCP fallback's address (WebSocket over TLS), unless turned off.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|t| t.listener.local_addr().ok())
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
            tcp,
            admin,
            ops,
            prometheus,
            admin_tls,
            admin_auth,
            inbox,
            config,
            push_worker,
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
        let inbox_task = tokio::spawn(crate::delivery::consume_inbox(
            inbox,
            shared.pacer.clone(),
            shared.cluster.clone(),
            shared.reads.clone(),
        ));
        let purge_task = tokio::spawn(purge_expired(shared.clone()));
        let push_task = tokio::spawn(push_worker.0);
        let cursor_task = tokio::spawn(flush_cursors(shared.clone()));
        let health_task = tokio::spawn(crate::health::keep_checking(health.clone()));
        let ops_task = tokio::spawn(crate::health::serve(health.clone(), ops, stopped()));
        let admin_node = crate::admin::AdminNode::new(&shared);
        let admin_task = {
            let node = admin_node.clone();
            let auth = admin_auth;
            let stop = stopped();
            tokio::spawn(async move {
                if let Err(e) =
                    crate::admin::serve(node, auth, admin_tls, admin, grpc_health_service, stop)
                        .await
                {
                    warn!(error = %e, "admin API stopped with an error");
                }
            })
        };

        // Each endpoint accepts on its own task; the loop below sees one
        // stream of incoming connections. Browsers come to the TCP port's
        // door, or to the same door on QUIC (WebTransport).
        let (incoming_tx, mut incoming_rx) = mpsc::channel::<Incoming>(64);
        let quic_port = endpoints
            .first()
            .and_then(|e| e.local_addr().ok())
            .map_or(config.listen.port(), |a| a.port());
        let mut acceptors = Vec::new();
        let mut h3: Option<Arc<dyn crate::link::H3Door>> = None;
        if let Some(t) = tcp {
            let door = t.door(&config, &admin_node, quic_port)?;
            h3 = Some(door.clone());
            acceptors.push(tokio::spawn(accept_tcp(
                t.listener,
                door,
                incoming_tx.clone(),
            )));
        }
        acceptors.extend(endpoints.iter().map(|e| {
            let (e, tx, h3) = (e.clone(), incoming_tx.clone(), h3.clone());
            tokio::spawn(async move {
                while let Some(incoming) = e.accept().await {
                    if tx.send(Incoming::Quic(incoming, h3.clone())).await.is_err() {
                        break;
                    }
                }
            })
        }));
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
                    let Some((incoming, ticket, permit)) = admit(&shared, &conn_limit, incoming) else {
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
                        crate::session::serve(shared, incoming, ticket, id, drain).await;
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
            if let Incoming::Quic(i, _) = incoming {
                i.refuse();
            }
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
        push_task.abort();
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
    let every = Duration::from_secs(u64::from(shared.limits.purge_interval_secs).max(1));
    let mut tick = tokio::time::interval(every);
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
        match shared.store.purge_expired_attachments(now_ms()).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!(m::PURGED_ATTACHMENTS).increment(n);
                info!(purged = n, "expired attachments deleted");
            }
            Err(e) => warn!(error = %e, "purging expired attachments failed"),
        }
    }
}

/// The TCP port's listener, TLS and web messenger files.
struct TcpFallback {
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    files: Option<crate::web::Files>,
    /// The SHA-256 of the certificate browsers pin for WebTransport.
    pinned: Vec<[u8; 32]>,
}

impl TcpFallback {
    /// The port's door: TLS, HTTP, the WebSocket upgrade, enrollment.
    fn door(
        &self,
        config: &Config,
        admin: &Arc<crate::admin::AdminNode>,
        quic_port: u16,
    ) -> anyhow::Result<Arc<crate::web::Web>> {
        let port = self.listener.local_addr()?.port();
        let names = if config.web_names.is_empty() {
            crate::web::default_names(config.dev, port)
        } else {
            config.web_names.clone()
        };
        Ok(Arc::new(crate::web::Web {
            tls: self.tls.clone(),
            files: self.files.clone(),
            origins: crate::web::origins(&names, &config.web_origins),
            csp: crate::web::content_security_policy(&names, quic_port),
            names: names.into(),
            enrollment: crate::admin::EnrollmentService::new(admin.clone()),
            // A message holds at most a frame and its length prefix.
            max_message: config.limits.max_frame_bytes as usize + 16,
            idle: config.limits.idle_timeout,
            webtransport: crate::web::WebTransportOffer {
                port: quic_port,
                pinned: self.pinned.clone(),
            },
        }))
    }
}

impl std::fmt::Debug for TcpFallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpFallback")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// Binds the TCP fallback: at `at`, or on the QUIC port's number (where a
/// device tries it when QUIC does not get through). A QUIC port chosen by
/// the system (port 0) whose number is taken on TCP gets a TCP port of its
/// own, with a warning.
async fn bind_tcp(
    at: Option<SocketAddr>,
    listen: SocketAddr,
    endpoints: &[quinn::Endpoint],
) -> anyhow::Result<tokio::net::TcpListener> {
    if let Some(at) = at {
        return tokio::net::TcpListener::bind(at)
            .await
            .with_context(|| format!("binding the TCP fallback on {at} (tcp-listen)"));
    }
    let quic = endpoints
        .first()
        .map(quinn::Endpoint::local_addr)
        .transpose()?
        .unwrap_or(listen);
    match tokio::net::TcpListener::bind(quic).await {
        Ok(l) => Ok(l),
        Err(e) if listen.port() == 0 => {
            warn!(error = %e, port = quic.port(), "the QUIC port's number is taken on TCP; the TCP fallback takes another port");
            Ok(tokio::net::TcpListener::bind(SocketAddr::new(quic.ip(), 0)).await?)
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "binding the TCP fallback on {quic} (the QUIC address on TCP): set tcp-listen, \
                 or turn the fallback off with --no-tcp-fallback"
            )
        }),
    }
}

/// Accepts TCP connections of the fallback until the relay drains.
async fn accept_tcp(
    listener: tokio::net::TcpListener,
    door: Arc<dyn crate::link::TcpDoor>,
    tx: mpsc::Sender<Incoming>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                if tx
                    .send(Incoming::Tcp(stream, addr, door.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                warn!(error = %e, "accepting a TCP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Admission of a new connection (`crate::admission`), then a place among
/// the relay's `max_connections`; `None`: answered with a Retry or refused.
fn admit(
    shared: &Shared,
    total: &Arc<Semaphore>,
    incoming: Incoming,
) -> Option<(Incoming, Ticket, tokio::sync::OwnedSemaphorePermit)> {
    let refuse = |incoming: Incoming, reason: &'static str| {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
        if let Incoming::Quic(i, _) = incoming {
            i.refuse();
        }
        // A TCP connection is closed by dropping it.
    };
    let validated = match &incoming {
        Incoming::Quic(i, _) => i.remote_address_validated(),
        // The TCP handshake proved the address.
        Incoming::Tcp(..) => true,
    };
    let verdict = shared.admission.admit(
        incoming.remote_address().ip(),
        validated,
        std::time::Instant::now(),
    );
    match verdict {
        Verdict::Admit(ticket) => match total.clone().try_acquire_owned() {
            Ok(permit) => Some((incoming, ticket, permit)),
            Err(_) => {
                refuse(incoming, "full");
                None
            }
        },
        Verdict::Retry => match incoming {
            Incoming::Quic(i, _) if i.may_retry() => {
                metrics::counter!(m::QUIC_RETRIES).increment(1);
                // Fails only when the endpoint has no Retry tokens to give;
                // the peer then tries again.
                if let Err(e) = i.retry() {
                    e.into_incoming().refuse();
                }
                None
            }
            // It came back from a Retry and its token did not prove it.
            other => {
                refuse(other, "unvalidated");
                None
            }
        },
        Verdict::Refuse(why) => {
            refuse(incoming, why.label());
            None
        }
    }
}
