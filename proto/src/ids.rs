//! Identifier rules shared by relay, store and clients.
//!
//! Account, device and conversation ids are 1 to [`MAX_ID_BYTES`] bytes of
//! ASCII letters, digits and `.`, `_`, `-`, `:` and `@`. The rule keeps ids
//! printable in logs and safe as storage keys. Message ids are exactly
//! [`MESSAGE_ID_BYTES`] bytes. The ids of a large channel's sub-groups,
//! which the relay makes, add `~` and a number to the channel's id
//! ([`sub_group_id`]); operators cannot create ids with `~`.

/// Longest id in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Length of a message id.
pub const MESSAGE_ID_BYTES: usize = 16;
/// Length of an attachment id (random, chosen by the relay).
pub const ATTACHMENT_ID_BYTES: usize = 16;
/// Separates a large channel's id from the number of one of its sub-groups.
pub const SUB_GROUP_SEPARATOR: char = '~';

/// The id of sub-group `i` of the large channel `channel`: `channel~i`.
pub fn sub_group_id(channel: &str, i: u32) -> String {
    format!("{channel}{SUB_GROUP_SEPARATOR}{i}")
}

/// The channel and number of a sub-group's id; `None` for any other id.
pub fn sub_group_of(id: &str) -> Option<(&str, u32)> {
    let (channel, i) = id.rsplit_once(SUB_GROUP_SEPARATOR)?;
    if channel.is_empty() || channel.contains(SUB_GROUP_SEPARATOR) {
        return None;
    }
    // Digits only, no leading zero: one id per sub-group.
    if i.is_empty() || !i.bytes().all(|b| b.is_ascii_digit()) || (i.len() > 1 && i.starts_with('0'))
    {
        return None;
    }
    Some((channel, i.parse().ok()?))
}

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
    // `~` is allowed too, in the ids of sub-groups the relay makes.
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
    if let Some(ch) = id.chars().find(|c| {
        !(c.is_ascii_alphanumeric()
            || matches!(*c, '.' | '_' | '-' | ':' | '@' | SUB_GROUP_SEPARATOR))
    }) {
        return Err(IdError::BadChar { what, ch });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_group_ids() {
        assert_eq!(sub_group_id("info", 7), "info~7");
        assert_eq!(sub_group_of("info~7"), Some(("info", 7)));
        assert!(validate_id("conversation", &sub_group_id("info", 127)).is_ok());
        for not in [
            "info", "info~", "~3", "info~07", "info~x", "a~1~2", "info~-1",
        ] {
            assert_eq!(sub_group_of(not), None, "{not}");
        }
    }

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
