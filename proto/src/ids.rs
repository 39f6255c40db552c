//! Identifier rules shared by relay, store and clients.
//!
//! Account, device and conversation ids are 1 to [`MAX_ID_BYTES`] bytes of
//! ASCII letters, digits and `.`, `_`, `-`, `:` and `@`. The rule keeps ids
//! printable in logs and safe as storage keys. Message ids are exactly
//! [`MESSAGE_ID_BYTES`] bytes.

/// Longest id in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Length of a message id.
pub const MESSAGE_ID_BYTES: usize = 16;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("{what} id is empty")]
    Empty {
        /// Which kind of id.
        what: &'static str,
    },
    /// The id is longer than [`MAX_ID_BYTES`].
    #[error("{what} id is {len} bytes long; the limit is {MAX_ID_BYTES}")]
    TooLong {
        /// Which kind of id.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The id contains a character outside the allowed set.
    #[error("{what} id contains {ch:?}; allowed are ASCII letters, digits and . _ - : @")]
    BadChar {
        /// Which kind of id.
        what: &'static str,
        /// The first offending character.
        ch: char,
    },
}

/// Checks an account, device or conversation id; `what` names it in errors.
pub fn validate_id(what: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { what });
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong {
            what,
            len: id.len(),
        });
    }
    if let Some(ch) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@')))
    {
        return Err(IdError::BadChar { what, ch });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("account", "alice").is_ok());
        assert!(validate_id("device", "alice.phone-2").is_ok());
        assert!(validate_id("conversation", "station:0042").is_ok());
        assert_eq!(
            validate_id("account", ""),
            Err(IdError::Empty { what: "account" })
        );
        assert!(matches!(
            validate_id("account", &"a".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
        assert!(matches!(
            validate_id("account", "a b"),
            Err(IdError::BadChar { ch: ' ', .. })
        ));
        assert!(validate_id("account", "ä").is_err());
    }
}
