//! Sealed sender (docs/e2e.md, "Sealed sender"): with the organisation's
//! policy on, the relay stores no sender for the messages of direct (1:1)
//! conversations, and recipients learn who wrote from the MLS credential.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mls_net;

use common::*;
use herold_proto::v1::{self, ConversationKind};
use herold_store::Store as _;
use mls_net::*;

/// The organisation's policy with sealed sender on or off.
fn sealed(on: bool) -> v1::SetPolicyRequest {
    v1::SetPolicyRequest {
        conversation_id: String::new(),
        policy: Some(v1::Policy {
            sealed_sender: Some(on),
            ..Default::default()
        }),
    }
}

fn pair(account: &str, device: &str) -> (String, String) {
    (account.to_owned(), device.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sealed_sender_no_stored_row_of_a_direct_message_names_its_sender() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, store) = TestRelay::start_embedded(dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    relay.account("sa").await;
    relay.account("sb").await;
    let a1key = relay.device("sa", "sa.1").await;
    let b1key = relay.device("sb", "sb.1").await;
    let b2key = relay.device("sb", "sb.2").await;
    let a1 = net.connect("sa.1", &a1key).await;
    let b1 = net.connect("sb.1", &b1key).await;
    let _b2 = net.connect("sb.2", &b2key).await;
    relay
        .conversation("dm", ConversationKind::Direct, &["sa", "sb"])
        .await;
    relay
        .conversation("team", ConversationKind::Group, &["sa", "sb"])
        .await;
    let mut admin = relay.admin().await;
    admin.set_policy(sealed(true)).await.unwrap();

    // The group's first commit, two messages and their echoes, in the 1:1;
    // one message in a group, where the policy does not apply.
    a1.send("dm", b"hello", 0).await.unwrap();
    net.all_read(&["sb.1".to_owned()], "dm", &["hello"]).await;
    b1.send("dm", b"hi", 0).await.unwrap();
    a1.send("team", b"in the group", 0).await.unwrap();
    net.all_read(&["sa.1".to_owned()], "dm", &["hi"]).await;
    net.all_read(&["sb.2".to_owned()], "dm", &["hello", "hi"])
        .await;
    net.all_read(
        &["sb.1".to_owned(), "sb.2".to_owned()],
        "team",
        &["in the group"],
    )
    .await;

    // Recipients know who wrote, from the credential and the roster.
    assert_eq!(net.inbox.senders("sb.1", "dm"), vec![pair("sa", "sa.1")]);
    assert_eq!(net.inbox.senders("sa.1", "dm"), vec![pair("sb", "sb.1")]);
    assert_eq!(
        net.inbox.senders("sb.2", "dm"),
        vec![pair("sa", "sa.1"), pair("sb", "sb.1")]
    );
    // The sender told its own sealed commit apart: no restart, no failure.
    let unread = net.inbox.unreadable.lock().unwrap().clone();
    let mine: Vec<&str> = unread["sa.1"]
        .iter()
        .filter(|(c, ..)| c == "dm")
        .map(|(_, _, why)| why.as_str())
        .collect();
    assert!(mine.contains(&"this device's own commit"), "{mine:?}");
    assert!(
        mine.iter()
            .all(|why| *why == "this device's own commit"
                || why.starts_with("own application message")),
        "only its own echoes: {mine:?}"
    );
    assert!(net.inbox.restarted.lock().unwrap().is_empty());
    assert_eq!(a1.epoch("dm"), b1.epoch("dm"));

    // The store: no row of the 1:1 names a sender, commits included.
    let dm = store.read("dm", 0, 100, now_ms()).await.unwrap();
    assert!(dm.len() >= 3, "a commit and two messages: {}", dm.len());
    for m in &dm {
        assert_eq!(
            (m.sender_account_id.as_str(), m.sender_device_id.as_str()),
            ("", ""),
            "seq {} of the 1:1 names its sender",
            m.seq
        );
    }
    // In the group every row still does.
    let team = store.read("team", 0, 100, now_ms()).await.unwrap();
    assert!(!team.is_empty());
    assert!(
        team.iter()
            .all(|m| m.sender_account_id == "sa" && m.sender_device_id == "sa.1")
    );

    // Switched off, new 1:1 messages name their sender again.
    admin.set_policy(sealed(false)).await.unwrap();
    let after = b1.send("dm", b"named", 0).await.unwrap();
    net.all_read(&["sa.1".to_owned()], "dm", &["hi", "named"])
        .await;
    let row = store.read("dm", after.seq - 1, 1, now_ms()).await.unwrap();
    assert_eq!(row[0].sender_account_id, "sb");
    assert_eq!(row[0].sender_device_id, "sb.1");

    // A conversation cannot set it: it is the organisation's decision.
    let e = admin
        .set_policy(v1::SetPolicyRequest {
            conversation_id: "dm".into(),
            ..sealed(true)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("sealed_sender"), "{}", e.message());
    relay.stop().await;
}
