//! Titles and display names: inside the group, learned by newcomers,
//! checked when set and when read.

use super::*;

/// Applies `pc` on its committer and delivers it to the others.
fn commit_everywhere(relay: &mut Relay, devs: &mut [MlsDevice], from: usize, pc: &PendingCommit) {
    assert!(relay.submit_commit(&pc.commit));
    devs[from].confirm_commit(G).unwrap();
    for p in deliver(devs, from, &pc.commit) {
        assert!(matches!(p, Processed::Commit { .. }), "{p:?}");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn titles_and_display_names_reach_members_and_newcomers() {
    let mut relay = Relay::default();
    let mut a = device("a");
    a.set_display_name(Some("Anna (Bezirk 3)")).unwrap();
    let mut b = device("b");
    b.set_display_name(Some("Bernd")).unwrap();
    a.create_group(G).unwrap();
    let pc = a.commit(G, vec![kp(&mut b)], vec![]).unwrap();
    assert!(relay.submit_commit(&pc.commit));
    a.confirm_commit(G).unwrap();
    b.join(&pc.welcome.unwrap()).unwrap();
    let mut devs = vec![a, b];
    // From the creator's leaf; key packages are public and carry none.
    assert_eq!(
        devs[1].member_display_name(G, "a").as_deref(),
        Some("Anna (Bezirk 3)")
    );
    assert_eq!(devs[0].member_display_name(G, "b"), None);
    let (_, package) = kp(&mut devs[1]);
    assert!(!contains(&package, b"Bernd"), "a name in a key package");
    let package = devs[1].last_resort_key_package().unwrap();
    assert!(!contains(&package, b"Bernd"), "a name in a key package");
    assert_eq!(devs[0].title(G), None);

    let pc = devs[0]
        .commit_title(G, Some("Wahlhelfer Bezirk 3"))
        .unwrap();
    assert!(!contains(&pc.commit, b"Wahlhelfer"));
    commit_everywhere(&mut relay, &mut devs, 0, &pc);
    assert_eq!(devs[1].title(G).as_deref(), Some("Wahlhelfer Bezirk 3"));
    assert_eq!(devs[0].title(G).as_deref(), Some("Wahlhelfer Bezirk 3"));

    // The name reaches the group with the next commit with a path; the
    // commit is encrypted, the name not in it in clear.
    devs[1].set_display_name(Some("Bernd K.")).unwrap();
    assert_eq!(devs[0].member_display_name(G, "b"), None);
    let pc = devs[1].renew_leaf_key(G).unwrap();
    assert!(!contains(&pc.commit, b"Bernd"));
    commit_everywhere(&mut relay, &mut devs, 1, &pc);
    assert_eq!(
        devs[0].member_display_name(G, "b").as_deref(),
        Some("Bernd K.")
    );

    // A newcomer learns title and names from the Welcome.
    let mut c = device("c");
    let pc = devs[0].commit(G, vec![kp(&mut c)], vec![]).unwrap();
    assert!(pc.rejected.is_empty(), "{:?}", pc.rejected);
    commit_everywhere(&mut relay, &mut devs, 0, &pc);
    let welcome = pc.welcome.unwrap();
    assert!(!contains(&welcome, b"Wahlhelfer") && !contains(&welcome, b"Anna"));
    c.join(&welcome).unwrap();
    assert_eq!(c.title(G).as_deref(), Some("Wahlhelfer Bezirk 3"));
    assert_eq!(
        c.member_display_name(G, "a").as_deref(),
        Some("Anna (Bezirk 3)")
    );
    assert_eq!(c.member_display_name(G, "b").as_deref(), Some("Bernd K."));
    assert_eq!(devs[0].member_display_name(G, "c"), None);
    devs.push(c);

    // Removing the title.
    let pc = devs[2].commit_title(G, None).unwrap();
    commit_everywhere(&mut relay, &mut devs, 2, &pc);
    assert!(devs.iter().all(|d| d.title(G).is_none()));
}

#[test]
fn names_are_checked_when_set() {
    let mut relay = Relay::default();
    let mut devs = setup(&mut relay, &["a", "b"]);
    let long = "x".repeat(MAX_TITLE_BYTES + 1);
    let e = devs[0].commit_title(G, Some(&long)).unwrap_err();
    assert!(e.to_string().contains("at most 256"), "{e}");
    let e = devs[0].commit_title(G, Some("a\u{7}bell")).unwrap_err();
    assert!(e.to_string().contains("control characters"), "{e}");
    let e = devs[1]
        .set_display_name(Some(&"y".repeat(MAX_DISPLAY_NAME_BYTES + 1)))
        .unwrap_err();
    assert!(
        matches!(
            e,
            MlsError::InvalidName {
                what: "display name",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        devs[1].display_name(),
        None,
        "a refused name changes nothing"
    );
    devs[1].set_display_name(Some("")).unwrap();
    assert_eq!(devs[1].display_name(), None, "empty is none");
    // Nothing was committed by the refusals.
    let pc = devs[0].commit_title(G, Some("ok")).unwrap();
    assert_eq!(pc.from_epoch, 1);
}

#[test]
fn a_title_waits_for_every_member_to_support_it() {
    let mut relay = Relay::default();
    let mut devs = setup(&mut relay, &["a", "b"]);
    // A key package of an older app lists no name extensions.
    let mut old = device("old");
    let old_kp = old.key_package_with_lifetime(Lifetime::new(3600));
    let pc = devs[0]
        .commit(G, vec![("old".into(), old_kp.clone())], vec![])
        .unwrap();
    assert_eq!(pc.added, ["old"]);
    commit_everywhere(&mut relay, &mut devs, 0, &pc);
    old.join(&pc.welcome.unwrap()).unwrap();
    let e = devs[1].commit_title(G, Some("t")).unwrap_err();
    assert!(
        matches!(&e, MlsError::TitlesUnsupported { devices, .. } if devices == &["old"]),
        "{e}"
    );
    let group = devs[1].group_for_test(G).unwrap();
    assert!(group.pending_commit().is_none(), "nothing pending");
    // Its next self-update carries the current capabilities.
    devs.push(old);
    let pc = devs[2].renew_leaf_key(G).unwrap();
    commit_everywhere(&mut relay, &mut devs, 2, &pc);
    let pc = devs[1].commit_title(G, Some("t")).unwrap();
    commit_everywhere(&mut relay, &mut devs, 1, &pc);
    assert_eq!(devs[2].title(G).as_deref(), Some("t"));
    // A titled group takes no package of an older app: left out, said why.
    let late = device("late");
    let late_kp = late.key_package_with_lifetime(Lifetime::new(3600));
    let pc = devs[0]
        .commit(G, vec![("late".into(), late_kp)], vec![])
        .unwrap();
    assert!(pc.added.is_empty());
    assert!(pc.rejected[0].1.contains("title"), "{:?}", pc.rejected);
}

#[test]
fn a_display_name_survives_reopening_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.mls");
    let mut a = MlsDevice::create("a", Some(&path)).unwrap();
    a.set_display_name(Some("Anna")).unwrap();
    drop(a);
    let mut a = MlsDevice::open(&path).unwrap();
    assert_eq!(a.display_name(), Some("Anna"));
    a.set_display_name(None).unwrap();
    drop(a);
    assert_eq!(MlsDevice::open(&path).unwrap().display_name(), None);
}
