//! End-to-end encryption with MLS through a real relay over QUIC: the SDK
//! encrypts and decrypts, the relay orders handshakes and never sees
//! plaintext. See docs/e2e.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mls_net;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use herold_client::e2e::E2eClient;
use herold_mls::{MlsDevice, Processed};
use herold_proto::v1::{self, ConversationKind, ErrorCode};
use mls_net::*;

/// 1:1, a group of 50 devices (several per account) and a channel exchange
/// messages end to end encrypted; then the relay's storage and every byte it
/// sent or received on every connection are scanned for the plaintexts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_group_of_50_devices_and_channel_and_no_plaintext_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    // 20 accounts: the first 10 with 3 devices, the others with 2: 50.
    let accounts: Vec<String> = (0..20).map(|i| format!("acc{i}")).collect();
    let mut devices: Vec<String> = Vec::new();
    let mut clients: HashMap<String, E2eClient> = HashMap::new();
    for (i, a) in accounts.iter().enumerate() {
        relay.account(a).await;
        for d in 0..(if i < 10 { 3 } else { 2 }) {
            let id = format!("{a}.d{d}");
            let key = relay.device(a, &id).await;
            clients.insert(id.clone(), net.connect(&id, &key).await);
            devices.push(id);
        }
    }
    assert_eq!(devices.len(), 50);
    let refs: Vec<&str> = accounts.iter().map(String::as_str).collect();
    relay
        .conversation("dm", ConversationKind::Direct, &refs[..2])
        .await;
    relay
        .conversation("g50", ConversationKind::Group, &refs)
        .await;
    let mut admin = relay.admin().await;
    admin
        .create_conversation(v1::CreateConversationRequest {
            conversation_id: "news".into(),
            kind: v1::ConversationKind::Channel as i32,
            title: String::new(),
            members: accounts
                .iter()
                .enumerate()
                .map(|(i, a)| v1::Member {
                    account_id: a.clone(),
                    role: if i == 0 {
                        v1::Role::Publisher as i32
                    } else {
                        v1::Role::Member as i32
                    },
                })
                .collect(),
            default_ttl_seconds: 0,
            sub_groups: 0,
        })
        .await
        .unwrap();
    // A control: an opaque (non-MLS) message whose text must be found by
    // the scan below, or the scan proves nothing.
    relay
        .conversation("control", ConversationKind::Group, &refs[..2])
        .await;
    let ctl_key = relay.device("acc0", "acc0.ctl").await;
    let control = relay.client("acc0.ctl", &ctl_key).await;
    control
        .send("control", b"CONTROL-OPAQUE-7f3a".to_vec(), 0)
        .await
        .unwrap();

    // 1:1 between acc0 (3 devices) and acc1 (3 devices).
    let dm_devices: Vec<String> = devices
        .iter()
        .filter(|d| d.starts_with("acc0.") || d.starts_with("acc1."))
        .cloned()
        .collect();
    clients["acc0.d0"]
        .send("dm", b"SECRET-dm-1", 0)
        .await
        .unwrap();
    clients["acc1.d2"]
        .send("dm", b"SECRET-dm-2", 0)
        .await
        .unwrap();
    net.until("the 1:1 reached every device", |i| {
        dm_devices.iter().all(|d| {
            let t = i.texts(d, "dm");
            let want = usize::from(d != "acc0.d0") + usize::from(d != "acc1.d2");
            t.len() >= want
        })
    })
    .await;
    for d in &dm_devices {
        let mut want = Vec::new();
        if d != "acc0.d0" {
            want.push("SECRET-dm-1".to_owned());
        }
        if d != "acc1.d2" {
            want.push("SECRET-dm-2".to_owned());
        }
        assert_eq!(net.inbox.texts(d, "dm"), want, "1:1 at {d}");
    }

    // The group of 50 devices: created by the first sender, answered by
    // another account's device.
    clients["acc5.d1"]
        .send("g50", b"SECRET-group-1", 0)
        .await
        .unwrap();
    net.until("the group message reached 49 devices", |i| {
        others(&devices, "acc5.d1")
            .iter()
            .all(|d| !i.texts(d, "g50").is_empty())
    })
    .await;
    clients["acc17.d0"]
        .send("g50", b"SECRET-group-2", 0)
        .await
        .unwrap();
    net.until("the reply reached 49 devices", |i| {
        others(&devices, "acc17.d0")
            .iter()
            .all(|d| i.texts(d, "g50").contains(&"SECRET-group-2".to_owned()))
    })
    .await;
    for d in &devices {
        let t = net.inbox.texts(d, "g50");
        let mut want = Vec::new();
        if d != "acc5.d1" {
            want.push("SECRET-group-1".to_owned());
        }
        if d != "acc17.d0" {
            want.push("SECRET-group-2".to_owned());
        }
        assert_eq!(t, want, "group at {d}");
    }
    assert_eq!(clients["acc9.d2"].group_members("g50").len(), 50);

    // The channel: the publisher posts, 49 devices read.
    clients["acc0.d0"]
        .send("news", b"SECRET-channel-1", 0)
        .await
        .unwrap();
    net.all_read(&others(&devices, "acc0.d0"), "news", &["SECRET-channel-1"])
        .await;
    // A reader cannot post, encrypted or not.
    let e = clients["acc3.d0"]
        .send("news", b"SECRET-not-allowed", 0)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("publisher"), "{e}");

    // Stop everything, then scan.
    let taps: Vec<Vec<u8>> = net
        .taps
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.lock().unwrap().clone())
        .collect();
    for (_, c) in clients {
        c.close().await;
    }
    control.close().await;
    relay.stop().await;
    let stored = read_tree(dir.path());
    assert!(
        contains(&stored, b"CONTROL-OPAQUE-7f3a"),
        "the scan must see stored payloads (control message not found)"
    );
    let wire: Vec<u8> = taps.concat();
    assert!(wire.len() > 100_000, "the taps saw {} bytes", wire.len());
    for secret in [
        "SECRET-dm-1",
        "SECRET-dm-2",
        "SECRET-group-1",
        "SECRET-group-2",
        "SECRET-channel-1",
        "SECRET-not-allowed",
    ] {
        assert!(
            !contains(&stored, secret.as_bytes()),
            "{secret} is in the relay's storage"
        );
        assert!(
            !contains(&wire, secret.as_bytes()),
            "{secret} crossed the wire"
        );
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of every file under `dir`.
fn read_tree(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(read_tree(&p));
        } else {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

/// A member removed by the city's IT cannot decrypt what is sent after;
/// a newcomer cannot decrypt what was sent before it joined; a device
/// enrolled later joins the account's groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_reads_nothing_newcomer_reads_no_history() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    for a in ["xa", "ya", "za", "wa"] {
        relay.account(a).await;
    }
    let mut c = HashMap::new();
    for (a, d) in [("xa", "x1"), ("ya", "y1"), ("za", "z1")] {
        let key = relay.device(a, d).await;
        c.insert(d, net.connect(d, &key).await);
    }
    relay
        .conversation("team", ConversationKind::Group, &["xa", "ya", "za"])
        .await;
    // ya's second, non-MLS device records the raw ciphertexts.
    let mut observer = raw_observer(&relay, "ya", "y-raw").await;

    c["x1"].send("team", b"SECRET-before-1", 0).await.unwrap();
    net.all_read(&["y1".into(), "z1".into()], "team", &["SECRET-before-1"])
        .await;

    // IT removes za. The next send commits the removal first.
    let mut admin = relay.admin().await;
    admin
        .remove_members(v1::RemoveMembersRequest {
            conversation_id: "team".into(),
            account_ids: vec!["za".into()],
        })
        .await
        .unwrap();
    let a = c["x1"]
        .send("team", b"SECRET-after-removal", 0)
        .await
        .unwrap();
    net.all_read(
        &["y1".into()],
        "team",
        &["SECRET-before-1", "SECRET-after-removal"],
    )
    .await;
    let mut members = c["x1"].group_members("team");
    members.sort();
    assert_eq!(members, vec!["x1".to_owned(), "y1".to_owned()]);
    let raw = raw_until(&mut observer, "team", a.seq).await;
    let after = raw.get(&a.seq).expect("the observer saw the message");
    // Even holding the ciphertext, the removed device cannot read it.
    if let Ok(Processed::Application { plaintext, .. }) = c["z1"].process_raw("team", after) {
        panic!(
            "the removed device decrypted {:?}",
            String::from_utf8_lossy(&plaintext)
        );
    }
    assert!(net.inbox.texts("z1", "team") == vec!["SECRET-before-1".to_owned()]);

    // wa joins later: it reads what comes after, never what came before.
    let wkey = relay.device("wa", "w1").await;
    let w1 = net.connect("w1", &wkey).await;
    admin
        .add_members(v1::AddMembersRequest {
            conversation_id: "team".into(),
            members: vec![v1::Member {
                account_id: "wa".into(),
                role: v1::Role::Member as i32,
            }],
        })
        .await
        .unwrap();
    c["y1"].send("team", b"SECRET-after-join", 0).await.unwrap();
    net.all_read(&["w1".into()], "team", &["SECRET-after-join"])
        .await;
    assert!(
        raw.len() >= 4,
        "the history the newcomer must not read: {}",
        raw.len()
    );
    for (seq, ct) in &raw {
        if let Ok(Processed::Application { plaintext, .. }) = w1.process_raw("team", ct) {
            panic!(
                "the newcomer decrypted #{seq} from before it joined: {:?}",
                String::from_utf8_lossy(&plaintext)
            );
        }
    }
    net.until("the newcomer marked the history unreadable", |i| {
        i.unreadable
            .lock()
            .unwrap()
            .get("w1")
            .is_some_and(|u| u.iter().filter(|(c, _, _)| c == "team").count() >= 2)
    })
    .await;

    // ya enrolls another device later: it joins the group at the next send.
    let y2key = relay.device("ya", "y2").await;
    let _y2 = net.connect("y2", &y2key).await;
    c["x1"].send("team", b"SECRET-new-device", 0).await.unwrap();
    net.all_read(&["y2".into()], "team", &["SECRET-new-device"])
        .await;
    net.until("everyone else read it too", |i| {
        ["y1", "w1"]
            .iter()
            .all(|d| i.texts(d, "team").contains(&"SECRET-new-device".to_owned()))
    })
    .await;

    // A revoked device is removed from the group at the next send.
    admin
        .revoke_device(v1::RevokeDeviceRequest {
            device_id: "y2".into(),
        })
        .await
        .unwrap();
    w1.send("team", b"SECRET-after-revoke", 0).await.unwrap();
    net.until("the others read it", |i| {
        ["x1", "y1"].iter().all(|d| {
            i.texts(d, "team")
                .contains(&"SECRET-after-revoke".to_owned())
        })
    })
    .await;
    assert!(!w1.group_members("team").contains(&"y2".to_owned()));
    assert!(
        !net.inbox
            .texts("y2", "team")
            .contains(&"SECRET-after-revoke".to_owned())
    );
    relay.stop().await;
}

/// The relay checks what it can: the expiry in the authenticated data must
/// match the envelope's, a message must belong to the conversation's group,
/// and once a group exists only MLS messages are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_refuses_mismatched_expiry_foreign_groups_and_plain_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    relay.account("pa").await;
    relay.account("qa").await;
    let pkey = relay.device("pa", "p1").await;
    let qkey = relay.device("qa", "q1").await;
    let p1 = net.connect("p1", &pkey).await;
    let _q1 = net.connect("q1", &qkey).await;
    relay
        .conversation("pq", ConversationKind::Group, &["pa", "qa"])
        .await;
    relay
        .conversation("other", ConversationKind::Group, &["pa", "qa"])
        .await;
    let expires = now_ms() + 3_600_000;
    p1.send("pq", b"SECRET-expiring", expires).await.unwrap();
    net.until("q1 read it", |i| !i.texts("q1", "pq").is_empty())
        .await;
    let m = net.inbox.messages.lock().unwrap()["q1"][0].clone();
    assert_eq!(m.expires_at_ms, expires, "the expiry travels authenticated");
    assert!(!m.is_expired(now_ms()));
    assert!(m.is_expired(expires));

    // Another device of p's account crafts bad submits.
    let mut mls = MlsDevice::create("p-crafter", None).unwrap();
    mls.create_group(b"pq").unwrap();
    let ct = mls
        .encrypt(b"pq", b"x", &herold_mls::encode_aad(expires))
        .unwrap();
    let craft_key = relay.device("pa", "p-crafter").await;
    let sender = relay.client("p-crafter", &craft_key).await;
    let sub = |conv: &str, ct: Vec<u8>, exp: i64, mls: bool| v1::Submit {
        message_id: herold_client::new_message_id().unwrap().to_vec(),
        conversation_id: conv.into(),
        expires_at_ms: exp,
        ciphertext: ct,
        mls,
        ..Default::default()
    };
    let code = |r: Result<v1::Accepted, herold_client::ClientError>| r.unwrap_err().code();
    let s = sender.sender();
    assert_eq!(
        code(s.submit(sub("pq", ct.clone(), expires + 1, true)).await),
        Some(ErrorCode::MlsInvalid),
        "mismatched expiry"
    );
    assert_eq!(
        code(s.submit(sub("other", ct.clone(), expires, true)).await),
        Some(ErrorCode::MlsInvalid),
        "a message of another group"
    );
    assert_eq!(
        code(s.submit(sub("pq", b"plain".to_vec(), 0, true)).await),
        Some(ErrorCode::MlsInvalid),
        "not MLS at all"
    );
    assert_eq!(
        code(s.submit(sub("pq", b"plain".to_vec(), 0, false)).await),
        Some(ErrorCode::MlsRequired),
        "an opaque payload in an MLS conversation"
    );
    assert_eq!(
        code(s.submit(sub("pq", ct, expires, true)).await),
        Some(ErrorCode::MlsInvalid),
        "an application message before any commit (epoch 0)"
    );
    // Two local commits take the crafter's own group to epoch 2; the
    // relay's group is at 1.
    for _ in 0..2 {
        mls.commit(b"pq", vec![], vec![]).unwrap();
        mls.confirm_commit(b"pq").unwrap();
    }
    let ahead = mls
        .encrypt(b"pq", b"x", &herold_mls::encode_aad(expires))
        .unwrap();
    let e = s.submit(sub("pq", ahead, expires, true)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MlsWrongEpoch), "{e}");
    // Nobody may declare a group reconciled before its first commit.
    let e = s
        .request(v1::request::Kind::MarkReconciled(v1::MarkReconciled {
            conversation_id: "other".into(),
            epoch: 0,
            roster_version: 1,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MlsInvalid), "{e}");
    sender.close().await;
    relay.stop().await;
}

/// Key packages: uploaded on connect, each claimed once, the last resort
/// when they run out, and only for devices in the conversation's roster.
/// Devices renew their own leaf keys: a sender whose key in the group is
/// older than its renewal interval commits a self-update before it sends,
/// and the others apply it (nobody added or removed) and read on. A fresh
/// key is not renewed; `renew_key` renews on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_renew_their_leaf_keys_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    relay.account("ka").await;
    relay.account("kb").await;
    let akey = relay.device("ka", "ka.1").await;
    let bkey = relay.device("kb", "kb.1").await;
    let mut a1 = net.connect("ka.1", &akey).await;
    let b1 = net.connect("kb.1", &bkey).await;
    relay
        .conversation("keys", ConversationKind::Group, &["ka", "kb"])
        .await;
    a1.send("keys", b"one", 0).await.unwrap();
    net.all_read(&["kb.1".to_owned()], "keys", &["one"]).await;
    b1.send("keys", b"two", 0).await.unwrap();
    net.all_read(&["ka.1".to_owned()], "keys", &["two"]).await;
    assert_eq!((a1.epoch("keys"), b1.epoch("keys")), (Some(1), Some(1)));
    let changes = |d: &str| {
        net.inbox
            .changed
            .lock()
            .unwrap()
            .get(d)
            .cloned()
            .unwrap_or_default()
    };
    assert!(changes("kb.1").is_empty(), "fresh keys are not renewed");

    a1.set_key_renewal_interval(Duration::ZERO);
    let before = a1.key_renewed_at_ms("keys").unwrap();
    a1.send("keys", b"three", 0).await.unwrap();
    net.all_read(&["kb.1".to_owned()], "keys", &["one", "three"])
        .await;
    assert_eq!((a1.epoch("keys"), b1.epoch("keys")), (Some(2), Some(2)));
    assert!(a1.key_renewed_at_ms("keys").unwrap() >= before);
    assert_eq!(
        changes("kb.1"),
        vec![("keys".to_owned(), 2, vec![], vec![])],
        "kb.1 applied ka.1's self-update"
    );

    a1.set_key_renewal_interval(Duration::from_secs(3600));
    a1.send("keys", b"four", 0).await.unwrap();
    assert!(b1.renew_key("keys").await.unwrap());
    net.until("ka.1 applied kb.1's self-update", |i| {
        i.changed
            .lock()
            .unwrap()
            .get("ka.1")
            .is_some_and(|v| v.contains(&("keys".to_owned(), 3, vec![], vec![])))
    })
    .await;
    a1.send("keys", b"five", 0).await.unwrap();
    net.all_read(
        &["kb.1".to_owned()],
        "keys",
        &["one", "three", "four", "five"],
    )
    .await;
    assert_eq!((a1.epoch("keys"), b1.epoch("keys")), (Some(3), Some(3)));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_claimed_once_with_a_last_resort() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    relay.account("ka").await;
    relay.account("la").await;
    relay.account("outsider").await;
    let kkey = relay.device("ka", "k1").await;
    let lkey = relay.device("la", "l1").await;
    let _k1 = net.connect("k1", &kkey).await;
    let l1 = relay.client("l1", &lkey).await;
    relay
        .conversation("kl", ConversationKind::Group, &["ka", "la"])
        .await;
    let s = l1.sender();
    let claim = |devices: Vec<String>| {
        let s = s.clone();
        async move {
            s.request(v1::request::Kind::ClaimKeyPackages(v1::ClaimKeyPackages {
                conversation_id: "kl".into(),
                device_ids: devices,
            }))
            .await
        }
    };
    let mut seen = std::collections::HashSet::new();
    let target = herold_client::e2e::KEY_PACKAGE_TARGET;
    for _ in 0..target + 2 {
        match claim(vec!["k1".into()]).await.unwrap() {
            v1::response::Kind::ClaimedKeyPackages(c) => {
                assert_eq!(c.packages.len(), 1);
                assert!(!c.packages[0].key_package.is_empty());
                seen.insert(c.packages[0].key_package.clone());
            }
            other => panic!("{other:?}"),
        }
    }
    // target one-time packages, then the same last-resort one twice.
    assert_eq!(seen.len(), target + 1);
    // A device named twice in one claim gets one package.
    match claim(vec!["k1".into(), "k1".into()]).await.unwrap() {
        v1::response::Kind::ClaimedKeyPackages(c) => assert_eq!(c.packages.len(), 1),
        other => panic!("{other:?}"),
    }
    let e = claim(vec!["nobody".into()]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MlsInvalid), "{e}");
    // A device may only upload packages that name itself.
    let mut other = MlsDevice::create("k1-impostor", None).unwrap();
    let kp = other.key_packages(1).unwrap();
    let e = s
        .request(v1::request::Kind::UploadKeyPackages(
            v1::UploadKeyPackages {
                key_packages: kp,
                last_resort: Vec::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MlsInvalid), "{e}");
    assert!(e.to_string().contains("another device"), "{e}");
    // An outsider's device cannot claim.
    let okey = relay.device("outsider", "o1").await;
    let o1 = relay.client("o1", &okey).await;
    let e = o1
        .sender()
        .request(v1::request::Kind::ClaimKeyPackages(v1::ClaimKeyPackages {
            conversation_id: "kl".into(),
            device_ids: vec!["k1".into()],
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotMember), "{e}");
    o1.close().await;
    l1.close().await;
    relay.stop().await;
}

/// Once the group reflects its roster there is nobody to add: a claim is
/// refused (MLS_WRONG_EPOCH, with the group's epoch) and takes no package,
/// so a member cannot use up the other devices' one-time packages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_cannot_be_claimed_while_nobody_is_to_be_added() {
    use herold_store::Store as _;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        herold_store::embedded::EmbeddedStore::open(
            dir.path().join("store"),
            herold_store::embedded::EmbeddedConfig::default(),
        )
        .unwrap(),
    );
    let relay = TestRelay::start_on(
        herold_relay::Config::dev(dir.path()),
        store.clone(),
        std::sync::Arc::new(herold_router::memory::MemoryRouter::default()),
    )
    .await;
    let net = Net::new(relay.addr, relay.fingerprint);
    relay.account("ka").await;
    relay.account("la").await;
    let kkey = relay.device("ka", "k1").await;
    let lkey = relay.device("la", "l1").await;
    // A second device of la without key packages: a member, not in the group.
    let l2key = relay.device("la", "l2").await;
    let k1 = net.connect("k1", &kkey).await;
    let _l1 = net.connect("l1", &lkey).await;
    relay
        .conversation("kl", ConversationKind::Group, &["ka", "la"])
        .await;
    k1.send("kl", b"first", 0).await.unwrap();
    net.until("l1 read the first message", |i| {
        i.texts("l1", "kl") == vec!["first".to_owned()]
    })
    .await;
    let before = store.key_package_count("k1").await.unwrap().available;
    assert!(before > 0);
    let l2 = relay.client("l2", &l2key).await;
    for _ in 0..3 {
        let e = l2
            .sender()
            .request(v1::request::Kind::ClaimKeyPackages(v1::ClaimKeyPackages {
                conversation_id: "kl".into(),
                device_ids: vec!["k1".into()],
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::MlsWrongEpoch), "{e}");
        assert!(e.to_string().contains("nobody to add"), "{e}");
    }
    assert_eq!(
        store.key_package_count("k1").await.unwrap().available,
        before
    );
    l2.close().await;
    relay.stop().await;
}

/// Two devices send the first message of a conversation at the same time:
/// both make a group, one wins the first epoch, the other joins from its
/// Welcome and its message goes out in the winner's group. Both messages
/// reach everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_messages_race_and_both_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    let mut c = HashMap::new();
    for a in ["ra", "sa", "ta"] {
        relay.account(a).await;
        let d = format!("{a}.1");
        let key = relay.device(a, &d).await;
        c.insert(a, net.connect(&d, &key).await);
    }
    relay
        .conversation("race", ConversationKind::Group, &["ra", "sa", "ta"])
        .await;
    let (r1, r2) = tokio::join!(
        c["ra"].send("race", b"SECRET-from-r", 0),
        c["sa"].send("race", b"SECRET-from-s", 0)
    );
    r1.unwrap();
    r2.unwrap();
    net.until("both messages reached the third device", |i| {
        i.texts("ta.1", "race").len() == 2
    })
    .await;
    net.until("each sender read the other", |i| {
        i.texts("ra.1", "race") == vec!["SECRET-from-s".to_owned()]
            && i.texts("sa.1", "race") == vec!["SECRET-from-r".to_owned()]
    })
    .await;
    assert_eq!(c["ra"].epoch("race"), c["sa"].epoch("race"));
    relay.stop().await;
}
