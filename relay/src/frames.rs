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
    error_with_retry(code, message.to_owned(), message_id, fatal, 0)
}

/// The one Error builder: `retry_after_ms` 0 says no time to wait.
fn error_with_retry(
    code: ErrorCode,
    message: String,
    message_id: Vec<u8>,
    fatal: bool,
    retry_after_ms: u32,
) -> Bytes {
    // An error frame is a few hundred bytes: it always fits.
    server_frame(v1::server_frame::Kind::Error(v1::Error {
        code: code as i32,
        message,
        message_id,
        fatal,
        retry_after_ms,
        ..Default::default()
    }))
}

/// A wait as the milliseconds an Error's `retry_after_ms` carries (at
/// least 1: 0 would say "no time given").
pub(crate) fn retry_ms(wait: std::time::Duration) -> u32 {
    u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// `RATE_LIMITED` for a submit beyond `rate` a second `whose` (the
/// device's, the conversation's), with how long to wait before resending.
pub(crate) fn rate_limited_frame(
    rate: u32,
    whose: &str,
    message_id: Vec<u8>,
    wait: std::time::Duration,
) -> Bytes {
    let retry_after_ms = retry_ms(wait);
    error_with_retry(
        ErrorCode::RateLimited,
        format!("more than {rate} submits a second {whose}; resend in {retry_after_ms} ms"),
        message_id,
        false,
        retry_after_ms,
    )
}

/// A submit shed because `pending` appends already wait for the store.
pub(crate) fn overloaded_frame(pending: u32, message_id: Vec<u8>, retry_after_ms: u32) -> Bytes {
    error_with_retry(
        ErrorCode::Unavailable,
        format!(
            "the relay is overloaded ({pending} messages wait for storage); \
             resend in {retry_after_ms} ms with the same message id"
        ),
        message_id,
        false,
        retry_after_ms,
    )
}

/// The error that ends a connection; `retry_after_ms` 0: not said.
pub(crate) fn fatal_frame(code: ErrorCode, message: &str, retry_after_ms: u32) -> Bytes {
    error_with_retry(code, message.to_owned(), Vec::new(), true, retry_after_ms)
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
            welcomed_devices: m.welcomed.clone(),
        }),
    }))
}
