//! [`Faulty`]: a [`Router`] whose calls can be made to fail or to be slow,
//! for tests of what a relay does while its router is away or slow (the
//! style of neon's `Unreliable` wrappers). Switched at run time; calls that
//! pass go to the wrapped router unchanged, so the inboxes it handed out
//! keep working. It also counts the calls under way, so a test can see how
//! much work a relay piles onto a slow router.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Delivery, Inbox, NodeId, Router, RouterError};

/// A [`Router`] whose calls fail while it is switched off (see the
/// [module](self) doc).
#[derive(Debug)]
pub struct Faulty {
    inner: Arc<dyn Router>,
    down: AtomicBool,
    refused: AtomicU64,
    latency_ms: AtomicU64,
    under_way: AtomicU64,
    most_under_way: AtomicU64,
}

/// A call under way, counted until dropped.
struct UnderWay<'a>(&'a Faulty);

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.0.under_way.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Faulty {
    /// Wraps `inner`, answering.
    pub fn new(inner: Arc<dyn Router>) -> Self {
        Self {
            inner,
            down: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            latency_ms: AtomicU64::new(0),
            under_way: AtomicU64::new(0),
            most_under_way: AtomicU64::new(0),
        }
    }

    /// From now on every call waits this long before it goes through.
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// The most calls that were under way at once.
    pub fn most_under_way(&self) -> u64 {
        self.most_under_way.load(Ordering::SeqCst)
    }

    /// From now on every call fails (`true`) or goes through (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Calls refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Refuses the call while down; otherwise counts it and waits the
    /// latency.
    async fn check(&self, op: &str) -> Result<UnderWay<'_>, RouterError> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(RouterError::Backend(format!("{op}: injected fault")));
        }
        let now = self.under_way.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_under_way.fetch_max(now, Ordering::SeqCst);
        let guard = UnderWay(self);
        let ms = self.latency_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(guard)
    }
}

#[async_trait]
impl Router for Faulty {
    async fn register_node(&self, node: &str) -> Result<Inbox, RouterError> {
        let _call = self.check("register_node").await?;
        self.inner.register_node(node).await
    }

    async fn deregister_node(&self, node: &str) -> Result<(), RouterError> {
        let _call = self.check("deregister_node").await?;
        self.inner.deregister_node(node).await
    }

    async fn set_present(&self, node: &str, devices: &[String]) -> Result<(), RouterError> {
        let _call = self.check("set_present").await?;
        self.inner.set_present(node, devices).await
    }

    async fn set_absent(&self, node: &str, devices: &[String]) -> Result<(), RouterError> {
        let _call = self.check("set_absent").await?;
        self.inner.set_absent(node, devices).await
    }

    async fn locate(
        &self,
        devices: &[String],
    ) -> Result<HashMap<NodeId, Vec<String>>, RouterError> {
        let _call = self.check("locate").await?;
        self.inner.locate(devices).await
    }

    async fn add_interest(&self, node: &str, conversations: &[String]) -> Result<(), RouterError> {
        let _call = self.check("add_interest").await?;
        self.inner.add_interest(node, conversations).await
    }

    async fn remove_interest(
        &self,
        node: &str,
        conversations: &[String],
    ) -> Result<(), RouterError> {
        let _call = self.check("remove_interest").await?;
        self.inner.remove_interest(node, conversations).await
    }

    async fn interested(&self, conversation: &str) -> Result<Vec<NodeId>, RouterError> {
        let _call = self.check("interested").await?;
        self.inner.interested(conversation).await
    }

    async fn publish(&self, node: &str, delivery: Delivery) -> Result<(), RouterError> {
        let _call = self.check("publish").await?;
        self.inner.publish(node, delivery).await
    }

    async fn publish_many(
        &self,
        deliveries: Vec<(NodeId, Delivery)>,
    ) -> Vec<Result<(), RouterError>> {
        let Ok(_call) = self.check("publish_many").await else {
            return deliveries
                .iter()
                .map(|_| Err(RouterError::Backend("publish_many: injected fault".into())))
                .collect();
        };
        self.inner.publish_many(deliveries).await
    }

    async fn broadcast(&self, payload: Bytes) -> Result<(), RouterError> {
        let _call = self.check("broadcast").await?;
        self.inner.broadcast(payload).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failure

    use super::*;
    use crate::InboxEvent;
    use crate::memory::MemoryRouter;

    #[tokio::test]
    async fn fails_while_down_and_passes_through_after() {
        let r = Faulty::new(Arc::new(MemoryRouter::default()));
        let mut inbox = r.register_node("n").await.unwrap();
        r.set_down(true);
        assert!(r.broadcast(Bytes::from_static(b"lost")).await.is_err());
        assert!(r.locate(&["d".into()]).await.is_err());
        assert_eq!(r.refused(), 2);
        r.set_down(false);
        r.broadcast(Bytes::from_static(b"kept")).await.unwrap();
        match inbox.recv().await {
            Some(InboxEvent::Broadcast(b)) => assert_eq!(&b[..], b"kept"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_calls_are_counted_while_under_way() {
        let r = Arc::new(Faulty::new(Arc::new(MemoryRouter::default())));
        r.set_latency(Duration::from_secs(1));
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.locate(&["d".into()]).await })
            })
            .collect();
        for c in calls {
            assert!(c.await.unwrap().unwrap().is_empty());
        }
        assert_eq!(r.most_under_way(), 3);
        assert_eq!(r.under_way.load(Ordering::SeqCst), 0);
    }
}
