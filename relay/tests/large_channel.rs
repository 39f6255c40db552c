//! A large channel end to end (docs/e2e.md, "Large channels"): the SDK
//! keeps the sub-groups' MLS groups, hands sender keys out there and posts
//! once to the channel; removed devices read nothing posted after their
//! removal, newcomers nothing from before they joined.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mls_net;

use common::*;
use herold_client::e2e::E2eClient;
use herold_mls::{MlsDevice, Processed};
use herold_proto::v1;
use herold_store::Store as _;
use herold_store::embedded::EmbeddedStore;
use mls_net::*;

const CHANNEL: &str = "news";
const SUB_GROUPS: u32 = 3;

fn member(account: &str, role: v1::Role) -> v1::Member {
    v1::Member {
        account_id: account.into(),
        role: role as i32,
    }
}

/// The stored rows of the channel itself (its posts): (seq, ciphertext).
async fn posts(store: &EmbeddedStore) -> Vec<(u64, Vec<u8>)> {
    store
        .read(CHANNEL, 0, 1000, now_ms())
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.seq, m.ciphertext))
        .collect()
}

/// What `device` makes of a post's ciphertext with its own keys.
fn read_with(device: &E2eClient, ciphertext: &[u8]) -> Result<Vec<u8>, String> {
    match device.process_raw(CHANNEL, ciphertext) {
        Ok(Processed::Application { plaintext, .. }) => Ok(plaintext),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_members_read_nothing_after_and_newcomers_nothing_before() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, store) = TestRelay::start_embedded(dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    let readers = ["r0", "r1", "r2", "r3", "r4", "r5"];
    let lead_key = {
        relay.account("lead").await;
        relay.device("lead", "lead.phone").await
    };
    let mut keys = Vec::new();
    for r in readers {
        relay.account(r).await;
        keys.push(relay.device(r, &format!("{r}.phone")).await);
    }
    let mut admin = relay.admin().await;
    let mut members = vec![member("lead", v1::Role::Publisher)];
    members.extend(readers.iter().map(|r| member(r, v1::Role::Member)));
    let created = admin
        .create_conversation(v1::CreateConversationRequest {
            conversation_id: CHANNEL.into(),
            kind: v1::ConversationKind::Channel as i32,
            title: String::new(),
            members,
            default_ttl_seconds: 0,
            sub_groups: SUB_GROUPS,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.sub_groups, SUB_GROUPS);

    let lead = net.connect("lead.phone", &lead_key).await;
    let mut devices = Vec::new();
    for (r, k) in readers.iter().zip(&keys) {
        devices.push(net.connect(&format!("{r}.phone"), k).await);
    }
    let phones: Vec<String> = readers.iter().map(|r| format!("{r}.phone")).collect();

    // One post: every reader reads it, and the channel stores it once.
    lead.send(CHANNEL, b"polls open at 8", 0).await.unwrap();
    net.all_read(&phones, CHANNEL, &["polls open at 8"]).await;
    let stored = posts(&store).await;
    assert_eq!(stored.len(), 1, "one stored row per post");
    for i in 0..SUB_GROUPS {
        let sub = herold_proto::ids::sub_group_id(CHANNEL, i);
        let members = lead.group_members(&sub);
        assert!(
            members.contains(&"lead.phone".to_owned()),
            "{sub}: {members:?}"
        );
    }
    assert_eq!(
        net.inbox.senders(&phones[1], CHANNEL),
        [("lead".to_owned(), "lead.phone".to_owned())]
    );
    // A reader may not post.
    let refused = devices[1].send(CHANNEL, b"me too", 0).await.unwrap_err();
    assert!(refused.to_string().contains("publish"), "{refused}");

    // r0 leaves: the next post goes out under a key r0 never got.
    let gone = &devices[0];
    // It read the first post live; delivered again, a post is refused.
    let again = read_with(gone, &stored[0].1).unwrap_err();
    assert!(again.contains("read before"), "{again}");
    admin
        .remove_members(v1::RemoveMembersRequest {
            conversation_id: CHANNEL.into(),
            account_ids: vec!["r0".into()],
        })
        .await
        .unwrap();
    lead.send(CHANNEL, b"queue at school 3", 0).await.unwrap();
    net.all_read(
        &phones[1..],
        CHANNEL,
        &["polls open at 8", "queue at school 3"],
    )
    .await;
    let stored = posts(&store).await;
    assert_eq!(stored.len(), 2, "one stored row per post");
    let after = read_with(gone, &stored[1].1).unwrap_err();
    assert!(after.contains("sender key"), "{after}");
    assert_eq!(net.inbox.texts(&phones[0], CHANNEL), ["polls open at 8"]);

    // A newcomer reads what comes after it joined, not what came before.
    relay.account("r6").await;
    let k6 = relay.device("r6", "r6.phone").await;
    let newcomer = net.connect("r6.phone", &k6).await;
    admin
        .add_members(v1::AddMembersRequest {
            conversation_id: CHANNEL.into(),
            members: vec![member("r6", v1::Role::Member)],
        })
        .await
        .unwrap();
    lead.send(CHANNEL, b"results at 18", 0).await.unwrap();
    net.all_read(&["r6.phone".into()], CHANNEL, &["results at 18"])
        .await;
    net.all_read(
        &phones[1..],
        CHANNEL,
        &["polls open at 8", "queue at school 3", "results at 18"],
    )
    .await;
    for (seq, old) in &stored {
        let before = read_with(&newcomer, old).unwrap_err();
        assert!(before.contains("sender key"), "#{seq}: {before}");
    }
    // It was handed the channel's earlier posts and said so.
    let unread: Vec<u64> = net.inbox.unreadable.lock().unwrap()["r6.phone"]
        .iter()
        .filter(|(c, _, _)| c == CHANNEL)
        .map(|(_, seq, _)| *seq)
        .collect();
    let earlier: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(unread, earlier);
    assert_eq!(posts(&store).await.len(), 3, "one stored row per post");
    // The sub-groups hold MLS only: commits and key messages, no post.
    for i in 0..SUB_GROUPS {
        let sub = herold_proto::ids::sub_group_id(CHANNEL, i);
        for m in store.read(&sub, 0, 1000, now_ms()).await.unwrap() {
            assert!(
                herold_mls::inspect(&m.ciphertext).is_ok(),
                "{sub} #{}",
                m.seq
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_was_offline_reads_the_posts_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    relay.account("lead").await;
    let lead_key = relay.device("lead", "lead.phone").await;
    relay.account("late").await;
    let late_key = relay.device("late", "late.phone").await;
    let mut admin = relay.admin().await;
    admin
        .create_conversation(v1::CreateConversationRequest {
            conversation_id: CHANNEL.into(),
            kind: v1::ConversationKind::Channel as i32,
            title: String::new(),
            members: vec![
                member("lead", v1::Role::Publisher),
                member("late", v1::Role::Member),
            ],
            default_ttl_seconds: 0,
            sub_groups: 2,
        })
        .await
        .unwrap();
    // The reader's device has uploaded its key packages, then is away.
    let state = dir.path().join("late.mls");
    let mls = MlsDevice::open_or_create("late.phone", &state).unwrap();
    net.connect_mls(relay.addr, "late.phone", &late_key, mls)
        .await
        .close()
        .await;
    let lead = net.connect("lead.phone", &lead_key).await;
    for text in ["one", "two", "three"] {
        lead.send(CHANNEL, text.as_bytes(), 0).await.unwrap();
    }
    // Back: the posts and its sub-group's Welcome and key all come in the
    // sync, in whatever order the conversations sync in.
    let mls = MlsDevice::open(&state).unwrap();
    let _late = net
        .connect_mls(relay.addr, "late.phone", &late_key, mls)
        .await;
    net.all_read(&["late.phone".into()], CHANNEL, &["one", "two", "three"])
        .await;
    let unread = net.inbox.unreadable.lock().unwrap().clone();
    let lost: Vec<_> = unread
        .get("late.phone")
        .into_iter()
        .flatten()
        .filter(|(c, _, _)| c == CHANNEL)
        .collect();
    assert!(lost.is_empty(), "{lost:?}");
}
