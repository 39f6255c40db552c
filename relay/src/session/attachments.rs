//! Attachment streams: uploads and downloads of end-to-end encrypted
//! files, each on a bidirectional stream of its own beside the session's
//! stream, so a 100 MB photo album never holds up a text message
//! (docs/protocol.md, "Attachments").
//!
//! A stream carries one framed `AttachmentRequest`, one framed
//! `AttachmentResponse`, then raw ciphertext. The relay holds at most one
//! chunk per stream in memory: an upload is read chunk by chunk, each
//! stored before the next is read (QUIC flow control holds the sender
//! meanwhile); a download reads a chunk from the store and writes it
//! before it reads the next. At most `max_attachment_streams` are served
//! at once on the relay; the others wait in QUIC flow control.
//!
//! Over a WebSocket (the TCP fallback, the web messenger) a transfer has a
//! WebSocket of its own, authenticated as a session is (`transfer.rs`,
//! [`over_websocket`]); it carries the same bytes. A
//! WebSocket cannot end one direction alone, so there an upload is done
//! once its declared size is stored, and the relay closes the WebSocket
//! where it would finish a stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herold_proto::codec::{decode_message, frame_bytes};
use herold_proto::v1::{self, ErrorCode, attachment_request, attachment_response};
use herold_proto::{ATTACHMENT_CHUNK_BYTES, ATTACHMENT_FRAME_BYTES, ids};
use herold_store::{Attachment, StoreError};
use tracing::{debug, warn};

use super::DeviceCtx;
use crate::metrics as m;
use crate::node::{Shared, now_ms};

/// A refused request: the error the device is told.
#[derive(Debug)]
pub(crate) struct Refused(ErrorCode, String);

impl Refused {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(code, message.into())
    }

    fn store(e: &StoreError) -> Self {
        warn!(error = %e, "attachment: store failed");
        Self::new(
            ErrorCode::Unavailable,
            "storage is unavailable; resume the transfer later",
        )
    }

    fn no_such() -> Self {
        Self::new(
            ErrorCode::NoSuchAttachment,
            "no such attachment in this conversation (unknown, expired or not yours to resume)",
        )
    }
}

/// How a stream ended, for the metrics.
enum Outcome {
    Done,
    /// The device stopped sending or reading: it resumes later, or not.
    Cut,
    Refused(Refused),
}

/// Where a transfer's bytes come from and go: a QUIC stream, or a
/// WebSocket of its own.
pub(crate) trait Pipe: Send {
    /// Whether the device ends its side when it has sent everything (a
    /// QUIC stream); a WebSocket cannot.
    const HALF_CLOSE: bool;
    /// Up to `max` bytes; `None` once the device ended its side.
    fn read_some(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Option<Bytes>, Refused>> + Send;
    /// Writes all of `bytes`.
    fn write(&mut self, bytes: &[u8]) -> impl Future<Output = Result<(), Refused>> + Send;
    /// The relay has written everything: ends its side.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
    /// Breaks the transfer off, telling the device `code`.
    fn reset(&mut self, code: ErrorCode) -> impl Future<Output = ()> + Send;
    /// After the refusal is written: reads no more, ends the relay's side
    /// and gives the device up to `patience` to read it.
    fn refuse_end(&mut self, patience: Duration) -> impl Future<Output = ()> + Send;
}

/// A QUIC stream the device opened beside its session.
struct QuicPipe {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Pipe for QuicPipe {
    const HALF_CLOSE: bool = true;

    async fn read_some(&mut self, max: usize) -> Result<Option<Bytes>, Refused> {
        match self.recv.read_chunk(max, true).await {
            Ok(c) => Ok(c.map(|c| c.bytes)),
            Err(e) => Err(Refused::new(ErrorCode::Unspecified, e.to_string())),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Refused> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| Refused::new(ErrorCode::Unspecified, e.to_string()))
    }

    async fn finish(&mut self) {
        let _ = self.send.finish();
    }

    async fn reset(&mut self, code: ErrorCode) {
        let _ = self.send.reset((code as u32).into());
    }

    async fn refuse_end(&mut self, patience: Duration) {
        let _ = self.send.finish();
        let _ = self.recv.stop(0u32.into());
        let _ = tokio::time::timeout(patience, self.send.stopped()).await;
    }
}

/// A WebSocket of its own, after its authentication.
struct WsPipe {
    send: crate::link::Sender,
    recv: crate::link::Receiver,
    /// Read and not yet taken.
    held: BytesMut,
}

/// How long the relay waits for a WebSocket's closing handshake.
const WS_CLOSE_GRACE: Duration = Duration::from_secs(2);

impl Pipe for WsPipe {
    const HALF_CLOSE: bool = false;

    async fn read_some(&mut self, max: usize) -> Result<Option<Bytes>, Refused> {
        if self.held.is_empty() {
            match self.recv.chunk().await {
                Ok(Some(b)) => self.held.extend_from_slice(&b),
                Ok(None) => return Ok(None),
                Err(e) => return Err(Refused::new(ErrorCode::Unspecified, format!("{e:?}"))),
            }
        }
        let n = max.min(self.held.len());
        Ok(Some(self.held.split_to(n).freeze()))
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Refused> {
        self.send
            .write_all_chunks(&mut [Bytes::copy_from_slice(bytes)])
            .await
            .map_err(|e| Refused::new(ErrorCode::Unspecified, e.to_string()))
    }

    async fn finish(&mut self) {
        self.send.close_normally(WS_CLOSE_GRACE).await;
    }

    async fn reset(&mut self, code: ErrorCode) {
        self.send
            .finish_with(Bytes::new(), code as u32, WS_CLOSE_GRACE)
            .await;
    }

    async fn refuse_end(&mut self, patience: Duration) {
        self.send.close_normally(patience).await;
    }
}

/// Serves the attachment streams the device opens on `conn` until the
/// connection ends.
pub(crate) async fn accept(shared: Arc<Shared>, conn: quinn::Connection, ctx: Arc<DeviceCtx>) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve(shared.clone(), ctx.clone(), QuicPipe { send, recv }));
    }
}

/// Serves the one transfer of an authenticated transfer WebSocket, for
/// the device `ctx`; `held` are the bytes read after the authentication.
pub(crate) async fn over_websocket(
    shared: Arc<Shared>,
    ctx: Arc<DeviceCtx>,
    (send, recv): (crate::link::Sender, crate::link::Receiver),
    held: BytesMut,
) {
    serve(shared, ctx, WsPipe { send, recv, held }).await;
}

async fn serve<P: Pipe>(shared: Arc<Shared>, ctx: Arc<DeviceCtx>, mut pipe: P) {
    let Ok(_turn) = shared.attachment_streams.clone().acquire_owned().await else {
        return;
    };
    let patience = shared.limits.write_timeout;
    let (kind, outcome) = match in_time(patience, read_request(&mut pipe)).await {
        Err(r) => ("unknown", Outcome::Refused(r)),
        Ok(v1::AttachmentRequest { kind: None }) => (
            "unknown",
            Outcome::Refused(Refused::new(
                ErrorCode::UnknownFrame,
                "the request is neither an upload nor a download",
            )),
        ),
        Ok(v1::AttachmentRequest {
            kind: Some(attachment_request::Kind::Upload(u)),
        }) => ("upload", upload(&shared, &ctx, u, &mut pipe).await),
        Ok(v1::AttachmentRequest {
            kind: Some(attachment_request::Kind::Download(d)),
        }) => ("download", download(&shared, &ctx, d, &mut pipe).await),
    };
    let label = match &outcome {
        Outcome::Done => "done".to_owned(),
        Outcome::Cut => "cut".to_owned(),
        Outcome::Refused(r) => crate::metrics::code_label(r.0),
    };
    metrics::counter!(m::ATTACHMENT_STREAMS, "kind" => kind, "outcome" => label).increment(1);
    if let Outcome::Refused(Refused(code, message)) = outcome {
        debug!(?code, %message, "attachment request refused");
        let frame = response(attachment_response::Kind::Error(v1::Error {
            code: code as i32,
            message,
            ..Default::default()
        }));
        if pipe.write(&frame).await.is_ok() {
            // Whatever else the device sends is not read.
            pipe.refuse_end(patience).await;
        }
    }
}

/// Runs `f` for at most `limit`: a device that makes no progress for that
/// long gives up its place.
async fn in_time<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, Refused>>,
) -> Result<T, Refused> {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| {
        Err(Refused::new(
            ErrorCode::Unavailable,
            format!("no progress for {} s", limit.as_secs()),
        ))
    })
}

/// Exactly `n` bytes, or `None` if the device ended its side first.
async fn read_exact(pipe: &mut impl Pipe, n: usize) -> Result<Option<Vec<u8>>, Refused> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match pipe.read_some(n - out.len()).await? {
            Some(b) => out.extend_from_slice(&b),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

async fn read_request(pipe: &mut impl Pipe) -> Result<v1::AttachmentRequest, Refused> {
    let bad = |what: String| Refused::new(ErrorCode::BadFrame, what);
    let len = read_exact(pipe, 4)
        .await
        .map_err(|e| bad(format!("no request frame: {}", e.1)))?
        .ok_or_else(|| bad("no request frame".into()))?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > ATTACHMENT_FRAME_BYTES {
        return Err(Refused::new(
            ErrorCode::FrameTooLarge,
            format!("the request has {len} bytes; the limit is {ATTACHMENT_FRAME_BYTES}"),
        ));
    }
    let body = read_exact(pipe, len)
        .await
        .map_err(|e| bad(format!("the request frame is cut short: {}", e.1)))?
        .ok_or_else(|| bad("the request frame is cut short".into()))?;
    decode_message(&body).map_err(|e| bad(e.to_string()))
}

fn response(kind: attachment_response::Kind) -> Bytes {
    // A response is a few hundred bytes: it always fits.
    frame_bytes(
        &v1::AttachmentResponse { kind: Some(kind) },
        ATTACHMENT_FRAME_BYTES,
    )
    .unwrap_or_default()
}

/// The conversation's roster, or the refusal.
async fn roster_of(
    shared: &Shared,
    conversation_id: &str,
) -> Result<Arc<crate::roster::Roster>, Refused> {
    ids::validate_id("conversation", conversation_id)
        .map_err(|e| Refused::new(ErrorCode::InvalidEnvelope, e.to_string()))?;
    match shared.rosters.get(conversation_id).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(Refused::new(
            ErrorCode::UnknownConversation,
            "no such conversation",
        )),
        Err(e) => Err(Refused::store(&e)),
    }
}

/// Starts an upload: checks, then the attachment's row.
async fn begin(shared: &Shared, ctx: &DeviceCtx, u: &v1::Upload) -> Result<Attachment, Refused> {
    let roster = roster_of(shared, &u.conversation_id).await?;
    if let Err(why) = roster.check_post(&ctx.account_id) {
        return Err(Refused::new(why.code(), why.message()));
    }
    if roster.kind == herold_store::ConversationKind::Direct
        && roster.policy.direct_chats == herold_store::DirectChats::Nobody
    {
        return Err(Refused::new(
            ErrorCode::PolicyDenied,
            "the organisation's policy allows no direct conversations",
        ));
    }
    let max = roster.policy.max_attachment_bytes;
    if u.size > max {
        return Err(Refused::new(
            ErrorCode::AttachmentTooLarge,
            format!(
                "the file has {} bytes of ciphertext; this conversation's policy allows {max}",
                u.size
            ),
        ));
    }
    let now = now_ms();
    let expires_at_ms = roster
        .policy
        .expiry(u.expires_at_ms, now)
        .map_err(|why| Refused::new(ErrorCode::InvalidExpiry, why))?;
    if let Err(wait) = shared
        .conversation_rates
        .take(&u.conversation_id, tokio::time::Instant::now().into_std())
    {
        return Err(Refused::new(
            ErrorCode::RateLimited,
            format!(
                "too many messages and files into this conversation; retry in {} ms",
                crate::frames::retry_ms(wait)
            ),
        ));
    }
    let mut id = vec![0u8; ids::ATTACHMENT_ID_BYTES];
    getrandom::fill(&mut id).map_err(|e| {
        Refused::new(
            ErrorCode::Internal,
            format!("no randomness for the attachment id: {e}"),
        )
    })?;
    let a = Attachment {
        id,
        conversation_id: u.conversation_id.clone(),
        uploader_device_id: ctx.device_id.clone(),
        size: u.size,
        chunk_bytes: ATTACHMENT_CHUNK_BYTES,
        created_at_ms: now,
        expires_at_ms,
        received_chunks: 0,
    };
    shared
        .store
        .create_attachment(a.clone())
        .await
        .map_err(|e| Refused::store(&e))?;
    Ok(a)
}

/// Finds the upload this device resumes.
async fn resume(shared: &Shared, ctx: &DeviceCtx, u: &v1::Upload) -> Result<Attachment, Refused> {
    let roster = roster_of(shared, &u.conversation_id).await?;
    if let Err(why) = roster.check_post(&ctx.account_id) {
        return Err(Refused::new(why.code(), why.message()));
    }
    let a = shared
        .store
        .attachment(&u.attachment_id, now_ms())
        .await
        .map_err(|e| Refused::store(&e))?
        .ok_or_else(Refused::no_such)?;
    if a.uploader_device_id != ctx.device_id
        || a.conversation_id != u.conversation_id
        || a.size != u.size
    {
        return Err(Refused::no_such());
    }
    Ok(a)
}

async fn upload<P: Pipe>(shared: &Shared, ctx: &DeviceCtx, u: v1::Upload, pipe: &mut P) -> Outcome {
    let found = if u.attachment_id.is_empty() {
        begin(shared, ctx, &u).await
    } else {
        resume(shared, ctx, &u).await
    };
    let mut a = match found {
        Ok(a) => a,
        Err(r) => return Outcome::Refused(r),
    };
    let patience = shared.limits.write_timeout;
    let ready = response(attachment_response::Kind::UploadReady(v1::UploadReady {
        attachment_id: a.id.clone(),
        next_chunk: a.received_chunks,
        chunk_bytes: a.chunk_bytes,
        expires_at_ms: a.expires_at_ms.unwrap_or(0),
    }));
    if in_time(patience, pipe.write(&ready)).await.is_err() {
        return Outcome::Cut;
    }
    let mut buf = BytesMut::new();
    while let Some(want) = a.chunk_len(a.received_chunks) {
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        while buf.len() < want {
            match in_time(patience, pipe.read_some(want - buf.len())).await {
                Ok(Some(b)) => buf.extend_from_slice(&b),
                Ok(None) | Err(_) => return Outcome::Cut,
            }
        }
        let index = a.received_chunks;
        let chunk = buf.split().to_vec();
        metrics::counter!(m::ATTACHMENT_BYTES, "direction" => "up").increment(chunk.len() as u64);
        match shared.store.put_attachment_chunk(&a.id, index, chunk).await {
            Ok(now) => a.received_chunks = now.received_chunks.max(index + 1),
            Err(StoreError::NoSuchAttachment) => return Outcome::Refused(Refused::no_such()),
            Err(e) => return Outcome::Refused(Refused::store(&e)),
        }
    }
    // Everything is stored: the device must have finished its stream
    // (a WebSocket cannot: it is done at the declared size).
    let more = if P::HALF_CLOSE {
        match in_time(patience, pipe.read_some(1)).await {
            Ok(more) => more.is_some(),
            Err(_) => return Outcome::Cut,
        }
    } else {
        !buf.is_empty()
    };
    if more {
        return Outcome::Refused(Refused::new(
            ErrorCode::InvalidAttachment,
            format!("more bytes than the declared {}", a.size),
        ));
    }
    let done = response(attachment_response::Kind::UploadDone(v1::UploadDone {
        attachment_id: a.id.clone(),
        size: a.size,
    }));
    if in_time(patience, pipe.write(&done)).await.is_err() {
        return Outcome::Cut;
    }
    pipe.finish().await;
    Outcome::Done
}

async fn download(
    shared: &Shared,
    ctx: &DeviceCtx,
    d: v1::Download,
    pipe: &mut impl Pipe,
) -> Outcome {
    let a = match find_download(shared, ctx, &d).await {
        Ok(a) => a,
        Err(r) => return Outcome::Refused(r),
    };
    let patience = shared.limits.write_timeout;
    let ready = response(attachment_response::Kind::DownloadReady(
        v1::DownloadReady {
            size: a.size,
            chunk_bytes: a.chunk_bytes,
            from_chunk: d.from_chunk,
            expires_at_ms: a.expires_at_ms.unwrap_or(0),
        },
    ));
    if in_time(patience, pipe.write(&ready)).await.is_err() {
        return Outcome::Cut;
    }
    for index in d.from_chunk..a.chunks() {
        let chunk = match shared.store.attachment_chunk(&a.id, index).await {
            Ok(Some(c)) => c,
            // Expired under way, or the store failed: the device sees the
            // stream reset and tries again (and is then told why).
            Ok(None) => {
                pipe.reset(ErrorCode::NoSuchAttachment).await;
                return Outcome::Cut;
            }
            Err(e) => {
                warn!(error = %e, "attachment: store failed");
                pipe.reset(ErrorCode::Unavailable).await;
                return Outcome::Cut;
            }
        };
        metrics::counter!(m::ATTACHMENT_BYTES, "direction" => "down").increment(chunk.len() as u64);
        if in_time(patience, pipe.write(&chunk)).await.is_err() {
            return Outcome::Cut;
        }
    }
    pipe.finish().await;
    Outcome::Done
}

/// The attachment a member of its conversation may fetch.
async fn find_download(
    shared: &Shared,
    ctx: &DeviceCtx,
    d: &v1::Download,
) -> Result<Attachment, Refused> {
    let roster = roster_of(shared, &d.conversation_id).await?;
    if !roster.members.contains_key(&ctx.account_id) {
        return Err(Refused::new(
            ErrorCode::NotMember,
            "your account is not a member of this conversation",
        ));
    }
    let a = shared
        .store
        .attachment(&d.attachment_id, now_ms())
        .await
        .map_err(|e| Refused::store(&e))?
        .filter(|a| a.conversation_id == d.conversation_id)
        .ok_or_else(Refused::no_such)?;
    if !a.complete() {
        return Err(Refused::new(
            ErrorCode::AttachmentIncomplete,
            format!(
                "the upload has {} of {} chunks so far",
                a.received_chunks,
                a.chunks()
            ),
        ));
    }
    if d.from_chunk > a.chunks() {
        return Err(Refused::new(
            ErrorCode::InvalidAttachment,
            format!("the attachment has {} chunks", a.chunks()),
        ));
    }
    Ok(a)
}
