//! The store's and the router's settings from the flags, and the node id's
//! default.

use std::net::SocketAddr;
use std::time::Duration;

use super::ConfigError;

/// The Redis router configuration; `None` without an address.
pub(super) fn redis_config(
    address: Option<String>,
    prefix: Option<String>,
    lease_ms: Option<u64>,
) -> Result<Option<herold_router::redis::RedisConfig>, ConfigError> {
    use herold_router::redis::{RedisConfig, Topology};
    let Some(address) = address else {
        if prefix.is_some() || lease_ms.is_some() {
            return Err(ConfigError::Invalid {
                name: "redis",
                reason: "other --redis-* settings are given but no Redis address".into(),
            });
        }
        return Ok(None);
    };
    let topology = Topology::parse(&address).map_err(|reason| ConfigError::Invalid {
        name: "redis",
        reason,
    })?;
    let mut cfg = RedisConfig::new(topology);
    if let Some(p) = prefix {
        if p.is_empty()
            || p.len() > 64
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ConfigError::Invalid {
                name: "redis-prefix",
                reason: format!("{p:?} must be 1-64 ASCII letters, digits, - _ ."),
            });
        }
        cfg.prefix = p;
    }
    if let Some(ms) = lease_ms {
        if !(500..=60_000).contains(&ms) {
            return Err(ConfigError::Invalid {
                name: "redis-lease-ms",
                reason: format!("{ms} is outside 500..=60000"),
            });
        }
        cfg.lease = Duration::from_millis(ms);
    }
    Ok(Some(cfg))
}

/// A node id unique per host and port: `<hostname>-<port>`.
pub(super) fn default_node_id(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(50)
        .collect();
    let host = if host.is_empty() {
        "relay".to_owned()
    } else {
        host
    };
    format!("{host}-{}", listen.port())
}

/// The CQL flags as given (flag, environment or file).
#[derive(Debug, Default)]
pub(super) struct CqlFlags {
    pub contact_points: Option<String>,
    pub keyspace: Option<String>,
    pub consistency: Option<String>,
    pub replication: Option<String>,
    /// `--cql-accept-weak-durability`.
    pub accept_weak: bool,
}

/// The CQL store configuration from the flags (`None` without contact
/// points), and what in it can lose acknowledged writes with one node.
/// Outside `dev` the replication must be given, and a weak choice needs
/// `accept_weak`. The relay migrates at start.
pub(super) fn cql_config(
    flags: CqlFlags,
    dev: bool,
) -> Result<(Option<herold_store::cql::CqlConfig>, Vec<String>), ConfigError> {
    use herold_store::cql::{CqlConfig, parse_consistency};
    let invalid = |name: &'static str| {
        move |e: herold_store::StoreError| ConfigError::Invalid {
            name,
            reason: e.to_string(),
        }
    };
    let CqlFlags {
        contact_points,
        keyspace,
        consistency,
        replication,
        accept_weak,
    } = flags;
    let Some(points) = contact_points.filter(|p| !p.trim().is_empty()) else {
        if keyspace.is_some() || consistency.is_some() || replication.is_some() || accept_weak {
            return Err(ConfigError::Invalid {
                name: "cql-contact-points",
                reason: "other --cql-* settings are given but no contact points".into(),
            });
        }
        return Ok((None, Vec::new()));
    };
    if replication.is_none() && !dev {
        return Err(ConfigError::Invalid {
            name: "cql-replication",
            reason: "is required with the CQL store outside --dev: it decides how many copies \
                     of every message the cluster keeps. Production: nts:<datacenter>=3, which \
                     survives the loss of one node of three"
                .into(),
        });
    }
    let defaults = CqlConfig::default();
    let config = CqlConfig {
        contact_points: points.split(',').map(|p| p.trim().to_owned()).collect(),
        keyspace: keyspace.unwrap_or(defaults.keyspace.clone()),
        replication: match replication {
            Some(r) => r.parse().map_err(invalid("cql-replication"))?,
            None => defaults.replication.clone(),
        },
        consistency: match consistency {
            Some(c) => parse_consistency(&c).map_err(invalid("cql-consistency"))?,
            None => defaults.consistency,
        },
        migrate: true,
        ..defaults
    };
    config
        .validate()
        .map_err(invalid("cql-contact-points/cql-keyspace"))?;
    let weak = config.weak_durability();
    if !dev && !accept_weak && !weak.is_empty() {
        return Err(ConfigError::Invalid {
            name: "cql-accept-weak-durability",
            reason: format!(
                "{}; set cql-replication to nts:<datacenter>=3 and cql-consistency to \
                 LOCAL_QUORUM, or pass --cql-accept-weak-durability to run so anyway",
                weak.join("; ")
            ),
        });
    }
    Ok((Some(config), if dev { Vec::new() } else { weak }))
}
