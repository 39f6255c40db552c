//! The relay configuration the benchmarks measure.

use std::path::Path;

use herold_relay::Config;

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
