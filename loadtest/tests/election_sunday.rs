//! A short, scaled-down election Sunday against a relay on loopback: every
//! delivery must arrive exactly once, in order, only to members.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use herold_loadtest::{Scenario, Target};
use herold_relay::{Config, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// The relay's open connections, from its `/metrics`.
async fn connections(metrics: SocketAddr) -> f64 {
    let mut s = tokio::net::TcpStream::connect(metrics).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("herold_relay_connections "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the connections gauge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_down_election_sunday_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::bind(Config::dev(dir.path())).await.unwrap();
    let relay_metrics = relay.metrics_addr().unwrap();
    let settled = dir.path().join("settled");
    let target = Target {
        endpoints: 2,
        concurrency: 32,
        settled_file: Some(settled.clone()),
        relay_metrics: vec![format!("http://{}/metrics", relay.metrics_addr().unwrap())],
        ..Target::new(
            relay.local_addr().unwrap(),
            herold_client::tls::parse_fingerprint(relay.fingerprint()).unwrap(),
            format!("http://{}", relay.admin_addr().unwrap()),
        )
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/election-sunday.toml");
    let mut scenario = Scenario::load(&path).unwrap();
    scenario.scale = 0.02;
    scenario.rate_scale = 100.0;
    scenario.duration_secs = 5.0;
    scenario.settle_secs = 30.0;
    scenario.phases.retain(|p| p.from_secs < 5.0);

    // Once the traffic settled, the devices stay connected until the
    // settled file is removed (for scripts reading the relays' counters).
    let metrics = relay_metrics;
    let watcher = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !settled.exists() {
            assert!(Instant::now() < deadline, "the traffic never settled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let held = Instant::now() + Duration::from_millis(500);
        let mut fewest = f64::MAX;
        while Instant::now() < held {
            fewest = fewest.min(connections(metrics).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::fs::remove_file(&settled).unwrap();
        fewest
    });
    let report = herold_loadtest::run(scenario, target).await.unwrap();
    let fewest = watcher.await.unwrap();
    assert!(
        fewest >= report.devices as f64,
        "{fewest} connections while settled, {} devices",
        report.devices
    );
    let v = &report.verification;
    assert!(
        report.accepted > 50,
        "too little traffic: {}",
        report.accepted
    );
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(v.is_clean(), "{v:?}");
    assert_eq!(v.delivered, v.expected, "{v:?}");
    assert!(report.devices >= 140);
    // The photos went as attachments: each uploaded once and fetched by
    // every other member device, intact.
    let files = report.attachments.as_ref().expect("the photos' figures");
    assert!(files.uploaded > 0, "{files:?}");
    assert_eq!(files.upload_failed + files.download_failed, 0, "{files:?}");
    assert!(files.downloaded >= files.uploaded, "{files:?}");
    assert_eq!(files.bytes_up, files.uploaded * 150_000);
    assert!(report.submit_to_delivered.count >= v.delivered);
    // The relay's UDP counters moved with the traffic (read from its
    // /metrics), and the load tester's own sockets were looked up.
    let relay_udp = report.udp.relay.expect("the relay's UDP counters");
    assert!(
        relay_udp.received > 0 && relay_udp.sent > 0,
        "{relay_udp:?}"
    );
    assert!(report.udp.loadtest_drops.is_some());
    // Nobody lost a connection, and deliveries never stalled for long.
    let r = &report.recovery;
    assert_eq!(r.disconnects, 0, "{r:?}");
    assert_eq!(r.time_to_receive_again.count, 0, "{r:?}");
    assert!(r.longest_delivery_gap_secs < 5.0, "{r:?}");
    assert!(report.started_at_unix_ms > 0);

    let out = dir.path().join("report");
    let files = report.write(&out).unwrap();
    for f in &files {
        assert!(
            std::fs::metadata(f).unwrap().len() > 100,
            "{} is empty",
            f.display()
        );
    }
    let md = std::fs::read_to_string(&files[1]).unwrap();
    assert!(md.contains("Verdict: PASS"), "{md}");
    assert!(md.contains("relays: received / sent / dropped"), "{md}");
    assert!(md.contains("time to receive again"), "{md}");
    assert!(md.contains("| uploads |"), "{md}");
    // The verdict line says when datagrams were dropped, on either side.
    assert_eq!(
        report.verdict().contains("datagrams were dropped"),
        report.udp.dropped_any(),
        "{}",
        report.verdict()
    );
    let mut dropped = report.clone();
    dropped.udp.loadtest_drops = Some(7);
    assert!(
        dropped.verdict().contains("load tester 7"),
        "{}",
        dropped.verdict()
    );
    assert!(
        dropped
            .markdown()
            .contains("but UDP datagrams were dropped (relays"),
        "{}",
        dropped.markdown()
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
