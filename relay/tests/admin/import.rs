//! Roster import and cohort deletion.

use super::*;

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
