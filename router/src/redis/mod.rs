//! The Redis backend of the [`Router`]: a single Redis, Redis with Sentinel,
//! or Redis Cluster.
//!
//! # Keys (`P` is the configured prefix, `herold` by default)
//! - `P:dev:{<bucket>}:<device>` → the node id the device is connected to
//!   (64 buckets, so a cluster `MGET` is split into at most 64 parts). Written with
//!   one `MSET` for any number of devices; removed with a compare-and-delete
//!   script, so a late "left" from an old node never removes the device's
//!   newer presence.
//! - `P:{<node>}:lease` → the node's incarnation, with a `PX` lease renewed
//!   every third of the lease. A dead node's devices stop counting when its
//!   lease expires, without touching their keys: `locate` keeps only devices
//!   whose node holds a lease.
//! - `P:{<node>}:inbox` (a stream) and `P:{<node>}:n` (its counter): the
//!   node inbox. One publish script checks the lease, numbers the entry and
//!   appends it, in one command; the hash tag keeps the three keys in one
//!   cluster slot. The reader checks the numbers: a gap (entries trimmed
//!   while the node stalled, lost in a failover or a restart) becomes
//!   [`InboxEvent::Lagged`], so devices resync from the store instead of
//!   silently missing messages.
//! - `P:nodes` → the set of registered nodes, for broadcasts.
//! - `P:int:{<conversation>}` → the set of nodes interested in a
//!   conversation (holding devices of its members). One `SADD`/`SREM` per
//!   conversation when a node's first device of it comes or its last goes;
//!   [`Router::interested`] is one `SMEMBERS`, filtered by the nodes'
//!   leases, so a dead node stops counting with its lease (and is removed
//!   from the set when found dead).
//!
//! Ordering never depends on Redis: the store numbers messages.
//!
//! Metrics: the reader counts every entry it reads ([`INBOX_ENTRIES`]) and
//! observes its age ([`INBOX_LAG_SECONDS`], from the time in the stream id
//! Redis gave it to this relay's clock); every [`InboxEvent::Lagged`] the
//! reader or the lease keeper sends counts in [`INBOX_LAGGED`].
//! `docs/routing.md` has the commands per operation and the scaling notes.

mod config;
mod conn;
mod inbox;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::join_all;
use metrics::{counter, histogram};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, RedisError, Script, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::metrics::{INBOX_ENTRIES, INBOX_LAG_SECONDS, INBOX_LAGGED};
use crate::{Delivery, Inbox, InboxEvent, NodeId, Router, RouterError};

pub use config::{RedisConfig, Topology};
use inbox::{keep_lease, read_inbox};

/// How long a reader blocks in `XREAD` before checking whether to stop.
const READ_BLOCK: Duration = Duration::from_secs(2);
/// Entries read per `XREAD`.
const READ_COUNT: usize = 512;
/// While the inbox cannot be read, the relay resyncs its devices from the
/// store this often (deliveries arrive late, not never).
const OUTAGE_RESYNC: Duration = Duration::from_secs(3);
/// Devices per `MSET` when re-announcing a node's devices.
const ANNOUNCE_CHUNK: usize = 1000;
/// The inbox is trimmed after this many batches read...
const TRIM_EVERY: u32 = 64;
/// ...or after this long, whichever comes first (and when idle).
const TRIM_AFTER: Duration = Duration::from_secs(1);
/// Slots the presence keys are spread over (see `Inner::dev_key`).
const PRESENCE_BUCKETS: u32 = 64;
/// How long a "node is alive" answer is reused by `locate`.
const LIVENESS_TTL: Duration = Duration::from_secs(1);

/// Checks the lease, numbers the entry, appends it. KEYS: lease, inbox,
/// counter. ARGV: max len, field, payload. Returns the entry number, or 0
/// if the node holds no lease.
const PUBLISH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'n', n, ARGV[2], ARGV[3])
return n
";

/// Renews a lease held by this incarnation, or takes it again if it is gone
/// (Redis restarted or failed over). KEYS: lease, inbox, counter. ARGV:
/// incarnation, lease ms, inbox ttl ms. Returns 1 renewed, 0 re-created,
/// -1 held by another incarnation.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 0
end
return -1
";

/// Deletes a device's presence only if it still names this node.
const ABSENT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The Redis [`Router`]. Cheap to clone; connects lazily.
#[derive(Debug, Clone)]
pub struct RedisRouter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: RedisConfig,
    connector: Arc<conn::Connector>,
    shared: conn::Shared,
    /// Nodes registered by this process. A std mutex, never held across an
    /// `.await`.
    nodes: Mutex<HashMap<NodeId, LocalNode>>,
    liveness: Mutex<HashMap<NodeId, tokio::time::Instant>>,
    publish: Script,
    renew: Script,
    absent: Script,
}

#[derive(Debug)]
struct LocalNode {
    incarnation: String,
    announced: Arc<Announced>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What this process announced for a node: announced again after Redis
/// lost it (restart, failover) or missed an update.
#[derive(Debug, Default)]
struct Announced {
    /// The node's connected devices.
    present: Mutex<HashSet<String>>,
    /// The conversations the node is interested in.
    interests: Mutex<HashSet<String>>,
    /// Set when a presence or interest write failed: the next renewal
    /// announces again.
    dirty: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let nodes = self.nodes.get_mut().unwrap_or_else(|p| p.into_inner());
        for n in nodes.values() {
            for t in &n.tasks {
                t.abort();
            }
        }
    }
}

fn backend(e: RedisError) -> RouterError {
    RouterError::Backend(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map operation: poisoning cannot
    // leave a half-made change.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RedisRouter {
    /// A router for `cfg`; no connection is made until the first call.
    pub fn new(cfg: RedisConfig) -> Result<Self, RouterError> {
        let connector =
            Arc::new(conn::Connector::new(&cfg.topology, cfg.response_timeout).map_err(backend)?);
        Ok(Self {
            inner: Arc::new(Inner {
                shared: conn::Shared::new(connector.clone(), cfg.response_timeout),
                connector,
                cfg,
                nodes: Mutex::new(HashMap::new()),
                liveness: Mutex::new(HashMap::new()),
                publish: Script::new(PUBLISH),
                renew: Script::new(RENEW),
                absent: Script::new(ABSENT),
            }),
        })
    }

    /// Whether the backend is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.connector.is_cluster()
    }
}

impl Inner {
    /// A device's presence key. The hash tag puts it in one of
    /// [`PRESENCE_BUCKETS`] slots, so that in a Redis Cluster the `MGET` of
    /// a 7,000-member channel is split into at most that many sub-commands,
    /// not one per slot touched.
    fn dev_key(&self, device: &str) -> String {
        format!(
            "{}:dev:{{{:02x}}}:{device}",
            self.cfg.prefix,
            bucket(device)
        )
    }
    fn lease_key(&self, node: &str) -> String {
        format!("{}:{{{node}}}:lease", self.cfg.prefix)
    }
    fn inbox_key(&self, node: &str) -> String {
        format!("{}:{{{node}}}:inbox", self.cfg.prefix)
    }
    fn counter_key(&self, node: &str) -> String {
        format!("{}:{{{node}}}:n", self.cfg.prefix)
    }
    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.cfg.prefix)
    }
    /// The nodes interested in a conversation: one slot per conversation.
    fn interest_key(&self, conversation: &str) -> String {
        format!("{}:int:{{{conversation}}}", self.cfg.prefix)
    }

    /// `SADD` (or `SREM`) `node` to the interest set of each conversation,
    /// all sent at once on the multiplexed connection.
    async fn write_interest(
        &self,
        node: &str,
        conversations: &[String],
        add: bool,
    ) -> Result<(), RouterError> {
        let results = join_all(conversations.iter().map(|conv| {
            self.with_conn(move |mut c| async move {
                let key = self.interest_key(conv);
                if add {
                    c.sadd::<_, _, ()>(key, node).await
                } else {
                    c.srem::<_, _, ()>(key, node).await
                }
            })
        }))
        .await;
        results.into_iter().collect()
    }

    /// Runs `f` on the shared connection; a broken link is dropped so the
    /// next call reconnects.
    async fn with_conn<T, F, Fut>(&self, f: F) -> Result<T, RouterError>
    where
        F: FnOnce(conn::Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (generation, c) = self.shared.get().await.map_err(backend)?;
        match f(c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.shared.failed(generation, &e).await;
                Err(backend(e))
            }
        }
    }

    async fn publish_entry(
        &self,
        node: &str,
        field: &str,
        payload: Bytes,
    ) -> Result<(), RouterError> {
        let n: i64 = self
            .with_conn(|mut c| async move {
                self.publish
                    .key(self.lease_key(node))
                    .key(self.inbox_key(node))
                    .key(self.counter_key(node))
                    .arg(self.cfg.inbox_max_len)
                    .arg(field)
                    .arg(payload.as_ref())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if n == 0 {
            lock(&self.liveness).remove(node);
            return Err(RouterError::UnknownNode(node.to_owned()));
        }
        Ok(())
    }

    async fn announce(&self, node: &str, devices: &[String]) -> Result<(), RouterError> {
        for chunk in devices.chunks(ANNOUNCE_CHUNK) {
            let pairs: Vec<(String, &str)> =
                chunk.iter().map(|d| (self.dev_key(d), node)).collect();
            self.with_conn(|mut c| async move { c.mset::<_, _, ()>(&pairs).await })
                .await?;
        }
        Ok(())
    }

    async fn remove_presence(&self, node: &str, devices: &[String]) -> Result<(), RouterError> {
        let results = join_all(devices.iter().map(|d| {
            self.with_conn(move |mut c| async move {
                self.absent
                    .key(self.dev_key(d))
                    .arg(node)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
        }))
        .await;
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }

    /// Which of `nodes` hold a lease (answers reused for [`LIVENESS_TTL`]).
    async fn alive(&self, nodes: Vec<NodeId>) -> Result<HashSet<NodeId>, RouterError> {
        let now = tokio::time::Instant::now();
        let mut alive = HashSet::new();
        let mut ask = Vec::new();
        {
            let cache = lock(&self.liveness);
            for n in nodes {
                match cache.get(&n) {
                    Some(until) if *until > now => {
                        alive.insert(n);
                    }
                    _ => ask.push(n),
                }
            }
        }
        if ask.is_empty() {
            return Ok(alive);
        }
        let keys: Vec<String> = ask.iter().map(|n| self.lease_key(n)).collect();
        let leases: Vec<Option<String>> = self
            .with_conn(|mut c| async move { c.mget(&keys).await })
            .await?;
        let mut cache = lock(&self.liveness);
        for (n, lease) in ask.into_iter().zip(leases) {
            if lease.is_some() {
                cache.insert(n.clone(), now + LIVENESS_TTL);
                alive.insert(n);
            } else {
                cache.remove(&n);
            }
        }
        Ok(alive)
    }
}

#[async_trait]
impl Router for RedisRouter {
    async fn register_node(&self, node: &str) -> Result<Inbox, RouterError> {
        let inner = &self.inner;
        if lock(&inner.nodes).contains_key(node) {
            return Err(RouterError::NodeExists(node.to_owned()));
        }
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(|e| RouterError::Backend(e.to_string()))?;
        let incarnation = raw.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let lease_ms = inner.cfg.lease.as_millis() as u64;
        let (lease, inbox, counter, nodes) = (
            inner.lease_key(node),
            inner.inbox_key(node),
            inner.counter_key(node),
            inner.nodes_key(),
        );
        let taken: Option<String> = inner
            .with_conn(|mut c| {
                let (lease, inc) = (lease.clone(), incarnation.clone());
                async move {
                    redis::cmd("SET")
                        .arg(&lease)
                        .arg(&inc)
                        .arg("NX")
                        .arg("PX")
                        .arg(lease_ms)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        if taken.is_none() {
            return Err(RouterError::NodeExists(node.to_owned()));
        }
        // A previous incarnation's inbox holds nothing for this one.
        inner
            .with_conn(|mut c| {
                let (inbox, counter, nodes, node) = (
                    inbox.clone(),
                    counter.clone(),
                    nodes.clone(),
                    node.to_owned(),
                );
                async move {
                    let () = c.del(&[&inbox, &counter]).await?;
                    c.sadd::<_, _, ()>(&nodes, &node).await
                }
            })
            .await?;

        let (tx, rx) = mpsc::channel(inner.cfg.local_queue.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let announced = Arc::new(Announced::default());
        let reader = tokio::spawn(read_inbox(
            self.inner.clone(),
            node.to_owned(),
            tx.clone(),
            stop_rx.clone(),
        ));
        let keeper = tokio::spawn(keep_lease(
            Arc::downgrade(&self.inner),
            node.to_owned(),
            incarnation.clone(),
            announced.clone(),
            tx,
            stop_rx,
        ));
        lock(&inner.nodes).insert(
            node.to_owned(),
            LocalNode {
                incarnation,
                announced,
                stop,
                tasks: vec![reader, keeper],
            },
        );
        lock(&inner.liveness).insert(node.to_owned(), tokio::time::Instant::now() + LIVENESS_TTL);
        Ok(Inbox::new(rx))
    }

    async fn deregister_node(&self, node: &str) -> Result<(), RouterError> {
        let inner = &self.inner;
        let Some(local) = lock(&inner.nodes).remove(node) else {
            return Ok(());
        };
        let _ = local.stop.send(true);
        for t in &local.tasks {
            t.abort();
        }
        lock(&inner.liveness).remove(node);
        let devices: Vec<String> = lock(&local.announced.present).drain().collect();
        let interests: Vec<String> = lock(&local.announced.interests).drain().collect();
        let keys = [
            inner.lease_key(node),
            inner.inbox_key(node),
            inner.counter_key(node),
        ];
        let lease_key = keys[0].clone();
        let incarnation = local.incarnation.clone();
        // Only this incarnation's lease: a successor may hold the id already.
        let held: Option<String> = inner
            .with_conn(|mut c| async move { c.get(&lease_key).await })
            .await?;
        if held.as_deref() == Some(incarnation.as_str()) {
            inner
                .with_conn(|mut c| {
                    let (keys, nodes, node) = (keys.clone(), inner.nodes_key(), node.to_owned());
                    async move {
                        let () = c.del(&keys[1..]).await?;
                        let () = c.del(&keys[0]).await?;
                        c.srem::<_, _, ()>(&nodes, &node).await
                    }
                })
                .await?;
        }
        inner.write_interest(node, &interests, false).await?;
        inner.remove_presence(node, &devices).await
    }

    async fn set_present(&self, node: &str, devices: &[String]) -> Result<(), RouterError> {
        let inner = &self.inner;
        {
            let nodes = lock(&inner.nodes);
            let Some(local) = nodes.get(node) else {
                return Err(RouterError::UnknownNode(node.to_owned()));
            };
            lock(&local.announced.present).extend(devices.iter().cloned());
        }
        // A device waits for its presence before it is told it is in.
        self.bounded(node, "presence", inner.announce(node, devices))
            .await
    }

    async fn set_absent(&self, node: &str, devices: &[String]) -> Result<(), RouterError> {
        let inner = &self.inner;
        if let Some(local) = lock(&inner.nodes).get(node) {
            let mut present = lock(&local.announced.present);
            for d in devices {
                present.remove(d);
            }
        }
        inner.remove_presence(node, devices).await
    }

    async fn locate(
        &self,
        devices: &[String],
    ) -> Result<HashMap<NodeId, Vec<String>>, RouterError> {
        let inner = &self.inner;
        if devices.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<String> = devices.iter().map(|d| inner.dev_key(d)).collect();
        let at: Vec<Option<String>> = inner
            .with_conn(|mut c| async move { c.mget(&keys).await })
            .await?;
        let mut out: HashMap<NodeId, Vec<String>> = HashMap::new();
        for (d, n) in devices.iter().zip(at) {
            if let Some(n) = n {
                out.entry(n).or_default().push(d.clone());
            }
        }
        let alive = inner.alive(out.keys().cloned().collect()).await?;
        out.retain(|n, _| alive.contains(n));
        Ok(out)
    }

    async fn add_interest(&self, node: &str, conversations: &[String]) -> Result<(), RouterError> {
        let inner = &self.inner;
        {
            let nodes = lock(&inner.nodes);
            let Some(local) = nodes.get(node) else {
                return Err(RouterError::UnknownNode(node.to_owned()));
            };
            lock(&local.announced.interests).extend(conversations.iter().cloned());
        }
        // A device waits for it before its sync.
        let write = inner.write_interest(node, conversations, true);
        self.bounded(node, "interest", write).await
    }

    async fn remove_interest(
        &self,
        node: &str,
        conversations: &[String],
    ) -> Result<(), RouterError> {
        let inner = &self.inner;
        if let Some(local) = lock(&inner.nodes).get(node) {
            let mut interests = lock(&local.announced.interests);
            for c in conversations {
                interests.remove(c);
            }
        }
        // A removal that fails leaves the node in the set: it gets entries
        // with no local member, which cost a lookup and deliver nothing.
        inner.write_interest(node, conversations, false).await
    }

    async fn interested(&self, conversation: &str) -> Result<Vec<NodeId>, RouterError> {
        let inner = &self.inner;
        let key = inner.interest_key(conversation);
        let nodes: Vec<NodeId> = inner
            .with_conn(|mut c| {
                let key = key.clone();
                async move { c.smembers(&key).await }
            })
            .await?;
        if nodes.is_empty() {
            return Ok(nodes);
        }
        let alive = inner.alive(nodes.clone()).await?;
        let (live, dead): (Vec<NodeId>, Vec<NodeId>) =
            nodes.into_iter().partition(|n| alive.contains(n));
        if !dead.is_empty() {
            // Nodes without a lease are gone: forget their interest (a node
            // that comes back registers its interest again).
            let _ = inner
                .with_conn(|mut c| async move { c.srem::<_, _, ()>(&key, &dead).await })
                .await;
        }
        Ok(live)
    }

    async fn publish(&self, node: &str, delivery: Delivery) -> Result<(), RouterError> {
        let payload = wire::encode(&delivery).map_err(|e| RouterError::Backend(e.to_string()))?;
        self.inner.publish_entry(node, "d", payload).await
    }

    async fn publish_many(
        &self,
        deliveries: Vec<(NodeId, Delivery)>,
    ) -> Vec<Result<(), RouterError>> {
        // Concurrent calls on one multiplexed connection are pipelined.
        join_all(
            deliveries
                .into_iter()
                .map(|(node, d)| async move { self.publish(&node, d).await }),
        )
        .await
    }

    async fn broadcast(&self, payload: Bytes) -> Result<(), RouterError> {
        let inner = &self.inner;
        let nodes_key = inner.nodes_key();
        let nodes: Vec<String> = inner
            .with_conn(|mut c| async move { c.smembers(&nodes_key).await })
            .await?;
        let results = join_all(nodes.iter().map(|n| {
            let payload = payload.clone();
            async move { (n, inner.publish_entry(n, "b", payload).await) }
        }))
        .await;
        let mut first_err = None;
        for (n, r) in results {
            match r {
                Ok(()) => {}
                Err(RouterError::UnknownNode(_)) => {
                    // A dead node: forget it.
                    let nodes_key = inner.nodes_key();
                    let _ = inner
                        .with_conn(|mut c| async move { c.srem::<_, _, ()>(&nodes_key, n).await })
                        .await;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl RedisRouter {
    /// A write of what the node announces (its presence or interest),
    /// bounded by the reply timeout: a device waits for it, and a silent
    /// Redis must not hold the device there. A failed or late write marks
    /// the node dirty, and the lease keeper announces everything again
    /// once Redis answers.
    async fn bounded(
        &self,
        node: &str,
        what: &str,
        write: impl std::future::Future<Output = Result<(), RouterError>>,
    ) -> Result<(), RouterError> {
        let r = match tokio::time::timeout(self.inner.cfg.response_timeout, write).await {
            Ok(r) => r,
            Err(_) => Err(RouterError::Backend(format!(
                "Redis did not answer the {what} update in time"
            ))),
        };
        if r.is_err() {
            self.mark_dirty(node);
        }
        r
    }

    fn mark_dirty(&self, node: &str) {
        if let Some(local) = lock(&self.inner.nodes).get(node) {
            local.announced.dirty.store(true, Ordering::Relaxed);
        }
    }
}

/// This machine's time, in milliseconds since the Unix epoch (0 before it).
fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A stable bucket of a device id (FNV-1a), the same on every relay.
fn bucket(device: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in device.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % PRESENCE_BUCKETS
}

fn value_i64(v: &Value) -> Option<i64> {
    redis::from_redis_value_ref::<i64>(v).ok()
}

fn value_bytes(v: &Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::copy_from_slice(b)),
        _ => None,
    }
}
