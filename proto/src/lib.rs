//! Herold's wire types and the sans-IO frame codec.
//!
//! # Layout
//! - [`v1`]: the generated protobuf messages of `proto/herold/v1/*.proto`:
//!   client frames ([`v1::ClientFrame`], [`v1::ServerFrame`]), the envelope,
//!   and (feature `admin`) the gRPC admin service stubs.
//! - [`codec`]: the length-delimited frame codec. It owns no socket and no
//!   clock: the caller feeds received bytes in with [`codec::FrameDecoder::extend`]
//!   and pulls whole frames out with [`codec::FrameDecoder::next_frame`];
//!   [`codec::encode_frame`] appends one frame to an output buffer.
//! - [`auth`]: the authentication transcript both sides sign and verify.
//! - [`audit`]: the audit log's hash chain (made by the store, checked by
//!   `herold admin audit verify`).
//! - [`ids`]: validation of account, device and conversation ids.
//! - [`udpstat`]: the kernel's UDP drop counters, parsed (for the relay's
//!   metrics and the load tester's report).
//!
//! The protocol itself is specified in `docs/protocol.md`.

#![warn(missing_docs)]

pub mod audit;
pub mod auth;
pub mod codec;
pub mod ids;
pub mod udpstat;

/// Generated protobuf types of package `herold.v1`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/herold.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every `.proto` file, for gRPC
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/herold_descriptor.bin"));

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The QUIC ALPN identifier of protocol version 1.
pub const ALPN: &[u8] = b"herold/1";

/// Bytes per stored chunk of an attachment (the last one is shorter): one
/// chunk of the SDK's encryption, 64 KiB of a file and its 16-byte tag, so
/// an upload resumes at a chunk boundary of the encryption too.
pub const ATTACHMENT_CHUNK_BYTES: u32 = 64 * 1024 + 16;

/// Largest AttachmentRequest or AttachmentResponse frame, bytes.
pub const ATTACHMENT_FRAME_BYTES: usize = 16 * 1024;
/// The path of the WebSocket that carries one attachment transfer, opened
/// with a ticket from the session (docs/protocol.md, "Attachments over
/// WebSocket").
pub const TRANSFER_PATH: &str = "/v1/transfer";
