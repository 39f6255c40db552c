//! Slices: several load generators run one scenario together, each with
//! its own share of the population, and their reports merge into one
//! verdict.
//!
//! Every slice builds the same world (ids from the shared run id) and runs
//! the same schedule (the scenario's seed). Slice `k` of `n` connects the
//! devices of its share of the accounts (by a hash of their index) and
//! sends the scheduled messages whose sender is one of them; message numbers are
//! the stream and the position in it, so they are the same in every
//! slice. Each slice's report carries what it accepted and what its
//! devices received; [`merge`] checks them together: nothing lost,
//! duplicated, reordered or misdelivered across the whole population.

use anyhow::{Context, ensure};
use serde::{Deserialize, Serialize};

use crate::check::{Received, verify};
use crate::report::Verification;
use crate::scenario::Scenario;
use crate::world::World;

/// Slice `index` (from 1) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// Which one, from 1.
    pub index: usize,
    /// Of how many.
    pub count: usize,
}

impl Default for Slice {
    fn default() -> Self {
        Self::WHOLE
    }
}

impl Slice {
    /// The whole population: one load generator.
    pub const WHOLE: Slice = Slice { index: 1, count: 1 };

    /// `k/n`, with 1 ≤ k ≤ n.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("a slice is k/n, like 2/5, not {s:?}"))?;
        let k: usize = k
            .trim()
            .parse()
            .map_err(|_| format!("the slice's k in {s:?} is not a number"))?;
        let n: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("the slice's n in {s:?} is not a number"))?;
        if n == 0 || k == 0 || k > n {
            return Err(format!("slice {s:?}: k must be between 1 and n"));
        }
        Ok(Self { index: k, count: n })
    }

    /// Whether this slice runs the account with this index. Accounts are
    /// spread by a hash of their index, not its remainder: conversations
    /// take accounts round robin too, and a remainder would put all of a
    /// conversation's members into one slice.
    pub fn owns_account(&self, account: usize) -> bool {
        let h = (account as u64 ^ 0x5851_f42d_4c95_7f2d).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 32) % self.count as u64 == (self.index - 1) as u64
    }

    /// Whether this is the whole population.
    pub fn is_whole(&self) -> bool {
        self.count == 1
    }
}

/// What a slice hands to the merge.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SliceData {
    /// Which slice.
    pub slice: Slice,
    /// The run every slice of it shares.
    pub run_id: u32,
    /// (message, conversation, seq) of this slice's accepted messages.
    pub accepted: Vec<(u64, usize, u64)>,
    /// This slice's devices, each with what it received.
    pub received: Vec<(usize, Received)>,
}

/// This machine's time in Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The id prefix of a run.
pub(crate) fn prefix(run_id: u32) -> String {
    format!("lt{run_id:08x}")
}

/// The verification of a run from all its slices (`scenario` as they ran
/// it): every slice exactly once, every device in exactly one.
pub fn merge(scenario: &Scenario, slices: &[SliceData]) -> anyhow::Result<Verification> {
    let first = slices.first().context("no slices to merge")?;
    let count = first.slice.count;
    let mut present = vec![false; count];
    for s in slices {
        ensure!(
            s.run_id == first.run_id,
            "slices of different runs: {:08x} and {:08x}",
            first.run_id,
            s.run_id
        );
        ensure!(
            s.slice.count == count,
            "slices of {} and of {count}",
            s.slice.count
        );
        let i = s.slice.index - 1;
        ensure!(i < count, "slice {}/{count} is out of range", s.slice.index);
        ensure!(!present[i], "slice {}/{count} twice", s.slice.index);
        present[i] = true;
    }
    if let Some(missing) = present.iter().position(|p| !p) {
        anyhow::bail!("slice {}/{count} is missing", missing + 1);
    }
    let world = World::build(scenario, &prefix(first.run_id))?;
    let mut received: Vec<Option<Received>> = (0..world.devices.len()).map(|_| None).collect();
    let mut accepted = Vec::new();
    for s in slices {
        accepted.extend_from_slice(&s.accepted);
        for (d, r) in &s.received {
            let slot = received.get_mut(*d).with_context(|| {
                format!(
                    "slice {}/{count} names device {d}, the scenario has {}",
                    s.slice.index,
                    world.devices.len()
                )
            })?;
            ensure!(slot.is_none(), "device {d} is in two slices");
            *slot = Some(r.clone());
        }
    }
    let received: Vec<Received> = received
        .into_iter()
        .enumerate()
        .map(|(d, r)| r.with_context(|| format!("device {d} is in no slice")))
        .collect::<anyhow::Result<_>>()?;
    Ok(verify(&world, &accepted, &received))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_parse_with_clear_errors() {
        assert_eq!(Slice::parse("2/5"), Ok(Slice { index: 2, count: 5 }));
        assert!(Slice::parse("0/5").unwrap_err().contains("between 1 and n"));
        assert!(Slice::parse("6/5").unwrap_err().contains("between 1 and n"));
        assert!(Slice::parse("2").unwrap_err().contains("k/n"));
        assert!(Slice::parse("a/5").unwrap_err().contains("not a number"));
    }

    #[test]
    fn slices_share_the_accounts_and_mix_within_conversations() {
        // Accounts 0, 6, 12, ... (a conversation's members when accounts
        // are dealt round robin to 6) fall into both of 2 slices.
        let half = Slice { index: 1, count: 2 };
        let members: Vec<bool> = (0..20).map(|k| half.owns_account(6 * k)).collect();
        assert!(
            members.contains(&true) && members.contains(&false),
            "{members:?}"
        );
        let owned = (0..10_000).filter(|&a| half.owns_account(a)).count();
        assert!((4_500..5_500).contains(&owned), "{owned} of 10,000");
    }

    #[test]
    fn every_account_belongs_to_exactly_one_slice() {
        for n in 1..6 {
            for account in 0..50 {
                let owners = (1..=n)
                    .filter(|&k| Slice { index: k, count: n }.owns_account(account))
                    .count();
                assert_eq!(owners, 1, "account {account} of {n} slices");
            }
        }
    }
}
