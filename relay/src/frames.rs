//! The server's frames as bytes on a device's stream: built once, shared
//! by every device that receives them.

use bytes::Bytes;
use herold_proto::codec::frame_bytes;
use herold_proto::v1::{self, ErrorCode};
use herold_store::StoredMessage;

/// An Error frame; `fatal` ends the session.
pub(crate) fn error_frame(
    code: ErrorCode,
    message: &str,
    message_id: Vec<u8>,
    fatal: bool,
) -> Bytes {
    let f = v1::ServerFrame {
        kind: Some(v1::server_frame::Kind::Error(v1::Error {
            code: code as i32,
            message: message.to_owned(),
            message_id,
            fatal,
            ..Default::default()
        })),
    };
    // An error frame is a few hundred bytes: it always fits.
    frame_bytes(&f, usize::MAX).unwrap_or_default()
}

/// `RATE_LIMITED` for a submit beyond `rate` a second `whose` (the
/// device's, the conversation's), with how long to wait before resending.
pub(crate) fn rate_limited_frame(
    rate: u32,
    whose: &str,
    message_id: Vec<u8>,
    wait: std::time::Duration,
) -> Bytes {
    let retry_after_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
    server_frame(v1::server_frame::Kind::Error(v1::Error {
        code: ErrorCode::RateLimited as i32,
        message: format!(
            "more than {rate} submits a second {whose}; resend in {retry_after_ms} ms"
        ),
        message_id,
        retry_after_ms,
        ..Default::default()
    }))
}

/// A submit shed because `pending` appends already wait for the store.
pub(crate) fn overloaded_frame(pending: u32, message_id: Vec<u8>, retry_after_ms: u32) -> Bytes {
    server_frame(v1::server_frame::Kind::Error(v1::Error {
        code: ErrorCode::Unavailable as i32,
        message: format!(
            "the relay is overloaded ({pending} messages wait for storage); \
             resend in {retry_after_ms} ms with the same message id"
        ),
        message_id,
        retry_after_ms,
        ..Default::default()
    }))
}

/// The error that ends a connection; `retry_after_ms` 0: not said.
pub(crate) fn fatal_frame(code: ErrorCode, message: &str, retry_after_ms: u32) -> Bytes {
    server_frame(v1::server_frame::Kind::Error(v1::Error {
        code: code as i32,
        message: message.to_owned(),
        fatal: true,
        retry_after_ms,
        ..Default::default()
    }))
}

/// A server frame, framed for the stream.
pub(crate) fn server_frame(kind: v1::server_frame::Kind) -> Bytes {
    frame_bytes(&v1::ServerFrame { kind: Some(kind) }, usize::MAX).unwrap_or_default()
}

/// The framed Deliver for a stored message.
pub(crate) fn deliver_frame(m: &StoredMessage) -> Bytes {
    server_frame(v1::server_frame::Kind::Deliver(v1::Deliver {
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
