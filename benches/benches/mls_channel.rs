//! What a 7,000-member MLS (RFC 9420) information channel costs with
//! `openmls`, so the channel design can be chosen on numbers: one group for
//! everybody, sub-groups, or sender keys.
//!
//! Ciphersuite `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`, BasicCredential
//! (`vol-01234.phone`), one Ed25519 key per device. One creator (the
//! publisher) makes the group; the members are key packages generated up
//! front. For each group size N it measures:
//!
//! - all N members added in one commit, with `add_members` (commit carries an
//!   UpdatePath) and with `add_members_without_update`: commit and Welcome
//!   bytes (Welcome with the ratchet tree inside), the exported tree, the
//!   creator's time for the commit and for `merge_pending_commit`, and the
//!   time one of those members needs to join from that Welcome;
//! - the same N added in batches (`HEROLD_MLS_BATCH`, default 100) with
//!   `add_members`: totals and the slowest batch;
//! - one member joining later, twice: `add_members` with the tree in the
//!   Welcome, then an add-only commit (no path) with the tree out of band.
//!   Creator time, the joiner's time to process the Welcome, and an existing
//!   member's time to process the commit (what every device pays per
//!   membership change);
//! - one 300-byte application message: ciphertext size, encrypt and decrypt;
//! - the size of one member's (and the creator's) group state in openmls's
//!   in-memory storage (serde JSON, as `MemoryStorage` keeps it).
//!
//! Times are wall times on this machine; openmls parallelises path
//! encryption with rayon, so they depend on the cores available.
//!
//! Run: `cargo bench -p herold-benches --bench mls_channel`.
//! `HEROLD_MLS_SIZES` (default `100,1000,7000`) picks the group sizes,
//! `HEROLD_MLS_BATCH` the batch size, `HEROLD_MLS_REPEAT` (default 1) how
//! many times each scenario runs (the table shows the median).

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

use std::collections::HashMap;
use std::time::{Duration, Instant};

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
const PLAINTEXT_LEN: usize = 300;
const APP_MESSAGES: usize = 50;

/// One device: its provider (holds the key package's private keys and, after
/// joining, the group state), its signature key and its credential.
struct Device {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    cwk: CredentialWithKey,
}

fn device(id: &str) -> Device {
    let provider = OpenMlsRustCrypto::default();
    let (signer, cwk) = identity(id);
    Device {
        provider,
        signer,
        cwk,
    }
}

fn identity(id: &str) -> (SignatureKeyPair, CredentialWithKey) {
    let signer = SignatureKeyPair::new(CS.signature_algorithm()).unwrap();
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(id.as_bytes().to_vec()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    (signer, cwk)
}

fn key_package(d: &Device) -> KeyPackage {
    KeyPackage::builder()
        .build(CS, &d.provider, &d.signer, d.cwk.clone())
        .unwrap()
        .key_package()
        .clone()
}

fn creator() -> (Device, MlsGroup) {
    let d = device("publisher-00001.desktop");
    let cfg = MlsGroupCreateConfig::builder()
        .ciphersuite(CS)
        .use_ratchet_tree_extension(true)
        .build();
    let group = MlsGroup::new(&d.provider, &d.signer, &cfg, d.cwk.clone()).unwrap();
    (d, group)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, Instant::now().saturating_duration_since(t))
}

/// What one add commit produced.
struct Added {
    commit: Vec<u8>,
    welcome: Vec<u8>,
    commit_time: Duration,
    merge_time: Duration,
}

/// One add commit by the creator, merged at once (as if the relay accepted
/// it). `path`: the commit carries an UpdatePath (`add_members`) or not
/// (`add_members_without_update`). `tree_in_welcome`: the ratchet tree rides
/// inside the Welcome's GroupInfo.
fn add(
    creator: &Device,
    group: &mut MlsGroup,
    kps: &[KeyPackage],
    path: bool,
    tree_in_welcome: bool,
) -> Added {
    let (bundle, commit_time) = timed(|| {
        group
            .commit_builder()
            .propose_adds(kps.iter().cloned())
            .force_self_update(path)
            .load_psks(creator.provider.storage())
            .unwrap()
            .use_ratchet_tree_extension(tree_in_welcome)
            .build(
                creator.provider.rand(),
                creator.provider.crypto(),
                &creator.signer,
                |_| true,
            )
            .unwrap()
            .stage_commit(&creator.provider)
            .unwrap()
    });
    let welcome = bundle.to_welcome_msg().unwrap().to_bytes().unwrap();
    let (commit, _, _) = bundle.into_messages();
    let commit = commit.to_bytes().unwrap();
    let ((), merge_time) = timed(|| group.merge_pending_commit(&creator.provider).unwrap());
    Added {
        commit,
        welcome,
        commit_time,
        merge_time,
    }
}

/// A device joins from Welcome bytes (and tree bytes if out of band); the
/// time includes parsing.
fn join(d: &Device, welcome: &[u8], tree: Option<&[u8]>) -> (MlsGroup, Duration) {
    timed(|| {
        let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(welcome)
            .unwrap()
            .extract()
        else {
            panic!("not a Welcome")
        };
        let tree = tree.map(|t| RatchetTreeIn::tls_deserialize_exact(t).unwrap());
        StagedWelcome::new_from_welcome(&d.provider, &MlsGroupJoinConfig::default(), w, tree)
            .unwrap()
            .into_group(&d.provider)
            .unwrap()
    })
}

/// An existing member processes a commit from bytes and merges it.
fn process_commit(d: &Device, group: &mut MlsGroup, commit: &[u8]) -> Duration {
    timed(|| {
        let pm = MlsMessageIn::tls_deserialize_exact(commit)
            .unwrap()
            .try_into_protocol_message()
            .unwrap();
        let processed = group.process_message(&d.provider, pm).unwrap();
        let ProcessedMessageContent::StagedCommitMessage(sc) = processed.into_content() else {
            panic!("not a commit")
        };
        group.merge_staged_commit(&d.provider, *sc).unwrap();
    })
    .1
}

fn tree_bytes(group: &MlsGroup) -> Vec<u8> {
    group
        .export_ratchet_tree()
        .tls_serialize_detached()
        .unwrap()
}

fn storage_bytes(d: &Device) -> usize {
    d.provider
        .storage()
        .values
        .read()
        .unwrap()
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum()
}

fn median(d: &mut [Duration]) -> Duration {
    d.sort();
    d[d.len() / 2]
}

#[derive(Clone, Copy)]
enum Kind {
    Bytes,
    Time,
    Count,
}

/// Metric rows in print order, with one value list per (row, N).
#[derive(Default)]
struct Table {
    rows: Vec<(String, Kind)>,
    values: HashMap<(String, usize), Vec<f64>>,
}

impl Table {
    fn put(&mut self, label: &str, kind: Kind, n: usize, v: f64) {
        if !self.rows.iter().any(|(l, _)| l == label) {
            self.rows.push((label.to_string(), kind));
        }
        self.values
            .entry((label.to_string(), n))
            .or_default()
            .push(v);
    }
    fn bytes(&mut self, label: &str, n: usize, b: usize) {
        self.put(label, Kind::Bytes, n, b as f64);
    }
    fn time(&mut self, label: &str, n: usize, d: Duration) {
        self.put(label, Kind::Time, n, d.as_secs_f64());
    }
    fn count(&mut self, label: &str, n: usize, c: usize) {
        self.put(label, Kind::Count, n, c as f64);
    }
    fn print(&self, sizes: &[usize]) {
        print!("| |");
        for n in sizes {
            print!(" N = {n} |");
        }
        println!();
        print!("|---|");
        for _ in sizes {
            print!("---:|");
        }
        println!();
        for (label, kind) in &self.rows {
            print!("| {label} |");
            for n in sizes {
                match self.values.get(&(label.clone(), *n)) {
                    None => print!(" - |"),
                    Some(v) => {
                        let mut v = v.clone();
                        v.sort_by(f64::total_cmp);
                        print!(" {} |", fmt(*kind, v[v.len() / 2]));
                    }
                }
            }
            println!();
        }
    }
}

fn fmt(kind: Kind, v: f64) -> String {
    match kind {
        Kind::Count => format!("{v:.0}"),
        Kind::Bytes if v >= 1e6 => format!("{:.2} MB", v / 1e6),
        Kind::Bytes if v >= 1e4 => format!("{:.1} kB", v / 1e3),
        Kind::Bytes => format!("{v:.0} B"),
        Kind::Time if v >= 1.0 => format!("{v:.2} s"),
        Kind::Time if v >= 1e-3 => format!("{:.1} ms", v * 1e3),
        Kind::Time => format!("{:.0} µs", v * 1e6),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(default)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("HEROLD_MLS_SIZES")
        .unwrap_or_else(|_| "100,1000,7000".into())
        .split(',')
        .map(|s| s.trim().replace('_', "").parse().unwrap())
        .collect();
    let batch = env_usize("HEROLD_MLS_BATCH", 100);
    let repeat = env_usize("HEROLD_MLS_REPEAT", 1).max(1);
    let max_n = sizes.iter().copied().max().unwrap();
    let started = Instant::now();
    let mut t = Table::default();

    // Key packages for every member, all private keys in one pool provider
    // (only the observer below ever joins, and it has its own provider).
    eprintln!("generating {max_n} key packages");
    let pool = OpenMlsRustCrypto::default();
    let (kps, kp_gen) = timed(|| {
        (0..max_n)
            .map(|i| {
                let (signer, cwk) = identity(&format!("vol-{i:05}.phone"));
                KeyPackage::builder()
                    .build(CS, &pool, &signer, cwk)
                    .unwrap()
                    .key_package()
                    .clone()
            })
            .collect::<Vec<_>>()
    });
    let kp_wire: Vec<Vec<u8>> = kps
        .iter()
        .map(|kp| MlsMessageOut::from(kp.clone()).to_bytes().unwrap())
        .collect();
    // What the adder does with each uploaded key package: parse, validate.
    let ((), kp_validate) = timed(|| {
        for b in &kp_wire {
            let MlsMessageBodyIn::KeyPackage(kp) =
                MlsMessageIn::tls_deserialize_exact(b).unwrap().extract()
            else {
                panic!("not a key package")
            };
            kp.validate(pool.crypto(), ProtocolVersion::Mls10).unwrap();
        }
    });
    let per = |d: Duration| d / u32::try_from(max_n).unwrap();
    for &n in &sizes {
        t.time(
            "key package generation per device (incl. Ed25519 key)",
            n,
            per(kp_gen),
        );
        t.bytes("key package on the wire", n, kp_wire[0].len());
        t.time(
            "key package parse + validate per member (adder)",
            n,
            per(kp_validate),
        );
    }

    for &n in &sizes {
        for run in 0..repeat {
            eprintln!("N = {n}, run {}/{repeat}: one commit", run + 1);
            // 1. All N in one commit with an UpdatePath; member 0 is an
            // observer device with its own provider that joins for real.
            let observer = device("vol-00000.phone");
            let mut members = kps[..n].to_vec();
            members[0] = key_package(&observer);
            let (cd, mut group) = creator();
            let a = add(&cd, &mut group, &members, true, true);
            let tree = tree_bytes(&group);
            t.bytes("one commit: commit (add_members)", n, a.commit.len());
            t.bytes("one commit: Welcome, tree inside", n, a.welcome.len());
            t.bytes("ratchet tree (exported)", n, tree.len());
            t.time("one commit: creator add_members", n, a.commit_time);
            t.time("one commit: creator merge_pending_commit", n, a.merge_time);
            let (mut og, join_first) = join(&observer, &a.welcome, None);
            t.time(
                "one commit: a member joins from that Welcome",
                n,
                join_first,
            );

            // 3. Late joiner N+1: add_members, tree inside the Welcome.
            let j1 = device(&format!("vol-{n:05}.phone"));
            let a1 = add(&cd, &mut group, &[key_package(&j1)], true, true);
            t.bytes("late join (path): commit", n, a1.commit.len());
            t.bytes(
                "late join (path): Welcome, tree inside",
                n,
                a1.welcome.len(),
            );
            t.time(
                "late join (path): creator commit + merge",
                n,
                a1.commit_time + a1.merge_time,
            );
            let (_, j1_time) = join(&j1, &a1.welcome, None);
            t.time("late join (path): joiner processes Welcome", n, j1_time);
            // 4. An existing member processes the join commit.
            let p1 = process_commit(&observer, &mut og, &a1.commit);
            t.time("late join (path): a member processes the commit", n, p1);

            // Late joiner N+2: add-only commit, tree out of band.
            let j2 = device(&format!("vol-{:05}.phone", n + 1));
            let a2 = add(&cd, &mut group, &[key_package(&j2)], false, false);
            let tree2 = tree_bytes(&group);
            t.bytes("late join (no path): commit", n, a2.commit.len());
            t.bytes(
                "late join (no path): Welcome, tree out of band",
                n,
                a2.welcome.len(),
            );
            t.bytes(
                "late join (no path): tree fetched from the relay",
                n,
                tree2.len(),
            );
            t.time(
                "late join (no path): creator commit + merge",
                n,
                a2.commit_time + a2.merge_time,
            );
            let (_, j2_time) = join(&j2, &a2.welcome, Some(&tree2));
            t.time(
                "late join (no path): joiner processes Welcome + tree",
                n,
                j2_time,
            );
            let p2 = process_commit(&observer, &mut og, &a2.commit);
            t.time("late join (no path): a member processes the commit", n, p2);

            // Application message: creator to the observer.
            let plaintext = vec![0x42u8; PLAINTEXT_LEN];
            let mut enc = Vec::with_capacity(APP_MESSAGES);
            let mut dec = Vec::with_capacity(APP_MESSAGES);
            let mut ct_len = 0;
            for _ in 0..APP_MESSAGES {
                let (ct, e) = timed(|| {
                    group
                        .create_message(&cd.provider, &cd.signer, &plaintext)
                        .unwrap()
                        .to_bytes()
                        .unwrap()
                });
                ct_len = ct.len();
                let (pt, d) = timed(|| {
                    let pm = MlsMessageIn::tls_deserialize_exact(&ct)
                        .unwrap()
                        .try_into_protocol_message()
                        .unwrap();
                    match og
                        .process_message(&observer.provider, pm)
                        .unwrap()
                        .into_content()
                    {
                        ProcessedMessageContent::ApplicationMessage(m) => m.into_bytes(),
                        _ => panic!("not an application message"),
                    }
                });
                assert_eq!(pt.len(), PLAINTEXT_LEN);
                enc.push(e);
                dec.push(d);
            }
            t.bytes("300-byte message: ciphertext", n, ct_len);
            t.time("300-byte message: encrypt (creator)", n, median(&mut enc));
            t.time("300-byte message: decrypt (member)", n, median(&mut dec));

            // 5. Group state as stored.
            t.bytes("member's stored group state", n, storage_bytes(&observer));
            t.bytes("creator's stored group state", n, storage_bytes(&cd));
            drop((group, og, cd, observer));

            // 1b. All N in one commit without an UpdatePath.
            eprintln!("N = {n}, run {}/{repeat}: one commit, no path", run + 1);
            let (cd, mut group) = creator();
            let b = add(&cd, &mut group, &kps[..n], false, true);
            t.bytes("one commit, no path: commit", n, b.commit.len());
            t.bytes(
                "one commit, no path: Welcome, tree inside",
                n,
                b.welcome.len(),
            );
            t.time("one commit, no path: creator commit", n, b.commit_time);
            t.time("one commit, no path: creator merge", n, b.merge_time);
            drop((group, cd));

            // 2. Batches with add_members, tree inside every Welcome.
            eprintln!("N = {n}, run {}/{repeat}: batches of {batch}", run + 1);
            let (cd, mut group) = creator();
            let (mut commits, mut welcomes, mut total, mut worst) =
                (0usize, 0usize, Duration::ZERO, Duration::ZERO);
            let mut count = 0;
            for chunk in kps[..n].chunks(batch) {
                let a = add(&cd, &mut group, chunk, true, true);
                commits += a.commit.len();
                welcomes += a.welcome.len();
                total += a.commit_time + a.merge_time;
                worst = worst.max(a.commit_time + a.merge_time);
                count += 1;
            }
            let label = format!("batches of {batch}");
            t.count(&format!("{label}: commits"), n, count);
            t.bytes(&format!("{label}: commit bytes, total"), n, commits);
            t.bytes(
                &format!("{label}: Welcome bytes, total (tree inside)"),
                n,
                welcomes,
            );
            t.time(&format!("{label}: creator time, total"), n, total);
            t.time(&format!("{label}: creator time, slowest batch"), n, worst);
        }
        eprintln!(
            "N = {n} done at {:.0} s",
            Instant::now()
                .saturating_duration_since(started)
                .as_secs_f64()
        );
    }

    println!();
    println!(
        "MLS channel, {CS:?}, {repeat} run(s), medians; {} s in all",
        Instant::now().saturating_duration_since(started).as_secs()
    );
    println!();
    t.print(&sizes);
}
