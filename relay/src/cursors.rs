//! Coalesced cursor writes. Sessions hand their devices' acks to the sink
//! without waiting; one task writes everything pending in a single store
//! operation a few times a second. Thousands of devices acking cost one
//! write, not thousands: per-session writes starved message appends of the
//! store's group commit under load.
//!
//! A crash loses at most one interval of acks: the devices then see those
//! messages again and their SDK drops them by seq.

use std::collections::HashMap;

use herold_store::{Store, StoreError};
use herold_sync::MaxTable;

/// device -> conversation -> highest acked seq, not yet written (the
/// table's interleavings are model-checked in `herold-sync`).
#[derive(Debug, Default)]
pub(crate) struct CursorSink {
    pending: MaxTable,
}

impl CursorSink {
    /// Records acks of a device (each cursor only moves forward).
    pub fn record(&self, device: &str, acks: impl IntoIterator<Item = (String, u64)>) {
        self.pending.record(device, acks);
    }

    /// Acks of a device not yet written: a reconnecting device resumes from
    /// these, not from the older stored cursors.
    pub fn pending_for(&self, device: &str) -> Vec<(String, u64)> {
        self.pending.pending_for(device)
    }

    /// Writes everything pending; on failure it stays pending for the next try.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let taken = self.pending.take();
        if taken.is_empty() {
            return Ok(0);
        }
        let n = taken.values().map(HashMap::len).sum();
        let updates: Vec<(String, Vec<(String, u64)>)> = taken
            .iter()
            .map(|(d, m)| (d.clone(), m.iter().map(|(c, s)| (c.clone(), *s)).collect()))
            .collect();
        match store.advance_cursors_many(updates).await {
            Ok(()) => Ok(n),
            Err(e) => {
                self.pending.restore(taken);
                Err(e)
            }
        }
    }
}
