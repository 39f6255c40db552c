//! The frame codec on arbitrary bytes, fed in arbitrary chunks: it never
//! panics, never returns a frame over its limit, and frames it returns
//! re-encode to exactly the bytes they came from.

#![no_main]

use herold_proto::codec::FrameDecoder;
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, the rest is the stream.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut d = FrameDecoder::new(LIMIT);
    let mut consumed = 0usize;
    for piece in stream.chunks(chunk) {
        d.extend(piece);
        loop {
            match d.next_frame() {
                Ok(Some(body)) => {
                    assert!(body.len() <= LIMIT, "a frame over the limit came out");
                    let prefix = u32::try_from(body.len()).unwrap().to_be_bytes();
                    assert_eq!(&stream[consumed..consumed + 4], &prefix);
                    assert_eq!(&stream[consumed + 4..consumed + 4 + body.len()], &body[..]);
                    consumed += 4 + body.len();
                }
                Ok(None) => break,
                Err(_) => {
                    // Sticky: once out of sync, always an error.
                    assert!(d.next_frame().is_err());
                    return;
                }
            }
        }
        assert!(d.buffered() <= LIMIT + 4 + chunk);
    }
    // What is left over is reported as cut short, or nothing is left.
    assert_eq!(d.finish().is_ok(), consumed == stream.len());
});
