//! One device connection: authentication, then the session that takes
//! submits, acks and syncs from the device and pushes deliveries to it.
//!
//! The session is split the way quinn splits QUIC: a sans-IO core
//! ([`core`]) holds every decision (the authentication steps, what was sent
//! per conversation, gap fills, sync paging, acks, in-flight submits, the
//! drain) and is driven by inputs with the time as an argument; the driver
//! ([`driver`]) owns the frame stream, the store, the registry and the clock,
//! feeds the core and carries out what it asks for. The core can therefore
//! be tested in virtual time without sockets (`tests`, `sim`). A
//! connection comes in through [`accept`]: QUIC, or the TCP fallback (a
//! WebSocket over TLS, `crate::link`); the session is the same on both.
//!
//! Per connection there are two tasks: a reader that decodes frames from the
//! stream into a bounded channel (so a fast sender is slowed down by flow
//! control, not by our memory), and the driver, the only writer of the
//! stream. Submits and requests run as their own tasks ([`submit`]), at most
//! `max_in_flight` per connection, and hand their answer back to the driver.
//!
//! Delivery order: the core remembers, per conversation, the last seq it sent
//! (`sent_upto`). A live delivery at or below it is a duplicate and skipped;
//! one beyond `sent_upto + 1` means earlier messages are in flight or were
//! lost in transit, so the gap is filled from the store first. The store
//! numbers messages without gaps and writes them before they are fanned out,
//! so the gap is always readable. Each device therefore receives each
//! conversation in seq order, each message once per connection, and nothing
//! whose expiry has passed when its frame is produced.

use std::time::Duration;

use herold_proto::codec::CodecError;
use herold_proto::v1::{self, ErrorCode};

pub(crate) use crate::frames::{deliver_frame, error_frame, server_frame};
use crate::metrics::{self as m, code_label};

mod accept;
mod attachments;
mod core;
mod driver;
mod e2e;
mod link;
mod submit;
mod transfer;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod web_auth_tests;

pub(crate) use accept::serve;

/// Largest number of cursors one Sync may carry.
pub const MAX_SYNC_CURSORS: usize = 10_000;
/// Messages read from the store per page while syncing.
const SYNC_PAGE: usize = 256;
/// How long a draining session waits for the device's last acks.
const DRAIN_READ_GRACE: Duration = Duration::from_secs(2);
/// How long a session holds acks before handing them to the cursor sink.
const ACK_FLUSH: Duration = Duration::from_millis(200);
/// Largest frame before authentication: Hello and AuthResponse are small, so
/// an unauthenticated peer cannot make the relay buffer a large frame. The
/// session raises the limit once the device has authenticated.
const AUTH_FRAME_BYTES: usize = 16 * 1024;

/// An error that ends the connection, sent to the device first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fatal {
    pub code: ErrorCode,
    pub message: String,
    /// What the relay's own metrics and logs call it: `code`, unless the
    /// peer must not learn the difference (an id nobody enrolled is told
    /// `AUTH_FAILED`, and recorded as `UNKNOWN_DEVICE`).
    pub recorded: ErrorCode,
    /// When to try again, for a refusal that passes (0: not said).
    pub retry_after_ms: u32,
}

impl Fatal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            recorded: code,
            retry_after_ms: 0,
        }
    }

    /// The store could not answer (the driver logs the cause).
    fn unavailable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "storage is unavailable; retry with the same message id",
        )
    }
}

/// What the reader task hands to the session.
#[derive(Debug)]
pub(crate) enum ReadEvent {
    Frame(v1::ClientFrame),
    /// A frame whose body did not decode; the stream is still in sync.
    Malformed(String),
    /// The stream is out of sync or cut short.
    Codec(CodecError),
    /// The device finished its stream or the connection dropped.
    Closed,
}

/// The authenticated device of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceCtx {
    pub device_id: String,
    pub account_id: String,
}

fn codec_fatal(e: CodecError) -> Fatal {
    match e {
        CodecError::FrameTooLarge { .. } => Fatal::new(ErrorCode::FrameTooLarge, e.to_string()),
        CodecError::Truncated { .. } => Fatal::new(ErrorCode::BadFrame, e.to_string()),
        CodecError::Malformed(_) => Fatal::new(ErrorCode::BadFrame, e.to_string()),
    }
}

/// Counts a refused submit under its error code.
fn count_rejected(code: ErrorCode) {
    metrics::counter!(m::SUBMITS, "outcome" => "rejected", "code" => code_label(code)).increment(1);
}
