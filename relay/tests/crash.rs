//! Crash safety: the relay binary killed with SIGKILL mid-traffic and
//! restarted on the same data loses no accepted message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

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
    let acknowledged = send_until_killed(&mut relay, alice, "g", 300).await;

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
    assert_nothing_lost(&mut bob, "g", &acknowledged).await;
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
    let reason = next_disconnect(&mut alice).await;
    assert!(reason.contains("draining"), "{reason}");
    // ...and the relay exits on its own, successfully.
    let exit = tokio::time::timeout(DEADLINE, relay.child.wait())
        .await
        .expect("relay exits after draining")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
