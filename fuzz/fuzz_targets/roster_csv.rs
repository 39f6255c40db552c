//! The roster CSV an operator imports, from arbitrary bytes: parsing never
//! panics, and every line is either a row or an error with its line
//! number, never both.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = herold_client::roster::parse_csv(data) {
        for row in &parsed.rows {
            assert!(
                !parsed.errors.iter().any(|e| e.line == row.line),
                "line {} is both a row and an error",
                row.line
            );
        }
    }
});
