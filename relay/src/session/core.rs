//! The session's sans-IO core: every decision of a device connection, with
//! no sockets, no store, no clock and no randomness of its own.
//!
//! The driver feeds it [`Input`]s (a decoded client frame, a push, the
//! answer to a store query it asked for, a submit's answer, drain, kick, a
//! timer) together with the time ([`Now`]), then takes what it produced:
//! [`Action`]s (store queries, submits to start, registering the session,
//! cursors to record, closing) and the frames to write, all at once
//! ([`Core::take_transmit`]), and arms a timer for [`Core::poll_timeout`].
//! One store query is out at a time; while it is, pushes and syncs wait in
//! order behind it and client frames stay in the reader's channel (QUIC flow
//! control slows the device down, as a blocked session did before).
//!
//! Invariants kept here: each device receives each conversation in seq
//! order, each message at most once per connection (`sent_upto`), gaps are
//! filled from the store, and a message whose expiry has passed at the
//! moment its frame is produced is not written, live or synced. Acks are
//! taken only up to what this connection sent and held [`ACK_FLUSH`] before
//! they are recorded. A drain waits for the submits in flight, sends
//! Draining, takes acks (and refuses submits) for [`DRAIN_READ_GRACE`], then
//! closes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herold_proto::auth::NONCE_BYTES;
use herold_proto::v1::{self, ErrorCode, client_frame, server_frame};
use herold_router::Delivery;
use herold_store::{AccountState, Device, StoredMessage};
use tracing::debug;

use super::{
    ACK_FLUSH, DRAIN_READ_GRACE, DeviceCtx, Fatal, MAX_SYNC_CURSORS, ReadEvent, codec_fatal,
    count_rejected, error_frame, server_frame,
};
use crate::registry::{Kick, Push};

mod delivery;
mod handshake;

/// The limits a core works with.
#[derive(Debug, Clone)]
pub(crate) struct CoreConfig {
    /// Submits and requests awaiting their answer, at most.
    pub max_in_flight: u32,
    /// Told to the device in AuthOk.
    pub max_frame_bytes: u32,
    /// Told to the device in AuthOk.
    pub max_ciphertext_bytes: u32,
    /// Messages per store read while syncing.
    pub sync_page: usize,
    /// The largest gap filled inline before a live delivery; a larger one
    /// is left to a sync.
    pub max_inline_gap: usize,
    /// Pushes held behind a store query; beyond it they are dropped for one
    /// resync, which reads them from the store.
    pub max_held_pushes: usize,
    /// Submits a second from this device, sustained (a burst of
    /// [`crate::rate::BURST_SECONDS`] of it).
    pub submit_rate: u32,
}

/// The time of an input: monotonic for timers, wall clock (unix
/// milliseconds) for expiry and server time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Now {
    pub mono: Instant,
    pub wall_ms: i64,
}

/// What authentication needs from the connection: the challenge nonce (or
/// why there is none), the TLS exporter the signature binds to, and the
/// relay names a device may bind to instead (a WebSocket's browser; empty
/// on QUIC, where every client reads the exporter).
#[derive(Debug, Clone)]
pub(crate) struct AuthSecrets {
    pub nonce: Result<[u8; NONCE_BYTES], String>,
    pub exporter: Option<[u8; NONCE_BYTES]>,
    pub names: Arc<[String]>,
}

/// Something that happened to the session.
#[derive(Debug)]
pub(crate) enum Input {
    /// From the reader: a frame, a malformed frame, a broken stream, the end.
    Read(ReadEvent),
    /// From the registry.
    Push(Push),
    /// The answer to the [`Query`] the core asked for last.
    Store(Answer),
    /// A submit or request task finished, with the frame to send (`None`
    /// if it ended without one).
    TaskDone(Option<Bytes>),
    /// The relay is shutting down; the device should come back after
    /// `reconnect_after_ms` (the driver draws the jitter).
    Drain { reconnect_after_ms: u32 },
    /// The session is told to end.
    Kick(Kick),
    /// The time of [`Core::poll_timeout`] has come.
    Timeout,
}

/// A store read the core needs answered with an [`Answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Query {
    /// `get_device`: answered with [`Answer::Device`].
    Device(String),
    /// `account_state`: [`Answer::AccountState`].
    AccountState(String),
    /// The device's stored cursors and the acks of the relay's cursor sink
    /// not yet written: [`Answer::Cursors`].
    Cursors(String),
    /// `conversations_of` the account: [`Answer::Conversations`].
    ConversationsOf(String),
    /// `head` of a conversation: [`Answer::Head`].
    Head(String),
    /// `read`: [`Answer::Page`].
    Read {
        conversation_id: String,
        after: u64,
        limit: usize,
        now_ms: i64,
    },
}

/// The store's answer to a [`Query`].
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Device(Option<Device>),
    AccountState(Option<AccountState>),
    Cursors {
        stored: Vec<(String, u64)>,
        pending: Vec<(String, u64)>,
    },
    Conversations(Vec<String>),
    Head(u64),
    Page(Vec<StoredMessage>),
    /// The store failed (the driver logged why): the session ends with
    /// `UNAVAILABLE`.
    Failed,
}

/// What the core asks the driver to do, in order.
#[derive(Debug)]
pub(crate) enum Action {
    /// Run this store query and feed the answer back.
    Query(Query),
    /// The device proved its key (count it, raise the frame limit).
    Authenticated(Arc<DeviceCtx>),
    /// Register the session for pushes and presence; done before the
    /// frames taken after this action (AuthOk) are written.
    Register,
    /// Start a submit task; it answers with [`Input::TaskDone`].
    Submit(v1::Submit),
    /// Start a request task; it answers with [`Input::TaskDone`].
    Request(v1::Request),
    /// Hand these acks to the cursor sink.
    RecordCursors(Vec<(String, u64)>),
    /// Write the frames taken with this action, then end the connection:
    /// with the error (sent first) or, for `None`, quietly (the peer left).
    Close(Option<Fatal>),
}

enum Phase {
    /// Waiting for Hello.
    Hello,
    /// A directory lookup of authentication is out.
    Lookup,
    /// AuthChallenge sent; waiting for AuthResponse. Every device id that
    /// passed the syntax check gets here: `device` is `None` for an id
    /// nobody enrolled, and `refusal` holds why a known device may not
    /// connect (revoked, account deleted or suspended), told only once it
    /// proved that it holds the key.
    Challenged {
        device: Option<Device>,
        nonce: [u8; NONCE_BYTES],
        refusal: Option<Fatal>,
    },
    /// Authenticated; the device's cursors are being read.
    Loading,
    Live,
    /// Drain: waiting for the submits in flight.
    DrainWait {
        reconnect_after_ms: u32,
    },
    /// Drain: Draining sent; taking the last acks until `until`.
    Grace {
        until: Instant,
    },
    Closed,
}

/// The store query that is out, and what its answer continues.
enum Pending {
    Device,
    Account(Device),
    Cursors,
    /// Filling the gap before a live delivery.
    Gap {
        delivery: Arc<Delivery>,
        upto: u64,
        missing: u64,
    },
    SyncConversations(HashMap<String, u64>),
    SyncHead(SyncRun),
    SyncPage(SyncRun),
    /// The drain began: the answer is dropped.
    Abandoned,
}

/// Where a conversation comes in a sync: by id, each large channel's
/// sub-groups (in their order) just before the channel.
fn sync_order(id: &str) -> (&str, u8, u32) {
    match herold_proto::ids::sub_group_of(id) {
        Some((channel, i)) => (channel, 0, i),
        None => (id, 1, 0),
    }
}

/// A sync under way.
struct SyncRun {
    /// The device's own cursors (clamped to the head when used).
    overrides: HashMap<String, u64>,
    todo: std::vec::IntoIter<String>,
    conversations: usize,
    delivered: u64,
    /// The conversation being read.
    current: String,
}

/// Work that touches what was sent, done in arrival order.
enum Work {
    Deliver(Arc<Delivery>),
    /// A sync, with the device's cursors (empty for a resync).
    Sync(HashMap<String, u64>),
}

/// The sans-IO session (see the [module](self) doc).
pub(crate) struct Core {
    config: CoreConfig,
    secrets: AuthSecrets,
    auth_deadline: Instant,
    phase: Phase,
    ctx: Option<Arc<DeviceCtx>>,
    /// A drain that came before the session was live.
    drain_requested: Option<u32>,
    /// Last seq sent to the device, per conversation.
    sent_upto: HashMap<String, u64>,
    /// Cursors the store holds for the device (acked and flushed).
    stored: HashMap<String, u64>,
    /// Acks not yet flushed, and when they will be.
    pending_acks: HashMap<String, u64>,
    ack_at: Option<Instant>,
    work: VecDeque<Work>,
    held_pushes: usize,
    query: Option<Pending>,
    /// Read events that came while frames were not wanted.
    deferred: VecDeque<ReadEvent>,
    in_flight: u32,
    /// The device's submit rate; made full when the first submit comes.
    submit_rate: Option<crate::rate::TokenBucket>,
    frames: Vec<Bytes>,
    traced: Vec<String>,
    actions: VecDeque<Action>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("ctx", &self.ctx)
            .field("in_flight", &self.in_flight)
            .field("conversations", &self.sent_upto.len())
            .finish_non_exhaustive()
    }
}

fn expired(expires_at_ms: Option<i64>, now: Now) -> bool {
    expires_at_ms.is_some_and(|e| e <= now.wall_ms)
}

impl Core {
    /// A session that waits for Hello; authentication must finish by
    /// `auth_deadline`.
    pub(crate) fn new(config: CoreConfig, secrets: AuthSecrets, auth_deadline: Instant) -> Self {
        Self {
            config,
            secrets,
            auth_deadline,
            phase: Phase::Hello,
            ctx: None,
            drain_requested: None,
            sent_upto: HashMap::new(),
            stored: HashMap::new(),
            pending_acks: HashMap::new(),
            ack_at: None,
            work: VecDeque::new(),
            held_pushes: 0,
            query: None,
            deferred: VecDeque::new(),
            in_flight: 0,
            submit_rate: None,
            frames: Vec::new(),
            traced: Vec::new(),
            actions: VecDeque::new(),
        }
    }

    /// Takes one input at `now`.
    pub(crate) fn handle(&mut self, now: Now, input: Input) {
        if self.is_closed() {
            return;
        }
        match input {
            Input::Read(ev) => {
                if self.wants_frames() && self.deferred.is_empty() {
                    self.on_read(now, ev);
                } else {
                    self.deferred.push_back(ev);
                }
            }
            Input::Push(p) => self.on_push(p),
            Input::Store(a) => self.on_answer(now, a),
            Input::TaskDone(frame) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                if let Some(f) = frame {
                    self.frames.push(f);
                }
                self.check_drain(now);
            }
            Input::Drain { reconnect_after_ms } => self.on_drain(now, reconnect_after_ms),
            Input::Kick(k) => self.close(Some(Fatal::new(k.code, k.message))),
            Input::Timeout => self.on_timeout(now),
        }
        self.settle(now);
    }

    /// Ends the session with `fatal` (the driver could not write).
    pub(crate) fn fail(&mut self, fatal: Fatal) {
        self.close(Some(fatal));
    }

    /// Ends the session before anything the core asked for since its last
    /// input is done or written: the driver refused what it was told
    /// (an authentication over the account's rate).
    pub(crate) fn refuse(&mut self, fatal: Fatal) {
        self.actions.clear();
        self.frames.clear();
        self.traced.clear();
        self.close(Some(fatal));
    }

    /// The next thing to do, in order.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Moves the frames to write (in order) to `frames`, and the trace
    /// contexts of the live deliveries among them to `traced`.
    pub(crate) fn take_transmit(&mut self, frames: &mut Vec<Bytes>, traced: &mut Vec<String>) {
        frames.append(&mut self.frames);
        traced.append(&mut self.traced);
    }

    /// When the core wants [`Input::Timeout`], if at all.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let auth = self.authenticating().then_some(self.auth_deadline);
        let grace = match self.phase {
            Phase::Grace { until } => Some(until),
            _ => None,
        };
        [auth, self.ack_at, grace].into_iter().flatten().min()
    }

    /// Whether the core takes client frames now. While it does not (a store
    /// query is out, or a drain waits for submits) the driver leaves them in
    /// the reader's channel; any fed anyway are held until it does.
    pub(crate) fn wants_frames(&self) -> bool {
        match self.phase {
            Phase::Hello | Phase::Challenged { .. } | Phase::Grace { .. } => true,
            Phase::Live => self.query.is_none(),
            _ => false,
        }
    }

    /// The authenticated device, once authenticated.
    #[cfg(test)]
    pub(crate) fn ctx(&self) -> Option<&Arc<DeviceCtx>> {
        self.ctx.as_ref()
    }

    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    fn authenticating(&self) -> bool {
        matches!(
            self.phase,
            Phase::Hello | Phase::Lookup | Phase::Challenged { .. }
        )
    }

    /// Runs the work that can run, the reads held back, and arms the ack
    /// timer.
    fn settle(&mut self, now: Now) {
        loop {
            self.pump(now);
            if !self.wants_frames() {
                break;
            }
            let Some(ev) = self.deferred.pop_front() else {
                break;
            };
            self.on_read(now, ev);
        }
        if self.ack_at.is_none() && !self.pending_acks.is_empty() && !self.is_closed() {
            self.ack_at = Some(now.mono + ACK_FLUSH);
        }
    }

    fn ask(&mut self, pending: Pending, query: Query) {
        self.query = Some(pending);
        self.actions.push_back(Action::Query(query));
    }

    fn write_error(&mut self, code: ErrorCode, message: &str, message_id: Vec<u8>) {
        self.frames
            .push(error_frame(code, message, message_id, false));
    }

    /// Ends the session; acks taken so far are recorded first.
    fn close(&mut self, fatal: Option<Fatal>) {
        if self.is_closed() {
            return;
        }
        self.flush_acks();
        self.phase = Phase::Closed;
        self.work.clear();
        self.held_pushes = 0;
        self.query = None;
        self.ack_at = None;
        self.deferred.clear();
        self.actions.push_back(Action::Close(fatal));
    }

    fn on_timeout(&mut self, now: Now) {
        if self.authenticating() && now.mono >= self.auth_deadline {
            return self.close(Some(Fatal::new(
                ErrorCode::AuthTimeout,
                "authentication timed out",
            )));
        }
        if self.ack_at.is_some_and(|at| now.mono >= at) {
            self.ack_at = None;
            self.flush_acks();
        }
        if let Phase::Grace { until } = self.phase
            && now.mono >= until
        {
            self.end_grace();
        }
    }

    fn on_read(&mut self, now: Now, ev: ReadEvent) {
        match self.phase {
            Phase::Hello => self.on_hello(ev),
            Phase::Challenged { .. } => self.on_auth_response(ev),
            Phase::Live => match ev {
                ReadEvent::Frame(f) => self.on_frame(now, f),
                ReadEvent::Malformed(e) => self.write_error(ErrorCode::BadFrame, &e, Vec::new()),
                ReadEvent::Codec(e) => self.close(Some(codec_fatal(e))),
                ReadEvent::Closed => self.close(None),
            },
            Phase::Grace { .. } => self.on_grace_read(ev),
            _ => {}
        }
    }

    // ---- store answers ----

    fn on_answer(&mut self, now: Now, answer: Answer) {
        let Some(pending) = self.query.take() else {
            return self.close(Some(Fatal::new(
                ErrorCode::Internal,
                "a store answer nobody asked for",
            )));
        };
        if matches!(pending, Pending::Abandoned) {
            return;
        }
        match (pending, answer) {
            (_, Answer::Failed) => self.close(Some(Fatal::unavailable())),
            (Pending::Device, Answer::Device(d)) => self.on_device(d),
            (Pending::Account(d), Answer::AccountState(s)) => self.on_account(d, s),
            (Pending::Cursors, Answer::Cursors { stored, pending }) => {
                self.on_cursors(now, stored, pending)
            }
            (
                Pending::Gap {
                    delivery,
                    upto,
                    missing,
                },
                Answer::Page(page),
            ) => self.fill_gap(now, delivery, upto, missing, &page),
            (Pending::SyncConversations(overrides), Answer::Conversations(mut convs)) => {
                // A large channel's sub-groups before the channel: their
                // key messages come before the posts that need them.
                convs.sort_by(|a, b| sync_order(a).cmp(&sync_order(b)));
                let run = SyncRun {
                    overrides,
                    conversations: convs.len(),
                    todo: convs.into_iter(),
                    delivered: 0,
                    current: String::new(),
                };
                self.sync_next(now, run);
            }
            (Pending::SyncHead(run), Answer::Head(head)) => {
                let after = run
                    .overrides
                    .get(&run.current)
                    .copied()
                    .unwrap_or(0)
                    // A device cannot be ahead of the log: clamp, so that a
                    // bad cursor cannot make it skip messages written later.
                    .min(head);
                self.sync_read(now, run, after);
            }
            (Pending::SyncPage(run), Answer::Page(page)) => self.sync_page(now, run, &page),
            _ => self.close(Some(Fatal::new(
                ErrorCode::Internal,
                "the store answered another query",
            ))),
        }
    }

    // ---- live ----

    fn on_frame(&mut self, now: Now, frame: v1::ClientFrame) {
        match frame.kind {
            Some(client_frame::Kind::Submit(s)) => {
                let rate = self.config.submit_rate;
                let bucket = self
                    .submit_rate
                    .get_or_insert_with(|| crate::rate::TokenBucket::new(rate, now.mono));
                if let Err(wait) = bucket.take(now.mono) {
                    count_rejected(ErrorCode::RateLimited);
                    return self.frames.push(crate::frames::rate_limited_frame(
                        rate,
                        "from this device",
                        s.message_id,
                        wait,
                    ));
                }
                if self.in_flight >= self.config.max_in_flight {
                    count_rejected(ErrorCode::TooManyInFlight);
                    let message = format!(
                        "more than {} submits awaiting acceptance; wait for Accepted",
                        self.config.max_in_flight
                    );
                    return self.write_error(ErrorCode::TooManyInFlight, &message, s.message_id);
                }
                self.in_flight += 1;
                self.actions.push_back(Action::Submit(s));
            }
            Some(client_frame::Kind::Request(r)) => {
                if self.in_flight >= self.config.max_in_flight {
                    let f = server_frame(server_frame::Kind::Response(v1::Response {
                        request_id: r.request_id,
                        kind: Some(v1::response::Kind::Error(v1::Error {
                            code: ErrorCode::TooManyInFlight as i32,
                            message: format!(
                                "more than {} requests awaiting an answer",
                                self.config.max_in_flight
                            ),
                            ..Default::default()
                        })),
                    }));
                    return self.frames.push(f);
                }
                self.in_flight += 1;
                self.actions.push_back(Action::Request(r));
            }
            Some(client_frame::Kind::Ack(a)) => {
                if !self.take_ack(a) {
                    self.write_error(
                        ErrorCode::ProtocolViolation,
                        "ack for a message that was not delivered on this connection",
                        Vec::new(),
                    );
                }
            }
            Some(client_frame::Kind::Sync(s)) => {
                if s.cursors.len() > MAX_SYNC_CURSORS {
                    let message = format!("a Sync carries at most {MAX_SYNC_CURSORS} cursors");
                    return self.write_error(ErrorCode::ProtocolViolation, &message, Vec::new());
                }
                let overrides = s
                    .cursors
                    .into_iter()
                    .map(|c| (c.conversation_id, c.seq))
                    .collect();
                self.work.push_back(Work::Sync(overrides));
            }
            Some(client_frame::Kind::Ping(p)) => {
                self.frames
                    .push(server_frame(server_frame::Kind::Pong(v1::Pong {
                        nonce: p.nonce,
                    })));
            }
            Some(client_frame::Kind::Hello(_)) | Some(client_frame::Kind::AuthResponse(_)) => {
                self.write_error(
                    ErrorCode::ProtocolViolation,
                    "already authenticated",
                    Vec::new(),
                );
            }
            None => self.write_error(
                ErrorCode::UnknownFrame,
                "unknown frame type; this relay speaks protocol version 1",
                Vec::new(),
            ),
        }
    }

    /// Records an ack if it covers only what this connection delivered;
    /// returns whether it was taken.
    fn take_ack(&mut self, a: v1::Ack) -> bool {
        if self
            .sent_upto
            .get(&a.conversation_id)
            .is_none_or(|u| a.seq > *u)
        {
            return false;
        }
        let e = self.pending_acks.entry(a.conversation_id).or_insert(0);
        *e = (*e).max(a.seq);
        true
    }

    /// Hands the acks to the relay's cursor sink (written within moments).
    fn flush_acks(&mut self) {
        if self.pending_acks.is_empty() {
            return;
        }
        let stored = &self.stored;
        let acks: Vec<(String, u64)> = self
            .pending_acks
            .drain()
            .filter(|(c, s)| stored.get(c).is_none_or(|old| s > old))
            .collect();
        for (c, s) in &acks {
            self.stored.insert(c.clone(), *s);
        }
        if !acks.is_empty() {
            self.actions.push_back(Action::RecordCursors(acks));
        }
    }

    // ---- drain ----

    fn on_drain(&mut self, now: Now, reconnect_after_ms: u32) {
        match self.phase {
            Phase::Hello | Phase::Lookup | Phase::Challenged { .. } | Phase::Loading => {
                self.drain_requested = Some(reconnect_after_ms);
            }
            Phase::Live => self.begin_drain(now, reconnect_after_ms),
            _ => {}
        }
    }

    fn begin_drain(&mut self, now: Now, reconnect_after_ms: u32) {
        debug!(
            in_flight = self.in_flight,
            "drain: finishing in-flight submits"
        );
        if self.query.is_some() {
            self.query = Some(Pending::Abandoned);
        }
        self.work.clear();
        self.held_pushes = 0;
        self.phase = Phase::DrainWait { reconnect_after_ms };
        self.check_drain(now);
    }

    /// Once every submit in flight is answered, sends Draining.
    fn check_drain(&mut self, now: Now) {
        let Phase::DrainWait { reconnect_after_ms } = self.phase else {
            return;
        };
        if self.in_flight > 0 {
            return;
        }
        debug!("drain: in-flight submits answered");
        // Each device waits its own random moment before reconnecting, so
        // the relays that take over see a ramp, not a stampede.
        self.frames
            .push(server_frame(server_frame::Kind::Draining(v1::Draining {
                reconnect_after_ms,
            })));
        debug!("drain: Draining sent");
        // Give the device a moment to send its last acks and finish its
        // stream, so that it does not see those messages again elsewhere.
        self.phase = Phase::Grace {
            until: now.mono + DRAIN_READ_GRACE,
        };
    }

    fn on_grace_read(&mut self, ev: ReadEvent) {
        let ReadEvent::Frame(f) = ev else {
            return self.end_grace();
        };
        match f.kind {
            Some(client_frame::Kind::Ack(a)) => {
                self.take_ack(a);
            }
            Some(client_frame::Kind::Submit(s)) => {
                count_rejected(ErrorCode::Draining);
                self.write_error(
                    ErrorCode::Draining,
                    "the relay is shutting down; send again after reconnecting",
                    s.message_id,
                );
            }
            _ => {}
        }
    }

    fn end_grace(&mut self) {
        self.close(Some(Fatal::new(
            ErrorCode::Draining,
            "the relay is shutting down; reconnect",
        )));
    }
}
