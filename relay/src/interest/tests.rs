#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::sync::Arc;
use std::time::Duration;

use herold_router::Router;
use herold_router::faults::Faulty;
use herold_router::memory::MemoryRouter;
use herold_store::{Member, Role, Store};

use super::*;
use crate::config::Limits;

/// An embedded store with accounts `a`, `b`, `c` and groups `g` (a, b) and
/// `h` (a).
async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    crate::roster::testing::store_with(&["a", "b", "c"], &[("g", &["a", "b"]), ("h", &["a"])]).await
}

fn v(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

fn sorted(mut x: Vec<String>) -> Vec<String> {
    x.sort();
    x
}

async fn setup(router: Arc<dyn Router>) -> (tempfile::TempDir, Arc<dyn Store>, Interest) {
    let (dir, store) = store().await;
    let rosters = Arc::new(Rosters::new(store.clone(), Limits::default()));
    (dir, store, Interest::new("n".into(), router, rosters))
}

/// Node `n` on an in-process router (its inbox kept open), and its interest.
struct Fixture {
    router: Arc<MemoryRouter>,
    _inbox: herold_router::Inbox,
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    interest: Interest,
}

async fn fixture() -> Fixture {
    let router = Arc::new(MemoryRouter::default());
    let inbox = router.register_node("n").await.unwrap();
    let (dir, store, interest) = setup(router.clone()).await;
    Fixture {
        router,
        _inbox: inbox,
        _dir: dir,
        store,
        interest,
    }
}

#[tokio::test]
async fn the_first_device_registers_and_the_last_one_leaves() {
    let f = fixture().await;
    let (router, interest) = (&f.router, &f.interest);

    interest
        .set_device("a1", "a", &v(&["g", "h"]))
        .await
        .unwrap();
    interest.set_device("b1", "b", &v(&["g"])).await.unwrap();
    assert_eq!(router.interested("g").await.unwrap(), v(&["n"]));
    assert_eq!(router.interested("h").await.unwrap(), v(&["n"]));
    assert_eq!(interest.registered(), 2);

    interest.remove_device("a1").await;
    assert_eq!(
        router.interested("g").await.unwrap(),
        v(&["n"]),
        "b1 is still here"
    );
    assert!(router.interested("h").await.unwrap().is_empty());
    interest.remove_device("b1").await;
    assert!(router.interested("g").await.unwrap().is_empty());
    assert_eq!(interest.registered(), 0);
    // Unknown devices change nothing.
    interest.remove_device("b1").await;
    assert_eq!(interest.registered(), 0);
}

#[tokio::test]
async fn a_sync_with_fewer_conversations_leaves_the_others() {
    let f = fixture().await;
    let (router, interest) = (&f.router, &f.interest);
    interest
        .set_device("a1", "a", &v(&["g", "h"]))
        .await
        .unwrap();
    interest.set_device("a1", "a", &v(&["g"])).await.unwrap();
    assert_eq!(router.interested("g").await.unwrap(), v(&["n"]));
    assert!(router.interested("h").await.unwrap().is_empty());
    assert_eq!(interest.local_members("h", None), Vec::<String>::new());
}

#[tokio::test]
async fn members_follow_the_roster() {
    let f = fixture().await;
    let (router, store, interest) = (&f.router, &f.store, &f.interest);
    interest
        .set_device("a1", "a", &v(&["g", "h"]))
        .await
        .unwrap();
    interest.set_device("b1", "b", &v(&["g"])).await.unwrap();
    interest.set_device("c1", "c", &[]).await.unwrap();
    let roster = interest.rosters.get("g").await.unwrap().unwrap();
    assert_eq!(
        sorted(interest.local_members("g", Some(&roster))),
        v(&["a1", "b1"])
    );

    // b leaves g: its device is left out at once by the current roster,
    // and from the state once the change is applied.
    store.remove_members("g", v(&["b"])).await.unwrap();
    interest.rosters.invalidate_some(&v(&["g"]));
    let roster = interest.rosters.get("g").await.unwrap().unwrap();
    assert_eq!(interest.local_members("g", Some(&roster)), v(&["a1"]));
    interest.rosters_changed(&v(&["g"])).await;
    assert_eq!(interest.local_members("g", None), v(&["a1"]));

    // c joins h, where this relay had only a: c1 is a member now, and the
    // relay stays interested after a1 leaves.
    store
        .put_members(
            "h",
            vec![Member {
                account_id: "c".into(),
                role: Role::Member,
            }],
        )
        .await
        .unwrap();
    interest.rosters.invalidate_some(&v(&["h"]));
    // c1 joined h: it syncs h (a post by interest may have passed it by);
    // a1 was there already.
    assert_eq!(interest.rosters_changed(&v(&["h"])).await, v(&["c1"]));
    assert_eq!(sorted(interest.local_members("h", None)), v(&["a1", "c1"]));
    assert!(
        interest.rosters_changed(&v(&["h"])).await.is_empty(),
        "nobody new"
    );
    interest.remove_device("a1").await;
    assert_eq!(router.interested("h").await.unwrap(), v(&["n"]));
    assert!(
        router.interested("g").await.unwrap().is_empty(),
        "nobody of g is here any more"
    );
}

/// Devices joining and leaving one conversation at once, with slow router
/// calls interleaving: the router ends up holding the relay's interest
/// exactly when a device of the conversation is here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_and_leaves_settle_to_the_state() {
    let memory = Arc::new(MemoryRouter::default());
    let faulty = Arc::new(Faulty::new(memory.clone()));
    let _inbox = memory.register_node("n").await.unwrap();
    let (_dir, _store, interest) = setup(faulty.clone()).await;
    let interest = Arc::new(interest);
    faulty.set_latency(Duration::from_millis(2));
    for round in 0..20 {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let interest = interest.clone();
                tokio::spawn(async move {
                    let d = format!("d{i}");
                    interest.set_device(&d, "a", &v(&["g"])).await.unwrap();
                    // Every other device leaves again, in alternating rounds.
                    if (i + round) % 2 == 0 {
                        interest.remove_device(&d).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let here = !interest.local_members("g", None).is_empty();
        assert!(here);
        assert_eq!(
            memory.interested("g").await.unwrap(),
            v(&["n"]),
            "round {round}"
        );
        // Then everybody leaves at once.
        let leaves: Vec<_> = (0..8)
            .map(|i| {
                let interest = interest.clone();
                tokio::spawn(async move { interest.remove_device(&format!("d{i}")).await })
            })
            .collect();
        for t in leaves {
            t.await.unwrap();
        }
        assert!(
            memory.interested("g").await.unwrap().is_empty(),
            "round {round}"
        );
    }
    assert!(faulty.most_under_way() >= 1);
}
