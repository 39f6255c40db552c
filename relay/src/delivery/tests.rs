#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herold_router::Router;
use herold_router::memory::MemoryRouter;
use herold_store::unreliable::Unreliable;
use herold_store::{NewMessage, Store};

use super::*;
use crate::config::Limits;
use crate::registry::Registry;
use crate::roster::Rosters;

/// A store holding conversation "conv" with one message (seq 1), behind an
/// [`Unreliable`] that counts reads, and a cluster node on it.
struct World {
    _dir: tempfile::TempDir,
    store: Arc<Unreliable>,
    reads: Arc<SharedReads>,
    cluster: Arc<Cluster>,
    stored: StoredMessage,
}

async fn world() -> World {
    let (dir, inner) = crate::roster::testing::store_with(&["a"], &[("conv", &["a"])]).await;
    let message = NewMessage {
        conversation_id: "conv".into(),
        message_id: b"m1".to_vec(),
        sender_account_id: "a".into(),
        sender_device_id: "a.d".into(),
        server_time_ms: crate::node::now_ms(),
        expires_at_ms: None,
        ciphertext: vec![7; 600],
        mls: None,
    };
    let appended = inner.append(message.clone()).await.unwrap();
    let stored = message.stored(&appended);
    let store = Arc::new(Unreliable::new(inner));
    let as_store: Arc<dyn Store> = store.clone();
    let router: Arc<dyn Router> = Arc::new(MemoryRouter::default());
    let rosters = Arc::new(Rosters::new(as_store.clone(), Limits::default()));
    let cluster = Arc::new(Cluster::new(
        "n1".into(),
        router,
        as_store.clone(),
        Arc::new(Registry::default()),
        rosters,
    ));
    World {
        _dir: dir,
        reads: SharedReads::new(as_store),
        store,
        cluster,
        stored,
    }
}

/// A delivery of seq `seq` of "conv" to device "a.d", by reference.
fn reference(seq: u64, expires_at_ms: Option<i64>) -> InboxEvent {
    InboxEvent::Delivery(Delivery {
        conversation_id: "conv".into(),
        seq,
        expires_at_ms,
        accepted_at_ms: Some(1),
        traceparent: None,
        frame: Bytes::new(),
        devices: vec!["a.d".into()],
    })
}

#[tokio::test]
async fn a_reference_is_loaded_from_the_store() {
    let w = world().await;
    let step = resolve(reference(1, None), w.cluster.clone(), w.reads.clone()).await;
    let Step::Deliver(d) = step else {
        panic!("expected a delivery, got {step:?}")
    };
    assert_eq!(d.frame, crate::frames::deliver_frame(&w.stored));
    assert_eq!(d.devices, vec!["a.d".to_owned()]);
    assert_eq!(w.store.calls("read"), 1);
}

#[tokio::test]
async fn an_inline_frame_reads_nothing() {
    let w = world().await;
    let frame = crate::frames::deliver_frame(&w.stored);
    let ev = InboxEvent::Delivery(Delivery {
        frame: frame.clone(),
        ..match reference(1, None) {
            InboxEvent::Delivery(d) => d,
            _ => unreachable!(),
        }
    });
    let Step::Deliver(d) = resolve(ev, w.cluster.clone(), w.reads.clone()).await else {
        panic!("expected a delivery")
    };
    assert_eq!(d.frame, frame);
    assert_eq!(w.store.calls("read"), 0);
}

#[tokio::test]
async fn an_expired_reference_is_dropped_unread() {
    let w = world().await;
    let past = crate::node::now_ms() - 1;
    let step = resolve(reference(1, Some(past)), w.cluster.clone(), w.reads.clone()).await;
    assert!(matches!(step, Step::Nothing), "{step:?}");
    assert_eq!(w.store.calls("read"), 0);
}

#[tokio::test]
async fn a_reference_the_store_never_has_ends_in_a_resync() {
    let w = world().await;
    let step = resolve(reference(2, None), w.cluster.clone(), w.reads.clone()).await;
    assert!(matches!(step, Step::Lagged), "{step:?}");
    // The first read and one per retry.
    assert_eq!(w.store.calls("read"), 1 + LOAD_RETRIES.len() as u64);
}

#[tokio::test]
async fn a_store_that_fails_then_answers_is_retried() {
    let w = world().await;
    w.store.fail_after_applying(&["read"]);
    let resolving = tokio::spawn(resolve(
        reference(1, None),
        w.cluster.clone(),
        w.reads.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while w.store.calls("read") < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no read");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.store.fail_after_applying(&[]);
    let step = resolving.await.unwrap();
    assert!(matches!(step, Step::Deliver(_)), "{step:?}");
    assert!(w.store.calls("read") >= 2, "read again after the failure");
}

/// A burst of references to one message, as when it reaches a relay's
/// inbox from several senders' relays, is read far fewer times than once each.
#[tokio::test]
async fn a_burst_of_references_shares_its_reads() {
    let w = world().await;
    w.store.set_latency(Duration::from_millis(20));
    let burst = (0..100).map(|_| resolve(reference(1, None), w.cluster.clone(), w.reads.clone()));
    let steps = futures_util::future::join_all(burst).await;
    assert!(steps.iter().all(|s| matches!(s, Step::Deliver(_))));
    let reads = w.store.calls("read");
    assert!(reads <= 3, "{reads} store reads for 100 references");
}
