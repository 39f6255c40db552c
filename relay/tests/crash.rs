//! Crash safety: the relay binary killed with SIGKILL mid-traffic and
//! restarted on the same data loses no accepted message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::*;
use herold_client::{Client, ClientConfig};
use herold_proto::v1::ConversationKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_traffic_loses_no_accepted_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = spawn_relay(dir.path(), &[]).await;
    let mut admin = admin_at(relay.admin).await;
    create_account(&mut admin, "alice").await;
    create_account(&mut admin, "bob").await;
    let ka = enroll(&mut admin, "alice", "alice.phone").await;
    let kb = enroll(&mut admin, "bob", "bob.phone").await;
    create_conversation(&mut admin, "g", ConversationKind::Group, &["alice", "bob"]).await;

    let alice = Client::connect(ClientConfig::new(
        relay.addr,
        relay.fingerprint,
        "alice.phone",
        ka,
    ))
    .await
    .unwrap();
    // Eight concurrent senders; every acceptance is recorded.
    let accepted: Arc<Mutex<BTreeMap<u64, Vec<u8>>>> = Arc::default();
    let mut senders = Vec::new();
    for s in 0..8 {
        let tx = alice.sender();
        let accepted = accepted.clone();
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let body = format!("s{s}-{i}").into_bytes();
                match tx.send("g", body.clone(), 0).await {
                    Ok(a) => {
                        let prev = accepted.lock().unwrap().insert(a.seq, body);
                        assert!(prev.is_none(), "seq {} given out twice", a.seq);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good amount of traffic has been acknowledged.
    tokio::time::timeout(DEADLINE, async {
        loop {
            if accepted.lock().unwrap().len() >= 300 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("300 messages accepted");
    relay.child.start_kill().unwrap();
    relay.child.wait().await.unwrap();
    let acknowledged = accepted.lock().unwrap().clone();
    for s in senders {
        s.abort();
    }
    drop(alice);

    // Restart on the same data: same certificate, every accepted message.
    let relay2 = spawn_relay(dir.path(), &[]).await;
    assert_eq!(
        relay2.fingerprint, relay.fingerprint,
        "the dev certificate is kept"
    );
    let mut bob = Client::connect(ClientConfig::new(
        relay2.addr,
        relay2.fingerprint,
        "bob.phone",
        kb,
    ))
    .await
    .unwrap();
    let stored: BTreeMap<u64, Vec<u8>> = receive_until_synced(&mut bob)
        .await
        .into_iter()
        .map(|m| (m.seq, m.ciphertext))
        .collect();
    for (seq, body) in &acknowledged {
        assert_eq!(stored.get(seq), Some(body), "accepted message #{seq} lost");
    }
    let head = *stored.keys().last().unwrap();
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>(),
        "no gaps in the order"
    );
    // The order continues where it stopped.
    let a = bob.send("g", b"after restart".to_vec(), 0).await.unwrap();
    assert_eq!(a.seq, head + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = spawn_relay(dir.path(), &[]).await;
    let mut admin = admin_at(relay.admin).await;
    create_account(&mut admin, "alice").await;
    let ka = enroll(&mut admin, "alice", "alice.phone").await;
    let mut alice = Client::connect(ClientConfig::new(
        relay.addr,
        relay.fingerprint,
        "alice.phone",
        ka,
    ))
    .await
    .unwrap();
    let pid = relay.child.id().unwrap().to_string();
    // The shell's own `kill`: no extra package needed.
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .unwrap();
    assert!(status.success());
    // The connected device is told the relay is draining...
    let reason = tokio::time::timeout(DEADLINE, async {
        loop {
            match alice.next_event().await {
                Some(herold_client::Event::Disconnected { reason }) => return reason,
                Some(_) => {}
                None => panic!("client gone"),
            }
        }
    })
    .await
    .unwrap();
    assert!(reason.contains("draining"), "{reason}");
    // ...and the relay exits on its own, successfully.
    let exit = tokio::time::timeout(DEADLINE, relay.child.wait())
        .await
        .expect("relay exits after draining")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
