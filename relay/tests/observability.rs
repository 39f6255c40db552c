//! What an SRE sees: `/metrics` of a relay process under real QUIC traffic
//! moves by exactly what the traffic implies and passes `promtool check
//! metrics`; `/healthz` and `/readyz` answer; readiness (HTTP and gRPC
//! health) turns off the moment a drain starts.
//!
//! The metric tests run the relay binary as a child process, so its
//! counters are its own. `promtool` comes from `HEROLD_PROMTOOL` or `PATH`
//! (scripts/test.sh installs it with scripts/promtool.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use common::scrape::*;
use common::*;
use herold_client::raw::RawConnection;
use herold_proto::v1::{self, ConversationKind, ErrorCode};
use tokio::io::AsyncWriteExt;

/// The in-process relays of this binary share the process's metrics
/// recorder (`herold_relay_ready` is one gauge): their tests take turns.
static IN_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn promtool() -> String {
    std::env::var("HEROLD_PROMTOOL").unwrap_or_else(|_| "promtool".into())
}

/// `promtool check metrics` on a scrape: the names, units, types and help
/// texts pass Prometheus' own lint.
async fn promtool_check(exposition: &str) {
    let mut child = tokio::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): run scripts/test.sh, or set HEROLD_PROMTOOL to \
                 the output of `scripts/promtool.sh path`"
            )
        });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(exposition.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_what_the_traffic_implies() {
    let dir = tempfile::tempdir().unwrap();
    let relay = spawn_relay(dir.path(), &[]).await;
    let (status, body) = http_get(relay.metrics, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let mut admin = admin_at(relay.admin).await;
    for a in ["alice", "bob", "carol"] {
        create_account(&mut admin, a).await;
    }
    let alice = enroll(&mut admin, "alice", "alice.phone").await;
    let bob_phone = enroll(&mut admin, "bob", "bob.phone").await;
    let bob_laptop = enroll(&mut admin, "bob", "bob.laptop").await;
    create_conversation(
        &mut admin,
        "station-42",
        ConversationKind::Group,
        &["alice", "bob"],
    )
    .await;
    create_conversation(&mut admin, "hq", ConversationKind::Group, &["bob", "carol"]).await;

    let before = wait_for_metrics(relay.metrics, "readiness", |s| {
        s.get("herold_relay_ready", &[]) == 1.0
    })
    .await;
    let (status, _) = http_get(relay.metrics, "/readyz").await;
    assert_eq!(status, 200);
    // The admin calls above, counted by method and outcome.
    assert_eq!(
        before.get(
            "herold_admin_calls_total",
            &[("method", "Admin/CreateAccount"), ("outcome", "ok")]
        ),
        3.0
    );
    assert_eq!(
        before.get(
            "herold_admin_calls_total",
            &[("method", "Admin/RegisterDevice"), ("outcome", "ok")]
        ),
        3.0
    );

    let connect = |device: &'static str, key| {
        let (addr, fp) = (relay.addr, relay.fingerprint);
        async move {
            let mut c = herold_client::Client::connect(herold_client::ClientConfig::new(
                addr, fp, device, key,
            ))
            .await
            .expect("client connects");
            receive_until_synced(&mut c).await;
            c
        }
    };
    let mut a = connect("alice.phone", alice).await;
    let mut bp = connect("bob.phone", bob_phone).await;
    let mut bl = connect("bob.laptop", bob_laptop.clone()).await;
    // A device nobody enrolled is refused at authentication.
    let stranger = herold_client::generate_key().unwrap();
    let refused = herold_client::Client::connect(herold_client::ClientConfig::new(
        relay.addr,
        relay.fingerprint,
        "nobody.phone",
        stranger,
    ))
    .await;
    assert!(refused.is_err(), "an unknown device must not authenticate");

    const N: usize = 5;
    for i in 0..N {
        a.send("station-42", format!("ciphertext {i}").into_bytes(), 0)
            .await
            .unwrap();
    }
    // Not a member: refused with a code.
    let err = a.send("hq", b"x".to_vec(), 0).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotMember));
    for c in [&mut a, &mut bp, &mut bl] {
        assert_eq!(receive(c, N).await.len(), N);
    }

    // Every device of the conversation (the sender's too) got each message
    // live: 3 devices x N.
    let live = (3 * N) as f64;
    let after = wait_for_metrics(relay.metrics, "the deliveries", |s| {
        s.get("herold_relay_deliveries_total", &[("path", "live")])
            - before.get("herold_relay_deliveries_total", &[("path", "live")])
            >= live
    })
    .await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(
        delta("herold_relay_deliveries_total", &[("path", "live")]),
        live
    );
    assert_eq!(
        delta("herold_relay_deliveries_total", &[("path", "sync")]),
        0.0
    );
    assert_eq!(
        delta(
            "herold_relay_submits_total",
            &[("outcome", "accepted"), ("code", "none")]
        ),
        N as f64
    );
    assert_eq!(
        delta(
            "herold_relay_submits_total",
            &[("outcome", "rejected"), ("code", "not_member")]
        ),
        1.0
    );
    assert_eq!(
        delta("herold_relay_submit_accept_seconds_count", &[]),
        N as f64
    );
    assert_eq!(delta("herold_relay_delivery_seconds_count", &[]), live);
    // Each message fanned out to the conversation's 3 devices on 1 node.
    assert_eq!(delta("herold_relay_fanout_devices_count", &[]), N as f64);
    assert_eq!(delta("herold_relay_fanout_devices_sum", &[]), live);
    assert_eq!(delta("herold_relay_fanout_nodes_sum", &[]), N as f64);
    assert_eq!(delta("herold_relay_device_queue_depth_count", &[]), live);
    assert_eq!(delta("herold_relay_auth_total", &[("outcome", "ok")]), 3.0);
    assert_eq!(
        delta("herold_relay_auth_total", &[("outcome", "unknown_device")]),
        1.0
    );
    assert_eq!(delta("herold_relay_connections_opened_total", &[]), 4.0);
    assert_eq!(after.get("herold_relay_connections", &[]), 3.0);
    assert_eq!(after.get("herold_relay_sessions", &[]), 3.0);
    assert_eq!(
        delta(
            "herold_relay_connections_closed_total",
            &[("reason", "unknown_device")]
        ),
        1.0
    );
    // The store wrote each message once, whatever the number of devices.
    assert_eq!(
        delta("herold_store_operation_seconds_count", &[("op", "append")]),
        N as f64
    );
    assert_eq!(delta("herold_store_errors_total", &[]), 0.0);
    // All three devices are on this node: its own share skips the router.
    assert_eq!(
        delta(
            "herold_router_operation_seconds_count",
            &[("op", "publish_many")]
        ),
        0.0
    );
    assert!(delta("herold_router_operation_seconds_count", &[("op", "locate")]) >= N as f64);
    // Datagrams both ways: at least one per delivery and per submit.
    assert!(delta("herold_udp_datagrams_received_total", &[]) >= N as f64);
    assert!(delta("herold_udp_datagrams_sent_total", &[]) >= live);
    assert_eq!(after.get("herold_udp_receive_drops_total", &[]), 0.0);
    assert!(after.get("herold_udp_receive_buffer_bytes", &[]) > 0.0);
    assert_eq!(
        after.get(
            "herold_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // A device that leaves is counted closed by its reason; the gauges fall.
    bl.close().await;
    let closed = wait_for_metrics(relay.metrics, "the closed connection", |s| {
        s.get("herold_relay_connections", &[]) == 2.0
    })
    .await;
    assert_eq!(closed.get("herold_relay_sessions", &[]), 2.0);
    assert_eq!(
        closed.get(
            "herold_relay_connections_closed_total",
            &[("reason", "closed")]
        ) - after.get(
            "herold_relay_connections_closed_total",
            &[("reason", "closed")]
        ),
        1.0
    );

    // The laptop comes back; its session counts again.
    let bl = connect("bob.laptop", bob_laptop).await;
    let (s, body) = Scrape::take(relay.metrics).await;
    assert_eq!(s.get("herold_relay_sessions", &[]), 3.0);
    promtool_check(&body).await;

    // Cursors flushed (the acks of the deliveries above).
    wait_for_metrics(relay.metrics, "a cursor flush", |s| {
        s.get("herold_relay_cursor_flush_cursors_count", &[]) >= 1.0
    })
    .await;
    for c in [a, bp, bl] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_off_the_moment_a_drain_starts() {
    let _turn = IN_PROCESS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let ops = relay.metrics_addr;
    assert_eq!(http_get(ops, "/readyz").await.0, 200);
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", relay.admin_addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    assert_eq!(
        status_of(&mut health, "").await,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // A device that stays connected and silent holds the drain open for
    // its read grace (2 s): readiness must be off during all of it.
    relay.account("dora").await;
    let key = relay.device("dora", "dora.phone").await;
    let mut raw = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    raw.authenticate("dora.phone", &key).await.unwrap();
    let stop = relay.begin_stop();
    // Draining is announced to the device first thing.
    loop {
        match tokio::time::timeout(DEADLINE, raw.expect_frame()).await {
            Ok(Ok(v1::server_frame::Kind::Draining(_))) => break,
            Ok(Ok(_)) => {}
            other => panic!("expected Draining, got {other:?}"),
        }
    }
    let (status, body) = http_get(ops, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: draining\n"));
    assert_eq!(
        status_of(&mut health, "").await,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    assert_eq!(
        status_of(&mut health, "herold.v1.Admin").await,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    // Liveness stays on: the process still serves.
    assert_eq!(http_get(ops, "/healthz").await.0, 200);
    let (s, _) = Scrape::take(ops).await;
    assert_eq!(s.get("herold_relay_ready", &[]), 0.0);
    assert_eq!(s.get("herold_relay_draining", &[]), 1.0);
    assert!(s.get("herold_relay_drain_started_timestamp_seconds", &[]) > 1.0e9);
    drop(raw);
    stop.await;
}

async fn status_of(
    health: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    service: &str,
) -> i32 {
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_store() {
    let _turn = IN_PROCESS.lock().await;
    use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};
    use herold_store::unreliable::Unreliable;
    let dir = tempfile::tempdir().unwrap();
    let embedded =
        EmbeddedStore::open(dir.path().join("store"), EmbeddedConfig::default()).unwrap();
    let store = std::sync::Arc::new(Unreliable::new(std::sync::Arc::new(embedded)));
    let router = std::sync::Arc::new(herold_router::memory::MemoryRouter::default());
    let relay =
        TestRelay::start_on(herold_relay::Config::dev(dir.path()), store.clone(), router).await;
    let ops = relay.metrics_addr;
    assert_eq!(http_get(ops, "/readyz").await.0, 200);

    store.set_failing(true);
    let (status, body) = http_get(ops, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: store unavailable"), "{body}");
    // The probe's failure shows in the store's error counter too.
    let (s, _) = Scrape::take(ops).await;
    assert!(
        s.get(
            "herold_store_errors_total",
            &[("op", "get_device"), ("kind", "unavailable")]
        ) >= 1.0
    );
    assert_eq!(s.get("herold_relay_ready", &[]), 0.0);
    // Liveness is not readiness: the process still serves.
    assert_eq!(http_get(ops, "/healthz").await.0, 200);

    store.set_failing(false);
    assert_eq!(http_get(ops, "/readyz").await.0, 200);
    relay.stop().await;
}

/// Log lines of a relay process until one contains `marker`.
async fn log_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    marker: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains(marker);
            seen.push(line);
            if done {
                return;
            }
        }
        panic!("the relay's log ended before {marker:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {marker:?} in the log: {seen:?}"));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_client_addresses_only_when_asked() {
    use tokio::io::AsyncBufReadExt;
    for opt_in in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = vec!["--log-format".to_owned(), "json".to_owned()];
        if opt_in {
            extra.push("--log-client-addresses".into());
        }
        let mut relay =
            spawn_relay_logging(dir.path(), &extra, "herold_relay=debug,warn", true).await;
        let stderr = relay.child.stderr.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        // A device nobody enrolled connects and is refused.
        let key = herold_client::generate_key().unwrap();
        let mut raw = RawConnection::connect(relay.addr, relay.fingerprint)
            .await
            .unwrap();
        assert!(raw.authenticate("nobody.phone", &key).await.is_err());
        let seen = log_until(&mut lines, "connection closed").await;
        for line in &seen {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            assert!(v.get("level").is_some(), "{line}");
        }
        let closed = seen.last().unwrap();
        assert!(closed.contains("unknown_device"), "{closed}");
        assert!(closed.contains("conn.id"), "{closed}");
        let with_addr = seen
            .iter()
            .any(|l| l.contains("\"client.addr\":\"127.0.0.1:"));
        assert_eq!(with_addr, opt_in, "client.addr in the log: {seen:?}");
    }
}
