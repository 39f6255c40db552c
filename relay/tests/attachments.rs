//! Photos and documents end to end (docs/attachments.md): encrypted on the
//! sending device, uploaded once on a stream of their own, fetched by the
//! conversation's member devices only, gone after their expiry, and never
//! readable by the relay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mls_net;

use std::time::Duration;

use common::*;
use herold_client::e2e::E2eError;
use herold_client::raw::RawConnection;
use herold_client::{ClientError, attachment};
use herold_proto::codec::{decode_message, frame_bytes};
use herold_proto::v1::{self, ErrorCode, attachment_request, attachment_response};
use herold_relay::Config;
use herold_store::Store as _;
use mls_net::*;
use sha2::{Digest, Sha256};

/// `n` bytes no compressor or coincidence reproduces.
fn photo(n: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut block = Sha256::digest([seed]);
    while out.len() < n {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(n);
    out
}

/// Whether any of 64 samples of `needle` (32 bytes each) occurs in `haystack`.
fn holds_any_of(haystack: &[u8], needle: &[u8]) -> bool {
    let step = (needle.len() / 64).max(1);
    (0..needle.len().saturating_sub(32))
        .step_by(step)
        .any(|at| memchr::memmem::find(haystack, &needle[at..at + 32]).is_some())
}

fn relay_code(e: &E2eError) -> Option<ErrorCode> {
    match e {
        E2eError::Client(c) => c.code(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_reaches_every_device_intact_and_the_relay_never_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _store) = TestRelay::start_embedded(dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    let [ak, bk, ck] = relay.group_of("patrol", ["pa", "pb", "pc"]).await;
    let a = net.connect("pa.phone", &ak).await;
    let b = net.connect("pb.phone", &bk).await;
    let c = net.connect("pc.phone", &ck).await;

    let pothole = photo(5 * 1000 * 1000, 1);
    let (accepted, sent) = a
        .send_file("patrol", &pothole, "pothole-4711.jpg", "image/jpeg", 0)
        .await
        .unwrap();
    assert!(accepted.seq > 0);
    assert_eq!(sent.size, pothole.len() as u64);
    assert_eq!(sent.id.len(), 16, "the relay's unguessable id");

    for (name, device) in [("pb.phone", &b), ("pc.phone", &c)] {
        net.until(&format!("{name} has the photo's message"), |i| {
            i.messages
                .lock()
                .unwrap()
                .get(name)
                .is_some_and(|m| m.iter().any(|m| m.file().is_some()))
        })
        .await;
        let msg = net.inbox.messages.lock().unwrap()[name]
            .iter()
            .find(|m| m.file().is_some())
            .cloned()
            .unwrap();
        let file = msg.file().unwrap();
        assert_eq!(
            (file.name.as_str(), file.media_type.as_str()),
            ("pothole-4711.jpg", "image/jpeg")
        );
        let got = device.fetch_file("patrol", &file).await.unwrap();
        assert_eq!(
            Sha256::digest(&got),
            Sha256::digest(&pothole),
            "{name}'s copy"
        );
    }
    // A text stays a text.
    a.send("patrol", b"on my way", 0).await.unwrap();
    net.until("b read the text", |i| {
        i.texts("pb.phone", "patrol")
            .iter()
            .any(|t| t == "on my way")
    })
    .await;
    assert!(
        net.inbox.messages.lock().unwrap()["pb.phone"]
            .iter()
            .filter(|m| m.file().is_none())
            .all(|m| m.plaintext == b"on my way")
    );

    // Neither the relay's storage nor any byte on any device's streams
    // (messages and attachment streams, both ways) holds the photo or its
    // name: stop the relay so its file is complete on disk, then scan.
    relay.stop().await;
    let mut stored = Vec::new();
    for entry in walk(dir.path()) {
        stored.extend(std::fs::read(entry).unwrap());
    }
    assert!(stored.len() > pothole.len(), "the ciphertext is stored");
    // The scan finds the photo where it is.
    assert!(holds_any_of(
        &[&stored[..64], &pothole[..]].concat(),
        &pothole
    ));
    assert!(!holds_any_of(&stored, &pothole), "plaintext in storage");
    assert!(!contains(&stored, b"pothole-4711"), "the name in storage");
    let taps = net.taps.lock().unwrap().clone();
    let mut wire = Vec::new();
    for t in &taps {
        wire.extend_from_slice(&t.lock().unwrap());
    }
    assert!(wire.len() > 3 * pothole.len(), "one upload, two downloads");
    assert!(!holds_any_of(&wire, &pothole), "plaintext on the wire");
    assert!(!contains(&wire, b"pothole-4711"), "the name on the wire");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// An authenticated connection speaking the attachment protocol by hand.
async fn raw(relay: &TestRelay, device: &str, key: &ed25519_dalek::SigningKey) -> RawConnection {
    let mut c = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    c.authenticate(device, key).await.unwrap();
    c
}

async fn request(
    conn: &quinn::Connection,
    kind: attachment_request::Kind,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let frame = frame_bytes(&v1::AttachmentRequest { kind: Some(kind) }, 1 << 14).unwrap();
    send.write_all(&frame).await.unwrap();
    (send, recv)
}

async fn response(recv: &mut quinn::RecvStream) -> attachment_response::Kind {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    recv.read_exact(&mut body).await.unwrap();
    decode_message::<v1::AttachmentResponse>(&body)
        .unwrap()
        .kind
        .unwrap()
}

fn refusal(kind: attachment_response::Kind) -> ErrorCode {
    match kind {
        attachment_response::Kind::Error(e) => ErrorCode::try_from(e.code).unwrap(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn upload(conversation_id: &str, size: u64, expires_at_ms: i64) -> attachment_request::Kind {
    attachment_request::Kind::Upload(v1::Upload {
        conversation_id: conversation_id.into(),
        size,
        expires_at_ms,
        ..Default::default()
    })
}

fn download(conversation_id: &str, id: &[u8]) -> attachment_request::Kind {
    attachment_request::Kind::Download(v1::Download {
        attachment_id: id.to_vec(),
        conversation_id: conversation_id.into(),
        from_chunk: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_halfway_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, store) = TestRelay::start_embedded(dir.path()).await;
    let [ak, bk] = relay.group_of("depot", ["da", "db"]).await;
    let (sealed, file) = attachment::seal(&photo(2 * 1000 * 1000, 2)).unwrap();

    // The first connection sends half, and breaks once part of it is stored.
    let first = raw(&relay, "da.phone", &ak).await;
    let (mut send, mut recv) = request(
        first.connection().unwrap(),
        upload("depot", sealed.len() as u64, 0),
    )
    .await;
    let attachment_response::Kind::UploadReady(ready) = response(&mut recv).await else {
        panic!("no UploadReady");
    };
    assert_eq!(ready.next_chunk, 0);
    assert_eq!(ready.chunk_bytes, herold_proto::ATTACHMENT_CHUNK_BYTES);
    let id = ready.attachment_id.clone();
    send.write_all(&sealed[..sealed.len() / 2]).await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let stored = loop {
        let a = store.attachment(&id, now_ms()).await.unwrap().unwrap();
        if a.received_chunks >= 10 {
            break a;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!stored.complete());
    first.connection().unwrap().close(0u32.into(), b"tunnel");
    // Not fetchable while incomplete.
    let reader = raw(&relay, "db.phone", &bk).await;
    let (_s, mut r) = request(reader.connection().unwrap(), download("depot", &id)).await;
    assert_eq!(
        refusal(response(&mut r).await),
        ErrorCode::AttachmentIncomplete
    );

    // Another device may not resume it; the uploader may.
    let resume = attachment_request::Kind::Upload(v1::Upload {
        attachment_id: id.clone(),
        conversation_id: "depot".into(),
        size: sealed.len() as u64,
        expires_at_ms: 0,
    });
    let (_s, mut r) = request(reader.connection().unwrap(), resume.clone()).await;
    assert_eq!(refusal(response(&mut r).await), ErrorCode::NoSuchAttachment);
    let second = raw(&relay, "da.phone", &ak).await;
    let (mut send, mut recv) = request(second.connection().unwrap(), resume).await;
    let attachment_response::Kind::UploadReady(again) = response(&mut recv).await else {
        panic!("no UploadReady on resume");
    };
    let half_chunks = (sealed.len() / 2) as u32 / again.chunk_bytes;
    assert!(
        again.next_chunk >= 10 && again.next_chunk <= half_chunks,
        "resumes at chunk {} of a cut at {half_chunks}",
        again.next_chunk
    );
    let from = again.next_chunk as usize * again.chunk_bytes as usize;
    send.write_all(&sealed[from..]).await.unwrap();
    send.finish().unwrap();
    let attachment_response::Kind::UploadDone(done) = response(&mut recv).await else {
        panic!("no UploadDone");
    };
    assert_eq!(
        (done.attachment_id, done.size),
        (id.clone(), sealed.len() as u64)
    );

    // The member's SDK fetches it whole, and it decrypts to the photo.
    let b = relay.client("db.phone", &bk).await;
    let got = b
        .sender()
        .download("depot", &id, sealed.len() as u64)
        .await
        .unwrap();
    assert_eq!(got, sealed);
    attachment::open(&got, &file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_over_the_policy_non_members_and_expired_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.limits.purge_interval_secs = 1;
    let (relay, store) = TestRelay::start_embedded_with(config, dir.path()).await;
    let net = Net::new(relay.addr, relay.fingerprint);
    let [ak, _bk] = relay.group_of("office", ["oa", "ob"]).await;
    relay.account("outsider").await;
    let xk = relay.device("outsider", "x.phone").await;
    let mut admin = relay.admin().await;
    admin
        .set_policy(v1::SetPolicyRequest {
            conversation_id: "office".into(),
            policy: Some(v1::Policy {
                max_attachment_bytes: Some(1_000_000),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    // Over the policy: refused before a byte of the file is sent.
    let a = net.connect("oa.phone", &ak).await;
    let e = a
        .send_file(
            "office",
            &photo(1_500_000, 3),
            "scan.pdf",
            "application/pdf",
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(relay_code(&e), Some(ErrorCode::AttachmentTooLarge), "{e}");
    assert!(e.to_string().contains("policy allows 1000000"), "{e}");
    // The account's second device speaks the protocol by hand.
    let lk = relay.device("oa", "oa.laptop").await;
    let conn = raw(&relay, "oa.laptop", &lk).await;
    let (_s, mut r) = request(conn.connection().unwrap(), upload("office", 1_000_001, 0)).await;
    assert_eq!(
        refusal(response(&mut r).await),
        ErrorCode::AttachmentTooLarge
    );

    // Under it: stored, with an expiry 2 s ahead.
    let sealed = attachment::seal(&photo(200_000, 4)).unwrap().0;
    let laptop = relay
        .client("oa.laptop2", &relay.device("oa", "oa.laptop2").await)
        .await;
    let up = laptop
        .sender()
        .upload("office", &sealed, now_ms() + 2_000)
        .await
        .unwrap();
    let id = up.attachment_id;

    // A non-member cannot fetch it, neither naming the conversation nor
    // naming another.
    let outsider = raw(&relay, "x.phone", &xk).await;
    let (_s, mut r) = request(outsider.connection().unwrap(), download("office", &id)).await;
    assert_eq!(refusal(response(&mut r).await), ErrorCode::NotMember);
    relay
        .conversation("x-own", v1::ConversationKind::Group, &["outsider"])
        .await;
    let (_s, mut r) = request(outsider.connection().unwrap(), download("x-own", &id)).await;
    assert_eq!(refusal(response(&mut r).await), ErrorCode::NoSuchAttachment);
    let e = relay
        .client("x.phone", &xk)
        .await
        .sender()
        .download("office", &id, 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Relay {
                code: ErrorCode::NotMember,
                ..
            }
        ),
        "{e}"
    );

    // After its expiry: refused, then gone from storage.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let gone = store.attachment(&id, i64::MIN).await.unwrap().is_none()
            && store.attachment_chunk(&id, 0).await.unwrap().is_none();
        if gone {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired file is still stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_s, mut r) = request(conn.connection().unwrap(), download("office", &id)).await;
    assert_eq!(refusal(response(&mut r).await), ErrorCode::NoSuchAttachment);
}
