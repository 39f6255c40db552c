//! The one writer thread: jobs queued by the async API, applied in
//! batches of one write transaction each.

use super::*;

// ---------------------------------------------------------------------------
// the writer

/// An operation queued for the writer.
pub(super) trait Job: Send {
    /// Applies the operation. `Ok` when it has an answer (success or logical
    /// error), `Err` when the transaction must be aborted. May be called
    /// again, in a fresh transaction, when another operation of the batch
    /// aborted it.
    fn run(&mut self, tables: &mut WriteTables<'_>) -> Result<(), StoreError>;
    /// Replies: with the answer of the last run if `failure` is `None`.
    fn finish(self: Box<Self>, failure: Option<StoreError>);
}

pub(super) struct Pending<T, F> {
    pub(super) op: F,
    pub(super) outcome: Option<Result<T, StoreError>>,
    pub(super) reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: FnMut(&mut WriteTables<'_>) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, tables: &mut WriteTables<'_>) -> Result<(), StoreError> {
        self.outcome = None;
        match (self.op)(tables) {
            Ok(value) => {
                self.outcome = Some(Ok(value));
                Ok(())
            }
            Err(error) if is_logical(&error) => {
                self.outcome = Some(Err(error));
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn finish(self: Box<Self>, failure: Option<StoreError>) {
        let Pending { outcome, reply, .. } = *self;
        let result = match failure {
            Some(error) => Err(error),
            None => outcome.unwrap_or_else(|| {
                Err(StoreError::Backend(
                    "internal: operation committed without running".into(),
                ))
            }),
        };
        // The caller may have gone away (cancelled); the effect stands.
        let _ = reply.send(result);
    }
}

pub(super) enum BatchError {
    /// Operation `index` failed with `error`; the transaction was aborted.
    One { index: usize, error: StoreError },
    /// The transaction failed; every operation fails.
    All(String),
}

pub(super) fn writer_loop(
    db: Arc<Database>,
    queue: mpsc::Receiver<Box<dyn Job>>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    // recv fails once every sender is gone *and* the queue is empty, so the
    // operations queued before shutdown are all applied.
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&db, batch, &counters);
    }
    tracing::debug!("herold-store writer exits");
}

pub(super) fn run_batch(db: &Database, mut batch: Vec<Box<dyn Job>>, counters: &Counters) {
    loop {
        match apply_batch(db, &mut batch) {
            Ok(()) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters
                    .ops_committed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for job in batch {
                    job.finish(None);
                }
                return;
            }
            Err(BatchError::One { index, error }) => {
                tracing::error!(%error, "store operation failed; retrying the rest of its batch");
                if index < batch.len() {
                    batch.remove(index).finish(Some(error));
                } else {
                    // Cannot happen; fail everything rather than loop.
                    fail_all(batch, &error.to_string(), counters);
                    return;
                }
                if batch.is_empty() {
                    return;
                }
            }
            Err(BatchError::All(detail)) => {
                tracing::error!(%detail, "store write batch failed");
                fail_all(batch, &detail, counters);
                return;
            }
        }
    }
}

pub(super) fn fail_all(batch: Vec<Box<dyn Job>>, detail: &str, counters: &Counters) {
    counters.failed_batches.fetch_add(1, Ordering::Relaxed);
    for job in batch {
        job.finish(Some(StoreError::Backend(detail.to_owned())));
    }
}

pub(super) fn apply_batch(db: &Database, batch: &mut [Box<dyn Job>]) -> Result<(), BatchError> {
    let all = |e: StoreError| BatchError::All(e.to_string());
    let mut txn = db.begin_write().or_backend().map_err(all)?;
    txn.set_durability(Durability::Immediate)
        .or_backend()
        .map_err(all)?;
    let applied = match WriteTables::open(&txn) {
        Err(error) => Err(all(error)),
        Ok(mut tables) => {
            let mut applied = Ok(());
            for (index, job) in batch.iter_mut().enumerate() {
                match job.run(&mut tables) {
                    Ok(()) => {}
                    Err(StoreError::Backend(detail)) => {
                        applied = Err(BatchError::All(detail));
                        break;
                    }
                    Err(error) => {
                        applied = Err(BatchError::One { index, error });
                        break;
                    }
                }
            }
            applied
        }
    };
    match applied {
        Ok(()) => txn.commit().or_backend().map_err(all),
        Err(error) => {
            if let Err(abort) = txn.abort() {
                tracing::warn!(%abort, "aborting a failed write transaction failed");
            }
            Err(error)
        }
    }
}
