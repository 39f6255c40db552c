//! [`Unreliable`]: a [`Store`] that fails on command, for tests of what is
//! built on the store (the relay's readiness, its error paths). While
//! [`Unreliable::set_failing`] is on, every operation fails with
//! [`StoreError::Backend`] before reaching the wrapped store, as a backend
//! that cannot be reached would; when it is off, every operation goes to
//! the wrapped store unchanged. Feature `fault-injection`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use crate::metered::{call, delegate_store};
use crate::{
    Account, AccountPurge, AccountState, Appended, AuditEntry, Conversation, Device,
    EnrollmentCode, KeyPackageCount, KeyPackageUpload, Member, MlsState, NewMessage, Page, Policy,
    PolicyScope, Store, StoreError, StoredMessage, UnixMillis,
};

/// A store that can be made to fail (see the [module](self) doc).
#[derive(Debug)]
pub struct Unreliable<S: ?Sized = dyn Store> {
    /// Whether every operation fails now.
    failing: AtomicBool,
    /// The store the calls go to while not failing.
    inner: Arc<S>,
}

impl<S: Store + ?Sized> Unreliable<S> {
    /// Wraps `inner`, working.
    pub fn new(inner: Arc<S>) -> Self {
        Self {
            failing: AtomicBool::new(false),
            inner,
        }
    }

    /// Makes every following operation fail (`true`) or work (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Release);
    }

    async fn around<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if self.failing.load(Ordering::Acquire) {
            return Err(StoreError::Backend(format!(
                "injected fault: the store is unreachable ({op})"
            )));
        }
        call.await
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
}
