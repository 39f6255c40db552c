//! Where Redis is and how the router uses it.

use super::*;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One Redis, e.g. `redis://127.0.0.1:6379`.
    Single(String),
    /// Redis behind Sentinel: the sentinels' URLs and the master's name.
    Sentinel {
        /// Sentinel URLs, e.g. `redis://127.0.0.1:26379`.
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
    },
    /// Redis Cluster: some of its nodes' URLs (the rest are discovered).
    Cluster(Vec<String>),
}

impl Topology {
    /// Parses `redis://h:p`, `sentinel://name@h:p,h:p` or
    /// `cluster://h:p,h:p,...` (the form of `--redis`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let hosts = |rest: &str| -> Result<Vec<String>, String> {
            let v: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{h}"))
                .collect();
            if v.is_empty() {
                Err(format!("{s:?} names no host:port"))
            } else {
                Ok(v)
            }
        };
        if let Some(rest) = s.strip_prefix("sentinel://") {
            let Some((master, rest)) = rest.split_once('@') else {
                return Err(format!(
                    "{s:?}: a sentinel address is sentinel://<master-name>@host:port[,host:port...]"
                ));
            };
            if master.is_empty() {
                return Err(format!("{s:?}: the master name is empty"));
            }
            return Ok(Self::Sentinel {
                sentinels: hosts(rest)?,
                master: master.to_owned(),
            });
        }
        if let Some(rest) = s.strip_prefix("cluster://") {
            return Ok(Self::Cluster(hosts(rest)?));
        }
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            return Ok(Self::Single(s.to_owned()));
        }
        Err(format!(
            "{s:?} is not a Redis address: use redis://host:port, \
             sentinel://<master>@host:port,... or cluster://host:port,..."
        ))
    }
}

/// Configuration of the Redis router.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where Redis is.
    pub topology: Topology,
    /// Prefix of every key, so several clusters can share one Redis.
    pub prefix: String,
    /// How long a node's devices count after its last lease renewal.
    pub lease: Duration,
    /// Cap of a node inbox in entries: a node that stalls longer is told it
    /// lagged rather than making Redis grow without bound.
    pub inbox_max_len: u64,
    /// How long to wait for any one reply.
    pub response_timeout: Duration,
    /// Capacity of the in-process queue between a node's stream reader and
    /// the relay.
    pub local_queue: usize,
}

impl RedisConfig {
    /// Defaults for `topology`: prefix `herold`, 5 s lease, 100,000-entry
    /// inbox cap, 2 s reply timeout.
    pub fn new(topology: Topology) -> Self {
        Self {
            topology,
            prefix: "herold".into(),
            lease: Duration::from_secs(5),
            inbox_max_len: 100_000,
            response_timeout: Duration::from_secs(2),
            local_queue: 8192,
        }
    }
}
