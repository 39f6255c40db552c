//! Every client frame the relay decodes, from arbitrary bytes: decoding
//! never panics, and what decodes re-encodes to a message that decodes to
//! the same value (the relay and the SDK agree on what was sent).

#![no_main]

use herold_proto::codec::decode_message;
use herold_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_message::<v1::ClientFrame>(data) {
        let again = decode_message::<v1::ClientFrame>(&frame.encode_to_vec())
            .expect("a re-encoded frame decodes");
        assert_eq!(frame, again);
    }
    // The frames a relay reads before and after authentication, and the
    // server's frames the SDK reads.
    let _ = decode_message::<v1::ServerFrame>(data);
    let _ = decode_message::<v1::Hello>(data);
    let _ = decode_message::<v1::AuthResponse>(data);
});
