//! The relay's TCP fallback (a WebSocket over TLS, docs/protocol.md "TCP
//! fallback") seen from the device's side: the same session as QUIC,
//! with devices on both transports talking to each other; revocation cuts
//! a fallback device off as fast; bad input and silence end a connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use herold_client::raw::{RawConnection, Transport};
use herold_proto::codec::FrameDecoder;
use herold_proto::v1::{self, ErrorCode, client_frame, server_frame};
use herold_relay::Config;
use tokio_tungstenite::tungstenite::Message;

fn submit(conversation: &str, id: u8, text: &str) -> client_frame::Kind {
    client_frame::Kind::Submit(v1::Submit {
        message_id: vec![id; 16],
        conversation_id: conversation.into(),
        expires_at_ms: 0,
        ciphertext: text.as_bytes().to_vec(),
        ..Default::default()
    })
}

/// Frames from `raw` until `want` picks one, within the deadline.
async fn until<T>(
    raw: &mut RawConnection,
    mut want: impl FnMut(&server_frame::Kind) -> Option<T>,
) -> T {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let k = raw.expect_frame().await.unwrap();
            if let Some(t) = want(&k) {
                return t;
            }
        }
    })
    .await
    .expect("the frame arrives in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_the_fallback_talks_to_one_on_quic_and_is_cut_off_when_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let [ka, kb] = relay.group_of("g", ["alice", "bob"]).await;
    let tcp = relay.tcp_addr.expect("the fallback is on by default");
    let mut alice = RawConnection::connect_tcp(tcp, relay.fingerprint, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(alice.transport(), Transport::Tcp);
    alice.authenticate("alice.phone", &ka).await.unwrap();
    let mut bob = relay.client("bob.phone", &kb).await;

    alice.send_kind(submit("g", 1, "from TCP")).await.unwrap();
    let seq = until(&mut alice, |k| match k {
        server_frame::Kind::Accepted(a) => Some(a.seq),
        _ => None,
    })
    .await;
    let got = receive(&mut bob, 1).await;
    assert_eq!(
        (got[0].seq, &got[0].ciphertext[..]),
        (seq, &b"from TCP"[..])
    );

    bob.send("g", b"from QUIC".to_vec(), 0).await.unwrap();
    until(&mut alice, |k| match k {
        server_frame::Kind::Deliver(d) => d
            .envelope
            .as_ref()
            .filter(|e| e.ciphertext == b"from QUIC")
            .map(|_| ()),
        _ => None,
    })
    .await;

    relay
        .admin()
        .await
        .revoke_device(v1::RevokeDeviceRequest {
            device_id: "alice.phone".into(),
        })
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(e) = alice.expect_frame().await {
                return e;
            }
        }
    })
    .await
    .expect("cut off within seconds");
    assert_eq!(err.code(), Some(ErrorCode::DeviceRevoked), "{err}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_message_is_a_bad_frame() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let tcp = relay.tcp_addr.unwrap();
    let stream = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let tls = herold_client::tls::fallback_connector(relay.fingerprint)
        .unwrap()
        .connect("localhost".try_into().unwrap(), stream)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{tcp}/v1"), tls)
        .await
        .unwrap();
    ws.send(Message::text("Hello")).await.unwrap();
    let mut dec = FrameDecoder::new(1 << 20);
    let error = tokio::time::timeout(DEADLINE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    dec.extend(&b);
                    if let Some(f) = dec.next_message::<v1::ServerFrame>().unwrap() {
                        return f;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the connection ended without an error frame: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    let Some(server_frame::Kind::Error(e)) = error.kind else {
        panic!("expected an error frame, got {error:?}")
    };
    assert_eq!(e.code, ErrorCode::BadFrame as i32, "{e:?}");
    assert!(e.message.contains("binary"), "{e:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_ends_a_fallback_connection_and_pings_keep_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.limits.idle_timeout = Duration::from_secs(2);
    let relay = TestRelay::start_with(config).await;
    relay.account("alice").await;
    let k1 = relay.device("alice", "alice.phone").await;
    let k2 = relay.device("alice", "alice.laptop").await;
    let tcp = relay.tcp_addr.unwrap();
    // The laptop pings after 0.5 s of silence; the phone would after 30 s.
    let mut pinging = RawConnection::connect_tcp(tcp, relay.fingerprint, Duration::from_secs(1))
        .await
        .unwrap();
    pinging.authenticate("alice.laptop", &k2).await.unwrap();
    let mut silent = RawConnection::connect_tcp(tcp, relay.fingerprint, Duration::from_secs(60))
        .await
        .unwrap();
    silent.authenticate("alice.phone", &k1).await.unwrap();
    // Both wait for frames (a raw connection pings while its caller reads):
    // the silent one is closed after the relay's 2 s, the pinging one is
    // still there three idle timeouts later.
    let silent_ends = tokio::time::timeout(DEADLINE, async {
        loop {
            match silent.recv().await {
                Ok(Some(_)) => {}
                other => return other,
            }
        }
    });
    let pinging_stays = tokio::time::timeout(Duration::from_secs(6), pinging.recv());
    let (ended, still) = tokio::join!(silent_ends, pinging_stays);
    let ended = ended.expect("the silent connection is closed");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    assert!(still.is_err(), "the pinging connection ended: {still:?}");
    pinging
        .send_kind(client_frame::Kind::Ping(v1::Ping { nonce: 7 }))
        .await
        .unwrap();
    let pong = until(&mut pinging, |k| match k {
        server_frame::Kind::Pong(p) => Some(p.nonce),
        _ => None,
    })
    .await;
    assert_eq!(pong, 7);
    relay.stop().await;
}
