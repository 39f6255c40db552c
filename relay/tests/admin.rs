//! The admin API over a real gRPC client on loopback: every service, the
//! operator roles with their denials, bad input (each with its status and
//! message), enrollment codes, policies the relay enforces, bulk import and
//! delete, the audit log, health, reflection, and TLS with client
//! certificates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tokio::time::Instant;

use common::*;
use herold_client::roster;
use herold_proto::v1::{self, ErrorCode};
use herold_relay::Config;
use herold_relay::operators::OperatorRole;
use tonic::Code;

const ORG: &str = "org-admin-token-0123456789";
const LEAD: &str = "group-lead-token-0123456789";
const AUDIT: &str = "auditor-token-0123456789";

async fn relay_with_operators(dir: &std::path::Path) -> TestRelay {
    TestRelay::start_with_operators(
        dir,
        &[
            ("it-ops", OperatorRole::OrgAdmin, ORG, &[]),
            ("lead-17", OperatorRole::GroupAdmin, LEAD, &["station-17"]),
            ("audit", OperatorRole::Auditor, AUDIT, &[]),
        ],
    )
    .await
}

/// Asserts a call failed with `code` and a message containing `needle`.
#[track_caller]
fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    match r {
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(
                s.message().contains(needle),
                "message {:?} lacks {needle:?}",
                s.message()
            );
        }
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
    }
}

fn acc(id: &str, tags: &[&str]) -> v1::CreateAccountRequest {
    v1::CreateAccountRequest {
        account_id: id.into(),
        display_name: format!("name of {id}"),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn member(id: &str, role: v1::Role) -> v1::Member {
    v1::Member {
        account_id: id.into(),
        role: role as i32,
    }
}

fn group(
    id: &str,
    kind: v1::ConversationKind,
    members: Vec<v1::Member>,
) -> v1::CreateConversationRequest {
    v1::CreateConversationRequest {
        conversation_id: id.into(),
        kind: kind as i32,
        title: format!("title of {id}"),
        members,
        default_ttl_seconds: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_are_authenticated_and_authorised_by_role() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_operators(dir.path()).await;
    let mut org = relay.admin_as(ORG).await;
    let mut lead = relay.admin_as(LEAD).await;
    let mut auditor = relay.admin_as(AUDIT).await;

    // No token, a wrong token, a malformed header.
    let mut anon = admin_with_token(relay.admin_addr, None).await;
    assert_status(
        anon.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
        "missing authorization",
    );
    let mut wrong = relay.admin_as("not-a-valid-token-at-all").await;
    assert_status(
        wrong
            .get_account(v1::GetAccountRequest {
                account_id: "x".into(),
            })
            .await,
        Code::Unauthenticated,
        "the bearer token is wrong",
    );

    let me = lead
        .who_am_i(v1::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.name, "lead-17");
    assert_eq!(me.role, v1::OperatorRole::GroupAdmin as i32);
    assert_eq!(me.groups, ["station-17"]);

    for id in ["anna", "ben", "clara"] {
        org.create_account(acc(id, &[])).await.unwrap();
    }
    org.create_conversation(group(
        "station-17",
        v1::ConversationKind::Group,
        vec![member("anna", v1::Role::Admin)],
    ))
    .await
    .unwrap();
    org.create_conversation(group("station-18", v1::ConversationKind::Group, vec![]))
        .await
        .unwrap();

    // The auditor reads but changes nothing.
    auditor
        .get_account(v1::GetAccountRequest {
            account_id: "anna".into(),
        })
        .await
        .unwrap();
    assert_status(
        auditor.create_account(acc("dora", &[])).await,
        Code::PermissionDenied,
        "operator \"audit\" (auditor) may not call CreateAccount",
    );
    assert_status(
        auditor
            .add_members(v1::AddMembersRequest {
                conversation_id: "station-17".into(),
                members: vec![member("ben", v1::Role::Member)],
            })
            .await,
        Code::PermissionDenied,
        "may not call AddMembers",
    );

    // The group admin manages its own group only.
    let c = lead
        .add_members(v1::AddMembersRequest {
            conversation_id: "station-17".into(),
            members: vec![
                member("ben", v1::Role::Member),
                member("clara", v1::Role::Member),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.members.len(), 3);
    lead.update_conversation(v1::UpdateConversationRequest {
        conversation_id: "station-17".into(),
        title: Some("Wahllokal 17".into()),
        archived: None,
    })
    .await
    .unwrap();
    assert_status(
        lead.add_members(v1::AddMembersRequest {
            conversation_id: "station-18".into(),
            members: vec![member("ben", v1::Role::Member)],
        })
        .await,
        Code::PermissionDenied,
        "manages only station-17; not \"station-18\"",
    );
    assert_status(
        lead.delete_account(v1::DeleteAccountRequest {
            account_id: "ben".into(),
        })
        .await,
        Code::PermissionDenied,
        "(group-admin) may not call DeleteAccount",
    );
    assert_status(
        lead.set_policy(v1::SetPolicyRequest {
            conversation_id: String::new(),
            policy: Some(v1::Policy::default()),
        })
        .await,
        Code::PermissionDenied,
        "may not call SetPolicy",
    );
    assert_status(
        lead.list_audit_log(v1::ListAuditLogRequest::default())
            .await,
        Code::PermissionDenied,
        "may not call ListAuditLog",
    );

    // The audit log: who did what, including the denials; never content.
    let log = auditor
        .list_audit_log(v1::ListAuditLogRequest {
            page_token: String::new(),
            page_size: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    let has = |op: &str, action: &str, target: &str, outcome: &str| {
        log.entries.iter().any(|e| {
            e.operator == op && e.action == action && e.target == target && e.outcome == outcome
        })
    };
    assert!(
        has("it-ops", "CreateAccount", "anna", "ok"),
        "{:#?}",
        log.entries
    );
    assert!(has("audit", "CreateAccount", "dora", "PermissionDenied"));
    assert!(has("lead-17", "AddMembers", "station-17", "ok"));
    assert!(has(
        "lead-17",
        "AddMembers",
        "station-18",
        "PermissionDenied"
    ));
    assert!(has("lead-17", "DeleteAccount", "ben", "PermissionDenied"));
    // Newest first, and paged.
    assert!(log.entries.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
    let p1 = org
        .list_audit_log(v1::ListAuditLogRequest {
            page_token: String::new(),
            page_size: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.entries.len(), 3);
    let p2 = org
        .list_audit_log(v1::ListAuditLogRequest {
            page_token: p1.next_page_token.clone(),
            page_size: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.entries.len(), 3);
    assert!(p2.entries[0].at_ms <= p1.entries[2].at_ms);
    assert_status(
        org.list_audit_log(v1::ListAuditLogRequest {
            page_token: "garbage".into(),
            page_size: 3,
        })
        .await,
        Code::InvalidArgument,
        "page_token is malformed",
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_list_suspend_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut admin = relay.admin().await;
    for i in 0..5 {
        admin
            .create_account(acc(&format!("vol-{i}"), &["election-2026"]))
            .await
            .unwrap();
    }
    admin
        .create_account(acc("staff-1", &["staff"]))
        .await
        .unwrap();

    // Paged by tag: 2 + 2 + 1.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = admin
            .list_accounts(v1::ListAccountsRequest {
                tag: "election-2026".into(),
                page_token: token,
                page_size: 2,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.accounts.len() <= 2);
        assert!(r.accounts.iter().all(|a| a.tags == ["election-2026"]));
        seen.extend(r.accounts.into_iter().map(|a| a.account_id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen, ["vol-0", "vol-1", "vol-2", "vol-3", "vol-4"]);
    let all = admin
        .list_accounts(v1::ListAccountsRequest {
            tag: String::new(),
            page_token: String::new(),
            page_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.accounts.len(), 6);

    // Bad input, each with its status and message.
    assert_status(
        admin.create_account(acc("has space", &[])).await,
        Code::InvalidArgument,
        "account id",
    );
    assert_status(
        admin.create_account(acc("vol-0", &[])).await,
        Code::AlreadyExists,
        "account \"vol-0\" already exists",
    );
    assert_status(
        admin
            .get_account(v1::GetAccountRequest {
                account_id: "nobody".into(),
            })
            .await,
        Code::NotFound,
        "no account \"nobody\"",
    );
    assert_status(
        admin.create_account(acc("x", &["bad tag"])).await,
        Code::InvalidArgument,
        "tag",
    );
    assert_status(
        admin
            .register_device(v1::RegisterDeviceRequest {
                account_id: "vol-0".into(),
                device_id: "vol-0.phone".into(),
                public_key: vec![1; 31],
            })
            .await,
        Code::InvalidArgument,
        "public_key must be a 32-byte Ed25519 key, not 31 bytes",
    );
    assert_status(
        admin
            .delete_accounts(v1::DeleteAccountsRequest {
                tag: String::new(),
                dry_run: false,
            })
            .await,
        Code::InvalidArgument,
        "tag is required",
    );
    assert_status(
        admin
            .suspend_account(v1::SuspendAccountRequest {
                account_id: "nobody".into(),
                suspended: true,
            })
            .await,
        Code::NotFound,
        "no account",
    );

    // Suspend: cut off within 2 s, refused on reconnect; resume lets it in.
    let key = relay.device("vol-1", "vol-1.phone").await;
    let mut c = relay.client("vol-1.phone", &key).await;
    let t = Instant::now();
    let a = admin
        .suspend_account(v1::SuspendAccountRequest {
            account_id: "vol-1".into(),
            suspended: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(a.suspended);
    let e = next_stop(&mut c, Duration::from_secs(2)).await;
    assert_eq!(e.code(), Some(ErrorCode::DeviceRevoked), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let mut raw = herold_client::raw::RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    let err = raw.authenticate("vol-1.phone", &key).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DeviceRevoked), "{err}");
    assert!(err.to_string().contains("suspended"), "{err}");
    admin
        .suspend_account(v1::SuspendAccountRequest {
            account_id: "vol-1".into(),
            suspended: false,
        })
        .await
        .unwrap();
    let c = relay.client("vol-1.phone", &key).await;
    c.close().await;
    // Tags survive suspension.
    let a = admin
        .get_account(v1::GetAccountRequest {
            account_id: "vol-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (a.tags.as_slice(), a.suspended),
        (&["election-2026".to_owned()][..], false)
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_codes_are_single_use_and_respect_the_device_limit() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut admin = relay.admin().await;
    admin.create_account(acc("anna", &[])).await.unwrap();
    let issue = |ids: &[&str]| v1::IssueEnrollmentCodesRequest {
        account_ids: ids.iter().map(|a| (*a).to_owned()).collect(),
        tag: String::new(),
        ttl_seconds: 3600,
        only_without_devices: false,
    };
    let codes = admin
        .issue_enrollment_codes(issue(&["anna"]))
        .await
        .unwrap()
        .into_inner()
        .codes;
    assert_eq!(codes.len(), 1);
    let code = codes[0].code.clone();
    assert_eq!(code.len(), 14, "{code}");

    // The code enrolls a device, which then connects and sends.
    let key = relay
        .enroll_with_code(&code.to_lowercase(), "anna.phone")
        .await;
    let devices = admin
        .list_devices(v1::ListDevicesRequest {
            account_id: "anna".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].device_id, "anna.phone");
    let c = relay.client("anna.phone", &key).await;
    c.close().await;

    // Used once only; unknown codes alike; bad keys and ids are refused.
    let mut enroll = relay.enrollment().await;
    let req = |code: &str, device: &str, key: Vec<u8>| v1::EnrollRequest {
        code: code.into(),
        device_id: device.into(),
        public_key: key,
    };
    let good_key = herold_client::generate_key()
        .unwrap()
        .verifying_key()
        .to_bytes()
        .to_vec();
    assert_status(
        enroll
            .enroll(req(&code, "anna.tablet", good_key.clone()))
            .await,
        Code::Unauthenticated,
        "the enrollment code is not valid",
    );
    assert_status(
        enroll
            .enroll(req("AAAA-BBBB-CCCC", "anna.tablet", good_key.clone()))
            .await,
        Code::Unauthenticated,
        "not valid",
    );
    let fresh = admin
        .issue_enrollment_codes(issue(&["anna"]))
        .await
        .unwrap()
        .into_inner()
        .codes;
    assert_status(
        enroll
            .enroll(req(&fresh[0].code, "anna.tablet", vec![0; 8]))
            .await,
        Code::InvalidArgument,
        "public_key must be a 32-byte Ed25519 key",
    );
    assert_status(
        enroll
            .enroll(req(&fresh[0].code, "bad id!", good_key.clone()))
            .await,
        Code::InvalidArgument,
        "device id",
    );
    assert_status(
        admin
            .issue_enrollment_codes(v1::IssueEnrollmentCodesRequest {
                ttl_seconds: 90 * 86_400,
                ..issue(&["anna"])
            })
            .await,
        Code::InvalidArgument,
        "above the maximum",
    );
    assert_status(
        admin.issue_enrollment_codes(issue(&["nobody"])).await,
        Code::NotFound,
        "no account \"nobody\"",
    );

    // The organisation's device limit: one device per account.
    admin
        .set_policy(v1::SetPolicyRequest {
            conversation_id: String::new(),
            policy: Some(v1::Policy {
                max_devices: Some(1),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    assert_status(
        enroll
            .enroll(req(&fresh[0].code, "anna.tablet", good_key.clone()))
            .await,
        Code::FailedPrecondition,
        "already has 1 devices, the limit",
    );
    // Refused devices leave the code valid: raise the limit and use it.
    admin
        .set_policy(v1::SetPolicyRequest {
            conversation_id: String::new(),
            policy: Some(v1::Policy {
                max_devices: Some(2),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let d = enroll
        .enroll(req(&fresh[0].code, "anna.tablet", good_key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.account_id, "anna");

    // A revoked enrolled device is cut off within 2 s and refused.
    let mut c = relay.client("anna.phone", &key).await;
    admin
        .revoke_device(v1::RevokeDeviceRequest {
            device_id: "anna.phone".into(),
        })
        .await
        .unwrap();
    let e = next_stop(&mut c, Duration::from_secs(2)).await;
    assert_eq!(e.code(), Some(ErrorCode::DeviceRevoked), "{e}");
    let mut raw = herold_client::raw::RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    let err = raw.authenticate("anna.phone", &key).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DeviceRevoked), "{err}");

    // Enrollment is in the audit log, with the device as the actor.
    let log = admin
        .list_audit_log(v1::ListAuditLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        log.entries.iter().any(|e| e.action == "Enroll"
            && e.operator == "device:anna.phone"
            && e.outcome == "ok")
    );
    assert!(
        log.entries
            .iter()
            .any(|e| e.action == "Enroll" && e.outcome == "Unauthenticated")
    );
    relay.stop().await;
}

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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn import(
    admin: &mut TokenAdmin,
    rows: Vec<v1::RosterRow>,
    channels: &[&str],
) -> v1::ImportRosterResponse {
    let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
    roster::import_in_batches(
        rows,
        1000,
        |rows| {
            let mut a = admin.clone();
            let req = v1::ImportRosterRequest {
                rows,
                channels: channels.clone(),
                group_prefix: String::new(),
                code_ttl_seconds: 0,
            };
            async move { a.import_roster(req).await.map(tonic::Response::into_inner) }
        },
        |_| {},
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_import_reports_bad_rows_is_idempotent_and_cohort_delete_cuts_off() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_operators(dir.path()).await;
    let mut admin = relay.admin_as(ORG).await;
    let mut csv = String::from("name,station,role,cohort\n");
    for i in 0..40 {
        csv.push_str(&format!(
            "Volunteer {i},Wahllokal {:02} Schule,{},wahl-2026\n",
            i % 4,
            if i < 4 { "admin" } else { "member" }
        ));
    }
    csv.push_str(",Wahllokal 01 Schule,member,wahl-2026\n"); // line 42: no name
    csv.push_str("Eve,Wahllokal 01 Schule,boss,wahl-2026\n"); // line 43: bad role
    csv.push_str("Volunteer 1,Wahllokal 01 Schule,member,wahl-2026\n"); // line 44: duplicate of line 3
    csv.push_str("Mallory,Wahllokal 02\n"); // line 45: too few fields
    csv.push_str("Zoe,***,member,wahl-2026\n"); // line 46: station without letters
    let parsed = roster::parse_csv(csv.as_bytes()).unwrap();
    assert_eq!(parsed.errors.len(), 1);
    assert_eq!(parsed.errors[0].line, 45);

    let r = import(
        &mut admin,
        parsed.rows.clone(),
        &["wahl-info", "wahl-aktuell"],
    )
    .await;
    assert_eq!(
        (r.created, r.unchanged, r.failed),
        (40, 0, 4),
        "{:?}",
        r.errors
    );
    assert_eq!(r.conversations_created, 4 + 2);
    assert_eq!(r.codes.len(), 40);
    let lines: Vec<(u32, &str)> = r
        .errors
        .iter()
        .map(|e| (e.line, e.reason.as_str()))
        .collect();
    assert_eq!(lines[0], (42, "name is empty"));
    assert_eq!(lines[1].0, 43);
    assert!(
        lines[1].1.contains("role \"boss\" is not one of"),
        "{lines:?}"
    );
    assert_eq!(lines[2].0, 44);
    assert!(
        lines[2].1.contains("the same volunteer as line 3"),
        "{lines:?}"
    );
    assert_eq!(lines[3].0, 46);
    assert!(lines[3].1.contains("has no letters or digits"), "{lines:?}");

    let g = admin
        .get_conversation(v1::GetConversationRequest {
            conversation_id: "station-wahllokal-01-schule".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (g.title.as_str(), g.members.len()),
        ("Wahllokal 01 Schule", 10)
    );
    assert_eq!(
        g.members
            .iter()
            .filter(|m| m.role == v1::Role::Admin as i32)
            .count(),
        1
    );
    for ch in ["wahl-info", "wahl-aktuell"] {
        let c = admin
            .get_conversation(v1::GetConversationRequest {
                conversation_id: ch.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (c.kind, c.member_count),
            (v1::ConversationKind::Channel as i32, 40)
        );
    }

    // A re-run changes nothing.
    let again = import(
        &mut admin,
        parsed.rows.clone(),
        &["wahl-info", "wahl-aktuell"],
    )
    .await;
    assert_eq!(
        (
            again.created,
            again.unchanged,
            again.failed,
            again.conversations_created,
            again.codes.len()
        ),
        (0, 40, 4, 0, 0)
    );

    // Volunteers enroll with their printed codes and connect.
    let mut clients = Vec::new();
    for (i, c) in r.codes.iter().take(3).enumerate() {
        let device = format!("{}.phone", c.account_id);
        let key = relay.enroll_with_code(&c.code, &device).await;
        assert!(!c.station.is_empty());
        clients.push((i, relay.client(&device, &key).await));
    }
    // Codes for those still without a device, for reprinting.
    let reprint = admin
        .issue_enrollment_codes(v1::IssueEnrollmentCodesRequest {
            account_ids: Vec::new(),
            tag: "wahl-2026".into(),
            ttl_seconds: 0,
            only_without_devices: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reprint.codes.len(), 37);

    // Bulk delete by cohort: every device cut off within 2 s.
    let dry = admin
        .delete_accounts(v1::DeleteAccountsRequest {
            tag: "wahl-2026".into(),
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.accounts_deleted, 40);
    let t = Instant::now();
    let del = admin
        .delete_accounts(v1::DeleteAccountsRequest {
            tag: "wahl-2026".into(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((del.accounts_deleted, del.devices_removed), (40, 3));
    for (_, c) in &mut clients {
        let e = next_stop(c, Duration::from_secs(2)).await;
        assert!(e.is_permanent(), "{e}");
    }
    assert!(t.elapsed() < Duration::from_secs(4));
    let left = admin
        .list_accounts(v1::ListAccountsRequest {
            tag: "wahl-2026".into(),
            page_token: String::new(),
            page_size: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(left.accounts.is_empty());
    let c = admin
        .get_conversation(v1::GetConversationRequest {
            conversation_id: "wahl-info".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.member_count, 0);
    relay.stop().await;
}

/// The election: 7,000 generated volunteers in 618 polling stations, then
/// the same roster again, which changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_of_7000_volunteers_in_618_stations_imports_and_reimports_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", relay.admin_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = herold_client::admin::AdminClient::with_interceptor(channel, Bearer(None));
    let text = roster::generate(7000, 618, "election-2026", 1);
    let parsed = roster::parse_csv(text.as_bytes()).unwrap();
    assert_eq!(parsed.rows.len(), 7000);
    let t = Instant::now();
    let r = import(
        &mut admin,
        parsed.rows.clone(),
        &["election-info", "election-urgent"],
    )
    .await;
    let first = t.elapsed();
    assert_eq!(
        (r.created, r.unchanged, r.failed),
        (7000, 0, 0),
        "{:?}",
        r.errors.first()
    );
    assert_eq!(r.conversations_created, 618 + 2);
    assert_eq!(r.codes.len(), 7000);
    let t = Instant::now();
    let again = import(
        &mut admin,
        parsed.rows,
        &["election-info", "election-urgent"],
    )
    .await;
    let second = t.elapsed();
    assert_eq!(
        (
            again.created,
            again.unchanged,
            again.failed,
            again.codes.len()
        ),
        (0, 7000, 0, 0)
    );
    let info = admin
        .get_conversation(v1::GetConversationRequest {
            conversation_id: "election-info".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.member_count, 7000);
    let mut stations = 0;
    let mut token = String::new();
    loop {
        let page = admin
            .list_conversations(v1::ListConversationsRequest {
                page_token: token,
                page_size: 1000,
            })
            .await
            .unwrap()
            .into_inner();
        stations += page
            .conversations
            .iter()
            .filter(|c| c.kind == v1::ConversationKind::Group as i32)
            .count();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(stations, 618);
    eprintln!("import of 7000 rows (debug build): first {first:?}, re-run {second:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_standard_tools() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_operators(dir.path()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", relay.admin_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // No operator token needed for health (grpc_health_probe has none).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "herold.v1.Admin", "herold.v1.Enrollment"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    assert_status(
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "nope".into(),
            })
            .await,
        Code::NotFound,
        "",
    );
    // Reflection lists the services, as `grpcurl list` does.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(futures_util::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "herold.v1.Admin",
        "herold.v1.Enrollment",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == s), "{names:?}");
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_over_tls_with_client_certificates() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["it-ops.example".to_owned()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_pem = write("ca.pem", ca_cert.pem());
    let mut config = Config::dev(dir.path().join("data"));
    config.admin_tls = Some(herold_relay::config::AdminTls {
        cert: write("server.pem", server_cert.pem()),
        key: write("server.key", server_key.serialize_pem()),
        client_ca: Some(ca_pem.clone()),
    });
    config.admin_operators = vec![
        herold_relay::operators::OperatorEntry {
            name: "cert-ops".into(),
            role: OperatorRole::OrgAdmin,
            token: None,
            cert_sha256: Some(herold_relay::fingerprint(client_cert.der())),
            groups: Vec::new(),
        },
        herold_relay::operators::OperatorEntry {
            name: "token-audit".into(),
            role: OperatorRole::Auditor,
            token: Some(AUDIT.into()),
            cert_sha256: None,
            groups: Vec::new(),
        },
    ];
    let relay = TestRelay::start_with(config).await;
    let url = format!("https://{}", relay.admin_addr);
    let tls = |identity: bool| {
        let mut t = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_cert.pem()))
            .domain_name("localhost");
        if identity {
            t = t.identity(tonic::transport::Identity::from_pem(
                client_cert.pem(),
                client_key.serialize_pem(),
            ));
        }
        t
    };
    // The client certificate identifies the operator.
    let ch = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(tls(true))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut a = herold_client::admin::AdminClient::new(ch);
    let me = a.who_am_i(v1::WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (me.name.as_str(), me.role),
        ("cert-ops", v1::OperatorRole::OrgAdmin as i32)
    );
    a.create_account(acc("anna", &[])).await.unwrap();
    // Without a certificate, a token still works, over TLS.
    let ch = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(tls(false))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut t = herold_client::admin::AdminClient::with_interceptor(
        ch.clone(),
        Bearer(Some(format!("Bearer {AUDIT}").parse().unwrap())),
    );
    assert_eq!(
        t.who_am_i(v1::WhoAmIRequest {})
            .await
            .unwrap()
            .into_inner()
            .name,
        "token-audit"
    );
    // Neither: refused.
    let mut none = herold_client::admin::AdminClient::new(ch);
    assert_status(
        none.who_am_i(v1::WhoAmIRequest {}).await,
        Code::Unauthenticated,
        "missing authorization",
    );
    // Plain HTTP/2 to the TLS port does not get through.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", relay.admin_addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let r = herold_client::admin::AdminClient::with_interceptor(
            ch,
            Bearer(Some(format!("Bearer {AUDIT}").parse().unwrap())),
        )
        .who_am_i(v1::WhoAmIRequest {})
        .await;
        assert!(r.is_err(), "plain HTTP/2 was answered: {r:?}");
    }
    relay.stop().await;
}
