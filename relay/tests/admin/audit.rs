//! The audit log is not best effort: a change is recorded before it is
//! made (or not made), and failed operator authentications are recorded.

use std::sync::Arc;

use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};
use herold_store::unreliable::Unreliable;

use super::*;

async fn audited_relay(dir: &std::path::Path) -> (TestRelay, Arc<Unreliable<EmbeddedStore>>) {
    let embedded = EmbeddedStore::open(dir.join("store"), EmbeddedConfig::default()).unwrap();
    let store = Arc::new(Unreliable::new(Arc::new(embedded)));
    let mut config = Config::dev(dir);
    config.admin_operators = vec![herold_relay::operators::OperatorEntry {
        name: "it-ops".into(),
        role: OperatorRole::OrgAdmin,
        token: Some(ORG.into()),
        cert_sha256: None,
        groups: Vec::new(),
    }];
    let router = Arc::new(herold_router::memory::MemoryRouter::default());
    let relay = TestRelay::start_on(config, store.clone(), router).await;
    (relay, store)
}

async fn log_of(admin: &mut TokenAdmin) -> Vec<v1::AuditEntry> {
    admin
        .list_audit_log(v1::ListAuditLogRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
}

/// While the audit log cannot be written, a change is refused UNAVAILABLE
/// and not made; once it can, the change has a `started` row before it
/// and its outcome after. Reads go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_is_made_that_the_audit_log_does_not_record() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, store) = audited_relay(dir.path()).await;
    let mut admin = relay.admin_as(ORG).await;
    store.fail_before_applying(&["append_audit"]);
    assert_status(
        admin.create_account(acc("anna", &[])).await,
        Code::Unavailable,
        "the audit log cannot be written",
    );
    // A read is not refused for it.
    admin
        .list_accounts(v1::ListAccountsRequest::default())
        .await
        .unwrap();
    store.fail_before_applying(&[]);
    assert_status(
        admin
            .get_account(v1::GetAccountRequest {
                account_id: "anna".into(),
            })
            .await,
        Code::NotFound,
        "anna",
    );
    admin.create_account(acc("anna", &[])).await.unwrap();
    let rows: Vec<(String, String)> = log_of(&mut admin)
        .await
        .into_iter()
        .filter(|e| e.action == "CreateAccount" && e.target == "anna")
        .map(|e| (e.operator, e.outcome))
        .collect();
    // Newest first.
    assert_eq!(
        rows,
        [("it-ops", "ok"), ("it-ops", "started")].map(|(o, x)| (o.to_owned(), x.to_owned()))
    );
    relay.stop().await;
}

/// Calls with an unknown or malformed token are recorded: the first at
/// once, the following counted into one row every 10 s at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_operator_authentications_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _store) = audited_relay(dir.path()).await;
    let mut stranger = relay.admin_as("not-a-token-of-anyone-here").await;
    for _ in 0..3 {
        assert_eq!(
            stranger
                .who_am_i(v1::WhoAmIRequest::default())
                .await
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
    }
    let mut admin = relay.admin_as(ORG).await;
    let deadline = Instant::now() + DEADLINE;
    let mut counted = 0;
    while counted < 3 {
        assert!(
            Instant::now() < deadline,
            "{counted} of 3 failures recorded"
        );
        counted = log_of(&mut admin)
            .await
            .iter()
            .filter(|e| e.action == "Authenticate" && e.operator == "unauthenticated")
            .map(|e| {
                assert_eq!(e.outcome, "Unauthenticated");
                let n = e.detail.split(' ').next().unwrap();
                n.parse::<u32>().unwrap()
            })
            .sum();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, 3);
    relay.stop().await;
}
