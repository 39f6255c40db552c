//! Test support for the session core: a harness that drives a [`Core`] in
//! virtual time and decodes what it writes, and a model store that answers
//! its queries. No sockets, no runtime, no wall clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey};
use herold_proto::auth;
use herold_proto::codec::FrameDecoder;
use herold_proto::v1::{self, ErrorCode, client_frame, server_frame};
use herold_router::Delivery;
use herold_store::{AccountState, Device, StoredMessage};

use super::core::{Action, Answer, AuthSecrets, Core, CoreConfig, Input, Now, Query};
use super::{Fatal, ReadEvent, deliver_frame};
use crate::registry::Push;

pub(super) const DEVICE: &str = "bob.phone";
pub(super) const ACCOUNT: &str = "bob";
pub(super) const NONCE: [u8; auth::NONCE_BYTES] = [1; auth::NONCE_BYTES];
pub(super) const EXPORTER: [u8; auth::NONCE_BYTES] = [2; auth::NONCE_BYTES];
/// The relay name a browser may sign in the harness.
pub(super) const WEB_NAME: &str = "relay.example:7300";
/// Wall clock at the start of every test (unix milliseconds).
pub(super) const WALL0: i64 = 1_800_000_000_000;
pub(super) const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Small pages and gaps, so that paging and large gaps need few messages.
pub(super) fn config() -> CoreConfig {
    CoreConfig {
        max_in_flight: 2,
        max_frame_bytes: 64 * 1024,
        max_ciphertext_bytes: 32 * 1024,
        sync_page: 2,
        max_inline_gap: 4,
        max_held_pushes: 8,
        submit_rate: 1_000,
    }
}

pub(super) fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

pub(super) fn device(key: &SigningKey) -> Device {
    Device {
        id: DEVICE.into(),
        account_id: ACCOUNT.into(),
        public_key: key.verifying_key().to_bytes().to_vec(),
        revoked: false,
        created_at_ms: 0,
    }
}

/// A stored message; its ciphertext names it (`conv:seq`).
pub(super) fn message(conv: &str, seq: u64, expires_at_ms: Option<i64>) -> StoredMessage {
    StoredMessage {
        conversation_id: conv.into(),
        seq,
        message_id: seq.to_be_bytes().repeat(2),
        sender_account_id: "alice".into(),
        sender_device_id: "alice.phone".into(),
        server_time_ms: WALL0,
        expires_at_ms,
        welcomed: Vec::new(),
        ciphertext: format!("{conv}:{seq}").into_bytes(),
    }
}

/// The live push of a stored message, as the node inbox hands it over.
pub(super) fn push(m: &StoredMessage) -> Input {
    Input::Push(Push::Deliver(Arc::new(Delivery {
        conversation_id: m.conversation_id.clone(),
        seq: m.seq,
        expires_at_ms: m.expires_at_ms,
        accepted_at_ms: Some(m.server_time_ms),
        traceparent: None,
        frame: deliver_frame(m),
        devices: vec![DEVICE.into()],
    })))
}

pub(super) fn frame(kind: client_frame::Kind) -> Input {
    Input::Read(ReadEvent::Frame(v1::ClientFrame { kind: Some(kind) }))
}

pub(super) fn ack(conv: &str, seq: u64) -> Input {
    frame(client_frame::Kind::Ack(v1::Ack {
        conversation_id: conv.into(),
        seq,
    }))
}

pub(super) fn submit(id: u8) -> Input {
    frame(client_frame::Kind::Submit(v1::Submit {
        message_id: vec![id; 16],
        conversation_id: "g".into(),
        ciphertext: b"x".to_vec(),
        ..Default::default()
    }))
}

pub(super) fn sync(cursors: &[(&str, u64)]) -> Input {
    frame(client_frame::Kind::Sync(v1::Sync {
        cursors: cursors
            .iter()
            .map(|(c, s)| v1::Cursor {
                conversation_id: (*c).into(),
                seq: *s,
            })
            .collect(),
    }))
}

/// Conversation logs of one account, answering the core's log queries.
#[derive(Debug, Default, Clone)]
pub(super) struct ModelStore {
    pub logs: BTreeMap<String, Vec<StoredMessage>>,
}

impl ModelStore {
    /// Appends to a conversation; returns the stored message.
    pub fn append(&mut self, conv: &str, expires_at_ms: Option<i64>) -> StoredMessage {
        let log = self.logs.entry(conv.into()).or_default();
        let m = message(conv, log.len() as u64 + 1, expires_at_ms);
        log.push(m.clone());
        m
    }

    pub fn head(&self, conv: &str) -> u64 {
        self.logs.get(conv).map_or(0, |l| l.len() as u64)
    }

    /// The answer to a log query, as `Store` gives it.
    pub fn answer(&self, q: &Query) -> Answer {
        match q {
            Query::ConversationsOf(_) => Answer::Conversations(self.logs.keys().cloned().collect()),
            Query::Head(c) => Answer::Head(self.head(c)),
            Query::Read {
                conversation_id,
                after,
                limit,
                now_ms,
            } => Answer::Page(
                self.logs
                    .get(conversation_id)
                    .map(|l| {
                        l.iter()
                            .filter(|m| m.seq > *after)
                            .filter(|m| m.expires_at_ms.is_none_or(|e| e > *now_ms))
                            .take(*limit)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            other => panic!("not a log query: {other:?}"),
        }
    }
}

/// A core in virtual time, with what it wrote and asked for.
pub(super) struct Harness {
    pub core: Core,
    pub now: Now,
    pub key: SigningKey,
    /// Frames written, decoded, not yet taken.
    pub written: Vec<server_frame::Kind>,
    /// Actions other than queries, not yet taken.
    pub actions: Vec<Action>,
    /// The query the core waits for.
    pub query: Option<Query>,
}

impl Harness {
    pub fn new(config: CoreConfig) -> Self {
        Self::with_names(config, &[WEB_NAME])
    }

    /// A harness whose connection offers the relay-name binding for
    /// `names` (none: a QUIC connection).
    pub fn with_names(config: CoreConfig, names: &[&str]) -> Self {
        let t0 = Instant::now();
        let secrets = AuthSecrets {
            nonce: Ok(NONCE),
            exporter: Some(EXPORTER),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        };
        Self {
            core: Core::new(config, secrets, t0 + AUTH_TIMEOUT),
            now: Now {
                mono: t0,
                wall_ms: WALL0,
            },
            key: key(),
            written: Vec::new(),
            actions: Vec::new(),
            query: None,
        }
    }

    pub fn feed(&mut self, input: Input) {
        self.core.handle(self.now, input);
        self.collect();
    }

    fn collect(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Query(q) => {
                    assert!(self.query.is_none(), "two queries out: {q:?}");
                    self.query = Some(q);
                }
                other => self.actions.push(other),
            }
        }
        let (mut frames, mut traced) = (Vec::new(), Vec::new());
        self.core.take_transmit(&mut frames, &mut traced);
        for f in frames {
            self.written.push(decode(&f));
        }
    }

    /// Moves the clock on by `d`, firing the timer if it is due.
    pub fn advance(&mut self, d: Duration) {
        self.now.mono += d;
        self.now.wall_ms += i64::try_from(d.as_millis()).unwrap();
        if self.core.poll_timeout().is_some_and(|t| t <= self.now.mono) {
            self.feed(Input::Timeout);
        }
    }

    pub fn take_written(&mut self) -> Vec<server_frame::Kind> {
        std::mem::take(&mut self.written)
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The query out, which the test answers itself.
    pub fn take_query(&mut self) -> Query {
        self.query.take().expect("a query is out")
    }

    pub fn answer(&mut self, a: Answer) {
        self.query.take().expect("a query is out");
        self.feed(Input::Store(a));
    }

    /// Answers queries from `store` until none is out.
    pub fn serve(&mut self, store: &ModelStore) {
        while let Some(q) = self.query.take() {
            let a = store.answer(&q);
            self.feed(Input::Store(a));
        }
    }

    /// Seqs of the Deliver frames written (and taken), per frame.
    pub fn delivered(&mut self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        self.written.retain(|k| match k {
            server_frame::Kind::Deliver(d) => {
                let e = d.envelope.as_ref().unwrap();
                out.push((e.conversation_id.clone(), e.seq));
                false
            }
            _ => true,
        });
        out
    }

    /// The fatal error the core closed with (`None`: closed quietly).
    pub fn closed(&mut self) -> Option<Option<Fatal>> {
        let i = self
            .actions
            .iter()
            .position(|a| matches!(a, Action::Close(_)))?;
        match self.actions.remove(i) {
            Action::Close(f) => Some(f),
            _ => unreachable!(),
        }
    }

    /// Hello through AuthOk, with these stored cursors.
    pub fn authenticate(&mut self, stored: &[(&str, u64)]) {
        self.feed(frame(client_frame::Kind::Hello(v1::Hello {
            version: herold_proto::PROTOCOL_VERSION,
            device_id: DEVICE.into(),
            client: String::new(),
        })));
        assert_eq!(self.take_query(), Query::Device(DEVICE.into()));
        self.feed(Input::Store(Answer::Device(Some(device(&self.key)))));
        assert_eq!(self.take_query(), Query::AccountState(ACCOUNT.into()));
        self.feed(Input::Store(Answer::AccountState(Some(
            AccountState::default(),
        ))));
        let key = self.key.clone();
        self.respond(&key);
        assert_eq!(self.take_query(), Query::Cursors(DEVICE.into()));
        let stored = stored.iter().map(|(c, s)| ((*c).to_owned(), *s)).collect();
        self.feed(Input::Store(Answer::Cursors {
            stored,
            pending: Vec::new(),
        }));
        let written = self.take_written();
        assert!(
            matches!(written.last(), Some(server_frame::Kind::AuthOk(_))),
            "{written:?}"
        );
        let actions = self.take_actions();
        assert!(
            matches!(actions[0], Action::Authenticated(_)),
            "{actions:?}"
        );
        assert!(matches!(actions[1], Action::Register), "{actions:?}");
    }

    /// Answers the challenge written last with a signature by `key`.
    pub fn respond(&mut self, key: &SigningKey) {
        let nonce = self.challenge();
        let sig = key.sign(&auth::transcript(&nonce, &EXPORTER, DEVICE));
        self.feed(frame(client_frame::Kind::AuthResponse(v1::AuthResponse {
            signature: sig.to_bytes().to_vec(),
            relay_name: String::new(),
        })));
    }

    /// Answers the challenge written last as a browser does: `key` signs
    /// the relay-name transcript of `signed`, and the response names
    /// `named`.
    pub fn respond_named(&mut self, key: &SigningKey, signed: &str, named: &str) {
        let nonce = self.challenge();
        let sig = key.sign(&auth::web_transcript(&nonce, signed, DEVICE));
        self.feed(frame(client_frame::Kind::AuthResponse(v1::AuthResponse {
            signature: sig.to_bytes().to_vec(),
            relay_name: named.into(),
        })));
    }

    /// The nonce of the challenge written last.
    fn challenge(&mut self) -> Vec<u8> {
        let written = self.take_written();
        let Some(server_frame::Kind::AuthChallenge(ch)) = written.last() else {
            panic!("no challenge: {written:?}");
        };
        ch.nonce.clone()
    }
}

/// One framed server frame, decoded.
pub(super) fn decode(b: &Bytes) -> server_frame::Kind {
    let mut dec = FrameDecoder::new(usize::MAX);
    dec.extend(b);
    let f: v1::ServerFrame = dec.next_message().unwrap().unwrap();
    assert_eq!(dec.buffered(), 0, "one frame per chunk");
    f.kind.unwrap()
}

/// The error frame's code and message.
pub(super) fn error(k: &server_frame::Kind) -> (ErrorCode, String) {
    match k {
        server_frame::Kind::Error(e) => (ErrorCode::try_from(e.code).unwrap(), e.message.clone()),
        other => panic!("not an error: {other:?}"),
    }
}
