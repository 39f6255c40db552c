//! The Redis router against real Redis servers: the conformance suite on a
//! single Redis, on Sentinel and on a 3-master Redis Cluster, then what only
//! a shared, lossy backend has: lease expiry of a dead node and recovery
//! after Redis lost the node's keys.
//!
//! Needs `HEROLD_TEST_REDIS`, `HEROLD_TEST_REDIS_SENTINEL` and
//! `HEROLD_TEST_REDIS_CLUSTER` (scripts/test.sh starts the servers with
//! scripts/redis.sh and sets them; `scripts/redis.sh env` prints them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::time::Duration;

use super::{RedisConfig, RedisRouter, Topology};
use crate::{InboxEvent, Router};

fn address(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{var} is not set: these tests need real Redis servers. Run scripts/test.sh \
             (it starts them), or `scripts/redis.sh start` and `eval $(scripts/redis.sh env)`"
        ),
    }
}

/// A prefix of its own per router: tests share the servers.
fn unique_prefix() -> String {
    let mut r = [0u8; 6];
    getrandom::fill(&mut r).unwrap();
    format!(
        "htest-{}-{}",
        std::process::id(),
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn router(var: &str, lease: Duration, prefix: &str) -> RedisRouter {
    let mut cfg = RedisConfig::new(Topology::parse(&address(var)).unwrap());
    cfg.prefix = prefix.to_owned();
    cfg.lease = lease;
    RedisRouter::new(cfg).unwrap()
}

fn fresh(var: &str) -> RedisRouter {
    router(var, Duration::from_secs(5), &unique_prefix())
}

mod single {
    crate::router_conformance_tests!(super::fresh("HEROLD_TEST_REDIS"));
}

mod sentinel {
    crate::router_conformance_tests!(super::fresh("HEROLD_TEST_REDIS_SENTINEL"));
}

mod cluster {
    crate::router_conformance_tests!(super::fresh("HEROLD_TEST_REDIS_CLUSTER"));
}

/// Polls `f` until it is true or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dead_node_stops_counting(var: &str) {
    let prefix = unique_prefix();
    let lease = Duration::from_millis(900);
    let dying = router(var, lease, &prefix);
    let _inbox = dying.register_node("dying").await.unwrap();
    let devices = vec!["d1".to_owned(), "d2".to_owned()];
    dying.set_present("dying", &devices).await.unwrap();
    let observer = router(var, lease, &prefix);
    assert_eq!(observer.locate(&devices).await.unwrap().len(), 1);
    // The process dies: no deregistration, no more renewals.
    drop(dying);
    let gone = eventually(Duration::from_secs(4), || async {
        observer.locate(&devices).await.unwrap().is_empty()
    })
    .await;
    assert!(gone, "a dead node's devices still count after 4 s");
    // Its id may be taken again once the lease is gone.
    observer.register_node("dying").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_dead_node_stops_counting() {
    dead_node_stops_counting("HEROLD_TEST_REDIS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dead_node_stops_counting() {
    dead_node_stops_counting("HEROLD_TEST_REDIS_CLUSTER").await;
}

/// Redis loses every key of the cluster (a restart without persistence):
/// the node re-announces its devices by itself and its relay is told to
/// resync; later deliveries flow again.
async fn lost_keys_are_recovered(var: &str) {
    let prefix = unique_prefix();
    let r = router(var, Duration::from_millis(900), &prefix);
    let mut inbox = r.register_node("n1").await.unwrap();
    let devices = vec!["dev-1".to_owned()];
    r.set_present("n1", &devices).await.unwrap();
    let channel = ["channel-1".to_owned()];
    r.add_interest("n1", &channel).await.unwrap();

    // Delete every key under the prefix, on every master.
    let topology = Topology::parse(&address(var)).unwrap();
    let urls = match topology {
        Topology::Single(u) => vec![u],
        Topology::Cluster(nodes) => nodes,
        Topology::Sentinel { .. } => unreachable!("not used with sentinel"),
    };
    // Every key first, the lease last: the node re-announces as soon as it
    // finds its lease gone, and a device key deleted after that would be a
    // different failure (a partial loss) from the one tested here.
    let mut found = Vec::new();
    for url in urls {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut c)
            .await
            .unwrap();
        found.extend(keys.into_iter().map(|k| (c.clone(), k)));
    }
    found.sort_by_key(|(_, k)| k.ends_with(":lease"));
    for (mut c, k) in found {
        // In a cluster, a key of another master answers MOVED: skip it.
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&k).query_async(&mut c).await;
    }

    let lagged = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match inbox.recv().await {
                Some(InboxEvent::Lagged) => return true,
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(
        lagged,
        "the node was not told it lagged after losing its keys"
    );
    let back = eventually(Duration::from_secs(5), || async {
        r.locate(&devices).await.unwrap().get("n1") == Some(&devices)
    })
    .await;
    assert!(back, "the node's devices were not re-announced");
    let back = eventually(Duration::from_secs(5), || async {
        r.interested(&channel[0]).await.unwrap() == vec!["n1".to_owned()]
    })
    .await;
    assert!(back, "the node's interest was not registered again");
    let d = crate::Delivery {
        conversation_id: "c".into(),
        seq: 9,
        expires_at_ms: None,
        accepted_at_ms: None,
        traceparent: None,
        frame: bytes::Bytes::from_static(b"f"),
        devices: devices.clone(),
    };
    r.publish("n1", d.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match inbox.recv().await {
                Some(InboxEvent::Delivery(x)) => return Some(x),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, Some(d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_lost_keys_are_recovered() {
    lost_keys_are_recovered("HEROLD_TEST_REDIS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lost_keys_are_recovered() {
    lost_keys_are_recovered("HEROLD_TEST_REDIS_CLUSTER").await;
}

#[test]
fn topology_addresses_parse_with_clear_errors() {
    assert_eq!(
        Topology::parse("redis://127.0.0.1:6390").unwrap(),
        Topology::Single("redis://127.0.0.1:6390".into())
    );
    assert_eq!(
        Topology::parse("sentinel://herold@h1:26379,h2:26379").unwrap(),
        Topology::Sentinel {
            sentinels: vec!["redis://h1:26379".into(), "redis://h2:26379".into()],
            master: "herold".into()
        }
    );
    assert_eq!(
        Topology::parse("cluster://a:7000,b:7001").unwrap(),
        Topology::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()])
    );
    let e = Topology::parse("sentinel://h1:26379").unwrap_err();
    assert!(e.contains("sentinel://<master-name>@"), "{e}");
    let e = Topology::parse("localhost:6379").unwrap_err();
    assert!(e.contains("not a Redis address"), "{e}");
    let e = Topology::parse("cluster://").unwrap_err();
    assert!(e.contains("names no host"), "{e}");
}

/// An idle node's reader blocks and wakes without ever reporting a lag:
/// a spurious `Lagged` would make every device on the node resync.
async fn idle_node_does_not_lag(var: &str) {
    let r = fresh(var);
    let mut inbox = r.register_node("idle").await.unwrap();
    // Longer than two blocking reads and a lease renewal.
    let quiet = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await;
    assert!(quiet.is_err(), "an idle inbox yielded {quiet:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_idle_node_does_not_lag() {
    idle_node_does_not_lag("HEROLD_TEST_REDIS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_idle_node_does_not_lag() {
    idle_node_does_not_lag("HEROLD_TEST_REDIS_CLUSTER").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_idle_node_does_not_lag() {
    idle_node_does_not_lag("HEROLD_TEST_REDIS_SENTINEL").await;
}

/// A Redis that accepts connections and never answers (a paused process, a
/// partition): a thousand callers get an error within a few connect
/// timeouts, not one connect timeout each, one after the other, and the
/// presence of a new device does not wait for Redis.
#[tokio::test]
async fn a_silent_redis_fails_calls_fast() {
    // The kernel completes the handshakes; nobody ever reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let mut cfg = RedisConfig::new(Topology::parse(&url).unwrap());
    cfg.prefix = unique_prefix();
    let r = std::sync::Arc::new(RedisRouter::new(cfg).unwrap());
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move { r.locate(&[format!("d{i}")]).await })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(10), async {
        for c in calls {
            assert!(c.await.unwrap().is_err(), "a silent Redis locates nothing");
        }
    })
    .await
    .expect("1000 calls fail within 10 s");
    drop(silent);
}
