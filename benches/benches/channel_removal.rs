//! What removing one member from a large channel costs the network: the
//! bytes every remaining member receives, and in total, with one MLS group
//! for the whole channel against sender keys handed out in sub-groups
//! (docs/e2e.md, "Large channels").
//!
//! Both are built with Herold's own `herold_mls::MlsDevice`, as the SDK
//! builds them: members added in add-only commits (no path), removals in a
//! commit with a path.
//!
//! - **One group**: a publisher and N-1 members in one MLS group; the
//!   removal is one commit that every remaining member receives. Run for
//!   several N to show where the size comes from: a tree filled by add-only
//!   commits has blank parent nodes, so the path secrets are encrypted to
//!   every leaf, one HPKE ciphertext per member.
//! - **Sub-groups**: the N-1 members split into K sub-groups (the publisher
//!   in each). The removal is a commit in the removed member's sub-group
//!   (its members receive it) and a new sender key handed out in every
//!   sub-group (each remaining member receives one key message). A post is
//!   one ciphertext for all. One sub-group is built for real; the other
//!   K-1 receive the same key message size.
//!
//! Every size is of a real message, checked for use: a member applies the
//! removal and reads the next post, the removed member cannot.
//!
//! Run: `cargo bench -p herold-benches --bench channel_removal`.
//! `HEROLD_MLS_SIZES` (default `100,1000,7000`) picks the channel sizes,
//! `HEROLD_SUBGROUPS` (default 128) the number of sub-groups.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

use std::time::Instant;

use herold_mls::{MlsDevice, MlsError, Processed};

const CHANNEL: &str = "election-info";

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name).map_or_else(
        |_| default.to_vec(),
        |v| v.split(',').map(|s| s.trim().parse().unwrap()).collect(),
    )
}

fn human(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// A publisher with a group of `members` members added in add-only commits
/// of 1,000, plus one real member device (`vol-00000.phone`) that joined.
fn group(gid: &[u8], members: usize) -> (MlsDevice, MlsDevice) {
    let mut p = MlsDevice::create("publisher.pc", None).unwrap();
    p.create_group(gid).unwrap();
    let mut watcher = MlsDevice::create("vol-00000.phone", None).unwrap();
    let mut add = vec![(
        "vol-00000.phone".to_owned(),
        watcher.key_packages(1).unwrap().remove(0),
    )];
    add.extend((1..members).map(|i| {
        let id = format!("vol-{i:05}.phone");
        let mut d = MlsDevice::create(&id, None).unwrap();
        let kp = d.key_packages(1).unwrap().remove(0);
        (id, kp)
    }));
    let mut first = true;
    for batch in add.chunks(1000) {
        let pc = p.commit(gid, batch.to_vec(), vec![]).unwrap();
        p.confirm_commit(gid).unwrap();
        if first {
            watcher.join(&pc.welcome.unwrap()).unwrap();
            first = false;
        } else {
            watcher.process(gid, &pc.commit).unwrap();
        }
    }
    (p, watcher)
}

/// Removes `vol-00001.phone`: the commit's bytes; the watcher applies it.
fn remove_one(p: &mut MlsDevice, watcher: &mut MlsDevice, gid: &[u8]) -> usize {
    let pc = p
        .commit(gid, vec![], vec!["vol-00001.phone".into()])
        .unwrap();
    assert_eq!(pc.removed, ["vol-00001.phone"]);
    p.confirm_commit(gid).unwrap();
    let applied = watcher.process(gid, &pc.commit).unwrap();
    assert!(matches!(applied, Processed::Commit { .. }), "{applied:?}");
    pc.commit.len()
}

fn main() {
    let sizes = env_list("HEROLD_MLS_SIZES", &[100, 1000, 7000]);
    let k = env_list("HEROLD_SUBGROUPS", &[128])[0];
    println!(
        "| members N | design | removal: to each member of the removed one's group | to every other member | total | one post |"
    );
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        let started = Instant::now();
        // One MLS group for the whole channel.
        let gid = CHANNEL.as_bytes();
        let (mut p, mut watcher) = group(gid, n - 1);
        let commit = remove_one(&mut p, &mut watcher, gid);
        let post = p.encrypt(gid, &[0x42; 300], &[]).unwrap();
        assert!(matches!(
            watcher.process(gid, &post).unwrap(),
            Processed::Application { .. }
        ));
        let remaining = n - 2; // neither the publisher nor the removed one
        let one_group_total = (commit * remaining) as f64;
        println!(
            "| {n} | one group | {} | {} | {} | {} |",
            human(commit as f64),
            human(commit as f64),
            human(one_group_total),
            human(post.len() as f64),
        );
        eprintln!(
            "N = {n}: one group measured in {:.1} s; {:.1} B of commit per remaining member",
            Instant::now()
                .saturating_duration_since(started)
                .as_secs_f64(),
            commit as f64 / remaining as f64
        );

        // Sender keys over K sub-groups of about (N-1)/K members.
        let per = (n - 1).div_ceil(k).max(2);
        let groups = (n - 1).div_ceil(per);
        let sub = b"election-info~0";
        let (mut p, mut watcher) = group(sub, per);
        p.rotate_sender_key(CHANNEL).unwrap();
        let commit = remove_one(&mut p, &mut watcher, sub);
        p.rotate_sender_key(CHANNEL).unwrap();
        let key_message = p.sender_key_message(CHANNEL, sub, &[]).unwrap();
        let Processed::Application {
            plaintext, sender, ..
        } = watcher.process(sub, &key_message).unwrap()
        else {
            panic!("the key message is an application message");
        };
        watcher
            .accept_sender_key(sub, CHANNEL, &sender, &plaintext)
            .unwrap();
        let post = p.encrypt_post(CHANNEL, &[0x42; 300], &[]).unwrap();
        assert_eq!(
            watcher.decrypt_post(CHANNEL, &post, &[]).unwrap().plaintext,
            [0x42; 300]
        );
        let mut removed = MlsDevice::create("vol-00001.phone", None).unwrap();
        assert!(matches!(
            removed.decrypt_post(CHANNEL, &post, &[]),
            Err(MlsError::NoSenderKey { .. })
        ));
        let in_group = per - 1; // the removed one's sub-group, after it
        let total = (commit * in_group + key_message.len() * remaining) as f64;
        println!(
            "| {n} | {groups} sub-groups of {per} | {} | {} | {} | {} |",
            human((commit + key_message.len()) as f64),
            human(key_message.len() as f64),
            human(total),
            human(post.len() as f64),
        );
        eprintln!(
            "N = {n}: one group / sub-groups, in total: {:.0}x",
            one_group_total / total
        );
    }
}
