//! [`Faulty`]: a [`Router`] whose calls can be made to fail, for tests of
//! what a relay does while its router is away (the style of neon's
//! `Unreliable` wrappers). Switched per operation kind at run time; calls
//! that pass go to the wrapped router unchanged, so the inboxes it handed
//! out keep working.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
}

impl Faulty {
    /// Wraps `inner`, answering.
    pub fn new(inner: Arc<dyn Router>) -> Self {
        Self {
            inner,
            down: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    /// From now on every call fails (`true`) or goes through (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Calls refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    fn check(&self, op: &str) -> Result<(), RouterError> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(RouterError::Backend(format!("{op}: injected fault")));
        }
        Ok(())
    }
}

#[async_trait]
impl Router for Faulty {
    async fn register_node(&self, node: &str) -> Result<Inbox, RouterError> {
        self.check("register_node")?;
        self.inner.register_node(node).await
    }

    async fn deregister_node(&self, node: &str) -> Result<(), RouterError> {
        self.check("deregister_node")?;
        self.inner.deregister_node(node).await
    }

    async fn set_present(&self, node: &str, devices: &[String]) -> Result<(), RouterError> {
        self.check("set_present")?;
        self.inner.set_present(node, devices).await
    }

    async fn set_absent(&self, node: &str, devices: &[String]) -> Result<(), RouterError> {
        self.check("set_absent")?;
        self.inner.set_absent(node, devices).await
    }

    async fn locate(
        &self,
        devices: &[String],
    ) -> Result<HashMap<NodeId, Vec<String>>, RouterError> {
        self.check("locate")?;
        self.inner.locate(devices).await
    }

    async fn publish(&self, node: &str, delivery: Delivery) -> Result<(), RouterError> {
        self.check("publish")?;
        self.inner.publish(node, delivery).await
    }

    async fn publish_many(
        &self,
        deliveries: Vec<(NodeId, Delivery)>,
    ) -> Vec<Result<(), RouterError>> {
        if self.check("publish_many").is_err() {
            return deliveries
                .iter()
                .map(|_| Err(RouterError::Backend("publish_many: injected fault".into())))
                .collect();
        }
        self.inner.publish_many(deliveries).await
    }

    async fn broadcast(&self, payload: Bytes) -> Result<(), RouterError> {
        self.check("broadcast")?;
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
}
