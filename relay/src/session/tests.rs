//! Tests of the session core in virtual time, without sockets: each drives a
//! [`Core`](super::core::Core) through the [`Harness`] and checks what it
//! writes and asks for. Authentication, in-order delivery with gap fill,
//! sync, acks, expiry at write time, drain, kick and the in-flight limit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use ed25519_dalek::SigningKey;
use herold_proto::v1::{self, ErrorCode, client_frame, server_frame};
use herold_store::AccountState;

use super::core::{Action, Answer, CoreConfig, Input, Query};
use super::testkit::*;
use super::{DRAIN_READ_GRACE, Fatal, ReadEvent, server_frame as encode};
use crate::registry::{Kick, Push};

fn hello() -> Input {
    frame(client_frame::Kind::Hello(v1::Hello {
        version: herold_proto::PROTOCOL_VERSION,
        device_id: DEVICE.into(),
        client: String::new(),
    }))
}

fn fatal(h: &mut Harness) -> (ErrorCode, String) {
    let f = h.closed().expect("closed").expect("with an error");
    (f.code, f.message)
}

fn live(stored: &[(&str, u64)]) -> Harness {
    let mut h = Harness::new(config());
    h.authenticate(stored);
    h
}

// ---- authentication ----

#[test]
fn authentication_succeeds_with_the_enrolled_key() {
    let mut h = Harness::new(config());
    assert!(h.core.wants_frames());
    h.feed(hello());
    assert!(
        !h.core.wants_frames(),
        "no frames while the directory is read"
    );
    assert_eq!(h.take_query(), Query::Device(DEVICE.into()));
    h.feed(Input::Store(Answer::Device(Some(device(&h.key)))));
    assert_eq!(h.take_query(), Query::AccountState(ACCOUNT.into()));
    h.feed(Input::Store(Answer::AccountState(Some(
        AccountState::default(),
    ))));
    match &h.written[..] {
        [server_frame::Kind::AuthChallenge(c)] => assert_eq!(c.nonce, NONCE.to_vec()),
        other => panic!("{other:?}"),
    }
    let key = h.key.clone();
    h.respond(&key);
    let actions = h.take_actions();
    match &actions[..] {
        [Action::Authenticated(ctx)] => {
            assert_eq!(
                (ctx.device_id.as_str(), ctx.account_id.as_str()),
                (DEVICE, ACCOUNT)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.core.ctx().unwrap().device_id, DEVICE);
    assert_eq!(h.take_query(), Query::Cursors(DEVICE.into()));
    assert!(h.take_written().is_empty(), "AuthOk only after the cursors");
    h.feed(Input::Store(Answer::Cursors {
        stored: vec![("g".into(), 3)],
        pending: vec![("g".into(), 5), ("h".into(), 1)],
    }));
    assert!(matches!(h.take_actions()[..], [Action::Register]));
    match &h.take_written()[..] {
        [server_frame::Kind::AuthOk(ok)] => {
            assert_eq!(ok.account_id, ACCOUNT);
            assert_eq!(ok.server_time_ms, WALL0);
            assert_eq!(ok.max_frame_bytes, config().max_frame_bytes);
        }
        other => panic!("{other:?}"),
    }
    // The sink's pending acks are newer than the stored cursor.
    h.feed(push(&message("g", 5, None)));
    h.feed(push(&message("g", 6, None)));
    assert_eq!(h.delivered(), vec![("g".into(), 6)]);
    // Once authenticated, the auth deadline is gone.
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn a_bad_signature_or_a_malformed_one_is_refused() {
    for (sig, want) in [
        (
            None,
            "the signature does not verify for this device and connection",
        ),
        (Some(vec![1u8; 7]), "the signature is malformed"),
    ] {
        let mut h = Harness::new(config());
        h.feed(hello());
        h.answer(Answer::Device(Some(device(&h.key))));
        h.answer(Answer::AccountState(Some(AccountState::default())));
        match sig {
            None => h.respond(&SigningKey::from_bytes(&[9; 32])),
            Some(s) => h.feed(frame(client_frame::Kind::AuthResponse(v1::AuthResponse {
                signature: s,
                relay_name: String::new(),
            }))),
        }
        assert_eq!(fatal(&mut h), (ErrorCode::AuthFailed, want.into()));
        assert!(h.core.is_closed());
        assert!(h.query.is_none());
    }
}

/// Before a peer proves that it holds a device's key it learns nothing of
/// the device: every id gets a challenge. An id nobody enrolled ends like a
/// wrong signature, whatever is signed (even with the key the relay checks
/// it against); a revoked, deleted or suspended device is told why only
/// after a valid signature, and like a wrong signature without one.
#[test]
fn unknown_revoked_deleted_and_suspended_devices_learn_why_only_with_the_key() {
    let mut revoked = device(&key());
    revoked.revoked = true;
    let suspended = AccountState {
        suspended: true,
        ..AccountState::default()
    };
    let wrong = (
        ErrorCode::AuthFailed,
        "the signature does not verify for this device and connection".to_owned(),
    );
    let nobody = SigningKey::from_bytes(&[0; 32]);
    let cases: Vec<(Answer, Option<Answer>, ErrorCode, &str)> = vec![
        (
            Answer::Device(None),
            None,
            ErrorCode::AuthFailed,
            "the signature does not verify for this device and connection",
        ),
        (
            Answer::Device(Some(revoked)),
            None,
            ErrorCode::DeviceRevoked,
            "this device was revoked",
        ),
        (
            Answer::Device(Some(device(&key()))),
            Some(Answer::AccountState(None)),
            ErrorCode::DeviceRevoked,
            "this device's account was deleted",
        ),
        (
            Answer::Device(Some(device(&key()))),
            Some(Answer::AccountState(Some(suspended))),
            ErrorCode::DeviceRevoked,
            "this device's account is suspended",
        ),
    ];
    for (dev, account, code, message) in cases {
        for (signer, want) in [
            (key(), (code, message.to_owned())),
            (SigningKey::from_bytes(&[9; 32]), wrong.clone()),
            (nobody.clone(), wrong.clone()),
        ] {
            let mut h = Harness::new(config());
            h.feed(hello());
            h.answer(dev.clone());
            if let Some(a) = &account {
                h.answer(a.clone());
            }
            match &h.written[..] {
                [server_frame::Kind::AuthChallenge(_)] => {}
                other => panic!("a challenge like any other, not {other:?}"),
            }
            h.respond(&signer);
            assert_eq!(fatal(&mut h), want);
            assert!(h.take_actions().is_empty(), "not authenticated");
        }
    }
    // The relay's own metrics and logs still tell an unknown id apart.
    let mut h = Harness::new(config());
    h.feed(hello());
    h.answer(Answer::Device(None));
    h.respond(&key());
    let f = h.closed().expect("closed").expect("with an error");
    assert_eq!(
        (f.code, f.recorded),
        (ErrorCode::AuthFailed, ErrorCode::UnknownDevice)
    );
    // A store that fails says so, before any challenge.
    let mut h = Harness::new(config());
    h.feed(hello());
    h.answer(Answer::Failed);
    assert_eq!(
        fatal(&mut h),
        (
            ErrorCode::Unavailable,
            "storage is unavailable; retry with the same message id".into()
        )
    );
    assert!(h.take_written().is_empty(), "no challenge");
}

#[test]
fn the_first_frames_must_be_hello_then_auth_response() {
    let mut h = Harness::new(config());
    h.feed(frame(client_frame::Kind::Ping(v1::Ping { nonce: 1 })));
    assert_eq!(
        fatal(&mut h),
        (
            ErrorCode::AuthRequired,
            "the first frame must be Hello".into()
        )
    );

    let mut h = Harness::new(config());
    h.feed(frame(client_frame::Kind::Hello(v1::Hello {
        version: 99,
        device_id: DEVICE.into(),
        client: String::new(),
    })));
    let (code, message) = fatal(&mut h);
    assert_eq!(code, ErrorCode::UnsupportedVersion);
    assert!(message.contains("protocol version 99"), "{message}");

    let mut h = Harness::new(config());
    h.feed(frame(client_frame::Kind::Hello(v1::Hello {
        version: 1,
        device_id: "no spaces allowed".into(),
        client: String::new(),
    })));
    assert_eq!(fatal(&mut h).0, ErrorCode::UnknownDevice);

    let mut h = Harness::new(config());
    h.feed(hello());
    h.answer(Answer::Device(Some(device(&h.key))));
    h.answer(Answer::AccountState(Some(AccountState::default())));
    h.feed(hello());
    assert_eq!(
        fatal(&mut h),
        (
            ErrorCode::AuthRequired,
            "expected AuthResponse after AuthChallenge".into()
        )
    );

    let mut h = Harness::new(config());
    h.feed(Input::Read(ReadEvent::Closed));
    assert_eq!(fatal(&mut h).0, ErrorCode::Unspecified);
    let mut h = Harness::new(config());
    h.feed(Input::Read(ReadEvent::Malformed("bad".into())));
    assert_eq!(fatal(&mut h), (ErrorCode::BadFrame, "bad".into()));
}

#[test]
fn authentication_times_out_even_while_the_store_is_slow() {
    let mut h = Harness::new(config());
    h.feed(hello());
    assert!(h.query.is_some());
    h.advance(AUTH_TIMEOUT - Duration::from_millis(1));
    assert!(h.closed().is_none());
    h.advance(Duration::from_millis(1));
    assert_eq!(
        fatal(&mut h),
        (ErrorCode::AuthTimeout, "authentication timed out".into())
    );
    // The late answer is ignored.
    h.feed(Input::Store(Answer::Device(None)));
    assert!(h.take_actions().is_empty());
}

// ---- delivery ----

#[test]
fn live_pushes_in_order_once_with_gaps_filled_from_the_store() {
    let mut h = live(&[("g", 2)]);
    let mut store = ModelStore::default();
    let m: Vec<_> = (0..8).map(|_| store.append("g", None)).collect();
    // At or below the stored cursor: already seen on another connection.
    h.feed(push(&m[1]));
    assert!(h.delivered().is_empty());
    h.feed(push(&m[2]));
    assert_eq!(h.delivered(), vec![("g".into(), 3)]);
    // 6 arrives before 4 and 5: they are read from the store first.
    h.feed(push(&m[5]));
    assert_eq!(
        h.query,
        Some(Query::Read {
            conversation_id: "g".into(),
            after: 3,
            limit: 2,
            now_ms: WALL0
        })
    );
    assert!(
        !h.core.wants_frames(),
        "frames wait while the store is read"
    );
    // Pushes that come meanwhile wait behind the gap fill.
    h.feed(push(&m[3]));
    h.feed(push(&m[6]));
    h.feed(push(&m[5]));
    assert!(h.delivered().is_empty());
    h.serve(&store);
    let seqs: Vec<u64> = h.delivered().into_iter().map(|(_, s)| s).collect();
    assert_eq!(seqs, vec![4, 5, 6, 7]);
    assert!(h.core.wants_frames());
    // Duplicates of anything sent are skipped.
    for x in &m[..7] {
        h.feed(push(x));
    }
    assert!(h.delivered().is_empty());
    assert!(h.query.is_none());
}

#[test]
fn a_large_gap_is_left_to_a_sync() {
    let mut h = live(&[]);
    let mut store = ModelStore::default();
    let m: Vec<_> = (0..12).map(|_| store.append("g", None)).collect();
    store.append("h", None);
    h.feed(push(&m[0]));
    h.feed(push(&m[10]));
    // The first max_inline_gap messages inline, then a sync for the rest.
    assert!(matches!(h.query, Some(Query::Read { limit: 4, .. })));
    h.serve(&store);
    let got = h.delivered();
    let g: Vec<u64> = got
        .iter()
        .filter(|(c, _)| c == "g")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(g, (1..=12).collect::<Vec<_>>());
    assert_eq!(
        got.iter().filter(|(c, _)| c == "h").count(),
        1,
        "a sync covers every conversation"
    );
    match &h.take_written()[..] {
        [server_frame::Kind::SyncDone(d)] => assert_eq!((d.conversations, d.delivered), (2, 8)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn resync_reads_every_conversation_after_what_was_sent() {
    let mut h = live(&[("h", 1)]);
    let mut store = ModelStore::default();
    let g1 = store.append("g", None);
    for _ in 0..4 {
        store.append("g", None);
        store.append("h", None);
    }
    h.feed(push(&g1));
    h.delivered();
    h.feed(Input::Push(Push::Resync));
    h.serve(&store);
    let got = h.delivered();
    assert_eq!(
        got,
        [2, 3, 4, 5]
            .map(|s| ("g".to_owned(), s))
            .into_iter()
            .chain([2, 3, 4].map(|s| ("h".to_owned(), s)))
            .collect::<Vec<_>>()
    );
    assert!(matches!(
        h.take_written()[..],
        [server_frame::Kind::SyncDone(_)]
    ));
}

#[test]
fn a_large_channel_syncs_after_its_sub_groups() {
    let mut h = live(&[]);
    let mut store = ModelStore::default();
    for conv in ["news", "news~1", "news~0", "a", "news~10", "newsroom"] {
        store.append(conv, None);
    }
    h.feed(Input::Push(Push::Resync));
    h.serve(&store);
    let order: Vec<String> = h.delivered().into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        order,
        ["a", "news~0", "news~1", "news~10", "news", "newsroom"],
        "key messages come before the posts that need them"
    );
}

#[test]
fn sync_pages_and_clamps_client_cursors_to_the_head() {
    let mut h = live(&[("c", 1)]);
    let mut store = ModelStore::default();
    for _ in 0..5 {
        store.append("a", None);
        store.append("b", None);
        store.append("c", None);
    }
    h.feed(sync(&[("a", 100), ("b", 1)]));
    assert_eq!(h.take_query(), Query::ConversationsOf(ACCOUNT.into()));
    h.feed(Input::Store(
        store.answer(&Query::ConversationsOf(ACCOUNT.into())),
    ));
    assert_eq!(h.take_query(), Query::Head("a".into()));
    h.feed(Input::Store(Answer::Head(5)));
    // A cursor beyond the log is clamped to the head: nothing is skipped
    // that is written later.
    assert!(matches!(h.query, Some(Query::Read { after: 5, .. })));
    h.serve(&store);
    let got = h.delivered();
    let of = |c: &str| -> Vec<u64> {
        got.iter()
            .filter(|(x, _)| x == c)
            .map(|(_, s)| *s)
            .collect()
    };
    assert_eq!(of("a"), Vec::<u64>::new());
    assert_eq!(of("b"), vec![2, 3, 4, 5]);
    assert_eq!(of("c"), vec![2, 3, 4, 5], "from the stored cursor");
    match &h.take_written()[..] {
        [server_frame::Kind::SyncDone(d)] => assert_eq!((d.conversations, d.delivered), (3, 8)),
        other => panic!("{other:?}"),
    }
    // The clamped cursor counts as sent: the device may ack it.
    h.feed(ack("a", 5));
    assert!(h.take_written().is_empty());
    // A message appended later is delivered live.
    let a6 = store.append("a", None);
    h.feed(push(&a6));
    assert_eq!(h.delivered(), vec![("a".into(), 6)]);
}

#[test]
fn too_many_sync_cursors_are_refused() {
    let mut h = live(&[]);
    let cursors: Vec<(&str, u64)> = vec![("a", 1); super::MAX_SYNC_CURSORS + 1];
    h.feed(sync(&cursors));
    let (code, message) = error(&h.take_written()[0]);
    assert_eq!(code, ErrorCode::ProtocolViolation);
    assert!(message.contains("at most 10000 cursors"), "{message}");
    assert!(h.query.is_none());
}

#[test]
fn expiry_is_checked_when_the_frame_is_written() {
    let mut h = live(&[]);
    let mut store = ModelStore::default();
    let soon = WALL0 + 100;
    let m1 = store.append("g", None);
    store.append("g", Some(soon));
    store.append("g", Some(soon + 1_000));
    let m4 = store.append("g", Some(soon));
    let m5 = store.append("g", None);
    h.feed(push(&m1));
    // m4 needs a gap fill; while the store reads, m2 expires.
    h.feed(push(&m4));
    let q = h.take_query();
    let page = store.answer(&q);
    h.advance(Duration::from_millis(100));
    h.feed(Input::Store(page));
    // m2 was read while live but expired before it was written; so did m4,
    // held behind the read.
    assert_eq!(
        h.delivered(),
        vec![("g".into(), 1), ("g".into(), 3)],
        "nothing expired is written"
    );
    // An expired push is not written either; the next one fills the gap.
    h.feed(push(&m4));
    h.feed(push(&m5));
    h.serve(&store);
    assert_eq!(h.delivered(), vec![("g".into(), 5)]);

    // A sync page read before an expiry and answered after it.
    let mut h = live(&[]);
    h.feed(sync(&[]));
    h.serve_until_read(&store);
    let q = h.take_query();
    let page = store.answer(&q);
    h.advance(Duration::from_millis(100));
    h.feed(Input::Store(page));
    h.serve(&store);
    let seqs: Vec<u64> = h.delivered().into_iter().map(|(_, s)| s).collect();
    assert_eq!(seqs, vec![1, 3, 5]);
}

impl Harness {
    /// Answers queries until the next one is a log read.
    fn serve_until_read(&mut self, store: &ModelStore) {
        while let Some(q) = self.query.take() {
            if matches!(q, Query::Read { .. }) {
                self.query = Some(q);
                return;
            }
            let a = store.answer(&q);
            self.feed(Input::Store(a));
        }
    }
}

#[test]
fn too_many_held_pushes_become_one_resync() {
    let mut h = live(&[]);
    let mut store = ModelStore::default();
    let m: Vec<_> = (0..20).map(|_| store.append("g", None)).collect();
    h.feed(push(&m[0]));
    h.feed(push(&m[2]));
    assert!(h.query.is_some());
    for x in &m[3..] {
        h.feed(push(x));
    }
    h.serve(&store);
    let seqs: Vec<u64> = h.delivered().into_iter().map(|(_, s)| s).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert!(matches!(
        h.take_written()[..],
        [server_frame::Kind::SyncDone(_)]
    ));
}

// ---- acks ----

#[test]
fn acks_only_for_what_was_sent_and_flushed_after_the_delay() {
    let mut h = live(&[("h", 4)]);
    let mut store = ModelStore::default();
    let m: Vec<_> = (0..3).map(|_| store.append("g", None)).collect();
    for x in &m {
        h.feed(push(x));
    }
    h.delivered();
    let refused = "ack for a message that was not delivered on this connection";
    for bad in [ack("g", 4), ack("x", 1), ack("h", 1)] {
        h.feed(bad);
        assert_eq!(
            error(&h.take_written()[0]),
            (ErrorCode::ProtocolViolation, refused.into())
        );
    }
    h.feed(ack("g", 2));
    h.feed(ack("g", 1));
    assert!(h.take_written().is_empty());
    assert_eq!(h.core.poll_timeout(), Some(h.now.mono + super::ACK_FLUSH));
    h.advance(Duration::from_millis(150));
    h.feed(ack("g", 3));
    h.advance(Duration::from_millis(49));
    assert!(h.take_actions().is_empty(), "held for the flush delay");
    h.advance(Duration::from_millis(1));
    match &h.take_actions()[..] {
        [Action::RecordCursors(c)] => assert_eq!(c, &vec![("g".to_owned(), 3)]),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.core.poll_timeout(), None, "idle: no timer");
    // An ack at or below the recorded cursor records nothing.
    h.feed(ack("g", 2));
    h.advance(super::ACK_FLUSH);
    assert!(h.take_actions().is_empty());
}

// ---- frames ----

#[test]
fn other_frames_get_their_answers() {
    let mut h = live(&[]);
    h.feed(frame(client_frame::Kind::Ping(v1::Ping { nonce: 42 })));
    h.feed(hello());
    h.feed(Input::Read(ReadEvent::Frame(v1::ClientFrame {
        kind: None,
    })));
    h.feed(Input::Read(ReadEvent::Malformed("garbage".into())));
    let w = h.take_written();
    assert!(matches!(&w[0], server_frame::Kind::Pong(p) if p.nonce == 42));
    assert_eq!(
        error(&w[1]),
        (ErrorCode::ProtocolViolation, "already authenticated".into())
    );
    assert_eq!(error(&w[2]).0, ErrorCode::UnknownFrame);
    assert_eq!(error(&w[3]), (ErrorCode::BadFrame, "garbage".into()));
    assert!(h.closed().is_none(), "none of these is fatal");
    h.feed(Input::Read(ReadEvent::Codec(
        herold_proto::codec::CodecError::FrameTooLarge { len: 9, max: 8 },
    )));
    assert_eq!(fatal(&mut h).0, ErrorCode::FrameTooLarge);

    let mut h = live(&[]);
    h.feed(Input::Read(ReadEvent::Closed));
    assert_eq!(h.closed(), Some(None), "the device left: no error");
}

#[test]
fn submits_beyond_the_in_flight_limit_are_refused() {
    let mut h = live(&[]);
    h.feed(submit(1));
    h.feed(submit(2));
    h.feed(submit(3));
    let actions = h.take_actions();
    assert!(matches!(
        actions[..],
        [Action::Submit(_), Action::Submit(_)]
    ));
    let w = h.take_written();
    let server_frame::Kind::Error(e) = &w[0] else {
        panic!("{w:?}");
    };
    assert_eq!(e.code, ErrorCode::TooManyInFlight as i32);
    assert_eq!(e.message_id, vec![3; 16]);
    assert_eq!(
        e.message,
        "more than 2 submits awaiting acceptance; wait for Accepted"
    );
    h.feed(frame(client_frame::Kind::Request(v1::Request {
        request_id: 7,
        kind: None,
    })));
    match &h.take_written()[..] {
        [server_frame::Kind::Response(r)] => {
            assert_eq!(r.request_id, 7);
            assert!(matches!(
                &r.kind,
                Some(v1::response::Kind::Error(e)) if e.code == ErrorCode::TooManyInFlight as i32
            ));
        }
        other => panic!("{other:?}"),
    }
    // An answer frees a place.
    let accepted = encode(server_frame::Kind::Pong(v1::Pong { nonce: 1 }));
    h.feed(Input::TaskDone(Some(accepted)));
    h.feed(Input::TaskDone(None));
    assert!(matches!(
        h.take_written()[..],
        [server_frame::Kind::Pong(_)]
    ));
    h.feed(submit(4));
    h.feed(frame(client_frame::Kind::Request(v1::Request {
        request_id: 8,
        kind: None,
    })));
    assert!(matches!(
        h.take_actions()[..],
        [Action::Submit(_), Action::Request(_)]
    ));
}

#[test]
fn submits_beyond_the_device_rate_are_refused_with_the_time_to_wait() {
    // 2 a second, a burst of 4 s of it; the in-flight limit out of the way.
    let mut h = Harness::new(CoreConfig {
        submit_rate: 2,
        max_in_flight: 100,
        ..config()
    });
    h.authenticate(&[]);
    let burst = 2 * crate::rate::BURST_SECONDS as u8;
    for id in 1..=burst {
        h.feed(submit(id));
    }
    assert_eq!(h.take_actions().len(), usize::from(burst));
    assert!(h.take_written().is_empty());
    h.feed(submit(burst + 1));
    assert!(h.take_actions().is_empty(), "not started");
    let w = h.take_written();
    let [server_frame::Kind::Error(e)] = &w[..] else {
        panic!("{w:?}");
    };
    assert_eq!(e.code, ErrorCode::RateLimited as i32);
    assert_eq!(e.message_id, vec![burst + 1; 16]);
    assert!(!e.fatal);
    assert_eq!(e.retry_after_ms, 500, "{e:?}");
    assert!(
        e.message.contains("more than 2 submits a second"),
        "{}",
        e.message
    );
    // Resent after the wait: taken.
    h.advance(Duration::from_millis(500));
    h.feed(submit(burst + 1));
    assert!(matches!(h.take_actions()[..], [Action::Submit(_)]));
}

// ---- kick and drain ----

#[test]
fn a_kick_ends_the_session_after_recording_its_acks() {
    let mut h = live(&[]);
    h.feed(push(&message("g", 1, None)));
    assert_eq!(h.delivered().len(), 1);
    h.feed(ack("g", 1));
    h.feed(Input::Kick(Kick {
        code: ErrorCode::Replaced,
        message: "replaced".into(),
    }));
    let actions = h.take_actions();
    assert!(matches!(&actions[0], Action::RecordCursors(c) if c == &vec![("g".to_owned(), 1)]));
    assert!(matches!(
        &actions[1],
        Action::Close(Some(Fatal {
            code: ErrorCode::Replaced,
            ..
        }))
    ));
    // Nothing more happens once closed.
    h.feed(push(&message("g", 2, None)));
    assert!(h.delivered().is_empty());
    assert_eq!(h.core.poll_timeout(), None);
}

fn draining(w: &[server_frame::Kind]) -> bool {
    w.iter()
        .any(|k| matches!(k, server_frame::Kind::Draining(d) if d.reconnect_after_ms == 1234))
}

#[test]
fn drain_waits_for_submits_then_takes_acks_for_the_grace() {
    let mut h = live(&[]);
    h.feed(push(&message("g", 1, None)));
    h.feed(push(&message("g", 2, None)));
    h.delivered();
    h.feed(submit(1));
    h.feed(submit(2));
    h.take_actions();
    h.feed(Input::Drain {
        reconnect_after_ms: 1234,
    });
    assert!(h.take_written().is_empty(), "submits in flight");
    assert!(!h.core.wants_frames());
    // Pushes are no longer delivered.
    h.feed(push(&message("g", 3, None)));
    assert!(h.delivered().is_empty());
    h.feed(Input::TaskDone(Some(encode(server_frame::Kind::Pong(
        v1::Pong { nonce: 1 },
    )))));
    assert!(!draining(&h.take_written()));
    h.feed(Input::TaskDone(Some(encode(server_frame::Kind::Pong(
        v1::Pong { nonce: 2 },
    )))));
    let w = h.take_written();
    assert!(matches!(&w[0], server_frame::Kind::Pong(p) if p.nonce == 2));
    assert!(draining(&w[1..]), "{w:?}");
    assert!(h.core.wants_frames());
    // During the grace: acks are taken, submits refused, the rest ignored.
    h.feed(ack("g", 2));
    h.feed(submit(9));
    h.feed(frame(client_frame::Kind::Ping(v1::Ping { nonce: 3 })));
    let w = h.take_written();
    assert_eq!(w.len(), 1, "{w:?}");
    let server_frame::Kind::Error(e) = &w[0] else {
        panic!("{w:?}");
    };
    assert_eq!(e.code, ErrorCode::Draining as i32);
    assert_eq!(e.message_id, vec![9; 16]);
    assert!(h.take_actions().is_empty(), "no submit started");
    h.advance(DRAIN_READ_GRACE - Duration::from_millis(1));
    // The ack timer may fire within the grace; the close waits for it.
    assert!(h.closed().is_none());
    h.advance(Duration::from_millis(1));
    let actions = h.take_actions();
    let recorded: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::RecordCursors(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(recorded, vec![vec![("g".to_owned(), 2)]]);
    assert!(matches!(
        actions.last(),
        Some(Action::Close(Some(Fatal { code: ErrorCode::Draining, message, .. })))
            if message == "the relay is shutting down; reconnect"
    ));
}

#[test]
fn drain_abandons_a_sync_and_ends_early_when_the_device_leaves() {
    let mut h = live(&[]);
    let mut store = ModelStore::default();
    store.append("g", None);
    h.feed(sync(&[]));
    assert!(h.query.is_some());
    h.feed(Input::Drain {
        reconnect_after_ms: 1234,
    });
    assert!(draining(&h.take_written()), "nothing in flight: at once");
    // The sync's answer comes late and is dropped.
    h.serve(&store);
    assert!(h.delivered().is_empty());
    h.feed(Input::Read(ReadEvent::Closed));
    assert!(matches!(
        h.closed(),
        Some(Some(Fatal {
            code: ErrorCode::Draining,
            ..
        }))
    ));
}

#[test]
fn a_drain_during_authentication_follows_auth_ok() {
    let mut h = Harness::new(config());
    h.feed(hello());
    h.feed(Input::Drain {
        reconnect_after_ms: 1234,
    });
    h.answer(Answer::Device(Some(device(&h.key))));
    h.answer(Answer::AccountState(Some(AccountState::default())));
    let key = h.key.clone();
    h.respond(&key);
    h.answer(Answer::Cursors {
        stored: Vec::new(),
        pending: Vec::new(),
    });
    let w = h.take_written();
    assert!(matches!(w[0], server_frame::Kind::AuthOk(_)), "{w:?}");
    assert!(draining(&w[1..]), "{w:?}");
}
