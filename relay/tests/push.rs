//! Content-free push (docs/push.md) against a real HTTP server on
//! loopback: a device connected nowhere is woken once per burst of
//! messages, with nothing in the request but the endpoint's own path; an
//! endpoint the relay may not call is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::scrape::*;
use common::*;
use herold_client::ClientError;
use herold_proto::v1::ErrorCode;
use herold_relay::Config;
use tokio::sync::watch;

/// (path, header names and values, body) of each wake-up.
type Seen = Arc<Mutex<Vec<(String, Vec<(String, String)>, Vec<u8>)>>>;

async fn gateway() -> (std::net::SocketAddr, Seen, watch::Receiver<usize>) {
    let seen: Seen = Arc::default();
    let (tx, rx) = watch::channel(0usize);
    let state = (seen.clone(), Arc::new(tx));
    let app = axum::Router::new()
        .route(
            "/up/{id}",
            post(
                |State((seen, tx)): State<(Seen, Arc<watch::Sender<usize>>)>,
                 Path(id): Path<String>,
                 headers: HeaderMap,
                 body: axum::body::Bytes| async move {
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
                        .collect();
                    let mut s = seen.lock().unwrap();
                    s.push((format!("/up/{id}"), headers, body.to_vec()));
                    tx.send_replace(s.len());
                    StatusCode::CREATED
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen, rx)
}

fn refused(e: ClientError) -> bool {
    e.code() == Some(ErrorCode::PushEndpointRefused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_device_is_woken_once_per_burst_with_nothing_in_the_wake_up() {
    let (gw, seen, mut arrived) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.push_gateways = vec![format!("http://{gw}/")];
    let (relay, _store) = TestRelay::start_embedded_with(config, dir.path()).await;
    let [ak, bk] = relay.group_of("night-shift", ["nsa", "nsb"]).await;
    let a = relay.client("nsa.phone", &ak).await;
    let b = relay.client("nsb.phone", &bk).await;

    // Endpoints the relay may not call are refused with their reason.
    let sb = b.sender();
    for bad in [
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "https://10.0.0.7/up/x".to_owned(),
        // Loopback, but not the operator's gateway.
        "http://127.0.0.1:1/up/x".to_owned(),
        format!("ftp://{gw}/up/x"),
        format!("http://user:pw@{gw}/up/x"),
    ] {
        let e = sb.register_push(&bad).await.unwrap_err();
        assert!(refused(e.clone()), "{bad}: {e}");
    }
    let endpoint = format!("http://{gw}/up/nsb");
    assert_eq!(sb.register_push(&endpoint).await.unwrap(), endpoint);
    // A device that stays connected is never woken.
    a.sender()
        .register_push(&format!("http://{gw}/up/nsa"))
        .await
        .unwrap();
    b.close().await;

    // A burst while b is away: one wake-up (messages go on until it came,
    // since b's session ends in the background).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut sent = 0u32;
    while *arrived.borrow() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no wake-up");
        a.send("night-shift", b"Lage ruhig".to_vec(), 0)
            .await
            .unwrap();
        sent += 1;
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(200), arrived.changed()).await;
    }
    let (before, _) = Scrape::take(relay.metrics_addr).await;
    let coalesced = before.get("herold_relay_pushes_total", &[("outcome", "coalesced")]);
    for _ in 0..10 {
        a.send("night-shift", b"Lage ruhig".to_vec(), 0)
            .await
            .unwrap();
    }
    // Each of the 10 was seen and coalesced: nothing more went out.
    wait_for_metrics(relay.metrics_addr, "10 coalesced wake-ups", |s| {
        s.get("herold_relay_pushes_total", &[("outcome", "coalesced")]) >= coalesced + 10.0
    })
    .await;
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "one wake-up for {sent} + 10 messages"
    );

    // b comes back and leaves again: the next burst wakes it once more.
    let b = relay.client("nsb.phone", &bk).await;
    b.close().await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while *arrived.borrow() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no second wake-up");
        a.send("night-shift", b"Schichtwechsel".to_vec(), 0)
            .await
            .unwrap();
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(200), arrived.changed()).await;
    }

    // What the gateway learned: that nsb's endpoint was called, nothing more.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (path, headers, body) in &seen {
        assert_eq!(path, "/up/nsb", "the device online is never woken");
        assert!(body.is_empty(), "no content");
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        for name in &names {
            assert!(
                ["host", "ttl", "urgency", "topic", "content-length"].contains(name),
                "unexpected header {name}: {headers:?}"
            );
        }
        for (_, v) in headers {
            for secret in ["night-shift", "nsa", "Lage", "Schicht"] {
                assert!(!v.contains(secret), "{secret} in {headers:?}");
            }
        }
    }
    // The relay counts a wake-up once the gateway's answer is back.
    wait_for_metrics(relay.metrics_addr, "2 wake-ups sent", |s| {
        s.get("herold_relay_pushes_total", &[("outcome", "sent")]) >= 2.0
    })
    .await;
}

/// In a conversation of 16 devices or more the fan-out goes by interest
/// (docs/routing.md): the devices to wake are found after it, and an
/// absent device with an endpoint is still woken, the connected one not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_device_of_a_large_group_is_woken_too() {
    let (gw, seen, mut arrived) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.push_gateways = vec![format!("http://{gw}/")];
    let (relay, _store) = TestRelay::start_embedded_with(config, dir.path()).await;
    let names: [&str; 20] = [
        "lg00", "lg01", "lg02", "lg03", "lg04", "lg05", "lg06", "lg07", "lg08", "lg09", "lg10",
        "lg11", "lg12", "lg13", "lg14", "lg15", "lg16", "lg17", "lg18", "lg19",
    ];
    let keys = relay.group_of("district", names).await;
    let a = relay.client("lg00.phone", &keys[0]).await;
    let b = relay.client("lg01.phone", &keys[1]).await;
    a.sender()
        .register_push(&format!("http://{gw}/up/lg00"))
        .await
        .unwrap();
    b.sender()
        .register_push(&format!("http://{gw}/up/lg01"))
        .await
        .unwrap();
    b.close().await;

    let deadline = tokio::time::Instant::now() + DEADLINE;
    while *arrived.borrow() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no wake-up");
        a.send("district", b"Wahllokal 12 offen".to_vec(), 0)
            .await
            .unwrap();
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(200), arrived.changed()).await;
    }
    let (metrics, _) = Scrape::take(relay.metrics_addr).await;
    assert!(
        metrics.get("herold_relay_fanouts_total", &[("route", "interest")]) >= 1.0,
        "the fan-out went by interest"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|(path, _, body)| path == "/up/lg01" && body.is_empty()),
        "only the absent device, with nothing in it: {seen:?}"
    );
}
