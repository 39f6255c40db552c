#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use super::*;

/// 100 volunteers in 10 groups of 10, two staff with two devices each in
/// a channel to everyone; a burst triples the rates.
fn scenario() -> Scenario {
    toml::from_str(
        r#"
name = "t"
description = "t"
duration_secs = 60
scale = 1.0
rate_scale = 2.0
settle_secs = 5
seed = 1

[[cohort]]
name = "volunteers"
accounts = 100

[[cohort]]
name = "staff"
accounts = 2
devices_per_account = 2

[[conversation]]
name = "station"
kind = "group"
count = 10
split = ["volunteers"]

[[conversation]]
name = "info"
kind = "channel"
count = 1
everyone = ["volunteers", "staff"]
publishers = ["staff"]

[[traffic]]
name = "chat"
conversation = "station"
rate = 1.0
bytes = 400

[[traffic]]
name = "news"
conversation = "info"
rate = 0.5
bytes = 800
attachment_bytes = 1000

[[phase]]
name = "burst"
from_secs = 10
to_secs = 20
multiplier = 3.0
"#,
    )
    .unwrap()
}

fn measured() -> Measured {
    Measured {
        relay_cpu_us_per_delivery: 100.0,
        relay_kib_per_device: 40.0,
        redis_commands_per_destination: 5.0,
        redis_bytes_per_destination: 150.0,
        redis_bytes_per_device: 90.0,
        cql_ops_per_post: 4.0,
        redis_commands_per_core: 100_000.0,
        wire_bytes_per_delivery: 60.0,
    }
}

fn assumed() -> Assumed {
    Assumed {
        relay_cores: 8.0,
        relay_memory_gib: 16.0,
        relay_headroom: 0.5,
        redis_headroom: 0.5,
        redis_memory_gib: 8.0,
        scylla_ops_per_node: 20_000.0,
        scylla_replication: 3.0,
        spare_relays: 1.0,
    }
}

#[test]
fn the_peak_is_the_rates_times_the_largest_burst() {
    let l = load(&scenario());
    assert_eq!(l.devices, 104.0);
    // chat: 1 × 2 × 3 = 6 posts/s into groups of 10 devices (9 recipients);
    // news: 0.5 × 2 × 3 = 3 posts/s to 104 devices (103 recipients).
    assert_eq!(l.posts, 9.0);
    assert_eq!(l.deliveries, 6.0 * 9.0 + 3.0 * 103.0);
    assert_eq!(
        l.delivered_bytes,
        6.0 * 9.0 * 400.0 + 3.0 * 103.0 * (800.0 + 1000.0)
    );
    assert_eq!(l.streams, vec![(6.0, 10.0, 400.0), (3.0, 104.0, 800.0)]);
}

#[test]
fn relays_follow_cpu_or_memory_whichever_binds() {
    let base = load(&scenario());
    // Small: one relay serves it, plus the spare.
    let s = size(base.clone(), &measured(), &assumed());
    assert_eq!(s.relays, 2.0);
    assert_eq!((s.redis_masters, s.scylla_nodes), (1.0, 3.0));

    // A million deliveries a second at 100 µs: 100 cores, 25 relays at half
    // of 8 cores, plus the spare.
    let busy = Load {
        deliveries: 1e6,
        ..base.clone()
    };
    let s = size(busy, &measured(), &assumed());
    assert_eq!((s.relays, s.relay_bound), (26.0, "CPU"));
    assert_eq!(s.first_out, "relay CPU");

    // A million idle devices at 40 KiB: 38.1 GiB over 8 GiB usable each.
    let idle = Load {
        devices: 1e6,
        ..base
    };
    let s = size(idle, &measured(), &assumed());
    assert_eq!((s.relays, s.relay_bound), (6.0, "memory"));
}

#[test]
fn redis_work_grows_with_relays_not_with_members() {
    let small = Load {
        devices: 1e4,
        posts: 10.0,
        deliveries: 10.0 * 999.0,
        delivered_bytes: 0.0,
        streams: vec![(10.0, 1_000.0, 500.0)],
    };
    let large = Load {
        streams: vec![(10.0, 100_000.0, 500.0)],
        deliveries: 10.0 * 99_999.0,
        ..small.clone()
    };
    let (s, l) = (
        size(small, &measured(), &assumed()),
        size(large.clone(), &measured(), &assumed()),
    );
    // Per post: 1 + 5 commands per destination relay, the sender's relay
    // (and the spare) left out.
    assert_eq!(s.redis_commands, 10.0 * (1.0 + 5.0 * (s.relays - 2.0)));
    assert_eq!(l.redis_commands, 10.0 * (1.0 + 5.0 * (l.relays - 2.0)));
    // By interest the message stays out of Redis: a larger one costs the same.
    let larger_message = Load {
        streams: vec![(10.0, 100_000.0, 50_000.0)],
        ..large
    };
    assert_eq!(
        size(larger_message, &measured(), &assumed()).redis_bytes,
        l.redis_bytes
    );
    assert!(
        l.relays > s.relays,
        "a hundred times the deliveries needs more relays"
    );
    // A conversation under 16 devices is located device by device.
    let tiny = Load {
        streams: vec![(10.0, 4.0, 500.0)],
        ..Load {
            devices: 100.0,
            posts: 10.0,
            deliveries: 30.0,
            delivered_bytes: 0.0,
            streams: vec![],
        }
    };
    let t = size(tiny, &measured(), &assumed());
    // Located: the message goes into each other relay's entry.
    let remote = (4.0f64).min(t.relays - 1.0) - 1.0;
    assert_eq!(
        t.redis_bytes,
        10.0 * (4.0 * 64.0 + remote * (500.0 + 150.0))
    );
}

#[test]
fn cost_runs_give_the_medians_of_the_most_relays() {
    let mut m = measured();
    let runs = r#"
{"relays": 1, "cpu_us_per_delivery": 90, "redis_commands_per_message_net": 17, "redis_bytes_in_per_message_net": 1700, "cql_ops_per_message_net": 3.7, "message_bytes": 600}
{"relays": 3, "cpu_us_per_delivery": 120, "redis_commands_per_message_net": 45, "redis_bytes_in_per_message_net": 3000, "cql_ops_per_message_net": 9, "message_bytes": 600}
{"relays": 3, "cpu_us_per_delivery": 130, "redis_commands_per_message_net": 48, "redis_bytes_in_per_message_net": 3300, "cql_ops_per_message_net": 8, "message_bytes": 600}
{"relays": 3, "cpu_us_per_delivery": 110, "redis_commands_per_message_net": 51, "redis_bytes_in_per_message_net": 3600, "cql_ops_per_message_net": 10, "message_bytes": 600}
"#;
    assert_eq!(apply_cost_runs(&mut m, runs), Ok(3));
    assert_eq!(m.relay_cpu_us_per_delivery, 120.0);
    // Over the 2 relays that are not the sender's.
    assert_eq!(m.redis_commands_per_destination, 24.0);
    assert_eq!(m.redis_bytes_per_destination, 1650.0);
    assert_eq!(m.cql_ops_per_post, 9.0);
    // Untouched: not measured by cluster-cost.
    assert_eq!(m.relay_kib_per_device, 40.0);
    let err = apply_cost_runs(&mut m, "{\"relays\": 1}").unwrap_err();
    assert!(err.contains("not a cluster-cost run"), "{err}");
}
