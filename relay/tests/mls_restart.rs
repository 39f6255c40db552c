//! A broken MLS group is restarted: a member's commit that nobody can
//! process does not stop the conversation, and restarts are rate-limited.
//! See docs/e2e.md, "A broken group: restart".

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mls_net;

use common::*;
use herold_client::Client;
use herold_mls::MlsDevice;
use herold_proto::v1::{self, ConversationKind, ErrorCode};
use mls_net::*;

/// Uploads key packages of a device whose MLS state the test holds itself
/// (a device that does not run the SDK), so that members add it.
async fn upload_packages(client: &Client, mls: &mut MlsDevice) {
    client
        .sender()
        .request(v1::request::Kind::UploadKeyPackages(
            v1::UploadKeyPackages {
                key_packages: mls.key_packages(4).unwrap(),
                last_resort: mls.last_resort_key_package().unwrap(),
            },
        ))
        .await
        .unwrap();
}

async fn mls_state_of(client: &Client, conv: &str) -> v1::MlsState {
    match client
        .sender()
        .request(v1::request::Kind::GetMlsState(v1::GetMlsState {
            conversation_id: conv.into(),
        }))
        .await
        .unwrap()
    {
        v1::response::Kind::MlsState(s) => s,
        other => panic!("{other:?}"),
    }
}

async fn reset(
    client: &Client,
    conv: &str,
    generation: u64,
    epoch: u64,
) -> Result<v1::response::Kind, herold_client::ClientError> {
    client
        .sender()
        .request(v1::request::Kind::ResetMlsGroup(v1::ResetMlsGroup {
            conversation_id: conv.into(),
            generation,
            epoch,
        }))
        .await
}

fn mls_submit(conv: &str, ciphertext: Vec<u8>, roster_version: u64) -> v1::Submit {
    v1::Submit {
        message_id: herold_client::new_message_id().unwrap().to_vec(),
        conversation_id: conv.into(),
        ciphertext,
        mls: true,
        mls_roster_version: roster_version,
        ..Default::default()
    }
}

/// Members ga.1 and gb.1 run the SDK; gm.1, the hostile member, runs its
/// own MLS code on a raw connection. All three are in the group "broken" at
/// epoch 1, and gb.1 has read "before".
struct Hostile {
    net: Net,
    a1: herold_client::e2e::E2eClient,
    b1: herold_client::e2e::E2eClient,
    m1: Client,
    mls: MlsDevice,
    roster_version: u64,
}

async fn hostile_group(relay: &TestRelay) -> Hostile {
    let net = Net::new(relay.addr, relay.fingerprint);
    for a in ["ga", "gb", "gm"] {
        relay.account(a).await;
    }
    let akey = relay.device("ga", "ga.1").await;
    let bkey = relay.device("gb", "gb.1").await;
    let mkey = relay.device("gm", "gm.1").await;
    let a1 = net.connect("ga.1", &akey).await;
    let b1 = net.connect("gb.1", &bkey).await;
    let m1 = relay.client("gm.1", &mkey).await;
    let mut mls = MlsDevice::create("gm.1", None).unwrap();
    upload_packages(&m1, &mut mls).await;
    relay
        .conversation("broken", ConversationKind::Group, &["ga", "gb", "gm"])
        .await;
    a1.send("broken", b"before", 0).await.unwrap();
    net.all_read(&["gb.1".to_owned()], "broken", &["before"])
        .await;
    let welcome = match m1
        .sender()
        .request(v1::request::Kind::FetchWelcome(v1::FetchWelcome {
            conversation_id: "broken".into(),
        }))
        .await
        .unwrap()
    {
        v1::response::Kind::Welcome(w) => w.welcome,
        other => panic!("{other:?}"),
    };
    mls.join_group(b"broken", &welcome).unwrap();
    let st = mls_state_of(&m1, "broken").await;
    assert_eq!((st.generation, st.epoch), (0, 1));
    assert_eq!(mls.epoch(b"broken"), Some(1));
    Hostile {
        net,
        a1,
        b1,
        m1,
        mls,
        roster_version: st.roster_version,
    }
}

/// A member sends a commit that is correctly framed for the current epoch
/// (the relay cannot tell) but that no member can process. The members
/// that fail it ask for a restart; the group starts again as a new
/// generation, everyone is added back, and the conversation goes on. What
/// the hostile member sends in the old group is refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_nobody_can_process_does_not_stop_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let Hostile {
        net,
        a1,
        b1,
        m1,
        mut mls,
        roster_version,
    } = hostile_group(&relay).await;

    // A real commit with its encrypted content spoiled: the framing (group,
    // epoch, content type) is intact, so the relay takes it for epoch 1.
    let mut garbage = mls.commit(b"broken", vec![], vec![]).unwrap().commit;
    let last = garbage.len() - 1;
    garbage[last] ^= 0xff;
    let header = herold_mls::inspect(&garbage).unwrap();
    assert_eq!(header.epoch, 1);
    m1.sender()
        .submit(mls_submit("broken", garbage, roster_version))
        .await
        .expect("the relay cannot tell a spoiled commit");
    mls.discard_commit(b"broken").unwrap();

    // The others keep talking, in a restarted group.
    b1.send("broken", b"after", 0).await.unwrap();
    net.all_read(&["ga.1".to_owned()], "broken", &["after"])
        .await;
    a1.send("broken", b"reply", 0).await.unwrap();
    net.until("gb.1 read the reply", |i| {
        i.texts("gb.1", "broken") == vec!["before".to_owned(), "reply".to_owned()]
    })
    .await;
    assert_eq!(a1.generation("broken"), 1);
    assert_eq!(b1.generation("broken"), 1);
    assert_eq!(a1.epoch("broken"), b1.epoch("broken"));
    for d in ["ga.1", "gb.1"] {
        assert_eq!(
            net.inbox.restarted.lock().unwrap().get(d),
            Some(&vec![("broken".to_owned(), 1)]),
            "{d} was told of the restart once"
        );
    }
    let st = mls_state_of(&m1, "broken").await;
    assert_eq!(st.generation, 1);
    assert!(st.epoch >= 1, "{st:?}");

    // The old group is dead at the relay: its messages and commits are
    // refused, and a late restart request for it changes nothing.
    let old = mls
        .encrypt(b"broken", b"x", &herold_mls::encode_aad(0))
        .unwrap();
    let e = m1
        .sender()
        .submit(mls_submit("broken", old, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MlsWrongEpoch), "{e}");
    assert!(e.to_string().contains("restarted"), "{e}");
    let e = reset(&m1, "broken", 0, 2).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MlsWrongEpoch), "{e}");
    // A group id of the conversation that is no generation of it.
    let mut foreign = MlsDevice::create("gm.1", None).unwrap();
    foreign.create_group(b"broken#01").unwrap();
    let commit = foreign.commit(b"broken#01", vec![], vec![]).unwrap().commit;
    let e = m1
        .sender()
        .submit(mls_submit("broken", commit, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MlsInvalid), "{e}");
    // The hostile member was added back to the new group too (it is on the
    // roster); removing it is the organisation's call.
    assert!(a1.group_members("broken").contains(&"gm.1".to_owned()));
    m1.close().await;
    relay.stop().await;
}

/// A member's commit adds a device that is not on the roster (a spy of its
/// own) while declaring to the relay only a device that is. The relay
/// cannot tell the difference; every other member can: they refuse the
/// commit, the group restarts without the spy, and the conversation goes
/// on. The spy, holding the Welcome the hostile member passed to it, can
/// read nothing posted afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_adding_a_device_off_the_roster_is_refused_by_the_members() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let Hostile {
        net,
        a1,
        b1,
        mut m1,
        mut mls,
        roster_version,
    } = hostile_group(&relay).await;
    let mut spy = MlsDevice::create("spy.1", None).unwrap();
    let package = spy.key_packages(1).unwrap().remove(0);
    let pending = mls
        .commit(b"broken", vec![("spy.1".into(), package)], vec![])
        .unwrap();
    assert_eq!(pending.added, vec!["spy.1".to_owned()]);
    let welcome = pending.welcome.clone().unwrap();
    let mut submit = mls_submit("broken", pending.commit, roster_version);
    submit.mls_welcome = welcome.clone();
    submit.mls_welcome_devices = vec!["ga.1".into()];
    let commit_seq = m1
        .sender()
        .submit(submit)
        .await
        .expect("the relay checks only the declared devices")
        .seq;
    mls.confirm_commit(b"broken").unwrap();
    spy.join_group(b"broken", &welcome).unwrap();
    assert_eq!(spy.epoch(b"broken"), Some(2), "the spy is in the old group");

    // Both members refuse the commit ...
    net.until("both members refused the commit", |i| {
        let unread = i.unreadable.lock().unwrap();
        ["ga.1", "gb.1"].iter().all(|d| {
            unread.get(*d).is_some_and(|v| {
                v.iter().any(|(c, seq, why)| {
                    c == "broken" && *seq == commit_seq && why.contains("\"spy.1\"")
                })
            })
        })
    })
    .await;
    // ... and talk on in a group without the spy.
    let after = b1.send("broken", b"after", 0).await.unwrap();
    net.all_read(&["ga.1".to_owned()], "broken", &["after"])
        .await;
    for c in [&a1, &b1] {
        assert_eq!(c.generation("broken"), 1);
        let members = c.group_members("broken");
        assert!(!members.contains(&"spy.1".to_owned()), "{members:?}");
        assert!(members.contains(&"gm.1".to_owned()), "{members:?}");
    }
    // What the spy gets of "after" (through the hostile member's
    // connection) is a message of a group it is not in.
    let got = raw_until(&mut m1, "broken", after.seq).await;
    let header = herold_mls::inspect(&got[&after.seq]).unwrap();
    assert_eq!(header.group_id, b"broken#1");
    let e = spy.process(&header.group_id, &got[&after.seq]).unwrap_err();
    assert!(
        matches!(e, herold_mls::MlsError::UnknownGroup { .. }),
        "{e}"
    );
    m1.close().await;
    relay.stop().await;
}

/// Restarts are rate-limited per conversation (`mls_restarts_per_hour`,
/// burst 2): a member asking again and again gets RATE_LIMITED with the
/// time to wait; other conversations restart as before, and their members
/// keep talking meanwhile. Requests for an epoch that is not the current
/// one, or before the first commit, change nothing and cost no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_are_rate_limited_per_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = herold_relay::Config::dev(dir.path());
    config.limits.mls_restarts_per_hour = 1;
    let relay = TestRelay::start_with(config).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    for a in ["ra", "rb"] {
        relay.account(a).await;
    }
    let rkey = relay.device("ra", "ra.raw").await;
    let raw = relay.client("ra.raw", &rkey).await;
    let bkey = relay.device("rb", "rb.1").await;
    let b1 = net.connect("rb.1", &bkey).await;
    let akey = relay.device("ra", "ra.1").await;
    let a1 = net.connect("ra.1", &akey).await;
    for c in ["r1", "r2"] {
        relay
            .conversation(c, ConversationKind::Group, &["ra", "rb"])
            .await;
    }
    let e = reset(&raw, "r1", 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MlsInvalid), "{e}");
    // The raw device commits a group of its own, one generation after the
    // other, and restarts each.
    let mut mls = MlsDevice::create("ra.raw", None).unwrap();
    let mut commit_generation = |conv: &str, generation: u64| {
        let gid = herold_mls::group_id(conv, generation);
        mls.create_group(&gid).unwrap();
        let c = mls.commit(&gid, vec![], vec![]).unwrap().commit;
        mls.confirm_commit(&gid).unwrap();
        mls_submit(conv, c, 0)
    };
    for generation in 0..2 {
        raw.sender()
            .submit(commit_generation("r1", generation))
            .await
            .unwrap();
        let e = reset(&raw, "r1", generation, 2).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::MlsWrongEpoch), "{e}");
        match reset(&raw, "r1", generation, 1).await.unwrap() {
            v1::response::Kind::MlsState(s) => {
                assert_eq!((s.generation, s.epoch), (generation + 1, 0));
            }
            other => panic!("{other:?}"),
        }
    }
    raw.sender()
        .submit(commit_generation("r1", 2))
        .await
        .unwrap();
    let e = reset(&raw, "r1", 2, 1).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
    let wait = e
        .retry_after()
        .expect("a restart refused says how long to wait");
    assert!(
        wait > std::time::Duration::from_secs(3000),
        "one restart an hour: {wait:?}"
    );
    assert_eq!(mls_state_of(&raw, "r1").await.generation, 2);
    // Another conversation restarts; the members of both keep talking.
    raw.sender()
        .submit(commit_generation("r2", 0))
        .await
        .unwrap();
    reset(&raw, "r2", 0, 1).await.unwrap();
    a1.send("r2", b"still here", 0).await.unwrap();
    net.until("rb.1 read r2", |i| {
        i.texts("rb.1", "r2") == vec!["still here".to_owned()]
    })
    .await;
    drop(b1);
    raw.close().await;
    relay.stop().await;
}
