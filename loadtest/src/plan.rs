//! The capacity model: how many relays, Redis masters and Scylla nodes a
//! scenario's peak needs, from per-operation costs measured on this
//! project's benchmarks and stated formulas. `herold-plan` prints the
//! table of `docs/capacity.md` from `docs/capacity.toml`, optionally with
//! the measured costs taken from `loadtest/cluster-cost.sh` runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::scenario::{Kind, Scenario};

/// Conversations of at least this many devices are fanned out by interest
/// (the relay's `INTEREST_MIN_DEVICES`): one `SMEMBERS`; smaller ones by
/// locating every device (one `MGET`).
pub const INTEREST_MIN_DEVICES: f64 = 16.0;

/// Why the inputs could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The inputs file is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Costs measured by the project's benchmarks (each with its command in
/// `docs/capacity.md`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Measured {
    /// Relay CPU per delivery, µs (`cluster-cost.sh`, 3 relays).
    pub relay_cpu_us_per_delivery: f64,
    /// Relay memory per connected device, KiB (`connections.toml`).
    pub relay_kib_per_device: f64,
    /// Redis commands per post, per destination relay other than the
    /// sender's (`cluster-cost.sh`: commands per post net of the cluster at
    /// rest, over the relays but one).
    pub redis_commands_per_destination: f64,
    /// Redis bytes in per post and destination relay other than the
    /// sender's, net of the cluster at rest (`cluster-cost.sh`); a post by
    /// interest carries no message into Redis, only a reference.
    pub redis_bytes_per_destination: f64,
    /// Redis memory per connected device (presence key), bytes.
    pub redis_bytes_per_device: f64,
    /// CQL operations per post, all relays together, net of the cluster at
    /// rest (`cluster-cost.sh`).
    pub cql_ops_per_post: f64,
    /// Commands per second one Redis core answers (`redis-benchmark`).
    pub redis_commands_per_core: f64,
    /// Bytes on the wire per delivery beyond the message (QUIC, framing).
    pub wire_bytes_per_delivery: f64,
}

/// What the model assumes about the machines (not measurable here).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Assumed {
    /// Cores per relay node.
    pub relay_cores: f64,
    /// Memory per relay node, GiB.
    pub relay_memory_gib: f64,
    /// Share of a relay's CPU and memory planned for the peak.
    pub relay_headroom: f64,
    /// Share of a Redis master's core and memory planned for the peak.
    pub redis_headroom: f64,
    /// Memory per Redis master, GiB.
    pub redis_memory_gib: f64,
    /// CQL operations per second one Scylla node takes at the planned load.
    pub scylla_ops_per_node: f64,
    /// Scylla replication factor (also the fewest nodes).
    pub scylla_replication: f64,
    /// Relays kept spare, so that the peak survives losing one.
    pub spare_relays: f64,
}

/// One row of the table: a scenario at a scale.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Size {
    /// Row label.
    pub name: String,
    /// Scenario file, relative to the inputs file's folder's parent (the
    /// repository root for `docs/capacity.toml`).
    pub scenario: PathBuf,
    /// Population scale (default: the scenario's).
    pub scale: Option<f64>,
}

/// `docs/capacity.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// Measured costs.
    pub measured: Measured,
    /// Assumptions.
    pub assumed: Assumed,
    /// The rows.
    pub size: Vec<Size>,
}

impl Inputs {
    /// Reads and checks an inputs file.
    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.to_owned(),
            source,
        })?;
        let inputs: Inputs = toml::from_str(&text).map_err(|e| PlanError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if inputs.size.is_empty() {
            return Err(PlanError::Invalid {
                path: path.to_owned(),
                message: "no [[size]] rows".into(),
            });
        }
        Ok(inputs)
    }
}

/// The peak a scenario asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// Connected devices.
    pub devices: f64,
    /// Posts per second at the peak.
    pub posts: f64,
    /// Deliveries per second at the peak.
    pub deliveries: f64,
    /// Bytes per second to devices at the peak (messages and attachments).
    pub delivered_bytes: f64,
    /// Per traffic stream: (posts per second, devices per conversation,
    /// message bytes).
    pub streams: Vec<(f64, f64, f64)>,
}

/// The scenario's peak: its rates times its largest burst multiplier.
pub fn load(s: &Scenario) -> Load {
    let cohort = |name: &str| s.cohorts.iter().find(|c| c.name == name);
    let devices_of = |name: &str| {
        cohort(name).map_or(0.0, |c| {
            s.scaled_accounts(c) as f64 * f64::from(c.devices_per_account)
        })
    };
    let peak = s.phases.iter().map(|p| p.multiplier).fold(1.0, f64::max);
    let devices: f64 = s.cohorts.iter().map(|c| devices_of(&c.name)).sum();
    let mut out = Load {
        devices,
        posts: 0.0,
        deliveries: 0.0,
        delivered_bytes: 0.0,
        streams: Vec::new(),
    };
    for t in &s.traffic {
        let Some(k) = s.conversations.iter().find(|k| k.name == t.conversation) else {
            continue;
        };
        let per_conv = match k.kind {
            Kind::Direct => {
                let dpa = |n: Option<&String>| {
                    n.and_then(|n| cohort(n))
                        .map_or(0.0, |c| f64::from(c.devices_per_account))
                };
                dpa(k.split.first()) + dpa(k.everyone.first())
            }
            Kind::Group | Kind::Channel => {
                let n = s.scaled_count(k) as f64;
                k.split.iter().map(|c| devices_of(c) / n).sum::<f64>()
                    + k.everyone.iter().map(|c| devices_of(c)).sum::<f64>()
            }
        };
        let posts = t.rate * s.scale * s.rate_scale * peak;
        // The sender's own device gets no copy.
        let recipients = (per_conv - 1.0).max(0.0);
        out.posts += posts;
        out.deliveries += posts * recipients;
        out.delivered_bytes += posts * recipients * (t.bytes as f64 + t.attachment_bytes as f64);
        out.streams.push((posts, per_conv, t.bytes as f64));
    }
    out
}

/// One row's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    /// The peak.
    pub load: Load,
    /// Relays, spare included.
    pub relays: f64,
    /// What sets the relay count: `"CPU"` or `"memory"`.
    pub relay_bound: &'static str,
    /// Redis commands per second at the peak.
    pub redis_commands: f64,
    /// Redis bytes in per second at the peak.
    pub redis_bytes: f64,
    /// Redis memory, bytes.
    pub redis_memory: f64,
    /// Redis masters.
    pub redis_masters: f64,
    /// CQL operations per second at the peak.
    pub cql_ops: f64,
    /// Scylla nodes.
    pub scylla_nodes: f64,
    /// Relay egress, bits per second.
    pub egress_bits: f64,
    /// Relay memory, all relays, bytes.
    pub relay_memory: f64,
    /// Which resource is closest to its limit (the one to watch first).
    pub first_out: &'static str,
}

/// The sizing of one load under the inputs.
pub fn size(load: Load, m: &Measured, a: &Assumed) -> Sizing {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let cpu_cores = load.deliveries * m.relay_cpu_us_per_delivery / 1e6;
    let by_cpu = cpu_cores / (a.relay_cores * a.relay_headroom);
    let relay_memory = load.devices * m.relay_kib_per_device * 1024.0;
    let by_memory = relay_memory / (a.relay_memory_gib * GIB * a.relay_headroom);
    let serving = by_cpu.max(by_memory).ceil().max(1.0);
    let relays = serving + a.spare_relays;
    let relay_bound = if by_cpu >= by_memory { "CPU" } else { "memory" };
    // Every post: one SMEMBERS (or MGET) and a publish per destination
    // relay but the sender's own (its devices get the message without
    // Redis); a conversation's devices are spread over all serving relays.
    // By interest an entry is a reference (the message stays out of Redis);
    // a located one carries the message.
    let (mut redis_commands, mut redis_bytes) = (0.0, 0.0);
    for &(posts, per_conv, bytes) in &load.streams {
        let destinations = (per_conv.min(serving) - 1.0).max(0.0);
        let (lookup_bytes, message_bytes) = if per_conv >= INTEREST_MIN_DEVICES {
            (64.0, 0.0)
        } else {
            (per_conv * 64.0, bytes)
        };
        redis_commands += posts * (1.0 + destinations * m.redis_commands_per_destination);
        redis_bytes +=
            posts * (lookup_bytes + destinations * (message_bytes + m.redis_bytes_per_destination));
    }
    let redis_memory = load.devices * m.redis_bytes_per_device;
    let by_commands = redis_commands / (m.redis_commands_per_core * a.redis_headroom);
    let by_redis_memory = redis_memory / (a.redis_memory_gib * GIB * a.redis_headroom);
    let redis_masters = by_commands.max(by_redis_memory).ceil().max(1.0);
    let cql_ops = load.posts * m.cql_ops_per_post;
    let scylla_nodes = (cql_ops * a.scylla_replication / a.scylla_ops_per_node)
        .ceil()
        .max(a.scylla_replication);
    let egress_bits = (load.delivered_bytes + load.deliveries * m.wire_bytes_per_delivery) * 8.0;
    // The resource nearest its planned limit, as a share of what is sized.
    let shares = [
        ("relay CPU", by_cpu / serving),
        ("relay memory", by_memory / serving),
        ("Redis CPU", by_commands / redis_masters),
        ("Redis memory", by_redis_memory / redis_masters),
        (
            "Scylla",
            cql_ops * a.scylla_replication / a.scylla_ops_per_node / scylla_nodes,
        ),
    ];
    let first_out = shares
        .iter()
        .fold(("relay CPU", f64::MIN), |best, &(n, s)| {
            if s > best.1 { (n, s) } else { best }
        })
        .0;
    Sizing {
        load,
        relays,
        relay_bound,
        redis_commands,
        redis_bytes,
        redis_memory,
        redis_masters,
        cql_ops,
        scylla_nodes,
        egress_bits,
        relay_memory,
        first_out,
    }
}

/// A count or rate with an SI prefix: `12.3 k`.
fn si(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.1} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Bits per second: `1.2 Gbit/s`.
fn bits(x: f64) -> String {
    let s = si(x);
    match s.split_once(' ') {
        Some((n, prefix)) => format!("{n} {prefix}bit/s"),
        None => format!("{s} bit/s"),
    }
}

/// Bytes with a binary prefix: `1.2 GiB`.
fn bytes(x: f64) -> String {
    const K: f64 = 1024.0;
    if x >= K * K * K {
        format!("{:.1} GiB", x / (K * K * K))
    } else if x >= K * K {
        format!("{:.1} MiB", x / (K * K))
    } else if x >= K {
        format!("{:.1} KiB", x / K)
    } else {
        format!("{x:.0} B")
    }
}

/// The Markdown table for `inputs`, whose scenario paths are relative to
/// `root`.
pub fn table(inputs: &Inputs, root: &Path) -> Result<String, PlanError> {
    let mut out = String::from(
        "| size | devices | posts/s at the peak | deliveries/s | relays (bound by) | relay memory | \
         relay egress | Redis commands/s | into Redis | Redis masters | CQL ops/s | Scylla nodes | \
         nearest its limit |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in &inputs.size {
        let path = root.join(&row.scenario);
        let mut scenario = Scenario::load(&path).map_err(|e| PlanError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if let Some(scale) = row.scale {
            scenario.scale = scale;
        }
        let s = size(load(&scenario), &inputs.measured, &inputs.assumed);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} ({}) | {} | {} | {} | {}/s | {} | {} | {} | {} |",
            row.name,
            si(s.load.devices),
            si(s.load.posts),
            si(s.load.deliveries),
            s.relays,
            s.relay_bound,
            bytes(s.relay_memory),
            bits(s.egress_bits),
            si(s.redis_commands),
            bytes(s.redis_bytes),
            s.redis_masters,
            si(s.cql_ops),
            s.scylla_nodes,
            s.first_out,
        );
    }
    Ok(out)
}

/// The measured costs as `cluster-cost.sh` runs report them (its
/// `runs.jsonl`): the medians of the runs with the most relays replace the
/// relay CPU, Redis and CQL figures of `m`, net of what the cluster does
/// at rest.
pub fn apply_cost_runs(m: &mut Measured, runs_jsonl: &str) -> Result<usize, String> {
    // The "net" figures: what the cluster does at rest (lease renewals,
    // blocked inbox reads) taken out, as it does not grow with posts.
    #[derive(Deserialize)]
    struct Run {
        relays: f64,
        cpu_us_per_delivery: f64,
        redis_commands_per_message_net: f64,
        redis_bytes_in_per_message_net: f64,
        cql_ops_per_message_net: f64,
    }
    let runs: Vec<Run> = runs_jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("a line is not a cluster-cost run: {e}"))?;
    let most = runs.iter().map(|r| r.relays).fold(0.0, f64::max);
    let chosen: Vec<&Run> = runs.iter().filter(|r| r.relays == most).collect();
    if chosen.is_empty() {
        return Err("no runs".into());
    }
    let median = |f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = chosen.iter().map(|r| f(r)).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    m.relay_cpu_us_per_delivery = median(&|r| r.cpu_us_per_delivery);
    // The sender's relay takes no entry: the others are the destinations
    // (cluster-cost's scenario has members on every relay). Its entries are
    // references, so the bytes hold no message.
    let remote = |r: &Run| (r.relays - 1.0).max(1.0);
    m.redis_commands_per_destination = median(&|r| r.redis_commands_per_message_net / remote(r));
    m.redis_bytes_per_destination = median(&|r| r.redis_bytes_in_per_message_net / remote(r));
    m.cql_ops_per_post = median(&|r| r.cql_ops_per_message_net);
    Ok(chosen.len())
}

#[cfg(test)]
mod tests;
