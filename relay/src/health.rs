//! The operations listener: plain HTTP on its own address (default
//! loopback) for the orchestrator and Prometheus.
//!
//! - `GET /metrics`: the Prometheus exposition of every metric
//!   (`crate::metrics`), with the UDP socket's kernel counters read fresh.
//! - `GET /healthz`: 200 while the process serves; liveness.
//! - `GET /readyz`: 200 when the store and the router answer and the relay
//!   is not draining, else 503 with the reason; readiness. It turns 503 the
//!   moment a drain starts, so the load balancer stops sending new devices
//!   before they would be told to go.
//!
//! The gRPC health service of the admin API reports the same readiness
//! (`""`, `herold.v1.Admin`, `herold.v1.Enrollment`): a background task
//! checks every [`CHECK_INTERVAL`] and on every `/readyz`, and publishes
//! the result there and in the `herold_relay_ready` gauge.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use herold_router::Router;
use herold_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::metrics as m;
use crate::udp::SocketStats;

/// How long the store and the router each have to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often readiness is checked without a probe asking.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// The gRPC services whose status follows readiness (`""` is the server).
const GRPC_SERVICES: [&str; 3] = ["", "herold.v1.Admin", "herold.v1.Enrollment"];
/// The id the probes read: no device or conversation has it (ids are
/// validated and this one carries a character they may not), so a probe
/// reads nothing and writes nothing.
const PROBE_ID: &str = "readyz probe";

/// Readiness and the metrics handle, shared by the HTTP routes, the
/// background check and the relay's drain.
#[derive(Debug)]
pub(crate) struct Health {
    /// Set once when the drain starts; never cleared (a drained relay exits).
    draining: AtomicBool,
    /// One check at a time, check and publish together: otherwise a check
    /// that began before a change could publish its stale answer after a
    /// newer one. A tokio mutex: held across the probes' `.await`.
    checking: tokio::sync::Mutex<()>,
    store: Arc<dyn Store>,
    router: Arc<dyn Router>,
    grpc: HealthReporter,
    prometheus: PrometheusHandle,
    socket: SocketStats,
}

impl Health {
    pub fn new(
        store: Arc<dyn Store>,
        router: Arc<dyn Router>,
        grpc: HealthReporter,
        prometheus: PrometheusHandle,
        socket: SocketStats,
    ) -> Self {
        Self {
            draining: AtomicBool::new(false),
            checking: tokio::sync::Mutex::new(()),
            store,
            router,
            grpc,
            prometheus,
            socket,
        }
    }

    /// Whether the relay could serve a new device now; the reason if not.
    pub async fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining".into());
        }
        // Both at once: a probe answers within PROBE_TIMEOUT, not twice it.
        let probe = [PROBE_ID.to_owned()];
        let (store, router) = tokio::join!(
            tokio::time::timeout(PROBE_TIMEOUT, self.store.get_device(PROBE_ID)),
            tokio::time::timeout(PROBE_TIMEOUT, self.router.locate(&probe)),
        );
        match store {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("store unavailable: {e}")),
            Err(_) => return Err("store unavailable: no answer within 2 s".into()),
        }
        match router {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("router unavailable: {e}")),
            Err(_) => return Err("router unavailable: no answer within 2 s".into()),
        }
        // A drain may have started while the probes ran.
        if self.draining.load(Ordering::Acquire) {
            return Err("draining".into());
        }
        Ok(())
    }

    /// Checks readiness and publishes it (gauge and gRPC health).
    pub async fn refresh(&self) -> Result<(), String> {
        let _one = self.checking.lock().await;
        let r = self.check().await;
        self.publish(r.is_ok()).await;
        r
    }

    async fn publish(&self, ready: bool) {
        metrics::gauge!(m::READY).set(if ready { 1.0 } else { 0.0 });
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for s in GRPC_SERVICES {
            self.grpc.set_service_status(s, status).await;
        }
    }

    /// The drain started: not ready from now on, everywhere at once.
    pub async fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
        // After a check under way, so that its answer cannot come last.
        let _one = self.checking.lock().await;
        self.publish(false).await;
    }

    /// The metrics exposition, with the socket's kernel counters read now.
    pub fn render(&self) -> String {
        self.socket.refresh();
        self.prometheus.run_upkeep();
        self.prometheus.render()
    }
}

/// Checks readiness every [`CHECK_INTERVAL`] until aborted, so the gauge and
/// the gRPC health service are current without a probe asking.
pub(crate) async fn keep_checking(health: Arc<Health>) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(why) = health.refresh().await {
            tracing::debug!(%why, "not ready");
        }
    }
}

/// Serves the operations listener until `shutdown` completes.
pub(crate) async fn serve(
    health: Arc<Health>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics_route))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz_route))
        .with_state(health);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_route(State(health): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        health.render(),
    )
}

async fn readyz_route(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.refresh().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
