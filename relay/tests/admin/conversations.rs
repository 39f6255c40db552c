//! Groups, channels and direct conversations; policies.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_channels_rename_archive_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut admin = relay.admin().await;
    for id in ["boss", "vol"] {
        admin.create_account(acc(id, &[])).await.unwrap();
    }
    let kb = relay.device("boss", "boss.pc").await;
    let kv = relay.device("vol", "vol.phone").await;
    admin
        .create_conversation(group(
            "info",
            v1::ConversationKind::Channel,
            vec![
                member("boss", v1::Role::Publisher),
                member("vol", v1::Role::Member),
            ],
        ))
        .await
        .unwrap();
    // Bulk add: 300 members in one call.
    let many: Vec<v1::Member> = (0..300)
        .map(|i| member(&format!("m{i}"), v1::Role::Member))
        .collect();
    for m in &many {
        admin.create_account(acc(&m.account_id, &[])).await.unwrap();
    }
    let c = admin
        .add_members(v1::AddMembersRequest {
            conversation_id: "info".into(),
            members: many,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.member_count, 302);
    let c = admin
        .remove_members(v1::RemoveMembersRequest {
            conversation_id: "info".into(),
            account_ids: (0..100).map(|i| format!("m{i}")).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.member_count, 202);

    let boss = relay.client("boss.pc", &kb).await;
    let vol = relay.client("vol.phone", &kv).await;
    boss.send("info", b"polls open at 8".to_vec(), 0)
        .await
        .unwrap();
    let e = vol.send("info", b"hello?".to_vec(), 0).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotPublisher), "{e}");

    // Rename and archive: archived conversations take no posts.
    let c = admin
        .update_conversation(v1::UpdateConversationRequest {
            conversation_id: "info".into(),
            title: Some("Wahlinfo".into()),
            archived: Some(true),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((c.title.as_str(), c.archived), ("Wahlinfo", true));
    let e = boss
        .send("info", b"late news".to_vec(), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ConversationArchived), "{e}");
    admin
        .update_conversation(v1::UpdateConversationRequest {
            conversation_id: "info".into(),
            title: None,
            archived: Some(false),
        })
        .await
        .unwrap();
    boss.send("info", b"back".to_vec(), 0).await.unwrap();

    let list = admin
        .list_conversations(v1::ListConversationsRequest {
            page_token: String::new(),
            page_size: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let info = list
        .conversations
        .iter()
        .find(|c| c.conversation_id == "info")
        .unwrap();
    assert_eq!((info.member_count, info.members.len()), (202, 0));

    assert_status(
        admin
            .update_conversation(v1::UpdateConversationRequest {
                conversation_id: "info".into(),
                title: None,
                archived: None,
            })
            .await,
        Code::InvalidArgument,
        "nothing to change",
    );
    assert_status(
        admin
            .update_conversation(v1::UpdateConversationRequest {
                conversation_id: "nothing".into(),
                title: Some("x".into()),
                archived: None,
            })
            .await,
        Code::NotFound,
        "no conversation \"nothing\"",
    );
    assert_status(
        admin
            .create_conversation(group("c2", v1::ConversationKind::Unspecified, vec![]))
            .await,
        Code::InvalidArgument,
        "kind must be DIRECT, GROUP or CHANNEL",
    );
    assert_status(
        admin
            .add_members(v1::AddMembersRequest {
                conversation_id: "info".into(),
                members: vec![v1::Member {
                    account_id: "vol".into(),
                    role: 99,
                }],
            })
            .await,
        Code::InvalidArgument,
        "unknown role 99",
    );
    boss.close().await;
    vol.close().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_resolved_and_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut admin = relay.admin().await;
    for id in ["a", "b", "c"] {
        admin.create_account(acc(id, &[])).await.unwrap();
    }
    let ka = relay.device("a", "a.phone").await;
    admin
        .create_conversation(group(
            "g",
            v1::ConversationKind::Group,
            vec![member("a", v1::Role::Member), member("b", v1::Role::Member)],
        ))
        .await
        .unwrap();
    let set = |conv: &str, p: v1::Policy| v1::SetPolicyRequest {
        conversation_id: conv.into(),
        policy: Some(p),
    };
    let view = admin
        .set_policy(set(
            "",
            v1::Policy {
                default_expiry_seconds: Some(3600),
                max_expiry_seconds: Some(86_400),
                direct_chats: v1::DirectChats::SharedGroup as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let eff = view.effective.unwrap();
    assert_eq!(eff.max_devices, Some(10));
    assert_eq!(eff.default_expiry_seconds, Some(3600));
    let view = admin
        .set_policy(set(
            "g",
            v1::Policy {
                default_expiry_seconds: Some(60),
                max_attachment_bytes: Some(100),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let eff = view.effective.unwrap();
    assert_eq!(
        (
            eff.default_expiry_seconds,
            eff.max_expiry_seconds,
            eff.max_attachment_bytes
        ),
        (Some(60), Some(86_400), Some(100))
    );
    let got = admin
        .get_policy(v1::GetPolicyRequest {
            conversation_id: "g".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.set.unwrap().default_expiry_seconds, Some(60));

    // Enforced at submit: default expiry, maximum expiry, size.
    let client = relay.client("a.phone", &ka).await;
    let sent_at = now_ms();
    client.send("g", b"short-lived".to_vec(), 0).await.unwrap();
    let mut b_key_client = {
        let kb = relay.device("b", "b.phone").await;
        relay.client("b.phone", &kb).await
    };
    let got = receive_until_synced(&mut b_key_client).await;
    let m = got.iter().find(|m| m.ciphertext == b"short-lived").unwrap();
    assert!(
        (m.expires_at_ms - sent_at - 60_000).abs() < 10_000,
        "expiry {} vs sent {sent_at}",
        m.expires_at_ms
    );
    let e = client.send("g", vec![7; 101], 0).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidEnvelope), "{e}");
    assert!(e.to_string().contains("policy allows 100"), "{e}");
    let e = client
        .send("g", b"too long".to_vec(), now_ms() + 2 * 86_400_000)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidExpiry), "{e}");

    // Direct chats: only between accounts sharing a group, then nobody.
    admin
        .create_conversation(group(
            "a-b",
            v1::ConversationKind::Direct,
            vec![member("a", v1::Role::Member), member("b", v1::Role::Member)],
        ))
        .await
        .unwrap();
    assert_status(
        admin
            .create_conversation(group(
                "a-c",
                v1::ConversationKind::Direct,
                vec![member("a", v1::Role::Member), member("c", v1::Role::Member)],
            ))
            .await,
        Code::FailedPrecondition,
        "share none",
    );
    client.send("a-b", b"hi b".to_vec(), 0).await.unwrap();
    admin
        .set_policy(set(
            "",
            v1::Policy {
                direct_chats: v1::DirectChats::Nobody as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let e = client
        .send("a-b", b"still there?".to_vec(), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PolicyDenied), "{e}");

    // Bad policies.
    assert_status(
        admin
            .set_policy(set(
                "g",
                v1::Policy {
                    max_devices: Some(3),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "apply to the organisation only",
    );
    assert_status(
        admin
            .set_policy(set(
                "",
                v1::Policy {
                    default_expiry_seconds: Some(100),
                    max_expiry_seconds: Some(10),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "default_expiry_seconds 100 is above max_expiry_seconds 10",
    );
    assert_status(
        admin
            .set_policy(set(
                "",
                v1::Policy {
                    max_devices: Some(101),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "max_devices must be 1..=100",
    );
    assert_status(
        admin
            .set_policy(set(
                "",
                v1::Policy {
                    max_expiry_seconds: Some(400 * 86_400),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "above this relay's maximum",
    );
    assert_status(
        admin
            .set_policy(set("nothing", v1::Policy::default()))
            .await,
        Code::NotFound,
        "no conversation",
    );
    assert_status(
        admin
            .set_policy(v1::SetPolicyRequest {
                conversation_id: String::new(),
                policy: None,
            })
            .await,
        Code::InvalidArgument,
        "policy is missing",
    );
    client.close().await;
    b_key_client.close().await;
    relay.stop().await;
}
