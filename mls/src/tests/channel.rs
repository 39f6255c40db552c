//! Sender keys for large channels: one ciphertext per post, keys handed
//! out in sub-groups, a removed member reads nothing after the next key.

use super::*;

const C: &str = "info";
const G1: &[u8] = b"info~0";
const G2: &[u8] = b"info~1";

/// The publisher `p` and the sub-groups G1 = {p, a, b}, G2 = {p, c, d}.
struct Channel {
    relay: Relay,
    p: MlsDevice,
    members: Vec<(Vec<u8>, MlsDevice)>,
}

fn channel() -> Channel {
    let mut relay = Relay::default();
    let mut p = device("p");
    let mut members = Vec::new();
    for (gid, ids) in [(G1, ["a", "b"]), (G2, ["c", "d"])] {
        p.create_group(gid).unwrap();
        let mut devs: Vec<MlsDevice> = ids.iter().map(|id| device(id)).collect();
        let add = devs.iter_mut().map(kp).collect();
        let pc = p.commit(gid, add, vec![]).unwrap();
        assert!(relay.submit_commit(&pc.commit));
        p.confirm_commit(gid).unwrap();
        let welcome = pc.welcome.unwrap();
        for d in devs {
            let mut d = d;
            d.join(&welcome).unwrap();
            members.push((gid.to_vec(), d));
        }
    }
    Channel { relay, p, members }
}

impl Channel {
    /// The publisher makes a new key and hands it out in both sub-groups;
    /// every member still in one takes it.
    fn rotate(&mut self) -> u64 {
        let epoch = self.p.rotate_sender_key(C).unwrap();
        for gid in [G1, G2] {
            let msg = self.p.sender_key_message(C, gid, &[]).unwrap();
            for (g, d) in &mut self.members {
                if g.as_slice() != gid || d.epoch(gid).is_none() {
                    continue;
                }
                let (payload, sender) = plaintext(d.process(gid, &msg).unwrap());
                assert_eq!(
                    d.accept_sender_key(gid, C, &sender, &payload).unwrap(),
                    epoch
                );
            }
        }
        epoch
    }

    fn member(&mut self, id: &str) -> &mut MlsDevice {
        &mut self
            .members
            .iter_mut()
            .find(|(_, d)| d.device_id() == id)
            .unwrap()
            .1
    }
}

#[test]
fn a_post_is_one_ciphertext_that_every_member_reads() {
    let mut ch = channel();
    assert_eq!(ch.rotate(), 1);
    let aad = encode_aad(0);
    let post = ch.p.encrypt_post(C, b"polls open at 8", &aad).unwrap();
    for (_, d) in &mut ch.members {
        let got = d.decrypt_post(C, &post, &aad).unwrap();
        assert_eq!(got.plaintext, b"polls open at 8");
        assert_eq!((got.sender.as_str(), got.epoch), ("p", 1));
    }
    // The publisher reads its own posts too.
    assert_eq!(
        ch.p.decrypt_post(C, &post, &aad).unwrap().plaintext,
        b"polls open at 8"
    );
    // Another expiry than the one it was sent with: refused.
    let e = ch.members[0]
        .1
        .decrypt_post(C, &post, &encode_aad(5))
        .unwrap_err();
    assert!(matches!(e, MlsError::BadSenderKey(_)), "{e}");
    // Delivered again (by a relay, or anyone who kept it): refused.
    let e = ch.members[1].1.decrypt_post(C, &post, &aad).unwrap_err();
    assert!(e.to_string().contains("read before"), "{e}");
    let next = ch.p.encrypt_post(C, b"the next one", &aad).unwrap();
    assert_eq!(
        ch.members[1]
            .1
            .decrypt_post(C, &next, &aad)
            .unwrap()
            .plaintext,
        b"the next one"
    );
}

#[test]
fn a_removed_member_reads_nothing_posted_after_the_next_key() {
    let mut ch = channel();
    ch.rotate();
    let before = ch.p.encrypt_post(C, b"before", &[]).unwrap();
    // b is removed from its sub-group; the others of G1 apply the commit.
    let pc = ch.p.commit(G1, vec![], vec!["b".into()]).unwrap();
    assert!(ch.relay.submit_commit(&pc.commit));
    ch.p.confirm_commit(G1).unwrap();
    for id in ["a", "b"] {
        ch.member(id).process(G1, &pc.commit).unwrap();
    }
    assert_eq!(ch.member("b").epoch(G1), None, "b left its sub-group");
    assert_eq!(ch.rotate(), 2);
    let after = ch.p.encrypt_post(C, b"after", &[]).unwrap();
    for id in ["a", "c", "d"] {
        assert_eq!(
            ch.member(id)
                .decrypt_post(C, &after, &[])
                .unwrap()
                .plaintext,
            b"after"
        );
    }
    let e = ch.member("b").decrypt_post(C, &after, &[]).unwrap_err();
    assert!(
        matches!(&e, MlsError::NoSenderKey { epoch: Some(2), .. }),
        "{e}"
    );
    // What it had before its removal it could read then.
    assert_eq!(
        ch.member("b")
            .decrypt_post(C, &before, &[])
            .unwrap()
            .plaintext,
        b"before"
    );
}

#[test]
fn a_newcomer_reads_nothing_posted_before_its_key() {
    let mut ch = channel();
    ch.rotate();
    let old = ch.p.encrypt_post(C, b"old", &[]).unwrap();
    let mut e = device("e");
    let pc = ch.p.commit(G2, vec![kp(&mut e)], vec![]).unwrap();
    assert!(ch.relay.submit_commit(&pc.commit));
    ch.p.confirm_commit(G2).unwrap();
    for id in ["c", "d"] {
        ch.member(id).process(G2, &pc.commit).unwrap();
    }
    e.join(&pc.welcome.unwrap()).unwrap();
    ch.members.push((G2.to_vec(), e));
    assert_eq!(ch.rotate(), 2);
    let new = ch.p.encrypt_post(C, b"new", &[]).unwrap();
    let e = ch.member("e");
    assert_eq!(e.decrypt_post(C, &new, &[]).unwrap().plaintext, b"new");
    assert!(matches!(
        e.decrypt_post(C, &old, &[]),
        Err(MlsError::NoSenderKey { epoch: Some(1), .. })
    ));
}

#[test]
fn a_member_who_knows_the_key_cannot_forge_a_post() {
    let mut ch = channel();
    ch.rotate();
    let forged = ch
        .member("a")
        .forge_post_as(C, "p", b"polls closed, go home");
    let e = ch.member("c").decrypt_post(C, &forged, &[]).unwrap_err();
    assert!(e.to_string().contains("not signed by p"), "{e}");
    // A flipped bit anywhere in a real post, or a cut one, is refused.
    let post = ch.p.encrypt_post(C, b"real", &[]).unwrap();
    for i in [6, post.len() / 2, post.len() - 1] {
        let mut bad = post.clone();
        bad[i] ^= 1;
        let r = ch.member("d").decrypt_post(C, &bad, &[]);
        assert!(r.is_err(), "byte {i} flipped and still accepted");
    }
    let e = ch
        .member("d")
        .decrypt_post(C, &post[..post.len() - 3], &[])
        .unwrap_err();
    assert!(matches!(e, MlsError::BadSenderKey(_)), "{e}");
    // A key message for another channel is not taken for this one.
    ch.p.rotate_sender_key("other").unwrap();
    let msg = ch.p.sender_key_message("other", G1, &[]).unwrap();
    let a = ch.member("a");
    let (payload, sender) = plaintext(a.process(G1, &msg).unwrap());
    let e = a.accept_sender_key(G1, C, &sender, &payload).unwrap_err();
    assert!(e.to_string().contains("for channel \"other\""), "{e}");
}

#[test]
fn sender_keys_survive_reopening_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let (pp, ap) = (dir.path().join("p.mls"), dir.path().join("a.mls"));
    let mut relay = Relay::default();
    let mut p = MlsDevice::create("p", Some(&pp)).unwrap();
    let mut a = MlsDevice::create("a", Some(&ap)).unwrap();
    p.create_group(G1).unwrap();
    let pc = p.commit(G1, vec![kp(&mut a)], vec![]).unwrap();
    assert!(relay.submit_commit(&pc.commit));
    p.confirm_commit(G1).unwrap();
    a.join(&pc.welcome.unwrap()).unwrap();
    for _ in 0..3 {
        p.rotate_sender_key(C).unwrap();
    }
    let msg = p.sender_key_message(C, G1, &[]).unwrap();
    let (payload, sender) = plaintext(a.process(G1, &msg).unwrap());
    a.accept_sender_key(G1, C, &sender, &payload).unwrap();
    drop((p, a));
    let mut p = MlsDevice::open(&pp).unwrap();
    let mut a = MlsDevice::open(&ap).unwrap();
    assert_eq!(p.sender_key_epoch(C), Some(3));
    let post = p.encrypt_post(C, b"after a restart", &[]).unwrap();
    assert_eq!(
        a.decrypt_post(C, &post, &[]).unwrap().plaintext,
        b"after a restart"
    );
    // What a reader has read stays read across its restarts.
    drop(a);
    let mut a = MlsDevice::open(&ap).unwrap();
    let e = a.decrypt_post(C, &post, &[]).unwrap_err();
    assert!(e.to_string().contains("read before"), "{e}");
}
