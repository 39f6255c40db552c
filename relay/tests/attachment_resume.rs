//! The SDK resumes an upload by itself when the connection breaks: the
//! relay restarts in the middle of a photo, and the upload goes on from
//! where the relay's store left it instead of from the start. (A file of
//! its own: the relay's byte counters are per process.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::scrape::*;
use common::*;
use herold_client::attachment;
use herold_relay::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_resumes_by_itself_after_the_relay_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, store) = TestRelay::start_embedded(dir.path()).await;
    let [ak, bk] = relay.group_of("depot", ["ra", "rb"]).await;
    let (sealed, file) = attachment::seal(&vec![7u8; 8 * 1000 * 1000]).unwrap();
    let a = relay.client("ra.phone", &ak).await;
    let upload = {
        let (sender, sealed) = (a.sender(), sealed.clone());
        tokio::spawn(async move { sender.upload("depot", &sealed, 0).await })
    };

    // Once a quarter of it is stored, the relay goes away and comes back
    // on the same address and data.
    let quarter = (sealed.len() / 4) as f64;
    wait_for_metrics(relay.metrics_addr, "a quarter uploaded", |s| {
        s.get(
            "herold_relay_attachment_bytes_total",
            &[("direction", "up")],
        ) >= quarter
    })
    .await;
    let addr = relay.addr;
    relay.stop().await;
    drop(store);
    let mut config = Config::dev(dir.path());
    config.listen = addr;
    let (relay, _store) = TestRelay::start_embedded_with(config, dir.path()).await;

    let up = tokio::time::timeout(2 * DEADLINE, upload)
        .await
        .expect("the upload finishes")
        .unwrap()
        .unwrap();
    // Resumed, not sent again: the relays stored little more than the file.
    let (s, _) = Scrape::take(relay.metrics_addr).await;
    let stored = s.get(
        "herold_relay_attachment_bytes_total",
        &[("direction", "up")],
    );
    assert!(
        stored < sealed.len() as f64 * 1.25,
        "{stored} bytes stored for a file of {}",
        sealed.len()
    );
    let b = relay.client("rb.phone", &bk).await;
    let got = b
        .sender()
        .download("depot", &up.attachment_id, sealed.len() as u64)
        .await
        .unwrap();
    assert_eq!(
        attachment::open(&got, &file).unwrap(),
        vec![7u8; 8 * 1000 * 1000]
    );
}
