//! Conformance cases: Operator state: tags, suspension, listings, policies, enrollment codes, the audit log.

use super::*;

// ---------------------------------------------------------------------------
// operator state: tags, suspension, listing

/// Tags and suspension read back (tags sorted, deduplicated); an unknown
/// account has no state and cannot get one.
pub async fn account_state_roundtrip(store: Arc<dyn Store>) {
    let ids = Ids::new("account-state");
    let alice = ids.id("alice");
    new_account(&*store, &alice).await;
    assert_eq!(
        store.account_state(&alice).await.unwrap(),
        Some(AccountState::default())
    );
    let tag_b = ids.id("tag-b");
    let tag_a = ids.id("tag-a");
    store
        .set_account_state(
            &alice,
            AccountState {
                tags: vec![tag_b.clone(), tag_a.clone(), tag_b.clone()],
                suspended: true,
                codes_valid_from_ms: NOW,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.account_state(&alice).await.unwrap(),
        Some(AccountState {
            tags: vec![tag_a.clone(), tag_b.clone()],
            suspended: true,
            codes_valid_from_ms: NOW,
        })
    );
    // Dropping a tag removes the account from its listing.
    store
        .set_account_state(
            &alice,
            AccountState {
                tags: vec![tag_a.clone()],
                suspended: false,
                codes_valid_from_ms: 0,
            },
        )
        .await
        .unwrap();
    let page = store.list_accounts(Some(&tag_b), None, 10).await.unwrap();
    assert!(page.items.is_empty(), "{page:?}");
    let page = store.list_accounts(Some(&tag_a), None, 10).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(store.account_state(&ids.id("nobody")).await.unwrap(), None);
    assert_err!(
        store
            .set_account_state(&ids.id("nobody"), AccountState::default())
            .await,
        StoreError::NoSuchAccount(_)
    );
}

/// Listing by tag pages through exactly the tagged accounts, in id order;
/// the unfiltered listing pages without repeating; deleting an account takes
/// it out of its tags.
pub async fn account_list_by_tag(store: Arc<dyn Store>) {
    let ids = Ids::new("account-list");
    let cohort = ids.id("cohort");
    let mut tagged = Vec::new();
    for i in 0..5 {
        let a = ids.id(&format!("a{i}"));
        new_account(&*store, &a).await;
        if i != 2 {
            store
                .set_account_state(
                    &a,
                    AccountState {
                        tags: vec![cohort.clone()],
                        ..AccountState::default()
                    },
                )
                .await
                .unwrap();
            tagged.push(a);
        }
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page = store
            .list_accounts(Some(&cohort), after.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|a| a.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, tagged);
    // Unfiltered: two pages of one are different accounts.
    let p1 = store.list_accounts(None, None, 1).await.unwrap();
    assert_eq!(p1.items.len(), 1);
    let next = p1.next.clone().expect("more than one account exists");
    let p2 = store.list_accounts(None, Some(&next), 1).await.unwrap();
    assert_eq!(p2.items.len(), 1);
    assert_ne!(p1.items[0].id, p2.items[0].id);
    // Deleting purges the tag index and the state.
    store.delete_account(&tagged[0]).await.unwrap();
    assert_eq!(store.account_state(&tagged[0]).await.unwrap(), None);
    let page = store.list_accounts(Some(&cohort), None, 10).await.unwrap();
    let left: Vec<String> = page.items.into_iter().map(|a| a.id).collect();
    assert_eq!(left, tagged[1..].to_vec());
    // A re-created account does not inherit the old tags.
    new_account(&*store, &tagged[0]).await;
    assert_eq!(
        store.account_state(&tagged[0]).await.unwrap(),
        Some(AccountState::default())
    );
}

/// Rename and archive; unknown conversations are refused; listing pages.
pub async fn conversation_update_archive(store: Arc<dyn Store>) {
    let ids = Ids::new("conv-update");
    let (alice, conv) = (ids.id("alice"), ids.id("group"));
    group_with(&*store, &conv, &[&alice]).await;
    assert!(!store.conversation_archived(&conv).await.unwrap());
    store
        .update_conversation(&conv, Some("Wahllokal 17".into()), None)
        .await
        .unwrap();
    let c = store.get_conversation(&conv).await.unwrap().unwrap();
    assert_eq!(c.title, "Wahllokal 17");
    assert!(!store.conversation_archived(&conv).await.unwrap());
    store
        .update_conversation(&conv, None, Some(true))
        .await
        .unwrap();
    assert!(store.conversation_archived(&conv).await.unwrap());
    let c = store.get_conversation(&conv).await.unwrap().unwrap();
    assert_eq!(c.title, "Wahllokal 17");
    store
        .update_conversation(&conv, None, Some(false))
        .await
        .unwrap();
    assert!(!store.conversation_archived(&conv).await.unwrap());
    assert!(
        !store
            .conversation_archived(&ids.id("nothing"))
            .await
            .unwrap()
    );
    assert_err!(
        store
            .update_conversation(&ids.id("nothing"), Some("x".into()), None)
            .await,
        StoreError::NoSuchConversation(_)
    );
    let p = store.list_conversations(None, 1).await.unwrap();
    assert_eq!(p.items.len(), 1);
    let p2 = store
        .list_conversations(p.next.as_deref(), 1)
        .await
        .unwrap();
    if let Some(c2) = p2.items.first() {
        assert_ne!(c2.id, p.items[0].id);
    }
}

/// Policies read back per scope; a conversation scope must exist.
pub async fn policy_put_get(store: Arc<dyn Store>) {
    let ids = Ids::new("policy");
    let (alice, conv) = (ids.id("alice"), ids.id("group"));
    group_with(&*store, &conv, &[&alice]).await;
    let scope = PolicyScope::Conversation(conv.clone());
    assert_eq!(store.get_policy(scope.clone()).await.unwrap(), None);
    let p = Policy {
        default_expiry_seconds: Some(86_400),
        max_expiry_seconds: Some(7 * 86_400),
        max_devices: None,
        max_attachment_bytes: Some(1 << 20),
        direct_chats: Some(DirectChats::SharedGroup),
        sealed_sender: Some(true),
    };
    store.put_policy(scope.clone(), p.clone()).await.unwrap();
    assert_eq!(store.get_policy(scope.clone()).await.unwrap(), Some(p));
    let q = Policy {
        direct_chats: Some(DirectChats::Nobody),
        sealed_sender: Some(false),
        ..Policy::default()
    };
    store.put_policy(scope.clone(), q.clone()).await.unwrap();
    assert_eq!(store.get_policy(scope).await.unwrap(), Some(q));
    assert_err!(
        store
            .put_policy(
                PolicyScope::Conversation(ids.id("nothing")),
                Policy::default()
            )
            .await,
        StoreError::NoSuchConversation(_)
    );
}

pub(super) fn code(hash: &str, account: &Account, expires_at_ms: UnixMillis) -> EnrollmentCode {
    EnrollmentCode {
        code_hash: hash.as_bytes().to_vec(),
        account_id: account.id.clone(),
        account_created_at_ms: account.created_at_ms,
        created_at_ms: NOW,
        expires_at_ms,
    }
}

/// A code enrolls one device, once; expired, unknown and orphaned codes are
/// refused alike; a refused device leaves the code valid.
pub async fn enrollment_code_single_use(store: Arc<dyn Store>) {
    let ids = Ids::new("enroll");
    let alice = account(&ids.id("alice"));
    store.create_account(alice.clone()).await.unwrap();
    let h1 = ids.id("code-1");
    store
        .create_enrollment_code(code(&h1, &alice, NOW + 60_000))
        .await
        .unwrap();
    let d = store
        .redeem_enrollment_code(h1.as_bytes(), device(&ids.id("phone"), "ignored"), NOW, 10)
        .await
        .unwrap();
    assert_eq!(d.account_id, alice.id);
    assert_eq!(
        store.get_device(&d.id).await.unwrap().unwrap().account_id,
        alice.id
    );
    assert_err!(
        store
            .redeem_enrollment_code(h1.as_bytes(), device(&ids.id("again"), ""), NOW, 10)
            .await,
        StoreError::NoSuchCode
    );
    // Expired.
    let h2 = ids.id("code-2");
    store
        .create_enrollment_code(code(&h2, &alice, NOW + 60_000))
        .await
        .unwrap();
    assert_err!(
        store
            .redeem_enrollment_code(h2.as_bytes(), device(&ids.id("late"), ""), NOW + 60_000, 10)
            .await,
        StoreError::NoSuchCode
    );
    // Unknown.
    assert_err!(
        store
            .redeem_enrollment_code(b"no such code", device(&ids.id("x"), ""), NOW, 10)
            .await,
        StoreError::NoSuchCode
    );
    // Device limit: refused, the code stays valid.
    let h3 = ids.id("code-3");
    store
        .create_enrollment_code(code(&h3, &alice, NOW + 60_000))
        .await
        .unwrap();
    assert_err!(
        store
            .redeem_enrollment_code(h3.as_bytes(), device(&ids.id("tablet"), ""), NOW, 1)
            .await,
        StoreError::DeviceLimit { .. }
    );
    store
        .redeem_enrollment_code(h3.as_bytes(), device(&ids.id("tablet"), ""), NOW, 2)
        .await
        .unwrap();
    // A code of a deleted account is void, even for a new account of that id.
    let h4 = ids.id("code-4");
    store
        .create_enrollment_code(code(&h4, &alice, NOW + 60_000))
        .await
        .unwrap();
    store.delete_account(&alice.id).await.unwrap();
    let reborn = Account {
        created_at_ms: NOW + 1,
        ..alice.clone()
    };
    store.create_account(reborn).await.unwrap();
    assert_err!(
        store
            .redeem_enrollment_code(h4.as_bytes(), device(&ids.id("old"), ""), NOW, 10)
            .await,
        StoreError::NoSuchCode
    );
    assert_err!(
        store
            .create_enrollment_code(code(&h4, &account(&ids.id("nobody")), NOW + 1))
            .await,
        StoreError::NoSuchAccount(_)
    );
}

/// Codes issued before the account's `codes_valid_from_ms` are void (a
/// newer code or a revocation set it); codes issued at it or later work.
pub async fn enrollment_codes_voided_by_the_account(store: Arc<dyn Store>) {
    let ids = Ids::new("enroll-void");
    let anna = account(&ids.id("anna"));
    store.create_account(anna.clone()).await.unwrap();
    let issued_at = |hash: &str, at: UnixMillis| EnrollmentCode {
        created_at_ms: at,
        ..code(hash, &anna, NOW + 60_000)
    };
    let (old, new) = (ids.id("old"), ids.id("new"));
    store
        .create_enrollment_code(issued_at(&old, NOW - 10))
        .await
        .unwrap();
    store
        .create_enrollment_code(issued_at(&new, NOW))
        .await
        .unwrap();
    store
        .set_account_state(
            &anna.id,
            AccountState {
                codes_valid_from_ms: NOW,
                ..AccountState::default()
            },
        )
        .await
        .unwrap();
    assert_err!(
        store
            .redeem_enrollment_code(old.as_bytes(), device(&ids.id("phone"), ""), NOW, 10)
            .await,
        StoreError::NoSuchCode
    );
    store
        .redeem_enrollment_code(new.as_bytes(), device(&ids.id("phone"), ""), NOW, 10)
        .await
        .unwrap();
    // Revoked: everything issued so far is void.
    let later = ids.id("later");
    store
        .create_enrollment_code(issued_at(&later, NOW + 5))
        .await
        .unwrap();
    store
        .set_account_state(
            &anna.id,
            AccountState {
                codes_valid_from_ms: NOW + 6,
                ..AccountState::default()
            },
        )
        .await
        .unwrap();
    assert_err!(
        store
            .redeem_enrollment_code(later.as_bytes(), device(&ids.id("tablet"), ""), NOW, 10)
            .await,
        StoreError::NoSuchCode
    );
}

/// The audit log lists newest first, paged by (time, id), and every entry
/// is the next link of the hash chain, also when appended concurrently
/// (`herold_proto::audit::verify` accepts what the store wrote).
pub async fn audit_log_paging(store: Arc<dyn Store>) {
    let ids = Ids::new("audit");
    // A time window unique to this run (the log is global).
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let base = NOW + 1_000_000 + i64::try_from(nanos % 1_000_000_000).unwrap_or(0) * 10;
    let entry = |at_ms: i64, name: String, detail: String| AuditEntry {
        at_ms,
        id: ids.id(&name),
        operator: "ops".into(),
        action: "DeleteAccount".into(),
        target: ids.id("alice"),
        outcome: "ok".into(),
        detail,
        chain: ids.id("relay"),
        chain_seq: 0,
        hash: Vec::new(),
    };
    let mut written = Vec::new();
    for i in 0..5i64 {
        let e = entry(base + i / 2, format!("e{i}"), format!("n={i}"));
        store.append_audit(e.clone()).await.unwrap();
        written.push(e);
    }
    written.reverse();
    let key = |v: &[AuditEntry]| -> Vec<(i64, String, String)> {
        v.iter()
            .map(|e| (e.at_ms, e.id.clone(), e.detail.clone()))
            .collect()
    };
    let first = store.list_audit(base + 3, "", 3).await.unwrap();
    assert_eq!(key(&first), key(&written[..3]));
    let last = &first[2];
    let rest = store.list_audit(last.at_ms, &last.id, 2).await.unwrap();
    assert_eq!(key(&rest), key(&written[3..]));

    // Concurrent appends take consecutive places in the chain.
    let mut tasks = JoinSet::new();
    for i in 0..8i64 {
        let (store, e) = (
            Arc::clone(&store),
            entry(base + 10 + i, format!("c{i}"), format!("concurrent {i}")),
        );
        tasks.spawn(async move { store.append_audit(e).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let ours: Vec<AuditEntry> = store
        .list_audit(base + 100, "", 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.chain == ids.id("relay"))
        .collect();
    let mut seqs: Vec<u64> = ours.iter().map(|e| e.chain_seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=13).collect::<Vec<_>>(), "the chain of this run");
    let listed = ours
        .iter()
        .map(|e| herold_proto::audit::Listed {
            fields: e.chain_fields(e.chain_seq),
            hash: &e.hash,
        })
        .collect();
    let head = herold_proto::audit::verify(listed, None).unwrap();
    assert_eq!((head.first, head.seq), (1, 13));
    // One edited entry breaks the chain there.
    let mut edited = ours.clone();
    edited.sort_by_key(|e| e.chain_seq);
    let victim = 4;
    edited[victim].detail.push_str(" (edited)");
    let listed = edited
        .iter()
        .map(|e| herold_proto::audit::Listed {
            fields: e.chain_fields(e.chain_seq),
            hash: &e.hash,
        })
        .collect();
    assert_eq!(
        herold_proto::audit::verify(listed, None),
        Err(herold_proto::audit::Break::Altered {
            seq: edited[victim].chain_seq
        })
    );
}
