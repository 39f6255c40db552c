//! Length-delimited frame codec, sans-IO.
//!
//! A frame on the wire is a 4-byte big-endian unsigned length `n` followed by
//! `n` bytes of one protobuf message. `n` may be 0 (an empty message). A
//! decoder is configured with the largest `n` it accepts; a larger length is
//! reported as [`CodecError::FrameTooLarge`] as soon as the 4 length bytes have
//! arrived, before any of the body is buffered, so an attacker cannot make the
//! receiver allocate more than `max_frame_bytes`.
//!
//! Driving contract: call [`FrameDecoder::extend`] with every chunk read from
//! the stream, then call [`FrameDecoder::next_frame`] until it returns
//! `Ok(None)`. When the stream ends, call [`FrameDecoder::finish`]: it reports
//! a frame cut short. After any error the stream is out of sync and must be
//! closed; the decoder keeps returning the same error.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Default largest frame body: 256 KiB of ciphertext plus room for the
/// envelope's other fields.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 256 * 1024 + 4 * 1024;

/// What can go wrong while decoding frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announces more bytes than this decoder accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced body length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: {have} of {need} bytes received")]
    Truncated {
        /// Bytes received of the frame (prefix included).
        have: usize,
        /// Bytes the frame needs (prefix included).
        need: usize,
    },
    /// The frame body is not a valid protobuf message of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Incremental decoder of length-delimited frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_bytes: usize,
    /// Sticky error: once out of sync, always out of sync.
    failed: Option<CodecError>,
}

impl FrameDecoder {
    /// A decoder that accepts frame bodies of at most `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_bytes,
            failed: None,
        }
    }

    /// The configured frame limit.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Changes the limit for the frames still to come (e.g. a small limit
    /// until the peer has authenticated, a larger one after).
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes received from the stream.
    pub fn extend(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Returns the next complete frame body, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, CodecError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.len() < LENGTH_PREFIX_BYTES {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX_BYTES]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame_bytes {
            let e = CodecError::FrameTooLarge {
                len,
                max: self.max_frame_bytes,
            };
            self.failed = Some(e.clone());
            self.buf = BytesMut::new();
            return Err(e);
        }
        if self.buf.len() < LENGTH_PREFIX_BYTES + len {
            // Reserve what the frame needs, bounded by the limit checked above.
            self.buf.reserve(LENGTH_PREFIX_BYTES + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(LENGTH_PREFIX_BYTES);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Declares the end of the stream; an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), CodecError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = if self.buf.len() < LENGTH_PREFIX_BYTES {
            LENGTH_PREFIX_BYTES
        } else {
            let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
            prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX_BYTES]);
            LENGTH_PREFIX_BYTES + u32::from_be_bytes(prefix) as usize
        };
        Err(CodecError::Truncated {
            have: self.buf.len(),
            need,
        })
    }

    /// The bytes received past the last whole frame taken: where a stream
    /// goes on in another format (an attachment transfer after its
    /// authentication).
    pub fn take_buffered(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    /// Decodes the next frame as message `M`.
    pub fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, CodecError> {
        match self.next_frame()? {
            None => Ok(None),
            Some(body) => decode_message(&body).map(Some),
        }
    }
}

/// Decodes one frame body as message `M`.
pub fn decode_message<M: Message + Default>(body: &[u8]) -> Result<M, CodecError> {
    M::decode(body).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("frame of {len} bytes exceeds the limit of {max} bytes")]
pub struct EncodeError {
    /// Encoded body length.
    pub len: usize,
    /// The limit it exceeds.
    pub max: usize,
}

/// Appends `msg` as one frame to `out`; refuses frames above `max_frame_bytes`
/// so that a sender never produces what the peer must reject.
pub fn encode_frame<M: Message>(
    msg: &M,
    max_frame_bytes: usize,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let len = msg.encoded_len();
    if len > max_frame_bytes || u32::try_from(len).is_err() {
        return Err(EncodeError {
            len,
            max: max_frame_bytes,
        });
    }
    out.reserve(LENGTH_PREFIX_BYTES + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    // `reserve` above makes this infallible: prost only fails on lack of capacity.
    if msg.encode(out).is_err() {
        return Err(EncodeError {
            len,
            max: max_frame_bytes,
        });
    }
    Ok(())
}

/// Encodes `msg` as one frame into a fresh buffer.
pub fn frame_bytes<M: Message>(msg: &M, max_frame_bytes: usize) -> Result<Bytes, EncodeError> {
    let mut out = BytesMut::new();
    encode_frame(msg, max_frame_bytes, &mut out)?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{self, client_frame, server_frame};
    use proptest::prelude::*;

    fn arb_submit() -> impl Strategy<Value = v1::ClientFrame> {
        (
            proptest::collection::vec(any::<u8>(), 0..32),
            "[a-z0-9:._-]{0,64}",
            any::<i64>(),
            proptest::collection::vec(any::<u8>(), 0..4096),
        )
            .prop_map(|(id, conv, exp, ct)| v1::ClientFrame {
                kind: Some(client_frame::Kind::Submit(v1::Submit {
                    message_id: id,
                    conversation_id: conv,
                    expires_at_ms: exp,
                    ciphertext: ct,
                    ..Default::default()
                })),
            })
    }

    fn arb_client_frame() -> impl Strategy<Value = v1::ClientFrame> {
        prop_oneof![
            arb_submit(),
            (any::<u32>(), "[a-z.]{0,40}", ".{0,20}").prop_map(|(v, d, c)| v1::ClientFrame {
                kind: Some(client_frame::Kind::Hello(v1::Hello {
                    version: v,
                    device_id: d,
                    client: c,
                })),
            }),
            ("[a-z]{0,10}", any::<u64>()).prop_map(|(c, s)| v1::ClientFrame {
                kind: Some(client_frame::Kind::Ack(v1::Ack {
                    conversation_id: c,
                    seq: s,
                })),
            }),
            proptest::collection::vec(("[a-z]{1,8}", any::<u64>()), 0..10).prop_map(|cs| {
                v1::ClientFrame {
                    kind: Some(client_frame::Kind::Sync(v1::Sync {
                        cursors: cs
                            .into_iter()
                            .map(|(c, s)| v1::Cursor {
                                conversation_id: c,
                                seq: s,
                            })
                            .collect(),
                    })),
                }
            }),
            Just(v1::ClientFrame { kind: None }),
        ]
    }

    proptest! {
        /// Any sequence of frames, cut into arbitrary chunks, decodes to the same sequence.
        #[test]
        fn roundtrip_in_arbitrary_chunks(
            frames in proptest::collection::vec(arb_client_frame(), 0..20),
            cuts in proptest::collection::vec(1usize..700, 1..50),
        ) {
            let mut wire = BytesMut::new();
            for f in &frames {
                encode_frame(f, DEFAULT_MAX_FRAME_BYTES, &mut wire).unwrap();
            }
            let wire = wire.freeze();
            let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
            let mut got = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < wire.len() {
                let n = cuts[i % cuts.len()].min(wire.len() - pos);
                dec.extend(&wire[pos..pos + n]);
                pos += n;
                i += 1;
                while let Some(f) = dec.next_message::<v1::ClientFrame>().unwrap() {
                    got.push(f);
                }
            }
            dec.finish().unwrap();
            prop_assert_eq!(got, frames);
        }

        /// Garbage never panics: it yields frames, waits for more, or errors.
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut dec = FrameDecoder::new(1024);
            dec.extend(&data);
            loop {
                match dec.next_frame() {
                    Ok(Some(body)) => {
                        let _ = decode_message::<v1::ClientFrame>(&body);
                        let _ = decode_message::<v1::ServerFrame>(&body);
                    }
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
            let _ = dec.finish();
        }

        /// Every strict prefix of a frame is reported as truncated at the end of stream.
        #[test]
        fn truncated_frames_are_reported(f in arb_submit(), cut in 1usize..10_000) {
            let wire = frame_bytes(&f, DEFAULT_MAX_FRAME_BYTES).unwrap();
            let cut = cut % wire.len();
            prop_assume!(cut > 0);
            let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
            dec.extend(&wire[..cut]);
            prop_assert_eq!(dec.next_frame().unwrap(), None);
            let is_truncated = matches!(dec.finish(), Err(CodecError::Truncated { have, need }) if have == cut && need >= cut);
            prop_assert!(is_truncated);
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_buffering() {
        let mut dec = FrameDecoder::new(1000);
        dec.extend(&1001u32.to_be_bytes());
        assert_eq!(
            dec.next_frame(),
            Err(CodecError::FrameTooLarge {
                len: 1001,
                max: 1000
            })
        );
        // Sticky: more data does not resynchronise a broken stream.
        dec.extend(&[0u8; 10]);
        assert_eq!(dec.buffered(), 0);
        assert!(matches!(
            dec.next_frame(),
            Err(CodecError::FrameTooLarge { .. })
        ));
        // A huge prefix must not reserve memory.
        let mut dec = FrameDecoder::new(1000);
        dec.extend(&u32::MAX.to_be_bytes());
        assert!(dec.next_frame().is_err());
    }

    #[test]
    fn encoder_refuses_oversized_frames() {
        let f = v1::ServerFrame {
            kind: Some(server_frame::Kind::Deliver(v1::Deliver {
                envelope: Some(v1::Envelope {
                    ciphertext: vec![7; 2000],
                    ..Default::default()
                }),
            })),
        };
        let mut out = BytesMut::new();
        let err = encode_frame(&f, 1000, &mut out).unwrap_err();
        assert!(err.len > 1000);
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_body_is_an_error() {
        // Field 3 (submit), wire type 2, claims 100 bytes but has 1.
        let body = [0x1a, 100, 0];
        assert!(matches!(
            decode_message::<v1::ClientFrame>(&body),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_frame_kind_decodes_as_none() {
        // Field 99, varint 1: a frame kind from a future version.
        let mut body = Vec::new();
        prost::encoding::encode_key(99, prost::encoding::WireType::Varint, &mut body);
        prost::encoding::encode_varint(1, &mut body);
        let f: v1::ClientFrame = decode_message(&body).unwrap();
        assert_eq!(f.kind, None);
    }

    #[test]
    fn empty_frame_is_valid() {
        let mut dec = FrameDecoder::new(16);
        dec.extend(&0u32.to_be_bytes());
        assert_eq!(dec.next_frame().unwrap(), Some(Bytes::new()));
        dec.finish().unwrap();
    }
}
