#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

//! Redis servers owned by one test (so it may kill and restart them), and
//! the clustered relays that use them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::common::{DEADLINE, RelayProcess, spawn_relay};

/// The shared test Redis from scripts/redis.sh (`HEROLD_TEST_REDIS`).
pub fn shared_redis() -> String {
    match std::env::var("HEROLD_TEST_REDIS") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "HEROLD_TEST_REDIS is not set: these tests need a real Redis. Run scripts/test.sh, \
             or `scripts/redis.sh start` and `eval $(scripts/redis.sh env)`"
        ),
    }
}

/// A port that is free now, with its cluster-bus port (+10000) free too.
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One `redis-server` child process without persistence.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start(dir: &Path, port: u16, extra: &[&str]) -> Self {
        let dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Self {
            port,
            dir,
            args: extra.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (scripts/redis.sh install)");
        self.child = Some(child);
        wait_ping(self.port).await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: everything in memory is gone.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.start_kill().unwrap();
            c.wait().await.unwrap();
        }
    }

    /// SIGSTOP: connections stay open and nothing answers, as in a
    /// partition or while a failover is under way.
    pub async fn pause(&self) {
        self.signal("-STOP").await;
    }

    /// SIGCONT after [`RedisServer::pause`]: answers again, data kept.
    pub async fn resume(&self) {
        self.signal("-CONT").await;
    }

    async fn signal(&self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("redis-server runs");
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

/// Waits until the server at `port` answers PING.
pub async fn wait_ping(port: u16) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("redis-server answers PING");
}

/// `CLUSTER INFO` says the cluster is whole, as seen from every node.
pub async fn cluster_ok(ports: &[u16]) -> bool {
    for p in ports {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{p}")) else {
            return false;
        };
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        let info: String = match redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await {
            Ok(i) => i,
            Err(_) => return false,
        };
        if !info.contains("cluster_state:ok") {
            return false;
        }
    }
    true
}

/// A 3-master Redis Cluster with one replica each, owned by the test.
pub struct RedisCluster {
    pub servers: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start(dir: &Path) -> Self {
        let mut servers = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let conf = format!("nodes-{port}.conf");
            servers.push(
                RedisServer::start(
                    dir,
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-node-timeout",
                        "1000",
                    ],
                )
                .await,
            );
        }
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
        let c = Self { servers };
        c.wait_ok(&ports).await;
        c
    }

    pub async fn wait_ok(&self, ports: &[u16]) {
        tokio::time::timeout(DEADLINE, async {
            while !cluster_ok(ports).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the cluster reaches cluster_state:ok");
    }

    pub fn address(&self) -> String {
        let hosts: Vec<String> = self.servers[..3]
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("cluster://{}", hosts.join(","))
    }

    /// The port of the master serving `key` now.
    pub async fn master_of(&self, key: &str) -> u16 {
        let client = redis::cluster::ClusterClient::new(vec![self.servers[0].url()]).unwrap();
        let mut c = client.get_async_connection().await.unwrap();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        let client = redis::Client::open(self.servers[0].url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await
            .unwrap();
        let redis::Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS: {slots:?}")
        };
        for r in ranges {
            let redis::Value::Array(parts) = r else {
                continue;
            };
            let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi))) =
                (parts.first(), parts.get(1))
            else {
                continue;
            };
            if (*lo..=*hi).contains(&i64::from(slot))
                && let Some(redis::Value::Array(master)) = parts.get(2)
                && let Some(redis::Value::Int(port)) = master.get(1)
            {
                return u16::try_from(*port).unwrap();
            }
        }
        panic!("no master for slot {slot}")
    }

    pub fn server_mut(&mut self, port: u16) -> &mut RedisServer {
        self.servers.iter_mut().find(|s| s.port == port).unwrap()
    }
}

/// Starts `n` relay processes sharing `redis` (with key `prefix`) and the
/// CQL store, on one data directory (so they share the dev certificate:
/// the first creates it, the others read it).
pub async fn spawn_cluster(
    dir: &Path,
    n: usize,
    redis: &str,
    prefix: &str,
    cql: &[String],
) -> Vec<RelayProcess> {
    let mut relays = Vec::new();
    for i in 0..n {
        let mut extra: Vec<String> = cql.to_vec();
        extra.extend(
            [
                "--redis",
                redis,
                "--redis-prefix",
                prefix,
                "--redis-lease-ms",
                "1500",
                "--node-id",
                &format!("r{i}"),
            ]
            .map(str::to_owned),
        );
        relays.push(spawn_relay(dir, &extra).await);
    }
    relays
}
