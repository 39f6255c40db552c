//! One-time enrollment codes: `XXXX-XXXX-XXXX` in Crockford's base32, kept
//! by the store as their SHA-256 only. IT issues them (the admin API, for
//! letters); a device issues them for its own account (a browser or a new
//! phone linked by a code the device shows, `session::link`).

use herold_store::{Account, EnrollmentCode};
use sha2::{Digest, Sha256};

/// Crockford's base32: no I, L, O, U, so a printed code reads unambiguously.
pub(crate) const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

const CODE_CHARS: usize = 12;

/// How long a link code (`session::link`) is valid: long enough to type
/// it, short enough that a photo of the screen is soon worthless.
pub(crate) const LINK_CODE_TTL_MS: i64 = 10 * 60 * 1000;
/// Link codes per account and hour, at most.
pub(crate) const LINK_CODES_PER_HOUR: u32 = 6;
/// Link codes an account may ask for at once.
pub(crate) const LINK_CODE_BURST: u32 = 3;

/// A fresh code and its hash.
pub(crate) fn new_code() -> Result<(String, Vec<u8>), String> {
    let mut raw = [0u8; CODE_CHARS];
    getrandom::fill(&mut raw).map_err(|e| format!("no randomness: {e}"))?;
    let chars: String = raw
        .iter()
        .map(|b| char::from(CODE_ALPHABET[usize::from(b & 31)]))
        .collect();
    let hash = code_hash(&chars);
    let shown = format!("{}-{}-{}", &chars[0..4], &chars[4..8], &chars[8..12]);
    Ok((shown, hash))
}

/// SHA-256 of a code as typed: case, dashes and spaces ignored, and the
/// letters Crockford's base32 confuses read as digits.
pub(crate) fn code_hash(code: &str) -> Vec<u8> {
    let norm: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect();
    Sha256::digest(norm.as_bytes()).to_vec()
}

/// The stored form of the code hashed `hash` for `account`, issued at
/// `now_ms` and void from `expires_at_ms`.
pub(crate) fn stored(
    hash: Vec<u8>,
    account: &Account,
    now_ms: i64,
    expires_at_ms: i64,
) -> EnrollmentCode {
    EnrollmentCode {
        code_hash: hash,
        account_id: account.id.clone(),
        account_created_at_ms: account.created_at_ms,
        created_at_ms: now_ms,
        expires_at_ms,
    }
}
