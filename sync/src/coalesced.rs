//! Requests for a run folded into one worker: whoever asks while no worker
//! runs starts one; a request while one runs makes it run once more. No
//! request is lost, and never do two workers run at once.

use crate::shim::{AtomicUsize, Ordering};

/// No worker runs.
const IDLE: usize = 0;
/// A worker runs and nobody asked since its run began.
const RUNNING: usize = 1;
/// A worker runs (or is about to) and a request waits for its next run.
const PENDING: usize = 2;

/// A coalescing run request (see the [module](self) doc). One atomic
/// state, changed only by compare-and-swap: an earlier version with two
/// flags could lose a request (loom found the interleaving: the worker
/// stopping and an asker arriving each missed the other's store).
#[derive(Debug)]
pub struct Coalesced {
    state: AtomicUsize,
}

impl Default for Coalesced {
    fn default() -> Self {
        Self {
            state: AtomicUsize::new(IDLE),
        }
    }
}

impl Coalesced {
    /// Moves the state by `f` atomically; returns the state before.
    fn update(&self, f: impl Fn(usize) -> usize) -> usize {
        let mut now = self.state.load(Ordering::Acquire);
        loop {
            match self
                .state
                .compare_exchange(now, f(now), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(before) => return before,
                Err(actual) => now = actual,
            }
        }
    }

    /// Asks for a run; true when no worker runs and the caller must start
    /// one (which then calls [`Coalesced::next`] before each run).
    pub fn want(&self) -> bool {
        self.update(|_| PENDING) == IDLE
    }

    /// For the worker: takes the next request (true: run once more), or
    /// stops the worker (false).
    pub fn next(&self) -> bool {
        let before = self.update(|s| if s == PENDING { RUNNING } else { IDLE });
        before == PENDING
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn requests_while_running_make_one_more_run() {
        let c = Coalesced::default();
        assert!(c.want(), "the first asker starts the worker");
        assert!(!c.want(), "a worker runs already");
        assert!(c.next(), "the worker runs");
        assert!(!c.next(), "both requests were served by that run");
        assert!(c.want(), "stopped: the next asker starts one again");
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

    use super::*;

    /// Two requests from two threads, each starting a worker if it must:
    /// in every interleaving a run starts after each request, and no two
    /// runs overlap.
    #[test]
    fn no_request_is_lost_and_runs_never_overlap() {
        loom::model(|| {
            let c = Arc::new(Coalesced::default());
            let requested = Arc::new(AtomicUsize::new(0));
            let served = Arc::new(AtomicUsize::new(0));
            let active = Arc::new(AtomicUsize::new(0));
            let ask = |c: Arc<Coalesced>,
                       requested: Arc<AtomicUsize>,
                       served: Arc<AtomicUsize>,
                       active: Arc<AtomicUsize>| {
                thread::spawn(move || {
                    requested.fetch_add(1, Ordering::SeqCst);
                    if c.want() {
                        while c.next() {
                            assert_eq!(active.fetch_add(1, Ordering::SeqCst), 0, "two runs");
                            served.fetch_max(requested.load(Ordering::SeqCst), Ordering::SeqCst);
                            active.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                })
            };
            let a = ask(c.clone(), requested.clone(), served.clone(), active.clone());
            let b = ask(c.clone(), requested.clone(), served.clone(), active.clone());
            a.join().unwrap();
            b.join().unwrap();
            assert_eq!(served.load(Ordering::SeqCst), 2, "a request was never run");
        });
    }
}
