//! Link codes (docs/web.md, "Linking a browser"): a device asks the relay
//! for a one-time enrollment code for its own account and shows it; another
//! device (a browser, a new phone) enrolls with it into that account once.
//! Issuing is rate limited per account and audited without the code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use herold_client::ClientError;
use herold_proto::v1::{self, ErrorCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_links_another_device_of_its_own_account_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("anna").await;
    relay.account("bert").await;
    let phone = relay.device("anna", "anna.phone").await;
    let client = relay.client("anna.phone", &phone).await;

    let before = herold_client::rt::now_ms();
    let link = client.sender().issue_link_code().await.unwrap();
    assert_eq!(link.code.len(), 14, "{}", link.code);
    let ttl = link.expires_at_ms - before;
    assert!(
        (9 * 60_000..=10 * 60_000 + 5_000).contains(&ttl),
        "valid for {ttl} ms"
    );

    // The code enrolls a device into anna's account, which connects.
    let desk = relay.enroll_with_code(&link.code, "anna.desk").await;
    let devices = relay
        .admin()
        .await
        .list_devices(v1::ListDevicesRequest {
            account_id: "anna".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .devices;
    let ids: Vec<_> = devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, ["anna.desk", "anna.phone"]);
    relay.client("anna.desk", &desk).await.close().await;

    // Once only.
    let again = relay
        .enrollment()
        .await
        .enroll(v1::EnrollRequest {
            code: link.code.clone(),
            device_id: "anna.tablet".into(),
            public_key: herold_client::generate_key()
                .unwrap()
                .verifying_key()
                .to_bytes()
                .to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unauthenticated, "{again:?}");

    // Audited: which device asked for which account, never the code.
    let audit = relay
        .admin()
        .await
        .list_audit_log(v1::ListAuditLogRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let issued: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "IssueLinkCode")
        .collect();
    assert_eq!(issued.len(), 1, "{audit:?}");
    assert_eq!(issued[0].operator, "device:anna.phone");
    assert_eq!(issued[0].target, "anna");
    let plain = link.code.replace('-', "");
    assert!(
        !audit
            .iter()
            .any(|e| e.detail.contains(&link.code) || e.detail.contains(&plain)),
        "the code is not in the audit log"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_codes_are_limited_per_account() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    relay.account("anna").await;
    let phone = relay.device("anna", "anna.phone").await;
    let laptop = relay.device("anna", "anna.laptop").await;
    relay.account("bert").await;
    let bert = relay.device("bert", "bert.phone").await;
    let phone = relay.client("anna.phone", &phone).await;
    let laptop = relay.client("anna.laptop", &laptop).await;

    // Three at once per account, whichever of its devices asks.
    for c in [&phone, &laptop, &phone] {
        c.sender().issue_link_code().await.unwrap();
    }
    match laptop.sender().issue_link_code().await {
        Err(ClientError::Relay {
            code,
            retry_after_ms,
            message,
            ..
        }) => {
            assert_eq!(code, ErrorCode::RateLimited);
            assert!(retry_after_ms > 0, "says when to retry");
            assert!(message.contains("link codes per account"), "{message}");
        }
        other => panic!("a fourth code at once: {other:?}"),
    }
    // Another account is not held back.
    let bert = relay.client("bert.phone", &bert).await;
    bert.sender().issue_link_code().await.unwrap();
    for c in [phone, laptop, bert] {
        c.close().await;
    }
}
