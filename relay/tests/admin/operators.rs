//! Operators: authentication and authorisation by role, the admin API over TLS, health and reflection.

use super::*;

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

/// Reads follow the role too: a group admin reads its groups and the
/// accounts and devices of their members, nothing else (not even whether
/// something else exists); the auditor, who reads the ids in the audit
/// log, reads the whole directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_admin_reads_only_its_groups_and_their_members() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_operators(dir.path()).await;
    let mut org = relay.admin_as(ORG).await;
    let mut lead = relay.admin_as(LEAD).await;
    let mut auditor = relay.admin_as(AUDIT).await;
    for (id, tags) in [
        ("anna", &["helper"][..]),
        ("ben", &[][..]),
        ("zoe", &["helper"][..]),
    ] {
        org.create_account(acc(id, tags)).await.unwrap();
    }
    org.create_conversation(group(
        "station-17",
        v1::ConversationKind::Group,
        vec![
            member("anna", v1::Role::Admin),
            member("ben", v1::Role::Member),
        ],
    ))
    .await
    .unwrap();
    org.create_conversation(group(
        "station-18",
        v1::ConversationKind::Group,
        vec![member("zoe", v1::Role::Member)],
    ))
    .await
    .unwrap();

    let get = |id: &str| v1::GetAccountRequest {
        account_id: id.into(),
    };
    lead.get_account(get("anna")).await.unwrap();
    for id in ["zoe", "nobody"] {
        assert_status(
            lead.get_account(get(id)).await,
            Code::PermissionDenied,
            "reads only the members of station-17",
        );
    }
    assert_status(
        lead.list_devices(v1::ListDevicesRequest {
            account_id: "zoe".into(),
        })
        .await,
        Code::PermissionDenied,
        "reads only the members of station-17",
    );
    let ids = |r: v1::ListAccountsResponse| -> Vec<String> {
        r.accounts.into_iter().map(|a| a.account_id).collect()
    };
    let all = v1::ListAccountsRequest {
        tag: String::new(),
        page_token: String::new(),
        page_size: 100,
    };
    let mine = lead.list_accounts(all.clone()).await.unwrap().into_inner();
    assert_eq!(ids(mine), ["anna", "ben"]);
    let helpers = v1::ListAccountsRequest {
        tag: "helper".into(),
        ..all.clone()
    };
    assert_eq!(
        ids(lead.list_accounts(helpers).await.unwrap().into_inner()),
        ["anna"]
    );
    // Paged like everyone's.
    let p1 = lead
        .list_accounts(v1::ListAccountsRequest {
            page_size: 1,
            ..all.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.next_page_token, "anna");
    let p2 = lead
        .list_accounts(v1::ListAccountsRequest {
            page_size: 1,
            page_token: p1.next_page_token.clone(),
            ..all.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(p2), ["ben"]);

    lead.get_conversation(v1::GetConversationRequest {
        conversation_id: "station-17".into(),
    })
    .await
    .unwrap();
    assert_status(
        lead.get_conversation(v1::GetConversationRequest {
            conversation_id: "station-18".into(),
        })
        .await,
        Code::PermissionDenied,
        "manages only station-17",
    );
    let convs = lead
        .list_conversations(v1::ListConversationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = convs
        .conversations
        .into_iter()
        .map(|c| c.conversation_id)
        .collect();
    assert_eq!(names, ["station-17"]);

    // The auditor reads everyone.
    let everyone = auditor.list_accounts(all).await.unwrap().into_inner();
    assert_eq!(ids(everyone), ["anna", "ben", "zoe"]);
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
