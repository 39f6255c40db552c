//! Accounts, devices and enrollment codes.

use super::*;

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

/// A revocation, deletion or suspension the store applied but answered with
/// an error (a lost answer, as a timeout after the write) still cuts the
/// devices off: the operator sees the error, and the lost phone stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_whose_answer_is_lost_still_cuts_off() {
    use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};
    use herold_store::unreliable::Unreliable;
    let dir = tempfile::tempdir().unwrap();
    let embedded =
        EmbeddedStore::open(dir.path().join("store"), EmbeddedConfig::default()).unwrap();
    let store = std::sync::Arc::new(Unreliable::new(std::sync::Arc::new(embedded)));
    let router = std::sync::Arc::new(herold_router::memory::MemoryRouter::default());
    let relay = TestRelay::start_on(Config::dev(dir.path()), store.clone(), router).await;
    let mut admin = relay.admin().await;
    let cases: [(&str, &str); 3] = [
        ("revoke_device", "lost"),
        ("delete_account", "gone"),
        ("set_account_state", "paused"),
    ];
    for (op, who) in cases {
        relay.account(who).await;
        let device = format!("{who}.phone");
        let key = relay.device(who, &device).await;
        let mut phone = relay.client(&device, &key).await;
        store.fail_after_applying(&[op]);
        let status = match op {
            "revoke_device" => admin
                .revoke_device(v1::RevokeDeviceRequest {
                    device_id: device.clone(),
                })
                .await
                .map(|_| ()),
            "delete_account" => admin
                .delete_account(v1::DeleteAccountRequest {
                    account_id: who.into(),
                })
                .await
                .map(|_| ()),
            _ => admin
                .suspend_account(v1::SuspendAccountRequest {
                    account_id: who.into(),
                    suspended: true,
                })
                .await
                .map(|_| ()),
        }
        .expect_err("the operator is told the store failed");
        assert_eq!(status.code(), Code::Unavailable, "{op}: {status:?}");
        store.fail_after_applying(&[]);
        let stopped = next_stop(&mut phone, Duration::from_secs(5)).await;
        assert_eq!(
            stopped.code(),
            Some(ErrorCode::DeviceRevoked),
            "{op}: {stopped}"
        );
    }
    relay.stop().await;
}

/// One valid code per account: a new code voids the earlier ones (a
/// reprinted letter replaces a lost one), and an operator can void them all
/// (a letter went astray) before issuing a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_code_voids_the_old_one_and_codes_can_be_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let mut admin = relay.admin().await;
    admin.create_account(acc("anna", &[])).await.unwrap();
    let lost = relay.issue_code("anna").await;
    let reprinted = relay.issue_code("anna").await;
    let mut enroll = relay.enrollment().await;
    let mut try_code = async |code: &str, device: &str| {
        let key = herold_client::generate_key().unwrap();
        enroll
            .enroll(v1::EnrollRequest {
                code: code.into(),
                device_id: device.into(),
                public_key: key.verifying_key().to_bytes().to_vec(),
            })
            .await
            .map(|d| d.into_inner().account_id)
    };
    assert_status(
        try_code(&lost, "anna.phone").await,
        Code::Unauthenticated,
        "not valid",
    );
    assert_eq!(try_code(&reprinted, "anna.phone").await.unwrap(), "anna");

    let astray = relay.issue_code("anna").await;
    admin
        .revoke_enrollment_codes(v1::RevokeEnrollmentCodesRequest {
            account_id: "anna".into(),
        })
        .await
        .unwrap();
    assert_status(
        try_code(&astray, "anna.tablet").await,
        Code::Unauthenticated,
        "not valid",
    );
    let fresh = relay.issue_code("anna").await;
    assert_eq!(try_code(&fresh, "anna.tablet").await.unwrap(), "anna");
    assert_status(
        admin
            .revoke_enrollment_codes(v1::RevokeEnrollmentCodesRequest {
                account_id: "nobody".into(),
            })
            .await,
        Code::NotFound,
        "no account",
    );
    relay.stop().await;
}
