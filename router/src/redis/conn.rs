//! Connections to the three Redis topologies behind one type, and a shared
//! command connection that reconnects (re-asking the sentinels where the
//! master is) after the link breaks.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use super::Topology;

/// Builds connections to the configured topology.
pub(crate) enum Connector {
    Single(redis::Client),
    /// A tokio mutex: resolving the master is async and takes `&mut`.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// The client for the shared connection, and the seed nodes to build
    /// clients with other reply timeouts (the blocking inbox reader).
    Cluster(ClusterClient, Vec<String>, Duration),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Connector::Single",
            Self::Sentinel(_) => "Connector::Sentinel",
            Self::Cluster(..) => "Connector::Cluster",
        })
    }
}

impl Connector {
    pub fn new(topology: &Topology, response_timeout: Duration) -> RedisResult<Self> {
        Ok(match topology {
            Topology::Single(url) => Self::Single(redis::Client::open(url.as_str())?),
            Topology::Sentinel { sentinels, master } => {
                Self::Sentinel(tokio::sync::Mutex::new(SentinelClient::build(
                    sentinels.iter().map(String::as_str).collect(),
                    master.clone(),
                    None,
                    SentinelServerType::Master,
                )?))
            }
            Topology::Cluster(nodes) => Self::Cluster(
                cluster_client(nodes, response_timeout)?,
                nodes.clone(),
                response_timeout,
            ),
        })
    }

    /// A new connection; `response_timeout` bounds every reply (a blocking
    /// read needs more than its block time).
    pub async fn connect(&self, response_timeout: Duration) -> RedisResult<Conn> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        match self {
            Self::Single(c) => Ok(Conn::Plain(
                c.get_multiplexed_async_connection_with_config(&cfg).await?,
            )),
            Self::Sentinel(s) => {
                let mut s = s.lock().await;
                Ok(Conn::Plain(s.get_async_connection_with_config(&cfg).await?))
            }
            Self::Cluster(c, _, t) if *t == response_timeout => {
                Ok(Conn::Cluster(c.get_async_connection().await?))
            }
            Self::Cluster(_, nodes, _) => Ok(Conn::Cluster(
                cluster_client(nodes, response_timeout)?
                    .get_async_connection()
                    .await?,
            )),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(..))
    }
}

fn cluster_client(nodes: &[String], response_timeout: Duration) -> RedisResult<ClusterClient> {
    ClusterClient::builder(nodes.iter().map(String::as_str))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response_timeout)
        .retries(2)
        .build()
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed connect, calls fail at once for this long instead of
/// queueing behind the next attempt: with Redis unreachable, a thousand
/// callers must not wait a connect timeout each, one after the other.
pub(crate) const COOL_DOWN: Duration = Duration::from_millis(500);

/// A connection to a single Redis (direct or via Sentinel) or to a cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Plain(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Plain(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// True when the error means the link (or the master behind it) is gone,
/// so the connection must be rebuilt rather than retried.
pub(crate) fn needs_reconnect(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_timeout()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

/// The shared command connection: cloned per call (it multiplexes), rebuilt
/// after a broken link.
#[derive(Debug)]
pub(crate) struct Shared {
    connector: Arc<Connector>,
    response_timeout: Duration,
    current: tokio::sync::Mutex<Option<(u64, Conn)>>,
    next_generation: std::sync::atomic::AtomicU64,
    /// Until when calls fail without trying (see [`COOL_DOWN`]).
    down_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Shared {
    pub fn new(connector: Arc<Connector>, response_timeout: Duration) -> Self {
        Self {
            connector,
            response_timeout,
            current: tokio::sync::Mutex::new(None),
            next_generation: std::sync::atomic::AtomicU64::new(1),
            down_until: std::sync::Mutex::new(None),
        }
    }

    /// Whether a connect failed less than [`COOL_DOWN`] ago.
    fn cooling_down(&self) -> bool {
        let until = *self
            .down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        until.is_some_and(|u| tokio::time::Instant::now() < u)
    }

    /// The current connection and its generation, connecting if needed.
    pub async fn get(&self) -> RedisResult<(u64, Conn)> {
        let unreachable = || {
            RedisError::from((
                redis::ErrorKind::Io,
                "Redis is unreachable; the next attempt follows shortly",
            ))
        };
        if self.cooling_down() {
            return Err(unreachable());
        }
        let mut cur = self.current.lock().await;
        if let Some((g, c)) = &*cur {
            return Ok((*g, c.clone()));
        }
        // Another caller's attempt failed while this one waited.
        if self.cooling_down() {
            return Err(unreachable());
        }
        let c = match self.connector.connect(self.response_timeout).await {
            Ok(c) => c,
            Err(e) => {
                *self
                    .down_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(tokio::time::Instant::now() + COOL_DOWN);
                return Err(e);
            }
        };
        let g = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *cur = Some((g, c.clone()));
        Ok((g, c))
    }

    /// Forgets connection `generation` after `e` if the error calls for it.
    pub async fn failed(&self, generation: u64, e: &RedisError) {
        if !needs_reconnect(e) {
            return;
        }
        let mut cur = self.current.lock().await;
        if cur.as_ref().is_some_and(|(g, _)| *g == generation) {
            *cur = None;
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain(_) => "Conn::Plain",
            Self::Cluster(_) => "Conn::Cluster",
        })
    }
}
