//! The few runtime services the SDK needs: a task, a sleep, a deadline and
//! the clocks. Natively they are tokio's; in a browser (`wasm32`) the
//! page's event loop runs the tasks and its timers wake them, so the same
//! driver, end-to-end layer and session logic run in both.

use std::future::Future;
use std::time::Duration;

#[cfg(not(target_arch = "wasm32"))]
pub use tokio::time::Instant;
#[cfg(target_arch = "wasm32")]
pub use web_time::Instant;

/// A running task, stopped by [`Task::abort`] (dropping it lets it run).
#[derive(Debug)]
pub struct Task(futures_util::future::AbortHandle);

impl Task {
    /// Stops the task at its next await.
    pub fn abort(&self) {
        self.0.abort();
    }
}

/// Runs `fut` on its own.
pub fn spawn<F>(fut: F) -> Task
where
    F: Future<Output = ()> + MaybeSend + 'static,
{
    let (handle, registration) = futures_util::future::AbortHandle::new_pair();
    let fut = futures_util::future::Abortable::new(fut, registration);
    #[cfg(not(target_arch = "wasm32"))]
    tokio::spawn(fut);
    #[cfg(target_arch = "wasm32")]
    wasm_bindgen_futures::spawn_local(async move {
        let _ = fut.await;
    });
    Task(handle)
}

/// Natively a task moves between threads; a page has one.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send> MaybeSend for T {}
/// Natively a task moves between threads; a page has one.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSend for T {}

/// Waits `d`.
pub async fn sleep(d: Duration) {
    #[cfg(not(target_arch = "wasm32"))]
    tokio::time::sleep(d).await;
    #[cfg(target_arch = "wasm32")]
    gloo_timers::future::sleep(d).await;
}

/// Waits until `at`.
pub async fn sleep_until(at: Instant) {
    #[cfg(not(target_arch = "wasm32"))]
    tokio::time::sleep_until(at).await;
    #[cfg(target_arch = "wasm32")]
    sleep(at.saturating_duration_since(Instant::now())).await;
}

/// Why [`timeout_at`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// `fut`, unless `at` comes first.
pub async fn timeout_at<F: Future>(at: Instant, fut: F) -> Result<F::Output, Elapsed> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        tokio::time::timeout_at(at, fut).await.map_err(|_| Elapsed)
    }
    #[cfg(target_arch = "wasm32")]
    {
        use futures_util::future::{Either, select};
        let fut = std::pin::pin!(fut);
        let timer = std::pin::pin!(sleep_until(at));
        match select(fut, timer).await {
            Either::Left((out, _)) => Ok(out),
            Either::Right(_) => Err(Elapsed),
        }
    }
}

/// `fut`, unless `d` passes first.
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    timeout_at(Instant::now() + d, fut).await
}

/// Wall-clock time, unix milliseconds.
pub fn now_ms() -> i64 {
    web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
