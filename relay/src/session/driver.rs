//! The session's driver: the async side of a device connection. It owns the
//! QUIC stream, the reader task, the registry entry and the clock; it feeds
//! the sans-IO [`Core`] and carries out what the core asks for (store
//! queries, submit and request tasks, registration, cursor records, close).
//!
//! On every wake-up the driver takes whatever is ready on its channels
//! (client frames, pushes, task answers) before it writes, and then writes
//! every frame the core produced in one stream write: a device with several
//! pending deliveries gets them in one go, in as few packets as QUIC needs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use herold_proto::auth;
use herold_proto::codec::{FrameDecoder, decode_message};
use herold_proto::v1::{self, ErrorCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::{Instrument as _, warn};

use super::core::{Action, Answer, AuthSecrets, Core, CoreConfig, Input, Now, Query};
use super::submit::{Done, submit};
use super::{AUTH_FRAME_BYTES, DeviceCtx, Fatal, ReadEvent, SYNC_PAGE};
use crate::admission::Ticket;
use crate::config::Limits;
use crate::link::{Link, ReadError, Receiver, Sender};
use crate::metrics::{self as m, code_label};
use crate::node::{Shared, now_ms};
use crate::registry::{Kick, Push, SessionHandle};

/// Inputs taken without waiting per wake-up, at most (per channel), so that
/// a busy device still gets its frames written.
const READY_BATCH: usize = 64;

type QueryFuture = Pin<Box<dyn Future<Output = Answer> + Send>>;

impl CoreConfig {
    /// The core's limits for a relay's `limits`.
    pub(crate) fn from_limits(limits: &Limits) -> Self {
        Self {
            max_in_flight: limits.max_in_flight,
            max_frame_bytes: limits.max_frame_bytes,
            max_ciphertext_bytes: limits.max_ciphertext_bytes,
            sync_page: SYNC_PAGE,
            max_inline_gap: SYNC_PAGE * 4,
            max_held_pushes: (limits.device_queue as usize).max(1),
            submit_rate: limits.submit_rate,
        }
    }
}

pub(super) fn now() -> Now {
    Now {
        mono: tokio::time::Instant::now().into_std(),
        wall_ms: now_ms(),
    }
}

/// What the reader hands to the driver: an event, and the part of the
/// byte budget its frame holds until the core took it.
type Read = (ReadEvent, Option<OwnedSemaphorePermit>);

/// Decoded client frames waiting for the session, bounded in bytes as well
/// as in number: twice the largest frame (in KiB, as permits).
fn read_budget(max_frame_bytes: u32) -> Arc<Semaphore> {
    let kib = (u64::from(max_frame_bytes) * 2).div_ceil(1024).max(64);
    Arc::new(Semaphore::new(
        usize::try_from(kib).unwrap_or(Semaphore::MAX_PERMITS),
    ))
}

async fn read_loop(
    mut recv: Receiver,
    limit: Arc<AtomicUsize>,
    budget: Arc<Semaphore>,
    tx: mpsc::Sender<Read>,
) {
    let mut dec = FrameDecoder::new(AUTH_FRAME_BYTES);
    loop {
        match recv.chunk().await {
            Ok(Some(chunk)) => {
                dec.extend(&chunk);
                if !forward_frames(&mut dec, &limit, &budget, &tx).await {
                    return;
                }
            }
            Ok(None) => {
                let ev = match dec.finish() {
                    Ok(()) => ReadEvent::Closed,
                    Err(e) => ReadEvent::Codec(e),
                };
                let _ = tx.send((ev, None)).await;
                return;
            }
            Err(ReadError::Protocol(why)) => {
                let _ = tx.send((ReadEvent::Malformed(why.into()), None)).await;
                return;
            }
            Err(ReadError::Gone) => {
                let _ = tx.send((ReadEvent::Closed, None)).await;
                return;
            }
        }
    }
}

/// Hands every whole frame in `dec` to the session, each once the byte
/// budget has room for it (so a device sending large frames faster than
/// they are served waits, in QUIC flow control, instead of filling the
/// relay's memory); `false` once reading must stop.
async fn forward_frames(
    dec: &mut FrameDecoder,
    limit: &AtomicUsize,
    budget: &Arc<Semaphore>,
    tx: &mpsc::Sender<Read>,
) -> bool {
    loop {
        dec.set_max_frame_bytes(limit.load(Ordering::Acquire));
        match dec.next_frame() {
            Ok(Some(body)) => {
                let kib = u32::try_from(body.len().div_ceil(1024).max(1)).unwrap_or(u32::MAX);
                let Ok(permit) = budget.clone().acquire_many_owned(kib).await else {
                    return false;
                };
                let ev = match decode_message::<v1::ClientFrame>(&body) {
                    Ok(f) => ReadEvent::Frame(f),
                    Err(e) => ReadEvent::Malformed(e.to_string()),
                };
                if tx.send((ev, Some(permit))).await.is_err() {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(e) => {
                let _ = tx.send((ReadEvent::Codec(e), None)).await;
                return false;
            }
        }
    }
}

/// The refusal of an authentication beyond the account's rate.
pub(super) fn account_rate_limited(rate: u32, wait: Duration) -> Fatal {
    let retry_after_ms = crate::frames::retry_ms(wait);
    Fatal {
        retry_after_ms,
        ..Fatal::new(
            ErrorCode::RateLimited,
            format!(
                "this account's devices connected more than {rate} times a second; \
                 reconnect in {retry_after_ms} ms"
            ),
        )
    }
}

/// Runs the session on an established connection until it ends.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_session(
    shared: Arc<Shared>,
    conn: Link,
    (send, recv): (Sender, Receiver),
    ticket: Ticket,
    conn_id: u64,
    drain: watch::Receiver<bool>,
    deadline: tokio::time::Instant,
    mut open: super::accept::OpenConnection,
) {
    let (frames_tx, frames_rx) = mpsc::channel(32);
    let budget = read_budget(shared.limits.max_frame_bytes);
    let frame_limit = Arc::new(AtomicUsize::new(
        AUTH_FRAME_BYTES.min(shared.limits.max_frame_bytes as usize),
    ));
    let reader = tokio::spawn(read_loop(recv, frame_limit.clone(), budget, frames_tx));
    let exporter = conn.exporter();
    let mut nonce = [0u8; auth::NONCE_BYTES];
    let nonce = getrandom::fill(&mut nonce)
        .map(|()| nonce)
        .map_err(|e| e.to_string());
    let core = Core::new(
        CoreConfig::from_limits(&shared.limits),
        AuthSecrets {
            nonce,
            exporter,
            names: conn.names(),
        },
        deadline.into_std(),
    );
    let (replies_tx, replies_rx) = mpsc::unbounded_channel();
    let fan_outs = Arc::new(tokio::sync::Semaphore::new(
        shared.limits.max_in_flight.max(1) as usize,
    ));
    let mut d = Driver {
        ticket: Some(ticket),
        fan_outs,
        shared,
        conn: conn.clone(),
        send,
        frames: frames_rx,
        conn_id,
        slow: Arc::default(),
        frame_limit,
        core,
        ctx: None,
        pushes: None,
        kicks: None,
        query: None,
        replies_tx,
        replies_rx,
        out: Vec::new(),
        traced: Vec::new(),
        dead: false,
        files: None,
    };
    let end = d.run(drain).await;
    d.unregister().await;
    if d.ctx.is_none() {
        // Authentication failed or timed out.
        let f = end.unwrap_or_else(|| Fatal::new(ErrorCode::Unspecified, "connection closed"));
        metrics::counter!(m::AUTH, "outcome" => code_label(f.recorded)).increment(1);
        open.reason = code_label(f.recorded);
        d.close_with(f).await;
        reader.abort();
        return;
    }
    if d.slow.load(Ordering::Acquire) {
        open.reason = code_label(ErrorCode::SlowConsumer);
        reader.abort();
        return;
    }
    match end {
        Some(f) => {
            open.reason = code_label(f.code);
            d.close_with(f).await;
        }
        None => {
            open.reason = conn.end_label().into();
            conn.close(0, "bye");
        }
    }
    reader.abort();
}

struct Driver {
    shared: Arc<Shared>,
    /// Counts the connection against its address until it authenticated.
    ticket: Option<Ticket>,
    /// One permit per submit from storing to the end of its fan-out: the
    /// answer goes out before the fan-out, so the core's in-flight limit
    /// alone would let a device pile up fan-outs without end.
    fan_outs: Arc<tokio::sync::Semaphore>,
    conn: Link,
    send: Sender,
    frames: mpsc::Receiver<Read>,
    conn_id: u64,
    /// Set by the registry when it cut this session off as a slow consumer.
    slow: Arc<AtomicBool>,
    /// The reader's frame limit, raised once the device authenticated.
    frame_limit: Arc<AtomicUsize>,
    core: Core,
    ctx: Option<Arc<DeviceCtx>>,
    /// Present once the session is registered.
    pushes: Option<mpsc::Receiver<Push>>,
    kicks: Option<watch::Receiver<Option<Kick>>>,
    /// The store query the core waits for.
    query: Option<QueryFuture>,
    /// Answers of submit and request tasks.
    replies_tx: mpsc::UnboundedSender<Option<Bytes>>,
    replies_rx: mpsc::UnboundedReceiver<Option<Bytes>>,
    /// Frames to write, reused between writes.
    out: Vec<Bytes>,
    traced: Vec<String>,
    /// The stream cannot be written any more.
    dead: bool,
    /// Serves the attachment streams, once authenticated.
    files: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(f) = self.files.take() {
            f.abort();
        }
    }
}

impl Driver {
    /// Feeds the core until it closes; returns the error to end with.
    async fn run(&mut self, mut drain: watch::Receiver<bool>) -> Option<Fatal> {
        let spread = self.shared.limits.drain_reconnect_spread;
        let mut drain_open = true;
        if *drain.borrow_and_update() {
            drain_open = false;
            let reconnect_after_ms = reconnect_jitter_ms(spread);
            self.core.handle(now(), Input::Drain { reconnect_after_ms });
        }
        loop {
            if let Some(end) = self.carry_out().await {
                return end;
            }
            let timeout = self.core.poll_timeout().map(tokio::time::Instant::from_std);
            let wants_frames = self.core.wants_frames();
            let input = tokio::select! {
                biased;
                Some(k) = kicked(&mut self.kicks) => Input::Kick(k),
                open = drained(&mut drain), if drain_open => {
                    drain_open = false;
                    if !open {
                        continue;
                    }
                    Input::Drain { reconnect_after_ms: reconnect_jitter_ms(spread) }
                }
                a = answer(&mut self.query) => {
                    self.query = None;
                    Input::Store(a)
                }
                Some(r) = self.replies_rx.recv() => Input::TaskDone(r),
                ev = self.frames.recv(), if wants_frames => {
                    // The frame's share of the read budget is given back
                    // once the core has it.
                    Input::Read(ev.map_or(ReadEvent::Closed, |(ev, _permit)| ev))
                }
                Some(p) = recv_push(&mut self.pushes) => Input::Push(p),
                () = sleep_until_some(timeout) => Input::Timeout,
            };
            self.core.handle(now(), input);
            self.take_ready();
        }
    }

    /// Feeds the core what is ready on the channels, without waiting.
    fn take_ready(&mut self) {
        for _ in 0..READY_BATCH {
            if self.core.is_closed() {
                return;
            }
            let mut took = false;
            if let Ok(r) = self.replies_rx.try_recv() {
                self.core.handle(now(), Input::TaskDone(r));
                took = true;
            }
            if self.core.wants_frames()
                && let Ok((ev, _permit)) = self.frames.try_recv()
            {
                self.core.handle(now(), Input::Read(ev));
                took = true;
            }
            if let Some(p) = self.pushes.as_mut().and_then(|rx| rx.try_recv().ok()) {
                self.core.handle(now(), Input::Push(p));
                took = true;
            }
            if !took {
                return;
            }
        }
    }

    /// Carries out the core's actions and writes its frames; returns
    /// `Some` once the core closed.
    async fn carry_out(&mut self) -> Option<Option<Fatal>> {
        loop {
            let mut close = None;
            while let Some(a) = self.core.poll_action() {
                match a {
                    Action::Query(q) => self.query = Some(self.start_query(q)),
                    Action::Authenticated(ctx) => {
                        let at = tokio::time::Instant::now().into_std();
                        if let Err(wait) = self.shared.account_auths.take(&ctx.account_id, at) {
                            self.core.refuse(account_rate_limited(
                                self.shared.limits.auth_rate_per_account,
                                wait,
                            ));
                            continue;
                        }
                        // No longer counted against its address.
                        self.ticket = None;
                        metrics::counter!(m::AUTH, "outcome" => "ok").increment(1);
                        // Full-size frames from now on (before AuthOk goes
                        // out, so the client's first Submit already fits).
                        self.frame_limit.store(
                            self.shared.limits.max_frame_bytes as usize,
                            Ordering::Release,
                        );
                        // Attachments go on streams of their own (QUIC only).
                        if let Link::Quic(conn) = &self.conn {
                            self.files = Some(tokio::spawn(super::attachments::accept(
                                self.shared.clone(),
                                conn.clone(),
                                ctx.clone(),
                            )));
                        }
                        self.ctx = Some(ctx);
                    }
                    Action::Register => self.register().await,
                    Action::Submit(s) => self.start_submit(s),
                    Action::Request(r) => self.start_request(r),
                    Action::RecordCursors(acks) => {
                        if let Some(ctx) = &self.ctx {
                            self.shared.cursors.record(&ctx.device_id, acks);
                        }
                    }
                    Action::Close(f) => close = Some(f),
                }
            }
            self.core.take_transmit(&mut self.out, &mut self.traced);
            if !self.out.is_empty()
                && !self.dead
                && let Some(f) = self.write_in_time().await
            {
                self.dead = true;
                if close.is_none() {
                    // Ends the core; its last actions (acks) still run.
                    self.core.fail(f);
                    self.out.clear();
                    self.traced.clear();
                    continue;
                }
            }
            self.out.clear();
            self.traced.clear();
            return close;
        }
    }

    /// Writes every pending frame, or says why the session must end: the
    /// stream is gone, or the device read nothing for `write_timeout` (its
    /// frames would wait in the relay's memory).
    async fn write_in_time(&mut self) -> Option<Fatal> {
        let limit = self.shared.limits.write_timeout;
        match tokio::time::timeout(limit, self.write_out()).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(Fatal::new(ErrorCode::Unspecified, "stream closed")),
            Err(_) => {
                metrics::counter!(m::SLOW_CONSUMERS).increment(1);
                Some(Fatal::new(
                    ErrorCode::SlowConsumer,
                    format!(
                        "the device read nothing for {} s; reconnect and sync",
                        limit.as_secs()
                    ),
                ))
            }
        }
    }

    /// Writes every pending frame in one go.
    async fn write_out(&mut self) -> Result<(), crate::link::WriteError> {
        if self.traced.is_empty() {
            return self.send.write_all_chunks(&mut self.out).await;
        }
        // Traced deliveries: the write is a child of each one's trace.
        let mut write: Pin<Box<dyn Future<Output = _> + Send + '_>> =
            Box::pin(self.send.write_all_chunks(&mut self.out));
        for tp in self.traced.drain(..) {
            let span = tracing::info_span!("push");
            crate::telemetry::follow(&span, &tp);
            write = Box::pin(write.instrument(span));
        }
        write.await
    }

    fn start_query(&self, q: Query) -> QueryFuture {
        let shared = self.shared.clone();
        let device = self.ctx.as_ref().map(|c| c.device_id.clone());
        Box::pin(async move {
            let store = &shared.store;
            let answer = match q {
                Query::Device(d) => store.get_device(&d).await.map(Answer::Device),
                Query::AccountState(a) => store.account_state(&a).await.map(Answer::AccountState),
                Query::Cursors(d) => store.cursors(&d).await.map(|stored| Answer::Cursors {
                    stored,
                    pending: shared.cursors.pending_for(&d),
                }),
                Query::ConversationsOf(a) => match store.conversations_of(&a).await {
                    Ok(convs) => {
                        // Before the sync reads them: what is posted after
                        // the reads reaches this relay live.
                        if let Some(d) = &device
                            && let Err(e) = shared.cluster.interest.set_device(d, &a, &convs).await
                        {
                            warn!(error = %e, "router interest failed");
                        }
                        Ok(Answer::Conversations(convs))
                    }
                    Err(e) => Err(e),
                },
                Query::Head(c) => store.head(&c).await.map(Answer::Head),
                Query::Read {
                    conversation_id,
                    after,
                    limit,
                    now_ms,
                } => {
                    let page = shared.reads.read(&conversation_id, after, limit, now_ms);
                    return page.await.map_or_else(failed, Answer::Page);
                }
            };
            answer.unwrap_or_else(failed)
        })
    }

    fn start_submit(&self, s: v1::Submit) {
        let Some(ctx) = self.ctx.clone() else {
            return;
        };
        let done = Done::new(self.replies_tx.clone());
        let (permits, shared) = (self.fan_outs.clone(), self.shared.clone());
        tokio::spawn(
            async move {
                // Closed only if the session's semaphore is dropped: never
                // while this task holds a clone.
                let Ok(_fanning_out) = permits.acquire_owned().await else {
                    return;
                };
                submit(shared, ctx, s, done).await;
            }
            .instrument(tracing::info_span!("submit")),
        );
    }

    fn start_request(&self, r: v1::Request) {
        let Some(ctx) = self.ctx.clone() else {
            return;
        };
        let done = Done::new(self.replies_tx.clone());
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel();
            super::e2e::handle_request(shared, ctx, r, tx).await;
            done.finish(rx.try_recv().ok());
        });
    }

    /// Registers the session for pushes and presence.
    async fn register(&mut self) {
        let Some(ctx) = self.ctx.clone() else {
            return;
        };
        let shared = &self.shared;
        let (push_tx, push_rx) = mpsc::channel(shared.limits.device_queue as usize);
        let (kick_tx, kick_rx) = watch::channel(None::<Kick>);
        shared.registry.insert(
            ctx.device_id.clone(),
            SessionHandle {
                conn_id: self.conn_id,
                push: push_tx,
                kick: kick_tx,
                conn: self.conn.clone(),
                slow: self.slow.clone(),
            },
        );
        self.pushes = Some(push_rx);
        self.kicks = Some(kick_rx);
        // Connected: the next message while it is away wakes it again.
        shared.push.forget(&ctx.device_id);
        if let Err(e) = shared
            .router
            .set_present(&shared.node_id, std::slice::from_ref(&ctx.device_id))
            .await
        {
            warn!(error = %e, "router presence failed");
        }
    }

    async fn unregister(&mut self) {
        let (Some(ctx), Some(_)) = (&self.ctx, self.pushes.take()) else {
            return;
        };
        let shared = &self.shared;
        // A replaced session must not clear the presence of its successor.
        if shared.registry.remove(&ctx.device_id, self.conn_id) {
            shared.cluster.interest.remove_device(&ctx.device_id).await;
            if let Err(e) = shared
                .router
                .set_absent(&shared.node_id, std::slice::from_ref(&ctx.device_id))
                .await
            {
                warn!(error = %e, "router presence failed");
            }
        }
    }

    /// Sends the error frame, finishes the stream, waits briefly for the peer
    /// to read it, then closes the connection with the code.
    async fn close_with(&mut self, f: Fatal) {
        if f.code != ErrorCode::Unspecified && !self.dead {
            let frame = crate::frames::fatal_frame(f.code, &f.message, f.retry_after_ms);
            self.send
                .finish_with(frame, f.code as u32, Duration::from_secs(2))
                .await;
        }
        self.conn.close(f.code as u32, &f.message);
    }
}

/// The next kick, once registered.
async fn kicked(rx: &mut Option<watch::Receiver<Option<Kick>>>) -> Option<Kick> {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Some(k) = rx.borrow_and_update().clone() {
            return Some(k);
        }
    }
}

/// Resolves when the relay starts draining (`true`), or can no longer tell
/// (`false`).
async fn drained(rx: &mut watch::Receiver<bool>) -> bool {
    loop {
        if rx.changed().await.is_err() {
            return false;
        }
        if *rx.borrow_and_update() {
            return true;
        }
    }
}

/// The answer to a query the store could not answer (logged).
fn failed(e: impl std::fmt::Display) -> Answer {
    warn!(error = %e, "store unavailable");
    Answer::Failed
}

async fn answer(q: &mut Option<QueryFuture>) -> Answer {
    match q {
        Some(f) => f.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn recv_push(rx: &mut Option<mpsc::Receiver<Push>>) -> Option<Push> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A uniformly random wait in `0..spread`, in milliseconds.
fn reconnect_jitter_ms(spread: Duration) -> u32 {
    let spread = u32::try_from(spread.as_millis()).unwrap_or(u32::MAX);
    if spread == 0 {
        return 0;
    }
    let mut b = [0u8; 4];
    // Without randomness, no jitter: reconnecting at once is still correct.
    if getrandom::fill(&mut b).is_err() {
        return 0;
    }
    u32::from_le_bytes(b) % spread
}

#[cfg(test)]
mod tests {
    use herold_proto::codec::frame_bytes;
    use herold_proto::v1::client_frame;

    use super::*;

    fn submit_of(kib: usize) -> Bytes {
        let f = v1::ClientFrame {
            kind: Some(client_frame::Kind::Submit(v1::Submit {
                ciphertext: vec![7; kib * 1024],
                ..Default::default()
            })),
        };
        frame_bytes(&f, usize::MAX).unwrap()
    }

    /// Frames the session has not taken yet hold their bytes of the read
    /// budget: past it, the reader waits (the device waits in QUIC flow
    /// control) until the session takes one.
    #[tokio::test(start_paused = true)]
    async fn frames_waiting_for_the_session_are_bounded_in_bytes() {
        let budget = Arc::new(Semaphore::new(250));
        let (tx, mut rx) = mpsc::channel(32);
        let mut dec = FrameDecoder::new(usize::MAX);
        for _ in 0..3 {
            dec.extend(&submit_of(100));
        }
        let limit = Arc::new(AtomicUsize::new(usize::MAX));
        let reader = {
            let budget = budget.clone();
            tokio::spawn(async move { forward_frames(&mut dec, &limit, &budget, &tx).await })
        };
        let first = rx.recv().await.unwrap();
        let _second = rx.recv().await.unwrap();
        // The third does not fit while two wait: the reader is stuck (in
        // virtual time nothing else can happen).
        assert!(
            tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .is_err()
        );
        assert!(budget.available_permits() < 101);
        // The session takes the first: room for the third.
        drop(first);
        let (third, _) = rx.recv().await.unwrap();
        assert!(matches!(third, ReadEvent::Frame(_)));
        assert!(reader.await.unwrap(), "the reader goes on");
    }

    #[test]
    fn the_read_budget_is_twice_the_largest_frame() {
        let b = read_budget(8 * 1024 * 1024);
        assert_eq!(b.available_permits(), 16 * 1024);
        assert_eq!(read_budget(1).available_permits(), 64);
    }
}
