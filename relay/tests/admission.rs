//! Who may start talking to a relay, bounded: connections awaiting
//! authentication per address, handshakes a second per address, QUIC Retry
//! under load, authentications a second per account, failed enrollments a
//! second per address. Each limit is hit from one address (or account)
//! while a device elsewhere keeps sending and receiving. Loopback has many
//! addresses: the "attacker" binds 127.0.0.2, the others 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::net::{IpAddr, SocketAddr};

use common::scrape::Scrape;
use common::*;
use herold_client::ClientError;
use herold_client::raw::RawConnection;
use herold_proto::v1::{self, ErrorCode};
use herold_relay::Config;
use tonic::Code;

const ELSEWHERE: &str = "127.0.0.2";

fn endpoint_at(ip: &str) -> quinn::Endpoint {
    let bind = SocketAddr::new(ip.parse().unwrap(), 0);
    quinn::Endpoint::client(bind).unwrap()
}

/// Connects (TLS and the stream) without authenticating.
async fn open(ep: &quinn::Endpoint, relay: &TestRelay) -> Result<RawConnection, ClientError> {
    RawConnection::connect_via(ep, relay.addr, relay.fingerprint).await
}

/// A relay with alice and bob in group "g", and bob's client: the device
/// whose service must not suffer.
async fn relay_with_bystanders(config: Config) -> (TestRelay, Bystanders) {
    let relay = TestRelay::start_with(config).await;
    let [alice, bob] = relay.group_of("g", ["alice", "bob"]).await;
    let bob = relay.client("bob.phone", &bob).await;
    (relay, Bystanders { alice, bob })
}

struct Bystanders {
    alice: ed25519_dalek::SigningKey,
    bob: herold_client::Client,
}

impl Bystanders {
    /// Alice connects (from 127.0.0.1), sends, and bob receives it.
    async fn still_served(&mut self, relay: &TestRelay, text: &str) {
        let alice = relay.client("alice.phone", &self.alice).await;
        alice.send("g", text.as_bytes().to_vec(), 0).await.unwrap();
        let got = receive(&mut self.bob, 1).await;
        assert_eq!(got[0].ciphertext, text.as_bytes());
    }
}

fn refused(e: &ClientError) -> bool {
    matches!(e, ClientError::Refused)
}

async fn metric(relay: &TestRelay, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (scrape, _) = Scrape::take(relay.metrics_addr).await;
    scrape.get(name, labels)
}

/// An address may hold `max_unauthenticated_per_address` connections that
/// have not authenticated; beyond, it is refused before TLS, and it gets
/// its places back as its connections end. Other addresses are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_awaiting_authentication_are_bounded_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.limits.max_unauthenticated_per_address = 2;
    let (relay, mut others) = relay_with_bystanders(config).await;
    let ep = endpoint_at(ELSEWHERE);
    let first = open(&ep, &relay).await.unwrap();
    let _second = open(&ep, &relay).await.unwrap();
    let Err(e) = open(&ep, &relay).await else {
        panic!("a third is admitted");
    };
    assert!(refused(&e), "{e}");
    assert!(
        metric(
            &relay,
            "herold_relay_connections_refused_total",
            &[("reason", "address")]
        )
        .await
            >= 1.0
    );
    others.still_served(&relay, "from elsewhere").await;

    // Gone, it frees its place.
    first.connection().unwrap().close(0u32.into(), b"bye");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match open(&ep, &relay).await {
            Ok(_) => break,
            Err(e) if refused(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the freed place is not given back: {e}"),
        }
    }
    relay.stop().await;
}

/// An address may start `handshake_rate_per_address` handshakes a second,
/// with a burst of 4 s of it; beyond, refused before TLS. Authenticated or
/// not makes no difference to the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_rate_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.limits.handshake_rate_per_address = 1;
    let (relay, mut others) = relay_with_bystanders(config).await;
    let ep = endpoint_at(ELSEWHERE);
    let mut held = Vec::new();
    let e = loop {
        match open(&ep, &relay).await {
            Ok(c) => held.push(c),
            Err(e) => break e,
        }
        assert!(held.len() <= 5, "no limit after {} handshakes", held.len());
    };
    assert!(refused(&e), "{e}");
    // The burst is 4 s of 1 a second (a token may come back meanwhile).
    assert!((4..=5).contains(&held.len()), "{}", held.len());
    assert!(
        metric(
            &relay,
            "herold_relay_connections_refused_total",
            &[("reason", "address_rate")]
        )
        .await
            >= 1.0
    );
    // 127.0.0.1 has its own bucket (bob and alice used 2 of its 4).
    others.still_served(&relay, "unaffected").await;
    relay.stop().await;
}

/// Above `retry_above` connections awaiting authentication, a new one must
/// prove its address with a QUIC Retry first; a real peer does so without
/// noticing and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_connections_prove_their_address_with_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.limits.retry_above = 0;
    let (relay, mut others) = relay_with_bystanders(config).await;
    assert!(metric(&relay, "herold_relay_quic_retries_total", &[]).await >= 1.0);
    others.still_served(&relay, "after a retry").await;
    relay.stop().await;
}

/// An account's devices may authenticate `auth_rate_per_account` times a
/// second (burst 4 s): a script reconnecting in a loop is told
/// RATE_LIMITED with the time to wait; other accounts are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_reconnecting_in_a_loop_is_slowed_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.limits.auth_rate_per_account = 1;
    let (relay, mut others) = relay_with_bystanders(config).await;
    relay.account("mallory").await;
    let key = relay.device("mallory", "mallory.script").await;
    let mut n = 0;
    let e = loop {
        let mut c = RawConnection::connect(relay.addr, relay.fingerprint)
            .await
            .unwrap();
        match c.authenticate("mallory.script", &key).await {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n <= 5, "no limit after {n} authentications");
    };
    match &e {
        ClientError::Relay { code, message, .. } => {
            assert_eq!(*code, ErrorCode::RateLimited);
            assert!(message.contains("reconnect in"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert!((4..=5).contains(&n), "{n}");
    others.still_served(&relay, "alice's own bucket").await;
    relay.stop().await;
}

/// Enroll needs no account: failed attempts from an address are limited
/// (`enroll_failure_rate`, burst 4 s), and past the limit even a good code
/// is turned away without the store or the audit log being touched, while
/// another address enrolls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_enrollments_are_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.limits.enroll_failure_rate = 1;
    let relay = TestRelay::start_with(config).await;
    relay.account("anna").await;
    let mut admin = relay.admin().await;
    let good = relay.issue_code("anna").await;
    let key = herold_client::generate_key().unwrap();
    let req = |code: &str, device: &str| v1::EnrollRequest {
        code: code.into(),
        device_id: device.into(),
        public_key: key.verifying_key().to_bytes().to_vec(),
    };
    let at = |ip: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        let addr = relay.admin_addr;
        async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .local_address(Some(ip))
                .connect()
                .await
                .unwrap();
            herold_client::admin::EnrollmentClient::new(channel)
        }
    };
    let mut guesser = at(ELSEWHERE).await;
    let mut failures = 0;
    let refusal = loop {
        let s = guesser
            .enroll(req("AAAA-BBBB-CCCC", "anna.tablet"))
            .await
            .unwrap_err();
        if s.code() == Code::ResourceExhausted {
            break s;
        }
        failures += 1;
        assert!(failures <= 5, "no limit after {failures} failures");
    };
    assert!((4..=5).contains(&failures), "{failures}");
    assert!(
        refusal.message().contains("try again in"),
        "{}",
        refusal.message()
    );
    // The good code, from the same address: turned away, and not used up.
    let s = guesser.enroll(req(&good, "anna.tablet")).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(metric(&relay, "herold_relay_enroll_rate_limited_total", &[]).await >= 2.0);
    // The audit log has the failures (each a `started` row and its
    // outcome), not the refusals.
    let audit = admin
        .list_audit_log(v1::ListAuditLogRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    let rows = |started: bool| {
        audit
            .iter()
            .filter(|e| e.action == "Enroll" && (e.outcome == "started") == started)
            .count()
    };
    assert_eq!((rows(true), rows(false)), (failures, failures), "{audit:?}");
    // From another address the same code enrolls.
    let mut office = at("127.0.0.1").await;
    let device = office.enroll(req(&good, "anna.tablet")).await.unwrap();
    assert_eq!(device.into_inner().account_id, "anna");
    relay.stop().await;
}

/// A connection that stays silent for `idle_timeout` is closed by QUIC;
/// a device whose SDK keeps the connection alive is not, and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.limits.idle_timeout = std::time::Duration::from_secs(2);
    let relay = TestRelay::start_with(config).await;
    let [ka, kb] = relay.group_of("g", ["alice", "bob"]).await;
    // Bob's SDK pings within the relay's idle timeout.
    let mut cfg = herold_client::ClientConfig::new(relay.addr, relay.fingerprint, "bob.phone", kb);
    cfg.idle_timeout = std::time::Duration::from_secs(2);
    let mut bob = herold_client::Client::connect(cfg).await.unwrap();
    // A peer that says nothing (and pings only every 30 s).
    let ep = endpoint_at("127.0.0.1");
    let silent = RawConnection::connect_via_idle(
        &ep,
        relay.addr,
        relay.fingerprint,
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    let closed = tokio::time::timeout(DEADLINE, silent.connection().unwrap().closed())
        .await
        .expect("the silent connection is closed");
    assert!(
        matches!(closed, quinn::ConnectionError::TimedOut),
        "{closed}"
    );
    let alice = relay.client("alice.phone", &ka).await;
    alice.send("g", b"still here".to_vec(), 0).await.unwrap();
    assert_eq!(receive(&mut bob, 1).await[0].ciphertext, b"still here");
    relay.stop().await;
}

/// A connection has one control stream and room for three more
/// bidirectional streams, and three unidirectional ones (what a browser's
/// HTTP/3 needs; the relay reads none of a device's): a peer cannot make
/// the relay keep state for streams without end (QUIC flow control
/// refuses the next one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_are_bounded() {
    use futures_util::FutureExt as _;
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let ep = endpoint_at("127.0.0.1");
    let raw = open(&ep, &relay).await.unwrap();
    let conn = raw.connection().unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            conn.open_bi()
                .now_or_never()
                .expect("within the limit")
                .unwrap(),
        );
    }
    assert!(conn.open_bi().now_or_never().is_none(), "a fifth stream");
    let mut uni = Vec::new();
    for _ in 0..3 {
        uni.push(
            conn.open_uni()
                .now_or_never()
                .expect("HTTP/3's three uni streams")
                .unwrap(),
        );
    }
    assert!(
        conn.open_uni().now_or_never().is_none(),
        "a fourth uni stream"
    );
    relay.stop().await;
}
