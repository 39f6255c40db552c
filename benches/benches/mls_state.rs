//! What a device's MLS state file costs per post: the bytes one `encrypt`
//! writes to disk (it saves before it returns, so that a crash can never
//! make the device reuse a key) and its wall time with the fsync, for the
//! publisher of a channel of N members. Against the whole state, which is
//! what a format that rewrites the whole state on every change writes (the
//! state file before it became a database; `docs/e2e.md`, "The SDK").
//!
//! The channel is built as Herold builds it: every member added in
//! add-only commits (no path), then one self-update by the publisher (what
//! a removal costs too).
//!
//! Run: `cargo bench -p herold-benches --bench mls_state`.
//! `HEROLD_MLS_SIZES` (default `1000,7000`) picks the channel sizes,
//! `HEROLD_MLS_POSTS` (default 50) the posts measured per size.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a panic is a failure

use std::time::{Duration, Instant};

use herold_mls::MlsDevice;

const G: &[u8] = b"election-info";

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name).map_or_else(
        |_| default.to_vec(),
        |v| v.split(',').map(|s| s.trim().parse().unwrap()).collect(),
    )
}

fn median<T: Copy + Ord>(mut v: Vec<T>) -> T {
    v.sort_unstable();
    v[v.len() / 2]
}

fn kib(b: u64) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
}

fn main() {
    let sizes = env_list("HEROLD_MLS_SIZES", &[1000, 7000]);
    let posts = env_list("HEROLD_MLS_POSTS", &[50])[0];
    println!(
        "| members | whole state | state file | written per post (median) | whole state / written | encrypt + fsync (median) | written merging a self-update |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("publisher.mls");
        let mut p = MlsDevice::create("publisher.pc", Some(&path)).unwrap();
        p.create_group(G).unwrap();
        let members: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| {
                let id = format!("vol-{i:05}.phone");
                let mut d = MlsDevice::create(&id, None).unwrap();
                let kp = d.key_packages(1).unwrap().remove(0);
                (id, kp)
            })
            .collect();
        for batch in members.chunks(1000) {
            p.commit(G, batch.to_vec(), vec![]).unwrap();
            p.confirm_commit(G).unwrap();
        }
        p.renew_leaf_key(G).unwrap();
        p.confirm_commit(G).unwrap();
        let renewal = p.last_save_bytes();
        let mut written = Vec::with_capacity(posts);
        let mut times: Vec<Duration> = Vec::with_capacity(posts);
        for _ in 0..posts {
            let t = Instant::now();
            p.encrypt(G, &[0x42; 300], &[]).unwrap();
            times.push(Instant::now().saturating_duration_since(t));
            written.push(p.last_save_bytes());
        }
        let whole = p.stored_bytes();
        let file = std::fs::metadata(&path).unwrap().len();
        let per_post = median(written);
        println!(
            "| {n} | {} | {} | {} | {:.0}x | {:.2} ms | {} |",
            kib(whole),
            kib(file),
            kib(per_post),
            whole as f64 / per_post.max(1) as f64,
            median(times).as_secs_f64() * 1000.0,
            kib(renewal),
        );
    }
}
