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

/// Every page of the audit log.
async fn whole_log(admin: &mut TokenAdmin) -> Vec<v1::AuditEntry> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = admin
            .list_audit_log(v1::ListAuditLogRequest {
                page_token: page_token.clone(),
                page_size: 1000,
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(r.entries);
        if r.next_page_token.is_empty() {
            return out;
        }
        page_token = r.next_page_token;
    }
}

/// Changes the embedded store's file with redb itself, as someone with
/// access to the disk could: `edit` gets each audit row's key and value and
/// returns the new value, or `None` to delete the row.
fn edit_audit_rows(
    dir: &std::path::Path,
    edit: impl Fn(i64, &str, &[u8]) -> Option<Option<Vec<u8>>>,
) {
    use redb::ReadableTable as _;
    let table = redb::TableDefinition::<(i64, &str), &[u8]>::new("audit");
    let db =
        redb::Database::open(dir.join("store").join(herold_store::embedded::DB_FILE_NAME)).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut t = w.open_table(table).unwrap();
        let rows: Vec<((i64, String), Vec<u8>)> = t
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                let (at, id) = k.value();
                ((at, id.to_owned()), v.value().to_vec())
            })
            .collect();
        for ((at, id), v) in rows {
            match edit(at, &id, &v) {
                Some(Some(new)) => {
                    t.insert((at, id.as_str()), new.as_slice()).unwrap();
                }
                Some(None) => {
                    t.remove((at, id.as_str())).unwrap();
                }
                None => {}
            }
        }
    }
    w.commit().unwrap();
}

/// The audit log is a hash chain that the operator's side verifies. An
/// entry deleted from the store's file, or edited there, breaks the chain
/// at exactly that entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_entry_edited_or_deleted_in_the_store_breaks_the_chain_there() {
    use herold_client::admin::verify_audit_log;
    use herold_proto::audit::Break;
    let dir = tempfile::tempdir().unwrap();
    let (relay, store) = audited_relay(dir.path()).await;
    let mut admin = relay.admin_as(ORG).await;
    for name in ["ann", "ben", "cas"] {
        admin.create_account(acc(name, &[])).await.unwrap();
    }
    let entries = whole_log(&mut admin).await;
    let none = std::collections::BTreeMap::new();
    let check = verify_audit_log(&entries, &none).unwrap();
    assert_eq!(check.heads.len(), 1, "one relay, one chain");
    let (chain, head) = check.heads.iter().next().unwrap();
    assert_eq!((head.first, check.unchained), (1, 0));
    assert_eq!(check.chained, entries.len());
    let chain = chain.clone();
    let row_of = |target: &str| {
        entries
            .iter()
            .find(|e| e.target == target && e.outcome == "ok")
            .unwrap()
            .clone()
    };
    let (ben, cas) = (row_of("ben"), row_of("cas"));
    assert!(ben.chain_seq < cas.chain_seq);
    drop(admin);
    relay.stop().await;
    drop(store);

    // cas's creation deleted from the file.
    edit_audit_rows(dir.path(), |at, id, _| {
        (at == cas.at_ms && id == cas.id).then_some(None)
    });
    let (relay, store) = audited_relay(dir.path()).await;
    let mut admin = relay.admin_as(ORG).await;
    let broken = verify_audit_log(&whole_log(&mut admin).await, &none).unwrap_err();
    assert_eq!(broken.chain, chain);
    assert_eq!(
        broken.why,
        Break::Missing {
            from: cas.chain_seq,
            to: cas.chain_seq
        }
    );
    drop(admin);
    relay.stop().await;
    drop(store);

    // ben's creation made out to another account: same length, so only
    // the hash can tell.
    edit_audit_rows(dir.path(), |at, id, v| {
        (at == ben.at_ms && id == ben.id).then(|| {
            let at = v.windows(3).position(|w| w == b"ben").unwrap();
            let mut new = v.to_vec();
            new[at..at + 3].copy_from_slice(b"bob");
            Some(new)
        })
    });
    let (relay, _store) = audited_relay(dir.path()).await;
    let mut admin = relay.admin_as(ORG).await;
    let log = whole_log(&mut admin).await;
    assert!(log.iter().any(|e| e.target == "bob" && e.id == ben.id));
    assert_eq!(
        verify_audit_log(&log, &none).map_err(|b| b.why),
        Err(Break::Altered { seq: ben.chain_seq })
    );
    relay.stop().await;
}
