//! Checks that need no group state: key packages, framing read without keys, leaf lifetimes.

use super::*;

#[test]
fn commit_rejects_bad_key_packages() {
    let mut relay = Relay::default();
    let mut devs = setup(&mut relay, &["a", "b"]);
    let (mut c, mut e) = (device("c"), device("e"));
    let c_kp = c.key_packages(2).unwrap();
    let mut tampered = c_kp[1].clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let a_kp = kp(&mut devs[0]).1;

    let pc = devs[0]
        .commit(
            G,
            vec![
                ("c".into(), c_kp[0].clone()),
                ("c".into(), c_kp[1].clone()),     // listed twice
                ("h".into(), c_kp[1].clone()),     // c's package for h
                ("f".into(), b"garbage".to_vec()), // not a key package
                ("g".into(), tampered),            // bad signature
                ("b".into(), a_kp),                // already a member
                kp(&mut e),
            ],
            vec![],
        )
        .unwrap();
    assert_eq!(pc.added, vec!["c", "e"]);
    let rejected: Vec<&str> = pc.rejected.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(rejected, vec!["c", "h", "f", "g", "b"]);
    for (device, reason) in &pc.rejected {
        assert!(!reason.is_empty(), "{device}");
    }
    assert!(pc.rejected[1].1.contains("\"c\""), "{}", pc.rejected[1].1);
    devs[0].discard_commit(G).unwrap();
    assert!(devs[0].has_group(G));

    assert!(matches!(
        devs[0].commit(G, vec![], vec!["a".into()]),
        Err(MlsError::CannotRemoveSelf { .. })
    ));
    assert!(matches!(
        devs[0].commit(b"nope", vec![], vec![]),
        Err(MlsError::UnknownGroup { .. })
    ));
    assert!(matches!(
        devs[0].confirm_commit(G),
        Err(MlsError::NoPendingCommit { .. })
    ));
    // Nothing to add or remove: a plain key update (with a path).
    let pc = devs[0].commit(G, vec![], vec![]).unwrap();
    assert!(pc.added.is_empty() && pc.removed.is_empty() && pc.welcome.is_none());
    assert!(relay.submit_commit(&pc.commit));
    devs[0].confirm_commit(G).unwrap();
    assert_eq!(
        devs[1].process(G, &pc.commit).unwrap(),
        Processed::Commit {
            epoch: 2,
            added: vec![],
            removed: vec![],
            removed_me: false
        }
    );
}

#[test]
fn inspect_reads_framing_without_keys() {
    let mut relay = Relay::default();
    let mut devs = setup(&mut relay, &["a", "b"]);
    let aad = encode_aad(42_000);
    let m = devs[0].encrypt(G, b"x", &aad).unwrap();
    assert_eq!(
        inspect(&m).unwrap(),
        Inspected {
            group_id: G.to_vec(),
            epoch: 1,
            kind: ContentKind::Application,
            aad: aad.clone(),
        }
    );
    assert_eq!(decode_aad(&inspect(&m).unwrap().aad).unwrap(), 42_000);

    let mut c = device("c");
    let pc = devs[1].commit(G, vec![kp(&mut c)], vec![]).unwrap();
    assert_eq!(
        inspect(&pc.commit).unwrap(),
        Inspected {
            group_id: G.to_vec(),
            epoch: 1,
            kind: ContentKind::Commit,
            aad: vec![],
        }
    );
    // Commits carry no aad.
    let welcome = pc.welcome.unwrap();
    assert!(matches!(
        inspect(&welcome),
        Err(MlsError::WrongMessageType {
            found: "a Welcome",
            ..
        })
    ));
    let key_package = c.key_packages(1).unwrap().remove(0);
    assert!(matches!(
        inspect(&key_package),
        Err(MlsError::WrongMessageType {
            found: "a KeyPackage",
            ..
        })
    ));
    assert!(matches!(inspect(b""), Err(MlsError::Malformed(_))));
    assert!(matches!(inspect(b"garbage"), Err(MlsError::Malformed(_))));
    assert!(matches!(
        inspect(&m[..m.len() - 1]),
        Err(MlsError::Malformed(_))
    ));

    // A process() of the wrong kind or group is a clear error.
    assert!(matches!(
        devs[1].process(G, &welcome),
        Err(MlsError::WrongMessageType { .. })
    ));
    assert!(matches!(
        devs[1].process(b"conv-2", &m),
        Err(MlsError::GroupMismatch { .. })
    ));
}

#[test]
fn inspect_reads_public_messages() {
    // Herold never sends PublicMessages, but the relay must read their
    // framing too. Make one with plain openmls and a plaintext policy.
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;

    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(b"p".to_vec()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    let cfg = MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build();
    let mut group =
        MlsGroup::new_with_group_id(&provider, &signer, &cfg, GroupId::from_slice(b"pub"), cwk)
            .unwrap();
    group.set_aad(b"public aad".to_vec());
    let bundle = group
        .self_update(&provider, &signer, LeafNodeParameters::default())
        .unwrap();
    let (commit, _, _) = bundle.into_messages();
    assert_eq!(
        inspect(&commit.to_bytes().unwrap()).unwrap(),
        Inspected {
            group_id: b"pub".to_vec(),
            epoch: 0,
            kind: ContentKind::Commit,
            aad: b"public aad".to_vec(),
        }
    );
}

#[test]
fn validate_key_package_accepts_good_and_rejects_bad() {
    let mut d = device("dev-1");
    let one_time = d.key_packages(1).unwrap().remove(0);
    assert_eq!(
        validate_key_package(&one_time).unwrap(),
        ValidKeyPackage {
            identity: b"dev-1".to_vec(),
            last_resort: false,
        }
    );
    let last_resort = d.last_resort_key_package().unwrap();
    assert_eq!(
        validate_key_package(&last_resort).unwrap(),
        ValidKeyPackage {
            identity: b"dev-1".to_vec(),
            last_resort: true,
        }
    );

    assert!(matches!(
        validate_key_package(b"garbage"),
        Err(MlsError::Malformed(_))
    ));
    assert!(matches!(
        validate_key_package(b""),
        Err(MlsError::Malformed(_))
    ));
    assert!(matches!(
        validate_key_package(&one_time[..one_time.len() - 3]),
        Err(MlsError::Malformed(_))
    ));
    // Tampering anywhere in the signed part or the signature is caught. The
    // identity "dev-1" is inside the signed leaf node: change it to "dev-2".
    let pos = one_time.windows(5).position(|w| w == b"dev-1").unwrap();
    let mut renamed = one_time.clone();
    renamed[pos + 4] = b'2';
    assert!(matches!(
        validate_key_package(&renamed),
        Err(MlsError::InvalidKeyPackage(_))
    ));
    let mut bad_signature = one_time.clone();
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0x01;
    assert!(matches!(
        validate_key_package(&bad_signature),
        Err(MlsError::InvalidKeyPackage(_))
    ));

    // Other message types are refused.
    let mut relay = Relay::default();
    let mut devs = setup(&mut relay, &["a", "b"]);
    let m = devs[0].encrypt(G, b"x", &[]).unwrap();
    assert!(matches!(
        validate_key_package(&m),
        Err(MlsError::WrongMessageType { .. })
    ));
    assert!(matches!(
        check_welcome(&m),
        Err(MlsError::WrongMessageType { .. })
    ));
    assert!(matches!(check_welcome(b"x"), Err(MlsError::Malformed(_))));
}

#[test]
fn last_resort_key_package_can_be_used_twice() {
    let mut relay = Relay::default();
    let mut a = device("a");
    let mut b = device("b");
    let lr = b.last_resort_key_package().unwrap();
    for g in [&b"conv-x"[..], &b"conv-y"[..]] {
        a.create_group(g).unwrap();
        let pc = a.commit(g, vec![("b".into(), lr.clone())], vec![]).unwrap();
        assert!(relay.submit_commit(&pc.commit));
        a.confirm_commit(g).unwrap();
        assert_eq!(b.join(pc.welcome.as_ref().unwrap()).unwrap(), g);
    }
    // A one-time package works once; its Welcome cannot be used again, and
    // another device's Welcome is not for us.
    let mut c = device("c");
    a.create_group(G).unwrap();
    let pc = a.commit(G, vec![kp(&mut c)], vec![]).unwrap();
    a.confirm_commit(G).unwrap();
    let welcome = pc.welcome.unwrap();
    c.join(&welcome).unwrap();
    c.forget_group(G).unwrap();
    assert!(matches!(c.join(&welcome), Err(MlsError::WelcomeNotForMe)));
    assert!(matches!(b.join(&welcome), Err(MlsError::WelcomeNotForMe)));
}

#[test]
fn join_ignores_expired_lifetimes_of_leaves_in_the_tree() {
    // b joins with a key package that expires in 2 s and never commits, so
    // its leaf keeps that lifetime. After it expired, c must still be able
    // to join.
    let mut relay = Relay::default();
    let mut a = device("a");
    let mut b = device("b");
    let mut c = device("c");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let short = b.key_package_with_lifetime(Lifetime::init(now - 60, now + 2));
    a.create_group(G).unwrap();
    let pc = a.commit(G, vec![("b".into(), short)], vec![]).unwrap();
    assert!(pc.rejected.is_empty(), "{:?}", pc.rejected);
    assert!(relay.submit_commit(&pc.commit));
    a.confirm_commit(G).unwrap();
    b.join(pc.welcome.as_ref().unwrap()).unwrap();

    // Wait on the condition itself: the wall clock past b's lifetime.
    let expired = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            > now + 2
    };
    while !expired() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let pc = a.commit(G, vec![kp(&mut c)], vec![]).unwrap();
    assert!(relay.submit_commit(&pc.commit));
    a.confirm_commit(G).unwrap();
    b.process(G, &pc.commit).unwrap();
    c.join(pc.welcome.as_ref().unwrap()).unwrap();
    let m = b.encrypt(G, b"still here", &[]).unwrap();
    assert_eq!(plaintext(c.process(G, &m).unwrap()).0, b"still here");
}

#[test]
fn group_ids_carry_the_generation_of_a_restart() {
    use crate::{group_generation, group_id};
    assert_eq!(group_id("town-hall", 0), b"town-hall".to_vec());
    assert_eq!(group_id("town-hall", 3), b"town-hall#3".to_vec());
    for g in [0, 1, 9, 10, 12345, u64::MAX] {
        assert_eq!(
            group_generation("town-hall", &group_id("town-hall", g)),
            Some(g)
        );
    }
    for foreign in [
        &b"town"[..],
        b"town-hall2",
        b"town-hall#",
        b"town-hall#0",
        b"town-hall#01",
        b"town-hall#-1",
        b"town-hall#1x",
        b"town-hall#+1",
        b"town-hall#99999999999999999999999",
        b"other#1",
    ] {
        assert_eq!(
            group_generation("town-hall", foreign),
            None,
            "{}",
            String::from_utf8_lossy(foreign)
        );
    }
}
