//! Every metric of the relay, declared in one place.
//!
//! Names follow `herold_<subsystem>_<thing>_<unit>`; labels are bounded
//! (an error code, an outcome, an operation name, a close reason), never a
//! device, account or conversation id. [`describe`] gives each one its help
//! text and unit, so a scrape passes `promtool check metrics`;
//! [`install`] sets up the Prometheus recorder with histogram buckets so
//! `histogram_quantile` works on every histogram. The store and the router
//! declare their own metrics in their crates' `metrics.rs`.
//!
//! `docs/observability.md` is the catalogue an SRE reads; keep the two in
//! step.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Build information: always 1, the version in a label.
pub const BUILD_INFO: &str = "herold_build_info";
/// Whether this relay is ready (1) or not (0): store and router reachable
/// and not draining; what `/readyz` answers.
pub const READY: &str = "herold_relay_ready";

/// QUIC connections open now (authenticated or not).
pub const CONNECTIONS: &str = "herold_relay_connections";
/// QUIC connections whose handshake completed.
pub const CONNECTIONS_OPENED: &str = "herold_relay_connections_opened_total";
/// Connections that ended, by `reason`.
pub const CONNECTIONS_CLOSED: &str = "herold_relay_connections_closed_total";
/// Connection attempts refused before TLS, by `reason`: `full` (at
/// `max_connections`), `unauthenticated` (at `max_unauthenticated`),
/// `address` (at `max_unauthenticated_per_address`), `address_rate` (over
/// `handshake_rate_per_address`), `unvalidated` (a Retry token that did not
/// prove the address).
pub const CONNECTIONS_REFUSED: &str = "herold_relay_connections_refused_total";
/// Connections awaiting authentication now (`max_unauthenticated`).
pub const UNAUTHENTICATED: &str = "herold_relay_unauthenticated_connections";
/// New connections answered with a QUIC Retry (more than `retry_above`
/// awaiting authentication).
pub const QUIC_RETRIES: &str = "herold_relay_quic_retries_total";
/// Admin API calls whose operator could not be authenticated (no, an
/// unknown or a malformed token or certificate).
pub const ADMIN_AUTH_FAILURES: &str = "herold_admin_auth_failures_total";
/// Audit log rows that could not be written (a change whose `started` row
/// fails is refused; an outcome row that fails is only counted here).
pub const AUDIT_WRITE_FAILURES: &str = "herold_admin_audit_write_failures_total";
/// Submits refused UNAVAILABLE (with a retry-after) because
/// `max_pending_appends` already waited for the store.
pub const SUBMITS_SHED: &str = "herold_relay_submits_shed_total";
/// Enroll calls refused without looking at the code: too many failed ones
/// from the address.
pub const ENROLL_RATE_LIMITED: &str = "herold_relay_enroll_rate_limited_total";
/// TLS handshakes that failed or timed out, by `reason` (`error`, `timeout`).
pub const HANDSHAKE_FAILURES: &str = "herold_relay_handshake_failures_total";
/// Authenticated device sessions on this relay now.
pub const SESSIONS: &str = "herold_relay_sessions";
/// Authentications, by `outcome` (`ok` or the error code).
pub const AUTH: &str = "herold_relay_auth_total";

/// Submits, by `outcome` (`accepted`, `duplicate`, `rejected`) and `code`
/// (the error code of a rejection, `none` otherwise).
pub const SUBMITS: &str = "herold_relay_submits_total";
/// From a submit's arrival to its Accepted (validation and durable write).
pub const SUBMIT_ACCEPT_SECONDS: &str = "herold_relay_submit_accept_seconds";
/// From a message's acceptance to its Deliver being written to a
/// recipient device's stream (live deliveries only, across relays).
pub const DELIVERY_SECONDS: &str = "herold_relay_delivery_seconds";
/// Deliver frames written to devices, by `path` (`live`, `sync`).
pub const DELIVERIES: &str = "herold_relay_deliveries_total";
/// Recipient devices of one accepted message (the fan-out's size).
pub const FANOUT_DEVICES: &str = "herold_relay_fanout_devices";
/// Relay nodes one accepted message was published to.
pub const FANOUT_NODES: &str = "herold_relay_fanout_nodes";
/// Fan-outs, by `route`: `interest` (to the relays interested in the
/// conversation) or `locate` (device by device, small conversations).
pub const FANOUTS: &str = "herold_relay_fanouts_total";
/// Conversations this relay holds devices of and is registered under
/// with the router (its interest set).
pub const INTEREST_CONVERSATIONS: &str = "herold_relay_interest_conversations";
/// A device's delivery queue depth, sampled at each push.
pub const DEVICE_QUEUE_DEPTH: &str = "herold_relay_device_queue_depth";
/// Devices disconnected because their delivery queue was full, or because
/// a write to them did not complete within `write_timeout`.
pub const SLOW_CONSUMERS: &str = "herold_relay_slow_consumer_disconnects_total";
/// Wake-ups of devices connected nowhere, by `outcome`: sent, gone (the
/// gateway forgot the endpoint), refused, forbidden (an address the relay
/// may not call), timeout, no_endpoint, store_failed, dropped (queue full),
/// coalesced (the device was woken within the window).
pub const PUSHES: &str = "herold_relay_pushes_total";
/// Attachment streams served, by `kind` (upload, download) and `outcome`
/// (done, cut, or the error code of a refusal).
pub const ATTACHMENT_STREAMS: &str = "herold_relay_attachment_streams_total";
/// Attachment ciphertext carried, by `direction` (up: stored, down: sent).
pub const ATTACHMENT_BYTES: &str = "herold_relay_attachment_bytes_total";
/// Log reads of sessions (sync pages, gap fills), by `source`: `store`
/// for a read the store answered, `shared` for a request answered by a
/// read made together with another session's (`reads`).
pub const LOG_READS: &str = "herold_relay_log_reads_total";
/// Cluster resyncs: the node inbox reported lost deliveries.
pub const RESYNCS: &str = "herold_relay_resyncs_total";
/// Device cursors written per flush.
pub const CURSOR_FLUSH_CURSORS: &str = "herold_relay_cursor_flush_cursors";
/// Cursor flushes that failed (retried on the next tick).
pub const CURSOR_FLUSH_ERRORS: &str = "herold_relay_cursor_flush_errors_total";
/// Expired messages deleted by the purge.
pub const PURGED: &str = "herold_relay_purged_messages_total";
/// Expired attachments deleted by the purge (backends whose rows expire by
/// themselves, like CQL, report none).
pub const PURGED_ATTACHMENTS: &str = "herold_relay_purged_attachments_total";

/// 1 while the relay drains, 0 otherwise.
pub const DRAINING: &str = "herold_relay_draining";
/// Unix time the current drain started (0 when not draining).
pub const DRAIN_STARTED: &str = "herold_relay_drain_started_timestamp_seconds";
/// Device sessions still open during a drain.
pub const DRAIN_REMAINING: &str = "herold_relay_drain_sessions_remaining";

/// MLS requests (key packages, state, Welcomes), by `kind` and `outcome`.
pub const MLS_REQUESTS: &str = "herold_mls_requests_total";
/// Restarts of broken MLS groups asked for by members, by `outcome`
/// (`restarted`, `rate_limited`).
pub const MLS_RESTARTS: &str = "herold_mls_group_restarts_total";
/// Admin API calls, by `method` and `outcome` (`ok` or the gRPC code).
pub const ADMIN_CALLS: &str = "herold_admin_calls_total";
/// Admin API call duration, by `method`.
pub const ADMIN_CALL_SECONDS: &str = "herold_admin_call_seconds";

/// UDP datagrams the relay's QUIC socket received.
pub const UDP_RECEIVED: &str = "herold_udp_datagrams_received_total";
/// UDP datagrams the relay's QUIC socket sent.
pub const UDP_SENT: &str = "herold_udp_datagrams_sent_total";
/// Datagrams the kernel dropped before the relay's socket read them (its
/// receive buffer was full): the `drops` column of `/proc/net/udp`.
pub const UDP_RECEIVE_DROPS: &str = "herold_udp_receive_drops_total";
/// The host's UDP receive-buffer errors, all sockets (`RcvbufErrors` of
/// `/proc/net/snmp`): drops of other processes on the same host show here.
pub const UDP_HOST_RCVBUF_ERRORS: &str = "herold_udp_host_receive_buffer_errors_total";
/// The receive buffer the kernel granted the relay's socket.
pub const UDP_RECEIVE_BUFFER: &str = "herold_udp_receive_buffer_bytes";

/// Latency buckets (seconds) of every `_seconds` histogram: from 100 µs to
/// a minute, dense where the delivery goal (p99 < 50 ms) lies.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
/// Buckets of the size histograms (devices, nodes, cursors, queue depth).
pub const SIZE_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    25000.0, 100000.0,
];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
static HOT: OnceLock<Hot> = OnceLock::new();

/// Handles of the metrics recorded once per delivery or per accepted
/// message, registered once: the `counter!`/`histogram!` macros look the
/// metric up in the recorder's registry at every call, which the delivery
/// path need not pay.
#[derive(Debug)]
pub(crate) struct Hot {
    pub deliveries_live: metrics::Counter,
    pub delivery_seconds: metrics::Histogram,
    pub device_queue_depth: metrics::Histogram,
    pub submits_accepted: metrics::Counter,
    pub submits_duplicate: metrics::Counter,
    pub submit_accept_seconds: metrics::Histogram,
    pub fanout_devices: metrics::Histogram,
    pub fanout_nodes: metrics::Histogram,
}

/// The hot-path handles, bound to the recorder [`install`] set (taken
/// after it; without a recorder they record nothing).
pub(crate) fn hot() -> &'static Hot {
    HOT.get_or_init(|| Hot {
        deliveries_live: metrics::counter!(DELIVERIES, "path" => "live"),
        delivery_seconds: metrics::histogram!(DELIVERY_SECONDS),
        device_queue_depth: metrics::histogram!(DEVICE_QUEUE_DEPTH),
        submits_accepted: metrics::counter!(SUBMITS, "outcome" => "accepted", "code" => "none"),
        submits_duplicate: metrics::counter!(SUBMITS, "outcome" => "duplicate", "code" => "none"),
        submit_accept_seconds: metrics::histogram!(SUBMIT_ACCEPT_SECONDS),
        fanout_devices: metrics::histogram!(FANOUT_DEVICES),
        fanout_nodes: metrics::histogram!(FANOUT_NODES),
    })
}

/// Installs the process-wide Prometheus recorder (once; later calls return
/// the same handle) and describes every metric of the relay, the store and
/// the router.
pub fn install() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(FANOUT_DEVICES.into()), SIZE_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(FANOUT_NODES.into()), SIZE_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(CURSOR_FLUSH_CURSORS.into()),
                        SIZE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(DEVICE_QUEUE_DEPTH.into()), SIZE_BUCKETS)
                })
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| format!("installing the metrics recorder: {e}"))?;
            describe();
            herold_store::metrics::describe();
            herold_router::metrics::describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            hot();
            Ok(handle)
        })
        .clone()
}

/// Help texts and units of the relay's metrics.
pub fn describe() {
    describe_gauge!(BUILD_INFO, "Build information; the value is always 1.");
    describe_gauge!(
        READY,
        "1 when the relay is ready (store and router reachable, not draining), else 0."
    );
    describe_gauge!(CONNECTIONS, Unit::Count, "QUIC connections open now.");
    describe_counter!(
        CONNECTIONS_OPENED,
        Unit::Count,
        "QUIC connections whose handshake completed."
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "Connections that ended, by reason."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        Unit::Count,
        "Connection attempts refused before TLS, by reason (full, unauthenticated, address, address_rate, unvalidated)."
    );
    describe_gauge!(
        UNAUTHENTICATED,
        Unit::Count,
        "Connections awaiting authentication now."
    );
    describe_counter!(
        QUIC_RETRIES,
        Unit::Count,
        "New connections answered with a QUIC Retry (address validation under load)."
    );
    describe_counter!(
        ADMIN_AUTH_FAILURES,
        Unit::Count,
        "Admin API calls whose operator could not be authenticated."
    );
    describe_counter!(
        AUDIT_WRITE_FAILURES,
        Unit::Count,
        "Audit log rows that could not be written."
    );
    describe_counter!(
        SUBMITS_SHED,
        Unit::Count,
        "Submits refused with a retry-after because too many appends waited for the store."
    );
    describe_counter!(
        MLS_RESTARTS,
        Unit::Count,
        "MLS groups restarted because a member could not process a commit, by outcome."
    );
    describe_counter!(
        ENROLL_RATE_LIMITED,
        Unit::Count,
        "Enroll calls refused: too many failed enrollments from the address."
    );
    describe_counter!(
        HANDSHAKE_FAILURES,
        Unit::Count,
        "QUIC/TLS handshakes that failed or timed out, by reason."
    );
    describe_gauge!(SESSIONS, Unit::Count, "Authenticated device sessions now.");
    describe_counter!(AUTH, Unit::Count, "Device authentications, by outcome.");
    describe_counter!(SUBMITS, Unit::Count, "Submits, by outcome and error code.");
    describe_histogram!(
        SUBMIT_ACCEPT_SECONDS,
        Unit::Seconds,
        "From a submit's arrival to its Accepted."
    );
    describe_histogram!(
        DELIVERY_SECONDS,
        Unit::Seconds,
        "From a message's acceptance to its Deliver written to a device (live path)."
    );
    describe_counter!(
        DELIVERIES,
        Unit::Count,
        "Deliver frames written to devices, by path (live, sync)."
    );
    describe_histogram!(
        FANOUT_DEVICES,
        Unit::Count,
        "Recipient devices of one accepted message."
    );
    describe_histogram!(
        FANOUT_NODES,
        Unit::Count,
        "Relay nodes one accepted message was published to."
    );
    describe_counter!(
        FANOUTS,
        Unit::Count,
        "Fan-outs, by route (interest: to the interested relays; locate: device by device)."
    );
    describe_gauge!(
        INTEREST_CONVERSATIONS,
        Unit::Count,
        "Conversations this relay is registered under with the router."
    );
    describe_histogram!(
        DEVICE_QUEUE_DEPTH,
        Unit::Count,
        "A device's delivery queue depth, sampled at each push."
    );
    describe_counter!(
        SLOW_CONSUMERS,
        Unit::Count,
        "Devices disconnected because their delivery queue was full."
    );
    describe_counter!(
        PUSHES,
        Unit::Count,
        "Wake-ups of devices connected nowhere, by outcome."
    );
    describe_counter!(
        ATTACHMENT_STREAMS,
        Unit::Count,
        "Attachment streams served, by kind and outcome (done, cut, or a refusal's code)."
    );
    describe_counter!(
        ATTACHMENT_BYTES,
        Unit::Bytes,
        "Attachment ciphertext stored (up) and sent (down)."
    );
    describe_counter!(
        LOG_READS,
        Unit::Count,
        "Sessions' log reads: made in the store, or shared with another session's read."
    );
    describe_counter!(
        RESYNCS,
        Unit::Count,
        "Node inbox lags: every device resynced from the store."
    );
    describe_histogram!(
        CURSOR_FLUSH_CURSORS,
        Unit::Count,
        "Device cursors written per flush."
    );
    describe_counter!(
        CURSOR_FLUSH_ERRORS,
        Unit::Count,
        "Cursor flushes that failed (retried)."
    );
    describe_counter!(
        PURGED,
        Unit::Count,
        "Expired messages deleted by the purge."
    );
    describe_counter!(
        PURGED_ATTACHMENTS,
        Unit::Count,
        "Expired attachments deleted by the purge (none on CQL: TTL)."
    );
    describe_gauge!(DRAINING, "1 while the relay drains, else 0.");
    describe_gauge!(
        DRAIN_STARTED,
        Unit::Seconds,
        "Unix time the current drain started; 0 when not draining."
    );
    describe_gauge!(
        DRAIN_REMAINING,
        Unit::Count,
        "Device sessions still open during a drain."
    );
    describe_counter!(
        MLS_REQUESTS,
        Unit::Count,
        "MLS requests of devices, by kind and outcome."
    );
    describe_counter!(
        ADMIN_CALLS,
        Unit::Count,
        "Admin API calls, by method and outcome."
    );
    describe_histogram!(
        ADMIN_CALL_SECONDS,
        Unit::Seconds,
        "Admin API call duration, by method."
    );
    describe_counter!(
        UDP_RECEIVED,
        Unit::Count,
        "UDP datagrams received by the relay's QUIC socket."
    );
    describe_counter!(
        UDP_SENT,
        Unit::Count,
        "UDP datagrams sent by the relay's QUIC socket."
    );
    describe_counter!(
        UDP_RECEIVE_DROPS,
        Unit::Count,
        "Datagrams the kernel dropped at the relay's socket (receive buffer full)."
    );
    describe_counter!(
        UDP_HOST_RCVBUF_ERRORS,
        Unit::Count,
        "UDP receive-buffer errors of the whole host (all sockets)."
    );
    describe_gauge!(
        UDP_RECEIVE_BUFFER,
        Unit::Bytes,
        "Receive buffer the kernel granted the relay's UDP socket."
    );
}

/// The label of an error code: its protobuf name in lower case
/// (`not_member`, `slow_consumer`).
pub(crate) fn code_label(code: herold_proto::v1::ErrorCode) -> String {
    code.as_str_name().to_ascii_lowercase()
}

/// Seconds between two instants of tokio's clock, never negative.
pub(crate) fn seconds_since(start: tokio::time::Instant) -> f64 {
    tokio::time::Instant::now()
        .saturating_duration_since(start)
        .as_secs_f64()
}
