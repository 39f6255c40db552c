//! Delivery in the core: live pushes in seq order with gap fill from the
//! store, and syncs that page through every conversation of the account.
//! What was sent per conversation (`sent_upto`) decides what is a
//! duplicate; the expiry is checked when each frame is produced.

use std::collections::HashMap;
use std::sync::Arc;

use herold_proto::v1::{self, server_frame};
use herold_router::Delivery;
use herold_store::StoredMessage;
use tracing::debug;

use super::{Core, Now, Pending, Phase, Query, SyncRun, Work, expired};
use crate::metrics as m;
use crate::registry::Push;
use crate::session::{deliver_frame, server_frame};

impl Core {
    pub(super) fn on_push(&mut self, push: Push) {
        if !matches!(self.phase, Phase::Live) {
            // Before registration there are none; a draining session sends
            // nothing more (the device syncs where it reconnects).
            return;
        }
        match push {
            Push::Deliver(d) => {
                self.held_pushes += 1;
                self.work.push_back(Work::Deliver(d));
            }
            Push::Resync => self.work.push_back(Work::Sync(HashMap::new())),
        }
        if self.held_pushes > self.config.max_held_pushes {
            // Everything held is in the store: one resync reads it all.
            debug!(
                held = self.held_pushes,
                "too many pushes held; resyncing instead"
            );
            self.work.retain(|w| matches!(w, Work::Sync(_)));
            if !matches!(self.work.back(), Some(Work::Sync(_))) {
                self.work.push_back(Work::Sync(HashMap::new()));
            }
            self.held_pushes = 0;
        }
    }

    /// Runs queued work until a store query is out.
    pub(super) fn pump(&mut self, now: Now) {
        while self.query.is_none() && matches!(self.phase, Phase::Live) {
            match self.work.pop_front() {
                Some(Work::Deliver(d)) => {
                    self.held_pushes = self.held_pushes.saturating_sub(1);
                    self.deliver(now, d);
                }
                Some(Work::Sync(overrides)) => self.start_sync(overrides),
                None => break,
            }
        }
    }

    /// Where the device stands in a conversation on this connection.
    fn upto(&self, conversation_id: &str) -> u64 {
        self.sent_upto
            .get(conversation_id)
            .or_else(|| self.stored.get(conversation_id))
            .copied()
            .unwrap_or(0)
    }

    fn set_sent(&mut self, conversation_id: &str, seq: u64) {
        match self.sent_upto.get_mut(conversation_id) {
            Some(u) => *u = seq,
            None => {
                self.sent_upto.insert(conversation_id.to_owned(), seq);
            }
        }
    }

    fn deliver(&mut self, now: Now, d: Arc<Delivery>) {
        if expired(d.expires_at_ms, now) {
            return;
        }
        let upto = self.upto(&d.conversation_id);
        if d.seq <= upto {
            return;
        }
        if d.seq > upto + 1 {
            // Fill the gap from the store, in order.
            let missing = d.seq - upto - 1;
            let limit = usize::try_from(missing)
                .unwrap_or(usize::MAX)
                .min(self.config.max_inline_gap);
            let query = Query::Read {
                conversation_id: d.conversation_id.clone(),
                after: upto,
                limit,
                now_ms: now.wall_ms,
            };
            return self.ask(
                Pending::Gap {
                    delivery: d,
                    upto,
                    missing,
                },
                query,
            );
        }
        self.write_live(now, &d);
    }

    fn write_live(&mut self, now: Now, d: &Delivery) {
        self.frames.push(d.frame.clone());
        if let Some(tp) = &d.traceparent {
            self.traced.push(tp.clone());
        }
        let hot = m::hot();
        hot.deliveries_live.increment(1);
        if let Some(t) = d.accepted_at_ms {
            let ms = now.wall_ms.saturating_sub(t).max(0);
            hot.delivery_seconds.record(ms as f64 / 1000.0);
        }
        self.set_sent(&d.conversation_id, d.seq);
    }

    pub(super) fn fill_gap(
        &mut self,
        now: Now,
        d: Arc<Delivery>,
        mut upto: u64,
        missing: u64,
        page: &[StoredMessage],
    ) {
        let mut written = 0u64;
        for msg in page {
            if msg.seq <= upto || msg.seq >= d.seq {
                continue;
            }
            if !expired(msg.expires_at_ms, now) {
                self.frames.push(deliver_frame(msg));
                written += 1;
            }
            upto = msg.seq;
        }
        metrics::counter!(m::DELIVERIES, "path" => "sync").increment(written);
        if upto + 1 < d.seq && missing > self.config.max_inline_gap as u64 {
            // A gap too large to fill inline: let a sync do it.
            self.set_sent(&d.conversation_id, upto);
            return self.start_sync(HashMap::new());
        }
        if expired(d.expires_at_ms, now) {
            // It expired while the gap was read: what was read is sent.
            return self.set_sent(&d.conversation_id, upto);
        }
        self.write_live(now, &d);
    }

    pub(super) fn start_sync(&mut self, overrides: HashMap<String, u64>) {
        let Some(account) = self.ctx.as_ref().map(|c| c.account_id.clone()) else {
            return;
        };
        self.ask(
            Pending::SyncConversations(overrides),
            Query::ConversationsOf(account),
        );
    }

    /// Starts on the next conversation of the sync, or ends it.
    pub(super) fn sync_next(&mut self, now: Now, mut run: SyncRun) {
        let Some(conv) = run.todo.next() else {
            self.frames
                .push(server_frame(server_frame::Kind::SyncDone(v1::SyncDone {
                    conversations: u32::try_from(run.conversations).unwrap_or(u32::MAX),
                    delivered: run.delivered,
                })));
            return;
        };
        run.current = conv;
        if run.overrides.contains_key(&run.current) {
            let query = Query::Head(run.current.clone());
            return self.ask(Pending::SyncHead(run), query);
        }
        let after = self
            .sent_upto
            .get(&run.current)
            .copied()
            .unwrap_or(0)
            .max(self.stored.get(&run.current).copied().unwrap_or(0));
        self.sync_read(now, run, after);
    }

    pub(super) fn sync_read(&mut self, now: Now, run: SyncRun, after: u64) {
        self.set_sent(&run.current, after);
        let query = Query::Read {
            conversation_id: run.current.clone(),
            after,
            limit: self.config.sync_page,
            now_ms: now.wall_ms,
        };
        self.ask(Pending::SyncPage(run), query);
    }

    pub(super) fn sync_page(&mut self, now: Now, mut run: SyncRun, page: &[StoredMessage]) {
        let after = self.sent_upto.get(&run.current).copied().unwrap_or(0);
        let mut last = None;
        let mut written = 0u64;
        for msg in page.iter().filter(|msg| msg.seq > after) {
            if !expired(msg.expires_at_ms, now) {
                self.frames.push(deliver_frame(msg));
                written += 1;
            }
            last = Some(msg.seq);
        }
        metrics::counter!(m::DELIVERIES, "path" => "sync").increment(written);
        run.delivered += written;
        match last {
            Some(last) if page.len() >= self.config.sync_page => {
                self.sync_read(now, run, last);
            }
            Some(last) => {
                self.set_sent(&run.current, last);
                self.sync_next(now, run);
            }
            None => self.sync_next(now, run),
        }
    }
}
