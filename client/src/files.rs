//! Attachment transfers on a [`Client`](crate::Client)'s connection: each
//! upload or download on a QUIC stream of its own, beside the stream that
//! carries messages (docs/protocol.md, "Attachments"), and resumed at the
//! first missing chunk when the connection breaks.
//!
//! What goes up is ciphertext ([`crate::attachment::seal`]); the key and
//! digest travel inside the MLS message that refers to it.

use std::time::Duration;

use herold_proto::codec::{decode_message, frame_bytes};
use herold_proto::v1::{self, ErrorCode, attachment_request, attachment_response};
use herold_proto::{ATTACHMENT_CHUNK_BYTES, ATTACHMENT_FRAME_BYTES};

use crate::raw::{WireTap, tap_bytes};
use crate::{ClientError, Sender};

/// How often a transfer starts again (on a new stream, or a new
/// connection) before it gives up.
pub const TRANSFER_ATTEMPTS: u32 = 8;
/// Longest a transfer waits for a connection or for the relay's answer.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes written to the stream per write.
const WRITE_PIECE: usize = 256 * 1024;

pub(crate) use crate::raw::Carrier;

pub use crate::transfer::Uploaded;

/// Why one attempt of a transfer ended.
enum Attempt {
    /// Try again, on a new stream once the connection is back.
    Retry(ClientError),
    /// Give up with this error.
    Fail(ClientError),
}

fn io(e: impl std::fmt::Display) -> Attempt {
    Attempt::Retry(ClientError::Io(e.to_string()))
}

/// A relay error: worth another attempt only if it passes.
fn refused(e: &v1::Error) -> Attempt {
    let err = ClientError::relay(e);
    match err.code() {
        Some(ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::Internal) => {
            Attempt::Retry(err)
        }
        _ => Attempt::Fail(err),
    }
}

async fn read_response(
    recv: &mut quinn::RecvStream,
    tap: &Option<WireTap>,
) -> Result<attachment_response::Kind, Attempt> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(io)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > ATTACHMENT_FRAME_BYTES {
        return Err(Attempt::Fail(ClientError::Protocol(format!(
            "an attachment response of {len} bytes"
        ))));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(io)?;
    tap_bytes(tap, &len.to_be_bytes());
    tap_bytes(tap, &body);
    let r: v1::AttachmentResponse =
        decode_message(&body).map_err(|e| Attempt::Fail(ClientError::Protocol(e.to_string())))?;
    match r.kind {
        Some(attachment_response::Kind::Error(e)) => Err(refused(&e)),
        Some(k) => Ok(k),
        None => Err(Attempt::Fail(ClientError::Protocol(
            "an empty attachment response".into(),
        ))),
    }
}

async fn open(
    conn: &quinn::Connection,
    tap: &Option<WireTap>,
    request: attachment_request::Kind,
) -> Result<(quinn::SendStream, quinn::RecvStream), Attempt> {
    let (mut send, recv) = conn.open_bi().await.map_err(io)?;
    let frame = frame_bytes(
        &v1::AttachmentRequest {
            kind: Some(request),
        },
        ATTACHMENT_FRAME_BYTES,
    )
    .map_err(|e| Attempt::Fail(ClientError::Protocol(e.to_string())))?;
    tap_bytes(tap, &frame);
    send.write_all(&frame).await.map_err(io)?;
    Ok((send, recv))
}

fn unexpected(what: &str) -> Attempt {
    Attempt::Fail(ClientError::Protocol(format!(
        "the relay answered {what} out of place"
    )))
}

/// One attempt at an upload: starts it (`id` empty) or resumes it, and
/// sets `id` as soon as the relay named it.
async fn upload_once(
    conn: &quinn::Connection,
    tap: &Option<WireTap>,
    id: &mut Vec<u8>,
    conversation_id: &str,
    sealed: &[u8],
    expires_at_ms: i64,
) -> Result<Uploaded, Attempt> {
    let (mut send, mut recv) = open(
        conn,
        tap,
        attachment_request::Kind::Upload(v1::Upload {
            attachment_id: id.clone(),
            conversation_id: conversation_id.to_owned(),
            size: sealed.len() as u64,
            expires_at_ms,
        }),
    )
    .await?;
    let ready = match read_response(&mut recv, tap).await? {
        attachment_response::Kind::UploadReady(r) => r,
        _ => return Err(unexpected("an upload")),
    };
    *id = ready.attachment_id.clone();
    let from = usize::try_from(u64::from(ready.next_chunk) * u64::from(ready.chunk_bytes))
        .unwrap_or(usize::MAX)
        .min(sealed.len());
    for piece in sealed[from..].chunks(WRITE_PIECE) {
        tap_bytes(tap, piece);
        send.write_all(piece).await.map_err(io)?;
    }
    send.finish().map_err(io)?;
    match read_response(&mut recv, tap).await? {
        attachment_response::Kind::UploadDone(d) if d.attachment_id == *id => Ok(Uploaded {
            attachment_id: d.attachment_id,
            expires_at_ms: ready.expires_at_ms,
        }),
        _ => Err(unexpected("the end of an upload")),
    }
}

/// One attempt at a download, appending to `out` (whole chunks so far).
async fn download_once(
    conn: &quinn::Connection,
    tap: &Option<WireTap>,
    conversation_id: &str,
    attachment_id: &[u8],
    out: &mut Vec<u8>,
    max_bytes: u64,
) -> Result<(), Attempt> {
    let chunk = ATTACHMENT_CHUNK_BYTES as usize;
    let from_chunk = u32::try_from(out.len() / chunk).unwrap_or(u32::MAX);
    let (_send, mut recv) = open(
        conn,
        tap,
        attachment_request::Kind::Download(v1::Download {
            attachment_id: attachment_id.to_vec(),
            conversation_id: conversation_id.to_owned(),
            from_chunk,
        }),
    )
    .await?;
    let ready = match read_response(&mut recv, tap).await? {
        attachment_response::Kind::DownloadReady(r) => r,
        _ => return Err(unexpected("a download")),
    };
    if ready.size > max_bytes {
        return Err(Attempt::Fail(ClientError::Protocol(format!(
            "the attachment has {} bytes, more than the {max_bytes} expected",
            ready.size
        ))));
    }
    if ready.chunk_bytes != ATTACHMENT_CHUNK_BYTES || ready.from_chunk != from_chunk {
        return Err(unexpected("chunks of another size"));
    }
    out.reserve(
        usize::try_from(ready.size)
            .unwrap_or(0)
            .saturating_sub(out.len()),
    );
    loop {
        match recv.read_chunk(WRITE_PIECE, true).await {
            Ok(Some(c)) => {
                if (out.len() + c.bytes.len()) as u64 > ready.size {
                    return Err(Attempt::Fail(ClientError::Protocol(
                        "the relay sent more than the attachment's size".into(),
                    )));
                }
                tap_bytes(tap, &c.bytes);
                out.extend_from_slice(&c.bytes);
            }
            Ok(None) if out.len() as u64 == ready.size => return Ok(()),
            Ok(None) => return Err(io("the download ended early")),
            Err(e) => {
                // Keep whole chunks only: the next attempt starts at one.
                out.truncate(out.len() / chunk * chunk);
                return Err(io(e));
            }
        }
    }
}

/// The attempts of one transfer: each on a new stream, on a new
/// connection if the last one broke, after a growing pause, at most
/// [`TRANSFER_ATTEMPTS`].
struct Retries {
    made: u32,
    /// The connection that just broke.
    failed: Option<usize>,
    last: ClientError,
}

impl Retries {
    fn new() -> Self {
        Self {
            made: 0,
            failed: None,
            last: ClientError::Closed("no attempt made".into()),
        }
    }

    /// The connection for the next attempt, after its pause; the last
    /// error once the attempts are used up.
    async fn connection(&mut self, sender: &Sender) -> Result<quinn::Connection, ClientError> {
        if self.made >= TRANSFER_ATTEMPTS {
            return Err(self.last.clone());
        }
        if self.made > 0 {
            let wait = self
                .last
                .retry_after()
                .unwrap_or(Duration::from_millis(100 << self.made.min(6)));
            tokio::time::sleep(wait).await;
        }
        self.made += 1;
        sender.transfer_connection(self.failed).await
    }

    /// The transfer's result, or `None` to try again.
    fn settle<T>(
        &mut self,
        conn: &quinn::Connection,
        r: Result<Result<T, Attempt>, tokio::time::error::Elapsed>,
    ) -> Option<Result<T, ClientError>> {
        match r {
            Ok(Ok(v)) => return Some(Ok(v)),
            Ok(Err(Attempt::Fail(e))) => return Some(Err(e)),
            Ok(Err(Attempt::Retry(e))) => self.last = e,
            Err(_) => {
                self.last = ClientError::Closed(format!(
                    "the relay made no progress for {} s",
                    STEP_TIMEOUT.as_secs()
                ));
            }
        }
        self.failed = conn.close_reason().map(|_| conn.stable_id());
        None
    }
}

impl Sender {
    /// The connection to transfer on, once there is one (other than
    /// `not`, a connection that just failed).
    async fn transfer_connection(
        &self,
        not: Option<usize>,
    ) -> Result<quinn::Connection, ClientError> {
        let mut rx = self.conn.clone();
        loop {
            match rx.borrow_and_update().clone() {
                Some(Carrier::Quic(c))
                    if c.close_reason().is_none() && Some(c.stable_id()) != not =>
                {
                    return Ok(c);
                }
                Some(Carrier::Tcp(_)) => {
                    return Err(ClientError::Connect(
                        "the connection moved to the TCP fallback during the transfer; \
                         send the file again"
                            .into(),
                    ));
                }
                _ => {}
            }
            crate::transfer::connection_changed(&mut rx).await?;
        }
    }

    /// Uploads `sealed` (an encrypted file) to a conversation on a stream
    /// of its own, resuming after a broken connection where it stopped.
    /// `expires_at_ms` as for a message (0: the conversation's retention);
    /// the message referring to the file should use the same.
    pub async fn upload(
        &self,
        conversation_id: &str,
        sealed: &[u8],
        expires_at_ms: i64,
    ) -> Result<Uploaded, ClientError> {
        // On the TCP fallback: a WebSocket of its own (`crate::transfer`).
        if self.transfer_to().is_some() {
            return self.upload_ws(conversation_id, sealed, expires_at_ms).await;
        }
        let mut id = Vec::new();
        let mut tries = Retries::new();
        loop {
            let conn = tries.connection(self).await?;
            let once = upload_once(
                &conn,
                &self.tap,
                &mut id,
                conversation_id,
                sealed,
                expires_at_ms,
            );
            let r = tokio::time::timeout(STEP_TIMEOUT, once).await;
            if let Some(done) = tries.settle(&conn, r) {
                return done;
            }
        }
    }

    /// Fetches an attachment's ciphertext (at most `max_bytes` of it),
    /// resuming after a broken connection where it stopped.
    pub async fn download(
        &self,
        conversation_id: &str,
        attachment_id: &[u8],
        max_bytes: u64,
    ) -> Result<Vec<u8>, ClientError> {
        if self.transfer_to().is_some() {
            return self
                .download_ws(conversation_id, attachment_id, max_bytes)
                .await;
        }
        let mut out = Vec::new();
        let mut tries = Retries::new();
        loop {
            let conn = tries.connection(self).await?;
            let once = download_once(
                &conn,
                &self.tap,
                conversation_id,
                attachment_id,
                &mut out,
                max_bytes,
            );
            let r = tokio::time::timeout(STEP_TIMEOUT, once).await;
            if let Some(done) = tries.settle(&conn, r) {
                return done.map(|()| out);
            }
        }
    }
}
