//! [`Unreliable`]: a [`Store`] that fails on command, for tests of what is
//! built on the store (the relay's readiness, its error paths). While
//! [`Unreliable::set_failing`] is on, every operation fails with
//! [`StoreError::Backend`] before reaching the wrapped store, as a backend
//! that cannot be reached would; when it is off, every operation goes to
//! the wrapped store unchanged. [`Unreliable::fail_after_applying`] makes
//! the named operations reach the wrapped store and then fail anyway, as a
//! write whose answer was lost (a timeout after the backend applied it).
//! [`Unreliable::set_latency`] makes every operation take longer, as an
//! overloaded backend does, [`Unreliable::most_under_way`] tells how
//! many of one operation were waiting at once and [`Unreliable::calls`]
//! how many were made. Feature `fault-injection`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::metered::{call, delegate_store};
use crate::{
    Account, AccountPurge, AccountState, Appended, Attachment, AuditEntry, Conversation, Device,
    EnrollmentCode, KeyPackageCount, KeyPackageUpload, Member, MlsState, NewMessage, Page, Policy,
    PolicyScope, Store, StoreError, StoredMessage, UnixMillis,
};

/// A store that can be made to fail (see the [module](self) doc).
#[derive(Debug)]
pub struct Unreliable<S: ?Sized = dyn Store> {
    /// Whether every operation fails now.
    failing: AtomicBool,
    /// Operations that are applied and then answered with an error.
    lost_answers: Mutex<Vec<&'static str>>,
    /// Operations that fail without reaching the wrapped store.
    refused: Mutex<Vec<&'static str>>,
    /// Added to every operation, in microseconds.
    latency_us: AtomicU64,
    /// Per operation: how many are under way now, at most so far, and
    /// how many were made in all.
    under_way: Mutex<HashMap<&'static str, (u64, u64, u64)>>,
    /// The store the calls go to while not failing.
    inner: Arc<S>,
}

impl<S: Store + ?Sized> Unreliable<S> {
    /// Wraps `inner`, working.
    pub fn new(inner: Arc<S>) -> Self {
        Self {
            failing: AtomicBool::new(false),
            lost_answers: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
            latency_us: AtomicU64::new(0),
            under_way: Mutex::new(HashMap::new()),
            inner,
        }
    }

    /// From now on the operations named in `ops` fail with
    /// [`StoreError::Backend`] without reaching the wrapped store, the
    /// others work; an empty list ends that.
    pub fn fail_before_applying(&self, ops: &[&'static str]) {
        *self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ops.to_vec();
    }

    /// Adds `latency` to every following operation (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.store(us, Ordering::Release);
    }

    /// The most calls of `op` (a [`Store`] method name) under way at once.
    pub fn most_under_way(&self, op: &str) -> u64 {
        self.under_way
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(op)
            .map_or(0, |(_, most, _)| *most)
    }

    /// How many calls of `op` (a [`Store`] method name) reached the
    /// wrapped store so far.
    pub fn calls(&self, op: &str) -> u64 {
        self.under_way
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(op)
            .map_or(0, |(_, _, calls)| *calls)
    }

    fn count(&self, op: &'static str, up: bool) {
        let mut m = self
            .under_way
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (now, most, calls) = m.entry(op).or_insert((0, 0, 0));
        if up {
            *now += 1;
            *most = (*most).max(*now);
            *calls += 1;
        } else {
            *now = now.saturating_sub(1);
        }
    }

    /// Makes every following operation fail (`true`) or work (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Release);
    }

    /// From now on the operations named in `ops` (the [`Store`] method
    /// names) are applied by the wrapped store and then answered with
    /// [`StoreError::Backend`]; an empty list ends that.
    pub fn fail_after_applying(&self, ops: &[&'static str]) {
        *self
            .lost_answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ops.to_vec();
    }

    async fn around<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&op);
        if self.failing.load(Ordering::Acquire) || refused {
            return Err(StoreError::Backend(format!(
                "injected fault: the store is unreachable ({op})"
            )));
        }
        let lost = self
            .lost_answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&op);
        self.count(op, true);
        let latency = self.latency_us.load(Ordering::Acquire);
        if latency > 0 {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        let result = call.await;
        self.count(op, false);
        if lost {
            return Err(StoreError::Backend(format!(
                "injected fault: the answer was lost ({op})"
            )));
        }
        result
    }
}

delegate_store!(Unreliable);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::{EmbeddedConfig, EmbeddedStore};

    #[tokio::test]
    async fn fails_while_told_to_and_works_again_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedConfig::default()).unwrap();
        let u = Unreliable::new(Arc::new(store));
        assert!(u.get_device("d").await.unwrap().is_none());
        u.set_failing(true);
        let e = u.get_device("d").await.unwrap_err();
        assert!(
            matches!(e, StoreError::Backend(ref m) if m.contains("get_device")),
            "{e}"
        );
        u.set_failing(false);
        assert!(u.get_device("d").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_lost_answer_is_applied_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedConfig::default()).unwrap();
        let u = Unreliable::new(Arc::new(store));
        let account = Account {
            id: "a".into(),
            display_name: String::new(),
            created_at_ms: 0,
        };
        u.fail_after_applying(&["create_account"]);
        let e = u.create_account(account).await.unwrap_err();
        assert!(
            matches!(e, StoreError::Backend(ref m) if m.contains("lost")),
            "{e}"
        );
        // Other operations are untouched, and the account is there.
        assert!(u.get_account("a").await.unwrap().is_some());
        u.fail_after_applying(&[]);
    }
}
