//! The checks the relay makes as MLS Delivery Service, on arbitrary bytes:
//! reading a message's framing, validating a key package, checking a
//! Welcome, reading the expiry in the authenticated data. None may panic;
//! an expiry that decodes re-encodes to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = herold_mls::inspect(data);
    let _ = herold_mls::validate_key_package(data);
    let _ = herold_mls::check_welcome(data);
    if let Ok(expiry) = herold_mls::decode_aad(data) {
        assert_eq!(herold_mls::encode_aad(expiry), data);
    }
});
