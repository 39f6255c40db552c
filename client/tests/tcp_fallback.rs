//! The CLI on a network that blocks UDP to the relay: its QUIC datagrams
//! vanish (a UDP socket on the relay's address takes them and answers
//! nothing, as a firewall that drops them would), and it falls back by
//! itself to the relay's TCP fallback (a WebSocket over TLS on the same
//! address and port). It still sends and receives, end to end encrypted,
//! with a device on QUIC on the other side, both ways, texts and photos
//! (a photo on a WebSocket of its own, authenticated as a session is).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use herold_relay::{Config, Relay};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const DEADLINE: Duration = Duration::from_secs(60);

/// The CLI with this test's home, relay and admin API.
struct Cli {
    home: std::path::PathBuf,
    fingerprint: String,
    admin: String,
}

impl Cli {
    fn command(&self, relay: SocketAddr, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_herold"));
        c.arg("--home")
            .arg(&self.home)
            .arg("--relay")
            .arg(relay.to_string())
            .arg("--fingerprint")
            .arg(&self.fingerprint)
            .arg("--admin")
            .arg(&self.admin)
            .args(args)
            .env_remove("HEROLD_HOME")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs to the end; panics with its output unless it succeeded.
    /// Returns what it printed on stdout and stderr.
    async fn run(&self, relay: SocketAddr, args: &[&str]) -> (String, String) {
        let out = tokio::time::timeout(DEADLINE, self.command(relay, args).output())
            .await
            .unwrap_or_else(|_| panic!("herold {args:?} did not finish"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "herold {args:?} failed: {}\n{stdout}\n{stderr}",
            out.status,
        );
        (stdout, stderr)
    }

    /// `herold listen --count 1` as `device`, started.
    fn listen(&self, relay: SocketAddr, device: &str) -> Child {
        self.command(relay, &["listen", "--device", device, "--count", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Waits for `child` to print a line containing `text`.
async fn prints(child: &mut Child, text: &str) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(text) {
                return true;
            }
        }
        false
    })
    .await;
    if found != Ok(true) {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err).await;
        }
        panic!("the listener never printed {text:?}: {err}");
    }
}

/// The relay's metrics as text.
async fn metrics(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The sum of `name`'s samples whose labels contain `label`.
fn sample(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn relay(dir: &Path) -> (Relay, SocketAddr, SocketAddr) {
    let mut config = Config::dev(dir);
    // QUIC and the fallback on ports of their own: the test puts a UDP
    // black hole on the fallback's port number.
    config.tcp_listen = Some(Some(SocketAddr::from(([127, 0, 0, 1], 0))));
    let relay = Relay::bind(config).await.unwrap();
    let quic = relay.local_addr().unwrap();
    let tcp = relay.tcp_addr().expect("the TCP fallback is on by default");
    (relay, quic, tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_falls_back_to_tcp_when_udp_is_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, quic, tcp) = relay(dir.path()).await;
    // UDP to the address the blocked devices use vanishes.
    let black_hole = tokio::net::UdpSocket::bind(tcp)
        .await
        .expect("the fallback's port number is free on UDP");
    let admin = format!("http://{}", relay.admin_addr().unwrap());
    let metrics_addr = relay.metrics_addr().unwrap();
    let cli = Cli {
        home: dir.path().join("home"),
        fingerprint: relay.fingerprint().to_owned(),
        admin,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));

    for account in ["alice", "bob"] {
        cli.run(quic, &["admin", "account", "create", account])
            .await;
        cli.run(quic, &["device", "new", account, "phone"]).await;
    }
    cli.run(
        quic,
        &[
            "admin", "group", "g1", "--member", "alice", "--member", "bob",
        ],
    )
    .await;
    let before = metrics(metrics_addr).await;

    // Alice is behind the firewall; Bob is on QUIC. Alice sends, Bob reads.
    let mut bob = cli.listen(quic, "bob.phone");
    let (_, said) = cli
        .run(
            tcp,
            &[
                "send",
                "--device",
                "alice.phone",
                "g1",
                "over TCP, from behind a firewall",
            ],
        )
        .await;
    assert!(
        said.contains("TCP fallback"),
        "the CLI says it fell back: {said}"
    );
    prints(&mut bob, "over TCP, from behind a firewall").await;
    // Bob answers; Alice reads over TCP.
    let mut alice = cli.listen(tcp, "alice.phone");
    let (_, said) = cli
        .run(
            quic,
            &["send", "--device", "bob.phone", "g1", "received, over QUIC"],
        )
        .await;
    assert!(!said.contains("TCP fallback"), "Bob is on QUIC: {said}");
    prints(&mut alice, "received, over QUIC").await;

    let after = metrics(metrics_addr).await;
    let opened = |t: &str, label: &str| sample(t, "herold_relay_connections_opened_total", label);
    let ws = opened(&after, "transport=\"websocket\"") - opened(&before, "transport=\"websocket\"");
    let quic_opened = opened(&after, "transport=\"quic\"") - opened(&before, "transport=\"quic\"");
    assert_eq!(
        ws, 2.0,
        "Alice's send and listen came over the TCP fallback"
    );
    assert_eq!(quic_opened, 2.0, "Bob's listen and send came over QUIC");
    // Alice's CLI did try QUIC first: its datagrams reached the black hole.
    let mut buf = [0u8; 2048];
    let mut datagrams = 0;
    while black_hole.try_recv_from(&mut buf).is_ok() {
        datagrams += 1;
    }
    assert!(datagrams > 0, "the CLI never tried QUIC");

    // A photo crosses the fallback both ways, on WebSockets of its own
    // (docs/protocol.md section 20.1): uploaded from behind the firewall and fetched
    // over QUIC, then sent over QUIC and fetched from behind the firewall.
    let photo = dir.path().join("pothole.jpg");
    let bytes: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&photo, &bytes).unwrap();
    let intact = format!("sha256 {}", hex::encode(Sha256::digest(&bytes)));
    let photo = photo.to_str().unwrap();
    let mut bob = cli.listen(quic, "bob.phone");
    cli.run(
        tcp,
        &["send", "--device", "alice.phone", "g1", "--file", photo],
    )
    .await;
    prints(&mut bob, &intact).await;
    let mut alice = cli.listen(tcp, "alice.phone");
    cli.run(
        quic,
        &["send", "--device", "bob.phone", "g1", "--file", photo],
    )
    .await;
    prints(&mut alice, &intact).await;

    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
