//! Relays as a cluster: several relay processes sharing Redis (the router)
//! and the CQL store. Devices are spread across them; 1:1, a 200-device
//! group and a channel reach everyone exactly once and in order; a relay
//! killed with SIGKILL mid-stream loses nothing (its devices reconnect to
//! the survivors); Redis restarted, and a Redis Cluster master failed over,
//! under traffic: delivery resumes, order holds, nothing accepted is lost.
//!
//! Needs `HEROLD_TEST_CQL` and `HEROLD_TEST_REDIS` and the `redis-server`
//! binary (scripts/test.sh provides all three).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;
#[path = "common/redis.rs"]
mod redis_support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use ed25519_dalek::SigningKey;
use herold_client::admin::AdminClient;
use herold_client::{Client, ClientConfig, Event, Sender};
use herold_proto::v1::{self, ConversationKind};
use redis_support::*;
use tokio::sync::watch;
use tonic::transport::Channel;

/// Ids unique to this run: the test keyspace is shared and persistent.
fn run_tag(name: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{name}{}x{ms:x}", std::process::id())
}

/// The relays' shared (dev) certificate.
fn fp_of(relays: &[RelayProcess]) -> [u8; 32] {
    relays[0].fingerprint
}

/// How fast a client gives up on a silent (killed) relay in these tests.
const CLIENT_IDLE: Duration = Duration::from_secs(3);

/// (device, conversation) -> [(seq, body)] in arrival order.
type Arrivals = HashMap<(String, String), Vec<(u64, Vec<u8>)>>;

/// What every device received.
#[derive(Clone, Default)]
struct Received {
    got: Arc<Mutex<Arrivals>>,
}

/// How test devices reach the cluster, and where they report arrivals.
struct Net {
    relays: Vec<SocketAddr>,
    fingerprint: [u8; 32],
    endpoint: quinn::Endpoint,
    received: Received,
    bell: watch::Sender<u64>,
}

/// A device connected to the cluster, its events collected in the background.
struct Device {
    id: String,
    sender: Sender,
}

/// Connects `id` to relay `first`, with the other relays as fallbacks.
async fn connect(net: &Net, first: usize, id: &str, key: &SigningKey) -> Device {
    let (relays, n) = (&net.relays, net.relays.len());
    let mut cfg = ClientConfig::new(relays[first % n], net.fingerprint, id, key.clone());
    cfg.fallback_relays = (1..n).map(|k| relays[(first + k) % n]).collect();
    cfg.endpoint = Some(net.endpoint.clone());
    cfg.idle_timeout = CLIENT_IDLE;
    let mut client = Client::connect(cfg).await.expect("device connects");
    let sender = client.sender();
    let (received, bell, me) = (net.received.clone(), net.bell.clone(), id.to_owned());
    tokio::spawn(async move {
        while let Some(ev) = client.next_event().await {
            match ev {
                Event::Message(m) => {
                    received
                        .got
                        .lock()
                        .unwrap()
                        .entry((me.clone(), m.conversation_id.clone()))
                        .or_default()
                        .push((m.seq, m.ciphertext));
                    bell.send_modify(|n| *n += 1);
                }
                Event::Stopped(e) => panic!("{me} stopped: {e}"),
                _ => {}
            }
        }
    });
    Device {
        id: id.to_owned(),
        sender,
    }
}

fn net(relays: &[SocketAddr], fingerprint: [u8; 32]) -> (Net, watch::Receiver<u64>) {
    let (bell, rx) = watch::channel(0u64);
    let net = Net {
        relays: relays.to_vec(),
        fingerprint,
        endpoint: herold_client::raw::client_endpoint(relays[0]).unwrap(),
        received: Received::default(),
        bell,
    };
    (net, rx)
}

impl Received {
    /// Whether `device` has exactly `expected` in `conversation`, in order.
    fn has(&self, device: &str, conversation: &str, expected: &BTreeMap<u64, Vec<u8>>) -> bool {
        let got = self.got.lock().unwrap();
        let mine = got
            .get(&(device.to_owned(), conversation.to_owned()))
            .map_or(&[][..], Vec::as_slice);
        mine.len() == expected.len()
            && mine
                .iter()
                .zip(expected)
                .all(|((s, b), (es, eb))| s == es && b == eb)
    }

    /// Fails with the first device that does not hold exactly `expected`.
    fn assert_exactly(
        &self,
        devices: &[String],
        conversation: &str,
        expected: &BTreeMap<u64, Vec<u8>>,
    ) {
        let got = self.got.lock().unwrap();
        for d in devices {
            let mine: Vec<u64> = got
                .get(&(d.clone(), conversation.to_owned()))
                .map(|v| v.iter().map(|(s, _)| *s).collect())
                .unwrap_or_default();
            let want: Vec<u64> = expected.keys().copied().collect();
            assert_eq!(mine, want, "{d} in {conversation}: in order, exactly once");
        }
    }
}

/// Waits until every device in `devices` holds exactly `expected` in
/// `conversation`, woken by each arrival; fails with the first that does not.
async fn wait_all(
    received: &Received,
    bell: &mut watch::Receiver<u64>,
    devices: &[String],
    conversation: &str,
    expected: &BTreeMap<u64, Vec<u8>>,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if devices
            .iter()
            .all(|d| received.has(d, conversation, expected))
        {
            return;
        }
        if tokio::time::timeout_at(deadline, bell.changed())
            .await
            .is_err()
        {
            received.assert_exactly(devices, conversation, expected);
            return;
        }
    }
}

/// Sends `n` messages from each sender concurrently; returns seq -> body.
async fn send_all(
    senders: &[Sender],
    conversation: &str,
    n: usize,
    tag: &str,
) -> BTreeMap<u64, Vec<u8>> {
    let mut tasks = Vec::new();
    for (s, sender) in senders.iter().enumerate() {
        let (sender, conv, tag) = (sender.clone(), conversation.to_owned(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..n {
                let body = format!("{tag}-s{s}-{i}").into_bytes();
                let a = sender.send(&conv, body.clone(), 0).await.expect("accepted");
                out.push((a.seq, body));
            }
            out
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        for (seq, body) in t.await.unwrap() {
            assert!(all.insert(seq, body).is_none(), "seq {seq} given out twice");
        }
    }
    all
}

/// Senders posting to one conversation as fast as they are answered, until
/// stopped; every acceptance is recorded (a seq given out twice fails).
struct Traffic {
    stop: watch::Sender<bool>,
    accepted: Arc<Mutex<BTreeMap<u64, Vec<u8>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// Starts one task per sender; bodies are `<tag>s<sender>-<n>`.
    fn start(senders: Vec<Sender>, conversation: &str, tag: &str) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let accepted: Arc<Mutex<BTreeMap<u64, Vec<u8>>>> = Arc::default();
        let tasks = senders
            .into_iter()
            .enumerate()
            .map(|(s, sender)| {
                let (accepted, conv, stop) =
                    (accepted.clone(), conversation.to_owned(), stop_rx.clone());
                let tag = format!("{tag}s{s}");
                tokio::spawn(async move {
                    let mut i = 0;
                    while !*stop.borrow() {
                        let body = format!("{tag}-{i}").into_bytes();
                        let a = sender.send(&conv, body.clone(), 0).await.expect("accepted");
                        assert!(
                            accepted.lock().unwrap().insert(a.seq, body).is_none(),
                            "seq {} given out twice",
                            a.seq
                        );
                        i += 1;
                    }
                })
            })
            .collect();
        Self {
            stop,
            accepted,
            tasks,
        }
    }

    /// Messages accepted so far.
    fn count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Waits until at least `n` messages were accepted.
    async fn until(&self, n: usize) {
        tokio::time::timeout(DEADLINE, async {
            while self.count() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("messages accepted");
    }

    /// Stops the senders (each finishes its submit) and returns seq -> body.
    async fn stop(self) -> BTreeMap<u64, Vec<u8>> {
        self.stop.send(true).unwrap();
        for t in self.tasks {
            t.await.unwrap();
        }
        self.accepted.lock().unwrap().clone()
    }
}

async fn members(
    admin: &mut AdminClient<Channel>,
    conversation: &str,
    kind: ConversationKind,
    accounts: &[(String, v1::Role)],
) {
    admin
        .create_conversation(v1::CreateConversationRequest {
            conversation_id: conversation.into(),
            kind: kind as i32,
            title: String::new(),
            members: accounts
                .iter()
                .map(|(a, r)| v1::Member {
                    account_id: a.clone(),
                    role: *r as i32,
                })
                .collect(),
            default_ttl_seconds: 0,
            sub_groups: 0,
        })
        .await
        .expect("create conversation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_deliver_to_everyone_and_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let t = run_tag("c");
    let mut relays = spawn_cluster(dir.path(), 3, &shared_redis(), &t, &cql_args()).await;
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    let fp = relays[0].fingerprint;
    assert!(
        relays.iter().all(|r| r.fingerprint == fp),
        "one certificate"
    );

    // 100 volunteers with two devices each, and a publisher, provisioned
    // through different relays' admin APIs.
    let mut admins = Vec::new();
    for r in &relays {
        admins.push(admin_at(r.admin).await);
    }
    let mut keys: Vec<(String, SigningKey)> = Vec::new();
    let accounts: Vec<String> = (0..100).map(|i| format!("{t}v{i}")).collect();
    for (i, a) in accounts.iter().enumerate() {
        let admin = &mut admins[i % 3];
        create_account(admin, a).await;
        for d in ["p", "t"] {
            let id = format!("{a}.{d}");
            keys.push((id.clone(), enroll(admin, a, &id).await));
        }
    }
    let publisher = format!("{t}pub");
    create_account(&mut admins[0], &publisher).await;
    let pub_dev = format!("{publisher}.p");
    keys.push((
        pub_dev.clone(),
        enroll(&mut admins[0], &publisher, &pub_dev).await,
    ));
    let (dm, grp, chan) = (format!("{t}dm"), format!("{t}grp"), format!("{t}chan"));
    let member = |a: &String| (a.clone(), v1::Role::Member);
    members(
        &mut admins[1],
        &dm,
        ConversationKind::Direct,
        &[member(&accounts[0]), member(&accounts[1])],
    )
    .await;
    members(
        &mut admins[2],
        &grp,
        ConversationKind::Group,
        &accounts.iter().map(member).collect::<Vec<_>>(),
    )
    .await;
    let mut chan_members: Vec<_> = accounts.iter().map(member).collect();
    chan_members.push((publisher.clone(), v1::Role::Publisher));
    members(
        &mut admins[0],
        &chan,
        ConversationKind::Channel,
        &chan_members,
    )
    .await;

    // Devices spread over the three relays.
    let (net, mut bell) = net(&addrs, fp);
    let received = net.received.clone();
    let mut devices = Vec::new();
    for (k, (id, key)) in keys.iter().enumerate() {
        devices.push(connect(&net, k, id, key).await);
    }
    let ids = |f: &dyn Fn(&str) -> bool| -> Vec<String> {
        devices
            .iter()
            .map(|d| d.id.clone())
            .filter(|d| f(d))
            .collect()
    };
    let volunteers = ids(&|d| d != pub_dev);
    let everyone = ids(&|_| true);
    let dm_devices = ids(&|d| {
        d.starts_with(&format!("{}.", accounts[0])) || d.starts_with(&format!("{}.", accounts[1]))
    });
    assert_eq!(dm_devices.len(), 4);

    // 1:1: a device on relay 0; the others of both accounts sit on 1 and 2.
    let dm_sent = send_all(&[devices[0].sender.clone()], &dm, 5, "dm").await;
    // The group: five senders on different relays.
    let grp_senders: Vec<Sender> = [3, 7, 11, 16, 20]
        .iter()
        .map(|&k| devices[k].sender.clone())
        .collect();
    let grp_sent = send_all(&grp_senders, &grp, 20, "grp").await;
    // The channel: its publisher.
    let pub_sender = devices.last().unwrap().sender.clone();
    let chan_sent = send_all(std::slice::from_ref(&pub_sender), &chan, 10, "chan").await;
    assert_eq!(
        grp_sent.keys().copied().collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );

    let within = Duration::from_secs(60);
    wait_all(&received, &mut bell, &dm_devices, &dm, &dm_sent, within).await;
    wait_all(&received, &mut bell, &volunteers, &grp, &grp_sent, within).await;
    wait_all(&received, &mut bell, &everyone, &chan, &chan_sent, within).await;

    // A member added through relay 2 while relays 0 and 1 have the group's
    // roster cached: the next message reaches the newcomer.
    let late = format!("{t}late");
    create_account(&mut admins[2], &late).await;
    let late_dev = format!("{late}.p");
    let late_key = enroll(&mut admins[2], &late, &late_dev).await;
    let newcomer = connect(&net, 1, &late_dev, &late_key).await;
    admins[2]
        .add_members(v1::AddMembersRequest {
            conversation_id: grp.clone(),
            members: vec![v1::Member {
                account_id: late.clone(),
                role: v1::Role::Member as i32,
            }],
        })
        .await
        .expect("add member");
    let more = send_all(&[devices[0].sender.clone()], &grp, 1, "after-add").await;
    let mut grp_all = grp_sent.clone();
    grp_all.extend(more);
    let mut with_newcomer = volunteers.clone();
    with_newcomer.push(newcomer.id.clone());
    // The newcomer gets what was sent after it joined (it may or may not
    // also get the history before: that is for the encryption layer).
    let last = grp_all
        .iter()
        .next_back()
        .map(|(s, b)| (*s, b.clone()))
        .unwrap();
    let newcomer_has_last = || {
        received
            .got
            .lock()
            .unwrap()
            .get(&(newcomer.id.clone(), grp.clone()))
            .is_some_and(|v| v.last() == Some(&last))
    };
    tokio::time::timeout(within, async {
        while !newcomer_has_last() {
            bell.changed().await.unwrap();
        }
    })
    .await
    .expect("the newcomer on another relay gets the next message");
    wait_all(&received, &mut bell, &volunteers, &grp, &grp_all, within).await;

    // Relay 1 is killed with SIGKILL while three devices (one on each relay)
    // send. Its devices move to the survivors; every accepted message
    // reaches every device, in order, once.
    let killers: Vec<Sender> = [0, 1, 2]
        .iter()
        .map(|&k| devices[k].sender.clone())
        .collect();
    let traffic = Traffic::start(killers, &grp, "kill-");
    traffic.until(60).await;
    relays[1].child.start_kill().unwrap();
    relays[1].child.wait().await.unwrap();
    // Traffic goes on after the kill.
    traffic.until(traffic.count() + 60).await;
    grp_all.extend(traffic.stop().await);
    let head = *grp_all.keys().next_back().unwrap();
    assert_eq!(
        grp_all.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    wait_all(
        &received,
        &mut bell,
        &volunteers,
        &grp,
        &grp_all,
        Duration::from_secs(90),
    )
    .await;
    received.assert_exactly(&dm_devices, &dm, &dm_sent);
}

/// Traffic on two relays while their Redis is killed and restarted empty:
/// submits keep being accepted (the store is not Redis), the relays find
/// their leases and inboxes gone, re-announce their devices and resync
/// them, and every device ends with every accepted message, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_traffic_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path(), free_port(), &[]).await;
    let t = run_tag("r");
    let relays = spawn_cluster(dir.path(), 2, &redis.url(), &t, &cql_args()).await;
    lossy_backend_under_traffic(&relays, &t, || async {
        redis.restart().await;
    })
    .await;
}

/// Redis stops answering (a paused process: connections stay open, replies
/// never come, as in a partition or while a failover is under way). Devices
/// keep authenticating on both relays, and a post on one relay reaches the
/// devices on the other, from the store. When Redis answers again, live
/// delivery resumes and every device holds every accepted message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_blocks_no_device() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path(), free_port(), &[]).await;
    let t = run_tag("q");
    let relays = spawn_cluster(dir.path(), 2, &redis.url(), &t, &cql_args()).await;
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    let mut admin = admin_at(relays[0].admin).await;
    let accounts: Vec<String> = (0..16).map(|i| format!("{t}q{i}")).collect();
    let mut keys = Vec::new();
    for a in &accounts {
        create_account(&mut admin, a).await;
        let id = format!("{a}.p");
        keys.push((id.clone(), enroll(&mut admin, a, &id).await));
    }
    let grp = format!("{t}grp");
    let refs: Vec<&str> = accounts.iter().map(String::as_str).collect();
    create_conversation(&mut admin, &grp, ConversationKind::Group, &refs).await;
    let (net, mut bell) = net(&addrs, fp_of(&relays));
    let received = net.received.clone();
    let net = Arc::new(net);
    // Two devices before the outage, one on each relay.
    let mut devices = vec![
        connect(&net, 0, &keys[0].0, &keys[0].1).await,
        connect(&net, 1, &keys[1].0, &keys[1].1).await,
    ];

    redis.pause().await;
    // The others connect while Redis is silent, all at once, on both relays.
    let arriving: Vec<_> = keys[2..]
        .iter()
        .enumerate()
        .map(|(k, (id, key))| {
            let (net, id, key) = (net.clone(), id.clone(), key.clone());
            tokio::spawn(async move { connect(&net, k, &id, &key).await })
        })
        .collect();
    let late = tokio::time::timeout(Duration::from_secs(10), async {
        let mut out = Vec::new();
        for a in arriving {
            out.push(a.await.unwrap());
        }
        out
    })
    .await
    .expect("devices authenticate within 10 s while Redis is silent");
    devices.extend(late);
    let all: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    // Posts on relay 0 reach relay 1's devices too.
    let mut expected = tokio::time::timeout(
        DEADLINE,
        send_all(&[devices[0].sender.clone()], &grp, 3, "silent"),
    )
    .await
    .expect("submits are accepted while Redis is silent");
    wait_all(&received, &mut bell, &all, &grp, &expected, DEADLINE).await;

    redis.resume().await;
    let more = send_all(&[devices[1].sender.clone()], &grp, 3, "back").await;
    expected.extend(more);
    wait_all(&received, &mut bell, &all, &grp, &expected, DEADLINE).await;
}

/// A phone revoked through one relay while it is connected to another, and
/// Redis silent (the kick broadcast cannot get through): the relay holding
/// it re-checks its devices against the store while its inbox is
/// unreadable, and cuts the phone off with Redis still silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_revoked_while_redis_is_silent_is_cut_off_on_every_relay() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path(), free_port(), &[]).await;
    let t = run_tag("k");
    let relays = spawn_cluster(dir.path(), 2, &redis.url(), &t, &cql_args()).await;
    let mut admin = admin_at(relays[0].admin).await;
    let account = format!("{t}lost");
    create_account(&mut admin, &account).await;
    let device = format!("{account}.phone");
    let key = enroll(&mut admin, &account, &device).await;
    // Connected to relay 1 only.
    let mut cfg = ClientConfig::new(relays[1].addr, fp_of(&relays), &device, key);
    cfg.idle_timeout = CLIENT_IDLE;
    let mut phone = Client::connect(cfg).await.expect("the phone connects");

    redis.pause().await;
    admin
        .revoke_device(v1::RevokeDeviceRequest {
            device_id: device.clone(),
        })
        .await
        .expect("the store takes the revocation");
    let stopped = next_stop(&mut phone, DEADLINE).await;
    assert_eq!(
        stopped.code(),
        Some(v1::ErrorCode::DeviceRevoked),
        "{stopped}"
    );
    redis.resume().await;
}

/// The same with a 3-master Redis Cluster whose master holding relay r0's
/// inbox is killed: its replica takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_failover_under_traffic_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = RedisCluster::start(dir.path()).await;
    let t = run_tag("f");
    let relays = spawn_cluster(dir.path(), 2, &cluster.address(), &t, &cql_args()).await;
    let victim = cluster.master_of(&format!("{t}:{{r0}}:inbox")).await;
    let survivors: Vec<u16> = cluster
        .servers
        .iter()
        .map(|s| s.port)
        .filter(|p| *p != victim)
        .collect();
    lossy_backend_under_traffic(&relays, &t, || async {
        cluster.server_mut(victim).kill().await;
        // Until a replica has taken over the dead master's slots.
        cluster.wait_ok(&survivors).await;
    })
    .await;
}

async fn lossy_backend_under_traffic<F, Fut>(relays: &[RelayProcess], t: &str, disrupt: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    let fp = relays[0].fingerprint;
    let mut admin = admin_at(relays[0].admin).await;
    let accounts: Vec<String> = (0..10).map(|i| format!("{t}v{i}")).collect();
    let mut keys = Vec::new();
    for a in &accounts {
        create_account(&mut admin, a).await;
        for d in ["p", "t"] {
            let id = format!("{a}.{d}");
            keys.push((id.clone(), enroll(&mut admin, a, &id).await));
        }
    }
    let grp = format!("{t}grp");
    let refs: Vec<&str> = accounts.iter().map(String::as_str).collect();
    create_conversation(&mut admin, &grp, ConversationKind::Group, &refs).await;
    let (net, mut bell) = net(&addrs, fp);
    let received = net.received.clone();
    let mut devices = Vec::new();
    for (k, (id, key)) in keys.iter().enumerate() {
        devices.push(connect(&net, k, id, key).await);
    }
    let all: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();

    let senders = vec![devices[0].sender.clone(), devices[1].sender.clone()];
    let traffic = Traffic::start(senders, &grp, "");
    traffic.until(50).await;
    disrupt().await;
    traffic.until(traffic.count() + 50).await;
    let mut expected = traffic.stop().await;
    // A fence after the recovery: delivered live, not only by a resync.
    let fence = send_all(&[devices[2].sender.clone()], &grp, 1, "fence").await;
    expected.extend(fence);
    let head = *expected.keys().next_back().unwrap();
    assert_eq!(
        expected.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    wait_all(
        &received,
        &mut bell,
        &all,
        &grp,
        &expected,
        Duration::from_secs(60),
    )
    .await;
}

/// Two members commit in the same epoch through two different relays: the
/// store (shared by the relays) takes exactly one, the other is refused with
/// MLS_WRONG_EPOCH, and that client recovers: it processes the winner's
/// commit and its message reaches everyone, newcomer included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mls_concurrent_commits_through_two_relays_one_wins() {
    use herold_client::e2e::{E2eClient, E2eEvent};
    let dir = tempfile::tempdir().unwrap();
    let t = run_tag("m");
    let relays = spawn_cluster(dir.path(), 2, &shared_redis(), &t, &cql_args()).await;
    let fp = relays[0].fingerprint;
    let mut admin = admin_at(relays[0].admin).await;
    let names = ["p", "q", "r", "s"];
    let mut keys = HashMap::new();
    for n in names {
        let a = format!("{t}{n}");
        create_account(&mut admin, &a).await;
        keys.insert(n, enroll(&mut admin, &a, &format!("{a}.1")).await);
    }
    let acc = |n: &str| format!("{t}{n}");
    let dev = |n: &str| format!("{t}{n}.1");
    let conv = format!("{t}team");
    create_conversation(
        &mut admin,
        &conv,
        ConversationKind::Group,
        &[&acc("p"), &acc("q"), &acc("r")],
    )
    .await;
    // p on relay 0, q on relay 1, r and s on either.
    let (bell, _) = watch::channel(0u64);
    let got: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let mut clients = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        let addr = relays[i % 2].addr;
        let cfg = ClientConfig::new(addr, fp, &dev(n), keys[n].clone());
        let mls = herold_mls::MlsDevice::create(&dev(n), None).unwrap();
        let mut c = E2eClient::connect(cfg, mls).await.expect("connect");
        let mut events = c.take_events();
        let (got, bell, me) = (got.clone(), bell.clone(), n.to_string());
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let E2eEvent::Message(m) = ev {
                    let text = String::from_utf8_lossy(&m.plaintext).into_owned();
                    got.lock()
                        .unwrap()
                        .entry(me.clone())
                        .or_default()
                        .push(text);
                }
                bell.send_modify(|x| *x += 1);
            }
        });
        clients.insert(*n, c);
    }
    let until = |who: Vec<&'static str>, text: &'static str| {
        let (got, mut bell) = (got.clone(), bell.subscribe());
        async move {
            tokio::time::timeout(DEADLINE, async {
                loop {
                    let ok = who.iter().all(|w| {
                        got.lock()
                            .unwrap()
                            .get(*w)
                            .is_some_and(|v| v.iter().any(|t| t == text))
                    });
                    if ok {
                        return;
                    }
                    bell.changed().await.unwrap();
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{who:?} did not read {text:?}"));
        }
    };
    clients["p"].send(&conv, b"first", 0).await.unwrap();
    until(vec!["q", "r"], "first").await;
    let epoch = clients["q"].epoch(&conv).unwrap();
    assert_eq!(clients["p"].epoch(&conv), Some(epoch));

    // s is added by IT: p and q both prepare the commit that adds it, from
    // the same epoch, then submit at once through their own relays.
    admin
        .add_members(v1::AddMembersRequest {
            conversation_id: conv.clone(),
            members: vec![v1::Member {
                account_id: acc("s"),
                role: v1::Role::Member as i32,
            }],
        })
        .await
        .unwrap();
    let pc = clients["p"]
        .prepare_membership_commit(&conv)
        .await
        .unwrap()
        .expect("p has a commit to make");
    let qc = clients["q"]
        .prepare_membership_commit(&conv)
        .await
        .unwrap()
        .expect("q has a commit to make");
    assert_eq!((pc.from_epoch, qc.from_epoch), (epoch, epoch));
    assert_eq!(pc.added, vec![dev("s")]);
    let (pw, qw) = tokio::join!(
        clients["p"].submit_membership_commit(pc),
        clients["q"].submit_membership_commit(qc)
    );
    let (pw, qw) = (pw.unwrap(), qw.unwrap());
    assert!(
        pw ^ qw,
        "exactly one commit wins the epoch (p: {pw}, q: {qw})"
    );
    let (winner, loser) = if pw { ("p", "q") } else { ("q", "p") };
    // The loser recovers: it processes the winner's commit and sends.
    clients[loser]
        .send(&conv, b"from-the-loser", 0)
        .await
        .unwrap();
    until(vec![winner, "r", "s"], "from-the-loser").await;
    clients[winner]
        .send(&conv, b"from-the-winner", 0)
        .await
        .unwrap();
    until(vec![loser, "r", "s"], "from-the-winner").await;
    for n in names {
        assert_eq!(clients[n].epoch(&conv), Some(epoch + 1), "{n}'s epoch");
    }
    assert!(
        !got.lock()
            .unwrap()
            .get("s")
            .is_some_and(|v| v.iter().any(|t| t == "first")),
        "the newcomer cannot read what came before it"
    );
}

/// A relay drained with SIGTERM under traffic, as Kubernetes does in a
/// rolling restart: it goes not-ready at once, its devices are told to
/// reconnect (each after its own random wait) and move to the other
/// relays, its in-flight submits are answered, and it exits within its
/// grace period. Every accepted message reaches every device, in order,
/// exactly once; the devices that sent through the drained relay carry on
/// through the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_relay_hands_its_devices_over_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = run_tag("d");
    let mut extra = cql_args();
    extra.extend(
        [
            "--drain-grace-secs",
            "10",
            "--drain-reconnect-spread-ms",
            "1500",
        ]
        .map(str::to_owned),
    );
    let mut relays = spawn_cluster(dir.path(), 3, &shared_redis(), &t, &extra).await;
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    let fp = relays[0].fingerprint;
    let mut admin = admin_at(relays[1].admin).await;
    let accounts: Vec<String> = (0..30).map(|i| format!("{t}v{i}")).collect();
    let mut keys = Vec::new();
    for a in &accounts {
        create_account(&mut admin, a).await;
        let id = format!("{a}.p");
        keys.push((id.clone(), enroll(&mut admin, a, &id).await));
    }
    let grp = format!("{t}grp");
    let member = |a: &String| (a.clone(), v1::Role::Member);
    members(
        &mut admin,
        &grp,
        ConversationKind::Group,
        &accounts.iter().map(member).collect::<Vec<_>>(),
    )
    .await;
    let (net, mut bell) = net(&addrs, fp);
    let received = net.received.clone();
    let mut devices = Vec::new();
    for (k, (id, key)) in keys.iter().enumerate() {
        devices.push(connect(&net, k, id, key).await);
    }
    let everyone: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();

    // Senders on every relay, relay 0's among them.
    let senders = [0usize, 3, 1, 2]
        .iter()
        .map(|&k| devices[k].sender.clone())
        .collect();
    let traffic = Traffic::start(senders, &grp, "drain-");
    traffic.until(40).await;
    let pid = relays[0].child.id().expect("relay 0 runs");
    let term = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(term.success());
    let drain_started = tokio::time::Instant::now();
    // Not ready as soon as the signal is handled, while it still serves its
    // probes (a relay that stopped serving first fails the probe's connect).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (status, body) = common::scrape::http_get(relays[0].metrics, "/readyz").await;
        if status == 503 {
            assert_eq!(body, "not ready: draining\n");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(15), relays[0].child.wait())
        .await
        .expect("the drained relay exits within its grace period")
        .unwrap();
    assert!(status.success(), "a drain ends with exit code 0: {status}");
    // Well within the 10 s grace: no session had to be cut off.
    assert!(
        drain_started.elapsed() < Duration::from_secs(9),
        "the drain took {:?}",
        drain_started.elapsed()
    );
    // Traffic goes on through the others, relay 0's sender included.
    traffic.until(traffic.count() + 60).await;
    let all = traffic.stop().await;
    let head = *all.keys().next_back().unwrap();
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>(),
        "every seq accepted once"
    );
    wait_all(
        &received,
        &mut bell,
        &everyone,
        &grp,
        &all,
        Duration::from_secs(60),
    )
    .await;
}
