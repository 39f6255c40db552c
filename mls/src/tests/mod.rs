//! Flows with several in-memory devices and a fake relay that, like the
//! store, accepts only the first commit of each epoch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openmls::prelude::Lifetime;

use super::*;

mod channel;
mod framing;
mod names;
mod state;

const G: &[u8] = b"conv-1";

fn device(id: &str) -> MlsDevice {
    MlsDevice::create(id, None).unwrap()
}

fn kp(d: &mut MlsDevice) -> (String, Vec<u8>) {
    (
        d.device_id().to_string(),
        d.key_packages(1).unwrap().remove(0),
    )
}

/// The store's commit rule: the first commit of an epoch wins.
#[derive(Default)]
struct Relay {
    epochs: HashMap<Vec<u8>, u64>,
}

impl Relay {
    fn submit_commit(&mut self, commit: &[u8]) -> bool {
        let i = inspect(commit).unwrap();
        assert_eq!(i.kind, ContentKind::Commit);
        let epoch = self.epochs.entry(i.group_id).or_insert(0);
        if *epoch == i.epoch {
            *epoch += 1;
            true
        } else {
            false
        }
    }
}

/// `devs[0]` creates group G and adds all others in one commit; they join.
fn setup(relay: &mut Relay, ids: &[&str]) -> Vec<MlsDevice> {
    let mut devs: Vec<MlsDevice> = ids.iter().map(|id| device(id)).collect();
    let (first, rest) = devs.split_first_mut().unwrap();
    first.create_group(G).unwrap();
    let add = rest.iter_mut().map(kp).collect();
    let pc = first.commit(G, add, vec![]).unwrap();
    assert!(pc.rejected.is_empty(), "{:?}", pc.rejected);
    assert_eq!(pc.from_epoch, 0);
    assert!(relay.submit_commit(&pc.commit));
    first.confirm_commit(G).unwrap();
    let welcome = pc.welcome.unwrap();
    check_welcome(&welcome).unwrap();
    for d in rest {
        assert_eq!(d.join(&welcome).unwrap(), G);
        assert_eq!(d.epoch(G), Some(1));
    }
    devs
}

fn plaintext(p: Processed) -> (Vec<u8>, String) {
    match p {
        Processed::Application {
            plaintext, sender, ..
        } => (plaintext, sender),
        other => panic!("expected an application message, got {other:?}"),
    }
}

fn is_skipped(p: &Processed) -> bool {
    matches!(p, Processed::Skipped { .. })
}

/// Everyone in `devs` except `from` processes `msg`.
fn deliver(devs: &mut [MlsDevice], from: usize, msg: &[u8]) -> Vec<Processed> {
    devs.iter_mut()
        .enumerate()
        .filter(|(i, _)| *i != from)
        .map(|(_, d)| d.process(G, msg).unwrap())
        .collect()
}

#[test]
fn one_to_one() {
    let mut relay = Relay::default();
    let mut devs = setup(&mut relay, &["alice.phone", "bob.phone"]);
    for d in &devs {
        assert_eq!(d.members(G), vec!["alice.phone", "bob.phone"]);
    }
    let [alice, bob] = devs.as_mut_slice() else {
        unreachable!()
    };

    let aad = encode_aad(1_700_000_000_000);
    let m1 = alice.encrypt(G, b"hello bob", &aad).unwrap();
    assert_eq!(
        bob.process(G, &m1).unwrap(),
        Processed::Application {
            plaintext: b"hello bob".to_vec(),
            aad: aad.clone(),
            sender: "alice.phone".into(),
            epoch: 1,
        }
    );
    let m2 = bob.encrypt(G, b"hi alice", &encode_aad(0)).unwrap();
    let (pt, sender) = plaintext(alice.process(G, &m2).unwrap());
    assert_eq!(
        (pt.as_slice(), sender.as_str()),
        (&b"hi alice"[..], "bob.phone")
    );

    // The relay echoes own messages back: skipped, not an error.
    assert!(is_skipped(&alice.process(G, &m1).unwrap()));
    // An own commit echoed back while pending is told as such (no sender
    // needed); after confirming, and the commit that added carol as seen by
    // carol herself: skipped.
    let mut carol = device("carol.phone");
    let pc = alice.commit(G, vec![kp(&mut carol)], vec![]).unwrap();
    assert!(relay.submit_commit(&pc.commit));
    assert_eq!(
        alice.process(G, &pc.commit).unwrap(),
        Processed::OwnCommit { epoch: 1 }
    );
    assert_eq!(alice.epoch(G), Some(1), "not applied by processing");
    alice.confirm_commit(G).unwrap();
    assert!(is_skipped(&alice.process(G, &pc.commit).unwrap())); // own, applied
    carol.join(pc.welcome.as_ref().unwrap()).unwrap();
    assert!(is_skipped(&carol.process(G, &pc.commit).unwrap())); // before joining
    assert_eq!(
        bob.process(G, &pc.commit).unwrap(),
        Processed::Commit {
            epoch: 2,
            added: vec!["carol.phone".into()],
            removed: vec![],
            removed_me: false,
        }
    );
    // A commit delivered twice is skipped the second time.
    assert!(is_skipped(&bob.process(G, &pc.commit).unwrap()));
    let m3 = carol.encrypt(G, b"hi all", &aad).unwrap();
    assert_eq!(plaintext(alice.process(G, &m3).unwrap()).0, b"hi all");
    assert_eq!(plaintext(bob.process(G, &m3).unwrap()).0, b"hi all");
}

#[test]
fn group_of_50_devices() {
    // 10 accounts with 5 devices each: several devices per account are just
    // several device ids.
    let ids: Vec<String> = (0..10)
        .flat_map(|a| (0..5).map(move |d| format!("acct-{a}.dev-{d}")))
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut devs: Vec<MlsDevice> = ids.iter().map(|id| device(id)).collect();
    let mut relay = Relay::default();

    devs[0].create_group(G).unwrap();
    let add = devs[1..].iter_mut().map(kp).collect();
    let pc = devs[0].commit(G, add, vec![]).unwrap();
    assert_eq!(pc.added.len(), 49);
    // Add-only: no update path.
    let staged = devs[0].group_for_test(G).unwrap().pending_commit().unwrap();
    assert!(staged.update_path_leaf_node().is_none());
    assert!(relay.submit_commit(&pc.commit));
    devs[0].confirm_commit(G).unwrap();
    let welcome = pc.welcome.unwrap();
    for d in &mut devs[1..] {
        d.join(&welcome).unwrap();
    }
    for d in &devs {
        assert_eq!(d.members(G).len(), 50);
        assert_eq!(d.epoch(G), Some(1));
    }

    let m = devs[17].encrypt(G, b"to all 49", &[]).unwrap();
    for p in deliver(&mut devs, 17, &m) {
        let (pt, sender) = plaintext(p);
        assert_eq!(
            (pt.as_slice(), sender.as_str()),
            (&b"to all 49"[..], "acct-3.dev-2")
        );
    }

    // Member 33 removes the last device and adds a new one in one commit:
    // with a removal the commit carries a path.
    let mut newcomer = device("acct-10.dev-0");
    let pc = devs[33]
        .commit(G, vec![kp(&mut newcomer)], vec!["acct-9.dev-4".into()])
        .unwrap();
    assert_eq!(pc.removed, vec!["acct-9.dev-4"]);
    let staged = devs[33]
        .group_for_test(G)
        .unwrap()
        .pending_commit()
        .unwrap();
    assert!(staged.update_path_leaf_node().is_some());
    assert!(relay.submit_commit(&pc.commit));
    devs[33].confirm_commit(G).unwrap();
    for (i, p) in deliver(&mut devs, 33, &pc.commit).into_iter().enumerate() {
        let removed_me = i == 48; // devs[49] (index 48 once 33 is skipped)
        assert_eq!(
            p,
            Processed::Commit {
                epoch: 2,
                added: vec!["acct-10.dev-0".into()],
                removed: vec!["acct-9.dev-4".into()],
                removed_me,
            }
        );
    }
    let removed = devs.pop().unwrap();
    assert!(!removed.has_group(G));
    newcomer.join(pc.welcome.as_ref().unwrap()).unwrap();
    devs.push(newcomer);

    let m = devs[0].encrypt(G, b"epoch 2", &[]).unwrap();
    for p in deliver(&mut devs, 0, &m) {
        assert_eq!(plaintext(p).0, b"epoch 2");
    }
    for d in &devs {
        assert_eq!(d.members(G).len(), 50);
        assert!(!d.members(G).contains(&"acct-9.dev-4".to_string()));
    }
}

#[test]
fn removed_device_cannot_decrypt_later_messages() {
    let mut relay = Relay::default();
    let mut devs = setup(&mut relay, &["a", "b", "c", "d"]);
    let before = devs[0].encrypt(G, b"before", &[]).unwrap();

    let pc = devs[0]
        .commit(G, vec![], vec!["c".into(), "d".into(), "nobody".into()])
        .unwrap();
    assert_eq!(pc.removed, vec!["c", "d"]);
    assert!(pc.welcome.is_none());
    assert!(relay.submit_commit(&pc.commit));
    devs[0].confirm_commit(G).unwrap();
    assert_eq!(devs[0].members(G), vec!["a", "b"]);

    let expected = |removed_me| Processed::Commit {
        epoch: 2,
        added: vec![],
        removed: vec!["c".into(), "d".into()],
        removed_me,
    };
    assert_eq!(devs[1].process(G, &pc.commit).unwrap(), expected(false));
    // c processes its removal and forgets the group; d never sees it.
    assert_eq!(devs[2].process(G, &pc.commit).unwrap(), expected(true));
    assert!(!devs[2].has_group(G));
    assert!(devs[3].has_group(G));

    let after = devs[0].encrypt(G, b"after", &[]).unwrap();
    assert_eq!(plaintext(devs[1].process(G, &after).unwrap()).0, b"after");
    assert!(matches!(
        devs[2].process(G, &after),
        Err(MlsError::UnknownGroup { .. })
    ));
    assert!(matches!(
        devs[3].process(G, &after),
        Err(MlsError::FutureEpoch {
            message_epoch: 2,
            current: 1,
            ..
        })
    ));
    // Messages of its last epoch are still readable by d (it was a member).
    assert_eq!(plaintext(devs[3].process(G, &before).unwrap()).0, b"before");
    // Once d processes the removal, the group is gone for it too.
    assert_eq!(devs[3].process(G, &pc.commit).unwrap(), expected(true));
    assert!(devs[3].process(G, &after).is_err());
}

#[test]
fn newcomer_cannot_read_messages_from_before_it_joined() {
    let mut relay = Relay::default();
    let mut devs = setup(&mut relay, &["a", "b"]);
    let old = devs[1].encrypt(G, b"secret from epoch 1", &[]).unwrap();
    let unread = devs[1].encrypt(G, b"also from epoch 1", &[]).unwrap();

    let mut n = device("n");
    let pc = devs[0].commit(G, vec![kp(&mut n)], vec![]).unwrap();
    assert!(relay.submit_commit(&pc.commit));
    // Members read the log in order: the epoch-1 message, then the commit
    // (the committer too, with its commit still pending).
    assert_eq!(
        plaintext(devs[0].process(G, &old).unwrap()).0,
        b"secret from epoch 1"
    );
    devs[0].confirm_commit(G).unwrap();
    devs[1].process(G, &pc.commit).unwrap();
    n.join(pc.welcome.as_ref().unwrap()).unwrap();

    let p = n.process(G, &old).unwrap();
    assert!(is_skipped(&p), "{p:?}");
    assert!(is_skipped(&n.process(G, &pc.commit).unwrap()));

    let new = devs[1].encrypt(G, b"welcome n", &[]).unwrap();
    assert_eq!(plaintext(n.process(G, &new).unwrap()).0, b"welcome n");
    // After the commit the epoch-1 keys are gone: no past epochs are kept.
    assert!(devs[0].process(G, &unread).is_err());
}

#[test]
fn concurrent_commits_one_wins_loser_recommits() {
    let mut relay = Relay::default();
    let mut devs = setup(&mut relay, &["a", "b"]);
    let (mut c, mut d) = (device("c"), device("d"));

    // Both commit on epoch 1: a adds c, b adds c and d.
    let c_kp2 = kp(&mut c);
    let pa = devs[0].commit(G, vec![kp(&mut c)], vec![]).unwrap();
    let pb = devs[1].commit(G, vec![c_kp2, kp(&mut d)], vec![]).unwrap();
    assert_eq!((pa.from_epoch, pb.from_epoch), (1, 1));
    // A second commit while one is pending is refused.
    assert!(matches!(
        devs[1].commit(G, vec![], vec![]),
        Err(MlsError::CommitPending { epoch: 1, .. })
    ));

    assert!(relay.submit_commit(&pa.commit));
    assert!(!relay.submit_commit(&pb.commit));
    devs[0].confirm_commit(G).unwrap();
    c.join(pa.welcome.as_ref().unwrap()).unwrap();

    // The loser discards, catches up, and commits again.
    devs[1].discard_commit(G).unwrap();
    assert_eq!(devs[1].epoch(G), Some(1));
    assert!(matches!(
        devs[1].process(G, &pa.commit).unwrap(),
        Processed::Commit { epoch: 2, .. }
    ));
    let retry = devs[1]
        .commit(
            G,
            vec![
                ("c".into(), c.key_packages(1).unwrap().remove(0)),
                kp(&mut d),
            ],
            vec![],
        )
        .unwrap();
    assert_eq!(retry.from_epoch, 2);
    assert_eq!(retry.added, vec!["d"]);
    assert_eq!(
        retry.rejected,
        vec![("c".to_string(), "already a member of the group".to_string())]
    );
    assert!(relay.submit_commit(&retry.commit));
    devs[1].confirm_commit(G).unwrap();
    devs[0].process(G, &retry.commit).unwrap();
    c.process(G, &retry.commit).unwrap();
    d.join(retry.welcome.as_ref().unwrap()).unwrap();
    devs.push(c);
    devs.push(d);

    for d in &devs {
        assert_eq!(d.epoch(G), Some(3));
        assert_eq!(d.members(G), vec!["a", "b", "c", "d"]);
    }
    let m = devs[3].encrypt(G, b"all in sync", &[]).unwrap();
    for p in deliver(&mut devs, 3, &m) {
        assert_eq!(plaintext(p).0, b"all in sync");
    }
}

#[test]
fn first_commit_race_loser_forgets_its_group_and_joins() {
    let mut relay = Relay::default();
    let (mut x, mut y) = (device("x"), device("y"));
    x.create_group(G).unwrap();
    y.create_group(G).unwrap();
    let px = x.commit(G, vec![kp(&mut y)], vec![]).unwrap();
    let py = y.commit(G, vec![kp(&mut x)], vec![]).unwrap();
    assert!(relay.submit_commit(&px.commit));
    assert!(!relay.submit_commit(&py.commit));
    x.confirm_commit(G).unwrap();
    assert!(matches!(
        x.create_group(G),
        Err(MlsError::GroupExists { epoch: 1, .. })
    ));
    y.discard_commit(G).unwrap();
    assert!(!y.has_group(G));
    y.join(px.welcome.as_ref().unwrap()).unwrap();
    let m = x.encrypt(G, b"one group", &[]).unwrap();
    assert_eq!(plaintext(y.process(G, &m).unwrap()).0, b"one group");
}

#[test]
fn readded_device_replaces_its_stale_group() {
    // b is removed and added again before it processed its removal.
    let mut relay = Relay::default();
    let mut devs = setup(&mut relay, &["a", "b"]);
    let removal = devs[0].commit(G, vec![], vec!["b".into()]).unwrap();
    assert!(relay.submit_commit(&removal.commit));
    devs[0].confirm_commit(G).unwrap();
    let lr = devs[1].last_resort_key_package().unwrap();
    let readd = devs[0].commit(G, vec![("b".into(), lr)], vec![]).unwrap();
    assert!(relay.submit_commit(&readd.commit));
    devs[0].confirm_commit(G).unwrap();

    let welcome = readd.welcome.unwrap();
    assert_eq!(devs[1].epoch(G), Some(1));
    assert_eq!(devs[1].join(&welcome).unwrap(), G);
    assert_eq!(devs[1].epoch(G), Some(3));
    assert!(is_skipped(&devs[1].process(G, &removal.commit).unwrap()));
    assert!(is_skipped(&devs[1].process(G, &readd.commit).unwrap()));
    let m = devs[0].encrypt(G, b"welcome back", &[]).unwrap();
    assert_eq!(
        plaintext(devs[1].process(G, &m).unwrap()).0,
        b"welcome back"
    );
    // The same Welcome again (the last-resort key is still there) does not
    // replace the current state.
    assert!(matches!(
        devs[1].join(&welcome),
        Err(MlsError::GroupExists { epoch: 3, .. })
    ));
}

#[test]
fn reinstalled_device_is_replaced_in_one_commit() {
    // Same device id, new keys (say, the app was reinstalled): remove the
    // old leaf and add the new one in one commit.
    let mut relay = Relay::default();
    let mut devs = setup(&mut relay, &["a", "b"]);
    let mut b2 = device("b");
    let pc = devs[0]
        .commit(G, vec![kp(&mut b2)], vec!["b".into()])
        .unwrap();
    assert_eq!(
        (pc.added.as_slice(), pc.removed.as_slice()),
        (&["b".to_string()][..], &["b".to_string()][..])
    );
    assert!(relay.submit_commit(&pc.commit));
    devs[0].confirm_commit(G).unwrap();
    assert!(matches!(
        devs[1].process(G, &pc.commit).unwrap(),
        Processed::Commit {
            removed_me: true,
            ..
        }
    ));
    b2.join(pc.welcome.as_ref().unwrap()).unwrap();
    assert_eq!(b2.members(G), vec!["a", "b"]);
    let m = b2.encrypt(G, b"new install", &[]).unwrap();
    assert_eq!(plaintext(devs[0].process(G, &m).unwrap()).0, b"new install");
}

#[test]
fn join_group_refuses_a_welcome_for_another_group() {
    let mut a = device("a");
    let mut b = device("b");
    a.create_group(b"other").unwrap();
    let pc = a.commit(b"other", vec![kp(&mut b)], vec![]).unwrap();
    a.confirm_commit(b"other").unwrap();
    let e = b.join_group(G, pc.welcome.as_ref().unwrap()).unwrap_err();
    assert!(matches!(e, MlsError::GroupMismatch { .. }), "{e}");
    assert!(!b.has_group(b"other") && !b.has_group(G));
}

#[test]
fn a_commit_adding_an_undeclared_device_is_refused_and_changes_nothing() {
    for declared in [&["d"][..], &["c", "d"][..]] {
        let mut relay = Relay::default();
        let mut devs = setup(&mut relay, &["a", "b"]);
        let mut c = device("c");
        let pc = devs[0].commit(G, vec![kp(&mut c)], vec![]).unwrap();
        assert!(relay.submit_commit(&pc.commit));
        let declared: Vec<String> = declared.iter().map(|d| (*d).to_owned()).collect();
        let b = &mut devs[1];
        let got = b.process_declared(G, &pc.commit, &declared);
        if declared.contains(&"c".to_owned()) {
            assert!(matches!(got, Ok(Processed::Commit { epoch: 2, .. })));
            assert_eq!(b.members(G), vec!["a", "b", "c"]);
        } else {
            let e = got.unwrap_err();
            assert!(
                matches!(&e, MlsError::UndeclaredAdd { device, .. } if device == "c"),
                "{e}"
            );
            assert_eq!(b.epoch(G), Some(1), "nothing applied");
            assert_eq!(b.members(G), vec!["a", "b"]);
        }
    }
}

#[test]
fn a_self_update_renews_the_leaf_key_and_the_others_follow() {
    let mut relay = Relay::default();
    let mut devs = setup(&mut relay, &["a", "b"]);
    let before = devs[0].own_leaf_key(G).unwrap();
    let renewed = devs[0].key_renewed_at_ms(G).unwrap();
    let pc = devs[0].renew_leaf_key(G).unwrap();
    assert!(pc.added.is_empty() && pc.removed.is_empty() && pc.welcome.is_none());
    assert!(relay.submit_commit(&pc.commit));
    devs[0].confirm_commit(G).unwrap();
    assert_ne!(devs[0].own_leaf_key(G).unwrap(), before, "a new leaf key");
    assert!(devs[0].key_renewed_at_ms(G).unwrap() >= renewed);
    // It adds nobody, so it passes the check with nothing declared.
    let p = devs[1].process_declared(G, &pc.commit, &[]).unwrap();
    assert!(
        matches!(&p, Processed::Commit { epoch: 2, added, removed, .. }
            if added.is_empty() && removed.is_empty()),
        "{p:?}"
    );
    let m = devs[0].encrypt(G, b"after", &[]).unwrap();
    assert_eq!(plaintext(devs[1].process(G, &m).unwrap()).0, b"after");
}
