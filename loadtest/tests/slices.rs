//! Two load generators run one scenario together (`--slice 1/2` and
//! `2/2`, one run id), each connecting its half of the population and
//! sending its half of the schedule, against one relay on loopback; their
//! reports merge into one verdict over the whole population. A delivery
//! taken out of one slice's report is found lost by the merge.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;

use herold_loadtest::slice::{Slice, merge};
use herold_loadtest::{Scenario, Target};
use herold_relay::{Config, Relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slices_merge_into_one_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::bind(Config::dev(dir.path())).await.unwrap();
    let target = |k: usize| Target {
        endpoints: 2,
        concurrency: 32,
        slice: Slice { index: k, count: 2 },
        run_id: Some(0x51ce_0001),
        // Both start their schedules at the same moment, after provisioning
        // and connecting.
        start_at_unix_ms: Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
                + 8_000,
        ),
        ..Target::new(
            relay.local_addr().unwrap(),
            herold_client::tls::parse_fingerprint(relay.fingerprint()).unwrap(),
            format!("http://{}", relay.admin_addr().unwrap()),
        )
    };
    let (t1, t2) = (target(1), target(2));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/election-sunday.toml");
    let mut scenario = Scenario::load(&path).unwrap();
    scenario.scale = 0.01;
    scenario.rate_scale = 100.0;
    scenario.duration_secs = 4.0;
    scenario.settle_secs = 30.0;
    scenario.phases.retain(|p| p.from_secs < 4.0);
    scenario.traffic.retain(|t| t.attachment_bytes == 0);

    let (r1, r2) = tokio::join!(
        herold_loadtest::run(scenario.clone(), t1),
        herold_loadtest::run(scenario.clone(), t2)
    );
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    let (s1, s2) = (r1.slice.clone().unwrap(), r2.slice.clone().unwrap());
    assert!(r1.verdict().starts_with("slice 1/2"), "{}", r1.verdict());
    // Each slice ran its half: its own devices, its own sends.
    assert!(!s1.accepted.is_empty() && !s2.accepted.is_empty());
    assert_eq!(s1.received.len() + s2.received.len(), r1.devices);
    assert!(
        s1.received
            .iter()
            .all(|(d, _)| s2.received.iter().all(|(e, _)| d != e))
    );

    // What the merge reads: the slices' JSON reports, side by side.
    let out = dir.path().join("reports");
    let mut written = r1.write(&out).unwrap();
    written.extend(r2.write(&out).unwrap());
    let read: Vec<_> = written
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let r: herold_loadtest::Report =
                serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            r.slice.unwrap()
        })
        .collect();
    assert_eq!(read.len(), 2, "{written:?}");
    let v = merge(&scenario, &read).unwrap();
    assert!(v.is_clean(), "{v:?}");
    assert!(v.expected > 0);
    assert_eq!(v.delivered, v.expected, "{v:?}");
    // Deliveries crossed slices: devices of slice 2 got messages slice 1 sent.
    let sent_by_1: std::collections::HashSet<u64> = s1.accepted.iter().map(|a| a.0).collect();
    assert!(
        s2.received
            .iter()
            .any(|(_, r)| r.messages.iter().any(|(m, _)| sent_by_1.contains(m))),
        "no delivery crossed slices"
    );

    // One delivery taken out of slice 2's report: the merge finds it lost.
    let mut tampered = s2.clone();
    let victim = tampered
        .received
        .iter_mut()
        .find(|(_, r)| !r.messages.is_empty())
        .unwrap();
    victim.1.messages.pop();
    let v = merge(&scenario, &[s1.clone(), tampered]).unwrap();
    assert_eq!(v.lost, 1, "{v:?}");
    // And a slice missing is an error, not a verdict.
    let e = merge(&scenario, &[s1]).unwrap_err();
    assert!(e.to_string().contains("slice 2/2 is missing"), "{e}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
