//! The conformance suite every [`Router`] backend passes.
//!
//! Each case takes a fresh router and uses node and device ids of its own,
//! so cases may share one backend instance (a shared Redis, say).
//! [`router_conformance_tests!`](crate::router_conformance_tests) expands to
//! one `#[tokio::test]` per case.

// A test suite: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;

use crate::{Delivery, InboxEvent, Router, RouterError};

const WAIT: Duration = Duration::from_secs(5);

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn delivery(conv: &str, seq: u64, devices: Vec<String>) -> Delivery {
    Delivery {
        conversation_id: conv.to_owned(),
        seq,
        expires_at_ms: None,
        accepted_at_ms: None,
        traceparent: None,
        frame: Bytes::from(format!("frame-{conv}-{seq}")),
        devices,
    }
}

/// Devices are located on the node they were announced on, grouped by node;
/// unknown devices are left out.
pub async fn presence_groups_by_node(r: &dyn Router, tag: &str) {
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    let _ia = r.register_node(&a).await.unwrap();
    let _ib = r.register_node(&b).await.unwrap();
    let da = ids(&format!("{tag}-da"), 3);
    let db = ids(&format!("{tag}-db"), 2);
    r.set_present(&a, &da).await.unwrap();
    r.set_present(&b, &db).await.unwrap();
    let mut query = da.clone();
    query.extend(db.clone());
    query.push(format!("{tag}-nobody"));
    let mut got = r.locate(&query).await.unwrap();
    let mut ga = got.remove(&a).unwrap();
    let mut gb = got.remove(&b).unwrap();
    ga.sort();
    gb.sort();
    assert_eq!(ga, da);
    assert_eq!(gb, db);
    assert!(got.is_empty(), "unexpected nodes: {got:?}");
}

/// A device that moves is located on its new node; a late `set_absent` from
/// the old node does not remove it.
pub async fn latest_presence_wins(r: &dyn Router, tag: &str) {
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    let _ia = r.register_node(&a).await.unwrap();
    let _ib = r.register_node(&b).await.unwrap();
    let d = vec![format!("{tag}-dev")];
    r.set_present(&a, &d).await.unwrap();
    r.set_present(&b, &d).await.unwrap();
    r.set_absent(&a, &d).await.unwrap();
    let got = r.locate(&d).await.unwrap();
    assert_eq!(got.get(&b), Some(&d));
    assert_eq!(got.len(), 1);
    r.set_absent(&b, &d).await.unwrap();
    assert!(r.locate(&d).await.unwrap().is_empty());
}

/// Deliveries published to a node arrive in its inbox in publish order, and
/// only there.
pub async fn inbox_is_fifo_per_node(r: &dyn Router, tag: &str) {
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    let mut ia = r.register_node(&a).await.unwrap();
    let mut ib = r.register_node(&b).await.unwrap();
    for seq in 1..=50 {
        r.publish(&a, delivery("c1", seq, vec!["x".into()]))
            .await
            .unwrap();
    }
    r.publish(&b, delivery("c2", 1, vec!["y".into()]))
        .await
        .unwrap();
    for seq in 1..=50 {
        let ev = tokio::time::timeout(WAIT, ia.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ev,
            InboxEvent::Delivery(delivery("c1", seq, vec!["x".into()]))
        );
    }
    let ev = tokio::time::timeout(WAIT, ib.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        InboxEvent::Delivery(delivery("c2", 1, vec!["y".into()]))
    );
}

/// Publishing to a node that is not registered is an error, not a silent drop.
pub async fn publish_to_unknown_node_fails(r: &dyn Router, tag: &str) {
    let err = r
        .publish(&format!("{tag}-ghost"), delivery("c", 1, vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, RouterError::UnknownNode(_)), "{err:?}");
}

/// A deregistered node's devices stop counting and its inbox closes.
pub async fn deregister_clears_presence(r: &dyn Router, tag: &str) {
    let a = format!("{tag}-a");
    let mut ia = r.register_node(&a).await.unwrap();
    let d = ids(&format!("{tag}-d"), 4);
    r.set_present(&a, &d).await.unwrap();
    r.deregister_node(&a).await.unwrap();
    assert!(r.locate(&d).await.unwrap().is_empty());
    assert_eq!(tokio::time::timeout(WAIT, ia.recv()).await.unwrap(), None);
    assert!(r.publish(&a, delivery("c", 1, vec![])).await.is_err());
    // The id may be registered again (a restarted relay).
    let _again = r.register_node(&a).await.unwrap();
}

/// Registering a node id that is live is refused.
pub async fn duplicate_node_is_refused(r: &dyn Router, tag: &str) {
    let a = format!("{tag}-a");
    let _ia = r.register_node(&a).await.unwrap();
    assert!(matches!(
        r.register_node(&a).await,
        Err(RouterError::NodeExists(_))
    ));
}

/// `publish_many` reaches every named node, one result per entry, and a
/// dead destination fails alone.
pub async fn publish_many_reaches_each_node(r: &dyn Router, tag: &str) {
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    let mut ia = r.register_node(&a).await.unwrap();
    let mut ib = r.register_node(&b).await.unwrap();
    let results = r
        .publish_many(vec![
            (a.clone(), delivery("c", 7, vec!["x".into()])),
            (format!("{tag}-ghost"), delivery("c", 7, vec!["z".into()])),
            (b.clone(), delivery("c", 7, vec!["y".into(), "w".into()])),
        ])
        .await;
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(matches!(results[1], Err(RouterError::UnknownNode(_))));
    let ev = tokio::time::timeout(WAIT, ia.recv()).await.unwrap();
    assert_eq!(
        ev,
        Some(InboxEvent::Delivery(delivery("c", 7, vec!["x".into()])))
    );
    let ev = tokio::time::timeout(WAIT, ib.recv()).await.unwrap();
    assert_eq!(
        ev,
        Some(InboxEvent::Delivery(delivery(
            "c",
            7,
            vec!["y".into(), "w".into()]
        )))
    );
}

/// A broadcast reaches every registered node, the sender's own included,
/// in order with that node's deliveries.
pub async fn broadcast_reaches_every_node(r: &dyn Router, tag: &str) {
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    let mut ia = r.register_node(&a).await.unwrap();
    let mut ib = r.register_node(&b).await.unwrap();
    r.publish(&a, delivery("c", 1, vec!["x".into()]))
        .await
        .unwrap();
    r.broadcast(Bytes::from_static(b"roster changed"))
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, ia.recv()).await.unwrap();
    assert_eq!(
        first,
        Some(InboxEvent::Delivery(delivery("c", 1, vec!["x".into()])))
    );
    for inbox in [&mut ia, &mut ib] {
        let ev = tokio::time::timeout(WAIT, inbox.recv()).await.unwrap();
        assert_eq!(
            ev,
            Some(InboxEvent::Broadcast(Bytes::from_static(b"roster changed")))
        );
    }
}

/// Interest names the live nodes that registered it, until they remove it
/// or are gone; adding twice is adding once; an unknown node cannot add.
pub async fn interest_names_live_nodes(r: &dyn Router, tag: &str) {
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    let _ia = r.register_node(&a).await.unwrap();
    let _ib = r.register_node(&b).await.unwrap();
    let (c1, c2, c3) = (
        format!("{tag}-c1"),
        format!("{tag}-c2"),
        format!("{tag}-c3"),
    );
    r.add_interest(&a, &[c1.clone(), c2.clone()]).await.unwrap();
    r.add_interest(&a, std::slice::from_ref(&c1)).await.unwrap();
    r.add_interest(&b, std::slice::from_ref(&c2)).await.unwrap();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(r.interested(&c1).await.unwrap(), vec![a.clone()]);
    assert_eq!(
        sorted(r.interested(&c2).await.unwrap()),
        vec![a.clone(), b.clone()]
    );
    assert!(r.interested(&c3).await.unwrap().is_empty());
    assert!(matches!(
        r.add_interest(&format!("{tag}-ghost"), std::slice::from_ref(&c3))
            .await,
        Err(RouterError::UnknownNode(_))
    ));
    assert!(r.interested(&c3).await.unwrap().is_empty());

    r.remove_interest(&a, std::slice::from_ref(&c2))
        .await
        .unwrap();
    assert_eq!(r.interested(&c2).await.unwrap(), vec![b.clone()]);
    assert_eq!(r.interested(&c1).await.unwrap(), vec![a.clone()]);
    r.deregister_node(&b).await.unwrap();
    assert!(r.interested(&c2).await.unwrap().is_empty());
}

/// A post to the interested nodes puts exactly one entry, without a device
/// list, into each of their inboxes and none into the others'.
pub async fn interested_nodes_get_one_entry_each(r: &dyn Router, tag: &str) {
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("{tag}-{n}"))
        .collect();
    let mut inboxes = Vec::new();
    for n in &names {
        inboxes.push(r.register_node(n).await.unwrap());
    }
    let conv = format!("{tag}-channel");
    r.add_interest(&names[0], std::slice::from_ref(&conv))
        .await
        .unwrap();
    r.add_interest(&names[2], std::slice::from_ref(&conv))
        .await
        .unwrap();
    let nodes = r.interested(&conv).await.unwrap();
    let batch = nodes
        .iter()
        .map(|n| (n.clone(), delivery(&conv, 3, vec![])))
        .collect();
    assert!(r.publish_many(batch).await.iter().all(Result::is_ok));
    for i in [0, 2] {
        let ev = tokio::time::timeout(WAIT, inboxes[i].recv()).await.unwrap();
        assert_eq!(ev, Some(InboxEvent::Delivery(delivery(&conv, 3, vec![]))));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), inboxes[i].recv())
                .await
                .is_err(),
            "one entry only"
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(100), inboxes[1].recv())
            .await
            .is_err(),
        "nothing for a node without interest"
    );
}

/// Expands to one `#[tokio::test]` per conformance case; `$make` builds a
/// fresh router (any type implementing [`Router`]).
#[macro_export]
macro_rules! router_conformance_tests {
    ($make:expr) => {
        $crate::router_conformance_tests!(@cases $make;
            presence_groups_by_node,
            latest_presence_wins,
            inbox_is_fifo_per_node,
            publish_to_unknown_node_fails,
            deregister_clears_presence,
            duplicate_node_is_refused,
            publish_many_reaches_each_node,
            broadcast_reaches_every_node,
            interest_names_live_nodes,
            interested_nodes_get_one_entry_each,
        );
    };
    (@cases $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let router = $make;
                $crate::conformance::$case(&router, stringify!($case)).await;
            }
        )*
    };
}
