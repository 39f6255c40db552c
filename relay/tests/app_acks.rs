//! An app that keeps its state itself (the web messenger, in IndexedDB)
//! acknowledges only what it has kept (`ClientConfig::app_acks`,
//! `E2eEvent::Checkpoint`): after a restart from its last kept checkpoint
//! the relay delivers again what came after it, and it decrypts; after a
//! restart from a checkpoint kept but not yet acknowledged, nothing shows
//! twice. Through a real relay over QUIC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::*;
use herold_client::ClientConfig;
use herold_client::e2e::{Checkpoint, E2eClient, E2eEvent};
use herold_mls::MlsDevice;
use herold_proto::v1;

async fn connect(
    relay: &TestRelay,
    device: &str,
    key: &ed25519_dalek::SigningKey,
    mls: MlsDevice,
    kept: Option<&Checkpoint>,
) -> E2eClient {
    let mut config = ClientConfig::new(relay.addr, relay.fingerprint, device, key.clone());
    config.app_acks = kept.is_some();
    config.cursors = kept.map(|c| c.positions.clone()).unwrap_or_default();
    E2eClient::connect(config, mls).await.unwrap()
}

/// Bert again, from the checkpoint `kept` (a page reloaded).
async fn restart(
    relay: &TestRelay,
    key: &ed25519_dalek::SigningKey,
    kept: &Checkpoint,
) -> E2eClient {
    let mls = MlsDevice::from_image(kept.mls_image.clone()).unwrap();
    connect(relay, "bert.phone", key, mls, Some(kept)).await
}

/// Collects the texts of `client`'s messages until a checkpoint covers
/// `seq` of `conversation`; that checkpoint.
async fn kept_through(
    client: &mut E2eClient,
    conversation: &str,
    seq: u64,
    texts: &mut Vec<String>,
) -> Checkpoint {
    loop {
        let event = tokio::time::timeout(DEADLINE, client.next_event())
            .await
            .expect("a checkpoint in time");
        match event {
            Some(E2eEvent::Checkpoint(c))
                if c.positions.get(conversation).copied().unwrap_or(0) >= seq =>
            {
                return c;
            }
            Some(E2eEvent::Message(m)) => texts.push(String::from_utf8(m.plaintext).unwrap()),
            Some(E2eEvent::Stopped(e)) => panic!("stopped: {e}"),
            None => panic!("the client stopped"),
            Some(_) => {}
        }
    }
}

/// Anna and Bert in the groups `g` and `h`, each device's MLS state an
/// image; Bert acknowledges only what it keeps.
struct Pair {
    relay: TestRelay,
    anna: E2eClient,
    bert: E2eClient,
    bert_key: ed25519_dalek::SigningKey,
}

async fn pair(dir: &std::path::Path) -> Pair {
    let relay = TestRelay::start(dir).await;
    let [ka, kb] = relay.group_of("g", ["anna", "bert"]).await;
    relay
        .conversation("h", v1::ConversationKind::Group, &["anna", "bert"])
        .await;
    let mls = |d: &str| MlsDevice::create_in_image(d).unwrap();
    let anna = connect(&relay, "anna.phone", &ka, mls("anna.phone"), None).await;
    let nothing_kept = Checkpoint {
        id: 0,
        mls_image: Vec::new(),
        positions: HashMap::new(),
    };
    let bert = connect(
        &relay,
        "bert.phone",
        &kb,
        mls("bert.phone"),
        Some(&nothing_kept),
    )
    .await;
    Pair {
        relay,
        anna,
        bert,
        bert_key: kb,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_not_kept_comes_again_and_what_was_kept_not_twice() {
    let dir = tempfile::tempdir().unwrap();
    let Pair {
        relay,
        anna,
        mut bert,
        bert_key: kb,
    } = pair(dir.path()).await;
    let mut seen = Vec::new();

    // Kept and acknowledged.
    let one = anna.send("g", b"one", 0).await.unwrap();
    let kept = kept_through(&mut bert, "g", one.seq, &mut seen).await;
    assert_eq!(seen, ["one"]);
    bert.ack_checkpoint(&kept).await.unwrap();

    // Arrived, but the app closed before keeping it: not acknowledged. (In
    // a conversation the kept positions do not name: the relay's own
    // cursor decides what comes again.)
    let two = anna.send("h", b"two", 0).await.unwrap();
    kept_through(&mut bert, "h", two.seq, &mut seen).await;
    assert_eq!(seen, ["one", "two"]);
    bert.close().await;

    // Restarted from what was kept: "two" comes again, and decrypts with
    // the kept state.
    let mut bert = restart(&relay, &kb, &kept).await;
    assert!(!kept.positions.contains_key("h"));
    let mut again = Vec::new();
    let kept = kept_through(&mut bert, "h", two.seq, &mut again).await;
    assert_eq!(again, ["two"], "what was not kept is delivered again");
    // Kept this time, and the app closed before acknowledging: a restart
    // from it shows nothing twice and goes on.
    bert.close().await;
    let mut bert = restart(&relay, &kb, &kept).await;
    let three = anna.send("h", b"three", 0).await.unwrap();
    let mut after = Vec::new();
    kept_through(&mut bert, "h", three.seq, &mut after).await;
    assert_eq!(after, ["three"], "nothing kept shows twice");
    bert.close().await;
    anna.close().await;
}

/// Sends `text` to `g` as an app that keeps each checkpoint as it comes
/// (the web messenger); the checkpoint kept before the send went out.
/// Fails when the send goes out before any was kept.
async fn send_keeping(
    client: &E2eClient,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<E2eEvent>,
    text: &str,
) -> Checkpoint {
    let send = client.send("g", text.as_bytes(), 0);
    tokio::pin!(send);
    let mut kept = None;
    loop {
        tokio::select! {
            r = &mut send => {
                r.unwrap();
                return kept.expect("the send went out before its state was kept");
            }
            ev = tokio::time::timeout(DEADLINE, events.recv()) => match ev.expect("events in time") {
                Some(E2eEvent::Checkpoint(c)) => {
                    client.ack_checkpoint(&c).await.unwrap();
                    kept = Some(c);
                }
                Some(_) => {}
                None => panic!("the client stopped"),
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_goes_out_only_once_the_state_it_moved_on_from_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let Pair {
        relay,
        mut anna,
        mut bert,
        bert_key: kb,
    } = pair(dir.path()).await;
    let one = anna.send("g", b"one", 0).await.unwrap();
    let kept = kept_through(&mut bert, "g", one.seq, &mut Vec::new()).await;
    bert.ack_checkpoint(&kept).await.unwrap();

    // Bert sends: the send waits for the app to keep the state it moved
    // on from (a checkpoint), and goes out once it is.
    let mut events = bert.take_events();
    let kept = send_keeping(&bert, &mut events, "hi").await;
    // The page closes right after: its echo never came. Restarted from
    // what was kept, the next message uses the next ratchet step, and the
    // other member reads both.
    drop(events);
    bert.close().await;
    let mut bert = restart(&relay, &kb, &kept).await;
    let mut events = bert.take_events();
    send_keeping(&bert, &mut events, "again").await;
    let mut read = Vec::new();
    while read.len() < 2 {
        match tokio::time::timeout(DEADLINE, anna.next_event())
            .await
            .expect("anna reads in time")
        {
            Some(E2eEvent::Message(m)) => read.push(String::from_utf8(m.plaintext).unwrap()),
            // (Anna's own "one" comes back unreadable to her: not ours.)
            Some(E2eEvent::Unreadable { seq, reason, .. }) if seq > one.seq => {
                panic!("unreadable: {reason}")
            }
            Some(_) => {}
            None => panic!("anna stopped"),
        }
    }
    assert_eq!(read, ["hi", "again"]);
    bert.close().await;
    anna.close().await;
}
