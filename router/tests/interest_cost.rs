//! What a post to a large conversation costs the router, on every backend
//! (memory, single Redis, Sentinel, Redis Cluster): 3 relays hold the
//! devices of a 1,000-member and of a 10,000-member conversation, and a
//! post to either is the same number of router calls and of Redis
//! commands (counted on every master with `INFO commandstats`), with each
//! other relay's inbox getting exactly one entry per post, a reference
//! without device list or message, and the publisher's inbox none.
//! The same after one relay dies and its devices move to the two others.
//!
//! One test in a binary of its own: `cargo test` runs test binaries one
//! after the other, so no other test's commands fall into the counts.
//! Needs the `HEROLD_TEST_REDIS*` servers (scripts/test.sh starts them).

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herold_router::memory::MemoryRouter;
use herold_router::metered::Metered;
use herold_router::metrics::OPERATION_SECONDS;
use herold_router::redis::{RedisConfig, RedisRouter, Topology};
use herold_router::{Delivery, Inbox, InboxEvent, Router};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

const RELAYS: usize = 3;
const POSTS: u64 = 10;
const SMALL: usize = 1_000;
const LARGE: usize = 10_000;
const WAIT: Duration = Duration::from_secs(10);

/// Commands of Sentinel, replication and cluster housekeeping, which run
/// on their own schedule: not part of a post.
const HOUSEKEEPING: &[&str] = &[
    "info",
    "ping",
    "publish",
    "subscribe",
    "replconf",
    "psync",
    "sentinel",
    "client",
    "cluster",
    "command",
    "hello",
    "role",
    "config",
    "select",
    "auth",
];

/// The Redis masters of a topology, as `redis://` URLs.
async fn masters(var: &str) -> Vec<String> {
    let address = std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run scripts/test.sh (it starts Redis)"));
    match Topology::parse(&address).unwrap() {
        Topology::Single(url) => vec![url],
        Topology::Sentinel { master, sentinels } => {
            let client = redis::Client::open(sentinels[0].as_str()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let (host, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&master)
                .query_async(&mut c)
                .await
                .unwrap();
            vec![format!("redis://{host}:{port}")]
        }
        Topology::Cluster(seeds) => {
            let client = redis::Client::open(seeds[0].as_str()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut c)
                .await
                .unwrap();
            nodes
                .lines()
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split(' ').collect();
                    let flags = fields.get(2)?;
                    let addr = fields.get(1)?.split('@').next()?;
                    (flags.contains("master") && !flags.contains("fail"))
                        .then(|| format!("redis://{addr}"))
                })
                .collect()
        }
    }
}

/// Commands executed and bytes received so far, summed over `masters`.
async fn redis_work(masters: &[String]) -> (u64, u64) {
    let (mut calls, mut bytes) = (0u64, 0u64);
    for url in masters {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .unwrap();
        for line in stats.lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let base = name.split('|').next().unwrap_or(name);
            if HOUSEKEEPING.contains(&base) {
                continue;
            }
            let n = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            calls += n;
        }
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut c)
            .await
            .unwrap();
        bytes += info
            .lines()
            .find_map(|l| l.strip_prefix("total_net_input_bytes:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (calls, bytes)
}

/// Router calls recorded so far (operation durations observed).
fn router_calls(snapshotter: &Snapshotter, seen: &mut HashMap<String, usize>) -> usize {
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.key().name() != OPERATION_SECONDS {
            continue;
        }
        let op = key
            .key()
            .labels()
            .find(|l| l.key() == "op")
            .map(|l| l.value().to_owned())
            .unwrap_or_default();
        if let DebugValue::Histogram(samples) = value {
            *seen.entry(op).or_default() += samples.len();
        }
    }
    seen.values().sum()
}

/// Three relays' routers (one shared router for the in-process backend).
struct Relays {
    routers: Vec<Arc<dyn Router>>,
    nodes: Vec<String>,
    inboxes: Vec<Option<Inbox>>,
}

async fn relays(make: &dyn Fn() -> Arc<dyn Router>, shared: bool, tag: &str) -> Relays {
    let first = make();
    let mut routers = Vec::new();
    let mut nodes = Vec::new();
    let mut inboxes = Vec::new();
    for i in 0..RELAYS {
        let r = if shared || i == 0 {
            first.clone()
        } else {
            make()
        };
        let node = format!("{tag}-relay-{i}");
        inboxes.push(Some(r.register_node(&node).await.unwrap()));
        routers.push(r);
        nodes.push(node);
    }
    Relays {
        routers,
        nodes,
        inboxes,
    }
}

/// `members` devices of conversation `conv` spread over the live relays:
/// presence and interest, as relays announce them.
async fn connect(relays: &Relays, conv: &str, members: usize, live: &[usize]) {
    let devices: Vec<String> = (0..members).map(|i| format!("{conv}-dev-{i}")).collect();
    for (k, &i) in live.iter().enumerate() {
        let mine: Vec<String> = devices
            .iter()
            .skip(k)
            .step_by(live.len())
            .cloned()
            .collect();
        relays.routers[i]
            .set_present(&relays.nodes[i], &mine)
            .await
            .unwrap();
        relays.routers[i]
            .add_interest(&relays.nodes[i], &[conv.to_owned()])
            .await
            .unwrap();
    }
}

/// Posts `POSTS` messages to `conv` from relay 0 as a relay does by
/// interest; every other live relay's inbox gets each exactly once, as a
/// reference. Returns (router calls, Redis commands, Redis bytes in) per
/// post.
async fn post(
    relays: &mut Relays,
    conv: &str,
    live: &[usize],
    snapshotter: &Snapshotter,
    masters: &[String],
) -> (f64, f64, f64) {
    let mut seen = HashMap::new();
    let calls_before = router_calls(snapshotter, &mut seen);
    let (cmds_before, bytes_before) = redis_work(masters).await;
    let publisher = relays.routers[0].clone();
    for seq in 1..=POSTS {
        let mut nodes = publisher.interested(conv).await.unwrap();
        nodes.sort();
        let mut want: Vec<String> = live.iter().map(|&i| relays.nodes[i].clone()).collect();
        want.sort();
        assert_eq!(nodes, want, "the live relays holding members of {conv}");
        // The publisher's own devices get the message without the router;
        // the others get a reference (no frame, no devices).
        let batch = nodes
            .into_iter()
            .filter(|n| *n != relays.nodes[0])
            .map(|n| {
                let d = Delivery {
                    conversation_id: conv.to_owned(),
                    seq,
                    ..Delivery::default()
                };
                (n, d)
            })
            .collect();
        assert!(
            publisher
                .publish_many(batch)
                .await
                .iter()
                .all(Result::is_ok)
        );
    }
    let calls = router_calls(snapshotter, &mut seen) - calls_before;
    let (cmds_after, bytes_after) = redis_work(masters).await;
    // Each other live relay's inbox: every post once, in order, a
    // reference; the publisher's: nothing.
    for &i in live {
        let inbox = relays.inboxes[i].as_mut().unwrap();
        if i == 0 {
            assert!(
                tokio::time::timeout(Duration::from_millis(200), inbox.recv())
                    .await
                    .is_err(),
                "the publisher's own inbox got an entry"
            );
            continue;
        }
        for seq in 1..=POSTS {
            let d = loop {
                match tokio::time::timeout(WAIT, inbox.recv()).await.unwrap() {
                    Some(InboxEvent::Delivery(d)) => break d,
                    Some(InboxEvent::Lagged) => panic!("relay {i} lagged"),
                    Some(InboxEvent::Broadcast(_)) => {}
                    None => panic!("relay {i}'s inbox closed"),
                }
            };
            assert_eq!((d.conversation_id.as_str(), d.seq), (conv, seq));
            assert!(d.devices.is_empty(), "no device list in the entry");
            assert!(d.frame.is_empty(), "no message in the entry");
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(200), inbox.recv())
                .await
                .is_err(),
            "relay {i} got a post twice"
        );
    }
    let n = POSTS as f64;
    (
        calls as f64 / n,
        cmds_after.saturating_sub(cmds_before) as f64 / n,
        bytes_after.saturating_sub(bytes_before) as f64 / n,
    )
}

/// How relay 2 dies.
enum Kill<'a> {
    /// In one process: it leaves the router.
    Deregister,
    /// Its process is gone and its lease ran out.
    ExpireLease { var: &'a str, prefix: &'a str },
}

/// The whole check on one backend. `kill` ends relay 2 as a crash would.
async fn check(
    name: &str,
    make: &dyn Fn() -> Arc<dyn Router>,
    shared: bool,
    masters: &[String],
    kill: Kill<'_>,
) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut relays = relays(make, shared, name).await;
    let all = [0, 1, 2];
    let (small, large) = (format!("{name}-small"), format!("{name}-large"));
    connect(&relays, &small, SMALL, &all).await;
    connect(&relays, &large, LARGE, &all).await;
    let s = post(&mut relays, &small, &all, &snapshotter, masters).await;
    let l = post(&mut relays, &large, &all, &snapshotter, masters).await;
    println!(
        "{name}: per post, {SMALL} members: {:.1} router calls, {:.1} Redis commands, {:.0} B in; \
         {LARGE} members: {:.1} calls, {:.1} commands, {:.0} B in",
        s.0, s.1, s.2, l.0, l.1, l.2
    );
    assert_eq!(s.0, l.0, "{name}: router calls per post grow with members");
    // What runs on a clock may fall into either count: the lease reads of
    // the other relays (their liveness is cached for a second; on a Redis
    // Cluster one read per master), a lease renewal, an idle inbox's
    // `XREAD`. Counted per member, the difference would be thousands.
    assert!(
        (l.1 - s.1).abs() <= 1.5,
        "{name}: Redis commands per post grow with members: {} vs {}",
        s.1,
        l.1
    );
    assert!(
        l.2 < 1024.0 && l.2 < s.2 * 1.2 + 100.0,
        "{name}: Redis bytes per post grow with members: {} vs {}",
        s.2,
        l.2
    );

    // Relay 2 dies; its devices reconnect to relays 0 and 1.
    match kill {
        Kill::Deregister => {
            let node = relays.nodes[2].clone();
            relays.routers[2].deregister_node(&node).await.unwrap();
        }
        Kill::ExpireLease { var, prefix } => expire_lease(&mut relays, var, prefix).await,
    }
    relays.inboxes[2] = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while relays.routers[0]
        .interested(&large)
        .await
        .unwrap()
        .contains(&relays.nodes[2])
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: the dead relay still counts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    connect(&relays, &large, LARGE, &[0, 1]).await;
    let k = post(&mut relays, &large, &[0, 1], &snapshotter, masters).await;
    println!(
        "{name}: after relay 2 died, {LARGE} members on 2 relays: {:.1} calls, {:.1} commands, {:.0} B in",
        k.0, k.1, k.2
    );
    assert!(k.1 <= l.1 + 0.5, "{name}: two relays cost more than three");
}

fn redis_router(var: &str, prefix: &str) -> Arc<dyn Router> {
    let address = std::env::var(var).unwrap();
    let mut cfg = RedisConfig::new(Topology::parse(&address).unwrap());
    cfg.prefix = prefix.to_owned();
    // Long: no lease renewal falls into the counts. A dead relay's lease is
    // deleted by the test, as if it had run out.
    cfg.lease = Duration::from_secs(60);
    Arc::new(Metered::new(Arc::new(RedisRouter::new(cfg).unwrap())))
}

/// Deletes relay 2's lease key, as its expiry would, after its router is
/// gone (no keeper renews it).
async fn expire_lease(relays: &mut Relays, var: &str, prefix: &str) {
    relays.routers.pop();
    let address = std::env::var(var).unwrap();
    let lease = format!("{prefix}:{{{}}}:lease", relays.nodes[2]);
    match Topology::parse(&address).unwrap() {
        Topology::Cluster(seeds) => {
            let client = redis::cluster::ClusterClient::new(seeds).unwrap();
            let mut c = client.get_async_connection().await.unwrap();
            let () = redis::cmd("DEL")
                .arg(&lease)
                .query_async(&mut c)
                .await
                .unwrap();
        }
        _ => {
            for url in masters(var).await {
                let client = redis::Client::open(url.as_str()).unwrap();
                let mut c = client.get_multiplexed_async_connection().await.unwrap();
                let () = redis::cmd("DEL")
                    .arg(&lease)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        }
    }
    // Relay 0's router answers "alive" from its cache for up to a second;
    // the loop in `check` waits that out.
}

#[tokio::test]
async fn a_post_costs_the_same_for_1000_and_10000_members_on_every_backend() {
    let memory: Arc<dyn Router> = Arc::new(Metered::new(Arc::new(MemoryRouter::default())));
    check("memory", &|| memory.clone(), true, &[], Kill::Deregister).await;

    for (name, var) in [
        ("single", "HEROLD_TEST_REDIS"),
        ("sentinel", "HEROLD_TEST_REDIS_SENTINEL"),
        ("cluster", "HEROLD_TEST_REDIS_CLUSTER"),
    ] {
        let mut raw = [0u8; 6];
        getrandom::fill(&mut raw).unwrap();
        let prefix = format!(
            "hcost-{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let masters = masters(var).await;
        check(
            name,
            &|| redis_router(var, &prefix),
            false,
            &masters,
            Kill::ExpireLease {
                var,
                prefix: &prefix,
            },
        )
        .await;
    }
}
