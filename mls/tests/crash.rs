//! The state file under SIGKILL: a device process killed in the middle of
//! its writes leaves a state file that opens, has lost nothing it handed
//! out, and never makes the device reuse a key.
//!
//! The test re-runs its own binary as the device process (`device_process`,
//! which does nothing unless `HEROLD_MLS_CRASH_STATE` is set). That process
//! sends in a loop: application messages, and now and then a self-update
//! commit, printing each as soon as `encrypt` (or `renew_leaf_key`)
//! returned, the way the SDK hands them to the relay. The test reads a few,
//! kills the process while it is busy with the next one, and plays the
//! relay and another member: every printed message must decrypt, and the
//! reopened device's next message too. A state that lost a save would reuse
//! a sender key the other member has already used up, and fail there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

use herold_mls::{MlsDevice, Processed};

const STATE: &str = "HEROLD_MLS_CRASH_STATE";
const G: &[u8] = b"crash-group";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A line of the device process: (is a commit, the message). Other lines
/// are the test harness's.
fn parse(line: &str) -> Option<(bool, Vec<u8>)> {
    // A line the kill cut short has no end mark.
    let (kind, bytes) = line.strip_suffix(" end")?.split_once(' ')?;
    let whole = bytes.len() % 2 == 0 && bytes.bytes().all(|b| b.is_ascii_hexdigit());
    match kind {
        "M" | "C" if whole && !bytes.is_empty() => Some((kind == "C", unhex(bytes))),
        _ => None,
    }
}

/// The device process: sends until it is killed.
#[test]
fn device_process() {
    let Some(path) = std::env::var_os(STATE) else {
        return;
    };
    let mut a = MlsDevice::open(Path::new(&path)).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        if i % 4 == 3 {
            let pc = a.renew_leaf_key(G).unwrap();
            // Sent to the relay, which takes it; merged afterwards.
            writeln!(out, "C {} end", hex(&pc.commit)).unwrap();
            out.flush().unwrap();
            a.confirm_commit(G).unwrap();
        } else {
            let ct = a.encrypt(G, format!("m{i}").as_bytes(), &[]).unwrap();
            writeln!(out, "M {} end", hex(&ct)).unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn a_killed_device_never_reuses_a_key() {
    if std::env::var_os(STATE).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.mls");
    // a (on disk), b (in memory) and 60 members that never read: the tree
    // is large enough that a commit's write takes a while.
    let mut a = MlsDevice::create("a", Some(&path)).unwrap();
    let mut b = MlsDevice::create("b", None).unwrap();
    a.create_group(G).unwrap();
    let mut add = vec![("b".to_owned(), b.key_packages(1).unwrap().remove(0))];
    for i in 0..60 {
        let id = format!("quiet-{i}");
        let mut d = MlsDevice::create(&id, None).unwrap();
        add.push((id, d.key_packages(1).unwrap().remove(0)));
    }
    let pc = a.commit(G, add, vec![]).unwrap();
    a.confirm_commit(G).unwrap();
    b.join(pc.welcome.as_ref().unwrap()).unwrap();
    drop(a);

    let mut read_total = 0usize;
    for round in 0..8usize {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "device_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STATE, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill it while it works on the message after the k-th.
        let k = 3 + round * 5;
        let mut sent = Vec::new();
        while sent.len() < k {
            let line = lines.next().expect("the device process ended").unwrap();
            if let Some(m) = parse(&line) {
                sent.push(m);
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // What it printed before it died was sent too.
        sent.extend(lines.map_while(Result::ok).filter_map(|l| parse(&l)));
        // The other member reads everything that was sent, in order.
        for (commit, bytes) in &sent {
            match b.process(G, bytes) {
                Ok(Processed::Application { .. }) if !commit => {}
                Ok(Processed::Commit { .. }) if *commit => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        read_total += sent.len();

        // The device comes back from its file.
        let mut a = MlsDevice::open(&path).expect("the state file opens after a SIGKILL");
        if a.epoch(G) < b.epoch(G) {
            // Killed between sending its commit and merging it: the echo
            // from the relay merges it (the SDK does that).
            a.confirm_commit(G).unwrap();
        } else {
            // Killed before sending a commit it had made: the relay never
            // had it, so it goes (the SDK does that too).
            a.discard_commit(G).unwrap();
        }
        assert_eq!(a.epoch(G), b.epoch(G), "round {round}");
        let ct = a.encrypt(G, b"after the crash", &[]).unwrap();
        match b.process(G, &ct) {
            Ok(Processed::Application { plaintext, .. }) => {
                assert_eq!(plaintext, b"after the crash", "round {round}");
            }
            other => panic!("round {round}: the reopened device's message: {other:?}"),
        }
        drop(a);
    }
    assert!(read_total >= 8 * 3, "{read_total}");
}
