//! Large channels: sub-groups whose rosters the relay keeps in line with
//! the channel's (docs/e2e.md, "Large channels").

use std::collections::{BTreeMap, BTreeSet};

use herold_store::Store as _;
use herold_store::embedded::EmbeddedStore;

use super::*;

/// Each sub-group's members with their roles, read from the store.
async fn sub_rosters(store: &EmbeddedStore, n: u32) -> Vec<BTreeMap<String, herold_store::Role>> {
    let mut out = Vec::new();
    for i in 0..n {
        let sub = herold_proto::ids::sub_group_id("big", i);
        let members = store.members(&sub).await.unwrap();
        out.push(
            members
                .into_iter()
                .map(|m| (m.account_id, m.role))
                .collect(),
        );
    }
    out
}

/// Every member in exactly one sub-group, every publisher in all.
fn assert_split(
    subs: &[BTreeMap<String, herold_store::Role>],
    publishers: &[&str],
    members: &BTreeSet<String>,
) {
    for (i, sub) in subs.iter().enumerate() {
        for p in publishers {
            assert_eq!(
                sub.get(*p),
                Some(&herold_store::Role::Publisher),
                "{p} in sub-group {i}"
            );
        }
    }
    let mut seen = BTreeSet::new();
    for sub in subs {
        for (a, role) in sub {
            if *role == herold_store::Role::Member {
                assert!(seen.insert(a.clone()), "{a} in two sub-groups");
            }
        }
    }
    assert_eq!(&seen, members, "the members of the sub-groups");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_channel_keeps_its_sub_groups_in_line() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, store) = TestRelay::start_embedded(dir.path()).await;
    let mut admin = relay.admin().await;
    admin.create_account(acc("boss", &[])).await.unwrap();
    let mut members: BTreeSet<String> = (0..41).map(|i| format!("m{i}")).collect();
    for m in &members {
        admin.create_account(acc(m, &[])).await.unwrap();
    }
    let mut req = group(
        "big",
        v1::ConversationKind::Channel,
        std::iter::once(member("boss", v1::Role::Publisher))
            .chain(
                members
                    .iter()
                    .filter(|m| *m != "m40")
                    .map(|m| member(m, v1::Role::Member)),
            )
            .collect(),
    );
    req.sub_groups = 4;
    let c = admin.create_conversation(req).await.unwrap().into_inner();
    assert_eq!((c.sub_groups, c.member_count), (4, 41));
    members.remove("m40");
    let subs = sub_rosters(&store, 4).await;
    assert_split(&subs, &["boss"], &members);
    assert!(
        subs.iter().all(|s| s.len() > 1),
        "every sub-group has members: {subs:?}"
    );
    assert!(store.get_conversation("big~4").await.unwrap().is_none());

    // Removed, added, promoted: the sub-groups follow.
    admin
        .remove_members(v1::RemoveMembersRequest {
            conversation_id: "big".into(),
            account_ids: vec!["m3".into()],
        })
        .await
        .unwrap();
    members.remove("m3");
    admin
        .add_members(v1::AddMembersRequest {
            conversation_id: "big".into(),
            members: vec![
                member("m40", v1::Role::Member),
                member("m5", v1::Role::Publisher),
            ],
        })
        .await
        .unwrap();
    members.insert("m40".into());
    members.remove("m5");
    let after = sub_rosters(&store, 4).await;
    assert_split(&after, &["boss", "m5"], &members);
    // Nobody else moved.
    for (before, now) in subs.iter().zip(&after) {
        for (a, role) in before {
            if *role == herold_store::Role::Member && a != "m3" && a != "m5" {
                assert!(now.contains_key(a), "{a} moved");
            }
        }
    }

    // A policy set on the channel reaches its sub-groups.
    admin
        .set_policy(v1::SetPolicyRequest {
            conversation_id: "big".into(),
            policy: Some(v1::Policy {
                default_expiry_seconds: Some(3600),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    for i in 0..4 {
        let sub = herold_proto::ids::sub_group_id("big", i);
        let p = store
            .get_policy(herold_store::PolicyScope::Conversation(sub.clone()))
            .await
            .unwrap()
            .unwrap_or_default();
        assert_eq!(p.default_expiry_seconds, Some(3600), "{sub}");
    }

    // The cockpit lists the channel, not its sub-groups, page after page.
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_conversations(v1::ListConversationsRequest {
                page_token: token,
                page_size: 2,
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.conversations.into_iter().map(|c| c.conversation_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed, ["big"]);

    // Archived with the channel.
    admin
        .update_conversation(v1::UpdateConversationRequest {
            conversation_id: "big".into(),
            title: None,
            archived: Some(true),
        })
        .await
        .unwrap();
    for i in 0..4 {
        let sub = herold_proto::ids::sub_group_id("big", i);
        assert!(store.conversation_archived(&sub).await.unwrap(), "{sub}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_channel_requests_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut admin = relay.admin().await;
    let refused = |kind: v1::ConversationKind, id: &str, n: u32| {
        let mut req = group(id, kind, Vec::new());
        req.sub_groups = n;
        req
    };
    for (req, says) in [
        (
            refused(v1::ConversationKind::Group, "g", 4),
            "only a channel",
        ),
        (
            refused(v1::ConversationKind::Channel, "c", 1025),
            "at most 1024",
        ),
        (
            refused(v1::ConversationKind::Channel, &"x".repeat(62), 128),
            "can be at most 60 bytes",
        ),
        (
            refused(v1::ConversationKind::Channel, "info~3", 0),
            "kept for the sub-groups",
        ),
    ] {
        let e = admin.create_conversation(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains(says), "{e}");
    }
    // A channel that exists does not become large.
    admin
        .create_conversation(group("plain", v1::ConversationKind::Channel, Vec::new()))
        .await
        .unwrap();
    let e = admin
        .create_conversation(refused(v1::ConversationKind::Channel, "plain", 4))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
    let c = admin
        .get_conversation(v1::GetConversationRequest {
            conversation_id: "plain".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.sub_groups, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_failed_creation_left_is_taken_over_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, store) = TestRelay::start_embedded(dir.path()).await;
    // An attempt with 6 sub-groups made three, then failed.
    for i in 0..3 {
        let sub = herold_store::Conversation {
            id: herold_proto::ids::sub_group_id("left", i),
            kind: herold_store::ConversationKind::Channel,
            title: String::new(),
            default_ttl_seconds: 0,
            created_at_ms: 0,
        };
        store.create_conversation(sub, Vec::new()).await.unwrap();
    }
    let mut admin = relay.admin().await;
    for fewer in [0, 2] {
        let mut req = group("left", v1::ConversationKind::Channel, Vec::new());
        req.sub_groups = fewer;
        let e = admin.create_conversation(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
        assert!(e.message().contains("sub_groups = 3"), "{e}");
    }
    let mut req = group("left", v1::ConversationKind::Channel, Vec::new());
    req.sub_groups = 6;
    let c = admin.create_conversation(req).await.unwrap().into_inner();
    assert_eq!(
        c.sub_groups, 6,
        "the retry keeps what was made and adds the rest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_cannot_make_an_id_of_a_sub_group() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut admin = relay.admin().await;
    let row = |line: u32, station: &str, account: &str| v1::RosterRow {
        line,
        name: format!("Volunteer {line}"),
        station: station.into(),
        role: "member".into(),
        cohort: "wahl".into(),
        account_id: account.into(),
    };
    let r = admin
        .import_roster(v1::ImportRosterRequest {
            rows: vec![row(2, "0", ""), row(3, "Schule 1", "eve~0")],
            channels: vec!["info".into()],
            group_prefix: "info~".into(),
            code_ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.failed, 2, "{:?}", r.errors);
    for e in &r.errors {
        assert!(e.reason.contains("kept for the sub-groups"), "{e:?}");
    }
    let info = admin
        .get_conversation(v1::GetConversationRequest {
            conversation_id: "info".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.sub_groups, 0, "the channel stays a plain one");
}
