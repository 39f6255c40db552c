//! A seeded simulation of the session core against a model store: thousands
//! of random interleavings of appends, pushes (in order, reordered,
//! duplicated, dropped), store answers, acks, syncs (with and without the
//! device's cursors), resyncs, submits and time steps, ending with a drain.
//! After every step it checks what the device was sent: per conversation
//! strictly increasing seqs (so never a duplicate on one connection), never
//! anything at or below the cursor the device had, nothing expired when its
//! frame was produced, acks recorded only for what was delivered; and after
//! a final sync, every message still unexpired that the device did not have.
//!
//! `HEROLD_SIM_SEEDS` sets the number of seeds (default 3000);
//! `HEROLD_SIM_SEED` runs one seed, and `HEROLD_SIM_TRACE` prints its steps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herold_proto::v1::{self, ErrorCode, client_frame, server_frame};
use herold_store::StoredMessage;

use super::core::{Action, Input};
use super::testkit::*;
use super::{DRAIN_READ_GRACE, Fatal, server_frame as encode};
use crate::registry::Push;

const CONVS: [&str; 3] = ["a", "b", "c"];

/// SplitMix64: small, fast, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// What the device has seen, and what it expects to hear about.
#[derive(Default)]
struct Device {
    /// Its cursor before this connection, per conversation.
    had: BTreeMap<String, u64>,
    seen: BTreeMap<String, BTreeSet<u64>>,
    recorded: BTreeMap<String, u64>,
    bad_acks: usize,
    refused_acks: usize,
    submits: usize,
    submits_started: usize,
    submits_refused: usize,
    answers_due: usize,
    syncs: usize,
    sync_dones: usize,
    drainings: usize,
}

impl Device {
    fn seen_max(&self, conv: &str) -> u64 {
        self.seen
            .get(conv)
            .and_then(|s| s.last().copied())
            .unwrap_or(0)
    }

    fn had(&self, conv: &str) -> u64 {
        self.had.get(conv).copied().unwrap_or(0)
    }
}

struct Sim {
    seed: u64,
    rng: Rng,
    h: Harness,
    store: ModelStore,
    dev: Device,
    /// Pushes on their way through the router.
    transit: Vec<StoredMessage>,
    /// Submit tasks running.
    tasks: u32,
    max_in_flight: u32,
    trace: bool,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let mut cfg = config();
        cfg.max_in_flight = 1 + rng.below(3) as u32;
        cfg.max_held_pushes = 2 + rng.below(10) as usize;
        cfg.sync_page = 1 + rng.below(4) as usize;
        cfg.max_inline_gap = 1 + rng.below(6) as usize;
        let max_in_flight = cfg.max_in_flight;
        let mut s = Self {
            seed,
            rng,
            h: Harness::new(cfg),
            store: ModelStore::default(),
            dev: Device::default(),
            transit: Vec::new(),
            tasks: 0,
            max_in_flight,
            trace: std::env::var("HEROLD_SIM_TRACE").is_ok(),
        };
        // History from before this connection, and the device's cursors.
        for c in CONVS {
            s.store.logs.insert(c.into(), Vec::new());
            for _ in 0..s.rng.below(6) {
                s.append(c);
            }
            if s.rng.below(3) > 0 {
                let had = s.rng.below(s.store.head(c) + 1);
                s.dev.had.insert(c.into(), had);
            }
        }
        s.transit.clear();
        let had: Vec<(&str, u64)> = s.dev.had.iter().map(|(c, v)| (c.as_str(), *v)).collect();
        s.h.authenticate(&had);
        s
    }

    fn append(&mut self, conv: &str) -> StoredMessage {
        let expires =
            (self.rng.below(10) < 3).then(|| self.h.now.wall_ms + 1 + self.rng.below(600) as i64);
        let m = self.store.append(conv, expires);
        match self.rng.below(10) {
            0 => {}
            1 => {
                self.transit.push(m.clone());
                self.transit.push(m.clone());
            }
            _ => self.transit.push(m.clone()),
        }
        m
    }

    fn feed(&mut self, input: Input) {
        if self.trace {
            eprintln!("> {input:?}");
        }
        self.h.feed(input);
        if self.trace {
            let written: Vec<String> = self.h.written.iter().map(short).collect();
            eprintln!("< {written:?} {:?} {:?}", self.h.actions, self.h.query);
        }
        self.check();
    }

    /// Checks everything written and done since the last check.
    fn check(&mut self) {
        let seed = self.seed;
        let now = self.h.now.wall_ms;
        for k in self.h.take_written() {
            match k {
                server_frame::Kind::Deliver(d) => {
                    let e = d.envelope.unwrap();
                    let c = e.conversation_id.clone();
                    assert!(
                        e.expires_at_ms == 0 || e.expires_at_ms > now,
                        "seed {seed}: {c}:{} expired at {} was written at {now}",
                        e.seq,
                        e.expires_at_ms
                    );
                    assert!(
                        e.seq > self.dev.seen_max(&c),
                        "seed {seed}: {c}:{} after {} (out of order or again)",
                        e.seq,
                        self.dev.seen_max(&c)
                    );
                    assert!(
                        e.seq > self.dev.had(&c),
                        "seed {seed}: {c}:{} at or below the device's cursor",
                        e.seq
                    );
                    assert_eq!(e.ciphertext, format!("{c}:{}", e.seq).into_bytes());
                    self.dev.seen.entry(c).or_default().insert(e.seq);
                }
                server_frame::Kind::Error(e) => match ErrorCode::try_from(e.code) {
                    Ok(ErrorCode::ProtocolViolation) => self.dev.refused_acks += 1,
                    Ok(ErrorCode::TooManyInFlight) => self.dev.submits_refused += 1,
                    other => panic!("seed {seed}: unexpected error {other:?}: {}", e.message),
                },
                server_frame::Kind::Pong(_) => self.dev.answers_due -= 1,
                server_frame::Kind::SyncDone(_) => self.dev.sync_dones += 1,
                server_frame::Kind::Draining(d) => {
                    assert_eq!(d.reconnect_after_ms, 7);
                    self.dev.drainings += 1;
                }
                other => panic!("seed {seed}: unexpected frame {other:?}"),
            }
        }
        for a in self.h.take_actions() {
            match a {
                Action::Submit(_) => {
                    self.dev.submits_started += 1;
                    self.tasks += 1;
                    assert!(
                        self.tasks <= self.max_in_flight,
                        "seed {seed}: over the limit"
                    );
                }
                Action::RecordCursors(acks) => {
                    for (c, s) in acks {
                        assert!(
                            s <= self.dev.seen_max(&c),
                            "seed {seed}: {c}:{s} never sent"
                        );
                        let before = self.dev.recorded.get(&c).copied().unwrap_or(0);
                        assert!(
                            s > before.max(self.dev.had(&c)),
                            "seed {seed}: {c}:{s} again"
                        );
                        self.dev.recorded.insert(c, s);
                    }
                }
                other => panic!("seed {seed}: unexpected action {other:?}"),
            }
        }
    }

    /// Answers the query out, if any.
    fn answer(&mut self) {
        if let Some(q) = self.h.query.take() {
            let a = self.store.answer(&q);
            self.feed(Input::Store(a));
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..25 => {
                let c = *self.rng.pick(&CONVS);
                self.append(c);
            }
            25..50 if !self.transit.is_empty() => {
                // Mostly in order, sometimes overtaken.
                let i = if self.rng.below(10) < 7 {
                    0
                } else {
                    self.rng.below(self.transit.len() as u64) as usize
                };
                let m = self.transit.remove(i);
                self.feed(push(&m));
            }
            50..65 => self.answer(),
            65..72 => {
                let c = *self.rng.pick(&CONVS);
                let max = self.dev.seen_max(c);
                if max > 0 && self.rng.below(4) > 0 {
                    let seq = 1 + self.rng.below(max);
                    self.feed(ack(c, seq));
                } else {
                    self.dev.bad_acks += 1;
                    // Beyond anything the log will hold by the time the
                    // relay reads it.
                    let seq = (1 << 40) + self.rng.below(3);
                    self.feed(ack(c, seq));
                }
            }
            72..77 => {
                // The device's own cursors are where it stands when the
                // relay reads them: sent only while frames are taken at
                // once (a device whose cursor is behind what is in flight
                // to it asks for those messages again, rightly).
                let mut cursors = Vec::new();
                if self.h.core.wants_frames() && self.rng.below(2) == 0 {
                    for c in CONVS {
                        if self.rng.below(2) == 0 {
                            cursors.push((c, self.dev.seen_max(c).max(self.dev.had(c))));
                        }
                    }
                }
                self.dev.syncs += 1;
                self.feed(sync(&cursors));
            }
            77..80 => {
                self.dev.syncs += 1;
                self.feed(Input::Push(Push::Resync));
            }
            80..90 => {
                let ms = self.rng.below(150);
                self.advance(Duration::from_millis(ms));
            }
            90..94 => {
                self.dev.submits += 1;
                let id = self.dev.submits as u8;
                self.feed(submit(id));
            }
            94..97 if self.tasks > 0 => self.finish_task(),
            97..100 => {
                self.dev.answers_due += 1;
                self.feed(frame(client_frame::Kind::Ping(v1::Ping { nonce: 1 })));
            }
            _ => {}
        }
    }

    fn advance(&mut self, d: Duration) {
        self.h.advance(d);
        self.check();
    }

    fn finish_task(&mut self) {
        self.tasks -= 1;
        self.dev.answers_due += 1;
        let reply = encode(server_frame::Kind::Pong(v1::Pong { nonce: 2 }));
        self.feed(Input::TaskDone(Some(reply)));
    }

    /// Delivers or drops what is in transit, answers every query, syncs
    /// once more and checks that nothing unexpired is missing.
    fn finish(&mut self) {
        while let Some(m) = self.transit.pop() {
            if self.rng.below(2) == 0 {
                self.feed(push(&m));
            }
            self.answer();
        }
        while self.h.query.is_some() {
            self.answer();
        }
        self.dev.syncs += 1;
        self.feed(sync(&[]));
        while self.h.query.is_some() {
            self.answer();
        }
        let seed = self.seed;
        let now = self.h.now.wall_ms;
        for (c, log) in &self.store.logs {
            let seen = self.dev.seen.get(c);
            for m in log {
                let live = m.expires_at_ms.is_none_or(|e| e > now);
                if live && m.seq > self.dev.had(c) {
                    assert!(
                        seen.is_some_and(|s| s.contains(&m.seq)),
                        "seed {seed}: {c}:{} never delivered",
                        m.seq
                    );
                }
            }
        }
        let d = &self.dev;
        // Large gaps and too many held pushes add syncs of their own.
        assert!(d.sync_dones >= d.syncs, "seed {seed}: a SyncDone per sync");
        assert_eq!(d.refused_acks, d.bad_acks, "seed {seed}: refused acks");
        assert_eq!(
            d.submits_started + d.submits_refused,
            d.submits,
            "seed {seed}: every submit started or refused"
        );
    }

    /// Drains: Draining once the submits are answered, then the grace,
    /// then the close with every ack recorded.
    fn drain(&mut self) {
        self.feed(Input::Drain {
            reconnect_after_ms: 7,
        });
        while self.tasks > 0 {
            assert!(!self.h.core.wants_frames(), "seed {}", self.seed);
            self.finish_task();
        }
        assert_eq!(
            self.dev.answers_due, 0,
            "seed {}: answers missing",
            self.seed
        );
        let seed = self.seed;
        assert_eq!(
            self.dev.drainings, 1,
            "seed {seed}: one Draining, after the answers"
        );
        // A last ack within the grace is recorded at the close.
        let c = *self.rng.pick(&CONVS);
        let max = self.dev.seen_max(c);
        if max
            > self
                .dev
                .recorded
                .get(c)
                .copied()
                .unwrap_or(0)
                .max(self.dev.had(c))
        {
            self.h.feed(ack(c, max));
        }
        self.h.advance(DRAIN_READ_GRACE);
        let closed = self.h.closed();
        assert!(
            matches!(
                closed,
                Some(Some(Fatal {
                    code: ErrorCode::Draining,
                    ..
                }))
            ),
            "seed {seed}: {closed:?}"
        );
        self.check();
        if max > self.dev.had(c) {
            assert_eq!(
                self.dev.recorded.get(c),
                Some(&max),
                "seed {seed}: acks flushed"
            );
        }
    }
}

/// A written frame in a trace line.
fn short(k: &server_frame::Kind) -> String {
    match k {
        server_frame::Kind::Deliver(d) => d
            .envelope
            .as_ref()
            .map(|e| format!("{}:{}", e.conversation_id, e.seq))
            .unwrap_or_default(),
        other => format!("{other:?}").chars().take(40).collect(),
    }
}

fn run(seed: u64) {
    let mut sim = Sim::new(seed);
    let steps = 50 + sim.rng.below(350);
    for _ in 0..steps {
        sim.step();
    }
    sim.finish();
    sim.drain();
}

#[test]
fn random_interleavings_keep_order_once_and_expiry() {
    let one = std::env::var("HEROLD_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let seeds: u64 = std::env::var("HEROLD_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    match one {
        Some(seed) => run(seed),
        None => {
            for seed in 0..seeds {
                run(seed);
            }
        }
    }
}
