//! Configuration of the CQL backend: contact points, keyspace, replication,
//! consistency.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use scylla::statement::{Consistency, SerialConsistency};

use crate::StoreError;

/// Keyspace replication, used when [`migrate`](super::CqlStore::migrate)
/// creates the keyspace (an existing keyspace is left as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy` with this replication factor: tests and single-DC
    /// development only.
    Simple(u32),
    /// `NetworkTopologyStrategy`, replication factor per datacenter:
    /// production (RF 3 in the city's data centre).
    NetworkTopology(Vec<(String, u32)>),
}

impl Default for Replication {
    fn default() -> Self {
        Replication::Simple(1)
    }
}

impl Replication {
    /// The CQL map literal for `CREATE KEYSPACE ... WITH replication = `.
    pub fn cql(&self) -> String {
        match self {
            Replication::Simple(rf) => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}")
            }
            Replication::NetworkTopology(dcs) => {
                let mut s = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, rf) in dcs {
                    s.push_str(&format!(", '{dc}': {rf}"));
                }
                s.push('}');
                s
            }
        }
    }
}

impl fmt::Display for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replication::Simple(rf) => write!(f, "simple:{rf}"),
            Replication::NetworkTopology(dcs) => {
                write!(f, "nts:")?;
                for (i, (dc, rf)) in dcs.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, "{dc}={rf}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Replication {
    type Err = StoreError;

    /// `simple:RF` or `nts:DC=RF[,DC=RF...]` (`SimpleStrategy:` and
    /// `NetworkTopologyStrategy:` are accepted as well).
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| {
            StoreError::InvalidConfig(format!(
                "replication {s:?}: {why} (want simple:RF or nts:DC=RF[,DC=RF...])"
            ))
        };
        let (class, rest) = s.split_once(':').ok_or_else(|| bad("no ':'"))?;
        let rf = |v: &str| -> Result<u32, StoreError> {
            match v.trim().parse::<u32>() {
                Ok(n) if (1..=10).contains(&n) => Ok(n),
                _ => Err(bad("replication factor must be 1..=10")),
            }
        };
        match class.trim().to_ascii_lowercase().as_str() {
            "simple" | "simplestrategy" => Ok(Replication::Simple(rf(rest)?)),
            "nts" | "networktopologystrategy" => {
                let mut dcs = Vec::new();
                for part in rest.split(',') {
                    let (dc, n) = part.split_once('=').ok_or_else(|| bad("no '=' in DC=RF"))?;
                    let dc = dc.trim();
                    if dc.is_empty()
                        || !dc
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return Err(bad("datacenter names are [A-Za-z0-9_-]+"));
                    }
                    dcs.push((dc.to_owned(), rf(n)?));
                }
                Ok(Replication::NetworkTopology(dcs))
            }
            _ => Err(bad("unknown strategy")),
        }
    }
}

/// Parses a consistency level name (`LOCAL_QUORUM`, `QUORUM`, `LOCAL_ONE`,
/// `ONE`, `TWO`, `THREE`, `ALL`, `EACH_QUORUM`), case-insensitive.
pub fn parse_consistency(s: &str) -> Result<Consistency, StoreError> {
    Ok(match s.trim().to_ascii_uppercase().as_str() {
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "QUORUM" => Consistency::Quorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "ALL" => Consistency::All,
        other => {
            return Err(StoreError::InvalidConfig(format!(
                "consistency {other:?}: want one of LOCAL_QUORUM, QUORUM, EACH_QUORUM, \
                 LOCAL_ONE, ONE, TWO, THREE, ALL"
            )));
        }
    })
}

/// Configuration of [`CqlStore`](super::CqlStore).
#[derive(Debug, Clone)]
pub struct CqlConfig {
    /// `host:port` of one or more nodes; the driver discovers the rest.
    pub contact_points: Vec<String>,
    /// Keyspace holding Herold's tables.
    pub keyspace: String,
    /// Replication used when the keyspace is created.
    pub replication: Replication,
    /// Consistency of reads and writes (and of the commit phase of LWTs).
    /// Default `LOCAL_QUORUM`: with RF 3 a read sees every acknowledged
    /// write while one node of three is down.
    pub consistency: Consistency,
    /// Consistency of the Paxos phase of lightweight transactions.
    pub serial_consistency: SerialConsistency,
    /// Apply pending migrations when connecting.
    pub migrate: bool,
    /// Timeout of one request.
    pub request_timeout: Duration,
}

impl Default for CqlConfig {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "herold".into(),
            replication: Replication::default(),
            consistency: Consistency::LocalQuorum,
            serial_consistency: SerialConsistency::LocalSerial,
            migrate: false,
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl CqlConfig {
    /// Checks the configuration; the error says what is wrong.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.contact_points.is_empty() {
            return Err(StoreError::InvalidConfig("no CQL contact point".into()));
        }
        for cp in &self.contact_points {
            if cp.trim().is_empty() || cp.contains(char::is_whitespace) {
                return Err(StoreError::InvalidConfig(format!(
                    "bad CQL contact point {cp:?} (want host:port)"
                )));
            }
        }
        validate_keyspace(&self.keyspace)?;
        if self.request_timeout.is_zero() {
            return Err(StoreError::InvalidConfig(
                "CQL request timeout must be > 0".into(),
            ));
        }
        Ok(())
    }
}

/// A keyspace name: a letter, then letters, digits or `_`, at most 48.
pub fn validate_keyspace(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidConfig(format!(
            "keyspace {name:?}: want a letter then [A-Za-z0-9_], at most 48 characters"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replication_parses() {
        assert_eq!(
            "simple:1".parse::<Replication>().unwrap(),
            Replication::Simple(1)
        );
        let nts: Replication = "nts:dc1=3,dc-2=2".parse().unwrap();
        assert_eq!(
            nts,
            Replication::NetworkTopology(vec![("dc1".into(), 3), ("dc-2".into(), 2)])
        );
        assert_eq!(nts.to_string(), "nts:dc1=3,dc-2=2");
        assert!(nts.cql().contains("'dc1': 3"));
        for bad in [
            "",
            "simple",
            "simple:0",
            "simple:x",
            "nts:dc1",
            "nts:d c=3",
            "x:1",
        ] {
            assert!(bad.parse::<Replication>().is_err(), "{bad}");
        }
    }

    #[test]
    fn consistency_and_keyspace() {
        assert_eq!(
            parse_consistency("local_quorum").unwrap(),
            Consistency::LocalQuorum
        );
        assert!(parse_consistency("most").is_err());
        assert!(validate_keyspace("herold_test1").is_ok());
        for bad in ["", "1abc", "a-b", "a;drop"] {
            assert!(validate_keyspace(bad).is_err(), "{bad}");
        }
        assert!(CqlConfig::default().validate().is_ok());
        let none = CqlConfig {
            contact_points: vec![],
            ..CqlConfig::default()
        };
        assert!(none.validate().is_err());
    }
}

impl CqlConfig {
    /// What in this configuration lets the loss of one node lose writes
    /// that were acknowledged: fewer than 3 copies of every row in some
    /// datacenter, or a consistency that acknowledges a write one node
    /// holds. Empty for production settings (`nts:<dc>=3`, `LOCAL_QUORUM`).
    pub fn weak_durability(&self) -> Vec<String> {
        let mut weak = Vec::new();
        let fewest = match &self.replication {
            Replication::Simple(rf) => *rf,
            Replication::NetworkTopology(dcs) => dcs.iter().map(|(_, rf)| *rf).min().unwrap_or(0),
        };
        if fewest < 3 {
            weak.push(format!(
                "replication {} keeps fewer than 3 copies of every row",
                self.replication
            ));
        }
        if matches!(
            self.consistency,
            Consistency::One | Consistency::LocalOne | Consistency::Any
        ) {
            weak.push(format!(
                "consistency {:?} acknowledges a write that one node holds",
                self.consistency
            ));
        }
        weak
    }
}

#[cfg(test)]
mod durability_tests {
    use super::*;

    #[test]
    fn weak_durability_names_each_weak_choice() {
        let mut c = CqlConfig {
            replication: "nts:muc1=3,muc2=3".parse().unwrap_or_default(),
            consistency: Consistency::LocalQuorum,
            ..CqlConfig::default()
        };
        assert!(c.weak_durability().is_empty(), "{:?}", c.weak_durability());
        c.replication = "nts:muc1=3,muc2=2".parse().unwrap_or_default();
        c.consistency = Consistency::LocalOne;
        let weak = c.weak_durability();
        assert_eq!(weak.len(), 2, "{weak:?}");
        assert!(weak[0].contains("nts:muc1=3,muc2=2"), "{weak:?}");
        assert!(weak[1].contains("LocalOne"), "{weak:?}");
        c.replication = Replication::Simple(1);
        c.consistency = Consistency::Quorum;
        assert_eq!(c.weak_durability().len(), 1);
    }
}
