//! Scenario files: who is there, which conversations, how much traffic and
//! when. TOML, kept in `loadtest/scenarios/`.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A load scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in report file names.
    pub name: String,
    /// What the scenario models.
    #[serde(default)]
    pub description: String,
    /// Length of the traffic schedule, seconds.
    pub duration_secs: f64,
    /// Population scale: accounts and conversation counts are multiplied by it.
    #[serde(default = "one")]
    pub scale: f64,
    /// Rate scale: every traffic rate is multiplied by it (10 = ten times the
    /// real peak).
    #[serde(default = "one")]
    pub rate_scale: f64,
    /// After the schedule, how long to wait for outstanding deliveries.
    #[serde(default = "default_settle")]
    pub settle_secs: f64,
    /// Random seed: the same seed gives the same schedule.
    #[serde(default)]
    pub seed: u64,
    /// Groups of accounts.
    #[serde(rename = "cohort")]
    pub cohorts: Vec<Cohort>,
    /// Classes of conversations.
    #[serde(rename = "conversation")]
    pub conversations: Vec<ConversationClass>,
    /// Message streams.
    #[serde(rename = "traffic")]
    pub traffic: Vec<Traffic>,
    /// Rate multipliers over time (bursts); outside every phase the
    /// multiplier is 1.
    #[serde(default, rename = "phase")]
    pub phases: Vec<Phase>,
}

fn one() -> f64 {
    1.0
}

fn default_settle() -> f64 {
    30.0
}

/// A group of similar accounts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cohort {
    /// Name, referenced by conversations.
    pub name: String,
    /// Accounts at scale 1.
    pub accounts: u32,
    /// Devices each account connects.
    #[serde(default = "one_u32")]
    pub devices_per_account: u32,
}

fn one_u32() -> u32 {
    1
}

/// Kind of a conversation class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Everyone posts.
    Group,
    /// Publishers post, members read.
    Channel,
    /// Two accounts.
    Direct,
}

/// A class of conversations (e.g. the 618 polling-station groups).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationClass {
    /// Name, referenced by traffic.
    pub name: String,
    /// Kind.
    pub kind: Kind,
    /// Conversations at scale 1 (scaled like accounts, at least 1).
    pub count: u32,
    /// Cohorts whose accounts are split evenly across the conversations
    /// (each account in exactly one). For `direct`, the first member of each
    /// conversation.
    #[serde(default)]
    pub split: Vec<String>,
    /// Cohorts whose accounts are members of every conversation of the
    /// class. For `direct`, the second member (round robin).
    #[serde(default)]
    pub everyone: Vec<String>,
    /// For channels: cohorts whose members may post. They must also be
    /// members through `split` or `everyone`.
    #[serde(default)]
    pub publishers: Vec<String>,
}

/// A stream of messages into a class of conversations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// What this stream is (report label).
    pub name: String,
    /// The conversation class.
    pub conversation: String,
    /// Messages per second into the whole class at rate scale 1 and
    /// population scale 1 (scaled with the population).
    pub rate: f64,
    /// Payload (ciphertext) size in bytes.
    pub bytes: usize,
    /// With it, each message first uploads an attachment of this many
    /// bytes on its own stream (as a photo is sent), and carries its
    /// reference; every recipient device downloads it. 0: none.
    #[serde(default)]
    pub attachment_bytes: u64,
}

/// A burst: the rates are multiplied during `[from_secs, to_secs)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Label.
    pub name: String,
    /// Start, seconds from the beginning.
    pub from_secs: f64,
    /// End, seconds from the beginning.
    pub to_secs: f64,
    /// Rate multiplier.
    pub multiplier: f64,
}

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A value is out of range or a reference is unknown.
    #[error("scenario {scenario:?}: {reason}")]
    Invalid {
        /// The scenario.
        scenario: String,
        /// Why.
        reason: String,
    },
}

/// Bytes every payload needs for the tester's header.
pub const HEADER_BYTES: usize = 24;
/// Bytes a payload needs to refer to an attachment: the header, a flag
/// and the attachment's id.
pub const ATTACHMENT_REF_BYTES: usize = HEADER_BYTES + 1 + 16;
/// The relay's default attachment limit.
pub const MAX_ATTACHMENT_BYTES: u64 = 100 * 1024 * 1024;

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let s: Scenario = toml::from_str(&text).map_err(|e| ScenarioError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Checks ranges and references.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |reason: String| ScenarioError::Invalid {
            scenario: self.name.clone(),
            reason,
        };
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(bad(format!("{name} must be a positive number, not {v}")))
            }
        };
        positive("duration_secs", self.duration_secs)?;
        positive("scale", self.scale)?;
        positive("rate_scale", self.rate_scale)?;
        if !(self.settle_secs.is_finite() && self.settle_secs >= 0.0) {
            return Err(bad("settle_secs must be 0 or more".into()));
        }
        let mut cohorts = HashSet::new();
        for c in &self.cohorts {
            if !cohorts.insert(c.name.as_str()) {
                return Err(bad(format!("cohort {:?} is defined twice", c.name)));
            }
            if c.accounts == 0 || c.devices_per_account == 0 || c.devices_per_account > 10 {
                return Err(bad(format!(
                    "cohort {:?} needs at least 1 account and 1 to 10 devices per account",
                    c.name
                )));
            }
        }
        let mut classes = HashSet::new();
        for k in &self.conversations {
            if !classes.insert(k.name.as_str()) {
                return Err(bad(format!(
                    "conversation class {:?} is defined twice",
                    k.name
                )));
            }
            for c in k.split.iter().chain(&k.everyone).chain(&k.publishers) {
                if !cohorts.contains(c.as_str()) {
                    return Err(bad(format!(
                        "conversation class {:?} names unknown cohort {c:?}",
                        k.name
                    )));
                }
            }
            if k.count == 0 {
                return Err(bad(format!("conversation class {:?} has count 0", k.name)));
            }
            if k.split.is_empty() && k.everyone.is_empty() {
                return Err(bad(format!(
                    "conversation class {:?} has no members",
                    k.name
                )));
            }
            match k.kind {
                Kind::Direct if k.split.len() != 1 || k.everyone.len() != 1 => {
                    return Err(bad(format!(
                        "direct class {:?} needs exactly one `split` and one `everyone` cohort",
                        k.name
                    )));
                }
                Kind::Channel if k.publishers.is_empty() => {
                    return Err(bad(format!("channel class {:?} has no publishers", k.name)));
                }
                _ => {}
            }
            for p in &k.publishers {
                if !k.split.contains(p) && !k.everyone.contains(p) {
                    return Err(bad(format!(
                        "publishers {p:?} of {:?} are not members of it",
                        k.name
                    )));
                }
            }
        }
        for t in &self.traffic {
            if !classes.contains(t.conversation.as_str()) {
                return Err(bad(format!(
                    "traffic {:?} names unknown conversation class {:?}",
                    t.name, t.conversation
                )));
            }
            if !(t.rate.is_finite() && t.rate >= 0.0) {
                return Err(bad(format!("traffic {:?} has a negative rate", t.name)));
            }
            if t.bytes < HEADER_BYTES || t.bytes > 256 * 1024 {
                return Err(bad(format!(
                    "traffic {:?}: bytes must be between {HEADER_BYTES} and 262144",
                    t.name
                )));
            }
            if t.attachment_bytes > MAX_ATTACHMENT_BYTES
                || (t.attachment_bytes > 0 && t.bytes < ATTACHMENT_REF_BYTES)
            {
                return Err(bad(format!(
                    "traffic {:?}: attachment_bytes must be at most {MAX_ATTACHMENT_BYTES}, \
                     and a message with one at least {ATTACHMENT_REF_BYTES} bytes",
                    t.name
                )));
            }
        }
        for p in &self.phases {
            if !(p.from_secs >= 0.0 && p.to_secs > p.from_secs && p.multiplier >= 0.0) {
                return Err(bad(format!(
                    "phase {:?} has a bad range or multiplier",
                    p.name
                )));
            }
        }
        Ok(())
    }

    /// Accounts of a cohort at this scale (at least 1).
    pub fn scaled_accounts(&self, c: &Cohort) -> usize {
        ((f64::from(c.accounts) * self.scale).round() as usize).max(1)
    }

    /// Conversations of a class at this scale (at least 1).
    pub fn scaled_count(&self, k: &ConversationClass) -> usize {
        ((f64::from(k.count) * self.scale).round() as usize).max(1)
    }

    /// The rate multiplier at `t` seconds.
    pub fn multiplier_at(&self, t: f64) -> f64 {
        self.phases
            .iter()
            .find(|p| t >= p.from_secs && t < p.to_secs)
            .map_or(1.0, |p| p.multiplier)
    }

    /// Messages per second of a traffic stream at `t` seconds.
    pub fn rate_at(&self, t: &Traffic, secs: f64) -> f64 {
        t.rate * self.scale * self.rate_scale * self.multiplier_at(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
        assert!(n >= 4, "election-sunday, field-service, national, soak");
    }

    #[test]
    fn bad_references_are_named() {
        let text = r#"
            name = "x"
            duration_secs = 1
            [[cohort]]
            name = "a"
            accounts = 1
            [[conversation]]
            name = "g"
            kind = "group"
            count = 1
            everyone = ["b"]
            [[traffic]]
            name = "t"
            conversation = "g"
            rate = 1
            bytes = 100
        "#;
        let s: Scenario = toml::from_str(text).unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("unknown cohort \"b\""), "{e}");
    }
}
