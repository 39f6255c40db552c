//! The state file, authenticated data, and what errors and debug output show.

use super::*;

#[test]
fn persistence_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.mls"), dir.path().join("b.mls"));
    let mut relay = Relay::default();

    let mut a = MlsDevice::create("a", Some(&pa)).unwrap();
    let mut b = MlsDevice::create("b", Some(&pb)).unwrap();
    let b_kps = b.key_packages(2).unwrap();
    let b_lr = b.last_resort_key_package().unwrap();
    drop(b);

    // a creates the group; b, reopened, joins with a package made before.
    a.create_group(G).unwrap();
    let pc = a
        .commit(G, vec![("b".into(), b_kps[0].clone())], vec![])
        .unwrap();
    drop(a);
    let mut a = MlsDevice::open(&pa).unwrap();
    // The pending commit survived the restart.
    assert!(relay.submit_commit(&pc.commit));
    a.confirm_commit(G).unwrap();
    let mut b = MlsDevice::open(&pb).unwrap();
    assert_eq!(b.device_id(), "b");
    b.join(pc.welcome.as_ref().unwrap()).unwrap();

    let m1 = a.encrypt(G, b"one", &[]).unwrap();
    drop(a);
    drop(b);
    let mut a = MlsDevice::open_or_create("a", &pa).unwrap();
    let mut b = MlsDevice::open_or_create("b", &pb).unwrap();
    assert_eq!((a.epoch(G), b.epoch(G)), (Some(1), Some(1)));
    assert_eq!(b.members(G), vec!["a", "b"]);
    assert_eq!(plaintext(b.process(G, &m1).unwrap()).0, b"one");
    // The sender ratchet was saved: a's next message uses a new key and
    // b (reopened after processing m1) reads it.
    let m2 = a.encrypt(G, b"two", &[]).unwrap();
    drop(b);
    let mut b = MlsDevice::open(&pb).unwrap();
    assert_eq!(plaintext(b.process(G, &m2).unwrap()).0, b"two");
    let m3 = b.encrypt(G, b"three", &[]).unwrap();
    assert_eq!(plaintext(a.process(G, &m3).unwrap()).0, b"three");

    // The unused one-time package and the last-resort one still work.
    for (g, package) in [(&b"conv-2"[..], &b_kps[1]), (&b"conv-3"[..], &b_lr)] {
        a.create_group(g).unwrap();
        let pc = a
            .commit(g, vec![("b".into(), package.clone())], vec![])
            .unwrap();
        a.confirm_commit(g).unwrap();
        drop(b);
        b = MlsDevice::open(&pb).unwrap();
        assert_eq!(b.join(pc.welcome.as_ref().unwrap()).unwrap(), g);
    }
    // Forgetting a group is saved too.
    b.forget_group(b"conv-2").unwrap();
    drop(b);
    let b = MlsDevice::open(&pb).unwrap();
    assert!(!b.has_group(b"conv-2") && b.has_group(b"conv-3") && b.has_group(G));

    // The files hold private keys: owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&pb).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Only the two state files are left, no temp files.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["a.mls", "b.mls"]);
}

#[test]
fn state_file_errors_are_specific() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.mls");
    MlsDevice::create("dev", Some(&path)).unwrap();
    assert!(matches!(
        MlsDevice::create("dev", Some(&path)),
        Err(MlsError::StateExists(_))
    ));
    assert!(matches!(
        MlsDevice::open_or_create("other", &path),
        Err(MlsError::DeviceMismatch { .. })
    ));
    assert!(matches!(
        MlsDevice::open(&dir.path().join("missing.mls")),
        Err(MlsError::Io { .. })
    ));
    // Two processes of one device would reuse keys: the second is refused.
    let first = MlsDevice::open(&path).unwrap();
    let e = MlsDevice::open(&path).unwrap_err();
    assert!(matches!(&e, MlsError::Io { .. }), "{e}");
    assert!(e.to_string().contains("another process"), "{e}");
    drop(first);
    // A database whose header is garbage.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..64].fill(0x5a);
    std::fs::write(&path, &bytes).unwrap();
    let e = MlsDevice::open(&path).unwrap_err();
    assert!(matches!(e, MlsError::CorruptState { .. }), "{e}");
    // A file of the earlier format, cut short.
    let old = crate::state::State {
        device_id: "dev".into(),
        signature_public_key: vec![1],
        groups: vec![],
        storage: vec![],
    }
    .encode();
    std::fs::write(&path, &old[..old.len() - 1]).unwrap();
    let e = MlsDevice::open(&path).unwrap_err();
    assert!(matches!(e, MlsError::CorruptState { .. }), "{e}");
    std::fs::write(&path, b"something else entirely").unwrap();
    assert!(matches!(
        MlsDevice::open(&path),
        Err(MlsError::CorruptState { .. })
    ));
    assert!(matches!(
        MlsDevice::create("", None),
        Err(MlsError::EmptyDeviceId)
    ));
    assert!(matches!(
        device("x").create_group(b""),
        Err(MlsError::EmptyGroupId)
    ));
}

#[test]
fn aad_round_trip() {
    for v in [0, 1, -1, 1_700_000_000_000, i64::MAX, i64::MIN] {
        assert_eq!(decode_aad(&encode_aad(v)).unwrap(), v);
    }
    assert_eq!(encode_aad(0).len(), 20);
    assert!(encode_aad(0).starts_with(b"herold/1 aad"));
    assert!(decode_aad(b"").is_err());
    assert!(decode_aad(b"herold/2 aad12345678").is_err());
    assert!(decode_aad(&encode_aad(5)[..19]).is_err());
    let mut long = encode_aad(5);
    long.push(0);
    assert!(decode_aad(&long).is_err());
}

#[test]
fn debug_shows_no_key_material() {
    let mut relay = Relay::default();
    let devs = setup(&mut relay, &["a", "b"]);
    assert_eq!(
        format!("{:?}", devs[0]),
        r#"MlsDevice { device_id: "a", path: None, groups: [("conv-1", 1)], .. }"#
    );
}

#[test]
fn device_is_send() {
    fn send<T: Send>() {}
    send::<MlsDevice>();
}

#[test]
fn errors_read_well() {
    let e = MlsError::FutureEpoch {
        group: "conv-1".into(),
        message_epoch: 5,
        current: 3,
    };
    assert_eq!(
        e.to_string(),
        "message of MLS group conv-1 is from epoch 5 but the group is at epoch 3: a commit is missing"
    );
}
