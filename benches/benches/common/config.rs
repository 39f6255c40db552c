//! The relay configuration the benchmarks measure, and their CQL store.

#![allow(dead_code)] // each benchmark uses its own part of this

use std::path::Path;

use herold_relay::Config;
use herold_store::cql::{CqlConfig, Replication, parse_consistency};

/// A `--dev` relay configuration for measuring: the submit rate limits
/// (meant for a runaway script, not for a benchmark that sends as fast as
/// it can) and the per-address limits (every simulated device comes from
/// loopback) lifted to their maximum.
pub fn bench_config(dir: &Path) -> Config {
    let mut c = Config::dev(dir);
    c.limits.submit_rate = 100_000;
    c.limits.conversation_submit_rate = 1_000_000;
    c.limits.max_unauthenticated_per_address = 10_000_000;
    c.limits.handshake_rate_per_address = 1_000_000;
    c.limits.auth_rate_per_account = 100_000;
    c
}

/// The CQL store the benchmarks measure when `HEROLD_TEST_CQL` names a
/// contact point (`scripts/cassandra.sh start`): keyspace
/// `HEROLD_TEST_CQL_KEYSPACE` (default `herold_test`), one replica,
/// `LOCAL_ONE`, migrated.
pub fn test_cql() -> Option<CqlConfig> {
    let cp = std::env::var("HEROLD_TEST_CQL").ok()?;
    if cp.trim().is_empty() {
        return None;
    }
    Some(CqlConfig {
        contact_points: vec![cp],
        keyspace: std::env::var("HEROLD_TEST_CQL_KEYSPACE")
            .unwrap_or_else(|_| "herold_test".into()),
        replication: Replication::Simple(1),
        consistency: parse_consistency("LOCAL_ONE").expect("a known consistency"),
        migrate: true,
        ..CqlConfig::default()
    })
}
