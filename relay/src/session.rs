//! One device connection: authentication, then the session loop that takes
//! submits, acks and syncs from the device and pushes deliveries to it.
//!
//! Per connection there are two tasks: a reader that decodes frames from the
//! QUIC stream into a bounded channel (so a fast sender is slowed down by QUIC
//! flow control, not by our memory), and the session loop below, the only
//! writer of the stream. Submits run as their own tasks, at most
//! `max_in_flight` per connection, and hand their answer back to the loop.
//!
//! Delivery order: the loop remembers, per conversation, the last seq it sent
//! (`sent_upto`). A live delivery at or below it is a duplicate and skipped;
//! one beyond `sent_upto + 1` means earlier messages are in flight or were
//! lost in transit, so the gap is filled from the store first. The store
//! numbers messages without gaps and writes them before they are fanned out,
//! so the gap is always readable. Each device therefore receives each
//! conversation in seq order, each message once per connection.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::{Signature, VerifyingKey};
use herold_proto::codec::{CodecError, FrameDecoder, decode_message, frame_bytes};
use herold_proto::v1::{self, ErrorCode, client_frame, server_frame};
use herold_proto::{auth, ids};
use herold_store::{NewMessage, StoredMessage};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{Instrument as _, debug, warn};

use crate::metrics::{self as m, code_label};
use crate::registry::{Kick, Push, SessionHandle};
use crate::server::{Shared, now_ms};

/// Largest number of cursors one Sync may carry.
pub const MAX_SYNC_CURSORS: usize = 10_000;
/// Messages read from the store per page while syncing.
const SYNC_PAGE: usize = 256;
/// How long a draining session waits for the device's last acks.
const DRAIN_READ_GRACE: Duration = Duration::from_secs(2);
/// How long a session holds acks before handing them to the cursor sink.
const ACK_FLUSH: Duration = Duration::from_millis(200);

/// An error that ends the connection, sent to the device first.
#[derive(Debug)]
struct Fatal {
    code: ErrorCode,
    message: String,
}

impl Fatal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What the reader task hands to the session.
#[derive(Debug)]
enum ReadEvent {
    Frame(v1::ClientFrame),
    /// A frame whose body did not decode; the stream is still in sync.
    Malformed(String),
    /// The stream is out of sync or cut short.
    Codec(CodecError),
    /// The device finished its stream or the connection dropped.
    Closed,
}

/// The authenticated device of a session.
#[derive(Debug)]
pub(crate) struct DeviceCtx {
    pub device_id: String,
    pub account_id: String,
}

fn error_frame(code: ErrorCode, message: &str, message_id: Vec<u8>, fatal: bool) -> Bytes {
    let f = v1::ServerFrame {
        kind: Some(server_frame::Kind::Error(v1::Error {
            code: code as i32,
            message: message.to_owned(),
            message_id,
            fatal,
            mls_epoch: 0,
        })),
    };
    // An error frame is a few hundred bytes: it always fits.
    frame_bytes(&f, usize::MAX).unwrap_or_default()
}

pub(crate) fn server_frame(kind: server_frame::Kind) -> Bytes {
    frame_bytes(&v1::ServerFrame { kind: Some(kind) }, usize::MAX).unwrap_or_default()
}

/// The framed Deliver for a stored message.
pub(crate) fn deliver_frame(m: &StoredMessage) -> Bytes {
    server_frame(server_frame::Kind::Deliver(v1::Deliver {
        envelope: Some(v1::Envelope {
            conversation_id: m.conversation_id.clone(),
            seq: m.seq,
            message_id: m.message_id.clone(),
            sender_account_id: m.sender_account_id.clone(),
            sender_device_id: m.sender_device_id.clone(),
            server_time_ms: m.server_time_ms,
            expires_at_ms: m.expires_at_ms.unwrap_or(0),
            ciphertext: m.ciphertext.clone(),
        }),
    }))
}

/// Largest frame before authentication: Hello and AuthResponse are small, so
/// an unauthenticated peer cannot make the relay buffer a large frame. The
/// session raises the limit once the device has authenticated.
const AUTH_FRAME_BYTES: usize = 16 * 1024;

async fn read_loop(
    mut recv: quinn::RecvStream,
    limit: Arc<std::sync::atomic::AtomicUsize>,
    tx: mpsc::Sender<ReadEvent>,
) {
    let mut dec = FrameDecoder::new(AUTH_FRAME_BYTES);
    loop {
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => {
                dec.extend(&chunk.bytes);
                loop {
                    dec.set_max_frame_bytes(limit.load(std::sync::atomic::Ordering::Acquire));
                    match dec.next_frame() {
                        Ok(Some(body)) => {
                            let ev = match decode_message::<v1::ClientFrame>(&body) {
                                Ok(f) => ReadEvent::Frame(f),
                                Err(e) => ReadEvent::Malformed(e.to_string()),
                            };
                            if tx.send(ev).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(ReadEvent::Codec(e)).await;
                            return;
                        }
                    }
                }
            }
            Ok(None) => {
                let ev = match dec.finish() {
                    Ok(()) => ReadEvent::Closed,
                    Err(e) => ReadEvent::Codec(e),
                };
                let _ = tx.send(ev).await;
                return;
            }
            Err(_) => {
                let _ = tx.send(ReadEvent::Closed).await;
                return;
            }
        }
    }
}

/// Serves one incoming connection until it ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    conn_id: u64,
    drain: watch::Receiver<bool>,
) {
    // One deadline covers the TLS handshake, the stream and authentication.
    let deadline = tokio::time::Instant::now() + shared.limits.auth_timeout;
    let conn = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(error = %e, "handshake failed");
            metrics::counter!(m::HANDSHAKE_FAILURES, "reason" => "error").increment(1);
            return;
        }
        Err(_) => {
            debug!("handshake timed out");
            metrics::counter!(m::HANDSHAKE_FAILURES, "reason" => "timeout").increment(1);
            return;
        }
    };
    let mut open = OpenConnection::new();
    let (send, recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        _ => {
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::AuthTimeout as u32),
                b"no stream opened in time",
            );
            metrics::counter!(m::AUTH, "outcome" => "auth_timeout").increment(1);
            open.reason = code_label(ErrorCode::AuthTimeout);
            return;
        }
    };
    let (frames_tx, frames_rx) = mpsc::channel(32);
    let frame_limit = Arc::new(std::sync::atomic::AtomicUsize::new(
        AUTH_FRAME_BYTES.min(shared.limits.max_frame_bytes as usize),
    ));
    let reader = tokio::spawn(read_loop(recv, frame_limit.clone(), frames_tx));
    let mut s = Session {
        shared: shared.clone(),
        conn: conn.clone(),
        send,
        frames: frames_rx,
        conn_id,
        slow: Arc::default(),
    };
    let auth = tokio::time::timeout_at(deadline, s.authenticate()).await;
    let ctx = match auth {
        Ok(Ok(ctx)) => {
            metrics::counter!(m::AUTH, "outcome" => "ok").increment(1);
            // Authenticated: full-size frames from now on (before AuthOk
            // goes out, so the client's first Submit already fits).
            frame_limit.store(
                shared.limits.max_frame_bytes as usize,
                std::sync::atomic::Ordering::Release,
            );
            ctx
        }
        Ok(Err(f)) => {
            metrics::counter!(m::AUTH, "outcome" => code_label(f.code)).increment(1);
            open.reason = code_label(f.code);
            s.close_with(f).await;
            reader.abort();
            return;
        }
        Err(_) => {
            metrics::counter!(m::AUTH, "outcome" => "auth_timeout").increment(1);
            open.reason = code_label(ErrorCode::AuthTimeout);
            s.close_with(Fatal::new(
                ErrorCode::AuthTimeout,
                "authentication timed out",
            ))
            .await;
            reader.abort();
            return;
        }
    };
    let ctx = Arc::new(ctx);
    let end = s.live(ctx.clone(), drain).await;
    if s.slow.load(std::sync::atomic::Ordering::Acquire) {
        open.reason = code_label(ErrorCode::SlowConsumer);
        reader.abort();
        return;
    }
    if let Some(f) = end {
        open.reason = code_label(f.code);
        s.close_with(f).await;
    } else {
        open.reason = match conn.close_reason() {
            Some(quinn::ConnectionError::TimedOut) => "timeout".into(),
            Some(quinn::ConnectionError::Reset) => "reset".into(),
            _ => "closed".into(),
        };
        conn.close(0u32.into(), b"bye");
    }
    reader.abort();
}

/// An open connection in the metrics: counted open when created, closed
/// with its `reason` when dropped (whichever way the session ends).
struct OpenConnection {
    reason: String,
}

impl OpenConnection {
    fn new() -> Self {
        metrics::counter!(m::CONNECTIONS_OPENED).increment(1);
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        Self {
            reason: "closed".into(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        let reason = std::mem::take(&mut self.reason);
        debug!(%reason, "connection closed");
        metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason).increment(1);
    }
}

struct Session {
    shared: Arc<Shared>,
    conn: quinn::Connection,
    send: quinn::SendStream,
    frames: mpsc::Receiver<ReadEvent>,
    conn_id: u64,
    /// Set by the registry when it cut this session off as a slow consumer.
    slow: Arc<std::sync::atomic::AtomicBool>,
}

/// State of an authenticated session's loop.
struct Live {
    ctx: Arc<DeviceCtx>,
    /// Last seq sent to the device, per conversation.
    sent_upto: HashMap<String, u64>,
    /// Cursors the store holds for the device (acked and flushed).
    stored: HashMap<String, u64>,
    /// Acks not yet flushed.
    pending_acks: HashMap<String, u64>,
    /// Pushes taken off the queue while a sync was running.
    stashed: VecDeque<Push>,
    push_rx: mpsc::Receiver<Push>,
}

impl Live {
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
}

impl Session {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Fatal> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|_| Fatal::new(ErrorCode::Unspecified, "stream closed"))
    }

    async fn next_frame(&mut self) -> Result<v1::ClientFrame, Fatal> {
        match self.frames.recv().await {
            Some(ReadEvent::Frame(f)) => Ok(f),
            Some(ReadEvent::Malformed(e)) => Err(Fatal::new(ErrorCode::BadFrame, e)),
            Some(ReadEvent::Codec(e)) => Err(codec_fatal(e)),
            Some(ReadEvent::Closed) | None => {
                Err(Fatal::new(ErrorCode::Unspecified, "connection closed"))
            }
        }
    }

    /// Sends the error frame, finishes the stream, waits briefly for the peer
    /// to read it, then closes the connection with the code.
    async fn close_with(&mut self, f: Fatal) {
        if f.code != ErrorCode::Unspecified {
            let frame = error_frame(f.code, &f.message, Vec::new(), true);
            if self.send.write_all(&frame).await.is_ok() && self.send.finish().is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.send.stopped()).await;
            }
        }
        self.conn
            .close(quinn::VarInt::from_u32(f.code as u32), f.message.as_bytes());
    }

    async fn authenticate(&mut self) -> Result<DeviceCtx, Fatal> {
        let hello = match self.next_frame().await?.kind {
            Some(client_frame::Kind::Hello(h)) => h,
            _ => {
                return Err(Fatal::new(
                    ErrorCode::AuthRequired,
                    "the first frame must be Hello",
                ));
            }
        };
        if hello.version != herold_proto::PROTOCOL_VERSION {
            return Err(Fatal::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; this relay speaks {}",
                    hello.version,
                    herold_proto::PROTOCOL_VERSION
                ),
            ));
        }
        if let Err(e) = ids::validate_id("device", &hello.device_id) {
            return Err(Fatal::new(ErrorCode::UnknownDevice, e.to_string()));
        }
        let store = &self.shared.store;
        let device = store
            .get_device(&hello.device_id)
            .await
            .map_err(|e| unavailable(&e))?
            .ok_or_else(|| Fatal::new(ErrorCode::UnknownDevice, "no such device is enrolled"))?;
        if device.revoked {
            return Err(Fatal::new(
                ErrorCode::DeviceRevoked,
                "this device was revoked",
            ));
        }
        match store
            .account_state(&device.account_id)
            .await
            .map_err(|e| unavailable(&e))?
        {
            None => {
                return Err(Fatal::new(
                    ErrorCode::DeviceRevoked,
                    "this device's account was deleted",
                ));
            }
            Some(state) if state.suspended => {
                return Err(Fatal::new(
                    ErrorCode::DeviceRevoked,
                    "this device's account is suspended",
                ));
            }
            Some(_) => {}
        }
        let mut nonce = [0u8; auth::NONCE_BYTES];
        getrandom::fill(&mut nonce)
            .map_err(|e| Fatal::new(ErrorCode::Internal, format!("no randomness: {e}")))?;
        let challenge = server_frame(server_frame::Kind::AuthChallenge(v1::AuthChallenge {
            nonce: nonce.to_vec(),
            version: herold_proto::PROTOCOL_VERSION,
        }));
        self.write(&challenge).await?;
        let response = match self.next_frame().await?.kind {
            Some(client_frame::Kind::AuthResponse(r)) => r,
            _ => {
                return Err(Fatal::new(
                    ErrorCode::AuthRequired,
                    "expected AuthResponse after AuthChallenge",
                ));
            }
        };
        let mut exporter = [0u8; auth::NONCE_BYTES];
        self.conn
            .export_keying_material(&mut exporter, auth::EXPORTER_LABEL, b"")
            .map_err(|_| Fatal::new(ErrorCode::Internal, "TLS exporter unavailable"))?;
        let transcript = auth::transcript(&nonce, &exporter, &hello.device_id);
        let key_bytes: [u8; 32] =
            device.public_key.as_slice().try_into().map_err(|_| {
                Fatal::new(ErrorCode::Internal, "the enrolled public key is malformed")
            })?;
        let key = VerifyingKey::from_bytes(&key_bytes)
            .map_err(|_| Fatal::new(ErrorCode::Internal, "the enrolled public key is malformed"))?;
        let sig = Signature::from_slice(&response.signature)
            .map_err(|_| Fatal::new(ErrorCode::AuthFailed, "the signature is malformed"))?;
        key.verify_strict(&transcript, &sig).map_err(|_| {
            Fatal::new(
                ErrorCode::AuthFailed,
                "the signature does not verify for this device and connection",
            )
        })?;
        Ok(DeviceCtx {
            device_id: device.id,
            account_id: device.account_id,
        })
    }

    /// The authenticated session. Returns the fatal error to send, if any.
    async fn live(
        &mut self,
        ctx: Arc<DeviceCtx>,
        mut drain: watch::Receiver<bool>,
    ) -> Option<Fatal> {
        let shared = self.shared.clone();
        let (push_tx, push_rx) = mpsc::channel(shared.limits.device_queue as usize);
        let (kick_tx, mut kick_rx) = watch::channel(None::<Kick>);
        let mut stored: HashMap<String, u64> = match shared.store.cursors(&ctx.device_id).await {
            Ok(c) => c.into_iter().collect(),
            Err(e) => return Some(unavailable(&e)),
        };
        // Acks from a previous connection that are not written yet.
        for (c, s) in shared.cursors.pending_for(&ctx.device_id) {
            let e = stored.entry(c).or_insert(0);
            *e = (*e).max(s);
        }
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
        if let Err(e) = shared
            .router
            .set_present(&shared.node_id, std::slice::from_ref(&ctx.device_id))
            .await
        {
            warn!(error = %e, "router presence failed");
        }
        let mut live = Live {
            ctx: ctx.clone(),
            sent_upto: HashMap::new(),
            stored,
            pending_acks: HashMap::new(),
            stashed: VecDeque::new(),
            push_rx,
        };
        let ok = server_frame(server_frame::Kind::AuthOk(v1::AuthOk {
            account_id: ctx.account_id.clone(),
            server_time_ms: now_ms(),
            max_frame_bytes: shared.limits.max_frame_bytes,
            max_ciphertext_bytes: shared.limits.max_ciphertext_bytes,
        }));
        let result = match self.write(&ok).await {
            Ok(()) => self.run_loop(&mut live, &mut kick_rx, &mut drain).await,
            Err(f) => Err(f),
        };
        self.flush_acks(&mut live).await;
        // A replaced session must not clear the presence of its successor.
        if shared.registry.remove(&ctx.device_id, self.conn_id)
            && let Err(e) = shared
                .router
                .set_absent(&shared.node_id, std::slice::from_ref(&ctx.device_id))
                .await
        {
            warn!(error = %e, "router presence failed");
        }
        result.err()
    }

    async fn run_loop(
        &mut self,
        live: &mut Live,
        kick_rx: &mut watch::Receiver<Option<Kick>>,
        drain: &mut watch::Receiver<bool>,
    ) -> Result<(), Fatal> {
        let in_flight = Arc::new(Semaphore::new(self.shared.limits.max_in_flight as usize));
        let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<Bytes>();
        // Armed only while acks are pending: an idle session wakes for nothing.
        let mut ack_at: Option<tokio::time::Instant> = None;
        loop {
            if ack_at.is_none() && !live.pending_acks.is_empty() {
                ack_at = Some(tokio::time::Instant::now() + ACK_FLUSH);
            }
            if let Some(p) = live.stashed.pop_front() {
                self.on_push(live, p).await?;
                continue;
            }
            tokio::select! {
                biased;
                _ = kick_rx.changed() => {
                    let kick = kick_rx.borrow().clone();
                    if let Some(k) = kick {
                        return Err(Fatal::new(k.code, k.message));
                    }
                }
                _ = drain.changed() => {
                    if *drain.borrow() {
                        return self.drain(live, &in_flight, &mut reply_rx).await;
                    }
                }
                Some(reply) = reply_rx.recv() => self.write(&reply).await?,
                ev = self.frames.recv() => match ev {
                    Some(ReadEvent::Frame(f)) => {
                        self.on_frame(live, f, &in_flight, &reply_tx).await?;
                    }
                    Some(ReadEvent::Malformed(e)) => {
                        let frame = error_frame(ErrorCode::BadFrame, &e, Vec::new(), false);
                        self.write(&frame).await?;
                    }
                    Some(ReadEvent::Codec(e)) => return Err(codec_fatal(e)),
                    Some(ReadEvent::Closed) | None => return Ok(()),
                },
                Some(p) = live.push_rx.recv() => self.on_push(live, p).await?,
                _ = sleep_until_some(ack_at), if ack_at.is_some() => {
                    ack_at = None;
                    self.flush_acks(live).await;
                }
            }
        }
    }

    /// Finishes in-flight submits, flushes acks and tells the device to
    /// reconnect elsewhere.
    async fn drain(
        &mut self,
        live: &mut Live,
        in_flight: &Arc<Semaphore>,
        reply_rx: &mut mpsc::UnboundedReceiver<Bytes>,
    ) -> Result<(), Fatal> {
        let all = self.shared.limits.max_in_flight;
        debug!(
            in_flight = all as usize - in_flight.available_permits(),
            "drain: finishing in-flight submits"
        );
        // Submit tasks send their reply before releasing their permit, so
        // once all permits are back every reply is in the channel.
        let _all = in_flight.acquire_many(all).await;
        debug!("drain: in-flight submits answered");
        while let Ok(reply) = reply_rx.try_recv() {
            self.write(&reply).await?;
        }
        // Each device waits its own random moment before reconnecting, so
        // the relays that take over see a ramp, not a stampede.
        let frame = server_frame(server_frame::Kind::Draining(v1::Draining {
            reconnect_after_ms: reconnect_jitter_ms(self.shared.limits.drain_reconnect_spread),
        }));
        self.write(&frame).await?;
        debug!("drain: Draining sent");
        // Give the device a moment to send its last acks and finish its
        // stream, so that it does not see those messages again elsewhere.
        let until = tokio::time::Instant::now() + DRAIN_READ_GRACE;
        while let Ok(Some(ReadEvent::Frame(f))) =
            tokio::time::timeout_at(until, self.frames.recv()).await
        {
            match f.kind {
                Some(client_frame::Kind::Ack(a)) => {
                    live.take_ack(a);
                }
                Some(client_frame::Kind::Submit(s)) => {
                    count_rejected(ErrorCode::Draining);
                    let f = error_frame(
                        ErrorCode::Draining,
                        "the relay is shutting down; send again after reconnecting",
                        s.message_id,
                        false,
                    );
                    self.write(&f).await?;
                }
                _ => {}
            }
        }
        self.flush_acks(live).await;
        Err(Fatal::new(
            ErrorCode::Draining,
            "the relay is shutting down; reconnect",
        ))
    }

    async fn on_frame(
        &mut self,
        live: &mut Live,
        frame: v1::ClientFrame,
        in_flight: &Arc<Semaphore>,
        reply_tx: &mpsc::UnboundedSender<Bytes>,
    ) -> Result<(), Fatal> {
        match frame.kind {
            Some(client_frame::Kind::Submit(s)) => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    count_rejected(ErrorCode::TooManyInFlight);
                    let f = error_frame(
                        ErrorCode::TooManyInFlight,
                        &format!(
                            "more than {} submits awaiting acceptance; wait for Accepted",
                            self.shared.limits.max_in_flight
                        ),
                        s.message_id,
                        false,
                    );
                    return self.write(&f).await;
                };
                let shared = self.shared.clone();
                let ctx = live.ctx.clone();
                let reply_tx = reply_tx.clone();
                tokio::spawn(
                    submit(shared, ctx, s, reply_tx, permit)
                        .instrument(tracing::info_span!("submit")),
                );
                Ok(())
            }
            Some(client_frame::Kind::Request(r)) => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    let f = server_frame(server_frame::Kind::Response(v1::Response {
                        request_id: r.request_id,
                        kind: Some(v1::response::Kind::Error(v1::Error {
                            code: ErrorCode::TooManyInFlight as i32,
                            message: format!(
                                "more than {} requests awaiting an answer",
                                self.shared.limits.max_in_flight
                            ),
                            ..Default::default()
                        })),
                    }));
                    return self.write(&f).await;
                };
                let shared = self.shared.clone();
                let ctx = live.ctx.clone();
                let reply_tx = reply_tx.clone();
                tokio::spawn(async move {
                    crate::e2e::handle_request(shared, ctx, r, reply_tx).await;
                    drop(permit);
                });
                Ok(())
            }
            Some(client_frame::Kind::Ack(a)) => {
                if live.take_ack(a) {
                    return Ok(());
                }
                let f = error_frame(
                    ErrorCode::ProtocolViolation,
                    "ack for a message that was not delivered on this connection",
                    Vec::new(),
                    false,
                );
                self.write(&f).await
            }
            Some(client_frame::Kind::Sync(s)) => {
                if s.cursors.len() > MAX_SYNC_CURSORS {
                    let f = error_frame(
                        ErrorCode::ProtocolViolation,
                        &format!("a Sync carries at most {MAX_SYNC_CURSORS} cursors"),
                        Vec::new(),
                        false,
                    );
                    return self.write(&f).await;
                }
                let overrides = s
                    .cursors
                    .into_iter()
                    .map(|c| (c.conversation_id, c.seq))
                    .collect();
                self.sync(live, overrides).await
            }
            Some(client_frame::Kind::Ping(p)) => {
                let f = server_frame(server_frame::Kind::Pong(v1::Pong { nonce: p.nonce }));
                self.write(&f).await
            }
            Some(client_frame::Kind::Hello(_)) | Some(client_frame::Kind::AuthResponse(_)) => {
                let f = error_frame(
                    ErrorCode::ProtocolViolation,
                    "already authenticated",
                    Vec::new(),
                    false,
                );
                self.write(&f).await
            }
            None => {
                let f = error_frame(
                    ErrorCode::UnknownFrame,
                    "unknown frame type; this relay speaks protocol version 1",
                    Vec::new(),
                    false,
                );
                self.write(&f).await
            }
        }
    }

    /// Sends everything after the device's cursors, then SyncDone.
    async fn sync(
        &mut self,
        live: &mut Live,
        overrides: HashMap<String, u64>,
    ) -> Result<(), Fatal> {
        let store = self.shared.store.clone();
        let convs = store
            .conversations_of(&live.ctx.account_id)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut delivered = 0u64;
        let n = convs.len();
        for conv in convs {
            let mut after = match overrides.get(&conv) {
                // A device cannot be ahead of the log: clamp, so that a bad
                // cursor cannot make it skip messages written later.
                Some(c) => (*c).min(store.head(&conv).await.map_err(|e| unavailable(&e))?),
                None => live
                    .sent_upto
                    .get(&conv)
                    .copied()
                    .unwrap_or(0)
                    .max(live.stored.get(&conv).copied().unwrap_or(0)),
            };
            live.sent_upto.insert(conv.clone(), after);
            loop {
                let page = store
                    .read(&conv, after, SYNC_PAGE, now_ms())
                    .await
                    .map_err(|e| unavailable(&e))?;
                let Some(last) = page.last().map(|m| m.seq) else {
                    break;
                };
                for m in &page {
                    self.write(&deliver_frame(m)).await?;
                }
                metrics::counter!(m::DELIVERIES, "path" => "sync").increment(page.len() as u64);
                delivered += page.len() as u64;
                after = last;
                live.sent_upto.insert(conv.clone(), after);
                // Keep live pushes flowing off the queue while we sync.
                while let Ok(p) = live.push_rx.try_recv() {
                    live.stashed.push_back(p);
                }
                if page.len() < SYNC_PAGE {
                    break;
                }
            }
        }
        let done = server_frame(server_frame::Kind::SyncDone(v1::SyncDone {
            conversations: u32::try_from(n).unwrap_or(u32::MAX),
            delivered,
        }));
        self.write(&done).await
    }

    async fn on_push(&mut self, live: &mut Live, push: Push) -> Result<(), Fatal> {
        match push {
            Push::Deliver(d) => {
                let (conversation_id, seq) = (&d.conversation_id, d.seq);
                if d.expires_at_ms.is_some_and(|e| e <= now_ms()) {
                    return Ok(());
                }
                let upto = match live.sent_upto.get(conversation_id) {
                    Some(u) => *u,
                    None => live.stored.get(conversation_id).copied().unwrap_or(0),
                };
                if seq <= upto {
                    return Ok(());
                }
                let mut upto = upto;
                if seq > upto + 1 {
                    // Fill the gap from the store, in order.
                    let missing = (seq - upto - 1) as usize;
                    let page = self
                        .shared
                        .store
                        .read(conversation_id, upto, missing.min(SYNC_PAGE * 4), now_ms())
                        .await
                        .map_err(|e| unavailable(&e))?;
                    for m in page.iter().filter(|m| m.seq < seq) {
                        self.write(&deliver_frame(m)).await?;
                        metrics::counter!(m::DELIVERIES, "path" => "sync").increment(1);
                        upto = m.seq;
                    }
                    if upto + 1 < seq && missing > SYNC_PAGE * 4 {
                        // A gap too large to fill inline: let a sync do it.
                        live.sent_upto.insert(conversation_id.clone(), upto);
                        return self.sync(live, HashMap::new()).await;
                    }
                }
                match &d.traceparent {
                    Some(tp) => {
                        let span = tracing::info_span!("push");
                        crate::telemetry::follow(&span, tp);
                        self.write(&d.frame).instrument(span).await?;
                    }
                    None => self.write(&d.frame).await?,
                }
                m::hot().deliveries_live.increment(1);
                if let Some(t) = d.accepted_at_ms {
                    let ms = now_ms().saturating_sub(t).max(0);
                    m::hot().delivery_seconds.record(ms as f64 / 1000.0);
                }
                match live.sent_upto.get_mut(conversation_id) {
                    Some(u) => *u = seq,
                    None => {
                        live.sent_upto.insert(conversation_id.clone(), seq);
                    }
                }
                Ok(())
            }
            Push::Resync => self.sync(live, HashMap::new()).await,
        }
    }

    /// Hands the acks to the relay's cursor sink (written within moments).
    async fn flush_acks(&mut self, live: &mut Live) {
        if live.pending_acks.is_empty() {
            return;
        }
        let acks: Vec<(String, u64)> = live
            .pending_acks
            .drain()
            .filter(|(c, s)| live.stored.get(c).is_none_or(|old| s > old))
            .collect();
        for (c, s) in &acks {
            live.stored.insert(c.clone(), *s);
        }
        self.shared.cursors.record(&live.ctx.device_id, acks);
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

fn codec_fatal(e: CodecError) -> Fatal {
    match e {
        CodecError::FrameTooLarge { .. } => Fatal::new(ErrorCode::FrameTooLarge, e.to_string()),
        CodecError::Truncated { .. } => Fatal::new(ErrorCode::BadFrame, e.to_string()),
        CodecError::Malformed(_) => Fatal::new(ErrorCode::BadFrame, e.to_string()),
    }
}

fn unavailable(e: &herold_store::StoreError) -> Fatal {
    warn!(error = %e, "store unavailable");
    Fatal::new(
        ErrorCode::Unavailable,
        "storage is unavailable; retry with the same message id",
    )
}

/// Validates, stores and acknowledges one submit, then fans it out.
async fn submit(
    shared: Arc<Shared>,
    ctx: Arc<DeviceCtx>,
    s: v1::Submit,
    reply: mpsc::UnboundedSender<Bytes>,
    // Held until the answer is queued: the device's in-flight budget counts
    // submits awaiting an answer, not fan-outs.
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let started = tokio::time::Instant::now();
    let message_id = s.message_id.clone();
    let reject = |code: ErrorCode, msg: &str| {
        count_rejected(code);
        let _ = reply.send(error_frame(code, msg, message_id.clone(), false));
    };
    let refuse = |r: crate::e2e::Refusal| {
        count_rejected(r.code);
        let _ = reply.send(server_frame(server_frame::Kind::Error(
            r.to_error(message_id.clone()),
        )));
    };
    if s.message_id.len() != ids::MESSAGE_ID_BYTES {
        return reject(
            ErrorCode::InvalidEnvelope,
            &format!(
                "message_id must be {} bytes, not {}",
                ids::MESSAGE_ID_BYTES,
                s.message_id.len()
            ),
        );
    }
    if let Err(e) = ids::validate_id("conversation", &s.conversation_id) {
        return reject(ErrorCode::InvalidEnvelope, &e.to_string());
    }
    if s.ciphertext.is_empty() {
        return reject(ErrorCode::InvalidEnvelope, "the ciphertext is empty");
    }
    // An MLS message's framing is checked before anything is stored; the
    // store decides its epoch (see e2e.rs).
    let mut s = s;
    let (mls, commit) = if s.mls {
        match crate::e2e::check_submit(&shared, &mut s) {
            Ok((check, commit)) => (Some(check), commit),
            Err(r) => return refuse(r),
        }
    } else {
        (None, false)
    };
    let max_ct = shared.limits.max_ciphertext_bytes as usize;
    // A commit is bounded by max_handshake_bytes (checked above).
    if !commit && s.ciphertext.len() > max_ct {
        return reject(
            ErrorCode::InvalidEnvelope,
            &format!(
                "the ciphertext has {} bytes; the limit is {max_ct}",
                s.ciphertext.len()
            ),
        );
    }
    let roster = match shared.rosters.get(&s.conversation_id).await {
        Ok(Some(r)) => r,
        Ok(None) => return reject(ErrorCode::UnknownConversation, "no such conversation"),
        Err(e) => {
            warn!(error = %e, "roster load failed");
            return reject(
                ErrorCode::Unavailable,
                "storage is unavailable; retry with the same message id",
            );
        }
    };
    let Some(role) = roster.members.get(&ctx.account_id) else {
        return reject(
            ErrorCode::NotMember,
            "your account is not a member of this conversation",
        );
    };
    if !role.may_post(roster.kind) {
        return reject(
            ErrorCode::NotPublisher,
            "only publishers may post in this channel",
        );
    }
    if roster.archived {
        return reject(
            ErrorCode::ConversationArchived,
            "this conversation is archived: it can be read, not posted to",
        );
    }
    if roster.kind == herold_store::ConversationKind::Direct
        && roster.policy.direct_chats == herold_store::DirectChats::Nobody
    {
        return reject(
            ErrorCode::PolicyDenied,
            "the organisation's policy allows no direct conversations",
        );
    }
    let policy_ct = roster.policy.max_attachment_bytes;
    if !commit && s.ciphertext.len() as u64 > policy_ct {
        return reject(
            ErrorCode::InvalidEnvelope,
            &format!(
                "the ciphertext has {} bytes; this conversation's policy allows {policy_ct}",
                s.ciphertext.len()
            ),
        );
    }
    let now = now_ms();
    let max_expiry = i64::try_from(roster.policy.max_expiry().as_millis()).unwrap_or(i64::MAX);
    let expires_at_ms = if commit {
        // A commit is the group's history: a device that syncs late needs
        // every one of them, so commits live as long as the conversation.
        None
    } else if s.expires_at_ms == 0 {
        let ttl_ms = i64::try_from(roster.policy.default_expiry_seconds.saturating_mul(1000))
            .unwrap_or(i64::MAX)
            .min(max_expiry);
        (ttl_ms > 0).then(|| now.saturating_add(ttl_ms))
    } else if s.expires_at_ms <= now {
        return reject(ErrorCode::InvalidExpiry, "the expiry lies in the past");
    } else if s.expires_at_ms > now.saturating_add(max_expiry) {
        return reject(
            ErrorCode::InvalidExpiry,
            &format!(
                "the expiry lies more than {} seconds ahead (the policy's maximum)",
                roster.policy.max_expiry_seconds
            ),
        );
    } else {
        Some(s.expires_at_ms)
    };
    if let Some(herold_store::MlsCheck::Commit {
        welcome: Some(w), ..
    }) = &mls
        && let Err(r) = crate::e2e::check_welcome_devices(&shared, &s.conversation_id, w).await
    {
        return refuse(r);
    }
    let msg = NewMessage {
        conversation_id: s.conversation_id,
        message_id: s.message_id,
        sender_account_id: ctx.account_id.clone(),
        sender_device_id: ctx.device_id.clone(),
        server_time_ms: now,
        expires_at_ms,
        ciphertext: s.ciphertext,
        mls,
    };
    let appended = match shared
        .store
        .append(msg.clone())
        .instrument(tracing::info_span!("store", op = "append"))
        .await
    {
        Ok(a) => a,
        Err(e) => return refuse(crate::e2e::store_refusal(&e)),
    };
    let _ = reply.send(server_frame(server_frame::Kind::Accepted(v1::Accepted {
        message_id: msg.message_id.clone(),
        conversation_id: msg.conversation_id.clone(),
        seq: appended.seq,
        server_time_ms: appended.server_time_ms,
        duplicate: appended.duplicate,
    })));
    drop(permit);
    let hot = m::hot();
    if appended.duplicate {
        hot.submits_duplicate.increment(1);
    } else {
        hot.submits_accepted.increment(1);
    }
    hot.submit_accept_seconds.record(m::seconds_since(started));
    if appended.duplicate {
        // The first acceptance was fanned out already; sessions that missed
        // it fill the gap from the store on the next message or sync.
        return;
    }
    let stored = StoredMessage {
        conversation_id: msg.conversation_id,
        seq: appended.seq,
        message_id: msg.message_id,
        sender_account_id: msg.sender_account_id,
        sender_device_id: msg.sender_device_id,
        server_time_ms: appended.server_time_ms,
        expires_at_ms: msg.expires_at_ms,
        ciphertext: msg.ciphertext,
    };
    // Tracked: a drain waits for the fan-outs of what it accepted.
    let fan_out = crate::server::fan_out(&shared, &roster.devices, &stored)
        .instrument(tracing::info_span!("route", devices = roster.devices.len()));
    shared.fan_outs.track_future(fan_out).await;
}

/// Counts a refused submit under its error code.
fn count_rejected(code: ErrorCode) {
    metrics::counter!(m::SUBMITS, "outcome" => "rejected", "code" => code_label(code)).increment(1);
}
