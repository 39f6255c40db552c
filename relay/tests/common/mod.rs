//! Test support: a relay on loopback, enrollment, clients.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use herold_client::admin::AdminClient;
use herold_client::{Client, ClientConfig, Envelope, Event, generate_key};
use herold_proto::v1;
use herold_relay::{Config, Relay};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

pub mod scrape;

/// The wall clock in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Upper bound for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct TestRelay {
    pub addr: SocketAddr,
    /// The TCP fallback (WebSocket over TLS), unless turned off.
    pub tcp_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// The operations listener (`/metrics`, `/healthz`, `/readyz`).
    pub metrics_addr: SocketAddr,
    pub fingerprint: [u8; 32],
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestRelay {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(Config::dev(dir)).await
    }

    pub async fn start_with(config: Config) -> Self {
        Self::started(Relay::bind(config).await.expect("bind relay"))
    }

    /// A relay on the given store and router.
    pub async fn start_on(
        config: Config,
        store: std::sync::Arc<dyn herold_store::Store>,
        router: std::sync::Arc<dyn herold_router::Router>,
    ) -> Self {
        Self::started(
            Relay::bind_with(config, store, router)
                .await
                .expect("bind relay"),
        )
    }

    /// A relay on an embedded store in `dir` and an in-memory router,
    /// with the store at hand to read what the relay keeps.
    pub async fn start_embedded(
        dir: &Path,
    ) -> (Self, std::sync::Arc<herold_store::embedded::EmbeddedStore>) {
        Self::start_embedded_with(Config::dev(dir), dir).await
    }

    /// Like [`TestRelay::start_embedded`], with `config`.
    pub async fn start_embedded_with(
        config: Config,
        dir: &Path,
    ) -> (Self, std::sync::Arc<herold_store::embedded::EmbeddedStore>) {
        let store = std::sync::Arc::new(
            herold_store::embedded::EmbeddedStore::open(
                dir.join("store"),
                herold_store::embedded::EmbeddedConfig::default(),
            )
            .unwrap(),
        );
        let relay = Self::start_on(
            config,
            store.clone(),
            std::sync::Arc::new(herold_router::memory::MemoryRouter::default()),
        )
        .await;
        (relay, store)
    }

    fn started(relay: Relay) -> Self {
        let addr = relay.local_addr().unwrap();
        let tcp_addr = relay.tcp_addr();
        let admin_addr = relay.admin_addr().unwrap();
        let metrics_addr = relay.metrics_addr().unwrap();
        let fingerprint = herold_client::tls::parse_fingerprint(relay.fingerprint()).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay.run(async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            tcp_addr,
            admin_addr,
            metrics_addr,
            fingerprint,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Starts the drain now; the returned future waits until the relay
    /// stopped.
    pub fn begin_stop(mut self) -> impl std::future::Future<Output = ()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        async move { self.stop().await }
    }

    /// Drains and stops the relay.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(DEADLINE, t)
                .await
                .expect("relay stops in time")
                .expect("relay task")
                .expect("relay run");
        }
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        admin_at(self.admin_addr).await
    }

    pub async fn account(&self, id: &str) {
        create_account(&mut self.admin().await, id).await;
    }

    pub async fn device(&self, account: &str, device: &str) -> SigningKey {
        enroll(&mut self.admin().await, account, device).await
    }

    pub async fn conversation(&self, id: &str, kind: v1::ConversationKind, members: &[&str]) {
        create_conversation(&mut self.admin().await, id, kind, members).await;
    }

    /// Accounts `names`, each with one device `<name>.phone`, all members
    /// of the group `conversation`; the devices' keys in the same order.
    pub async fn group_of<const N: usize>(
        &self,
        conversation: &str,
        names: [&str; N],
    ) -> [SigningKey; N] {
        let mut keys = Vec::with_capacity(N);
        for a in names {
            self.account(a).await;
            keys.push(self.device(a, &format!("{a}.phone")).await);
        }
        self.conversation(conversation, v1::ConversationKind::Group, &names)
            .await;
        keys.try_into().expect("one key per name")
    }

    /// A fresh enrollment code for `account` (valid for an hour).
    pub async fn issue_code(&self, account: &str) -> String {
        self.admin()
            .await
            .issue_enrollment_codes(v1::IssueEnrollmentCodesRequest {
                account_ids: vec![account.to_owned()],
                tag: String::new(),
                ttl_seconds: 3600,
                only_without_devices: false,
            })
            .await
            .expect("issue a code")
            .into_inner()
            .codes
            .remove(0)
            .code
    }

    pub async fn client(&self, device: &str, key: &SigningKey) -> Client {
        Client::connect(ClientConfig::new(
            self.addr,
            self.fingerprint,
            device,
            key.clone(),
        ))
        .await
        .expect("client connects")
    }
}

impl TestRelay {
    /// A dev relay whose admin API knows these operators:
    /// `(name, role, token, groups)`.
    pub async fn start_with_operators(
        dir: &Path,
        operators: &[(&str, herold_relay::operators::OperatorRole, &str, &[&str])],
    ) -> Self {
        let mut config = Config::dev(dir);
        config.admin_operators = operators
            .iter()
            .map(
                |(name, role, token, groups)| herold_relay::operators::OperatorEntry {
                    name: (*name).into(),
                    role: *role,
                    token: Some((*token).into()),
                    cert_sha256: None,
                    groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                },
            )
            .collect();
        Self::start_with(config).await
    }

    /// An admin client sending `token`.
    pub async fn admin_as(&self, token: &str) -> TokenAdmin {
        admin_with_token(self.admin_addr, Some(token)).await
    }

    /// The unauthenticated enrollment client.
    pub async fn enrollment(&self) -> herold_client::admin::EnrollmentClient<Channel> {
        herold_client::admin::EnrollmentClient::connect(format!("http://{}", self.admin_addr))
            .await
            .expect("enrollment connects")
    }

    /// Enrolls a fresh key as `device` with a one-time `code`.
    pub async fn enroll_with_code(&self, code: &str, device: &str) -> SigningKey {
        let key = generate_key().unwrap();
        self.enrollment()
            .await
            .enroll(v1::EnrollRequest {
                code: code.into(),
                device_id: device.into(),
                public_key: key.verifying_key().to_bytes().to_vec(),
            })
            .await
            .expect("enroll with code");
        key
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub struct Bearer(pub Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.0 {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

pub type TokenAdmin = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

pub async fn admin_with_token(addr: SocketAddr, token: Option<&str>) -> TokenAdmin {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("admin connects");
    let header = token.map(|t| format!("Bearer {t}").parse().unwrap());
    AdminClient::with_interceptor(channel, Bearer(header))
}

pub async fn admin_at(addr: SocketAddr) -> AdminClient<Channel> {
    AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("admin connects")
}

pub async fn create_account(admin: &mut AdminClient<Channel>, id: &str) {
    admin
        .create_account(v1::CreateAccountRequest {
            account_id: id.into(),
            display_name: String::new(),
            tags: Vec::new(),
        })
        .await
        .expect("create account");
}

pub async fn enroll(admin: &mut AdminClient<Channel>, account: &str, device: &str) -> SigningKey {
    let key = generate_key().unwrap();
    admin
        .register_device(v1::RegisterDeviceRequest {
            account_id: account.into(),
            device_id: device.into(),
            public_key: key.verifying_key().to_bytes().to_vec(),
        })
        .await
        .expect("register device");
    key
}

pub async fn create_conversation(
    admin: &mut AdminClient<Channel>,
    id: &str,
    kind: v1::ConversationKind,
    members: &[&str],
) {
    admin
        .create_conversation(v1::CreateConversationRequest {
            conversation_id: id.into(),
            kind: kind as i32,
            title: String::new(),
            members: members
                .iter()
                .map(|a| v1::Member {
                    account_id: (*a).into(),
                    role: v1::Role::Member as i32,
                })
                .collect(),
            default_ttl_seconds: 0,
            sub_groups: 0,
        })
        .await
        .expect("create conversation");
}

/// Receives `n` messages, failing on timeout or a stopped client.
pub async fn receive(client: &mut Client, n: usize) -> Vec<Envelope> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(DEADLINE, client.next_event()).await {
            Ok(Some(Event::Message(m))) => out.push(m),
            Ok(Some(Event::Stopped(e))) => panic!("client stopped: {e}"),
            Ok(Some(_)) => {}
            Ok(None) => panic!("client gone after {} of {n} messages", out.len()),
            Err(_) => panic!("timed out after {} of {n} messages", out.len()),
        }
    }
    out
}

/// Receives messages until the relay reports the sync complete.
pub async fn receive_until_synced(client: &mut Client) -> Vec<Envelope> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, client.next_event()).await {
            Ok(Some(Event::Message(m))) => out.push(m),
            Ok(Some(Event::Synced { .. })) => return out,
            Ok(Some(Event::Stopped(e))) => panic!("client stopped: {e}"),
            Ok(Some(_)) => {}
            Ok(None) => panic!("client gone"),
            Err(_) => panic!("timed out waiting for sync, got {}", out.len()),
        }
    }
}

/// Receives until the message with `fence` as payload arrives; returns what
/// came before it. With a fence sent after everything else, an extra or
/// duplicated message shows up here without waiting on a timer.
pub async fn receive_until_fence(client: &mut Client, fence: &[u8]) -> Vec<Envelope> {
    let mut out = Vec::new();
    loop {
        let m = receive(client, 1).await.remove(0);
        if m.ciphertext == fence {
            return out;
        }
        out.push(m);
    }
}

/// A relay binary running as a child process.
pub struct RelayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The operations listener (`/metrics`, `/healthz`, `/readyz`).
    pub metrics: SocketAddr,
    pub fingerprint: [u8; 32],
}

/// Starts `herold-relay --dev` on `dir` with OS-chosen ports and reads the
/// addresses it prints.
pub async fn spawn_relay(dir: &Path, extra: &[String]) -> RelayProcess {
    // HEROLD_TEST_RELAY_LOG=herold_relay=debug shows the relays' logs.
    let log = std::env::var("HEROLD_TEST_RELAY_LOG").unwrap_or_else(|_| "warn".into());
    spawn_relay_logging(dir, extra, &log, false).await
}

/// Like [`spawn_relay`] with the log filter `log`; with `capture`, the
/// relay's stderr (its log) is piped into `RelayProcess::child`.
pub async fn spawn_relay_logging(
    dir: &Path,
    extra: &[String],
    log: &str,
    capture: bool,
) -> RelayProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herold-relay"))
        .args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("HEROLD_LOG", log)
        .stdout(Stdio::piped())
        .stderr(if capture {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("spawn herold-relay");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut admin, mut metrics, mut fp) = (None, None, None, None);
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let mut words = line.split_whitespace();
            match (words.next(), words.last()) {
                (Some("quic"), Some(a)) => addr = Some(a.parse().unwrap()),
                (Some("admin"), Some(a)) => {
                    admin = Some(a.trim_start_matches("http://").parse().unwrap())
                }
                (Some("metrics"), Some(a)) => {
                    metrics = Some(
                        a.trim_start_matches("http://")
                            .trim_end_matches("/metrics")
                            .parse()
                            .unwrap(),
                    )
                }
                (Some("fingerprint"), Some(f)) => {
                    fp = Some(herold_client::tls::parse_fingerprint(f).unwrap())
                }
                _ => {}
            }
            if addr.is_some() && admin.is_some() && metrics.is_some() && fp.is_some() {
                break;
            }
        }
    })
    .await
    .expect("relay prints its addresses");
    // Keep draining stdout so the relay never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    RelayProcess {
        child,
        addr: addr.expect("quic address"),
        admin: admin.expect("admin address"),
        metrics: metrics.expect("metrics address"),
        fingerprint: fp.expect("fingerprint"),
    }
}

/// The next `Stopped` event's error, failing after `within`.
pub async fn next_stop(client: &mut Client, within: Duration) -> herold_client::ClientError {
    tokio::time::timeout(within, async {
        loop {
            match client.next_event().await {
                Some(Event::Stopped(e)) => return e,
                Some(_) => {}
                None => panic!("client gone without a reason"),
            }
        }
    })
    .await
    .expect("client stopped in time")
}

/// The next `Disconnected` event's reason.
pub async fn next_disconnect(client: &mut Client) -> String {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match client.next_event().await {
                Some(Event::Disconnected { reason }) => return reason,
                Some(_) => {}
                None => panic!("client gone"),
            }
        }
    })
    .await
    .expect("client disconnected in time")
}

/// Sends from eight concurrent tasks until `kill_after` messages are
/// accepted, then kills the relay with SIGKILL; returns every acceptance
/// (seq -> body).
pub async fn send_until_killed(
    relay: &mut RelayProcess,
    client: Client,
    conversation: &str,
    kill_after: usize,
) -> std::collections::BTreeMap<u64, Vec<u8>> {
    use std::sync::{Arc, Mutex};
    let accepted: Arc<Mutex<std::collections::BTreeMap<u64, Vec<u8>>>> = Arc::default();
    let mut senders = Vec::new();
    for s in 0..8 {
        let (tx, accepted, conv) = (client.sender(), accepted.clone(), conversation.to_owned());
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let body = format!("s{s}-{i}").into_bytes();
                match tx.send(&conv, body.clone(), 0).await {
                    Ok(a) => {
                        let prev = accepted.lock().unwrap().insert(a.seq, body);
                        assert!(prev.is_none(), "seq {} given out twice", a.seq);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::timeout(DEADLINE, async {
        while accepted.lock().unwrap().len() < kill_after {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("enough messages accepted before the kill");
    relay.child.start_kill().unwrap();
    relay.child.wait().await.unwrap();
    let acknowledged = accepted.lock().unwrap().clone();
    for s in senders {
        s.abort();
    }
    acknowledged
}

/// Syncs `reader` and asserts every acknowledged message is stored, the
/// order has no gaps, and numbering continues after the restart.
pub async fn assert_nothing_lost(
    reader: &mut Client,
    conversation: &str,
    acknowledged: &std::collections::BTreeMap<u64, Vec<u8>>,
) {
    let stored: std::collections::BTreeMap<u64, Vec<u8>> = receive_until_synced(reader)
        .await
        .into_iter()
        .map(|m| (m.seq, m.ciphertext))
        .collect();
    for (seq, body) in acknowledged {
        assert_eq!(stored.get(seq), Some(body), "accepted message #{seq} lost");
    }
    let head = *stored.keys().last().unwrap();
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>(),
        "no gaps in the order"
    );
    let a = reader
        .send(conversation, b"after restart".to_vec(), 0)
        .await
        .unwrap();
    assert_eq!(a.seq, head + 1, "the order continues where it stopped");
}

/// The CQL store settings of clustered relays in tests: the test server of
/// `HEROLD_TEST_CQL` (scripts/test.sh), its keyspace, one replica.
pub fn cql_args() -> Vec<String> {
    let cp = match std::env::var("HEROLD_TEST_CQL") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "HEROLD_TEST_CQL is not set: a cluster of relays shares the CQL store. Run \
             scripts/test.sh, or `scripts/cassandra.sh start` and HEROLD_TEST_CQL=127.0.0.1:9042"
        ),
    };
    let ks = std::env::var("HEROLD_TEST_CQL_KEYSPACE").unwrap_or_else(|_| "herold_test".into());
    [
        "--cql-contact-points",
        &cp,
        "--cql-keyspace",
        &ks,
        "--cql-consistency",
        "LOCAL_ONE",
        "--cql-replication",
        "simple:1",
    ]
    .map(str::to_owned)
    .to_vec()
}
