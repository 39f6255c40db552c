//! The relay configuration the benchmarks measure.

use std::path::Path;

use herold_relay::Config;

/// A `--dev` relay configuration for measuring: the submit rate limits
/// (meant for a runaway script, not for a benchmark that sends as fast as
/// it can) lifted to their maximum.
pub fn bench_config(dir: &Path) -> Config {
    let mut c = Config::dev(dir);
    c.limits.submit_rate = 100_000;
    c.limits.conversation_submit_rate = 1_000_000;
    c
}
