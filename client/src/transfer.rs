//! Attachment transfers on WebSockets of their own: how a device on a
//! WebSocket (the TCP fallback, a browser) uploads and downloads files.
//! A transfer opens a WebSocket at `/v1/transfer`, authenticates as the
//! session does (any relay of the cluster serves it), then carries the
//! bytes a QUIC attachment stream carries (docs/protocol.md section 20.1). A WebSocket cannot end
//! one direction alone: an upload is done at its declared size, and the
//! relay closes the WebSocket where it would finish a stream.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herold_proto::codec::{decode_message, frame_bytes};
use herold_proto::v1::{self, ErrorCode, attachment_request, attachment_response};
use herold_proto::{ATTACHMENT_CHUNK_BYTES, ATTACHMENT_FRAME_BYTES};

use crate::raw::{RawConnection, TransferTo};
use crate::{ClientError, Sender};

/// Attempts of one transfer over WebSockets before it gives up.
pub const WS_TRANSFER_ATTEMPTS: u32 = 4;
/// Longest a transfer waits for the relay's next bytes.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Ciphertext per WebSocket message of an upload.
const PIECE: usize = ATTACHMENT_CHUNK_BYTES as usize;

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The relay's id of the ciphertext: it goes into the `FileRef`.
    pub attachment_id: Vec<u8>,
    /// When the relay deletes it, unix milliseconds; 0: kept.
    pub expires_at_ms: i64,
}

/// A transfer's WebSocket, read past the frame decoder.
struct Transfer {
    conn: RawConnection,
    held: BytesMut,
}

impl Transfer {
    /// Opens it at `to`, authenticates as the device and sends `request`.
    async fn open(to: &TransferTo, request: attachment_request::Kind) -> Result<Self, ClientError> {
        let mut conn = RawConnection::open_transfer(&to.at).await?;
        conn.authenticate_signed(&to.device_id, to.relay_name.as_deref(), &to.signer)
            .await?;
        let frame = frame_bytes(
            &v1::AttachmentRequest {
                kind: Some(request),
            },
            ATTACHMENT_FRAME_BYTES,
        )
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        conn.send_bytes(&frame).await?;
        Ok(Self {
            conn,
            held: BytesMut::new(),
        })
    }

    /// More bytes from the relay into `held`; false at the end.
    async fn fill(&mut self) -> Result<bool, ClientError> {
        match crate::rt::timeout(STEP_TIMEOUT, self.conn.read_raw()).await {
            Ok(Ok(Some(b))) => {
                self.held.extend_from_slice(&b);
                Ok(true)
            }
            Ok(Ok(None)) => Ok(false),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed(format!(
                "the relay made no progress for {} s",
                STEP_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The relay's next framed answer; its refusal as the error.
    async fn response(&mut self) -> Result<attachment_response::Kind, ClientError> {
        while self.held.len() < 4 {
            if !self.fill().await? {
                return Err(ClientError::Closed(
                    "the relay ended the transfer without an answer".into(),
                ));
            }
        }
        let len =
            u32::from_be_bytes([self.held[0], self.held[1], self.held[2], self.held[3]]) as usize;
        if len > ATTACHMENT_FRAME_BYTES {
            return Err(ClientError::Protocol(format!(
                "the relay's answer has {len} bytes"
            )));
        }
        while self.held.len() < 4 + len {
            if !self.fill().await? {
                return Err(ClientError::Closed(
                    "the relay's answer is cut short".into(),
                ));
            }
        }
        let frame = self.held.split_to(4 + len);
        let r: v1::AttachmentResponse =
            decode_message(&frame[4..]).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match r.kind {
            Some(attachment_response::Kind::Error(e)) => Err(ClientError::relay(&e)),
            Some(k) => Ok(k),
            None => Err(ClientError::Protocol("an empty answer".into())),
        }
    }
}

/// Whether another attempt may help.
fn retry(e: &ClientError) -> bool {
    match e {
        ClientError::Relay { code, .. } => {
            matches!(code, ErrorCode::Unavailable | ErrorCode::RateLimited)
        }
        ClientError::Shutdown | ClientError::Protocol(_) | ClientError::TooLarge { .. } => false,
        _ => true,
    }
}

impl Sender {
    /// Where transfers go while the session is on a WebSocket; `None` on
    /// QUIC or while reconnecting.
    pub(crate) fn transfer_to(&self) -> Option<TransferTo> {
        match self.conn.borrow().as_ref()? {
            crate::raw::Carrier::Tcp(to) => Some(to.clone()),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The WebSocket to transfer on, once the session is back.
    async fn wait_transfer_to(&self) -> Result<TransferTo, ClientError> {
        let mut rx = self.conn.clone();
        loop {
            if let Some(to) = self.transfer_to() {
                return Ok(to);
            }
            connection_changed(&mut rx).await?;
        }
    }

    /// Where attempt `attempt` goes, after the pause the `last` error asks
    /// for (a growing one when it asks for none).
    async fn next_attempt(
        &self,
        attempt: u32,
        last: &ClientError,
    ) -> Result<TransferTo, ClientError> {
        if attempt > 0 {
            let pause = Duration::from_millis(200 << attempt.min(6));
            crate::rt::sleep(last.retry_after().unwrap_or(pause)).await;
        }
        self.wait_transfer_to().await
    }

    /// Uploads `sealed` on a WebSocket of its own (see the module docs),
    /// resuming where the last attempt stopped.
    pub(crate) async fn upload_ws(
        &self,
        conversation_id: &str,
        sealed: &[u8],
        expires_at_ms: i64,
    ) -> Result<Uploaded, ClientError> {
        let mut id = Vec::new();
        let mut last = ClientError::Closed("no attempt made".into());
        for attempt in 0..WS_TRANSFER_ATTEMPTS {
            let to = self.next_attempt(attempt, &last).await?;
            match upload_once(&to, &mut id, conversation_id, sealed, expires_at_ms).await {
                Ok(u) => return Ok(u),
                Err(e) if retry(&e) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Fetches an attachment's ciphertext (at most `max_bytes`) on a
    /// WebSocket of its own.
    pub(crate) async fn download_ws(
        &self,
        conversation_id: &str,
        attachment_id: &[u8],
        max_bytes: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let mut last = ClientError::Closed("no attempt made".into());
        for attempt in 0..WS_TRANSFER_ATTEMPTS {
            let to = self.next_attempt(attempt, &last).await?;
            match download_once(&to, conversation_id, attachment_id, max_bytes).await {
                Ok(d) => return Ok(d),
                Err(e) if retry(&e) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

async fn upload_once(
    to: &TransferTo,
    id: &mut Vec<u8>,
    conversation_id: &str,
    sealed: &[u8],
    expires_at_ms: i64,
) -> Result<Uploaded, ClientError> {
    let upload = attachment_request::Kind::Upload(v1::Upload {
        attachment_id: id.clone(),
        conversation_id: conversation_id.to_owned(),
        size: sealed.len() as u64,
        expires_at_ms,
    });
    let mut t = Transfer::open(to, upload).await?;
    let ready = match t.response().await? {
        attachment_response::Kind::UploadReady(r) => r,
        _ => return Err(ClientError::Protocol("expected UploadReady".into())),
    };
    id.clone_from(&ready.attachment_id);
    let from =
        usize::try_from(u64::from(ready.next_chunk).saturating_mul(u64::from(ready.chunk_bytes)))
            .unwrap_or(usize::MAX)
            .min(sealed.len());
    for piece in sealed[from..].chunks(PIECE) {
        t.conn.send_bytes(piece).await?;
    }
    match t.response().await? {
        attachment_response::Kind::UploadDone(d) => Ok(Uploaded {
            attachment_id: d.attachment_id,
            expires_at_ms: ready.expires_at_ms,
        }),
        _ => Err(ClientError::Protocol("expected UploadDone".into())),
    }
}

async fn download_once(
    to: &TransferTo,
    conversation_id: &str,
    attachment_id: &[u8],
    max_bytes: u64,
) -> Result<Vec<u8>, ClientError> {
    let download = attachment_request::Kind::Download(v1::Download {
        attachment_id: attachment_id.to_vec(),
        conversation_id: conversation_id.to_owned(),
        from_chunk: 0,
    });
    let mut t = Transfer::open(to, download).await?;
    let ready = match t.response().await? {
        attachment_response::Kind::DownloadReady(r) => r,
        _ => return Err(ClientError::Protocol("expected DownloadReady".into())),
    };
    if ready.size > max_bytes {
        return Err(ClientError::Protocol(format!(
            "the attachment has {} bytes, more than the {max_bytes} its reference says",
            ready.size
        )));
    }
    let size = usize::try_from(ready.size).unwrap_or(usize::MAX);
    while t.held.len() < size {
        if !t.fill().await? {
            return Err(ClientError::Closed("the download ended early".into()));
        }
    }
    if t.held.len() > size {
        return Err(ClientError::Protocol(
            "more bytes than the attachment has".into(),
        ));
    }
    let out: Bytes = t.held.split().freeze();
    Ok(out.to_vec())
}

/// In a browser every transfer runs on a WebSocket of its own.
#[cfg(target_arch = "wasm32")]
impl Sender {
    /// Uploads `sealed` (an encrypted file) to a conversation (see the
    /// module docs); `expires_at_ms` as for a message.
    pub async fn upload(
        &self,
        conversation_id: &str,
        sealed: &[u8],
        expires_at_ms: i64,
    ) -> Result<Uploaded, ClientError> {
        self.upload_ws(conversation_id, sealed, expires_at_ms).await
    }

    /// Fetches an attachment's ciphertext (at most `max_bytes`).
    pub async fn download(
        &self,
        conversation_id: &str,
        attachment_id: &[u8],
        max_bytes: u64,
    ) -> Result<Vec<u8>, ClientError> {
        self.download_ws(conversation_id, attachment_id, max_bytes)
            .await
    }
}

/// Waits for the client's connection of the moment to change (a
/// reconnect), at most [`STEP_TIMEOUT`].
pub(crate) async fn connection_changed(
    rx: &mut tokio::sync::watch::Receiver<Option<crate::raw::Carrier>>,
) -> Result<(), ClientError> {
    match crate::rt::timeout(STEP_TIMEOUT, rx.changed()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ClientError::Shutdown),
        Err(_) => Err(ClientError::Closed(format!(
            "no connection to the relay for {} s",
            STEP_TIMEOUT.as_secs()
        ))),
    }
}
