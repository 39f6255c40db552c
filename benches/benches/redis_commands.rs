//! Redis commands per delivered message, counted by Redis itself
//! (`INFO commandstats`), for a 1:1 message, a 200-device group and a
//! 7,000-member channel, with three relays sharing one Redis.
//!
//! The relays run in this process on one embedded store (the commands Redis
//! sees do not depend on the store) with a Redis router each, as three relay
//! processes would; 7,101 devices are real SDK clients over QUIC, spread
//! over the relays. Background commands (lease renewals, idle blocking
//! reads) are counted over an idle window of the same length and
//! subtracted.
//!
//! `HEROLD_BENCH_REDIS` (default `redis://127.0.0.1:6390`, the single Redis
//! of scripts/redis.sh) must be a Redis this run may reset the statistics
//! of. Run: `cargo bench -p herold-benches --bench redis_commands`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

#[path = "common/config.rs"]
mod bench;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herold_client::{Client, ClientConfig, Event};
use herold_relay::Relay;
use herold_router::redis::{RedisConfig, RedisRouter, Topology};
use herold_store::embedded::{EmbeddedConfig, EmbeddedStore};
use herold_store::{Account, Conversation, ConversationKind, Device, Member, Role, Store};

const RELAYS: usize = 3;
const CHANNEL_MEMBERS: usize = 7_000;
const GROUP_ACCOUNTS: usize = 100;

/// Commands Redis executed since the last reset, by command.
async fn commandstats(c: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for line in info.lines() {
        // cmdstat_mget:calls=12,usec=...
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let calls = fields
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if !matches!(name, "info" | "config|resetstat") {
            out.insert(name.to_owned(), calls);
        }
    }
    out
}

async fn reset(c: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(c)
        .await
        .unwrap();
}

fn key() -> (Vec<u8>, ed25519_dalek::SigningKey) {
    let k = herold_client::generate_key().unwrap();
    (k.verifying_key().to_bytes().to_vec(), k)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url =
        std::env::var("HEROLD_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6390".into());
    let mut stats = match redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
    {
        Ok(c) => c,
        Err(e) => {
            // Like the CQL half of the store bench: skipped, and said so.
            eprintln!(
                "redis_commands: no Redis at {url} ({e}), skipped; \
                 start one with scripts/redis.sh start single"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(dir.path().join("store"), EmbeddedConfig::default()).unwrap());

    // Directory: 7,000 accounts with a phone each; the first 100 also have
    // a tablet (the 200-device group); two more accounts for the 1:1.
    eprintln!("provisioning {CHANNEL_MEMBERS} accounts");
    let mut devices = Vec::new();
    let account = |id: &str| Account {
        id: id.to_owned(),
        display_name: String::new(),
        created_at_ms: 0,
    };
    let device = |id: &str, acc: &str, pk: Vec<u8>| Device {
        id: id.to_owned(),
        account_id: acc.to_owned(),
        public_key: pk,
        revoked: false,
        created_at_ms: 0,
    };
    for i in 0..CHANNEL_MEMBERS + 2 {
        let a = format!("a{i}");
        store.create_account(account(&a)).await.unwrap();
        let kinds: &[&str] = if i < GROUP_ACCOUNTS {
            &["p", "t"]
        } else {
            &["p"]
        };
        for k in kinds {
            let (pk, sk) = key();
            let id = format!("{a}.{k}");
            store.add_device(device(&id, &a, pk), 10).await.unwrap();
            devices.push((id, sk));
        }
    }
    let conv = |id: &str, kind| Conversation {
        id: id.to_owned(),
        kind,
        title: String::new(),
        default_ttl_seconds: 0,
        created_at_ms: 0,
    };
    let member = |i: usize, role| Member {
        account_id: format!("a{i}"),
        role,
    };
    let dm_accounts = [CHANNEL_MEMBERS, CHANNEL_MEMBERS + 1];
    store
        .create_conversation(
            conv("dm", ConversationKind::Direct),
            dm_accounts
                .iter()
                .map(|&i| member(i, Role::Member))
                .collect(),
        )
        .await
        .unwrap();
    store
        .create_conversation(
            conv("grp", ConversationKind::Group),
            (0..GROUP_ACCOUNTS)
                .map(|i| member(i, Role::Member))
                .collect(),
        )
        .await
        .unwrap();
    let mut chan_members: Vec<Member> = (0..CHANNEL_MEMBERS)
        .map(|i| member(i, Role::Member))
        .collect();
    chan_members[0].role = Role::Publisher;
    store
        .create_conversation(conv("chan", ConversationKind::Channel), chan_members)
        .await
        .unwrap();

    // Three relays sharing Redis and the store.
    let mut salt = [0u8; 4];
    getrandom::fill(&mut salt).unwrap();
    let prefix = format!(
        "hbench-{}",
        salt.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let mut addrs = Vec::new();
    let mut fingerprint = None;
    for n in 0..RELAYS {
        let mut cfg = bench::bench_config(dir.path());
        cfg.node_id = format!("r{n}");
        let mut rc = RedisConfig::new(Topology::parse(&url).unwrap());
        rc.prefix = prefix.clone();
        let router = Arc::new(RedisRouter::new(rc).unwrap());
        let relay = Relay::bind_with(cfg, store.clone(), router).await.unwrap();
        addrs.push(relay.local_addr().unwrap());
        fingerprint = Some(herold_client::tls::parse_fingerprint(relay.fingerprint()).unwrap());
        tokio::spawn(relay.run(std::future::pending()));
    }
    let fp = fingerprint.unwrap();

    eprintln!("connecting {} devices", devices.len());
    let endpoint = herold_client::raw::client_endpoint(addrs[0]).unwrap();
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let mut senders = BTreeMap::new();
    for (k, (id, sk)) in devices.into_iter().enumerate() {
        let mut cfg = ClientConfig::new(addrs[k % RELAYS], fp, &id, sk);
        cfg.endpoint = Some(endpoint.clone());
        cfg.tcp_fallback = false;
        let mut c = Client::connect(cfg).await.unwrap();
        senders.insert(id.clone(), c.sender());
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(ev) = c.next_event().await {
                if let Event::Message(m) = ev {
                    let slot = match m.conversation_id.as_str() {
                        "dm" => 0,
                        "grp" => 1,
                        _ => 2,
                    };
                    received[slot].fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    // (name, conversation, sender device, messages, recipient devices)
    let cases = [
        (
            "1:1",
            "dm",
            format!("a{CHANNEL_MEMBERS}.p"),
            200u64,
            2u64,
            0usize,
        ),
        ("group of 200 devices", "grp", "a1.p".to_owned(), 50, 200, 1),
        (
            "channel of 7,000 members",
            "chan",
            "a0.p".to_owned(),
            10,
            (CHANNEL_MEMBERS + GROUP_ACCOUNTS) as u64,
            2,
        ),
    ];
    let mut rows = Vec::new();
    for (name, conversation, from, messages, recipients, slot) in cases {
        let sender = senders[&from].clone();
        let before = received[slot].load(Ordering::Relaxed);
        reset(&mut stats).await;
        let started = tokio::time::Instant::now();
        for i in 0..messages {
            sender
                .send(conversation, format!("m{i}").into_bytes(), 0)
                .await
                .unwrap();
        }
        let want = before + messages * recipients;
        tokio::time::timeout(Duration::from_secs(300), async {
            while received[slot].load(Ordering::Relaxed) < want {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("every recipient device got every message");
        let took = started.elapsed();
        let busy = commandstats(&mut stats).await;
        // The same window, idle: lease renewals and blocking reads.
        reset(&mut stats).await;
        tokio::time::sleep(took).await;
        let idle = commandstats(&mut stats).await;
        let mut net: BTreeMap<String, i64> = BTreeMap::new();
        for (cmd, n) in &busy {
            let v = *n as i64 - idle.get(cmd).copied().unwrap_or(0) as i64;
            if v > 0 {
                net.insert(cmd.clone(), v);
            }
        }
        let total: i64 = net.values().sum();
        rows.push((name, messages, recipients, total, net, took));
    }

    // Commands Redis runs inside the relay's scripts (publish: EXISTS,
    // INCR, XADD; renew: GET, PEXPIRE, SET; leave: GET, DEL): counted by
    // commandstats, but not sent over the network.
    const IN_SCRIPTS: [&str; 7] = ["exists", "incr", "xadd", "get", "pexpire", "set", "del"];
    println!(
        "| case | messages | recipient devices | commands sent per message | per delivery | executed per message (incl. in scripts) | sent, by command, per message |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, messages, recipients, total, net, _) in &rows {
        let sent: i64 = net
            .iter()
            .filter(|(c, _)| !IN_SCRIPTS.contains(&c.as_str()))
            .map(|(_, n)| n)
            .sum();
        let by: Vec<String> = net
            .iter()
            .filter(|(c, _)| !IN_SCRIPTS.contains(&c.as_str()))
            .map(|(c, n)| format!("{} {:.2}", c.to_uppercase(), *n as f64 / *messages as f64))
            .collect();
        let per = |n: i64| n as f64 / *messages as f64;
        println!(
            "| {name} | {messages} | {recipients} | {:.2} | {:.4} | {:.2} | {} |",
            per(sent),
            sent as f64 / (*messages * *recipients) as f64,
            per(*total),
            by.join(", ")
        );
    }
}
