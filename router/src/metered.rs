//! [`Metered`]: a [`Router`] that records the duration and the failures of
//! every operation of the router it wraps, under the names of
//! [`crate::metrics`].
//!
//! Every method, `publish_many` included, calls the inner router's method
//! of the same name, so the inner backend's own overrides (Redis pipelines
//! `publish_many`) are the ones that run. Each call records
//! [`OPERATION_SECONDS`] with `op` = the method's name, and each failure
//! increments [`ERRORS`] with `op`. `publish_many` is timed once, as a whole,
//! and counts one error per failed entry.
//!
//! The metrics go to whatever recorder is installed (the relay installs the
//! Prometheus one); without one they cost a few atomic loads.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use metrics::{counter, histogram};
use tokio::time::Instant;

use crate::metrics::{ERRORS, OPERATION_SECONDS};
use crate::{Delivery, Inbox, NodeId, Router, RouterError};

/// A [`Router`] that records the duration and failures of every operation
/// of `R` (see the [module](self) doc). `Metered<dyn Router>` (the default)
/// wraps the relay's `Arc<dyn Router>`; `Metered<MemoryRouter>` a concrete
/// backend.
#[derive(Debug)]
pub struct Metered<R: ?Sized = dyn Router> {
    /// The router every call goes to.
    inner: Arc<R>,
}

impl<R: Router + ?Sized> Metered<R> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<R>) -> Self {
        Self { inner }
    }

    /// The wrapped router (calls on it are not recorded).
    pub fn inner(&self) -> &Arc<R> {
        &self.inner
    }
}

/// Awaits `call`, then records its duration under `op`, and `failed` (the
/// number of failures `call`'s output counts) under `op` if there are any.
async fn timed<T>(
    op: &'static str,
    call: impl Future<Output = T>,
    failed: impl FnOnce(&T) -> usize,
) -> T {
    let start = Instant::now();
    let output = call.await;
    let seconds = Instant::now()
        .saturating_duration_since(start)
        .as_secs_f64();
    histogram!(OPERATION_SECONDS, "op" => op).record(seconds);
    let failed = failed(&output);
    if failed > 0 {
        counter!(ERRORS, "op" => op).increment(failed as u64);
    }
    output
}

/// `call!(self.method(args..))`: the inner router's `method`, [`timed`]
/// under the label `"method"`, one error if it failed (the name is written
/// once, so label and method cannot disagree).
macro_rules! call {
    ($self:ident . $method:ident ( $($arg:expr),* $(,)? )) => {
        timed(stringify!($method), $self.inner.$method($($arg),*), |r| {
            usize::from(r.is_err())
        })
        .await
    };
}

#[async_trait]
impl<R: Router + ?Sized> Router for Metered<R> {
    async fn register_node(&self, node: &str) -> Result<Inbox, RouterError> {
        call!(self.register_node(node))
    }
    async fn deregister_node(&self, node: &str) -> Result<(), RouterError> {
        call!(self.deregister_node(node))
    }
    async fn set_present(&self, node: &str, devices: &[String]) -> Result<(), RouterError> {
        call!(self.set_present(node, devices))
    }
    async fn set_absent(&self, node: &str, devices: &[String]) -> Result<(), RouterError> {
        call!(self.set_absent(node, devices))
    }
    async fn locate(
        &self,
        devices: &[String],
    ) -> Result<HashMap<NodeId, Vec<String>>, RouterError> {
        call!(self.locate(devices))
    }
    async fn add_interest(&self, node: &str, conversations: &[String]) -> Result<(), RouterError> {
        call!(self.add_interest(node, conversations))
    }
    async fn remove_interest(
        &self,
        node: &str,
        conversations: &[String],
    ) -> Result<(), RouterError> {
        call!(self.remove_interest(node, conversations))
    }
    async fn interested(&self, conversation: &str) -> Result<Vec<NodeId>, RouterError> {
        call!(self.interested(conversation))
    }
    async fn publish(&self, node: &str, delivery: Delivery) -> Result<(), RouterError> {
        call!(self.publish(node, delivery))
    }
    async fn publish_many(
        &self,
        deliveries: Vec<(NodeId, Delivery)>,
    ) -> Vec<Result<(), RouterError>> {
        timed(
            "publish_many",
            self.inner.publish_many(deliveries),
            |results: &Vec<Result<(), RouterError>>| results.iter().filter(|r| r.is_err()).count(),
        )
        .await
    }
    async fn broadcast(&self, payload: Bytes) -> Result<(), RouterError> {
        call!(self.broadcast(payload))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use metrics::{SharedString, Unit};
    use metrics_util::CompositeKey;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::Metered;
    use crate::memory::MemoryRouter;
    use crate::metrics::{ERRORS, OPERATION_SECONDS};
    use crate::{Delivery, Router, RouterError};

    /// The wrapper must not change what the router does: the whole suite,
    /// through it.
    mod conformance {
        crate::router_conformance_tests!(super::Metered::new(super::Arc::new(
            super::MemoryRouter::new(64)
        )));
    }

    /// One snapshot of a recorder (taking it drains the values).
    type Metrics = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

    /// The value of metric `name` with exactly `labels`.
    fn value<'m>(
        metrics: &'m Metrics,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<&'m DebugValue> {
        metrics.iter().find_map(|(key, _, _, value)| {
            let key = key.key();
            let got: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            (key.name() == name && got == labels).then_some(value)
        })
    }

    fn samples(metrics: &Metrics, op: &str) -> usize {
        match value(metrics, OPERATION_SECONDS, &[("op", op)]) {
            Some(DebugValue::Histogram(s)) => s.len(),
            other => panic!("{op} duration: {other:?}"),
        }
    }

    fn delivery() -> Delivery {
        Delivery {
            conversation_id: "c".into(),
            seq: 1,
            frame: Bytes::from_static(b"frame"),
            devices: vec!["d".into()],
            ..Delivery::default()
        }
    }

    // current_thread runtime: the local recorder is the test thread's, and
    // every call is recorded on that thread.
    #[tokio::test]
    async fn records_durations_and_failures() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let router = Metered::new(Arc::new(MemoryRouter::new(8)));

        let _inbox = router.register_node("a").await.unwrap();
        assert!(matches!(
            router.register_node("a").await,
            Err(RouterError::NodeExists(_))
        ));
        router.publish("a", delivery()).await.unwrap();
        assert!(matches!(
            router.publish("gone", delivery()).await,
            Err(RouterError::UnknownNode(_))
        ));
        let results = router
            .publish_many(vec![
                ("a".into(), delivery()),
                ("gone".into(), delivery()),
                ("also-gone".into(), delivery()),
            ])
            .await;
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 2);

        let metrics = snapshotter.snapshot().into_vec();
        assert_eq!(samples(&metrics, "register_node"), 2);
        assert_eq!(samples(&metrics, "publish"), 2);
        // Timed once as a whole, not once per entry.
        assert_eq!(samples(&metrics, "publish_many"), 1);
        let errors = |op| value(&metrics, ERRORS, &[("op", op)]);
        assert_eq!(errors("register_node"), Some(&DebugValue::Counter(1)));
        assert_eq!(errors("publish"), Some(&DebugValue::Counter(1)));
        assert_eq!(errors("publish_many"), Some(&DebugValue::Counter(2)));
        let series = metrics
            .iter()
            .filter(|(key, ..)| key.key().name() == ERRORS)
            .count();
        assert_eq!(series, 3, "{metrics:?}");
    }
}
