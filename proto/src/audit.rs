//! The audit log's hash chain: how an entry's hash is made, and how a
//! listing of entries is checked. The store computes the hashes when it
//! appends; `herold admin audit verify` checks them on the operator's
//! machine with this same code. See `docs/admin.md`, "A tamper-evident
//! audit log".
//!
//! Every relay writes its own chain (named after its node id), so that
//! relays never wait for each other to append. Entry `n` (from 1) of chain
//! `c` has `hash_n = SHA-256("herold/1 audit" || hash_{n-1} || c || n ||
//! at_ms || id || operator || action || target || outcome || detail)`, with
//! `hash_0` all zeros, integers as 8 bytes big-endian and every string
//! prefixed by its length (8 bytes big-endian). An entry that
//! is edited, deleted or moved breaks the chain at that entry; rewriting
//! every later hash too is caught by comparing the head with one recorded
//! earlier (`--expect-head`).

use sha2::{Digest, Sha256};

/// The hash before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

const DOMAIN: &[u8] = b"herold/1 audit";

/// What the chain covers of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    /// The chain (the writing relay's node id).
    pub chain: &'a str,
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When, unix milliseconds.
    pub at_ms: i64,
    /// The entry's unique id.
    pub id: &'a str,
    /// The operator.
    pub operator: &'a str,
    /// The API call.
    pub action: &'a str,
    /// What it acted on.
    pub target: &'a str,
    /// `ok` or the status code.
    pub outcome: &'a str,
    /// Counts and parameters.
    pub detail: &'a str,
}

/// The hash of an entry that follows the entry with hash `prev`.
pub fn entry_hash(prev: &[u8; 32], f: &Fields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev);
    h.update((f.chain.len() as u64).to_be_bytes());
    h.update(f.chain.as_bytes());
    h.update(f.seq.to_be_bytes());
    h.update(f.at_ms.to_be_bytes());
    for s in [f.id, f.operator, f.action, f.target, f.outcome, f.detail] {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    }
    h.finalize().into()
}

/// One listed entry: its fields and the hash the store recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<'a> {
    /// The fields (with `seq` the recorded position).
    pub fields: Fields<'a>,
    /// The recorded hash.
    pub hash: &'a [u8],
}

/// The end of a verified chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The first position listed (1 unless older entries are out of reach).
    pub first: u64,
    /// The last position.
    pub seq: u64,
    /// Its hash: record it to check later that nothing after it was
    /// rewritten.
    pub hash: [u8; 32],
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.seq)?;
        for b in self.hash {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Break {
    /// No entry has a place in the chain.
    #[error("the audit log holds no chained entry")]
    Empty,
    /// An entry's recorded hash is not 32 bytes.
    #[error("entry {seq}: its recorded hash is malformed")]
    Malformed {
        /// Position.
        seq: u64,
    },
    /// Positions missing between two listed entries: deleted.
    #[error("entries {from}..={to} are missing: deleted")]
    Missing {
        /// First missing position.
        from: u64,
        /// Last missing position.
        to: u64,
    },
    /// Two entries claim one position.
    #[error("entry {seq} appears twice")]
    Duplicate {
        /// Position.
        seq: u64,
    },
    /// The entry's content or order does not match its hash: edited, or
    /// moved.
    #[error("entry {seq} was changed or moved: its hash does not match the chain")]
    Altered {
        /// Position.
        seq: u64,
    },
    /// The chain does not reach the head recorded earlier, or reaches it
    /// with another hash: entries at or after it were rewritten or removed.
    #[error("the recorded head {expected} is not in the chain: entries were rewritten or removed")]
    HeadMismatch {
        /// The head given.
        expected: String,
    },
}

/// Checks a listing of one chain's entries in any order. The first entry is
/// checked against [`GENESIS`] when it is entry 1; a listing that starts
/// later (older entries past the store's reach) starts from the first
/// entry's recorded hash. `expect`: a head recorded earlier, `(seq, hash)`,
/// that must be in the chain with that hash.
pub fn verify(
    mut entries: Vec<Listed<'_>>,
    expect: Option<(u64, [u8; 32])>,
) -> Result<Head, Break> {
    entries.sort_by_key(|e| e.fields.seq);
    let first = entries.first().ok_or(Break::Empty)?.fields.seq;
    let mut prev: Option<(u64, [u8; 32])> = None;
    let mut expect_seen = false;
    for e in &entries {
        let seq = e.fields.seq;
        let hash: [u8; 32] = e.hash.try_into().map_err(|_| Break::Malformed { seq })?;
        let computed = match prev {
            Some((p, _)) if p == seq => return Err(Break::Duplicate { seq }),
            Some((p, _)) if p + 1 != seq => {
                return Err(Break::Missing {
                    from: p + 1,
                    to: seq - 1,
                });
            }
            Some((_, prev_hash)) => Some(entry_hash(&prev_hash, &e.fields)),
            None if seq == 1 => Some(entry_hash(&GENESIS, &e.fields)),
            None => None,
        };
        if computed.is_some_and(|c| c != hash) {
            return Err(Break::Altered { seq });
        }
        if let Some((s, h)) = expect
            && s == seq
        {
            if h != hash {
                return Err(head_mismatch(s, h));
            }
            expect_seen = true;
        }
        prev = Some((seq, hash));
    }
    let (seq, hash) = prev.ok_or(Break::Empty)?;
    if let Some((s, h)) = expect
        && !expect_seen
    {
        return Err(head_mismatch(s, h));
    }
    Ok(Head { first, seq, hash })
}

fn head_mismatch(seq: u64, hash: [u8; 32]) -> Break {
    Break::HeadMismatch {
        expected: Head {
            first: 0,
            seq,
            hash,
        }
        .to_string(),
    }
}

/// Parses a head as [`Head`] displays it: `<seq>:<64 hex digits>`.
pub fn parse_head(s: &str) -> Option<(u64, [u8; 32])> {
    let (seq, hex) = s.trim().split_once(':')?;
    let seq = seq.parse().ok()?;
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some((seq, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<(u64, String, [u8; 32])> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let detail = format!("entry {seq}");
                let h = entry_hash(&prev, &fields(seq, &detail));
                prev = h;
                (seq, detail, h)
            })
            .collect()
    }

    fn fields(seq: u64, detail: &str) -> Fields<'_> {
        Fields {
            chain: "relay-1",
            seq,
            at_ms: 1_000 + seq as i64,
            id: "id",
            operator: "alice",
            action: "DeleteAccount",
            target: "bob",
            outcome: "ok",
            detail,
        }
    }

    fn listed(c: &[(u64, String, [u8; 32])]) -> Vec<Listed<'_>> {
        c.iter()
            .map(|(seq, d, h)| Listed {
                fields: fields(*seq, d),
                hash: h,
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_in_any_order() {
        let c = chain(5);
        let mut l = listed(&c);
        l.reverse();
        let head = verify(l, Some((3, c[2].2))).unwrap();
        assert_eq!((head.first, head.seq, head.hash), (1, 5, c[4].2));
        assert_eq!(parse_head(&head.to_string()), Some((5, c[4].2)));
        // A listing that starts later trusts its first hash.
        assert_eq!(verify(listed(&c[2..]), None).unwrap().first, 3);
    }

    #[test]
    fn edits_deletions_moves_and_rewrites_are_found() {
        let c = chain(5);
        let mut edited = listed(&c);
        edited[2].fields.detail = "entry 3, edited";
        assert_eq!(verify(edited, None), Err(Break::Altered { seq: 3 }));
        let mut deleted = listed(&c);
        deleted.remove(1);
        assert_eq!(
            verify(deleted, None),
            Err(Break::Missing { from: 2, to: 2 })
        );
        let mut moved = listed(&c);
        moved[1].fields.at_ms = moved[3].fields.at_ms;
        assert_eq!(verify(moved, None), Err(Break::Altered { seq: 2 }));
        let mut other_chain = listed(&c);
        other_chain[2].fields.chain = "relay-2";
        assert_eq!(verify(other_chain, None), Err(Break::Altered { seq: 3 }));
        let mut swapped = listed(&c);
        swapped[1].fields.seq = 3;
        swapped[2].fields.seq = 2;
        assert_eq!(verify(swapped, None), Err(Break::Altered { seq: 2 }));
        let mut twice = listed(&c);
        twice.push(twice[4].clone());
        assert_eq!(verify(twice, None), Err(Break::Duplicate { seq: 5 }));
        // The last two entries removed: only a recorded head tells.
        let truncated = listed(&c[..3]);
        assert!(verify(truncated.clone(), None).is_ok());
        assert!(matches!(
            verify(truncated, Some((5, c[4].2))),
            Err(Break::HeadMismatch { .. })
        ));
        // Everything from entry 4 on rewritten, hashes included.
        let mut rewritten = c[..3].to_vec();
        let mut prev = c[2].2;
        for seq in 4..=5 {
            let d = format!("forged {seq}");
            let h = entry_hash(&prev, &fields(seq, &d));
            prev = h;
            rewritten.push((seq, d, h));
        }
        assert!(verify(listed(&rewritten), None).is_ok());
        assert!(matches!(
            verify(listed(&rewritten), Some((4, c[3].2))),
            Err(Break::HeadMismatch { .. })
        ));
        assert_eq!(verify(Vec::new(), None), Err(Break::Empty));
        let bad = [0u8; 3];
        let l = vec![Listed {
            fields: fields(1, "x"),
            hash: &bad,
        }];
        assert_eq!(verify(l, None), Err(Break::Malformed { seq: 1 }));
        assert_eq!(parse_head("5:zz"), None);
    }
}
