//! The binary form of a [`Delivery`] in a node's inbox stream.
//!
//! `version u8 = 2 | conv_len u16 | conv | seq u64 | has_expiry u8 |
//! [expires_at_ms i64] | has_accepted u8 | [accepted_at_ms i64] |
//! traceparent_len u16 | traceparent | frame_len u32 | frame | n u32 |
//! (len u16 | device)*`, all big-endian; an empty traceparent means none.
//! A reference (an empty frame: the receiving relay loads the message from
//! the store) is written as version 3, the same layout: a relay of the
//! previous version cannot decode it and resyncs its devices from the
//! store, instead of handing them an empty frame. Version 1 (without the
//! accepted time and the traceparent) is still read, so relays of the
//! previous version can finish a rolling upgrade; docs/routing.md has the
//! details.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::Delivery;

const VERSION: u8 = 2;
/// Version 2's layout with an empty frame: a reference.
const VERSION_REFERENCE: u8 = 3;
/// The encoding before the accepted time and the traceparent.
const VERSION_1: u8 = 1;

/// Why a stream entry could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum WireError {
    #[error("unknown delivery encoding version {0}")]
    Version(u8),
    #[error("delivery entry is truncated")]
    Truncated,
    #[error("a string in the delivery entry is not UTF-8")]
    Utf8,
    #[error("a string in the delivery entry is longer than 65535 bytes")]
    TooLong,
    #[error("a delivery entry's frame does not match its version")]
    Reference,
}

pub(crate) fn encode(d: &Delivery) -> Result<Bytes, WireError> {
    let mut b = BytesMut::with_capacity(
        32 + d.conversation_id.len()
            + d.frame.len()
            + d.devices.iter().map(|x| x.len() + 2).sum::<usize>(),
    );
    b.put_u8(if d.frame.is_empty() {
        VERSION_REFERENCE
    } else {
        VERSION
    });
    put_str(&mut b, &d.conversation_id)?;
    b.put_u64(d.seq);
    match d.expires_at_ms {
        Some(e) => {
            b.put_u8(1);
            b.put_i64(e);
        }
        None => b.put_u8(0),
    }
    match d.accepted_at_ms {
        Some(t) => {
            b.put_u8(1);
            b.put_i64(t);
        }
        None => b.put_u8(0),
    }
    put_str(&mut b, d.traceparent.as_deref().unwrap_or(""))?;
    let frame_len = u32::try_from(d.frame.len()).map_err(|_| WireError::TooLong)?;
    b.put_u32(frame_len);
    b.put_slice(&d.frame);
    let n = u32::try_from(d.devices.len()).map_err(|_| WireError::TooLong)?;
    b.put_u32(n);
    for dev in &d.devices {
        put_str(&mut b, dev)?;
    }
    Ok(b.freeze())
}

pub(crate) fn decode(mut b: Bytes) -> Result<Delivery, WireError> {
    let version = get_u8(&mut b)?;
    if ![VERSION, VERSION_REFERENCE, VERSION_1].contains(&version) {
        return Err(WireError::Version(version));
    }
    let conversation_id = get_str(&mut b)?;
    need(&b, 9)?;
    let seq = b.get_u64();
    let expires_at_ms = match b.get_u8() {
        0 => None,
        _ => {
            need(&b, 8)?;
            Some(b.get_i64())
        }
    };
    let (accepted_at_ms, traceparent) = if version == VERSION_1 {
        (None, None)
    } else {
        let accepted = match get_u8(&mut b)? {
            0 => None,
            _ => {
                need(&b, 8)?;
                Some(b.get_i64())
            }
        };
        let tp = get_str(&mut b)?;
        (accepted, (!tp.is_empty()).then_some(tp))
    };
    need(&b, 4)?;
    let frame_len = b.get_u32() as usize;
    need(&b, frame_len)?;
    let frame = b.split_to(frame_len);
    if (version == VERSION_REFERENCE) != frame.is_empty() {
        return Err(WireError::Reference);
    }
    need(&b, 4)?;
    let n = b.get_u32() as usize;
    // Each device costs at least 2 bytes: do not trust `n` for the capacity.
    let mut devices = Vec::with_capacity(n.min(b.remaining() / 2));
    for _ in 0..n {
        devices.push(get_str(&mut b)?);
    }
    Ok(Delivery {
        conversation_id,
        seq,
        expires_at_ms,
        accepted_at_ms,
        traceparent,
        frame,
        devices,
    })
}

fn put_str(b: &mut BytesMut, s: &str) -> Result<(), WireError> {
    let len = u16::try_from(s.len()).map_err(|_| WireError::TooLong)?;
    b.put_u16(len);
    b.put_slice(s.as_bytes());
    Ok(())
}

fn need(b: &Bytes, n: usize) -> Result<(), WireError> {
    if b.remaining() < n {
        Err(WireError::Truncated)
    } else {
        Ok(())
    }
}

fn get_u8(b: &mut Bytes) -> Result<u8, WireError> {
    need(b, 1)?;
    Ok(b.get_u8())
}

fn get_str(b: &mut Bytes) -> Result<String, WireError> {
    need(b, 2)?;
    let len = b.get_u16() as usize;
    need(b, len)?;
    String::from_utf8(b.split_to(len).to_vec()).map_err(|_| WireError::Utf8)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample() -> Delivery {
        Delivery {
            conversation_id: "grp-17".into(),
            seq: 42,
            expires_at_ms: Some(1_700_000_000_000),
            accepted_at_ms: Some(1_699_999_999_000),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            frame: Bytes::from_static(b"\x00\x00\x00\x03abc"),
            devices: vec!["dev-a".into(), "dev-b".into()],
        }
    }

    #[test]
    fn roundtrip() {
        let d = sample();
        assert_eq!(decode(encode(&d).unwrap()).unwrap(), d);
        let d = Delivery {
            expires_at_ms: None,
            accepted_at_ms: None,
            traceparent: None,
            devices: vec![],
            ..sample()
        };
        assert_eq!(decode(encode(&d).unwrap()).unwrap(), d);
    }

    #[test]
    fn a_reference_is_version_3_and_roundtrips() {
        let d = Delivery {
            frame: Bytes::new(),
            devices: vec![],
            ..sample()
        };
        let e = encode(&d).unwrap();
        assert_eq!(e[0], VERSION_REFERENCE);
        assert_eq!(decode(e).unwrap(), d);
        assert_eq!(encode(&sample()).unwrap()[0], VERSION);
    }

    #[test]
    fn a_version_that_disagrees_with_its_frame_is_refused() {
        let mut v = encode(&sample()).unwrap().to_vec();
        v[0] = VERSION_REFERENCE;
        assert_eq!(decode(Bytes::from(v)), Err(WireError::Reference));
        let empty = Delivery {
            frame: Bytes::new(),
            ..sample()
        };
        let mut v = encode(&empty).unwrap().to_vec();
        v[0] = VERSION;
        assert_eq!(decode(Bytes::from(v)), Err(WireError::Reference));
    }

    #[test]
    fn version_1_entries_are_still_read() {
        let mut b = BytesMut::new();
        b.put_u8(VERSION_1);
        b.put_u16(1);
        b.put_slice(b"c");
        b.put_u64(7);
        b.put_u8(0);
        b.put_u32(1);
        b.put_slice(b"f");
        b.put_u32(1);
        b.put_u16(1);
        b.put_slice(b"d");
        let d = decode(b.freeze()).unwrap();
        assert_eq!((d.seq, d.accepted_at_ms, d.traceparent), (7, None, None));
        assert_eq!(d.devices, vec!["d".to_owned()]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = encode(&sample()).unwrap();
        for cut in 0..full.len() {
            assert!(decode(full.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut v = encode(&sample()).unwrap().to_vec();
        v[0] = 9;
        assert_eq!(decode(Bytes::from(v)), Err(WireError::Version(9)));
    }

    #[test]
    fn huge_device_count_does_not_allocate_it() {
        let mut b = BytesMut::new();
        b.put_u8(VERSION_REFERENCE);
        b.put_u16(1);
        b.put_slice(b"c");
        b.put_u64(1);
        b.put_u8(0);
        b.put_u8(0);
        b.put_u16(0);
        b.put_u32(0);
        b.put_u32(u32::MAX);
        assert_eq!(decode(b.freeze()), Err(WireError::Truncated));
    }
}
