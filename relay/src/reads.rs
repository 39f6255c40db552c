//! Reads of a conversation's log shared by the sessions that ask at the
//! same time. When thousands of devices reconnect at once (polls open, a
//! network comes back), each syncs the same hot conversation from about
//! the same position; instead of one store read per device, the relay
//! reads the tail once per batch and hands every device its part.
//!
//! Per conversation at most one read or batch is under way. A request
//! made while none is reads alone, in its own task; one made while one is
//! under way waits for the next batch, which starts after the request was
//! made: every answer is as fresh as a read of its own would
//! have been (a message stored before the request is in it, which the
//! session's ordering relies on). A batch reads once from the lowest
//! position among requests no more than a page apart, asking for the
//! largest page plus that distance, and hands each request the messages
//! after its own position, as many as it asked for; requests further apart
//! get reads of their own, in parallel. Such a read holds, for every
//! request of its group, either everything to the end of the log (it came
//! back short) or at least the page asked for: at most `distance` of its
//! messages lie before a request's position. Memory: a read holds at most
//! twice the largest page asked for, and only until its requests are
//! answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use herold_store::{Store, StoreError, StoredMessage};
use tokio::sync::oneshot;

use crate::metrics as m;

/// What a read answers: the page, or why the store could not.
pub(crate) type Answer = Result<Vec<StoredMessage>, Arc<StoreError>>;

/// One session's request: the messages after `after`, at most `limit`.
#[derive(Debug)]
struct Request {
    after: u64,
    limit: usize,
    now_ms: i64,
    answer: oneshot::Sender<Answer>,
}

/// Runs [`SharedReads::next_batch`] when dropped: after a lone read, also
/// when its session went away in the middle of it.
struct NextBatch<'a> {
    reads: Arc<SharedReads>,
    conversation_id: &'a str,
}

impl Drop for NextBatch<'_> {
    fn drop(&mut self) {
        self.reads.next_batch(self.conversation_id);
    }
}

/// The log reads of this relay's sessions, shared per conversation.
#[derive(Debug)]
pub(crate) struct SharedReads {
    store: Arc<dyn Store>,
    /// Per conversation with a batch under way: the requests for the next.
    waiting: Mutex<HashMap<String, Vec<Request>>>,
}

impl SharedReads {
    pub(crate) fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// The messages of `conversation_id` after seq `after`, at most
    /// `limit`, none expired at `now_ms`: what `Store::read` answers, read
    /// together with the requests of other sessions.
    pub(crate) async fn read(
        self: &Arc<Self>,
        conversation_id: &str,
        after: u64,
        limit: usize,
        now_ms: i64,
    ) -> Answer {
        let (tx, rx) = oneshot::channel();
        let alone = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            match waiting.get_mut(conversation_id) {
                Some(requests) => {
                    requests.push(Request {
                        after,
                        limit,
                        now_ms,
                        answer: tx,
                    });
                    false
                }
                None => {
                    waiting.insert(conversation_id.to_owned(), Vec::new());
                    true
                }
            }
        };
        if alone {
            // Nobody reads this conversation now: read alone, and leave
            // those who ask meanwhile to the next batch.
            let _next = NextBatch {
                reads: self.clone(),
                conversation_id,
            };
            let page = self.store.read(conversation_id, after, limit, now_ms).await;
            if page.is_ok() {
                metrics::counter!(m::LOG_READS, "source" => "store").increment(1);
            }
            return page.map_err(Arc::new);
        }
        rx.await.unwrap_or_else(|_| {
            Err(Arc::new(StoreError::Backend(
                "the shared read ended without an answer".into(),
            )))
        })
    }

    /// After a read: hands the requests made meanwhile to a batch task,
    /// or ends the conversation's entry if there are none.
    fn next_batch(self: &Arc<Self>, conversation_id: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if waiting.get(conversation_id).is_some_and(|w| !w.is_empty()) => {
                drop(waiting);
                runtime.spawn(self.clone().batches(conversation_id.to_owned()));
            }
            // Nobody waits; or the runtime is gone (shutting down), and the
            // waiting requests end with their dropped senders.
            _ => {
                waiting.remove(conversation_id);
            }
        }
    }

    /// Runs batches for `conversation_id` until no request waits.
    async fn batches(self: Arc<Self>, conversation_id: String) {
        loop {
            let batch = {
                let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
                match waiting.get_mut(&conversation_id) {
                    Some(requests) if !requests.is_empty() => std::mem::take(requests),
                    _ => {
                        waiting.remove(&conversation_id);
                        return;
                    }
                }
            };
            let reads = groups(batch)
                .into_iter()
                .map(|group| self.read_group(&conversation_id, group));
            futures_util::future::join_all(reads).await;
        }
    }

    /// One store read for `group` (sorted by position, spanning at most
    /// its largest page), answering each request.
    async fn read_group(&self, conversation_id: &str, group: Vec<Request>) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            return;
        };
        let from = first.after;
        let span = usize::try_from(last.after - from).unwrap_or(usize::MAX);
        let largest = group.iter().map(|r| r.limit).max().unwrap_or(0);
        let limit = largest.saturating_add(span);
        // The latest clock of the group: what expired for it expired for
        // every request before its frames are written.
        let now_ms = group.iter().map(|r| r.now_ms).max().unwrap_or(0);
        let page = match self.store.read(conversation_id, from, limit, now_ms).await {
            Ok(page) => page,
            Err(e) => {
                let e = Arc::new(e);
                for r in group {
                    let _ = r.answer.send(Err(e.clone()));
                }
                return;
            }
        };
        metrics::counter!(m::LOG_READS, "source" => "store").increment(1);
        let shared = group.len() as u64 - 1;
        for r in group {
            let start = page.partition_point(|msg| msg.seq <= r.after);
            let theirs = page.get(start..).unwrap_or_default();
            let n = theirs.len().min(r.limit);
            let _ = r
                .answer
                .send(Ok(theirs.get(..n).unwrap_or_default().to_vec()));
        }
        metrics::counter!(m::LOG_READS, "source" => "shared").increment(shared);
    }
}

/// Splits a batch into groups one read each can serve: sorted by
/// position, a group spans at most the largest page asked for in it.
fn groups(mut batch: Vec<Request>) -> Vec<Vec<Request>> {
    batch.sort_by_key(|r| r.after);
    let mut groups: Vec<(u64, usize, Vec<Request>)> = Vec::new();
    for r in batch {
        match groups.last_mut() {
            Some((from, largest, g))
                if r.after - *from
                    <= u64::try_from((*largest).max(r.limit)).unwrap_or(u64::MAX) =>
            {
                *largest = (*largest).max(r.limit);
                g.push(r);
            }
            _ => groups.push((r.after, r.limit, vec![r])),
        }
    }
    groups.into_iter().map(|(_, _, g)| g).collect()
}

#[cfg(test)]
mod tests;
