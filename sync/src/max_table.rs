//! The highest acknowledged seq per device and conversation, waiting to be
//! written: recorded by many sessions at once, taken whole by one writer,
//! and put back if the write failed. A cursor only moves forward, and
//! nothing recorded is lost, whatever the interleaving.

use std::collections::HashMap;

use crate::shim::{Mutex, MutexGuard};

/// What [`MaxTable::take`] hands to the writer: device -> conversation ->
/// highest seq.
pub type Taken = HashMap<String, HashMap<String, u64>>;

/// See the [module](self) doc.
#[derive(Debug, Default)]
pub struct MaxTable {
    /// Held only for map operations, never across an `.await`.
    pending: Mutex<Taken>,
}

impl MaxTable {
    fn lock(&self) -> MutexGuard<'_, Taken> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records acks of a device (each cursor only moves forward).
    pub fn record(&self, device: &str, acks: impl IntoIterator<Item = (String, u64)>) {
        let mut p = self.lock();
        let d = p.entry(device.to_owned()).or_default();
        for (conv, seq) in acks {
            let e = d.entry(conv).or_insert(0);
            *e = (*e).max(seq);
        }
    }

    /// A device's acks not yet written.
    pub fn pending_for(&self, device: &str) -> Vec<(String, u64)> {
        self.lock()
            .get(device)
            .map(|m| m.iter().map(|(c, s)| (c.clone(), *s)).collect())
            .unwrap_or_default()
    }

    /// Takes everything pending, for one write.
    pub fn take(&self) -> Taken {
        std::mem::take(&mut *self.lock())
    }

    /// Puts back what a failed write took (merged with what came since).
    pub fn restore(&self, taken: Taken) {
        for (d, m) in taken {
            self.record(&d, m);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn cursors_only_move_forward_and_survive_a_failed_write() {
        let t = MaxTable::default();
        t.record("d", [("c".to_owned(), 5), ("c".to_owned(), 3)]);
        t.record("d", [("c".to_owned(), 4), ("e".to_owned(), 1)]);
        let mut p = t.pending_for("d");
        p.sort();
        assert_eq!(p, vec![("c".to_owned(), 5), ("e".to_owned(), 1)]);
        let taken = t.take();
        assert!(t.pending_for("d").is_empty());
        t.record("d", [("c".to_owned(), 6)]);
        t.restore(taken);
        let mut p = t.pending_for("d");
        p.sort();
        assert_eq!(p, vec![("c".to_owned(), 6), ("e".to_owned(), 1)]);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    fn seq(m: &Taken) -> u64 {
        m.get("d").and_then(|c| c.get("c")).copied().unwrap_or(0)
    }

    /// Two sessions record acks while the writer takes them and its write
    /// fails (it puts them back): the highest ack is still pending.
    #[test]
    fn a_failed_write_loses_no_ack() {
        loom::model(|| {
            let t = Arc::new(MaxTable::default());
            let sessions: Vec<_> = [5, 7]
                .into_iter()
                .map(|s| {
                    let t = t.clone();
                    thread::spawn(move || t.record("d", [("c".to_owned(), s)]))
                })
                .collect();
            let writer = {
                let t = t.clone();
                thread::spawn(move || {
                    let taken = t.take();
                    t.restore(taken);
                })
            };
            for s in sessions {
                s.join().unwrap();
            }
            writer.join().unwrap();
            assert_eq!(t.pending_for("d"), vec![("c".to_owned(), 7)]);
        });
    }

    /// The same with a write that succeeds: what it wrote and what is
    /// still pending hold the highest ack between them, and a later write
    /// never moves a cursor back.
    #[test]
    fn a_written_ack_is_never_undone_by_an_older_one() {
        loom::model(|| {
            let t = Arc::new(MaxTable::default());
            let stored = Arc::new(crate::shim::Mutex::new(0u64));
            let session = {
                let t = t.clone();
                thread::spawn(move || {
                    t.record("d", [("c".to_owned(), 5)]);
                    t.record("d", [("c".to_owned(), 7)]);
                })
            };
            let write = |t: &MaxTable, stored: &crate::shim::Mutex<u64>| {
                let taken = t.take();
                let mut s = stored.lock().unwrap();
                // The store keeps the highest (advance_cursors_many).
                *s = (*s).max(seq(&taken));
            };
            let writer = {
                let (t, stored) = (t.clone(), stored.clone());
                thread::spawn(move || write(&t, &stored))
            };
            session.join().unwrap();
            writer.join().unwrap();
            write(&t, &stored);
            assert_eq!(*stored.lock().unwrap(), 7);
        });
    }
}
